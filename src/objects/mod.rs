//! The standard objects lwm2md serves, each a `core::object::Object` holding pure state. Host
//! data arrives through probe traits implemented in `host/`, so objects stay testable.

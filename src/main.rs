//! The lwm2md daemon binary (being written).
fn main() {}

//! `lwm2md-package`: generate signing keys, create, inspect and verify firmware packages (being written).
fn main() {}

//! The narrated demo: a local LwM2M server and the agent (being written).
fn main() {}

//! The thin tokio runtime around the sans-IO core: sockets, timers, signals, effects.

pub mod driver;
pub mod transport;

//! The thin tokio runtime around the sans-IO core: sockets, timers, signals, effects.

pub mod driver;
pub mod notify;
pub mod power;
pub mod transport;

//! The CoAP message layer (RFC 7252, 7959, 7641): codec, reliability, block-wise, observe.
//! Sans-IO: bytes and `now` in, bytes, timeouts and events out.

pub mod block;
pub mod blockwise;
pub mod codec;
pub mod endpoint;
pub mod message;
pub mod observe;
#[cfg(test)]
mod sim_tests;

//! Wire encoding and strict decoding of CoAP messages over UDP, with coap-lite as the packet codec.
//! Decoding never panics; everything coap-lite accepts but RFC 7252 forbids is rejected here.

use super::message::{Message, MsgType};

/// Why a datagram is not a valid CoAP message (RFC 7252 §3 "message format error").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// Fewer than 4 bytes.
    #[error("datagram shorter than the 4-byte header")]
    TooShort,
    /// Version is not 1.
    #[error("unsupported CoAP version {0}")]
    BadVersion(u8),
    /// TKL 9..=15.
    #[error("token length {0} is reserved")]
    BadTokenLength(u8),
    /// Option delta/length nibble 15, or an option running past the end.
    #[error("malformed options: {0}")]
    BadOptions(String),
    /// 0xFF payload marker followed by no payload.
    #[error("payload marker without payload")]
    EmptyPayloadAfterMarker,
    /// An empty message (0.00) with a token, options or payload.
    #[error("empty message carries token, options or payload")]
    NonEmptyEmpty,
    /// Encoding: token longer than 8 bytes or message larger than the limit.
    #[error("cannot encode: {0}")]
    Encode(String),
}

/// Decodes one datagram.
pub fn decode(_bytes: &[u8]) -> Result<Message, CodecError> {
    todo!("codec::decode")
}

/// Encodes a message (no size limit here; the caller keeps messages within the path MTU).
pub fn encode(_msg: &Message) -> Result<Vec<u8>, CodecError> {
    todo!("codec::encode")
}

/// Reads type and message ID from a datagram that failed to decode, so a malformed CON can be
/// answered with RST. `None` when even the header is unusable.
pub fn peek_header(_bytes: &[u8]) -> Option<(MsgType, u16)> {
    todo!("codec::peek_header")
}

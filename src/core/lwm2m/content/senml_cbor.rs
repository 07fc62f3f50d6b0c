//! application/senml+cbor (CF 112, RFC 8428 with integer labels, via minicbor).

use super::{ContentError, Decoded, Schema};
use crate::core::lwm2m::path::Path;
use crate::core::lwm2m::value::Record;

/// Encodes `records` for a request on `base`.
pub fn encode(_base: &Path, _records: &[Record]) -> Result<Vec<u8>, ContentError> {
    todo!("senml_cbor::encode")
}

/// Decodes an untrusted payload sent to `base`.
pub fn decode(
    _base: &Path,
    _payload: &[u8],
    _schema: &dyn Schema,
) -> Result<Decoded, ContentError> {
    todo!("senml_cbor::decode")
}

/// Decodes a path list (records with names and no values).
pub fn decode_paths(_payload: &[u8]) -> Result<Vec<Path>, ContentError> {
    todo!("senml_cbor::decode_paths")
}

//! application/cbor (CF 60): one value as a single CBOR data item.

use super::{ContentError, Decoded, Schema};
use crate::core::lwm2m::path::Path;
use crate::core::lwm2m::value::Record;

/// Encodes `records` for a request on `base`.
pub fn encode(_base: &Path, _records: &[Record]) -> Result<Vec<u8>, ContentError> {
    todo!("cbor::encode")
}

/// Decodes an untrusted payload sent to `base`.
pub fn decode(
    _base: &Path,
    _payload: &[u8],
    _schema: &dyn Schema,
) -> Result<Decoded, ContentError> {
    todo!("cbor::decode")
}

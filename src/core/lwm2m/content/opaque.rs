//! application/octet-stream (CF 42): one Opaque value as raw bytes.

use super::{ContentError, Decoded, Schema};
use crate::core::lwm2m::path::Path;
use crate::core::lwm2m::value::Record;

/// Encodes `records` for a request on `base`.
pub fn encode(_base: &Path, _records: &[Record]) -> Result<Vec<u8>, ContentError> {
    todo!("opaque::encode")
}

/// Decodes an untrusted payload sent to `base`.
pub fn decode(
    _base: &Path,
    _payload: &[u8],
    _schema: &dyn Schema,
) -> Result<Decoded, ContentError> {
    todo!("opaque::decode")
}

//! application/vnd.oma.lwm2m+tlv (CF 11542): the LwM2M 1.0 binary format (Core §7.4.3).

use super::{ContentError, Decoded, Schema};
use crate::core::lwm2m::path::Path;
use crate::core::lwm2m::value::Record;

/// Encodes `records` for a request on `base` (object-level bases wrap instances in Object
/// Instance TLVs; multi-instance resources become Multiple Resource TLVs).
pub fn encode(
    _base: &Path,
    _records: &[Record],
    _schema: &dyn Schema,
) -> Result<Vec<u8>, ContentError> {
    todo!("tlv::encode")
}

/// Decodes an untrusted payload sent to `base`, typing values with `schema`.
pub fn decode(
    _base: &Path,
    _payload: &[u8],
    _schema: &dyn Schema,
) -> Result<Decoded, ContentError> {
    todo!("tlv::decode")
}

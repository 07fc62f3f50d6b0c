//! Content formats (LwM2M Core §7.4 / Transport): plain text, opaque, CBOR, TLV, SenML JSON,
//! SenML CBOR and CoRE link format. Encoders turn records below a base path into a payload;
//! decoders turn an untrusted payload into records and never panic.

pub mod cbor;
pub mod link;
pub mod opaque;
pub mod senml_cbor;
pub mod senml_json;
pub mod text;
pub mod tlv;

use super::path::Path;
use super::value::Record;
use crate::model::ResourceMeta;

/// Content-Format numbers (IANA CoAP registry).
pub mod cf {
    /// text/plain;charset=utf-8.
    pub const TEXT: u16 = 0;
    /// application/link-format.
    pub const LINK_FORMAT: u16 = 40;
    /// application/octet-stream.
    pub const OPAQUE: u16 = 42;
    /// application/cbor.
    pub const CBOR: u16 = 60;
    /// application/senml+json.
    pub const SENML_JSON: u16 = 110;
    /// application/senml+cbor.
    pub const SENML_CBOR: u16 = 112;
    /// application/vnd.oma.lwm2m+tlv.
    pub const TLV: u16 = 11542;
    /// application/vnd.oma.lwm2m+json (LwM2M 1.0 JSON; a 1.1 client must not send it).
    pub const LWM2M_JSON: u16 = 11543;
    /// application/vnd.oma.lwm2m+cbor (LwM2M 1.2).
    pub const LWM2M_CBOR: u16 = 11544;
}

/// Resource metadata lookup used to type decoded values and to shape encodings.
pub trait Schema {
    /// The definition of resource `resource` of object `object`, as this client serves it.
    fn resource(&self, object: u16, resource: u16) -> Option<&'static ResourceMeta>;
}

/// The OMA model's newest definitions, for callers that have no registry at hand (tests, tools).
#[derive(Debug, Clone, Copy, Default)]
pub struct NewestModel;

impl Schema for NewestModel {
    fn resource(&self, object: u16, resource: u16) -> Option<&'static ResourceMeta> {
        crate::model::object(object).and_then(|o| o.resource(resource))
    }
}

/// A content encoding or decoding failure.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ContentError {
    /// The payload does not follow the format (→ 4.00).
    #[error("malformed {format} payload: {reason}")]
    Malformed {
        /// Format name.
        format: &'static str,
        /// What is wrong, with a byte offset where useful.
        reason: String,
    },
    /// A value does not fit the resource's type (→ 4.00).
    #[error("{path}: {reason}")]
    Type {
        /// Where.
        path: Path,
        /// Why.
        reason: String,
    },
    /// A record lies outside the request's base path (→ 4.00).
    #[error("{path} is outside the target {base}")]
    OutsideBase {
        /// The record path.
        path: Path,
        /// The request path.
        base: Path,
    },
    /// A single-value format was asked for more than one value or a non-resource path (→ 4.06).
    #[error("format {0} can only carry a single resource value")]
    NotSingle(u16),
    /// The format is not supported (→ 4.06 on encode, 4.15 on decode).
    #[error("content format {0} is not supported")]
    Unsupported(u16),
}

impl ContentError {
    /// A `Malformed` error.
    pub fn malformed(format: &'static str, reason: impl Into<String>) -> Self {
        Self::Malformed {
            format,
            reason: reason.into(),
        }
    }
}

/// What a decoder found: the values, plus the containers the payload names explicitly (object
/// instances and multi-instance resources), which may be empty and so carry no record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decoded {
    /// Resource and resource-instance values in payload order.
    pub records: Vec<Record>,
    /// `/O/I` and `/O/I/R` (multi-instance) paths present in the payload, sorted, unique.
    pub containers: Vec<Path>,
}

/// True for formats this client can decode and encode for data (not link format).
pub fn is_data_format(format: u16) -> bool {
    matches!(
        format,
        cf::TEXT | cf::OPAQUE | cf::CBOR | cf::SENML_JSON | cf::SENML_CBOR | cf::TLV
    )
}

/// True for formats that carry exactly one value.
pub fn is_single_value(format: u16) -> bool {
    matches!(format, cf::TEXT | cf::OPAQUE | cf::CBOR)
}

/// Encodes `records` (all at or below `base`, sorted by path) in `format`.
pub fn encode(
    format: u16,
    base: &Path,
    records: &[Record],
    schema: &dyn Schema,
) -> Result<Vec<u8>, ContentError> {
    if let Some(r) = records.iter().find(|r| !r.path.starts_with(base)) {
        return Err(ContentError::OutsideBase {
            path: r.path,
            base: *base,
        });
    }
    match format {
        cf::TEXT => text::encode(base, records),
        cf::OPAQUE => opaque::encode(base, records),
        cf::CBOR => cbor::encode(base, records),
        cf::TLV => tlv::encode(base, records, schema),
        cf::SENML_JSON => senml_json::encode(base, records),
        cf::SENML_CBOR => senml_cbor::encode(base, records),
        other => Err(ContentError::Unsupported(other)),
    }
}

/// Decodes an untrusted `payload` sent to `base` in `format`, typing values with `schema`.
/// Every record lies at or below `base`.
pub fn decode(
    format: u16,
    base: &Path,
    payload: &[u8],
    schema: &dyn Schema,
) -> Result<Decoded, ContentError> {
    let decoded = match format {
        cf::TEXT => text::decode(base, payload, schema)?,
        cf::OPAQUE => opaque::decode(base, payload, schema)?,
        cf::CBOR => cbor::decode(base, payload, schema)?,
        cf::TLV => tlv::decode(base, payload, schema)?,
        cf::SENML_JSON => senml_json::decode(base, payload, schema)?,
        cf::SENML_CBOR => senml_cbor::decode(base, payload, schema)?,
        other => return Err(ContentError::Unsupported(other)),
    };
    if let Some(r) = decoded.records.iter().find(|r| !r.path.starts_with(base)) {
        return Err(ContentError::OutsideBase {
            path: r.path,
            base: *base,
        });
    }
    Ok(decoded)
}

/// Decodes a SenML path list (the body of Read-Composite / Observe-Composite: records with a
/// name and no value).
pub fn decode_paths(format: u16, payload: &[u8]) -> Result<Vec<Path>, ContentError> {
    match format {
        cf::SENML_JSON => senml_json::decode_paths(payload),
        cf::SENML_CBOR => senml_cbor::decode_paths(payload),
        other => Err(ContentError::Unsupported(other)),
    }
}

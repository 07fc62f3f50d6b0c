//! Content formats (LwM2M Core §7.4 / Transport): plain text, opaque, CBOR, TLV, SenML JSON,
//! SenML CBOR and CoRE link format. Encoders turn records below a base path into a payload;
//! decoders turn an untrusted payload into records and never panic.

pub mod cbor;
pub mod link;
pub mod opaque;
mod senml;
pub mod senml_cbor;
pub mod senml_json;
pub mod text;
pub mod tlv;

use super::path::Path;
use super::value::{Record, Value};
use crate::model::{ResourceMeta, ResourceType};

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

/// The type `schema` declares for the resource `path` names, or `None` when the schema does not
/// know it. Executable resources (`ResourceType::None`) count as unknown: they carry no value, so
/// a decoder keeps the format's natural type and the core answers the write with 4.05.
fn schema_kind(path: &Path, schema: &dyn Schema) -> Option<ResourceType> {
    let meta = schema.resource(path.object_id()?, path.resource_id()?)?;
    (meta.kind != ResourceType::None).then_some(meta.kind)
}

/// Converts a decoded value to the schema's type for `path` (kept as is for unknown resources).
fn typed(path: &Path, value: Value, schema: &dyn Schema) -> Result<Value, ContentError> {
    let Some(kind) = schema_kind(path, schema) else {
        return Ok(value);
    };
    let natural = value.kind();
    value.coerce(kind).ok_or_else(|| ContentError::Type {
        path: *path,
        reason: format!("a {natural:?} value does not fit a {kind:?} resource"),
    })
}

/// True for `/O/I/R` and `/O/I/R/RI`: the paths a single value can live at.
fn is_value_path(path: &Path) -> bool {
    matches!(path.len(), 3 | 4)
}

/// Single-value formats only address a resource or a resource instance.
fn require_value_path(base: &Path, format: u16) -> Result<(), ContentError> {
    if is_value_path(base) {
        Ok(())
    } else {
        Err(ContentError::NotSingle(format))
    }
}

/// The one record a single-value format may encode: exactly one, at `base`, a value path.
fn single_record<'r>(
    base: &Path,
    records: &'r [Record],
    format: u16,
) -> Result<&'r Value, ContentError> {
    require_value_path(base, format)?;
    match records {
        [only] if only.path == *base => Ok(&only.value),
        _ => Err(ContentError::NotSingle(format)),
    }
}

/// A decode result holding exactly one record at `base`.
fn single_decoded(base: &Path, value: Value) -> Decoded {
    Decoded {
        records: vec![Record::new(*base, value)],
        containers: Vec::new(),
    }
}

/// Sorts and de-duplicates a container list (the `Decoded::containers` invariant).
fn sorted_unique(mut paths: Vec<Path>) -> Vec<Path> {
    paths.sort_unstable();
    paths.dedup();
    paths
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

/// Test schemas and proptest strategies shared by the codec tests.
#[cfg(test)]
pub(crate) mod test_support {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::{NewestModel, Schema};
    use crate::core::lwm2m::path::Path;
    use crate::core::lwm2m::value::{Record, Value};
    use crate::model::{Operations, Range, ResourceMeta, ResourceType};

    /// An object id no OMA object uses; `TestSchema` defines it.
    pub(crate) const TEST_OBJECT: u16 = 32768;

    /// Resource `r` of `TEST_OBJECT` (r < 9) is a single-instance `KINDS[r]`; resource `10 + r`
    /// is a multi-instance `KINDS[r]`.
    pub(crate) const KINDS: [ResourceType; 9] = [
        ResourceType::String,
        ResourceType::Integer,
        ResourceType::Unsigned,
        ResourceType::Float,
        ResourceType::Boolean,
        ResourceType::Opaque,
        ResourceType::Time,
        ResourceType::Objlnk,
        ResourceType::Corelnk,
    ];

    /// Offset of the multi-instance twin of a single resource.
    pub(crate) const MULTI: u16 = 10;

    const fn meta(id: u16, kind: ResourceType, multiple: bool) -> ResourceMeta {
        ResourceMeta {
            id,
            name: "test",
            operations: Operations {
                read: true,
                write: true,
                execute: false,
            },
            multiple,
            mandatory: false,
            kind,
            range: Range::Any,
            units: "",
        }
    }

    static SINGLE: [ResourceMeta; 9] = [
        meta(0, KINDS[0], false),
        meta(1, KINDS[1], false),
        meta(2, KINDS[2], false),
        meta(3, KINDS[3], false),
        meta(4, KINDS[4], false),
        meta(5, KINDS[5], false),
        meta(6, KINDS[6], false),
        meta(7, KINDS[7], false),
        meta(8, KINDS[8], false),
    ];

    static MULTIPLE: [ResourceMeta; 9] = [
        meta(10, KINDS[0], true),
        meta(11, KINDS[1], true),
        meta(12, KINDS[2], true),
        meta(13, KINDS[3], true),
        meta(14, KINDS[4], true),
        meta(15, KINDS[5], true),
        meta(16, KINDS[6], true),
        meta(17, KINDS[7], true),
        meta(18, KINDS[8], true),
    ];

    /// The OMA model plus `TEST_OBJECT`, which has a resource of every type.
    #[derive(Debug, Clone, Copy)]
    pub(crate) struct TestSchema;

    impl Schema for TestSchema {
        fn resource(&self, object: u16, resource: u16) -> Option<&'static ResourceMeta> {
            if object != TEST_OBJECT {
                return NewestModel.resource(object, resource);
            }
            let r = usize::from(resource);
            SINGLE
                .get(r)
                .or_else(|| MULTIPLE.get(r.checked_sub(usize::from(MULTI))?))
        }
    }

    /// Every resource of every object has one type (for hand-made vectors).
    #[derive(Debug, Clone, Copy)]
    pub(crate) struct Uniform(pub(crate) ResourceType, pub(crate) bool);

    impl Schema for Uniform {
        fn resource(&self, _object: u16, _resource: u16) -> Option<&'static ResourceMeta> {
            let index = KINDS.iter().position(|k| *k == self.0)?;
            if self.1 {
                MULTIPLE.get(index)
            } else {
                SINGLE.get(index)
            }
        }
    }

    /// A schema that knows nothing.
    #[derive(Debug, Clone, Copy)]
    pub(crate) struct Unknown;

    impl Schema for Unknown {
        fn resource(&self, _object: u16, _resource: u16) -> Option<&'static ResourceMeta> {
            None
        }
    }

    /// Any value of `kind` that survives every format (finite floats; NaN is not equal to
    /// itself).
    pub(crate) fn value(kind: ResourceType) -> BoxedStrategy<Value> {
        match kind {
            ResourceType::String => any::<String>().prop_map(Value::String).boxed(),
            ResourceType::Integer => any::<i64>().prop_map(Value::Integer).boxed(),
            ResourceType::Unsigned => any::<u64>().prop_map(Value::Unsigned).boxed(),
            ResourceType::Float => prop_oneof![
                any::<f64>().prop_filter("finite", |f| f.is_finite()),
                any::<f32>()
                    .prop_filter("finite", |f| f.is_finite())
                    .prop_map(f64::from),
                (-1000i32..1000).prop_map(f64::from),
            ]
            .prop_map(Value::Float)
            .boxed(),
            ResourceType::Boolean => any::<bool>().prop_map(Value::Boolean).boxed(),
            ResourceType::Opaque => proptest::collection::vec(any::<u8>(), 0..40)
                .prop_map(Value::Opaque)
                .boxed(),
            ResourceType::Time => any::<i64>().prop_map(Value::Time).boxed(),
            ResourceType::Objlnk => (any::<u16>(), any::<u16>())
                .prop_map(|(o, i)| Value::Objlnk(o, i))
                .boxed(),
            ResourceType::Corelnk => any::<String>().prop_map(Value::Corelnk).boxed(),
            ResourceType::None => Just(Value::Boolean(false)).boxed(),
        }
    }

    /// A resource id of `TEST_OBJECT` (single-instance) and a value of its type.
    pub(crate) fn resource_and_value() -> impl Strategy<Value = (u16, Value)> {
        (0..KINDS.len()).prop_flat_map(|i| {
            let id = u16::try_from(i).unwrap_or_default();
            (Just(id), value(KINDS[i]))
        })
    }

    /// The resources of one instance of `TEST_OBJECT`: resource id → single value or instances.
    fn instance() -> impl Strategy<Value = Vec<(u16, Option<Value>, BTreeMap<u16, Value>)>> {
        let resources: Vec<_> = KINDS
            .iter()
            .zip(0u16..)
            .map(|(kind, id)| {
                (
                    Just(id),
                    proptest::option::of(value(*kind)),
                    proptest::collection::btree_map(0u16..6, value(*kind), 0..3),
                )
            })
            .collect();
        resources
    }

    /// Records of up to three instances of `TEST_OBJECT`, sorted by path.
    pub(crate) fn tree() -> impl Strategy<Value = Vec<Record>> {
        proptest::collection::btree_map(0u16..5, instance(), 0..3).prop_map(|instances| {
            let mut records = Vec::new();
            for (iid, resources) in instances {
                for (rid, single, multiple) in resources {
                    if let Some(v) = single {
                        records.push(Record::new(Path::resource(TEST_OBJECT, iid, rid), v));
                    }
                    for (ri, v) in multiple {
                        let path = Path::resource_instance(TEST_OBJECT, iid, rid + MULTI, ri);
                        records.push(Record::new(path, v));
                    }
                }
            }
            records.sort_by_key(|r| r.path);
            records
        })
    }

    /// A base path at `depth` (0..=4) above one of `records` (or `/TEST_OBJECT` when there are
    /// none), and the records at or below it.
    pub(crate) fn below(
        records: &[Record],
        pick: proptest::sample::Index,
        depth: usize,
    ) -> (Path, Vec<Record>) {
        let base = if records.is_empty() {
            Path::object(TEST_OBJECT).truncate(depth)
        } else {
            pick.get(records).path.truncate(depth)
        };
        let subset = records
            .iter()
            .filter(|r| r.path.starts_with(&base))
            .cloned()
            .collect();
        (base, subset)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::test_support::{TestSchema, below, tree};
    use super::*;

    #[test]
    fn dispatch_checks_the_base_both_ways() {
        let base = Path::instance(3, 0);
        let outside = [Record::new(Path::resource(1, 0, 1), Value::Integer(1))];
        for format in [cf::TLV, cf::SENML_JSON, cf::SENML_CBOR, cf::TEXT] {
            assert_eq!(
                encode(format, &base, &outside, &NewestModel),
                Err(ContentError::OutsideBase {
                    path: Path::resource(1, 0, 1),
                    base
                })
            );
        }
        assert_eq!(
            decode(
                cf::SENML_JSON,
                &base,
                br#"[{"n":"/1/0/1","v":1}]"#,
                &NewestModel
            ),
            Err(ContentError::OutsideBase {
                path: Path::resource(1, 0, 1),
                base
            })
        );
    }

    #[test]
    fn unsupported_formats() {
        let p = Path::resource(3, 0, 0);
        for format in [cf::LINK_FORMAT, cf::LWM2M_JSON, cf::LWM2M_CBOR, 9999] {
            assert_eq!(
                encode(format, &p, &[], &NewestModel),
                Err(ContentError::Unsupported(format))
            );
            assert_eq!(
                decode(format, &p, b"", &NewestModel),
                Err(ContentError::Unsupported(format))
            );
        }
        assert_eq!(
            decode_paths(cf::TLV, b""),
            Err(ContentError::Unsupported(cf::TLV))
        );
        assert_eq!(decode_paths(cf::SENML_CBOR, &[0x80]), Ok(vec![]));
        assert!(is_data_format(cf::TLV) && !is_data_format(cf::LINK_FORMAT));
        assert!(is_single_value(cf::CBOR) && !is_single_value(cf::SENML_CBOR));
    }

    #[test]
    fn every_format_reads_the_same_value() {
        let p = Path::resource(1, 0, 1);
        let records = [Record::new(p, Value::Integer(300))];
        for format in [cf::TEXT, cf::CBOR, cf::TLV, cf::SENML_JSON, cf::SENML_CBOR] {
            let bytes = encode(format, &p, &records, &NewestModel).unwrap();
            let decoded = decode(format, &p, &bytes, &NewestModel).unwrap();
            assert_eq!(decoded.records, records, "format {format}");
        }
    }

    proptest! {
        #[test]
        fn multi_value_formats_round_trip_through_dispatch(
            records in tree(),
            pick in any::<proptest::sample::Index>(),
            depth in 1usize..=4,
        ) {
            let (base, subset) = below(&records, pick, depth);
            for format in [cf::TLV, cf::SENML_JSON, cf::SENML_CBOR] {
                let bytes = encode(format, &base, &subset, &TestSchema).unwrap();
                let decoded = decode(format, &base, &bytes, &TestSchema).unwrap();
                prop_assert_eq!(&decoded.records, &subset, "format {}", format);
            }
        }
    }
}

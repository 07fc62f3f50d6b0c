//! What SenML JSON (110) and SenML CBOR (112) share once the syntax is parsed: the LwM2M
//! profile of RFC 8428 names (`bn` + `n` = a path), the base-name layout of encoded packs, value
//! typing and the container list.

use std::collections::BTreeSet;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use super::{ContentError, Decoded, Schema, cbor, is_value_path, sorted_unique, typed};
use crate::core::lwm2m::path::Path;
use crate::core::lwm2m::value::{Record, Value, parse_objlnk};

/// The longest name that can be a path: `/65534` four times, or with leading zeros `/00001`.
/// Longer names are rejected before they are concatenated, so a long `bn` repeated over many
/// records cannot make decoding quadratic.
const MAX_NAME_LEN: usize = 4 * 6;

/// One record as the syntax layer found it (names not yet resolved, values not yet typed).
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct RawRecord {
    /// Base name (`bn`), which also applies to the following records.
    pub(super) bn: Option<String>,
    /// Name (`n`).
    pub(super) n: Option<String>,
    /// The one value field, if any.
    pub(super) value: Option<RawValue>,
}

/// A SenML value field.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum RawValue {
    /// `v`.
    Number(cbor::Number),
    /// `vs`.
    String(String),
    /// `vb`.
    Bool(bool),
    /// `vd`, already decoded from base64 in JSON.
    Data(Vec<u8>),
    /// `vlo` ("oid:iid").
    Objlnk(String),
}

/// Sets the record's value, refusing a second value field (RFC 8428 allows exactly one).
pub(super) fn set_value(record: &mut RawRecord, value: RawValue) -> Result<(), &'static str> {
    if record.value.is_some() {
        return Err("a record has more than one value field");
    }
    record.value = Some(value);
    Ok(())
}

/// Keys ending in `_` are must-understand extensions (RFC 8428 §4.4); we understand none.
pub(super) fn is_must_understand(key: &str) -> bool {
    key.ends_with('_')
}

/// `vd` is base64url in SenML JSON, but servers also send the standard alphabet, with or
/// without padding; the alphabet is picked by its two distinctive characters.
pub(super) fn decode_data(text: &str) -> Option<Vec<u8>> {
    const CONFIG: GeneralPurposeConfig =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    const URL: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::URL_SAFE, CONFIG);
    const STANDARD: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::STANDARD, CONFIG);
    if text.contains(['-', '_']) {
        URL.decode(text).ok()
    } else {
        STANDARD.decode(text).ok()
    }
}

/// The `bn` of the first record: the record's own path when a single record sits exactly at
/// `base`, otherwise `base` with a trailing slash (the root is `/`).
pub(super) fn base_name(base: &Path, records: &[Record]) -> String {
    match records {
        [only] if only.path == *base => base.to_string(),
        _ if base.is_root() => "/".to_string(),
        _ => format!("{base}/"),
    }
}

/// The `n` of a record relative to `base_name(base, records)`: the ids below `base`, so `None`
/// exactly for the single record at `base` (whose name is all in `bn`).
pub(super) fn relative_name(base: &Path, record: &Record) -> Option<String> {
    let rest = record.path.ids().get(base.len()..).unwrap_or_default();
    if rest.is_empty() {
        return None;
    }
    let parts: Vec<String> = rest.iter().map(u16::to_string).collect();
    Some(parts.join("/"))
}

/// Resolves names against the running base name.
struct Names {
    bn: String,
}

impl Names {
    fn new() -> Self {
        Self { bn: String::new() }
    }

    /// The path of record `index`; `bn` persists until a later record redefines it.
    fn resolve(
        &mut self,
        format: &'static str,
        index: usize,
        raw: &mut RawRecord,
    ) -> Result<Path, ContentError> {
        if let Some(bn) = raw.bn.take() {
            self.bn = bn;
        }
        let n = raw.n.as_deref().unwrap_or("");
        let bad = |why: String| ContentError::malformed(format, format!("record {index}: {why}"));
        if self.bn.len().saturating_add(n.len()) > MAX_NAME_LEN {
            return Err(bad("name is too long to be a path".into()));
        }
        let name = format!("{}{n}", self.bn);
        Path::parse(&name).map_err(|e| bad(format!("name {name:?}: {e}")))
    }
}

/// Receives records from a syntax layer one at a time, so a pack is never held twice in memory
/// and the first bad record ends decoding.
pub(super) trait Sink {
    /// Takes the next record of the pack.
    fn push(&mut self, raw: RawRecord) -> Result<(), ContentError>;
}

/// Turns raw records into typed records below `base` (the `decode` of both SenML formats).
pub(super) struct Resolver<'a> {
    format: &'static str,
    base: &'a Path,
    schema: &'a dyn Schema,
    names: Names,
    seen: BTreeSet<Path>,
    decoded: Decoded,
}

impl<'a> Resolver<'a> {
    pub(super) fn new(format: &'static str, base: &'a Path, schema: &'a dyn Schema) -> Self {
        Self {
            format,
            base,
            schema,
            names: Names::new(),
            seen: BTreeSet::new(),
            decoded: Decoded::default(),
        }
    }

    /// The records in pack order and the containers they imply.
    pub(super) fn finish(mut self) -> Decoded {
        self.decoded.containers = sorted_unique(self.decoded.containers);
        self.decoded
    }

    fn malformed(&self, why: String) -> ContentError {
        ContentError::malformed(self.format, format!("record {}: {why}", self.seen.len()))
    }
}

impl Sink for Resolver<'_> {
    fn push(&mut self, mut raw: RawRecord) -> Result<(), ContentError> {
        let path = self.names.resolve(self.format, self.seen.len(), &mut raw)?;
        if !is_value_path(&path) {
            return Err(self.malformed(format!("{path} is not a resource or resource instance")));
        }
        if !path.starts_with(self.base) {
            return Err(ContentError::OutsideBase {
                path,
                base: *self.base,
            });
        }
        let Some(raw_value) = raw.value else {
            return Err(self.malformed(format!("{path} has no value")));
        };
        if !self.seen.insert(path) {
            return Err(self.malformed(format!("{path} appears twice")));
        }
        let value = typed(&path, natural(self.format, &path, raw_value)?, self.schema)?;
        self.decoded.containers.push(path.truncate(2));
        if path.len() == 4 {
            self.decoded.containers.push(path.parent());
        }
        self.decoded.records.push(Record::new(path, value));
        Ok(())
    }
}

/// Resolves the names of a path list (`decode_paths`): any depth, no values allowed.
pub(super) struct PathResolver {
    format: &'static str,
    names: Names,
    paths: Vec<Path>,
}

impl PathResolver {
    pub(super) fn new(format: &'static str) -> Self {
        Self {
            format,
            names: Names::new(),
            paths: Vec::new(),
        }
    }

    /// The paths in pack order.
    pub(super) fn finish(self) -> Vec<Path> {
        self.paths
    }
}

impl Sink for PathResolver {
    fn push(&mut self, mut raw: RawRecord) -> Result<(), ContentError> {
        let index = self.paths.len();
        let path = self.names.resolve(self.format, index, &mut raw)?;
        if raw.value.is_some() {
            return Err(ContentError::malformed(
                self.format,
                format!("record {index}: a path list carries no values"),
            ));
        }
        self.paths.push(path);
        Ok(())
    }
}

/// The value in the format's own type, before the schema gets a say.
fn natural(format: &'static str, path: &Path, raw: RawValue) -> Result<Value, ContentError> {
    Ok(match raw {
        RawValue::Number(cbor::Number::Int(i)) => cbor::int_value(path, i)?,
        RawValue::Number(cbor::Number::Float(f)) => Value::Float(f),
        RawValue::String(s) => Value::String(s),
        RawValue::Bool(b) => Value::Boolean(b),
        RawValue::Data(d) => Value::Opaque(d),
        RawValue::Objlnk(s) => {
            let (o, i) = parse_objlnk(&s).ok_or_else(|| {
                ContentError::malformed(format, format!("{path}: vlo {s:?} is not \"oid:iid\""))
            })?;
            Value::Objlnk(o, i)
        }
    })
}

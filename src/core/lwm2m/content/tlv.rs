//! application/vnd.oma.lwm2m+tlv (CF 11542): the LwM2M 1.0 binary format (Core §7.4.3).
//!
//! Element = type byte | identifier (8 or 16 bit) | length (0, 8, 16 or 24 bit) | value. The
//! type byte's bits 7-6 give the element kind, bit 5 the identifier width, bits 4-3 the width
//! of the length field and, when that width is zero, bits 2-0 hold the length itself.
//!
//! TLV carries no value types, so decoding types values with the schema; a resource the schema
//! does not know stays Opaque. Nesting is at most three levels deep and fixed by the format, so
//! the decoder's recursion is bounded whatever the payload says.

use std::collections::BTreeSet;

use super::{ContentError, Decoded, Schema, cf, schema_kind, sorted_unique};
use crate::core::lwm2m::path::Path;
use crate::core::lwm2m::value::{Record, Value};
use crate::model::ResourceType;

const FORMAT: &str = "TLV";

/// The largest value a 24-bit length field can announce.
const MAX_LEN: usize = 0xFF_FFFF;

/// The element kind in bits 7-6 of the type byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    ObjectInstance = 0b00,
    ResourceInstance = 0b01,
    MultipleResource = 0b10,
    Resource = 0b11,
}

impl Kind {
    fn from_type_byte(byte: u8) -> Self {
        match byte >> 6 {
            0b00 => Self::ObjectInstance,
            0b01 => Self::ResourceInstance,
            0b10 => Self::MultipleResource,
            _ => Self::Resource,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::ObjectInstance => "Object Instance",
            Self::ResourceInstance => "Resource Instance",
            Self::MultipleResource => "Multiple Resource",
            Self::Resource => "Resource",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding

/// Encodes `records` for a request on `base` (object-level bases wrap instances in Object
/// Instance TLVs; multi-instance resources become Multiple Resource TLVs).
pub fn encode(
    base: &Path,
    records: &[Record],
    schema: &dyn Schema,
) -> Result<Vec<u8>, ContentError> {
    if let Some(r) = records.iter().find(|r| !matches!(r.path.len(), 3 | 4)) {
        return Err(ContentError::Type {
            path: r.path,
            reason: "a record must name a resource or a resource instance".into(),
        });
    }
    let mut out = Vec::new();
    match base.len() {
        // TLV has no element for an object, so a root-level payload cannot be expressed.
        0 => return Err(ContentError::NotSingle(cf::TLV)),
        1 => encode_instances(records, schema, &mut out)?,
        2 => encode_resources(records, schema, &mut out)?,
        3 => encode_resource(base, records, schema, &mut out)?,
        _ => match records {
            [only] if only.path == *base => {
                write_element(
                    &mut out,
                    Kind::ResourceInstance,
                    base_id(base),
                    &value_bytes(&only.value),
                )?;
            }
            _ => return Err(ContentError::NotSingle(cf::TLV)),
        },
    }
    Ok(out)
}

/// The last id of a non-root path.
fn base_id(path: &Path) -> u16 {
    path.ids().last().copied().unwrap_or_default()
}

/// Splits sorted records into runs that share the id at `depth` (0-based index into the path).
fn groups(records: &[Record], depth: usize) -> impl Iterator<Item = (u16, &[Record])> {
    let mut rest = records;
    std::iter::from_fn(move || {
        let id = rest.first()?.path.ids().get(depth).copied()?;
        let len = rest
            .iter()
            .position(|r| r.path.ids().get(depth) != Some(&id))
            .unwrap_or(rest.len());
        let (group, tail) = rest.split_at(len);
        rest = tail;
        Some((id, group))
    })
}

/// One Object Instance TLV per instance, each wrapping its resources.
fn encode_instances(
    records: &[Record],
    schema: &dyn Schema,
    out: &mut Vec<u8>,
) -> Result<(), ContentError> {
    for (instance, group) in groups(records, 1) {
        let mut body = Vec::new();
        encode_resources(group, schema, &mut body)?;
        write_element(out, Kind::ObjectInstance, instance, &body)?;
    }
    Ok(())
}

/// Flat Resource / Multiple Resource TLVs for the records of one object instance.
fn encode_resources(
    records: &[Record],
    schema: &dyn Schema,
    out: &mut Vec<u8>,
) -> Result<(), ContentError> {
    for (_, group) in groups(records, 2) {
        if let Some(first) = group.first() {
            encode_resource(&first.path.truncate(3), group, schema, out)?;
        }
    }
    Ok(())
}

/// One resource: a Resource TLV, or a Multiple Resource TLV when the schema says the resource is
/// multi-instance or the records are resource instances (then `records` may even be empty).
fn encode_resource(
    path: &Path,
    records: &[Record],
    schema: &dyn Schema,
    out: &mut Vec<u8>,
) -> Result<(), ContentError> {
    let id = base_id(path);
    let declared_multiple = path
        .object_id()
        .zip(path.resource_id())
        .and_then(|(o, r)| schema.resource(o, r))
        .is_some_and(|meta| meta.multiple);
    let has_instances = records.iter().any(|r| r.path.len() == 4);
    if declared_multiple || has_instances {
        let mut body = Vec::new();
        for r in records {
            let Some(ri) = r.path.resource_instance_id() else {
                return Err(ContentError::Type {
                    path: r.path,
                    reason: "a multi-instance resource needs resource-instance records".into(),
                });
            };
            write_element(
                &mut body,
                Kind::ResourceInstance,
                ri,
                &value_bytes(&r.value),
            )?;
        }
        return write_element(out, Kind::MultipleResource, id, &body);
    }
    match records {
        [] => Ok(()),
        [only] => write_element(out, Kind::Resource, id, &value_bytes(&only.value)),
        [_, second, ..] => Err(ContentError::Type {
            path: second.path,
            reason: "more than one value for a single-instance resource".into(),
        }),
    }
}

/// The value bytes: integers in the shortest of 1/2/4/8 bytes, floats as 8 bytes.
fn value_bytes(value: &Value) -> Vec<u8> {
    match value {
        Value::Integer(v) | Value::Time(v) => signed_bytes(*v),
        Value::Unsigned(v) => unsigned_bytes(*v),
        Value::Float(v) => v.to_be_bytes().to_vec(),
        Value::Boolean(b) => vec![u8::from(*b)],
        Value::String(s) | Value::Corelnk(s) => s.as_bytes().to_vec(),
        Value::Opaque(bytes) => bytes.clone(),
        Value::Objlnk(o, i) => [o.to_be_bytes(), i.to_be_bytes()].concat(),
    }
}

fn signed_bytes(v: i64) -> Vec<u8> {
    if let Ok(b) = i8::try_from(v) {
        b.to_be_bytes().to_vec()
    } else if let Ok(b) = i16::try_from(v) {
        b.to_be_bytes().to_vec()
    } else if let Ok(b) = i32::try_from(v) {
        b.to_be_bytes().to_vec()
    } else {
        v.to_be_bytes().to_vec()
    }
}

/// Unsigned values are written without a sign bit (200 is one byte `C8`); the reader types them
/// with the schema, so they are not mistaken for negative numbers.
fn unsigned_bytes(v: u64) -> Vec<u8> {
    if let Ok(b) = u8::try_from(v) {
        vec![b]
    } else if let Ok(b) = u16::try_from(v) {
        b.to_be_bytes().to_vec()
    } else if let Ok(b) = u32::try_from(v) {
        b.to_be_bytes().to_vec()
    } else {
        v.to_be_bytes().to_vec()
    }
}

/// Appends one element with the narrowest identifier and length fields.
fn write_element(out: &mut Vec<u8>, kind: Kind, id: u16, value: &[u8]) -> Result<(), ContentError> {
    let len = u32::try_from(value.len())
        .ok()
        .filter(|&l| l as usize <= MAX_LEN)
        .ok_or_else(|| {
            ContentError::malformed(
                FORMAT,
                format!("a {}-byte value exceeds the 24-bit length", value.len()),
            )
        })?;
    let mut type_byte = (kind as u8) << 6;
    if id > 0xFF {
        type_byte |= 0b0010_0000;
    }
    // (type bits, how many leading bytes of the big-endian u32 to drop): short values keep their
    // length in the three low type bits and send no length field at all.
    let (len_bits, skip) = match len {
        0..=7 => (len as u8, 4),
        8..=0xFF => (0b01 << 3, 3),
        0x100..=0xFFFF => (0b10 << 3, 2),
        _ => (0b11 << 3, 1),
    };
    out.push(type_byte | len_bits);
    if id > 0xFF {
        out.extend_from_slice(&id.to_be_bytes());
    } else {
        out.push(id as u8);
    }
    out.extend_from_slice(len.to_be_bytes().get(skip..).unwrap_or_default());
    out.extend_from_slice(value);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// One parsed element; `value` borrows from the payload.
#[derive(Debug, Clone, Copy)]
struct Element<'a> {
    kind: Kind,
    id: u16,
    value: &'a [u8],
    /// Offset of the type byte in the whole payload, for error messages.
    at: usize,
    /// Offset of the value in the whole payload (nested elements count from here).
    value_at: usize,
}

/// The elements of one nesting level, parsed one at a time (nothing is collected, so a bad
/// element fails before the rest is looked at), with duplicate ids refused: which of two
/// elements with the same id should win is undefined.
struct Level<'a> {
    bytes: &'a [u8],
    /// Payload offset of `bytes[0]`, for error messages.
    origin: usize,
    pos: usize,
    seen: BTreeSet<u16>,
}

impl<'a> Level<'a> {
    fn new(bytes: &'a [u8], origin: usize) -> Self {
        Self {
            bytes,
            origin,
            pos: 0,
            seen: BTreeSet::new(),
        }
    }

    /// The elements nested in `e`.
    fn inside(e: &Element<'a>) -> Self {
        Self::new(e.value, e.value_at)
    }

    /// The first element, when it is the only one, without consuming it.
    fn only(&self) -> Option<Element<'a>> {
        match element_at(self.bytes, 0, self.origin) {
            Ok((e, end)) if end == self.bytes.len() => Some(e),
            _ => None,
        }
    }

    /// The kind of the first element, without consuming it.
    fn first_kind(&self) -> Option<Kind> {
        self.bytes.first().map(|&b| Kind::from_type_byte(b))
    }

    fn next_element(&mut self) -> Result<Option<Element<'a>>, ContentError> {
        if self.pos >= self.bytes.len() {
            return Ok(None);
        }
        let (e, next) = element_at(self.bytes, self.pos, self.origin)?;
        self.pos = next;
        if !self.seen.insert(e.id) {
            return Err(ContentError::malformed(
                FORMAT,
                format!("id {} appears twice (byte {})", e.id, e.at),
            ));
        }
        Ok(Some(e))
    }
}

/// Parses the element starting at `pos`; returns it and the position after it.
fn element_at(
    bytes: &[u8],
    pos: usize,
    origin: usize,
) -> Result<(Element<'_>, usize), ContentError> {
    let at = origin.saturating_add(pos);
    let truncated =
        || ContentError::malformed(FORMAT, format!("element at byte {at} is truncated"));
    let type_byte = *bytes.get(pos).ok_or_else(truncated)?;
    let id_width = if type_byte & 0b0010_0000 != 0 { 2 } else { 1 };
    let len_width = usize::from((type_byte >> 3) & 0b11);
    let mut cursor = pos + 1;
    let id = read_be(bytes, cursor, id_width).ok_or_else(truncated)?;
    cursor += id_width;
    let len = if len_width == 0 {
        usize::from(type_byte & 0b111)
    } else {
        // Bits 2-0 are ignored when a length field is present (the spec says send 0).
        read_be(bytes, cursor, len_width).ok_or_else(truncated)? as usize
    };
    cursor += len_width;
    let end = cursor.checked_add(len).ok_or_else(truncated)?;
    let value = bytes.get(cursor..end).ok_or_else(|| {
        ContentError::malformed(
            FORMAT,
            format!("element at byte {at} announces {len} bytes past the end"),
        )
    })?;
    let id = u16::try_from(id).map_err(|_| truncated())?;
    let kind = Kind::from_type_byte(type_byte);
    let value_at = origin.saturating_add(cursor);
    Ok((
        Element {
            kind,
            id,
            value,
            at,
            value_at,
        },
        end,
    ))
}

/// Reads `width` (1..=3) bytes big-endian at `pos`.
fn read_be(bytes: &[u8], pos: usize, width: usize) -> Option<u32> {
    let field = bytes.get(pos..pos.checked_add(width)?)?;
    Some(field.iter().fold(0, |acc, &b| (acc << 8) | u32::from(b)))
}

/// Decodes an untrusted payload sent to `base`, typing values with `schema`.
pub fn decode(base: &Path, payload: &[u8], schema: &dyn Schema) -> Result<Decoded, ContentError> {
    let top = Level::new(payload, 0);
    let mut reader = Reader {
        base,
        schema,
        records: Vec::new(),
        containers: Vec::new(),
    };
    match base.len() {
        // Object ids are not in the format, so nothing can be addressed from the root.
        0 => return Err(ContentError::Unsupported(cf::TLV)),
        1 => reader.object(top)?,
        2 => reader.instance(top)?,
        3 => reader.resource(top)?,
        _ => reader.resource_instance(top)?,
    }
    Ok(Decoded {
        records: reader.records,
        containers: sorted_unique(reader.containers),
    })
}

/// Collects records while walking the element tree below `base`.
struct Reader<'s> {
    base: &'s Path,
    schema: &'s dyn Schema,
    records: Vec<Record>,
    containers: Vec<Path>,
}

impl Reader<'_> {
    /// Base `/O`: only Object Instance TLVs at the top.
    fn object(&mut self, mut top: Level<'_>) -> Result<(), ContentError> {
        while let Some(e) = top.next_element()? {
            expect_kind(&e, &[Kind::ObjectInstance], "at object level")?;
            let path = child(self.base, &e)?;
            self.wrapped_instance(path, &e)?;
        }
        Ok(())
    }

    /// The body of an Object Instance TLV at `path`.
    fn wrapped_instance(&mut self, path: Path, e: &Element<'_>) -> Result<(), ContentError> {
        self.containers.push(path);
        self.resources(path, Level::inside(e))
    }

    /// Base `/O/I`: flat resources, or leniently one Object Instance TLV naming the same instance
    /// (some servers wrap even when the path names the instance).
    fn instance(&mut self, top: Level<'_>) -> Result<(), ContentError> {
        match top.only() {
            Some(e) if e.kind == Kind::ObjectInstance => {
                let path = child(&self.base.parent(), &e)?;
                if path != *self.base {
                    return Err(ContentError::OutsideBase {
                        path,
                        base: *self.base,
                    });
                }
                self.wrapped_instance(path, &e)
            }
            _ => self.resources(*self.base, top),
        }
    }

    /// Resource and Multiple Resource TLVs of the instance at `instance`.
    fn resources(&mut self, instance: Path, mut level: Level<'_>) -> Result<(), ContentError> {
        while let Some(e) = level.next_element()? {
            expect_kind(
                &e,
                &[Kind::Resource, Kind::MultipleResource],
                "inside an object instance",
            )?;
            self.one_resource(child(&instance, &e)?, &e)?;
        }
        Ok(())
    }

    /// A Resource TLV (a value) or a Multiple Resource TLV (its instances) at `path`.
    fn one_resource(&mut self, path: Path, e: &Element<'_>) -> Result<(), ContentError> {
        if e.kind == Kind::MultipleResource {
            self.containers.push(path);
            self.instances(path, Level::inside(e))
        } else {
            self.value(path, e)
        }
    }

    /// Resource Instance TLVs of the resource at `resource`.
    fn instances(&mut self, resource: Path, mut level: Level<'_>) -> Result<(), ContentError> {
        while let Some(e) = level.next_element()? {
            expect_kind(&e, &[Kind::ResourceInstance], "inside a multiple resource")?;
            self.value(child(&resource, &e)?, &e)?;
        }
        Ok(())
    }

    /// Base `/O/I/R`: one Resource or Multiple Resource TLV for R, or bare Resource Instance TLVs
    /// when the resource is (or may be) multi-instance. The first element decides which.
    fn resource(&mut self, mut top: Level<'_>) -> Result<(), ContentError> {
        if top.first_kind() == Some(Kind::ResourceInstance) {
            if self.known_single(self.base) {
                return Err(ContentError::malformed(
                    FORMAT,
                    format!(
                        "Resource Instance TLVs for single-instance resource {}",
                        self.base
                    ),
                ));
            }
            return self.instances(*self.base, top);
        }
        let instance = self.base.parent();
        while let Some(e) = top.next_element()? {
            expect_kind(
                &e,
                &[Kind::Resource, Kind::MultipleResource],
                "at resource level",
            )?;
            let path = child(&instance, &e)?;
            if path != *self.base {
                return Err(ContentError::OutsideBase {
                    path,
                    base: *self.base,
                });
            }
            self.one_resource(path, &e)?;
        }
        Ok(())
    }

    /// Base `/O/I/R/RI`: one Resource Instance TLV for RI.
    fn resource_instance(&mut self, mut top: Level<'_>) -> Result<(), ContentError> {
        let resource = self.base.parent();
        while let Some(e) = top.next_element()? {
            expect_kind(&e, &[Kind::ResourceInstance], "at resource-instance level")?;
            let path = child(&resource, &e)?;
            if path != *self.base {
                return Err(ContentError::OutsideBase {
                    path,
                    base: *self.base,
                });
            }
            self.value(path, &e)?;
        }
        Ok(())
    }

    /// True when the schema knows `path`'s resource and says it is single-instance.
    fn known_single(&self, path: &Path) -> bool {
        path.object_id()
            .zip(path.resource_id())
            .and_then(|(o, r)| self.schema.resource(o, r))
            .is_some_and(|meta| !meta.multiple)
    }

    /// Types the element's value for `path` and records it.
    fn value(&mut self, path: Path, e: &Element<'_>) -> Result<(), ContentError> {
        let kind = schema_kind(&path, self.schema);
        let value = typed_value(&path, e.value, kind)?;
        self.records.push(Record::new(path, value));
        Ok(())
    }
}

/// The path below `parent` that element `e` names; 65535 is reserved.
fn child(parent: &Path, e: &Element<'_>) -> Result<Path, ContentError> {
    parent.child(e.id).ok_or_else(|| {
        ContentError::malformed(
            FORMAT,
            format!("element at byte {} uses reserved id {}", e.at, e.id),
        )
    })
}

fn expect_kind(e: &Element<'_>, allowed: &[Kind], place: &str) -> Result<(), ContentError> {
    if allowed.contains(&e.kind) {
        Ok(())
    } else {
        Err(ContentError::malformed(
            FORMAT,
            format!("{} TLV {place} (byte {})", e.kind.name(), e.at),
        ))
    }
}

/// Reads value bytes as `kind`; `None` (unknown resource) keeps the bytes as Opaque.
fn typed_value(
    path: &Path,
    bytes: &[u8],
    kind: Option<ResourceType>,
) -> Result<Value, ContentError> {
    let bad = |what: &str| ContentError::Type {
        path: *path,
        reason: format!("{} bytes are not a valid {what}", bytes.len()),
    };
    let Some(kind) = kind else {
        return Ok(Value::Opaque(bytes.to_vec()));
    };
    match kind {
        ResourceType::Integer => signed(bytes)
            .map(Value::Integer)
            .ok_or_else(|| bad("integer")),
        ResourceType::Time => signed(bytes).map(Value::Time).ok_or_else(|| bad("time")),
        ResourceType::Unsigned => unsigned(bytes)
            .map(Value::Unsigned)
            .ok_or_else(|| bad("unsigned integer")),
        ResourceType::Float => float(bytes).map(Value::Float).ok_or_else(|| bad("float")),
        ResourceType::Boolean => match bytes {
            [0] => Ok(Value::Boolean(false)),
            [1] => Ok(Value::Boolean(true)),
            _ => Err(bad("boolean")),
        },
        ResourceType::Objlnk => match bytes {
            [o1, o2, i1, i2] => Ok(Value::Objlnk(
                u16::from_be_bytes([*o1, *o2]),
                u16::from_be_bytes([*i1, *i2]),
            )),
            _ => Err(bad("object link")),
        },
        ResourceType::String | ResourceType::Corelnk => {
            let text = std::str::from_utf8(bytes)
                .map_err(|_| bad("UTF-8 string"))?
                .to_string();
            Ok(if kind == ResourceType::String {
                Value::String(text)
            } else {
                Value::Corelnk(text)
            })
        }
        ResourceType::Opaque | ResourceType::None => Ok(Value::Opaque(bytes.to_vec())),
    }
}

/// Two's complement, 1/2/4/8 bytes big-endian.
fn signed(bytes: &[u8]) -> Option<i64> {
    Some(match bytes.len() {
        1 => i64::from(i8::from_be_bytes(bytes.try_into().ok()?)),
        2 => i64::from(i16::from_be_bytes(bytes.try_into().ok()?)),
        4 => i64::from(i32::from_be_bytes(bytes.try_into().ok()?)),
        8 => i64::from_be_bytes(bytes.try_into().ok()?),
        _ => return None,
    })
}

/// Unsigned, 1/2/4/8 bytes big-endian.
fn unsigned(bytes: &[u8]) -> Option<u64> {
    match bytes.len() {
        1 | 2 | 4 | 8 => Some(bytes.iter().fold(0, |acc, &b| (acc << 8) | u64::from(b))),
        _ => None,
    }
}

/// IEEE-754 binary32 or binary64, big-endian.
fn float(bytes: &[u8]) -> Option<f64> {
    match bytes.len() {
        4 => Some(f64::from(f32::from_be_bytes(bytes.try_into().ok()?))),
        8 => Some(f64::from_be_bytes(bytes.try_into().ok()?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::core::lwm2m::content::NewestModel;
    use crate::core::lwm2m::content::test_support::{
        MULTI, TEST_OBJECT, TestSchema, Uniform, Unknown, below, resource_and_value, tree,
    };

    fn rec(path: Path, value: Value) -> Record {
        Record::new(path, value)
    }

    fn hex(bytes: &[u8]) -> String {
        bytes
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The worked example of lwm2m-notes §f, element by element.
    const MANUFACTURER: &[u8] = &[0xC4, 0x00, b'O', b'p', b'e', b'n'];
    const MODEL: &[u8] = &[
        0xC8, 0x01, 0x0A, b'G', b'W', b'-', b'E', b'D', b'G', b'E', b'-', b'0', b'1',
    ];
    const BATTERY: &[u8] = &[0xC1, 0x09, 0x57];
    const POWER_SOURCES: &[u8] = &[0x86, 0x06, 0x41, 0x00, 0x01, 0x41, 0x01, 0x05];

    /// The example's records in the example's element order (9 before 6).
    fn example_records() -> Vec<Record> {
        vec![
            rec(Path::resource(3, 0, 0), Value::String("Open".into())),
            rec(Path::resource(3, 0, 1), Value::String("GW-EDGE-01".into())),
            rec(Path::resource(3, 0, 9), Value::Integer(87)),
            rec(Path::resource_instance(3, 0, 6, 0), Value::Integer(1)),
            rec(Path::resource_instance(3, 0, 6, 1), Value::Integer(5)),
        ]
    }

    fn example_payload() -> Vec<u8> {
        [MANUFACTURER, MODEL, BATTERY, POWER_SOURCES].concat()
    }

    #[test]
    fn worked_example_encodes_byte_for_byte() {
        let payload = encode(&Path::instance(3, 0), &example_records(), &NewestModel).unwrap();
        assert_eq!(hex(&payload), hex(&example_payload()));
        assert_eq!(payload.len(), 30);
    }

    #[test]
    fn sorted_records_put_resource_6_before_9() {
        let mut records = example_records();
        records.sort_by_key(|r| r.path);
        let payload = encode(&Path::instance(3, 0), &records, &NewestModel).unwrap();
        let expected = [MANUFACTURER, MODEL, POWER_SOURCES, BATTERY].concat();
        assert_eq!(hex(&payload), hex(&expected));
    }

    #[test]
    fn worked_example_wrapped_for_an_object_read() {
        let payload = encode(&Path::object(3), &example_records(), &NewestModel).unwrap();
        let mut expected = vec![0x08, 0x00, 0x1E];
        expected.extend(example_payload());
        assert_eq!(hex(&payload), hex(&expected));
        assert_eq!(payload.len(), 33);
    }

    #[test]
    fn worked_example_decodes() {
        let decoded = decode(&Path::instance(3, 0), &example_payload(), &NewestModel).unwrap();
        assert_eq!(decoded.records, example_records());
        assert_eq!(decoded.containers, vec![Path::resource(3, 0, 6)]);

        let mut wrapped = vec![0x08, 0x00, 0x1E];
        wrapped.extend(example_payload());
        let decoded = decode(&Path::object(3), &wrapped, &NewestModel).unwrap();
        assert_eq!(decoded.records, example_records());
        assert_eq!(
            decoded.containers,
            vec![Path::instance(3, 0), Path::resource(3, 0, 6)]
        );
    }

    #[test]
    fn other_vectors_from_the_notes() {
        // Resource 300 = 1: 16-bit identifier.
        let p = Path::resource(3, 0, 300);
        let bytes = encode(&p, &[rec(p, Value::Integer(1))], &NewestModel).unwrap();
        assert_eq!(bytes, [0xE1, 0x01, 0x2C, 0x01]);
        // Unknown to the schema: the value stays Opaque.
        let decoded = decode(&p, &bytes, &NewestModel).unwrap();
        assert_eq!(decoded.records, vec![rec(p, Value::Opaque(vec![1]))]);

        // Integer 300 in resource 1 (Server Lifetime).
        let p = Path::resource(1, 0, 1);
        let bytes = encode(&p, &[rec(p, Value::Integer(300))], &NewestModel).unwrap();
        assert_eq!(bytes, [0xC2, 0x01, 0x01, 0x2C]);
        assert_eq!(
            decode(&p, &bytes, &NewestModel).unwrap().records,
            vec![rec(p, Value::Integer(300))]
        );

        // Objlnk 9:1 in resource 17 (Security: OSCORE Security Mode).
        let p = Path::resource(0, 0, 17);
        let bytes = encode(&p, &[rec(p, Value::Objlnk(9, 1))], &NewestModel).unwrap();
        assert_eq!(bytes, [0xC4, 0x11, 0x00, 0x09, 0x00, 0x01]);
        assert_eq!(
            decode(&p, &bytes, &NewestModel).unwrap().records,
            vec![rec(p, Value::Objlnk(9, 1))]
        );

        // Error Code -2 as a plain Resource TLV.
        let p = Path::resource(3, 0, 11);
        let schema = Uniform(ResourceType::Integer, false);
        let bytes = encode(&p, &[rec(p, Value::Integer(-2))], &schema).unwrap();
        assert_eq!(bytes, [0xC1, 0x0B, 0xFE]);
        assert_eq!(
            decode(&p, &bytes, &schema).unwrap().records,
            vec![rec(p, Value::Integer(-2))]
        );
    }

    #[test]
    fn integer_widths_are_minimal() {
        let p = Path::resource(1, 0, 1);
        let cases: [(i64, &[u8]); 8] = [
            (0, &[0xC1, 0x01, 0x00]),
            (-128, &[0xC1, 0x01, 0x80]),
            (128, &[0xC2, 0x01, 0x00, 0x80]),
            (-32769, &[0xC4, 0x01, 0xFF, 0xFF, 0x7F, 0xFF]),
            (32768, &[0xC4, 0x01, 0x00, 0x00, 0x80, 0x00]),
            (
                2_147_483_648,
                &[0xC8, 0x01, 0x08, 0, 0, 0, 0, 0x80, 0, 0, 0],
            ),
            (i64::MIN, &[0xC8, 0x01, 0x08, 0x80, 0, 0, 0, 0, 0, 0, 0]),
            (
                i64::MAX,
                &[
                    0xC8, 0x01, 0x08, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                ],
            ),
        ];
        for (v, expected) in cases {
            let bytes = encode(&p, &[rec(p, Value::Integer(v))], &NewestModel).unwrap();
            assert_eq!(hex(&bytes), hex(expected), "{v}");
            assert_eq!(
                decode(&p, &bytes, &NewestModel).unwrap().records,
                vec![rec(p, Value::Integer(v))]
            );
        }
    }

    #[test]
    fn unsigned_values_use_no_sign_bit() {
        // /5/0/13 Maximum Defer Period is Unsigned.
        let p = Path::resource(5, 0, 13);
        let cases: [(u64, &[u8]); 4] = [
            (200, &[0xC1, 0x0D, 0xC8]),
            (65535, &[0xC2, 0x0D, 0xFF, 0xFF]),
            (65536, &[0xC4, 0x0D, 0x00, 0x01, 0x00, 0x00]),
            (
                u64::MAX,
                &[
                    0xC8, 0x0D, 0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                ],
            ),
        ];
        for (v, expected) in cases {
            let bytes = encode(&p, &[rec(p, Value::Unsigned(v))], &NewestModel).unwrap();
            assert_eq!(hex(&bytes), hex(expected), "{v}");
            assert_eq!(
                decode(&p, &bytes, &NewestModel).unwrap().records,
                vec![rec(p, Value::Unsigned(v))]
            );
        }
    }

    #[test]
    fn other_types_have_fixed_layouts() {
        let s = TestSchema;
        let p = |r| Path::resource(TEST_OBJECT, 0, r);
        let cases: [(u16, Value, &[u8]); 6] = [
            (
                3,
                Value::Float(1.5),
                &[0xC8, 0x03, 0x08, 0x3F, 0xF8, 0, 0, 0, 0, 0, 0],
            ),
            (4, Value::Boolean(true), &[0xC1, 0x04, 0x01]),
            (
                6,
                Value::Time(1_700_000_000),
                &[0xC4, 0x06, 0x65, 0x53, 0xF1, 0x00],
            ),
            (5, Value::Opaque(vec![]), &[0xC0, 0x05]),
            (
                8,
                Value::Corelnk("</1>".into()),
                &[0xC4, 0x08, b'<', b'/', b'1', b'>'],
            ),
            (0, Value::String("é".into()), &[0xC2, 0x00, 0xC3, 0xA9]),
        ];
        for (r, v, expected) in cases {
            let bytes = encode(&p(r), &[rec(p(r), v.clone())], &s).unwrap();
            assert_eq!(hex(&bytes), hex(expected), "{v:?}");
            assert_eq!(
                decode(&p(r), &bytes, &s).unwrap().records,
                vec![rec(p(r), v)]
            );
        }
        // A 4-byte float is accepted on input.
        let bytes = [0xC4, 0x03, 0x3F, 0xC0, 0x00, 0x00];
        assert_eq!(
            decode(&p(3), &bytes, &s).unwrap().records,
            vec![rec(p(3), Value::Float(1.5))]
        );
    }

    #[test]
    fn length_fields_grow_with_the_value() {
        let s = TestSchema;
        let p = Path::resource(TEST_OBJECT, 0, 5);
        for (len, header) in [
            (7usize, vec![0xC7, 0x05]),
            (8, vec![0xC8, 0x05, 0x08]),
            (255, vec![0xC8, 0x05, 0xFF]),
            (256, vec![0xD0, 0x05, 0x01, 0x00]),
            (65535, vec![0xD0, 0x05, 0xFF, 0xFF]),
            (65536, vec![0xD8, 0x05, 0x01, 0x00, 0x00]),
        ] {
            let value = Value::Opaque(vec![0xAB; len]);
            let bytes = encode(&p, &[rec(p, value.clone())], &s).unwrap();
            assert_eq!(bytes.get(..header.len()), Some(&header[..]), "{len}");
            assert_eq!(bytes.len(), header.len() + len);
            assert_eq!(decode(&p, &bytes, &s).unwrap().records, vec![rec(p, value)]);
        }
    }

    #[test]
    fn multi_instance_resources_by_base() {
        let s = NewestModel;
        let errors = vec![
            rec(Path::resource_instance(3, 0, 11, 0), Value::Integer(0)),
            rec(Path::resource_instance(3, 0, 11, 3), Value::Integer(-2)),
        ];
        let mr = [0x86, 0x0B, 0x41, 0x00, 0x00, 0x41, 0x03, 0xFE];
        // At /O/I/R the schema says multiple: one Multiple Resource TLV.
        let base = Path::resource(3, 0, 11);
        assert_eq!(encode(&base, &errors, &s).unwrap(), mr);
        // Even with no instances at all.
        assert_eq!(encode(&base, &[], &s).unwrap(), [0x80, 0x0B]);
        // At /O/I it is a Multiple Resource TLV too.
        assert_eq!(encode(&Path::instance(3, 0), &errors, &s).unwrap(), mr);
        // At /O/I/R/RI a single Resource Instance TLV.
        let ri = Path::resource_instance(3, 0, 11, 3);
        assert_eq!(encode(&ri, &errors[1..], &s).unwrap(), [0x41, 0x03, 0xFE]);
        // A multi-instance resource given as a single value is inconsistent.
        assert!(matches!(
            encode(&base, &[rec(base, Value::Integer(1))], &s),
            Err(ContentError::Type { .. })
        ));
    }

    #[test]
    fn encode_rejects_what_tlv_cannot_say() {
        let p = Path::resource(3, 0, 0);
        let one = [rec(p, Value::String("x".into()))];
        assert_eq!(
            encode(&Path::ROOT, &one, &NewestModel),
            Err(ContentError::NotSingle(cf::TLV))
        );
        let ri = Path::resource_instance(3, 0, 11, 0);
        assert_eq!(
            encode(&ri, &[], &NewestModel),
            Err(ContentError::NotSingle(cf::TLV))
        );
        let dup = [
            rec(p, Value::String("x".into())),
            rec(p, Value::String("y".into())),
        ];
        assert!(matches!(
            encode(&Path::instance(3, 0), &dup, &NewestModel),
            Err(ContentError::Type { .. })
        ));
    }

    #[test]
    fn decode_bases_and_nesting() {
        let s = NewestModel;
        let mr = [0x86, 0x0B, 0x41, 0x00, 0x00, 0x41, 0x03, 0xFE];
        let errors = vec![
            rec(Path::resource_instance(3, 0, 11, 0), Value::Integer(0)),
            rec(Path::resource_instance(3, 0, 11, 3), Value::Integer(-2)),
        ];
        let base = Path::resource(3, 0, 11);
        let decoded = decode(&base, &mr, &s).unwrap();
        assert_eq!(decoded.records, errors);
        assert_eq!(decoded.containers, vec![base]);
        // Bare Resource Instance TLVs at a multi-instance resource.
        let decoded = decode(&base, &mr[2..], &s).unwrap();
        assert_eq!(decoded.records, errors);
        assert_eq!(decoded.containers, vec![]);
        // ...but not at a single-instance one.
        assert!(matches!(
            decode(&Path::resource(3, 0, 9), &[0x41, 0x00, 0x01], &s),
            Err(ContentError::Malformed { .. })
        ));
        // /O/I/R/RI: one Resource Instance TLV with the right id.
        let ri = Path::resource_instance(3, 0, 11, 3);
        assert_eq!(
            decode(&ri, &[0x41, 0x03, 0xFE], &s).unwrap().records,
            errors[1..]
        );
        assert_eq!(
            decode(&ri, &[0x41, 0x04, 0xFE], &s),
            Err(ContentError::OutsideBase {
                path: Path::resource_instance(3, 0, 11, 4),
                base: ri
            })
        );
        // A Resource TLV for another resource at /O/I/R.
        assert_eq!(
            decode(&Path::resource(3, 0, 9), &[0xC1, 0x0A, 0x01], &s),
            Err(ContentError::OutsideBase {
                path: Path::resource(3, 0, 10),
                base: Path::resource(3, 0, 9)
            })
        );
        // The root cannot be addressed.
        assert_eq!(
            decode(&Path::ROOT, &[0x08, 0x00, 0x00], &s),
            Err(ContentError::Unsupported(cf::TLV))
        );
        // Empty payloads carry nothing.
        assert_eq!(
            decode(&Path::instance(3, 0), &[], &s),
            Ok(Decoded::default())
        );
        // An empty Object Instance TLV is still a named container.
        assert_eq!(
            decode(&Path::object(3), &[0x00, 0x01], &s)
                .unwrap()
                .containers,
            vec![Path::instance(3, 1)]
        );
    }

    #[test]
    fn wrapped_instance_is_unwrapped_at_instance_level() {
        let s = NewestModel;
        let wrapped = [0x08, 0x00, 0x03, 0xC1, 0x09, 0x57];
        let decoded = decode(&Path::instance(3, 0), &wrapped, &s).unwrap();
        assert_eq!(
            decoded.records,
            vec![rec(Path::resource(3, 0, 9), Value::Integer(87))]
        );
        assert_eq!(decoded.containers, vec![Path::instance(3, 0)]);
        // Another instance id is outside the base.
        let other = [0x08, 0x01, 0x03, 0xC1, 0x09, 0x57];
        assert_eq!(
            decode(&Path::instance(3, 0), &other, &s),
            Err(ContentError::OutsideBase {
                path: Path::instance(3, 1),
                base: Path::instance(3, 0)
            })
        );
        // Two wrappers, or a wrapper next to a resource, are not lenient cases.
        let two = [0x00, 0x00, 0x00, 0x01];
        assert!(matches!(
            decode(&Path::instance(3, 0), &two, &s),
            Err(ContentError::Malformed { .. })
        ));
        let mixed = [0x00, 0x00, 0xC1, 0x09, 0x57];
        assert!(matches!(
            decode(&Path::instance(3, 0), &mixed, &s),
            Err(ContentError::Malformed { .. })
        ));
    }

    #[test]
    fn misplaced_elements_are_malformed() {
        let s = NewestModel;
        let cases: [(Path, &[u8]); 6] = [
            // Resource TLV at object level.
            (Path::object(3), &[0xC1, 0x09, 0x57]),
            // Object Instance TLV inside an Object Instance TLV.
            (Path::object(3), &[0x02, 0x00, 0x00, 0x00]),
            // Resource Instance TLV directly in an instance.
            (Path::instance(3, 0), &[0x41, 0x00, 0x01]),
            // Resource TLV inside a Multiple Resource TLV.
            (Path::instance(3, 0), &[0x83, 0x0B, 0xC1, 0x00, 0x01]),
            // Multiple Resource TLV at resource-instance level.
            (Path::resource_instance(3, 0, 11, 0), &[0x80, 0x0B]),
            // Object Instance TLV at resource level.
            (Path::resource(3, 0, 11), &[0x00, 0x00]),
        ];
        for (base, payload) in cases {
            assert!(
                matches!(
                    decode(&base, payload, &s),
                    Err(ContentError::Malformed { .. })
                ),
                "{base} {}",
                hex(payload)
            );
        }
    }

    #[test]
    fn duplicates_and_reserved_ids_are_malformed() {
        let s = NewestModel;
        let cases: [(Path, &[u8]); 5] = [
            (Path::instance(3, 0), &[0xC1, 0x09, 0x57, 0xC1, 0x09, 0x58]),
            // Resource 11 as a value and as a Multiple Resource.
            (Path::instance(3, 0), &[0xC1, 0x0B, 0x00, 0x80, 0x0B]),
            (Path::object(3), &[0x00, 0x00, 0x00, 0x00]),
            (
                Path::resource(3, 0, 11),
                &[0x41, 0x00, 0x00, 0x41, 0x00, 0x01],
            ),
            // Resource 65535 is reserved.
            (Path::instance(3, 0), &[0xE1, 0xFF, 0xFF, 0x00]),
        ];
        for (base, payload) in cases {
            assert!(
                matches!(
                    decode(&base, payload, &s),
                    Err(ContentError::Malformed { .. })
                ),
                "{base} {}",
                hex(payload)
            );
        }
    }

    #[test]
    fn values_that_do_not_fit_the_type_are_type_errors() {
        let s = TestSchema;
        let p = |r| Path::resource(TEST_OBJECT, 0, r);
        let cases: [(u16, &[u8]); 9] = [
            (1, &[0xC3, 0x01, 0, 0, 0]),       // 3-byte integer
            (1, &[0xC0, 0x01]),                // empty integer
            (2, &[0xC5, 0x02, 0, 0, 0, 0, 0]), // 5-byte unsigned
            (3, &[0xC2, 0x03, 0, 0]),          // 2-byte float
            (4, &[0xC1, 0x04, 0x02]),          // boolean 2
            (4, &[0xC2, 0x04, 0x00, 0x01]),    // 2-byte boolean
            (7, &[0xC3, 0x07, 0, 0, 0]),       // 3-byte objlnk
            (0, &[0xC2, 0x00, 0xC3, 0x28]),    // invalid UTF-8
            (8, &[0xC1, 0x08, 0xFF]),          // invalid UTF-8 corelnk
        ];
        for (r, payload) in cases {
            assert!(
                matches!(decode(&p(r), payload, &s), Err(ContentError::Type { .. })),
                "{}",
                hex(payload)
            );
        }
    }

    #[test]
    fn lengths_past_the_end_are_malformed() {
        let s = Unknown;
        let base = Path::instance(3, 0);
        for payload in [
            &[0xC5, 0x00, 1, 2, 3, 4][..],         // 5 announced, 4 present
            &[0xC8, 0x00, 0x02, 1],                // 8-bit length 2, 1 present
            &[0xD0, 0x00, 0xFF, 0xFF, 1],          // 16-bit length
            &[0xD8, 0x00, 0xFF, 0xFF, 0xFF],       // 24-bit length, nothing
            &[0xE0, 0x00],                         // 16-bit id cut short
            &[0xC8],                               // no id
            &[0x88, 0x06, 0x04, 0x41, 0x00, 0x01], // nested past the parent's end
        ] {
            assert!(
                matches!(
                    decode(&base, payload, &s),
                    Err(ContentError::Malformed { .. })
                ),
                "{}",
                hex(payload)
            );
        }
        // A nested element running past its parent (but not past the payload) is caught too.
        let payload = [0x86, 0x06, 0x41, 0x00, 0x01, 0x42, 0x01, 0x05, 0x00];
        assert!(matches!(
            decode(&base, &payload, &s),
            Err(ContentError::Malformed { .. })
        ));
    }

    #[test]
    fn every_truncation_of_a_valid_payload_fails_cleanly() {
        let mut wrapped = vec![0x08, 0x00, 0x1E];
        wrapped.extend(example_payload());
        for cut in 1..wrapped.len() {
            let result = decode(&Path::object(3), &wrapped[..cut], &NewestModel);
            assert!(
                matches!(result, Err(ContentError::Malformed { .. })),
                "cut at {cut}: {result:?}"
            );
        }
        // Cutting the flat payload only at element boundaries yields fewer records.
        let flat = example_payload();
        let boundaries = [6, 19, 22, 30];
        for cut in 1..flat.len() {
            let result = decode(&Path::instance(3, 0), &flat[..cut], &NewestModel);
            assert_eq!(result.is_ok(), boundaries.contains(&cut), "cut at {cut}");
        }
    }

    #[test]
    fn nonzero_low_bits_with_a_length_field_are_ignored() {
        let s = NewestModel;
        let p = Path::resource(3, 0, 9);
        let decoded = decode(&p, &[0xCF, 0x09, 0x01, 0x57], &s).unwrap();
        assert_eq!(decoded.records, vec![rec(p, Value::Integer(87))]);
    }

    proptest! {
        #[test]
        fn round_trips_below_every_base(
            records in tree(),
            pick in any::<proptest::sample::Index>(),
            depth in 1usize..=4,
        ) {
            let (base, subset) = below(&records, pick, depth);
            let bytes = encode(&base, &subset, &TestSchema).unwrap();
            let decoded = decode(&base, &bytes, &TestSchema).unwrap();
            prop_assert_eq!(&decoded.records, &subset);
            // Containers: wrappers that the encoding had to write.
            let mut expected = Vec::new();
            for r in &subset {
                if base.len() == 1 {
                    expected.push(r.path.truncate(2));
                }
                if r.path.len() == 4 && base.len() <= 3 {
                    expected.push(r.path.parent());
                }
            }
            let multi_base = base.len() == 3 && base.resource_id().is_some_and(|r| r >= MULTI);
            if multi_base {
                expected.push(base);
            }
            prop_assert_eq!(decoded.containers, sorted_unique(expected));
        }

        #[test]
        fn single_values_round_trip((r, v) in resource_and_value(), multi in any::<bool>()) {
            // As a resource value, and as a resource instance of the multi-instance twin.
            let p = if multi {
                Path::resource_instance(TEST_OBJECT, 1, r + MULTI, 7)
            } else {
                Path::resource(TEST_OBJECT, 1, r)
            };
            let bytes = encode(&p, &[rec(p, v.clone())], &TestSchema).unwrap();
            prop_assert_eq!(decode(&p, &bytes, &TestSchema).unwrap().records, vec![rec(p, v)]);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            for base in [
                Path::ROOT,
                Path::object(3),
                Path::instance(3, 0),
                Path::resource(3, 0, 11),
                Path::resource(3, 0, 0),
                Path::resource_instance(3, 0, 11, 0),
                Path::instance(TEST_OBJECT, 0),
            ] {
                let _ = decode(&base, &bytes, &TestSchema);
                let _ = decode(&base, &bytes, &Unknown);
            }
        }

        #[test]
        fn mutated_payloads_never_panic(
            flips in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let mut payload = vec![0x08, 0x00, 0x1E];
            payload.extend(example_payload());
            for (at, byte) in flips {
                let i = at.index(payload.len());
                payload[i] = byte;
            }
            let _ = decode(&Path::object(3), &payload, &NewestModel);
            let _ = decode(&Path::instance(3, 0), &payload, &NewestModel);
        }
    }
}

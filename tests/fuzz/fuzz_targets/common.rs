//! Shared by the content-format targets: the bases to decode at, schemas of every type, and the
//! properties every successful decode must have.

#![allow(dead_code)] // each target uses a different part

use lwm2md::core::lwm2m::content::{self, Decoded, NewestModel, Schema};
use lwm2md::core::lwm2m::path::Path;
use lwm2md::core::lwm2m::value::Record;
use lwm2md::model::{Operations, Range, ResourceMeta, ResourceType};

/// Bases at every depth, over objects whose resources cover most types (the OMA model has no
/// Float resource: `Uniform` below supplies one).
pub const BASES: [Path; 13] = [
    Path::ROOT,
    Path::object(3),
    Path::object(1),
    Path::instance(3, 0),
    Path::instance(0, 0),
    Path::instance(5, 0),
    Path::resource(3, 0, 0),
    Path::resource(3, 0, 11),
    Path::resource(3, 0, 13),
    Path::resource(5, 0, 0),
    Path::resource(0, 0, 17),
    Path::resource_instance(3, 0, 11, 0),
    Path::resource(3, 0, 999),
];

/// Single-value paths and what NewestModel says they are.
pub const VALUE_BASES: [Path; 11] = [
    Path::resource(3, 0, 0),  // String
    Path::resource(3, 0, 9),  // Integer
    Path::resource(3, 0, 13), // Time
    Path::resource(5, 0, 0),  // Opaque
    Path::resource(5, 0, 13), // Unsigned
    Path::resource(5, 0, 14), // Boolean
    Path::resource(0, 0, 17), // Objlnk
    Path::resource(25, 0, 3), // Corelnk
    Path::resource(3, 0, 4),  // executable (no type)
    Path::resource_instance(3, 0, 11, 0),
    Path::resource(3, 0, 999), // unknown
];

pub const KINDS: [ResourceType; 9] = [
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

const fn meta(kind: ResourceType, multiple: bool) -> ResourceMeta {
    ResourceMeta {
        id: 0,
        name: "fuzz",
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
    meta(KINDS[0], false),
    meta(KINDS[1], false),
    meta(KINDS[2], false),
    meta(KINDS[3], false),
    meta(KINDS[4], false),
    meta(KINDS[5], false),
    meta(KINDS[6], false),
    meta(KINDS[7], false),
    meta(KINDS[8], false),
];

static MULTIPLE: [ResourceMeta; 9] = [
    meta(KINDS[0], true),
    meta(KINDS[1], true),
    meta(KINDS[2], true),
    meta(KINDS[3], true),
    meta(KINDS[4], true),
    meta(KINDS[5], true),
    meta(KINDS[6], true),
    meta(KINDS[7], true),
    meta(KINDS[8], true),
];

/// Every resource has type `KINDS[.0]`, multi-instance when `.1`.
#[derive(Clone, Copy)]
pub struct Uniform(pub usize, pub bool);

impl Schema for Uniform {
    fn resource(&self, _object: u16, _resource: u16) -> Option<&'static ResourceMeta> {
        if self.1 {
            MULTIPLE.get(self.0)
        } else {
            SINGLE.get(self.0)
        }
    }
}

/// The schemas a target tries: the OMA model first, then one uniform schema chosen by `pick`.
pub fn schemas(pick: u8) -> [&'static dyn Schema; 2] {
    static UNIFORM: [Uniform; 18] = [
        Uniform(0, false),
        Uniform(1, false),
        Uniform(2, false),
        Uniform(3, false),
        Uniform(4, false),
        Uniform(5, false),
        Uniform(6, false),
        Uniform(7, false),
        Uniform(8, false),
        Uniform(0, true),
        Uniform(1, true),
        Uniform(2, true),
        Uniform(3, true),
        Uniform(4, true),
        Uniform(5, true),
        Uniform(6, true),
        Uniform(7, true),
        Uniform(8, true),
    ];
    let uniform = &UNIFORM[usize::from(pick) % UNIFORM.len()];
    [&NewestModel, uniform]
}

/// What every successful decode promises: records at or below the base, at value depth;
/// containers sorted, unique and at instance or resource depth.
pub fn check_decoded(base: &Path, decoded: &Decoded) {
    for r in &decoded.records {
        assert!(r.path.starts_with(base), "{} outside {base}", r.path);
        assert!(matches!(r.path.len(), 3 | 4), "record at {}", r.path);
    }
    assert!(
        decoded.containers.windows(2).all(|w| w[0] < w[1]),
        "containers not sorted/unique"
    );
    for c in &decoded.containers {
        assert!(matches!(c.len(), 2 | 3), "container {c}");
    }
}

/// Decodes at `base`; on success checks the invariants and that re-encoding is stable: whatever
/// the encoder makes of the decoded records must decode again and re-encode to the same bytes.
pub fn decode_and_reencode(format: u16, base: &Path, payload: &[u8], schema: &dyn Schema) {
    let Ok(decoded) = content::decode(format, base, payload, schema) else {
        return;
    };
    check_decoded(base, &decoded);
    let mut records: Vec<Record> = decoded.records;
    records.sort_by_key(|r| r.path);
    // Not everything decodable is encodable (a plain value for a resource the schema calls
    // multi-instance, say), so only successful encodings are checked.
    let Ok(first) = content::encode(format, base, &records, schema) else {
        return;
    };
    let again = content::decode(format, base, &first, schema)
        .unwrap_or_else(|e| panic!("own encoding does not decode: {e}"));
    let mut again = again.records;
    again.sort_by_key(|r| r.path);
    let second = content::encode(format, base, &again, schema)
        .unwrap_or_else(|e| panic!("re-decoded records do not encode: {e}"));
    assert_eq!(first, second, "encoding is not stable");
}

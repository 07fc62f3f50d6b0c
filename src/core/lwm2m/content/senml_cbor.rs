//! application/senml+cbor (CF 112, RFC 8428 with integer labels, via minicbor).
//!
//! The decoder walks the pack iteratively with minicbor's low-level `Decoder`: the only
//! containers it enters are the outer array and each record map, and the value of an unknown key
//! must be a scalar, so attacker-chosen nesting is never recursed into (not even by `skip`).

use std::collections::BTreeSet;

use minicbor::data::Type;
use minicbor::{Decoder, Encoder};

use super::cbor::{self, datatype, decode_error, encode_error};
use super::senml::{self, PathResolver, RawRecord, RawValue, Resolver, Sink};
use super::{ContentError, Decoded, Schema};
use crate::core::lwm2m::path::Path;
use crate::core::lwm2m::value::{Record, Value};

const FORMAT: &str = "SenML CBOR";

/// RFC 8428 §6 integer labels.
mod label {
    pub(super) const BASE_NAME: i128 = -2;
    pub(super) const BASE_TIME: i128 = -3;
    pub(super) const NAME: i128 = 0;
    pub(super) const VALUE: i128 = 2;
    pub(super) const STRING_VALUE: i128 = 3;
    pub(super) const BOOL_VALUE: i128 = 4;
    pub(super) const TIME: i128 = 6;
    pub(super) const DATA_VALUE: i128 = 8;
}

/// The LwM2M object-link value has no registered integer label, only this text key.
const OBJLNK_KEY: &str = "vlo";

/// Encodes `records` for a request on `base`.
pub fn encode(base: &Path, records: &[Record]) -> Result<Vec<u8>, ContentError> {
    let mut e = Encoder::new(Vec::new());
    write_pack(&mut e, base, records).map_err(|err| encode_error(FORMAT, &err))?;
    Ok(e.into_writer())
}

type EncodeResult = Result<(), minicbor::encode::Error<std::convert::Infallible>>;

fn write_pack(e: &mut Encoder<Vec<u8>>, base: &Path, records: &[Record]) -> EncodeResult {
    e.array(records.len() as u64)?;
    for (index, record) in records.iter().enumerate() {
        let bn = (index == 0).then(|| senml::base_name(base, records));
        let n = senml::relative_name(base, record);
        let entries = 1 + u64::from(bn.is_some()) + u64::from(n.is_some());
        e.map(entries)?;
        if let Some(bn) = bn {
            put_label(e, label::BASE_NAME)?.str(&bn)?;
        }
        if let Some(n) = n {
            put_label(e, label::NAME)?.str(&n)?;
        }
        write_value(e, &record.value)?;
    }
    Ok(())
}

/// The value entry (label and value) of one record.
fn write_value(e: &mut Encoder<Vec<u8>>, value: &Value) -> EncodeResult {
    match value {
        Value::Integer(v) | Value::Time(v) => put_label(e, label::VALUE)?.i64(*v).map(drop),
        Value::Unsigned(v) => put_label(e, label::VALUE)?.u64(*v).map(drop),
        Value::Float(v) => cbor::write_float(put_label(e, label::VALUE)?, *v),
        Value::String(s) | Value::Corelnk(s) => put_label(e, label::STRING_VALUE)?.str(s).map(drop),
        Value::Boolean(b) => put_label(e, label::BOOL_VALUE)?.bool(*b).map(drop),
        Value::Opaque(bytes) => put_label(e, label::DATA_VALUE)?.bytes(bytes).map(drop),
        Value::Objlnk(o, i) => e.str(OBJLNK_KEY)?.str(&format!("{o}:{i}")).map(drop),
    }
}

/// Writes a map label (the labels are small constants, so the cast is exact).
fn put_label(
    e: &mut Encoder<Vec<u8>>,
    label: i128,
) -> Result<&mut Encoder<Vec<u8>>, minicbor::encode::Error<std::convert::Infallible>> {
    e.i64(label as i64)
}

/// Decodes an untrusted payload sent to `base`.
pub fn decode(base: &Path, payload: &[u8], schema: &dyn Schema) -> Result<Decoded, ContentError> {
    let mut resolver = Resolver::new(FORMAT, base, schema);
    parse(payload, &mut resolver)?;
    Ok(resolver.finish())
}

/// Decodes a path list (records with names and no values).
pub fn decode_paths(payload: &[u8]) -> Result<Vec<Path>, ContentError> {
    let mut resolver = PathResolver::new(FORMAT);
    parse(payload, &mut resolver)?;
    Ok(resolver.finish())
}

/// The syntax layer: one array of maps, nothing after it; each record goes to `sink`.
fn parse(payload: &[u8], sink: &mut dyn Sink) -> Result<(), ContentError> {
    let mut d = Decoder::new(payload);
    let declared = d.array().map_err(|e| decode_error(FORMAT, &e))?;
    // The declared length is attacker data: it only ever counts records actually read. Every
    // record consumes at least one byte, so the loop ends at the end of the payload at the latest.
    let mut count = 0;
    while more(&mut d, declared, count)? {
        sink.push(record(&mut d)?)?;
        count += 1;
    }
    if d.position() != payload.len() {
        return Err(cbor::trailing(FORMAT, d.position()));
    }
    Ok(())
}

/// True while a definite container has items left, or an indefinite one has not hit its break
/// (which is consumed here).
fn more(d: &mut Decoder<'_>, declared: Option<u64>, done: usize) -> Result<bool, ContentError> {
    match declared {
        Some(n) => Ok((done as u64) < n),
        None if datatype(d, FORMAT)? == Type::Break => {
            d.set_position(d.position().saturating_add(1));
            Ok(false)
        }
        None => Ok(true),
    }
}

/// A map key: an integer label or a text key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Label(i128),
    Text(String),
}

/// One record map.
fn record(d: &mut Decoder<'_>) -> Result<RawRecord, ContentError> {
    let declared = d.map().map_err(|e| decode_error(FORMAT, &e))?;
    let mut record = RawRecord::default();
    let mut seen = BTreeSet::new();
    let mut entries = 0;
    while more(d, declared, entries)? {
        let at = d.position();
        let key = key(d)?;
        entry(d, &key, &mut record)?;
        if !seen.insert(key) {
            return Err(ContentError::malformed(
                FORMAT,
                format!("duplicate key at byte {at}"),
            ));
        }
        entries += 1;
    }
    Ok(record)
}

fn key(d: &mut Decoder<'_>) -> Result<Key, ContentError> {
    let at = d.position();
    match datatype(d, FORMAT)? {
        Type::String | Type::StringIndef => cbor::text(d, FORMAT).map(Key::Text),
        t if cbor::is_number(t) => match cbor::number(d, FORMAT)? {
            cbor::Number::Int(i) => Ok(Key::Label(i)),
            cbor::Number::Float(_) => Err(bad_key(at)),
        },
        _ => Err(bad_key(at)),
    }
}

fn bad_key(at: usize) -> ContentError {
    ContentError::malformed(
        FORMAT,
        format!("map key at byte {at} is not an integer or text"),
    )
}

/// Reads the value of `key` into `record`.
fn entry(d: &mut Decoder<'_>, key: &Key, record: &mut RawRecord) -> Result<(), ContentError> {
    let value = match key {
        Key::Label(label::BASE_NAME) => {
            record.bn = Some(text(d)?);
            return Ok(());
        }
        Key::Label(label::NAME) => {
            record.n = Some(text(d)?);
            return Ok(());
        }
        // Times are accepted (they must still be numbers) and carry nothing for LwM2M.
        Key::Label(label::BASE_TIME | label::TIME) => {
            cbor::number(d, FORMAT)?;
            return Ok(());
        }
        Key::Label(label::VALUE) => RawValue::Number(cbor::number(d, FORMAT)?),
        Key::Label(label::STRING_VALUE) => RawValue::String(text(d)?),
        Key::Label(label::BOOL_VALUE) => {
            RawValue::Bool(d.bool().map_err(|e| decode_error(FORMAT, &e))?)
        }
        Key::Label(label::DATA_VALUE) => RawValue::Data(bytes(d)?),
        Key::Text(k) if k == OBJLNK_KEY => RawValue::Objlnk(text(d)?),
        Key::Text(k) if senml::is_must_understand(k) => {
            return Err(ContentError::malformed(
                FORMAT,
                format!("must-understand key {k:?}"),
            ));
        }
        _ => return skip_scalar(d),
    };
    senml::set_value(record, value).map_err(|why| ContentError::malformed(FORMAT, why))
}

fn text(d: &mut Decoder<'_>) -> Result<String, ContentError> {
    expect(d, &[Type::String, Type::StringIndef], "text")?;
    cbor::text(d, FORMAT)
}

fn bytes(d: &mut Decoder<'_>) -> Result<Vec<u8>, ContentError> {
    expect(d, &[Type::Bytes, Type::BytesIndef], "a byte string")?;
    cbor::bytes(d, FORMAT)
}

fn expect(d: &Decoder<'_>, types: &[Type], what: &str) -> Result<(), ContentError> {
    let found = datatype(d, FORMAT)?;
    if types.contains(&found) {
        Ok(())
    } else {
        Err(ContentError::malformed(
            FORMAT,
            format!("expected {what} at byte {}, found {found}", d.position()),
        ))
    }
}

/// Skips the value of an unknown key, which must be a (possibly tagged) scalar: arrays and maps
/// are refused so that `skip` never walks attacker-controlled nesting.
fn skip_scalar(d: &mut Decoder<'_>) -> Result<(), ContentError> {
    while datatype(d, FORMAT)? == Type::Tag {
        d.tag().map_err(|e| decode_error(FORMAT, &e))?;
    }
    match datatype(d, FORMAT)? {
        Type::Array
        | Type::ArrayIndef
        | Type::Map
        | Type::MapIndef
        | Type::Break
        | Type::Unknown(_) => Err(ContentError::malformed(
            FORMAT,
            format!(
                "unknown key with a non-scalar value at byte {}",
                d.position()
            ),
        )),
        _ => d.skip().map_err(|e| decode_error(FORMAT, &e)),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::core::lwm2m::content::test_support::{TestSchema, Unknown, below, tree};
    use crate::core::lwm2m::content::{NewestModel, sorted_unique};

    fn rec(path: Path, value: Value) -> Record {
        Record::new(path, value)
    }

    /// CBOR text string header + bytes (only for strings shorter than 24 bytes).
    fn tstr(s: &str) -> Vec<u8> {
        let mut out = vec![0x60 | u8::try_from(s.len()).unwrap()];
        out.extend_from_slice(s.as_bytes());
        out
    }

    fn malformed(base: Path, payload: &[u8]) -> bool {
        matches!(
            decode(&base, payload, &NewestModel),
            Err(ContentError::Malformed { .. })
        )
    }

    #[test]
    fn single_record_matches_hand_computed_bytes() {
        let p = Path::resource(3, 0, 0);
        let bytes = encode(&p, &[rec(p, Value::String("Open".into()))]).unwrap();
        // [ { -2: "/3/0/0", 3: "Open" } ]
        let expected = [
            0x81, 0xA2, 0x21, 0x66, b'/', b'3', b'/', b'0', b'/', b'0', 0x03, 0x64, b'O', b'p',
            b'e', b'n',
        ];
        assert_eq!(bytes, expected);
        assert_eq!(
            decode(&p, &expected, &NewestModel).unwrap().records,
            vec![rec(p, Value::String("Open".into()))]
        );
    }

    #[test]
    fn pack_matches_hand_computed_bytes() {
        let records = [
            rec(Path::resource(3, 0, 9), Value::Integer(87)),
            rec(Path::resource_instance(3, 0, 11, 0), Value::Integer(0)),
        ];
        let bytes = encode(&Path::instance(3, 0), &records).unwrap();
        // [ { -2: "/3/0/", 0: "9", 2: 87 }, { 0: "11/0", 2: 0 } ]
        let mut expected = vec![0x82, 0xA3, 0x21];
        expected.extend(tstr("/3/0/"));
        expected.extend([0x00, 0x61, b'9', 0x02, 0x18, 0x57, 0xA2, 0x00]);
        expected.extend(tstr("11/0"));
        expected.extend([0x02, 0x00]);
        assert_eq!(bytes, expected);
        let decoded = decode(&Path::instance(3, 0), &expected, &NewestModel).unwrap();
        assert_eq!(decoded.records, records);
        assert_eq!(
            decoded.containers,
            vec![Path::instance(3, 0), Path::resource(3, 0, 11)]
        );
    }

    #[test]
    fn every_value_type_has_its_label() {
        let p = Path::resource(1, 0, 1);
        let value_bytes = |v: Value| {
            let bytes = encode(&p, &[rec(p, v)]).unwrap();
            // Skip `81 A2 21 66 "/1/0/1"` (10 bytes).
            bytes.get(10..).unwrap().to_vec()
        };
        assert_eq!(value_bytes(Value::Integer(-3)), [0x02, 0x22]);
        assert_eq!(
            value_bytes(Value::Time(1_700_000_000)),
            [0x02, 0x1A, 0x65, 0x53, 0xF1, 0x00]
        );
        assert_eq!(
            value_bytes(Value::Unsigned(u64::MAX)),
            [0x02, 0x1B, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]
        );
        assert_eq!(
            value_bytes(Value::Float(1.5)),
            [0x02, 0xFA, 0x3F, 0xC0, 0x00, 0x00]
        );
        assert_eq!(
            value_bytes(Value::Float(0.1)),
            [0x02, 0xFB, 0x3F, 0xB9, 0x99, 0x99, 0x99, 0x99, 0x99, 0x9A]
        );
        assert_eq!(value_bytes(Value::Boolean(true)), [0x04, 0xF5]);
        assert_eq!(
            value_bytes(Value::Opaque(vec![0xFB, 0xFF])),
            [0x08, 0x42, 0xFB, 0xFF]
        );
        assert_eq!(value_bytes(Value::String("x".into())), [0x03, 0x61, b'x']);
        assert_eq!(value_bytes(Value::Corelnk("x".into())), [0x03, 0x61, b'x']);
        assert_eq!(
            value_bytes(Value::Objlnk(3, 0)),
            [0x63, b'v', b'l', b'o', 0x63, b'3', b':', b'0']
        );
        // The root base name.
        let bytes = encode(&Path::ROOT, &[rec(p, Value::Integer(1))]).unwrap();
        let mut expected = vec![0x81, 0xA3, 0x21, 0x61, b'/', 0x00];
        expected.extend(tstr("1/0/1"));
        expected.extend([0x02, 0x01]);
        assert_eq!(bytes, expected);
        assert_eq!(encode(&Path::object(3), &[]).unwrap(), [0x80]);
    }

    #[test]
    fn decodes_indefinite_containers_and_ignores_unknown_keys() {
        let mut payload = vec![0x9F, 0xBF, 0x21];
        payload.extend(tstr("/3/0/9"));
        payload.extend([0x02, 0xF9, 0x55, 0x70]); // 87.0 as f16
        payload.extend([0x05, 0x01]); // label 5 (sum): ignored
        payload.extend([0x22, 0xF6]); // label -3 (bt) must be a number...
        let at_bt = payload.len() - 1;
        payload.extend(tstr("foo"));
        payload.extend([0xC1, 0x01]); // a tagged scalar under an unknown key
        payload.extend([0x06, 0x20]); // t = -1
        payload.extend([0xFF, 0xFF]);
        // ...so the null after bt is malformed.
        assert!(malformed(Path::ROOT, &payload));
        payload[at_bt] = 0x01;
        let decoded = decode(&Path::ROOT, &payload, &NewestModel).unwrap();
        assert_eq!(
            decoded.records,
            vec![rec(Path::resource(3, 0, 9), Value::Integer(87))]
        );
    }

    #[test]
    fn structural_errors_are_malformed() {
        let root = Path::ROOT;
        let name = |rest: &[u8]| {
            let mut v = vec![0x81, 0xA2, 0x00];
            v.extend(tstr("/3/0/9"));
            v.extend_from_slice(rest);
            v
        };
        for payload in [
            vec![],
            vec![0xA0],                                 // a map, not an array
            vec![0x81, 0x01],                           // a record that is not a map
            vec![0x81, 0x80],                           // ...or is an array
            name(&[0x02, 0x61, b'1']),                  // v as text
            name(&[0x03, 0x01]),                        // vs as int
            name(&[0x04, 0x01]),                        // vb as int
            name(&[0x08, 0x61, b'x']),                  // vd as text
            name(&[0x61, b'x', 0x81, 0x01]),            // unknown key with an array
            name(&[0x07, 0xA0]),                        // unknown label with a map
            name(&[0x07, 0xC1, 0x80]),                  // tag around an array
            name(&[0x62, b'x', b'_', 0x01]),            // must-understand key
            name(&[0xF9, 0x3C, 0x00]),                  // float key
            name(&[0x80]),                              // array key
            name(&[0x02, 0x01, 0x04, 0xF5]),            // two values
            name(&[0x02]),                              // truncated
            [name(&[0x02, 0x01]), vec![0x00]].concat(), // trailing byte
        ] {
            assert!(malformed(root, &payload), "{payload:02X?}");
        }
        // Two records naming the same path, and a duplicate key.
        let mut dup = vec![0x82];
        for _ in 0..2 {
            dup.extend([0xA2, 0x00]);
            dup.extend(tstr("/3/0/9"));
            dup.extend([0x02, 0x01]);
        }
        assert!(malformed(root, &dup));
        let mut dup_key = vec![0x81, 0xA3, 0x00];
        dup_key.extend(tstr("/3/0/9"));
        dup_key.extend([0x00]);
        dup_key.extend(tstr("/3/0/9"));
        dup_key.extend([0x02, 0x01]);
        assert!(malformed(root, &dup_key));
        // No value at all.
        assert!(malformed(root, &[0x81, 0xA0]));
    }

    #[test]
    fn hostile_nesting_and_lengths_are_refused_cheaply() {
        // A million nested arrays where a record map is expected.
        let deep = vec![0x81; 1_000_000];
        assert!(malformed(Path::ROOT, &deep));
        // ...and under an unknown key.
        let mut deep_value = vec![0x81, 0xA2, 0x07];
        deep_value.extend(vec![0x9F; 1_000_000]);
        assert!(malformed(Path::ROOT, &deep_value));
        // Declared lengths of 2^64-1 with nothing behind them.
        assert!(malformed(
            Path::ROOT,
            &[0x9B, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]
        ));
        assert!(malformed(
            Path::ROOT,
            &[0x81, 0xBB, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]
        ));
        assert!(malformed(
            Path::ROOT,
            &[
                0x81, 0xA1, 0x03, 0x7B, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF
            ]
        ));
    }

    #[test]
    fn every_truncation_fails_cleanly() {
        let records = [
            rec(Path::resource(3, 0, 0), Value::String("Open".into())),
            rec(Path::resource_instance(3, 0, 11, 0), Value::Integer(0)),
        ];
        let bytes = encode(&Path::instance(3, 0), &records).unwrap();
        for cut in 0..bytes.len() {
            assert!(
                malformed(Path::instance(3, 0), &bytes[..cut]),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn names_and_types_are_checked() {
        let one = |name: &str, value: &[u8]| {
            let mut v = vec![0x81, 0xA2, 0x00];
            v.extend(tstr(name));
            v.extend_from_slice(value);
            v
        };
        assert_eq!(
            decode(
                &Path::instance(3, 0),
                &one("/1/0/1", &[0x02, 0x01]),
                &NewestModel
            ),
            Err(ContentError::OutsideBase {
                path: Path::resource(1, 0, 1),
                base: Path::instance(3, 0)
            })
        );
        assert!(malformed(Path::ROOT, &one("/3/0", &[0x02, 0x01])));
        assert!(malformed(Path::ROOT, &one("/3/0/9/", &[0x02, 0x01])));
        // 5.5 does not fit Battery Level (Integer); a byte string does not fit a String.
        assert!(matches!(
            decode(
                &Path::ROOT,
                &one("/3/0/9", &[0x02, 0xF9, 0x45, 0x80]),
                &NewestModel
            ),
            Err(ContentError::Type { .. })
        ));
        assert!(matches!(
            decode(
                &Path::ROOT,
                &one("/3/0/0", &[0x08, 0x41, 0x00]),
                &NewestModel
            ),
            Err(ContentError::Type { .. })
        ));
        // Unknown resources keep the natural type.
        assert_eq!(
            decode(&Path::ROOT, &one("/3/0/999", &[0x08, 0x41, 0x00]), &Unknown)
                .unwrap()
                .records,
            vec![rec(Path::resource(3, 0, 999), Value::Opaque(vec![0]))]
        );
    }

    #[test]
    fn path_lists() {
        // [ {0: "/3/0/1"}, {-2: "/"}, {-2: "/5/", 0: "0"} ]
        let mut payload = vec![0x83, 0xA1, 0x00];
        payload.extend(tstr("/3/0/1"));
        payload.extend([0xA1, 0x21]);
        payload.extend(tstr("/"));
        payload.extend([0xA2, 0x21]);
        payload.extend(tstr("/5/"));
        payload.extend([0x00]);
        payload.extend(tstr("0"));
        assert_eq!(
            decode_paths(&payload),
            Ok(vec![
                Path::resource(3, 0, 1),
                Path::ROOT,
                Path::instance(5, 0)
            ])
        );
        let mut with_value = vec![0x81, 0xA2, 0x00];
        with_value.extend(tstr("/3/0/1"));
        with_value.extend([0x02, 0x01]);
        assert!(matches!(
            decode_paths(&with_value),
            Err(ContentError::Malformed { .. })
        ));
    }

    proptest! {
        #[test]
        fn round_trips_below_every_base(
            records in tree(),
            pick in any::<proptest::sample::Index>(),
            depth in 0usize..=4,
        ) {
            let (base, subset) = below(&records, pick, depth);
            let bytes = encode(&base, &subset).unwrap();
            let decoded = decode(&base, &bytes, &TestSchema).unwrap();
            prop_assert_eq!(&decoded.records, &subset);
            let mut expected: Vec<Path> = subset.iter().map(|r| r.path.truncate(2)).collect();
            expected.extend(subset.iter().filter(|r| r.path.len() == 4).map(|r| r.path.parent()));
            prop_assert_eq!(decoded.containers, sorted_unique(expected));
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = decode(&Path::ROOT, &bytes, &TestSchema);
            let _ = decode(&Path::instance(3, 0), &bytes, &Unknown);
            let _ = decode_paths(&bytes);
        }

        #[test]
        fn mutated_packs_never_panic(
            records in tree(),
            flips in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let mut bytes = encode(&Path::ROOT, &records).unwrap();
            for (at, byte) in flips {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
            let _ = decode(&Path::ROOT, &bytes, &TestSchema);
            let _ = decode_paths(&bytes);
        }
    }
}

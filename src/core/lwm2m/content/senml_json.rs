//! application/senml+json (CF 110, RFC 8428 as profiled by LwM2M Core §7.4.5).
//!
//! Records are deserialized by a hand-written serde visitor rather than into
//! `serde_json::Value`, so that duplicate keys, must-understand (`_`) keys and non-scalar values
//! are rejected while parsing; serde_json's own recursion limit bounds any nesting.

use std::collections::BTreeSet;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::senml::{self, PathResolver, RawRecord, RawValue, Resolver, Sink};
use super::{ContentError, Decoded, Schema, cbor};
use crate::core::lwm2m::path::Path;
use crate::core::lwm2m::value::{Record, Value};

const FORMAT: &str = "SenML JSON";

/// One record as written; field order is the order on the wire.
#[derive(Serialize)]
struct OutRecord<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    bn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    n: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    v: Option<serde_json::Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vs: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vb: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vd: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vlo: Option<String>,
}

/// Encodes `records` for a request on `base`.
pub fn encode(base: &Path, records: &[Record]) -> Result<Vec<u8>, ContentError> {
    let mut out = Vec::with_capacity(records.len());
    for (index, record) in records.iter().enumerate() {
        let mut rec = OutRecord {
            bn: (index == 0).then(|| senml::base_name(base, records)),
            n: senml::relative_name(base, record),
            v: None,
            vs: None,
            vb: None,
            vd: None,
            vlo: None,
        };
        set_value_field(&mut rec, record)?;
        out.push(rec);
    }
    serde_json::to_vec(&out).map_err(|e| ContentError::malformed(FORMAT, e.to_string()))
}

/// Fills the one value field that `record`'s type uses.
fn set_value_field<'a>(rec: &mut OutRecord<'a>, record: &'a Record) -> Result<(), ContentError> {
    match &record.value {
        Value::Integer(v) | Value::Time(v) => rec.v = Some((*v).into()),
        Value::Unsigned(v) => rec.v = Some((*v).into()),
        Value::Float(v) => {
            // JSON has no NaN or infinity.
            let number = serde_json::Number::from_f64(*v).ok_or_else(|| ContentError::Type {
                path: record.path,
                reason: format!("{v} cannot be written in JSON"),
            })?;
            rec.v = Some(number);
        }
        Value::String(s) | Value::Corelnk(s) => rec.vs = Some(s),
        Value::Boolean(b) => rec.vb = Some(*b),
        Value::Opaque(bytes) => rec.vd = Some(URL_SAFE_NO_PAD.encode(bytes)),
        Value::Objlnk(o, i) => rec.vlo = Some(format!("{o}:{i}")),
    }
    Ok(())
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

/// The syntax layer: a JSON array of records, nothing after it but whitespace; each record goes
/// to `sink` as soon as it is parsed.
fn parse(payload: &[u8], sink: &mut dyn Sink) -> Result<(), ContentError> {
    let mut rejected = None;
    let mut de = serde_json::Deserializer::from_slice(payload);
    let pack = Pack {
        sink,
        rejected: &mut rejected,
    };
    let result = pack.deserialize(&mut de).and_then(|()| de.end());
    // A record the sink refused carries a precise error (Type, OutsideBase...): prefer it over
    // the generic serde error that unwound the parser.
    match (result, rejected) {
        (_, Some(error)) => Err(error),
        (Err(e), None) => Err(ContentError::malformed(FORMAT, e.to_string())),
        (Ok(()), None) => Ok(()),
    }
}

/// The top-level array, fed record by record into a sink.
struct Pack<'s> {
    sink: &'s mut dyn Sink,
    rejected: &'s mut Option<ContentError>,
}

impl<'de> DeserializeSeed<'de> for Pack<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Pack<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a SenML pack (a JSON array)")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(JsonRecord(raw)) = seq.next_element()? {
            if let Err(error) = self.sink.push(raw) {
                *self.rejected = Some(error);
                return Err(de::Error::custom("record rejected"));
            }
        }
        Ok(())
    }
}

/// A record read from JSON.
struct JsonRecord(RawRecord);

impl<'de> Deserialize<'de> for JsonRecord {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(RecordVisitor).map(JsonRecord)
    }
}

struct RecordVisitor;

impl<'de> Visitor<'de> for RecordVisitor {
    type Value = RawRecord;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a SenML record (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawRecord, A::Error> {
        let mut record = RawRecord::default();
        let mut seen = BTreeSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = match key.as_str() {
                "bn" => {
                    record.bn = Some(map.next_value()?);
                    None
                }
                "n" => {
                    record.n = Some(map.next_value()?);
                    None
                }
                // Base time and time are accepted but carry nothing for LwM2M.
                "bt" | "t" => map.next_value::<f64>().map(|_| None)?,
                "v" => Some(RawValue::Number(number(map.next_value()?))),
                "vs" => Some(RawValue::String(map.next_value()?)),
                "vb" => Some(RawValue::Bool(map.next_value()?)),
                "vd" => {
                    let text: String = map.next_value()?;
                    let data = senml::decode_data(&text)
                        .ok_or_else(|| de::Error::custom("vd is not base64"))?;
                    Some(RawValue::Data(data))
                }
                "vlo" => Some(RawValue::Objlnk(map.next_value()?)),
                k if senml::is_must_understand(k) => {
                    return Err(de::Error::custom(format!("must-understand key {k:?}")));
                }
                _ => map.next_value::<Scalar>().map(|_| None)?,
            };
            if let Some(value) = value {
                senml::set_value(&mut record, value).map_err(de::Error::custom)?;
            }
            if !seen.insert(key) {
                return Err(de::Error::custom("a key appears twice in one record"));
            }
        }
        Ok(record)
    }
}

/// A JSON number in the shape the typing step expects.
fn number(n: serde_json::Number) -> cbor::Number {
    if let Some(i) = n.as_i64() {
        cbor::Number::Int(i128::from(i))
    } else if let Some(u) = n.as_u64() {
        cbor::Number::Int(i128::from(u))
    } else {
        // Without serde_json's arbitrary_precision every other number is an f64.
        cbor::Number::Float(n.as_f64().unwrap_or(f64::NAN))
    }
}

/// The value of an unknown key: any scalar, never an array or object (ignored, not stored).
struct Scalar;

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl Visitor<'_> for ScalarVisitor {
    type Value = Scalar;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, number, boolean or null")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Scalar, E> {
        Ok(Scalar)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Scalar, E> {
        Ok(Scalar)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Scalar, E> {
        Ok(Scalar)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Scalar, E> {
        Ok(Scalar)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Scalar, E> {
        Ok(Scalar)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
        Ok(Scalar)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::core::lwm2m::content::test_support::{TestSchema, Unknown, below, tree};
    use crate::core::lwm2m::content::{NewestModel, cf};

    fn rec(path: Path, value: Value) -> Record {
        Record::new(path, value)
    }

    fn json(base: Path, records: &[Record]) -> String {
        String::from_utf8(encode(&base, records).unwrap()).unwrap()
    }

    fn dec(base: Path, text: &str) -> Result<Decoded, ContentError> {
        decode(&base, text.as_bytes(), &NewestModel)
    }

    fn malformed(base: Path, text: &str) -> bool {
        matches!(dec(base, text), Err(ContentError::Malformed { .. }))
    }

    #[test]
    fn single_record_at_base_is_named_by_bn() {
        let p = Path::resource(3, 0, 0);
        assert_eq!(
            json(p, &[rec(p, Value::String("Open".into()))]),
            r#"[{"bn":"/3/0/0","vs":"Open"}]"#
        );
        let ri = Path::resource_instance(3, 0, 11, 2);
        assert_eq!(
            json(ri, &[rec(ri, Value::Integer(5))]),
            r#"[{"bn":"/3/0/11/2","v":5}]"#
        );
    }

    #[test]
    fn records_below_base_get_relative_names() {
        let records = [
            rec(Path::resource(3, 0, 0), Value::String("Open".into())),
            rec(Path::resource(3, 0, 9), Value::Integer(87)),
            rec(Path::resource_instance(3, 0, 11, 0), Value::Integer(0)),
            rec(Path::resource(3, 0, 13), Value::Time(1_700_000_000)),
        ];
        assert_eq!(
            json(Path::instance(3, 0), &records),
            concat!(
                r#"[{"bn":"/3/0/","n":"0","vs":"Open"},{"n":"9","v":87},"#,
                r#"{"n":"11/0","v":0},{"n":"13","v":1700000000}]"#
            )
        );
        assert_eq!(
            json(Path::ROOT, &records[..1]),
            r#"[{"bn":"/","n":"3/0/0","vs":"Open"}]"#
        );
        // A resource base with instance records.
        let base = Path::resource(3, 0, 11);
        assert_eq!(
            json(base, &records[2..3]),
            r#"[{"bn":"/3/0/11/","n":"0","v":0}]"#
        );
        assert_eq!(json(Path::object(3), &[]), "[]");
    }

    #[test]
    fn every_value_type_has_its_field() {
        let p = Path::resource(1, 0, 1);
        let one = |v: Value| json(p, &[rec(p, v)]);
        assert_eq!(one(Value::Float(1.5)), r#"[{"bn":"/1/0/1","v":1.5}]"#);
        assert_eq!(one(Value::Float(5.0)), r#"[{"bn":"/1/0/1","v":5.0}]"#);
        assert_eq!(
            one(Value::Unsigned(u64::MAX)),
            r#"[{"bn":"/1/0/1","v":18446744073709551615}]"#
        );
        assert_eq!(one(Value::Integer(-3)), r#"[{"bn":"/1/0/1","v":-3}]"#);
        assert_eq!(one(Value::Boolean(true)), r#"[{"bn":"/1/0/1","vb":true}]"#);
        assert_eq!(
            one(Value::Opaque(vec![0xFB, 0xFF])),
            r#"[{"bn":"/1/0/1","vd":"-_8"}]"#
        );
        assert_eq!(one(Value::Objlnk(3, 0)), r#"[{"bn":"/1/0/1","vlo":"3:0"}]"#);
        assert_eq!(
            one(Value::Corelnk("</1>".into())),
            r#"[{"bn":"/1/0/1","vs":"</1>"}]"#
        );
        assert_eq!(
            one(Value::String("a\"b".into())),
            r#"[{"bn":"/1/0/1","vs":"a\"b"}]"#
        );
        for v in [f64::NAN, f64::INFINITY] {
            assert!(matches!(
                encode(&p, &[rec(p, Value::Float(v))]),
                Err(ContentError::Type { .. })
            ));
        }
    }

    #[test]
    fn decodes_a_pack_with_changing_base_names() {
        let text = concat!(
            r#"[{"bn":"/3/0/","n":"0","vs":"Open"},{"n":"9","v":87},"#,
            r#"{"n":"11/1","v":5.0},{"bn":"/1/0/","n":"1","v":300,"t":0,"bt":1.5}]"#
        );
        let decoded = dec(Path::ROOT, text).unwrap();
        assert_eq!(
            decoded.records,
            vec![
                rec(Path::resource(3, 0, 0), Value::String("Open".into())),
                rec(Path::resource(3, 0, 9), Value::Integer(87)),
                rec(Path::resource_instance(3, 0, 11, 1), Value::Integer(5)),
                rec(Path::resource(1, 0, 1), Value::Integer(300)),
            ]
        );
        assert_eq!(
            decoded.containers,
            vec![
                Path::instance(1, 0),
                Path::instance(3, 0),
                Path::resource(3, 0, 11)
            ]
        );
    }

    #[test]
    fn values_are_typed_by_the_schema() {
        let lifetime = Path::resource(1, 0, 1);
        let one = |text: &str| dec(lifetime, text).map(|d| d.records[0].value.clone());
        assert_eq!(one(r#"[{"bn":"/1/0/1","v":5.0}]"#), Ok(Value::Integer(5)));
        assert_eq!(one(r#"[{"bn":"/1/0/1","v":1e2}]"#), Ok(Value::Integer(100)));
        assert!(matches!(
            one(r#"[{"bn":"/1/0/1","v":5.5}]"#),
            Err(ContentError::Type { .. })
        ));
        assert!(matches!(
            one(r#"[{"bn":"/1/0/1","vs":"5"}]"#),
            Err(ContentError::Type { .. })
        ));
        assert!(matches!(
            one(r#"[{"bn":"/1/0/1","vb":true}]"#),
            Err(ContentError::Type { .. })
        ));
        let time = Path::resource(3, 0, 13);
        assert_eq!(
            dec(time, r#"[{"n":"/3/0/13","v":1700000000}]"#)
                .unwrap()
                .records[0]
                .value,
            Value::Time(1_700_000_000)
        );
        let link = Path::resource(25, 0, 3);
        assert_eq!(
            dec(link, r#"[{"n":"/25/0/3","vs":"</3>"}]"#)
                .unwrap()
                .records[0]
                .value,
            Value::Corelnk("</3>".into())
        );
        let unknown = Path::resource(3, 0, 999);
        assert_eq!(
            dec(unknown, r#"[{"n":"/3/0/999","v":18446744073709551615}]"#)
                .unwrap()
                .records[0]
                .value,
            Value::Unsigned(u64::MAX)
        );
        assert_eq!(
            dec(unknown, r#"[{"n":"/3/0/999","vlo":"3:1"}]"#)
                .unwrap()
                .records[0]
                .value,
            Value::Objlnk(3, 1)
        );
    }

    #[test]
    fn vd_accepts_both_alphabets_with_or_without_padding() {
        let package = Path::resource(5, 0, 0);
        for vd in ["3q2-7_8", "3q2-7_8=", "3q2+7/8", "3q2+7/8="] {
            let text = format!(r#"[{{"bn":"/5/0/0","vd":"{vd}"}}]"#);
            assert_eq!(
                dec(package, &text).unwrap().records[0].value,
                Value::Opaque(vec![0xDE, 0xAD, 0xBE, 0xEF, 0xFF]),
                "{vd}"
            );
        }
        assert!(malformed(package, r#"[{"bn":"/5/0/0","vd":"3q2+7_8"}]"#));
        assert!(malformed(package, r#"[{"bn":"/5/0/0","vd":"*"}]"#));
    }

    #[test]
    fn unknown_keys_are_ignored_but_must_understand_keys_are_not() {
        let p = Path::resource(3, 0, 9);
        let text = r#"[{"bver":10,"bn":"/3/0/9","u":"%","foo":null,"bar":1.5,"v":87}]"#;
        assert_eq!(
            dec(p, text).unwrap().records,
            vec![rec(p, Value::Integer(87))]
        );
        assert!(malformed(p, r#"[{"bn":"/3/0/9","v":87,"x_":1}]"#));
        assert!(malformed(p, r#"[{"bn_":"/3/0/9","v":87}]"#));
        // Unknown keys must hold scalars.
        assert!(malformed(p, r#"[{"bn":"/3/0/9","v":87,"foo":[1]}]"#));
        assert!(malformed(p, r#"[{"bn":"/3/0/9","v":87,"foo":{}}]"#));
    }

    #[test]
    fn malformed_documents() {
        let base = Path::ROOT;
        for text in [
            "",
            "{}",
            r#"{"bn":"/3/0/9","v":1}"#,
            "[1]",
            "[[]]",
            r#"[{"n":"/3/0/9","v":1}] x"#,
            r#"[{"n":"/3/0/9","v":1}"#,
            r#"[{"n":"/3/0/9","v":"1"}]"#,
            r#"[{"n":"/3/0/9","v":[1]}]"#,
            r#"[{"n":"/3/0/9","vb":1}]"#,
            r#"[{"n":"/3/0/0","vs":5}]"#,
            r#"[{"n":5,"v":1}]"#,
            r#"[{"n":"/3/0/9","bt":"x","v":1}]"#,
            r#"[{"n":"/3/0/9","v":1,"vs":"x"}]"#,
            r#"[{"n":"/3/0/9"}]"#,
            r#"[{"n":"/3/0/9","n":"/3/0/9","v":1}]"#,
            r#"[{"n":"/3/0/9","v":1},{"n":"/3/0/9","v":2}]"#,
            r#"[{"n":"/3/0/x","v":1}]"#,
            r#"[{"n":"3/0/9","v":1}]"#,
            r#"[{"n":"/3/0","v":1}]"#,
            r#"[{"n":"/","v":1}]"#,
            r#"[{"n":"/3/0/9/0/1","v":1}]"#,
            r#"[{"n":"/3/0/65535","v":1}]"#,
            r#"[{"n":"/00003/00000/00009/00000/","v":1}]"#,
            r#"[{"n":"/3/0/9","v":1e999}]"#,
            r#"[{"n":"/3/0/22/0","vlo":"3-0"}]"#,
            r#"[{"n":"/3/0/0","vs":"\ud800"}]"#,
        ] {
            assert!(malformed(base, text), "{text}");
        }
        let long = format!(r#"[{{"bn":"/{}","n":"3/0/9","v":1}}]"#, "0".repeat(10_000));
        assert!(malformed(base, &long));
    }

    #[test]
    fn records_outside_the_base_are_rejected() {
        assert_eq!(
            dec(Path::instance(3, 0), r#"[{"n":"/1/0/1","v":1}]"#),
            Err(ContentError::OutsideBase {
                path: Path::resource(1, 0, 1),
                base: Path::instance(3, 0)
            })
        );
        // An empty pack is fine.
        assert_eq!(dec(Path::instance(3, 0), "[]"), Ok(Decoded::default()));
    }

    #[test]
    fn path_lists_for_composite_operations() {
        let text = concat!(
            r#"[{"n":"/3/0/1"},{"n":"/1"},{"bn":"/5/0/","n":"3"},{"n":"1"},"#,
            r#"{"bn":"/"},{"bn":"","n":"/3/0/11/0"}]"#
        );
        assert_eq!(
            decode_paths(text.as_bytes()),
            Ok(vec![
                Path::resource(3, 0, 1),
                Path::object(1),
                Path::resource(5, 0, 3),
                Path::resource(5, 0, 1),
                Path::ROOT,
                Path::resource_instance(3, 0, 11, 0),
            ])
        );
        assert_eq!(decode_paths(b"[]"), Ok(vec![]));
        for bad in [
            r#"[{"n":"/3/0/1","v":1}]"#,
            r#"[{"n":"/3/x"}]"#,
            r#"[{}]"#,
            r#"[{"n":"/3","x_":1}]"#,
            r#"[{"n":"/3"}]]"#,
        ] {
            assert!(
                matches!(
                    decode_paths(bad.as_bytes()),
                    Err(ContentError::Malformed { .. })
                ),
                "{bad}"
            );
        }
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
            prop_assert_eq!(decoded.containers, crate::core::lwm2m::content::sorted_unique(expected));
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = decode(&Path::ROOT, &bytes, &TestSchema);
            let _ = decode(&Path::instance(3, 0), &bytes, &Unknown);
            let _ = decode_paths(&bytes);
        }

        #[test]
        fn random_json_never_panics(text in r#"\[(\{("(bn|n|v|vs|vb|vd|vlo|t|x_)":("[/0-9a-z]{0,8}"|-?[0-9.e]{1,6}|true|null|\[\]),?){0,4}\},?){0,3}\]"#) {
            let _ = decode(&Path::ROOT, text.as_bytes(), &TestSchema);
            let _ = decode_paths(text.as_bytes());
        }
    }

    #[test]
    fn dispatch_reaches_this_codec() {
        let p = Path::resource(3, 0, 9);
        let records = [rec(p, Value::Integer(87))];
        let bytes = crate::core::lwm2m::content::encode(cf::SENML_JSON, &p, &records, &NewestModel)
            .unwrap();
        assert_eq!(bytes, br#"[{"bn":"/3/0/9","v":87}]"#);
    }
}

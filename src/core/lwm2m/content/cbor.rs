//! application/cbor (CF 60): one value as a single CBOR data item.
//!
//! Also home of the minicbor helpers SenML CBOR shares: number/text/byte readers that accept
//! every encoding width (and indefinite-length strings) without recursing on attacker data.

use minicbor::data::Type;
use minicbor::{Decoder, Encoder};

use super::{
    ContentError, Decoded, Schema, cf, require_value_path, single_decoded, single_record, typed,
};
use crate::core::lwm2m::path::Path;
use crate::core::lwm2m::value::{Record, Value};

const FORMAT: &str = "CBOR";

/// CBOR tag 1: epoch-based date/time (RFC 8949 §3.4.2).
const TAG_EPOCH: u64 = 1;

/// Encodes `records` for a request on `base`.
pub fn encode(base: &Path, records: &[Record]) -> Result<Vec<u8>, ContentError> {
    let value = single_record(base, records, cf::CBOR)?;
    let mut e = Encoder::new(Vec::new());
    match value {
        // Time goes out as a plain integer: LwM2M 1.1 servers read a bare int for Time.
        Value::Integer(v) | Value::Time(v) => e.i64(*v).map(drop),
        Value::Unsigned(v) => e.u64(*v).map(drop),
        Value::Float(v) => write_float(&mut e, *v),
        Value::Boolean(b) => e.bool(*b).map(drop),
        Value::String(s) | Value::Corelnk(s) => e.str(s).map(drop),
        Value::Opaque(bytes) => e.bytes(bytes).map(drop),
        Value::Objlnk(o, i) => e.str(&format!("{o}:{i}")).map(drop),
    }
    .map_err(|err| encode_error(FORMAT, &err))?;
    Ok(e.into_writer())
}

/// Writes a float in the narrowest of f32/f64 that holds it exactly (RFC 8949 §4.1 prefers the
/// shortest form; f16 is left out because few values gain from it).
pub(super) fn write_float(
    e: &mut Encoder<Vec<u8>>,
    v: f64,
) -> Result<(), minicbor::encode::Error<std::convert::Infallible>> {
    let narrow = v as f32;
    if f64::from(narrow) == v || v.is_nan() {
        e.f32(narrow).map(drop)
    } else {
        e.f64(v).map(drop)
    }
}

/// Encoding into a `Vec` cannot fail; this keeps the type system happy without `unwrap`.
pub(super) fn encode_error(
    format: &'static str,
    err: &minicbor::encode::Error<std::convert::Infallible>,
) -> ContentError {
    ContentError::malformed(format, format!("encoder failed: {err}"))
}

/// Maps a minicbor decode error (which carries the byte offset) to `Malformed`.
pub(super) fn decode_error(format: &'static str, err: &minicbor::decode::Error) -> ContentError {
    ContentError::malformed(format, err.to_string())
}

/// Decodes an untrusted payload sent to `base`.
pub fn decode(base: &Path, payload: &[u8], schema: &dyn Schema) -> Result<Decoded, ContentError> {
    require_value_path(base, cf::CBOR)?;
    let mut d = Decoder::new(payload);
    let natural = item(&mut d, base)?;
    if d.position() != payload.len() {
        return Err(trailing(FORMAT, d.position()));
    }
    Ok(single_decoded(base, typed(base, natural, schema)?))
}

/// The error for bytes after the last data item.
pub(super) fn trailing(format: &'static str, at: usize) -> ContentError {
    ContentError::malformed(
        format,
        format!("trailing bytes after the data item at byte {at}"),
    )
}

/// Reads the one data item of a CF 60 payload in its natural type.
fn item(d: &mut Decoder<'_>, path: &Path) -> Result<Value, ContentError> {
    let at = d.position();
    match datatype(d, FORMAT)? {
        Type::Bool => d
            .bool()
            .map(Value::Boolean)
            .map_err(|e| decode_error(FORMAT, &e)),
        Type::String | Type::StringIndef => text(d, FORMAT).map(Value::String),
        Type::Bytes | Type::BytesIndef => bytes(d, FORMAT).map(Value::Opaque),
        Type::Tag => epoch_time(d, path),
        t if is_number(t) => match number(d, FORMAT)? {
            Number::Int(i) => int_value(path, i),
            Number::Float(f) => Ok(Value::Float(f)),
        },
        other => Err(ContentError::malformed(
            FORMAT,
            format!("unsupported CBOR item {other} at byte {at}"),
        )),
    }
}

/// Tag 1 (epoch seconds) around an integer or an integral float becomes a Time.
fn epoch_time(d: &mut Decoder<'_>, path: &Path) -> Result<Value, ContentError> {
    let at = d.position();
    let tag = d.tag().map_err(|e| decode_error(FORMAT, &e))?;
    if tag.as_u64() != TAG_EPOCH {
        return Err(ContentError::malformed(
            FORMAT,
            format!("unsupported tag {} at byte {at}", tag.as_u64()),
        ));
    }
    if !is_number(datatype(d, FORMAT)?) {
        return Err(ContentError::malformed(FORMAT, "tag 1 must wrap a number"));
    }
    let seconds = match number(d, FORMAT)? {
        Number::Int(i) => int_value(path, i)?,
        Number::Float(f) => Value::Float(f),
    };
    seconds
        .coerce(crate::model::ResourceType::Time)
        .ok_or_else(|| ContentError::Type {
            path: *path,
            reason: "epoch time is not a whole number of seconds within i64".into(),
        })
}

/// A CBOR number before it is typed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Number {
    /// Major types 0 and 1 cover -2^64..2^64-1, hence i128.
    Int(i128),
    /// Half, single or double precision.
    Float(f64),
}

/// The type of the next item (an error at the end of input).
pub(super) fn datatype(d: &Decoder<'_>, format: &'static str) -> Result<Type, ContentError> {
    d.datatype().map_err(|e| decode_error(format, &e))
}

/// True for integer and float items.
pub(super) fn is_number(t: Type) -> bool {
    matches!(
        t,
        Type::U8
            | Type::U16
            | Type::U32
            | Type::U64
            | Type::I8
            | Type::I16
            | Type::I32
            | Type::I64
            | Type::Int
            | Type::F16
            | Type::F32
            | Type::F64
    )
}

/// Reads an integer or float item; anything else is malformed.
pub(super) fn number(d: &mut Decoder<'_>, format: &'static str) -> Result<Number, ContentError> {
    let at = d.position();
    match datatype(d, format)? {
        Type::F16 | Type::F32 | Type::F64 => d
            .f64()
            .map(Number::Float)
            .map_err(|e| decode_error(format, &e)),
        t if is_number(t) => d
            .int()
            .map(|i| Number::Int(i128::from(i)))
            .map_err(|e| decode_error(format, &e)),
        other => Err(ContentError::malformed(
            format,
            format!("expected a number at byte {at}, found {other}"),
        )),
    }
}

/// The natural value of a CBOR integer: Integer when it fits i64, else Unsigned when it fits u64.
pub(super) fn int_value(path: &Path, i: i128) -> Result<Value, ContentError> {
    if let Ok(v) = i64::try_from(i) {
        Ok(Value::Integer(v))
    } else if let Ok(v) = u64::try_from(i) {
        Ok(Value::Unsigned(v))
    } else {
        Err(ContentError::Type {
            path: *path,
            reason: format!("{i} does not fit a 64-bit integer"),
        })
    }
}

/// Reads a text string, definite or indefinite (chunks are definite by RFC 8949, which minicbor
/// enforces, so this never nests).
pub(super) fn text(d: &mut Decoder<'_>, format: &'static str) -> Result<String, ContentError> {
    let mut out = String::new();
    for chunk in d.str_iter().map_err(|e| decode_error(format, &e))? {
        out.push_str(chunk.map_err(|e| decode_error(format, &e))?);
    }
    Ok(out)
}

/// Reads a byte string, definite or indefinite.
pub(super) fn bytes(d: &mut Decoder<'_>, format: &'static str) -> Result<Vec<u8>, ContentError> {
    let mut out = Vec::new();
    for chunk in d.bytes_iter().map_err(|e| decode_error(format, &e))? {
        out.extend_from_slice(chunk.map_err(|e| decode_error(format, &e))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::core::lwm2m::content::NewestModel;
    use crate::core::lwm2m::content::test_support::{
        MULTI, TEST_OBJECT, TestSchema, Uniform, Unknown, resource_and_value,
    };
    use crate::model::ResourceType as T;

    fn enc(value: Value) -> Vec<u8> {
        let p = Path::resource(TEST_OBJECT, 0, 0);
        encode(&p, &[Record::new(p, value)]).unwrap()
    }

    fn dec(schema: &dyn Schema, payload: &[u8]) -> Result<Value, ContentError> {
        let p = Path::resource(3, 0, 1);
        let mut decoded = decode(&p, payload, schema)?;
        assert_eq!(decoded.records.len(), 1);
        assert!(decoded.containers.is_empty());
        Ok(decoded.records.remove(0).value)
    }

    #[test]
    fn encodes_hand_computed_items() {
        assert_eq!(enc(Value::Integer(1)), [0x01]);
        assert_eq!(enc(Value::Integer(-1)), [0x20]);
        assert_eq!(enc(Value::Integer(500)), [0x19, 0x01, 0xF4]);
        assert_eq!(enc(Value::Integer(-500)), [0x39, 0x01, 0xF3]);
        assert_eq!(
            enc(Value::Unsigned(u64::MAX)),
            [0x1B, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]
        );
        assert_eq!(
            enc(Value::Time(1_700_000_000)),
            [0x1A, 0x65, 0x53, 0xF1, 0x00]
        );
        assert_eq!(enc(Value::Float(1.5)), [0xFA, 0x3F, 0xC0, 0x00, 0x00]);
        assert_eq!(
            enc(Value::Float(0.1)),
            [0xFB, 0x3F, 0xB9, 0x99, 0x99, 0x99, 0x99, 0x99, 0x9A]
        );
        assert_eq!(enc(Value::Boolean(true)), [0xF5]);
        assert_eq!(enc(Value::Boolean(false)), [0xF4]);
        assert_eq!(
            enc(Value::String("Open".into())),
            [0x64, b'O', b'p', b'e', b'n']
        );
        assert_eq!(enc(Value::Opaque(vec![1, 2])), [0x42, 0x01, 0x02]);
        assert_eq!(enc(Value::Objlnk(3, 0)), [0x63, b'3', b':', b'0']);
        assert_eq!(
            enc(Value::Corelnk("</1>".into())),
            [0x64, b'<', b'/', b'1', b'>']
        );
    }

    #[test]
    fn encode_needs_one_record_at_a_value_path() {
        let p = Path::resource(3, 0, 1);
        let r = Record::new(p, Value::Integer(1));
        let not_single = Err(ContentError::NotSingle(cf::CBOR));
        assert_eq!(
            encode(&Path::instance(3, 0), std::slice::from_ref(&r)),
            not_single
        );
        assert_eq!(encode(&p, &[r.clone(), r]), not_single);
        assert_eq!(encode(&p, &[]), not_single);
    }

    #[test]
    fn decodes_every_width_and_coerces() {
        let float = Uniform(T::Float, false);
        let int = Uniform(T::Integer, false);
        assert_eq!(dec(&float, &[0xF9, 0x3E, 0x00]), Ok(Value::Float(1.5)));
        assert_eq!(
            dec(&float, &[0xFA, 0x3F, 0xC0, 0x00, 0x00]),
            Ok(Value::Float(1.5))
        );
        assert_eq!(dec(&float, &[0x05]), Ok(Value::Float(5.0)));
        assert_eq!(dec(&int, &[0xF9, 0x45, 0x00]), Ok(Value::Integer(5)));
        assert!(matches!(
            dec(&int, &[0xF9, 0x45, 0x80]),
            Err(ContentError::Type { .. })
        ));
        assert_eq!(dec(&int, &[0x38, 0x63]), Ok(Value::Integer(-100)));
        let big = [0x1B, 0x80, 0, 0, 0, 0, 0, 0, 0];
        assert!(matches!(dec(&int, &big), Err(ContentError::Type { .. })));
        assert_eq!(
            dec(&Uniform(T::Unsigned, false), &big),
            Ok(Value::Unsigned(1 << 63))
        );
        assert!(matches!(
            dec(&Uniform(T::Unsigned, false), &[0x20]),
            Err(ContentError::Type { .. })
        ));
        // -2^64 fits no Value.
        let huge = [0x3B, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
        assert!(matches!(
            dec(&Unknown, &huge),
            Err(ContentError::Type { .. })
        ));
        assert_eq!(
            dec(&Uniform(T::Objlnk, false), &[0x63, b'3', b':', b'1']),
            Ok(Value::Objlnk(3, 1))
        );
        assert_eq!(
            dec(&Uniform(T::Corelnk, false), &[0x61, b'x']),
            Ok(Value::Corelnk("x".into()))
        );
        assert_eq!(
            dec(&Uniform(T::Boolean, false), &[0xF5]),
            Ok(Value::Boolean(true))
        );
        assert!(matches!(
            dec(&Uniform(T::Boolean, false), &[0x01]),
            Err(ContentError::Type { .. })
        ));
        assert!(matches!(
            dec(&NewestModel, &[0x01]),
            Err(ContentError::Type { .. })
        ));
        // Unknown resources keep the natural type.
        assert_eq!(dec(&Unknown, &[0x01]), Ok(Value::Integer(1)));
        assert_eq!(dec(&Unknown, &[0x41, 0x07]), Ok(Value::Opaque(vec![7])));
    }

    #[test]
    fn indefinite_strings_are_joined() {
        let text = [0x7F, 0x62, b'a', b'b', 0x61, b'c', 0xFF];
        assert_eq!(dec(&Unknown, &text), Ok(Value::String("abc".into())));
        let bytes = [0x5F, 0x41, 0x01, 0x41, 0x02, 0xFF];
        assert_eq!(dec(&Unknown, &bytes), Ok(Value::Opaque(vec![1, 2])));
        // Chunks must be definite strings of the same major type.
        assert!(matches!(
            dec(&Unknown, &[0x7F, 0x41, 0x01, 0xFF]),
            Err(ContentError::Malformed { .. })
        ));
        assert!(matches!(
            dec(&Unknown, &[0x7F, 0x7F, 0xFF, 0xFF]),
            Err(ContentError::Malformed { .. })
        ));
    }

    #[test]
    fn epoch_tag_becomes_time() {
        let time = Uniform(T::Time, false);
        let tagged = [0xC1, 0x1A, 0x65, 0x53, 0xF1, 0x00];
        assert_eq!(dec(&time, &tagged), Ok(Value::Time(1_700_000_000)));
        assert_eq!(
            dec(&Uniform(T::Integer, false), &tagged),
            Ok(Value::Integer(1_700_000_000))
        );
        let mut float = vec![0xC1, 0xFB];
        float.extend(1_700_000_000f64.to_be_bytes());
        assert_eq!(dec(&time, &float), Ok(Value::Time(1_700_000_000)));
        assert!(matches!(
            dec(&time, &[0xC1, 0xF9, 0x3E, 0x00]),
            Err(ContentError::Type { .. })
        ));
        // A plain int is a fine Time as well.
        assert_eq!(
            dec(&time, &[0x1A, 0x65, 0x53, 0xF1, 0x00]),
            Ok(Value::Time(1_700_000_000))
        );
        // Other tags, or tag 1 around a non-number, are not accepted.
        assert!(matches!(
            dec(&time, &[0xC0, 0x61, b'x']),
            Err(ContentError::Malformed { .. })
        ));
        assert!(matches!(
            dec(&time, &[0xC1, 0x61, b'x']),
            Err(ContentError::Malformed { .. })
        ));
        assert!(matches!(
            dec(&time, &[0xC1, 0xC1, 0x01]),
            Err(ContentError::Malformed { .. })
        ));
    }

    #[test]
    fn rejects_structure_and_garbage() {
        for payload in [
            &[][..],
            &[0x01, 0x00],       // trailing byte
            &[0x80],             // array
            &[0x9F, 0xFF],       // indefinite array
            &[0xA0],             // map
            &[0xF6],             // null
            &[0xF7],             // undefined
            &[0xE0],             // simple value
            &[0xFF],             // break
            &[0x1C],             // reserved additional info
            &[0x19, 0x01],       // truncated int
            &[0x62, b'a'],       // truncated text
            &[0x62, 0xC3, 0x28], // invalid UTF-8
        ] {
            assert!(
                matches!(dec(&Unknown, payload), Err(ContentError::Malformed { .. })),
                "{payload:02X?}"
            );
        }
        assert_eq!(
            decode(&Path::instance(3, 0), &[0x01], &NewestModel),
            Err(ContentError::NotSingle(cf::CBOR))
        );
    }

    proptest! {
        #[test]
        fn single_values_round_trip((r, v) in resource_and_value(), multi in any::<bool>()) {
            let p = if multi {
                Path::resource_instance(TEST_OBJECT, 0, r + MULTI, 1)
            } else {
                Path::resource(TEST_OBJECT, 0, r)
            };
            let bytes = encode(&p, &[Record::new(p, v.clone())]).unwrap();
            prop_assert_eq!(
                decode(&p, &bytes, &TestSchema).unwrap().records,
                vec![Record::new(p, v)]
            );
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            for r in 0..9 {
                let _ = decode(&Path::resource(TEST_OBJECT, 0, r), &bytes, &TestSchema);
            }
            let _ = decode(&Path::resource(3, 0, 1), &bytes, &Unknown);
        }
    }
}

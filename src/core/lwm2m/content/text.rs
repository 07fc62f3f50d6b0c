//! text/plain (CF 0): one value as text; Opaque as base64, Boolean as 0/1, Objlnk as `o:i`.
//!
//! Plain text carries no type information, so decoding is driven entirely by the schema's type
//! for the target resource; a resource the schema does not know is read as a UTF-8 string.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use super::{
    ContentError, Decoded, Schema, cf, require_value_path, schema_kind, single_decoded,
    single_record,
};
use crate::core::lwm2m::path::Path;
use crate::core::lwm2m::value::{Record, Value, parse_objlnk};
use crate::model::ResourceType;

const FORMAT: &str = "text/plain";

/// Standard alphabet, padding optional: servers differ on whether they pad.
const BASE64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Encodes `records` for a request on `base`.
pub fn encode(base: &Path, records: &[Record]) -> Result<Vec<u8>, ContentError> {
    let value = single_record(base, records, cf::TEXT)?;
    let text = match value {
        Value::String(s) | Value::Corelnk(s) => s.clone(),
        Value::Integer(v) | Value::Time(v) => v.to_string(),
        Value::Unsigned(v) => v.to_string(),
        Value::Float(v) => float_text(base, *v)?,
        Value::Boolean(b) => if *b { "1" } else { "0" }.to_string(),
        Value::Opaque(bytes) => STANDARD.encode(bytes),
        Value::Objlnk(o, i) => format!("{o}:{i}"),
    };
    Ok(text.into_bytes())
}

/// Shortest round-trip text of a float. `Debug` (not `Display`) switches to an exponent for very
/// large or small magnitudes, so 1e300 is five bytes rather than 301.
fn float_text(path: &Path, v: f64) -> Result<String, ContentError> {
    if v.is_finite() {
        Ok(format!("{v:?}"))
    } else {
        // The decoder rejects NaN and infinities, so we never send them either.
        Err(ContentError::Type {
            path: *path,
            reason: format!("{v} has no plain-text representation"),
        })
    }
}

/// Decodes an untrusted payload sent to `base`.
pub fn decode(base: &Path, payload: &[u8], schema: &dyn Schema) -> Result<Decoded, ContentError> {
    require_value_path(base, cf::TEXT)?;
    let kind = schema_kind(base, schema).unwrap_or(ResourceType::String);
    Ok(single_decoded(base, parse(base, payload, kind)?))
}

/// Parses `payload` as a value of type `kind`.
fn parse(path: &Path, payload: &[u8], kind: ResourceType) -> Result<Value, ContentError> {
    if kind == ResourceType::Opaque {
        return BASE64_LENIENT
            .decode(payload)
            .map(Value::Opaque)
            .map_err(|e| ContentError::malformed(FORMAT, format!("invalid base64: {e}")));
    }
    let text = std::str::from_utf8(payload).map_err(|e| {
        ContentError::malformed(FORMAT, format!("not UTF-8 at byte {}", e.valid_up_to()))
    })?;
    match kind {
        ResourceType::Integer => parse_integer(path, text).map(Value::Integer),
        ResourceType::Time => parse_integer(path, text).map(Value::Time),
        ResourceType::Unsigned => parse_unsigned(path, text).map(Value::Unsigned),
        ResourceType::Float => parse_float(path, text).map(Value::Float),
        ResourceType::Boolean => match text {
            "0" => Ok(Value::Boolean(false)),
            "1" => Ok(Value::Boolean(true)),
            _ => Err(ContentError::malformed(
                FORMAT,
                "a boolean is \"0\" or \"1\"",
            )),
        },
        ResourceType::Objlnk => parse_objlnk(text)
            .map(|(o, i)| Value::Objlnk(o, i))
            .ok_or_else(|| ContentError::malformed(FORMAT, "an object link is \"oid:iid\"")),
        ResourceType::Corelnk => Ok(Value::Corelnk(text.to_string())),
        ResourceType::String | ResourceType::Opaque | ResourceType::None => {
            Ok(Value::String(text.to_string()))
        }
    }
}

/// True for a non-empty run of ASCII digits.
fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// `-?digits` within i64. The syntax is checked first because `str::parse` also takes a `+`.
fn parse_integer(path: &Path, text: &str) -> Result<i64, ContentError> {
    if !is_digits(text.strip_prefix('-').unwrap_or(text)) {
        return Err(ContentError::malformed(FORMAT, "an integer is -?[0-9]+"));
    }
    text.parse().map_err(|_| out_of_range(path, text))
}

/// `digits` within u64.
fn parse_unsigned(path: &Path, text: &str) -> Result<u64, ContentError> {
    if !is_digits(text) {
        return Err(ContentError::malformed(
            FORMAT,
            "an unsigned integer is [0-9]+",
        ));
    }
    text.parse().map_err(|_| out_of_range(path, text))
}

/// `-?digits[.digits][(e|E)[+-]digits]` (either side of the point may be empty, not both); the
/// syntax check keeps out what `f64::from_str` would also take (`inf`, `NaN`, `+1`).
fn parse_float(path: &Path, text: &str) -> Result<f64, ContentError> {
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e)),
        None => (unsigned, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits_or_empty = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok =
        digits_or_empty(int) && digits_or_empty(frac) && !(int.is_empty() && frac.is_empty());
    let exponent_ok = exponent.is_none_or(|e| is_digits(e.strip_prefix(['+', '-']).unwrap_or(e)));
    if !mantissa_ok || !exponent_ok {
        return Err(ContentError::malformed(FORMAT, "not a decimal number"));
    }
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(out_of_range(path, text)),
    }
}

fn out_of_range(path: &Path, text: &str) -> ContentError {
    ContentError::Type {
        path: *path,
        reason: format!("{text} is out of range for the resource type"),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::core::lwm2m::content::NewestModel;
    use crate::core::lwm2m::content::test_support::{
        MULTI, TEST_OBJECT, TestSchema, Uniform, resource_and_value,
    };

    fn enc(value: Value) -> Result<String, ContentError> {
        let p = Path::resource(TEST_OBJECT, 0, 0);
        encode(&p, &[Record::new(p, value)]).map(|b| String::from_utf8(b).unwrap())
    }

    fn dec(kind: ResourceType, payload: &[u8]) -> Result<Value, ContentError> {
        let p = Path::resource(3, 0, 0);
        let mut decoded = decode(&p, payload, &Uniform(kind, false))?;
        assert_eq!(decoded.records.len(), 1);
        assert!(decoded.containers.is_empty());
        let record = decoded.records.remove(0);
        assert_eq!(record.path, p);
        Ok(record.value)
    }

    #[test]
    fn encodes_every_type() {
        assert_eq!(enc(Value::String("héllo".into())).unwrap(), "héllo");
        assert_eq!(enc(Value::Integer(-42)).unwrap(), "-42");
        assert_eq!(
            enc(Value::Unsigned(u64::MAX)).unwrap(),
            "18446744073709551615"
        );
        assert_eq!(enc(Value::Time(1_700_000_000)).unwrap(), "1700000000");
        assert_eq!(enc(Value::Float(1.5)).unwrap(), "1.5");
        assert_eq!(enc(Value::Float(5.0)).unwrap(), "5.0");
        assert_eq!(enc(Value::Float(0.1)).unwrap(), "0.1");
        assert_eq!(enc(Value::Float(1e300)).unwrap(), "1e300");
        assert_eq!(enc(Value::Float(-2.5e-10)).unwrap(), "-2.5e-10");
        assert_eq!(enc(Value::Boolean(true)).unwrap(), "1");
        assert_eq!(enc(Value::Boolean(false)).unwrap(), "0");
        assert_eq!(
            enc(Value::Opaque(vec![0xDE, 0xAD, 0xBE, 0xEF, 0xFF])).unwrap(),
            "3q2+7/8="
        );
        assert_eq!(enc(Value::Objlnk(3, 65535)).unwrap(), "3:65535");
        assert_eq!(enc(Value::Corelnk("</3/0>".into())).unwrap(), "</3/0>");
        assert!(matches!(
            enc(Value::Float(f64::NAN)),
            Err(ContentError::Type { .. })
        ));
        assert!(matches!(
            enc(Value::Float(f64::INFINITY)),
            Err(ContentError::Type { .. })
        ));
    }

    #[test]
    fn encode_needs_one_record_at_a_value_path() {
        let p = Path::resource(3, 0, 0);
        let r = Record::new(p, Value::Integer(1));
        let not_single = Err(ContentError::NotSingle(cf::TEXT));
        assert_eq!(
            encode(&Path::instance(3, 0), std::slice::from_ref(&r)),
            not_single
        );
        assert_eq!(encode(&p, &[]), not_single);
        assert_eq!(encode(&p, &[r.clone(), r.clone()]), not_single);
        let below = Record::new(Path::resource_instance(3, 0, 0, 1), Value::Integer(1));
        assert_eq!(encode(&p, &[below]), not_single);
        let ri = Path::resource_instance(3, 0, 11, 2);
        assert_eq!(
            encode(&ri, &[Record::new(ri, Value::Integer(3))]),
            Ok(b"3".to_vec())
        );
    }

    #[test]
    fn decodes_by_schema_type() {
        use ResourceType as T;
        assert_eq!(dec(T::Integer, b"-42"), Ok(Value::Integer(-42)));
        assert_eq!(dec(T::Integer, b"007"), Ok(Value::Integer(7)));
        assert_eq!(
            dec(T::Integer, b"-9223372036854775808"),
            Ok(Value::Integer(i64::MIN))
        );
        assert_eq!(
            dec(T::Unsigned, b"18446744073709551615"),
            Ok(Value::Unsigned(u64::MAX))
        );
        assert_eq!(dec(T::Time, b"1700000000"), Ok(Value::Time(1_700_000_000)));
        assert_eq!(dec(T::Float, b"1.5"), Ok(Value::Float(1.5)));
        assert_eq!(dec(T::Float, b"-3"), Ok(Value::Float(-3.0)));
        assert_eq!(dec(T::Float, b"2.5E-3"), Ok(Value::Float(0.0025)));
        assert_eq!(dec(T::Float, b"1e+2"), Ok(Value::Float(100.0)));
        assert_eq!(dec(T::Float, b".5"), Ok(Value::Float(0.5)));
        assert_eq!(dec(T::Float, b"5."), Ok(Value::Float(5.0)));
        assert_eq!(dec(T::Boolean, b"1"), Ok(Value::Boolean(true)));
        assert_eq!(dec(T::Boolean, b"0"), Ok(Value::Boolean(false)));
        assert_eq!(dec(T::String, b""), Ok(Value::String(String::new())));
        assert_eq!(
            dec(T::String, "ünï".as_bytes()),
            Ok(Value::String("ünï".into()))
        );
        assert_eq!(
            dec(T::Opaque, b"3q2+7/8="),
            Ok(Value::Opaque(vec![0xDE, 0xAD, 0xBE, 0xEF, 0xFF]))
        );
        assert_eq!(
            dec(T::Opaque, b"3q2+7/8"),
            Ok(Value::Opaque(vec![0xDE, 0xAD, 0xBE, 0xEF, 0xFF]))
        );
        assert_eq!(dec(T::Opaque, b""), Ok(Value::Opaque(vec![])));
        assert_eq!(
            dec(T::Objlnk, b"65535:65535"),
            Ok(Value::Objlnk(65535, 65535))
        );
        assert_eq!(dec(T::Corelnk, b"</1>"), Ok(Value::Corelnk("</1>".into())));
    }

    #[test]
    fn rejects_bad_text() {
        use ResourceType as T;
        let malformed: [(T, &[u8]); 23] = [
            (T::Integer, b""),
            (T::Integer, b"-"),
            (T::Integer, b"+1"),
            (T::Integer, b" 1"),
            (T::Integer, b"1 "),
            (T::Integer, b"1.0"),
            (T::Unsigned, b"-1"),
            (T::Unsigned, b""),
            (T::Time, b"12:00"),
            (T::Float, b""),
            (T::Float, b"."),
            (T::Float, b"NaN"),
            (T::Float, b"inf"),
            (T::Float, b"-infinity"),
            (T::Float, b"+1.0"),
            (T::Float, b"1e"),
            (T::Float, b"1.2.3"),
            (T::Boolean, b"true"),
            (T::Boolean, b"01"),
            (T::Boolean, b""),
            (T::Opaque, b"3q2-7_8"),
            (T::Objlnk, b"3"),
            (T::String, b"\xC3\x28"),
        ];
        for (kind, payload) in malformed {
            assert!(
                matches!(dec(kind, payload), Err(ContentError::Malformed { .. })),
                "{kind:?} {:?}",
                String::from_utf8_lossy(payload)
            );
        }
        let out_of_range: [(T, &[u8]); 4] = [
            (T::Integer, b"9223372036854775808"),
            (T::Unsigned, b"18446744073709551616"),
            (T::Float, b"1e400"),
            (T::Time, b"-9223372036854775809"),
        ];
        for (kind, payload) in out_of_range {
            assert!(
                matches!(dec(kind, payload), Err(ContentError::Type { .. })),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn decode_needs_a_value_path() {
        for base in [Path::ROOT, Path::object(3), Path::instance(3, 0)] {
            assert_eq!(
                decode(&base, b"1", &NewestModel),
                Err(ContentError::NotSingle(cf::TEXT))
            );
        }
    }

    #[test]
    fn unknown_resources_read_as_strings() {
        let p = Path::resource(3, 0, 9999);
        assert_eq!(
            decode(&p, b"12", &NewestModel).unwrap().records,
            vec![Record::new(p, Value::String("12".into()))]
        );
        // Executable resources too (the core refuses the write, not the codec).
        let reboot = Path::resource(3, 0, 4);
        assert_eq!(
            decode(&reboot, b"x", &NewestModel).unwrap().records,
            vec![Record::new(reboot, Value::String("x".into()))]
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
        }

        #[test]
        fn random_text_never_panics(text in "[-+.eE0-9a-zA-Z:=/ ]{0,24}") {
            for r in 0..9 {
                let _ = decode(&Path::resource(TEST_OBJECT, 0, r), text.as_bytes(), &TestSchema);
            }
        }
    }
}

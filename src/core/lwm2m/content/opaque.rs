//! application/octet-stream (CF 42): one Opaque value as raw bytes.

use super::{
    ContentError, Decoded, Schema, cf, require_value_path, single_decoded, single_record, typed,
};
use crate::core::lwm2m::path::Path;
use crate::core::lwm2m::value::{Record, Value};

/// Encodes `records` for a request on `base`.
pub fn encode(base: &Path, records: &[Record]) -> Result<Vec<u8>, ContentError> {
    match single_record(base, records, cf::OPAQUE)? {
        Value::Opaque(bytes) => Ok(bytes.clone()),
        // Raw bytes cannot say what type they are, so only Opaque resources use this format.
        _ => Err(ContentError::NotSingle(cf::OPAQUE)),
    }
}

/// Decodes an untrusted payload sent to `base`. The bytes are the value; a resource whose schema
/// type is not Opaque cannot be written this way (Type error).
pub fn decode(base: &Path, payload: &[u8], schema: &dyn Schema) -> Result<Decoded, ContentError> {
    require_value_path(base, cf::OPAQUE)?;
    let value = typed(base, Value::Opaque(payload.to_vec()), schema)?;
    Ok(single_decoded(base, value))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::core::lwm2m::content::NewestModel;

    #[test]
    fn bytes_pass_through() {
        let package = Path::resource(5, 0, 0);
        let bytes = vec![0x00, 0xFF, 0x10];
        let record = Record::new(package, Value::Opaque(bytes.clone()));
        assert_eq!(
            encode(&package, std::slice::from_ref(&record)),
            Ok(bytes.clone())
        );
        let decoded = decode(&package, &bytes, &NewestModel).unwrap();
        assert_eq!(decoded.records, vec![record]);
        assert!(decoded.containers.is_empty());
        // A single NUL resets the firmware state machine: it must arrive intact.
        assert_eq!(
            decode(&package, &[0], &NewestModel).unwrap().records[0].value,
            Value::Opaque(vec![0])
        );
    }

    #[test]
    fn only_opaque_values_at_value_paths() {
        let p = Path::resource(3, 0, 0);
        let not_single = Err(ContentError::NotSingle(cf::OPAQUE));
        assert_eq!(
            encode(&p, &[Record::new(p, Value::String("x".into()))]),
            not_single
        );
        assert_eq!(encode(&p, &[]), not_single);
        let inst = Path::instance(5, 0);
        assert_eq!(
            encode(&inst, &[Record::new(inst, Value::Opaque(vec![]))]),
            not_single
        );
        assert_eq!(
            decode(&inst, b"x", &NewestModel),
            Err(ContentError::NotSingle(cf::OPAQUE))
        );
        // /3/0/0 is a String: raw bytes do not fit it.
        assert!(matches!(
            decode(&p, b"x", &NewestModel),
            Err(ContentError::Type { .. })
        ));
        // An unknown resource keeps the bytes.
        let unknown = Path::resource_instance(3, 0, 9999, 0);
        assert_eq!(
            decode(&unknown, b"x", &NewestModel).unwrap().records,
            vec![Record::new(unknown, Value::Opaque(b"x".to_vec()))]
        );
    }

    proptest! {
        #[test]
        fn round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let p = Path::resource(5, 0, 0);
            let record = Record::new(p, Value::Opaque(bytes.clone()));
            let encoded = encode(&p, std::slice::from_ref(&record)).unwrap();
            prop_assert_eq!(&encoded, &bytes);
            prop_assert_eq!(decode(&p, &encoded, &NewestModel).unwrap().records, vec![record]);
        }
    }
}

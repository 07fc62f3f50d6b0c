//! The single-value decoders (text/plain, CBOR, opaque) at value paths of every OMA type, and
//! under a uniform schema of each type (which adds Float, absent from the OMA objects).
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use lwm2md::core::lwm2m::content::cf;
use lwm2md::core::lwm2m::path::Path;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    for format in [cf::TEXT, cf::CBOR, cf::OPAQUE] {
        for base in &common::VALUE_BASES {
            common::decode_and_reencode(
                format,
                base,
                payload,
                &lwm2md::core::lwm2m::content::NewestModel,
            );
        }
        let [_, uniform] = common::schemas(pick);
        common::decode_and_reencode(format, &Path::resource(1, 0, 1), payload, uniform);
        // Not a value path: must be refused, never decoded.
        assert!(
            lwm2md::core::lwm2m::content::decode(format, &Path::instance(3, 0), payload, uniform)
                .is_err()
        );
    }
});

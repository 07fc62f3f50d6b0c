//! tlv: decode untrusted payloads at every base with the OMA model and a uniform schema.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use lwm2md::core::lwm2m::content::cf;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the extra schema; the rest is the payload.
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    for schema in common::schemas(pick) {
        for base in &common::BASES {
            common::decode_and_reencode(cf::TLV, base, payload, schema);
        }
    }
});

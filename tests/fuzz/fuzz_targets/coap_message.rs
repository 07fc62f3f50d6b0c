//! CoAP datagram decoding (RFC 7252); a decoded message re-encodes to one that decodes equal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lwm2md::core::coap::codec;

fuzz_target!(|data: &[u8]| {
    match codec::decode(data) {
        Ok(msg) => {
            if let Ok(bytes) = codec::encode(&msg) {
                let again = codec::decode(&bytes).expect("own encoding decodes");
                assert!(again == msg, "decode(encode(m)) != m");
            }
        }
        Err(_) => {
            let _ = codec::peek_header(data);
        }
    }
});

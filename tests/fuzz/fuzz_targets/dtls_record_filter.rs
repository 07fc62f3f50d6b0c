//! dtls_record_filter: arbitrary datagrams into the DTLS record filter, in every state it can
//! be in (before the ServerHello, after it, after the handshake). It must never panic, and a
//! datagram it passes must be a sequence of whole records with known types and versions — the
//! guarantee the DTLS crate relies on.
//!
//! Input: byte 0 picks the state; the rest is split into datagrams at 0xFF 0x00 0xFF markers
//! (so one input can teach the filter a suite and then test a record against it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use lwm2md::runtime::dtls::filter::{HEADER_LEN, RecordFilter};

fuzz_target!(|data: &[u8]| {
    let Some((&state, rest)) = data.split_first() else {
        return;
    };
    let mut filter = RecordFilter::new();
    if state & 1 == 1 {
        filter.established();
    }
    for datagram in split(rest) {
        if filter.check(datagram).is_ok() {
            let mut at = 0;
            while at < datagram.len() {
                let header = &datagram[at..at + HEADER_LEN];
                assert!((20..=23).contains(&header[0]));
                assert!(matches!([header[1], header[2]], [0xFE, 0xFD] | [0xFE, 0xFF]));
                let len = usize::from(u16::from_be_bytes([header[11], header[12]]));
                at += HEADER_LEN + len;
            }
            assert_eq!(at, datagram.len());
        }
    }
});

fn split(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let Some(at) = data.windows(3).position(|w| w == [0xFF, 0x00, 0xFF]) {
        out.push(&data[..at]);
        data = &data[at + 3..];
    }
    out.push(data);
    out
}

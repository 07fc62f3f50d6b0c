//! Execute arguments (`0='foo',1`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use lwm2md::core::lwm2m::value::parse_exec_args;

fuzz_target!(|data: &[u8]| {
    if let Ok(args) = parse_exec_args(data) {
        for (i, a) in args.iter().enumerate() {
            assert!(a.id <= 9);
            assert!(args[..i].iter().all(|b| b.id != a.id), "duplicate argument");
        }
    }
});

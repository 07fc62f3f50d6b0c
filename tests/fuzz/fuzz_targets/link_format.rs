//! CoRE link-format parsing; whatever parses must survive write → parse unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lwm2md::core::lwm2m::content::link;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(links) = link::parse(text) {
        let written = link::write(&links);
        assert_eq!(link::parse(&written).as_ref(), Ok(&links), "{written}");
    }
});

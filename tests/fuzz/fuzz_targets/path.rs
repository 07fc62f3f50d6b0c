//! Path parsing; a parsed path prints back to text that parses to the same path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lwm2md::core::lwm2m::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(path) = Path::parse(text) {
        assert!(path.len() <= 4);
        assert_eq!(Path::parse(&path.to_string()), Ok(path));
    }
    let segments: Vec<&str> = text.split('/').collect();
    let _ = Path::from_segments(&segments);
});

//! A signature's manifest (`_CodeSignature/CodeResources`): parsed or
//! refused, and what parses emits the same manifest again.
#![no_main]
use libfuzzer_sys::fuzz_target;

use driverkit_bundle::signature::{emit_manifest, parse_manifest};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(files) = parse_manifest(text) {
        let again = emit_manifest(&files);
        assert_eq!(parse_manifest(&again).as_ref(), Ok(&files));
    }
});

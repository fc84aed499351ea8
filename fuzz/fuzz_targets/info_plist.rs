//! Info.plist bytes (XML or binary, through the plist crate) into a
//! validated bundle: an error naming the key, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = driverkit_bundle::parse_info(data) {
        let _ = driverkit_bundle::Bundle::from_info(std::path::Path::new("/f.dext"), info);
    }
});

//! An Entitlements.plist (through the plist crate) into entitlements.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(plist::Value::Dictionary(d)) = plist::Value::from_reader(std::io::Cursor::new(data)) {
        let _ = driverkit_bundle::Entitlements::parse(&d);
    }
});

//! The Linux USB backend's ledger of detached kernel drivers, as read back
//! at start (a crash may have left it cut short or damaged).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = driverkitd::backends::linux_usb::ledger::parse(text);
    }
});

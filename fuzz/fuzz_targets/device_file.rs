//! A device file (TOML), virtual USB devices included.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(spec) = driverkitd::backends::virtual_device::parse(text, "fuzz.toml") {
            if let Some(usb) = &spec.usb {
                let _ = driverkitd::backends::virtual_usb::VirtualUsb::new(usb, "fuzz", 0);
            }
        }
    }
});

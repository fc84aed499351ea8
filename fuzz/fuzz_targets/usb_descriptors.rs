//! USB descriptors as a device sends them: device, configuration with its
//! interfaces and endpoints, strings, BOS.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = driverkit_usb::DeviceDescriptor::new_checked(data, 0) {
        let _ = driverkit_usb::DeviceRepr::parse(&d);
    }
    let _ = driverkit_usb::interfaces(data);
    let _ = driverkit_usb::ConfigurationRepr::parse(data);
    if let Ok(s) = driverkit_usb::StringDescriptor::new_checked(data, 0) {
        let _ = s.text();
        let _ = s.language_ids();
    }
});

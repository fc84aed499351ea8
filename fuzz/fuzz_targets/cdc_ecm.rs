//! What a USB CDC Ethernet adapter sends CDCEthernetDriver: its control
//! interface's class-specific descriptors, its MAC address string and its
//! interrupt endpoint's notifications. A result or `None`, never a panic.
#![no_main]
use cdc_ethernet_driver::cdc;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Descriptors as a configuration lists them: each starts with its length.
    let mut descriptors = Vec::new();
    let mut rest = data;
    while let Some(&len) = rest.first() {
        let len = usize::from(len).clamp(1, rest.len());
        descriptors.push(&rest[..len]);
        rest = &rest[len..];
    }
    let _ = cdc::functional(descriptors);
    let _ = cdc::mac_from_string(&String::from_utf8_lossy(data));
    let _ = cdc::notification(data);
});

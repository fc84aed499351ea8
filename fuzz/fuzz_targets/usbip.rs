//! What a USB/IP peer sends: operation headers, device lists, imports,
//! URBs (alone, and as replies of known direction).
#![no_main]
use driverkit_usb::usbip;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = usbip::OpHeader::parse(data);
    let _ = usbip::DeviceInfo::parse(data);
    let _ = usbip::parse_devlist(data);
    let _ = usbip::parse_import(data);
    let _ = usbip::UrbHead::parse(data);
    let _ = usbip::Urb::parse(data);
    let _ = usbip::Urb::parse_reply(data, 1);
    let _ = usbip::Urb::parse_reply(data, 0);
});

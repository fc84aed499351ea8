//! A kernel uevent from the netlink socket.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = driverkitd::backends::linux_usb::uevent::Uevent::parse(data);
});

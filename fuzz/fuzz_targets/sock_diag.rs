//! The kernel's sock_diag reply naming a USB/IP peer's owner: a uid or an
//! error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = driverkitd::backends::usbip_access::parse_diag_reply(data);
});

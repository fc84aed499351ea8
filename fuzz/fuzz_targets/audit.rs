//! A datagram of the kernel's audit log, as the sandbox's refusal log reads it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = driverkit_core::sandbox::audit::parse_datagram(data);
});

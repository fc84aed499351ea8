//! A line on the control socket, as the daemon parses it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<driverkitd::control::Request>(data);
    let _ = serde_json::from_slice::<driverkit_core::control::Request>(data);
});

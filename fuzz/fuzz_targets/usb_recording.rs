//! What a user hands `driverkit device plug FILE` as a recording: pcapng or
//! pcap files, the usbmon packets inside them, and the device the replay
//! makes of them.
#![no_main]
use driverkit_usb::{recording, usbmon};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = usbmon::PacketRepr::parse(data);
    if let Ok(frames) = recording::read(data) {
        let _ = driverkitd::backends::replay::Replay::new("fuzz", &frames, true, None);
    }
});

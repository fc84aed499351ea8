//! What a user hands `driverkit device plug FILE` as a recording: pcapng or
//! pcap files, and the usbmon packets inside them.
#![no_main]
use driverkit_usb::{recording, usbmon};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = recording::read(data);
    let _ = usbmon::PacketRepr::parse(data);
});

//! The kernel's CUSE requests and a serial port's ioctls decoded from
//! them: a request or a named error, never a panic or a read past the
//! bytes.
#![no_main]
use driverkitd::families::serial::cuse::{ioctl, proto};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((_, proto::Request::Ioctl(io))) = proto::Request::parse(data) {
        let _ = ioctl::decode(
            io.cmd,
            io.arg,
            io.input,
            io.out_size as usize,
            &ioctl::Termios::initial(),
        );
    }
    // The ioctl decoder on its own, with the bytes as a structure.
    if data.len() >= 12 {
        let cmd = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        let arg = u64::from_le_bytes([
            data[4], data[5], data[6], data[7], data[8], data[9], data[10], data[11],
        ]);
        let _ = ioctl::decode(cmd, arg, &data[12..], 4096, &ioctl::Termios::initial());
    }
});

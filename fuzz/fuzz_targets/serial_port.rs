//! A serial port's shared region as a driver could leave it: any geometry
//! and any indices, then both ends' operations. A result or an error,
//! never a panic or an access outside the region.
#![no_main]
use driverkit_wire::serial::{SerialPortInterface, HEADER_LEN};
use driverkit_wire::shm::SharedMemory;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sizes, rest)) = data.split_first() else { return };
    // A region of one to four pages past the header, as a peer may size it.
    let len = HEADER_LEN + 4096 * (1 + usize::from(sizes & 3));
    let Ok(shm) = SharedMemory::create("fuzz", len) else { return };
    // The header's first 1 KiB (indices, geometry, doorbells, flags).
    shm.write(0, &rest[..rest.len().min(1024)]);
    let Ok(port) = SerialPortInterface::open(shm) else { return };
    let mut buf = vec![0u8; 8192];
    let _ = port.rx().read(&mut buf);
    let _ = port.rx().peek(&mut buf);
    let _ = port.tx().write(&buf);
    let _ = port.tx().consume(usize::MAX);
    let _ = port.rx().free();
    let _ = port.rx().discard();
    let _ = port.rx_blocked();
});

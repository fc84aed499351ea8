//! An Ethernet interface's shared region as a driver could leave it: any
//! geometry, indices and entries, then the system's operations on every
//! queue. A result or an error, never a panic or an access outside the
//! region; the system's ownership account never believes a bad return.
#![no_main]
use driverkit_wire::net::{NetInterface, Ownership, Queue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(net) = NetInterface::create(16, 256) else { return };
    // The header and the first queue entries, as the peer wrote them.
    net.memory().write(0, &data[..data.len().min(8192)]);
    let Ok(net) = NetInterface::open(net.memory().try_clone().unwrap()) else { return };
    let mut own = Ownership::new(0..net.geometry().packets.min(64));
    let mut frame = Vec::new();
    for q in [Queue::TxSubmission, Queue::TxCompletion, Queue::RxSubmission, Queue::RxCompletion] {
        let mut out = Vec::new();
        if net.pop(q, 64, &mut out).is_ok() {
            for e in out {
                let _ = own.returned(e.packet);
                let _ = net.read_frame(e, &mut frame);
            }
        }
        let _ = net.push(q, &[net.empty(0)]);
    }
    assert!(own.free_count() + own.lent_count() <= 64);
});

//! A data queue's region as a peer could leave it (the virtual cable's
//! queues are written by one dext and read by another): any capacity and
//! indices, then both ends' operations. A result or an error, never a
//! panic or an access outside the region.
#![no_main]
use driverkit_wire::ring::Ring;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(shm) = driverkit_fuzz::region(data) else {
        return;
    };
    let Ok(ring) = Ring::open(shm) else { return };
    let mut out = Vec::new();
    for _ in 0..4 {
        let _ = ring.dequeue(&mut out);
        let _ = ring.peek(&mut out);
    }
    let _ = ring.enqueue(100, |slot| slot.fill(1));
    let _ = ring.can_enqueue(usize::MAX);
    let _ = ring.is_data_available();
});

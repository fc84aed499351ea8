//! An event log's region as a dext could leave it (the system's
//! subscribers read what the dext's event service wrote): any capacity,
//! count, reader slots and records, then readers' operations. Records of a
//! known kind or counted losses, never a panic or an access outside the
//! region.
#![no_main]
use driverkit_wire::event_log::EventLog;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(shm) = driverkit_fuzz::region(data) else {
        return;
    };
    let Ok(log) = EventLog::open(shm) else { return };
    let mut out = Vec::new();
    for from in [Some(0), None, Some(u64::MAX)] {
        let mut reader = log.reader(from);
        for _ in 0..3 {
            let _ = log.read(&mut reader, &mut out, 64);
            let _ = log.has_records(&reader);
        }
        log.release(&mut reader);
    }
});

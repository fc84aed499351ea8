//! The shared-memory region through which the system delivers a device's
//! interrupts to a dext: a count of interrupts so far, and a doorbell.
//!
//! ```text
//!  0  count (u64, written by the system)
//! 64  doorbell
//! ```

use std::sync::atomic::Ordering;

use crate::shm::{Doorbell, SharedMemory};

const COUNT: usize = 0;
const BELL: usize = 64;
/// The size of an interrupt region.
pub const LEN: usize = 4096;

/// Whether `shm` can be an interrupt region: a peer chooses its size, so
/// the system checks it once, before the first [`raise`], rather than
/// finding out in the middle of one.
pub fn check(shm: &SharedMemory) -> crate::IOResult<()> {
    if shm.len() < LEN {
        return Err(crate::IOReturn::BAD_ARGUMENT);
    }
    Ok(())
}

/// The system's side: raises one interrupt, in a region [`check`] passed.
pub fn raise(shm: &SharedMemory) {
    shm.u64_at(COUNT).fetch_add(1, Ordering::Release);
    Doorbell::at(shm, BELL).ring();
}

/// Interrupts raised so far.
pub fn count(shm: &SharedMemory) -> u64 {
    shm.u64_at(COUNT).load(Ordering::Acquire)
}

/// The region's doorbell.
pub fn doorbell(shm: &SharedMemory) -> Doorbell<'_> {
    Doorbell::at(shm, BELL)
}

//! The shared-memory region through which the system delivers a device's
//! interrupts to a dext: a count of interrupts so far, a doorbell, and for
//! a level-triggered source the line's state.
//!
//! ```text
//!   0  count (u64, written by the system)
//!  64  doorbell
//! 128  line (u32, written by the system): 0 for an edge-triggered source
//!      (every raise is an interrupt); for a level-triggered one 1 while
//!      the device asserts it, 2 once it let go
//! ```
//!
//! A level-triggered line the device let go before the dext took the
//! interrupt is no interrupt, as a CPU never sees an INTx line deasserted
//! before it was acknowledged: a UART's "received data" whose bytes the
//! driver already read (it looked right after transmitting) does not run
//! the handler for nothing.

use std::sync::atomic::Ordering;

use crate::shm::{Doorbell, SharedMemory};

const COUNT: usize = 0;
const BELL: usize = 64;
const LINE: usize = 128;
const ASSERTED: u32 = 1;
const DEASSERTED: u32 = 2;
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

/// The system's side, for a level-triggered source: the device asserts
/// the line (before it raises) or lets it go.
pub fn set_line(shm: &SharedMemory, asserted: bool) {
    let state = if asserted { ASSERTED } else { DEASSERTED };
    shm.u32_at(LINE).store(state, Ordering::Release);
}

/// Whether a level-triggered line is let go: what was raised meanwhile
/// needs no handling. Read after [`count`].
pub fn let_go(shm: &SharedMemory) -> bool {
    shm.u32_at(LINE).load(Ordering::Acquire) == DEASSERTED
}

/// Interrupts raised so far.
pub fn count(shm: &SharedMemory) -> u64 {
    shm.u64_at(COUNT).load(Ordering::Acquire)
}

/// The region's doorbell.
pub fn doorbell(shm: &SharedMemory) -> Doorbell<'_> {
    Doorbell::at(shm, BELL)
}

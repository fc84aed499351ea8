//! Time as dispatch sources count it: nanoseconds of `CLOCK_MONOTONIC`.

use rustix::time::{clock_gettime, ClockId};

/// Now, in monotonic nanoseconds.
pub fn now_ns() -> u64 {
    let t = clock_gettime(ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

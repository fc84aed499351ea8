//! Shared memory between the daemon and a dext: sealed memfd regions, and a
//! doorbell that waits by spinning briefly and then parking on a futex.
//!
//! A region's creator seals its size (`F_SEAL_SHRINK | F_SEAL_GROW`) before
//! passing it on, and a receiver refuses a region without those seals: a
//! peer that could shrink the file under our mapping could crash us with
//! `SIGBUS`. Everything a peer can write is treated as untrusted input:
//! lengths and positions read from a region are checked before use.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::thread::futex;

/// A memfd mapped into this process.
#[derive(Debug)]
pub struct SharedMemory {
    fd: OwnedFd,
    map: memmap2::MmapRaw,
}

// SAFETY: the mapping is plain memory; concurrent access goes through
// atomics or through the copy helpers below.
unsafe impl Send for SharedMemory {}
// SAFETY: as for Send: shared use is atomics or the bounded copies below.
unsafe impl Sync for SharedMemory {}

const REQUIRED_SEALS: SealFlags = SealFlags::SHRINK.union(SealFlags::GROW);

impl SharedMemory {
    /// A new zeroed region of `len` bytes, sealed against resizing.
    pub fn create(name: &str, len: usize) -> io::Result<SharedMemory> {
        let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
        rustix::fs::ftruncate(&fd, len as u64)?;
        rustix::fs::fcntl_add_seals(&fd, REQUIRED_SEALS | SealFlags::SEAL)?;
        Self::map(fd)
    }

    /// Maps a region received from a peer, after checking that its size is
    /// sealed and at least `min_len`.
    pub fn from_fd(fd: OwnedFd, min_len: usize) -> io::Result<SharedMemory> {
        let seals = rustix::fs::fcntl_get_seals(&fd)?;
        if !seals.contains(REQUIRED_SEALS) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "shared memory is not sealed against resizing",
            ));
        }
        let len = rustix::fs::fstat(&fd)?.st_size as usize;
        if len < min_len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("shared memory of {len} bytes, expected at least {min_len}"),
            ));
        }
        Self::map(fd)
    }

    /// Maps `len` bytes of memory the system handed over that is not a
    /// sealed region of a peer: a device's BAR (sysfs's `resourceN`) or a
    /// model's register file. The system is trusted not to shrink it; its
    /// length is the one the system named.
    pub fn map_device(fd: OwnedFd, len: usize) -> io::Result<SharedMemory> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "an empty BAR"));
        }
        let file = std::fs::File::from(fd.try_clone()?);
        let map = memmap2::MmapOptions::new().len(len).map_raw(&file)?;
        Ok(SharedMemory { fd, map })
    }

    fn map(fd: OwnedFd) -> io::Result<SharedMemory> {
        // Registration for the asymmetric barrier must precede any waiter's
        // use of it on this region: a region is in use only after mapping.
        asymmetric_barrier();
        let file = std::fs::File::from(fd.try_clone()?);
        let map = memmap2::MmapRaw::map_raw(&file)?;
        Ok(SharedMemory { fd, map })
    }

    /// A second mapping of the same region (for an owner that needs its
    /// own value, such as a ring's end).
    pub fn try_clone(&self) -> io::Result<SharedMemory> {
        Self::map(self.fd.try_clone()?)
    }

    /// Its size in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True for an empty region.
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// Base address of the mapping in this process.
    pub fn as_ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// The atomic `u32` at `offset`. Offsets are layout constants of the
    /// structures built on a region, so a bad one is a bug, not input.
    pub fn u32_at(&self, offset: usize) -> &AtomicU32 {
        assert!(
            offset.is_multiple_of(4) && offset + 4 <= self.len(),
            "u32 at {offset} outside the region"
        );
        // SAFETY: in bounds and aligned (the mapping is page aligned);
        // AtomicU32 has the layout of u32 and any bit pattern is valid.
        unsafe { &*(self.as_ptr().add(offset) as *const AtomicU32) }
    }

    /// The atomic `u8` at `offset`.
    pub fn u8_at(&self, offset: usize) -> &AtomicU8 {
        assert!(offset < self.len(), "u8 at {offset} outside the region");
        // SAFETY: in bounds; AtomicU8 has the layout of u8.
        unsafe { &*(self.as_ptr().add(offset) as *const AtomicU8) }
    }

    /// The atomic `u16` at `offset`.
    pub fn u16_at(&self, offset: usize) -> &AtomicU16 {
        assert!(
            offset.is_multiple_of(2) && offset + 2 <= self.len(),
            "u16 at {offset} outside the region"
        );
        // SAFETY: as for `u32_at`.
        unsafe { &*(self.as_ptr().add(offset) as *const AtomicU16) }
    }

    /// The atomic `u64` at `offset`.
    pub fn u64_at(&self, offset: usize) -> &AtomicU64 {
        assert!(
            offset.is_multiple_of(8) && offset + 8 <= self.len(),
            "u64 at {offset} outside the region"
        );
        // SAFETY: as for `u32_at`.
        unsafe { &*(self.as_ptr().add(offset) as *const AtomicU64) }
    }

    /// Copies `out.len()` bytes from `offset`; false when out of bounds.
    pub fn read(&self, offset: usize, out: &mut [u8]) -> bool {
        if offset
            .checked_add(out.len())
            .is_none_or(|end| end > self.len())
        {
            return false;
        }
        // SAFETY: in bounds; the peer writes this range only before it
        // publishes it with a release store we have acquired.
        unsafe {
            std::ptr::copy_nonoverlapping(self.as_ptr().add(offset), out.as_mut_ptr(), out.len())
        };
        true
    }

    /// Copies `data` to `offset`; false when out of bounds.
    pub fn write(&self, offset: usize, data: &[u8]) -> bool {
        if offset
            .checked_add(data.len())
            .is_none_or(|end| end > self.len())
        {
            return false;
        }
        // SAFETY: in bounds; the peer reads this range only after we
        // publish it with a release store.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.as_ptr().add(offset), data.len())
        };
        true
    }
}

impl AsFd for SharedMemory {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The geometry a region's creator writes into it (sizes, offsets: a few
/// `u32` words at `AT`) and its receiver reads once and checks: a serial
/// port's rings, an Ethernet interface's pool and queues.
pub trait Layout: Copy + Sized {
    /// Where the words are.
    const AT: usize;
    /// How many.
    const WORDS: usize;
    fn to_words(&self) -> Vec<u32>;
    fn from_words(words: &[u32]) -> Self;
    /// Bytes a region with this layout needs.
    fn region_len(&self) -> usize;
    /// Whether the layout holds together in a region of `len` bytes.
    fn check(&self, len: usize) -> crate::IOResult<()>;

    /// Writes the layout (the creator, before handing the region over).
    fn write(&self, shm: &SharedMemory) {
        for (i, v) in self.to_words().into_iter().enumerate() {
            shm.u32_at(Self::AT + 4 * i).store(v, Ordering::Relaxed);
        }
    }

    /// Reads and checks a layout a peer wrote.
    fn read(shm: &SharedMemory) -> crate::IOResult<Self> {
        if shm.len() < Self::AT + 4 * Self::WORDS {
            return Err(crate::IOReturn::BAD_ARGUMENT);
        }
        let words: Vec<u32> = (0..Self::WORDS)
            .map(|i| shm.u32_at(Self::AT + 4 * i).load(Ordering::Relaxed))
            .collect();
        let layout = Self::from_words(&words);
        layout.check(shm.len())?;
        Ok(layout)
    }
}

/// A region and its checked layout.
pub struct Laid<L> {
    shm: SharedMemory,
    layout: L,
}

impl<L: Layout> Laid<L> {
    /// A new region for `layout`, which is written into it.
    pub fn create(name: &str, layout: L) -> crate::IOResult<Laid<L>> {
        let shm = SharedMemory::create(name, layout.region_len())
            .map_err(|_| crate::IOReturn::NO_MEMORY)?;
        layout.write(&shm);
        Ok(Laid { shm, layout })
    }

    /// A region a peer made, its layout checked once.
    pub fn open(shm: SharedMemory) -> crate::IOResult<Laid<L>> {
        let layout = L::read(&shm)?;
        Ok(Laid { shm, layout })
    }

    pub fn memory(&self) -> &SharedMemory {
        &self.shm
    }

    pub fn layout(&self) -> L {
        self.layout
    }
}

/// True when waiters pay for the store-load barrier that parking needs,
/// with `membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)`, so that notifiers need
/// none (the asymmetric-fence technique `membarrier(2)` describes). Decided,
/// and this process registered, once; every process on one kernel decides
/// alike, which is what makes the two sides agree.
pub fn asymmetric_barrier() -> bool {
    use rustix::thread::{membarrier, membarrier_query, MembarrierCommand};
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        let q = membarrier_query();
        q.contains_command(MembarrierCommand::GlobalExpedited)
            && q.contains_command(MembarrierCommand::RegisterGlobalExpedited)
            && membarrier(MembarrierCommand::RegisterGlobalExpedited).is_ok()
    })
}

static LOST_WAKEUPS: AtomicU64 = AtomicU64::new(0);
static PARKS: AtomicU64 = AtomicU64::new(0);

/// Waits until one of `waits` changes (or a wake on it), at most `timeout`:
/// `futex_waitv`, for a waiter of several doorbells at once (see
/// [`Doorbell::arm`]). Returns the index of the word that woke it, or why
/// not (`TIMEDOUT`; `EAGAIN` when a word had changed already). Counted as
/// a park.
pub fn wait_any(waits: &[futex::Wait], timeout: Duration) -> rustix::io::Result<usize> {
    // futex_waitv's timeout is a point in time, not a duration.
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let nanos = now.tv_nsec as u64 + u64::from(timeout.subsec_nanos());
    let at = futex::Timespec {
        tv_sec: now.tv_sec + timeout.as_secs() as i64 + (nanos / 1_000_000_000) as i64,
        tv_nsec: (nanos % 1_000_000_000) as i64,
    };
    PARKS.fetch_add(1, Ordering::Relaxed);
    futex::waitv(
        waits,
        futex::WaitvFlags::empty(),
        Some(&at),
        rustix::time::ClockId::Monotonic,
    )
}

/// A [`wait_any`] entry: wait while `word` holds `value`. `private`: a
/// word in this process's own memory; otherwise one in memory shared with
/// a peer, which wakes it with a shared futex wake (as doorbells do).
pub fn wait_entry(word: &AtomicU32, value: u32, private: bool) -> futex::Wait {
    let mut wait = futex::Wait::new();
    wait.val = u64::from(value);
    wait.uaddr = futex::WaitPtr::new(word.as_ptr().cast());
    wait.flags = if private {
        futex::WaitFlags::SIZE_U32 | futex::WaitFlags::PRIVATE
    } else {
        futex::WaitFlags::SIZE_U32
    };
    wait
}

/// How many times waiters of this process parked on a futex.
pub fn parks() -> u64 {
    PARKS.load(Ordering::Relaxed)
}

/// Waits that ended by the safety-net timeout although their event had
/// happened: lost wake-ups. Always zero unless the doorbell protocol is
/// broken; tests check it.
pub fn lost_wakeups() -> u64 {
    LOST_WAKEUPS.load(Ordering::Relaxed)
}

/// How long a waiter spins before it parks. Cross-core wake-ups through the
/// kernel cost tens of microseconds here; spinning this long catches a busy
/// peer's next event without a syscall on either side, and an idle waiter
/// still parks almost at once.
pub const SPIN: Duration = Duration::from_micros(50);

/// Spins before a waiter starts yielding its core between looks (about
/// 2 µs): a busy peer on another core answers within that, and past it
/// the peer may be waiting for this very core (more busy threads than
/// cores), which pure spinning would hold for a whole time slice.
const PURE_SPINS: u32 = 1024;

/// How long a parked waiter sleeps before it looks again on its own. Only a
/// safety net (a peer that died between publishing and ringing); normal
/// wake-ups come from `ring`.
const PARK_TIMEOUT: Duration = Duration::from_millis(250);

/// A doorbell in shared memory: an event counter (the futex word) and a
/// count of parked waiters, at `offset` and `offset + 4`.
///
/// Parking safely needs a store-load barrier on both sides between
/// publishing an event and looking at the other side's state. A plain
/// doorbell has the notifier pay a fence each time. An asymmetric one
/// (see [`asymmetric_barrier`]) moves the whole cost to a waiter about to
/// park: right for a queue notified per entry whose consumer seldom parks,
/// wrong for a pipeline whose stages park between bursts, where each park
/// would interrupt every core.
#[derive(Clone, Copy)]
pub struct Doorbell<'a> {
    seq: &'a AtomicU32,
    parked: &'a AtomicU32,
    asymmetric: bool,
}

impl<'a> Doorbell<'a> {
    /// The doorbell at `offset` of `shm`.
    pub fn at(shm: &'a SharedMemory, offset: usize) -> Doorbell<'a> {
        Doorbell {
            seq: shm.u32_at(offset),
            parked: shm.u32_at(offset + 4),
            asymmetric: false,
        }
    }

    /// The doorbell at `offset` of `shm`, asymmetric where the kernel allows
    /// (both sides must open it so).
    pub fn asymmetric_at(shm: &'a SharedMemory, offset: usize) -> Doorbell<'a> {
        Doorbell {
            asymmetric: asymmetric_barrier(),
            ..Doorbell::at(shm, offset)
        }
    }

    /// Announces an event and counts it (the counter is the event count
    /// some protocols use, like the call channel); wakes a parked waiter.
    pub fn ring(&self) -> bool {
        self.seq.fetch_add(1, Ordering::SeqCst);
        if self.parked.load(Ordering::SeqCst) != 0 {
            let _ = futex::wake(self.seq, futex::Flags::empty(), u32::MAX);
            return true;
        }
        false
    }

    /// Wakes a parked waiter, if there is one, after an event the waiter
    /// checks by itself (`ready`): a fence and a load, or for an asymmetric
    /// doorbell a plain load (its waiter pays for the barrier when it
    /// parks, see [`Doorbell::wait`]).
    pub fn notify(&self) {
        if self.asymmetric {
            std::sync::atomic::compiler_fence(Ordering::SeqCst);
        } else {
            std::sync::atomic::fence(Ordering::SeqCst);
        }
        if self.parked.load(Ordering::Relaxed) != 0 {
            self.seq.fetch_add(1, Ordering::SeqCst);
            let _ = futex::wake(self.seq, futex::Flags::empty(), u32::MAX);
        }
    }

    /// Waits until `ready()` holds, spinning for `spin` and then parking.
    /// `ready` must become true only after the event's `ring` (or be
    /// checked again after it), which is what the ring's sequence number
    /// guarantees. Returns false on `deadline`.
    pub fn wait(
        &self,
        spin: Duration,
        deadline: Option<Instant>,
        ready: impl FnMut() -> bool,
    ) -> bool {
        self.wait_reporting(false, spin, deadline, ready).0
    }

    /// Spins (or, with `yielding`, yields the CPU between looks) for up to
    /// `spin` until `ready()` holds; false if it did not. Never parks: for
    /// a waiter that has somewhere else to park (see [`Doorbell::arm`]).
    pub fn spin_until(
        &self,
        yielding: bool,
        spin: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> bool {
        if ready() {
            return true;
        }
        // The clock is read only once spinning has gone on for a while: a
        // busy peer answers within a few dozen spins, and a clock read costs
        // as much as a cache-line transfer here.
        let mut spin_until = None;
        let mut n = if yielding { PURE_SPINS } else { 0 };
        loop {
            if ready() {
                return true;
            }
            n = n.wrapping_add(1);
            if n < PURE_SPINS {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
            if n.is_multiple_of(64) {
                let now = Instant::now();
                if now >= *spin_until.get_or_insert(now + spin) {
                    return false;
                }
            }
        }
    }

    /// Announces a waiter that parks elsewhere, on this doorbell's
    /// [`futex_word`](Doorbell::futex_word) among others (`futex_waitv`):
    /// from now on a ring wakes it. The caller must look at its event after
    /// arming and wait only for the word's value it saw before that look.
    pub fn arm(&self) {
        self.parked.fetch_add(1, Ordering::SeqCst);
    }

    /// Withdraws an [`arm`](Doorbell::arm).
    pub fn disarm(&self) {
        self.parked.fetch_sub(1, Ordering::SeqCst);
    }

    /// The futex word a ring changes and wakes.
    pub fn futex_word(&self) -> &'a AtomicU32 {
        self.seq
    }

    /// As [`Doorbell::wait`], and says whether the waiter parked too. With
    /// `yielding` it yields the CPU between looks from the start instead of
    /// spinning: for a waiter in a conversation that was just woken from a
    /// park (its own, or its peer's), whose peer the kernel may have put on
    /// this very CPU, where a pure spin would keep it from running.
    pub fn wait_reporting(
        &self,
        yielding: bool,
        spin: Duration,
        deadline: Option<Instant>,
        mut ready: impl FnMut() -> bool,
    ) -> (bool, bool) {
        if self.spin_until(yielding, spin, &mut ready) {
            return (true, false);
        }
        loop {
            let seen = self.seq.load(Ordering::SeqCst);
            self.parked.fetch_add(1, Ordering::SeqCst);
            // The SeqCst increment pairs with `notify`'s fence (or, for an
            // asymmetric doorbell, the barrier does for both sides): either
            // the notifier sees us parked, or we see its event below.
            if self.asymmetric {
                let _ =
                    rustix::thread::membarrier(rustix::thread::MembarrierCommand::GlobalExpedited);
            }
            // Checked after announcing ourselves: a ring between this check
            // and the wait changes `seq`, so the wait returns at once.
            if ready() {
                self.parked.fetch_sub(1, Ordering::SeqCst);
                return (true, false);
            }
            let mut timeout = PARK_TIMEOUT;
            if let Some(d) = deadline {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    self.parked.fetch_sub(1, Ordering::SeqCst);
                    return (false, true);
                }
                timeout = timeout.min(left);
            }
            let ts = rustix::thread::futex::Timespec {
                tv_sec: timeout.as_secs() as i64,
                tv_nsec: timeout.subsec_nanos() as i64,
            };
            PARKS.fetch_add(1, Ordering::Relaxed);
            let woke = futex::wait(self.seq, futex::Flags::empty(), seen, Some(&ts));
            self.parked.fetch_sub(1, Ordering::SeqCst);
            if ready() {
                if woke == Err(rustix::io::Errno::TIMEDOUT) {
                    // The event came but nobody woke us: a lost wake-up,
                    // caught only by the safety net. Counted for tests.
                    LOST_WAKEUPS.fetch_add(1, Ordering::Relaxed);
                }
                return (true, true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn regions_travel_sealed_and_unsealed_ones_are_refused() {
        let a = SharedMemory::create("t", 4096).unwrap();
        let b = SharedMemory::from_fd(a.as_fd().try_clone_to_owned().unwrap(), 4096).unwrap();
        assert!(a.write(100, b"hello"));
        let mut out = [0u8; 5];
        assert!(b.read(100, &mut out));
        assert_eq!(&out, b"hello");
        assert!(!b.read(4094, &mut out), "out of bounds");
        assert!(
            SharedMemory::from_fd(a.as_fd().try_clone_to_owned().unwrap(), 8192).is_err(),
            "too small"
        );
        let raw = rustix::fs::memfd_create("raw", MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&raw, 4096).unwrap();
        let err = SharedMemory::from_fd(raw, 4096).unwrap_err();
        assert!(err.to_string().contains("not sealed"), "{err}");
    }

    #[test]
    fn a_parked_waiter_is_woken_by_a_ring() {
        let shm = Arc::new(SharedMemory::create("bell", 4096).unwrap());
        let flag = shm.u32_at(64);
        let waiter = {
            let shm = shm.clone();
            std::thread::spawn(move || {
                let bell = Doorbell::at(&shm, 0);
                bell.wait(
                    Duration::ZERO,
                    Some(Instant::now() + Duration::from_secs(10)),
                    || shm.u32_at(64).load(Ordering::Acquire) == 1,
                )
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        flag.store(1, Ordering::Release);
        Doorbell::at(&shm, 0).ring();
        assert!(waiter.join().unwrap());
    }

    /// Two threads ping-pong through two rings, always parking (no spin),
    /// so that every exchange goes through notify and the futex.
    #[test]
    fn parked_waiters_never_lose_a_wakeup() {
        use crate::ring::Ring;
        let ping = Arc::new(Ring::create("ping", 256).unwrap());
        let pong = Arc::new(Ring::create("pong", 256).unwrap());
        let (before, parks_before) = (lost_wakeups(), parks());
        let (p, q) = (ping.clone(), pong.clone());
        let peer = std::thread::spawn(move || {
            let mut out = Vec::new();
            for i in 0..3000 {
                // Pausing now and then makes the other side park.
                if i % 3 == 0 {
                    std::thread::sleep(Duration::from_micros(200));
                }
                assert!(p.wait_for_data(Duration::ZERO, None));
                p.dequeue(&mut out).unwrap();
                q.enqueue(out.len(), |s| s.copy_from_slice(&out)).unwrap();
            }
        });
        let mut out = Vec::new();
        for i in 0..3000u32 {
            ping.enqueue(4, |s| s.copy_from_slice(&i.to_le_bytes()))
                .unwrap();
            assert!(pong.wait_for_data(Duration::ZERO, None));
            pong.dequeue(&mut out).unwrap();
            assert_eq!(out, i.to_le_bytes());
        }
        peer.join().unwrap();
        assert!(
            parks() - parks_before >= 500,
            "waiters parked only {} times",
            parks() - parks_before
        );
        assert_eq!(
            lost_wakeups(),
            before,
            "a waiter was woken only by its safety-net timeout"
        );
    }

    #[test]
    fn a_wait_gives_up_at_its_deadline() {
        let shm = SharedMemory::create("late", 4096).unwrap();
        let ok = Doorbell::at(&shm, 0).wait(
            Duration::ZERO,
            Some(Instant::now() + Duration::from_millis(20)),
            || false,
        );
        assert!(!ok);
    }
}

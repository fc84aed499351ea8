//! One Ethernet interface at work: its TAP device and the driver's pool,
//! and the two threads between them.
//!
//! - `net-in`: frames the kernel sends (TAP reads) into free TX buffers,
//!   a batch per TX submission; buffers come back through TX completions.
//!   With no free buffer it waits: the kernel holds the frames in the
//!   TAP's queue, as it does for a busy NIC.
//! - `net-out`: RX completions to the kernel (TAP writes), each buffer
//!   handed back empty through RX submission at once. A frame longer than
//!   the MTU allows is dropped and counted, never truncated.
//!
//! The pool's first half is the TX side's, the second the RX side's; each
//! side keeps its own account of which buffers the driver holds
//! ([`Ownership`]), so a buffer returned twice or never lent is counted as
//! the driver's error and ignored.

use driverkit_wire::sync::Locked;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use driverkit_core::{EntryId, System};
use driverkit_wire::net::{
    Entry, NetInterface, Ownership, Queue, DRIVER_BELL, POOL_SPIN, SYSTEM_BELL,
};
use driverkit_wire::{IOResult, IOReturn};
use rustix::event::{poll, PollFd, PollFlags, Timespec};

use super::link::{self, Change, Watch};
use super::tap::Tap;
use crate::families::threads::{Body, Stop, Threads};

/// Frames per batch at most.
const BATCH: usize = 64;

/// Counters, for ioreg and the tests.
#[derive(Default)]
pub struct Counters {
    pub tx_packets: AtomicU64,
    pub rx_packets: AtomicU64,
    /// Longer than the MTU allows: dropped.
    pub rx_too_long: AtomicU64,
    /// Entries the driver returned that it did not hold.
    pub bad_returns: AtomicU64,
}

impl Counters {
    /// Their sum: what says one changed.
    fn total(&self) -> u64 {
        [
            &self.tx_packets,
            &self.rx_packets,
            &self.rx_too_long,
            &self.bad_returns,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }
}

struct Shared {
    name: String,
    /// The TAP in use: a new one replaces a TAP the kernel removed.
    tap: Mutex<Arc<Tap>>,
    net: NetInterface,
    stop: Stop,
    counters: Arc<Counters>,
    /// The link as a user set it (`ip link`), and the MTU in force.
    link: Watch,
}

/// Hands a user's change to the driver; true if it took it.
pub type Apply = Box<dyn Fn(Change) -> bool + Send>;

/// Shows the counters (ioreg's `IONetworkStatistics`).
pub type Publish = Box<dyn Fn(&Counters) + Send>;

/// Makes a TAP for one the kernel removed (and tells the registry).
pub type Vanished = Box<dyn Fn() -> Option<Arc<Tap>> + Send>;

/// How often the counters are shown at most.
const PUBLISH_EVERY: Duration = Duration::from_millis(500);

pub struct Interface {
    shared: Arc<Shared>,
    threads: Threads,
}

impl Interface {
    /// Starts moving frames between `tap` and the driver's pool `net`.
    pub fn start(
        name: String,
        tap: Arc<Tap>,
        net: NetInterface,
        counters: Arc<Counters>,
        apply: Apply,
        publish: Publish,
        vanished: Vanished,
    ) -> IOResult<Interface> {
        let packets = net.geometry().packets;
        if packets < 2 {
            return Err(IOReturn::BAD_ARGUMENT);
        }
        let stop = Stop::new().map_err(|_| IOReturn::NO_RESOURCES)?;
        let shared = Arc::new(Shared {
            name,
            tap: Mutex::new(tap),
            net,
            stop,
            counters,
            link: Watch {
                mtu: AtomicU32::new(1500),
            },
        });
        let half = packets / 2;
        let bodies: Vec<(String, Body<Shared>)> = vec![
            (
                "net-in".into(),
                Box::new(move |s| net_in(s, Ownership::new(0..half))),
            ),
            (
                "net-out".into(),
                Box::new(move |s| net_out(s, half..packets, &*publish)),
            ),
            (
                "net-link".into(),
                Box::new(move |s| {
                    let replace = || {
                        let new = vanished()?;
                        *s.tap.locked() = new.clone();
                        Some(new)
                    };
                    let hands = link::Hands {
                        tap: &|| s.tap(),
                        apply: &*apply,
                        vanished: &replace,
                    };
                    link::run(&hands, &s.link, &s.stop)
                }),
            ),
        ];
        let threads = Threads::start(&shared, bodies, Shared::tell_stop).map_err(|e| {
            tracing::error!("net      {}: {e}", shared.name);
            IOReturn::NO_RESOURCES
        })?;
        Ok(Interface { shared, threads })
    }

    /// The TAP in use now.
    pub fn tap(&self) -> Arc<Tap> {
        self.shared.tap()
    }

    /// Ends both threads; the TAP stays (its owner parks it).
    pub fn stop(&self) {
        self.shared.tell_stop();
        self.threads.join();
    }
}

impl Drop for Interface {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Shared {
    fn stopped(&self) -> bool {
        self.stop.is_set()
    }

    /// Tells the threads to stop: the stop wakes those in `poll`, the
    /// system bell the one waiting for the driver.
    fn tell_stop(&self) {
        if self.stop.set() {
            self.net.bell(SYSTEM_BELL).ring();
        }
    }

    fn tap(&self) -> Arc<Tap> {
        self.tap.locked().clone()
    }
}

/// Frames from `recv` into buffers `own` lends, up to `BATCH` and no more
/// than were free when the batch began (the free count shrinks with every
/// buffer taken, so it is read once). `write` copies a frame into its
/// buffer; a frame too large for one gives the buffer back. Stops when
/// `recv` has no more.
fn fill_batch<E>(
    batch: &mut Vec<E>,
    own: &mut Ownership,
    frame: &mut [u8],
    mut recv: impl FnMut(&mut [u8]) -> std::io::Result<usize>,
    mut write: impl FnMut(u32, &[u8]) -> Result<E, ()>,
) {
    let limit = BATCH.min(own.free_count());
    while batch.len() < limit {
        match recv(frame) {
            Ok(n) => {
                let Some(p) = own.take() else { break };
                match write(p, &frame[..n]) {
                    Ok(e) => batch.push(e),
                    // Larger than a buffer: the driver could not send it.
                    Err(()) => {
                        own.returned(p);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // WouldBlock (nothing more now), or the TAP failed.
            Err(_) => break,
        }
    }
}

/// TAP → TX submission.
fn net_in(s: &Shared, mut own: Ownership) {
    let mut frame = vec![0u8; 65536];
    let mut batch: Vec<Entry> = Vec::with_capacity(BATCH);
    let mut returned = Vec::new();
    while !s.stopped() {
        // Buffers the driver is done with.
        returned.clear();
        if s.net
            .pop(Queue::TxCompletion, usize::MAX, &mut returned)
            .is_err()
        {
            corrupt(s, "TX completion");
        }
        for e in &returned {
            if !own.returned(e.packet) {
                s.counters.bad_returns.fetch_add(1, Ordering::Relaxed);
            }
        }
        if own.free_count() == 0 {
            let net = &s.net;
            net.bell(SYSTEM_BELL).wait(
                POOL_SPIN,
                Some(Instant::now() + Duration::from_millis(250)),
                || net.pending(Queue::TxCompletion).map_or(true, |p| p > 0) || s.stopped(),
            );
            continue;
        }
        batch.clear();
        let tap = s.tap();
        fill_batch(
            &mut batch,
            &mut own,
            &mut frame,
            |frame| tap.recv(frame),
            |p, frame| s.net.write_frame(p, frame).map_err(|_| ()),
        );
        if batch.is_empty() {
            let mut fds = [
                PollFd::new(&*tap, PollFlags::IN),
                PollFd::new(s.stop.fd(), PollFlags::IN),
            ];
            let ts = Timespec {
                tv_sec: 0,
                tv_nsec: 250_000_000,
            };
            let _ = poll(&mut fds, Some(&ts));
            continue;
        }
        match s.net.push(Queue::TxSubmission, &batch) {
            Ok(n) => {
                s.counters.tx_packets.fetch_add(n as u64, Ordering::Relaxed);
                // A queue holds every packet: the rest cannot happen unless
                // the driver broke the indices.
                for e in &batch[n..] {
                    own.returned(e.packet);
                }
            }
            Err(_) => corrupt(s, "TX submission"),
        }
        s.net.bell(DRIVER_BELL).notify();
    }
}

/// RX completion → TAP, buffers straight back to RX submission.
fn net_out(s: &Shared, range: std::ops::Range<u32>, publish: &dyn Fn(&Counters)) {
    let mut own = Ownership::new(range.clone());
    // Every RX buffer to the driver, empty.
    let mut empties = Vec::new();
    while let Some(p) = own.take() {
        empties.push(s.net.empty(p));
    }
    if s.net.push(Queue::RxSubmission, &empties).is_err() {
        corrupt(s, "RX submission");
    }
    s.net.bell(DRIVER_BELL).notify();
    let mut done = Vec::with_capacity(BATCH);
    let mut frame = Vec::with_capacity(65536);
    let mut shown = (Instant::now(), 0u64);
    while !s.stopped() {
        let seen = s.counters.total();
        if seen != shown.1 && shown.0.elapsed() >= PUBLISH_EVERY {
            publish(&s.counters);
            shown = (Instant::now(), seen);
        }
        let net = &s.net;
        if !net.bell(SYSTEM_BELL).wait(
            POOL_SPIN,
            Some(Instant::now() + Duration::from_millis(250)),
            || net.pending(Queue::RxCompletion).map_or(true, |p| p > 0) || s.stopped(),
        ) || s.stopped()
        {
            continue;
        }
        done.clear();
        if net.pop(Queue::RxCompletion, BATCH, &mut done).is_err() {
            corrupt(s, "RX completion");
            continue;
        }
        let mut refill = Vec::with_capacity(done.len());
        let limit = s.link.mtu.load(Ordering::Acquire) as usize + 14;
        let tap = s.tap();
        for e in &done {
            if !own.returned(e.packet) {
                s.counters.bad_returns.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if e.length > 0 && net.read_frame(*e, &mut frame).is_ok() {
                if frame.len() > limit {
                    s.counters.rx_too_long.fetch_add(1, Ordering::Relaxed);
                } else if tap.send(&frame).is_ok() {
                    s.counters.rx_packets.fetch_add(1, Ordering::Relaxed);
                }
            }
            if let Some(p) = own.take() {
                refill.push(net.empty(p));
            }
        }
        if net.push(Queue::RxSubmission, &refill).is_err() {
            corrupt(s, "RX submission");
        }
        net.bell(DRIVER_BELL).notify();
    }
}

fn corrupt(s: &Shared, queue: &str) {
    tracing::error!(
        "net      {}: the driver left its {queue} queue's indices inconsistent",
        s.name
    );
    std::thread::sleep(Duration::from_millis(100));
}

/// For the family: the ioreg properties of an interface's counters.
pub fn publish_counters(system: &System, service: EntryId, c: &Counters) {
    let mut d = plist::Dictionary::new();
    for (k, v) in [
        ("TxPackets", &c.tx_packets),
        ("RxPackets", &c.rx_packets),
        ("RxTooLong", &c.rx_too_long),
        ("BadBufferReturns", &c.bad_returns),
    ] {
        d.insert(k.into(), (v.load(Ordering::Relaxed) as i64).into());
    }
    system.set_property(service, "IONetworkStatistics", plist::Value::Dictionary(d));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TX batch fills every free buffer (up to `BATCH`) when the TAP has
    /// frames for them all.
    #[test]
    fn a_batch_takes_as_many_frames_as_there_were_free_buffers() {
        let mut own = Ownership::new(0..BATCH as u32);
        let mut batch = Vec::new();
        let mut frame = vec![0u8; 2048];
        fill_batch(&mut batch, &mut own, &mut frame, |_| Ok(60), |p, _| Ok(p));
        assert_eq!(batch.len(), BATCH);
        assert_eq!(own.free_count(), 0);
        // Fewer free buffers than BATCH: all of them, and no frame read
        // that no buffer takes.
        let (batch, reads) = fill_counting(10, |_| 60);
        assert_eq!((batch.len(), reads), (10, 10));
        // A frame too large for a buffer gives the buffer back, and the
        // next frame gets it.
        let (batch, reads) = fill_counting(4, |read| if read == 2 { 2000 } else { 60 });
        assert_eq!((batch, reads), (vec![0, 1, 2, 3], 5));
    }

    /// One batch from `buffers` free buffers, the n-th frame read
    /// `size(n)` bytes long (frames over 1514 bytes do not fit): the
    /// buffers taken and the frames read.
    fn fill_counting(buffers: u32, size: impl Fn(usize) -> usize) -> (Vec<u32>, usize) {
        let mut own = Ownership::new(0..buffers);
        let (mut batch, mut frame, mut reads) = (Vec::new(), vec![0u8; 2048], 0);
        fill_batch(
            &mut batch,
            &mut own,
            &mut frame,
            |_| {
                reads += 1;
                Ok(size(reads))
            },
            |p, frame| if frame.len() > 1514 { Err(()) } else { Ok(p) },
        );
        (batch, reads)
    }
}

//! A single-producer single-consumer ring of variable-length entries in
//! shared memory: the storage of `IODataQueueDispatchSource`.
//!
//! ```text
//!   0   head (u64, consumer's)          192  "space" doorbell (producer waits)
//!  64   tail (u64, producer's)          256  capacity (u32)
//! 128   "data" doorbell (consumer waits) 320  entries...
//! ```
//!
//! Positions count bytes ever written or read (wrapping), so `tail - head` is what is
//! stored. An entry is a `u32` length and its bytes, padded to 8; an entry
//! never wraps: when it does not fit before the end, a pad marker sends the
//! reader back to the start, as DriverKit's data queue does. The peer can
//! write anything into the region, so every length and position read from
//! it is checked: a bad one is `Corrupt`, never a panic or an out-of-bounds
//! access.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::shm::{Doorbell, SharedMemory};
use crate::{IOResult, IOReturn};

const HEAD: usize = 0;
const TAIL: usize = 64;
const DATA_BELL: usize = 128;
const SPACE_BELL: usize = 192;
const CAPACITY: usize = 256;
/// Where entries start.
pub const DATA: usize = 320;
const PAD: u32 = u32::MAX;

/// Bytes an entry of `len` bytes takes (saturating: an absurd length is
/// simply too large for any ring, never an overflow).
pub fn entry_size(len: usize) -> usize {
    4usize
        .checked_add(len)
        .and_then(|n| n.checked_next_multiple_of(8))
        .unwrap_or(usize::MAX & !7)
}

/// One end of a ring. Only one thread may produce and one consume.
///
/// The capacity is a power of two, so that a position's offset is a mask
/// rather than a 64-bit division (several per entry, the difference between
/// this ring and a raw one at 16-byte entries).
#[derive(Debug)]
pub struct Ring {
    shm: SharedMemory,
    capacity: u64,
    mask: u64,
    /// The producer's last sight of the consumer's head, and the consumer's
    /// of the producer's tail: each end re-reads the other's position (a
    /// cache line the other keeps writing) only when its stale copy says
    /// it must.
    seen_head: std::sync::atomic::AtomicU64,
    seen_tail: std::sync::atomic::AtomicU64,
}

impl Ring {
    /// A new ring holding at least `byte_count` bytes of entries (rounded
    /// up to a power of two, at least 8).
    pub fn create(name: &str, byte_count: usize) -> std::io::Result<Ring> {
        let too_large = || {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("a ring of {byte_count} bytes is too large"),
            )
        };
        let capacity = byte_count
            .max(8)
            .checked_next_power_of_two()
            .filter(|c| *c <= 1 << 31)
            .ok_or_else(too_large)?;
        let shm = SharedMemory::create(name, DATA + capacity)?;
        shm.u32_at(CAPACITY)
            .store(capacity as u32, Ordering::Release);
        Ok(Ring {
            shm,
            capacity: capacity as u64,
            mask: capacity as u64 - 1,
            seen_head: 0.into(),
            seen_tail: 0.into(),
        })
    }

    /// The other end of a ring received from a peer; the region must be as
    /// large as the capacity it declares, a power of two.
    pub fn open(shm: SharedMemory) -> std::io::Result<Ring> {
        let bad = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidData, why);
        if shm.len() < DATA + 8 {
            return Err(bad(format!(
                "ring region of {} bytes is smaller than its header",
                shm.len()
            )));
        }
        let capacity = u64::from(shm.u32_at(CAPACITY).load(Ordering::Acquire));
        if capacity < 8 || !capacity.is_power_of_two() || DATA as u64 + capacity > shm.len() as u64
        {
            return Err(bad(format!(
                "ring declares capacity {capacity} in a {}-byte region",
                shm.len()
            )));
        }
        let (head, tail) = (
            shm.u64_at(HEAD).load(Ordering::Acquire),
            shm.u64_at(TAIL).load(Ordering::Acquire),
        );
        Ok(Ring {
            shm,
            capacity,
            mask: capacity - 1,
            seen_head: head.into(),
            seen_tail: tail.into(),
        })
    }

    /// The shared region, to pass to the peer.
    pub fn memory(&self) -> &SharedMemory {
        &self.shm
    }

    /// Bytes of entries the ring holds.
    pub fn capacity(&self) -> usize {
        self.capacity as usize
    }

    /// `(head, tail)`, checked: `Corrupt` if the peer left them inconsistent.
    fn positions(&self) -> IOResult<(u64, u64)> {
        let head = self.shm.u64_at(HEAD).load(Ordering::Acquire);
        let tail = self.shm.u64_at(TAIL).load(Ordering::Acquire);
        if tail.wrapping_sub(head) > self.capacity
            || !head.is_multiple_of(8)
            || !tail.is_multiple_of(8)
        {
            return Err(CORRUPT);
        }
        Ok((head, tail))
    }

    /// True when an entry can be dequeued.
    pub fn is_data_available(&self) -> bool {
        self.positions().is_ok_and(|(h, t)| h != t)
    }

    /// True when an entry of `len` bytes fits now.
    pub fn can_enqueue(&self, len: usize) -> bool {
        self.positions().is_ok_and(|(h, t)| {
            self.room_needed(t, len)
                .is_some_and(|n| n <= self.capacity.saturating_sub(t.wrapping_sub(h)))
        })
    }

    /// Bytes an entry of `len` takes at `tail`, padding included; `None`
    /// if it can never fit.
    fn room_needed(&self, tail: u64, len: usize) -> Option<u64> {
        let size = entry_size(len) as u64;
        if size > self.capacity {
            return None;
        }
        let to_end = self.capacity - (tail & self.mask);
        Some(if size <= to_end { size } else { to_end + size })
    }

    /// The consumer's head as the producer needs it: the cached copy if it
    /// leaves `needed` bytes of room after `tail`, else a fresh read.
    fn head_for_producer(&self, tail: u64, needed: u64) -> IOResult<u64> {
        let mut head = self.seen_head.load(Ordering::Relaxed);
        if needed > self.capacity.saturating_sub(tail.wrapping_sub(head)) {
            head = self.shm.u64_at(HEAD).load(Ordering::Acquire);
            self.seen_head.store(head, Ordering::Relaxed);
        }
        if tail.wrapping_sub(head) > self.capacity || !head.is_multiple_of(8) {
            return Err(CORRUPT);
        }
        Ok(head)
    }

    /// The producer's tail as the consumer needs it: the cached copy if it
    /// is ahead of `head`, else a fresh read.
    fn tail_for_consumer(&self, head: u64) -> IOResult<u64> {
        let mut tail = self.seen_tail.load(Ordering::Relaxed);
        if tail == head {
            tail = self.shm.u64_at(TAIL).load(Ordering::Acquire);
            self.seen_tail.store(tail, Ordering::Relaxed);
        }
        if tail.wrapping_sub(head) > self.capacity || !tail.is_multiple_of(8) {
            return Err(CORRUPT);
        }
        Ok(tail)
    }

    /// Appends an entry of `len` bytes written by `fill`.
    /// `kIOReturnOverrun` when it does not fit now, `kIOReturnBadArgument`
    /// when it never can.
    pub fn enqueue(&self, len: usize, fill: impl FnOnce(&mut [u8])) -> IOResult<()> {
        let mut tail = self.shm.u64_at(TAIL).load(Ordering::Relaxed);
        if !tail.is_multiple_of(8) {
            return Err(CORRUPT);
        }
        let needed = self.room_needed(tail, len).ok_or(IOReturn::BAD_ARGUMENT)?;
        let head = self.head_for_producer(tail, needed)?;
        if needed > self.capacity - tail.wrapping_sub(head) {
            return Err(IOReturn::OVERRUN);
        }
        let to_end = self.capacity - (tail & self.mask);
        if entry_size(len) as u64 > to_end {
            self.shm
                .write(DATA + (tail & self.mask) as usize, &PAD.to_le_bytes());
            tail = tail.wrapping_add(to_end);
        }
        let at = DATA + (tail & self.mask) as usize;
        self.shm.write(at, &(len as u32).to_le_bytes());
        // SAFETY: `at + 4 .. at + 4 + len` lies inside the entry area
        // (checked by `room_needed` against the capacity, which `open`
        // checked against the mapping), and only this producer writes there
        // until the tail below publishes it.
        let slot = unsafe { std::slice::from_raw_parts_mut(self.shm.as_ptr().add(at + 4), len) };
        fill(slot);
        self.shm
            .u64_at(TAIL)
            .store(tail.wrapping_add(entry_size(len) as u64), Ordering::Release);
        Doorbell::asymmetric_at(&self.shm, DATA_BELL).notify();
        Ok(())
    }

    /// Copies out the oldest entry. `kIOReturnUnderrun` when empty.
    pub fn dequeue(&self, out: &mut Vec<u8>) -> IOResult<()> {
        self.take(out, true)
    }

    /// Copies out the oldest entry without removing it.
    pub fn peek(&self, out: &mut Vec<u8>) -> IOResult<()> {
        self.take(out, false)
    }

    fn take(&self, out: &mut Vec<u8>, remove: bool) -> IOResult<()> {
        let mut head = self.shm.u64_at(HEAD).load(Ordering::Relaxed);
        if !head.is_multiple_of(8) {
            return Err(CORRUPT);
        }
        let tail = self.tail_for_consumer(head)?;
        if head == tail {
            return Err(IOReturn::UNDERRUN);
        }
        let mut word = [0u8; 4];
        let mut at = (head & self.mask) as usize;
        self.shm.read(DATA + at, &mut word);
        if u32::from_le_bytes(word) == PAD {
            head = head.wrapping_add(self.capacity - at as u64);
            if head == tail {
                return Err(CORRUPT);
            }
            at = 0;
            self.shm.read(DATA, &mut word);
        }
        let len = u32::from_le_bytes(word) as usize;
        let size = entry_size(len) as u64;
        if len == PAD as usize || size > self.capacity - at as u64 || size > tail.wrapping_sub(head)
        {
            return Err(CORRUPT);
        }
        // Reuse the caller's buffer without zeroing it first: every byte is
        // overwritten by the copy.
        if out.len() < len {
            out.resize(len, 0);
        }
        out.truncate(len);
        self.shm.read(DATA + at + 4, out);
        if remove {
            self.shm
                .u64_at(HEAD)
                .store(head.wrapping_add(size), Ordering::Release);
            Doorbell::asymmetric_at(&self.shm, SPACE_BELL).notify();
        }
        Ok(())
    }

    /// Waits (spin, then park) until an entry is available; false at the
    /// deadline.
    pub fn wait_for_data(&self, spin: Duration, deadline: Option<Instant>) -> bool {
        Doorbell::asymmetric_at(&self.shm, DATA_BELL)
            .wait(spin, deadline, || self.is_data_available())
    }

    /// As [`Ring::wait_for_data`], yielding the CPU between looks
    /// from the start: for a consumer that has just woken a thread of its
    /// own (a subscriber to what it made of the last entry), which the
    /// kernel may have put on this very CPU, where a pure spin would keep
    /// it from running (see [`Doorbell::wait_reporting`]).
    pub fn wait_for_data_yielding(&self, spin: Duration, deadline: Option<Instant>) -> bool {
        Doorbell::asymmetric_at(&self.shm, DATA_BELL)
            .wait_reporting(true, spin, deadline, || self.is_data_available())
            .0
    }

    /// Waits until an entry of `len` bytes fits; false at the deadline.
    pub fn wait_for_space(&self, len: usize, spin: Duration, deadline: Option<Instant>) -> bool {
        Doorbell::asymmetric_at(&self.shm, SPACE_BELL)
            .wait(spin, deadline, || self.can_enqueue(len))
    }

    /// The consumer's position: it moves on each dequeue.
    pub fn head(&self) -> u64 {
        self.shm.u64_at(HEAD).load(Ordering::Acquire)
    }

    /// Waits until the consumer has dequeued since `head` was read; false
    /// at the deadline.
    pub fn wait_for_dequeue(&self, head: u64, spin: Duration, deadline: Option<Instant>) -> bool {
        Doorbell::asymmetric_at(&self.shm, SPACE_BELL).wait(spin, deadline, || self.head() != head)
    }

    /// Wakes anyone waiting on either end (used when tearing down).
    pub fn wake_all(&self) {
        Doorbell::asymmetric_at(&self.shm, DATA_BELL).ring();
        Doorbell::asymmetric_at(&self.shm, SPACE_BELL).ring();
    }
}

/// What a consumer reports for a ring the peer has scribbled over.
pub const CORRUPT: IOReturn = IOReturn::INTERNAL_ERROR;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;
    use std::os::fd::AsFd;

    /// The ring's space rules without shared memory: positions and a FIFO.
    struct Model {
        cap: u64,
        head: u64,
        tail: u64,
        entries: VecDeque<(Vec<u8>, u64)>,
    }

    impl Model {
        fn enqueue(&mut self, data: Vec<u8>) -> IOResult<()> {
            let size = entry_size(data.len()) as u64;
            if size > self.cap {
                return Err(IOReturn::BAD_ARGUMENT);
            }
            let to_end = self.cap - self.tail % self.cap;
            let needed = if size <= to_end { size } else { to_end + size };
            if needed > self.cap - (self.tail - self.head) {
                return Err(IOReturn::OVERRUN);
            }
            self.tail += needed;
            self.entries.push_back((data, needed));
            Ok(())
        }
        fn dequeue(&mut self) -> IOResult<Vec<u8>> {
            let (data, needed) = self.entries.pop_front().ok_or(IOReturn::UNDERRUN)?;
            self.head += needed;
            Ok(data)
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Enqueue(Vec<u8>),
        Dequeue,
        Peek,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => proptest::collection::vec(any::<u8>(), 0..90).prop_map(Op::Enqueue),
            2 => Just(Op::Dequeue),
            1 => Just(Op::Peek),
        ]
    }

    proptest! {
        /// Any sequence of operations on a small ring (so that it wraps and
        /// fills often) behaves exactly like the model.
        #[test]
        fn behaves_like_the_model(cap in 8usize..300, ops in proptest::collection::vec(op(), 1..200)) {
            let producer = Ring::create("model", cap).unwrap();
            let shared = SharedMemory::from_fd(producer.memory().as_fd().try_clone_to_owned().unwrap(), 0).unwrap();
            let consumer = Ring::open(shared).unwrap();
            let mut model = Model { cap: producer.capacity() as u64, head: 0, tail: 0, entries: VecDeque::new() };
            let mut out = Vec::new();
            for op in ops {
                match op {
                    Op::Enqueue(data) => {
                        let got = producer.enqueue(data.len(), |slot| slot.copy_from_slice(&data));
                        prop_assert_eq!(got, model.enqueue(data));
                    }
                    Op::Dequeue => {
                        let got = consumer.dequeue(&mut out).map(|()| out.clone());
                        prop_assert_eq!(got, model.dequeue());
                    }
                    Op::Peek => {
                        let got = consumer.peek(&mut out).map(|()| out.clone());
                        prop_assert_eq!(got, model.entries.front().map(|(d, _)| d.clone()).ok_or(IOReturn::UNDERRUN));
                    }
                }
                prop_assert_eq!(consumer.is_data_available(), !model.entries.is_empty());
            }
        }

        /// A peer that writes garbage over the whole region gets errors,
        /// never a panic or a read outside the region.
        #[test]
        fn a_scribbled_ring_is_an_error_not_a_crash(garbage in proptest::collection::vec(any::<u8>(), 0..700)) {
            let ring = Ring::create("scribble", 256).unwrap();
            ring.enqueue(10, |s| s.fill(7)).unwrap();
            let n = garbage.len().min(ring.memory().len());
            ring.memory().write(0, &garbage[..n]);
            let mut out = Vec::new();
            for _ in 0..4 {
                let _ = ring.dequeue(&mut out);
                let _ = ring.peek(&mut out);
                let _ = ring.enqueue(5, |s| s.fill(1));
            }
            if let Ok(shared) = SharedMemory::from_fd(ring.memory().as_fd().try_clone_to_owned().unwrap(), 0) {
                let _ = Ring::open(shared).map(|r| r.dequeue(&mut out));
            }
        }
    }

    #[test]
    fn overrun_underrun_and_wrap_around() {
        let ring = Ring::create("edges", 64).unwrap();
        let mut out = Vec::new();
        assert_eq!(ring.dequeue(&mut out), Err(IOReturn::UNDERRUN));
        // 64 bytes: three entries of 12 bytes take 16 each.
        for i in 0..3u8 {
            ring.enqueue(12, |s| s.fill(i)).unwrap();
        }
        assert_eq!(ring.enqueue(20, |_| ()), Err(IOReturn::OVERRUN), "16 free");
        assert_eq!(
            ring.enqueue(100, |_| ()),
            Err(IOReturn::BAD_ARGUMENT),
            "never fits"
        );
        ring.dequeue(&mut out).unwrap();
        // 32 bytes free, an entry of 20 takes 24, but only 16 remain before
        // the end: with the padding it needs 40.
        assert_eq!(ring.enqueue(20, |_| ()), Err(IOReturn::OVERRUN));
        ring.dequeue(&mut out).unwrap();
        ring.enqueue(20, |s| s.fill(9)).unwrap();
        ring.dequeue(&mut out).unwrap();
        assert_eq!(out, [2; 12]);
        ring.dequeue(&mut out).unwrap();
        assert_eq!(out, [9; 20], "read back after the wrap");
        assert_eq!(ring.dequeue(&mut out), Err(IOReturn::UNDERRUN));
    }
}

//! An event service's event log in shared memory: one writer (the event
//! service, in its dext), any number of readers (the system's
//! subscribers), each at its own position. A dispatched event reaches a
//! subscriber with one wake-up, the subscriber's own: no system thread
//! relays it.
//!
//! ```text
//!    0  written (u64): how many records were ever written
//!   64  "data" doorbell: readers park on it
//!  128  "space" doorbell: the writer parks on it
//!  192  capacity (u32, a power of two), set by the creator
//!  256  reader positions: 16 × 64 bytes (u64::MAX: a free slot)
//! 1280  records: capacity × 64 bytes, record n at n % capacity
//! ```
//!
//! A record is a cache line of `u64` words: its position (a sequence word),
//! `kind | usage_page << 8`, `usage`, three values, the timestamp
//! ([`HidEventRecord`]).
//!
//! A reader publishes its position in a slot, and the writer waits for the
//! slowest one before writing over what it has not read (readers keep up
//! with a device's rate; a subscriber that dropped events at a burst would
//! leave a key down). It waits at most [`PATIENCE`]: a reader stuck longer
//! is left behind until it moves again, and loses what was written over,
//! as a stuck evdev client does; the device is not held up for it. A reader
//! without a slot (more than 16) is never waited for.
//!
//! A record is overwritten while a reader copies it only once the writer
//! is a whole log ahead; the reader sees that in the record's sequence word
//! (as a seqlock reader does), so a torn record is counted as lost, never
//! delivered.
//!
//! The writer can put anything in the region, so readers check what they
//! read: `written` going backwards resynchronizes, a record of an unknown
//! kind is dropped and counted; nothing panics or reads out of bounds. A
//! writer that ignores the readers' positions only loses its own events.

use crate::sync::Locked;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::interfaces::{hid_event, HidEventRecord};
use crate::shm::{Doorbell, SharedMemory, SPIN};

const WRITTEN: usize = 0;
const DATA_BELL: usize = 64;
const SPACE_BELL: usize = 128;
const CAPACITY: usize = 192;
const SLOTS: usize = 256;
/// Readers the writer waits for.
pub const READERS: usize = 16;
const RECORDS: usize = SLOTS + READERS * 64;
const FREE: u64 = u64::MAX;
/// The longest the writer waits for a reader before leaving it behind.
pub const PATIENCE: Duration = Duration::from_secs(1);
/// Bytes of one record: a cache line.
pub const RECORD_LEN: usize = 64;
/// A record's sequence word while the writer writes it.
const WRITING: u64 = u64::MAX;
/// Records of a log made with [`EventLog::create`] by the HID family: a
/// quarter of a second of a full-speed device at 16,000 events a second,
/// 256 KiB.
pub const DEFAULT_CAPACITY: u32 = 4096;

/// One end of an event log.
#[derive(Debug)]
pub struct EventLog {
    shm: SharedMemory,
    mask: u64,
    /// The writer's side; writers of one log take turns.
    writer: Mutex<Writer>,
}

#[derive(Debug, Default)]
struct Writer {
    /// Its own count (it never trusts the region for it).
    next: u64,
    /// The slowest reader's position when last looked at.
    slowest: u64,
    /// Readers left behind, at the position they were stuck at.
    left_behind: [Option<u64>; READERS],
}

/// A reader's place in a log (see [`EventLog::reader`]).
#[derive(Debug)]
pub struct Reader {
    position: u64,
    slot: Option<usize>,
}

impl Reader {
    /// The position of the next record to read.
    pub fn position(&self) -> u64 {
        self.position
    }
}

/// What a read found besides records.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Missed {
    /// Written over before this reader got to them.
    pub overrun: u64,
    /// Records of no known kind (a misbehaving writer).
    pub invalid: u64,
}

impl EventLog {
    /// A new log of `capacity` records (rounded up to a power of two).
    pub fn create(name: &str, capacity: u32) -> std::io::Result<EventLog> {
        let capacity = capacity.max(2).next_power_of_two();
        let shm = SharedMemory::create(name, RECORDS + capacity as usize * RECORD_LEN)?;
        for i in 0..READERS {
            shm.u64_at(SLOTS + 64 * i).store(FREE, Ordering::Relaxed);
        }
        shm.u32_at(CAPACITY).store(capacity, Ordering::Release);
        Ok(EventLog {
            shm,
            mask: u64::from(capacity) - 1,
            writer: Mutex::default(),
        })
    }

    /// A log a peer made; its capacity is checked against the region.
    pub fn open(shm: SharedMemory) -> std::io::Result<EventLog> {
        let bad = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidData, why);
        if shm.len() < RECORDS {
            return Err(bad(format!(
                "event log region of {} bytes: expected at least {RECORDS}",
                shm.len()
            )));
        }
        let capacity = shm.u32_at(CAPACITY).load(Ordering::Acquire);
        let fits = (shm.len() - RECORDS) / RECORD_LEN;
        if !capacity.is_power_of_two() || capacity as usize > fits {
            return Err(bad(format!(
                "event log capacity {capacity}: expected a power of two of at most {fits} \
                 (what a region of {} bytes holds)",
                shm.len()
            )));
        }
        Ok(EventLog {
            writer: Mutex::default(),
            mask: u64::from(capacity) - 1,
            shm,
        })
    }

    /// The region, to hand to the peer.
    pub fn memory(&self) -> &SharedMemory {
        &self.shm
    }

    /// How many records the log holds before the oldest is written over.
    pub fn capacity(&self) -> u64 {
        self.mask + 1
    }

    fn written(&self) -> &AtomicU64 {
        self.shm.u64_at(WRITTEN)
    }

    fn slot(&self, i: usize) -> &AtomicU64 {
        self.shm.u64_at(SLOTS + 64 * i)
    }

    fn word(&self, position: u64, i: usize) -> &AtomicU64 {
        self.shm
            .u64_at(RECORDS + (position & self.mask) as usize * RECORD_LEN + 8 * i)
    }

    /// The doorbell readers park on ([`Doorbell::arm`], `futex_waitv`).
    pub fn bell(&self) -> Doorbell<'_> {
        Doorbell::at(&self.shm, DATA_BELL)
    }

    fn space_bell(&self) -> Doorbell<'_> {
        Doorbell::at(&self.shm, SPACE_BELL)
    }

    /// Writer: the slowest position of the readers it waits for (`next`
    /// when there are none); a reader left behind counts again once it
    /// moves.
    fn slowest(&self, w: &mut Writer) -> u64 {
        let mut slowest = w.next;
        for (i, left) in w.left_behind.iter_mut().enumerate() {
            let p = self.slot(i).load(Ordering::Acquire);
            if p == FREE || *left == Some(p) {
                continue;
            }
            *left = None;
            slowest = slowest.min(p);
        }
        slowest
    }

    /// Writer: appends a record, after waiting (at most [`PATIENCE`]) for
    /// the slowest reader when the log is full. Readers see it at once; a
    /// parked one wakes at the next [`notify`](EventLog::notify).
    pub fn push(&self, record: &HidEventRecord) {
        let mut w = self.writer.locked();
        let capacity = self.capacity();
        if w.next - w.slowest >= capacity {
            w.slowest = self.slowest(&mut w);
        }
        if w.next - w.slowest >= capacity {
            // Readers may be parked on records not yet announced.
            self.notify();
            let deadline = Instant::now() + PATIENCE;
            let caught_up = self.space_bell().wait(SPIN, Some(deadline), || {
                w.slowest = self.slowest(&mut w);
                w.next - w.slowest < capacity
            });
            if !caught_up {
                let behind = w.next - capacity;
                for i in 0..READERS {
                    let p = self.slot(i).load(Ordering::Acquire);
                    if p != FREE && p <= behind {
                        w.left_behind[i] = Some(p);
                    }
                }
                w.slowest = self.slowest(&mut w);
            }
        }
        let (kind, usage_page, usage, (v0, v1, v2), timestamp) = *record;
        let n = w.next;
        // The record's sequence word says "being written" before any data
        // word changes (the fence orders it ahead of them), and its
        // position once all are written: a reader that copied a torn
        // record sees one or the other, not the position it wanted.
        self.word(n, 0).store(WRITING, Ordering::Relaxed);
        fence(Ordering::Release);
        let words = [
            u64::from(kind) | u64::from(usage_page) << 8,
            u64::from(usage),
            v0 as u64,
            v1 as u64,
            v2 as u64,
            timestamp,
        ];
        for (i, w) in words.into_iter().enumerate() {
            self.word(n, i + 1).store(w, Ordering::Relaxed);
        }
        self.word(n, 0).store(n, Ordering::Release);
        w.next = n + 1;
        self.written().store(n + 1, Ordering::Release);
    }

    /// Writer: wakes parked readers (after a batch of pushes).
    pub fn notify(&self) {
        self.bell().notify();
    }

    /// Reader: the position new records will take.
    pub fn end(&self) -> u64 {
        self.written().load(Ordering::Acquire)
    }

    /// Reader: a reader from `position` on (or from the end), which the
    /// writer waits for if a slot is free, until
    /// [`release`](EventLog::release)d.
    pub fn reader(&self, position: Option<u64>) -> Reader {
        let position = position.unwrap_or_else(|| self.end());
        let slot = (0..READERS).find(|&i| {
            self.slot(i)
                .compare_exchange(FREE, position, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        });
        Reader { position, slot }
    }

    /// Reader: gives a reader's slot back; the writer stops waiting for it.
    pub fn release(&self, reader: &mut Reader) {
        if let Some(i) = reader.slot.take() {
            self.slot(i).store(FREE, Ordering::Release);
            self.space_bell().notify();
        }
    }

    /// Reader: whether a record `reader` has not read is written.
    pub fn has_records(&self, reader: &Reader) -> bool {
        self.end() != reader.position
    }

    /// Reader: appends the records `reader` has not read (at most `max`)
    /// to `out`, moves it past them and tells the writer.
    pub fn read(&self, reader: &mut Reader, out: &mut Vec<HidEventRecord>, max: usize) -> Missed {
        let before = reader.position;
        let missed = self.read_from(&mut reader.position, out, max);
        if let (Some(i), true) = (reader.slot, reader.position != before) {
            self.slot(i).store(reader.position, Ordering::Release);
            self.space_bell().notify();
        }
        missed
    }

    fn read_from(&self, position: &mut u64, out: &mut Vec<HidEventRecord>, max: usize) -> Missed {
        let mut missed = Missed::default();
        let written = self.end();
        if written < *position {
            // Only a misbehaving writer goes back: start again from there.
            *position = written;
            return missed;
        }
        let capacity = self.capacity();
        if written - *position > capacity {
            missed.overrun = written - *position - capacity;
            *position = written - capacity;
        }
        let until = written.min(position.saturating_add(max as u64));
        let mut words = [0u64; 6];
        for p in *position..until {
            // As a seqlock reader: the record is whole if its sequence word
            // held its position before and after the copy.
            if self.word(p, 0).load(Ordering::Acquire) != p {
                missed.overrun += 1;
                continue;
            }
            for (i, w) in words.iter_mut().enumerate() {
                *w = self.word(p, i + 1).load(Ordering::Relaxed);
            }
            fence(Ordering::Acquire);
            if self.word(p, 0).load(Ordering::Relaxed) != p {
                missed.overrun += 1;
                continue;
            }
            if !KINDS.contains(&(words[0] as u8)) {
                missed.invalid += 1;
                continue;
            }
            out.push((
                words[0] as u8,
                (words[0] >> 8) as u32,
                words[1] as u32,
                (words[2] as i64, words[3] as i64, words[4] as i64),
                words[5],
            ));
        }
        *position = until;
        missed
    }
}

const KINDS: [u8; 3] = [
    hid_event::KEYBOARD,
    hid_event::RELATIVE_POINTER,
    hid_event::SCROLL,
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn pair(capacity: u32) -> (EventLog, EventLog) {
        let writer = EventLog::create("events", capacity).unwrap();
        let fd = writer.memory().as_fd().try_clone_to_owned().unwrap();
        let len = writer.memory().len();
        let reader = EventLog::open(SharedMemory::from_fd(fd, len).unwrap()).unwrap();
        (writer, reader)
    }

    fn key(i: u64) -> HidEventRecord {
        (hid_event::KEYBOARD, 7, 4, (i as i64 % 2, 0, 0), i)
    }

    #[test]
    fn readers_each_see_every_record_from_where_they_started() {
        let (w, r) = pair(8);
        let (mut a, mut out) = (r.reader(None), Vec::new());
        w.push(&key(1));
        let mut b = r.reader(None);
        w.push(&key(2));
        assert_eq!(r.read(&mut a, &mut out, 100), Missed::default());
        assert_eq!(out, [key(1), key(2)]);
        out.clear();
        r.read(&mut b, &mut out, 100);
        assert_eq!(out, [key(2)]);
        out.clear();
        assert_eq!(r.read(&mut a, &mut out, 100), Missed::default());
        assert!(out.is_empty() && !r.has_records(&a));
        r.release(&mut a);
        r.release(&mut b);
    }

    #[test]
    fn the_writer_waits_for_a_reader_before_writing_over_what_it_has_not_read() {
        let (w, r) = pair(8);
        let mut reader = r.reader(Some(0));
        let writer = std::thread::spawn(move || {
            for i in 0..100 {
                w.push(&key(i));
            }
            w
        });
        let (mut out, mut seen) = (Vec::new(), Vec::new());
        while reader.position() < 100 {
            out.clear();
            // A slow reader: the writer has to wait for it again and again.
            std::thread::sleep(Duration::from_micros(200));
            assert_eq!(r.read(&mut reader, &mut out, 3), Missed::default());
            seen.extend_from_slice(&out);
        }
        assert_eq!(seen, (0..100).map(key).collect::<Vec<_>>());
        r.release(&mut reader);
        writer.join().unwrap();
    }

    #[test]
    fn a_reader_stuck_past_the_patience_is_left_behind_and_counts_what_it_lost() {
        let (w, r) = pair(8);
        let (mut stuck, mut out) = (r.reader(Some(0)), Vec::new());
        let began = Instant::now();
        for i in 0..20 {
            w.push(&key(i));
        }
        // The writer waited once, for its patience, then went on without
        // the stuck reader.
        let waited = began.elapsed();
        assert!(waited >= PATIENCE, "{waited:?}");
        let missed = r.read(&mut stuck, &mut out, 100);
        // 12 written over, the last 8 read.
        assert_eq!(missed.overrun, 12);
        assert_eq!(out, (12..20).map(key).collect::<Vec<_>>());
        assert_eq!(stuck.position(), 20);
        r.release(&mut stuck);
    }

    #[test]
    fn a_reader_without_a_slot_is_not_waited_for() {
        let (w, r) = pair(8);
        let slotted: Vec<Reader> = (0..READERS).map(|_| r.reader(None)).collect();
        assert!(slotted.iter().all(|s| s.slot.is_some()));
        let mut extra = r.reader(None);
        assert!(extra.slot.is_none());
        for mut s in slotted {
            r.release(&mut s);
        }
        let began = Instant::now();
        for i in 0..20 {
            w.push(&key(i));
        }
        assert!(began.elapsed() < PATIENCE, "nobody to wait for");
        r.release(&mut extra);
    }

    #[test]
    fn what_a_writer_cannot_mean_is_dropped_or_resynchronized() {
        let (w, r) = pair(8);
        w.push(&(99, 0, 0, (0, 0, 0), 0));
        w.push(&key(1));
        let (mut at, mut out) = (r.reader(Some(0)), Vec::new());
        let missed = r.read(&mut at, &mut out, 100);
        assert_eq!((missed.invalid, out.as_slice()), (1, &[key(1)][..]));
        // The count going backwards: read from there on, nothing invented.
        r.memory().u64_at(WRITTEN).store(1, Ordering::Release);
        out.clear();
        assert_eq!(r.read(&mut at, &mut out, 100), Missed::default());
        assert_eq!((at.position(), out.len()), (1, 0));
        // An absurd count: what is there is read, bounded by the log.
        r.memory()
            .u64_at(WRITTEN)
            .store(u64::MAX, Ordering::Release);
        let missed = r.read(&mut at, &mut out, 100);
        assert!(missed.overrun > 0 && out.len() <= 8, "{missed:?}");
        r.release(&mut at);
    }

    #[test]
    fn a_region_that_does_not_hold_its_capacity_is_refused_by_name() {
        let shm = SharedMemory::create("small", 4096).unwrap();
        shm.u32_at(CAPACITY).store(1 << 20, Ordering::Release);
        let fd = shm.as_fd().try_clone_to_owned().unwrap();
        let err = EventLog::open(SharedMemory::from_fd(fd, 4096).unwrap()).unwrap_err();
        assert!(err.to_string().contains("capacity 1048576"), "{err}");
        shm.u32_at(CAPACITY).store(3, Ordering::Release);
        let fd = shm.as_fd().try_clone_to_owned().unwrap();
        let err = EventLog::open(SharedMemory::from_fd(fd, 4096).unwrap()).unwrap_err();
        assert!(err.to_string().contains("power of two"), "{err}");
    }

    #[test]
    fn a_reader_racing_a_writer_gets_every_record_whole_and_in_order() {
        let (w, r) = pair(64);
        const N: u64 = 200_000;
        let writer = std::thread::spawn(move || {
            for i in 0..N {
                w.push(&key(i));
            }
            w.notify();
        });
        let (mut reader, mut out, mut next) = (r.reader(Some(0)), Vec::new(), 0);
        while reader.position() < N {
            out.clear();
            let missed = r.read(&mut reader, &mut out, 16);
            assert_eq!(missed, Missed::default());
            for rec in &out {
                // Whole (its value matches its timestamp) and next in turn.
                assert_eq!(*rec, key(next), "torn or out of order");
                next += 1;
            }
        }
        writer.join().unwrap();
        r.release(&mut reader);
    }
}

//! Benchmarks of the asynchronous runtime: data queues between two
//! processes and timer lateness, each beside its floor.
//!
//! `data_queue_*`: this process produces N entries into a ring; a child
//! process consumes them, either through `IODataQueueDispatchSource` (its
//! `DataAvailable` action on a dispatch queue, as a driver does) or through
//! a minimal single-producer single-consumer ring of fixed slots that
//! busy-spins (the raw floor). The rate is entries per second from the
//! first enqueue to the consumer's report of the last entry.

use driverkit_wire::sync::Locked;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use super::harness::{percentiles, Figure, Stat};
use driverkit::prelude::*;
use driverkit::runtime::instantiate;
use driverkit::time::now_ns;
use driverkit_wire::ring::Ring;
use driverkit_wire::shm::{SharedMemory, SPIN};

/// Ring size for the data-queue benchmarks.
const RING: usize = 1 << 20;

pub fn data_queue(entry: usize, n: usize, reps: usize) -> Result<Vec<Figure>, String> {
    let mut ours = Vec::new();
    let mut raw = Vec::new();
    for _ in 0..reps {
        ours.push(run_pair(entry, n, false)?);
        raw.push(run_pair(entry, n, true)?);
    }
    let mut copies = Vec::new();
    for _ in 0..reps {
        copies.push(memcpy_rate(entry));
    }
    let (o50, o99) = median_lowest(ours);
    let (r50, r99) = median_lowest(raw);
    let (m50, m99) = median_lowest(copies);
    let name: &'static str = if entry == 16 {
        "data_queue_16B"
    } else {
        "data_queue_4KiB"
    };
    let bytes = entry as f64;
    Ok(vec![
        Figure {
            bench: name,
            unit: "entries/s",
            p50: o50,
            p99: o99,
            baseline: Some(("raw_spsc_ring", r50, r99)),
            stat: Stat::MedianLowest { runs: reps },
            target: None,
        },
        Figure {
            bench: name,
            unit: "bytes/s",
            p50: o50 * bytes,
            p99: o99 * bytes,
            baseline: Some(("memcpy", m50 * bytes, m99 * bytes)),
            stat: Stat::MedianLowest { runs: reps },
            target: None,
        },
    ])
}

/// The median and the lowest of a few throughput runs (for rates the bad
/// end is the low one).
fn median_lowest(v: Vec<f64>) -> (f64, f64) {
    let (median, _) = percentiles(v.clone());
    let lowest = v.iter().copied().fold(f64::INFINITY, f64::min);
    (median, lowest)
}

fn memcpy_rate(entry: usize) -> f64 {
    let src = vec![7u8; entry];
    let mut dst = vec![0u8; RING];
    let n = (256 << 20) / entry.max(1);
    let t = Instant::now();
    for i in 0..n {
        let at = (i * entry) % (RING - entry);
        dst[at..at + entry].copy_from_slice(std::hint::black_box(&src));
    }
    std::hint::black_box(&dst);
    n as f64 / t.elapsed().as_secs_f64()
}

/// Starts the consumer, produces `n` entries, returns entries per second.
fn run_pair(entry: usize, n: usize, raw: bool) -> Result<f64, String> {
    let (shm, ring) = if raw {
        (
            SharedMemory::create("bench-raw-ring", RAW_DATA + RING).map_err(|e| e.to_string())?,
            None,
        )
    } else {
        let ring = Ring::create("bench-dq", RING).map_err(|e| e.to_string())?;
        let shm = SharedMemory::from_fd(
            ring.memory()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| e.to_string())?,
            0,
        )
        .map_err(|e| e.to_string())?;
        (shm, Some(ring))
    };
    let fd = shm
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| e.to_string())?;
    let kind = if raw { "raw" } else { "dq" };
    let peer = super::peers::Peer::Consume(kind, entry, n);
    let mut child = super::peers::spawn_peer(peer, fd, Stdio::piped())?;
    let mut lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
    if lines.next().and_then(Result::ok).as_deref() != Some("ready") {
        let _ = child.kill();
        return Err("the consumer did not start".into());
    }
    let payload = vec![0xabu8; entry];
    let t = Instant::now();
    match &ring {
        Some(ring) => {
            for _ in 0..n {
                while ring.enqueue(entry, |s| s.copy_from_slice(&payload)) == Err(IOReturn::OVERRUN)
                {
                    ring.wait_for_space(entry, SPIN, None);
                }
            }
        }
        None => raw_produce(&shm, &payload, n),
    }
    let done = lines.next().and_then(Result::ok);
    let elapsed = t.elapsed();
    let _ = child.wait();
    if done.as_deref() != Some("done") {
        return Err(format!("the consumer stopped early: {done:?}"));
    }
    Ok(n as f64 / elapsed.as_secs_f64())
}

// The raw floor: slots packed like the data queue's entries (a length and
// the bytes, 8-aligned) in a power-of-two count within the same 1 MiB, two
// counters, both sides spin.
const RAW_HEAD: usize = 0;
const RAW_TAIL: usize = 64;
const RAW_DATA: usize = 128;

/// `(slot size, slot count)` for entries of `entry` bytes.
fn raw_slots(entry: usize) -> (usize, usize) {
    let slot = (8 + entry).next_multiple_of(8);
    let count = RING / slot;
    (
        slot,
        if count.is_power_of_two() {
            count
        } else {
            count.next_power_of_two() / 2
        },
    )
}

fn raw_produce(shm: &SharedMemory, payload: &[u8], n: usize) {
    let (head, tail) = (shm.u64_at(RAW_HEAD), shm.u64_at(RAW_TAIL));
    let (slot, slots) = raw_slots(payload.len());
    for i in 0..n as u64 {
        while i - head.load(Ordering::Acquire) >= slots as u64 {
            std::hint::spin_loop();
        }
        let at = RAW_DATA + (i as usize & (slots - 1)) * slot;
        shm.write(at, &(payload.len() as u64).to_le_bytes());
        shm.write(at + 8, payload);
        tail.store(i + 1, Ordering::Release);
    }
}

/// The consumer process (`Peer::Consume`).
pub fn consume(kind: &str, entry: usize, n: usize) -> Result<(), String> {
    let fd = super::peers::inherited_fd()?;
    let mut out = std::io::stdout();
    if kind == "raw" {
        let shm = SharedMemory::from_fd(fd, 0).map_err(|e| e.to_string())?;
        let (head, tail) = (shm.u64_at(RAW_HEAD), shm.u64_at(RAW_TAIL));
        let mut buf = vec![0u8; entry];
        let (slot, slots) = raw_slots(entry);
        writeln!(out, "ready").map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
        for i in 0..n as u64 {
            while tail.load(Ordering::Acquire) == i {
                std::hint::spin_loop();
            }
            let at = RAW_DATA + (i as usize & (slots - 1)) * slot;
            shm.read(at + 8, &mut buf);
            head.store(i + 1, Ordering::Release);
        }
    } else {
        let consumer = instantiate::<Consumer>().map_err(|e| e.to_string())?;
        let queue = consumer
            .copy_dispatch_queue("Default")
            .map_err(|e| e.to_string())?;
        let source =
            IODataQueueDispatchSource::from_memory(fd, &queue).map_err(|e| e.to_string())?;
        let (done_tx, done_rx) = mpsc::channel();
        *consumer.ivars().source.locked() = Some(source.clone());
        *consumer.ivars().done.locked() = Some((n as u64, done_tx));
        source
            .set_data_available_handler(
                &consumer
                    .create_action_data_available(0)
                    .map_err(|e| e.to_string())?,
            )
            .map_err(|e| e.to_string())?;
        writeln!(out, "ready").map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
        done_rx.recv().map_err(|e| e.to_string())?;
        let _ = entry;
    }
    writeln!(out, "done").map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())
}

#[derive(Default)]
struct ConsumerIvars {
    source: Mutex<Option<IODataQueueDispatchSource>>,
    count: AtomicU64,
    done: Mutex<Option<(u64, mpsc::Sender<()>)>>,
    buf: Mutex<Vec<u8>>,
}

/// The driver side of the data-queue benchmark: what a real dext's
/// `DataAvailable` handler does.
#[driverkit::service(superclass = IOService, ivars = ConsumerIvars)]
struct Consumer;

impl IOServiceImpl for Consumer {
    fn init(&self) -> IOResult<ConsumerIvars> {
        Ok(ConsumerIvars::default())
    }
}

#[driverkit::actions]
impl Consumer {
    #[action(IODataQueueDispatchSource::DataAvailable)]
    fn data_available(&self, _action: &OSAction) {
        let Some(source) = self.ivars().source.locked().clone() else {
            return;
        };
        let mut buf = self.ivars().buf.locked();
        let mut got = 0;
        while source.dequeue(&mut buf).is_ok() {
            got += 1;
        }
        let total = self.ivars().count.fetch_add(got, Ordering::Relaxed) + got;
        if let Some((n, tx)) = self.ivars().done.locked().as_ref() {
            if total >= *n {
                let _ = tx.send(());
            }
        }
    }

    #[action(IOTimerDispatchSource::TimerOccurred)]
    fn timer_occurred(&self, _action: &OSAction, _time: u64) {
        let now = now_ns();
        if let Some((_, tx)) = self.ivars().done.locked().as_ref() {
            // The deadline travels in `count`.
            let late = now.saturating_sub(self.ivars().count.load(Ordering::Acquire));
            self.ivars()
                .buf
                .locked()
                .extend_from_slice(&late.to_le_bytes());
            let _ = tx.send(());
        }
    }
}

/// How late `TimerOccurred` runs after its deadline, beside how late a
/// plain `thread::sleep` of the same length wakes.
pub fn timer_lateness(n: usize) -> Result<Figure, String> {
    let consumer = instantiate::<Consumer>().map_err(|e| e.to_string())?;
    let queue = consumer
        .copy_dispatch_queue("Default")
        .map_err(|e| e.to_string())?;
    let timer = IOTimerDispatchSource::create(&queue).map_err(|e| e.to_string())?;
    timer
        .set_handler(
            &consumer
                .create_action_timer_occurred(0)
                .map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel();
    *consumer.ivars().done.locked() = Some((0, tx));
    let mut sleeps = Vec::with_capacity(n);
    for _ in 0..n {
        let deadline = now_ns() + 1_000_000;
        consumer.ivars().count.store(deadline, Ordering::Release);
        timer.wake_at_time(deadline, 0).map_err(|e| e.to_string())?;
        rx.recv_timeout(Duration::from_secs(5))
            .map_err(|_| "the timer did not fire")?;

        let t = Instant::now();
        std::thread::sleep(Duration::from_millis(1));
        sleeps.push((t.elapsed().as_nanos() as f64 - 1e6) / 1e3);
    }
    let _ = timer.cancel(|| ());
    let lates: Vec<f64> = consumer
        .ivars()
        .buf
        .locked()
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f64 / 1e3)
        .collect();
    let (p50, p99) = percentiles(lates);
    let (b50, b99) = percentiles(sleeps);
    Ok(Figure {
        bench: "timer_lateness",
        unit: "us",
        p50,
        p99,
        baseline: Some(("thread_sleep_overshoot", b50, b99)),
        stat: Stat::Percentiles,
        target: None,
    })
}

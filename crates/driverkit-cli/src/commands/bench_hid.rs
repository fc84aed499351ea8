//! The HID benchmarks: the seed's keyboard path from a device's report to
//! an events subscriber, through the HIDKeyboardDriver dext.
//!
//! | bench                  | what                                                  | baseline                              |
//! |------------------------|-------------------------------------------------------|---------------------------------------|
//! | `hid_report_latency`   | report queued on the virtual keyboard -> event seen   | shared-memory and socket round trips  |
//! | `hid_reports_per_sec`  | reports through one dext, sustained                   | the same reports through a raw ring   |
//! | `hid_descriptor_parse` | parse a real keyboard's report descriptor             | copying its bytes                     |
//!
//! The subscriber waits on its channel as a client would (parked), so its
//! own wake-up is in the figures.

use std::path::Path;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use driverkit_hid::ReportDescriptor;
use driverkitd::families::hid::HidEvent;
use driverkitd::Daemon;

use super::bench::{bench_daemon, percentiles, raw_pingpong, raw_spin_pingpong, Figure};
use crate::drivers;

const PRESS_A: [u8; 8] = [0, 0, 0x04, 0, 0, 0, 0, 0];
const RELEASE: [u8; 8] = [0; 8];

/// A daemon with the keyboard dext started on a plugged virtual keyboard.
fn keyboard(root: &Path) -> Result<(Daemon, u64, Receiver<HidEvent>), String> {
    let daemon = bench_daemon(root, drivers::find("HIDKeyboardDriver")?)?;
    let lifecycle = daemon.subscribe();
    let spec = driverkitd::backends::virtual_device::builtin("keyboard").ok_or("no keyboard")?;
    let device = daemon.plug(spec)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lifecycle.recv_timeout(left) {
            Ok(driverkitd::Event::Started { .. }) => break,
            Ok(_) => continue,
            Err(_) => return Err("HIDKeyboardDriver did not start within 30 s".into()),
        }
    }
    let events = daemon.subscribe_hid();
    Ok((daemon, device, events))
}

/// Waits, spinning, for the next event.
fn next(events: &Receiver<HidEvent>) -> Result<HidEvent, String> {
    events
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| "no HID event within 10 s".to_string())
}

/// Latency while busy: a steady stream of reports (one every
/// `BUSY_PERIOD`, a tenth of the measured capacity), each timed from being
/// queued on the device to its event reaching the subscriber. And latency
/// idle: one report at a time, each after the previous event arrived, when
/// every thread on the path has gone to sleep.
pub fn report_latency(root: &Path, n: usize) -> Result<Vec<Figure>, String> {
    let (spin50, spin99) = raw_spin_pingpong(n)?;
    let (sock50, sock99) = raw_pingpong(n)?;
    let (daemon, device, events) = keyboard(root)?;

    let base = Instant::now();
    let sent: std::sync::Arc<Vec<std::sync::atomic::AtomicU64>> =
        std::sync::Arc::new((0..n).map(|_| Default::default()).collect());
    let producer = {
        let (daemon, sent) = (daemon.clone(), sent.clone());
        std::thread::spawn(move || -> Result<(), String> {
            // Paced by sleeping, not spinning (a spinning producer would
            // take one of the two cores from the system under test): each
            // wake-up sends the reports that have come due.
            let mut due = Instant::now();
            for i in 0..n {
                due += BUSY_PERIOD;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let report = if i % 2 == 0 { PRESS_A } else { RELEASE };
                sent[i].store(
                    base.elapsed().as_nanos() as u64,
                    std::sync::atomic::Ordering::Release,
                );
                daemon.queue_report(device, &report)?;
            }
            Ok(())
        })
    };
    // One event per report, in order.
    let mut busy = Vec::with_capacity(n);
    for i in 0..n {
        next(&events)?;
        let at = base.elapsed().as_nanos() as u64;
        let from = sent[i].load(std::sync::atomic::Ordering::Acquire);
        if i >= n / 10 {
            busy.push(at.saturating_sub(from) as f64 / 1e3);
        }
    }
    producer.join().map_err(|_| "producer panicked")??;

    let mut idle = Vec::with_capacity(n / 10);
    for _ in 0..n / 20 {
        for report in [PRESS_A, RELEASE] {
            std::thread::sleep(Duration::from_micros(200));
            let t = Instant::now();
            daemon.queue_report(device, &report)?;
            next(&events)?;
            idle.push(t.elapsed().as_nanos() as f64 / 1e3);
        }
    }
    daemon.shutdown();
    let (p50, p99) = percentiles(busy);
    let (i50, i99) = percentiles(idle);
    Ok(vec![
        Figure {
            bench: "hid_report_latency",
            unit: "us",
            p50,
            p99,
            baseline: Some(("raw_spin_shm", spin50 / 1e3, spin99 / 1e3)),
        },
        Figure {
            bench: "hid_report_latency",
            unit: "us",
            p50,
            p99,
            baseline: Some(("raw_seqpacket", sock50 / 1e3, sock99 / 1e3)),
        },
        Figure {
            bench: "hid_report_latency_idle",
            unit: "us",
            p50: i50,
            p99: i99,
            baseline: Some(("raw_seqpacket", sock50 / 1e3, sock99 / 1e3)),
        },
    ])
}

/// The busy stream's pace: 50,000 reports a second.
const BUSY_PERIOD: Duration = Duration::from_micros(20);

/// Reports through the dext as fast as they go: the producer keeps the
/// device's queue full, the figure counts events out. Each report changes
/// one key, so one report is one event.
pub fn reports_per_sec(root: &Path, n: usize, reps: usize) -> Result<Vec<Figure>, String> {
    let (daemon, device, events) = keyboard(root)?;
    let mut rates = Vec::new();
    for _ in 0..reps {
        let began = Instant::now();
        let mut sent = 0;
        let mut seen = 0;
        while seen < n {
            while sent < n {
                let report = if sent % 2 == 0 { PRESS_A } else { RELEASE };
                match daemon.queue_report(device, &report) {
                    Ok(()) => sent += 1,
                    Err(_) => break, // the device's queue is full
                }
            }
            let before = seen;
            while events.try_recv().is_ok() {
                seen += 1;
            }
            if seen == before {
                // Nothing moved: give the system's threads the CPU (two
                // cores here) instead of spinning against them.
                std::thread::sleep(Duration::from_micros(100));
            }
            if began.elapsed() > Duration::from_secs(60) {
                return Err(format!("only {seen} of {n} reports arrived in 60 s"));
            }
        }
        rates.push(n as f64 / began.elapsed().as_secs_f64());
    }
    daemon.shutdown();
    let baseline = raw_ring_rate(n, reps)?;
    let (p50, low) = low_high(rates);
    let (b50, blow) = low_high(baseline);
    Ok(vec![Figure {
        bench: "hid_reports_per_sec",
        unit: "/s",
        p50,
        p99: low,
        baseline: Some(("raw_ring_8B", b50, blow)),
    }])
}

/// Median and worst of throughput runs (the worst stands where latency
/// figures put p99).
fn low_high(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[0])
}

/// The same reports between two threads through one bare ring: the floor
/// of any hand-off.
fn raw_ring_rate(n: usize, reps: usize) -> Result<Vec<f64>, String> {
    let mut rates = Vec::new();
    for _ in 0..reps {
        let ring = std::sync::Arc::new(
            driverkit_wire::ring::Ring::create("bench-hid-raw", 1 << 20)
                .map_err(|e| e.to_string())?,
        );
        let consumer = {
            let ring = ring.clone();
            std::thread::spawn(move || {
                let mut out = Vec::new();
                let mut got = 0;
                while got < n {
                    if ring.dequeue(&mut out).is_ok() {
                        got += 1;
                    } else {
                        ring.wait_for_data(driverkit_wire::shm::SPIN, None);
                    }
                }
            })
        };
        let began = Instant::now();
        let mut sent = 0;
        while sent < n {
            let report = if sent % 2 == 0 { PRESS_A } else { RELEASE };
            if ring.enqueue(8, |s| s.copy_from_slice(&report)).is_ok() {
                sent += 1;
            } else {
                std::hint::spin_loop();
            }
        }
        consumer.join().map_err(|_| "raw ring consumer panicked")?;
        rates.push(n as f64 / began.elapsed().as_secs_f64());
    }
    Ok(rates)
}

pub fn descriptor_parse(n: usize) -> Result<Figure, String> {
    let keyboard = driverkitd::backends::usb::virtual_usb::builtin_report_descriptor("keyboard", 0)
        .ok_or("the built-in keyboard has no report descriptor")?;
    let mut parse = Vec::with_capacity(n);
    let mut copy = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let d =
            ReportDescriptor::parse(std::hint::black_box(&keyboard)).map_err(|e| e.to_string())?;
        std::hint::black_box(&d);
        parse.push(t.elapsed().as_nanos() as f64);
        let t = Instant::now();
        let v = std::hint::black_box(&keyboard).to_vec();
        std::hint::black_box(&v);
        copy.push(t.elapsed().as_nanos() as f64);
    }
    let (p50, p99) = percentiles(parse);
    let (b50, b99) = percentiles(copy);
    Ok(Figure {
        bench: "hid_descriptor_parse",
        unit: "ns",
        p50,
        p99,
        baseline: Some(("memcpy_63B", b50, b99)),
    })
}

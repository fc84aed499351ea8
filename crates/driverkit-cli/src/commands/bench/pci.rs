//! The PCI family's figures, measured by PCIBenchDriver inside a dext on
//! the modelled edu function.
//!
//! | bench                      | what                                                    | baseline |
//! |----------------------------|---------------------------------------------------------|----------|
//! | `pci_register_read_call`   | `memory_read32` of BAR0's identification register: a call into the system, as DriverKit's `MemoryRead32` is one into the kernel | a load from the dext's own memory |
//! | `pci_register_read_mapped` | the same register read from BAR0 mapped into the dext    | the same load |
//! | `pci_interrupt_latency`    | from just before the raise-register write to the start of `InterruptOccurred`, 1 ms apart | a raw eventfd wake between two processes, 1 ms apart |
//!
//! The read figures are per read: the p50 and p99 of batches' means (one
//! load is shorter than a clock reading).

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use driverkit::time::now_ns;
use driverkitd::backends::virtual_device;
use plist::Value;

use super::harness::{bench_daemon, percentiles, service_properties, wait_started, Figure, Stat};
use super::peers::{spawn_peer, Peer};
use crate::drivers;

/// Between interrupts (and eventfd wakes): long enough for every waiter
/// on either side to have parked.
const GAP_US: u64 = 1000;

pub(super) fn figures(root: &Path, quick: bool) -> Result<Vec<Figure>, String> {
    let (batches, interrupts) = if quick { (200, 200) } else { (2_000, 2_000) };
    let daemon = bench_daemon(root, drivers::find(drivers::bench::EXECUTABLE)?)?;
    let events = daemon.subscribe();
    let spec = virtual_device::parse(
        &format!(
            "name = \"BenchEdu\"\n[properties]\nBenchPciBatches = {batches}\n\
             BenchPciBatch = 1000\nBenchPciInterrupts = {interrupts}\nBenchPciGapUs = {GAP_US}\n\
             [pci]\nmodel = \"edu\"\n"
        ),
        "bench",
    )?;
    let device = daemon.plug(spec)?;
    let measured = wait_started(&events, device).and_then(|(service, _)| {
        let properties = service_properties(&daemon, service)?;
        let pair = |key: &str| -> Result<(f64, f64), String> {
            match properties.get(key) {
                Some(Value::Array(a)) if a.len() == 2 => Ok((
                    a[0].as_real().ok_or(format!("{key}: not numbers"))?,
                    a[1].as_real().ok_or(format!("{key}: not numbers"))?,
                )),
                _ => Err(format!("PCIBenchDriver published no {key}")),
            }
        };
        Ok([
            pair("BenchPciCall")?,
            pair("BenchPciMapped")?,
            pair("BenchPciRaw")?,
            pair("BenchPciInterrupt")?,
        ])
    });
    daemon.shutdown();
    let [call, mapped, raw, interrupt] = measured?;
    let (e50, e99) = raw_eventfd_wake(interrupts)?;
    let read = |bench, (p50, p99): (f64, f64)| Figure {
        bench,
        unit: "ns",
        p50,
        p99,
        baseline: Some(("raw_memory_read", raw.0, raw.1)),
        stat: Stat::Percentiles,
        target: None,
    };
    Ok(vec![
        read("pci_register_read_call", call),
        read("pci_register_read_mapped", mapped),
        Figure {
            bench: "pci_interrupt_latency",
            unit: "us",
            p50: interrupt.0 / 1000.0,
            p99: interrupt.1 / 1000.0,
            baseline: Some(("raw_eventfd_wake", e50, e99)),
            stat: Stat::Percentiles,
            target: None,
        },
    ])
}

/// One process writes an eventfd the other blocks reading; the reader
/// notes the time it woke. p50/p99 in us.
fn raw_eventfd_wake(n: usize) -> Result<(f64, f64), String> {
    let efd = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC)
        .map_err(|e| format!("eventfd: {e}"))?;
    let theirs = efd
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| e.to_string())?;
    let mut child = spawn_peer(Peer::Eventfd, theirs, Stdio::piped())?;
    let mut times = child
        .stdout
        .take()
        .ok_or("the eventfd helper has no stdout")?;
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        std::thread::sleep(Duration::from_micros(GAP_US));
        let t0 = now_ns();
        rustix::io::write(&efd, &1u64.to_ne_bytes()).map_err(|e| e.to_string())?;
        let mut woke = [0u8; 8];
        times
            .read_exact(&mut woke)
            .map_err(|e| format!("the eventfd helper: {e}"))?;
        samples.push(u64::from_le_bytes(woke).saturating_sub(t0) as f64 / 1000.0);
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(percentiles(samples))
}

/// The helper: blocks reading the inherited eventfd; for each wake, writes
/// the time it woke (monotonic ns) to stdout.
pub fn eventfd_peer() -> Result<(), String> {
    let efd = super::peers::inherited_fd()?;
    let mut out = std::io::stdout().lock();
    let mut count = [0u8; 8];
    while rustix::io::read(&efd, &mut count).is_ok() {
        let woke = now_ns();
        if out
            .write_all(&woke.to_le_bytes())
            .and_then(|_| out.flush())
            .is_err()
        {
            break;
        }
    }
    Ok(())
}

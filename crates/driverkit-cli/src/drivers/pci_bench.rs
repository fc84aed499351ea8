//! PCIBenchDriver (in DriverKitBenchDriver's bundle): the PCI figures
//! measured inside a real dext on an edu function, for `driverkit bench`.
//!
//! Its provider's properties say how much: `BenchPciBatches` batches of
//! `BenchPciBatch` reads of the identification register, each way (a
//! `memory_read32` call, a load from BAR0 mapped into the dext, and a load
//! from the dext's own memory, the floor), and `BenchPciInterrupts`
//! interrupts, each raised through the device's raise register
//! `BenchPciGapUs` after the last was handled. It publishes, in ns:
//! `BenchPciCall`, `BenchPciMapped` and `BenchPciRaw` (per read: the
//! p50/p99 of the batches' means; one read of mapped memory is shorter
//! than the clock's own cost), and `BenchPciInterrupt` (from just before
//! the raise to the start of `InterruptOccurred`), each an array
//! `[p50, p99]`.

use driverkit_wire::sync::{Locked, Waited};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use driverkit::pci::interrupt_type;
use driverkit::plist::Value;
use driverkit::prelude::*;
use driverkit::time::now_ns;

const BAR0: u8 = 0;
const ID: u64 = 0x00;
const IRQ_STATUS: u64 = 0x24;
const IRQ_RAISE: u64 = 0x60;
const IRQ_ACK: u64 = 0x64;

#[derive(Default)]
pub struct PCIBenchIvars {
    device: OnceLock<IOPCIDevice>,
    source: Mutex<Option<IOInterruptDispatchSource>>,
    /// When the last `InterruptOccurred` began (monotonic ns), 0 when
    /// taken.
    arrived: Mutex<u64>,
    wake: Condvar,
}

#[driverkit::service(superclass = IOService, ivars = PCIBenchIvars)]
pub struct PCIBenchDriver;

/// `[p50, p99]` of `samples`.
fn percentiles(mut samples: Vec<f64>) -> Value {
    samples.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    Value::Array(vec![Value::Real(at(0.50)), Value::Real(at(0.99))])
}

/// The mean ns per read of `batches` batches of `batch` reads by `read`.
fn batches(batches: u64, batch: u64, mut read: impl FnMut() -> IOResult<u32>) -> IOResult<Value> {
    let mut samples = Vec::with_capacity(batches as usize);
    for _ in 0..batches {
        let t = Instant::now();
        for _ in 0..batch {
            std::hint::black_box(read()?);
        }
        samples.push(t.elapsed().as_nanos() as f64 / batch as f64);
    }
    Ok(percentiles(samples))
}

impl IOServiceImpl for PCIBenchDriver {
    fn init(&self) -> IOResult<PCIBenchIvars> {
        Ok(PCIBenchIvars::default())
    }

    fn start(&self, provider: &IOService) -> IOResult<()> {
        self.super_start(provider)?;
        let number = |key| Ok(provider.copy_number_property(key)?.unwrap_or(1).max(1));
        let (n, batch) = (number("BenchPciBatches")?, number("BenchPciBatch")?);
        let pci = IOPCIDevice::from_provider(provider);
        pci.open()?;
        let _ = self.ivars().device.set(pci);

        let call = batches(n, batch.min(100), || pci.memory_read32(BAR0, ID))?;
        let bar = pci.map_bar(BAR0)?;
        let mapped = batches(n, batch, || bar.read32(ID))?;
        let own = AtomicU32::new(0x0100_00ed);
        let raw = batches(n, batch, || Ok(own.load(Ordering::Acquire)))?;

        pci.set_bus_master_enable(true)?;
        pci.configure_interrupts(interrupt_type::MSI, 1, 1)?;
        let queue = IODispatchQueue::create("Interrupts")?;
        self.set_dispatch_queue("Interrupts", queue.clone());
        let source = IOInterruptDispatchSource::create(provider, 0, &queue)?;
        source.set_handler(&self.create_action_interrupt_occurred(0)?)?;
        *self.ivars().source.locked() = Some(source);
        let gap = Duration::from_micros(number("BenchPciGapUs")?);
        let mut latencies = Vec::new();
        for _ in 0..number("BenchPciInterrupts")? {
            std::thread::sleep(gap);
            let t0 = now_ns();
            pci.memory_write32(BAR0, IRQ_RAISE, 1)?;
            let arrived = self.wait_interrupt()?;
            latencies.push(arrived.saturating_sub(t0) as f64);
            pci.memory_write32(BAR0, IRQ_ACK, pci.memory_read32(BAR0, IRQ_STATUS)?)?;
        }

        self.set_property("BenchPciCall", call)?;
        self.set_property("BenchPciMapped", mapped)?;
        self.set_property("BenchPciRaw", raw)?;
        self.set_property("BenchPciInterrupt", percentiles(latencies))?;
        self.register_service()
    }

    fn stop(&self, provider: &IOService) -> IOResult<()> {
        let source = self.ivars().source.locked().take();
        if let Some(s) = source {
            IOInterruptDispatchSource::cancel_all(vec![s])?;
        }
        self.super_stop(provider)
    }
}

impl PCIBenchDriver {
    fn wait_interrupt(&self) -> IOResult<u64> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut arrived = self.ivars().arrived.locked();
        while *arrived == 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(IOReturn::TIMEOUT);
            }
            arrived = self.ivars().wake.waited_timeout(arrived, left).0;
        }
        Ok(std::mem::take(&mut *arrived))
    }
}

#[driverkit::actions]
impl PCIBenchDriver {
    #[action(IOInterruptDispatchSource::InterruptOccurred, queue = "Interrupts")]
    fn interrupt_occurred(&self, _action: &OSAction, _count: u64, _time: u64) {
        let now = now_ns();
        *self.ivars().arrived.locked() = now;
        self.ivars().wake.notify_all();
    }
}

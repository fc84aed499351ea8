//! A model of QEMU's `edu` device (`docs/specs/edu.rst` in QEMU's tree),
//! the teaching PCI device EduDriver is written for, so the same driver
//! runs in the default demo and on the emulated hardware in a guest.
//!
//! What it models, as QEMU's `hw/misc/edu.c` behaves:
//!
//! ```text
//! config   1234:11e8 rev 0x10, class 0xff0000, subsystem 1af4:1100,
//!          BAR0: 1 MiB of 32-bit memory, INTA, an MSI capability at 0x40
//! BAR0     0x00 RO  identification 0x010000ed
//!          0x04 RW  liveness: reads back the bitwise NOT of what was written
//!          0x08 RW  factorial: a write starts computing n!, a read gives it
//!          0x20 RW  status: 0x01 computing (RO), 0x80 raise 0x001 when done
//!          0x24 RO  interrupt status
//!          0x60 WO  raise: ORs the value into the interrupt status
//!          0x64 WO  acknowledge: clears those bits
//!          0x80 RW  DMA source, 0x88 destination, 0x90 count,
//!          0x98 RW  DMA command: 0x01 start, 0x02 device to RAM,
//!                   0x04 raise 0x100 when done
//!          0x40000  the DMA buffer, 4 KiB, inside the device (a transfer
//!                   may not reach its last byte: QEMU's range check)
//! ```
//!
//! Registers below 0x80 take 4-byte accesses, the DMA registers 4 or 8;
//! other accesses read all-ones and write nothing. DMA addresses keep
//! their low 28 bits (the device's DMA mask) and go through the function's
//! DMA mappings (the model's IOMMU); an address nothing maps is a fault
//! the model logs, as is a transfer with Bus Master off. Factorials and
//! DMA run on the device's engine thread, like QEMU's worker thread and
//! timer, so completion really is asynchronous and interrupts mean
//! something. Interrupts are vector 0: MSI when the driver configured it,
//! otherwise INTx unless the command register disables it.
//!
//! BAR0 is also memory a driver can map: the model keeps its registers
//! written there (all-ones elsewhere, and everywhere while Memory Space
//! is off), so mapped reads are plain loads; writes travel as calls.

use driverkit_wire::sync::{Locked, Waited};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use driverkit_wire::pci::{self, command, reg, Location, Width};
use driverkit_wire::shm::SharedMemory;
use driverkit_wire::{IOResult, IOReturn};

use super::interrupts::Subscribers;
use crate::families::pci::{Bar, DmaWindow, MappedBar, PciDevice};

pub const VENDOR: u16 = 0x1234;
pub const DEVICE: u16 = 0x11e8;
pub const ID: u32 = 0x0100_00ed;
const BAR0_SIZE: u64 = 1 << 20;
const MSI_CAP: u16 = 0x40;
const DMA_MASK: u64 = (1 << 28) - 1;
pub const DMA_BUFFER: u64 = 0x40000;
pub const DMA_BUFFER_SIZE: u64 = 4096;

/// Registers (BAR0 offsets).
pub mod regs {
    pub const ID: u64 = 0x00;
    pub const LIVENESS: u64 = 0x04;
    pub const FACTORIAL: u64 = 0x08;
    pub const STATUS: u64 = 0x20;
    pub const IRQ_STATUS: u64 = 0x24;
    pub const IRQ_RAISE: u64 = 0x60;
    pub const IRQ_ACK: u64 = 0x64;
    pub const DMA_SRC: u64 = 0x80;
    pub const DMA_DST: u64 = 0x88;
    pub const DMA_COUNT: u64 = 0x90;
    pub const DMA_CMD: u64 = 0x98;
    pub const STATUS_COMPUTING: u32 = 0x01;
    pub const STATUS_IRQ_FACTORIAL: u32 = 0x80;
    pub const DMA_START: u64 = 0x01;
    pub const DMA_TO_RAM: u64 = 0x02;
    pub const DMA_IRQ: u64 = 0x04;
    pub const IRQ_FACTORIAL: u32 = 0x001;
    pub const IRQ_DMA: u32 = 0x100;
}

/// The device's registers and buffer.
struct Registers {
    config: [u8; 256],
    liveness: u32,
    factorial: u32,
    status: u32,
    irq_status: u32,
    dma_src: u64,
    dma_dst: u64,
    dma_count: u64,
    dma_cmd: u64,
    buffer: Vec<u8>,
}

struct State {
    regs: Registers,
    windows: Vec<DmaWindow>,
    /// Work for the engine: a factorial, and a DMA transfer due then.
    factorial_pending: bool,
    dma_due: Option<Instant>,
    unplugged: bool,
    /// Faults the model saw (DMA to unmapped addresses, with Bus Master
    /// off, outside the buffer), for tests and logs.
    faults: u64,
}

struct Shared {
    name: String,
    location: Location,
    state: Mutex<State>,
    work: Condvar,
    vector: Subscribers,
    bar0: Arc<SharedMemory>,
    /// How long a DMA transfer takes to start (QEMU's edu waits 100 ms of
    /// virtual time).
    dma_delay: Duration,
}

/// A modelled edu device.
pub struct VirtualEdu {
    shared: Arc<Shared>,
}

/// The power-on configuration header: IDs, class, BAR0, pin, capability
/// list with one MSI capability (64-bit, one vector).
fn power_on_config() -> [u8; 256] {
    let mut c = [0u8; 256];
    let mut put16 = |at: u16, v: u16| {
        c[usize::from(at)..usize::from(at) + 2].copy_from_slice(&v.to_le_bytes());
    };
    put16(reg::VENDOR_ID, VENDOR);
    put16(reg::DEVICE_ID, DEVICE);
    put16(reg::STATUS, pci::STATUS_CAPABILITIES);
    put16(reg::SUBSYSTEM_VENDOR_ID, 0x1af4);
    put16(reg::SUBSYSTEM_ID, 0x1100);
    c[usize::from(reg::REVISION_ID)] = 0x10;
    c[0x0b] = 0xff; // base class: "other"
    c[usize::from(reg::CAPABILITIES)] = MSI_CAP as u8;
    c[usize::from(reg::INTERRUPT_PIN)] = 1;
    let msi = usize::from(MSI_CAP);
    c[msi] = pci::capability::MSI as u8;
    c[msi + 2] = 0x80; // 64-bit address capable; one vector; disabled
    c
}

/// The bits of the header a driver may write (as QEMU's `wmask`).
fn writable(at: usize) -> u8 {
    match at {
        0x04 => 0x07, // I/O, Memory Space, Bus Master
        0x05 => 0x04, // INTx disable
        0x10 => 0xf0, // BAR0's address bits below 1 MiB are its size
        0x11 | 0x12 => 0x00,
        0x13 => 0xff,
        0x3c => 0xff,        // interrupt line
        0x42 => 0x01,        // MSI enable
        0x44..=0x4d => 0xff, // MSI address and data
        _ => 0,
    }
}

impl Registers {
    fn power_on() -> Registers {
        Registers {
            config: power_on_config(),
            liveness: 0,
            factorial: 0,
            status: 0,
            irq_status: 0,
            dma_src: 0,
            dma_dst: 0,
            dma_count: 0,
            dma_cmd: 0,
            buffer: vec![0; DMA_BUFFER_SIZE as usize],
        }
    }

    fn command(&self) -> u16 {
        u16::from_le_bytes([self.config[4], self.config[5]])
    }

    fn msi_enabled(&self) -> bool {
        self.config[usize::from(MSI_CAP) + 2] & 1 != 0
    }
}

impl VirtualEdu {
    /// A device at `00:DD.0`, its engine running; its DMA transfers start
    /// `dma_delay` after their command.
    pub fn start(
        name: &str,
        slot: u8,
        dma_delay: Duration,
    ) -> Result<Arc<VirtualEdu>, super::description::DeviceError> {
        let bar0 = SharedMemory::create("edu-bar0", BAR0_SIZE as usize).map_err(|source| {
            super::description::DeviceError::Resource {
                what: format!("{name}: BAR0's memory"),
                source,
            }
        })?;
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            location: Location {
                bus: 0,
                device: slot,
                function: 0,
            },
            state: Mutex::new(State {
                regs: Registers::power_on(),
                windows: Vec::new(),
                factorial_pending: false,
                dma_due: None,
                unplugged: false,
                faults: 0,
            }),
            work: Condvar::new(),
            vector: Subscribers::default(),
            bar0: Arc::new(bar0),
            dma_delay,
        });
        shared.render(&shared.lock().regs);
        let engine = shared.clone();
        std::thread::Builder::new()
            .name(format!("edu:{name}"))
            .stack_size(64 * 1024)
            .spawn(move || engine.run())
            .map_err(|source| super::description::DeviceError::Resource {
                what: format!("{name}: its engine"),
                source,
            })?;
        Ok(Arc::new(VirtualEdu { shared }))
    }

    /// DMA faults seen so far.
    pub fn faults(&self) -> u64 {
        self.shared.lock().faults
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.locked()
    }

    /// Writes the registers into the mappable BAR (all-ones while Memory
    /// Space is off: a disabled function answers no reads).
    fn render(&self, r: &Registers) {
        let on = r.command() & command::MEMORY_SPACE != 0;
        let put32 = |at: u64, v: u32| {
            self.bar0
                .write(at as usize, &(if on { v } else { u32::MAX }).to_le_bytes());
        };
        let put64 = |at: u64, v: u64| {
            self.bar0
                .write(at as usize, &(if on { v } else { u64::MAX }).to_le_bytes());
        };
        put32(regs::ID, ID);
        put32(regs::LIVENESS, r.liveness);
        put32(regs::FACTORIAL, r.factorial);
        put32(regs::STATUS, r.status);
        put32(regs::IRQ_STATUS, r.irq_status);
        put64(regs::DMA_SRC, r.dma_src);
        put64(regs::DMA_DST, r.dma_dst);
        put64(regs::DMA_COUNT, r.dma_count);
        put64(regs::DMA_CMD, r.dma_cmd);
    }

    /// ORs `bits` into the interrupt status and signals vector 0, if the
    /// driver enabled a way to signal it: MSI is a memory write by the
    /// device, so it needs Bus Master too (as on QEMU's bus); INTx is a
    /// wire.
    fn raise(&self, r: &mut Registers, bits: u32) {
        r.irq_status |= bits;
        let msi = r.msi_enabled() && r.command() & command::BUS_MASTER != 0;
        let intx = !r.msi_enabled() && r.command() & command::INTX_DISABLE == 0;
        if msi || intx {
            self.vector.raise();
        }
    }

    fn run(&self) {
        let mut st = self.lock();
        loop {
            let dma_due = st.dma_due.is_some_and(|t| t <= Instant::now());
            if st.unplugged {
                return;
            }
            if !st.factorial_pending && !dma_due {
                st = match st.dma_due {
                    Some(t) => {
                        let left = t.saturating_duration_since(Instant::now());
                        self.work.waited_timeout(st, left).0
                    }
                    None => self.work.waited(st),
                };
                continue;
            }
            if st.factorial_pending {
                st.factorial_pending = false;
                let n = st.regs.factorial;
                st.regs.factorial = (1..=n).fold(1u32, |acc, i| acc.wrapping_mul(i));
                st.regs.status &= !regs::STATUS_COMPUTING;
                if st.regs.status & regs::STATUS_IRQ_FACTORIAL != 0 {
                    self.raise(&mut st.regs, regs::IRQ_FACTORIAL);
                }
            }
            if dma_due {
                st.dma_due = None;
                self.transfer(&mut st);
            }
            self.render(&st.regs);
        }
    }

    /// One DMA transfer, as QEMU's `edu_dma_timer` does it.
    fn transfer(&self, st: &mut State) {
        let r = &st.regs;
        let to_ram = r.dma_cmd & regs::DMA_TO_RAM != 0;
        let (ram, device) = if to_ram {
            (r.dma_dst & DMA_MASK, r.dma_src & DMA_MASK)
        } else {
            (r.dma_src & DMA_MASK, r.dma_dst & DMA_MASK)
        };
        let count = r.dma_count;
        let fault = |st: &mut State, why: String| {
            st.faults += 1;
            tracing::warn!("edu      {}: DMA fault: {why}", self.name);
        };
        // QEMU's `edu_check_range`: the end of the transfer must lie
        // strictly inside the buffer, so no transfer reaches its last byte
        // (QEMU stops the whole machine with a hardware error; the model
        // only faults).
        let end = device.checked_add(count);
        let inside = count > 0
            && device >= DMA_BUFFER
            && end.is_some_and(|end| end < DMA_BUFFER + DMA_BUFFER_SIZE);
        if !inside {
            fault(st, format!("{count} bytes at device address {device:#x}: not inside its buffer (0x40000, 4 KiB, the last byte unreachable as on QEMU)"));
        } else if r.command() & command::BUS_MASTER == 0 {
            fault(st, "Bus Master is off".into());
        } else {
            let window = st
                .windows
                .iter()
                .find(|w| ram >= w.address && ram + count <= w.address + w.length as u64);
            match window {
                None => {
                    let why = format!("{count} bytes at {ram:#x}: no DMA mapping covers it");
                    fault(st, why);
                }
                Some(w) => {
                    let at = w.offset + (ram - w.address) as usize;
                    let buf =
                        (device - DMA_BUFFER) as usize..(device - DMA_BUFFER + count) as usize;
                    let region = w.region.clone();
                    if to_ram {
                        region.write(at, &st.regs.buffer[buf]);
                    } else {
                        region.read(at, &mut st.regs.buffer[buf]);
                    }
                }
            }
        }
        st.regs.dma_cmd &= !regs::DMA_START;
        if st.regs.dma_cmd & regs::DMA_IRQ != 0 {
            self.raise(&mut st.regs, regs::IRQ_DMA);
        }
    }
}

impl PciDevice for VirtualEdu {
    fn location(&self) -> Location {
        self.shared.location
    }

    fn config_space(&self) -> u16 {
        pci::CONFIG_SPACE
    }

    fn config_read(&self, offset: u16, width: Width) -> u32 {
        let st = self.shared.lock();
        let at = usize::from(offset);
        let mut bytes = [0u8; 4];
        let n = width.bytes() as usize;
        if let Some(src) = st.regs.config.get(at..at + n) {
            bytes[..n].copy_from_slice(src);
        }
        u32::from_le_bytes(bytes)
    }

    fn config_write(&self, offset: u16, width: Width, value: u32) {
        let mut st = self.shared.lock();
        let bytes = value.to_le_bytes();
        for (i, byte) in bytes.iter().take(width.bytes() as usize).enumerate() {
            let at = usize::from(offset) + i;
            let Some(old) = st.regs.config.get(at).copied() else {
                return;
            };
            let mask = writable(at);
            st.regs.config[at] = (old & !mask) | (byte & mask);
        }
        self.shared.render(&st.regs);
    }

    fn bar(&self, index: u8) -> Option<Bar> {
        (index == 0).then_some(Bar {
            size: BAR0_SIZE,
            kind: pci::bar_type::MEMORY32,
        })
    }

    fn bar_read(&self, _index: u8, offset: u64, width: Width) -> u64 {
        let st = self.shared.lock();
        let r = &st.regs;
        if r.command() & command::MEMORY_SPACE == 0 {
            return width.mask(u64::MAX);
        }
        let value = match (offset, width) {
            (regs::ID, Width::W32) => ID.into(),
            (regs::LIVENESS, Width::W32) => r.liveness.into(),
            (regs::FACTORIAL, Width::W32) => r.factorial.into(),
            (regs::STATUS, Width::W32) => r.status.into(),
            (regs::IRQ_STATUS, Width::W32) => r.irq_status.into(),
            (regs::DMA_SRC, Width::W32 | Width::W64) => r.dma_src,
            (regs::DMA_DST, Width::W32 | Width::W64) => r.dma_dst,
            (regs::DMA_COUNT, Width::W32 | Width::W64) => r.dma_count,
            (regs::DMA_CMD, Width::W32 | Width::W64) => r.dma_cmd,
            (at, Width::W8 | Width::W16 | Width::W32)
                if (DMA_BUFFER..DMA_BUFFER + DMA_BUFFER_SIZE).contains(&at) =>
            {
                // QEMU's edu keeps its buffer internal; reads there are
                // all-ones, as anywhere it has no register.
                u64::MAX
            }
            _ => u64::MAX,
        };
        width.mask(value)
    }

    fn bar_write(&self, _index: u8, offset: u64, width: Width, value: u64) {
        let mut st = self.shared.lock();
        if st.regs.command() & command::MEMORY_SPACE == 0 {
            return;
        }
        let v32 = value as u32;
        let mut wake = false;
        match (offset, width) {
            (regs::LIVENESS, Width::W32) => st.regs.liveness = !v32,
            // A write while computing is ignored, as QEMU's is.
            (regs::FACTORIAL, Width::W32) if st.regs.status & regs::STATUS_COMPUTING == 0 => {
                st.regs.factorial = v32;
                st.regs.status |= regs::STATUS_COMPUTING;
                st.factorial_pending = true;
                wake = true;
            }
            (regs::STATUS, Width::W32) => {
                let keep = st.regs.status & regs::STATUS_COMPUTING;
                st.regs.status = keep | (v32 & regs::STATUS_IRQ_FACTORIAL);
            }
            (regs::IRQ_RAISE, Width::W32) => {
                self.shared.raise(&mut st.regs, v32);
            }
            (regs::IRQ_ACK, Width::W32) => st.regs.irq_status &= !v32,
            (regs::DMA_SRC, Width::W32 | Width::W64) => st.regs.dma_src = value,
            (regs::DMA_DST, Width::W32 | Width::W64) => st.regs.dma_dst = value,
            (regs::DMA_COUNT, Width::W32 | Width::W64) => st.regs.dma_count = value,
            // A transfer starts only when none is running.
            (regs::DMA_CMD, Width::W32 | Width::W64)
                if value & regs::DMA_START != 0 && st.regs.dma_cmd & regs::DMA_START == 0 =>
            {
                st.regs.dma_cmd = value;
                st.dma_due = Some(Instant::now() + self.shared.dma_delay);
                wake = true;
            }
            _ => {}
        }
        self.shared.render(&st.regs);
        if wake {
            self.shared.work.notify_all();
        }
    }

    fn map_bar(&self, index: u8) -> IOResult<MappedBar> {
        if index != 0 {
            return Err(IOReturn::BAD_ARGUMENT);
        }
        let memory = std::os::fd::AsFd::as_fd(&*self.shared.bar0)
            .try_clone_to_owned()
            .map_err(|_| IOReturn::NO_RESOURCES)?;
        Ok(MappedBar {
            memory,
            length: BAR0_SIZE,
            writes_trap: true,
        })
    }

    fn configure_interrupts(&self, kind: pci::InterruptKind, min: u32, _max: u32) -> IOResult<u32> {
        if min > 1 {
            return Err(IOReturn::NO_RESOURCES);
        }
        let mut st = self.shared.lock();
        let msi = usize::from(MSI_CAP) + 2;
        let cmd = st.regs.command();
        match kind {
            pci::InterruptKind::Msi => {
                st.regs.config[msi] |= 1;
                let cmd = cmd | command::INTX_DISABLE;
                st.regs.config[4..6].copy_from_slice(&cmd.to_le_bytes());
            }
            pci::InterruptKind::Level => {
                st.regs.config[msi] &= !1;
                let cmd = cmd & !command::INTX_DISABLE;
                st.regs.config[4..6].copy_from_slice(&cmd.to_le_bytes());
            }
            // The edu device has no MSI-X capability.
            pci::InterruptKind::MsiX => return Err(IOReturn::UNSUPPORTED),
        }
        Ok(1)
    }

    fn subscribe_interrupt(&self, index: u32, region: &Arc<SharedMemory>) -> IOResult<()> {
        if index != 0 {
            return Err(IOReturn::NOT_FOUND);
        }
        self.shared.vector.add(region)
    }

    /// The model's IOMMU keeps the window.
    fn dma_map(&self, window: DmaWindow) -> IOResult<()> {
        self.shared.lock().windows.push(window);
        Ok(())
    }

    fn dma_unmap(&self, address: u64, _length: u64) {
        self.shared.lock().windows.retain(|w| w.address != address);
    }

    /// Everything returns to power-on: registers, buffer, configuration
    /// (so Memory Space, Bus Master and MSI are off); work not yet done is
    /// dropped. The DMA mappings are the system's, not the device's.
    fn reset(&self) -> IOResult<()> {
        let mut st = self.shared.lock();
        if st.dma_due.take().is_some() {
            tracing::info!(
                "edu      {}: reset with a DMA transfer in flight: dropped",
                self.shared.name
            );
        }
        st.regs = Registers::power_on();
        st.factorial_pending = false;
        self.shared.render(&st.regs);
        Ok(())
    }

    fn unplugged(&self) {
        self.shared.lock().unplugged = true;
        self.shared.work.notify_all();
    }
}

impl Drop for VirtualEdu {
    fn drop(&mut self) {
        self.unplugged();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(edu: &VirtualEdu) {
        edu.config_write(
            reg::COMMAND,
            Width::W16,
            u32::from(command::MEMORY_SPACE | command::BUS_MASTER),
        );
    }

    fn wait_for(what: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !what() {
            assert!(
                std::time::Instant::now() < deadline,
                "the device never got there"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    #[test]
    fn identity_liveness_and_factorials() {
        let edu = VirtualEdu::start("t", 3, Duration::ZERO).unwrap();
        assert_eq!(edu.config_read(0, Width::W32), 0x11e8_1234);
        assert_eq!(
            edu.bar_read(0, regs::ID, Width::W32),
            u32::MAX as u64,
            "Memory Space off"
        );
        on(&edu);
        assert_eq!(edu.bar_read(0, regs::ID, Width::W32), ID as u64);
        assert_eq!(
            edu.bar_read(0, regs::ID, Width::W16),
            0xffff,
            "edu takes 4-byte reads only"
        );
        edu.bar_write(0, regs::LIVENESS, Width::W32, 0x1234_5678);
        assert_eq!(
            edu.bar_read(0, regs::LIVENESS, Width::W32),
            !0x1234_5678u32 as u64
        );
        for (n, want) in [(0u64, 1u64), (5, 120), (12, 479_001_600)] {
            edu.bar_write(0, regs::FACTORIAL, Width::W32, n);
            wait_for(|| edu.bar_read(0, regs::STATUS, Width::W32) & 1 == 0);
            assert_eq!(edu.bar_read(0, regs::FACTORIAL, Width::W32), want);
        }
        let mapped = edu.shared.bar0.clone();
        assert_eq!(
            mapped
                .u32_at(regs::FACTORIAL as usize)
                .load(std::sync::atomic::Ordering::Acquire),
            479_001_600
        );
        edu.reset().unwrap();
        assert_eq!(
            mapped.u32_at(0).load(std::sync::atomic::Ordering::Acquire),
            u32::MAX,
            "reset: Memory Space off"
        );
    }

    #[test]
    fn dma_goes_through_mappings_and_bus_master() {
        let edu = VirtualEdu::start("t", 4, Duration::from_millis(1)).unwrap();
        on(&edu);
        let ram = Arc::new(SharedMemory::create("ram", 8192).unwrap());
        ram.write(4096, &[7u8; 2048]);
        edu.dma_map(DmaWindow {
            address: 0x10_0000,
            region: ram.clone(),
            offset: 4096,
            length: 4096,
        })
        .unwrap();
        let dma = |src: u64, dst: u64, count: u64, cmd: u64| {
            edu.bar_write(0, regs::DMA_SRC, Width::W64, src);
            edu.bar_write(0, regs::DMA_DST, Width::W64, dst);
            edu.bar_write(0, regs::DMA_COUNT, Width::W64, count);
            edu.bar_write(0, regs::DMA_CMD, Width::W64, cmd);
            wait_for(|| edu.bar_read(0, regs::DMA_CMD, Width::W64) & 1 == 0);
        };
        let to_ram = regs::DMA_START | regs::DMA_TO_RAM;
        dma(0x10_0000, DMA_BUFFER, 2048, regs::DMA_START);
        ram.write(4096, &[0u8; 2048]);
        dma(DMA_BUFFER, 0x10_0000 | 1 << 28, 2048, to_ram);
        let mut back = [0u8; 2048];
        ram.read(4096, &mut back);
        assert!(back.iter().all(|b| *b == 7), "the mask keeps 28 bits");
        assert_eq!(edu.faults(), 0);
        dma(0x10_0000, DMA_BUFFER + 2048, 2048, regs::DMA_START);
        assert_eq!(
            edu.faults(),
            1,
            "the buffer's last byte is out of reach, as on QEMU"
        );
        dma(0x20_0000, DMA_BUFFER, 16, regs::DMA_START);
        assert_eq!(edu.faults(), 2, "an unmapped address faults");
        edu.config_write(reg::COMMAND, Width::W16, u32::from(command::MEMORY_SPACE));
        dma(0x10_0000, DMA_BUFFER, 16, regs::DMA_START);
        assert_eq!(edu.faults(), 3, "Bus Master off: no transfer");
    }
}

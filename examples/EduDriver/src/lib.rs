//! EduDriver: a PCI driver for QEMU's edu device, the one QEMU's
//! `docs/specs/edu.rst` describes for teaching. The same driver runs on the
//! system's model of it (`driverkit run`) and on QEMU's emulated device in
//! a guest, through VFIO.
//!
//! Its life:
//!
//! - `start`: open the function, check the identification register
//!   (`0x010000ed`) and liveness (the device answers the bitwise NOT of
//!   what was written), let it master the bus (for DMA, and for MSI,
//!   which is a memory write), take its interrupt (MSI, else INTx), compute 0!
//!   to 12! with completion interrupts, and move 4 KiB to the device and
//!   back by DMA (in halves: QEMU's device refuses a transfer that reaches
//!   the last byte of its buffer). What it found is in the registry (`EduID`,
//!   `EduLiveness`, `EduFactorials`, `EduDMA`, and `EduMappedID`, the
//!   identification read through BAR0 mapped into the driver).
//! - `interrupt_occurred` (queue `Interrupts`): read and acknowledge the
//!   interrupt status, and wake whoever waits for those bits.
//! - `stop`: cancel the interrupt source, close the function (the system
//!   turns Bus Master and Memory Space off), then super.
//! - `EduUserClient`, what `IOServiceOpen` gives an app: selector 0 is
//!   `factorial(n)` (one scalar in, one out):
//!   `driverkit call EduDriver 0 --scalar 10 --scalar-out 1` prints 3628800.

use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use driverkit::pci::interrupt_type;
use driverkit::prelude::*;
use driverkit::user_client::{
    dispatch_external_method, IOUserClientMethodArguments, IOUserClientMethodDispatch,
};

/// The bundle's Info.plist, for hosts that assemble the bundle themselves.
pub const INFO_PLIST: &str = include_str!("../Info.plist");

/// What the driver is entitled to: `Entitlements.plist`.
pub const ENTITLEMENTS: &str = include_str!("../Entitlements.plist");

/// The edu device's registers (BAR0).
pub mod regs {
    pub const ID: u64 = 0x00;
    pub const LIVENESS: u64 = 0x04;
    pub const FACTORIAL: u64 = 0x08;
    pub const STATUS: u64 = 0x20;
    pub const IRQ_STATUS: u64 = 0x24;
    pub const IRQ_ACK: u64 = 0x64;
    pub const DMA_SRC: u64 = 0x80;
    pub const DMA_DST: u64 = 0x88;
    pub const DMA_COUNT: u64 = 0x90;
    pub const DMA_CMD: u64 = 0x98;
    /// Raise interrupt 0x001 when a factorial is done.
    pub const STATUS_IRQ_FACTORIAL: u32 = 0x80;
    pub const DMA_START: u64 = 0x01;
    pub const DMA_TO_RAM: u64 = 0x02;
    pub const DMA_IRQ: u64 = 0x04;
    pub const IRQ_FACTORIAL: u32 = 0x001;
    pub const IRQ_DMA: u32 = 0x100;
    /// The device's DMA buffer, in its own address space.
    pub const DMA_BUFFER: u64 = 0x40000;
    pub const DMA_BUFFER_SIZE: u64 = 4096;
    /// The device drives 28 address bits.
    pub const DMA_ADDRESS_BITS: u8 = 28;
}

const BAR0: u8 = 0;
const EXPECTED_ID: u32 = 0x0100_00ed;
/// How long the driver waits for an interrupt before it gives up.
const INTERRUPT_TIMEOUT: Duration = Duration::from_secs(5);

/// The driver's state.
#[derive(Default)]
pub struct EduDriverIvars {
    device: OnceLock<IOPCIDevice>,
    source: Mutex<Option<IOInterruptDispatchSource>>,
    /// Interrupt status bits the handler acknowledged and nobody has
    /// taken yet.
    pending: Mutex<u32>,
    arrived: Condvar,
    /// The device has one engine: one factorial or transfer at a time.
    engine: Mutex<()>,
}

#[driverkit::service(superclass = IOService, ivars = EduDriverIvars)]
pub struct EduDriver;

impl IOServiceImpl for EduDriver {
    fn init(&self) -> IOResult<EduDriverIvars> {
        Ok(EduDriverIvars::default())
    }

    fn start(&self, provider: &IOService) -> IOResult<()> {
        self.super_start(provider)?;
        let pci = IOPCIDevice::from_provider(provider);
        pci.open()?;
        let _ = self.ivars().device.set(pci);

        let id = pci.memory_read32(BAR0, regs::ID)?;
        if id != EXPECTED_ID {
            driverkit::error!("not an edu device: identification {id:#010x}");
            return Err(IOReturn::NO_DEVICE);
        }
        pci.memory_write32(BAR0, regs::LIVENESS, 0x1234_5678)?;
        let alive = pci.memory_read32(BAR0, regs::LIVENESS)? == !0x1234_5678;
        if !alive {
            driverkit::error!("the device failed the liveness check");
            return Err(IOReturn::NOT_RESPONDING);
        }

        // The device may master the bus: its DMA and its MSI (a memory
        // write to the interrupt controller) need it.
        pci.set_bus_master_enable(true)?;
        // MSI where the function offers it, INTx otherwise.
        if pci.configure_interrupts(interrupt_type::MSI, 1, 1).is_err() {
            pci.configure_interrupts(interrupt_type::LEVEL, 1, 1)?;
        }
        let queue = IODispatchQueue::create("Interrupts")?;
        self.set_dispatch_queue("Interrupts", queue.clone());
        let source = IOInterruptDispatchSource::create(provider, 0, &queue)?;
        source.set_handler(&self.create_action_interrupt_occurred(0)?)?;
        *self.ivars().source.locked() = Some(source);

        let mut factorials = Vec::new();
        for n in 0..=12u32 {
            let got = self.factorial(n)?;
            let want: u32 = (1..=n).product();
            if got != want {
                driverkit::error!("{n}! came back as {got}, not {want}");
                return Err(IOReturn::IO_ERROR);
            }
            factorials.push(driverkit::plist::Value::Integer(got.into()));
        }
        let dma = self.dma_round_trip()?;
        // Beyond DriverKit: BAR0 mapped here, read with no call.
        let mapped = pci.map_bar(BAR0).and_then(|bar| bar.read32(regs::ID));
        let mapped = match mapped {
            Ok(id) => format!("{id:#010x}"),
            Err(e) => e.name().unwrap_or("error").to_owned(),
        };
        self.set_property("EduMappedID", mapped)?;

        self.set_property("EduID", format!("{id:#010x}"))?;
        self.set_property("EduLiveness", alive)?;
        self.set_property("EduFactorials", driverkit::plist::Value::Array(factorials))?;
        self.set_property("EduDMA", dma)?;
        self.register_service()?;
        driverkit::info!("start: edu {id:#010x} alive, 0!..12! by interrupt, DMA {dma}");
        Ok(())
    }

    fn stop(&self, provider: &IOService) -> IOResult<()> {
        let source = self.ivars().source.locked().take();
        if let Some(s) = source {
            IOInterruptDispatchSource::cancel_all(vec![s])?;
        }
        if let Some(pci) = self.ivars().device.get() {
            let _ = pci.close();
        }
        self.super_stop(provider)
    }

    /// Apps open type 0: `UserClientProperties`.
    fn new_user_client(&self, kind: u32) -> IOResult<String> {
        match kind {
            0 => Ok("UserClientProperties".into()),
            _ => Err(IOReturn::BAD_ARGUMENT),
        }
    }
}

impl EduDriver {
    fn device(&self) -> IOResult<IOPCIDevice> {
        self.ivars()
            .device
            .get()
            .copied()
            .ok_or(IOReturn::NOT_READY)
    }

    /// Waits until the handler has seen interrupt status `bits`, and takes
    /// them.
    fn wait_for(&self, bits: u32) -> IOResult<()> {
        let deadline = Instant::now() + INTERRUPT_TIMEOUT;
        let mut pending = self.ivars().pending.locked();
        while *pending & bits != bits {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                driverkit::error!("no interrupt {bits:#x} within {INTERRUPT_TIMEOUT:?}");
                return Err(IOReturn::TIMEOUT);
            }
            pending = self.ivars().arrived.waited_timeout(pending, left).0;
        }
        *pending &= !bits;
        Ok(())
    }

    /// `n!` by the device, completed by its interrupt.
    pub fn factorial(&self, n: u32) -> IOResult<u32> {
        let pci = self.device()?;
        let _engine = self.ivars().engine.locked();
        pci.memory_write32(BAR0, regs::STATUS, regs::STATUS_IRQ_FACTORIAL)?;
        pci.memory_write32(BAR0, regs::FACTORIAL, n)?;
        self.wait_for(regs::IRQ_FACTORIAL)?;
        pci.memory_read32(BAR0, regs::FACTORIAL)
    }

    /// 4 KiB of a pattern to the device and back into a second buffer,
    /// in halves (QEMU's edu refuses a transfer that reaches the last byte
    /// of its 4 KiB buffer), each transfer completed by its interrupt;
    /// true when what came back is what went.
    fn dma_round_trip(&self) -> IOResult<bool> {
        let pci = self.device()?;
        let _engine = self.ivars().engine.locked();
        let size = regs::DMA_BUFFER_SIZE;
        let out = IOBufferMemoryDescriptor::create(size as usize)?;
        let back = IOBufferMemoryDescriptor::create(size as usize)?;
        let pattern: Vec<u8> = (0..size).map(|i| (i * 7 + 3) as u8).collect();
        out.create_mapping()?.write(0, &pattern)?;

        // Each buffer is reachable by the device, below its 28 bits, until
        // its command completes.
        let reachable = |buffer: &IOBufferMemoryDescriptor| -> IOResult<(IODMACommand, u64)> {
            let dma = IODMACommand::create(&pci, regs::DMA_ADDRESS_BITS)?;
            match dma.prepare_for_dma(buffer, 0, size)?[..] {
                [segment] => Ok((dma, segment.address)),
                _ => {
                    let _ = dma.complete_dma();
                    Err(IOReturn::UNSUPPORTED)
                }
            }
        };
        let (out_dma, out_address) = reachable(&out)?;
        let (back_dma, back_address) = reachable(&back)?;
        let transfer = |src: u64, dst: u64, count: u64, direction: u64| -> IOResult<()> {
            pci.memory_write64(BAR0, regs::DMA_SRC, src)?;
            pci.memory_write64(BAR0, regs::DMA_DST, dst)?;
            pci.memory_write64(BAR0, regs::DMA_COUNT, count)?;
            pci.memory_write64(
                BAR0,
                regs::DMA_CMD,
                regs::DMA_START | direction | regs::DMA_IRQ,
            )?;
            self.wait_for(regs::IRQ_DMA)
        };
        let half = size / 2;
        let moved = [0, half].into_iter().try_for_each(|at| {
            transfer(out_address + at, regs::DMA_BUFFER, half, 0)?;
            transfer(regs::DMA_BUFFER, back_address + at, half, regs::DMA_TO_RAM)
        });
        out_dma.complete_dma()?;
        back_dma.complete_dma()?;
        moved?;
        let mut got = vec![0u8; size as usize];
        back.create_mapping()?.read(0, &mut got)?;
        Ok(got == pattern)
    }
}

#[driverkit::actions]
impl EduDriver {
    /// The device raised its interrupt: acknowledge what its status says
    /// and hand the bits to whoever waits.
    #[action(IOInterruptDispatchSource::InterruptOccurred, queue = "Interrupts")]
    fn interrupt_occurred(&self, _action: &OSAction, _count: u64, _time: u64) {
        let Ok(pci) = self.device() else {
            return;
        };
        let status = match pci.memory_read32(BAR0, regs::IRQ_STATUS) {
            Ok(s) => s,
            Err(e) => {
                driverkit::error!("reading the interrupt status: {e}");
                return;
            }
        };
        if status == 0 {
            return;
        }
        if let Err(e) = pci.memory_write32(BAR0, regs::IRQ_ACK, status) {
            driverkit::error!("acknowledging interrupt {status:#x}: {e}");
        }
        *self.ivars().pending.locked() |= status;
        self.ivars().arrived.notify_all();
    }
}

/// The user client's state: the driver it reaches.
#[derive(Default)]
pub struct EduUserClientIvars {
    driver: OnceLock<Arc<EduDriver>>,
}

/// What `IOServiceOpen` on EduDriver gives an app.
#[driverkit::service(superclass = IOUserClient, ivars = EduUserClientIvars)]
pub struct EduUserClient;

/// Selector 0: `factorial(n)`, computed by the device.
fn factorial(uc: &EduUserClient, args: &mut IOUserClientMethodArguments) -> IOResult<()> {
    let n = u32::try_from(args.scalar_input[0]).map_err(|_| IOReturn::BAD_ARGUMENT)?;
    let driver = uc.ivars().driver.get().ok_or(IOReturn::NOT_READY)?;
    args.scalar_output = vec![driver.factorial(n)?.into()];
    Ok(())
}

impl IOUserClientImpl for EduUserClient {
    fn external_method(
        &self,
        selector: u64,
        args: &mut IOUserClientMethodArguments,
    ) -> IOResult<()> {
        const METHODS: &[IOUserClientMethodDispatch<EduUserClient>] =
            &[IOUserClientMethodDispatch {
                function: factorial,
                check_completion_exists: false,
                check_scalar_input_count: 1,
                check_structure_input_size: 0,
                check_scalar_output_count: 1,
                check_structure_output_size: 0,
            }];
        dispatch_external_method(self, selector, args, METHODS)
    }
}

impl IOServiceImpl for EduUserClient {
    fn init(&self) -> IOResult<EduUserClientIvars> {
        Ok(EduUserClientIvars::default())
    }

    /// The provider is the EduDriver that made this user client, in this
    /// very process (`OSDynamicCast`).
    fn start(&self, provider: &IOService) -> IOResult<()> {
        self.super_start(provider)?;
        let driver = OSDynamicCast::<EduDriver>(provider).ok_or(IOReturn::BAD_ARGUMENT)?;
        let _ = self.ivars().driver.set(driver);
        Ok(())
    }
}

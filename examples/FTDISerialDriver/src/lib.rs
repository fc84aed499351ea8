//! FTDISerialDriver: FTDI's FT232 USB UART (0403:6001) as a serial port.
//!
//! Its personality matches the chip's interface and names `IOUserSerial`
//! as its class, so the system gives it a tty (`IOCalloutDevice`). The
//! driver speaks the chip's protocol ([`ftdi`]):
//!
//! - line settings, modem control, flow control, breaks, FIFO resets and
//!   the latency timer are vendor control requests;
//! - bytes to send go out through bulk OUT, one transfer in flight, taken
//!   from the TX ring when it completes;
//! - bulk IN packets start with two status bytes (modem lines, line
//!   errors) before the received bytes; several reads stay in flight. A
//!   packet whose bytes do not fit the RX ring waits, with its read not
//!   resubmitted, until `rx_free_space_available`: the chip then holds
//!   what it receives, and nothing is dropped.
//!
//! Everything runs on the `Default` queue.

pub mod ftdi;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::Mutex;

use driverkit::prelude::*;
use driverkit::serial::{FlowControl, Parity};
use driverkit::usb::descriptors::Setup;
use driverkit::usb::{Direction, TransferType};

/// The bundle's Info.plist, for hosts that assemble the bundle themselves.
pub const INFO_PLIST: &str = include_str!("../Info.plist");

/// What the driver is entitled to: `Entitlements.plist`, installed in its bundle.
pub const ENTITLEMENTS: &str = include_str!("../Entitlements.plist");

/// Bulk-IN reads kept in flight, and their size: eight of the chip's
/// full-speed packets, each with its two status bytes (as Linux's
/// `ftdi_sio` reads), so that a busy line costs a transfer per 496 bytes,
/// not per 62.
const READS: usize = 4;
const READ: usize = 8 * ftdi::MAX_PACKET;
/// Bytes per bulk-OUT transfer.
const WRITE: usize = 4096;
const TIMEOUT_MS: u32 = 1000;
/// Bulk-IN reads that may fail in a row before the driver stops
/// resubmitting (until a program opens the port again): a chip that keeps
/// failing gets a few tries, not a loop of warnings.
const READ_FAILURES: u32 = 8;

/// What a bulk-IN read that failed with `status` (the `in_a_row`-th
/// failure since one succeeded) leads to.
#[derive(Debug, PartialEq, Eq)]
enum AfterFailure {
    /// The transfer was aborted (the port stops): nothing.
    Nothing,
    /// The endpoint halted: clear it (CLEAR_FEATURE), then read again.
    ClearStallAndRead,
    /// Read again.
    Read,
    /// Too many in a row: this read waits for the port's next open.
    Park,
}

fn after_failure(status: IOReturn, in_a_row: u32) -> AfterFailure {
    if status == IOReturn::ABORTED {
        AfterFailure::Nothing
    } else if in_a_row > READ_FAILURES {
        AfterFailure::Park
    } else if status == IOReturn::USB_PIPE_STALLED {
        AfterFailure::ClearStallAndRead
    } else {
        AfterFailure::Read
    }
}

#[derive(Default)]
pub struct FTDISerialDriverIvars {
    usb: WhileStarted<Usb>,
    /// What waits for room in the RX ring.
    held: Mutex<Held>,
    writing: AtomicBool,
    /// The line as last programmed: a baud change or a break keeps the rest.
    data_bits: AtomicU8,
    parity: AtomicU8,
    half_stop_bits: AtomicU8,
    last_status: Mutex<Option<ftdi::Status>>,
    /// Bulk-IN reads failed since one succeeded, and the reads parked for
    /// failing (`READ_FAILURES`) until the port opens again.
    read_failures: AtomicU32,
    failed: Mutex<Vec<usize>>,
}

/// Received bytes the RX ring had no room for, and the reads parked (not
/// resubmitted) until it has: the chip holds what comes meanwhile.
#[derive(Default)]
struct Held {
    bytes: Vec<u8>,
    reads: Vec<usize>,
}

struct Usb {
    interface: IOUSBHostInterface,
    bulk_out: IOUSBHostPipe,
    /// The reads in flight on the bulk-IN pipe (which they hold).
    reads: TransferSlots,
    write: (IOBufferMemoryDescriptor, OSAction),
}

#[driverkit::service(superclass = IOUserSerial, ivars = FTDISerialDriverIvars)]
pub struct FTDISerialDriver;

impl FTDISerialDriver {
    /// A vendor request to the chip, for its one port (`wIndex` 0, or the
    /// request's own high byte).
    fn vendor(&self, request: u8, value: u16, index: u16) -> IOResult<()> {
        self.ivars().usb.with(|u| {
            let setup = Setup::vendor_out(request, value, index);
            u.interface.device_request(setup, &[], TIMEOUT_MS).map(drop)
        })
    }

    fn program_line(&self, brk: bool) -> IOResult<()> {
        let i = self.ivars();
        self.vendor(
            ftdi::SET_DATA,
            ftdi::data_value(
                i.data_bits.load(Ordering::Relaxed),
                Parity::from_wire(i.parity.load(Ordering::Relaxed)).unwrap_or(Parity::None),
                i.half_stop_bits.load(Ordering::Relaxed),
                brk,
            ),
            0,
        )
    }

    /// A bulk-IN read failed (the transfer, or reading its buffer): read
    /// again, after clearing a halted endpoint, until too many fail in a
    /// row.
    fn read_failed(&self, slot: usize, status: IOReturn) {
        let in_a_row = self.ivars().read_failures.fetch_add(1, Ordering::Relaxed) + 1;
        match after_failure(status, in_a_row) {
            AfterFailure::Nothing => {}
            AfterFailure::Read => {
                driverkit::warn!("bulk IN read {slot}: {status}; reading again");
                self.submit_read(slot);
            }
            AfterFailure::ClearStallAndRead => {
                driverkit::warn!("bulk IN read {slot}: {status}; clearing the halt");
                if let Err(e) = self.ivars().usb.with(|u| u.reads.pipe().clear_stall(true)) {
                    driverkit::warn!("bulk IN: clearing the halt: {e}");
                }
                self.submit_read(slot);
            }
            AfterFailure::Park => {
                let mut failed = self.ivars().failed.locked();
                if failed.is_empty() {
                    driverkit::warn!(
                        "bulk IN: {in_a_row} reads failed in a row ({status}): reading stops until the port is opened again"
                    );
                }
                failed.push(slot);
            }
        }
    }

    fn submit_read(&self, slot: usize) {
        if let Err(e) = self.ivars().usb.with(|u| u.reads.read(slot)) {
            driverkit::warn!("bulk IN read {slot}: {e}");
        }
    }

    /// Starts a bulk-OUT transfer of what waits in the TX ring, unless one
    /// is in flight (its completion starts the next).
    fn send_pending(&self) {
        if self.ivars().writing.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut chunk = vec![0u8; WRITE];
        let n = self.tx_peek(&mut chunk);
        let sent = self.ivars().usb.with(|u| {
            if n == 0 {
                return Ok(false);
            }
            u.write.0.create_mapping()?.write(0, &chunk[..n])?;
            u.bulk_out.async_io(&u.write.0, n, &u.write.1, TIMEOUT_MS)?;
            Ok(true)
        });
        if !matches!(sent, Ok(true)) {
            self.ivars().writing.store(false, Ordering::Release);
        }
    }

    /// The modem lines of a packet's status, when they changed; its line
    /// errors.
    fn status(&self, status: ftdi::Status) {
        let mut last = self.ivars().last_status.locked();
        let modem = |s: &ftdi::Status| (s.cts, s.dsr, s.ri, s.dcd);
        if last.as_ref().map(modem) != Some(modem(&status)) {
            let _ = self.set_modem_status(ModemStatus {
                cts: status.cts,
                dsr: status.dsr,
                ri: status.ri,
                dcd: status.dcd,
            });
        }
        *last = Some(status);
        if status.has_error() {
            let _ = self.rx_error(status.overrun, status.brk, status.framing, status.parity);
        }
    }
}

impl IOServiceImpl for FTDISerialDriver {
    fn init(&self) -> IOResult<FTDISerialDriverIvars> {
        let ivars = FTDISerialDriverIvars::default();
        ivars.data_bits.store(8, Ordering::Relaxed);
        ivars
            .parity
            .store(Parity::None.to_wire(), Ordering::Relaxed);
        ivars.half_stop_bits.store(2, Ordering::Relaxed);
        Ok(ivars)
    }

    fn start(&self, provider: &IOService) -> IOResult<()> {
        self.super_start(provider)?;
        let interface = IOUSBHostInterface::from_provider(provider);
        let bulk_in = interface.copy_pipe_of(TransferType::Bulk, Direction::In)?;
        let bulk_out = interface.copy_pipe_of(TransferType::Bulk, Direction::Out)?;
        let reads =
            TransferSlots::create(bulk_in, READS, READ, || self.create_action_read_done(1))?;
        let write = (
            IOBufferMemoryDescriptor::create(WRITE)?,
            self.create_action_write_done(0)?,
        );
        self.ivars().usb.set(Usb {
            interface,
            bulk_out,
            reads,
            write,
        });
        self.vendor(ftdi::RESET, ftdi::RESET_SIO, 0)?;
        self.program_line(false)?;
        for slot in 0..READS {
            self.submit_read(slot);
        }
        self.register_service()?;
        driverkit::info!("start: FT232 on bulk IN and OUT");
        Ok(())
    }

    fn stop(&self, provider: &IOService) -> IOResult<()> {
        let usb = self.ivars().usb.take();
        if let Some(u) = usb {
            let _ = u.reads.pipe().abort();
            let _ = u.bulk_out.abort();
        }
        driverkit::info!("stop");
        self.super_stop(provider)
    }
}

impl IOUserSerialImpl for FTDISerialDriver {
    fn tx_data_available(&self) {
        self.send_pending();
    }

    /// Held bytes first, then the parked reads go out again.
    fn rx_free_space_available(&self) {
        let parked = {
            let mut held = self.ivars().held.locked();
            let n = self.rx_put(&held.bytes);
            held.bytes.drain(..n);
            if !held.bytes.is_empty() {
                return;
            }
            std::mem::take(&mut held.reads)
        };
        for slot in parked {
            self.submit_read(slot);
        }
    }

    fn hw_activate(&self) -> IOResult<()> {
        driverkit::info!("hw_activate");
        // Reads parked for failing get another chance.
        let failed = std::mem::take(&mut *self.ivars().failed.locked());
        self.ivars().read_failures.store(0, Ordering::Relaxed);
        for slot in failed {
            self.submit_read(slot);
        }
        self.vendor(ftdi::MODEM_CTRL, ftdi::modem_ctrl_value(true, true), 0)
    }

    fn hw_deactivate(&self) -> IOResult<()> {
        driverkit::info!("hw_deactivate");
        self.vendor(ftdi::MODEM_CTRL, ftdi::modem_ctrl_value(false, false), 0)
    }

    fn hw_program_uart(
        &self,
        baud: u32,
        data_bits: u8,
        half_stop_bits: u8,
        parity: Parity,
    ) -> IOResult<()> {
        driverkit::info!("hw_program_uart({baud}, {data_bits}, {half_stop_bits}, {parity:?})");
        // The chip has 7 or 8 data bits, and one or two stop bits.
        if !(7..=8).contains(&data_bits) || half_stop_bits == 3 {
            return Err(IOReturn::UNSUPPORTED);
        }
        let i = self.ivars();
        i.data_bits.store(data_bits, Ordering::Relaxed);
        i.half_stop_bits.store(half_stop_bits, Ordering::Relaxed);
        i.parity.store(parity.to_wire(), Ordering::Relaxed);
        self.program_line(false)?;
        self.hw_program_baud_rate(baud)
    }

    fn hw_program_baud_rate(&self, baud: u32) -> IOResult<()> {
        let (value, index) = ftdi::baud_divisor(baud).ok_or(IOReturn::BAD_ARGUMENT)?;
        driverkit::info!(
            "hw_program_baud_rate({baud}): divisor {value:#06x}/{index} ({} baud)",
            ftdi::baud_of(value, index)
        );
        self.vendor(ftdi::SET_BAUD_RATE, value, index)?;
        self.set_property("BaudRate", i64::from(baud))
    }

    fn hw_reset_fifo(&self, tx: bool, rx: bool) -> IOResult<()> {
        if rx {
            self.vendor(ftdi::RESET, ftdi::PURGE_RX, 0)?;
        }
        if tx {
            self.vendor(ftdi::RESET, ftdi::PURGE_TX, 0)?;
        }
        Ok(())
    }

    fn hw_send_break(&self, send: bool) -> IOResult<()> {
        self.program_line(send)
    }

    fn hw_program_mcr(&self, dtr: bool, rts: bool) -> IOResult<()> {
        self.vendor(ftdi::MODEM_CTRL, ftdi::modem_ctrl_value(dtr, rts), 0)
    }

    fn hw_get_modem_status(&self) -> IOResult<ModemStatus> {
        let bytes = self.ivars().usb.with(|u| {
            let setup = Setup::vendor_in(ftdi::GET_MODEM_STATUS, 0, 0, 2);
            u.interface.device_request(setup, &[], TIMEOUT_MS)
        })?;
        let s = ftdi::Status::parse(&bytes).ok_or(IOReturn::IO_ERROR)?;
        Ok(ModemStatus {
            cts: s.cts,
            dsr: s.dsr,
            ri: s.ri,
            dcd: s.dcd,
        })
    }

    fn hw_program_flow_control(&self, flow: FlowControl, xon: u8, xoff: u8) -> IOResult<()> {
        let (value, index) =
            ftdi::flow_value(flow.rts_cts(), flow.dtr_dsr(), flow.xon_xoff(), xon, xoff);
        self.vendor(ftdi::SET_FLOW_CTRL, value, index)
    }

    fn hw_program_latency_timer(&self, latency_ms: u32) -> IOResult<()> {
        let ms = u16::try_from(latency_ms)
            .ok()
            .filter(|ms| (1..=255).contains(ms))
            .ok_or(IOReturn::BAD_ARGUMENT)?;
        self.vendor(ftdi::SET_LATENCY_TIMER, ms, 0)
    }
}

#[driverkit::actions]
impl FTDISerialDriver {
    /// A bulk-IN packet: status, then bytes for the tty.
    #[action(IOService::CompleteAsync)]
    fn read_done(&self, action: &OSAction, status: IOReturn, actual: u64) {
        let slot = TransferSlots::slot_of(action);
        let read = if status == IOReturn::SUCCESS {
            self.ivars().usb.with(|u| u.reads.received(slot, actual))
        } else {
            Err(status)
        };
        let transfer = match read {
            Ok(transfer) => transfer,
            Err(e) => return self.read_failed(slot, e),
        };
        self.ivars().read_failures.store(0, Ordering::Relaxed);
        // Each packet of the transfer: its status, then its data.
        let mut data = Vec::with_capacity(transfer.len());
        for packet in transfer.chunks(ftdi::MAX_PACKET) {
            if let Some(s) = ftdi::Status::parse(packet) {
                self.status(s);
            }
            data.extend_from_slice(packet.get(2..).unwrap_or_default());
        }
        let data = &data[..];
        let mut held = self.ivars().held.locked();
        let n = if held.bytes.is_empty() {
            self.rx_put(data)
        } else {
            0
        };
        if n < data.len() {
            held.bytes.extend_from_slice(&data[n..]);
            held.reads.push(slot);
            return;
        }
        drop(held);
        self.submit_read(slot);
    }

    /// A bulk-OUT transfer ended: its bytes leave the TX ring; the next
    /// goes.
    #[action(IOService::CompleteAsync)]
    fn write_done(&self, _action: &OSAction, status: IOReturn, actual: u64) {
        if status == IOReturn::SUCCESS {
            self.tx_consume(actual as usize);
        } else if status != IOReturn::ABORTED {
            driverkit::warn!("bulk OUT: {status}");
        }
        self.ivars().writing.store(false, Ordering::Release);
        if status != IOReturn::ABORTED {
            self.send_pending();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use driverkit::runtime::instantiate;

    #[test]
    fn a_line_the_chip_cannot_carry_is_refused_before_it_is_asked() {
        // The driver as `init` leaves it, outside any daemon (no chip).
        let d = instantiate::<FTDISerialDriver>().unwrap();
        // The FT232 has 7 or 8 data bits and no 1.5 stop bits.
        assert_eq!(
            d.hw_program_uart(9600, 5, 2, Parity::None),
            Err(IOReturn::UNSUPPORTED)
        );
        assert_eq!(
            d.hw_program_uart(9600, 8, 3, Parity::None),
            Err(IOReturn::UNSUPPORTED)
        );
        // A line it carries is kept, then asked of the chip (absent here).
        assert_eq!(
            d.hw_program_uart(9600, 7, 4, Parity::Even),
            Err(IOReturn::NOT_READY)
        );
        let i = d.ivars();
        assert_eq!(i.data_bits.load(Ordering::Relaxed), 7);
        assert_eq!(i.half_stop_bits.load(Ordering::Relaxed), 4);
        assert_eq!(
            Parity::from_wire(i.parity.load(Ordering::Relaxed)),
            Some(Parity::Even)
        );
    }

    #[test]
    fn init_leaves_8n1_and_calls_without_a_chip_say_not_ready() {
        let d = instantiate::<FTDISerialDriver>().unwrap();
        let i = d.ivars();
        assert_eq!(i.data_bits.load(Ordering::Relaxed), 8);
        assert_eq!(i.half_stop_bits.load(Ordering::Relaxed), 2);
        assert_eq!(
            Parity::from_wire(i.parity.load(Ordering::Relaxed)),
            Some(Parity::None)
        );
        assert_eq!(d.hw_get_modem_status().err(), Some(IOReturn::NOT_READY));
        assert_eq!(d.hw_program_mcr(true, true), Err(IOReturn::NOT_READY));
        assert_eq!(
            d.hw_program_flow_control(FlowControl::from_wire(flow_bits()), 0x11, 0x13),
            Err(IOReturn::NOT_READY)
        );
    }

    fn flow_bits() -> u32 {
        driverkit::serial::flow::CTS | driverkit::serial::flow::RTS
    }

    #[test]
    fn failed_reads_are_read_again_a_few_times_then_park() {
        let stall = IOReturn::USB_PIPE_STALLED;
        assert_eq!(after_failure(IOReturn::ABORTED, 1), AfterFailure::Nothing);
        assert_eq!(after_failure(stall, 1), AfterFailure::ClearStallAndRead);
        assert_eq!(after_failure(IOReturn::IO_ERROR, 1), AfterFailure::Read);
        assert_eq!(
            after_failure(IOReturn::IO_ERROR, READ_FAILURES),
            AfterFailure::Read
        );
        // A chip that keeps stalling is not read in a loop.
        assert_eq!(after_failure(stall, READ_FAILURES + 1), AfterFailure::Park);
        assert_eq!(after_failure(IOReturn::ABORTED, 100), AfterFailure::Nothing);
    }
}

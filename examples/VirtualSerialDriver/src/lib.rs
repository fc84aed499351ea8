//! VirtualSerialDriver: a serial port over the virtual UART.
//!
//! Its personality matches an `IOUARTDevice` and names `IOUserSerial` as
//! its class, so the system gives its port a tty (`IOCalloutDevice` in the
//! registry) that picocom, screen or pyserial open like any other. The
//! driver moves bytes between the port's rings and the UART's FIFOs:
//!
//! - `tx_data_available` (a program wrote) and the UART's "room to
//!   transmit" interrupt: TX ring → UART, as much as the UART takes;
//! - the UART's "received" interrupt and `rx_free_space_available` (a
//!   reader caught up): UART → RX ring, as much as the ring holds.
//!
//! Nothing is dropped: what does not fit stays where it is until the next
//! notification. Line settings go to the UART; the modem status interrupt
//! goes to the system. Everything runs on the `Default` queue, so the
//! driver needs no lock of its own.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

use driverkit::prelude::*;
use driverkit::serial::{FlowControl, Parity};

/// The bundle's Info.plist, for hosts that assemble the bundle themselves.
pub const INFO_PLIST: &str = include_str!("../Info.plist");

/// What the driver is entitled to: `Entitlements.plist`, installed in its bundle.
pub const ENTITLEMENTS: &str = include_str!("../Entitlements.plist");

/// Bytes moved per step between the rings and the UART.
const STEP: usize = 64 * 1024;

#[derive(Default)]
pub struct VirtualSerialDriverIvars {
    uart: Mutex<Option<IOUARTDevice>>,
    interrupts: Mutex<Vec<IOInterruptDispatchSource>>,
    /// The line as last programmed: a baud change keeps the rest.
    data_bits: AtomicU32,
    half_stop_bits: AtomicU32,
    parity: AtomicU32,
    activations: AtomicU64,
    fifo_resets: AtomicU64,
    /// Where TX bytes wait on their way to the UART (made once: a step is
    /// 64 KiB).
    tx_buffer: Mutex<Vec<u8>>,
    /// Bytes handed to the UART, and those reported sent (`tx_sent`).
    transmitted: AtomicU64,
    reported_sent: AtomicU64,
}

#[driverkit::service(superclass = IOUserSerial, ivars = VirtualSerialDriverIvars)]
pub struct VirtualSerialDriver;

impl VirtualSerialDriver {
    fn uart(&self) -> IOResult<IOUARTDevice> {
        self.ivars().uart.locked().ok_or(IOReturn::NOT_READY)
    }

    /// TX ring → UART, until either is done.
    fn transmit_pending(&self) {
        let Ok(uart) = self.uart() else { return };
        let mut buf = self.ivars().tx_buffer.locked();
        buf.resize(STEP, 0);
        let mut in_fifo = None;
        loop {
            let n = self.tx_peek(&mut buf);
            if n == 0 {
                break;
            }
            let Ok((taken, level)) = uart.transmit(&buf[..n]) else {
                break;
            };
            self.tx_consume(taken);
            self.ivars()
                .transmitted
                .fetch_add(taken as u64, Ordering::Relaxed);
            in_fifo = Some(level);
            if taken < n {
                break; // the UART's interrupt 1 says when there is room
            }
        }
        // The FIFO's level came with the last transmit; else it is read.
        let level = match in_fifo {
            Some(level) => Ok(level),
            None => uart.transmit_pending(),
        };
        if let Ok(level) = level {
            self.report_sent(level);
        }
    }

    /// Tells the system what left the UART: what it was given less what
    /// its transmit FIFO (`in_fifo`) still holds.
    fn report_sent(&self, in_fifo: usize) {
        let i = self.ivars();
        let sent = i.transmitted.load(Ordering::Relaxed) - in_fifo as u64;
        let reported = i.reported_sent.load(Ordering::Relaxed);
        if sent > reported {
            i.reported_sent.store(sent, Ordering::Relaxed);
            self.tx_sent((sent - reported) as usize);
        }
    }

    /// UART → RX ring, until either is done.
    fn receive_pending(&self) {
        let Ok(uart) = self.uart() else { return };
        loop {
            let room = self.rx_free_space();
            if room == 0 {
                return; // rx_free_space_available says when there is room
            }
            let asked = room.min(STEP);
            let data = uart.receive(asked).unwrap_or_default();
            self.rx_put(&data);
            if data.len() < asked {
                return; // the FIFO is empty; interrupt 0 says when it is not
            }
        }
    }

    fn program(&self, baud: u32) -> IOResult<()> {
        let i = self.ivars();
        self.uart()?.set_line(
            baud,
            i.data_bits.load(Ordering::Relaxed) as u8,
            i.half_stop_bits.load(Ordering::Relaxed) as u8,
            Parity::from_wire(i.parity.load(Ordering::Relaxed) as u8).unwrap_or(Parity::None),
        )?;
        self.set_property("BaudRate", i64::from(baud))
    }
}

impl IOServiceImpl for VirtualSerialDriver {
    fn init(&self) -> IOResult<VirtualSerialDriverIvars> {
        let ivars = VirtualSerialDriverIvars::default();
        ivars.data_bits.store(8, Ordering::Relaxed);
        ivars.half_stop_bits.store(2, Ordering::Relaxed);
        ivars
            .parity
            .store(Parity::None.to_wire().into(), Ordering::Relaxed);
        Ok(ivars)
    }

    fn start(&self, provider: &IOService) -> IOResult<()> {
        self.super_start(provider)?;
        *self.ivars().uart.locked() = Some(IOUARTDevice::from_provider(provider));
        let queue = self.copy_dispatch_queue("Default")?;
        // The UART's interrupts 0, 1 and 2, in that order.
        let actions = [
            self.create_action_received(0)?,
            self.create_action_transmit_room(0)?,
            self.create_action_modem_changed(0)?,
        ];
        *self.ivars().interrupts.locked() =
            IOInterruptDispatchSource::create_all(provider, &queue, &actions)?;
        self.register_service()?;
        driverkit::info!("start: a serial port over the virtual UART");
        Ok(())
    }

    fn stop(&self, provider: &IOService) -> IOResult<()> {
        let sources = std::mem::take(&mut *self.ivars().interrupts.locked());
        IOInterruptDispatchSource::cancel_all(sources)?;
        driverkit::info!("stop");
        self.super_stop(provider)
    }
}

impl IOUserSerialImpl for VirtualSerialDriver {
    /// The UART's FIFO level says what has left it.
    const REPORTS_TX_SENT: bool = true;

    /// Sends what the program wrote, then looks at the receive FIFO as a
    /// UART's interrupt handler does: with the loopback plug, the bytes are
    /// back already, and taking them now saves their interrupt's hop.
    fn tx_data_available(&self) {
        self.transmit_pending();
        self.receive_pending();
    }

    fn rx_free_space_available(&self) {
        self.receive_pending();
    }

    fn hw_activate(&self) -> IOResult<()> {
        let n = self.ivars().activations.fetch_add(1, Ordering::Relaxed) + 1;
        driverkit::info!("hw_activate");
        self.uart()?.set_modem_control(true, true)?;
        self.set_property("Activations", n as i64)
    }

    fn hw_deactivate(&self) -> IOResult<()> {
        driverkit::info!("hw_deactivate");
        self.uart()?.set_modem_control(false, false)?;
        self.set_property("Active", false)
    }

    fn hw_program_uart(
        &self,
        baud: u32,
        data_bits: u8,
        half_stop_bits: u8,
        parity: Parity,
    ) -> IOResult<()> {
        driverkit::info!("hw_program_uart({baud}, {data_bits}, {half_stop_bits}, {parity:?})");
        let i = self.ivars();
        i.data_bits.store(data_bits.into(), Ordering::Relaxed);
        i.half_stop_bits
            .store(half_stop_bits.into(), Ordering::Relaxed);
        i.parity.store(parity.to_wire().into(), Ordering::Relaxed);
        self.program(baud)?;
        self.set_property("Active", true)
    }

    fn hw_program_baud_rate(&self, baud: u32) -> IOResult<()> {
        driverkit::info!("hw_program_baud_rate({baud})");
        self.program(baud)
    }

    fn hw_send_break(&self, send: bool) -> IOResult<()> {
        self.uart()?.set_break(send)
    }

    fn hw_reset_fifo(&self, tx: bool, rx: bool) -> IOResult<()> {
        driverkit::info!("hw_reset_fifo(tx {tx}, rx {rx})");
        let uart = self.uart()?;
        uart.reset_fifo(tx, rx)?;
        // What the FIFO held is gone: the system must not wait for it.
        self.report_sent(uart.transmit_pending()?);
        let n = self.ivars().fifo_resets.fetch_add(1, Ordering::Relaxed) + 1;
        self.set_property("FIFOResets", n as i64)
    }

    fn hw_program_mcr(&self, dtr: bool, rts: bool) -> IOResult<()> {
        self.uart()?.set_modem_control(dtr, rts)
    }

    fn hw_get_modem_status(&self) -> IOResult<ModemStatus> {
        self.uart()?.modem_status()
    }

    /// The loopback plug has no flow of its own to program; the setting is
    /// kept so that `ioreg` shows what the program asked for.
    fn hw_program_flow_control(&self, flow: FlowControl, xon: u8, xoff: u8) -> IOResult<()> {
        driverkit::info!("hw_program_flow_control({flow:?}, {xon:#04x}, {xoff:#04x})");
        self.set_property("FlowControl", i64::from(flow.to_wire()))
    }
}

#[driverkit::actions]
impl VirtualSerialDriver {
    /// UART interrupt 0: received bytes wait.
    #[action(IOInterruptDispatchSource::InterruptOccurred)]
    fn received(&self, _action: &OSAction, _count: u64, _time: u64) {
        self.receive_pending();
    }

    /// UART interrupt 1: room to transmit again, or the FIFO emptied.
    #[action(IOInterruptDispatchSource::InterruptOccurred)]
    fn transmit_room(&self, _action: &OSAction, _count: u64, _time: u64) {
        self.transmit_pending();
    }

    /// UART interrupt 2: the modem status inputs changed.
    #[action(IOInterruptDispatchSource::InterruptOccurred)]
    fn modem_changed(&self, _action: &OSAction, _count: u64, _time: u64) {
        if let Ok(status) = self.uart().and_then(|u| u.modem_status()) {
            let _ = self.set_modem_status(status);
        }
    }
}

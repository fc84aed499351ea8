//! SerialDriverKit: a serial port whose tty the system holds.
//!
//! A driver names `IOUserSerial` as its superclass. Once its `start` has
//! succeeded, the SDK connects the port's queues (`ConnectQueues`): an RX
//! ring the driver fills and a TX ring the driver drains, in shared memory
//! with the system, which then makes the port's node (a CUSE device, or a
//! pty whose bytes this process moves: `tty.rs` says why), its path in the
//! registry as `IOCalloutDevice`. From then on, on the service's `Default`
//! queue:
//!
//! - opening the tty runs [`IOUserSerialImpl::hw_activate`], its last close
//!   [`IOUserSerialImpl::hw_deactivate`];
//! - `tcsetattr` runs `hw_program_uart` / `hw_program_baud_rate` /
//!   `hw_program_flow_control`, `tcflush` runs `hw_reset_fifo`;
//! - bytes a program wrote run [`IOUserSerialImpl::tx_data_available`]: the
//!   driver takes them with [`IOUserSerialApi::tx_take`] (or `tx_peek` and
//!   `tx_consume`, when the hardware takes only part) and sends them;
//! - the driver hands received bytes to the tty with
//!   [`IOUserSerialApi::rx_put`]; when the ring is full (a slow reader), it
//!   takes what fits (`rx_free_space` says how much would), and
//!   [`IOUserSerialImpl::rx_free_space_available`] runs once there is room
//!   again. Nothing is dropped on the way: the
//!   driver holds back (and its hardware with it).
//!
//! ```text
//! impl IOUserSerialImpl for MyUart {
//!     fn tx_data_available(&self) {
//!         let mut buf = [0u8; 512];
//!         let n = self.tx_peek(&mut buf);
//!         let sent = self.ivars().hardware.send(&buf[..n]);
//!         self.tx_consume(sent);
//!     }
//!     fn hw_program_baud_rate(&self, baud: u32) -> IOResult<()> { ... }
//!     ...
//! }
//! ```

use driverkit_wire::sync::Locked;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use driverkit_wire::interfaces::{
    io_service_interface, io_user_serial_interface, IOUserSerialInterface,
};
use driverkit_wire::serial::{SerialPortInterface, DRIVER_BELL, RX_DATA_BELL, TX_SPACE_BELL};
use driverkit_wire::shm::SPIN;
use driverkit_wire::{IOResult, IOReturn, MethodId, ObjectId};

mod tty;

use crate::queue::IODispatchQueue;
use crate::runtime::{ClassDispatch, Service, SystemCaller};
use crate::service::{IOService, IOServiceImpl};
use crate::watcher::Watcher;

pub use driverkit_wire::serial::{flow, FlowControl, Parity};

/// The superclass of serial port drivers:
/// `#[driverkit::service(superclass = IOUserSerial, ...)]`.
pub struct IOUserSerial;

/// Ring sizes: 64 KiB each way, a few hundred milliseconds at the fastest
/// USB UARTs and many seconds at usual rates.
const RING_LOG2: u32 = 16;

/// The modem status inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ModemStatus {
    /// Clear To Send.
    pub cts: bool,
    /// Data Set Ready.
    pub dsr: bool,
    /// Ring Indicator.
    pub ri: bool,
    /// Data Carrier Detect.
    pub dcd: bool,
}

/// What a serial port driver overrides. The `hw_*` methods run when a
/// program changes the tty (or `driverkit serial set` asks); every one has
/// a default but `tx_data_available`, `hw_program_uart` and
/// `hw_program_baud_rate`: a driver that cannot do something says so
/// (`kIOReturnUnsupported`), and the system reports it to whoever asked.
pub trait IOUserSerialImpl: IOServiceImpl {
    /// Whether the driver calls `tx_sent` as its hardware sends what it
    /// took from the TX ring. Without it, bytes count as sent once taken,
    /// and `tcdrain` returns while they may still be in the hardware.
    const REPORTS_TX_SENT: bool = false;

    /// Bytes waiting in the TX ring: take them (`tx_take`, or `tx_peek` and
    /// `tx_consume`) and send them. What is left stays for later: run again
    /// when the hardware has room (an interrupt, a completion).
    fn tx_data_available(&self);

    /// Room again in the RX ring after `rx_put` found it full.
    fn rx_free_space_available(&self) {}

    /// The tty was opened.
    fn hw_activate(&self) -> IOResult<()> {
        Ok(())
    }

    /// The tty's last close.
    fn hw_deactivate(&self) -> IOResult<()> {
        Ok(())
    }

    /// The line format: baud, data bits (5 to 8), stop bits in halves (2,
    /// 3, 4) and parity, checked by the SDK before the call.
    fn hw_program_uart(
        &self,
        baud: u32,
        data_bits: u8,
        half_stop_bits: u8,
        parity: Parity,
    ) -> IOResult<()>;

    /// Program the line's rate (any rate a program asks for, `BOTHER`).
    fn hw_program_baud_rate(&self, baud: u32) -> IOResult<()>;

    /// Empty the hardware's FIFOs (the rings are emptied by the SDK).
    fn hw_reset_fifo(&self, tx: bool, rx: bool) -> IOResult<()> {
        let _ = (tx, rx);
        Ok(())
    }

    /// Start (`send`) or end a break on the line.
    fn hw_send_break(&self, send: bool) -> IOResult<()> {
        let _ = send;
        Err(IOReturn::UNSUPPORTED)
    }

    /// Set the modem control outputs, DTR and RTS.
    fn hw_program_mcr(&self, dtr: bool, rts: bool) -> IOResult<()> {
        let _ = (dtr, rts);
        Err(IOReturn::UNSUPPORTED)
    }

    /// The modem status inputs, as the chip reports them now.
    fn hw_get_modem_status(&self) -> IOResult<ModemStatus> {
        Err(IOReturn::UNSUPPORTED)
    }

    /// Which flow control is on, and the XON and XOFF characters.
    fn hw_program_flow_control(&self, flow: FlowControl, xon: u8, xoff: u8) -> IOResult<()> {
        let _ = (flow, xon, xoff);
        Err(IOReturn::UNSUPPORTED)
    }

    /// How long the chip may hold received bytes before it sends them.
    fn hw_program_latency_timer(&self, latency_ms: u32) -> IOResult<()> {
        let _ = latency_ms;
        Err(IOReturn::UNSUPPORTED)
    }
}

/// What a serial port driver may ask of the system.
pub trait IOUserSerialApi: Service {
    /// Takes up to `out.len()` bytes of the TX ring; returns how many.
    fn tx_take(&self, out: &mut [u8]) -> usize {
        let n = self.tx_peek(out);
        self.tx_consume(n);
        n
    }

    /// Copies up to `out.len()` bytes of the TX ring without taking them.
    fn tx_peek(&self, out: &mut [u8]) -> usize {
        port(self).map_or(0, |p| p.port.tx().peek(out).unwrap_or(0))
    }

    /// Takes `n` bytes `tx_peek` showed, and tells the system there is
    /// room (`TxFreeSpaceAvailable`).
    fn tx_consume(&self, n: usize) {
        if let Ok(p) = port(self) {
            if p.port.tx().consume(n).unwrap_or(0) > 0 {
                p.room_made();
            }
        }
    }

    /// `TxSent`: the hardware has sent `n` more of the bytes taken from
    /// the TX ring (a transfer completed, the transmit FIFO drained). Only
    /// for a driver whose `REPORTS_TX_SENT` is true: the system then
    /// answers `tcdrain` and bounds a writer by what the hardware sent,
    /// not by what the driver took.
    fn tx_sent(&self, n: usize) {
        if let Ok(p) = port(self) {
            if n > 0 {
                p.port.add_sent(n as u32);
                p.port.bell(TX_SPACE_BELL).ring();
            }
        }
    }

    /// Bytes in the TX ring.
    fn tx_pending(&self) -> usize {
        port(self).map_or(0, |p| p.port.tx().used().unwrap_or(0) as usize)
    }

    /// Hands received bytes to the tty: as many as fit, returned. When not
    /// all fit, `rx_free_space_available` runs once there is room.
    fn rx_put(&self, data: &[u8]) -> usize {
        let Ok(p) = port(self) else { return 0 };
        let rx = p.port.rx();
        let mut n = rx.write(data).unwrap_or(0);
        if n > 0 {
            p.rx_data_available();
        }
        if n < data.len() {
            if p.tty().is_some() {
                // The tty may have taken the ring's bytes just now.
                let more = rx.write(&data[n..]).unwrap_or(0);
                if more > 0 {
                    n += more;
                    p.rx_data_available();
                }
            }
            if n < data.len() {
                p.port.set_rx_blocked(true);
                // The room may have come between the write and the flag.
                p.wake_watcher();
            }
        }
        n
    }

    /// Room in the RX ring. When there is none, `rx_free_space_available`
    /// runs once there is.
    fn rx_free_space(&self) -> usize {
        let Ok(p) = port(self) else { return 0 };
        let free = p.port.rx().free().unwrap_or(0) as usize;
        if free == 0 {
            p.port.set_rx_blocked(true);
            p.wake_watcher();
        }
        free
    }

    /// `RxDataAvailable`, for drivers that move the RX producer index
    /// themselves (`serial_port_interface`); `rx_put` does it already.
    fn rx_data_available(&self) {
        if let Ok(p) = port(self) {
            p.rx_data_available();
        }
    }

    /// `TxFreeSpaceAvailable`, for drivers that move the TX consumer index
    /// themselves; `tx_consume` does it already.
    fn tx_free_space_available(&self) {
        if let Ok(p) = port(self) {
            p.room_made();
        }
    }

    /// The port's rings and indices, as DriverKit's `SerialPortInterface`.
    fn serial_port_interface(&self) -> IOResult<Arc<SerialPortInterface>> {
        Ok(port(self)?.port.clone())
    }

    /// `RxError`: the hardware saw a receive error; the system counts it
    /// (ioreg's `IOSerialErrors`).
    fn rx_error(&self, overrun: bool, gotbreak: bool, framing: bool, parity: bool) -> IOResult<()> {
        proxy(self).rx_error(overrun, gotbreak, framing, parity)
    }

    /// `SetModemStatus`: the modem status inputs changed.
    fn set_modem_status(&self, status: ModemStatus) -> IOResult<()> {
        proxy(self).set_modem_status(status.cts, status.dsr, status.ri, status.dcd)
    }
}

impl<S: Service<Superclass = IOUserSerial>> IOUserSerialApi for S {}

fn proxy<S: Service>(s: &S) -> io_user_serial_interface::Proxy<'static, SystemCaller> {
    io_user_serial_interface::Proxy {
        caller: &SystemCaller,
        object: ObjectId(s.registry_entry_id()),
        flags: 0,
    }
}

/// The family's state in a serial service: the port's region and the
/// thread that turns what happens to it into calls on the queue: the
/// tty's pump where this process moves the tty's bytes, else a watcher of
/// the system's doorbell.
struct Port {
    port: Arc<SerialPortInterface>,
    /// `txPI` when `tx_data_available` last ran.
    tx_seen: AtomicU32,
    /// `TELL_*` bits a job on the queue is to tell the driver.
    to_tell: AtomicU32,
    /// The tty this process pumps; gone when the system ends the port.
    tty: Mutex<Option<Arc<tty::TtyPump>>>,
    watcher: Watcher,
}

impl Port {
    fn tty(&self) -> Option<Arc<tty::TtyPump>> {
        self.tty.locked().clone()
    }

    /// New bytes in the RX ring: into the tty now, or the system's pump
    /// is told.
    fn rx_data_available(&self) {
        match self.tty() {
            Some(t) => {
                if !t.flush_rx(&self.port) {
                    t.wake(); // the rest once the tty takes it
                }
            }
            None => self.port.bell(RX_DATA_BELL).notify(),
        }
    }

    /// The driver took TX bytes.
    fn room_made(&self) {
        match self.tty() {
            Some(t) => t.room_made(),
            None => self.port.bell(TX_SPACE_BELL).notify(),
        }
    }

    /// Makes the watcher (or pump) look at the rings again.
    fn wake_watcher(&self) {
        match self.tty() {
            Some(t) => t.wake(),
            None => {
                self.port.bell(DRIVER_BELL).ring();
            }
        }
    }
}

fn port<S: Service>(s: &S) -> IOResult<Arc<Port>> {
    s.base().family::<Port>().ok_or(IOReturn::NOT_OPEN)
}

/// Connects the queues once the driver has started: the system makes the
/// tty when this returns.
fn connect<S: IOUserSerialImpl>(service: &S) -> IOResult<()> {
    let interface = Arc::new(SerialPortInterface::create(RING_LOG2, RING_LOG2)?);
    if S::REPORTS_TX_SENT {
        interface.set_reports_sent();
    }
    let memory = crate::runtime::register_memory(interface.memory())?;
    let p = Arc::new(Port {
        port: interface,
        tx_seen: AtomicU32::new(0),
        to_tell: AtomicU32::new(0),
        tty: Mutex::new(None),
        watcher: Watcher::default(),
    });
    service.base().set_family(p.clone())?;
    let queue = service.copy_dispatch_queue("Default")?;
    let me = service.base().weak_self().ok_or(IOReturn::NOT_READY)?;
    let (master, control) = proxy(service).connect_queues(memory)?;
    let pump = if master != 0 {
        let take = crate::runtime::take_system_memory;
        let pump =
            tty::TtyPump::new(take(master)?, take(control)?).map_err(|_| IOReturn::NO_RESOURCES)?;
        Some(Arc::new(pump))
    } else {
        None
    };
    *p.tty.locked() = pump.clone();
    let p2 = p.clone();
    match pump {
        Some(t) => p
            .watcher
            .start("serial-port", move || pump_tty::<S>(&p2, &t, &queue, &me)),
        None => p
            .watcher
            .start("serial-port", move || watch::<S>(&p2, &queue, &me)),
    }
}

/// After it, neither notification runs again.
fn disconnect<S: Service>(service: &S) {
    let Ok(p) = port(service) else { return };
    p.watcher.cancel(|| p.wake_watcher());
}

type Me = std::sync::Weak<dyn std::any::Any + Send + Sync>;

/// Where the system pumps the tty (a CUSE node): waits on the driver's
/// doorbell and tells the driver what changed.
fn watch<S: IOUserSerialImpl>(p: &Arc<Port>, queue: &IODispatchQueue, me: &Me) {
    let port = &p.port;
    while !p.watcher.is_cancelled() {
        let deadline = Some(Instant::now() + Duration::from_millis(250));
        let ready = || p.new_tx() || p.room() || p.watcher.is_cancelled();
        if !port.bell(DRIVER_BELL).wait(SPIN, deadline, ready) {
            continue;
        }
        if p.watcher.is_cancelled() || !notify::<S>(p, queue, me, Handoff::Here) {
            return;
        }
    }
}

/// Where this process pumps the tty (a pty): one turn of the pump, then
/// the driver is told what changed; until the port ends.
fn pump_tty<S: IOUserSerialImpl>(
    p: &Arc<Port>,
    t: &tty::TtyPump,
    queue: &IODispatchQueue,
    me: &Me,
) {
    while !p.watcher.is_cancelled() {
        let turn = t.turn(&p.port);
        let handoff = if turn.read >= tty::STREAMING {
            Handoff::Queue
        } else {
            Handoff::Here
        };
        if turn.ended || !notify::<S>(p, queue, me, handoff) {
            break;
        }
    }
    // The master closes with its last holder: the tty hangs up.
    *p.tty.locked() = None;
}

impl Port {
    /// TX bytes the driver has not been told of.
    fn new_tx(&self) -> bool {
        self.port.tx().producer_index() != self.tx_seen.load(Ordering::Acquire)
    }

    /// Room in the RX ring for a driver that waits for it.
    fn room(&self) -> bool {
        self.port.rx_blocked() && self.port.rx().free().is_ok_and(|f| f > 0)
    }
}

/// What the driver is to be told, gathered until a job on its queue tells
/// it: `tx_data_available`, then `rx_free_space_available`.
const TELL_TX: u32 = 1;
const TELL_ROOM: u32 = 2;

/// How the pump hands the driver its notifications.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Handoff {
    /// On this thread when the queue is idle (one hand-off fewer: a byte's
    /// way through an idle port), else on the queue, waited for.
    Here,
    /// On the queue, not waited for, so that this thread goes back to the
    /// tty while the driver works: a streaming writer's bytes then reach
    /// the driver in batches instead of a driver's turn per pty read.
    Queue,
}

/// Tells the driver what changed, by `handoff`: `tx_data_available` for
/// TX bytes not yet announced, then `rx_free_space_available` when the
/// driver waits for room. A job already queued takes what it finds when it
/// runs. False when the queue is gone.
fn notify<S: IOUserSerialImpl>(
    p: &Arc<Port>,
    queue: &IODispatchQueue,
    me: &Me,
    handoff: Handoff,
) -> bool {
    let port = &p.port;
    let mut tell = 0;
    if p.new_tx() {
        p.tx_seen
            .store(port.tx().producer_index(), Ordering::Release);
        tell |= TELL_TX;
    }
    if p.room() {
        port.set_rx_blocked(false);
        tell |= TELL_ROOM;
    }
    if tell == 0 || p.to_tell.fetch_or(tell, Ordering::AcqRel) != 0 {
        return true;
    }
    let job = {
        let (me, p) = (me.clone(), p.clone());
        move || {
            let tell = p.to_tell.swap(0, Ordering::AcqRel);
            let Some(s) = me.upgrade().and_then(|s| s.downcast::<S>().ok()) else {
                return;
            };
            if tell & TELL_TX != 0 {
                s.tx_data_available();
            }
            if tell & TELL_ROOM != 0 {
                s.rx_free_space_available();
            }
        }
    };
    let handed = match handoff {
        Handoff::Queue => queue.dispatch_async(job).is_ok(),
        Handoff::Here => match queue.run_here_if_idle(job) {
            Ok(()) => true,
            Err(job) => queue.dispatch_sync(job).is_ok(),
        },
    };
    if !handed {
        p.to_tell.store(0, Ordering::Release);
    }
    handed
}

/// The system's calls, run on the driver.
struct Local<'a, S>(&'a S);

impl<S: IOUserSerialImpl> IOUserSerialInterface for Local<'_, S> {
    fn hw_activate(&self) -> IOResult<()> {
        self.0.hw_activate()
    }

    fn hw_deactivate(&self) -> IOResult<()> {
        self.0.hw_deactivate()
    }

    /// The rings first (what the program flushed must not reach the
    /// hardware or the reader), then the hardware's FIFOs.
    fn hw_reset_fifo(&self, tx: bool, rx: bool) -> IOResult<()> {
        if let Ok(p) = port(self.0) {
            if tx {
                // Discarded bytes will never be sent: they count as gone.
                let discarded = p.port.tx().discard();
                p.port.add_sent(discarded);
                p.tx_seen
                    .store(p.port.tx().producer_index(), Ordering::Release);
                p.room_made();
            }
        }
        self.0.hw_reset_fifo(tx, rx)?;
        // Where this process pumps the tty, the RX ring is its to empty,
        // after the hardware's FIFO (bytes may have left it meanwhile).
        if let Some(t) = port(self.0).ok().and_then(|p| p.tty().map(|t| (p, t))) {
            if rx {
                t.1.discard_rx(&t.0.port);
            }
        }
        Ok(())
    }

    fn hw_send_break(&self, send: bool) -> IOResult<()> {
        self.0.hw_send_break(send)
    }

    fn hw_program_uart(
        &self,
        baud: u32,
        data_bits: u8,
        half_stop_bits: u8,
        parity: u8,
    ) -> IOResult<()> {
        let parity = Parity::from_wire(parity).ok_or(IOReturn::BAD_ARGUMENT)?;
        if !(5..=8).contains(&data_bits) || !(2..=4).contains(&half_stop_bits) || baud == 0 {
            return Err(IOReturn::BAD_ARGUMENT);
        }
        self.0
            .hw_program_uart(baud, data_bits, half_stop_bits, parity)
    }

    fn hw_program_baud_rate(&self, baud: u32) -> IOResult<()> {
        if baud == 0 {
            return Err(IOReturn::BAD_ARGUMENT);
        }
        self.0.hw_program_baud_rate(baud)
    }

    fn hw_program_mcr(&self, dtr: bool, rts: bool) -> IOResult<()> {
        self.0.hw_program_mcr(dtr, rts)
    }

    fn hw_get_modem_status(&self) -> IOResult<(bool, bool, bool, bool)> {
        let m = self.0.hw_get_modem_status()?;
        Ok((m.cts, m.dsr, m.ri, m.dcd))
    }

    fn hw_program_flow_control(&self, arg: u32, xon: u8, xoff: u8) -> IOResult<()> {
        self.0
            .hw_program_flow_control(FlowControl::from_wire(arg), xon, xoff)
    }

    fn hw_program_latency_timer(&self, latency_ms: u32) -> IOResult<()> {
        self.0.hw_program_latency_timer(latency_ms)
    }
}

impl<S: IOUserSerialImpl> ClassDispatch<S> for IOUserSerial {
    fn dispatch(service: &S, method: MethodId, args: &[u8]) -> Option<IOResult<Vec<u8>>> {
        match method {
            io_service_interface::START => {
                let started = <IOService as ClassDispatch<S>>::dispatch(service, method, args);
                if !matches!(started, Some(Ok(_))) {
                    return started;
                }
                if let Err(e) = connect(service) {
                    tracing::error!("IOUserSerial: connecting the queues: {e}");
                    disconnect(service);
                    return Some(Err(e));
                }
                started
            }
            io_service_interface::STOP => {
                // The port stops before the driver's Stop: no notification
                // reaches a stopping driver.
                disconnect(service);
                <IOService as ClassDispatch<S>>::dispatch(service, method, args)
            }
            _ => io_user_serial_interface::dispatch(&Local(service), method, args)
                .or_else(|| <IOService as ClassDispatch<S>>::dispatch(service, method, args)),
        }
    }
}

/// A UART the system reaches (`IOUARTDevice`), as its driver sees its
/// provider: a transmit FIFO, a receive FIFO, modem lines, and interrupts
/// 0 (received bytes wait), 1 (room to transmit again) and 2 (modem status
/// changed) for `IOInterruptDispatchSource::create`.
#[derive(Clone, Copy)]
pub struct IOUARTDevice {
    id: ObjectId,
}

impl IOUARTDevice {
    /// The UART `provider` is.
    pub fn from_provider(provider: &IOService) -> IOUARTDevice {
        IOUARTDevice {
            id: ObjectId(provider.registry_entry_id()),
        }
    }

    fn proxy(
        &self,
    ) -> driverkit_wire::interfaces::iouart_device_interface::Proxy<'static, SystemCaller> {
        driverkit_wire::interfaces::iouart_device_interface::Proxy {
            caller: &SystemCaller,
            object: self.id,
            flags: 0,
        }
    }

    /// Puts bytes in the transmit FIFO: returns how many fit (interrupt 1
    /// comes when the rest would) and how many the FIFO then holds, not
    /// yet on the wire.
    pub fn transmit(&self, data: &[u8]) -> IOResult<(usize, usize)> {
        use driverkit_wire::interfaces::IOUARTDeviceInterface;
        let (taken, in_fifo) = self
            .proxy()
            .transmit(driverkit_wire::Bytes(data.to_vec()))?;
        Ok((taken as usize, in_fifo as usize))
    }

    /// Takes up to `max` received bytes.
    pub fn receive(&self, max: usize) -> IOResult<Vec<u8>> {
        use driverkit_wire::interfaces::IOUARTDeviceInterface;
        Ok(self.proxy().receive(max.min(u32::MAX as usize) as u32)?.0)
    }

    /// Programs the UART's line: rate, data bits, stop bits (in halves), parity.
    pub fn set_line(
        &self,
        baud: u32,
        data_bits: u8,
        half_stop_bits: u8,
        parity: Parity,
    ) -> IOResult<()> {
        use driverkit_wire::interfaces::IOUARTDeviceInterface;
        self.proxy()
            .set_line(baud, data_bits, half_stop_bits, parity.to_wire())
    }

    /// Sets the UART's DTR and RTS outputs.
    pub fn set_modem_control(&self, dtr: bool, rts: bool) -> IOResult<()> {
        use driverkit_wire::interfaces::IOUARTDeviceInterface;
        self.proxy().set_modem_control(dtr, rts)
    }

    /// The UART's modem status inputs.
    pub fn modem_status(&self) -> IOResult<ModemStatus> {
        use driverkit_wire::interfaces::IOUARTDeviceInterface;
        let (cts, dsr, ri, dcd) = self.proxy().modem_status()?;
        Ok(ModemStatus { cts, dsr, ri, dcd })
    }

    /// Empties the UART's transmit and/or receive FIFO.
    pub fn reset_fifo(&self, tx: bool, rx: bool) -> IOResult<()> {
        use driverkit_wire::interfaces::IOUARTDeviceInterface;
        self.proxy().reset_fifo(tx, rx)
    }

    /// Bytes in the transmit FIFO not yet on the wire.
    pub fn transmit_pending(&self) -> IOResult<usize> {
        use driverkit_wire::interfaces::IOUARTDeviceInterface;
        Ok(self.proxy().transmit_pending()? as usize)
    }

    /// Holds the line in break (`on`: space for longer than a character)
    /// or lets it go.
    pub fn set_break(&self, on: bool) -> IOResult<()> {
        use driverkit_wire::interfaces::IOUARTDeviceInterface;
        self.proxy().set_break(on)
    }
}

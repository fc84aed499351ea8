//! One serial port: its tty and the two threads that move bytes between
//! the tty and the port's rings, and turn what the tty says (opened,
//! closed, `tcsetattr`, `tcflush`) into the driver's `hw_*` calls.
//!
//! - `serial-in`: the tty's output (what programs write) into the TX ring,
//!   read only while the ring has room, so that a full ring leaves the
//!   bytes in the pty and a writer blocks; and the tty's status packets.
//! - `serial-out`: the RX ring into the tty, taken from the ring only as
//!   fast as the pty accepts them, so that a reader that never reads holds
//!   the driver back instead of growing a buffer.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use driverkit_core::{EntryId, System};
use driverkit_wire::interfaces::{io_user_serial_interface, IOUserSerialInterface};
use driverkit_wire::serial::{
    parity, SerialPortInterface, DRIVER_BELL, RX_DATA_BELL, TX_SPACE_BELL,
};
use driverkit_wire::shm::SPIN;
use driverkit_wire::{IOResult, IOReturn, ObjectId};
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::io::Errno;

use super::tty::{self, Termios, Tty, PKT_FLUSHREAD, PKT_FLUSHWRITE, PKT_IOCTL};

/// Bytes moved per read or write of the pty.
const CHUNK: usize = 64 * 1024;

/// Everything about the line, whoever set it: the tty (baud, stop bits,
/// flow control) or `driverkit serial set` (all of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line {
    pub termios: Termios,
    pub data_bits: u8,
    pub parity: u8,
    pub dtr: bool,
    pub rts: bool,
}

impl Line {
    pub fn to_plist(self) -> plist::Value {
        let mut d = plist::Dictionary::new();
        d.insert("BaudRate".into(), i64::from(self.termios.baud).into());
        d.insert("DataBits".into(), i64::from(self.data_bits).into());
        d.insert(
            "StopBits".into(),
            (f64::from(self.termios.half_stop_bits) / 2.0).into(),
        );
        d.insert("Parity".into(), parity_name(self.parity).into());
        d.insert("FlowControl".into(), i64::from(self.termios.flow).into());
        d.insert("DTR".into(), self.dtr.into());
        d.insert("RTS".into(), self.rts.into());
        plist::Value::Dictionary(d)
    }
}

pub fn parity_name(p: u8) -> &'static str {
    match p {
        parity::ODD => "odd",
        parity::EVEN => "even",
        parity::MARK => "mark",
        parity::SPACE => "space",
        _ => "none",
    }
}

struct Shared {
    /// For logs: the service's registry name.
    name: String,
    service: EntryId,
    system: System,
    tty: Tty,
    queues: SerialPortInterface,
    stop: AtomicBool,
    /// Written to wake the threads out of `poll`.
    wake: OwnedFd,
    open: AtomicBool,
    /// The tty's input was flushed: the RX ring's bytes go too (done by
    /// `serial-out`, the ring's one consumer).
    flush_rx: AtomicBool,
    line: Mutex<Line>,
    tx_bytes: AtomicU64,
    rx_bytes: AtomicU64,
    /// Received while no program had the tty open.
    rx_dropped: AtomicU64,
}

/// A running port; [`Port::stop`] ends it.
pub struct Port {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    link: Option<PathBuf>,
}

impl Port {
    /// Makes the tty of service `service` (registry name `name`) over the
    /// driver's rings, links it at `link`, and starts moving bytes.
    pub fn start(
        system: System,
        service: EntryId,
        name: String,
        queues: SerialPortInterface,
        link: Option<PathBuf>,
    ) -> IOResult<Port> {
        let tty = Tty::open().map_err(|e| {
            tracing::error!("serial   {name}: cannot make its tty: {e}");
            IOReturn::NO_RESOURCES
        })?;
        let termios = tty.termios().map_err(|_| IOReturn::NO_RESOURCES)?;
        let wake = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC)
            .map_err(|_| IOReturn::NO_RESOURCES)?;
        if let Some(link) = &link {
            if let Err(e) = tty::link(tty.slave(), link) {
                tracing::warn!("serial   {name}: cannot link {}: {e}", link.display());
            }
        }
        let shared = Arc::new(Shared {
            name,
            service,
            system,
            tty,
            queues,
            stop: AtomicBool::new(false),
            wake,
            open: AtomicBool::new(false),
            flush_rx: AtomicBool::new(false),
            line: Mutex::new(Line {
                termios,
                data_bits: 8,
                parity: parity::NONE,
                dtr: false,
                rts: false,
            }),
            tx_bytes: AtomicU64::new(0),
            rx_bytes: AtomicU64::new(0),
            rx_dropped: AtomicU64::new(0),
        });
        let mut threads = Vec::new();
        for (label, body) in [
            ("serial-in", tty_in as fn(&Shared)),
            ("serial-out", tty_out as fn(&Shared)),
        ] {
            let s = shared.clone();
            match std::thread::Builder::new()
                .name(label.into())
                .stack_size(256 * 1024)
                .spawn(move || body(&s))
            {
                Ok(t) => threads.push(t),
                Err(_) => {
                    Port {
                        shared,
                        threads: Mutex::new(threads),
                        link,
                    }
                    .stop();
                    return Err(IOReturn::NO_RESOURCES);
                }
            }
        }
        let port = Port {
            shared,
            threads: Mutex::new(threads),
            link,
        };
        port.publish();
        Ok(port)
    }

    pub fn slave(&self) -> PathBuf {
        self.shared.tty.slave().to_owned()
    }

    pub fn callout(&self) -> PathBuf {
        self.link.clone().unwrap_or_else(|| self.slave())
    }

    pub fn line(&self) -> Line {
        *self.shared.line.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_open(&self) -> bool {
        self.shared.open.load(Ordering::Acquire)
    }

    /// `(tx bytes, rx bytes, rx bytes dropped while closed)`.
    pub fn counters(&self) -> (u64, u64, u64) {
        let s = &self.shared;
        (
            s.tx_bytes.load(Ordering::Relaxed),
            s.rx_bytes.load(Ordering::Relaxed),
            s.rx_dropped.load(Ordering::Relaxed),
        )
    }

    /// What `driverkit serial set` asks: the whole line at once
    /// (`hw_program_uart`), flow control, the modem outputs, a break of
    /// `break_ms`. Each refusal of the driver is named.
    pub fn set(&self, want: Line, break_ms: Option<u32>) -> Result<(), String> {
        let s = &self.shared;
        let named = |what: &str, r: IOResult<()>| {
            r.map_err(|e| format!("{}: the driver refused {what}: {e}", s.name))
        };
        // Each step the driver took is kept (and shown) even when a later
        // one is refused.
        let step = |f: &dyn Fn(&mut Line)| {
            f(&mut s.line.lock().unwrap_or_else(|e| e.into_inner()));
            s.publish_line();
        };
        let had = self.line();
        let t = want.termios;
        if (t.baud, t.half_stop_bits, want.data_bits, want.parity)
            != (
                had.termios.baud,
                had.termios.half_stop_bits,
                had.data_bits,
                had.parity,
            )
        {
            named(
                &format!(
                    "{} baud {}{}{}",
                    t.baud,
                    want.data_bits,
                    parity_name(want.parity).chars().next().unwrap_or('n'),
                    t.half_stop_bits / 2
                ),
                s.driver(|d| {
                    d.hw_program_uart(t.baud, want.data_bits, t.half_stop_bits, want.parity)
                }),
            )?;
            step(&|l| {
                l.termios.baud = t.baud;
                l.termios.half_stop_bits = t.half_stop_bits;
                l.data_bits = want.data_bits;
                l.parity = want.parity;
            });
        }
        if (t.flow, t.xon, t.xoff) != (had.termios.flow, had.termios.xon, had.termios.xoff) {
            named(
                "the flow control",
                s.driver(|d| d.hw_program_flow_control(t.flow, t.xon, t.xoff)),
            )?;
            step(&|l| {
                l.termios.flow = t.flow;
                l.termios.xon = t.xon;
                l.termios.xoff = t.xoff;
            });
        }
        if (want.dtr, want.rts) != (had.dtr, had.rts) {
            named(
                "the modem control lines",
                s.driver(|d| d.hw_program_mcr(want.dtr, want.rts)),
            )?;
            step(&|l| {
                l.dtr = want.dtr;
                l.rts = want.rts;
            });
        }
        if let Some(ms) = break_ms {
            named("a break", s.driver(|d| d.hw_send_break(true)))?;
            std::thread::sleep(Duration::from_millis(ms.into()));
            named("ending the break", s.driver(|d| d.hw_send_break(false)))?;
        }
        Ok(())
    }

    /// The modem status inputs, from the driver.
    pub fn modem_status(&self) -> IOResult<(bool, bool, bool, bool)> {
        self.shared.driver(|d| d.hw_get_modem_status())
    }

    fn publish(&self) {
        let s = &self.shared;
        s.publish_line();
        s.system
            .set_property(s.service, "IOSerialOpen", false.into());
    }

    /// Ends the threads and unlinks the tty, which closes when the last
    /// holder of the port lets go: a program reading it then sees the
    /// hang-up. No `hw_deactivate`: the driver is stopping or gone.
    pub fn stop(&self) {
        let s = &self.shared;
        if s.stop.swap(true, Ordering::AcqRel) {
            return;
        }
        let _ = rustix::io::write(&s.wake, &1u64.to_ne_bytes());
        s.queues.bell(RX_DATA_BELL).ring();
        s.queues.bell(TX_SPACE_BELL).ring();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            let _ = t.join();
        }
        if let Some(link) = &self.link {
            tty::unlink(s.tty.slave(), link);
        }
        let (tx, rx, dropped) = self.counters();
        tracing::info!(
            "serial   {}: {} closed (tx {tx} bytes, rx {rx}, dropped while closed {dropped})",
            s.name,
            s.tty.slave().display()
        );
    }
}

impl Shared {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Calls the driver's method `f`.
    fn driver<T>(
        &self,
        f: impl FnOnce(
            &io_user_serial_interface::Proxy<'_, driverkit_core::DriverCaller>,
        ) -> IOResult<T>,
    ) -> IOResult<T> {
        let caller = self.system.driver(self.service).ok_or(IOReturn::OFFLINE)?;
        f(&io_user_serial_interface::Proxy {
            caller: &caller,
            object: ObjectId(self.service),
            flags: 0,
        })
    }

    fn publish_line(&self) {
        let line = *self.line.lock().unwrap_or_else(|e| e.into_inner());
        self.system
            .set_property(self.service, "IOSerialLine", line.to_plist());
    }

    /// A program opened the tty: activate the port and program it.
    fn opened(&self) {
        self.open.store(true, Ordering::Release);
        // The line as the tty had it before this open: changes the program
        // makes now arrive as their own packets, after this, in order.
        let line = *self.line.lock().unwrap_or_else(|e| e.into_inner());
        tracing::info!(
            "serial   {}: {} opened",
            self.name,
            self.tty.slave().display()
        );
        self.system
            .set_property(self.service, "IOSerialOpen", true.into());
        self.log_refusal("activating", self.driver(|d| d.hw_activate()));
        let t = line.termios;
        self.log_refusal(
            "the line format",
            self.driver(|d| {
                d.hw_program_uart(t.baud, line.data_bits, t.half_stop_bits, line.parity)
            }),
        );
        if t.flow != 0 {
            self.log_refusal(
                "the flow control",
                self.driver(|d| d.hw_program_flow_control(t.flow, t.xon, t.xoff)),
            );
        }
        self.publish_line();
    }

    /// The tty's last close: deactivate the port.
    fn closed(&self) {
        self.open.store(false, Ordering::Release);
        tracing::info!(
            "serial   {}: {} closed by its last program",
            self.name,
            self.tty.slave().display()
        );
        self.system
            .set_property(self.service, "IOSerialOpen", false.into());
        self.log_refusal("deactivating", self.driver(|d| d.hw_deactivate()));
    }

    /// A status packet of the tty.
    fn status(&self, status: u8) {
        let (tx, rx) = (status & PKT_FLUSHWRITE != 0, status & PKT_FLUSHREAD != 0);
        if rx {
            self.flush_rx.store(true, Ordering::Release);
            self.queues.bell(RX_DATA_BELL).ring();
        }
        if tx || rx {
            self.log_refusal("a FIFO reset", self.driver(|d| d.hw_reset_fifo(tx, rx)));
        }
        if status & PKT_IOCTL != 0 {
            self.termios_changed();
        }
    }

    /// A program's `tcsetattr`: what changed reaches the driver.
    fn termios_changed(&self) {
        let Ok(now) = self.tty.termios() else { return };
        let line = {
            let mut line = self.line.lock().unwrap_or_else(|e| e.into_inner());
            let was = line.termios;
            line.termios = now;
            if was == now {
                return;
            }
            (*line, was)
        };
        let (line, was) = line;
        if now.half_stop_bits != was.half_stop_bits {
            self.log_refusal(
                "the line format",
                self.driver(|d| {
                    d.hw_program_uart(now.baud, line.data_bits, now.half_stop_bits, line.parity)
                }),
            );
        } else if now.baud != was.baud {
            self.log_refusal(
                &format!("{} baud", now.baud),
                self.driver(|d| d.hw_program_baud_rate(now.baud)),
            );
        }
        if (now.flow, now.xon, now.xoff) != (was.flow, was.xon, was.xoff) {
            self.log_refusal(
                "the flow control",
                self.driver(|d| d.hw_program_flow_control(now.flow, now.xon, now.xoff)),
            );
        }
        self.publish_line();
    }

    fn log_refusal(&self, what: &str, r: IOResult<()>) {
        if let Err(e) = r {
            if !self.stopped() {
                tracing::warn!("serial   {}: the driver refused {what}: {e}", self.name);
            }
        }
    }

    /// Waits up to `timeout` for `events` on the master or a wake-up.
    fn poll_master(&self, events: PollFlags, timeout: Option<Duration>) -> PollFlags {
        let master = self.tty.master();
        let mut fds = [
            PollFd::new(&master, events),
            PollFd::new(&self.wake, PollFlags::IN),
        ];
        let ts = timeout.map(|t| Timespec {
            tv_sec: t.as_secs() as i64,
            tv_nsec: t.subsec_nanos() as i64,
        });
        match poll(&mut fds, ts.as_ref()) {
            Ok(_) => fds[0].revents(),
            Err(_) => PollFlags::empty(),
        }
    }
}

fn tty_in(s: &Shared) {
    let mut buf = vec![0u8; CHUNK + 1];
    while !s.stopped() {
        if !s.open.load(Ordering::Acquire) {
            wait_for_open(s);
            continue;
        }
        let free = s.queues.tx().free().unwrap_or(0) as usize;
        if free == 0 {
            // Room first; meanwhile only status packets are read (a
            // one-byte read of a packet-mode master takes a status byte or
            // nothing), every 20 ms.
            let tx = s.queues.tx();
            s.queues.bell(TX_SPACE_BELL).wait(
                SPIN,
                Some(Instant::now() + Duration::from_millis(20)),
                || tx.free().is_ok_and(|f| f > 0) || s.stopped(),
            );
            let ready = s.poll_master(PollFlags::PRI, Some(Duration::ZERO));
            if ready.intersects(PollFlags::PRI | PollFlags::HUP) {
                read_master(s, &mut buf[..1]);
            }
            continue;
        }
        let ready = s.poll_master(PollFlags::IN | PollFlags::PRI, Some(Duration::from_secs(1)));
        if ready.intersects(PollFlags::IN | PollFlags::PRI | PollFlags::HUP | PollFlags::ERR) {
            let n = free.min(CHUNK) + 1;
            read_master(s, &mut buf[..n]);
        }
    }
}

/// One read of the master: data into the TX ring, or a status packet, or
/// the hang-up of the last close.
fn read_master(s: &Shared, buf: &mut [u8]) {
    match rustix::io::read(s.tty.master(), &mut *buf) {
        Ok(0) => {}
        Ok(n) if buf[0] == 0 => {
            let data = &buf[1..n];
            if data.is_empty() {
                return;
            }
            // Fits: the read was no larger than the room.
            let put = s.queues.tx().write(data).unwrap_or(0);
            s.tx_bytes.fetch_add(put as u64, Ordering::Relaxed);
            s.queues.bell(DRIVER_BELL).notify();
        }
        Ok(_) => s.status(buf[0]),
        Err(Errno::AGAIN) | Err(Errno::INTR) => {}
        Err(_) => s.closed(),
    }
}

/// While closed: waits for the inotify watch to report an open of the
/// slave, then checks that the master no longer says hung up. A program
/// that opened and closed the tty between two looks (`stty -F`) still
/// counts: activate, its status packets, deactivate.
fn wait_for_open(s: &Shared) {
    let opened_meanwhile = s.tty.drain_opens();
    let hung_up = s
        .poll_master(PollFlags::IN | PollFlags::PRI, Some(Duration::ZERO))
        .contains(PollFlags::HUP);
    if !hung_up {
        s.opened();
        return;
    }
    if opened_meanwhile {
        s.opened();
        let mut status = [0u8; 1];
        while s
            .poll_master(PollFlags::PRI, Some(Duration::ZERO))
            .contains(PollFlags::PRI)
        {
            match rustix::io::read(s.tty.master(), &mut status) {
                Ok(1) if status[0] != 0 => s.status(status[0]),
                _ => break,
            }
        }
        s.closed();
        return;
    }
    let opens = s.tty.opens();
    let mut fds = [
        PollFd::new(&opens, PollFlags::IN),
        PollFd::new(&s.wake, PollFlags::IN),
    ];
    let ts = Timespec {
        tv_sec: 1,
        tv_nsec: 0,
    };
    let _ = poll(&mut fds, Some(&ts));
}

fn tty_out(s: &Shared) {
    let mut buf = vec![0u8; CHUNK];
    let mut corrupt_logged = false;
    while !s.stopped() {
        let rx = s.queues.rx();
        let ready = || {
            rx.used().map_or(true, |u| u > 0) || s.flush_rx.load(Ordering::Acquire) || s.stopped()
        };
        if !s.queues.bell(RX_DATA_BELL).wait(
            SPIN,
            Some(Instant::now() + Duration::from_millis(250)),
            ready,
        ) || s.stopped()
        {
            continue;
        }
        if s.flush_rx.swap(false, Ordering::AcqRel) {
            rx.discard();
            s.queues.bell(DRIVER_BELL).ring();
            continue;
        }
        let n = match rx.peek(&mut buf) {
            Ok(n) => n,
            Err(_) => {
                if !corrupt_logged {
                    tracing::error!(
                        "serial   {}: the driver left its RX ring's indices inconsistent; dropping what it holds",
                        s.name
                    );
                    corrupt_logged = true;
                }
                rx.discard();
                continue;
            }
        };
        if n == 0 {
            continue;
        }
        let written = if s.open.load(Ordering::Acquire) {
            match rustix::io::write(s.tty.master(), &buf[..n]) {
                Ok(k) => {
                    s.rx_bytes.fetch_add(k as u64, Ordering::Relaxed);
                    k
                }
                Err(Errno::AGAIN) | Err(Errno::INTR) => {
                    s.poll_master(PollFlags::OUT, Some(Duration::from_millis(50)));
                    0
                }
                Err(_) => {
                    s.rx_dropped.fetch_add(n as u64, Ordering::Relaxed);
                    n
                }
            }
        } else {
            // Nobody has the tty open: what arrives is dropped, as a UART
            // nobody opened drops it; counted.
            s.rx_dropped.fetch_add(n as u64, Ordering::Relaxed);
            n
        };
        if written > 0 {
            let _ = rx.consume(written);
            if s.queues.rx_blocked() {
                s.queues.bell(DRIVER_BELL).ring();
            }
        }
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        self.stop();
    }
}

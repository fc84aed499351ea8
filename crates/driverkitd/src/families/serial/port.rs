//! One serial port: what both kinds of node share, and the node programs
//! open.
//!
//! [`Core`] is the port as the driver sees it: its rings, the line as the
//! driver was last told it, the counters, and the calls that turn what a
//! program does (the first open, the last close, `tcsetattr`, a modem line,
//! a break) into the driver's `hw_*` methods. The node is where programs
//! reach it: a CUSE character device ([`super::cuse`], where the kernel has
//! `/dev/cuse`: every ioctl of a serial port is served) or a pty
//! ([`super::pty`]: baud, stop bits and flow control through the pty's
//! packet mode; the rest through `driverkit serial set`).

use driverkit_wire::sync::Locked;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use driverkit_core::{EntryId, System};
use driverkit_wire::interfaces::{io_user_serial_interface, IOUserSerialInterface};
use driverkit_wire::serial::{Parity, SerialPortInterface};
use driverkit_wire::{IOResult, IOReturn};

use super::tty::{self, Termios};

/// Everything about the line, whoever set it: a program (through the
/// node) or `driverkit serial set`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line {
    pub termios: Termios,
    pub data_bits: u8,
    pub parity: Parity,
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
        d.insert("Parity".into(), self.parity.name().into());
        d.insert(
            "FlowControl".into(),
            i64::from(self.termios.flow.to_wire()).into(),
        );
        d.insert("DTR".into(), self.dtr.into());
        d.insert("RTS".into(), self.rts.into());
        plist::Value::Dictionary(d)
    }
}

/// How long the last close waits for the driver to send what programs
/// wrote, at most (Linux's `closing_wait` default).
pub const CLOSING_WAIT: Duration = Duration::from_secs(30);

/// A step of a line change the driver refused: what, and its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub what: String,
    pub error: IOReturn,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the driver refused {}: {}", self.what, self.error)
    }
}

impl std::error::Error for Refused {}

/// The kind of node a port has, for ioreg (`IOSerialNodeKind`) and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Cuse,
    Pty,
}

impl NodeKind {
    pub fn name(self) -> &'static str {
        match self {
            NodeKind::Cuse => "cuse",
            NodeKind::Pty => "pty",
        }
    }
}

/// Where programs open a port.
pub(super) trait Node: Send + Sync {
    /// The device node (`/dev/ttyDK0`, `/dev/pts/3`).
    fn path(&self) -> &Path;
    fn kind(&self) -> NodeKind;
    /// Ends its threads; programs holding it see it hang up.
    fn stop(&self);
    /// The driver reported new modem status inputs.
    fn modem_changed(&self, _status: (bool, bool, bool, bool)) {}
    /// The driver reported a receive error.
    fn rx_error(&self, _overrun: bool, _gotbreak: bool, _framing: bool, _parity: bool) {}
    /// Descriptors for the driver's process to move the node's bytes
    /// itself (a pty's master and a control socket), handed over once;
    /// `None` where the daemon moves them.
    fn handover(&self) -> Option<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
        None
    }
    /// `(tx, rx, rx dropped while closed)`, where the node counts them
    /// itself rather than in [`Core`]'s counters.
    fn counters(&self) -> Option<(u64, u64, u64)> {
        None
    }
}

/// The port as its driver sees it, shared by its node's threads.
pub struct Core {
    /// For logs: the service's registry name.
    pub name: String,
    pub service: EntryId,
    system: System,
    pub queues: SerialPortInterface,
    stop: AtomicBool,
    open: AtomicBool,
    line: Mutex<Line>,
    pub tx_bytes: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Received while no program had the port open.
    pub rx_dropped: AtomicU64,
}

impl Core {
    pub fn new(
        system: System,
        service: EntryId,
        name: String,
        queues: SerialPortInterface,
        line: Line,
    ) -> Core {
        Core {
            name,
            service,
            system,
            queues,
            stop: AtomicBool::new(false),
            open: AtomicBool::new(false),
            line: Mutex::new(line),
            tx_bytes: AtomicU64::new(0),
            rx_bytes: AtomicU64::new(0),
            rx_dropped: AtomicU64::new(0),
        }
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Marks the port stopping; true the first time.
    pub fn set_stopped(&self) -> bool {
        !self.stop.swap(true, Ordering::AcqRel)
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    pub fn line(&self) -> Line {
        *self.line.locked()
    }

    /// Changes the line as the driver now has it, and shows it.
    pub fn update_line(&self, f: impl FnOnce(&mut Line)) {
        f(&mut self.line.locked());
        self.publish_line();
    }

    /// Calls the driver's method `f`.
    pub fn driver<T>(
        &self,
        f: impl FnOnce(
            &io_user_serial_interface::Proxy<'_, driverkit_core::DriverCaller>,
        ) -> IOResult<T>,
    ) -> IOResult<T> {
        let caller = self.system.driver(self.service).ok_or(IOReturn::OFFLINE)?;
        f(&io_user_serial_interface::Proxy {
            caller: &caller,
            object: self.service.object(),
            flags: 0,
        })
    }

    pub fn publish_line(&self) {
        self.system
            .set_property(self.service, "IOSerialLine", self.line().to_plist());
    }

    pub fn log_refusal(&self, what: &str, r: IOResult<()>) -> IOResult<()> {
        if let Err(e) = r {
            if !self.stopped() {
                tracing::warn!("serial   {}: the driver refused {what}: {e}", self.name);
            }
        }
        r
    }

    /// A program opened the node (`path`): activate the port and program
    /// the line it has.
    pub fn opened(&self, path: &Path) {
        self.open.store(true, Ordering::Release);
        let line = self.line();
        tracing::info!("serial   {}: {} opened", self.name, path.display());
        self.system
            .set_property(self.service, "IOSerialOpen", true.into());
        let _ = self.log_refusal("activating", self.driver(|d| d.hw_activate()));
        let t = line.termios;
        let _ = self.log_refusal(
            "the line format",
            self.driver(|d| {
                d.hw_program_uart(
                    t.baud,
                    line.data_bits,
                    t.half_stop_bits,
                    line.parity.to_wire(),
                )
            }),
        );
        if t.flow.is_on() {
            let _ = self.log_refusal(
                "the flow control",
                self.driver(|d| d.hw_program_flow_control(t.flow.to_wire(), t.xon, t.xoff)),
            );
        }
        self.publish_line();
    }

    /// The node's last close: the modem outputs dropped if `hupcl` (as
    /// Linux's tty layer drops DTR and RTS on the last close), then the
    /// port deactivated.
    pub fn closed(&self, path: &Path, hupcl: bool) {
        self.open.store(false, Ordering::Release);
        if hupcl {
            let _ = self.program_mcr(false, false);
        }
        tracing::info!(
            "serial   {}: {} closed by its last program",
            self.name,
            path.display()
        );
        self.system
            .set_property(self.service, "IOSerialOpen", false.into());
        let _ = self.log_refusal("deactivating", self.driver(|d| d.hw_deactivate()));
    }

    /// A new line: what changed reaches the driver, each step kept (and
    /// shown) as the driver took it, up to the first it refused, which is
    /// returned. The format: the whole line (`hw_program_uart`) if the
    /// data bits, parity or stop bits changed, or if `whole` and the rate
    /// did; else the rate alone (`hw_program_baud_rate`). Then the flow
    /// control, then the modem control outputs.
    pub fn program(&self, want: Line, whole: bool) -> Result<(), Refused> {
        let had = self.line();
        let (t, h) = (want.termios, had.termios);
        let format = (t.half_stop_bits, want.data_bits, want.parity)
            != (h.half_stop_bits, had.data_bits, had.parity);
        let rate = t.baud != h.baud;
        if format || (whole && rate) {
            let what = format!(
                "{} baud {}{}{}",
                t.baud,
                want.data_bits,
                want.parity.name().chars().next().unwrap_or('n'),
                f64::from(t.half_stop_bits) / 2.0
            );
            self.step(what, |d| {
                d.hw_program_uart(
                    t.baud,
                    want.data_bits,
                    t.half_stop_bits,
                    want.parity.to_wire(),
                )
            })?;
        } else if rate {
            self.step(format!("{} baud", t.baud), |d| {
                d.hw_program_baud_rate(t.baud)
            })?;
        }
        self.update_line(|l| {
            l.termios.baud = t.baud;
            l.termios.half_stop_bits = t.half_stop_bits;
            l.data_bits = want.data_bits;
            l.parity = want.parity;
        });
        if (t.flow, t.xon, t.xoff) != (h.flow, h.xon, h.xoff) {
            self.step("the flow control".into(), |d| {
                d.hw_program_flow_control(t.flow.to_wire(), t.xon, t.xoff)
            })?;
            self.update_line(|l| {
                l.termios.flow = t.flow;
                l.termios.xon = t.xon;
                l.termios.xoff = t.xoff;
            });
        }
        if (want.dtr, want.rts) != (had.dtr, had.rts) {
            self.program_mcr(want.dtr, want.rts)?;
        }
        Ok(())
    }

    /// One call to the driver, its refusal logged and named.
    fn step(
        &self,
        what: String,
        f: impl FnOnce(
            &io_user_serial_interface::Proxy<'_, driverkit_core::DriverCaller>,
        ) -> IOResult<()>,
    ) -> Result<(), Refused> {
        self.log_refusal(&what, self.driver(f))
            .map_err(|error| Refused { what, error })
    }

    /// The modem control outputs.
    pub fn program_mcr(&self, dtr: bool, rts: bool) -> Result<(), Refused> {
        self.step("the modem control lines".into(), |d| {
            d.hw_program_mcr(dtr, rts)
        })?;
        self.update_line(|l| {
            l.dtr = dtr;
            l.rts = rts;
        });
        Ok(())
    }
}

/// A running port; [`Port::stop`] ends it.
pub struct Port {
    core: Arc<Core>,
    node: Box<dyn Node>,
    link: Option<PathBuf>,
}

impl Port {
    /// A port of `core` at `node`, linked at `link`.
    pub(super) fn new(core: Arc<Core>, node: Box<dyn Node>, link: Option<PathBuf>) -> Port {
        if let Some(link) = &link {
            if let Err(e) = tty::link(node.path(), link) {
                tracing::warn!(
                    "serial   {}: cannot link {}: {e}",
                    core.name,
                    link.display()
                );
            }
        }
        let port = Port { core, node, link };
        port.core.publish_line();
        port.core
            .system
            .set_property(port.core.service, "IOSerialOpen", false.into());
        port.core.system.set_property(
            port.core.service,
            "IOSerialNodeKind",
            port.node.kind().name().into(),
        );
        port
    }

    /// The device node programs open.
    pub fn node(&self) -> PathBuf {
        self.node.path().to_owned()
    }

    pub fn kind(&self) -> NodeKind {
        self.node.kind()
    }

    pub fn callout(&self) -> PathBuf {
        self.link.clone().unwrap_or_else(|| self.node())
    }

    pub fn line(&self) -> Line {
        self.core.line()
    }

    pub fn is_open(&self) -> bool {
        self.core.is_open()
    }

    /// `(tx bytes, rx bytes, rx bytes dropped while closed)`.
    pub fn counters(&self) -> (u64, u64, u64) {
        let s = &self.core;
        self.node.counters().unwrap_or_else(|| {
            (
                s.tx_bytes.load(Ordering::Relaxed),
                s.rx_bytes.load(Ordering::Relaxed),
                s.rx_dropped.load(Ordering::Relaxed),
            )
        })
    }

    /// What the driver's process needs to move the node's bytes itself.
    pub fn handover(&self) -> Option<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
        self.node.handover()
    }

    pub fn modem_changed(&self, status: (bool, bool, bool, bool)) {
        self.node.modem_changed(status);
    }

    pub fn rx_error(&self, overrun: bool, gotbreak: bool, framing: bool, parity: bool) {
        self.node.rx_error(overrun, gotbreak, framing, parity);
    }

    /// What `driverkit serial set` asks: the whole line at once
    /// (`hw_program_uart`), flow control, the modem outputs, a break of
    /// `break_ms`. Each refusal of the driver is named.
    pub fn set(&self, want: Line, break_ms: Option<u32>) -> Result<(), super::SerialError> {
        let s = &self.core;
        let named = |refused: Refused| super::SerialError::Refused {
            port: s.name.clone(),
            refused,
        };
        s.program(want, true).map_err(named)?;
        if let Some(ms) = break_ms {
            s.step("a break".into(), |d| d.hw_send_break(true))
                .map_err(named)?;
            std::thread::sleep(Duration::from_millis(ms.into()));
            s.step("ending the break".into(), |d| d.hw_send_break(false))
                .map_err(named)?;
        }
        Ok(())
    }

    /// The modem status inputs, from the driver.
    pub fn modem_status(&self) -> IOResult<(bool, bool, bool, bool)> {
        self.core.driver(|d| d.hw_get_modem_status())
    }

    /// Ends the node and unlinks it. No `hw_deactivate`: the driver is
    /// stopping or gone.
    pub fn stop(&self) {
        if !self.core.set_stopped() {
            return;
        }
        self.node.stop();
        if let Some(link) = &self.link {
            tty::unlink(self.node.path(), link);
        }
        let (tx, rx, dropped) = self.counters();
        tracing::info!(
            "serial   {}: {} closed (tx {tx} bytes, rx {rx}, dropped while closed {dropped})",
            self.core.name,
            self.node.path().display()
        );
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        self.stop();
    }
}

//! A port's node where the kernel has `/dev/cuse`: a character device
//! (`/dev/ttyDK0`, ...) the daemon serves itself, so that every ioctl a
//! program makes of a serial port reaches the port: termios with any
//! rate, data bits and parity, the modem lines, breaks, drains, flushes,
//! counters and waits for modem changes.
//!
//! Two threads serve a node:
//!
//! - `cuse-dev` reads the kernel's requests ([`proto`]) and answers each
//!   one it can at once; one that must wait (a blocking read, a write with
//!   no room, a drain, `TIOCMIWAIT`) is parked in the node's `State`.
//!   Ioctls are decoded by [`ioctl`].
//! - `cuse-io` parks on the port's two system doorbells (received bytes,
//!   transmit room) and its own kick word at once (`futex_waitv`), and on
//!   each wake-up runs `Inner::pump`: received bytes into the input
//!   buffer (the tty's read buffer: 4 KiB, `IXON` applied as the kernel's
//!   line discipline does), parked reads and writes served, drains
//!   finished, pollers notified.
//!
//! Buffering is a real UART's: the input holds 4 KiB past the RX ring, and
//! a writer is accepted only up to about 50 ms of the line ahead of the
//! driver (at least 256 bytes, at most the TX ring), so that a write at
//! 300 baud blocks at the line's pace and a write timeout means what it
//! says. `tcdrain` (and `TCSETSW`, `TCSETSF`, the last close) waits until
//! the driver has reported every byte sent (`tx_sent`; a driver that does
//! not report has its bytes counted as sent once it took them).
//!
//! The node serves raw mode only: canonical input, echo and output
//! processing are kept in termios as set but not performed (serial
//! programs set raw mode; a terminal wants the pty node). A node is not a
//! controlling terminal.
//!
//! Files: [`proto`] (the kernel's CUSE messages), [`ioctl`] (a tty ioctl's
//! bytes, decoded), `state` (what requests share), `requests` (open, read,
//! write, release as `cuse-dev` serves them), `tty_ioctls` (the ioctls
//! served), `pump` (`cuse-io`'s side of the rings). This file starts and
//! stops a node.

pub mod ioctl;
pub mod proto;
mod pump;
mod requests;
mod state;
mod tty_ioctls;

use driverkit_wire::sync::Locked;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use driverkit_wire::interfaces::IOUserSerialInterface;
use driverkit_wire::serial::{DRIVER_BELL, RX_DATA_BELL, TX_SPACE_BELL};
use driverkit_wire::shm::{wait_any, wait_entry};
use driverkit_wire::IOReturn;
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use self::ioctl::{bits, tiocm, Counters, Decoded, ModemSet, Termios, TtyIoctl, When};
use self::proto::{Caller, Request};
use super::port::{Core, Line, Node, NodeKind};
use super::tty;
use crate::families::threads::{Body, Stop, Threads};
use state::*;

/// The kernel's CUSE device.
pub const CUSE_DEVICE: &str = "/dev/cuse";
use super::port::CLOSING_WAIT;

/// What a node's device is called: `ttyDK0`, `ttyDK1`, ...
const NAME_PREFIX: &str = "ttyDK";
/// The tty's read buffer (`N_TTY_BUF_SIZE`).
const INPUT_MAX: usize = 4096;
/// A writer is accepted at most this far ahead of the line...
const AHEAD: Duration = Duration::from_millis(50);
/// ...but never fewer bytes than this.
const AHEAD_MIN: usize = 256;
/// What a writer may leave while the output is stopped (XOFF, `TCOOFF`):
/// a UART's transmit buffer (`UART_XMIT_SIZE`), which a stopped port
/// keeps filling.
const STOPPED_MAX: usize = 4096;
/// While stopped, the node is writable below this many waiting bytes, as
/// a tty is (`WAKEUP_CHARS`).
const WAKEUP_CHARS: usize = 256;
/// The longest `cuse-io` sleeps without a wake-up (a safety net).
const IDLE: Duration = Duration::from_millis(250);

const POLLIN: u32 = 0x001;
const POLLOUT: u32 = 0x004;
const POLLRDNORM: u32 = 0x040;
const POLLWRNORM: u32 = 0x100;

/// Names in use by this daemon's nodes.
static NAMES: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

/// Whether this kernel serves CUSE devices to this process.
pub fn available() -> bool {
    rustix::fs::access(
        CUSE_DEVICE,
        rustix::fs::Access::READ_OK | rustix::fs::Access::WRITE_OK,
    )
    .is_ok()
}

/// A port's CUSE node and its threads.
pub struct CuseNode {
    inner: Arc<Inner>,
    threads: Threads,
}

/// Why a port got no CUSE node.
#[derive(Debug, thiserror::Error)]
pub enum CuseError {
    #[error("cannot open {CUSE_DEVICE}: {0}")]
    Open(#[source] Errno),
    #[error("{CUSE_DEVICE}: {0}")]
    Device(#[source] Errno),
    #[error("{CUSE_DEVICE}: {0}")]
    Malformed(#[source] proto::ParseError),
    #[error("{CUSE_DEVICE}: expected CUSE_INIT first, got opcode {0}")]
    NotInit(u32),
    #[error(
        "{CUSE_DEVICE}: the kernel speaks FUSE {major}.{minor}, this daemon {}.x",
        proto::KERNEL_VERSION
    )]
    Version { major: u32, minor: u32 },
    #[error("{CUSE_DEVICE}: registering {name}: {source}")]
    Register {
        name: String,
        #[source]
        source: Errno,
    },
    #[error("{CUSE_DEVICE}: no CUSE_INIT: {0}")]
    NoInit(#[source] Errno),
    #[error("{0}")]
    Start(#[source] std::io::Error),
}

impl CuseNode {
    /// The line a node starts with.
    pub fn initial_line() -> Line {
        line_of(&Termios::initial(), None)
    }

    /// Registers a CUSE device for the port of `core` and starts serving it.
    pub fn start(core: Arc<Core>) -> Result<CuseNode, CuseError> {
        let dev = rustix::fs::open(
            CUSE_DEVICE,
            OFlags::RDWR | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
        )
        .map_err(CuseError::Open)?;
        let index = claim_name();
        let name = format!("{NAME_PREFIX}{index}");
        let registered = handshake(&dev, &name);
        if let Err(e) = registered {
            release_name(index);
            return Err(e);
        }
        let path = PathBuf::from("/dev").join(&name);
        // devtmpfs makes the node as the device is added; a system without
        // devtmpfs needs its own udev rule.
        let deadline = Instant::now() + Duration::from_secs(2);
        while !path.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        tty::make_dialout(&path);
        CuseNode::serve(core, dev, path, index)
    }

    /// Serves requests arriving on `dev` (registered already) for the port
    /// of `core`, whose node is `path`.
    fn serve(
        core: Arc<Core>,
        dev: OwnedFd,
        path: PathBuf,
        index: u32,
    ) -> Result<CuseNode, CuseError> {
        // `cuse-dev` polls before it reads, and must never block in a read
        // (its stop comes through the poll).
        rustix::fs::fcntl_setfl(&dev, OFlags::NONBLOCK).map_err(CuseError::Device)?;
        let stop = Stop::new().map_err(CuseError::Start)?;
        let inner = Arc::new(Inner {
            core,
            dev,
            path,
            index,
            state: Mutex::new(State {
                termios: Termios::initial(),
                opens: 0,
                files: HashMap::new(),
                next_fh: 1,
                exclusive: false,
                input: VecDeque::with_capacity(INPUT_MAX),
                last_rx: Instant::now(),
                xoff: false,
                suspended: false,
                stopped_output: VecDeque::new(),
                reads: VecDeque::new(),
                writes: VecDeque::new(),
                drains: Vec::new(),
                modem_waits: Vec::new(),
                pollers: Vec::new(),
                modem: 0,
                counters: Counters::default(),
                serial_flags: 0,
                winsize: [0; 8],
                corrupt_logged: false,
            }),
            kick: AtomicU32::new(0),
            stop,
        });
        let bodies: Vec<(String, Body<Inner>)> = vec![
            ("cuse-dev".into(), Box::new(Inner::serve_requests)),
            ("cuse-io".into(), Box::new(Inner::move_bytes)),
        ];
        let threads = Threads::start(&inner, bodies, |inner| {
            inner.core.set_stopped();
            inner.tell_stop();
        })
        .map_err(CuseError::Start)?;
        Ok(CuseNode { inner, threads })
    }
}

impl Node for CuseNode {
    fn path(&self) -> &Path {
        &self.inner.path
    }

    fn kind(&self) -> NodeKind {
        NodeKind::Cuse
    }

    /// Ends the threads and closes `/dev/cuse`: the kernel removes the
    /// device, and programs holding it get `ENODEV` from then on.
    fn stop(&self) {
        self.inner.tell_stop();
        self.threads.join();
    }

    fn modem_changed(&self, (cts, dsr, ri, dcd): (bool, bool, bool, bool)) {
        let now = ioctl::modem_bits((false, false), (cts, dsr, ri, dcd));
        let replies = {
            let mut st = self.inner.lock();
            let changed = st.modem ^ now;
            st.modem = now;
            let c = &mut st.counters;
            for (bit, count) in [
                (tiocm::CTS, &mut c.cts),
                (tiocm::DSR, &mut c.dsr),
                (tiocm::RI, &mut c.rng),
                (tiocm::CD, &mut c.dcd),
            ] {
                if changed & bit != 0 {
                    *count = count.wrapping_add(1);
                }
            }
            let mut replies = Vec::new();
            st.modem_waits.retain(|w| {
                if w.mask & changed != 0 {
                    replies.push(proto::ioctl_reply(w.unique, 0, &[]));
                    false
                } else {
                    true
                }
            });
            replies
        };
        for r in replies {
            self.inner.send(&r);
        }
    }

    fn rx_error(&self, overrun: bool, gotbreak: bool, framing: bool, parity: bool) {
        let mut st = self.inner.lock();
        let c = &mut st.counters;
        c.overrun += u32::from(overrun);
        c.brk += u32::from(gotbreak);
        c.frame += u32::from(framing);
        c.parity += u32::from(parity);
    }
}

impl Drop for CuseNode {
    fn drop(&mut self) {
        release_name(self.inner.index);
    }
}

/// The lowest `ttyDKn` neither this daemon nor another has.
fn claim_name() -> u32 {
    let mut names = NAMES.locked();
    let taken = |n: u32| {
        names.contains(&n)
            || Path::new(&format!("/sys/class/cuse/{NAME_PREFIX}{n}")).exists()
            || Path::new(&format!("/dev/{NAME_PREFIX}{n}")).exists()
    };
    let n = (0..).find(|n| !taken(*n)).unwrap_or(0);
    names.insert(n);
    n
}

fn release_name(n: u32) {
    NAMES.locked().remove(&n);
}

/// `CUSE_INIT`: the kernel's first request, answered with the device's name.
fn handshake(dev: &OwnedFd, name: &str) -> Result<(), CuseError> {
    let mut buf = vec![0u8; proto::REQUEST_BUFFER];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut fds = [PollFd::new(dev, PollFlags::IN)];
        let _ = poll(&mut fds, Some(&timespec(Duration::from_millis(100))));
        match rustix::io::read(dev, &mut buf) {
            Ok(n) => {
                let (h, r) = Request::parse(&buf[..n]).map_err(CuseError::Malformed)?;
                let Request::Init { major, minor } = r else {
                    return Err(CuseError::NotInit(h.opcode));
                };
                if major != proto::KERNEL_VERSION {
                    return Err(CuseError::Version { major, minor });
                }
                let reply = proto::init_reply(h.unique, minor.min(proto::KERNEL_MINOR), name);
                rustix::io::write(dev, &reply).map_err(|source| CuseError::Register {
                    name: name.to_owned(),
                    source,
                })?;
                return Ok(());
            }
            Err(Errno::AGAIN) | Err(Errno::INTR) if Instant::now() < deadline => {}
            Err(e) => return Err(CuseError::NoInit(e)),
        }
    }
}

fn timespec(d: Duration) -> Timespec {
    Timespec {
        tv_sec: d.as_secs() as i64,
        tv_nsec: d.subsec_nanos() as i64,
    }
}

/// The line a termios asks for, as the port's [`Line`] (modem outputs
/// from `had`).
fn line_of(t: &Termios, had: Option<Line>) -> Line {
    let f = t.line_format();
    let (flow, xon, xoff) = t.flow();
    Line {
        termios: tty::Termios {
            baud: f.baud,
            half_stop_bits: f.half_stop_bits,
            flow,
            xon,
            xoff,
        },
        data_bits: f.data_bits,
        parity: f.parity,
        dtr: had.is_some_and(|l| l.dtr),
        rts: had.is_some_and(|l| l.rts),
    }
}

/// The errno a program sees for a refusal of the driver.
fn errno(e: IOReturn) -> i32 {
    if e == IOReturn::UNSUPPORTED || e == IOReturn::BAD_ARGUMENT {
        libc::EINVAL
    } else {
        libc::EIO
    }
}

#[cfg(test)]
mod tests {
    use super::proto::opcode;
    use super::*;
    use driverkit_wire::serial::SerialPortInterface;

    #[test]
    fn a_termios_reaches_the_line() {
        let mut t = Termios::initial();
        t.cflag = (t.cflag & !bits::CSIZE) | 0o40 | bits::PARENB | bits::CSTOPB;
        t.iflag |= bits::IXON;
        let line = line_of(&t, None);
        assert_eq!(
            (
                line.termios.baud,
                line.data_bits,
                line.termios.half_stop_bits,
                line.parity
            ),
            (9600, 7, 4, driverkit_wire::serial::Parity::Even)
        );
        assert_eq!(
            line.termios.flow.to_wire(),
            driverkit_wire::serial::flow::TX_XON_XOFF
        );
    }

    #[test]
    fn refusals_become_errnos() {
        assert_eq!(errno(IOReturn::UNSUPPORTED), libc::EINVAL);
        assert_eq!(errno(IOReturn::TIMEOUT), libc::EIO);
        assert_eq!(errno(IOReturn::OFFLINE), libc::EIO);
    }

    /// The kernel's side of a node: requests in, answers out, over a
    /// socket that keeps messages apart as `/dev/cuse` does; and the
    /// driver's side of the port's rings. No core: driver calls fail
    /// (logged), which the byte path does not need.
    struct Harness {
        kernel: OwnedFd,
        driver: SerialPortInterface,
        node: CuseNode,
        next: u64,
    }

    /// A reply: its unique, its error (negative errno), its body.
    type Reply = (u64, i32, Vec<u8>);

    impl Harness {
        fn new() -> Harness {
            use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
            let (kernel, dev) = socketpair(
                AddressFamily::UNIX,
                SocketType::SEQPACKET,
                SocketFlags::CLOEXEC,
                None,
            )
            .unwrap();
            let driver = SerialPortInterface::create(12, 12).unwrap();
            let queues = SerialPortInterface::open(driver.memory().try_clone().unwrap()).unwrap();
            let core = Arc::new(Core::new(
                driverkit_core::System::detached(),
                driverkit_core::EntryId::from_raw(1),
                "test".into(),
                queues,
                CuseNode::initial_line(),
            ));
            let node =
                CuseNode::serve(core, dev, PathBuf::from("/dev/ttyDKtest"), u32::MAX).unwrap();
            Harness {
                kernel,
                driver,
                node,
                next: 1,
            }
        }

        fn send(&mut self, op: u32, body: &[u8]) -> u64 {
            let unique = self.next;
            self.next += 2;
            let mut b = Vec::new();
            b.extend_from_slice(&((40 + body.len()) as u32).to_le_bytes());
            b.extend_from_slice(&op.to_le_bytes());
            b.extend_from_slice(&unique.to_le_bytes());
            b.extend_from_slice(&[0; 8]);
            b.extend_from_slice(&1000u32.to_le_bytes());
            b.extend_from_slice(&1000u32.to_le_bytes());
            b.extend_from_slice(&4242u32.to_le_bytes());
            b.extend_from_slice(&[0; 4]);
            b.extend_from_slice(body);
            rustix::io::write(&self.kernel, &b).unwrap();
            unique
        }

        /// The next answer within `ms`, if any.
        fn reply_within(&self, ms: u64) -> Option<Reply> {
            let mut fds = [PollFd::new(&self.kernel, PollFlags::IN)];
            poll(&mut fds, Some(&timespec(Duration::from_millis(ms)))).unwrap();
            if !fds[0].revents().contains(PollFlags::IN) {
                return None;
            }
            let mut buf = vec![0u8; 70_000];
            let n = rustix::io::read(&self.kernel, &mut buf).unwrap();
            let word = |at: usize| u32::from_le_bytes(buf[at..at + 4].try_into().unwrap());
            assert_eq!(word(0) as usize, n, "an answer says its own length");
            let unique = u64::from(word(8)) | (u64::from(word(12)) << 32);
            Some((unique, word(4) as i32, buf[16..n].to_vec()))
        }

        fn reply(&self) -> Reply {
            self.reply_within(5_000).expect("an answer within 5 s")
        }

        fn open(&mut self, flags: u32) -> u64 {
            let mut body = [0u8; 8];
            body[..4].copy_from_slice(&flags.to_le_bytes());
            self.send(opcode::OPEN, &body);
            let (_, error, body) = self.reply();
            assert_eq!(error, 0);
            u64::from_le_bytes(body[..8].try_into().unwrap())
        }

        fn write(&mut self, fh: u64, data: &[u8]) -> u64 {
            let mut body = vec![0u8; 40];
            body[..8].copy_from_slice(&fh.to_le_bytes());
            body[16..20].copy_from_slice(&(data.len() as u32).to_le_bytes());
            body.extend_from_slice(data);
            self.send(opcode::WRITE, &body)
        }

        fn read(&mut self, fh: u64, size: u32, flags: u32) -> u64 {
            let mut body = vec![0u8; 40];
            body[..8].copy_from_slice(&fh.to_le_bytes());
            body[16..20].copy_from_slice(&size.to_le_bytes());
            body[32..36].copy_from_slice(&flags.to_le_bytes());
            self.send(opcode::READ, &body)
        }

        /// An ioctl as the kernel makes it for an unrestricted device:
        /// bare first, then again with what the answer asked for.
        fn ioctl(&mut self, fh: u64, cmd: u32, arg: u64, input: &[u8]) -> u64 {
            let body = |input: &[u8], out: u32| {
                let mut b = vec![0u8; 32];
                b[..8].copy_from_slice(&fh.to_le_bytes());
                b[12..16].copy_from_slice(&cmd.to_le_bytes());
                b[16..24].copy_from_slice(&arg.to_le_bytes());
                b[24..28].copy_from_slice(&(input.len() as u32).to_le_bytes());
                b[28..32].copy_from_slice(&out.to_le_bytes());
                b.extend_from_slice(input);
                b
            };
            let unique = self.send(opcode::IOCTL, &body(&[], 0));
            if arg < 0x1000 {
                return unique; // a value argument: answered (or parked) at once
            }
            let (u, error, retry) = self.reply();
            assert_eq!((u, error), (unique, 0));
            let flags = u32::from_le_bytes(retry[4..8].try_into().unwrap());
            assert_eq!(flags & 4, 4, "a bare ioctl with a pointer is asked again");
            self.send(opcode::IOCTL, &body(input, 256))
        }

        /// The driver puts `bytes` in the RX ring, as `rx_put` does.
        fn receive(&self, bytes: &[u8]) {
            assert_eq!(self.driver.rx().write(bytes).unwrap(), bytes.len());
            self.driver.bell(RX_DATA_BELL).ring();
        }

        /// The driver takes everything in the TX ring, as `tx_take` does.
        fn transmit_all(&self) -> Vec<u8> {
            let mut out = vec![0u8; 4096];
            let n = self.driver.tx().read(&mut out).unwrap();
            self.driver.bell(TX_SPACE_BELL).ring();
            out.truncate(n);
            out
        }
    }

    impl Drop for Harness {
        fn drop(&mut self) {
            self.node.inner.core.set_stopped();
            self.node.stop();
        }
    }

    const NONBLOCK: u32 = libc::O_RDWR as u32 | libc::O_NONBLOCK as u32;

    #[test]
    fn a_writer_is_held_to_the_line_and_xoff_stops_it() {
        let mut h = Harness::new();
        let fh = h.open(NONBLOCK);
        // 9600 baud: 50 ms of the line is 48 bytes, so the least, 256.
        let w = h.write(fh, &[7u8; 1000]);
        assert_eq!(h.reply(), (w, 0, [256u32.to_le_bytes(), [0; 4]].concat()));
        let w = h.write(fh, &[7u8; 10]);
        assert_eq!(h.reply(), (w, -libc::EAGAIN, vec![]));
        assert_eq!(h.transmit_all().len(), 256);
        // A termios the driver cannot take (here there is no driver) is
        // refused with EIO, and not kept.
        let mut t = Termios::initial();
        t.iflag |= bits::IXON;
        let set = h.ioctl(fh, ioctl::cmd::TCSETS, 0x7000, &t.emit(false));
        assert_eq!(h.reply(), (set, -libc::EIO, vec![]));
        assert_eq!(h.node.inner.lock().termios.iflag & bits::IXON, 0);
        // IXON as a driver took it: the far end's XOFF stops the output.
        h.node.inner.lock().termios = t;
        h.receive(&[0x13]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !h.node.inner.lock().xoff {
            assert!(Instant::now() < deadline, "the XOFF was never seen");
            std::thread::sleep(Duration::from_millis(10));
        }
        // Stopped, the writer fills the port's buffer as it would a UART's
        // (and stays writable, as a tty does), then waits; nothing reaches
        // the driver meanwhile.
        let mut held = 0;
        loop {
            let w = h.write(fh, &[9u8; 1000]);
            let (u, error, body) = h.reply();
            assert_eq!(u, w);
            if error == -libc::EAGAIN {
                break;
            }
            held += u32::from_le_bytes(body[..4].try_into().unwrap());
        }
        assert_eq!(held as usize, STOPPED_MAX);
        assert!(
            h.transmit_all().is_empty(),
            "nothing goes out while stopped"
        );
        // XON: what waited goes out first, at the line's pace.
        h.receive(&[0x11]);
        let mut sent = 0;
        while sent < STOPPED_MAX {
            assert!(Instant::now() < deadline, "the held bytes never went out");
            sent += h.transmit_all().len();
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(sent, STOPPED_MAX);
        let w = h.write(fh, b"go");
        assert_eq!(h.reply(), (w, 0, [2u32.to_le_bytes(), [0; 4]].concat()));
        // The flow characters are not input.
        let q = h.ioctl(fh, ioctl::cmd::FIONREAD, 0x7000, &[]);
        let (u, error, body) = h.reply();
        assert_eq!((u, error), (q, 0));
        assert_eq!(body[16..20], 0u32.to_le_bytes());
    }

    #[test]
    fn a_blocking_read_waits_for_bytes_and_a_signal_ends_it() {
        let mut h = Harness::new();
        let fh = h.open(libc::O_RDWR as u32);
        let r = h.read(fh, 100, libc::O_RDWR as u32);
        assert_eq!(h.reply_within(100), None, "nothing to read yet");
        h.receive(b"hello");
        assert_eq!(h.reply(), (r, 0, b"hello".to_vec()));
        let r = h.read(fh, 100, libc::O_RDWR as u32);
        assert_eq!(h.reply_within(100), None);
        h.send(opcode::INTERRUPT, &r.to_le_bytes());
        assert_eq!(h.reply(), (r, -libc::EINTR, vec![]));
        // Non-blocking with nothing there: EAGAIN at once.
        let r = h.read(fh, 100, NONBLOCK);
        assert_eq!(h.reply(), (r, -libc::EAGAIN, vec![]));
    }

    #[test]
    fn tcdrain_waits_until_the_driver_took_every_byte() {
        let mut h = Harness::new();
        let fh = h.open(libc::O_RDWR as u32);
        let w = h.write(fh, b"0123456789");
        assert_eq!(h.reply(), (w, 0, [10u32.to_le_bytes(), [0; 4]].concat()));
        let drain = h.ioctl(fh, ioctl::cmd::TCSBRK, 1, &[]);
        assert_eq!(h.reply_within(100), None, "the bytes are still in the ring");
        assert_eq!(h.transmit_all(), b"0123456789");
        let (u, error, _) = h.reply();
        assert_eq!((u, error), (drain, 0));
        // An ioctl a serial port does not have.
        let bad = h.ioctl(fh, 0x5490, 0, &[]);
        assert_eq!(h.reply(), (bad, -libc::ENOTTY, vec![]));
    }
}

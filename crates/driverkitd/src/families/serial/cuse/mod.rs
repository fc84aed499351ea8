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
//!   no room, a drain, `TIOCMIWAIT`) is parked in the node's [`State`].
//!   Ioctls are decoded by [`ioctl`].
//! - `cuse-io` parks on the port's two system doorbells (received bytes,
//!   transmit room) and its own kick word at once (`futex_waitv`), and on
//!   each wake-up runs [`Inner::pump`]: received bytes into the input
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

pub mod ioctl;
pub mod proto;

use driverkit_wire::sync::Locked;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
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

/// The kernel's CUSE device.
pub const CUSE_DEVICE: &str = "/dev/cuse";
/// What a node's device is called: `ttyDK0`, `ttyDK1`, ...
use super::port::CLOSING_WAIT;

const NAME_PREFIX: &str = "ttyDK";
/// The tty's read buffer (`N_TTY_BUF_SIZE`).
const INPUT_MAX: usize = 4096;
/// A writer is accepted at most this far ahead of the line...
const AHEAD: Duration = Duration::from_millis(50);
/// ...but never fewer bytes than this.
const AHEAD_MIN: usize = 256;
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

/// A read waiting for bytes.
struct PendingRead {
    unique: u64,
    size: usize,
    /// Bytes that complete it (`VMIN`, at most `size`; 1 with `VMIN` 0).
    min: usize,
    /// `VTIME`: with `VMIN` 0 a total timeout, else between bytes.
    vtime: Option<Duration>,
    vmin_zero: bool,
    since: Instant,
}

/// A blocking write not yet all accepted.
struct PendingWrite {
    unique: u64,
    data: Vec<u8>,
    done: usize,
}

/// What happens once the output has gone.
enum After {
    Reply,
    Termios {
        termios: Termios,
        flush_input: bool,
    },
    /// The last close: hang up.
    Release,
}

struct PendingDrain {
    unique: u64,
    after: After,
    deadline: Option<Instant>,
}

struct PendingModemWait {
    unique: u64,
    mask: u32,
}

struct Poller {
    handle: u64,
    events: u32,
}

/// Everything a node's requests share.
struct State {
    termios: Termios,
    opens: u32,
    /// Open files and their `open` flags (`O_NONBLOCK`).
    files: HashMap<u64, u32>,
    next_fh: u64,
    exclusive: bool,
    input: VecDeque<u8>,
    /// When bytes last arrived (`VTIME` between bytes).
    last_rx: Instant,
    /// The far end sent XOFF (with `IXON`).
    xoff: bool,
    /// `TCOOFF`.
    suspended: bool,
    reads: VecDeque<PendingRead>,
    writes: VecDeque<PendingWrite>,
    drains: Vec<PendingDrain>,
    modem_waits: Vec<PendingModemWait>,
    pollers: Vec<Poller>,
    /// The modem inputs last reported, as `tiocm` bits.
    modem: u32,
    counters: Counters,
    serial_flags: u32,
    winsize: [u8; 8],
    corrupt_logged: bool,
}

struct Inner {
    core: Arc<Core>,
    dev: OwnedFd,
    path: PathBuf,
    index: u32,
    state: Mutex<State>,
    /// Bumped (and woken) to make `cuse-io` look again.
    kick: AtomicU32,
    /// Wakes `cuse-dev` out of its poll of the device.
    wake: OwnedFd,
}

/// Replies and work that must wait until the state's lock is let go.
#[derive(Default)]
struct Work {
    replies: Vec<Vec<u8>>,
    after: Vec<(u64, After)>,
    deadline: Option<Instant>,
}

impl Work {
    fn until(&mut self, at: Instant) {
        self.deadline = Some(self.deadline.map_or(at, |d| d.min(at)));
    }
}

/// A port's CUSE node and its threads.
pub struct CuseNode {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl CuseNode {
    /// The line a node starts with.
    pub fn initial_line() -> Line {
        line_of(&Termios::initial(), None)
    }

    /// Registers a CUSE device for the port of `core` and starts serving it.
    pub fn start(core: Arc<Core>) -> Result<CuseNode, String> {
        let dev = rustix::fs::open(
            CUSE_DEVICE,
            OFlags::RDWR | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
        )
        .map_err(|e| format!("cannot open {CUSE_DEVICE}: {e}"))?;
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
    fn serve(core: Arc<Core>, dev: OwnedFd, path: PathBuf, index: u32) -> Result<CuseNode, String> {
        // `cuse-dev` polls before it reads, and must never block in a read
        // (its stop comes through the poll).
        rustix::fs::fcntl_setfl(&dev, OFlags::NONBLOCK)
            .map_err(|e| format!("{CUSE_DEVICE}: {e}"))?;
        let wake = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC)
            .map_err(|e| format!("eventfd: {e}"))?;
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
            wake,
        });
        let node = CuseNode {
            inner,
            threads: Mutex::new(Vec::new()),
        };
        for (label, body) in [
            ("cuse-dev", Inner::serve_requests as fn(&Inner)),
            ("cuse-io", Inner::move_bytes as fn(&Inner)),
        ] {
            let inner = node.inner.clone();
            match std::thread::Builder::new()
                .name(label.into())
                .stack_size(256 * 1024)
                .spawn(move || body(&inner))
            {
                Ok(t) => node.threads.locked().push(t),
                Err(e) => {
                    node.inner.core.set_stopped();
                    node.stop();
                    return Err(format!("cannot start {label}: {e}"));
                }
            }
        }
        Ok(node)
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
        let _ = rustix::io::write(&self.inner.wake, &1u64.to_ne_bytes());
        self.inner.kick();
        let threads = std::mem::take(&mut *self.threads.locked());
        for t in threads {
            let _ = t.join();
        }
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
fn handshake(dev: &OwnedFd, name: &str) -> Result<(), String> {
    let mut buf = vec![0u8; proto::REQUEST_BUFFER];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut fds = [PollFd::new(dev, PollFlags::IN)];
        let _ = poll(&mut fds, Some(&timespec(Duration::from_millis(100))));
        match rustix::io::read(dev, &mut buf) {
            Ok(n) => {
                let (h, r) =
                    Request::parse(&buf[..n]).map_err(|e| format!("{CUSE_DEVICE}: {e}"))?;
                let Request::Init { major, minor } = r else {
                    return Err(format!(
                        "{CUSE_DEVICE}: expected CUSE_INIT first, got opcode {}",
                        h.opcode
                    ));
                };
                if major != proto::KERNEL_VERSION {
                    return Err(format!(
                        "{CUSE_DEVICE}: the kernel speaks FUSE {major}.{minor}, this daemon {}.x",
                        proto::KERNEL_VERSION
                    ));
                }
                let reply = proto::init_reply(h.unique, minor.min(proto::KERNEL_MINOR), name);
                rustix::io::write(dev, &reply)
                    .map_err(|e| format!("{CUSE_DEVICE}: registering {name}: {e}"))?;
                return Ok(());
            }
            Err(Errno::AGAIN) | Err(Errno::INTR) if Instant::now() < deadline => {}
            Err(e) => return Err(format!("{CUSE_DEVICE}: no CUSE_INIT: {e}")),
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

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.locked()
    }

    fn send(&self, bytes: &[u8]) {
        // ENOENT: the request was interrupted and is gone.
        if let Err(e) = rustix::io::write(&self.dev, bytes) {
            if e != Errno::NOENT && !self.core.stopped() {
                tracing::warn!("serial   {}: answering the kernel: {e}", self.core.name);
            }
        }
    }

    fn kick(&self) {
        self.kick.fetch_add(1, Ordering::SeqCst);
        let _ = rustix::thread::futex::wake(&self.kick, rustix::thread::futex::Flags::PRIVATE, 1);
    }

    /// How many bytes a writer may add now.
    fn tx_room(&self, st: &State) -> usize {
        if st.xoff || st.suspended {
            return 0;
        }
        let q = &self.core.queues;
        let tx = q.tx();
        let (Ok(unsent), Ok(free)) = (q.tx_unsent(), tx.free()) else {
            return 0;
        };
        let line = (st.termios.ospeed as u128 * AHEAD.as_micros() / 10_000_000) as usize;
        let bound = line.clamp(AHEAD_MIN, tx.size() as usize);
        bound.saturating_sub(unsent as usize).min(free as usize)
    }

    /// The output has gone: nothing parked, and the hardware sent all
    /// (or, for a driver that does not say, took all).
    fn drained(&self, st: &State) -> bool {
        st.writes.is_empty() && self.core.queues.tx_unsent().is_ok_and(|u| u == 0)
    }

    fn revents(&self, st: &State) -> u32 {
        let mut r = 0;
        if !st.input.is_empty() {
            r |= POLLIN | POLLRDNORM;
        }
        if self.tx_room(st) > 0 {
            r |= POLLOUT | POLLWRNORM;
        }
        r
    }

    /// Received bytes into the input (`IXON` applied); while nobody has
    /// the node open they are dropped, as a closed UART drops them.
    fn pull_rx(&self, st: &mut State) {
        let q = &self.core.queues;
        let rx = q.rx();
        if st.opens == 0 {
            let n = rx.discard();
            if n > 0 {
                self.core
                    .rx_dropped
                    .fetch_add(u64::from(n), Ordering::Relaxed);
            }
        } else {
            let room = INPUT_MAX - st.input.len().min(INPUT_MAX);
            let mut buf = [0u8; INPUT_MAX];
            let n = match rx.peek(&mut buf[..room]) {
                Ok(n) => n,
                Err(_) => {
                    if !st.corrupt_logged {
                        tracing::error!(
                            "serial   {}: the driver left its RX ring's indices inconsistent; dropping what it holds",
                            self.core.name
                        );
                        st.corrupt_logged = true;
                    }
                    rx.discard();
                    0
                }
            };
            if n == 0 {
                return;
            }
            let ixon = st.termios.iflag & bits::IXON != 0;
            let ixany = st.termios.iflag & bits::IXANY != 0;
            let (start, stop) = (st.termios.cc[bits::VSTART], st.termios.cc[bits::VSTOP]);
            for &b in &buf[..n] {
                if ixon && b == stop {
                    st.xoff = true;
                    continue;
                }
                if ixon && b == start {
                    st.xoff = false;
                    continue;
                }
                if ixon && ixany {
                    st.xoff = false;
                }
                st.input.push_back(b);
            }
            let _ = rx.consume(n);
            st.last_rx = Instant::now();
            st.counters.rx = st.counters.rx.wrapping_add(n as u32);
            self.core.rx_bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
        if q.rx_blocked() {
            q.bell(DRIVER_BELL).ring();
        }
    }

    /// Puts what fits of `data` in the TX ring; how much did.
    fn put_tx(&self, st: &mut State, data: &[u8]) -> usize {
        let n = self.tx_room(st).min(data.len());
        if n == 0 {
            return 0;
        }
        let put = self.core.queues.tx().write(&data[..n]).unwrap_or(0);
        if put > 0 {
            st.counters.tx = st.counters.tx.wrapping_add(put as u32);
            self.core.tx_bytes.fetch_add(put as u64, Ordering::Relaxed);
            self.core.queues.bell(DRIVER_BELL).notify();
        }
        put
    }

    /// Everything that may have become possible: bytes in, reads and
    /// writes served, drains finished, pollers woken.
    fn pump(&self, st: &mut State, work: &mut Work) {
        let now = Instant::now();
        self.pull_rx(st);
        // Reads, in the order they came.
        while let Some(r) = st.reads.front() {
            let have = st.input.len();
            let timed_out = match (r.vtime, r.vmin_zero) {
                (Some(t), true) => now >= r.since + t,
                (Some(t), false) => have > 0 && now >= st.last_rx + t,
                (None, _) => false,
            };
            if have < r.min && !timed_out {
                if let Some(t) = r.vtime {
                    work.until(if r.vmin_zero {
                        r.since + t
                    } else {
                        st.last_rx + t
                    });
                }
                break;
            }
            let n = have.min(r.size);
            let data: Vec<u8> = st.input.drain(..n).collect();
            work.replies.push(proto::read_reply(r.unique, &data));
            st.reads.pop_front();
            // Room in the input again: more may wait in the ring.
            self.pull_rx(st);
        }
        // Writes, in the order they came.
        while let Some(mut w) = st.writes.pop_front() {
            let put = self.put_tx(st, &w.data[w.done..]);
            w.done += put;
            if w.done == w.data.len() {
                work.replies
                    .push(proto::write_reply(w.unique, w.done as u32));
            } else {
                st.writes.push_front(w);
                break;
            }
        }
        if !st.drains.is_empty() {
            let drained = self.drained(st);
            let mut i = 0;
            while i < st.drains.len() {
                let d = &st.drains[i];
                let expired = d.deadline.is_some_and(|at| now >= at);
                if drained || expired {
                    let d = st.drains.swap_remove(i);
                    work.after.push((d.unique, d.after));
                } else {
                    if let Some(at) = d.deadline {
                        work.until(at);
                    }
                    i += 1;
                }
            }
        }
        // Pollers waiting for an event that now holds.
        if !st.pollers.is_empty() {
            let holds = self.revents(st);
            let mut i = 0;
            while i < st.pollers.len() {
                if st.pollers[i].events & holds != 0 {
                    let p = st.pollers.swap_remove(i);
                    work.replies.push(proto::poll_notify(p.handle));
                } else {
                    i += 1;
                }
            }
        }
    }

    /// Sends what `work` holds and runs what waited for a drain.
    fn finish(&self, work: Work) {
        for r in &work.replies {
            self.send(r);
        }
        for (unique, after) in work.after {
            match after {
                After::Reply => self.send(&proto::ioctl_reply(unique, 0, &[])),
                After::Termios {
                    termios,
                    flush_input,
                } => {
                    let answer = match self.apply_termios(termios, flush_input) {
                        Ok(()) => proto::ioctl_reply(unique, 0, &[]),
                        Err(e) => proto::error_reply(unique, e),
                    };
                    self.send(&answer);
                }
                After::Release => {
                    self.hang_up();
                    self.send(&proto::empty_reply(unique));
                }
            }
        }
    }

    /// Runs `f` on the state, then pumps, then answers.
    fn with_state(&self, f: impl FnOnce(&Inner, &mut State, &mut Work)) {
        let mut work = Work::default();
        {
            let mut st = self.lock();
            f(self, &mut st, &mut work);
            self.pump(&mut st, &mut work);
        }
        self.finish(work);
        self.kick();
    }

    // --- cuse-dev ----------------------------------------------------------

    fn serve_requests(&self) {
        let mut buf = vec![0u8; proto::REQUEST_BUFFER];
        while !self.core.stopped() {
            let mut fds = [
                PollFd::new(&self.dev, PollFlags::IN),
                PollFd::new(&self.wake, PollFlags::IN),
            ];
            if poll(&mut fds, Some(&timespec(Duration::from_secs(1)))).is_err() {
                continue;
            }
            match rustix::io::read(&self.dev, &mut buf) {
                // The far end closed (only a test's socket does that).
                Ok(0) => return,
                Ok(n) => match Request::parse(&buf[..n]) {
                    Ok((h, r)) => self.handle(h, r),
                    Err(e) => {
                        tracing::error!("serial   {}: {CUSE_DEVICE}: {e}", self.core.name)
                    }
                },
                // Nothing yet, or a request withdrawn before it was read.
                Err(Errno::AGAIN) | Err(Errno::INTR) | Err(Errno::NOENT) => {}
                Err(e) => {
                    if !self.core.stopped() {
                        tracing::error!("serial   {}: {CUSE_DEVICE} ended: {e}", self.core.name);
                    }
                    return;
                }
            }
        }
    }

    fn handle(&self, h: proto::Header, r: Request<'_>) {
        let unique = h.unique;
        match r {
            Request::Open { flags } => self.open(unique, h.caller, flags),
            Request::Read { fh, size, flags } => {
                // A read carries the file's flags as they are now
                // (`fcntl` may have changed them since the open).
                if let Some(f) = self.lock().files.get_mut(&fh) {
                    *f = flags;
                }
                let nonblock = flags & libc::O_NONBLOCK as u32 != 0;
                self.read(unique, size as usize, nonblock)
            }
            Request::Write { fh, data } => self.write(unique, fh, data),
            Request::Release { fh } => self.release(unique, fh),
            Request::Flush { .. } | Request::Fsync { .. } => self.send(&proto::empty_reply(unique)),
            Request::Interrupt { unique } => self.interrupt(unique),
            Request::Ioctl(io) => self.ioctl(unique, &io),
            Request::Poll {
                handle,
                flags,
                events,
                ..
            } => self.with_state(|me, st, work| {
                let revents = me.revents(st);
                if flags & proto::POLL_SCHEDULE_NOTIFY != 0 && revents & events == 0 {
                    st.pollers.retain(|p| p.handle != handle);
                    st.pollers.push(Poller { handle, events });
                }
                work.replies.push(proto::poll_reply(unique, revents));
            }),
            Request::Init { .. } | Request::Other { .. } => {
                self.send(&proto::error_reply(unique, libc::ENOSYS))
            }
        }
    }

    /// An open: the first one activates the port, with an empty input
    /// and the modem outputs raised (as Linux's tty layer raises DTR and
    /// RTS on open).
    fn open(&self, unique: u64, caller: Caller, flags: u32) {
        let (fh, first) = {
            let mut st = self.lock();
            if st.exclusive && st.opens > 0 && caller.uid != 0 {
                drop(st);
                self.send(&proto::error_reply(unique, libc::EBUSY));
                return;
            }
            st.opens += 1;
            let fh = st.next_fh;
            st.next_fh += 1;
            st.files.insert(fh, flags);
            let first = st.opens == 1;
            if first {
                st.input.clear();
                st.xoff = false;
                st.suspended = false;
                let dropped = self.core.queues.rx().discard();
                self.core
                    .rx_dropped
                    .fetch_add(u64::from(dropped), Ordering::Relaxed);
            }
            (fh, first)
        };
        if first {
            self.core.opened(&self.path);
            let _ = self.core.program_mcr(true, true);
        }
        self.send(&proto::open_reply(unique, fh));
    }

    /// The last close of an open file; the port's last waits for the
    /// output (at most `CLOSING_WAIT`) and hangs up.
    fn release(&self, unique: u64, fh: u64) {
        let last = {
            let mut st = self.lock();
            st.files.remove(&fh);
            st.opens = st.opens.saturating_sub(1);
            st.opens == 0
        };
        if !last {
            self.send(&proto::empty_reply(unique));
            return;
        }
        self.with_state(|_, st, _| {
            st.drains.push(PendingDrain {
                unique,
                after: After::Release,
                deadline: Some(Instant::now() + CLOSING_WAIT),
            });
        });
    }

    /// After the last close: modem outputs dropped (`HUPCL`), the port
    /// deactivated, unless a program opened it again meanwhile.
    fn hang_up(&self) {
        let (hupcl, orphans) = {
            let mut st = self.lock();
            if st.opens > 0 {
                return;
            }
            st.exclusive = false;
            st.input.clear();
            // Nothing should wait with no file open; whatever does hears
            // the hang-up rather than waiting for ever.
            let mut orphans: Vec<u64> = st.reads.drain(..).map(|r| r.unique).collect();
            orphans.extend(st.writes.drain(..).map(|w| w.unique));
            orphans.extend(st.modem_waits.drain(..).map(|w| w.unique));
            (st.termios.cflag & bits::HUPCL != 0, orphans)
        };
        for unique in orphans {
            self.send(&proto::error_reply(unique, libc::EIO));
        }
        self.core.closed(&self.path, hupcl);
    }

    fn read(&self, unique: u64, size: usize, nonblock: bool) {
        self.with_state(|_, st, work| {
            let (vmin, vtime) = st.termios.vmin_vtime();
            let min = usize::from(vmin.max(1)).min(size.max(1));
            let now = if !st.reads.is_empty() {
                // Behind another reader: in line.
                None
            } else if nonblock {
                Some(if st.input.is_empty() {
                    Err(libc::EAGAIN)
                } else {
                    Ok(())
                })
            } else if (vmin == 0 && vtime == 0) || st.input.len() >= min {
                Some(Ok(()))
            } else {
                None
            };
            match now {
                Some(Ok(())) => {
                    let n = st.input.len().min(size);
                    let data: Vec<u8> = st.input.drain(..n).collect();
                    work.replies.push(proto::read_reply(unique, &data));
                }
                Some(Err(e)) => work.replies.push(proto::error_reply(unique, e)),
                None => st.reads.push_back(PendingRead {
                    unique,
                    size,
                    min,
                    vtime: (vtime > 0).then(|| Duration::from_millis(u64::from(vtime) * 100)),
                    vmin_zero: vmin == 0,
                    since: Instant::now(),
                }),
            }
        });
    }

    /// A write: what fits now is taken; a non-blocking writer hears how
    /// much (or `EAGAIN`), a blocking one waits until all is taken.
    fn write(&self, unique: u64, fh: u64, data: &[u8]) {
        self.with_state(|me, st, work| {
            let nonblock = st
                .files
                .get(&fh)
                .is_some_and(|flags| flags & libc::O_NONBLOCK as u32 != 0);
            // Behind others: wait in line.
            let put = if st.writes.is_empty() {
                me.put_tx(st, data)
            } else {
                0
            };
            if put == data.len() || (nonblock && put > 0) {
                work.replies.push(proto::write_reply(unique, put as u32));
            } else if nonblock {
                work.replies.push(proto::error_reply(unique, libc::EAGAIN));
            } else {
                st.writes.push_back(PendingWrite {
                    unique,
                    data: data.to_vec(),
                    done: put,
                });
            }
        });
    }

    /// A signal for the caller of `unique`: its wait ends with `EINTR`
    /// (a write with bytes taken reports them).
    fn interrupt(&self, unique: u64) {
        let answer = {
            let mut st = self.lock();
            if let Some(i) = st.reads.iter().position(|r| r.unique == unique) {
                st.reads.remove(i);
                Some(proto::error_reply(unique, libc::EINTR))
            } else if let Some(i) = st.writes.iter().position(|w| w.unique == unique) {
                let w = st.writes.remove(i).expect("found above");
                Some(if w.done > 0 {
                    proto::write_reply(unique, w.done as u32)
                } else {
                    proto::error_reply(unique, libc::EINTR)
                })
            } else if let Some(i) = st
                .drains
                .iter()
                .position(|d| d.unique == unique && !matches!(d.after, After::Release))
            {
                st.drains.swap_remove(i);
                Some(proto::error_reply(unique, libc::EINTR))
            } else if let Some(i) = st.modem_waits.iter().position(|w| w.unique == unique) {
                st.modem_waits.swap_remove(i);
                Some(proto::error_reply(unique, libc::EINTR))
            } else {
                None
            }
        };
        if let Some(a) = answer {
            self.send(&a);
        }
    }

    fn ioctl(&self, unique: u64, io: &proto::Ioctl<'_>) {
        let termios = self.lock().termios;
        match ioctl::decode(io.cmd, io.arg, io.input, io.out_size as usize, &termios) {
            Decoded::Fetch { input, output } => self.send(&proto::ioctl_retry(
                unique,
                (input > 0).then_some((io.arg, input as u64)),
                (output > 0).then_some((io.arg, output as u64)),
            )),
            Decoded::Refused(e) => {
                if e == libc::ENOTTY {
                    tracing::debug!(
                        "serial   {}: ioctl {:#x} is not a serial port's (ENOTTY)",
                        self.core.name,
                        io.cmd
                    );
                }
                self.send(&proto::error_reply(unique, e))
            }
            Decoded::Ready(request) => self.serve_ioctl(unique, request),
        }
    }

    fn serve_ioctl(&self, unique: u64, request: TtyIoctl) {
        let ok = |out: &[u8]| proto::ioctl_reply(unique, 0, out);
        let int = |v: u32| proto::ioctl_reply(unique, 0, &v.to_le_bytes());
        let answer = match request {
            TtyIoctl::GetTermios { v2 } => ok(&self.lock().termios.emit(v2)),
            TtyIoctl::SetTermios { when, termios } => {
                if when == When::Now {
                    match self.apply_termios(termios, false) {
                        Ok(()) => ok(&[]),
                        Err(e) => proto::error_reply(unique, e),
                    }
                } else {
                    return self.park_drain(
                        unique,
                        After::Termios {
                            termios,
                            flush_input: when == When::Flush,
                        },
                    );
                }
            }
            TtyIoctl::GetModem => match self.core.driver(|d| d.hw_get_modem_status()) {
                Ok(inputs) => {
                    let line = self.core.line();
                    int(ioctl::modem_bits((line.dtr, line.rts), inputs))
                }
                Err(e) => proto::error_reply(unique, errno(e)),
            },
            TtyIoctl::SetModem { how, bits } => {
                let line = self.core.line();
                let want = |bit: u32, was: bool| match how {
                    ModemSet::Set => bits & bit != 0,
                    ModemSet::Bis => was || bits & bit != 0,
                    ModemSet::Bic => was && bits & bit == 0,
                };
                let (dtr, rts) = (want(tiocm::DTR, line.dtr), want(tiocm::RTS, line.rts));
                match self.core.program_mcr(dtr, rts) {
                    Ok(()) => ok(&[]),
                    Err(refused) => proto::error_reply(unique, errno(refused.error)),
                }
            }
            TtyIoctl::WaitModem { mask } => {
                self.lock()
                    .modem_waits
                    .push(PendingModemWait { unique, mask });
                return;
            }
            TtyIoctl::GetCounters => ok(&self.lock().counters.emit()),
            TtyIoctl::Drain => return self.park_drain(unique, After::Reply),
            TtyIoctl::SendBreak { ms } => return self.send_break(unique, ms),
            TtyIoctl::Break { on } => match self.core.driver(|d| d.hw_send_break(on)) {
                Ok(()) => ok(&[]),
                Err(e) => proto::error_reply(unique, errno(e)),
            },
            TtyIoctl::Flush { input, output } => {
                if input {
                    let mut st = self.lock();
                    st.input.clear();
                    self.core.queues.rx().discard();
                }
                let r = self.core.log_refusal(
                    "a FIFO reset",
                    self.core.driver(|d| d.hw_reset_fifo(output, input)),
                );
                match r {
                    Ok(()) => ok(&[]),
                    Err(e) => proto::error_reply(unique, errno(e)),
                }
            }
            TtyIoctl::FlowControl { arg } => {
                let mut reply = ok(&[]);
                self.with_state(|me, st, _| match arg {
                    0 => st.suspended = true,
                    1 => st.suspended = false,
                    _ => {
                        let c = st.termios.cc[if arg == 2 { bits::VSTOP } else { bits::VSTART }];
                        // A flow character goes ahead of the bound, as a
                        // UART sends it ahead of its FIFO.
                        if me.core.queues.tx().write(&[c]).unwrap_or(0) == 1 {
                            me.core.queues.bell(DRIVER_BELL).notify();
                        } else {
                            reply = proto::error_reply(unique, libc::EIO);
                        }
                    }
                });
                reply
            }
            TtyIoctl::InputWaiting => {
                let st = self.lock();
                let ring = self.core.queues.rx().used().unwrap_or(0) as usize;
                int((st.input.len() + ring) as u32)
            }
            TtyIoctl::OutputWaiting => {
                let st = self.lock();
                let parked: usize = st.writes.iter().map(|w| w.data.len() - w.done).sum();
                int(self.core.queues.tx_unsent().unwrap_or(0) + parked as u32)
            }
            TtyIoctl::Exclusive { on } => {
                self.lock().exclusive = on;
                ok(&[])
            }
            TtyIoctl::GetSerial => {
                let st = self.lock();
                let fifo = self.tx_room(&st) + self.core.queues.tx_unsent().unwrap_or(0) as usize;
                ok(&ioctl::serial_struct(
                    self.index,
                    fifo as u32,
                    st.serial_flags,
                ))
            }
            TtyIoctl::SetSerial { flags } => {
                self.lock().serial_flags = flags;
                ok(&[])
            }
            TtyIoctl::GetWinsize => ok(&self.lock().winsize),
            TtyIoctl::SetWinsize { size } => {
                self.lock().winsize = size;
                ok(&[])
            }
            TtyIoctl::GetLineDiscipline => int(0),
            TtyIoctl::SetLineDiscipline { ldisc: 0 } => ok(&[]),
            TtyIoctl::SetLineDiscipline { .. } => proto::error_reply(unique, libc::EINVAL),
        };
        self.send(&answer);
    }

    fn park_drain(&self, unique: u64, after: After) {
        self.with_state(|_, st, _| {
            st.drains.push(PendingDrain {
                unique,
                after,
                deadline: None,
            })
        });
    }

    /// `tcsendbreak`: the line held in break for `ms`, on its own thread
    /// so that the node keeps serving meanwhile.
    fn send_break(&self, unique: u64, ms: u32) {
        let core = self.core.clone();
        let dev = match self.dev.as_fd().try_clone_to_owned() {
            Ok(fd) => fd,
            Err(_) => return self.send(&proto::error_reply(unique, libc::EIO)),
        };
        let spawned = std::thread::Builder::new()
            .name("cuse-break".into())
            .spawn(move || {
                let r = core.driver(|d| d.hw_send_break(true)).and_then(|()| {
                    std::thread::sleep(Duration::from_millis(ms.into()));
                    core.driver(|d| d.hw_send_break(false))
                });
                let answer = match core.log_refusal("a break", r) {
                    Ok(()) => proto::ioctl_reply(unique, 0, &[]),
                    Err(e) => proto::error_reply(unique, errno(e)),
                };
                let _ = rustix::io::write(&dev, &answer);
            });
        if spawned.is_err() {
            self.send(&proto::error_reply(unique, libc::EAGAIN));
        }
    }

    /// A program's new termios: what changed reaches the driver; kept only
    /// if the driver took it. `B0` drops the modem outputs instead of
    /// setting a rate, and a rate after `B0` raises them again.
    fn apply_termios(&self, new: Termios, flush_input: bool) -> Result<(), i32> {
        let old = self.lock().termios;
        let hang = new.cflag & bits::CBAUD == 0;
        let was_hung = old.cflag & bits::CBAUD == 0;
        let mut effective = new;
        if hang {
            effective.ospeed = old.ospeed;
            effective.ispeed = old.ispeed;
        }
        let want = line_of(&effective, Some(self.core.line()));
        self.core
            .program(want, false)
            .map_err(|refused| errno(refused.error))?;
        if hang && !was_hung {
            let _ = self.core.program_mcr(false, false);
        } else if was_hung && !hang {
            let _ = self.core.program_mcr(true, true);
        }
        self.with_state(|me, st, _| {
            st.termios = new;
            if st.termios.iflag & bits::IXON == 0 {
                st.xoff = false;
            }
            if flush_input {
                st.input.clear();
                me.core.queues.rx().discard();
            }
        });
        Ok(())
    }

    // --- cuse-io -----------------------------------------------------------

    fn move_bytes(&self) {
        let q = &self.core.queues;
        let (rx_bell, tx_bell) = (q.bell(RX_DATA_BELL), q.bell(TX_SPACE_BELL));
        rx_bell.arm();
        tx_bell.arm();
        while !self.core.stopped() {
            let seen = [
                rx_bell.futex_word().load(Ordering::SeqCst),
                tx_bell.futex_word().load(Ordering::SeqCst),
                self.kick.load(Ordering::SeqCst),
            ];
            let mut work = Work::default();
            {
                let mut st = self.lock();
                self.pump(&mut st, &mut work);
            }
            let timeout = work.deadline.map_or(IDLE, |at| {
                at.saturating_duration_since(Instant::now()).min(IDLE)
            });
            self.finish(work);
            let waits = [
                wait_entry(rx_bell.futex_word(), seen[0], false),
                wait_entry(tx_bell.futex_word(), seen[1], false),
                wait_entry(&self.kick, seen[2], true),
            ];
            let _ = wait_any(&waits, timeout);
        }
        rx_bell.disarm();
        tx_bell.disarm();
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
            (9600, 7, 4, driverkit_wire::serial::parity::EVEN)
        );
        assert_eq!(line.termios.flow, driverkit_wire::serial::flow::TX_XON_XOFF);
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
                1,
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
        // IXON as a driver took it: the far end's XOFF stops the writer;
        // XON starts it.
        h.node.inner.lock().termios = t;
        h.receive(&[0x13]);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let w = h.write(fh, b"held");
            let (_, error, _) = h.reply();
            if error == -libc::EAGAIN {
                break;
            }
            assert!(Instant::now() < deadline, "XOFF never held the writer");
            h.transmit_all();
            std::thread::sleep(Duration::from_millis(10));
            let _ = w;
        }
        h.receive(&[0x11]);
        std::thread::sleep(Duration::from_millis(50));
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

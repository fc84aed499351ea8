//! A port's node where the kernel has no `/dev/cuse`: a pty ([`tty`]) and
//! the two threads that move bytes between it and the port's rings, and
//! turn what the pty says (opened, closed, `tcsetattr`, `tcflush`) into
//! the driver's `hw_*` calls.
//!
//! - `serial-in`: the pty's output (what programs write) into the TX ring,
//!   read only while the ring has room, so that a full ring leaves the
//!   bytes in the pty and a writer blocks; and the pty's status packets.
//! - `serial-out`: the RX ring into the pty, taken from the ring only as
//!   fast as the pty accepts them, so that a reader that never reads holds
//!   the driver back instead of growing a buffer.
//!
//! What a pty cannot do is in [`tty`]'s notes: the kernel's pty buffers
//! about 64 KiB of a writer's bytes the daemon cannot bound, `tcdrain`
//! returns once the daemon has read them, and `EXTPROC` (which carries
//! `tcsetattr` to the daemon) turns off the kernel's own `IXON`.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use driverkit_wire::interfaces::IOUserSerialInterface;
use driverkit_wire::serial::{DRIVER_BELL, RX_DATA_BELL, TX_SPACE_BELL};
use driverkit_wire::shm::SPIN;
use driverkit_wire::{IOResult, IOReturn};
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::io::Errno;

use super::port::{Core, Node, NodeKind};
use super::tty::{self, Tty, PKT_FLUSHREAD, PKT_FLUSHWRITE, PKT_IOCTL};

/// Bytes moved per read or write of the pty.
const CHUNK: usize = 64 * 1024;

struct Shared {
    core: Arc<Core>,
    tty: Tty,
    /// Written to wake the threads out of `poll`.
    wake: OwnedFd,
    /// The tty's input was flushed (or a program opened it afresh): the
    /// RX ring's bytes go too (done by `serial-out`, the ring's one
    /// consumer).
    flush_rx: AtomicBool,
}

/// A port's pty and its threads.
pub struct PtyNode {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl PtyNode {
    /// A new pty, and the line it starts with (9600 baud 8N1, no flow
    /// control).
    pub fn open_tty() -> IOResult<(Tty, tty::Termios)> {
        let tty = Tty::open().map_err(|e| {
            tracing::error!("serial   cannot make a pty: {e}");
            IOReturn::NO_RESOURCES
        })?;
        let termios = tty.termios().map_err(|_| IOReturn::NO_RESOURCES)?;
        Ok((tty, termios))
    }

    /// Starts moving bytes between `tty` and the port's rings.
    pub fn start(core: Arc<Core>, tty: Tty) -> IOResult<PtyNode> {
        let wake = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC)
            .map_err(|_| IOReturn::NO_RESOURCES)?;
        let shared = Arc::new(Shared {
            core,
            tty,
            wake,
            flush_rx: AtomicBool::new(false),
        });
        let node = PtyNode {
            shared,
            threads: Mutex::new(Vec::new()),
        };
        for (label, body) in [
            ("serial-in", tty_in as fn(&Shared)),
            ("serial-out", tty_out as fn(&Shared)),
        ] {
            let s = node.shared.clone();
            match std::thread::Builder::new()
                .name(label.into())
                .stack_size(256 * 1024)
                .spawn(move || body(&s))
            {
                Ok(t) => node
                    .threads
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(t),
                Err(_) => {
                    node.shared.core.set_stopped();
                    node.stop();
                    return Err(IOReturn::NO_RESOURCES);
                }
            }
        }
        Ok(node)
    }
}

impl Node for PtyNode {
    fn path(&self) -> &Path {
        self.shared.tty.slave()
    }

    fn kind(&self) -> NodeKind {
        NodeKind::Pty
    }

    /// Ends the threads; the pty closes when the last holder lets go (a
    /// program reading it then sees the hang-up).
    fn stop(&self) {
        let s = &self.shared;
        let _ = rustix::io::write(&s.wake, &1u64.to_ne_bytes());
        s.core.queues.bell(RX_DATA_BELL).ring();
        s.core.queues.bell(TX_SPACE_BELL).ring();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Shared {
    fn stopped(&self) -> bool {
        self.core.stopped()
    }

    /// A program opened the pty: what arrived before is not its, and the
    /// port is activated.
    fn opened(&self) {
        self.flush_rx.store(true, Ordering::Release);
        self.core.queues.bell(RX_DATA_BELL).ring();
        self.core.opened(self.tty.slave());
    }

    fn closed(&self) {
        // A pty's termios always has HUPCL here (the daemon sets it).
        self.core.closed(self.tty.slave(), true);
    }

    /// A status packet of the pty.
    fn status(&self, status: u8) {
        let (tx, rx) = (status & PKT_FLUSHWRITE != 0, status & PKT_FLUSHREAD != 0);
        if rx {
            self.flush_rx.store(true, Ordering::Release);
            self.core.queues.bell(RX_DATA_BELL).ring();
        }
        if tx || rx {
            let _ = self.core.log_refusal(
                "a FIFO reset",
                self.core.driver(|d| d.hw_reset_fifo(tx, rx)),
            );
        }
        if status & PKT_IOCTL != 0 {
            self.termios_changed();
        }
    }

    /// A program's `tcsetattr`: what changed reaches the driver.
    fn termios_changed(&self) {
        let Ok(now) = self.tty.termios() else { return };
        let mut want = self.core.line();
        if want.termios == now {
            return;
        }
        want.termios = now;
        let _ = self.core.program(want);
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
        if !s.core.is_open() {
            wait_for_open(s);
            continue;
        }
        let free = s.core.queues.tx().free().unwrap_or(0) as usize;
        if free == 0 {
            // Room first; meanwhile only status packets are read (a
            // one-byte read of a packet-mode master takes a status byte or
            // nothing), every 20 ms.
            let tx = s.core.queues.tx();
            s.core.queues.bell(TX_SPACE_BELL).wait(
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
            let put = s.core.queues.tx().write(data).unwrap_or(0);
            s.core.tx_bytes.fetch_add(put as u64, Ordering::Relaxed);
            s.core.queues.bell(DRIVER_BELL).notify();
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
        let rx = s.core.queues.rx();
        let ready = || {
            rx.used().map_or(true, |u| u > 0) || s.flush_rx.load(Ordering::Acquire) || s.stopped()
        };
        if !s.core.queues.bell(RX_DATA_BELL).wait(
            SPIN,
            Some(Instant::now() + Duration::from_millis(250)),
            ready,
        ) || s.stopped()
        {
            continue;
        }
        if s.flush_rx.swap(false, Ordering::AcqRel) {
            rx.discard();
            s.core.queues.bell(DRIVER_BELL).ring();
            continue;
        }
        let n = match rx.peek(&mut buf) {
            Ok(n) => n,
            Err(_) => {
                if !corrupt_logged {
                    tracing::error!(
                        "serial   {}: the driver left its RX ring's indices inconsistent; dropping what it holds",
                        s.core.name
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
        let written = if s.core.is_open() {
            match rustix::io::write(s.tty.master(), &buf[..n]) {
                Ok(k) => {
                    s.core.rx_bytes.fetch_add(k as u64, Ordering::Relaxed);
                    k
                }
                Err(Errno::AGAIN) | Err(Errno::INTR) => {
                    s.poll_master(PollFlags::OUT, Some(Duration::from_millis(50)));
                    0
                }
                Err(_) => {
                    s.core.rx_dropped.fetch_add(n as u64, Ordering::Relaxed);
                    n
                }
            }
        } else {
            // Nobody has the tty open: what arrives is dropped, as a UART
            // nobody opened drops it; counted.
            s.core.rx_dropped.fetch_add(n as u64, Ordering::Relaxed);
            n
        };
        if written > 0 {
            let _ = rx.consume(written);
            if s.core.queues.rx_blocked() {
                s.core.queues.bell(DRIVER_BELL).ring();
            }
        }
    }
}

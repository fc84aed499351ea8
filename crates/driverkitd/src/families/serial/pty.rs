//! A port's node where the kernel has no `/dev/cuse`: a pty ([`tty`])
//! whose bytes the driver's own process moves, and the daemon's one thread
//! that keeps its lifecycle.
//!
//! The driver's SDK gets the pty's master (a duplicate) and one end of a
//! control socket with `connect_queues`'s answer, and pumps the bytes
//! between the master and the port's rings itself: a program's byte
//! reaches the driver with one wake-up and comes back with one, as through
//! a raw pty echo (the daemon's two relay threads added two wake-ups each
//! way). The daemon's `serial-tty` thread keeps what only it can do: it
//! sees programs open the slave (inotify, which a sandboxed driver cannot
//! watch) and says `OPENED`; it turns the status the pump forwards (the
//! last close, `tcsetattr`, `tcflush`) into the driver's `hw_*` calls; and
//! it counts the bytes from the rings' indices.
//!
//! What a pty cannot do is in [`tty`]'s notes: the kernel's pty buffers
//! about 64 KiB of a writer's bytes nobody can bound, `tcdrain` returns
//! once the pump has read them, and `EXTPROC` (which carries `tcsetattr` to
//! the daemon) turns off the kernel's own `IXON`.

use driverkit_wire::sync::Locked;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use driverkit_wire::interfaces::IOUserSerialInterface;
use driverkit_wire::serial::tty_control::{self, PKT_FLUSHREAD, PKT_FLUSHWRITE, PKT_IOCTL};
use driverkit_wire::serial::TX_SPACE_BELL;
use driverkit_wire::shm::SPIN;
use driverkit_wire::{IOResult, IOReturn};
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::io::Errno;

use super::port::{Core, Node, NodeKind, CLOSING_WAIT};
use super::tty::{self, Tty};
use crate::families::threads::{Body, Stop, Threads};

struct Shared {
    core: Arc<Core>,
    tty: Tty,
    /// The daemon's end of the control socket.
    control: OwnedFd,
    /// Wakes the thread out of `poll` when the node stops.
    stop: Stop,
    /// The bytes so far, from the rings' wrapping indices.
    tally: Mutex<Tally>,
}

/// Totals kept from 32-bit indices that wrap: sampled at least every
/// second (4 GiB a second would be needed to lose a wrap).
#[derive(Default)]
struct Tally {
    /// `txPI`, `rxCI`, `rxDropped` at the last look.
    last: [u32; 3],
    total: [u64; 3],
}

/// A port's pty and the thread that keeps its lifecycle.
pub struct PtyNode {
    shared: Arc<Shared>,
    /// The driver's end of the control socket, until it is handed over.
    far_end: Mutex<Option<OwnedFd>>,
    thread: Threads,
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

    /// Starts keeping `tty`'s lifecycle; its bytes move once the driver
    /// has [`handover`](Node::handover)'s descriptors.
    pub fn start(core: Arc<Core>, tty: Tty) -> IOResult<PtyNode> {
        use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
        let stop = Stop::new().map_err(|_| IOReturn::NO_RESOURCES)?;
        let (control, far_end) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|_| IOReturn::NO_RESOURCES)?;
        // The daemon's end never blocks: a driver that stops reading its
        // end loses its own messages (its port stalls), never this thread.
        rustix::io::ioctl_fionbio(&control, true).map_err(|_| IOReturn::NO_RESOURCES)?;
        let tally = Tally {
            last: [
                core.queues.tx().producer_index(),
                core.queues.rx().consumer_index(),
                core.queues.rx_dropped(),
            ],
            total: [0; 3],
        };
        let shared = Arc::new(Shared {
            core,
            tty,
            control,
            stop,
            tally: Mutex::new(tally),
        });
        let thread = Threads::start(
            &shared,
            vec![("serial-tty".into(), Box::new(keep) as Body<Shared>)],
            Shared::tell_stop,
        )
        .map_err(|e| {
            tracing::error!("serial   {e}");
            IOReturn::NO_RESOURCES
        })?;
        Ok(PtyNode {
            shared,
            far_end: Mutex::new(Some(far_end)),
            thread,
        })
    }
}

impl Node for PtyNode {
    fn path(&self) -> &Path {
        self.shared.tty.slave()
    }

    fn kind(&self) -> NodeKind {
        NodeKind::Pty
    }

    /// A duplicate of the master and the far end of the control socket,
    /// once.
    fn handover(&self) -> Option<(OwnedFd, OwnedFd)> {
        let far_end = self.far_end.locked().take()?;
        let master = self.shared.tty.master().try_clone_to_owned().ok()?;
        Some((master, far_end))
    }

    /// `(tx, rx, dropped while closed)` from the rings' indices.
    fn counters(&self) -> Option<(u64, u64, u64)> {
        let [tx, rx, dropped] = self.shared.sample();
        Some((tx, rx.saturating_sub(dropped), dropped))
    }

    /// Ends the thread and the pump (its control socket shuts); the pty
    /// closes when the last holder lets go (a program reading it then sees
    /// the hang-up).
    fn stop(&self) {
        self.shared.tell_stop();
        self.thread.join();
    }
}

impl Shared {
    /// Ends the thread: the control socket shuts (the pump in the driver
    /// hears it) and the stop wakes the thread out of `poll`.
    fn tell_stop(&self) {
        let _ = rustix::net::shutdown(&self.control, rustix::net::Shutdown::Both);
        self.stop.set();
    }

    fn stopped(&self) -> bool {
        self.core.stopped()
    }

    /// Adds what the indices moved since the last look.
    fn sample(&self) -> [u64; 3] {
        let q = &self.core.queues;
        let now = [
            q.tx().producer_index(),
            q.rx().consumer_index(),
            q.rx_dropped(),
        ];
        let mut t = self.tally.locked();
        let last = t.last;
        for ((total, now), last) in t.total.iter_mut().zip(now).zip(last) {
            *total += u64::from(now.wrapping_sub(last));
        }
        t.last = now;
        t.total
    }

    /// A program opened the pty: the port is activated, then the pump
    /// starts.
    fn opened(&self) {
        self.tty.flush_input();
        self.core.opened(self.tty.slave());
        let _ = rustix::io::write(&self.control, &[tty_control::OPENED]);
    }

    /// The last program closed the pty: what it wrote goes out first (at
    /// most `CLOSING_WAIT`), as a UART's last close waits for its output,
    /// so that what comes back of it arrives while the port is closed and
    /// is dropped, not handed to the next program.
    fn closed(&self) {
        let deadline = Instant::now() + CLOSING_WAIT;
        let q = &self.core.queues;
        let sent = || q.tx_unsent().map_or(true, |u| u == 0) || self.stopped();
        while !sent() && Instant::now() < deadline {
            // `tx_sent` rings the bell; a driver that does not report
            // sends as it takes, which the next look sees.
            let soon = Instant::now() + Duration::from_millis(5);
            q.bell(TX_SPACE_BELL).wait(SPIN, Some(soon), sent);
        }
        // A pty's termios always has HUPCL here (the daemon sets it).
        self.core.closed(self.tty.slave(), true);
    }

    /// A status packet of the pty (the pump has emptied the RX ring for a
    /// flush of the input already).
    fn status(&self, status: u8) {
        let (tx, rx) = (status & PKT_FLUSHWRITE != 0, status & PKT_FLUSHREAD != 0);
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
        let _ = self.core.program(want, false);
    }

    /// Waits up to `timeout` for `fd` to be readable or a wake-up; the
    /// first's events.
    fn poll_with_wake(&self, fd: impl AsFd, events: PollFlags, timeout: Duration) -> PollFlags {
        let mut fds = [
            PollFd::new(&fd, events),
            PollFd::new(self.stop.fd(), PollFlags::IN),
        ];
        let ts = Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: timeout.subsec_nanos() as i64,
        };
        match poll(&mut fds, Some(&ts)) {
            Ok(_) => fds[0].revents(),
            Err(_) => PollFlags::empty(),
        }
    }
}

/// The `serial-tty` thread: waits for a program to open the pty, then for
/// what the pump reports, until the port stops.
fn keep(s: &Shared) {
    let mut pump_gone = false;
    while !s.stopped() {
        s.sample();
        if !s.core.is_open() {
            wait_for_open(s);
            continue;
        }
        if pump_gone {
            // The driver's process ended: the port ends with its service.
            s.stop.sleep(Duration::from_secs(1));
            continue;
        }
        let ready = s.poll_with_wake(&s.control, PollFlags::IN, Duration::from_secs(1));
        if ready.is_empty() {
            continue;
        }
        let mut message = [0u8; 16];
        match rustix::io::read(&s.control, &mut message) {
            Ok(0) => pump_gone = true,
            Ok(_) if message[0] == tty_control::HUNG_UP => s.closed(),
            Ok(_) => {
                s.status(message[0]);
                let _ = rustix::io::write(&s.control, &[tty_control::DONE]);
            }
            Err(Errno::AGAIN) | Err(Errno::INTR) => {}
            Err(_) => pump_gone = true,
        }
    }
}

/// While closed: waits for the inotify watch to report an open of the
/// slave, then checks that the master no longer says hung up. A program
/// that opened and closed the tty between two looks (`stty -F`) still
/// counts: activate, its status packets (read here: the pump reads the
/// master only between `OPENED` and the hang-up), deactivate.
fn wait_for_open(s: &Shared) {
    let opened_meanwhile = s.tty.drain_opens();
    let hung_up = s
        .poll_with_wake(
            s.tty.master(),
            PollFlags::IN | PollFlags::PRI,
            Duration::ZERO,
        )
        .contains(PollFlags::HUP);
    if !hung_up {
        s.opened();
        return;
    }
    if opened_meanwhile {
        s.core.opened(s.tty.slave());
        let mut status = [0u8; 1];
        while s
            .poll_with_wake(s.tty.master(), PollFlags::PRI, Duration::ZERO)
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
    s.poll_with_wake(s.tty.opens(), PollFlags::IN, Duration::from_secs(1));
}

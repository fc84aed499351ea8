//! The port's tty, pumped in the driver's own process.
//!
//! Where the port's node is a pty, the system hands the driver's process
//! the pty's master with `connect_queues`'s answer, beside a control socket
//! (`serial::tty_control`). A byte a program writes then reaches the driver
//! with one wake-up (this pump's), and a byte the driver receives reaches
//! the program from `rx_put` itself, on the driver's thread: the same hops
//! as a raw pty echo, where the system's relay threads added two wake-ups
//! each way. The system keeps the tty's lifecycle: it sees programs open it
//! (`OPENED`), and turns its status (`tcsetattr`, `tcflush`, the last close)
//! into the driver's `hw_*` calls, which do not travel on the data path.
//!
//! The sandbox lets the driver read, write and poll the master; its ioctl
//! filter refuses the rest (`TIOCSIG`, `TIOCGPTPEER`, termios changes), so
//! the master gives it no more than the bytes a pty relay moves.

use driverkit_wire::sync::Locked;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use driverkit_wire::serial::{tty_control, SerialPortInterface};
use rustix::event::{poll, EventfdFlags, PollFd, PollFlags, Timespec};
use rustix::io::Errno;

/// Bytes moved per read of the master at most.
const CHUNK: usize = 64 * 1024;

/// Bytes of a program's in one turn from which the pump takes it for a
/// stream (a pty's line buffer is 4 KiB; a program typing or asking
/// sends a few).
pub(super) const STREAMING: usize = 1024;

/// A pty's line buffer (`N_TTY_BUF_SIZE`): the most one read of the
/// master returns.
const LINE_BUFFER: usize = 4096;

/// How long the pump waits for the system's `DONE` at most: past the
/// system's call timeout, which bounds its call to the driver.
const DONE_WAIT: Duration = Duration::from_secs(60);

/// What one turn of the pump found.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Turn {
    /// The system ended the port (its end of the control socket closed).
    pub ended: bool,
    /// Bytes read from the master into the TX ring.
    pub read: usize,
}

/// A pty master this process moves the bytes of.
pub(super) struct TtyPump {
    master: OwnedFd,
    control: OwnedFd,
    /// Written to wake the pump: `rx_put` left bytes the master did not
    /// take, the driver made room in the TX ring, or the port stops.
    wake: OwnedFd,
    /// A program has the tty open (between `OPENED` and the hang-up).
    open: AtomicBool,
    /// The pump waits for room in the TX ring.
    wants_room: AtomicBool,
    /// The RX ring's one consumer at a time: the pump, or a driver thread
    /// in `rx_put`.
    rx: Mutex<()>,
    /// The master said hung up and the pump has not read past it yet.
    hup: AtomicBool,
}

impl TtyPump {
    pub fn new(master: OwnedFd, control: OwnedFd) -> std::io::Result<TtyPump> {
        rustix::io::ioctl_fionbio(&master, true)?;
        let wake = rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        Ok(TtyPump {
            master,
            control,
            wake,
            open: AtomicBool::new(false),
            wants_room: AtomicBool::new(false),
            rx: Mutex::new(()),
            hup: AtomicBool::new(false),
        })
    }

    pub fn wake(&self) {
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
    }

    /// The driver took bytes from the TX ring: the pump reads the master
    /// again if it stopped for room.
    pub fn room_made(&self) {
        if self.wants_room.swap(false, Ordering::AcqRel) {
            self.wake();
        }
    }

    /// Moves what the RX ring holds into the master (straight from the
    /// ring's memory), as far as it takes it; while no program has the tty
    /// open, drops it, counted. Returns whether the ring is empty after.
    pub fn flush_rx(&self, port: &SerialPortInterface) -> bool {
        let _one = self.rx.locked();
        let rx = port.rx();
        if !self.open.load(Ordering::Acquire) {
            port.add_rx_dropped(rx.discard());
            return true;
        }
        loop {
            match rx.write_to(self.master.as_fd()) {
                Ok(0) => return rx.used().is_ok_and(|u| u == 0),
                Ok(_) => {}
                // Full (a reader that does not read), or the program just
                // closed it: the pump sees which.
                Err(e) if e.raw_os_error().is_some() => return false,
                Err(_) => {
                    // Our own ring's indices, scribbled on: nothing in it
                    // can be trusted, and the next bytes start it afresh.
                    rx.discard();
                    return true;
                }
            }
        }
    }

    /// Empties the RX ring (a program opened the tty afresh, or flushed
    /// its input).
    pub fn discard_rx(&self, port: &SerialPortInterface) {
        let _one = self.rx.locked();
        port.rx().discard();
    }

    /// Waits for the master, the control socket or a wake-up, and does
    /// what they say: TX bytes from the master into the ring, RX bytes out
    /// of it, status to the system. The caller then tells the driver what
    /// changed in its rings.
    pub fn turn(&self, port: &SerialPortInterface) -> Turn {
        let open = self.open.load(Ordering::Acquire);
        let tx_room = port.tx().free().unwrap_or(0) as usize;
        let rx_waiting = port.rx().used().is_ok_and(|u| u > 0);
        let mut events = PollFlags::PRI;
        if tx_room > 0 {
            events |= PollFlags::IN;
        } else {
            self.wants_room.store(true, Ordering::Release);
        }
        if rx_waiting {
            events |= PollFlags::OUT;
        }
        // A hung-up master polls ready for good: it is left out while the
        // pump cannot read it (closed, or no room for what it still holds).
        let watch_master = open && !(self.hup.load(Ordering::Acquire) && tx_room == 0);
        let mut fds = [
            PollFd::new(&self.control, PollFlags::IN),
            PollFd::new(&self.wake, PollFlags::IN),
            PollFd::new(&self.master, events),
        ];
        let watched = if watch_master { 3 } else { 2 };
        let second = Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        };
        if poll(&mut fds[..watched], Some(&second)).is_err() {
            return Turn::default();
        }
        let control = fds[0].revents();
        let woken = !fds[1].revents().is_empty();
        let master = if watch_master {
            fds[2].revents()
        } else {
            PollFlags::empty()
        };
        if woken {
            let mut count = [0u8; 8];
            let _ = rustix::io::read(&self.wake, &mut count);
        }
        if !control.is_empty() && self.control_message(port) {
            return Turn {
                ended: true,
                read: 0,
            };
        }
        let mut read = 0;
        if master.intersects(PollFlags::IN | PollFlags::PRI | PollFlags::HUP | PollFlags::ERR) {
            self.hup
                .store(master.contains(PollFlags::HUP), Ordering::Release);
            if master.contains(PollFlags::IN) && tx_room > 0 {
                // Everything the master holds, as far as the ring has
                // room: a pty hands over at most its line buffer (4 KiB)
                // a read, and the driver is better told once.
                let mut yields = 0;
                while port.tx().free().is_ok_and(|r| r > 0) {
                    match self.read_master(port, CHUNK) {
                        // A full line buffer read: the kernel's worker
                        // refills it from the writer's bytes on this core
                        // once it runs, sooner than a wake-up would come.
                        0 if read >= LINE_BUFFER / 2 && yields < 4 => {
                            yields += 1;
                            std::thread::yield_now();
                        }
                        0 => break,
                        n => read += n,
                    }
                }
            } else {
                // A status byte, or nothing (no room for data).
                self.read_master(port, 0);
            }
        }
        if master.contains(PollFlags::OUT) || (woken && rx_waiting) {
            self.flush_rx(port);
        }
        Turn { ended: false, read }
    }

    /// One message of the system's. True when the system ended the port.
    fn control_message(&self, port: &SerialPortInterface) -> bool {
        let mut msg = [0u8; 16];
        match rustix::io::read(&self.control, &mut msg) {
            Ok(0) => true,
            Ok(_) if msg[0] == tty_control::OPENED => {
                self.discard_rx(port);
                self.hup.store(false, Ordering::Release);
                self.open.store(true, Ordering::Release);
                false
            }
            Ok(_) => false,
            Err(Errno::AGAIN) | Err(Errno::INTR) => false,
            Err(_) => true,
        }
    }

    /// One read of the master, straight into the TX ring (at most `max`
    /// bytes): data, a status byte for the system, or the hang-up of the
    /// last close. Returns the data bytes read (there may be more).
    fn read_master(&self, port: &SerialPortInterface, max: usize) -> usize {
        let mut status = [0u8; 1];
        match port.tx().read_from(self.master.as_fd(), &mut status, max) {
            Ok(0) => {}
            Ok(n) if status[0] == 0 => return n - 1,
            Ok(_) => {
                let status = status[0] & !tty_control::HUNG_UP;
                if status & tty_control::PKT_FLUSHREAD != 0 {
                    self.discard_rx(port);
                }
                self.tell(status);
                self.wait_done(port);
            }
            Err(e)
                if [Errno::AGAIN, Errno::INTR]
                    .map(|e| Some(e.raw_os_error()))
                    .contains(&e.raw_os_error()) => {}
            // EIO: the last program closed the slave, and everything it
            // wrote has been read.
            Err(_) => {
                self.open.store(false, Ordering::Release);
                let _one = self.rx.locked();
                port.add_rx_dropped(port.rx().discard());
                self.tell(tty_control::HUNG_UP);
            }
        }
        0
    }

    /// Waits for the system to answer a status with `DONE` (it has called
    /// the driver), or to end the port.
    fn wait_done(&self, port: &SerialPortInterface) {
        let deadline = Instant::now() + DONE_WAIT;
        let mut msg = [0u8; 16];
        while Instant::now() < deadline {
            let mut fds = [PollFd::new(&self.control, PollFlags::IN)];
            let second = Timespec {
                tv_sec: 1,
                tv_nsec: 0,
            };
            if poll(&mut fds, Some(&second)).is_err() || fds[0].revents().is_empty() {
                continue;
            }
            match rustix::io::read(&self.control, &mut msg) {
                Ok(1..) if msg[0] == tty_control::DONE => return,
                Ok(1..) if msg[0] == tty_control::OPENED => self.discard_rx(port),
                Err(Errno::AGAIN) | Err(Errno::INTR) | Ok(1..) => {}
                // Ended: the next turn sees it.
                _ => return,
            }
        }
    }

    fn tell(&self, message: u8) {
        let _ = rustix::io::write(&self.control, &[message]);
    }
}

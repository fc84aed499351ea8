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

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use driverkit_wire::serial::{tty_control, SerialPortInterface};
use rustix::event::{poll, EventfdFlags, PollFd, PollFlags, Timespec};
use rustix::io::Errno;

/// Bytes moved per read of the master.
pub(super) const CHUNK: usize = 64 * 1024;

/// Bytes of a program's in one turn from which the pump takes it for a
/// stream (a pty's line buffer is 4 KiB; a program typing or asking
/// sends a few).
pub(super) const STREAMING: usize = 1024;

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
    /// in `rx_put`; with its buffer.
    rx: Mutex<Vec<u8>>,
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
            rx: Mutex::new(vec![0; CHUNK]),
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

    /// Moves what the RX ring holds into the master, as far as it takes
    /// it (while no program has the tty open, drops it, counted). Returns
    /// whether the ring is empty afterwards.
    pub fn flush_rx(&self, port: &SerialPortInterface) -> bool {
        let mut buf = self.rx.lock().unwrap_or_else(|e| e.into_inner());
        let rx = port.rx();
        if !self.open.load(Ordering::Acquire) {
            port.add_rx_dropped(rx.discard());
            return true;
        }
        loop {
            let n = match rx.peek(&mut buf) {
                Ok(0) => return true,
                Ok(n) => n,
                Err(_) => {
                    // Our own ring's indices, scribbled on: nothing in it
                    // can be trusted, and the next bytes start it afresh.
                    rx.discard();
                    return true;
                }
            };
            match rustix::io::write(&self.master, &buf[..n]) {
                Ok(k) => {
                    let _ = rx.consume(k);
                    if k < n {
                        return false;
                    }
                }
                // Full (a reader that does not read), or the program just
                // closed it: the pump sees which.
                Err(_) => return false,
            }
        }
    }

    /// Waits for the master, the control socket or a wake-up, and does
    /// what they say: TX bytes from the master into the ring, RX bytes out
    /// of it, status to the system. The caller then tells the driver what
    /// changed in its rings.
    pub fn turn(&self, port: &SerialPortInterface, buf: &mut [u8]) -> Turn {
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
        let master_fd = self.master.as_fd();
        let mut fds = vec![
            PollFd::new(&self.control, PollFlags::IN),
            PollFd::new(&self.wake, PollFlags::IN),
        ];
        if watch_master {
            fds.push(PollFd::new(&master_fd, events));
        }
        let second = Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        };
        if poll(&mut fds, Some(&second)).is_err() {
            return Turn::default();
        }
        let control = fds[0].revents();
        let woken = !fds[1].revents().is_empty();
        let master = fds
            .get(2)
            .map(|f| f.revents())
            .unwrap_or_else(PollFlags::empty);
        drop(fds);
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
                while let Some(room) = port.tx().free().ok().filter(|&r| r > 0) {
                    let want = ((room as usize).min(CHUNK) + 1).min(buf.len());
                    match self.read_master(port, &mut buf[..want]) {
                        0 => break,
                        n => read += n,
                    }
                }
            } else {
                self.read_master(port, &mut buf[..1]);
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

    /// One read of the master: data into the TX ring, a status byte to
    /// the system, or the hang-up of the last close. The data bytes it
    /// read (there may be more).
    fn read_master(&self, port: &SerialPortInterface, buf: &mut [u8]) -> usize {
        match rustix::io::read(&self.master, &mut *buf) {
            Ok(0) => {}
            Ok(n) if buf[0] == 0 => {
                // Fits: the read was no larger than the room.
                return port.tx().write(&buf[1..n]).unwrap_or(0);
            }
            Ok(_) => {
                let status = buf[0] & !tty_control::HUNG_UP;
                if status & tty_control::PKT_FLUSHREAD != 0 {
                    self.discard_rx(port);
                }
                self.tell(status);
                self.wait_done(port);
            }
            Err(Errno::AGAIN) | Err(Errno::INTR) => {}
            // EIO: the last program closed the slave, and everything it
            // wrote has been read.
            Err(_) => {
                self.open.store(false, Ordering::Release);
                let _rx = self.rx.lock().unwrap_or_else(|e| e.into_inner());
                port.add_rx_dropped(port.rx().discard());
                self.tell(tty_control::HUNG_UP);
            }
        }
        0
    }

    /// Waits for the system to answer a status with `DONE` (it has called
    /// the driver, bounded by its call timeout), or to end the port.
    fn wait_done(&self, port: &SerialPortInterface) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut msg = [0u8; 16];
        while std::time::Instant::now() < deadline {
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

    /// Empties the RX ring (a flush of the tty's input reached the driver,
    /// which has emptied its hardware's FIFO).
    pub fn discard_rx(&self, port: &SerialPortInterface) {
        let _rx = self.rx.lock().unwrap_or_else(|e| e.into_inner());
        port.rx().discard();
    }

    fn tell(&self, message: u8) {
        let _ = rustix::io::write(&self.control, &[message]);
    }
}

//! A serial port's tty: a pty pair whose master the daemon holds (and lends
//! the driver's process, which moves its bytes: [`super::pty`]), and what
//! Linux's pty driver tells its master about the program at the other end.
//!
//! The master is in packet mode (`TIOCPKT`) and the slave's termios carries
//! `EXTPROC`, which together make every `tcsetattr` of a program a
//! `TIOCPKT_IOCTL` packet on the master; `tcflush` arrives as
//! `TIOCPKT_FLUSHREAD`/`TIOCPKT_FLUSHWRITE`. The slave's termios is read
//! through the master (`TCGETS` on a pty master reads its slave's).
//! Opening and closing are seen through the master too: after the slave's
//! last close the master polls `POLLHUP` until the next open, which an
//! inotify watch on the slave reports. The daemon opens and closes the
//! slave once at creation, so that "never opened" looks like "closed".
//!
//! What a pty cannot carry (ARCHITECTURE.md, "Serial ports"): Linux's pty
//! driver rewrites `CSIZE` to `CS8` and clears `PARENB` before anyone sees
//! them, has no modem lines (`TIOCMGET`/`TIOCMSET` fail with `ENOTTY`) and
//! ignores `tcsendbreak`. Data bits, parity, modem lines and breaks go
//! through `driverkit serial set`.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use driverkit_wire::serial::FlowControl;
use rustix::fs::{inotify, Mode, OFlags};
use rustix::termios::{self, ControlModes, InputModes, LocalModes, OptionalActions};

/// `TIOCPKT` (`tty.h`); the status bits of a packet's first byte are in
/// `serial::tty_control`, where the driver's pump forwards them.
const TIOCPKT: libc::c_ulong = 0x5420;

/// Packet mode on a pty's master: each read begins with a status byte
/// (the only ioctl of this module rustix has no function for).
fn set_packet_mode(master: BorrowedFd<'_>) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: TIOCPKT reads an int through the pointer, which points at
    // `on`, alive across the call.
    if unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&master), TIOCPKT, &on) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The line settings a program can set through termios.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Termios {
    pub baud: u32,
    /// 2 (one stop bit) or 4 (two).
    pub half_stop_bits: u8,
    pub flow: FlowControl,
    pub xon: u8,
    pub xoff: u8,
}

/// The daemon's end of a port's tty.
pub struct Tty {
    master: OwnedFd,
    /// `/dev/pts/N`.
    slave: PathBuf,
    /// Reports opens of the slave.
    opens: OwnedFd,
}

impl Tty {
    /// A new pty: raw, 8N1 at 9600 baud, packet mode, `EXTPROC`, the slave
    /// readable and writable by its owner and group `dialout` (as Linux's
    /// own serial ports are), and closed.
    pub fn open() -> io::Result<Tty> {
        use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
        grantpt(&master)?;
        unlockpt(&master)?;
        let slave = PathBuf::from(std::ffi::OsString::from_vec(
            ptsname(&master, Vec::new())?.into_bytes(),
        ));
        set_packet_mode(master.as_fd())?;
        let mut t = termios::tcgetattr(&master)?;
        t.make_raw();
        t.control_modes |= ControlModes::CREAD | ControlModes::CLOCAL | ControlModes::HUPCL;
        t.control_modes &= !ControlModes::CSTOPB;
        t.local_modes |= LocalModes::EXTPROC;
        t.set_speed(9600)?;
        termios::tcsetattr(&master, OptionalActions::Now, &t)?;
        make_dialout(&slave);
        let opens = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)?;
        inotify::add_watch(&opens, &slave, inotify::WatchFlags::OPEN)?;
        // Opened and closed once: the master then says "hung up" until a
        // program opens the slave.
        drop(rustix::fs::open(
            &slave,
            OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )?);
        rustix::fs::fcntl_setfl(&master, OFlags::NONBLOCK)?;
        let tty = Tty {
            master,
            slave,
            opens,
        };
        // That open was ours, and so is the status packet of our setup.
        tty.drain_opens();
        let mut status = [0u8; 1];
        let _ = rustix::io::read(&tty.master, &mut status);
        Ok(tty)
    }

    pub fn master(&self) -> BorrowedFd<'_> {
        self.master.as_fd()
    }

    pub fn opens(&self) -> BorrowedFd<'_> {
        self.opens.as_fd()
    }

    /// Empties what waits for the program in the slave's input: bytes
    /// written to the master while no program had it open (a pty keeps
    /// them for the next one, where a UART nobody opened drops them).
    /// `TCOFLUSH` on a pty's master flushes its peer's input.
    pub fn flush_input(&self) {
        let _ = termios::tcflush(&self.master, termios::QueueSelector::OFlush);
    }

    /// Takes the open events so far: true if there was one.
    pub fn drain_opens(&self) -> bool {
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 512];
        let mut reader = inotify::Reader::new(&self.opens, &mut buf);
        let mut any = false;
        while reader.next().is_ok() {
            any = true;
        }
        any
    }

    pub fn slave(&self) -> &Path {
        &self.slave
    }

    /// The slave's line settings, as the program left them.
    pub fn termios(&self) -> io::Result<Termios> {
        let t = termios::tcgetattr(&self.master)?;
        let i = t.input_modes;
        let c = t.control_modes;
        let flow = FlowControl::from_termios(
            i.contains(InputModes::IXON),
            i.contains(InputModes::IXANY),
            i.contains(InputModes::IXOFF),
            c.contains(ControlModes::CRTSCTS),
        );
        Ok(Termios {
            baud: t.output_speed(),
            half_stop_bits: if c.contains(ControlModes::CSTOPB) {
                4
            } else {
                2
            },
            flow,
            xon: t.special_codes[termios::SpecialCodeIndex::VSTART],
            xoff: t.special_codes[termios::SpecialCodeIndex::VSTOP],
        })
    }
}

/// Points `link` at `target`, replacing what was there in one step (a
/// program opening the link never finds it missing).
pub fn link(target: &Path, link: &Path) -> io::Result<()> {
    if let Some(dir) = link.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = link.with_extension(format!("new{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    std::fs::rename(&tmp, link)
}

/// Removes `link` if it still points at `target` (a newer port may have
/// taken the name).
pub fn unlink(target: &Path, link: &Path) {
    if std::fs::read_link(link).is_ok_and(|t| t == target) {
        let _ = std::fs::remove_file(link);
    }
}

/// Readable and writable by its owner and group `dialout`, as Linux's own
/// serial ports are.
pub fn make_dialout(node: &Path) {
    if let Some(dialout) = group_id("dialout") {
        let _ = rustix::fs::chown(node, None, Some(dialout));
    }
    let _ = rustix::fs::chmod(node, Mode::from_raw_mode(0o660));
}

fn group_id(name: &str) -> Option<rustix::process::Gid> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name)
            .then(|| fields.nth(1)?.parse().ok())
            .flatten()
            .map(rustix::process::Gid::from_raw)
    })
}

//! The ioctls the Ethernet family makes of Linux, each behind a safe
//! function: a TAP's carrier and namespace, an interface's MTU. Nothing
//! else in the family calls `ioctl`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `TUNSETCARRIER` (`_IOW('T', 226, int)`).
const TUNSETCARRIER: libc::c_ulong = 0x4004_54e2;
/// `TUNGETDEVNETNS` (`_IO('T', 227)`).
const TUNGETDEVNETNS: libc::c_ulong = 0x54e3;

/// Turns the TAP's carrier on or off (what `ip link` shows as
/// `NO-CARRIER`).
pub fn set_carrier(tap: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let value: libc::c_int = on.into();
    // SAFETY: TUNSETCARRIER reads an int through the pointer, which points
    // at `value`, alive across the call.
    if unsafe { libc::ioctl(tap.as_raw_fd(), TUNSETCARRIER, &value) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The network namespace the TAP's interface lives in, as a descriptor
/// (it holds the namespace alive: close it soon).
pub fn device_namespace(tap: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: TUNGETDEVNETNS takes no argument and answers a new
    // descriptor, or -1.
    let ns = unsafe { libc::ioctl(tap.as_raw_fd(), TUNGETDEVNETNS) };
    if ns < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just made for this process, owned
    // by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(ns) })
}

/// `SIOCSIFMTU` of interface `name` in this thread's namespace.
pub fn set_mtu(name: &str, mtu: u32) -> io::Result<()> {
    if name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?}: an interface name has at most 15 bytes"),
        ));
    }
    let socket = rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::DGRAM,
        None,
    )?;
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_mtu = mtu as libc::c_int;
    // SAFETY: SIOCSIFMTU reads the ifreq through the pointer; `req` lives
    // across the call.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFMTU, &req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

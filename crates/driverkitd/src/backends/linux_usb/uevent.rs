//! Kernel uevents: how a device's arrival and departure are heard, straight
//! from the kernel's netlink group, so that hot-plug works where no udevd
//! runs (a container, an initramfs) and does not wait for udev's rules.
//!
//! A kernel uevent is `ACTION@DEVPATH` followed by `KEY=VALUE` fields, each
//! ended by a NUL. [`Uevent::parse`] reads one (bounded, never panicking);
//! messages udevd rebroadcasts (`libudev` header) come on another group and
//! are not read here.

use std::os::fd::OwnedFd;

use rustix::net::netlink::{self, SocketAddrNetlink};
use rustix::net::{AddressFamily, RecvFlags, SocketFlags, SocketType};

/// The kernel's own uevent multicast group (udevd rebroadcasts on group 2).
const KERNEL_GROUP: u32 = 1;

/// One uevent, of the fields a USB backend reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uevent {
    /// `add`, `remove`, `bind`, `unbind`, `change`...
    pub action: String,
    /// Under `/sys`: `/devices/pci0000:00/0000:00:04.0/usb1/1-1`.
    pub devpath: String,
    pub subsystem: Option<String>,
    /// `usb_device` or `usb_interface` for USB.
    pub devtype: Option<String>,
    /// The bound driver, on `bind`.
    pub driver: Option<String>,
}

impl Uevent {
    /// Parses one message. `None` for anything that is not a kernel uevent
    /// with an action and a path.
    pub fn parse(message: &[u8]) -> Option<Uevent> {
        let mut fields = message.split(|b| *b == 0).filter(|f| !f.is_empty());
        let head = std::str::from_utf8(fields.next()?).ok()?;
        let (action, devpath) = head.split_once('@')?;
        if action.is_empty() || !devpath.starts_with('/') {
            return None;
        }
        let mut event = Uevent {
            action: action.to_owned(),
            devpath: devpath.to_owned(),
            subsystem: None,
            devtype: None,
            driver: None,
        };
        for field in fields {
            let Ok(field) = std::str::from_utf8(field) else {
                continue;
            };
            let Some((key, value)) = field.split_once('=') else {
                continue;
            };
            let slot = match key {
                "SUBSYSTEM" => &mut event.subsystem,
                "DEVTYPE" => &mut event.devtype,
                "DRIVER" => &mut event.driver,
                _ => continue,
            };
            *slot = Some(value.to_owned());
        }
        Some(event)
    }

    /// A USB device (not one of its interfaces) came or went.
    pub fn is_usb_device(&self) -> bool {
        self.subsystem.as_deref() == Some("usb") && self.devtype.as_deref() == Some("usb_device")
    }
}

/// A socket on the kernel's uevent group.
pub struct UeventSocket {
    fd: OwnedFd,
}

impl UeventSocket {
    /// Opens and binds the socket. Made before the devices are listed, so
    /// that no arrival falls between the list and the watch.
    pub fn open() -> std::io::Result<UeventSocket> {
        let fd = rustix::net::socket_with(
            AddressFamily::NETLINK,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC,
            Some(netlink::KOBJECT_UEVENT),
        )?;
        rustix::net::bind(&fd, &SocketAddrNetlink::new(0, KERNEL_GROUP))?;
        // Room for a burst (a hub with many devices arriving at once); when
        // it overflows anyway, the reader is told (ENOBUFS) and rescans.
        let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&fd, 1 << 20);
        Ok(UeventSocket { fd })
    }

    /// The next uevent, waiting for it. Messages that do not parse, or that
    /// did not come from the kernel (port 0), are skipped.
    pub fn next(&self) -> std::io::Result<Uevent> {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let (n, _, from) = rustix::net::recvfrom(&self.fd, &mut buf, RecvFlags::empty())?;
            let from_kernel = from
                .and_then(|a| SocketAddrNetlink::try_from(a).ok())
                .is_some_and(|a| a.pid() == 0);
            if !from_kernel {
                continue;
            }
            if let Some(e) = Uevent::parse(&buf[..n.min(buf.len())]) {
                return Ok(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_kernel_add_event_parses() {
        let msg = b"add@/devices/pci0000:00/0000:00:04.0/usb1/1-1\0ACTION=add\0\
DEVPATH=/devices/pci0000:00/0000:00:04.0/usb1/1-1\0SUBSYSTEM=usb\0\
DEVNAME=bus/usb/001/002\0DEVTYPE=usb_device\0PRODUCT=627/1/0\0BUSNUM=001\0DEVNUM=002\0";
        let e = Uevent::parse(msg).unwrap();
        assert_eq!(e.action, "add");
        assert_eq!(e.devpath, "/devices/pci0000:00/0000:00:04.0/usb1/1-1");
        assert!(e.is_usb_device());
        let intf = b"bind@/devices/x/usb1/1-1/1-1:1.0\0SUBSYSTEM=usb\0DEVTYPE=usb_interface\0DRIVER=usbhid\0";
        let e = Uevent::parse(intf).unwrap();
        assert!(!e.is_usb_device());
        assert_eq!(e.driver.as_deref(), Some("usbhid"));
    }

    #[test]
    fn udev_rebroadcasts_and_garbage_are_not_uevents() {
        assert_eq!(Uevent::parse(b"libudev\0\xfe\xed\xca\xfe"), None);
        assert_eq!(Uevent::parse(b""), None);
        assert_eq!(Uevent::parse(b"add@relative\0"), None);
        assert_eq!(Uevent::parse(b"@/devices\0"), None);
    }

    proptest! {
        #[test]
        fn any_bytes_parse_or_not_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Uevent::parse(&bytes);
        }
    }
}

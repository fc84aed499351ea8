//! An Ethernet interface's TAP device: made through tun-rs, its carrier
//! set with `TUNSETCARRIER`, its frames read and written without
//! blocking.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use tun_rs::{DeviceBuilder, Layer, SyncDevice};

pub struct Tap {
    device: SyncDevice,
    name: String,
}

impl Tap {
    /// A TAP device named `name` with MAC `mac` and MTU `mtu`, down, with
    /// no carrier.
    pub fn create(name: &str, mac: [u8; 6], mtu: u16) -> io::Result<Tap> {
        let device = DeviceBuilder::new()
            .name(name)
            .layer(Layer::L2)
            .mac_addr(mac)
            .mtu(mtu)
            .enable(false)
            .build_sync()?;
        device.set_nonblocking(true)?;
        let name = device.name()?;
        let tap = Tap { device, name };
        tap.set_carrier(false)?;
        Ok(tap)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The link's carrier: on while a driver reports its link up.
    pub fn set_carrier(&self, on: bool) -> io::Result<()> {
        super::ioctl::set_carrier(self.device.as_fd(), on)
    }

    /// One frame from the kernel, or `WouldBlock`.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.device.recv(buf)
    }

    /// One frame to the kernel.
    pub fn send(&self, frame: &[u8]) -> io::Result<usize> {
        self.device.send(frame)
    }

    pub fn mtu(&self) -> u32 {
        self.device.mtu().map(u32::from).unwrap_or(1500)
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.device.as_fd()
    }
}

//! Device backends: where devices come from. Each backend makes the handle
//! its family needs (a `UsbTransport`, a `PlainDevice`, a `UartDevice`) and plugs it into
//! that family, which publishes the nubs; matching, dexts and the registry's
//! internals are none of a backend's business.
//!
//! - [`virtual_device`]: device files (TOML) and the built-ins, on the
//!   `VirtualBus`; [`virtual_usb`] the USB devices among them,
//!   [`virtual_uart`] the UARTs, [`virtual_cable`] the cables (two
//!   NICs back to back), and [`interrupts`] the interrupt lines;
//! - [`usbip`]: devices imported from a USB/IP server; [`usbip_server`]
//!   the reverse, devices the daemon holds exported to USB/IP peers;
//! - [`linux_usb`]: the real USB devices of the machine, through usbfs;
//! - [`linux_pci`]: the real PCI functions of the machine, through VFIO;
//! - [`virtual_edu`]: a model of QEMU's edu PCI device;
//! - [`uinput`]: the way out, HID events to Linux applications.

pub mod description;
pub mod interrupts;
pub mod linux_pci;
pub mod linux_usb;
pub mod replay;
pub mod uinput;
pub mod usbip;
pub mod usbip_access;
pub mod usbip_server;
pub mod virtual_cable;
pub mod virtual_device;
pub mod virtual_edu;
pub mod virtual_uart;
pub mod virtual_usb;

//! The families' system side. Each family is one module that implements
//! `driverkit_core::Family` for its classes and registers itself in
//! [`Families::new`]:
//!
//! - [`usb`]: `IOUSBHostDevice`, `IOUSBHostInterface` and their pipes;
//! - [`hid`]: `IOHIDInterface`, event services, the event stream;
//! - [`plain`]: devices with no protocol of their own (interrupts, reads);
//! - [`serial`]: `IOUserSerial` ports as ttys, and UARTs;
//! - [`net`]: `IOUserNetworkEthernet` interfaces as TAP devices, and the
//!   virtual cable's NICs;
//! - [`pci`]: `IOPCIDevice` functions: configuration space, BARs,
//!   interrupts, DMA, and IOPCIMatch and friends.

pub mod hid;
pub mod net;
pub mod pci;
pub mod plain;
pub mod serial;
pub mod threads;
pub mod usb;

use std::sync::Arc;

use driverkit_core::Family;

/// The daemon's families, each as its own type (for the backends that plug
/// devices into them) and all together (for the core).
#[derive(Clone)]
pub struct Families {
    pub usb: Arc<usb::UsbFamily>,
    pub hid: Arc<hid::HidFamily>,
    pub plain: Arc<plain::PlainFamily>,
    pub serial: Arc<serial::SerialFamily>,
    pub net: Arc<net::NetFamily>,
    pub pci: Arc<pci::PciFamily>,
}

impl Families {
    /// `serial_links`: where serial ports' callout links go;
    /// `serial_nodes`: which node a port gets.
    pub fn new(
        serial_links: Option<std::path::PathBuf>,
        serial_nodes: serial::NodeChoice,
    ) -> Families {
        let usb = Arc::new(usb::UsbFamily::default());
        Families {
            hid: hid::HidFamily::new(usb.clone()),
            usb,
            plain: Arc::new(plain::PlainFamily::default()),
            serial: Arc::new(serial::SerialFamily::new(serial_links, serial_nodes)),
            net: Arc::new(net::NetFamily::default()),
            pci: Arc::new(pci::PciFamily::default()),
        }
    }

    /// For the core, in the order they hear unclaimed providers: USB
    /// configures a device before HID looks at its interfaces.
    pub fn all(&self) -> Vec<Arc<dyn Family>> {
        vec![
            self.usb.clone(),
            self.hid.clone(),
            self.plain.clone(),
            self.serial.clone(),
            self.net.clone(),
            self.pci.clone(),
        ]
    }
}

//! Real USB devices on Linux, through usbfs: every device the kernel
//! enumerated becomes an `IOUSBHostDevice` nub under a node for its host
//! controller, and follows hot-plug from the kernel's own uevents.
//!
//! The kernel keeps the devices its drivers serve: an interface is taken
//! from its kernel driver only when a dext's personality matched and the
//! dext uses it (see [`device`]), and given back when the dext stops; a
//! ledger under the state directory lets the next start give back what a
//! killed daemon held.
//!
//! - [`uevent`]: the kernel's uevent socket and its messages;
//! - [`device`]: one device as a `UsbTransport` (nusb), with the claims;
//! - [`endpoint`]: one endpoint's thread, many transfers in flight;
//! - [`sysfs`]: bound drivers and the kernel's copy of report descriptors;
//! - [`ledger`]: interfaces detached, for recovery after `kill -9`.

pub mod device;
pub mod endpoint;
mod error;
pub mod ledger;
pub mod sysfs;
pub mod uevent;

use driverkit_wire::sync::Locked;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use driverkit_core::{EntryId, Nub, System};
use nusb::MaybeFuture;

use crate::families::usb::UsbFamily;
use device::LinuxUsbDevice;
use ledger::Ledger;

pub use error::LinuxUsbError;
use error::NotReattached;

/// The Linux USB backend.
pub struct LinuxUsb {
    system: System,
    usb: Arc<UsbFamily>,
    ledger: Arc<Ledger>,
    /// A node per host controller, by bus number.
    buses: Mutex<HashMap<u8, EntryId>>,
    /// Plugged devices by sysfs path.
    devices: Mutex<HashMap<PathBuf, EntryId>>,
}

impl LinuxUsb {
    /// Gives back what a killed daemon left detached, opens the uevent
    /// watch, plugs every device there is, and follows hot-plug on a thread
    /// of its own. `state` is the daemon's state directory (the ledger).
    pub fn start(
        system: System,
        usb: Arc<UsbFamily>,
        state: &Path,
    ) -> Result<Arc<LinuxUsb>, LinuxUsbError> {
        if !Path::new(device::USBFS).is_dir() {
            return Err(LinuxUsbError::NoUsbfs(device::USBFS));
        }
        let ledger = Arc::new(Ledger::open(state.join("linux-usb").join("detached")));
        reattach_left_over(&ledger);
        // The watch first, then the list: nothing arrives unseen between.
        let events = uevent::UeventSocket::open().map_err(LinuxUsbError::Uevents)?;
        let backend = Arc::new(LinuxUsb {
            system,
            usb,
            ledger,
            buses: Mutex::default(),
            devices: Mutex::default(),
        });
        let devices = nusb::list_devices().wait().map_err(LinuxUsbError::List)?;
        for info in devices {
            backend.plug(&info);
        }
        let me = Arc::downgrade(&backend);
        std::thread::Builder::new()
            .name("usb-uevents".into())
            .spawn(move || loop {
                let event = match events.next() {
                    Ok(e) => e,
                    // The kernel dropped uevents (a burst overflowed the
                    // socket's buffer): what they said is found by looking.
                    Err(e)
                        if e.raw_os_error() == Some(rustix::io::Errno::NOBUFS.raw_os_error()) =>
                    {
                        tracing::warn!("usb      uevents were lost; rescanning the devices");
                        match me.upgrade() {
                            Some(backend) => backend.rescan(),
                            None => return,
                        }
                        continue;
                    }
                    Err(e) => {
                        tracing::error!("usb      the uevent watch ended: {e}; hot-plug is off");
                        return;
                    }
                };
                let Some(backend) = me.upgrade() else { return };
                if event.is_usb_device() {
                    backend.uevent(&event);
                }
            })
            .map_err(LinuxUsbError::Thread)?;
        Ok(backend)
    }

    fn uevent(&self, event: &uevent::Uevent) {
        let path = Path::new("/sys").join(event.devpath.trim_start_matches('/'));
        tracing::info!("uevent   {} {}", event.action, path.display());
        match event.action.as_str() {
            "add" => {
                let found = nusb::list_devices()
                    .wait()
                    .ok()
                    .and_then(|mut all| all.find(|d| d.sysfs_path() == path));
                match found {
                    Some(info) => self.plug(&info),
                    None => tracing::warn!("usb      {}: arrived, then not found", path.display()),
                }
            }
            "remove" => {
                let id = self.devices.locked().remove(&path);
                if let Some(id) = id {
                    tracing::info!("unplug   {} [{id:#x}]", path.display());
                    self.system.terminate(id);
                }
            }
            _ => {}
        }
    }

    /// Makes the nubs agree with the devices there are: plugs the new ones,
    /// unplugs the gone ones (after lost uevents).
    fn rescan(&self) {
        let Ok(present) = nusb::list_devices().wait() else {
            return;
        };
        let present: Vec<nusb::DeviceInfo> = present.collect();
        let gone: Vec<(PathBuf, EntryId)> = self
            .devices
            .locked()
            .iter()
            .filter(|(path, _)| !present.iter().any(|d| d.sysfs_path() == path.as_path()))
            .map(|(p, id)| (p.clone(), *id))
            .collect();
        for (path, id) in gone {
            self.devices.locked().remove(&path);
            tracing::info!("unplug   {} [{id:#x}] (found gone)", path.display());
            self.system.terminate(id);
        }
        for info in &present {
            self.plug(info);
        }
    }

    /// Publishes a device; hubs are the kernel's business and stay out.
    fn plug(&self, info: &nusb::DeviceInfo) {
        if info.class() == 0x09 {
            return;
        }
        let path = info.sysfs_path().to_owned();
        if self.devices.locked().contains_key(&path) {
            return;
        }
        let device = match LinuxUsbDevice::open(info, self.ledger.clone()) {
            Ok(d) => Arc::new(d),
            Err(e) => {
                tracing::warn!("usb      not plugging {}: {e}", path.display());
                return;
            }
        };
        let plugged = self
            .bus(info.busnum())
            .and_then(|bus| Ok(self.usb.plug(&self.system, None, device, bus)?));
        match plugged {
            Ok(id) => {
                self.devices.locked().insert(path, id);
            }
            Err(e) => tracing::warn!("usb      not plugging {}: {e}", path.display()),
        }
    }

    /// The node of host controller `busnum`, made on first use.
    fn bus(&self, busnum: u8) -> Result<EntryId, LinuxUsbError> {
        let mut buses = self.buses.locked();
        if let Some(id) = buses.get(&busnum) {
            return Ok(*id);
        }
        let controller = nusb::list_buses()
            .wait()
            .ok()
            .and_then(|mut all| all.find(|b| b.busnum() == busnum));
        let kind = controller
            .as_ref()
            .and_then(|b| b.controller_type())
            .map(|t| format!("{t:?}").to_uppercase())
            .unwrap_or_else(|| "USB".to_owned());
        let mut properties = plist::Dictionary::new();
        properties.insert("IOLinuxBusNumber".into(), i64::from(busnum).into());
        if let Some(b) = &controller {
            properties.insert(
                "IOLinuxSysfsPath".into(),
                b.sysfs_path().display().to_string().into(),
            );
        }
        let id = self
            .system
            .publish(Nub {
                name: &format!("{kind}@{busnum}"),
                class: "IOUSBHostController",
                properties,
                provider: self
                    .system
                    .root()
                    .map_err(|status| LinuxUsbError::NoRoot { busnum, status })?,
                family: None,
                plugged_from: None,
                matched: true,
            })
            .map_err(|status| LinuxUsbError::Bus { busnum, status })?;
        buses.insert(busnum, id);
        Ok(id)
    }
}

/// Attaches the kernel drivers a previous daemon detached and did not give
/// back (it was killed).
fn reattach_left_over(ledger: &Ledger) {
    for (interface, driver) in ledger.left_over() {
        let back = || -> Result<(), NotReattached> {
            if sysfs::driver(&interface).is_some_and(|d| d != "usbfs") {
                return Ok(()); // bound again meanwhile
            }
            let device_dir = interface.parent().ok_or(NotReattached::NotAnInterface)?;
            let number = interface
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.rsplit('.').next())
                .and_then(|n| n.parse::<u8>().ok())
                .ok_or(NotReattached::NotAnInterface)?;
            let info = nusb::list_devices()
                .wait()?
                .find(|d| d.sysfs_path() == device_dir)
                .ok_or(NotReattached::Gone)?;
            let device = info.open().wait()?;
            Ok(device.attach_kernel_driver(number)?)
        };
        match back() {
            Ok(()) => tracing::info!(
                "usb      {}: {driver} attached again (left detached by a previous daemon)",
                interface.display()
            ),
            Err(e) => tracing::info!(
                "usb      {}: not attaching {driver} again: {e}",
                interface.display()
            ),
        }
        ledger.attached(&interface);
    }
}

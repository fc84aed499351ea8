//! The USB family's system side: `IOUSBHostDevice`, `IOUSBHostInterface`
//! and `IOUSBHostPipe` as dexts call them, and the family's own work:
//! registry properties from the descriptors, configuring devices no driver
//! claimed (vendor-class ones wait for a driver's `SetConfiguration`), and
//! interface nubs.
//!
//! Pipes are not registry entries: they are the family's own objects (IDs
//! from [`FamilyId::object`]), owned by the process that copied them.
//!
//! Devices arrive from the backends as a [`UsbTransport`] given to
//! [`UsbFamily::plug`]; the family reads their descriptors as a host does
//! and publishes the nubs.

mod configuration;
mod device_calls;
mod errors;
mod interface_calls;
pub mod matching;
mod model;
pub mod order;
mod pipe_calls;
pub mod transport;

use driverkit_wire::sync::Locked;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use driverkit_core::{Call, EntryId, Family, FamilyMatcher, Nub, ServerId, System};
use driverkit_usb::{kind, DeviceDescriptor, Setup, TransferType};
use driverkit_wire::interfaces::{
    iousb_host_device_interface, iousb_host_interface_interface, iousb_host_pipe_interface,
    IOUSBHostDeviceInterface, IOUSBHostInterfaceInterface, IOUSBHostPipeInterface,
};
use driverkit_wire::{Bytes, IOResult, IOReturn, MethodId, ObjectId};
use plist::Value;

pub mod tap;

pub use errors::{LendError, PlugError};
pub use model::{may_detach, Endpoint, UsbDevice, UsbInterface, KEEP_HOST_DRIVER};
pub use transport::{enumerate, Completed, Enumerated, InSink, Transfer, UsbTransport};

use device_calls::{control_request, current_configuration, timeout, UsbCall};
use model::{endpoints_of, Hold, Pipe};
use pipe_calls::completion;

#[derive(Default)]
struct UsbState {
    /// Devices lent out whole (exported over USB/IP): no nub, driver or
    /// pipe of ours touches them meanwhile.
    lent: std::collections::HashSet<EntryId>,
    devices: HashMap<EntryId, Arc<UsbDevice>>,
    interfaces: HashMap<EntryId, Arc<UsbInterface>>,
    pipes: HashMap<ObjectId, Arc<Pipe>>,
    /// Interfaces a dext selected an alternate setting of: held until the
    /// dext's driver or the interface goes.
    selections: Vec<Hold>,
    next_pipe: u64,
}

/// The USB family: `IOUSBHostDevice` and `IOUSBHostInterface` nubs, their
/// pipes, and the matching ladders.
#[derive(Default)]
pub struct UsbFamily {
    state: Mutex<UsbState>,
    /// `sessionID` of the next device: unique per plug, as on macOS.
    next_session: std::sync::atomic::AtomicU64,
}

/// The registry properties of a device nub, named as macOS names them.
fn device_properties(e: &Enumerated, location: u32) -> plist::Dictionary {
    let mut p = plist::Dictionary::new();
    let Ok(d) = DeviceDescriptor::new_checked(&e.device, 0) else {
        return p;
    };
    let int = |v: u64| Value::Integer(v.into());
    p.insert("idVendor".into(), int(d.vendor_id().into()));
    p.insert("idProduct".into(), int(d.product_id().into()));
    p.insert("bcdDevice".into(), int(d.bcd_device().into()));
    p.insert("bcdUSB".into(), int(d.bcd_usb().into()));
    p.insert("bDeviceClass".into(), int(d.device_class().into()));
    p.insert("bDeviceSubClass".into(), int(d.device_subclass().into()));
    p.insert("bDeviceProtocol".into(), int(d.device_protocol().into()));
    p.insert("bMaxPacketSize0".into(), int(d.max_packet_size0().into()));
    p.insert(
        "bNumConfigurations".into(),
        int(d.num_configurations().into()),
    );
    p.insert("locationID".into(), int(location.into()));
    for (key, value) in [
        ("USB Vendor Name", &e.manufacturer),
        ("USB Product Name", &e.product),
        ("USB Serial Number", &e.serial),
    ] {
        if let Some(v) = value {
            p.insert(key.into(), Value::String(v.clone()));
        }
    }
    // Where the device says nothing, the names lsusb would show, marked as
    // coming from the USB ID Repository rather than from the device.
    let (vendor, product) = id_names(d.vendor_id(), d.product_id());
    let mut from_ids = false;
    for (key, said, known) in [
        ("USB Vendor Name", &e.manufacturer, vendor),
        ("USB Product Name", &e.product, product),
    ] {
        if let (None, Some(name)) = (said, known) {
            p.insert(key.into(), name.into());
            from_ids = true;
        }
    }
    if from_ids {
        p.insert("DriverKitNamesFrom".into(), "usb.ids".into());
    }
    p
}

/// The vendor's and the product's names in the USB ID Repository.
fn id_names(vendor: u16, product: u16) -> (Option<&'static str>, Option<&'static str>) {
    use usb_ids::FromId;
    (
        usb_ids::Vendor::from_id(vendor).map(|v| v.name()),
        usb_ids::Device::from_vid_pid(vendor, product).map(|d| d.name()),
    )
}

impl UsbFamily {
    fn lock(&self) -> MutexGuard<'_, UsbState> {
        self.state.locked()
    }

    /// The interface behind an `IOUSBHostInterface` nub (the HID family
    /// drives class-3 interfaces nobody claimed).
    pub fn interface(&self, entry: EntryId) -> Option<Arc<UsbInterface>> {
        self.lock().interfaces.get(&entry).cloned()
    }

    /// Every USB device the family holds.
    pub fn device_ids(&self) -> Vec<EntryId> {
        let mut ids: Vec<EntryId> = self.lock().devices.keys().copied().collect();
        ids.sort();
        ids
    }

    /// The device behind an `IOUSBHostDevice` nub.
    pub fn device(&self, entry: EntryId) -> Option<Arc<UsbDevice>> {
        self.lock().devices.get(&entry).cloned()
    }

    /// Reads a USB device's descriptors and publishes it as an
    /// `IOUSBHostDevice` nub under `bus`, named `name` or else by its
    /// product string as macOS does, then matches it.
    pub fn plug(
        &self,
        system: &System,
        name: Option<&str>,
        transport: Arc<dyn UsbTransport>,
        bus: EntryId,
    ) -> Result<EntryId, PlugError> {
        let enumerated = enumerate(&*transport)?;
        let name = name
            .map(str::to_owned)
            .or_else(|| enumerated.product.clone())
            .or_else(|| {
                DeviceDescriptor::new_checked(&enumerated.device, 0)
                    .ok()
                    .and_then(|d| id_names(d.vendor_id(), d.product_id()).1)
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| "IOUSBHostDevice".to_owned());
        let name = name.as_str();
        let mut properties = device_properties(&enumerated, transport.location_id());
        properties.insert("USBSpeed".into(), i64::from(transport.speed()).into());
        let session = self
            .next_session
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        properties.insert("sessionID".into(), Value::Integer(session.into()));
        properties.extend(transport.properties());
        let configuration = transport.active_configuration().unwrap_or(0);
        let source = transport.source();
        let id = system
            .publish(Nub {
                name,
                class: "IOUSBHostDevice",
                properties,
                provider: bus,
                family: Some(self),
                plugged_from: Some(source.clone()),
                matched: false,
            })
            .map_err(|status| PlugError::BusGone {
                from: source.clone(),
                status,
            })?;
        // The packets of a recording name the device by its session
        // (usbmon's device number) on bus 1.
        let tapped = tap::Tapped::new(transport, &enumerated, session as u8, 1);
        let tap = tapped.tap.clone();
        self.lock().devices.insert(
            id,
            Arc::new(UsbDevice {
                entry: id,
                transport: Arc::new(tapped),
                tap,
                enumerated,
                configuration: Mutex::new(configuration),
            }),
        );
        tracing::info!("plug     {name} [{id:#x}] (IOUSBHostDevice, from {source})");
        system.match_nub(id);
        Ok(id)
    }

    /// Records device `entry`'s traffic from now on: first the packets
    /// that fetch its descriptors and set its configuration, then every
    /// control request and transfer, as usbmon packets.
    pub fn record(&self, entry: EntryId) -> Result<(Vec<tap::Record>, tap::Recording), LendError> {
        let device = self.device(entry).ok_or(LendError::NotUsb(entry))?;
        let configuration = *device.configuration.locked();
        let preamble = device.tap.preamble(&device.enumerated, configuration);
        Ok((preamble, device.tap.subscribe()))
    }

    /// Device `entry`, if it may be lent out: a USB device no dext drives.
    pub fn lendable(&self, system: &System, entry: EntryId) -> Result<Arc<UsbDevice>, LendError> {
        let device = self.device(entry).ok_or(LendError::NotUsb(entry))?;
        if let Some((service, name)) = system.driver_above(entry) {
            return Err(LendError::Driven {
                entry,
                name,
                service,
            });
        }
        Ok(device)
    }

    /// Lends device `entry` out whole (to a USB/IP peer): the system's own
    /// services on it stop and its interface nubs go; refused while a
    /// dext drives it.
    pub fn lend(&self, system: &System, entry: EntryId) -> Result<Arc<UsbDevice>, LendError> {
        let device = self.lendable(system, entry)?;
        if !self.lock().lent.insert(entry) {
            return Err(LendError::LentAlready(entry));
        }
        system.set_registered(entry, false);
        for client in system.clients(entry) {
            system.terminate(client);
        }
        Ok(device)
    }

    /// Takes a lent device back: it is matched again.
    pub fn give_back(&self, system: &System, entry: EntryId) {
        if self.lock().lent.remove(&entry) {
            // What the borrower configured is not ours: start afresh.
            if let Some(d) = self.device(entry) {
                *d.configuration.locked() = d.transport.active_configuration().unwrap_or(0);
            }
            system.set_registered(entry, true);
            system.match_nub(entry);
        }
    }

    /// The service of `server` that drives `interface`'s device: a client
    /// of the device or of any of its interfaces.
    fn driver_of_device(
        &self,
        system: &System,
        server: ServerId,
        device: &Arc<UsbDevice>,
    ) -> Option<EntryId> {
        let siblings: Vec<EntryId> = self
            .lock()
            .interfaces
            .values()
            .filter(|i| Arc::ptr_eq(&i.device, device))
            .map(|i| i.entry)
            .collect();
        std::iter::once(device.entry)
            .chain(siblings)
            .find_map(|entry| system.client_in(entry, server))
    }

    /// Whether a process other than `server` holds pipes of `interface`.
    fn held_elsewhere(&self, interface: EntryId, server: ServerId) -> bool {
        let st = self.lock();
        st.pipes
            .values()
            .map(|p| &p.hold)
            .chain(st.selections.iter())
            .any(|h| h.interface_entry == interface && h.server != server)
    }

    /// The service of `server` that drives `entry`: its own client, or
    /// (see [`Family::associated_driver`]) the driver of its device.
    fn driver_of(&self, system: &System, server: ServerId, entry: EntryId) -> Option<EntryId> {
        system
            .client_in(entry, server)
            .or_else(|| self.associated_driver(system, server, entry))
    }

    /// Runs `transfer` on a worker and completes `action` of `server` with
    /// its result, unless the device goes first (then terminate completes
    /// it with `kIOReturnAborted`, before the drivers' Stop).
    fn run_async(
        call: &Call<'_>,
        device: EntryId,
        action: u64,
        transfer: impl FnOnce() -> IOResult<u64> + Send + 'static,
    ) -> IOResult<()> {
        let request = call.system.track_request(call.server, device, action)?;
        let system = call.system.clone();
        call.system.run_io(move || {
            let (status, actual) = completion(transfer());
            system.finish_request(request, status, actual);
        });
        Ok(())
    }
}

impl Family for UsbFamily {
    fn name(&self) -> &'static str {
        "USB"
    }

    fn classes(&self) -> Vec<(&'static str, Option<&'static str>)> {
        vec![("IOUSBHostDevice", None), ("IOUSBHostInterface", None)]
    }

    fn matchers(&self) -> Vec<Box<dyn FamilyMatcher>> {
        vec![
            Box::new(matching::UsbMatcher::device()),
            Box::new(matching::UsbMatcher::interface()),
        ]
    }

    fn kernel_call(&self, call: &Call<'_>) -> Option<IOResult<Vec<u8>>> {
        let (method, args) = (call.method, call.args);
        let call = UsbCall { family: self, call };
        iousb_host_device_interface::dispatch(&call, method, args)
            .or_else(|| iousb_host_interface_interface::dispatch(&call, method, args))
            .or_else(|| iousb_host_pipe_interface::dispatch(&call, method, args))
    }

    /// A driver drives its device or interface.
    fn client_method(&self, method: MethodId) -> bool {
        iousb_host_device_interface::method_name(method).is_some()
            || iousb_host_interface_interface::method_name(method).is_some()
    }

    /// The driver of a device's interface drives the device and its other
    /// interfaces too (`CopyDevice`, `CopyInterface`), as the driver of the
    /// device drives its interfaces: a CDC driver of the control interface
    /// needs the data interface's pipes. An interface another driver
    /// matched, or whose pipes another process holds (see `copy_pipe`),
    /// stays that driver's.
    fn associated_driver(
        &self,
        system: &System,
        server: ServerId,
        object: EntryId,
    ) -> Option<EntryId> {
        let device = match self.device(object) {
            Some(d) => d,
            // An interface another driver matched (a dext's, or the
            // system's HID driver) is that driver's.
            None if !system.clients(object).is_empty() => return None,
            None => self.interface(object)?.device.clone(),
        };
        self.driver_of_device(system, server, &device)
    }

    /// A device that is not vendor-class gets its first configuration and
    /// interface nubs.
    fn unclaimed(&self, system: &System, entry: EntryId) {
        self.unclaimed_device(system, entry);
    }

    /// Devices in `departing` are going away: their transports close, so
    /// every transfer waiting on them ends now, before any driver's Stop.
    fn departing(&self, _system: &System, departing: &[EntryId]) {
        let devices: Vec<Arc<UsbDevice>> = {
            let st = self.lock();
            departing
                .iter()
                .filter_map(|id| st.devices.get(id).cloned())
                .collect()
        };
        for d in devices {
            d.transport.close();
        }
    }

    /// Forgets the family objects of a removed entry.
    fn removed(&self, _system: &System, id: EntryId) {
        let (device, pipes) = {
            let mut st = self.lock();
            st.lent.remove(&id);
            st.interfaces.remove(&id);
            // An interface's pipes go with it, a driver's with the driver.
            let gone: Vec<ObjectId> = st
                .pipes
                .iter()
                .filter(|(_, p)| p.hold.goes_with(id))
                .map(|(k, _)| *k)
                .collect();
            let pipes: Vec<Arc<Pipe>> = gone.iter().filter_map(|k| st.pipes.remove(k)).collect();
            let (selections, kept) = std::mem::take(&mut st.selections)
                .into_iter()
                .partition(|h| h.goes_with(id));
            st.selections = kept;
            (st.devices.remove(&id), (pipes, selections))
        };
        // Released (claims given back) outside the family's lock.
        drop(pipes);
        // A device removed without departing first (a crash of its
        // provider's process) must not keep its transport open.
        if let Some(d) = device {
            d.transport.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::id_names;

    #[test]
    fn names_come_from_the_usb_id_repository_where_the_device_says_none() {
        // An FTDI FT232 and the Linux Foundation's root hub, as lsusb names them.
        assert_eq!(
            id_names(0x0403, 0x6001),
            (
                Some("Future Technology Devices International, Ltd"),
                Some("FT232 Serial (UART) IC")
            )
        );
        assert_eq!(id_names(0x1d6b, 0x0003).1, Some("3.0 root hub"));
        assert_eq!(id_names(0xfffe, 0xfffe), (None, None));
    }
}

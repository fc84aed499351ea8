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

pub mod matching;
pub mod order;
pub mod transport;

use driverkit_wire::sync::Locked;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use driverkit_core::{Call, EntryId, Family, FamilyMatcher, Nub, System};
use driverkit_usb::{kind, DeviceDescriptor, Setup, TransferType};
use driverkit_wire::interfaces::{
    iousb_host_device_interface, iousb_host_interface_interface, iousb_host_pipe_interface,
    IOUSBHostDeviceInterface, IOUSBHostInterfaceInterface, IOUSBHostPipeInterface,
};
use driverkit_wire::{Bytes, IOResult, IOReturn, MethodId, ObjectId};
use plist::Value;

pub mod tap;

pub use transport::{enumerate, Completed, Enumerated, InSink, UsbTransport};

/// A plugged USB device.
pub struct UsbDevice {
    pub entry: EntryId,
    /// The backend's transport, tapped: recorders hear its traffic.
    pub transport: Arc<dyn UsbTransport>,
    pub tap: Arc<tap::Tap>,
    pub enumerated: Enumerated,
    /// The selected configuration value; 0 when unconfigured.
    pub configuration: Mutex<u8>,
}

/// An endpoint of an interface nub.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    pub address: u8,
    pub transfer_type: TransferType,
    pub max_packet_size: u16,
    pub interval: u8,
}

/// An interface of a configured device, published as a nub.
pub struct UsbInterface {
    /// Its nub.
    pub entry: EntryId,
    pub device: Arc<UsbDevice>,
    pub number: u8,
    pub class: u8,
    /// The alternate setting selected now, and its endpoints.
    setting: Mutex<(u8, Vec<Endpoint>)>,
}

impl UsbInterface {
    /// The endpoints of the alternate setting selected now.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.setting.locked().1.clone()
    }

    /// Takes the interface for a driver (see [`UsbTransport::claim`]); its
    /// nub shows the host driver bound now (`IOLinuxDriver`).
    pub fn claim(&self, system: &System, may_detach: bool) -> IOResult<()> {
        self.device.transport.claim(self.number, may_detach)?;
        self.show_host_driver(system);
        Ok(())
    }

    /// Gives one claim back.
    pub fn release(&self, system: &System) {
        self.device.transport.release(self.number);
        self.show_host_driver(system);
    }

    fn show_host_driver(&self, system: &System) {
        let now = self.device.transport.interface_properties(self.number);
        match now.get("IOLinuxDriver") {
            Some(driver) => system.set_property(self.entry, "IOLinuxDriver", driver.clone()),
            None => system.remove_property(self.entry, "IOLinuxDriver"),
        }
    }
}

/// A claim of an interface (see [`UsbTransport::claim`]) that a dext's
/// pipe or selected alternate setting holds while it lives.
struct Hold {
    /// To show the interface's host driver again when the hold goes.
    system: System,
    interface: Arc<UsbInterface>,
    interface_entry: EntryId,
    server: u64,
    /// The dext's service that drives the interface.
    client: Option<EntryId>,
}

impl Hold {
    /// Claims `interface` for `client` of process `server`.
    fn take(
        system: &System,
        interface: Arc<UsbInterface>,
        server: u64,
        client: Option<EntryId>,
    ) -> IOResult<Hold> {
        interface.claim(system, may_detach(system, client))?;
        Ok(Hold {
            system: system.clone(),
            interface_entry: interface.entry,
            interface,
            server,
            client,
        })
    }

    /// Whether it goes with entry `id` (its interface, or its driver).
    fn goes_with(&self, id: EntryId) -> bool {
        self.interface_entry == id || self.client == Some(id)
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.interface.release(&self.system);
    }
}

/// A pipe a dext copied from an interface.
struct Pipe {
    hold: Hold,
    endpoint: Endpoint,
    /// Its asynchronous transfers, queued and completed in order.
    order: Arc<order::InOrder>,
}

/// The personality key by which a driver leaves a host's own driver (Linux's
/// kernel driver) in place rather than have it detached: its claims fail
/// with `kIOReturnExclusiveAccess` while the host driver is bound.
pub const KEEP_HOST_DRIVER: &str = "IOLinuxKeepKernelDriver";

/// Whether the host driver of an interface may be detached for `client`.
pub fn may_detach(system: &System, client: Option<EntryId>) -> bool {
    client
        .and_then(|c| system.property(c, KEEP_HOST_DRIVER))
        .and_then(|v| v.as_boolean())
        != Some(true)
}

impl Pipe {
    /// The endpoint's abort generation now: what a transfer asked for now
    /// is submitted under.
    fn generation(&self) -> u64 {
        self.hold
            .interface
            .device
            .transport
            .abort_generation(self.endpoint.address)
    }
}

#[derive(Default)]
struct UsbState {
    /// Devices lent out whole (exported over USB/IP): no nub, driver or
    /// pipe of ours touches them meanwhile.
    lent: std::collections::HashSet<EntryId>,
    devices: HashMap<EntryId, Arc<UsbDevice>>,
    interfaces: HashMap<EntryId, Arc<UsbInterface>>,
    pipes: HashMap<u64, Arc<Pipe>>,
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
    ) -> Result<EntryId, String> {
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
            .map_err(|e| format!("{source}: its bus is gone ({e})"))?;
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
    pub fn record(&self, entry: EntryId) -> Result<(Vec<tap::Record>, tap::Recording), String> {
        let device = self.device(entry).ok_or_else(|| {
            format!("{entry:#x} is not a USB device (see `driverkit device list`)")
        })?;
        let configuration = *device.configuration.locked();
        let preamble = device.tap.preamble(&device.enumerated, configuration);
        Ok((preamble, device.tap.subscribe()))
    }

    /// After matching left a USB device without a driver: a device that
    /// is not vendor-class gets its first configuration and interface nubs.
    /// Device `entry`, if it may be lent out: a USB device no dext drives.
    pub fn lendable(&self, system: &System, entry: EntryId) -> Result<Arc<UsbDevice>, String> {
        let device = self.device(entry).ok_or_else(|| {
            format!("{entry:#x} is not a USB device (see `driverkit device list`)")
        })?;
        if let Some((service, name)) = system.driver_above(entry) {
            return Err(format!(
                "{entry:#x} is driven by {name} [{service:#x}]; stop its driver first (or run the daemon with --no-embedded)"
            ));
        }
        Ok(device)
    }

    /// Lends device `entry` out whole (to a USB/IP peer): the system's own
    /// services on it stop and its interface nubs go; refused while a
    /// dext drives it.
    pub fn lend(&self, system: &System, entry: EntryId) -> Result<Arc<UsbDevice>, String> {
        let device = self.lendable(system, entry)?;
        if !self.lock().lent.insert(entry) {
            return Err(format!("{entry:#x} is lent out already"));
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

    fn unclaimed_device(&self, system: &System, entry: EntryId) {
        if self.lock().lent.contains(&entry) {
            return;
        }
        let device = self.device(entry);
        let Some(device) = device else { return };
        let vendor_class = DeviceDescriptor::new_checked(&device.enumerated.device, 0)
            .is_ok_and(|d| d.device_class() == 0xff);
        let current = *device.configuration.locked();
        let has_interfaces = self
            .lock()
            .interfaces
            .values()
            .any(|i| Arc::ptr_eq(&i.device, &device));
        // A device a driver configured (without interfaces) stays as it is;
        // one the host configured (Linux) gets the nubs of its interfaces.
        let host_configured = device.transport.active_configuration().is_some();
        if vendor_class || has_interfaces || (current != 0 && !host_configured) {
            return;
        }
        // A host that configured the device already (Linux) keeps its
        // configuration: its interfaces get nubs.
        let value = match current {
            0 => match device.enumerated.configurations.first() {
                Some(first) => first.get(5).copied().unwrap_or(1),
                None => return,
            },
            v => v,
        };
        if let Err(e) = self.configure(system, &device, value, true) {
            tracing::warn!("configure [{entry:#x}] with configuration {value} failed: {e}");
        }
    }

    /// SET_CONFIGURATION, then (with `match_interfaces`) one nub per
    /// interface, each matched. Nubs of the previous configuration go first.
    fn configure(
        &self,
        system: &System,
        device: &Arc<UsbDevice>,
        value: u8,
        match_interfaces: bool,
    ) -> IOResult<()> {
        let config = if value == 0 {
            None
        } else {
            Some(
                device
                    .enumerated
                    .configurations
                    .iter()
                    .find(|c| c.get(5) == Some(&value))
                    .ok_or(IOReturn::BAD_ARGUMENT)?,
            )
        };
        let old: Vec<EntryId> = {
            let st = self.lock();
            st.interfaces
                .iter()
                .filter(|(_, i)| Arc::ptr_eq(&i.device, device))
                .map(|(id, _)| *id)
                .collect()
        };
        for id in old {
            system.terminate(id);
        }
        let current = *device.configuration.locked();
        if current != value || device.transport.active_configuration().is_none() {
            device.transport.set_configuration(value)?;
        }
        *device.configuration.locked() = value;
        let Some(config) = config else { return Ok(()) };
        system.set_property(
            device.entry,
            "kUSBCurrentConfiguration",
            i64::from(value).into(),
        );
        let (_, interfaces) = driverkit_usb::interfaces(config).map_err(|_| IOReturn::IO_ERROR)?;
        let mut nubs = Vec::new();
        {
            let device_props = system.properties(device.entry).unwrap_or_default();
            for i in interfaces
                .iter()
                .filter(|i| i.descriptor.alternate_setting() == 0)
            {
                let d = &i.descriptor;
                let mut p = plist::Dictionary::new();
                // Interface nubs carry the device's identity too: the
                // interface ladder's rows start with idVendor and idProduct.
                for key in ["idVendor", "idProduct", "bcdDevice", "locationID"] {
                    if let Some(v) = device_props.get(key) {
                        p.insert(key.into(), v.clone());
                    }
                }
                let int = |v: u8| Value::Integer(u64::from(v).into());
                p.extend(device.transport.interface_properties(d.interface_number()));
                p.insert("bConfigurationValue".into(), int(value));
                p.insert("bInterfaceNumber".into(), int(d.interface_number()));
                p.insert("bAlternateSetting".into(), int(0));
                p.insert("bInterfaceClass".into(), int(d.interface_class()));
                p.insert("bInterfaceSubClass".into(), int(d.interface_subclass()));
                p.insert("bInterfaceProtocol".into(), int(d.interface_protocol()));
                p.insert("bNumEndpoints".into(), int(d.num_endpoints()));
                let name = format!("IOUSBHostInterface@{}", d.interface_number());
                let endpoints = endpoints_of(i);
                let id = system
                    .publish(Nub {
                        name: &name,
                        class: "IOUSBHostInterface",
                        properties: p,
                        provider: device.entry,
                        family: Some(self),
                        plugged_from: None,
                        matched: false,
                    })
                    .map_err(|_| IOReturn::NO_DEVICE)?;
                self.lock().interfaces.insert(
                    id,
                    Arc::new(UsbInterface {
                        entry: id,
                        device: device.clone(),
                        number: d.interface_number(),
                        class: d.interface_class(),
                        setting: Mutex::new((0, endpoints)),
                    }),
                );
                nubs.push(id);
            }
        }
        if match_interfaces {
            for id in nubs {
                system.match_nub(id);
            }
        }
        Ok(())
    }

    /// The service of `server` that drives `interface`'s device: a client
    /// of the device or of any of its interfaces.
    fn driver_of_device(
        &self,
        system: &System,
        server: u64,
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
    fn held_elsewhere(&self, interface: EntryId, server: u64) -> bool {
        let st = self.lock();
        st.pipes
            .values()
            .map(|p| &p.hold)
            .chain(st.selections.iter())
            .any(|h| h.interface_entry == interface && h.server != server)
    }

    /// The service of `server` that drives `entry`: its own client, or
    /// (see [`Family::associated_driver`]) the driver of its device.
    fn driver_of(&self, system: &System, server: u64, entry: EntryId) -> Option<EntryId> {
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

    fn kernel_call(
        &self,
        call: &Call<'_>,
        method: MethodId,
        args: &[u8],
    ) -> Option<IOResult<Vec<u8>>> {
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
    fn associated_driver(&self, system: &System, server: u64, object: EntryId) -> Option<EntryId> {
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
            let gone: Vec<u64> = st
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

/// One call of a dext into the USB family.
struct UsbCall<'a> {
    family: &'a UsbFamily,
    call: &'a Call<'a>,
}

/// The selected configuration's descriptor; `None` while unconfigured.
fn current_configuration(d: &UsbDevice) -> Option<Bytes> {
    let current = *d.configuration.locked();
    d.enumerated
        .configurations
        .iter()
        .find(|c| current != 0 && c.get(5) == Some(&current))
        .cloned()
        .map(Bytes)
}

/// A driver's control request on endpoint 0 of `d`.
fn control_request(d: &UsbDevice, setup: u64, data: Bytes, timeout_ms: u32) -> IOResult<Bytes> {
    let setup = setup_from(setup);
    if setup.request == driverkit_usb::repr::request::SET_CONFIGURATION && setup.request_type == 0 {
        // The family owns configurations: it must see the change.
        return Err(IOReturn::NOT_PERMITTED);
    }
    d.transport
        .control(setup, &data.0, timeout(timeout_ms))
        .map(Bytes)
}

/// `setup` as the wire carries it: the eight setup bytes, little-endian.
fn setup_from(setup: u64) -> Setup {
    Setup::parse(setup.to_le_bytes())
}

fn timeout(ms: u32) -> Option<Duration> {
    (ms != 0).then(|| Duration::from_millis(ms.into()))
}

impl UsbCall<'_> {
    fn usb_device(&self) -> IOResult<Arc<UsbDevice>> {
        self.family
            .device(self.call.object)
            .ok_or(IOReturn::UNSUPPORTED)
    }

    fn usb_interface(&self) -> IOResult<Arc<UsbInterface>> {
        self.family
            .interface(self.call.object)
            .ok_or(IOReturn::UNSUPPORTED)
    }

    /// A pipe, only for the process that copied it.
    fn pipe(&self) -> IOResult<Arc<Pipe>> {
        let st = self.family.lock();
        let pipe = st.pipes.get(&self.call.object).ok_or(IOReturn::NOT_FOUND)?;
        if pipe.hold.server != self.call.server {
            return Err(IOReturn::NOT_PERMITTED);
        }
        Ok(pipe.clone())
    }
}

impl IOUSBHostDeviceInterface for UsbCall<'_> {
    fn copy_descriptors(&self) -> IOResult<(Bytes, Bytes)> {
        let d = self.usb_device()?;
        let config = current_configuration(&d)
            .or_else(|| d.enumerated.configurations.first().cloned().map(Bytes))
            .unwrap_or_default();
        Ok((Bytes(d.enumerated.device.clone()), config))
    }

    fn copy_string(&self, index: u8) -> IOResult<String> {
        let d = self.usb_device()?;
        if index == 0 {
            return Err(IOReturn::BAD_ARGUMENT);
        }
        let b = d.transport.control(
            Setup::get_descriptor(kind::STRING, index, 0x0409, 255),
            &[],
            Some(Duration::from_secs(5)),
        )?;
        driverkit_usb::StringDescriptor::new_checked(&b, 0)
            .map(|s| s.text())
            .map_err(|_| IOReturn::IO_ERROR)
    }

    fn device_request(&self, setup: u64, data: Bytes, timeout_ms: u32) -> IOResult<Bytes> {
        control_request(&*self.usb_device()?, setup, data, timeout_ms)
    }

    fn async_device_request(
        &self,
        setup: u64,
        memory: u64,
        action: u64,
        timeout_ms: u32,
    ) -> IOResult<()> {
        let d = self.usb_device()?;
        let setup = setup_from(setup);
        let region = self.call.system.region(self.call.server, memory)?;
        if usize::from(setup.length) > region.len() {
            return Err(IOReturn::BAD_ARGUMENT);
        }
        UsbFamily::run_async(self.call, d.entry, action, move || {
            let mut out = vec![0u8; usize::from(setup.length)];
            if !setup.is_in() {
                region.read(0, &mut out);
            }
            let data = d.transport.control(setup, &out, timeout(timeout_ms))?;
            if setup.is_in() {
                region.write(0, &data);
                Ok(data.len() as u64)
            } else {
                Ok(out.len() as u64)
            }
        })
    }

    fn set_configuration(&self, value: u8, match_interfaces: bool) -> IOResult<()> {
        let d = self.usb_device()?;
        self.family
            .configure(self.call.system, &d, value, match_interfaces)
    }

    fn copy_interfaces(&self) -> IOResult<Vec<ObjectId>> {
        let d = self.usb_device()?;
        let mut interfaces: Vec<(u8, EntryId)> = self
            .family
            .lock()
            .interfaces
            .values()
            .filter(|i| Arc::ptr_eq(&i.device, &d))
            .map(|i| (i.number, i.entry))
            .collect();
        if interfaces.is_empty() {
            return Err(IOReturn::NOT_READY);
        }
        interfaces.sort();
        Ok(interfaces.into_iter().map(|(_, e)| ObjectId(e)).collect())
    }
}

/// The endpoints of one alternate setting, as the family keeps them.
fn endpoints_of(setting: &driverkit_usb::Interface<'_>) -> Vec<Endpoint> {
    setting
        .endpoints
        .iter()
        .map(|e| Endpoint {
            address: e.address(),
            transfer_type: e.transfer_type(),
            max_packet_size: e.max_packet_size(),
            interval: e.interval(),
        })
        .collect()
}

impl IOUSBHostInterfaceInterface for UsbCall<'_> {
    fn device_request(&self, setup: u64, data: Bytes, timeout_ms: u32) -> IOResult<Bytes> {
        control_request(&self.usb_interface()?.device, setup, data, timeout_ms)
    }

    fn copy_device(&self) -> IOResult<ObjectId> {
        self.copy_device_of_interface()
    }

    fn select_alternate_setting(&self, alternate: u8) -> IOResult<()> {
        self.select_setting(alternate)
    }

    fn copy_configuration(&self) -> IOResult<Bytes> {
        let interface = self.usb_interface()?;
        current_configuration(&interface.device).ok_or(IOReturn::NOT_READY)
    }

    fn copy_pipe(&self, address: u8) -> IOResult<ObjectId> {
        let interface = self.usb_interface()?;
        let endpoint = interface
            .endpoints()
            .into_iter()
            .find(|e| e.address == address)
            .ok_or(IOReturn::NOT_FOUND)?;
        let client = self
            .family
            .driver_of(self.call.system, self.call.server, self.call.object);
        // Open is exclusive: an interface whose pipes another process
        // holds is that process's.
        if self
            .family
            .held_elsewhere(self.call.object, self.call.server)
        {
            return Err(IOReturn::EXCLUSIVE_ACCESS);
        }
        // The interface is the dext's from its first pipe on: a host driver
        // bound to it is detached now (and attached again when the last
        // pipe goes), unless the personality keeps it.
        let hold = Hold::take(self.call.system, interface, self.call.server, client)?;
        let mut st = self.family.lock();
        st.next_pipe += 1;
        let id = self.call.family.object(st.next_pipe);
        st.pipes.insert(
            id.0,
            Arc::new(Pipe {
                hold,
                endpoint,
                order: Arc::default(),
            }),
        );
        Ok(id)
    }
}

impl UsbCall<'_> {
    fn copy_device_of_interface(&self) -> IOResult<ObjectId> {
        Ok(ObjectId(self.usb_interface()?.device.entry))
    }

    /// SET_INTERFACE through the transport; the caller's pipes of the old
    /// setting go (their transfers end with `kIOReturnAborted`).
    fn select_setting(&self, alternate: u8) -> IOResult<()> {
        let interface = self.usb_interface()?;
        let config = current_configuration(&interface.device).ok_or(IOReturn::NOT_READY)?;
        let (_, settings) = driverkit_usb::interfaces(&config.0).map_err(|_| IOReturn::IO_ERROR)?;
        let setting = settings
            .iter()
            .find(|i| {
                i.descriptor.interface_number() == interface.number
                    && i.descriptor.alternate_setting() == alternate
            })
            .ok_or(IOReturn::BAD_ARGUMENT)?;
        if self
            .family
            .held_elsewhere(interface.entry, self.call.server)
        {
            return Err(IOReturn::EXCLUSIVE_ACCESS);
        }
        let client = self
            .family
            .driver_of(self.call.system, self.call.server, interface.entry);
        // The interface must be ours (the host driver detached) before the
        // host lets us change its setting, and stays ours in that setting
        // while the driver lives.
        let hold = Hold::take(
            self.call.system,
            interface.clone(),
            self.call.server,
            client,
        )?;
        let old: Vec<Arc<Pipe>> = {
            let mut st = self.family.lock();
            let gone: Vec<u64> = st
                .pipes
                .iter()
                .filter(|(_, p)| p.hold.interface_entry == interface.entry)
                .map(|(k, _)| *k)
                .collect();
            gone.iter().filter_map(|k| st.pipes.remove(k)).collect()
        };
        for pipe in &old {
            interface.device.transport.abort(pipe.endpoint.address);
        }
        drop(old);
        let result = interface
            .device
            .transport
            .set_interface(interface.number, alternate);
        if result.is_ok() {
            let mut st = self.family.lock();
            let before = std::mem::take(&mut st.selections);
            let (same, mut kept): (Vec<Hold>, Vec<Hold>) = before
                .into_iter()
                .partition(|h| h.interface_entry == interface.entry);
            kept.push(hold);
            st.selections = kept;
            drop(st);
            drop(same);
            *interface.setting.locked() = (alternate, endpoints_of(setting));
            self.call.system.set_property(
                interface.entry,
                "bAlternateSetting",
                i64::from(alternate).into(),
            );
        }
        result
    }
}

impl IOUSBHostPipeInterface for UsbCall<'_> {
    fn io(&self, memory: u64, length: u64, timeout_ms: u32) -> IOResult<u64> {
        let pipe = self.pipe()?;
        let region = self.call.system.region(self.call.server, memory)?;
        let submitted = pipe.generation();
        pipe_transfer(
            &pipe,
            &region,
            length,
            timeout(timeout_ms),
            submitted,
            &mut || {},
        )
    }

    fn async_io(&self, memory: u64, length: u64, action: u64, timeout_ms: u32) -> IOResult<()> {
        let pipe = self.pipe()?;
        let region = self.call.system.region(self.call.server, memory)?;
        if length > region.len() as u64 {
            return Err(IOReturn::BAD_ARGUMENT);
        }
        let device = pipe.hold.interface.device.entry;
        // An Abort after this call returns must end this transfer.
        let submitted = pipe.generation();
        let request = self
            .call
            .system
            .track_request(self.call.server, device, action)?;
        // Its place among the pipe's transfers: queued on the endpoint and
        // completed to the driver in the order the driver asked (`order`).
        let order = pipe.order.clone();
        let ticket = order.ticket();
        let system = self.call.system.clone();
        self.call.system.run_io(move || {
            order.wait_to_queue(ticket);
            let result = pipe_transfer(
                &pipe,
                &region,
                length,
                timeout(timeout_ms),
                submitted,
                &mut || order.queued(ticket),
            );
            // Failed before it had a place: the next may go.
            order.queued(ticket);
            let (status, actual) = completion(result);
            order.deliver(ticket, move || {
                system.finish_request(request, status, actual)
            });
        });
        Ok(())
    }

    fn abort(&self) -> IOResult<()> {
        let pipe = self.pipe()?;
        pipe.hold
            .interface
            .device
            .transport
            .abort(pipe.endpoint.address);
        Ok(())
    }

    fn clear_stall(&self, with_request: bool) -> IOResult<()> {
        let pipe = self.pipe()?;
        if with_request {
            let setup = Setup {
                request_type: 0x02,
                request: driverkit_usb::repr::request::CLEAR_FEATURE,
                value: 0, // ENDPOINT_HALT
                index: pipe.endpoint.address.into(),
                length: 0,
            };
            pipe.hold.interface.device.transport.control(
                setup,
                &[],
                Some(Duration::from_secs(5)),
            )?;
        }
        Ok(())
    }
}

/// One transfer between `region` and the pipe's endpoint.
/// A transfer's result as its completion reports it: a device gone while
/// it waited aborted it.
fn completion(result: IOResult<u64>) -> (IOReturn, u64) {
    match result {
        Ok(n) => (IOReturn::SUCCESS, n),
        Err(IOReturn::NO_DEVICE) => (IOReturn::ABORTED, 0),
        Err(e) => (e, 0),
    }
}

/// One transfer on `pipe` through `region`; `queued` runs once it has its
/// place on the endpoint.
fn pipe_transfer(
    pipe: &Pipe,
    region: &driverkit_wire::shm::SharedMemory,
    length: u64,
    timeout: Option<Duration>,
    submitted: u64,
    queued: &mut dyn FnMut(),
) -> IOResult<u64> {
    let length = usize::try_from(length).map_err(|_| IOReturn::BAD_ARGUMENT)?;
    if length > region.len() {
        return Err(IOReturn::BAD_ARGUMENT);
    }
    let address = pipe.endpoint.address;
    let transport = &pipe.hold.interface.device.transport;
    if address & 0x80 != 0 {
        let done = transport.transfer_queued(address, &[], length, timeout, submitted, queued)?;
        region.write(0, &done.data);
        Ok(done.data.len() as u64)
    } else {
        let mut out = vec![0u8; length];
        region.read(0, &mut out);
        Ok(transport
            .transfer_queued(address, &out, 0, timeout, submitted, queued)?
            .actual as u64)
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

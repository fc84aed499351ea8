//! The USB family's system side: `IOUSBHostDevice`, `IOUSBHostInterface`
//! and `IOUSBHostPipe` as dexts call them, and the family's own work:
//! registry properties from the descriptors, configuring devices no driver
//! claimed (vendor-class ones wait for a driver's `SetConfiguration`), and
//! interface nubs.
//!
//! Pipes are not registry entries: they are objects with IDs from
//! [`PIPE_BASE`] up, owned by the process that copied them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use driverkit_usb::{kind, DeviceDescriptor, Setup, TransferType};
use driverkit_wire::interfaces::{
    IOUSBHostDeviceInterface, IOUSBHostInterfaceInterface, IOUSBHostPipeInterface,
};
use driverkit_wire::{Bytes, IOResult, IOReturn, ObjectId};
use plist::Value;

use crate::backends::usb::{enumerate, Enumerated, UsbTransport};
use crate::daemon::Inner;
use crate::families::io_service::KernelCall;
use crate::registry::EntryId;

/// The first pipe object ID; registry IDs stay far below.
pub const PIPE_BASE: u64 = 1 << 48;

/// A plugged USB device.
pub(crate) struct UsbDevice {
    pub entry: EntryId,
    pub transport: Arc<dyn UsbTransport>,
    pub enumerated: Enumerated,
    /// The selected configuration value; 0 when unconfigured.
    pub configuration: Mutex<u8>,
}

/// An endpoint of an interface nub.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Endpoint {
    pub address: u8,
    pub transfer_type: TransferType,
    pub max_packet_size: u16,
    pub interval: u8,
}

/// An interface of a configured device, published as a nub.
pub(crate) struct UsbInterface {
    pub device: Arc<UsbDevice>,
    pub number: u8,
    pub class: u8,
    pub endpoints: Vec<Endpoint>,
}

/// A pipe a dext copied from an interface.
pub(crate) struct Pipe {
    pub interface: Arc<UsbInterface>,
    pub interface_entry: EntryId,
    pub server: u64,
    pub endpoint: Endpoint,
}

impl Pipe {
    /// The endpoint's abort generation now: what a transfer asked for now
    /// is submitted under.
    fn generation(&self) -> u64 {
        self.interface
            .device
            .transport
            .abort_generation(self.endpoint.address)
    }
}

#[derive(Default)]
pub(crate) struct UsbState {
    pub devices: HashMap<EntryId, Arc<UsbDevice>>,
    pub interfaces: HashMap<EntryId, Arc<UsbInterface>>,
    pub pipes: HashMap<u64, Arc<Pipe>>,
    next_pipe: u64,
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
    p
}

impl Inner {
    /// Reads a USB device's descriptors and publishes it as an
    /// `IOUSBHostDevice` nub under `bus`, named `name` or else by its
    /// product string as macOS does, then matches it.
    pub(crate) fn plug_usb(
        &self,
        name: Option<&str>,
        transport: Arc<dyn UsbTransport>,
        bus: EntryId,
    ) -> Result<EntryId, String> {
        let enumerated = enumerate(&*transport)?;
        let name = name
            .map(str::to_owned)
            .or_else(|| enumerated.product.clone())
            .unwrap_or_else(|| "IOUSBHostDevice".to_owned());
        let name = name.as_str();
        let properties = device_properties(&enumerated, transport.location_id());
        let source = transport.source();
        let id = {
            let mut st = self.lock();
            let id = st
                .registry
                .insert(name, "IOUSBHostDevice", properties, Some(bus));
            if let Some(e) = st.registry.get_mut(id) {
                e.state.registered = true;
                e.state.active = true;
            }
            st.devices.insert(id, source.clone());
            st.usb.devices.insert(
                id,
                Arc::new(UsbDevice {
                    entry: id,
                    transport,
                    enumerated,
                    configuration: Mutex::new(0),
                }),
            );
            id
        };
        tracing::info!("plug     {name} [{id:#x}] (IOUSBHostDevice, from {source})");
        self.schedule_match(id);
        Ok(id)
    }

    /// After matching left a USB device without a driver: a device that
    /// is not vendor-class gets its first configuration and interface nubs.
    pub(crate) fn usb_unclaimed(&self, entry: EntryId) {
        let device = self.lock().usb.devices.get(&entry).cloned();
        let Some(device) = device else { return };
        let vendor_class = DeviceDescriptor::new_checked(&device.enumerated.device, 0)
            .is_ok_and(|d| d.device_class() == 0xff);
        let configured = *device
            .configuration
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            != 0;
        if vendor_class || configured {
            return;
        }
        let Some(first) = device.enumerated.configurations.first() else {
            return;
        };
        let value = first.get(5).copied().unwrap_or(1);
        if let Err(e) = self.configure(&device, value, true) {
            tracing::warn!("configure [{entry:#x}] with configuration {value} failed: {e}");
        }
    }

    /// SET_CONFIGURATION, then (with `match_interfaces`) one nub per
    /// interface, each matched. Nubs of the previous configuration go first.
    fn configure(
        &self,
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
            st.usb
                .interfaces
                .iter()
                .filter(|(_, i)| Arc::ptr_eq(&i.device, device))
                .map(|(id, _)| *id)
                .collect()
        };
        for id in old {
            self.terminate(id);
        }
        let setup = Setup {
            request_type: 0x00,
            request: driverkit_usb::repr::request::SET_CONFIGURATION,
            value: value.into(),
            index: 0,
            length: 0,
        };
        device
            .transport
            .control(setup, &[], Some(Duration::from_secs(5)))?;
        *device
            .configuration
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = value;
        let Some(config) = config else { return Ok(()) };
        if let Some(e) = self.lock().registry.get_mut(device.entry) {
            e.properties
                .insert("kUSBCurrentConfiguration".into(), i64::from(value).into());
        }
        if !match_interfaces {
            return Ok(());
        }
        let (_, interfaces) = driverkit_usb::interfaces(config).map_err(|_| IOReturn::IO_ERROR)?;
        let mut nubs = Vec::new();
        {
            let mut st = self.lock();
            let device_props = st
                .registry
                .get(device.entry)
                .map(|e| e.properties.clone())
                .unwrap_or_default();
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
                p.insert("bConfigurationValue".into(), int(value));
                p.insert("bInterfaceNumber".into(), int(d.interface_number()));
                p.insert("bAlternateSetting".into(), int(0));
                p.insert("bInterfaceClass".into(), int(d.interface_class()));
                p.insert("bInterfaceSubClass".into(), int(d.interface_subclass()));
                p.insert("bInterfaceProtocol".into(), int(d.interface_protocol()));
                p.insert("bNumEndpoints".into(), int(d.num_endpoints()));
                let name = format!("IOUSBHostInterface@{}", d.interface_number());
                let id = st
                    .registry
                    .insert(&name, "IOUSBHostInterface", p, Some(device.entry));
                if let Some(e) = st.registry.get_mut(id) {
                    e.state.registered = true;
                    e.state.active = true;
                }
                st.usb.interfaces.insert(
                    id,
                    Arc::new(UsbInterface {
                        device: device.clone(),
                        number: d.interface_number(),
                        class: d.interface_class(),
                        endpoints: i
                            .endpoints
                            .iter()
                            .map(|e| Endpoint {
                                address: e.address(),
                                transfer_type: e.transfer_type(),
                                max_packet_size: e.max_packet_size(),
                                interval: e.interval(),
                            })
                            .collect(),
                    }),
                );
                nubs.push(id);
            }
        }
        for id in nubs {
            self.schedule_match(id);
        }
        Ok(())
    }

    /// Devices in `departing` are going away: their transports close, so
    /// every transfer waiting on them ends now, before any driver's Stop.
    pub(crate) fn usb_departing(&self, departing: &[EntryId]) {
        let devices: Vec<Arc<UsbDevice>> = {
            let st = self.lock();
            departing
                .iter()
                .filter_map(|id| st.usb.devices.get(id).cloned())
                .collect()
        };
        for d in devices {
            d.transport.close();
        }
    }

    /// Forgets the family objects of a removed entry.
    pub(crate) fn usb_removed(&self, id: EntryId) {
        let mut st = self.lock();
        st.usb.devices.remove(&id);
        if st.usb.interfaces.remove(&id).is_some() {
            st.usb.pipes.retain(|_, p| p.interface_entry != id);
        }
    }

    /// Runs `transfer` on a worker and completes `action` of `server` with
    /// its result, unless the device goes first (then terminate completes
    /// it with `kIOReturnAborted`, before the drivers' Stop).
    fn usb_async(
        &self,
        server: u64,
        device: EntryId,
        action: u64,
        transfer: impl FnOnce() -> IOResult<u64> + Send + 'static,
    ) -> IOResult<()> {
        let request = self.track_request(server, device, action)?;
        let Some(me) = self.me() else {
            return Err(IOReturn::OFFLINE);
        };
        self.workers.run(move || {
            let result = transfer();
            let (status, actual) = match result {
                Ok(n) => (IOReturn::SUCCESS, n),
                Err(IOReturn::NO_DEVICE) => (IOReturn::ABORTED, 0),
                Err(e) => (e, 0),
            };
            me.finish_request(request, status, actual);
        });
        Ok(())
    }
}

/// The selected configuration's descriptor; `None` while unconfigured.
fn current_configuration(d: &UsbDevice) -> Option<Bytes> {
    let current = *d.configuration.lock().unwrap_or_else(|e| e.into_inner());
    d.enumerated
        .configurations
        .iter()
        .find(|c| current != 0 && c.get(5) == Some(&current))
        .cloned()
        .map(Bytes)
}

/// `setup` as the wire carries it: the eight setup bytes, little-endian.
fn setup_from(setup: u64) -> Setup {
    Setup::parse(setup.to_le_bytes())
}

fn timeout(ms: u32) -> Option<Duration> {
    (ms != 0).then(|| Duration::from_millis(ms.into()))
}

impl KernelCall<'_> {
    fn usb_device(&self) -> IOResult<Arc<UsbDevice>> {
        self.daemon
            .lock()
            .usb
            .devices
            .get(&self.object)
            .cloned()
            .ok_or(IOReturn::UNSUPPORTED)
    }

    fn usb_interface(&self) -> IOResult<Arc<UsbInterface>> {
        self.daemon
            .lock()
            .usb
            .interfaces
            .get(&self.object)
            .cloned()
            .ok_or(IOReturn::UNSUPPORTED)
    }

    fn pipe(&self) -> IOResult<Arc<Pipe>> {
        let st = self.daemon.lock();
        let pipe = st.usb.pipes.get(&self.object).ok_or(IOReturn::NOT_FOUND)?;
        if pipe.server != self.server {
            return Err(IOReturn::NOT_PERMITTED);
        }
        Ok(pipe.clone())
    }
}

impl IOUSBHostDeviceInterface for KernelCall<'_> {
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
        let d = self.usb_device()?;
        let setup = setup_from(setup);
        if setup.request == driverkit_usb::repr::request::SET_CONFIGURATION
            && setup.request_type == 0
        {
            // The family owns configurations: it must see the change.
            return Err(IOReturn::NOT_PERMITTED);
        }
        d.transport
            .control(setup, &data.0, timeout(timeout_ms))
            .map(Bytes)
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
        let region = self.daemon.region(self.server, memory)?;
        if usize::from(setup.length) > region.len() {
            return Err(IOReturn::BAD_ARGUMENT);
        }
        self.daemon
            .usb_async(self.server, d.entry, action, move || {
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
        self.daemon.configure(&d, value, match_interfaces)
    }
}

impl IOUSBHostInterfaceInterface for KernelCall<'_> {
    fn copy_configuration(&self) -> IOResult<Bytes> {
        let interface = self.usb_interface()?;
        current_configuration(&interface.device).ok_or(IOReturn::NOT_READY)
    }

    fn copy_pipe(&self, address: u8) -> IOResult<ObjectId> {
        let interface = self.usb_interface()?;
        let endpoint = *interface
            .endpoints
            .iter()
            .find(|e| e.address == address)
            .ok_or(IOReturn::NOT_FOUND)?;
        let mut st = self.daemon.lock();
        st.usb.next_pipe += 1;
        let id = PIPE_BASE + st.usb.next_pipe;
        st.usb.pipes.insert(
            id,
            Arc::new(Pipe {
                interface,
                interface_entry: self.object,
                server: self.server,
                endpoint,
            }),
        );
        Ok(ObjectId(id))
    }
}

impl IOUSBHostPipeInterface for KernelCall<'_> {
    fn io(&self, memory: u64, length: u64, timeout_ms: u32) -> IOResult<u64> {
        let pipe = self.pipe()?;
        let region = self.daemon.region(self.server, memory)?;
        let submitted = pipe.generation();
        pipe_transfer(&pipe, &region, length, timeout(timeout_ms), submitted)
    }

    fn async_io(&self, memory: u64, length: u64, action: u64, timeout_ms: u32) -> IOResult<()> {
        let pipe = self.pipe()?;
        let region = self.daemon.region(self.server, memory)?;
        if length > region.len() as u64 {
            return Err(IOReturn::BAD_ARGUMENT);
        }
        let device = pipe.interface.device.entry;
        // An Abort after this call returns must end this transfer.
        let submitted = pipe.generation();
        self.daemon.usb_async(self.server, device, action, move || {
            pipe_transfer(&pipe, &region, length, timeout(timeout_ms), submitted)
        })
    }

    fn abort(&self) -> IOResult<()> {
        let pipe = self.pipe()?;
        pipe.interface.device.transport.abort(pipe.endpoint.address);
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
            pipe.interface
                .device
                .transport
                .control(setup, &[], Some(Duration::from_secs(5)))?;
        }
        Ok(())
    }
}

/// One transfer between `region` and the pipe's endpoint.
fn pipe_transfer(
    pipe: &Pipe,
    region: &driverkit_wire::shm::SharedMemory,
    length: u64,
    timeout: Option<Duration>,
    submitted: u64,
) -> IOResult<u64> {
    let length = usize::try_from(length).map_err(|_| IOReturn::BAD_ARGUMENT)?;
    if length > region.len() {
        return Err(IOReturn::BAD_ARGUMENT);
    }
    let address = pipe.endpoint.address;
    let transport = &pipe.interface.device.transport;
    if address & 0x80 != 0 {
        let done = transport.transfer(address, &[], length, timeout, submitted)?;
        region.write(0, &done.data);
        Ok(done.data.len() as u64)
    } else {
        let mut out = vec![0u8; length];
        region.read(0, &mut out);
        Ok(transport
            .transfer(address, &out, 0, timeout, submitted)?
            .actual as u64)
    }
}

//! Virtual USB devices: descriptors built from a device file's `[usb]`
//! table, and endpoints that behave as the file says.
//!
//! ```toml
//! name = "VirtualKeyboard"
//! [usb]
//! idVendor = 0x1209
//! idProduct = 0x0001
//! bcdDevice = 0x0100
//! bDeviceClass = 0             # 0xff: vendor class, waits for a driver
//! manufacturer = "driverkit"
//! product = "Virtual Keyboard"
//! serial = "VK-0001"
//!
//! [[usb.interfaces]]
//! bInterfaceClass = 3          # HID
//! bInterfaceSubClass = 1
//! bInterfaceProtocol = 1
//! report_descriptor = "05 01 09 06 ..."   # HID only, hex
//! # malformed_report_descriptor = true    # broken on purpose: not checked
//!
//! [[usb.interfaces.endpoints]]
//! address = 0x81               # IN: sends what is queued for it
//! type = "interrupt"           # or "bulk"
//! max_packet_size = 8
//! interval = 10
//!
//! [[usb.interfaces.endpoints]]
//! address = 0x02               # OUT
//! type = "bulk"
//! echo_to = 0x82               # what arrives is queued on IN 0x82
//!
//! [[usb.interfaces]]           # interface 1 ...
//! bInterfaceClass = 0x0a
//! [[usb.interfaces]]           # ... and its alternate setting 1
//! bInterfaceNumber = 1
//! bAlternateSetting = 1
//! bInterfaceClass = 0x0a
//!
//! [[usb.control]]              # vendor requests and their answers
//! bmRequestType = 0xc0
//! bRequest = 1
//! response = "01 02 03 04"
//! ```
//!
//! An IN endpoint waits, like a real one NAKing, until something is queued
//! on it: by `driverkit device type`, by an echo, or by a test. Output and
//! feature reports (SET_REPORT) are kept, so that a test can see an LED
//! change.

use driverkit_wire::sync::Locked;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use driverkit_usb::repr::{request, string_descriptor};
use driverkit_usb::{
    kind, ConfigurationRepr, DeviceRepr, EndpointRepr, InterfaceRepr, Setup, TransferType,
};
use driverkit_wire::ring::Ring;
use driverkit_wire::shm::SPIN;
use driverkit_wire::{IOResult, IOReturn};
use serde::Deserialize;

use driverkit_wire::hex::decode as from_hex;

use super::description::{BadDescription, DeviceError, SpecError};
use crate::families::usb::{Completed, InSink, Transfer, UsbTransport};

/// The `[usb]` table of a device file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(non_snake_case)]
pub struct UsbSpec {
    pub idVendor: u16,
    pub idProduct: u16,
    #[serde(default = "one_hundred")]
    pub bcdDevice: u16,
    #[serde(default)]
    pub bDeviceClass: u8,
    #[serde(default)]
    pub bDeviceSubClass: u8,
    #[serde(default)]
    pub bDeviceProtocol: u8,
    pub manufacturer: Option<String>,
    pub product: Option<String>,
    pub serial: Option<String>,
    #[serde(default)]
    pub interfaces: Vec<InterfaceSpec>,
    #[serde(default)]
    pub control: Vec<ControlSpec>,
}

fn one_hundred() -> u16 {
    0x0100
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(non_snake_case)]
pub struct InterfaceSpec {
    /// Given for an alternate setting of an interface listed before;
    /// otherwise the next number.
    pub bInterfaceNumber: Option<u8>,
    #[serde(default)]
    pub bAlternateSetting: u8,
    pub bInterfaceClass: u8,
    #[serde(default)]
    pub bInterfaceSubClass: u8,
    #[serde(default)]
    pub bInterfaceProtocol: u8,
    pub name: Option<String>,
    /// HID interfaces: the report descriptor, as hex.
    pub report_descriptor: Option<String>,
    /// The report descriptor is malformed on purpose, to try a host's HID
    /// parser (USB/IP export to a kernel, a driver's own parsing): it is
    /// not checked. Everything else still is.
    #[serde(default)]
    pub malformed_report_descriptor: bool,
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    pub address: u8,
    #[serde(rename = "type")]
    pub kind: EndpointKind,
    #[serde(default = "sixty_four")]
    pub max_packet_size: u16,
    #[serde(default = "one")]
    pub interval: u8,
    /// OUT endpoints: the IN endpoint that sends back what arrives.
    pub echo_to: Option<u8>,
}

fn sixty_four() -> u16 {
    64
}
fn one() -> u8 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointKind {
    Interrupt,
    Bulk,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(non_snake_case)]
pub struct ControlSpec {
    pub bmRequestType: u8,
    pub bRequest: u8,
    #[serde(default)]
    pub wValue: u16,
    #[serde(default)]
    pub wIndex: u16,
    /// IN requests: the data stage, as hex.
    #[serde(default)]
    pub response: String,
}

impl UsbSpec {
    /// The interfaces with their numbers: a given `bInterfaceNumber`, or
    /// the next one after those listed before.
    pub fn numbered(&self) -> impl Iterator<Item = (u8, &InterfaceSpec)> {
        let mut next = 0u8;
        self.interfaces.iter().map(move |i| {
            let number = i.bInterfaceNumber.unwrap_or(next);
            next = next.max(number.saturating_add(1));
            (number, i)
        })
    }

    /// Checks what serde cannot: hex, endpoint directions, echo targets.
    /// Errors name the key.
    pub fn validate(&self) -> Result<(), BadDescription> {
        let mut addresses = Vec::new();
        let mut settings = Vec::new();
        for (i, (number, iface)) in self.numbered().enumerate() {
            let setting = (number, iface.bAlternateSetting);
            if settings.contains(&setting) {
                return Err(BadDescription::key(
                    format!("usb.interfaces[{i}]"),
                    format!(
                        "interface {number} alternate setting {} is listed twice",
                        setting.1
                    ),
                ));
            }
            if iface.bAlternateSetting != 0 && !settings.contains(&(number, 0)) {
                return Err(BadDescription::key(
                    format!("usb.interfaces[{i}].bAlternateSetting"),
                    format!("interface {number} has no alternate setting 0 before it"),
                ));
            }
            settings.push(setting);
        }
        for (i, iface) in self.interfaces.iter().enumerate() {
            if let Some(hex) = &iface.report_descriptor {
                let key = format!("usb.interfaces[{i}].report_descriptor");
                let bytes = from_hex(hex).map_err(|e| BadDescription::key(&key, e.to_string()))?;
                if !iface.malformed_report_descriptor {
                    driverkit_hid::ReportDescriptor::parse(&bytes).map_err(|e| {
                        BadDescription::key(
                            &key,
                            format!(
                                "{e} (set malformed_report_descriptor = true if that is the point)"
                            ),
                        )
                    })?;
                }
            }
            for (j, ep) in iface.endpoints.iter().enumerate() {
                let key = format!("usb.interfaces[{i}].endpoints[{j}]");
                if ep.address & 0x70 != 0 || ep.address & 0x0f == 0 {
                    return Err(BadDescription::key(
                        format!("{key}.address"),
                        format!(
                            "expected 0x01-0x0f (OUT) or 0x81-0x8f (IN), found {:#04x}",
                            ep.address
                        ),
                    ));
                }
                if addresses.contains(&ep.address) {
                    return Err(BadDescription::key(
                        format!("{key}.address"),
                        format!("{:#04x} is used twice", ep.address),
                    ));
                }
                addresses.push(ep.address);
                if ep.echo_to.is_some() && ep.address & 0x80 != 0 {
                    return Err(BadDescription::key(
                        format!("{key}.echo_to"),
                        "only OUT endpoints echo",
                    ));
                }
            }
        }
        for (i, iface) in self.interfaces.iter().enumerate() {
            for (j, ep) in iface.endpoints.iter().enumerate() {
                if let Some(to) = ep.echo_to {
                    if to & 0x80 == 0 || !addresses.contains(&to) {
                        return Err(BadDescription::key(
                            format!("usb.interfaces[{i}].endpoints[{j}].echo_to"),
                            format!("expected an IN endpoint of this device, found {to:#04x}"),
                        ));
                    }
                }
            }
        }
        for (i, c) in self.control.iter().enumerate() {
            from_hex(&c.response).map_err(|e| {
                BadDescription::key(format!("usb.control[{i}].response"), e.to_string())
            })?;
        }
        Ok(())
    }
}

/// Bytes queued on an IN endpoint. A ring with a doorbell: the reader
/// spins briefly and then parks, so a busy endpoint answers in
/// nanoseconds and an idle one costs nothing.
struct InQueue {
    ring: Ring,
    /// Bumped by `abort`, so that a waiting reader gives up.
    aborts: std::sync::atomic::AtomicU64,
    /// Where data goes instead of the ring while the endpoint is streamed
    /// (`stream_in`): handed over on the queuing thread. Held while the
    /// sink runs, so that data reaches it in the order it was queued.
    stream: Mutex<Option<(usize, InSink)>>,
    /// Readers are served in the order they were queued, as a host
    /// controller serves an endpoint: each takes a ticket, and only the one
    /// being served takes data from the ring.
    turns: Mutex<Turns>,
    turn: std::sync::Condvar,
}

/// Tickets of an IN endpoint's readers.
#[derive(Default)]
struct Turns {
    next: u64,
    serving: u64,
    /// Tickets that ended out of turn (aborted, timed out).
    ended: std::collections::BTreeSet<u64>,
}

/// A reader's place in an endpoint's queue; leaving it (served, aborted,
/// timed out) lets the next one in.
struct Ticket<'a> {
    queue: &'a InQueue,
    number: u64,
}

impl Ticket<'_> {
    fn take(queue: &InQueue) -> Ticket<'_> {
        let mut turns = queue.turns.locked();
        let number = turns.next;
        turns.next += 1;
        Ticket { queue, number }
    }

    fn is_served(&self) -> bool {
        self.queue.turns.locked().serving == self.number
    }

    /// Waits until it is served, or until `until`.
    fn wait(&self, until: Instant) {
        let turns = self.queue.turns.locked();
        if turns.serving != self.number {
            let left = until.saturating_duration_since(Instant::now());
            let _ = self.queue.turn.wait_timeout(turns, left);
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut guard = self.queue.turns.locked();
        let turns = &mut *guard;
        turns.ended.insert(self.number);
        while turns.ended.remove(&turns.serving) {
            turns.serving += 1;
        }
        drop(guard);
        self.queue.turn.notify_all();
    }
}

/// A virtual USB device.
pub struct VirtualUsb {
    source: String,
    location: u32,
    device: Vec<u8>,
    configuration: Vec<u8>,
    strings: Vec<String>,
    /// Report descriptors by interface number.
    reports: HashMap<u8, Vec<u8>>,
    ins: HashMap<u8, InQueue>,
    /// OUT endpoints and where their data goes.
    echo: HashMap<u8, Option<u8>>,
    control: Vec<(ControlSpec, Vec<u8>)>,
    /// Every (interface, alternate setting) the device has.
    settings: Vec<(u8, u8)>,
    /// The first interrupt-IN endpoint of a HID interface.
    hid_in: Option<u8>,
    closed: AtomicBool,
    state: Mutex<DeviceState>,
}

#[derive(Default)]
struct DeviceState {
    configuration: u8,
    /// SET_REPORT data by (interface, report type, report ID), latest first.
    set_reports: Vec<(u8, u8, u8, Vec<u8>)>,
}

/// Capacity of an IN endpoint's queue: about 40,000 keyboard reports.
const IN_QUEUE_BYTES: usize = 1 << 20;

impl VirtualUsb {
    /// Builds the device; `spec` must have passed `validate`.
    pub fn new(spec: &UsbSpec, source: &str, location: u32) -> Result<VirtualUsb, DeviceError> {
        spec.validate().map_err(|problem| SpecError {
            file: source.to_owned(),
            problem,
        })?;
        let mut strings = Vec::new();
        let mut index = |s: &Option<String>| -> u8 {
            match s {
                Some(s) => {
                    strings.push(s.clone());
                    strings.len() as u8
                }
                None => 0,
            }
        };
        let device = DeviceRepr {
            bcd_usb: 0x0200,
            device_class: spec.bDeviceClass,
            device_subclass: spec.bDeviceSubClass,
            device_protocol: spec.bDeviceProtocol,
            max_packet_size0: 64,
            vendor_id: spec.idVendor,
            product_id: spec.idProduct,
            bcd_device: spec.bcdDevice,
            manufacturer_index: index(&spec.manufacturer),
            product_index: index(&spec.product),
            serial_number_index: index(&spec.serial),
            num_configurations: 1,
        };
        let mut reports = HashMap::new();
        let mut ins = HashMap::new();
        let mut echo = HashMap::new();
        let mut interfaces = Vec::new();
        let mut hid_in = None;
        for (number, i) in spec.numbered() {
            let mut extra = Vec::new();
            if let Some(hex) = &i.report_descriptor {
                let bytes = from_hex(hex).map_err(|e| SpecError {
                    file: source.to_owned(),
                    problem: BadDescription::key("usb.interfaces.report_descriptor", e.to_string()),
                })?;
                extra.push(driverkit_usb::repr::hid_descriptor(bytes.len() as u16));
                reports.insert(number, bytes);
            }
            for e in &i.endpoints {
                if i.report_descriptor.is_some()
                    && e.address & 0x80 != 0
                    && e.kind == EndpointKind::Interrupt
                {
                    hid_in = hid_in.or(Some(e.address));
                }
                if e.address & 0x80 != 0 {
                    let ring = Ring::create("virtual-usb-in", IN_QUEUE_BYTES).map_err(|err| {
                        DeviceError::Resource {
                            what: format!("{source}: endpoint queue"),
                            source: err,
                        }
                    })?;
                    ins.insert(
                        e.address,
                        InQueue {
                            ring,
                            aborts: Default::default(),
                            stream: Mutex::new(None),
                            turns: Mutex::default(),
                            turn: std::sync::Condvar::new(),
                        },
                    );
                } else {
                    echo.insert(e.address, e.echo_to);
                }
            }
            interfaces.push(InterfaceRepr {
                number,
                alternate_setting: i.bAlternateSetting,
                class: i.bInterfaceClass,
                subclass: i.bInterfaceSubClass,
                protocol: i.bInterfaceProtocol,
                string_index: index(&i.name),
                extra,
                endpoints: i
                    .endpoints
                    .iter()
                    .map(|e| EndpointRepr {
                        address: e.address,
                        transfer_type: match e.kind {
                            EndpointKind::Interrupt => TransferType::Interrupt,
                            EndpointKind::Bulk => TransferType::Bulk,
                        },
                        max_packet_size: e.max_packet_size,
                        interval: e.interval,
                    })
                    .collect(),
            });
        }
        let configuration = ConfigurationRepr {
            value: 1,
            string_index: 0,
            attributes: 0xa0,
            max_power: 50,
            interfaces,
        }
        .emit();
        let control = spec
            .control
            .iter()
            // Every response is hex: `validate` above refused the spec otherwise.
            .filter_map(|c| Some((c.clone(), from_hex(&c.response).ok()?)))
            .collect();
        Ok(VirtualUsb {
            source: source.to_owned(),
            location,
            device: device.emit().to_vec(),
            configuration,
            strings,
            reports,
            ins,
            echo,
            control,
            settings: spec
                .numbered()
                .map(|(n, i)| (n, i.bAlternateSetting))
                .collect(),
            hid_in,
            closed: AtomicBool::new(false),
            state: Mutex::new(DeviceState::default()),
        })
    }

    /// The endpoint a HID interface sends its input reports on.
    pub fn hid_input_endpoint(&self) -> Option<u8> {
        self.hid_in
    }

    /// Queues `data` to be read from IN endpoint `address`.
    pub fn queue_in(&self, address: u8, data: &[u8]) -> IOResult<()> {
        let q = self.ins.get(&address).ok_or(IOReturn::NOT_FOUND)?;
        let stream = q.stream.locked();
        if let Some((length, sink)) = &*stream {
            sink(&data[..data.len().min(*length)]);
            return Ok(());
        }
        drop(stream);
        q.ring
            .enqueue(data.len(), |slot| slot.copy_from_slice(data))?;
        Ok(())
    }

    /// The most recent SET_REPORT to `interface`, as (type, ID, data).
    pub fn last_set_report(&self, interface: u8) -> Option<(u8, u8, Vec<u8>)> {
        let st = self.state.locked();
        st.set_reports
            .iter()
            .find(|r| r.0 == interface)
            .map(|r| (r.1, r.2, r.3.clone()))
    }

    fn descriptor(&self, setup: &Setup) -> IOResult<Vec<u8>> {
        let (ty, index) = ((setup.value >> 8) as u8, setup.value as u8);
        match (setup.request_type, ty) {
            (0x80, kind::DEVICE) => Ok(self.device.clone()),
            (0x80, kind::CONFIGURATION) if index == 0 => Ok(self.configuration.clone()),
            (0x80, kind::STRING) if index == 0 => {
                Ok(driverkit_usb::repr::language_descriptor(&[0x0409]))
            }
            (0x80, kind::STRING) => self
                .strings
                .get(usize::from(index) - 1)
                .map(|s| string_descriptor(s))
                .ok_or(IOReturn::USB_PIPE_STALLED),
            // HID class descriptors are asked of the interface.
            (0x81, kind::HID_REPORT) => self
                .reports
                .get(&(setup.index as u8))
                .cloned()
                .ok_or(IOReturn::USB_PIPE_STALLED),
            _ => Err(IOReturn::USB_PIPE_STALLED),
        }
    }
}

impl UsbTransport for VirtualUsb {
    fn source(&self) -> String {
        self.source.clone()
    }

    fn location_id(&self) -> u32 {
        self.location
    }

    fn control(&self, setup: Setup, data: &[u8], _timeout: Option<Duration>) -> IOResult<Vec<u8>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(IOReturn::NO_DEVICE);
        }
        let mut answer = match (setup.request_type, setup.request) {
            (0x80 | 0x81, request::GET_DESCRIPTOR) => self.descriptor(&setup)?,
            (0x00, request::SET_CONFIGURATION) => {
                let value = setup.value as u8;
                if value > 1 {
                    return Err(IOReturn::USB_PIPE_STALLED);
                }
                self.state.locked().configuration = value;
                Vec::new()
            }
            (0x01, request::SET_INTERFACE) => {
                let setting = (setup.index as u8, setup.value as u8);
                if !self.settings.contains(&setting) {
                    return Err(IOReturn::USB_PIPE_STALLED);
                }
                Vec::new()
            }
            (0x80, request::GET_CONFIGURATION) => vec![self.state.locked().configuration],
            (0x02, request::CLEAR_FEATURE) => Vec::new(),
            (0x21, request::HID_SET_IDLE | request::HID_SET_PROTOCOL) => Vec::new(),
            (0x21, request::HID_SET_REPORT) => {
                let mut st = self.state.locked();
                st.set_reports.insert(
                    0,
                    (
                        setup.index as u8,
                        (setup.value >> 8) as u8,
                        setup.value as u8,
                        data.to_vec(),
                    ),
                );
                st.set_reports.truncate(64);
                Vec::new()
            }
            _ => self
                .control
                .iter()
                .find(|(c, _)| {
                    c.bmRequestType == setup.request_type
                        && c.bRequest == setup.request
                        && c.wValue == setup.value
                        && c.wIndex == setup.index
                })
                .map(|(_, response)| response.clone())
                .ok_or(IOReturn::USB_PIPE_STALLED)?,
        };
        if setup.is_in() {
            answer.truncate(usize::from(setup.length));
            Ok(answer)
        } else {
            Ok(Vec::new())
        }
    }

    /// OUT is done as it is called; IN takes its ticket on the endpoint.
    fn transfer_queued(&self, t: Transfer<'_>, queued: &mut dyn FnMut()) -> IOResult<Completed> {
        let (address, data, length) = (t.address, t.data, t.length);
        if self.closed.load(Ordering::Acquire) {
            return Err(IOReturn::NO_DEVICE);
        }
        if address & 0x80 == 0 {
            queued();
            let target = self.echo.get(&address).ok_or(IOReturn::NOT_FOUND)?;
            if let Some(to) = target {
                self.queue_in(*to, data)?;
            }
            return Ok(Completed {
                data: Vec::new(),
                actual: data.len(),
            });
        }
        let q = self.ins.get(&address).ok_or(IOReturn::NOT_FOUND)?;
        let ticket = Ticket::take(q);
        queued();
        let aborts = t.submitted;
        let deadline = t.timeout.map(|t| Instant::now() + t);
        let mut out = Vec::with_capacity(length);
        loop {
            if q.aborts.load(Ordering::Acquire) != aborts {
                return Err(IOReturn::ABORTED);
            }
            if !ticket.is_served() {
                if self.closed.load(Ordering::Acquire) {
                    return Err(IOReturn::NO_DEVICE);
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(IOReturn::TIMEOUT);
                }
                // Re-checks the abort flag at least this often.
                let slice = Instant::now() + Duration::from_millis(100);
                ticket.wait(deadline.map_or(slice, |d| d.min(slice)));
                continue;
            }
            match q.ring.dequeue(&mut out) {
                Ok(()) => {
                    out.truncate(length);
                    let actual = out.len();
                    return Ok(Completed { data: out, actual });
                }
                Err(IOReturn::UNDERRUN) => {}
                Err(e) => return Err(e),
            }
            if self.closed.load(Ordering::Acquire) {
                return Err(IOReturn::NO_DEVICE);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(IOReturn::TIMEOUT);
            }
            // Parked waits re-check the abort flag at least this often.
            let slice = Instant::now() + Duration::from_millis(100);
            let until = deadline.map_or(slice, |d| d.min(slice));
            q.ring.wait_for_data(SPIN, Some(until));
        }
    }

    fn stream_in(&self, address: u8, length: usize, sink: InSink) -> bool {
        let Some(q) = self.ins.get(&address) else {
            return false;
        };
        let mut stream = q.stream.locked();
        // What was queued before the stream began goes first.
        let mut data = Vec::new();
        while q.ring.dequeue(&mut data).is_ok() {
            sink(&data[..data.len().min(length)]);
        }
        *stream = Some((length, sink));
        true
    }

    fn stop_stream(&self, address: u8) {
        if let Some(q) = self.ins.get(&address) {
            *q.stream.locked() = None;
        }
    }

    fn abort_generation(&self, address: u8) -> u64 {
        self.ins
            .get(&address)
            .map_or(0, |q| q.aborts.load(Ordering::Acquire))
    }

    fn abort(&self, address: u8) {
        if let Some(q) = self.ins.get(&address) {
            q.aborts.fetch_add(1, Ordering::AcqRel);
            q.ring.wake_all();
        }
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        for q in self.ins.values() {
            *q.stream.locked() = None;
            q.ring.wake_all();
        }
    }
}

impl VirtualUsb {
    /// True once the device was unplugged (its transport closed).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyboard() -> VirtualUsb {
        let spec = crate::backends::virtual_device::builtin("keyboard").unwrap();
        VirtualUsb::new(spec.usb.as_ref().unwrap(), "test", 0x01100000).unwrap()
    }

    #[test]
    fn enumerates_like_a_real_device() {
        let kb = keyboard();
        let e = crate::families::usb::enumerate(&kb).unwrap();
        let d = driverkit_usb::DeviceDescriptor::new_checked(&e.device, 0).unwrap();
        assert_eq!(d.vendor_id(), 0x1209);
        assert_eq!(e.product.as_deref(), Some("Virtual Keyboard"));
        let (_, ifaces) = driverkit_usb::interfaces(&e.configurations[0]).unwrap();
        assert_eq!(ifaces[0].descriptor.interface_class(), 3);
        assert_eq!(ifaces[0].extra[0].0, kind::HID);
    }

    #[test]
    fn in_endpoints_wait_then_deliver_then_abort() {
        let kb = std::sync::Arc::new(keyboard());
        let t = kb.transfer(0x81, &[], 8, Some(Duration::from_millis(20)), 0);
        assert_eq!(t, Err(IOReturn::TIMEOUT));
        kb.queue_in(0x81, &[0, 0, 4, 0, 0, 0, 0, 0]).unwrap();
        let t = kb.transfer(0x81, &[], 8, None, 0).unwrap();
        assert_eq!(t.data, [0, 0, 4, 0, 0, 0, 0, 0]);
        let reader = {
            let kb = kb.clone();
            std::thread::spawn(move || kb.transfer(0x81, &[], 8, None, 0))
        };
        std::thread::sleep(Duration::from_millis(30));
        kb.abort(0x81);
        assert_eq!(reader.join().unwrap(), Err(IOReturn::ABORTED));
        // Submitted before an abort, started after it: aborted too.
        kb.queue_in(0x81, &[1]).unwrap();
        assert_eq!(kb.transfer(0x81, &[], 8, None, 0), Err(IOReturn::ABORTED));
        assert_eq!(kb.abort_generation(0x81), 1);
        kb.close();
        assert_eq!(kb.transfer(0x81, &[], 8, None, 1), Err(IOReturn::NO_DEVICE));
    }

    #[test]
    fn a_streamed_in_endpoint_hands_data_over_on_the_queuing_thread() {
        let kb = keyboard();
        kb.queue_in(0x81, &[1; 8]).unwrap();
        let got = std::sync::Arc::new(Mutex::new(Vec::new()));
        let (sink_got, queuing) = (got.clone(), std::thread::current().id());
        let sink: InSink = std::sync::Arc::new(move |data: &[u8]| {
            assert_eq!(std::thread::current().id(), queuing, "no thread in between");
            sink_got.lock().unwrap().push(data.to_vec());
        });
        assert!(kb.stream_in(0x81, 4, sink));
        // Queued before the stream began: first, cut to the stream's length.
        assert_eq!(*got.lock().unwrap(), [vec![1; 4]]);
        kb.queue_in(0x81, &[2, 2]).unwrap();
        assert_eq!(got.lock().unwrap().last(), Some(&vec![2, 2]));
        assert!(
            !kb.stream_in(0x85, 4, std::sync::Arc::new(|_: &[u8]| {})),
            "no such endpoint"
        );
        kb.stop_stream(0x81);
        kb.queue_in(0x81, &[3]).unwrap();
        assert_eq!(
            got.lock().unwrap().len(),
            2,
            "stopped: back to the endpoint's queue"
        );
        assert_eq!(kb.transfer(0x81, &[], 8, None, 0).unwrap().data, [3]);
    }

    #[test]
    fn bulk_out_echoes_and_vendor_requests_answer() {
        let spec = crate::backends::virtual_device::builtin("vendor-bulk").unwrap();
        let dev = VirtualUsb::new(spec.usb.as_ref().unwrap(), "test", 0).unwrap();
        let sent = dev.transfer(0x02, b"ping", 0, None, 0).unwrap();
        assert_eq!(sent.actual, 4);
        let back = dev.transfer(0x82, &[], 512, None, 0).unwrap();
        assert_eq!(back.data, b"ping");
        let setup = Setup {
            request_type: 0xc0,
            request: 1,
            value: 0,
            index: 0,
            length: 64,
        };
        assert_eq!(dev.control(setup, &[], None).unwrap(), [0x01, 0x02, 0x00]);
        let unknown = Setup {
            request: 9,
            ..setup
        };
        assert_eq!(
            dev.control(unknown, &[], None),
            Err(IOReturn::USB_PIPE_STALLED)
        );
    }

    #[test]
    fn alternate_settings_are_numbered_listed_and_selected() {
        let spec = crate::backends::virtual_device::builtin("vendor-bulk")
            .unwrap()
            .usb
            .unwrap();
        let numbered: Vec<(u8, u8)> = spec
            .numbered()
            .map(|(n, i)| (n, i.bAlternateSetting))
            .collect();
        assert_eq!(numbered, [(0, 0), (1, 0), (1, 1)]);
        let dev = VirtualUsb::new(&spec, "test", 0).unwrap();
        let set_interface = |interface: u16, alternate: u16| Setup {
            request_type: 0x01,
            request: request::SET_INTERFACE,
            value: alternate,
            index: interface,
            length: 0,
        };
        assert_eq!(dev.control(set_interface(1, 1), &[], None), Ok(vec![]));
        assert_eq!(
            dev.control(set_interface(1, 2), &[], None),
            Err(IOReturn::USB_PIPE_STALLED)
        );
        let mut twice = spec.clone();
        twice.interfaces[2].bAlternateSetting = 0;
        let e = twice.validate().unwrap_err();
        assert!(
            e.to_string().contains("usb.interfaces[2]") && e.to_string().contains("listed twice"),
            "{e}"
        );
        let mut orphan = spec.clone();
        orphan.interfaces[2].bInterfaceNumber = Some(4);
        let e = orphan.validate().unwrap_err();
        assert!(e.to_string().contains("no alternate setting 0"), "{e}");
    }

    #[test]
    fn bad_specs_name_the_key() {
        let mut spec = crate::backends::virtual_device::builtin("vendor-bulk")
            .unwrap()
            .usb
            .unwrap();
        spec.interfaces[0].endpoints[0].echo_to = Some(0x85);
        let e = spec.validate().unwrap_err();
        assert!(
            e.to_string()
                .contains("usb.interfaces[0].endpoints[0].echo_to"),
            "{e}"
        );
        spec.interfaces[0].endpoints[0].echo_to = None;
        spec.interfaces[0].endpoints[0].address = 0x30;
        let e = spec.validate().unwrap_err();
        assert!(e.to_string().contains("endpoints[0].address"), "{e}");
    }
}

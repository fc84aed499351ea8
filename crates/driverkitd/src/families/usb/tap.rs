//! Recording a USB device's traffic: every device's transport is wrapped in
//! a [`Tapped`] one, which hands each control request and transfer (its
//! submission and its completion, with data, status and time) to whoever
//! records the device, as usbmon packets (`driverkit_usb::usbmon`). It sits
//! between the family and the backend, so real usbfs devices, USB/IP
//! imports and virtual devices are recorded alike, and every driver's
//! traffic with them (the HID family's report stream included).
//!
//! Nobody recording costs one atomic load per call. A recording is a
//! buffer the recorder takes in batches (every few milliseconds): the
//! device's thread only appends under an uncontended lock, and a recorder
//! that falls behind loses packets (counted), never slows the device.

use driverkit_wire::sync::Locked;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use driverkit_usb::usbmon::{self, Event, PacketRepr};
use driverkit_usb::{Descriptors, EndpointDescriptor, Setup};
use driverkit_wire::{IOResult, IOReturn};

use super::transport::{Completed, Enumerated, InSink, Transfer, UsbTransport};

/// Records a recording may fall behind by before it loses some.
const BACKLOG: usize = 64 * 1024;

/// How often a recorder looks for new records while the device is quiet.
const POLL: Duration = Duration::from_millis(5);

/// One packet for a recorder: a usbmon header and its data; a completion
/// whose submission the tap did not see on its own (a stream's) carries it
/// in `submitted`, to be written first.
#[derive(Debug, Clone)]
pub struct Record {
    pub submitted: Option<PacketRepr>,
    pub packet: PacketRepr,
    pub data: Vec<u8>,
}

impl Record {
    fn new(packet: PacketRepr, data: Vec<u8>) -> Record {
        Record {
            submitted: None,
            packet,
            data,
        }
    }

    /// The usbmon packets, in order: the submission (if carried), then
    /// this one.
    pub fn packets(&self) -> impl Iterator<Item = (&PacketRepr, &[u8])> {
        self.submitted
            .iter()
            .map(|s| (s, &[][..]))
            .chain(std::iter::once((&self.packet, &self.data[..])))
    }
}

/// A recording's buffer, shared by the tap and the recorder.
#[derive(Default)]
struct Buffer {
    records: Mutex<Vec<Record>>,
    /// The device is gone: nothing more comes.
    ended: AtomicBool,
    /// The recorder went away.
    dropped: AtomicBool,
}

/// A recording of a device, from the recorder's side.
pub struct Recording {
    buffer: Arc<Buffer>,
}

impl Recording {
    /// The records since the last call, waiting up to `timeout` for some;
    /// `None` once the device is gone and everything was taken.
    pub fn next_batch(&self, timeout: Duration) -> Option<Vec<Record>> {
        let deadline = Instant::now() + timeout;
        loop {
            let ended = self.buffer.ended.load(Ordering::Acquire);
            let batch = std::mem::take(&mut *self.buffer.records.locked());
            if !batch.is_empty() {
                return Some(batch);
            }
            if ended {
                return None;
            }
            if Instant::now() >= deadline {
                return Some(Vec::new());
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        self.buffer.dropped.store(true, Ordering::Release);
    }
}

/// Who records a device.
#[derive(Default)]
pub struct Tap {
    recordings: Mutex<Vec<Arc<Buffer>>>,
    recording: AtomicUsize,
    next_id: AtomicU64,
    /// Packets a recorder lost because it fell behind.
    pub lost: AtomicU64,
    /// The device's number and bus in its packets.
    device: u8,
    bus: u16,
    /// Each endpoint's transfer type, from the configuration descriptors.
    types: Vec<(u8, usbmon::Transfer)>,
    /// Descriptors the device gave besides its device, configuration and
    /// string descriptors (HID report descriptors, BOS...), by the setup
    /// packet that fetched them: a recording begins with them too.
    seen: Mutex<Vec<([u8; 8], Vec<u8>)>>,
}

/// A GET_DESCRIPTOR (standard, or of an interface: HID's report
/// descriptor).
fn fetches_descriptor(setup: &Setup) -> bool {
    setup.request == driverkit_usb::repr::request::GET_DESCRIPTOR
        && (setup.request_type == 0x80 || setup.request_type == 0x81)
}

impl Tap {
    fn new(enumerated: &Enumerated, device: u8, bus: u16) -> Tap {
        let mut types = Vec::new();
        for config in &enumerated.configurations {
            for (_, d) in Descriptors::new(config).flatten() {
                if d.get(1) != Some(&driverkit_usb::kind::ENDPOINT) {
                    continue;
                }
                if let Ok(e) = EndpointDescriptor::new_checked(d, 0) {
                    types.push((e.address(), usbmon::Transfer::of_attributes(e.attributes())));
                }
            }
        }
        Tap {
            device,
            bus,
            types,
            ..Tap::default()
        }
    }

    /// A new recording of every packet from now on.
    pub fn subscribe(&self) -> Recording {
        let buffer = Arc::new(Buffer::default());
        let mut all = self.recordings.locked();
        all.push(buffer.clone());
        self.recording.store(all.len(), Ordering::Release);
        Recording { buffer }
    }

    /// The device is gone: its recordings end (after what they hold).
    pub fn end(&self) {
        let mut all = self.recordings.locked();
        for b in all.drain(..) {
            b.ended.store(true, Ordering::Release);
        }
        self.recording.store(0, Ordering::Release);
    }

    /// Keeps a descriptor the device gave that a recording's preamble
    /// cannot make from `Enumerated`.
    fn remember(&self, setup: &Setup, data: &[u8]) {
        let kind = (setup.value >> 8) as u8;
        let enumerated = setup.request_type == 0x80 && matches!(kind, 1..=3);
        if enumerated || data.is_empty() {
            return;
        }
        let key = setup.emit();
        let mut seen = self.seen.locked();
        match seen.iter_mut().find(|(k, _)| k[..6] == key[..6]) {
            Some(entry) if entry.1.len() >= data.len() => {}
            Some(entry) => *entry = (key, data.to_vec()),
            None => seen.push((key, data.to_vec())),
        }
    }

    fn on(&self) -> bool {
        self.recording.load(Ordering::Acquire) > 0
    }

    fn send(&self, record: Record) {
        let mut all = self.recordings.locked();
        all.retain(|b| !b.dropped.load(Ordering::Acquire));
        self.recording.store(all.len(), Ordering::Release);
        let Some((last, others)) = all.split_last() else {
            return;
        };
        let keep = |b: &Buffer, r: Record| {
            let mut records = b.records.locked();
            if records.len() < BACKLOG {
                records.push(r);
            } else {
                self.lost.fetch_add(1, Ordering::Relaxed);
            }
        };
        for b in others {
            keep(b, record.clone());
        }
        keep(last, record);
    }

    fn transfer_type(&self, address: u8) -> usbmon::Transfer {
        if address & 0x0f == 0 {
            return usbmon::Transfer::Control;
        }
        self.types
            .iter()
            .find(|(a, _)| *a == address)
            .map_or(usbmon::Transfer::Bulk, |(_, t)| *t)
    }

    /// A packet of this device, stamped now.
    fn packet(
        &self,
        id: u64,
        event: Event,
        address: u8,
        status: i32,
        urb_length: usize,
    ) -> PacketRepr {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        PacketRepr {
            id,
            event,
            transfer: self.transfer_type(address),
            endpoint: address,
            device: self.device,
            bus: self.bus,
            setup: None,
            seconds: now.as_secs() as i64,
            microseconds: now.subsec_micros() as i32,
            status,
            urb_length: urb_length as u32,
            captured: 0,
            interval: 0,
        }
    }

    fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// A control request's submission and completion.
    fn control(&self, id: u64, setup: Setup, out: &[u8], result: Option<&IOResult<Vec<u8>>>) {
        let address = if setup.request_type & 0x80 != 0 {
            0x80
        } else {
            0
        };
        let (event, status, data, length) = match result {
            None => (
                Event::Submit,
                usbmon::IN_PROGRESS,
                out.to_vec(),
                usize::from(setup.length),
            ),
            Some(Ok(data)) if address == 0x80 => (Event::Complete, 0, data.clone(), data.len()),
            Some(Ok(_)) => (Event::Complete, 0, Vec::new(), out.len()),
            Some(Err(e)) => (Event::Complete, errno(*e), Vec::new(), 0),
        };
        let mut packet = self.packet(id, event, address, status, length);
        if event == Event::Submit {
            packet.setup = Some(setup.emit());
        }
        packet.captured = data.len() as u32;
        self.send(Record::new(packet, data));
    }

    /// A transfer's submission (`result` none) or completion.
    fn transfer(
        &self,
        id: u64,
        address: u8,
        out: &[u8],
        length: usize,
        result: Option<&IOResult<Completed>>,
    ) {
        let input = address & 0x80 != 0;
        let (event, status, data, urb) = match result {
            None if input => (Event::Submit, usbmon::IN_PROGRESS, Vec::new(), length),
            None => (Event::Submit, usbmon::IN_PROGRESS, out.to_vec(), out.len()),
            Some(Ok(c)) if input => (Event::Complete, 0, c.data.clone(), c.data.len()),
            Some(Ok(c)) => (Event::Complete, 0, Vec::new(), c.actual),
            Some(Err(e)) => (Event::Complete, errno(*e), Vec::new(), 0),
        };
        let mut packet = self.packet(id, event, address, status, urb);
        packet.captured = data.len() as u32;
        self.send(Record::new(packet, data));
    }

    /// What a new recorder gets first: the descriptors the device gave at
    /// enumeration, as the control transfers that fetch them (a recording
    /// begun after enumeration still says what the device is), and its
    /// configuration.
    pub fn preamble(&self, enumerated: &Enumerated, configuration: u8) -> Vec<Record> {
        let mut out = Vec::new();
        let mut fetch = |request_type: u8, request: u8, value: u16, index: u16, data: &[u8]| {
            let setup = Setup {
                request_type,
                request,
                value,
                index,
                length: data.len().max(1) as u16,
            };
            let id = self.id();
            let mut s = self.packet(id, Event::Submit, 0x80, usbmon::IN_PROGRESS, data.len());
            s.setup = Some(setup.emit());
            s.urb_length = u32::from(setup.length);
            out.push(Record::new(s, Vec::new()));
            let mut c = self.packet(id, Event::Complete, 0x80, 0, data.len());
            c.captured = data.len() as u32;
            out.push(Record::new(c, data.to_vec()));
        };
        use driverkit_usb::repr::request::GET_DESCRIPTOR;
        fetch(0x80, GET_DESCRIPTOR, 0x0100, 0, &enumerated.device);
        for (i, config) in enumerated.configurations.iter().enumerate() {
            fetch(0x80, GET_DESCRIPTOR, 0x0200 | i as u16, 0, config);
        }
        let indices = driverkit_usb::DeviceDescriptor::new_checked(&enumerated.device, 0)
            .map(|d| {
                [
                    (d.manufacturer_index(), &enumerated.manufacturer),
                    (d.product_index(), &enumerated.product),
                    (d.serial_number_index(), &enumerated.serial),
                ]
            })
            .ok();
        if let Some(strings) = indices {
            // The languages (US English), then each string in it.
            fetch(0x80, GET_DESCRIPTOR, 0x0300, 0, &[4, 3, 0x09, 0x04]);
            for (index, text) in strings {
                let Some(text) = text.as_deref().filter(|_| index != 0) else {
                    continue;
                };
                let units: Vec<u16> = text.encode_utf16().take(126).collect();
                let mut d = vec![(2 + 2 * units.len()) as u8, 3];
                d.extend(units.iter().flat_map(|u| u.to_le_bytes()));
                fetch(0x80, GET_DESCRIPTOR, 0x0300 | u16::from(index), 0x0409, &d);
            }
        }
        let seen = self.seen.locked().clone();
        for (setup, data) in seen {
            let value = u16::from_le_bytes([setup[2], setup[3]]);
            let index = u16::from_le_bytes([setup[4], setup[5]]);
            fetch(setup[0], setup[1], value, index, &data);
        }
        if configuration != 0 {
            let setup = Setup {
                request_type: 0,
                request: driverkit_usb::repr::request::SET_CONFIGURATION,
                value: u16::from(configuration),
                index: 0,
                length: 0,
            };
            let id = self.id();
            let mut s = self.packet(id, Event::Submit, 0, usbmon::IN_PROGRESS, 0);
            s.setup = Some(setup.emit());
            out.push(Record::new(s, Vec::new()));
            out.push(Record::new(
                self.packet(id, Event::Complete, 0, 0, 0),
                Vec::new(),
            ));
        }
        out
    }
}

/// The negative errno usbmon shows for a transfer's end.
fn errno(e: IOReturn) -> i32 {
    match e {
        IOReturn::USB_PIPE_STALLED => usbmon::STALL,
        IOReturn::ABORTED => -libc::ENOENT,
        IOReturn::TIMEOUT => -libc::ETIMEDOUT,
        IOReturn::NO_DEVICE | IOReturn::OFFLINE => -libc::ENODEV,
        IOReturn::OVERRUN => -libc::EOVERFLOW,
        _ => -libc::EIO,
    }
}

/// A transport whose traffic its [`Tap`] hands to recorders.
pub struct Tapped {
    inner: Arc<dyn UsbTransport>,
    pub tap: Arc<Tap>,
}

impl Tapped {
    /// Wraps `inner`; its packets name `device` on `bus`.
    pub fn new(
        inner: Arc<dyn UsbTransport>,
        enumerated: &Enumerated,
        device: u8,
        bus: u16,
    ) -> Tapped {
        Tapped {
            inner,
            tap: Arc::new(Tap::new(enumerated, device, bus)),
        }
    }
}

impl UsbTransport for Tapped {
    fn source(&self) -> String {
        self.inner.source()
    }

    fn location_id(&self) -> u32 {
        self.inner.location_id()
    }

    fn control(&self, setup: Setup, data: &[u8], timeout: Option<Duration>) -> IOResult<Vec<u8>> {
        let result = if !self.tap.on() {
            self.inner.control(setup, data, timeout)
        } else {
            let id = self.tap.id();
            self.tap.control(id, setup, data, None);
            let result = self.inner.control(setup, data, timeout);
            self.tap.control(id, setup, data, Some(&result));
            result
        };
        if fetches_descriptor(&setup) {
            if let Ok(d) = &result {
                self.tap.remember(&setup, d);
            }
        }
        result
    }

    fn transfer_queued(&self, t: Transfer<'_>, queued: &mut dyn FnMut()) -> IOResult<Completed> {
        if !self.tap.on() {
            return self.inner.transfer_queued(t, queued);
        }
        let id = self.tap.id();
        self.tap.transfer(id, t.address, t.data, t.length, None);
        let result = self.inner.transfer_queued(t, queued);
        self.tap
            .transfer(id, t.address, t.data, t.length, Some(&result));
        result
    }

    fn stream_in(&self, address: u8, length: usize, sink: InSink) -> bool {
        let tap = self.tap.clone();
        let recorded: InSink = Arc::new(move |data: &[u8]| {
            if tap.on() {
                // The stream's transfers are the backend's; each one that
                // completes is recorded as its submission and completion,
                // one record.
                let id = tap.id();
                let submitted = tap.packet(id, Event::Submit, address, usbmon::IN_PROGRESS, length);
                let mut packet = PacketRepr {
                    event: Event::Complete,
                    status: 0,
                    urb_length: data.len() as u32,
                    captured: data.len() as u32,
                    ..submitted.clone()
                };
                packet.setup = None;
                tap.send(Record {
                    submitted: Some(submitted),
                    packet,
                    data: data.to_vec(),
                });
            }
            sink(data)
        });
        self.inner.stream_in(address, length, recorded)
    }

    fn stop_stream(&self, address: u8) {
        self.inner.stop_stream(address)
    }

    fn abort_generation(&self, address: u8) -> u64 {
        self.inner.abort_generation(address)
    }

    fn abort(&self, address: u8) {
        self.inner.abort(address)
    }

    fn close(&self) {
        self.inner.close();
        self.tap.end();
    }

    fn active_configuration(&self) -> Option<u8> {
        self.inner.active_configuration()
    }

    fn set_configuration(&self, value: u8) -> IOResult<()> {
        self.inner.set_configuration(value)
    }

    fn set_interface(&self, interface: u8, alternate: u8) -> IOResult<()> {
        self.inner.set_interface(interface, alternate)
    }

    fn claim(&self, interface: u8, may_detach: bool) -> IOResult<()> {
        self.inner.claim(interface, may_detach)
    }

    fn release(&self, interface: u8) {
        self.inner.release(interface)
    }

    fn host_enumerated(&self) -> Option<Enumerated> {
        self.inner.host_enumerated()
    }

    fn speed(&self) -> u8 {
        self.inner.speed()
    }

    fn properties(&self) -> plist::Dictionary {
        self.inner.properties()
    }

    fn interface_properties(&self, interface: u8) -> plist::Dictionary {
        self.inner.interface_properties(interface)
    }
}

//! The HID family's system side.
//!
//! A USB interface of class 3 that no driver claimed gets the system's
//! `IOUSBHostHIDDevice`: it reads the report descriptor (GET_DESCRIPTOR),
//! sets the idle rate to 0 (SET_IDLE), publishes an `IOHIDInterface` with
//! the HID properties, and polls the interrupt-IN endpoint on a thread of
//! its own. Reports go to whoever opened the interface: a dext's event
//! service, through a ring in shared memory the dext provides, or the
//! system's default event service (`IOHIDEventDriver`), attached when no
//! dext matched. Events from either enter the [`HidEvents`] stream that
//! `driverkit events` and benchmarks subscribe to.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use driverkit_bundle::Personality;
use driverkit_hid::{Event, EventTranslator, ReportDescriptor, ReportType};
use driverkit_usb::repr::request;
use driverkit_usb::{Setup, TransferType};
use driverkit_wire::interfaces::{
    hid_event, HidEventRecord, IOHIDEventServiceInterface, IOHIDInterfaceInterface,
    IOUserHIDDeviceInterface,
};
use driverkit_wire::ring::Ring;
use driverkit_wire::shm::SPIN;
use driverkit_wire::{Bytes, IOResult, IOReturn};
use plist::Value;

use super::usb_device::UsbInterface;
use super::{FamilyMatcher, MatchTarget};
use crate::daemon::Inner;
use crate::families::io_service::KernelCall;
use crate::registry::EntryId;

/// One event of the system's HID event stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HidEvent {
    /// `hid_event::KEYBOARD`, `RELATIVE_POINTER` or `SCROLL`.
    pub kind: u8,
    pub usage_page: u32,
    pub usage: u32,
    /// Key value; dx, dy, buttons; scroll dx, dy, dz.
    pub values: (i64, i64, i64),
    /// Nanoseconds on the monotonic clock.
    pub timestamp: u64,
    /// The event service that dispatched it.
    pub service: EntryId,
}

impl HidEvent {
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            hid_event::KEYBOARD => "keyboard",
            hid_event::RELATIVE_POINTER => "pointer",
            hid_event::SCROLL => "scroll",
            _ => "other",
        }
    }
}

/// The subscribers of the event stream.
#[derive(Default)]
pub struct HidEvents {
    subscribers: Mutex<Vec<mpsc::Sender<HidEvent>>>,
}

impl HidEvents {
    pub fn subscribe(&self) -> mpsc::Receiver<HidEvent> {
        let (tx, rx) = mpsc::channel();
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tx);
        rx
    }

    fn publish(&self, event: HidEvent) {
        let mut subs = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        if !subs.is_empty() {
            subs.retain(|s| s.send(event).is_ok());
        }
    }
}

/// The next event of a subscription, waited for the way every waiter of
/// the system waits: looking (and yielding the core) for `SPIN` first, as
/// events come in bursts and a parked thread takes tens of microseconds to
/// wake here, then parked until `deadline`. `None` on the deadline or when
/// the daemon is gone.
pub fn next_event(
    events: &mpsc::Receiver<HidEvent>,
    deadline: Option<Instant>,
) -> Option<HidEvent> {
    let spin_until = Instant::now() + SPIN;
    loop {
        match events.try_recv() {
            Ok(event) => return Some(event),
            Err(mpsc::TryRecvError::Disconnected) => return None,
            Err(mpsc::TryRecvError::Empty) if Instant::now() < spin_until => {
                std::thread::yield_now()
            }
            Err(mpsc::TryRecvError::Empty) => break,
        }
    }
    match deadline {
        Some(d) => events
            .recv_timeout(d.saturating_duration_since(Instant::now()))
            .ok(),
        None => events.recv().ok(),
    }
}

/// Monotonic nanoseconds, the clock of report and event timestamps (the
/// same `CLOCK_MONOTONIC` a dext reads).
pub fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Where an interface's reports go.
enum Sink {
    Nobody,
    /// A dext's event service: entries are an 8-byte timestamp, then the
    /// report.
    Dext {
        client: EntryId,
        ring: Ring,
    },
    /// The system's default event service.
    Default {
        service: EntryId,
        translator: Box<EventTranslator>,
        events: Vec<Event>,
    },
}

/// A HID interface: a USB HID device's reports and where they go.
pub(crate) struct HidInterface {
    pub entry: EntryId,
    /// The USB interface, for a USB device; `None` for a dext's
    /// `IOUserHIDDevice`, which hands its reports in itself.
    usb: Option<Arc<UsbInterface>>,
    descriptor: ReportDescriptor,
    input: Option<(u8, usize, u8)>,
    sink: Mutex<Sink>,
    stopped: AtomicBool,
}

#[derive(Default)]
pub(crate) struct HidState {
    /// By the entry of the `IOHIDInterface` and of its `IOUSBHostHIDDevice`.
    pub interfaces: HashMap<EntryId, Arc<HidInterface>>,
    devices: HashMap<EntryId, Arc<HidInterface>>,
}

impl Inner {
    /// A class-3 USB interface nobody claimed: attach the system's HID
    /// device and publish its `IOHIDInterface`.
    pub(crate) fn hid_attach_usb(&self, interface_entry: EntryId) {
        let usb = {
            let st = self.lock();
            if st
                .registry
                .get(interface_entry)
                .is_none_or(|e| !e.clients.is_empty() || e.state.terminating)
            {
                return;
            }
            match st.usb.interfaces.get(&interface_entry) {
                Some(i) if i.class == 3 => i.clone(),
                _ => return,
            }
        };
        let transport = &usb.device.transport;
        let report_len = hid_report_length(&usb.device.enumerated.configurations, usb.number);
        let get = Setup {
            request_type: 0x81,
            request: request::GET_DESCRIPTOR,
            value: u16::from(driverkit_usb::kind::HID_REPORT) << 8,
            index: usb.number.into(),
            length: report_len.unwrap_or(4096),
        };
        let bytes = match transport.control(get, &[], Some(Duration::from_secs(5))) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(
                    "hid      [{interface_entry:#x}]: reading the report descriptor: {e}"
                );
                return;
            }
        };
        let descriptor = match ReportDescriptor::parse(&bytes) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("hid      [{interface_entry:#x}]: report descriptor: {e}");
                return;
            }
        };
        // SET_IDLE(0): report only on change. Devices may refuse it.
        let idle = Setup {
            request_type: 0x21,
            request: request::HID_SET_IDLE,
            value: 0,
            index: usb.number.into(),
            length: 0,
        };
        let _ = transport.control(idle, &[], Some(Duration::from_secs(1)));
        let input = usb
            .endpoints
            .iter()
            .find(|e| e.address & 0x80 != 0 && e.transfer_type == TransferType::Interrupt)
            .map(|e| {
                let len = descriptor
                    .max_report_size(ReportType::Input)
                    .max(usize::from(e.max_packet_size));
                (e.address, len, e.interval.max(1))
            });
        let properties = self.hid_properties(interface_entry, &descriptor, &bytes);
        let hid = {
            let mut st = self.lock();
            let device_entry = st.registry.insert(
                "IOUSBHostHIDDevice",
                "IOUSBHostHIDDevice",
                properties.clone(),
                Some(interface_entry),
            );
            let entry = st.registry.insert(
                "IOHIDInterface",
                "IOHIDInterface",
                properties,
                Some(device_entry),
            );
            for id in [device_entry, entry] {
                if let Some(e) = st.registry.get_mut(id) {
                    e.state.registered = true;
                    e.state.active = true;
                    e.state.matched = id == device_entry;
                }
            }
            let hid = Arc::new(HidInterface {
                entry,
                usb: Some(usb),
                descriptor,
                input,
                sink: Mutex::new(Sink::Nobody),
                stopped: AtomicBool::new(false),
            });
            st.hid.interfaces.insert(entry, hid.clone());
            st.hid.devices.insert(device_entry, hid.clone());
            hid
        };
        tracing::info!(
            "hid      IOHIDInterface [{:#x}] on [{interface_entry:#x}]",
            hid.entry
        );
        if let Some((address, len, interval)) = hid.input {
            let me = self.me_weak();
            let poller = hid.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("hid-poll:{:#x}", hid.entry))
                .spawn(move || poll(me, poller, address, len, interval));
            if let Err(e) = spawned {
                tracing::error!("hid      cannot start polling: {e}");
            }
        }
        self.schedule_match(hid.entry);
    }

    /// An `IOUSBHostHIDDevice`'s properties: its USB device's identity
    /// under HID's names, then what its report descriptor says.
    fn hid_properties(
        &self,
        interface_entry: EntryId,
        d: &ReportDescriptor,
        bytes: &[u8],
    ) -> plist::Dictionary {
        let mut p = plist::Dictionary::new();
        {
            let st = self.lock();
            let usb = st
                .registry
                .get(interface_entry)
                .and_then(|e| e.provider)
                .and_then(|p| st.registry.get(p))
                .map(|e| &e.properties);
            for (to, from) in [
                ("VendorID", "idVendor"),
                ("ProductID", "idProduct"),
                ("VersionNumber", "bcdDevice"),
                ("LocationID", "locationID"),
                ("Manufacturer", "USB Vendor Name"),
                ("Product", "USB Product Name"),
                ("SerialNumber", "USB Serial Number"),
            ] {
                if let Some(v) = usb.and_then(|u| u.get(from)) {
                    p.insert(to.into(), v.clone());
                }
            }
        }
        p.insert("Transport".into(), "USB".into());
        add_descriptor_properties(&mut p, d, bytes);
        p
    }

    /// A dext's `IOUserHIDDevice` publishes its HID interface: the
    /// description (VendorID, ProductID, Product...) and report descriptor
    /// it made, as the properties of an `IOHIDInterface` under it.
    pub(crate) fn hid_create_user_device(
        &self,
        service: EntryId,
        description: plist::Dictionary,
        bytes: Vec<u8>,
    ) -> IOResult<()> {
        let descriptor = ReportDescriptor::parse(&bytes).map_err(|e| {
            tracing::warn!("hid      [{service:#x}]: its report descriptor: {e}");
            IOReturn::BAD_ARGUMENT
        })?;
        let mut properties = description;
        if !properties.contains_key("Transport") {
            properties.insert("Transport".into(), "Virtual".into());
        }
        add_descriptor_properties(&mut properties, &descriptor, &bytes);
        let entry = {
            let mut st = self.lock();
            if st.hid.devices.contains_key(&service) {
                return Err(IOReturn::EXCLUSIVE_ACCESS);
            }
            let entry = st.registry.insert(
                "IOHIDInterface",
                "IOHIDInterface",
                properties,
                Some(service),
            );
            if let Some(e) = st.registry.get_mut(entry) {
                e.state.registered = true;
                e.state.active = true;
            }
            let hid = Arc::new(HidInterface {
                entry,
                usb: None,
                descriptor,
                input: None,
                sink: Mutex::new(Sink::Nobody),
                stopped: AtomicBool::new(false),
            });
            st.hid.interfaces.insert(entry, hid.clone());
            st.hid.devices.insert(service, hid);
            entry
        };
        tracing::info!("hid      IOHIDInterface [{entry:#x}] on IOUserHIDDevice [{service:#x}]");
        self.schedule_match(entry);
        Ok(())
    }

    /// After matching left an `IOHIDInterface` without an event service:
    /// the system's default one takes its reports.
    pub(crate) fn hid_unclaimed(&self, entry: EntryId) {
        let mut st = self.lock();
        let Some(hid) = st.hid.interfaces.get(&entry).cloned() else {
            return;
        };
        if st
            .registry
            .get(entry)
            .is_none_or(|e| !e.clients.is_empty() || e.state.terminating)
        {
            return;
        }
        let service = st.registry.insert(
            "IOHIDEventDriver",
            "IOHIDEventDriver",
            Default::default(),
            Some(entry),
        );
        if let Some(e) = st.registry.get_mut(service) {
            e.state.registered = true;
            e.state.active = true;
            e.state.matched = true;
        }
        drop(st);
        *hid.sink.lock().unwrap_or_else(|e| e.into_inner()) = Sink::Default {
            service,
            translator: Box::new(EventTranslator::new(&hid.descriptor)),
            events: Vec::new(),
        };
        tracing::info!(
            "hid      default event service [{service:#x}] on IOHIDInterface [{entry:#x}]"
        );
    }

    /// Forgets the HID objects of a removed entry: a departing client's
    /// ring, a departing device's poller.
    pub(crate) fn hid_removed(&self, id: EntryId) {
        let (all, device) = {
            let mut st = self.lock();
            st.hid.interfaces.remove(&id);
            let device = st.hid.devices.remove(&id);
            let all: Vec<_> = st.hid.interfaces.values().cloned().collect();
            (all, device)
        };
        if let Some(hid) = device {
            hid.stopped.store(true, Ordering::Release);
            if let (Some((address, _, _)), Some(usb)) = (hid.input, &hid.usb) {
                usb.device.transport.abort(address);
            }
            *hid.sink.lock().unwrap_or_else(|e| e.into_inner()) = Sink::Nobody;
        }
        for hid in all {
            let mut sink = hid.sink.lock().unwrap_or_else(|e| e.into_inner());
            let gone = match &*sink {
                Sink::Dext { client, .. } => *client == id,
                Sink::Default { service, .. } => *service == id,
                Sink::Nobody => false,
            };
            if gone {
                *sink = Sink::Nobody;
            }
        }
    }

    /// The HID event stream.
    pub(crate) fn hid_publish(&self, event: HidEvent) {
        self.hid_events.publish(event);
    }
}

/// Forwards the event stream to Linux through uinput while the daemon
/// runs, one device per event service; logs why not where `/dev/uinput`
/// does not open. Two threads: one makes a service's device when it
/// starts and drops it when it leaves the registry, one forwards events.
pub(crate) fn forward_to_uinput(daemon: &crate::Daemon) {
    use crate::backends::uinput::Uinput;
    let uinput = match Uinput::open() {
        Ok(u) => Arc::new(Mutex::new(u)),
        Err(e) => {
            tracing::info!("uinput   off: {e}");
            return;
        }
    };
    let (events, lifecycle) = (daemon.subscribe_hid(), daemon.subscribe());
    let (weak, u) = (Arc::downgrade(&daemon.inner), uinput.clone());
    let forward = move || {
        while let Some(event) = next_event(&events, None) {
            let Some(inner) = weak.upgrade() else { return };
            let result = u
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .forward(&event, || inner.uinput_identity(event.service));
            if let Err(e) = result {
                tracing::warn!("uinput   [{:#x}] {e}", event.service);
            }
        }
    };
    let weak = Arc::downgrade(&daemon.inner);
    let follow = move || {
        for event in lifecycle {
            let Some(inner) = weak.upgrade() else { return };
            let mut u = uinput.lock().unwrap_or_else(|e| e.into_inner());
            match event {
                crate::Event::Started { service, .. } => {
                    let is_event_service =
                        inner.lock().registry.get(service).is_some_and(|e| {
                            e.class_chain.iter().any(|c| c == "IOHIDEventService")
                        });
                    if is_event_service {
                        if let Err(e) = u.ensure(service, || inner.uinput_identity(service)) {
                            tracing::warn!("uinput   [{service:#x}] {e}");
                        }
                    }
                }
                crate::Event::Removed { service } => u.remove(service),
                crate::Event::Exited { .. } => {}
            }
        }
    };
    let spawned = std::thread::Builder::new()
        .name("uinput".into())
        .spawn(forward)
        .and_then(|_| {
            std::thread::Builder::new()
                .name("uinput-follow".into())
                .spawn(follow)
        });
    if let Err(e) = spawned {
        tracing::warn!("uinput   off: cannot start its threads: {e}");
    }
}

impl Inner {
    /// Who an event service's uinput device says it is: the service's
    /// name, and the IDs of the `IOHIDInterface` it serves.
    fn uinput_identity(&self, service: EntryId) -> crate::backends::uinput::Identity {
        let st = self.lock();
        let entry = st.registry.get(service);
        let interface = entry
            .and_then(|s| s.provider)
            .and_then(|p| st.registry.get(p));
        let number = |key: &str| {
            interface
                .and_then(|i| i.properties.get(key))
                .and_then(Value::as_unsigned_integer)
                .and_then(|n| u16::try_from(n).ok())
                .unwrap_or(0)
        };
        crate::backends::uinput::Identity {
            name: format!(
                "DriverKit {}",
                entry.map_or("IOHIDEventService", |s| s.name.as_str())
            ),
            vendor: number("VendorID"),
            product: number("ProductID"),
            version: number("VersionNumber"),
        }
    }
}

/// What a report descriptor says, as `IOHIDInterface` properties:
/// PrimaryUsagePage, PrimaryUsage, DeviceUsagePairs, ReportDescriptor and
/// the largest report of each type.
fn add_descriptor_properties(p: &mut plist::Dictionary, d: &ReportDescriptor, bytes: &[u8]) {
    let pairs = d.device_usage_pairs();
    if let Some((page, usage)) = pairs.first() {
        p.insert("PrimaryUsagePage".into(), i64::from(*page).into());
        p.insert("PrimaryUsage".into(), i64::from(*usage).into());
    }
    p.insert(
        "DeviceUsagePairs".into(),
        Value::Array(
            pairs
                .iter()
                .map(|(page, usage)| {
                    let mut pair = plist::Dictionary::new();
                    pair.insert("DeviceUsagePage".into(), i64::from(*page).into());
                    pair.insert("DeviceUsage".into(), i64::from(*usage).into());
                    Value::Dictionary(pair)
                })
                .collect(),
        ),
    );
    p.insert("ReportDescriptor".into(), Value::Data(bytes.to_vec()));
    for (key, kind) in [
        ("MaxInputReportSize", ReportType::Input),
        ("MaxOutputReportSize", ReportType::Output),
        ("MaxFeatureReportSize", ReportType::Feature),
    ] {
        p.insert(key.into(), (d.max_report_size(kind) as i64).into());
    }
}

/// `wDescriptorLength` of the report descriptor in interface `number`'s
/// HID descriptor, if the configuration has one.
fn hid_report_length(configurations: &[Vec<u8>], number: u8) -> Option<u16> {
    for c in configurations {
        let Ok((_, interfaces)) = driverkit_usb::interfaces(c) else {
            continue;
        };
        for i in interfaces
            .iter()
            .filter(|i| i.descriptor.interface_number() == number)
        {
            for (ty, b) in &i.extra {
                if *ty == driverkit_usb::kind::HID && b.len() >= 9 && b[6] == 0x22 {
                    return Some(u16::from_le_bytes([b[7], b[8]]));
                }
            }
        }
    }
    None
}

/// The interrupt-IN loop: read a report, hand it on, again. An empty
/// answer (a USB/IP server with nothing to say) waits one `bInterval`.
fn poll(daemon: Weak<Inner>, hid: Arc<HidInterface>, address: u8, len: usize, interval: u8) {
    let Some(usb) = &hid.usb else { return };
    let transport = usb.device.transport.clone();
    while !hid.stopped.load(Ordering::Acquire) {
        let submitted = transport.abort_generation(address);
        if hid.stopped.load(Ordering::Acquire) {
            return;
        }
        match transport.transfer(address, &[], len, Some(Duration::from_secs(1)), submitted) {
            Ok(done) if done.data.is_empty() => {
                std::thread::sleep(Duration::from_millis(interval.into()));
            }
            Ok(done) => {
                let Some(d) = daemon.upgrade() else { return };
                deliver(&d, &hid, &done.data);
            }
            Err(IOReturn::TIMEOUT) => {}
            Err(e) => {
                tracing::debug!("hid      [{:#x}] stops polling: {e}", hid.entry);
                return;
            }
        }
    }
}

fn deliver(daemon: &Inner, hid: &HidInterface, report: &[u8]) {
    let timestamp = now_ns();
    let mut sink = hid.sink.lock().unwrap_or_else(|e| e.into_inner());
    match &mut *sink {
        Sink::Nobody => {}
        Sink::Dext { ring, .. } => {
            // A full ring holds the poller back, as a host stops polling a
            // device it has no buffer for: reports wait in the device
            // rather than being lost. A driver stuck for a whole second
            // loses the report.
            let len = 8 + report.len();
            let deadline = Instant::now() + Duration::from_secs(1);
            loop {
                let queued = ring.enqueue(len, |slot| {
                    slot[..8].copy_from_slice(&timestamp.to_le_bytes());
                    slot[8..].copy_from_slice(report);
                });
                if queued.is_ok() || hid.stopped.load(Ordering::Acquire) {
                    break;
                }
                if !ring.wait_for_space(len, SPIN, Some(deadline)) {
                    tracing::warn!(
                        "hid      [{:#x}]: report dropped, its driver is not reading",
                        hid.entry
                    );
                    break;
                }
            }
        }
        Sink::Default {
            service,
            translator,
            events,
        } => {
            translator.translate(report, events);
            for e in events.drain(..) {
                daemon.hid_publish(to_record(e, timestamp, *service));
            }
        }
    }
}

fn to_record(e: Event, timestamp: u64, service: EntryId) -> HidEvent {
    let (kind, usage_page, usage, values) = match e {
        Event::Keyboard {
            usage_page,
            usage,
            value,
        } => (
            hid_event::KEYBOARD,
            usage_page.into(),
            usage.into(),
            (value, 0, 0),
        ),
        Event::RelativePointer { dx, dy, buttons } => (
            hid_event::RELATIVE_POINTER,
            1,
            1,
            (dx, dy, i64::from(buttons)),
        ),
        Event::Scroll { dx, dy, dz } => (hid_event::SCROLL, 1, 0x38, (dx, dy, dz)),
    };
    HidEvent {
        kind,
        usage_page,
        usage,
        values,
        timestamp,
        service,
    }
}

impl KernelCall<'_> {
    fn hid_interface(&self) -> IOResult<Arc<HidInterface>> {
        self.daemon
            .lock()
            .hid
            .interfaces
            .get(&self.object)
            .cloned()
            .ok_or(IOReturn::UNSUPPORTED)
    }

    /// The caller's service that is a client of this interface.
    fn hid_client(&self) -> IOResult<EntryId> {
        let st = self.daemon.lock();
        let e = st.registry.get(self.object).ok_or(IOReturn::NOT_FOUND)?;
        e.clients
            .iter()
            .copied()
            .find(|c| {
                st.registry
                    .get(*c)
                    .and_then(|c| c.hosting.as_ref())
                    .is_some_and(|h| h.server == self.server)
            })
            .ok_or(IOReturn::NOT_PERMITTED)
    }
}

impl IOHIDInterfaceInterface for KernelCall<'_> {
    fn open(&self, memory: u64) -> IOResult<()> {
        let hid = self.hid_interface()?;
        let client = self.hid_client()?;
        let region = self.daemon.region(self.server, memory)?;
        let ring = region
            .try_clone()
            .and_then(Ring::open)
            .map_err(|_| IOReturn::BAD_ARGUMENT)?;
        let replaced = {
            let mut sink = hid.sink.lock().unwrap_or_else(|e| e.into_inner());
            let replaced = match &*sink {
                Sink::Dext { client: other, .. } if *other != client => {
                    return Err(IOReturn::EXCLUSIVE_ACCESS)
                }
                Sink::Default { service, .. } => Some(*service),
                _ => None,
            };
            *sink = Sink::Dext { client, ring };
            replaced
        };
        // A dext's event service takes over from the system's default one.
        if let Some(default) = replaced {
            self.daemon.schedule_terminate(default);
        }
        Ok(())
    }

    fn close(&self) -> IOResult<()> {
        let hid = self.hid_interface()?;
        let client = self.hid_client()?;
        let mut sink = hid.sink.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(&*sink, Sink::Dext { client: c, .. } if *c == client) {
            *sink = Sink::Nobody;
        }
        Ok(())
    }

    fn set_report(&self, report_type: u8, report_id: u8, report: Bytes) -> IOResult<()> {
        let hid = self.hid_interface()?;
        self.hid_client()?;
        if !(1..=3).contains(&report_type) || report.0.len() > 4096 {
            return Err(IOReturn::BAD_ARGUMENT);
        }
        // A dext's virtual device takes no output reports (yet).
        let usb = hid.usb.as_ref().ok_or(IOReturn::UNSUPPORTED)?;
        let setup = Setup {
            request_type: 0x21,
            request: request::HID_SET_REPORT,
            value: u16::from(report_type) << 8 | u16::from(report_id),
            index: usb.number.into(),
            length: report.0.len() as u16,
        };
        usb.device
            .transport
            .control(setup, &report.0, Some(Duration::from_secs(5)))
            .map(|_| ())
    }
}

impl IOUserHIDDeviceInterface for KernelCall<'_> {
    fn create_interface(
        &self,
        description: plist::Dictionary,
        report_descriptor: Bytes,
    ) -> IOResult<()> {
        self.daemon
            .hid_create_user_device(self.object, description, report_descriptor.0)
    }

    fn handle_report(&self, report: Bytes) -> IOResult<()> {
        let hid = self
            .daemon
            .lock()
            .hid
            .devices
            .get(&self.object)
            .cloned()
            .ok_or(IOReturn::NOT_OPEN)?;
        if report.0.is_empty() || report.0.len() > 4096 {
            return Err(IOReturn::BAD_ARGUMENT);
        }
        deliver(self.daemon, &hid, &report.0);
        Ok(())
    }
}

impl IOHIDEventServiceInterface for KernelCall<'_> {
    fn dispatch_events(&self, events: Vec<HidEventRecord>) -> IOResult<()> {
        const KINDS: [u8; 3] = [
            hid_event::KEYBOARD,
            hid_event::RELATIVE_POINTER,
            hid_event::SCROLL,
        ];
        if events.iter().any(|e| !KINDS.contains(&e.0)) {
            return Err(IOReturn::BAD_ARGUMENT);
        }
        for (kind, usage_page, usage, values, timestamp) in events {
            self.daemon.hid_publish(HidEvent {
                kind,
                usage_page,
                usage,
                values,
                timestamp,
                service: self.object,
            });
        }
        Ok(())
    }
}

/// HID matching on `IOHIDInterface`: each of VendorID, ProductID,
/// VersionNumber, LocationID, Transport, PrimaryUsagePage and PrimaryUsage
/// a personality names must equal the interface's; each pair of its
/// DeviceUsagePairs must be among the interface's. Every key that matched
/// adds 100, so the more specific personality wins.
pub struct HidMatcher;

const HID_KEYS: &[&str] = &[
    "VendorID",
    "ProductID",
    "VersionNumber",
    "LocationID",
    "Transport",
    "PrimaryUsagePage",
    "PrimaryUsage",
];

fn pair_of(v: &Value) -> Option<(u64, Option<u64>)> {
    let d = v.as_dictionary()?;
    let page = d.get("DeviceUsagePage")?.as_unsigned_integer()?;
    Some((
        page,
        d.get("DeviceUsage").and_then(Value::as_unsigned_integer),
    ))
}

impl FamilyMatcher for HidMatcher {
    fn provider_class(&self) -> &'static str {
        "IOHIDInterface"
    }

    fn score(&self, personality: &Personality, target: &MatchTarget<'_>) -> Option<i64> {
        let mut score = 0;
        for key in HID_KEYS {
            if let Some(wanted) = personality.properties.get(key) {
                if target.properties.get(key) != Some(wanted) {
                    return None;
                }
                score += 100;
            }
        }
        if let Some(wanted) = personality.properties.get("DeviceUsagePairs") {
            let have: Vec<(u64, Option<u64>)> = target
                .properties
                .get("DeviceUsagePairs")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(pair_of).collect())
                .unwrap_or_default();
            for w in wanted.as_array()?.iter() {
                let (page, usage) = pair_of(w)?;
                let found = have
                    .iter()
                    .any(|(p, u)| *p == page && (usage.is_none() || *u == usage));
                if !found {
                    return None;
                }
            }
            score += 100;
        }
        Some(score)
    }

    fn index_key(&self, personality: &Personality) -> Option<(String, Value)> {
        personality
            .properties
            .get("VendorID")
            .map(|v| ("VendorID".to_owned(), v.clone()))
    }
}

/// The reports that type `text` on a US keyboard: a press and a release
/// per character, Shift held for capitals and shifted symbols.
pub fn keyboard_reports(text: &str) -> Result<Vec<[u8; 8]>, String> {
    let mut out = Vec::new();
    for (i, c) in text.chars().enumerate() {
        let (shift, usage) = ascii_usage(c)
            .ok_or_else(|| format!("character {i} ({c:?}) has no key on a US keyboard"))?;
        out.push([if shift { 0x02 } else { 0 }, 0, usage, 0, 0, 0, 0, 0]);
        out.push([0; 8]);
    }
    Ok(out)
}

/// `(shift, usage)` of a character on a US keyboard (HID usage page 7).
pub fn ascii_usage(c: char) -> Option<(bool, u8)> {
    const SHIFTED_DIGITS: &str = ")!@#$%^&*(";
    const PUNCT: &[(char, char, u8)] = &[
        ('-', '_', 0x2d),
        ('=', '+', 0x2e),
        ('[', '{', 0x2f),
        (']', '}', 0x30),
        ('\\', '|', 0x31),
        (';', ':', 0x33),
        ('\'', '"', 0x34),
        ('`', '~', 0x35),
        (',', '<', 0x36),
        ('.', '>', 0x37),
        ('/', '?', 0x38),
    ];
    Some(match c {
        'a'..='z' => (false, c as u8 - b'a' + 0x04),
        'A'..='Z' => (true, c as u8 - b'A' + 0x04),
        '1'..='9' => (false, c as u8 - b'1' + 0x1e),
        '0' => (false, 0x27),
        '\n' => (false, 0x28),
        '\t' => (false, 0x2b),
        ' ' => (false, 0x2c),
        _ => {
            if let Some(i) = SHIFTED_DIGITS.find(c) {
                return Some((true, if i == 0 { 0x27 } else { 0x1e + i as u8 - 1 }));
            }
            let (_, shifted, usage) = PUNCT.iter().find(|(p, s, _)| *p == c || *s == c)?;
            (c == *shifted, *usage)
        }
    })
}

/// The character a keyboard usage types, for printing events.
pub fn usage_char(usage: u32, shift: bool) -> Option<char> {
    (32u8..127)
        .map(char::from)
        .chain(['\n', '\t'])
        .find(|c| ascii_usage(*c) == Some((shift, usage as u8)) && usage < 256)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typing_round_trips_through_usages() {
        let text = "Hello, World! 42 ~_+{}|:\"<>?";
        let reports = keyboard_reports(text).unwrap();
        assert_eq!(reports.len(), text.chars().count() * 2);
        let typed: String = reports
            .chunks(2)
            .map(|pair| usage_char(pair[0][2].into(), pair[0][0] & 0x02 != 0).unwrap())
            .collect();
        assert_eq!(typed, text);
        assert!(keyboard_reports("é").unwrap_err().contains("character 0"));
    }
}

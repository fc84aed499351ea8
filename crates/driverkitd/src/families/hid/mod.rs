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

mod calls;
pub mod events;
pub mod matching;

use driverkit_wire::sync::Locked;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use driverkit_core::{Call, EntryId, Family, FamilyMatcher, Nub, System};
use driverkit_hid::{Event, EventTranslator, ReportDescriptor, ReportType};
use driverkit_usb::repr::request;
use driverkit_usb::{Setup, TransferType};
use driverkit_wire::event_log::{EventLog, DEFAULT_CAPACITY};
use driverkit_wire::interfaces::{
    hid_event, io_user_hid_device_interface, iohid_event_service_interface,
    iohid_interface_interface, HidEventRecord,
};
use driverkit_wire::ring::Ring;
use driverkit_wire::shm::SPIN;
use driverkit_wire::{IOResult, IOReturn, MethodId};
use plist::Value;

pub use events::{
    ascii_usage, keyboard_reports, now_ns, usage_char, HidEvent, HidEvents, HidSubscription, NoKey,
};

use super::threads::{Body, Stop, Threads};
use super::usb::{UsbFamily, UsbInterface};

/// Where an interface's reports go.
enum Sink {
    Nobody,
    /// A dext's event service: entries are an 8-byte timestamp, then the
    /// report.
    Dext {
        client: EntryId,
        ring: Ring,
    },
    /// The system's default event service, and its event log.
    Default {
        service: EntryId,
        translator: Box<EventTranslator>,
        events: Vec<Event>,
        log: Arc<EventLog>,
    },
}

/// A HID interface: a USB HID device's reports and where they go.
struct HidInterface {
    pub entry: EntryId,
    /// The USB interface, for a USB device; `None` for a dext's
    /// `IOUserHIDDevice`, which hands its reports in itself.
    usb: Option<Arc<UsbInterface>>,
    descriptor: ReportDescriptor,
    input: Option<(u8, usize, u8)>,
    sink: Mutex<Sink>,
    /// Set when the device leaves: nothing reads it again.
    stopped: AtomicBool,
    /// The poller of the interrupt-IN endpoint while someone takes the
    /// reports (its stop flag); the USB interface is claimed meanwhile.
    reading: Mutex<Option<Reading>>,
}

#[derive(Default)]
struct HidState {
    /// By the entry of the `IOHIDInterface` and of its `IOUSBHostHIDDevice`.
    interfaces: HashMap<EntryId, Arc<HidInterface>>,
    devices: HashMap<EntryId, Arc<HidInterface>>,
}

/// The HID family: `IOHIDInterface` nubs over USB HID interfaces and over
/// dexts' `IOUserHIDDevice`s, event services (a dext's, or the system's
/// default one), and the event stream.
pub struct HidFamily {
    /// USB HID interfaces come from the USB family.
    usb: Arc<UsbFamily>,
    state: Mutex<HidState>,
    events: HidEvents,
    /// For the pollers, which must not keep the family alive.
    me: Weak<HidFamily>,
}

impl HidFamily {
    pub fn new(usb: Arc<UsbFamily>) -> Arc<HidFamily> {
        Arc::new_cyclic(|me| HidFamily {
            usb,
            state: Mutex::default(),
            events: HidEvents::default(),
            me: me.clone(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HidState> {
        self.state.locked()
    }

    /// Events as event services dispatch them, from now on.
    pub fn subscribe(&self) -> HidSubscription {
        self.events.subscribe()
    }

    /// A class-3 USB interface nobody claimed: attach the system's HID
    /// device and publish its `IOHIDInterface`.
    fn attach_usb(&self, system: &System, interface_entry: EntryId) {
        if !system.is_unclaimed(interface_entry) {
            return;
        }
        let usb = match self.usb.interface(interface_entry) {
            Some(i) if i.class == 3 => i,
            _ => return,
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
            .endpoints()
            .into_iter()
            .find(|e| e.address & 0x80 != 0 && e.transfer_type == TransferType::Interrupt)
            .map(|e| {
                let len = descriptor
                    .max_report_size(ReportType::Input)
                    .max(usize::from(e.max_packet_size));
                (e.address, len, e.interval.max(1))
            });
        let properties = hid_properties(system, interface_entry, &descriptor, &bytes);
        let published = system
            .publish(Nub {
                name: "IOUSBHostHIDDevice",
                class: "IOUSBHostHIDDevice",
                properties: properties.clone(),
                provider: interface_entry,
                family: Some(self),
                plugged_from: None,
                matched: true,
            })
            .and_then(|device_entry| {
                let entry = system.publish(Nub {
                    name: "IOHIDInterface",
                    class: "IOHIDInterface",
                    properties,
                    provider: device_entry,
                    family: Some(self),
                    plugged_from: None,
                    matched: false,
                })?;
                Ok((device_entry, entry))
            });
        let Ok((device_entry, entry)) = published else {
            return;
        };
        let hid = {
            let mut st = self.lock();
            let hid = Arc::new(HidInterface {
                entry,
                usb: Some(usb),
                descriptor,
                input,
                sink: Mutex::new(Sink::Nobody),
                stopped: AtomicBool::new(false),
                reading: Mutex::new(None),
            });
            st.interfaces.insert(entry, hid.clone());
            st.devices.insert(device_entry, hid.clone());
            hid
        };
        tracing::info!(
            "hid      IOHIDInterface [{:#x}] on [{interface_entry:#x}]",
            hid.entry
        );
        system.match_nub(hid.entry);
    }
}

/// An `IOUSBHostHIDDevice`'s properties: its USB device's identity under
/// HID's names, then what its report descriptor says.
fn hid_properties(
    system: &System,
    interface_entry: EntryId,
    d: &ReportDescriptor,
    bytes: &[u8],
) -> plist::Dictionary {
    let mut p = plist::Dictionary::new();
    {
        let usb = system
            .provider(interface_entry)
            .and_then(|device| system.properties(device));
        let usb = usb.as_ref();
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

impl HidFamily {
    /// A dext's `IOUserHIDDevice` publishes its HID interface: the
    /// description (VendorID, ProductID, Product...) and report descriptor
    /// it made, as the properties of an `IOHIDInterface` under it.
    fn create_user_device(
        &self,
        system: &System,
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
        if self.lock().devices.contains_key(&service) {
            return Err(IOReturn::EXCLUSIVE_ACCESS);
        }
        let entry = system.publish(Nub {
            name: "IOHIDInterface",
            class: "IOHIDInterface",
            properties,
            provider: service,
            family: Some(self),
            plugged_from: None,
            matched: false,
        })?;
        {
            let mut st = self.lock();
            let hid = Arc::new(HidInterface {
                entry,
                usb: None,
                descriptor,
                input: None,
                sink: Mutex::new(Sink::Nobody),
                stopped: AtomicBool::new(false),
                reading: Mutex::new(None),
            });
            st.interfaces.insert(entry, hid.clone());
            st.devices.insert(service, hid);
        }
        tracing::info!("hid      IOHIDInterface [{entry:#x}] on IOUserHIDDevice [{service:#x}]");
        system.match_nub(entry);
        Ok(())
    }

    /// After matching left an `IOHIDInterface` without an event service:
    /// the system's default one takes its reports.
    fn attach_default_service(&self, system: &System, entry: EntryId) {
        let Some(hid) = self.lock().interfaces.get(&entry).cloned() else {
            return;
        };
        if !system.is_unclaimed(entry) {
            return;
        }
        // The host's own HID driver (Linux's usbhid) keeps a device no dext
        // asked for: the system's event service never detaches it.
        if let Err(e) = self.start_reading(system, &hid, false) {
            tracing::info!(
                "hid      IOHIDInterface [{entry:#x}] stays with the host's driver ({e})"
            );
            return;
        }
        let log = match EventLog::create("IOHIDEventDriver events", DEFAULT_CAPACITY) {
            Ok(log) => Arc::new(log),
            Err(e) => {
                tracing::error!("hid      no event log for IOHIDInterface [{entry:#x}]: {e}");
                return;
            }
        };
        let Ok(service) = system.publish(Nub {
            name: "IOHIDEventDriver",
            class: "IOHIDEventDriver",
            properties: Default::default(),
            provider: entry,
            family: Some(self),
            plugged_from: None,
            matched: true,
        }) else {
            return;
        };
        self.events.add(service, log.clone());
        *hid.sink.locked() = Sink::Default {
            service,
            translator: Box::new(EventTranslator::new(&hid.descriptor)),
            events: Vec::new(),
            log,
        };
        tracing::info!(
            "hid      default event service [{service:#x}] on IOHIDInterface [{entry:#x}]"
        );
    }

    /// Forgets the HID objects of a removed entry: a departing client's
    /// ring, a departing device's poller.
    fn forget(&self, system: &System, id: EntryId) {
        self.events.remove(id);
        let (all, device) = {
            let mut st = self.lock();
            st.interfaces.remove(&id);
            let device = st.devices.remove(&id);
            let all: Vec<_> = st.interfaces.values().cloned().collect();
            (all, device)
        };
        if let Some(hid) = device {
            hid.stopped.store(true, Ordering::Release);
            *hid.sink.locked() = Sink::Nobody;
            stop_reading(system, &hid);
        }
        for hid in all {
            let mut sink = hid.sink.locked();
            let gone = match &*sink {
                Sink::Dext { client, .. } => *client == id,
                Sink::Default { service, .. } => *service == id,
                Sink::Nobody => false,
            };
            if gone {
                *sink = Sink::Nobody;
                drop(sink);
                stop_reading(system, &hid);
            }
        }
    }

    /// Claims the USB interface and starts reading its interrupt-IN
    /// endpoint (streamed, or polled by a thread where the transport
    /// cannot stream), unless it is read already. `may_detach`: a host driver
    /// bound to the interface may be detached for it.
    fn start_reading(
        &self,
        system: &System,
        hid: &Arc<HidInterface>,
        may_detach: bool,
    ) -> IOResult<()> {
        let (Some(usb), Some((address, len, interval))) = (&hid.usb, hid.input) else {
            return Ok(());
        };
        let mut reading = hid.reading.locked();
        if reading.is_some() {
            return Ok(());
        }
        usb.claim(system, may_detach)?;
        let stop = Arc::new(Stop::new().map_err(|_| IOReturn::NO_RESOURCES)?);
        // Where the transport can, each report is handed on by the thread
        // that completes its transfer: no poller thread, one wake-up fewer
        // per report. Weak, as the transport keeps the sink until the
        // stream stops.
        let target = Arc::downgrade(hid);
        let sink: crate::families::usb::InSink = Arc::new(move |report: &[u8]| {
            if let (Some(hid), false) = (target.upgrade(), report.is_empty()) {
                deliver(&hid, report);
            }
        });
        if usb.device.transport.stream_in(address, len, sink) {
            *reading = Some(Reading { stop, poller: None });
            return Ok(());
        }
        let (me, poller) = (self.me.clone(), hid.clone());
        let body: Body<Stop> = Box::new(move |stop| poll(me, poller, stop, address, len, interval));
        let label = format!("hid-poll:{:#x}", hid.entry);
        match Threads::start(&stop, vec![(label, body)], |s| {
            s.set();
        }) {
            Ok(poller) => {
                *reading = Some(Reading {
                    stop,
                    poller: Some(poller),
                });
                Ok(())
            }
            Err(e) => {
                tracing::error!("hid      cannot start polling: {e}");
                usb.release(system);
                Err(IOReturn::NO_RESOURCES)
            }
        }
    }
}

impl Family for HidFamily {
    fn name(&self) -> &'static str {
        "HID"
    }

    fn classes(&self) -> Vec<(&'static str, Option<&'static str>)> {
        vec![
            ("IOHIDDevice", None),
            ("IOHIDInterface", None),
            ("IOHIDEventService", None),
        ]
    }

    fn matchers(&self) -> Vec<Box<dyn FamilyMatcher>> {
        vec![Box::new(matching::HidMatcher)]
    }

    fn kernel_call(&self, call: &Call<'_>) -> Option<IOResult<Vec<u8>>> {
        let (method, args) = (call.method, call.args);
        let call = calls::HidCall { family: self, call };
        iohid_interface_interface::dispatch(&call, method, args)
            .or_else(|| iohid_event_service_interface::dispatch(&call, method, args))
            .or_else(|| io_user_hid_device_interface::dispatch(&call, method, args))
    }

    /// An event service opens its interface and sets reports on it.
    fn client_method(&self, method: MethodId) -> bool {
        iohid_interface_interface::method_name(method).is_some()
    }

    /// A class-3 USB interface gets the system's HID device; an
    /// `IOHIDInterface` no dext took gets the system's event service.
    fn unclaimed(&self, system: &System, entry: EntryId) {
        self.attach_usb(system, entry);
        self.attach_default_service(system, entry);
    }

    fn removed(&self, system: &System, entry: EntryId) {
        self.forget(system, entry);
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

/// Stops the poller, if one runs, and gives the USB interface back.
fn stop_reading(system: &System, hid: &HidInterface) {
    let Some(reading) = hid.reading.locked().take() else {
        return;
    };
    reading.stop.set();
    if let (Some((address, _, _)), Some(usb)) = (hid.input, &hid.usb) {
        usb.device.transport.stop_stream(address);
        // Ends the poller's transfer in flight.
        usb.device.transport.abort(address);
        if let Some(poller) = &reading.poller {
            poller.join();
        }
        usb.release(system);
    }
}

/// How an interface's reports are read: the transport streams them, or a
/// poller thread reads them.
struct Reading {
    stop: Arc<Stop>,
    poller: Option<Threads>,
}

/// The interrupt-IN loop: read a report, hand it on, again. An empty
/// answer (a USB/IP server with nothing to say) waits one `bInterval`.
fn poll(
    family: Weak<HidFamily>,
    hid: Arc<HidInterface>,
    stop: &Stop,
    address: u8,
    len: usize,
    interval: u8,
) {
    let Some(usb) = &hid.usb else { return };
    let transport = usb.device.transport.clone();
    let stopped = || stop.is_set() || hid.stopped.load(Ordering::Acquire);
    while !stopped() {
        let submitted = transport.abort_generation(address);
        if stopped() {
            return;
        }
        match transport.transfer(address, &[], len, Some(Duration::from_secs(1)), submitted) {
            Ok(done) if done.data.is_empty() => {
                stop.sleep(Duration::from_millis(interval.into()));
            }
            Ok(done) => {
                if family.strong_count() == 0 {
                    return;
                }
                deliver(&hid, &done.data);
            }
            Err(IOReturn::TIMEOUT) => {}
            Err(e) => {
                tracing::debug!("hid      [{:#x}] stops polling: {e}", hid.entry);
                return;
            }
        }
    }
}

fn deliver(hid: &HidInterface, report: &[u8]) {
    let timestamp = now_ns();
    let mut sink = hid.sink.locked();
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
            translator,
            events,
            log,
            ..
        } => {
            translator.translate(report, events);
            for e in events.drain(..) {
                log.push(&to_record(e, timestamp));
            }
            log.notify();
        }
    }
}

fn to_record(e: Event, timestamp: u64) -> HidEventRecord {
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
    (kind, usage_page, usage, values, timestamp)
}

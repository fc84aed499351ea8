//! HIDDriverKit: event services that turn a HID device's reports into the
//! system's keyboard, pointer and scroll events.
//!
//! A driver names `IOUserHIDEventService` as its superclass and matches an
//! `IOHIDInterface` (by VendorID, ProductID, PrimaryUsagePage...). Before
//! its `start` runs, the system has opened the interface for it: input
//! reports arrive in a ring in shared memory and run, on the service's
//! `Default` queue, [`IOUserHIDEventServiceImpl::handle_report`], after the
//! elements of [`IOUserHIDEventServiceApi::get_elements`] took their new
//! values. Without an override, `handle_report` dispatches every change the
//! way the system's own event service does.
//!
//! ```text
//! #[driverkit::service(superclass = IOUserHIDEventService, ivars = KeyboardIvars)]
//! pub struct HIDKeyboardDriver;
//!
//! impl IOUserHIDEventServiceImpl for HIDKeyboardDriver {
//!     fn handle_report(&self, timestamp: u64, _report: &[u8], _t: ReportType, report_id: u8) {
//!         for e in self.ivars().keys.iter().filter(|e| e.report_id() == report_id && e.timestamp() == timestamp) {
//!             let _ = self.dispatch_keyboard_event(timestamp, e.usage_page(), e.usage(), e.value(), 0, true);
//!         }
//!     }
//! }
//! ```

use driverkit_wire::sync::Locked;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use driverkit_hid::{Event, EventTranslator, InputUsage, ReportDescriptor};
use driverkit_wire::event_log::{EventLog, DEFAULT_CAPACITY};
use driverkit_wire::interfaces::{
    hid_event, io_service_interface, iohid_event_service_interface, iohid_interface_interface,
    HidEventRecord, IOHIDEventServiceInterface, IOHIDInterfaceInterface, IOUserHIDDeviceInterface,
};
use driverkit_wire::ring::Ring;
use driverkit_wire::shm::SPIN;
use driverkit_wire::{Bytes, Decoder, IOResult, IOReturn, MethodId, ObjectId, Wire};

use crate::queue::IODispatchQueue;
use crate::runtime::{ClassDispatch, Service, SystemCaller};
use crate::service::{IOService, IOServiceApi, IOServiceImpl};
use crate::watcher::Watcher;

pub use driverkit_hid::ReportType;

/// Bytes of report ring per event service: thousands of reports.
const RING_BYTES: usize = 256 * 1024;

/// The superclass of HID event services:
/// `#[driverkit::service(superclass = IOUserHIDEventService, ...)]`.
pub struct IOUserHIDEventService;

/// One usage of the device's input reports and its current value
/// (DriverKit's `IOHIDElement`). An array field (a keyboard's key slots)
/// gives one element per key, 1 while the key is down.
#[derive(Debug)]
pub struct IOHIDElement {
    usage: InputUsage,
    value: AtomicI64,
    timestamp: AtomicU64,
}

impl IOHIDElement {
    /// The element's usage page.
    pub fn usage_page(&self) -> u16 {
        self.usage.usage_page
    }
    /// The element's usage on its page.
    pub fn usage(&self) -> u16 {
        self.usage.usage
    }
    /// 0 when the device uses no report IDs.
    pub fn report_id(&self) -> u8 {
        self.usage.report_id
    }
    /// True for motion (a mouse's X), false for states (a key).
    pub fn is_relative(&self) -> bool {
        self.usage.relative
    }
    /// The values the element can report, `(LogicalMinimum, LogicalMaximum)`.
    pub fn logical_range(&self) -> (i32, i32) {
        (self.usage.logical_minimum, self.usage.logical_maximum)
    }
    /// The value from the latest report that carried this element.
    pub fn value(&self) -> i64 {
        self.value.load(Ordering::Acquire)
    }
    /// The timestamp of the report that last changed the value (every
    /// report that carries it, for relative elements): equal to
    /// `handle_report`'s timestamp exactly when this report changed it.
    pub fn timestamp(&self) -> u64 {
        self.timestamp.load(Ordering::Acquire)
    }

    fn set(&self, value: i64, timestamp: u64) {
        self.value.store(value, Ordering::Release);
        self.timestamp.store(timestamp, Ordering::Release);
    }
}

/// What an event service overrides.
pub trait IOUserHIDEventServiceImpl: IOServiceImpl {
    /// One input report arrived (`report` starts with its ID byte when the
    /// device uses report IDs); the elements already hold its values.
    /// Runs on the `Default` queue. By default, dispatches each change as
    /// the system's event service would.
    fn handle_report(&self, timestamp: u64, report: &[u8], report_type: ReportType, report_id: u8) {
        let _ = (report, report_type, report_id);
        dispatch_changes(self, timestamp);
    }
}

/// What an event service may ask of the system.
pub trait IOUserHIDEventServiceApi: Service {
    /// The elements of the device's input reports.
    fn get_elements(&self) -> IOResult<Vec<Arc<IOHIDElement>>> {
        Ok(client(self)?.elements.clone())
    }

    /// `dispatchKeyboardEvent`: a key (usage page 7) or consumer control
    /// (page 0x0c) went down (`value` 1) or up (0).
    fn dispatch_keyboard_event(
        &self,
        timestamp: u64,
        usage_page: u16,
        usage: u16,
        value: i64,
        options: u32,
        repeat: bool,
    ) -> IOResult<()> {
        let _ = (options, repeat);
        dispatch(
            self,
            (
                hid_event::KEYBOARD,
                usage_page.into(),
                usage.into(),
                (value, 0, 0),
                timestamp,
            ),
        )
    }

    /// `dispatchRelativePointerEvent`: motion and the buttons' state.
    fn dispatch_relative_pointer_event(
        &self,
        timestamp: u64,
        dx: i64,
        dy: i64,
        buttons: u32,
        options: u32,
    ) -> IOResult<()> {
        let _ = options;
        dispatch(
            self,
            (
                hid_event::RELATIVE_POINTER,
                1,
                1,
                (dx, dy, buttons.into()),
                timestamp,
            ),
        )
    }

    /// `dispatchRelativeScrollWheelEvent`.
    fn dispatch_relative_scroll_wheel_event(
        &self,
        timestamp: u64,
        dx: i64,
        dy: i64,
        dz: i64,
        options: u32,
    ) -> IOResult<()> {
        let _ = options;
        dispatch(self, (hid_event::SCROLL, 1, 0x38, (dx, dy, dz), timestamp))
    }

    /// `SetLEDState`: turns LED `usage` (page 8: 1 Num Lock, 2 Caps Lock,
    /// 3 Scroll Lock...) on or off with an output report.
    fn set_led_state(&self, usage: u16, on: bool) -> IOResult<()> {
        let c = client(self)?;
        let (report_id, bytes) = {
            let mut leds = c.leds.locked();
            let (report_id, bit) = led_bit(&c.descriptor, usage).ok_or(IOReturn::UNSUPPORTED)?;
            let offset = usize::from(report_id != 0);
            let byte = offset + (bit / 8) as usize;
            let mask = 1u8 << (bit % 8);
            let slot = leds.get_mut(byte).ok_or(IOReturn::INTERNAL_ERROR)?;
            if on {
                *slot |= mask;
            } else {
                *slot &= !mask;
            }
            if report_id != 0 {
                leds[0] = report_id;
            }
            (report_id, leds.clone())
        };
        iohid_interface_interface::Proxy {
            caller: &SystemCaller,
            object: c.provider,
            flags: 0,
        }
        .set_report(2, report_id, Bytes(bytes))
    }
}

impl<S: Service> IOUserHIDEventServiceApi for S {}

thread_local! {
    /// The service whose batch of reports a drain job on this thread is
    /// handling (0: none): the events it dispatches wake the system's
    /// subscribers once, when no more reports are waiting, rather than
    /// each. Another service's events wake them at once.
    static DRAINING: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Writes `event` into the service's event log, where the system's
/// subscribers read it (no call into the system, no system thread on the
/// way).
fn dispatch<S: Service>(s: &S, event: HidEventRecord) -> IOResult<()> {
    let c = client(s)?;
    c.events.push(&event);
    if DRAINING.with(std::cell::Cell::get) != s.registry_entry_id() {
        c.events.notify();
    }
    Ok(())
}

/// `(report ID, bit)` of LED `usage` in the output report.
fn led_bit(d: &ReportDescriptor, usage: u16) -> Option<(u8, u32)> {
    d.elements
        .iter()
        .filter(|e| e.report_type == ReportType::Output && e.is_variable())
        .find_map(|e| {
            let slot = e
                .usages
                .iter()
                .position(|u| *u == (0x08 << 16 | u32::from(usage)))?;
            Some((e.report_id, e.bit_offset + slot as u32 * e.report_size))
        })
}

/// Dispatches what the report being handled changed (the drain applied it
/// before `handle_report`), as the system's event service does.
fn dispatch_changes<S: Service>(s: &S, timestamp: u64) {
    let Ok(c) = client(s) else { return };
    let mut events = Vec::new();
    c.translator.locked().events(&mut events);
    for e in events {
        let _ = match e {
            Event::Keyboard {
                usage_page,
                usage,
                value,
            } => s.dispatch_keyboard_event(timestamp, usage_page, usage, value, 0, true),
            Event::RelativePointer { dx, dy, buttons } => {
                s.dispatch_relative_pointer_event(timestamp, dx, dy, buttons, 0)
            }
            Event::Scroll { dx, dy, dz } => {
                s.dispatch_relative_scroll_wheel_event(timestamp, dx, dy, dz, 0)
            }
        };
    }
}

/// The family's state in an event service: the open interface, its ring
/// and the thread that watches it.
struct HidClient {
    provider: ObjectId,
    descriptor: ReportDescriptor,
    elements: Vec<Arc<IOHIDElement>>,
    /// The elements' values, updated slot-wise, and the events the last
    /// report means (only the queue uses it).
    translator: Mutex<EventTranslator>,
    leds: Mutex<Vec<u8>>,
    ring: Arc<Ring>,
    /// Where dispatched events go: read by the system's subscribers.
    events: EventLog,
    /// A drain job is queued or running.
    scheduled: Arc<AtomicBool>,
    /// Where the watcher parks while a long drain job runs.
    done: (Mutex<()>, std::sync::Condvar),
    watcher: Watcher,
}

fn client<S: Service>(s: &S) -> IOResult<Arc<HidClient>> {
    s.base().family::<HidClient>().ok_or(IOReturn::NOT_OPEN)
}

/// Opens the provider's reports for `service`: runs before the driver's
/// `start`, so that its `get_elements` works there.
fn open<S: IOUserHIDEventServiceImpl>(service: &S, provider: ObjectId) -> IOResult<()> {
    let p = IOService::from_id(provider);
    let bytes = match p.copy_property("ReportDescriptor")? {
        Some(plist::Value::Data(d)) => d,
        _ => return Err(IOReturn::NOT_FOUND),
    };
    let descriptor = ReportDescriptor::parse(&bytes).map_err(|e| {
        tracing::error!("the provider's report descriptor: {e}");
        IOReturn::BAD_ARGUMENT
    })?;
    let translator = EventTranslator::new(&descriptor);
    let elements = translator
        .state()
        .usages()
        .iter()
        .map(|usage| {
            Arc::new(IOHIDElement {
                usage: usage.clone(),
                value: AtomicI64::new(0),
                timestamp: AtomicU64::new(0),
            })
        })
        .collect();
    let ring = Arc::new(
        Ring::create("IOHIDInterface reports", RING_BYTES).map_err(|_| IOReturn::NO_MEMORY)?,
    );
    let memory = crate::runtime::register_memory(ring.memory())?;
    let events = EventLog::create("IOHIDEventService events", DEFAULT_CAPACITY)
        .map_err(|_| IOReturn::NO_MEMORY)?;
    iohid_event_service_interface::Proxy {
        caller: &SystemCaller,
        object: ObjectId(service.registry_entry_id()),
        flags: 0,
    }
    .set_event_log(crate::runtime::register_memory(events.memory())?)?;
    let c = Arc::new(HidClient {
        provider,
        translator: Mutex::new(translator),
        leds: Mutex::new(vec![0; descriptor.max_report_size(ReportType::Output)]),
        descriptor,
        elements,
        ring,
        events,
        scheduled: Arc::new(AtomicBool::new(false)),
        done: (Mutex::new(()), std::sync::Condvar::new()),
        watcher: Watcher::default(),
    });
    service.base().set_family(c.clone())?;
    iohid_interface_interface::Proxy {
        caller: &SystemCaller,
        object: provider,
        flags: 0,
    }
    .open(memory)?;
    let queue = service.copy_dispatch_queue("Default")?;
    let me = service.base().weak_self().ok_or(IOReturn::NOT_READY)?;
    let c2 = c.clone();
    c.watcher
        .start("hid-reports", move || watch::<S>(c2, queue, me))
}

/// Stops report delivery: after it, `handle_report` never runs again.
fn close<S: Service>(service: &S) {
    let Ok(c) = client(service) else { return };
    c.watcher.cancel(|| {
        c.ring.wake_all();
        c.done.1.notify_all();
    });
    let _ = iohid_interface_interface::Proxy {
        caller: &SystemCaller,
        object: c.provider,
        flags: 0,
    }
    .close();
}

/// Waits for reports and hands them to the `Default` queue in batches: one
/// drain job at a time, which takes everything that arrived meanwhile.
fn watch<S: IOUserHIDEventServiceImpl>(
    c: Arc<HidClient>,
    queue: IODispatchQueue,
    me: std::sync::Weak<dyn std::any::Any + Send + Sync>,
) {
    while !c.watcher.is_cancelled() {
        if !c.ring.is_data_available() {
            // Yielding: the drain just woke the event log's subscribers,
            // and the kernel often runs a woken thread on this CPU.
            c.ring
                .wait_for_data_yielding(SPIN, Some(Instant::now() + Duration::from_millis(250)));
            continue;
        }
        if !c.scheduled.swap(true, Ordering::AcqRel) {
            // On this thread when the queue is idle, the common case: one
            // thread hand-off fewer per report.
            let in_place = queue.run_here_if_idle(|| drain::<S>(&c, &me));
            if in_place.is_err() {
                let (c2, me) = (c.clone(), me.clone());
                if queue.dispatch_async(move || drain::<S>(&c2, &me)).is_err() {
                    return;
                }
            }
        }
        // The job takes what arrives while it runs; wait for it to finish,
        // spinning at first, as a short job is the common case, then parked
        // until the job says it is done.
        let began = Instant::now();
        while c.scheduled.load(Ordering::Acquire) && !c.watcher.is_cancelled() {
            if began.elapsed() < SPIN {
                std::thread::yield_now();
                continue;
            }
            let guard = c.done.0.locked();
            if c.scheduled.load(Ordering::Acquire) && !c.watcher.is_cancelled() {
                let _ = c.done.1.wait_timeout(guard, Duration::from_millis(250));
            }
        }
    }
}

fn drain<S: IOUserHIDEventServiceImpl>(
    c: &HidClient,
    me: &std::sync::Weak<dyn std::any::Any + Send + Sync>,
) {
    let service = me.upgrade().and_then(|s| s.downcast::<S>().ok());
    let mut entry = Vec::with_capacity(64);
    let draining = service.as_ref().map_or(0, |s| s.registry_entry_id());
    DRAINING.with(|d| d.set(draining));
    loop {
        // Events written since subscribers were last woken: they are woken
        // once the queue looks empty, not again when the loop ends.
        let mut unannounced = false;
        while !c.watcher.is_cancelled() && c.ring.dequeue(&mut entry).is_ok() {
            let Some(service) = &service else { continue };
            if entry.len() < 8 {
                continue;
            }
            let timestamp = u64::from_le_bytes(entry[..8].try_into().unwrap_or_default());
            let report = &entry[8..];
            {
                let mut t = c.translator.locked();
                t.apply(report);
                for &i in t.changed() {
                    if let Some(e) = c.elements.get(i) {
                        e.set(t.state().value(i), timestamp);
                    }
                }
            }
            let report_id = if c.descriptor.report_ids.is_empty() {
                0
            } else {
                report.first().copied().unwrap_or(0)
            };
            service.handle_report(timestamp, report, ReportType::Input, report_id);
            unannounced = c.ring.is_data_available();
            if !unannounced {
                c.events.notify();
            }
        }
        if unannounced {
            c.events.notify();
        }
        {
            // Under the lock: the watcher checks the flag under it before
            // parking, so it cannot miss this.
            let _guard = c.done.0.locked();
            c.scheduled.store(false, Ordering::Release);
        }
        c.done.1.notify_one();
        // A report that came after the last dequeue and before the flag
        // cleared would wait for the watcher; take it now instead.
        if c.watcher.is_cancelled()
            || !c.ring.is_data_available()
            || c.scheduled.swap(true, Ordering::AcqRel)
        {
            DRAINING.with(|d| d.set(0));
            return;
        }
    }
}

impl<S: IOUserHIDEventServiceImpl> ClassDispatch<S> for IOUserHIDEventService {
    fn dispatch(service: &S, method: MethodId, args: &[u8]) -> Option<IOResult<Vec<u8>>> {
        match method {
            io_service_interface::START => {
                let Ok(provider) = ObjectId::decode(&mut Decoder::new(args)) else {
                    return Some(Err(IOReturn::BAD_ARGUMENT));
                };
                if let Err(e) = open(service, provider) {
                    close(service);
                    return Some(Err(e));
                }
                let started = <IOService as ClassDispatch<S>>::dispatch(service, method, args);
                if !matches!(started, Some(Ok(_))) {
                    close(service);
                }
                started
            }
            io_service_interface::STOP => {
                // Reports stop before the driver's Stop: nothing of the
                // device reaches a stopping service.
                close(service);
                <IOService as ClassDispatch<S>>::dispatch(service, method, args)
            }
            _ => <IOService as ClassDispatch<S>>::dispatch(service, method, args),
        }
    }
}

/// The superclass of HID devices a dext implements:
/// `#[driverkit::service(superclass = IOUserHIDDevice, ...)]`. Before the
/// driver's `start` runs, the system asks it for its description and report
/// descriptor and publishes an `IOHIDInterface` for it; then
/// [`IOUserHIDDeviceApi::handle_report`] sends input reports to whichever
/// event service matched (a dext, or the system's own).
pub struct IOUserHIDDevice;

/// What a HID device driver provides.
pub trait IOUserHIDDeviceImpl: IOServiceImpl {
    /// `newDeviceDescription`: VendorID, ProductID, Product, Manufacturer,
    /// SerialNumber, Transport... as registry properties.
    fn new_device_description(&self) -> plist::Dictionary;
    /// `newReportDescriptor`: the HID report descriptor's bytes.
    fn new_report_descriptor(&self) -> Vec<u8>;
}

/// What a HID device driver may ask of the system.
pub trait IOUserHIDDeviceApi: Service {
    /// `handleReport`: an input report from the device.
    fn handle_report(&self, report: &[u8]) -> IOResult<()> {
        driverkit_wire::interfaces::io_user_hid_device_interface::Proxy {
            caller: &SystemCaller,
            object: ObjectId(self.registry_entry_id()),
            flags: 0,
        }
        .handle_report(Bytes(report.to_vec()))
    }
}

impl<S: Service<Superclass = IOUserHIDDevice>> IOUserHIDDeviceApi for S {}

impl<S: IOUserHIDDeviceImpl> ClassDispatch<S> for IOUserHIDDevice {
    fn dispatch(service: &S, method: MethodId, args: &[u8]) -> Option<IOResult<Vec<u8>>> {
        if method == io_service_interface::START {
            let description = service.new_device_description();
            let descriptor = service.new_report_descriptor();
            let created = driverkit_wire::interfaces::io_user_hid_device_interface::Proxy {
                caller: &SystemCaller,
                object: ObjectId(service.registry_entry_id()),
                flags: 0,
            }
            .create_interface(description, Bytes(descriptor));
            if let Err(e) = created {
                return Some(Err(e));
            }
        }
        <IOService as ClassDispatch<S>>::dispatch(service, method, args)
    }
}

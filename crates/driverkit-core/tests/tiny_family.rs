//! The family seam, tried from outside the core: a tiny family defined in
//! this file (one class, `IOTinyDevice`; one kernel call, `add`; one kind
//! of virtual device) registers with a core, a dext matches a device of it,
//! starts, and calls it.
//!
//! The dext is this very test binary: when the daemon starts it (the
//! `DRIVERKIT_SERVER_FD` variable is set), `main` runs the SDK's runtime
//! instead of the test. So the test needs no other executable, and the
//! driver's code sits next to the family it drives.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use driverkit::prelude::*;
use driverkit::runtime::SystemCaller;
use driverkit_bundle::{Bundle, Personality};
use driverkit_core::{
    Call, Config, Core, EntryId, Event, Family, FamilyMatcher, MatchTarget, Nub, System,
};
use driverkit_macros::interface;
use driverkit_wire::{IOResult, IOReturn, MethodId, ObjectId};

/// The tiny family's one class and its one kernel call.
#[interface(class = "IOTinyDevice")]
pub trait IOTinyDeviceInterface {
    /// `a + b` plus the device's offset.
    #[kernel]
    fn add(&self, a: u64, b: u64) -> IOResult<u64>;
}

/// The system side: its devices (an offset each) and the calls it served.
#[derive(Default)]
struct TinyFamily {
    devices: Mutex<HashMap<EntryId, u64>>,
    calls: Mutex<Vec<(EntryId, u64, u64)>>,
}

impl TinyFamily {
    /// The backend's part: a tiny device with `offset` and `model`,
    /// published under the registry root and matched.
    fn plug(&self, system: &System, offset: u64, model: &str) -> EntryId {
        let mut properties = plist::Dictionary::new();
        properties.insert("TinyModel".into(), model.into());
        let id = system
            .publish(Nub {
                name: "TinyDevice",
                class: "IOTinyDevice",
                properties,
                provider: system.root().expect("a running core has a root"),
                family: Some(self),
                plugged_from: Some(format!("tiny:{offset}")),
                matched: false,
            })
            .expect("the root takes nubs");
        self.devices.lock().unwrap().insert(id, offset);
        system.match_nub(id);
        id
    }
}

struct TinyCall<'a> {
    family: &'a TinyFamily,
    call: &'a Call<'a>,
}

impl IOTinyDeviceInterface for TinyCall<'_> {
    fn add(&self, a: u64, b: u64) -> IOResult<u64> {
        let offset = *self
            .family
            .devices
            .lock()
            .unwrap()
            .get(&self.call.entry())
            .ok_or(IOReturn::NO_DEVICE)?;
        self.family
            .calls
            .lock()
            .unwrap()
            .push((self.call.entry(), a, b));
        Ok(a + b + offset)
    }
}

/// Tiny matching: the personality's `TinyModel` must be the device's.
struct TinyMatcher;

impl FamilyMatcher for TinyMatcher {
    fn provider_class(&self) -> &'static str {
        "IOTinyDevice"
    }

    fn score(&self, personality: &Personality, target: &MatchTarget<'_>) -> Option<i64> {
        let wanted = personality.properties.get("TinyModel")?;
        (target.properties.get("TinyModel") == Some(wanted)).then_some(500)
    }
}

impl Family for TinyFamily {
    fn name(&self) -> &'static str {
        "tiny"
    }

    fn classes(&self) -> Vec<(&'static str, Option<&'static str>)> {
        vec![("IOTinyDevice", Some("IOService"))]
    }

    fn matchers(&self) -> Vec<Box<dyn FamilyMatcher>> {
        vec![Box::new(TinyMatcher)]
    }

    fn kernel_call(&self, call: &Call<'_>) -> Option<IOResult<Vec<u8>>> {
        let tiny = TinyCall { family: self, call };
        io_tiny_device_interface::dispatch(&tiny, call.method, call.args)
    }

    fn client_method(&self, method: MethodId) -> bool {
        io_tiny_device_interface::method_name(method).is_some()
    }

    fn removed(&self, _system: &System, entry: EntryId) {
        self.devices.lock().unwrap().remove(&entry);
    }
}

/// The dext: on start it asks its provider to add 40 and 2, and publishes
/// the answer as `TinySum`.
#[derive(Default)]
pub struct TinyDriverIvars;

#[driverkit::service(superclass = IOService, ivars = TinyDriverIvars)]
pub struct TinyDriver;

impl IOServiceImpl for TinyDriver {
    fn init(&self) -> IOResult<TinyDriverIvars> {
        Ok(TinyDriverIvars)
    }

    fn start(&self, provider: &IOService) -> IOResult<()> {
        self.super_start(provider)?;
        let device = io_tiny_device_interface::Proxy {
            caller: &SystemCaller,
            object: ObjectId(provider.registry_entry_id()),
            flags: 0,
        };
        let sum = device.add(40, 2)?;
        self.set_property("TinySum", sum as i64)?;
        self.register_service()
    }
}

fn tiny_bundle() -> Bundle {
    let id = "com.example.tiny";
    let mut properties = plist::Dictionary::new();
    properties.insert("TinyModel".into(), "T1".into());
    properties.insert("CFBundleIdentifier".into(), id.into());
    Bundle {
        path: PathBuf::from("/nonexistent/Tiny.app/Contents/Library/SystemExtensions/tiny.dext"),
        identifier: id.into(),
        executable: std::env::current_exe().expect("the test binary"),
        info: plist::Dictionary::new(),
        personalities: vec![Personality {
            name: "Tiny".into(),
            bundle_identifier: id.into(),
            io_class: "IOUserService".into(),
            user_class: "TinyDriver".into(),
            server_name: id.into(),
            provider_class: "IOTinyDevice".into(),
            probe_score: 0,
            match_category: driverkit_bundle::DEFAULT_MATCH_CATEGORY.into(),
            one_process: false,
            properties,
        }],
        entitlements: None,
    }
}

fn next_event(events: &mpsc::Receiver<Event>, what: &str, f: impl Fn(&Event) -> bool) -> Event {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(e) if f(&e) => return e,
            Ok(_) => {}
            Err(_) => panic!("no {what} within 30 s"),
        }
    }
}

fn a_tiny_family_from_outside_the_core_is_matched_started_and_called() {
    let root = tempfile::tempdir().unwrap();
    let tiny = Arc::new(TinyFamily::default());
    let core = Core::start(Config::new(root.path().to_owned()), vec![tiny.clone()]);
    let system = core.system();
    let events = core.subscribe();
    core.add_bundle_value(tiny_bundle());

    let other = tiny.plug(&system, 7, "T2");
    let device = tiny.plug(&system, 100, "T1");
    let Event::Started {
        service, provider, ..
    } = next_event(&events, "start", |e| matches!(e, Event::Started { .. }))
    else {
        unreachable!()
    };
    assert_eq!(provider, device, "the driver starts on the T1 device");
    assert!(system.is_kind_of(device, "IOTinyDevice"));
    assert!(
        system.is_kind_of(device, "IOService"),
        "the family's superclass"
    );
    assert_eq!(
        system.property(service, "TinySum"),
        Some(plist::Value::Integer(142.into())),
        "40 + 2 + the device's offset of 100, computed by the family"
    );
    assert_eq!(*tiny.calls.lock().unwrap(), [(device, 40, 2)]);
    assert!(core.wait_idle(Duration::from_secs(30)));
    assert!(
        system.is_unclaimed(other),
        "no personality asks for model T2"
    );

    // Unplug: the driver stops, its process exits, the family forgets.
    core.unplug(device).unwrap();
    next_event(&events, "exit", |e| {
        matches!(e, Event::Exited { crashed: false, .. })
    });
    assert!(system.name(device).is_none());
    assert!(!tiny.devices.lock().unwrap().contains_key(&device));
    // The process leaves the table right after its exit is announced.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !core.pids().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(core.pids().is_empty(), "the dext's process is gone");
    core.shutdown();
}

fn main() {
    if std::env::var_os("DRIVERKIT_SERVER_FD").is_some() {
        // Started by the daemon: be the dext.
        driverkit::runtime::run(vec![driverkit::runtime::class::<TinyDriver>()]);
    }
    a_tiny_family_from_outside_the_core_is_matched_started_and_called();
    println!("test a_tiny_family_from_outside_the_core_is_matched_started_and_called ... ok");
}

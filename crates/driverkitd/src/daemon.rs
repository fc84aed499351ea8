//! The daemon: the registry, the catalogue and the processes, and the
//! lifecycle that connects them (match -> launch -> init -> start;
//! terminate -> stop -> free -> exit; crash -> clean up -> relaunch).
//!
//! Concurrency: one `Mutex<State>` guards all data. It is never held across
//! a call into a dext or a process operation, so a slow or hung dext can
//! only ever block the thread talking to it. Matching of one provider runs
//! on one thread at a time (`State::matching`); a request to match while it
//! runs is remembered and served when it finishes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use driverkit_bundle::Bundle;
use driverkit_wire::interfaces::{
    io_service_interface, io_user_server_interface, IOServiceInterface, IOUserServerInterface,
};
use driverkit_wire::{Header, IOResult, IOReturn, ObjectId, FLAG_SUPERDISPATCH};

use crate::backends::usb::virtual_usb::VirtualUsb;
use crate::backends::virtual_device::DeviceSpec;
use crate::families::{self, MatchTarget};
use crate::matching::{by_category, Candidate, Catalogue};
use crate::registry::{EntryId, Hosting, Registry};
use crate::user_server::{Launch, Pipelined, UserServer};

/// How the daemon runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The state directory (control socket, lock, embedded bundles).
    pub root: PathBuf,
    /// Driver bundles to load at start.
    pub bundles: Vec<PathBuf>,
    /// Virtual devices to plug at start.
    pub devices: Vec<DeviceSpec>,
    /// Relaunches of a crashing personality before it is given up.
    pub relaunch_limit: u32,
    /// The first relaunch delay; each further crash doubles it.
    pub relaunch_backoff: Duration,
    /// How long a dext may take to answer the system (Start, Stop...).
    pub call_timeout: Duration,
    /// Forward HID events to Linux applications through uinput, where
    /// `/dev/uinput` opens. Off by default: a test's typing must not reach
    /// the desktop of the machine running it.
    pub uinput: bool,
}

impl Config {
    /// Defaults for a state directory.
    pub fn new(root: PathBuf) -> Config {
        Config {
            root,
            bundles: Vec::new(),
            devices: Vec::new(),
            relaunch_limit: 3,
            relaunch_backoff: Duration::from_millis(250),
            call_timeout: Duration::from_secs(20),
            uinput: false,
        }
    }
}

/// Lifecycle events, for benchmarks and tools that watch the daemon.
#[derive(Debug, Clone)]
pub enum Event {
    /// A dext's `start` returned successfully.
    Started {
        service: EntryId,
        provider: EntryId,
        pid: u32,
        at: Instant,
    },
    /// A service left the registry.
    Removed { service: EntryId },
    /// A dext process ended.
    Exited { pid: u32, crashed: bool },
}

/// A plugged virtual device.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct DeviceInfo {
    pub id: EntryId,
    pub name: String,
    pub class: String,
    pub source: String,
    /// Names of the services attached to it.
    pub clients: Vec<String>,
}

/// A read a dext asked a device for, not yet completed.
struct PendingRead {
    device: EntryId,
    server: Arc<UserServer>,
    /// The dext's ID for its completion action.
    action: u64,
}

struct ServerSlot {
    server: Arc<UserServer>,
    /// Attaches in progress that will use this server; it must not be
    /// asked to exit while any remain.
    reserved: usize,
}

pub(crate) struct State {
    pub(crate) registry: Registry,
    pub(crate) catalogue: Catalogue,
    servers: HashMap<u64, ServerSlot>,
    next_server: u64,
    relaunches: HashMap<String, u32>,
    disabled: HashSet<String>,
    matching: HashSet<EntryId>,
    rematch: HashSet<EntryId>,
    resources: EntryId,
    virtual_bus: EntryId,
    pub(crate) devices: BTreeMap<EntryId, String>,
    /// Virtual USB devices, for typing and injecting reports.
    virtual_usb: HashMap<EntryId, Arc<VirtualUsb>>,
    pub(crate) usb: crate::families::usb_device::UsbState,
    pub(crate) hid: crate::families::hid::HidState,
    /// Interrupt lines of plugged devices that have any.
    interrupts: HashMap<EntryId, crate::backends::interrupts::InterruptModel>,
    /// Asynchronous reads in flight, by request number.
    reads: HashMap<u64, PendingRead>,
    next_read: u64,
    next_location: u32,
    shutting_down: bool,
    jobs: usize,
}

pub(crate) struct Inner {
    pub(crate) config: Config,
    state: Mutex<State>,
    changed: Condvar,
    subscribers: Mutex<Vec<mpsc::Sender<Event>>>,
    spawn_lock: Mutex<()>,
    pub(crate) workers: crate::workers::Workers,
    pub(crate) hid_events: crate::families::hid::HidEvents,
    /// The extension store, or why it did not open.
    pub(crate) store: Mutex<Result<crate::store::Store, String>>,
    /// Serializes system extension requests.
    pub(crate) sysext_lock: Mutex<()>,
    me: Weak<Inner>,
}

/// A running daemon. Dropping it does not stop it; call [`Daemon::shutdown`].
#[derive(Clone)]
pub struct Daemon {
    pub(crate) inner: Arc<Inner>,
}

enum Attach {
    Started,
    Failed,
    /// The process died; crash handling owns what happens next.
    Crashed,
    /// The provider or the daemon is going away.
    Gone,
}

impl Daemon {
    /// Builds the registry, loads the configured bundles, plugs the
    /// configured devices and starts matching.
    pub fn start(config: Config) -> Daemon {
        let mut registry = Registry::new();
        let root = registry.insert("Root", "IORegistryEntry", Default::default(), None);
        let mut published = plist::Dictionary::new();
        published.insert("IOKit".into(), "IOKit".into());
        let resources = registry.insert("IOResources", "IOResources", published, Some(root));
        let user_resources = registry.insert(
            "IOUserResources",
            "IOUserResources",
            Default::default(),
            Some(root),
        );
        let virtual_bus =
            registry.insert("VirtualBus", "IOVirtualBus", Default::default(), Some(root));
        for id in [root, resources, user_resources, virtual_bus] {
            if let Some(e) = registry.get_mut(id) {
                e.state.registered = true;
                e.state.active = true;
                e.state.matched = true;
            }
        }
        let state = State {
            registry,
            catalogue: Catalogue::new(families::matchers()),
            servers: HashMap::new(),
            next_server: 1,
            relaunches: HashMap::new(),
            disabled: HashSet::new(),
            matching: HashSet::new(),
            rematch: HashSet::new(),
            resources,
            virtual_bus,
            devices: BTreeMap::new(),
            virtual_usb: HashMap::new(),
            usb: Default::default(),
            hid: Default::default(),
            interrupts: HashMap::new(),
            reads: HashMap::new(),
            next_read: 0,
            next_location: 0,
            shutting_down: false,
            jobs: 0,
        };
        let bundles = config.bundles.clone();
        let devices = config.devices.clone();
        let store = crate::store::Store::open(&config.root.join("extensions"));
        if let Err(e) = &store {
            tracing::error!("sysext   the extension store does not open: {e}");
        }
        let inner = Arc::new_cyclic(|me| Inner {
            config,
            state: Mutex::new(state),
            changed: Condvar::new(),
            subscribers: Mutex::new(Vec::new()),
            spawn_lock: Mutex::new(()),
            workers: Default::default(),
            hid_events: Default::default(),
            store: Mutex::new(store),
            sysext_lock: Mutex::new(()),
            me: me.clone(),
        });
        let daemon = Daemon { inner };
        for path in bundles {
            if let Err(e) = daemon.load_bundle(&path) {
                tracing::error!("not loading {}: {e}", path.display());
            }
        }
        daemon.load_extensions();
        for spec in devices {
            if let Err(e) = daemon.plug(spec) {
                tracing::error!("not plugging: {e}");
            }
        }
        if daemon.inner.config.uinput {
            crate::families::hid::forward_to_uinput(&daemon);
        }
        daemon.inner.schedule_match(user_resources);
        daemon
    }

    /// Validates and adds a bundle, then runs matching again everywhere.
    /// The bundle must sit in an app's `Contents/Library/SystemExtensions`
    /// folder. Returns the bundle identifier.
    pub fn load_bundle(&self, path: &std::path::Path) -> Result<String, String> {
        driverkit_bundle::location::containing_app(path)?;
        self.add_bundle(path)
    }

    /// Loads a bundle whose place was checked already (the extension
    /// store's copies): validation and entitlements, then matching.
    pub(crate) fn add_bundle(&self, path: &std::path::Path) -> Result<String, String> {
        let bundle = Bundle::load(path).map_err(|e| e.to_string())?;
        bundle.check_entitlements().map_err(|e| e.to_string())?;
        let id = bundle.identifier.clone();
        let names: Vec<_> = bundle
            .personalities
            .iter()
            .map(|p| p.name.clone())
            .collect();
        let registered: Vec<EntryId> = {
            let mut st = self.inner.lock();
            st.catalogue.add_bundle(bundle);
            // A new version gets a fresh start in the relaunch ledger.
            st.relaunches
                .retain(|k, _| !k.starts_with(&format!("{id}/")));
            st.disabled.retain(|k| !k.starts_with(&format!("{id}/")));
            for e in st.registry.iter_mut() {
                e.declined.retain(|k| !k.starts_with(&format!("{id}/")));
            }
            st.registry
                .iter()
                .filter(|e| e.state.registered && !e.state.terminating)
                .map(|e| e.id)
                .collect()
        };
        tracing::info!(
            "load     {id} from {} (personalities: {})",
            path.display(),
            names.join(", ")
        );
        for id in registered {
            self.inner.schedule_match(id);
        }
        Ok(id)
    }

    /// Takes a bundle out: its personalities leave the catalogue, then its
    /// services stop (bottom-up, as on unplug) and their providers match
    /// again without it. Returns when they have stopped.
    pub(crate) fn unload_bundle(&self, bundle_id: &str) {
        let services: Vec<(EntryId, Option<EntryId>)> = {
            let mut st = self.inner.lock();
            st.catalogue.remove_bundle(bundle_id);
            st.registry
                .iter()
                .filter(|e| {
                    e.hosting.is_some()
                        && !e.state.terminating
                        && e.properties
                            .get("CFBundleIdentifier")
                            .and_then(plist::Value::as_string)
                            == Some(bundle_id)
                })
                .map(|e| (e.id, e.provider))
                .collect()
        };
        for (service, provider) in services {
            if self.inner.lock().registry.get(service).is_some() {
                self.inner.terminate(service);
            }
            if let Some(p) = provider {
                self.inner.schedule_match(p);
            }
        }
        tracing::info!("unload   {bundle_id}");
    }

    /// Plugs a virtual device into the virtual bus and matches it.
    pub fn plug(&self, spec: DeviceSpec) -> Result<EntryId, String> {
        if let Some(usb) = &spec.usb {
            let location = {
                let mut st = self.inner.lock();
                st.next_location += 1;
                0x0100_0000 | (st.next_location & 0xf) << 20
            };
            let device = Arc::new(VirtualUsb::new(usb, &spec.source, location)?);
            let bus = self.inner.lock().virtual_bus;
            let id = self.inner.plug_usb(Some(&spec.name), device.clone(), bus)?;
            self.inner.lock().virtual_usb.insert(id, device);
            return Ok(id);
        }
        let id = {
            let mut st = self.inner.lock();
            let bus = st.virtual_bus;
            let id =
                st.registry
                    .insert(&spec.name, &spec.class, spec.properties.clone(), Some(bus));
            if let Some(e) = st.registry.get_mut(id) {
                e.state.registered = true;
                e.state.active = true;
            }
            st.devices.insert(id, spec.source.clone());
            if !spec.interrupts.is_empty() {
                let model = crate::backends::interrupts::InterruptModel::start(
                    &spec.name,
                    &spec.interrupts,
                );
                st.interrupts.insert(id, model);
            }
            id
        };
        tracing::info!(
            "plug     {} [{id:#x}] ({}, from {})",
            spec.name,
            spec.class,
            spec.source
        );
        self.inner.schedule_match(id);
        Ok(id)
    }

    /// Imports a device from a USB/IP server (`usbip://HOST[:PORT]/BUSID`);
    /// it becomes an `IOUSBHostDevice` like any other. A dropped
    /// connection unplugs it.
    pub fn attach_usbip(&self, url: &str) -> Result<EntryId, String> {
        use crate::backends::usb::usbip::{UsbIpDevice, UsbIpUrl};
        let url = UsbIpUrl::parse(url)?;
        let device = UsbIpDevice::import(&url)?;
        let info = device.info();
        // Bus 0x20 and up for USB/IP, then the server's bus and device.
        device.set_location(0x2000_0000 | (info.busnum & 0xf) << 20 | (info.devnum & 0xf) << 16);
        let bus = self.inner.lock().virtual_bus;
        let id = self
            .inner
            .plug_usb(None, device.clone(), bus)
            .inspect_err(|_| {
                crate::backends::usb::UsbTransport::close(&*device);
            })?;
        let me = self.inner.me_weak();
        device.on_disconnect(move || {
            if let Some(d) = me.upgrade() {
                d.schedule_terminate(id);
            }
        });
        Ok(id)
    }

    /// Makes virtual keyboard `id` type `text`: a press and a release
    /// report per character, queued on its interrupt-IN endpoint.
    pub fn type_text(&self, id: EntryId, text: &str) -> Result<usize, String> {
        let reports = crate::families::hid::keyboard_reports(text)?;
        for r in &reports {
            self.queue_report(id, r)?;
        }
        Ok(reports.len())
    }

    /// Queues one input report on virtual USB device `id`'s first HID
    /// interrupt-IN endpoint.
    pub fn queue_report(&self, id: EntryId, report: &[u8]) -> Result<(), String> {
        let device = self
            .inner
            .lock()
            .virtual_usb
            .get(&id)
            .cloned()
            .ok_or_else(|| {
                format!("no virtual USB device with id {id:#x} (see `driverkit device list`)")
            })?;
        let address = device
            .hid_input_endpoint()
            .ok_or_else(|| format!("device {id:#x} has no HID interrupt-IN endpoint"))?;
        device
            .queue_in(address, report)
            .map_err(|e| format!("device {id:#x}: endpoint {address:#04x}: {e}"))
    }

    /// The last output report (SET_REPORT) virtual USB device `id` got.
    pub fn last_output_report(&self, id: EntryId) -> Option<Vec<u8>> {
        let device = self.inner.lock().virtual_usb.get(&id).cloned()?;
        device.last_set_report(0).map(|(_, _, data)| data)
    }

    /// Events as event services dispatch them, from now on.
    pub fn subscribe_hid(&self) -> mpsc::Receiver<crate::families::hid::HidEvent> {
        self.inner.hid_events.subscribe()
    }

    /// Unplugs a virtual device: its clients stop bottom-up, then it goes.
    pub fn unplug(&self, id: EntryId) -> Result<(), String> {
        let name = {
            let st = self.inner.lock();
            if !st.devices.contains_key(&id) {
                return Err(format!(
                    "no plugged device with id {id:#x} (see `driverkit device list`)"
                ));
            }
            st.registry
                .get(id)
                .map(|e| e.name.clone())
                .unwrap_or_default()
        };
        tracing::info!("unplug   {name} [{id:#x}]");
        self.inner.terminate(id);
        Ok(())
    }

    /// The plugged virtual devices.
    pub fn devices(&self) -> Vec<DeviceInfo> {
        let st = self.inner.lock();
        st.devices
            .iter()
            .filter_map(|(id, source)| {
                let e = st.registry.get(*id)?;
                Some(DeviceInfo {
                    id: *id,
                    name: e.name.clone(),
                    class: e.class().to_owned(),
                    source: source.clone(),
                    clients: e
                        .clients
                        .iter()
                        .filter_map(|c| st.registry.get(*c))
                        .map(|c| c.name.clone())
                        .collect(),
                })
            })
            .collect()
    }

    /// The registry as `ioreg -a` would archive it.
    pub fn registry_plist(&self) -> plist::Value {
        crate::ioreg::archive(&self.inner.lock().registry)
    }

    /// Lifecycle events from now on.
    pub fn subscribe(&self) -> mpsc::Receiver<Event> {
        let (tx, rx) = mpsc::channel();
        self.inner
            .subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tx);
        rx
    }

    /// Waits until no matching or termination is in flight.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.inner.lock();
        while st.jobs > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            st = self
                .inner
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// PIDs of the running dext processes.
    pub fn pids(&self) -> Vec<u32> {
        self.inner
            .lock()
            .servers
            .values()
            .map(|s| s.server.pid)
            .collect()
    }

    /// Stops every dext (Stop, free, exit, bottom-up) and waits for the
    /// processes to end; stragglers are killed.
    pub fn shutdown(&self) {
        let tops: Vec<EntryId> = {
            let mut st = self.inner.lock();
            st.shutting_down = true;
            st.registry
                .iter()
                .filter(|e| {
                    e.hosting.is_some()
                        && e.provider
                            .and_then(|p| st.registry.get(p))
                            .is_none_or(|p| p.hosting.is_none())
                })
                .map(|e| e.id)
                .collect()
        };
        tracing::info!("shutdown: stopping {} driver service(s)", tops.len());
        for id in tops {
            self.inner.terminate(id);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut st = self.inner.lock();
        while !st.servers.is_empty() && Instant::now() < deadline {
            st = self
                .inner
                .changed
                .wait_timeout(st, Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        for slot in st.servers.values() {
            tracing::warn!("{:?} still running at shutdown; killing it", slot.server);
            slot.server.kill();
        }
        drop(st);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.inner.lock().servers.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Inner {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn emit(&self, event: Event) {
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|s| s.send(event.clone()).is_ok());
    }

    /// Runs `f` on a worker, counted in `jobs` for `wait_idle`.
    fn spawn_job(&self, name: &str, f: impl FnOnce(Arc<Inner>) + Send + 'static) {
        let Some(me) = self.me.upgrade() else { return };
        me.lock().jobs += 1;
        let done = me.clone();
        let name = name.to_owned();
        self.workers.run(move || {
            tracing::trace!("job {name}");
            f(me);
            let mut st = done.lock();
            st.jobs -= 1;
            drop(st);
            done.changed.notify_all();
        });
    }

    pub(crate) fn schedule_match(&self, provider: EntryId) {
        self.spawn_job("matching", move |d| d.run_matching(provider));
    }

    fn run_matching(&self, provider: EntryId) {
        {
            let mut st = self.lock();
            if st.shutting_down {
                return;
            }
            if !st.matching.insert(provider) {
                st.rematch.insert(provider);
                return;
            }
        }
        loop {
            self.match_once(provider);
            let mut st = self.lock();
            if !st.rematch.remove(&provider) || st.shutting_down {
                st.matching.remove(&provider);
                return;
            }
        }
    }

    fn match_once(&self, provider: EntryId) {
        let groups = {
            let st = self.lock();
            let Some(entry) = st.registry.get(provider) else {
                return;
            };
            if !entry.state.registered || entry.state.terminating {
                return;
            }
            let resources = st
                .registry
                .get(st.resources)
                .map(|r| r.properties.clone())
                .unwrap_or_default();
            let target = MatchTarget {
                name: &entry.name,
                class_chain: &entry.class_chain,
                properties: &entry.properties,
            };
            let candidates: Vec<Candidate> = st
                .catalogue
                .candidates(&target, &resources)
                .into_iter()
                .filter(|c| {
                    !st.disabled.contains(&c.driver.key())
                        && !entry.declined.contains(&c.driver.key())
                })
                .collect();
            let occupied: HashSet<&str> = entry
                .clients
                .iter()
                .filter_map(|c| st.registry.get(*c)?.match_category.as_deref())
                .collect();
            by_category(candidates)
                .into_iter()
                .filter(|(cat, _)| !occupied.contains(cat.as_str()))
                .collect::<Vec<_>>()
        };
        for (category, group) in groups {
            for candidate in group {
                match self.attach(provider, &candidate, &category) {
                    Attach::Started => break,
                    Attach::Failed => continue,
                    Attach::Crashed => break,
                    Attach::Gone => return,
                }
            }
        }
        let unclaimed = match self.lock().registry.get_mut(provider) {
            Some(e) => {
                e.state.matched = true;
                e.clients.is_empty() && !e.state.terminating
            }
            None => false,
        };
        // What the families do with a provider no driver took.
        if unclaimed {
            self.usb_unclaimed(provider);
            self.hid_attach_usb(provider);
            self.hid_unclaimed(provider);
        }
    }

    fn attach(&self, provider: EntryId, candidate: &Candidate, category: &str) -> Attach {
        let driver = &candidate.driver;
        let p = &driver.personality;
        let (id, provider_name, properties) = {
            let mut st = self.lock();
            if st.shutting_down {
                return Attach::Gone;
            }
            let Some(prov) = st.registry.get(provider) else {
                return Attach::Gone;
            };
            if prov.state.terminating {
                return Attach::Gone;
            }
            let provider_name = prov.name.clone();
            let mut properties = p.properties.clone();
            properties.insert("IOMatchedPersonality".into(), p.name.clone().into());
            properties.insert(
                "IOProbeScore".into(),
                plist::Value::Integer(candidate.score.into()),
            );
            properties.insert("IOMatchCategory".into(), category.into());
            let id = st.registry.insert(
                &p.user_class,
                &p.io_class,
                properties.clone(),
                Some(provider),
            );
            if let Some(e) = st.registry.get_mut(id) {
                e.match_category = Some(category.to_owned());
                e.state.matched = true;
            }
            (id, provider_name, properties)
        };
        tracing::info!(
            "match    {} ({}) -> {provider_name} [{provider:#x}], score {}, category {category}",
            p.user_class,
            driver.key(),
            candidate.score
        );
        let server = match self.server_for(driver) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("launch   {} failed: {e}", driver.bundle.identifier);
                self.lock().registry.remove(id);
                self.record_crash(&driver.key(), provider, &e);
                return Attach::Crashed;
            }
        };
        {
            let mut st = self.lock();
            if let Some(e) = st.registry.get_mut(id) {
                e.hosting = Some(Hosting {
                    server: server.id,
                    pid: server.pid,
                    bundle: driver.bundle.identifier.clone(),
                    personality: p.name.clone(),
                });
            }
            if let Some(slot) = st.servers.get_mut(&server.id) {
                slot.reserved -= 1;
            }
        }
        // create (init) and start travel together; see `Pipelined`.
        let began = Instant::now();
        let pipeline = Pipelined::new(&server);
        let lifecycle = io_user_server_interface::Proxy {
            caller: &pipeline,
            object: ObjectId::USER_SERVER,
            flags: 0,
        };
        let service = io_service_interface::Proxy {
            caller: &pipeline,
            object: ObjectId(id),
            flags: 0,
        };
        let _ = lifecycle.create(
            ObjectId(id),
            p.user_class.clone(),
            ObjectId(provider),
            properties,
        );
        let _ = service.start(ObjectId(provider));
        let mut results = pipeline.finish().into_iter();
        let (created, started) = (
            results.next().unwrap_or(Err(IOReturn::INTERNAL_ERROR)),
            results.next(),
        );
        if let Err(e) = created {
            if !server.is_alive() {
                return Attach::Crashed;
            }
            tracing::warn!(
                "init     {} [{id:#x}] in pid {} failed: {e}",
                p.user_class,
                server.pid
            );
            self.discard(id, &server);
            return Attach::Failed;
        }
        match started.unwrap_or(Err(IOReturn::INTERNAL_ERROR)) {
            Ok(()) => {
                let took = began.elapsed();
                let active = match self.lock().registry.get_mut(id) {
                    Some(e) if !e.state.terminating => {
                        e.state.active = true;
                        true
                    }
                    _ => false,
                };
                tracing::info!(
                    "start    {} [{id:#x}] on {provider_name} in pid {}: ok ({:.1} ms)",
                    p.user_class,
                    server.pid,
                    took.as_secs_f64() * 1e3
                );
                if active {
                    self.emit(Event::Started {
                        service: id,
                        provider,
                        pid: server.pid,
                        at: Instant::now(),
                    });
                }
                Attach::Started
            }
            Err(_) if !server.is_alive() => Attach::Crashed,
            Err(e) => {
                tracing::warn!(
                    "start    {} [{id:#x}] on {provider_name} in pid {}: failed with {e}; trying the next candidate",
                    p.user_class,
                    server.pid
                );
                let lifecycle = io_user_server_interface::Proxy {
                    caller: &*server,
                    object: ObjectId::USER_SERVER,
                    flags: 0,
                };
                let _ = lifecycle.free(ObjectId(id));
                self.discard(id, &server);
                Attach::Failed
            }
        }
    }

    /// Removes a service that never started, remembers that its driver
    /// declined the provider, and lets its process go if it hosts nothing
    /// else.
    /// The process hosting service `id`, if a dext hosts it.
    pub(crate) fn server_of(&self, id: EntryId) -> Option<Arc<UserServer>> {
        let st = self.lock();
        let server = st.registry.get(id)?.hosting.as_ref()?.server;
        st.servers.get(&server).map(|s| s.server.clone())
    }

    fn discard(&self, id: EntryId, server: &Arc<UserServer>) {
        {
            let mut st = self.lock();
            if let Some(e) = st.registry.remove(id) {
                decline(&mut st.registry, &e);
            }
        }
        self.hid_removed(id);
        self.emit(Event::Removed { service: id });
        self.release_if_idle(server);
    }

    /// A process for `driver`: a shared one for `IOUserServerOneProcess`,
    /// otherwise a new one. The returned server is reserved once.
    fn server_for(&self, driver: &crate::matching::Driver) -> Result<Arc<UserServer>, String> {
        let p = &driver.personality;
        // Two attaches must not both start "the" shared process of a
        // server name; unshared processes start in parallel.
        let _spawning = p
            .one_process
            .then(|| self.spawn_lock.lock().unwrap_or_else(|e| e.into_inner()));
        if p.one_process {
            let mut st = self.lock();
            let shared = st.servers.values_mut().find(|s| {
                s.server.one_process
                    && s.server.name == p.server_name
                    && s.server.bundle == driver.bundle.identifier
                    && s.server.is_alive()
                    && !s.server.exit_requested()
            });
            if let Some(slot) = shared {
                slot.reserved += 1;
                return Ok(slot.server.clone());
            }
        }
        let id = {
            let mut st = self.lock();
            st.next_server += 1;
            st.next_server
        };
        let server = UserServer::spawn(
            Launch {
                id,
                name: &p.server_name,
                bundle: &driver.bundle.identifier,
                executable: &driver.bundle.executable,
                one_process: p.one_process,
                call_timeout: self.config.call_timeout,
            },
            self.me.clone(),
        )
        .map_err(|e| format!("{}: {e}", driver.bundle.executable.display()))?;
        tracing::info!(
            "launch   {} pid {} ({})",
            p.server_name,
            server.pid,
            driver.bundle.executable.display()
        );
        self.lock().servers.insert(
            id,
            ServerSlot {
                server: server.clone(),
                reserved: 1,
            },
        );
        Ok(server)
    }

    fn release_if_idle(&self, server: &Arc<UserServer>) {
        let idle = {
            let st = self.lock();
            let hosting = st
                .registry
                .iter()
                .any(|e| e.hosting.as_ref().is_some_and(|h| h.server == server.id));
            let reserved = st.servers.get(&server.id).is_some_and(|s| s.reserved > 0);
            !hosting && !reserved
        };
        if idle && server.is_alive() && !server.exit_requested() {
            server.request_exit();
        }
    }

    /// Terminates `id` and everything above it, bottom-up, then lets its
    /// provider match again (a driver went away; it is not offered the same
    /// provider again, or a driver that terminates itself would loop).
    /// Requests in flight to the departing devices complete first, with
    /// `kIOReturnAborted`, so that their drivers' Stop finds nothing pending.
    pub(crate) fn terminate(&self, id: EntryId) {
        let departing = self.lock().registry.subtree_bottom_up(id);
        self.usb_departing(&departing);
        let aborted: Vec<PendingRead> = {
            let mut st = self.lock();
            let departing = st.registry.subtree_bottom_up(id);
            let ids: Vec<u64> = st
                .reads
                .iter()
                .filter(|(_, r)| departing.contains(&r.device))
                .map(|(k, _)| *k)
                .collect();
            ids.into_iter()
                .filter_map(|k| st.reads.remove(&k))
                .collect()
        };
        for read in aborted {
            complete(&read, IOReturn::ABORTED, 0);
        }
        let (order, provider) = {
            let mut st = self.lock();
            if let Some(e) = st.registry.get(id).cloned() {
                decline(&mut st.registry, &e);
            }
            let order = st.registry.subtree_bottom_up(id);
            for e in &order {
                if let Some(entry) = st.registry.get_mut(*e) {
                    entry.state.terminating = true;
                    entry.state.active = false;
                }
            }
            (order, st.registry.get(id).and_then(|e| e.provider))
        };
        for e in order {
            self.stop_and_remove(e);
        }
        if let Some(p) = provider {
            let alive = self
                .lock()
                .registry
                .get(p)
                .is_some_and(|e| !e.state.terminating);
            if alive {
                self.schedule_match(p);
            }
        }
    }

    fn stop_and_remove(&self, id: EntryId) {
        let (entry, server) = {
            let st = self.lock();
            let Some(e) = st.registry.get(id) else { return };
            let server = e
                .hosting
                .as_ref()
                .and_then(|h| st.servers.get(&h.server))
                .map(|s| s.server.clone());
            (e.clone(), server)
        };
        if let Some(server) = server.filter(|s| s.is_alive()) {
            let provider = ObjectId(entry.provider.unwrap_or(0));
            let service = io_service_interface::Proxy {
                caller: &*server,
                object: ObjectId(id),
                flags: 0,
            };
            let stopped = service.stop(provider);
            tracing::info!(
                "stop     {} [{id:#x}] in pid {}: {}",
                entry.name,
                server.pid,
                stopped.map_or_else(|e| e.to_string(), |()| "ok".into())
            );
            let lifecycle = io_user_server_interface::Proxy {
                caller: &*server,
                object: ObjectId::USER_SERVER,
                flags: 0,
            };
            let freed = lifecycle.free(ObjectId(id));
            tracing::info!(
                "free     {} [{id:#x}] in pid {}: {}",
                entry.name,
                server.pid,
                freed.map_or_else(|e| e.to_string(), |()| "ok".into())
            );
            self.forget(id);
            self.release_if_idle(&server);
        } else {
            self.forget(id);
        }
    }

    /// Removes `id` from the registry and the families.
    fn forget(&self, id: EntryId) {
        {
            let mut st = self.lock();
            st.registry.remove(id);
            st.devices.remove(&id);
            st.interrupts.remove(&id);
            if let Some(d) = st.virtual_usb.remove(&id) {
                crate::backends::usb::UsbTransport::close(&*d);
            }
        }
        self.usb_removed(id);
        self.hid_removed(id);
        self.emit(Event::Removed { service: id });
    }

    /// Called by a server's reader thread once its process has ended. The
    /// server leaves the table last, so that `shutdown` (which waits for an
    /// empty table) sees every exit fully handled.
    pub(crate) fn server_exited(&self, server: &Arc<UserServer>, status: &str) {
        let hosted: Vec<EntryId> = {
            let st = self.lock();
            st.registry
                .iter()
                .filter(|e| e.hosting.as_ref().is_some_and(|h| h.server == server.id))
                .map(|e| e.id)
                .collect()
        };
        let crashed = !server.exit_requested() || !hosted.is_empty();
        if crashed {
            self.handle_crash(server, status, hosted);
        } else {
            tracing::info!("exit     {} pid {}: {status}", server.name, server.pid);
        }
        self.emit(Event::Exited {
            pid: server.pid,
            crashed,
        });
        self.lock().servers.remove(&server.id);
        self.changed.notify_all();
    }

    fn handle_crash(&self, server: &Arc<UserServer>, status: &str, hosted: Vec<EntryId>) {
        let names: Vec<String> = {
            let st = self.lock();
            hosted
                .iter()
                .filter_map(|id| st.registry.get(*id))
                .map(|e| format!("{} [{:#x}]", e.name, e.id))
                .collect()
        };
        tracing::error!(
            "crash    {} pid {}: {status}; it hosted {}",
            server.name,
            server.pid,
            names.join(", ")
        );
        for id in hosted {
            // Clients of a crashed service (in other processes) stop first.
            let clients = self
                .lock()
                .registry
                .get(id)
                .map(|e| e.clients.clone())
                .unwrap_or_default();
            for c in clients {
                self.terminate(c);
            }
            let Some(entry) = self.lock().registry.remove(id) else {
                continue;
            };
            self.usb_removed(id);
            self.hid_removed(id);
            self.emit(Event::Removed { service: id });
            let Some(provider) = entry.provider else {
                continue;
            };
            self.tell_client_crashed(provider, &entry.name, id);
            if let Some(h) = &entry.hosting {
                self.record_crash(&format!("{}/{}", h.bundle, h.personality), provider, status);
            }
        }
    }

    fn tell_client_crashed(&self, provider: EntryId, client_name: &str, client: EntryId) {
        let (provider_name, server) = {
            let st = self.lock();
            let Some(p) = st.registry.get(provider) else {
                return;
            };
            let server = p
                .hosting
                .as_ref()
                .and_then(|h| st.servers.get(&h.server))
                .map(|s| s.server.clone());
            (p.name.clone(), server)
        };
        tracing::info!(
            "client_crashed: {provider_name} [{provider:#x}] lost {client_name} [{client:#x}]"
        );
        if let Some(server) = server {
            let proxy = io_service_interface::Proxy {
                caller: &*server,
                object: ObjectId(provider),
                flags: 0,
            };
            let _ = proxy.client_crashed(ObjectId(client), 0);
        }
    }

    /// Counts a crash of `key` and rematches the provider: after a backoff,
    /// or at once without it once the personality is given up (so that the
    /// next candidate can try).
    fn record_crash(&self, key: &str, provider: EntryId, reason: &str) {
        let (count, given_up) = {
            let mut st = self.lock();
            let count = {
                let n = st.relaunches.entry(key.to_owned()).or_insert(0);
                *n += 1;
                *n
            };
            let given_up = count > self.config.relaunch_limit;
            if given_up {
                st.disabled.insert(key.to_owned());
            }
            (count, given_up)
        };
        let delay = if given_up {
            tracing::error!(
                "giving up {key}: not relaunching after {} relaunches (last failure: {reason})",
                self.config.relaunch_limit
            );
            Duration::ZERO
        } else {
            let delay = self.config.relaunch_backoff * 2u32.saturating_pow(count - 1).min(64);
            tracing::warn!(
                "relaunch {key} in {} ms (relaunch {count} of {})",
                delay.as_millis(),
                self.config.relaunch_limit
            );
            delay
        };
        self.spawn_job("relaunch", move |d| {
            std::thread::sleep(delay);
            d.run_matching(provider);
        });
    }

    /// Serves a dext's call into the system, after checking that the dext
    /// may make it.
    ///
    /// `own` remembers, for one call channel, the services found to be this
    /// dext's own: entry IDs are never reused and a service never moves to
    /// another process, so a yes stays true and the state lock is spared on
    /// the hot path. Anything else is checked on every call.
    pub(crate) fn kernel_call(
        &self,
        server: u64,
        h: &Header,
        args: &[u8],
        own: &mut std::collections::HashSet<EntryId>,
    ) -> IOResult<Vec<u8>> {
        use driverkit_wire::interfaces::{
            iohid_event_service_interface, iohid_interface_interface, iousb_host_device_interface,
            iousb_host_interface_interface, iousb_host_pipe_interface,
        };
        let superdispatch = h.flags & FLAG_SUPERDISPATCH != 0;
        let call = crate::families::io_service::KernelCall {
            daemon: self,
            server,
            object: h.object.0,
            superdispatch,
        };
        // Pipes are objects of their owner, checked when used.
        if h.object.0 >= crate::families::usb_device::PIPE_BASE {
            return iousb_host_pipe_interface::dispatch(&call, h.method, args)
                .unwrap_or(Err(IOReturn::UNSUPPORTED));
        }
        if !own.contains(&h.object.0)
            && self.check_access(server, h.object.0, h.method, superdispatch)?
        {
            own.insert(h.object.0);
        }
        io_service_interface::dispatch(&call, h.method, args)
            .or_else(|| iousb_host_device_interface::dispatch(&call, h.method, args))
            .or_else(|| iousb_host_interface_interface::dispatch(&call, h.method, args))
            .or_else(|| iohid_interface_interface::dispatch(&call, h.method, args))
            .or_else(|| iohid_event_service_interface::dispatch(&call, h.method, args))
            .or_else(|| {
                driverkit_wire::interfaces::io_user_hid_device_interface::dispatch(
                    &call, h.method, args,
                )
            })
            .unwrap_or(Err(IOReturn::UNSUPPORTED))
    }

    /// A dext may do anything to its own services, and read its providers.
    /// `Ok(true)` when `object` is the dext's own service.
    fn check_access(
        &self,
        server: u64,
        object: EntryId,
        method: driverkit_wire::MethodId,
        superdispatch: bool,
    ) -> IOResult<bool> {
        let st = self.lock();
        let e = st.registry.get(object).ok_or(IOReturn::NOT_FOUND)?;
        let hosted_here =
            |e: &crate::registry::Entry| e.hosting.as_ref().is_some_and(|h| h.server == server);
        if hosted_here(e) {
            return Ok(true);
        }
        let read_only = [
            io_service_interface::COPY_PROPERTIES,
            io_service_interface::COPY_PROPERTY,
            io_service_interface::GET_REGISTRY_ENTRY_ID,
            // A client subscribes to its provider's interrupts and asks it
            // for I/O.
            io_service_interface::REGISTER_INTERRUPT,
            io_service_interface::READ_ASYNC,
        ];
        let is_provider = e
            .clients
            .iter()
            .filter_map(|c| st.registry.get(*c))
            .any(hosted_here);
        // A client drives its provider's family methods (USB requests,
        // pipes, HID reports); the family checks the details.
        let family_method =
            driverkit_wire::interfaces::iousb_host_device_interface::method_name(method)
                .or_else(|| {
                    driverkit_wire::interfaces::iousb_host_interface_interface::method_name(method)
                })
                .or_else(|| {
                    driverkit_wire::interfaces::iohid_interface_interface::method_name(method)
                })
                .is_some();
        if is_provider && !superdispatch && (read_only.contains(&method) || family_method) {
            return Ok(false);
        }
        Err(IOReturn::NOT_PERMITTED)
    }

    pub(crate) fn set_registered(&self, id: EntryId) {
        let mut st = self.lock();
        let Some(e) = st.registry.get_mut(id) else {
            return;
        };
        e.state.registered = true;
        let name = e.name.clone();
        drop(st);
        tracing::debug!("register {name} [{id:#x}]");
        self.schedule_match(id);
    }

    /// The region `server` registered as `memory`, waiting for it (outside
    /// the state lock) if it is still on its way.
    pub(crate) fn region(
        &self,
        server: u64,
        memory: u64,
    ) -> IOResult<Arc<driverkit_wire::shm::SharedMemory>> {
        let process = self
            .lock()
            .servers
            .get(&server)
            .map(|s| s.server.clone())
            .ok_or(IOReturn::OFFLINE)?;
        process.memory(memory).ok_or(IOReturn::BAD_ARGUMENT)
    }

    /// Delivers interrupt `index` of device `object` into the region `memory`
    /// that `server` registered.
    pub(crate) fn register_interrupt(
        &self,
        server: u64,
        object: EntryId,
        index: u32,
        memory: u64,
    ) -> IOResult<()> {
        let region = self.region(server, memory)?;
        let st = self.lock();
        let model = st.interrupts.get(&object).ok_or(IOReturn::NOT_FOUND)?;
        model.subscribe(index, &region)
    }

    /// Starts an asynchronous read of `length` bytes from virtual device
    /// `device` into the region `memory` of `server`. The device's latency is
    /// its `ReadLatencyMs` property (10 ms if absent); it writes its data
    /// straight into the mapped region, then completes the dext's action.
    pub(crate) fn read_async(
        &self,
        server: u64,
        device: EntryId,
        memory: u64,
        length: u64,
        action: u64,
    ) -> IOResult<()> {
        let region = self.region(server, memory)?;
        if length > region.len() as u64 {
            return Err(IOReturn::BAD_ARGUMENT);
        }
        let (latency, seed) = {
            let st = self.lock();
            if !st.devices.contains_key(&device) || st.usb.devices.contains_key(&device) {
                return Err(IOReturn::UNSUPPORTED);
            }
            let e = st.registry.get(device).ok_or(IOReturn::NOT_FOUND)?;
            let latency = e
                .properties
                .get("ReadLatencyMs")
                .and_then(plist::Value::as_unsigned_integer)
                .unwrap_or(10);
            (Duration::from_millis(latency), device as u8)
        };
        let request = self.track_request(server, device, action)?;
        self.spawn_job("read", move |d| {
            std::thread::sleep(latency);
            if !d.lock().reads.contains_key(&request) {
                return;
            }
            // The device's data: byte i of a read is seed + i.
            let data: Vec<u8> = (0..length).map(|i| seed.wrapping_add(i as u8)).collect();
            region.write(0, &data);
            d.finish_request(request, IOReturn::SUCCESS, length);
        });
        Ok(())
    }

    /// Records an asynchronous request of `server` to `device`, to complete
    /// through `action`: by `finish_request`, or with `kIOReturnAborted` when
    /// the device leaves first.
    pub(crate) fn track_request(&self, server: u64, device: EntryId, action: u64) -> IOResult<u64> {
        let mut st = self.lock();
        let server = st
            .servers
            .get(&server)
            .map(|s| s.server.clone())
            .ok_or(IOReturn::OFFLINE)?;
        st.next_read += 1;
        let request = st.next_read;
        st.reads.insert(
            request,
            PendingRead {
                device,
                server,
                action,
            },
        );
        Ok(request)
    }

    /// Completes a tracked request, unless it was already aborted.
    pub(crate) fn finish_request(&self, request: u64, status: IOReturn, actual: u64) {
        let read = self.lock().reads.remove(&request);
        if let Some(read) = read {
            complete(&read, status, actual);
        }
    }

    pub(crate) fn me(&self) -> Option<Arc<Inner>> {
        self.me.upgrade()
    }

    pub(crate) fn me_weak(&self) -> Weak<Inner> {
        self.me.clone()
    }

    pub(crate) fn schedule_terminate(&self, id: EntryId) {
        self.spawn_job("terminate", move |d| d.terminate(id));
    }
}

/// Runs the dext's completion action of `read` with `status`.
fn complete(read: &PendingRead, status: IOReturn, actual: u64) {
    let server = io_user_server_interface::Proxy {
        caller: &*read.server,
        object: ObjectId::USER_SERVER,
        flags: 0,
    };
    if let Err(e) = server.complete_async(read.action, status.0, actual) {
        tracing::debug!(
            "completion of a read to {:?} not delivered: {e}",
            read.server
        );
    }
}

/// Records on `client`'s provider that `client`'s driver declined it.
fn decline(registry: &mut Registry, client: &crate::registry::Entry) {
    let (Some(provider), Some(h)) = (client.provider, &client.hosting) else {
        return;
    };
    if let Some(p) = registry.get_mut(provider) {
        let key = format!("{}/{}", h.bundle, h.personality);
        if !p.declined.contains(&key) {
            p.declined.push(key);
        }
    }
}

//! The lifecycle that ties matching to processes: match -> launch -> init
//! -> start; terminate -> stop -> free -> exit; crash -> clean up ->
//! relaunch. It knows services, providers and processes; what a provider
//! *is* (a USB device, a HID interface) is its family's business, reached
//! through [`Family`](crate::family::Family) hooks only.
//!
//! Concurrency: `Mutex<State>` guards the registry, the servers and the
//! requests. It is never held across a call into a dext, a family or a
//! process operation, so a slow or hung dext can only ever block the
//! thread talking to it. Matching of one provider runs on one thread at a
//! time (`State::matching`); a request to match while it runs is
//! remembered and served when it finishes.
//!
//! The other locks, and the order they are taken in (outermost first):
//! `sysext_lock` (one extension request at a time) before `store` (the
//! extension store, taken for each read or commit, nothing inside it);
//! `spawn_lock` (one launch of a shared process) before `state`.
//! `subscribers` and `requesters` are leaves: nothing is taken while they
//! are held, and `state` is not held while an event is sent.

use driverkit_wire::sync::{Locked, Waited};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use driverkit_bundle::Bundle;
use driverkit_wire::interfaces::{
    io_service_interface, io_user_server_interface, IOServiceInterface, IOUserServerInterface,
};
use driverkit_wire::{IOResult, IOReturn, ObjectId};

use crate::family::{Families, Family};
use crate::matching::{by_category, Candidate, Catalogue};
use crate::registry::{EntryId, Hosting, Registry};
use crate::user_server::{Batch, Launch, UserServer};
use crate::System;

/// How the core runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The state directory (control socket, lock, embedded bundles).
    pub root: PathBuf,
    /// Driver bundles to load at start.
    pub bundles: Vec<PathBuf>,
    /// Relaunches of a crashing personality before it is given up.
    pub relaunch_limit: u32,
    /// The first relaunch delay; each further crash doubles it.
    pub relaunch_backoff: Duration,
    /// How long a dext may take to answer the system (Start, Stop...).
    pub call_timeout: Duration,
    /// A personality that has not crashed for this long starts counting its
    /// crashes afresh, as Windows' UMDF does: a driver that crashes four
    /// times over a month is not given up.
    pub relaunch_quiet: Duration,
    /// The group whose members are administrators besides root (approve,
    /// trust, developer mode, load...). `None`: root only.
    pub admin_group: Option<String>,
    /// How dexts are confined (user, Landlock, seccomp).
    pub sandbox: crate::sandbox::Policy,
}

impl Config {
    /// Defaults for a state directory.
    pub fn new(root: PathBuf) -> Config {
        Config {
            root,
            bundles: Vec::new(),
            relaunch_limit: 3,
            relaunch_backoff: Duration::from_millis(250),
            call_timeout: Duration::from_secs(20),
            relaunch_quiet: Duration::from_secs(30 * 60),
            admin_group: Some("driverkit".to_owned()),
            sandbox: crate::sandbox::Policy::default(),
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

/// A device a backend plugged (`driverkit device list`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct DeviceInfo {
    pub id: EntryId,
    pub name: String,
    pub class: String,
    pub source: String,
    /// Names of the services attached to it.
    pub clients: Vec<String>,
}

/// The crashes of one personality (`bundle/personality`) since it was last
/// quiet for `relaunch_quiet`.
struct Crashes {
    count: u32,
    last: Instant,
}

/// An asynchronous request a dext made, not yet completed.
struct PendingRequest {
    device: EntryId,
    server: Arc<UserServer>,
    /// The dext's ID for its completion action.
    action: u64,
}

/// The asynchronous requests in flight, and how many each dext has, kept
/// together so that the per-dext limit costs no scan.
#[derive(Default)]
struct Requests {
    by_id: HashMap<u64, PendingRequest>,
    per_server: HashMap<u64, usize>,
}

impl Requests {
    fn of_server(&self, server: u64) -> usize {
        self.per_server.get(&server).copied().unwrap_or(0)
    }

    fn insert(&mut self, id: u64, request: PendingRequest) {
        *self.per_server.entry(request.server.id).or_default() += 1;
        self.by_id.insert(id, request);
    }

    fn remove(&mut self, id: u64) -> Option<PendingRequest> {
        let request = self.by_id.remove(&id)?;
        if let Some(n) = self.per_server.get_mut(&request.server.id) {
            *n -= 1;
            if *n == 0 {
                self.per_server.remove(&request.server.id);
            }
        }
        Some(request)
    }

    /// Takes out every request to one of `devices`.
    fn remove_for(&mut self, devices: &[EntryId]) -> Vec<PendingRequest> {
        let ids: Vec<u64> = self
            .by_id
            .iter()
            .filter(|(_, r)| devices.contains(&r.device))
            .map(|(k, _)| *k)
            .collect();
        ids.into_iter().filter_map(|k| self.remove(k)).collect()
    }
}

pub(crate) struct ServerSlot {
    server: Arc<UserServer>,
    /// Attaches in progress that will use this server; it must not be
    /// asked to exit while any remain.
    reserved: usize,
}

impl State {
    /// What IOResources publishes, for `IOResourceMatch`.
    pub(crate) fn resources(&self) -> plist::Dictionary {
        self.registry
            .get(self.resources)
            .map(|r| r.properties.clone())
            .unwrap_or_default()
    }

    /// The personalities that may drive `entry` now: those whose keys
    /// match, less the ones disabled (past their relaunch limit) and the
    /// ones it declined (their probe failed).
    fn candidates_for(&self, entry: &crate::registry::Entry) -> Vec<Candidate> {
        let resources = self.resources();
        self.catalogue
            .candidates(&entry.match_target(), &resources)
            .into_iter()
            .filter(|c| {
                !self.disabled.contains(&c.driver.key())
                    && !entry.declined.contains(&c.driver.key())
            })
            .collect()
    }
}

pub(crate) struct State {
    pub(crate) registry: Registry,
    pub(crate) catalogue: Catalogue,
    pub(crate) servers: HashMap<u64, ServerSlot>,
    next_server: u64,
    relaunches: HashMap<String, Crashes>,
    /// Personalities given up after crashes, by `Driver::key`.
    pub(crate) disabled: HashSet<String>,
    matching: HashSet<EntryId>,
    rematch: HashSet<EntryId>,
    pub(crate) root: EntryId,
    resources: EntryId,
    /// Devices the backends plugged, with where each came from.
    pub(crate) plugged: BTreeMap<EntryId, String>,
    /// Asynchronous requests in flight, by request number.
    requests: Requests,
    next_request: u64,
    shutting_down: bool,
    jobs: usize,
}

/// Who hears lifecycle events: the daemon's own parts, which keep up, or
/// a client, whose backlog is bounded.
enum Subscriber {
    Unbounded(mpsc::Sender<Event>),
    Bounded(mpsc::SyncSender<Event>),
}

pub(crate) struct Inner {
    pub(crate) config: Config,
    state: Mutex<State>,
    changed: Condvar,
    subscribers: Mutex<Vec<Subscriber>>,
    spawn_lock: Mutex<()>,
    pub(crate) workers: crate::workers::Workers,
    pub(crate) families: Families,
    /// The extension store, or why it did not open.
    pub(crate) store: Mutex<Result<crate::store::Store, String>>,
    /// Serializes system extension requests.
    pub(crate) sysext_lock: Mutex<()>,
    /// The app that asked for each extension waiting for approval: it may
    /// not approve its own request.
    pub(crate) requesters: Mutex<HashMap<String, PathBuf>>,
    /// What families see of the core; holds only a weak reference.
    pub(crate) system: System,
    /// How every dext is confined, resolved once.
    pub(crate) sandbox: crate::sandbox::Sandbox,
}

/// A running core. Dropping it does not stop it; call [`Core::shutdown`].
#[derive(Clone)]
pub struct Core {
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

impl Core {
    /// Builds the registry, registers `families`, loads the configured
    /// bundles and the enabled extensions, and starts matching.
    pub fn start(config: Config, families: Vec<Arc<dyn Family>>) -> Core {
        let families = Families::new(families);
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
        for id in [root, resources, user_resources] {
            if let Some(e) = registry.get_mut(id) {
                e.state.registered = true;
                e.state.active = true;
                e.state.matched = true;
            }
        }
        let state = State {
            registry,
            catalogue: Catalogue::new(families.matchers()),
            servers: HashMap::new(),
            next_server: 1,
            relaunches: HashMap::new(),
            disabled: HashSet::new(),
            matching: HashSet::new(),
            rematch: HashSet::new(),
            root,
            resources,
            plugged: BTreeMap::new(),
            requests: Requests::default(),
            next_request: 0,
            shutting_down: false,
            jobs: 0,
        };
        let bundles = config.bundles.clone();
        let store = crate::store::Store::open(&config.root.join("extensions"));
        if let Err(e) = &store {
            tracing::error!("sysext   the extension store does not open: {e}");
        }
        let sandbox = crate::sandbox::Sandbox::new(&config.sandbox);
        let inner = Arc::new_cyclic(|me: &Weak<Inner>| Inner {
            config,
            state: Mutex::new(state),
            changed: Condvar::new(),
            subscribers: Mutex::new(Vec::new()),
            spawn_lock: Mutex::new(()),
            sandbox,
            workers: Default::default(),
            families,
            store: Mutex::new(store),
            sysext_lock: Mutex::new(()),
            requesters: Mutex::default(),
            system: System::new(me.clone()),
        });
        let core = Core { inner };
        for path in bundles {
            if let Err(e) = core.load_bundle(&path) {
                tracing::error!("not loading {}: {e}", path.display());
            }
        }
        core.load_extensions();
        core.inner.schedule_match(user_resources);
        core
    }

    /// The administrator group, besides root.
    pub fn admin_group(&self) -> Option<&str> {
        self.inner.config.admin_group.as_deref()
    }

    /// What families and backends may ask of the core.
    pub fn system(&self) -> System {
        self.inner.system.clone()
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
        Ok(self.add_bundle_value(bundle))
    }

    /// Adds a bundle made in code (tests, benchmarks: no `Info.plist` on
    /// disk, no entitlements to check), then runs matching again
    /// everywhere. Returns the bundle identifier.
    pub fn add_bundle_value(&self, bundle: Bundle) -> String {
        let id = bundle.identifier.clone();
        let path = bundle.path.clone();
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
        for provider in registered {
            let bundle = id.clone();
            self.inner.spawn_job("matching", move |d| {
                d.yield_to(&bundle, provider);
                d.run_matching(provider);
            });
        }
        id
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

    /// Stops every driver running on `device` or above it and matches
    /// their providers again, as on a fresh plug (the same personalities
    /// may win again): what a recording that must hold the drivers' start
    /// asks for. Answers the drivers' names; they restart on the daemon's
    /// workers.
    pub fn restart_drivers(&self, device: EntryId) -> Result<Vec<String>, String> {
        let lowest: Vec<(EntryId, String)> = {
            let st = self.inner.lock();
            if st.registry.get(device).is_none() {
                return Err(format!(
                    "no registry entry {device:#x} (driverkit ioreg shows them)"
                ));
            }
            let hosted = |id: EntryId| st.registry.get(id).is_some_and(|e| e.hosting.is_some());
            st.registry
                .subtree_bottom_up(device)
                .into_iter()
                .filter(|id| hosted(*id))
                .filter_map(|id| {
                    // The lowest driver of its branch: nothing between it
                    // and the device is a driver (the rest stop with it).
                    let entry = st.registry.get(id)?;
                    let mut below = entry.provider;
                    while let Some(p) = below.filter(|p| *p != device) {
                        if hosted(p) {
                            return None;
                        }
                        below = st.registry.get(p)?.provider;
                    }
                    Some((id, entry.name.clone()))
                })
                .collect()
        };
        for (id, name) in &lowest {
            tracing::info!("restart  {name} [{id:#x}]");
            let id = *id;
            self.inner
                .spawn_job("restart", move |me| me.end(id, Offer::All));
        }
        Ok(lowest.into_iter().map(|(_, name)| name).collect())
    }

    /// Unplugs a device a backend plugged: its clients stop bottom-up,
    /// then it goes (and its family forgets it).
    pub fn unplug(&self, id: EntryId) -> Result<(), String> {
        let name = {
            let st = self.inner.lock();
            if !st.plugged.contains_key(&id) {
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

    /// The devices the backends plugged.
    pub fn devices(&self) -> Vec<DeviceInfo> {
        let st = self.inner.lock();
        st.plugged
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
        self.inner.subscribe()
    }

    /// Lifecycle events from now on, for someone outside the daemon: at
    /// most `backlog` wait for it, and one that falls further behind is
    /// cut off (its receiver ends), so that a client that never reads
    /// costs the daemon no more than that.
    pub fn subscribe_bounded(&self, backlog: usize) -> mpsc::Receiver<Event> {
        let (tx, rx) = mpsc::sync_channel(backlog);
        self.inner
            .subscribers
            .locked()
            .push(Subscriber::Bounded(tx));
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
            st = self.inner.changed.waited_timeout(st, left).0;
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
                .waited_timeout(st, Duration::from_millis(50))
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
        self.state.locked()
    }

    pub(crate) fn me(&self) -> Option<Arc<Inner>> {
        self.system.upgrade()
    }

    pub(crate) fn subscribe(&self) -> mpsc::Receiver<Event> {
        let (tx, rx) = mpsc::channel();
        self.subscribers.locked().push(Subscriber::Unbounded(tx));
        rx
    }

    fn emit(&self, event: Event) {
        self.subscribers.locked().retain(|s| match s {
            Subscriber::Unbounded(tx) => tx.send(event.clone()).is_ok(),
            Subscriber::Bounded(tx) => match tx.try_send(event.clone()) {
                Ok(()) => true,
                Err(mpsc::TrySendError::Full(_)) => {
                    tracing::warn!(
                        "control  a subscriber to lifecycle events fell too far behind; cut off"
                    );
                    false
                }
                Err(mpsc::TrySendError::Disconnected(_)) => false,
            },
        });
    }

    /// Runs `f` on a worker, counted in `jobs` for `wait_idle`.
    pub(crate) fn spawn_job(&self, name: &str, f: impl FnOnce(Arc<Inner>) + Send + 'static) {
        let Some(me) = self.me() else { return };
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

    /// A bundle just loaded: where one of its personalities outranks the
    /// driver running on `provider` in the same match category, that driver
    /// stops (bottom-up, as on unplug), so that matching gives the provider
    /// to the better one. IOKit would wait for the device's next plug; a
    /// developer who activates a driver for a device the system already
    /// drives (the default daemon's examples, at score 0) expects it to run
    /// now, as Windows installs a better-ranked driver on a device in use.
    fn yield_to(&self, bundle_id: &str, provider: EntryId) {
        let displaced: Vec<(EntryId, String, i64, String, i64)> = {
            let st = self.lock();
            let Some(entry) = st.registry.get(provider) else {
                return;
            };
            if !entry.state.registered || entry.state.terminating {
                return;
            }
            let mut candidates = st.candidates_for(entry);
            candidates.retain(|c| c.driver.bundle.identifier == bundle_id);
            by_category(candidates)
                .into_iter()
                .filter_map(|(category, group)| {
                    let best = group.first()?;
                    let running = entry.clients.iter().find_map(|c| {
                        let e = st.registry.get(*c)?;
                        (e.match_category.as_deref() == Some(category.as_str())
                            && !e.state.terminating)
                            .then_some(e)
                    })?;
                    let bundle = running
                        .properties
                        .get("CFBundleIdentifier")
                        .and_then(plist::Value::as_string);
                    let score = running
                        .properties
                        .get("IOProbeScore")
                        .and_then(plist::Value::as_signed_integer)
                        .unwrap_or(0);
                    (bundle != Some(bundle_id) && best.score > score).then(|| {
                        (
                            running.id,
                            running.name.clone(),
                            score,
                            best.driver.personality.user_class.clone(),
                            best.score,
                        )
                    })
                })
                .collect()
        };
        for (client, name, score, better, better_score) in displaced {
            tracing::info!(
                "yield    {name} [{client:#x}] (score {score}) stops for {better} (score {better_score}) from {bundle_id}"
            );
            if self.lock().registry.get(client).is_some() {
                self.terminate(client);
            }
        }
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
            let candidates = st.candidates_for(entry);
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
            for family in self.families.iter() {
                family.unclaimed(&self.system, provider);
            }
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
            let chain = self.families.chain(&p.io_class);
            let family = self.families.owner(&chain);
            let id = st.registry.insert_with_chain(
                &p.user_class,
                chain,
                properties.clone(),
                Some(provider),
                family,
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
        // create (init) and start travel together; see `Batch`.
        let began = Instant::now();
        let batch = Batch::new(&server);
        let lifecycle = io_user_server_interface::Proxy {
            caller: &batch,
            object: ObjectId::USER_SERVER,
            flags: 0,
        };
        let service = io_service_interface::Proxy {
            caller: &batch,
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
        let mut results = batch.finish().into_iter();
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
        self.families_forget(id);
        self.emit(Event::Removed { service: id });
        self.release_if_idle(server);
    }

    /// A process for `driver`: a shared one for `IOUserServerOneProcess`,
    /// otherwise a new one. The returned server is reserved once.
    fn server_for(&self, driver: &crate::matching::Driver) -> Result<Arc<UserServer>, String> {
        let p = &driver.personality;
        // Two attaches must not both start "the" shared process of a
        // server name; unshared processes start in parallel.
        let _spawning = p.one_process.then(|| self.spawn_lock.locked());
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
                bundle_path: &driver.bundle.path,
                sandbox: &self.sandbox,
                one_process: p.one_process,
                call_timeout: self.config.call_timeout,
                limits: crate::sandbox::Limits::asked(
                    &p.properties,
                    self.config.sandbox.max,
                    &p.server_name,
                ),
            },
            self.system.weak(),
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
        self.end(id, Offer::Others);
    }

    /// `terminate`, where `offer` says whether the provider's next match
    /// may pick the same personality again.
    fn end(&self, id: EntryId, offer: Offer) {
        // Marked first: from here nothing attaches below `id` (publishing
        // under a terminating entry fails), so the families hear of every
        // entry that will stop.
        let (order, provider) = {
            let mut st = self.lock();
            if let (Offer::Others, Some(e)) = (offer, st.registry.get(id).cloned()) {
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
        for family in self.families.iter() {
            family.departing(&self.system, &order);
        }
        let aborted: Vec<PendingRequest> = {
            let mut st = self.lock();
            st.requests.remove_for(&order)
        };
        for request in aborted {
            complete(&request, IOReturn::ABORTED, 0);
        }
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
            st.plugged.remove(&id);
        }
        self.families_forget(id);
        self.emit(Event::Removed { service: id });
    }

    /// Every family forgets `id`, which left the registry.
    fn families_forget(&self, id: EntryId) {
        for family in self.families.iter() {
            family.removed(&self.system, id);
        }
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
            self.lock().plugged.remove(&id);
            self.families_forget(id);
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
        let now = Instant::now();
        let (count, given_up) = {
            let mut st = self.lock();
            let count = {
                let c = st.relaunches.entry(key.to_owned()).or_insert(Crashes {
                    count: 0,
                    last: now,
                });
                // Quiet long enough: this crash is the first of a new series.
                if now.duration_since(c.last) > self.config.relaunch_quiet {
                    c.count = 0;
                }
                c.count += 1;
                c.last = now;
                c.count
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
        // What ioreg shows of it, on the provider it crashed on.
        let mut record = plist::Dictionary::new();
        record.insert("Crashes".into(), i64::from(count).into());
        record.insert("LastReason".into(), reason.into());
        record.insert("GivenUp".into(), given_up.into());
        if !given_up {
            record.insert(
                "NextRelaunchInMs".into(),
                (delay.as_millis().min(i64::MAX as u128) as i64).into(),
            );
        }
        if let Some(e) = self.lock().registry.get_mut(provider) {
            let mut crashes = e
                .properties
                .get("DriverKitCrashes")
                .and_then(plist::Value::as_dictionary)
                .cloned()
                .unwrap_or_default();
            crashes.insert(key.to_owned(), plist::Value::Dictionary(record));
            e.properties
                .insert("DriverKitCrashes".into(), plist::Value::Dictionary(crashes));
        }
        self.spawn_job("relaunch", move |d| {
            std::thread::sleep(delay);
            d.run_matching(provider);
        });
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
        self.process(server)?.memory(memory)
    }

    /// Hands `shm` to process `server`; the ID a call's answer names it by.
    pub(crate) fn give_region(
        &self,
        server: u64,
        shm: std::os::fd::BorrowedFd<'_>,
    ) -> IOResult<u64> {
        self.process(server)?.give_memory(shm)
    }

    /// Process `server`, out of the state lock.
    fn process(&self, server: u64) -> IOResult<Arc<UserServer>> {
        self.lock()
            .servers
            .get(&server)
            .map(|s| s.server.clone())
            .ok_or(IOReturn::OFFLINE)
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
        if st.requests.of_server(server.id) >= crate::user_server::limits::PENDING_REQUESTS {
            tracing::warn!(
                "limit    {server:?}: {} asynchronous requests already pending; refused",
                crate::user_server::limits::PENDING_REQUESTS
            );
            return Err(IOReturn::NO_RESOURCES);
        }
        st.next_request += 1;
        let request = st.next_request;
        st.requests.insert(
            request,
            PendingRequest {
                device,
                server,
                action,
            },
        );
        Ok(request)
    }

    /// Completes a tracked request, unless it was already aborted.
    pub(crate) fn finish_request(&self, request: u64, status: IOReturn, actual: u64) {
        let request = self.lock().requests.remove(request);
        if let Some(request) = request {
            complete(&request, status, actual);
        }
    }

    /// True while `request` waits for its completion.
    pub(crate) fn is_pending(&self, request: u64) -> bool {
        self.lock().requests.by_id.contains_key(&request)
    }

    pub(crate) fn schedule_terminate(&self, id: EntryId) {
        self.spawn_job("terminate", move |d| d.terminate(id));
    }
}

/// Runs the dext's completion action of `request` with `status`.
fn complete(request: &PendingRequest, status: IOReturn, actual: u64) {
    let server = io_user_server_interface::Proxy {
        caller: &*request.server,
        object: ObjectId::USER_SERVER,
        flags: 0,
    };
    if let Err(e) = server.complete_async(request.action, status.0, actual) {
        tracing::debug!(
            "completion of a request to {:?} not delivered: {e}",
            request.server
        );
    }
}

/// Records on `client`'s provider that `client`'s driver declined it.
/// Whom a terminated driver's provider is offered to next.
#[derive(Clone, Copy)]
enum Offer {
    /// Every personality but the departed one's (it stopped on its own or
    /// was displaced: offering it again would loop).
    Others,
    /// Every personality, the departed one's too (a restart).
    All,
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what it hears; while told a device departs, tries to
    /// attach a child below it (as a family's thread might, just then).
    #[derive(Default)]
    struct Eager {
        departing: Mutex<Vec<EntryId>>,
        removed: Mutex<Vec<EntryId>>,
        attached: Mutex<Option<EntryId>>,
    }

    impl Family for Eager {
        fn name(&self) -> &'static str {
            "eager"
        }
        fn classes(&self) -> Vec<(&'static str, Option<&'static str>)> {
            vec![("IOEagerDevice", Some("IOService"))]
        }
        fn kernel_call(
            &self,
            _call: &crate::Call<'_>,
            _method: driverkit_wire::MethodId,
            _args: &[u8],
        ) -> Option<IOResult<Vec<u8>>> {
            None
        }
        fn departing(&self, system: &System, entries: &[EntryId]) {
            self.departing.lock().unwrap().extend(entries);
            let mut attached = self.attached.lock().unwrap();
            if attached.is_none() {
                *attached = system
                    .publish(crate::system::Nub {
                        name: "LateChild",
                        class: "IOEagerDevice",
                        properties: Default::default(),
                        provider: entries[entries.len() - 1],
                        family: None,
                        plugged_from: None,
                        matched: true,
                    })
                    .ok();
            }
        }
        fn removed(&self, _system: &System, entry: EntryId) {
            self.removed.lock().unwrap().push(entry);
        }
    }

    /// Every entry that stops was first announced as departing to the
    /// families: nothing attaches below a device once its families heard
    /// it depart (a child attached in that window was stopped unheard).
    #[test]
    fn the_families_hear_of_every_entry_that_stops() {
        let root = tempfile::tempdir().unwrap();
        let eager = Arc::new(Eager::default());
        let core = Core::start(Config::new(root.path().to_owned()), vec![eager.clone()]);
        let system = core.system();
        let device = system
            .publish(crate::system::Nub {
                name: "EagerDevice",
                class: "IOEagerDevice",
                properties: Default::default(),
                provider: system.root().unwrap(),
                family: None,
                plugged_from: Some("test".into()),
                matched: true,
            })
            .unwrap();
        core.unplug(device).unwrap();
        let departing = eager.departing.lock().unwrap().clone();
        let removed = eager.removed.lock().unwrap().clone();
        assert!(removed.contains(&device));
        for r in &removed {
            assert!(
                departing.contains(r),
                "{r:#x} stopped without its family hearing it depart (heard {departing:x?})"
            );
        }
        core.shutdown();
    }

    /// A family's handle outliving the core gets no root to hang a bus on
    /// (it once got entry 0, and a bus hung there).
    #[test]
    fn a_system_outliving_its_core_has_no_root() {
        let root = tempfile::tempdir().unwrap();
        let core = Core::start(Config::new(root.path().to_owned()), Vec::new());
        assert!(core.system().root().is_ok_and(|r| r != 0));
        let orphan = System::orphan();
        assert_eq!(orphan.root(), Err(IOReturn::OFFLINE));
        assert!(orphan
            .publish(crate::system::Nub {
                name: "Bus",
                class: "IOBus",
                properties: Default::default(),
                provider: 0,
                family: None,
                plugged_from: None,
                matched: true,
            })
            .is_err());
    }

    #[test]
    fn a_bounded_subscriber_that_falls_behind_is_cut_off_and_the_others_go_on() {
        let root = tempfile::tempdir().unwrap();
        let core = Core::start(Config::new(root.path().to_owned()), Vec::new());
        let slow = core.subscribe_bounded(2);
        let inner = core.subscribe();
        for service in 0..3 {
            core.inner.emit(Event::Removed { service });
        }
        // Two waited for it; the third cut it off.
        assert_eq!(slow.try_iter().count(), 2);
        assert!(matches!(
            slow.try_recv(),
            Err(mpsc::TryRecvError::Disconnected)
        ));
        assert_eq!(inner.try_iter().count(), 3);
    }
}

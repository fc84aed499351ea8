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
use crate::user_server::{Batch, Launch, ServerId, UserServer};
use crate::workers::Workers;
use crate::System;

/// The most lifecycle workers at once. Each holds a thread while a dext
/// starts or stops (a few milliseconds); past this a plug waits its turn.
/// With the channel pool's threads and the daemon's own, the daemon stays
/// well within 64 threads at a thousand dexts whatever the load.
const LIFECYCLE_WORKERS: usize = 16;

mod attach;
mod crash;
mod requests;
mod terminate;

use crash::Crashes;
pub use requests::RequestId;
use requests::{complete, PendingRequest, Requests};
use terminate::{decline, Offer};
#[cfg(test)]
mod tests;

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
    pub(crate) servers: HashMap<ServerId, ServerSlot>,
    next_server: ServerId,
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
    /// Lifecycle jobs (matching, starts, terminations, relaunches):
    /// bounded, as none waits for another (only for dexts, each within the
    /// call timeout), so a burst of plugs waits its turn instead of growing
    /// the daemon.
    pub(crate) workers: Workers,
    /// Work that waits on a device or on one dext's process for as long as
    /// that takes (transfers, a dext's calls on its socket, reaping an
    /// exited dext): a thread each while it waits, so that one slow or
    /// hostile party never holds up the lifecycle of everyone else.
    pub(crate) io_workers: Workers,
    pub(crate) families: Families,
    /// The extension store, or why it did not open.
    pub(crate) store: Mutex<Result<crate::store::Store, crate::store::StoreError>>,
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

/// Why the core refused a request about a bundle or a device.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// `unplug` of an entry no backend plugged.
    #[error("no plugged device with id {0:#x} (see `driverkit device list`)")]
    NotPlugged(EntryId),
    /// A request about an entry the registry does not hold.
    #[error("no registry entry {0:#x} (driverkit ioreg shows them)")]
    NoEntry(EntryId),
    /// A bundle outside an app's `Contents/Library/SystemExtensions`.
    #[error("{0}")]
    NotInAnApp(String),
    /// `load PATH` outside developer mode.
    #[error(
        "load needs developer mode: a bundle loaded from a path ({}) skips activation, approval and signature checks; an administrator turns it on with `driverkit sysext developer on`, or ship the dext in an app and use `driverkit sysext activate`",
        .0.display()
    )]
    NeedsDeveloperMode(PathBuf),
    /// A device whose bus left the registry before the device was published.
    #[error("{from}: its bus is gone ({status})")]
    BusGone { from: String, status: IOReturn },
    /// A dext process that could not be started.
    #[error("{}: {error}", executable.display())]
    Launch {
        executable: PathBuf,
        #[source]
        error: std::io::Error,
    },
    /// A bundle that does not load or whose entitlements do not hold.
    #[error(transparent)]
    Bundle(#[from] driverkit_bundle::BundleError),
}

impl From<CoreError> for String {
    fn from(e: CoreError) -> String {
        e.to_string()
    }
}

/// A running core. Dropping it does not stop it; call [`Core::shutdown`].
#[derive(Clone)]
pub struct Core {
    pub(crate) inner: Arc<Inner>,
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
            next_server: ServerId::FIRST,
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
            workers: Workers::bounded(LIFECYCLE_WORKERS),
            io_workers: Workers::elastic(),
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
    pub fn load_bundle(&self, path: &std::path::Path) -> Result<String, CoreError> {
        driverkit_bundle::location::containing_app(path).map_err(CoreError::NotInAnApp)?;
        self.add_bundle(path)
    }

    /// Loads a bundle whose place was checked already (the extension
    /// store's copies): validation and entitlements, then matching.
    pub(crate) fn add_bundle(&self, path: &std::path::Path) -> Result<String, CoreError> {
        let bundle = Bundle::load(path)?;
        bundle.check_entitlements()?;
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
    pub fn restart_drivers(&self, device: EntryId) -> Result<Vec<String>, CoreError> {
        let lowest: Vec<(EntryId, String)> = {
            let st = self.inner.lock();
            if st.registry.get(device).is_none() {
                return Err(CoreError::NoEntry(device));
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
    pub fn unplug(&self, id: EntryId) -> Result<(), CoreError> {
        let name = {
            let st = self.inner.lock();
            if !st.plugged.contains_key(&id) {
                return Err(CoreError::NotPlugged(id));
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
        if let Some(job) = self.counted_job(name, f) {
            self.workers.run(job);
        }
    }

    /// Runs `f` on a worker once `delay` has passed (holding none
    /// meanwhile), counted in `jobs` for `wait_idle` from now on.
    pub(crate) fn spawn_job_after(
        &self,
        delay: Duration,
        name: &str,
        f: impl FnOnce(Arc<Inner>) + Send + 'static,
    ) {
        if let Some(job) = self.counted_job(name, f) {
            self.workers.run_after(delay, job);
        }
    }

    /// `f` as a job `wait_idle` waits for, counted from now on.
    fn counted_job(
        &self,
        name: &str,
        f: impl FnOnce(Arc<Inner>) + Send + 'static,
    ) -> Option<impl FnOnce() + Send + 'static> {
        let me = self.me()?;
        me.lock().jobs += 1;
        let done = me.clone();
        let name = name.to_owned();
        Some(move || {
            tracing::trace!("job {name}");
            f(me);
            let mut st = done.lock();
            st.jobs -= 1;
            drop(st);
            done.changed.notify_all();
        })
    }
}

//! [`System`]: the narrow interface the core gives families and backends.
//!
//! Everything a family or a backend may do to the core goes through here:
//! publish a nub (with its class and properties) and have it matched, read
//! and set properties, find the caller's client of a provider, map a dext's
//! registered memory, track an asynchronous request and complete it through
//! its `OSAction`, terminate a service, run work on the core's workers, and
//! watch lifecycle events. The core's lock and state stay inside the core:
//! each method takes the lock for the length of one registry operation and
//! never calls out while holding it.
//!
//! A `System` holds the core weakly, so a family can keep one in a thread
//! of its own without keeping the core alive; once the core is gone, every
//! method answers as for a missing entry (`None`, `false`,
//! `kIOReturnOffline`).

use std::sync::{mpsc, Arc, Weak};

use driverkit_wire::shm::SharedMemory;
use driverkit_wire::{IOResult, IOReturn};

use crate::family::Family;
use crate::lifecycle::RequestId;
use crate::lifecycle::{CoreError, Event, Inner};
use crate::registry::EntryId;
use crate::user_server::ServerId;

/// What families and backends may ask of the core. Cloning is cheap.
#[derive(Clone)]
pub struct System {
    inner: Weak<Inner>,
}

/// A nub to publish: a device, an interface, a bus.
pub struct Nub<'a> {
    /// The registry name (`IOUSBHostInterface@0`, `VirtualSensor`).
    pub name: &'a str,
    /// Its class; the registry derives the chain.
    pub class: &'a str,
    pub properties: plist::Dictionary,
    /// The entry it hangs under ([`System::root`] for a bus).
    pub provider: EntryId,
    /// The family that serves calls to it. `None`: the family of its class.
    pub family: Option<&'a dyn Family>,
    /// Where a plugged device came from (a file, `usbip://...`): it is then
    /// listed by `driverkit device list` and can be unplugged. `None` for
    /// nubs a family makes below a device.
    pub plugged_from: Option<String>,
    /// True for a nub no driver should match (it is matched already: the
    /// system's own service, a bus).
    pub matched: bool,
}

/// A device plugged in from outside the registry (a device file, a
/// built-in, sysfs, a USB/IP server), as a family publishes it with
/// [`System::plug_device`].
pub struct Plugged<'a> {
    /// The registry name.
    pub name: &'a str,
    pub properties: plist::Dictionary,
    /// The bus entry it hangs under.
    pub bus: EntryId,
    /// Where it came from (a file path, `builtin:NAME`, `linux:0000:00:04.0`),
    /// for `driverkit device list`.
    pub source: &'a str,
}

impl System {
    pub(crate) fn new(inner: Weak<Inner>) -> System {
        System { inner }
    }

    /// A system of no core: it finds no entries, drivers or regions, and
    /// what is set on it goes nowhere. For families' unit tests of what
    /// they do without a registry (a serial node's byte path).
    pub fn detached() -> System {
        System { inner: Weak::new() }
    }

    /// A handle whose core is gone, as a family's is when it outlives
    /// the daemon's core.
    #[cfg(test)]
    pub(crate) fn orphan() -> System {
        System { inner: Weak::new() }
    }

    pub(crate) fn upgrade(&self) -> Option<Arc<Inner>> {
        self.inner.upgrade()
    }

    pub(crate) fn weak(&self) -> Weak<Inner> {
        self.inner.clone()
    }

    /// The root of the registry, where buses hang; `kIOReturnOffline`
    /// once the core is gone (no entry 0 to hang a bus on).
    pub fn root(&self) -> IOResult<EntryId> {
        self.upgrade()
            .map(|d| d.lock().root)
            .ok_or(IOReturn::OFFLINE)
    }

    /// Adds a nub to the registry, registered and active. It is not matched
    /// until [`System::match_nub`]: a family first sets up what its drivers
    /// will need. Fails when the provider is gone or going.
    pub fn publish(&self, nub: Nub<'_>) -> IOResult<EntryId> {
        let d = self.upgrade().ok_or(IOReturn::OFFLINE)?;
        let chain = d.families.chain(nub.class);
        let family = match nub.family {
            Some(f) => Some(d.families.id_of(f).ok_or(IOReturn::BAD_ARGUMENT)?),
            None => d.families.owner(&chain),
        };
        let mut st = d.lock();
        if st
            .registry
            .get(nub.provider)
            .is_none_or(|p| p.state.terminating)
        {
            return Err(IOReturn::NO_DEVICE);
        }
        let id = st.registry.insert_with_chain(
            nub.name,
            chain,
            nub.properties,
            Some(nub.provider),
            family,
        );
        if let Some(e) = st.registry.get_mut(id) {
            e.state.registered = true;
            e.state.active = true;
            e.state.matched = nub.matched;
        }
        if let Some(source) = nub.plugged_from {
            st.plugged.insert(id, source);
        }
        Ok(id)
    }

    /// Publishes a device a backend plugged (`nub.plugged_from` names where
    /// it came from), lets its family keep its handle (`keep`, before any
    /// driver can be offered the device), logs it and runs matching.
    pub fn plug(&self, nub: Nub<'_>, keep: impl FnOnce(EntryId)) -> Result<EntryId, CoreError> {
        let (name, class) = (nub.name.to_owned(), nub.class.to_owned());
        let source = nub.plugged_from.clone().unwrap_or_default();
        let id = self.publish(nub).map_err(|status| CoreError::BusGone {
            from: source.clone(),
            status,
        })?;
        keep(id);
        tracing::info!("plug     {name} [{id:#x}] ({class}, from {source})");
        self.match_nub(id);
        Ok(id)
    }

    /// [`System::plug`] for a device of `family`'s class `class`: listed
    /// by `driverkit device list`, and unpluggable.
    pub fn plug_device(
        &self,
        family: &dyn Family,
        class: &str,
        device: Plugged<'_>,
        keep: impl FnOnce(EntryId),
    ) -> Result<EntryId, CoreError> {
        let nub = Nub {
            name: device.name,
            class,
            properties: device.properties,
            provider: device.bus,
            family: Some(family),
            plugged_from: Some(device.source.to_owned()),
            matched: false,
        };
        self.plug(nub, keep)
    }

    /// Takes a nub out of matching (`false`: no driver is offered it, as
    /// while it is lent to another host) or puts it back (`true`; then
    /// [`System::match_nub`]).
    pub fn set_registered(&self, id: EntryId, registered: bool) {
        if let Some(d) = self.upgrade() {
            if let Some(e) = d.lock().registry.get_mut(id) {
                e.state.registered = registered;
            }
        }
    }

    /// Runs matching on a published nub.
    pub fn match_nub(&self, id: EntryId) {
        if let Some(d) = self.upgrade() {
            d.schedule_match(id);
        }
    }

    /// The entry's name.
    pub fn name(&self, id: EntryId) -> Option<String> {
        self.with_entry(id, |e| e.name.clone())
    }

    /// The entry's properties, copied.
    pub fn properties(&self, id: EntryId) -> Option<plist::Dictionary> {
        self.with_entry(id, |e| e.properties.clone())
    }

    /// One property of the entry, copied.
    pub fn property(&self, id: EntryId, key: &str) -> Option<plist::Value> {
        self.with_entry(id, |e| e.properties.get(key).cloned())?
    }

    /// Sets one property of the entry.
    pub fn set_property(&self, id: EntryId, key: &str, value: plist::Value) {
        if let Some(d) = self.upgrade() {
            if let Some(e) = d.lock().registry.get_mut(id) {
                e.properties.insert(key.to_owned(), value);
            }
        }
    }

    /// Removes one property of the entry.
    pub fn remove_property(&self, id: EntryId, key: &str) {
        if let Some(d) = self.upgrade() {
            if let Some(e) = d.lock().registry.get_mut(id) {
                e.properties.remove(key);
            }
        }
    }

    /// The entry's provider.
    pub fn provider(&self, id: EntryId) -> Option<EntryId> {
        self.with_entry(id, |e| e.provider)?
    }

    /// True when the entry is an instance of `class` or a subclass.
    pub fn is_kind_of(&self, id: EntryId, class: &str) -> bool {
        self.with_entry(id, |e| e.is_kind_of(class))
            .unwrap_or(false)
    }

    /// True when the entry is there, not terminating, and has no client:
    /// free for a family to attach the system's own service.
    pub fn is_unclaimed(&self, id: EntryId) -> bool {
        self.with_entry(id, |e| e.clients.is_empty() && !e.state.terminating)
            .unwrap_or(false)
    }

    /// The entry's clients.
    pub fn clients(&self, id: EntryId) -> Vec<EntryId> {
        self.with_entry(id, |e| e.clients.clone())
            .unwrap_or_default()
    }

    /// A service a dext hosts at `id` or anywhere above it, with its name:
    /// whether a driver holds the device.
    pub fn driver_above(&self, id: EntryId) -> Option<(EntryId, String)> {
        let d = self.upgrade()?;
        let st = d.lock();
        st.registry
            .subtree_bottom_up(id)
            .into_iter()
            .filter_map(|e| st.registry.get(e))
            .find(|e| e.hosting.is_some())
            .map(|e| (e.id, e.name.clone()))
    }

    /// The service of process `server` that is a client of `id`: who in
    /// the calling dext uses this provider.
    pub fn client_in(&self, id: EntryId, server: ServerId) -> Option<EntryId> {
        let d = self.upgrade()?;
        let st = d.lock();
        let e = st.registry.get(id)?;
        e.clients.iter().copied().find(|c| {
            st.registry
                .get(*c)
                .and_then(|c| c.hosting.as_ref())
                .is_some_and(|h| h.server == server)
        })
    }

    /// The process hosting service `id`, to call the driver's own methods
    /// (SerialDriverKit's `HwProgramUART`, asked for by the tty): the
    /// family decides when, the driver answers on its queue. `None` when no
    /// running process hosts it. A driver that does not answer within the
    /// call timeout is killed as hung, as for any call of the system.
    pub fn driver(&self, id: EntryId) -> Option<DriverCaller> {
        self.upgrade()?.server_of(id).map(DriverCaller)
    }

    /// The region `server` registered as `memory` (waiting briefly for it,
    /// as the registration may still be on its way).
    pub fn region(&self, server: ServerId, memory: u64) -> IOResult<Arc<SharedMemory>> {
        self.upgrade()
            .ok_or(IOReturn::OFFLINE)?
            .region(server, memory)
    }

    /// Hands memory of the system's to process `server` (a region a
    /// driver works in directly, or a device's BAR), as the descriptor the
    /// dext maps; the returned ID is what a call's answer names it by.
    pub fn give_region(&self, server: ServerId, shm: std::os::fd::BorrowedFd<'_>) -> IOResult<u64> {
        self.upgrade()
            .ok_or(IOReturn::OFFLINE)?
            .give_region(server, shm)
    }

    /// Records an asynchronous request of `server` to `device`, to complete
    /// through the dext's action `action`: by [`System::finish_request`],
    /// or with `kIOReturnAborted` when the device leaves first (before any
    /// driver's Stop).
    pub fn track_request(
        &self,
        server: ServerId,
        device: EntryId,
        action: u64,
    ) -> IOResult<RequestId> {
        self.upgrade()
            .ok_or(IOReturn::OFFLINE)?
            .track_request(server, device, action)
    }

    /// Completes a tracked request, unless it was aborted already.
    pub fn finish_request(&self, request: RequestId, status: IOReturn, actual: u64) {
        if let Some(d) = self.upgrade() {
            d.finish_request(request, status, actual);
        }
    }

    /// True while a tracked request waits for its completion.
    pub fn is_pending(&self, request: RequestId) -> bool {
        self.upgrade().is_some_and(|d| d.is_pending(request))
    }

    /// Terminates `id` and everything above it, bottom-up, and returns when
    /// they have stopped.
    pub fn terminate(&self, id: EntryId) {
        if let Some(d) = self.upgrade() {
            d.terminate(id);
        }
    }

    /// Terminates `id` on a worker: for a caller that must not wait (a
    /// dext's call, a device's reader thread).
    pub fn schedule_terminate(&self, id: EntryId) {
        if let Some(d) = self.upgrade() {
            d.schedule_terminate(id);
        }
    }

    /// Runs a lifecycle job on a worker; `wait_idle` waits for it.
    pub fn run_job(&self, name: &str, job: impl FnOnce() + Send + 'static) {
        if let Some(d) = self.upgrade() {
            d.spawn_job(name, move |_| job());
        }
    }

    /// Runs I/O on a worker (a transfer that may wait as long as its
    /// device): `wait_idle` does not wait for it.
    pub fn run_io(&self, job: impl FnOnce() + Send + 'static) {
        if let Some(d) = self.upgrade() {
            d.io_workers.run(job);
        }
    }

    /// Lifecycle events from now on (services started and removed).
    pub fn subscribe(&self) -> Option<mpsc::Receiver<Event>> {
        Some(self.upgrade()?.subscribe())
    }

    fn with_entry<T>(
        &self,
        id: EntryId,
        f: impl FnOnce(&crate::registry::Entry) -> T,
    ) -> Option<T> {
        let d = self.upgrade()?;
        let st = d.lock();
        st.registry.get(id).map(f)
    }
}

/// Calls into the dext process hosting a service ([`System::driver`]): a
/// `Caller` for the wire protocol's typed proxies.
pub struct DriverCaller(Arc<crate::user_server::UserServer>);

impl driverkit_wire::Caller for DriverCaller {
    fn call(
        &self,
        object: driverkit_wire::ObjectId,
        method: driverkit_wire::MethodId,
        flags: u8,
        args: &[u8],
    ) -> IOResult<Vec<u8>> {
        self.0.call(object, method, flags, args)
    }
}

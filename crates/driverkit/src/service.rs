//! `IOService`: what every driver overrides and what it may ask the system.

use driverkit_wire::interfaces::{io_service_interface, IOServiceInterface};
use driverkit_wire::{IOResult, IOReturn, MethodId, ObjectId, FLAG_SUPERDISPATCH};

use crate::runtime::{ClassDispatch, Service, SystemCaller};

/// A service in the registry, seen from a dext: your provider, or a
/// superclass to name in `#[driverkit::service(superclass = IOService)]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IOService {
    id: ObjectId,
}

impl IOService {
    pub(crate) fn from_id(id: ObjectId) -> IOService {
        IOService { id }
    }

    /// The service's registry entry ID.
    pub fn registry_entry_id(&self) -> u64 {
        self.id.0
    }
}

fn proxy(id: ObjectId, flags: u8) -> io_service_interface::Proxy<'static, SystemCaller> {
    io_service_interface::Proxy {
        caller: &SystemCaller,
        object: id,
        flags,
    }
}

/// The methods of `IOService` a driver implements (DriverKit's `IMPL`).
/// Each has the system's behaviour by default, so a driver overrides only
/// what it needs.
///
/// ```text
/// impl IOServiceImpl for NullDriver {
///     fn init(&self) -> IOResult<NullDriverIvars> { Ok(NullDriverIvars::default()) }
///     fn start(&self, provider: &IOService) -> IOResult<()> {
///         self.super_start(provider)?;   // SUPERDISPATCH: runs in the system
///         self.register_service()
///     }
/// }
/// ```
pub trait IOServiceImpl: Service {
    /// Allocates the ivars. Keep it short: no I/O, no calls into the system.
    fn init(&self) -> IOResult<Self::Ivars>;

    /// Starts the service: call `super_start` first, set up, then
    /// `register_service`. An error hands the provider to the next candidate.
    fn start(&self, provider: &IOService) -> IOResult<()> {
        self.super_start(provider)?;
        self.register_service()
    }

    /// Stops the service: cancel outstanding work, wait for it, then call
    /// `super_stop` last. Do not release the ivars here; `free` comes next.
    fn stop(&self, provider: &IOService) -> IOResult<()> {
        self.super_stop(provider)
    }

    /// The last call before the service and its ivars are released.
    fn free(&self) {}

    /// One of this service's clients lived in a process that crashed.
    fn client_crashed(&self, client: &IOService, options: u64) -> IOResult<()> {
        let _ = (client, options);
        Ok(())
    }

    /// The system changes the power state (Off 0, On 1, Low 2).
    fn set_power_state(&self, power_flags: u32) -> IOResult<()> {
        self.super_set_power_state(power_flags)
    }

    /// `NewUserClient(type)`: an app opens this service. Answer the key of
    /// the dictionary in this service's personality that describes the
    /// user client to create (`IOClass` = `IOUserUserClient`, `IOUserClass`
    /// = one of this dext's classes); the system creates and starts it.
    /// By default every type gets `UserClientProperties`; an error refuses
    /// the open.
    fn new_user_client(&self, kind: u32) -> IOResult<String> {
        let _ = kind;
        Ok(DEFAULT_USER_CLIENT_PROPERTIES.into())
    }
}

/// The personality key of the user client a service creates by default.
pub const DEFAULT_USER_CLIENT_PROPERTIES: &str = "UserClientProperties";

/// The superclass implementations, which run in the system
/// (DriverKit's `SUPERDISPATCH`).
pub trait IOServiceSuper: Service {
    /// `Start(provider, SUPERDISPATCH)`.
    fn super_start(&self, provider: &IOService) -> IOResult<()> {
        proxy(self.base_id(), FLAG_SUPERDISPATCH).start(provider.id)
    }
    /// `Stop(provider, SUPERDISPATCH)`.
    fn super_stop(&self, provider: &IOService) -> IOResult<()> {
        proxy(self.base_id(), FLAG_SUPERDISPATCH).stop(provider.id)
    }
    /// `SetPowerState(flags, SUPERDISPATCH)`.
    fn super_set_power_state(&self, power_flags: u32) -> IOResult<()> {
        proxy(self.base_id(), FLAG_SUPERDISPATCH).set_power_state(power_flags)
    }
    #[doc(hidden)]
    fn base_id(&self) -> ObjectId {
        ObjectId(self.registry_entry_id())
    }
}

impl<S: Service> IOServiceSuper for S {}

/// What any service may ask the system about itself, and a dext may ask
/// about its provider (DriverKit's `KERNEL` methods).
pub trait IOServiceApi {
    #[doc(hidden)]
    fn target_id(&self) -> ObjectId;

    /// Publishes the service so that drivers can match against it.
    fn register_service(&self) -> IOResult<()> {
        proxy(self.target_id(), 0).register_service()
    }
    /// Merges `properties` into the registry entry.
    fn set_properties(&self, properties: plist::Dictionary) -> IOResult<()> {
        proxy(self.target_id(), 0).set_properties(properties)
    }
    /// Sets one registry property.
    fn set_property(&self, key: &str, value: impl Into<plist::Value>) -> IOResult<()>
    where
        Self: Sized,
    {
        let mut d = plist::Dictionary::new();
        d.insert(key.to_owned(), value.into());
        self.set_properties(d)
    }
    /// All registry properties.
    fn copy_properties(&self) -> IOResult<plist::Dictionary> {
        proxy(self.target_id(), 0).copy_properties()
    }
    /// One registry property.
    fn copy_property(&self, key: &str) -> IOResult<Option<plist::Value>> {
        proxy(self.target_id(), 0).copy_property(key.to_owned())
    }
    /// One registry property that is a number (an `OSNumber`'s
    /// `unsigned64BitValue`): `None` when it is missing or not an unsigned
    /// integer.
    fn copy_number_property(&self, key: &str) -> IOResult<Option<u64>> {
        Ok(self
            .copy_property(key)?
            .and_then(|v| v.as_unsigned_integer()))
    }
    /// Removes one registry property.
    fn remove_property(&self, key: &str) -> IOResult<()> {
        proxy(self.target_id(), 0).remove_property(key.to_owned())
    }
    /// Renames the registry entry.
    fn set_name(&self, name: &str) -> IOResult<()> {
        proxy(self.target_id(), 0).set_name(name.to_owned())
    }
    /// Asks the system to terminate the service; `stop` follows.
    fn terminate(&self) -> IOResult<()> {
        proxy(self.target_id(), 0).terminate(0)
    }

    /// Asks this device (your provider) to fill `length` bytes of `buffer`
    /// in place. `completion` (type `IOService::CompleteAsync`) runs on its
    /// queue when the data is there, or with `kIOReturnAborted` if the
    /// device goes away first.
    fn read_async(
        &self,
        buffer: &crate::memory::IOBufferMemoryDescriptor,
        length: u64,
        completion: &crate::OSAction,
    ) -> IOResult<()> {
        crate::runtime::submit_async(buffer, completion, |memory, action| {
            proxy(self.target_id(), 0).read_async(memory, length, action)
        })
    }
}

impl IOServiceApi for IOService {
    fn target_id(&self) -> ObjectId {
        self.id
    }
}

impl<S: Service> IOServiceApi for S {
    fn target_id(&self) -> ObjectId {
        ObjectId(self.registry_entry_id())
    }
}

/// Serves the system's calls to a dext's `IOService` methods.
struct Local<'a, S>(&'a S);

impl<S: IOServiceImpl> IOServiceInterface for Local<'_, S> {
    fn start(&self, provider: ObjectId) -> IOResult<()> {
        IOServiceImpl::start(self.0, &IOService::from_id(provider))
    }
    fn stop(&self, provider: ObjectId) -> IOResult<()> {
        IOServiceImpl::stop(self.0, &IOService::from_id(provider))
    }
    fn client_crashed(&self, client: ObjectId, options: u64) -> IOResult<()> {
        IOServiceImpl::client_crashed(self.0, &IOService::from_id(client), options)
    }
    fn set_power_state(&self, power_flags: u32) -> IOResult<()> {
        IOServiceImpl::set_power_state(self.0, power_flags)
    }
    fn new_user_client(&self, kind: u32) -> IOResult<String> {
        IOServiceImpl::new_user_client(self.0, kind)
    }
}

impl<S: IOServiceImpl> ClassDispatch<S> for IOService {
    fn dispatch(service: &S, method: MethodId, args: &[u8]) -> Option<IOResult<Vec<u8>>> {
        io_service_interface::dispatch(&Local(service), method, args)
    }
}

/// What a driver holds from its `start` to its `stop` (its pipes, its
/// buffers): absent before and after, when a call that needs it answers
/// `kIOReturnNotReady` instead of reaching for a device it does not have.
pub struct WhileStarted<T>(std::sync::Mutex<Option<T>>);

impl<T> Default for WhileStarted<T> {
    fn default() -> Self {
        WhileStarted(std::sync::Mutex::new(None))
    }
}

impl<T> WhileStarted<T> {
    /// Holds `value` (in `start`).
    pub fn set(&self, value: T) {
        *driverkit_wire::sync::Locked::locked(&self.0) = Some(value);
    }

    /// Lets it go (in `stop`), for the driver to end what it holds.
    pub fn take(&self) -> Option<T> {
        driverkit_wire::sync::Locked::locked(&self.0).take()
    }

    /// Runs `f` with what is held; `kIOReturnNotReady` when nothing is.
    /// The hold lasts for `f`: `stop` waits for a call in progress.
    pub fn with<R>(&self, f: impl FnOnce(&T) -> IOResult<R>) -> IOResult<R> {
        let held = driverkit_wire::sync::Locked::locked(&self.0);
        f(held.as_ref().ok_or(IOReturn::NOT_READY)?)
    }
}

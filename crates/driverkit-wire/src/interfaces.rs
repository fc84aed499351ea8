//! The remote methods of the system classes, declared once for both sides.
//!
//! `#[local]` methods run in the dext and are called by the system (or, with
//! `FLAG_SUPERDISPATCH`, run the system's superclass implementation on the
//! dext's behalf). `#[kernel]` methods run in the daemon.

use crate::{IOResult, ObjectId};
use driverkit_macros::interface;

/// The user server: the dext process itself, object 0. The daemon creates
/// and frees service instances through it.
#[interface(class = "IOUserServer")]
pub trait IOUserServerInterface {
    /// Instantiates `user_class` as service `object` and runs its `init`,
    /// which allocates the ivars.
    #[local]
    fn create(
        &self,
        object: ObjectId,
        user_class: String,
        provider: ObjectId,
        properties: plist::Dictionary,
    ) -> IOResult<()>;
    /// Runs `free` on `object` and releases it and its ivars.
    #[local]
    fn free(&self, object: ObjectId) -> IOResult<()>;
    /// Asks the process to exit once it has replied.
    #[local]
    fn exit(&self) -> IOResult<()>;
    /// Completes an asynchronous request: runs the action the dext
    /// registered as `action` with the request's status and byte count.
    #[local]
    fn complete_async(&self, action: u64, status: u32, actual: u64) -> IOResult<()>;
}

/// `IOService`, the base class of every service.
#[interface(class = "IOService")]
pub trait IOServiceInterface {
    /// Starts the service on `provider`. The dext calls super first.
    #[local]
    fn start(&self, provider: ObjectId) -> IOResult<()>;
    /// Stops the service. The dext cancels its work, then calls super last.
    #[local]
    fn stop(&self, provider: ObjectId) -> IOResult<()>;
    /// Tells a provider that one of its clients' processes crashed.
    #[local]
    fn client_crashed(&self, client: ObjectId, options: u64) -> IOResult<()>;
    /// Power state changes (Off 0, On 1, Low 2).
    #[local]
    fn set_power_state(&self, power_flags: u32) -> IOResult<()>;

    /// Publishes the service so that matching runs against it.
    #[kernel]
    fn register_service(&self) -> IOResult<()>;
    /// Merges `properties` into the service's registry properties.
    #[kernel]
    fn set_properties(&self, properties: plist::Dictionary) -> IOResult<()>;
    /// All registry properties of the service.
    #[kernel]
    fn copy_properties(&self) -> IOResult<plist::Dictionary>;
    /// One registry property, `None` when absent.
    #[kernel]
    fn copy_property(&self, key: String) -> IOResult<Option<plist::Value>>;
    /// Removes one registry property.
    #[kernel]
    fn remove_property(&self, key: String) -> IOResult<()>;
    /// Renames the service in the registry.
    #[kernel]
    fn set_name(&self, name: String) -> IOResult<()>;
    /// The registry entry ID of the service.
    #[kernel]
    fn get_registry_entry_id(&self) -> IOResult<u64>;
    /// Starts asynchronous termination, which ends in `stop`.
    #[kernel]
    fn terminate(&self, options: u64) -> IOResult<()>;
    /// Delivers interrupt `index` of this (provider) service into the
    /// caller's shared-memory region `memory` (see `interrupt` for the
    /// layout): the counter goes up and the doorbell rings per interrupt.
    #[kernel]
    fn register_interrupt(&self, index: u32, memory: u64) -> IOResult<()>;
    /// Asks this (provider) device to fill `length` bytes of the caller's
    /// region `memory` in place; completes later with `complete_async` on
    /// the caller's user server, or with `kIOReturnAborted` if the device goes.
    #[kernel]
    fn read_async(&self, memory: u64, length: u64, action: u64) -> IOResult<()>;
}

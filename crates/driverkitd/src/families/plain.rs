//! Plain devices: providers with no family protocol of their own (a
//! sensor, a widget), any system class, described by their properties.
//! A dext reaches them through `IOService` alone: it reads their
//! properties, subscribes to their interrupt lines
//! (`IOService::RegisterInterrupt`, an `IOInterruptDispatchSource`) and
//! asks them for data (`IOService::ReadAsync`, completed through an
//! `OSAction`).
//!
//! What a device does is its backend's: the backend hands a [`PlainDevice`]
//! to [`PlainFamily::plug`]; the family publishes the nub and routes the
//! dext's requests to it, tracked by the core so that an unplug completes
//! them with `kIOReturnAborted` before any driver's Stop.

use driverkit_wire::sync::Locked;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use driverkit_core::{Call, EntryId, Family, Interrupt, Plugged, Read, System};
use driverkit_wire::shm::SharedMemory;
use driverkit_wire::{IOResult, IOReturn};

/// What a plain device does; its backend implements it.
pub trait PlainDevice: Send + Sync {
    /// Delivers interrupt `index` into `region` from now on.
    fn subscribe_interrupt(&self, index: u32, region: &Arc<SharedMemory>) -> IOResult<()>;

    /// What a read of `length` bytes from the device at `entry` gives, and
    /// how long the device takes to give it.
    fn read(&self, entry: EntryId, length: usize) -> (Duration, Vec<u8>);
}

/// The plain-device family.
#[derive(Default)]
pub struct PlainFamily {
    devices: Mutex<HashMap<EntryId, Arc<dyn PlainDevice>>>,
}

impl PlainFamily {
    fn lock(&self) -> MutexGuard<'_, HashMap<EntryId, Arc<dyn PlainDevice>>> {
        self.devices.locked()
    }

    /// Publishes a plain device of class `class` and matches it.
    pub fn plug(
        &self,
        system: &System,
        class: &str,
        plugged: Plugged<'_>,
        device: Arc<dyn PlainDevice>,
    ) -> Result<EntryId, driverkit_core::CoreError> {
        system.plug_device(self, class, plugged, |id| {
            self.lock().insert(id, device);
        })
    }

    fn device(&self, entry: EntryId) -> IOResult<Arc<dyn PlainDevice>> {
        self.lock()
            .get(&entry)
            .cloned()
            .ok_or(IOReturn::UNSUPPORTED)
    }
}

impl Family for PlainFamily {
    fn name(&self) -> &'static str {
        "plain devices"
    }

    /// No class of its own: a plain device may be of any class, and
    /// belongs to this family because the family published it.
    fn classes(&self) -> Vec<(&'static str, Option<&'static str>)> {
        Vec::new()
    }

    /// Plain devices have no methods beyond `IOService`'s.
    fn kernel_call(&self, _: &Call<'_>) -> Option<IOResult<Vec<u8>>> {
        None
    }

    fn register_interrupt(&self, call: &Call<'_>, interrupt: Interrupt) -> IOResult<()> {
        self.device(call.entry())?
            .subscribe_interrupt(interrupt.index, &interrupt.region)
    }

    /// The device writes its data straight into the mapped region after its
    /// latency, then completes the dext's action.
    fn read_async(&self, call: &Call<'_>, read: Read) -> IOResult<()> {
        let Read {
            region,
            length,
            action,
        } = read;
        let device = self.device(call.entry())?;
        let length = usize::try_from(length).map_err(|_| IOReturn::BAD_ARGUMENT)?;
        if length > region.len() {
            return Err(IOReturn::BAD_ARGUMENT);
        }
        let entry = call.entry();
        let request = call.system.track_request(call.server, entry, action)?;
        let system = call.system.clone();
        call.system.run_job("read", move || {
            let (latency, data) = device.read(entry, length);
            std::thread::sleep(latency);
            if !system.is_pending(request) {
                return;
            }
            let n = data.len().min(length);
            region.write(0, &data[..n]);
            system.finish_request(request, IOReturn::SUCCESS, n as u64);
        });
        Ok(())
    }

    /// A departing device's lines stop with it (its handle drops).
    fn removed(&self, _system: &System, entry: EntryId) {
        self.lock().remove(&entry);
    }
}

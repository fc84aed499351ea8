//! The system's `IOService`: what runs in the daemon when a dext calls a
//! `KERNEL` method or its superclass (`SUPERDISPATCH`).

use driverkit_wire::interfaces::IOServiceInterface;
use driverkit_wire::{IOResult, IOReturn, ObjectId};

use crate::daemon::Inner;
use crate::registry::EntryId;

/// One call from a dext about `object`, already checked for access.
pub(crate) struct KernelCall<'a> {
    pub daemon: &'a Inner,
    /// The user server (dext process) making the call.
    pub server: u64,
    pub object: EntryId,
    pub superdispatch: bool,
}

impl KernelCall<'_> {
    fn with_entry<T>(&self, f: impl FnOnce(&mut crate::registry::Entry) -> T) -> IOResult<T> {
        let mut st = self.daemon.lock();
        st.registry
            .get_mut(self.object)
            .map(f)
            .ok_or(IOReturn::NOT_FOUND)
    }

    fn superclass_only(&self) -> IOResult<()> {
        if self.superdispatch {
            Ok(())
        } else {
            Err(IOReturn::UNSUPPORTED)
        }
    }
}

impl IOServiceInterface for KernelCall<'_> {
    /// `IOService::NewUserClient`: the base class's choice.
    fn new_user_client(&self, _kind: u32) -> IOResult<String> {
        self.superclass_only()
            .map(|()| "UserClientProperties".to_owned())
    }

    /// `IOService::Start`: the base class has nothing to set up; a family's
    /// start (USB, HID) does its work here before the dext's start goes on.
    fn start(&self, _provider: ObjectId) -> IOResult<()> {
        self.superclass_only()
    }

    fn stop(&self, _provider: ObjectId) -> IOResult<()> {
        self.superclass_only()
    }

    fn client_crashed(&self, _client: ObjectId, _options: u64) -> IOResult<()> {
        self.superclass_only()
    }

    fn set_power_state(&self, power_flags: u32) -> IOResult<()> {
        self.superclass_only()?;
        if power_flags > 2 {
            return Err(IOReturn::BAD_ARGUMENT);
        }
        Ok(())
    }

    fn register_service(&self) -> IOResult<()> {
        self.daemon.set_registered(self.object);
        Ok(())
    }

    fn set_properties(&self, properties: plist::Dictionary) -> IOResult<()> {
        self.with_entry(|e| {
            for (k, v) in properties {
                e.properties.insert(k, v);
            }
        })
    }

    fn copy_properties(&self) -> IOResult<plist::Dictionary> {
        self.with_entry(|e| e.properties.clone())
    }

    fn copy_property(&self, key: String) -> IOResult<Option<plist::Value>> {
        self.with_entry(|e| e.properties.get(&key).cloned())
    }

    fn remove_property(&self, key: String) -> IOResult<()> {
        self.with_entry(|e| {
            e.properties.remove(&key);
        })
    }

    fn set_name(&self, name: String) -> IOResult<()> {
        if name.is_empty() {
            return Err(IOReturn::BAD_ARGUMENT);
        }
        self.with_entry(|e| e.name = name)
    }

    fn get_registry_entry_id(&self) -> IOResult<u64> {
        Ok(self.object)
    }

    fn terminate(&self, _options: u64) -> IOResult<()> {
        self.daemon.schedule_terminate(self.object);
        Ok(())
    }

    fn register_interrupt(&self, index: u32, memory: u64) -> IOResult<()> {
        self.daemon
            .register_interrupt(self.server, self.object, index, memory)
    }

    fn read_async(&self, memory: u64, length: u64, action: u64) -> IOResult<()> {
        self.daemon
            .read_async(self.server, self.object, memory, length, action)
    }
}

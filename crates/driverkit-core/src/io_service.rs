//! A dext's calls into the system: who may make them, where they go, and
//! the system's `IOService` (what runs in the daemon when a dext calls a
//! `KERNEL` method or its superclass, `SUPERDISPATCH`).
//!
//! Routing is one lookup. `IOService`'s methods are the core's own; every
//! other method goes to the family that owns the target: the family of the
//! entry (recorded when the entry was made, from its class or its
//! publisher), or for a family's own objects the family whose index the
//! object's ID carries. The family answers `None` for a method that is not
//! one of its interfaces.

use std::collections::HashMap;
use std::sync::Arc;

use driverkit_wire::interfaces::{io_service_interface, IOServiceInterface};
use driverkit_wire::{Header, IOResult, IOReturn, MethodId, ObjectId, FLAG_SUPERDISPATCH};

use crate::family::{Call, Family, FamilyId, Interrupt, Read};
use crate::lifecycle::Inner;
use crate::registry::EntryId;
use crate::user_server::ServerId;

/// What one call channel remembers: the services found to be the dext's
/// own, and the family of each. Entry IDs are never reused and a service
/// never moves to another process, so a yes stays true and the state lock
/// is spared on the hot path.
pub(crate) type OwnRoutes = HashMap<EntryId, Option<FamilyId>>;

impl Inner {
    /// Serves a dext's call into the system, after checking that the dext
    /// may make it. Anything but the dext's own services is checked on
    /// every call.
    pub(crate) fn kernel_call(
        &self,
        server: ServerId,
        h: &Header,
        args: &[u8],
        own: &mut OwnRoutes,
    ) -> IOResult<Vec<u8>> {
        let superdispatch = h.flags & FLAG_SUPERDISPATCH != 0;
        // A family's own objects (pipes) are the family's to check.
        if let Some(family) = FamilyId::of_object(h.object) {
            let call = self.family_call(server, h.object, family, h.method, args);
            return self
                .families
                .get(family)
                .ok_or(IOReturn::NOT_FOUND)?
                .kernel_call(&call)
                .unwrap_or(Err(IOReturn::UNSUPPORTED));
        }
        let object = EntryId::of_object(h.object);
        let owner = match own.get(&object) {
            Some(owner) => *owner,
            None => {
                let (mine, owner) = self.check_access(server, object, h.method, superdispatch)?;
                if mine {
                    own.insert(object, owner);
                }
                owner
            }
        };
        if io_service_interface::method_name(h.method).is_some() {
            let call = ServiceCall {
                daemon: self,
                server,
                object,
                superdispatch,
                family: owner,
                method: h.method,
                args,
            };
            return io_service_interface::dispatch(&call, h.method, args)
                .unwrap_or(Err(IOReturn::UNSUPPORTED));
        }
        let Some(family) = owner else {
            return Err(IOReturn::UNSUPPORTED);
        };
        let call = self.family_call(server, object.object(), family, h.method, args);
        self.families
            .get(family)
            .ok_or(IOReturn::UNSUPPORTED)?
            .kernel_call(&call)
            .unwrap_or(Err(IOReturn::UNSUPPORTED))
    }

    fn family_call<'a>(
        &'a self,
        server: ServerId,
        object: ObjectId,
        family: FamilyId,
        method: MethodId,
        args: &'a [u8],
    ) -> Call<'a> {
        Call {
            system: &self.system,
            server,
            object,
            family,
            method,
            args,
        }
    }

    /// A dext may do anything to its own services, and read its providers.
    /// Returns whether `object` is the dext's own service, and its family.
    fn check_access(
        &self,
        server: ServerId,
        object: EntryId,
        method: MethodId,
        superdispatch: bool,
    ) -> IOResult<(bool, Option<FamilyId>)> {
        let st = self.lock();
        let e = st.registry.get(object).ok_or(IOReturn::NOT_FOUND)?;
        let hosted_here =
            |e: &crate::registry::Entry| e.hosting.as_ref().is_some_and(|h| h.server == server);
        if hosted_here(e) {
            return Ok((true, e.family));
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
        // A client drives its provider through the provider's family; the
        // family checks the details.
        let family_method = e
            .family
            .and_then(|f| self.families.get(f))
            .is_some_and(|f| f.client_method(method));
        if is_provider && !superdispatch && (read_only.contains(&method) || family_method) {
            return Ok((false, e.family));
        }
        let family = e.family;
        drop(st);
        // Beyond its providers, a dext drives what their family lets it
        // (asked without the core's lock: the family may look around).
        let associated = (family_method || read_only.contains(&method))
            && !superdispatch
            && family
                .and_then(|f| self.families.get(f))
                .and_then(|f| f.associated_driver(&self.system, server, object))
                .is_some();
        if associated {
            return Ok((false, family));
        }
        Err(IOReturn::NOT_PERMITTED)
    }
}

/// One call from a dext to an `IOService` method of `object`, already
/// checked for access.
struct ServiceCall<'a> {
    daemon: &'a Inner,
    /// The user server (dext process) making the call.
    server: ServerId,
    object: EntryId,
    superdispatch: bool,
    /// The family of `object`, for the methods a family implements.
    family: Option<FamilyId>,
    /// The `IOService` method called, and its arguments.
    method: MethodId,
    args: &'a [u8],
}

impl ServiceCall<'_> {
    /// The family of the object, with the call as it sees it.
    fn family(&self) -> IOResult<(&Arc<dyn Family>, Call<'_>)> {
        let id = self.family.ok_or(IOReturn::UNSUPPORTED)?;
        let family = self.daemon.families.get(id).ok_or(IOReturn::UNSUPPORTED)?;
        Ok((
            family,
            self.daemon.family_call(
                self.server,
                self.object.object(),
                id,
                self.method,
                self.args,
            ),
        ))
    }

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

impl IOServiceInterface for ServiceCall<'_> {
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
        Ok(self.object.raw())
    }

    fn terminate(&self, _options: u64) -> IOResult<()> {
        self.daemon.schedule_terminate(self.object);
        Ok(())
    }

    fn register_interrupt(&self, index: u32, memory: u64) -> IOResult<()> {
        let region = self.daemon.region(self.server, memory)?;
        let (family, call) = self.family()?;
        family.register_interrupt(&call, Interrupt { index, region })
    }

    fn read_async(&self, memory: u64, length: u64, action: u64) -> IOResult<()> {
        let region = self.daemon.region(self.server, memory)?;
        if length > region.len() as u64 {
            return Err(IOReturn::BAD_ARGUMENT);
        }
        let (family, call) = self.family()?;
        family.read_async(
            &call,
            Read {
                region,
                length,
                action,
            },
        )
    }
}

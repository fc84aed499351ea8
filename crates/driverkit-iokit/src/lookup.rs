//! Finding services: matching dictionaries, iterators, and what a
//! registry entry says of itself (ID, name, class, properties).

use driverkit_wire::sync::Locked;
use std::ffi::c_char;

use driverkit_app::iokit::{
    io_registry_entry_properties, io_service_get_matching_services, Matching,
};
use driverkit_app::System;
use driverkit_wire::IOReturn;

use crate::cf::CFTypeRef;
use crate::objects::{Handle, Iteration, Object};
use crate::{
    cf, corefoundation, guard, objects, ret, system_of, KernReturn, BAD_ARGUMENT, SUCCESS,
};

pub(crate) fn matching_dictionary(key: &str, value: *const c_char) -> CFTypeRef {
    let Some(value) = corefoundation::text(value) else {
        return std::ptr::null();
    };
    let mut d = plist::Dictionary::new();
    d.insert(key.into(), value.into());
    cf::from_plist(&plist::Value::Dictionary(d))
}

/// `{IOProviderClass: name}`: services of that class or a subclass.
#[no_mangle]
pub extern "C" fn IOServiceMatching(name: *const c_char) -> CFTypeRef {
    guard(std::ptr::null(), || {
        matching_dictionary("IOProviderClass", name)
    })
}

/// `{IONameMatch: name}`: services by name (a dext's `IOUserClass`).
#[no_mangle]
pub extern "C" fn IOServiceNameMatching(name: *const c_char) -> CFTypeRef {
    guard(std::ptr::null(), || {
        matching_dictionary("IONameMatch", name)
    })
}

/// The services `matching` names, consuming one reference to it (as
/// IOKit does, whatever the outcome).
pub(crate) fn matching_services(
    main_port: Handle,
    matching: CFTypeRef,
) -> Result<(System, Vec<u64>), IOReturn> {
    let dictionary = cf::to_plist(matching);
    cf::release(matching);
    let Some(plist::Value::Dictionary(d)) = dictionary else {
        return Err(IOReturn::BAD_ARGUMENT);
    };
    let system = system_of(main_port).ok_or(IOReturn::BAD_ARGUMENT)?;
    let found = io_service_get_matching_services(&system, &Matching::from_dictionary(&d))?;
    Ok((system, found))
}

#[no_mangle]
pub extern "C" fn IOServiceGetMatchingService(main_port: Handle, matching: CFTypeRef) -> Handle {
    guard(0, || match matching_services(main_port, matching) {
        Ok((system, found)) => found.first().map_or(0, |&id| {
            objects::insert(Object::Service { system, id }).unwrap_or(0)
        }),
        Err(_) => 0,
    })
}

#[no_mangle]
pub extern "C" fn IOServiceGetMatchingServices(
    main_port: Handle,
    matching: CFTypeRef,
    existing: *mut Handle,
) -> KernReturn {
    guard(BAD_ARGUMENT, || {
        if existing.is_null() {
            cf::release(matching);
            return BAD_ARGUMENT;
        }
        let (system, found) = match matching_services(main_port, matching) {
            Ok(f) => f,
            Err(e) => return ret(e),
        };
        let Some(h) = objects::insert(Object::Iterator {
            system,
            items: Iteration::new(found),
        }) else {
            return ret(IOReturn::NO_RESOURCES);
        };
        // SAFETY: checked non-null; the C contract gives room for one.
        unsafe { *existing = h };
        SUCCESS
    })
}

/// The next service of an iterator (the caller releases it), or 0.
#[no_mangle]
pub extern "C" fn IOIteratorNext(iterator: Handle) -> Handle {
    guard(0, || {
        let Some(o) = objects::get(iterator) else {
            return 0;
        };
        let Object::Iterator { system, items } = o.as_ref() else {
            return 0;
        };
        objects::next_of(items).map_or(0, |id| {
            objects::insert(Object::Service {
                system: system.clone(),
                id,
            })
            .unwrap_or(0)
        })
    })
}

#[no_mangle]
pub extern "C" fn IOIteratorReset(iterator: Handle) {
    guard((), || {
        if let Some(Object::Iterator { items, .. }) = objects::get(iterator).as_deref() {
            items.locked().next = 0;
        }
    })
}

/// Whether the iterator is still good: always, as nothing here
/// invalidates one (on macOS the registry changing does).
#[no_mangle]
pub extern "C" fn IOIteratorIsValid(iterator: Handle) -> u32 {
    guard(0, || {
        matches!(
            objects::get(iterator).as_deref(),
            Some(Object::Iterator { .. })
        ) as u32
    })
}

#[no_mangle]
pub extern "C" fn IOObjectRetain(object: Handle) -> KernReturn {
    guard(BAD_ARGUMENT, || {
        if objects::retain(object) {
            SUCCESS
        } else {
            BAD_ARGUMENT
        }
    })
}

#[no_mangle]
pub extern "C" fn IOObjectRelease(object: Handle) -> KernReturn {
    guard(BAD_ARGUMENT, || {
        if objects::release(object) {
            SUCCESS
        } else {
            BAD_ARGUMENT
        }
    })
}

pub(crate) fn service(entry: Handle) -> Result<(System, u64), IOReturn> {
    match objects::get(entry).as_deref() {
        Some(Object::Service { system, id }) => Ok((system.clone(), *id)),
        _ => Err(IOReturn::BAD_ARGUMENT),
    }
}

#[no_mangle]
pub extern "C" fn IORegistryEntryGetRegistryEntryID(entry: Handle, id: *mut u64) -> KernReturn {
    guard(BAD_ARGUMENT, || {
        if id.is_null() {
            return BAD_ARGUMENT;
        }
        match service(entry) {
            Ok((_, entry_id)) => {
                // SAFETY: checked non-null; the C contract gives room for one.
                unsafe { *id = entry_id };
                SUCCESS
            }
            Err(e) => ret(e),
        }
    })
}

/// `io_name_t`: 128 bytes.
pub(crate) const NAME: usize = 128;

pub(crate) fn copy_name(text: &str, out: *mut c_char) {
    let n = text.len().min(NAME - 1);
    // SAFETY: the caller checked `out`; io_name_t holds NAME bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), out.cast(), n);
        *out.add(n) = 0;
    }
}

pub(crate) fn property_text(entry: Handle, key: &str, out: *mut c_char) -> KernReturn {
    if out.is_null() {
        return BAD_ARGUMENT;
    }
    let (system, id) = match service(entry) {
        Ok(s) => s,
        Err(e) => return ret(e),
    };
    match io_registry_entry_properties(&system, id) {
        Ok(p) => match p.get(key).and_then(plist::Value::as_string) {
            Some(t) => {
                copy_name(t, out);
                SUCCESS
            }
            None => ret(IOReturn::NOT_FOUND),
        },
        Err(e) => ret(e),
    }
}

/// The entry's name into an `io_name_t` (128 bytes).
#[no_mangle]
pub extern "C" fn IORegistryEntryGetName(entry: Handle, name: *mut c_char) -> KernReturn {
    guard(BAD_ARGUMENT, || {
        property_text(entry, "IORegistryEntryName", name)
    })
}

/// The entry's class into an `io_name_t` (128 bytes).
#[no_mangle]
pub extern "C" fn IOObjectGetClass(object: Handle, class: *mut c_char) -> KernReturn {
    guard(BAD_ARGUMENT, || property_text(object, "IOClass", class))
}

/// A property's value, as a new CF object (the caller releases it), or
/// NULL.
#[no_mangle]
pub extern "C" fn IORegistryEntryCreateCFProperty(
    entry: Handle,
    key: CFTypeRef,
    _allocator: CFTypeRef,
    _options: u32,
) -> CFTypeRef {
    guard(std::ptr::null(), || {
        let Some(key) = cf::string(key) else {
            return std::ptr::null();
        };
        let Ok((system, id)) = service(entry) else {
            return std::ptr::null();
        };
        io_registry_entry_properties(&system, id)
            .ok()
            .and_then(|p| p.get(&key).map(cf::from_plist))
            .unwrap_or(std::ptr::null())
    })
}

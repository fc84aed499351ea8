//! IOKitLib for C: Apple's names and signatures over `driverkit-app`, so
//! that an app's driver-facing C code (and Python, through ctypes) finds
//! and calls its driver as on macOS. `include/IOKit/IOKitLib.h` declares
//! what is here; its comments say what differs from macOS.
//!
//! - [`cf`] and [`corefoundation`]: the CoreFoundation subset matching
//!   dictionaries and properties need.
//! - [`objects`]: `io_object_t` numbers and what they stand for.
//! - [`notification`]: `IONotificationPortRef`, where asynchronous
//!   completions wait for the app's thread (an fd to poll, on Linux).
//! - this file: the IOKit calls.
//!
//! Every entry point checks its pointers and numbers, answers bad ones with
//! an `IOReturn` (or NULL, 0, false), and catches a panic rather than
//! unwinding into C: the library never takes its app down.

#![allow(non_snake_case, non_upper_case_globals)]
// Entry points for C: their pointers are the C caller's contract, as for
// every IOKitLib call, and each is checked for NULL before use. Rust calls
// them only in tests and the bench.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

pub mod cf;
pub mod corefoundation;
pub mod notification;
pub mod objects;

use driverkit_wire::sync::Locked;
use std::ffi::{c_char, c_void};
use std::sync::{Arc, Mutex};

use driverkit_app::iokit::{
    io_registry_entry_properties, io_service_get_matching_services, io_service_open, Matching,
};
use driverkit_app::System;
use driverkit_wire::IOReturn;

use crate::cf::CFTypeRef;
use crate::objects::{Connection, Handle, Iteration, Object};

/// `kern_return_t` / `IOReturn`.
pub type KernReturn = i32;

const SUCCESS: KernReturn = 0;

fn ret(r: IOReturn) -> KernReturn {
    r.0 as KernReturn
}

const BAD_ARGUMENT: KernReturn = IOReturn::BAD_ARGUMENT.0 as KernReturn;

/// Runs an entry point's body; a panic becomes `fallback` instead of
/// unwinding into the app.
pub(crate) fn guard<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).unwrap_or(fallback)
}

/// `kIOMainPortDefault` (and its old name): the daemon `DRIVERKIT_ROOT`
/// names, else the one every `driverkit` command finds by default.
#[no_mangle]
pub static kIOMainPortDefault: Handle = 0;
#[no_mangle]
pub static kIOMasterPortDefault: Handle = 0;

/// The daemon a main port stands for.
fn system_of(main_port: Handle) -> Option<System> {
    if main_port == 0 {
        return Some(System::default());
    }
    match objects::get(main_port)?.as_ref() {
        Object::MainPort(s) => Some(s.clone()),
        _ => None,
    }
}

/// `IOMainPort(bootstrap, &port)`: the default daemon's port (0, as
/// `kIOMainPortDefault`).
#[no_mangle]
pub extern "C" fn IOMainPort(_bootstrap: Handle, main_port: *mut Handle) -> KernReturn {
    guard(BAD_ARGUMENT, || {
        if main_port.is_null() {
            return BAD_ARGUMENT;
        }
        // SAFETY: checked non-null; the C contract gives room for one.
        unsafe { *main_port = 0 };
        SUCCESS
    })
}

/// Linux: a main port for the daemon whose state directory is `root`
/// (`driverkit --root DIR`), for apps that talk to more than one; release
/// it with `IOObjectRelease`.
#[no_mangle]
pub extern "C" fn IOMainPortForRoot(root: *const c_char, main_port: *mut Handle) -> KernReturn {
    guard(BAD_ARGUMENT, || {
        let Some(root) = corefoundation::text(root) else {
            return BAD_ARGUMENT;
        };
        if main_port.is_null() {
            return BAD_ARGUMENT;
        }
        let Some(h) = objects::insert(Object::MainPort(System::at(root))) else {
            return ret(IOReturn::NO_RESOURCES);
        };
        // SAFETY: checked non-null; the C contract gives room for one.
        unsafe { *main_port = h };
        SUCCESS
    })
}

fn matching_dictionary(key: &str, value: *const c_char) -> CFTypeRef {
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
fn matching_services(
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

fn service(entry: Handle) -> Result<(System, u64), IOReturn> {
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
const NAME: usize = 128;

fn copy_name(text: &str, out: *mut c_char) {
    let n = text.len().min(NAME - 1);
    // SAFETY: the caller checked `out`; io_name_t holds NAME bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), out.cast(), n);
        *out.add(n) = 0;
    }
}

fn property_text(entry: Handle, key: &str, out: *mut c_char) -> KernReturn {
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

/// Opens a connection to the service's user client of `type`: the
/// daemon checks this app's entitlements as for any app.
#[no_mangle]
pub extern "C" fn IOServiceOpen(
    service_handle: Handle,
    _owning_task: Handle,
    kind: u32,
    connect: *mut Handle,
) -> KernReturn {
    guard(BAD_ARGUMENT, || {
        if connect.is_null() {
            return BAD_ARGUMENT;
        }
        let (system, id) = match service(service_handle) {
            Ok(s) => s,
            Err(e) => return ret(e),
        };
        let opened = match io_service_open(&system, id, kind) {
            Ok(c) => c,
            Err(e) => return ret(e),
        };
        let Some(h) = objects::insert(Object::Connect(Connection {
            connect: opened,
            maps: Mutex::new(Default::default()),
        })) else {
            return ret(IOReturn::NO_RESOURCES);
        };
        // SAFETY: checked non-null; the C contract gives room for one.
        unsafe { *connect = h };
        SUCCESS
    })
}

/// Linux: why the system refused this thread's last `IOServiceOpen`, in
/// words (the entitlement it lacks, the signature it needs), or NULL. Valid
/// until this thread's next `IOServiceOpen`.
#[no_mangle]
pub extern "C" fn IOServiceOpenLastRefusal() -> *const c_char {
    thread_local! {
        static TEXT: std::cell::RefCell<Option<std::ffi::CString>> = const { std::cell::RefCell::new(None) };
    }
    guard(std::ptr::null(), || {
        let reason =
            driverkit_app::iokit::last_open_refusal().and_then(|r| std::ffi::CString::new(r).ok());
        TEXT.with(|t| {
            let mut t = t.borrow_mut();
            *t = reason;
            t.as_ref().map_or(std::ptr::null(), |c| c.as_ptr())
        })
    })
}

/// Closes the connection (the driver's user client stops) and its
/// number; its mappings go with it.
#[no_mangle]
pub extern "C" fn IOServiceClose(connect: Handle) -> KernReturn {
    guard(BAD_ARGUMENT, || {
        let Some(o) = objects::get(connect) else {
            return BAD_ARGUMENT;
        };
        if !matches!(o.as_ref(), Object::Connect(_)) {
            return BAD_ARGUMENT;
        }
        drop(o);
        // A call in flight on another thread keeps the connection until it
        // returns; then it closes.
        drop(objects::remove(connect));
        SUCCESS
    })
}

fn connection(connect: Handle) -> Result<Arc<Object>, KernReturn> {
    let o = objects::get(connect).ok_or(ret(IOReturn::NOT_OPEN))?;
    match o.as_ref() {
        Object::Connect(_) => Ok(o),
        _ => Err(BAD_ARGUMENT),
    }
}

/// A C array the app passed: `count` elements at `p` (NULL only when
/// empty).
fn slice<'a, T>(p: *const T, count: usize) -> Result<&'a [T], KernReturn> {
    if count == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(BAD_ARGUMENT);
    }
    // SAFETY: the C contract: `p` holds `count` elements for the call.
    Ok(unsafe { std::slice::from_raw_parts(p, count) })
}

/// Where a call's outputs go: room for `*count` elements at `p`.
struct Out<T: Counted> {
    p: *mut T,
    count: *mut T::Count,
    room: usize,
}

trait Counted {
    type Count: Copy + TryInto<usize> + TryFrom<usize>;
}
impl Counted for u64 {
    type Count = u32;
}
impl Counted for u8 {
    type Count = usize;
}

impl<T: Counted + Copy> Out<T> {
    fn new(p: *mut T, count: *mut T::Count) -> Result<Out<T>, KernReturn> {
        let room = if count.is_null() {
            0
        } else {
            // SAFETY: non-null; the C contract: it holds the room.
            unsafe { *count }.try_into().map_err(|_| BAD_ARGUMENT)?
        };
        if room > 0 && p.is_null() {
            return Err(BAD_ARGUMENT);
        }
        Ok(Out { p, count, room })
    }

    /// Copies the call's outputs in and says how many there are;
    /// `kIOReturnOverrun` when the driver gave more than there was room for.
    fn fill(&self, values: &[T]) -> KernReturn {
        let n = values.len().min(self.room);
        if n > 0 {
            // SAFETY: `p` has room for `room` elements (checked in `new`).
            unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), self.p, n) };
        }
        if !self.count.is_null() {
            if let Ok(c) = T::Count::try_from(n) {
                // SAFETY: non-null, checked in `new`'s contract.
                unsafe { *self.count = c };
            }
        }
        if values.len() > self.room {
            ret(IOReturn::OVERRUN)
        } else {
            SUCCESS
        }
    }
}

/// What an asynchronous call runs when the driver completes it.
type Completion = Box<dyn FnOnce(IOReturn, Vec<u64>) + Send>;

/// The shared part of every call shape.
#[allow(clippy::too_many_arguments)]
fn call(
    connect: Handle,
    selector: u32,
    input: *const u64,
    input_count: u32,
    input_struct: *const c_void,
    input_struct_count: usize,
    output: *mut u64,
    output_count: *mut u32,
    output_struct: *mut c_void,
    output_struct_count: *mut usize,
    completion: Option<Completion>,
) -> KernReturn {
    let run = || -> Result<KernReturn, KernReturn> {
        let o = connection(connect)?;
        let Object::Connect(c) = o.as_ref() else {
            return Err(BAD_ARGUMENT);
        };
        let scalars = slice(input, input_count as usize)?;
        let structure = slice(input_struct.cast::<u8>(), input_struct_count)?;
        let scalars_out = Out::new(output, output_count)?;
        let structure_out = Out::new(output_struct.cast::<u8>(), output_struct_count)?;
        let room = u32::try_from(structure_out.room).unwrap_or(u32::MAX);
        let result = match completion {
            None => c.connect.call_method(
                u64::from(selector),
                scalars,
                structure,
                scalars_out.room as u32,
                room,
            ),
            Some(done) => c.connect.call_async_method(
                u64::from(selector),
                scalars,
                structure,
                scalars_out.room as u32,
                room,
                done,
            ),
        };
        let (s, b) = result.map_err(ret)?;
        let r = scalars_out.fill(&s);
        let r2 = structure_out.fill(&b);
        Ok(if r != SUCCESS { r } else { r2 })
    };
    run().unwrap_or_else(|e| e)
}

#[no_mangle]
pub extern "C" fn IOConnectCallMethod(
    connection: Handle,
    selector: u32,
    input: *const u64,
    input_count: u32,
    input_struct: *const c_void,
    input_struct_count: usize,
    output: *mut u64,
    output_count: *mut u32,
    output_struct: *mut c_void,
    output_struct_count: *mut usize,
) -> KernReturn {
    guard(ret(IOReturn::INTERNAL_ERROR), || {
        call(
            connection,
            selector,
            input,
            input_count,
            input_struct,
            input_struct_count,
            output,
            output_count,
            output_struct,
            output_struct_count,
            None,
        )
    })
}

#[no_mangle]
pub extern "C" fn IOConnectCallScalarMethod(
    connection: Handle,
    selector: u32,
    input: *const u64,
    input_count: u32,
    output: *mut u64,
    output_count: *mut u32,
) -> KernReturn {
    guard(ret(IOReturn::INTERNAL_ERROR), || {
        call(
            connection,
            selector,
            input,
            input_count,
            std::ptr::null(),
            0,
            output,
            output_count,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            None,
        )
    })
}

#[no_mangle]
pub extern "C" fn IOConnectCallStructMethod(
    connection: Handle,
    selector: u32,
    input_struct: *const c_void,
    input_struct_count: usize,
    output_struct: *mut c_void,
    output_struct_count: *mut usize,
) -> KernReturn {
    guard(ret(IOReturn::INTERNAL_ERROR), || {
        call(
            connection,
            selector,
            std::ptr::null(),
            0,
            input_struct,
            input_struct_count,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            output_struct,
            output_struct_count,
            None,
        )
    })
}

/// `reference[kIOAsyncCalloutFuncIndex]` and
/// `reference[kIOAsyncCalloutRefconIndex]`.
const CALLOUT: usize = 1;
const REFCON: usize = 2;

/// An asynchronous call: returns with its immediate outputs; the
/// completion's callback (`reference[1]`, with `reference[2]`) runs when
/// the app dispatches `wake_port`'s notification port.
#[no_mangle]
pub extern "C" fn IOConnectCallAsyncMethod(
    connection: Handle,
    selector: u32,
    wake_port: Handle,
    reference: *mut u64,
    reference_count: u32,
    input: *const u64,
    input_count: u32,
    input_struct: *const c_void,
    input_struct_count: usize,
    output: *mut u64,
    output_count: *mut u32,
    output_struct: *mut c_void,
    output_struct_count: *mut usize,
) -> KernReturn {
    guard(ret(IOReturn::INTERNAL_ERROR), || {
        let Ok(reference) = slice(reference.cast_const(), reference_count as usize) else {
            return BAD_ARGUMENT;
        };
        let (Some(&callout), Some(&refcon)) = (reference.get(CALLOUT), reference.get(REFCON))
        else {
            return BAD_ARGUMENT;
        };
        if callout == 0 {
            return BAD_ARGUMENT;
        }
        let port = match objects::get(wake_port).as_deref() {
            Some(Object::NotificationPort(p)) => p.clone(),
            _ => return BAD_ARGUMENT,
        };
        // SAFETY: the app put its IOAsyncCallback's address here, as on
        // macOS; it is called only by `IONotificationPortDispatch`.
        let callback: notification::AsyncCallback =
            unsafe { std::mem::transmute::<usize, notification::AsyncCallback>(callout as usize) };
        let done = Box::new(move |status: IOReturn, values: Vec<u64>| {
            port.complete(callback, refcon as usize, status.0, values)
        });
        call(
            connection,
            selector,
            input,
            input_count,
            input_struct,
            input_struct_count,
            output,
            output_count,
            output_struct,
            output_struct_count,
            Some(done),
        )
    })
}

/// `kIOMapAnywhere` is the only placement (the address is chosen here);
/// `kIOMapReadOnly` maps the driver's memory read-only.
const MAP_READ_ONLY: u32 = 0x1000;

#[no_mangle]
pub extern "C" fn IOConnectMapMemory64(
    connect: Handle,
    memory_type: u32,
    _into_task: Handle,
    address: *mut u64,
    size: *mut u64,
    options: u32,
) -> KernReturn {
    guard(ret(IOReturn::INTERNAL_ERROR), || {
        if address.is_null() || size.is_null() {
            return BAD_ARGUMENT;
        }
        let o = match connection(connect) {
            Ok(o) => o,
            Err(e) => return e,
        };
        let Object::Connect(c) = o.as_ref() else {
            return BAD_ARGUMENT;
        };
        let mapped = match c
            .connect
            .map_memory(u64::from(memory_type), options & MAP_READ_ONLY != 0)
        {
            Ok(m) => m,
            Err(e) => return ret(e),
        };
        let at = mapped.as_ptr() as u64;
        // SAFETY: both checked non-null; the C contract gives room for one.
        unsafe {
            *address = at;
            *size = mapped.len() as u64;
        }
        c.maps.locked().insert(at, mapped);
        SUCCESS
    })
}

#[no_mangle]
pub extern "C" fn IOConnectUnmapMemory64(
    connect: Handle,
    _memory_type: u32,
    _from_task: Handle,
    address: u64,
) -> KernReturn {
    guard(ret(IOReturn::INTERNAL_ERROR), || {
        let o = match connection(connect) {
            Ok(o) => o,
            Err(e) => return e,
        };
        let Object::Connect(c) = o.as_ref() else {
            return BAD_ARGUMENT;
        };
        let gone = c.maps.locked().remove(&address);
        match gone {
            Some(_) => SUCCESS,
            None => BAD_ARGUMENT,
        }
    })
}

/// `IONotificationPortRef`: a box the app holds, naming its port's number.
pub struct NotificationPortRef {
    handle: Handle,
}

/// Live `IONotificationPortRef`s, so that a destroyed one is refused.
fn live_ports() -> std::sync::MutexGuard<'static, std::collections::HashSet<usize>> {
    static LIVE: std::sync::OnceLock<Mutex<std::collections::HashSet<usize>>> =
        std::sync::OnceLock::new();
    LIVE.get_or_init(Default::default).locked()
}

fn port_of(r: *const NotificationPortRef) -> Option<(Handle, Arc<notification::Port>)> {
    if !live_ports().contains(&(r as usize)) {
        return None;
    }
    // SAFETY: a live ref (in the set) is a box made by
    // IONotificationPortCreate and not yet destroyed.
    let handle = unsafe { (*r).handle };
    match objects::get(handle).as_deref() {
        Some(Object::NotificationPort(p)) => Some((handle, p.clone())),
        _ => None,
    }
}

#[no_mangle]
pub extern "C" fn IONotificationPortCreate(_main_port: Handle) -> *mut NotificationPortRef {
    guard(std::ptr::null_mut(), || {
        let Ok(port) = notification::Port::new() else {
            return std::ptr::null_mut();
        };
        let Some(handle) = objects::insert(Object::NotificationPort(Arc::new(port))) else {
            return std::ptr::null_mut();
        };
        let r = Box::into_raw(Box::new(NotificationPortRef { handle }));
        live_ports().insert(r as usize);
        r
    })
}

#[no_mangle]
pub extern "C" fn IONotificationPortDestroy(notify: *mut NotificationPortRef) {
    guard((), || {
        if !live_ports().remove(&(notify as usize)) {
            return;
        }
        // SAFETY: it was live (just taken out of the set): a box made by
        // IONotificationPortCreate, freed only here.
        let r = unsafe { Box::from_raw(notify) };
        objects::remove(r.handle);
    })
}

/// The port's number, for `IOConnectCallAsyncMethod`'s `wake_port`.
#[no_mangle]
pub extern "C" fn IONotificationPortGetMachPort(notify: *mut NotificationPortRef) -> Handle {
    guard(0, || port_of(notify).map_or(0, |(h, _)| h))
}

/// Linux: a descriptor that polls readable while completions wait for
/// `IONotificationPortDispatch` (the stand-in for the Mach port's run loop
/// source). -1 for a port that is not live.
#[no_mangle]
pub extern "C" fn IONotificationPortGetFileDescriptor(notify: *mut NotificationPortRef) -> i32 {
    guard(-1, || port_of(notify).map_or(-1, |(_, p)| p.fd()))
}

/// Linux: runs the callbacks of the completions that have arrived, on this
/// thread; returns how many ran.
#[no_mangle]
pub extern "C" fn IONotificationPortDispatch(notify: *mut NotificationPortRef) -> u32 {
    guard(0, || port_of(notify).map_or(0, |(_, p)| p.dispatch()))
}

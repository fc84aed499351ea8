//! A connection to a driver's user client: open and close, method calls
//! (scalar, structure, asynchronous) and shared memory.

use driverkit_wire::sync::Locked;
use std::ffi::{c_char, c_void};
use std::sync::{Arc, Mutex};

use driverkit_app::iokit::io_service_open;
use driverkit_wire::IOReturn;

use crate::lookup::service;
use crate::objects::{Connection, Handle, Object};
use crate::{guard, notification, objects, ret, KernReturn, BAD_ARGUMENT, SUCCESS};

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

pub(crate) fn connection(connect: Handle) -> Result<Arc<Object>, KernReturn> {
    let o = objects::get(connect).ok_or(ret(IOReturn::NOT_OPEN))?;
    match o.as_ref() {
        Object::Connect(_) => Ok(o),
        _ => Err(BAD_ARGUMENT),
    }
}

/// A C array the app passed: `count` elements at `p` (NULL only when
/// empty).
pub(crate) fn slice<'a, T>(p: *const T, count: usize) -> Result<&'a [T], KernReturn> {
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
pub(crate) struct Out<T: Counted> {
    p: *mut T,
    count: *mut T::Count,
    room: usize,
}

pub(crate) trait Counted {
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
pub(crate) type Completion = Box<dyn FnOnce(IOReturn, Vec<u64>) + Send>;

/// The shared part of every call shape.
#[allow(clippy::too_many_arguments)]
pub(crate) fn call(
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
pub(crate) const CALLOUT: usize = 1;
pub(crate) const REFCON: usize = 2;

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
pub(crate) const MAP_READ_ONLY: u32 = 0x1000;

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

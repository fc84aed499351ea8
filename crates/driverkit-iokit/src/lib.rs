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
//! - `lookup`: finding services and reading registry entries.
//! - `connect`: user-client connections, method calls, shared memory.
//! - `notification_port`: `IONotificationPortRef`.
//! - this file: the main port, and what every entry point shares.
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
mod connect;
pub mod corefoundation;
mod lookup;
pub mod notification;
mod notification_port;
pub mod objects;

pub use connect::*;
pub use lookup::*;
pub use notification_port::*;

use std::ffi::c_char;

use driverkit_app::System;
use driverkit_wire::IOReturn;

use crate::objects::{Handle, Object};

/// `kern_return_t` / `IOReturn`.
pub type KernReturn = i32;

pub(crate) const SUCCESS: KernReturn = 0;

pub(crate) fn ret(r: IOReturn) -> KernReturn {
    r.0 as KernReturn
}

pub(crate) const BAD_ARGUMENT: KernReturn = IOReturn::BAD_ARGUMENT.0 as KernReturn;

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
pub(crate) fn system_of(main_port: Handle) -> Option<System> {
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

//! `IONotificationPortRef`: the C handle of a `notification::Port`, where
//! asynchronous completions wait for the app's thread.

use driverkit_wire::sync::Locked;
use std::sync::{Arc, Mutex};

use crate::objects::{Handle, Object};
use crate::{guard, notification, objects};

/// `IONotificationPortRef`: a box the app holds, naming its port's number.
pub struct NotificationPortRef {
    handle: Handle,
}

/// Live `IONotificationPortRef`s, so that a destroyed one is refused.
pub(crate) fn live_ports() -> std::sync::MutexGuard<'static, std::collections::HashSet<usize>> {
    static LIVE: std::sync::OnceLock<Mutex<std::collections::HashSet<usize>>> =
        std::sync::OnceLock::new();
    LIVE.get_or_init(Default::default).locked()
}

pub(crate) fn port_of(r: *const NotificationPortRef) -> Option<(Handle, Arc<notification::Port>)> {
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

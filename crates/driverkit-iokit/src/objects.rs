//! `io_object_t`: the numbers IOKitLib hands a C app for services,
//! iterators, connections and ports, and what each stands for.
//!
//! On macOS these are Mach port names; here they are keys of one table.
//! A number that was released (or never given) is not in it, so every call
//! answers it with `kIOReturnBadArgument` instead of reaching freed state.
//! Numbers are not reused while the process lives (a stale number must not
//! find a newer object).

use driverkit_wire::sync::Locked;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use driverkit_app::iokit::{IOConnect, IOService, MappedMemory};
use driverkit_app::System;

use crate::notification::Port;

/// `io_object_t`, `io_service_t`, `io_connect_t`, `mach_port_t`.
pub type Handle = u32;

pub enum Object {
    /// A daemon to ask (`IOMainPort`'s answer): the one `DRIVERKIT_ROOT`
    /// names unless the app named another.
    MainPort(System),
    Service {
        system: System,
        id: IOService,
    },
    Iterator {
        system: System,
        items: Mutex<Iteration>,
    },
    Connect(Connection),
    NotificationPort(Arc<Port>),
}

pub struct Iteration {
    pub all: Vec<IOService>,
    pub next: usize,
}

pub struct Connection {
    pub connect: IOConnect,
    /// `IOConnectMapMemory64`'s mappings, by address, until unmapped or
    /// closed.
    pub maps: Mutex<HashMap<u64, MappedMemory>>,
}

struct Entry {
    refs: u32,
    object: Arc<Object>,
}

struct Table {
    next: Handle,
    entries: HashMap<Handle, Entry, Numbers>,
}

/// Numbers are handed out in sequence, never chosen by anyone else: a
/// multiplication spreads them (Fibonacci hashing) where SipHash's flood
/// resistance would cost every call a tenth of its round trip.
#[derive(Default, Clone, Copy)]
struct Numbers;

impl std::hash::BuildHasher for Numbers {
    type Hasher = Number;
    fn build_hasher(&self) -> Number {
        Number(0)
    }
}

struct Number(u64);

impl std::hash::Hasher for Number {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

fn table() -> MutexGuard<'static, Table> {
    static TABLE: OnceLock<Mutex<Table>> = OnceLock::new();
    TABLE
        .get_or_init(|| {
            Mutex::new(Table {
                // Small numbers look like file descriptors in a debugger;
                // these do not.
                next: 0x1003,
                entries: HashMap::default(),
            })
        })
        .locked()
}

/// A new number for `object`, with one reference (the caller's). `None`
/// when the process has used up every number.
pub fn insert(object: Object) -> Option<Handle> {
    let mut t = table();
    let h = t.next;
    t.next = t.next.checked_add(1)?;
    t.entries.insert(
        h,
        Entry {
            refs: 1,
            object: Arc::new(object),
        },
    );
    Some(h)
}

/// What `h` stands for, if it is live.
pub fn get(h: Handle) -> Option<Arc<Object>> {
    table().entries.get(&h).map(|e| e.object.clone())
}

/// `IOObjectRetain`.
pub fn retain(h: Handle) -> bool {
    match table().entries.get_mut(&h) {
        Some(e) => {
            e.refs = e.refs.saturating_add(1);
            true
        }
        None => false,
    }
}

/// `IOObjectRelease`: with the last reference the number is gone (and,
/// once no call is using it, its object).
pub fn release(h: Handle) -> bool {
    let gone = {
        let mut t = table();
        let Some(e) = t.entries.get_mut(&h) else {
            return false;
        };
        e.refs -= 1;
        if e.refs > 0 {
            return true;
        }
        t.entries.remove(&h)
    };
    // Dropped outside the table's lock: closing a connection talks to
    // the daemon.
    drop(gone);
    true
}

/// Takes `h` out whatever its count (`IOServiceClose`,
/// `IONotificationPortDestroy`).
pub fn remove(h: Handle) -> Option<Arc<Object>> {
    let e = table().entries.remove(&h)?;
    Some(e.object)
}

impl Iteration {
    pub fn new(all: Vec<IOService>) -> Mutex<Iteration> {
        Mutex::new(Iteration { all, next: 0 })
    }
}

/// The services an iterator has not handed out yet.
pub fn next_of(items: &Mutex<Iteration>) -> Option<IOService> {
    let mut it = items.locked();
    let s = it.all.get(it.next).copied()?;
    it.next += 1;
    Some(s)
}

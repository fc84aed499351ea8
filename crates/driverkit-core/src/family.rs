//! The seam between the core and the families.
//!
//! A family is the system side of some classes (USB's `IOUSBHostDevice`,
//! HID's `IOHIDInterface`, ...): it registers itself with the core once, at
//! start, as a [`Family`], and from then on the core
//!
//! - routes every call a dext makes to an object of one of the family's
//!   classes (or to an object the family made, such as a pipe) to the
//!   family's [`Family::kernel_call`], by one lookup: the object's owner,
//!   recorded when its registry entry was made;
//! - asks the family's [`FamilyMatcher`]s to score personalities for
//!   providers of its classes;
//! - tells the family when a provider was left without a driver
//!   ([`Family::unclaimed`]), when entries are about to stop
//!   ([`Family::departing`]: end their I/O now) and when an entry left the
//!   registry ([`Family::removed`]: forget it, release its memory).
//!
//! What a family may ask of the core is [`System`](crate::System): publish
//! and remove nubs, read and set properties, map a dext's registered
//! memory, complete asynchronous requests through their `OSAction`,
//! terminate services and watch lifecycle events. A family never takes the
//! core's lock nor sees its state.

use std::sync::Arc;

use driverkit_bundle::Personality;
use driverkit_wire::shm::SharedMemory;
use driverkit_wire::{IOResult, IOReturn, MethodId, ObjectId};

use crate::registry::EntryId;
use crate::user_server::ServerId;
use crate::System;

/// A family's place in the core's table, given at registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FamilyId(pub(crate) u8);

/// Objects a family makes that are not registry entries (USB pipes) have
/// IDs from here up: bit 48 set, the family's index in bits 40..48, the
/// family's own number below. Registry IDs stay far below.
pub const OBJECT_BASE: u64 = 1 << 48;

impl FamilyId {
    /// The ID of the family's own object number `n` (below 2^40).
    pub fn object(self, n: u64) -> ObjectId {
        ObjectId(OBJECT_BASE | u64::from(self.0) << 40 | (n & ((1 << 40) - 1)))
    }

    /// The family that made object `id`, if it is a family object.
    pub(crate) fn of_object(id: ObjectId) -> Option<FamilyId> {
        (id.0 >= OBJECT_BASE).then_some(FamilyId(((id.0 >> 40) & 0xff) as u8))
    }
}

/// What matching knows of a provider.
pub struct MatchTarget<'a> {
    pub name: &'a str,
    pub class_chain: &'a [String],
    pub properties: &'a plist::Dictionary,
}

/// A family's matching rules for one provider class.
pub trait FamilyMatcher: Send + Sync {
    /// The provider class this family scores (subclasses included).
    fn provider_class(&self) -> &'static str;

    /// `None` when the personality's family keys rule the provider out;
    /// otherwise the family's score, added to `IOProbeScore`.
    fn score(&self, personality: &Personality, target: &MatchTarget<'_>) -> Option<i64>;

    /// A `(key, value)` that every matching provider must carry, used to
    /// index personalities so that matching cost does not grow with the size
    /// of the catalogue. `None` when the personality cannot be indexed.
    fn index_key(&self, personality: &Personality) -> Option<(String, plist::Value)> {
        let _ = personality;
        None
    }

    /// Whether `bundle` may drive `target` by the family's transport
    /// entitlements (a USB vendor the dext is entitled to). Personalities
    /// were checked when their bundle loaded; this holds the line at
    /// matching too. Bundles made in code (no entitlements) pass.
    fn entitled(&self, bundle: &driverkit_bundle::Bundle, target: &MatchTarget<'_>) -> bool {
        let _ = (bundle, target);
        true
    }
}

/// One call from a dext to an object of a family, already checked for
/// access by the core (a family object, such as a pipe, is the family's to
/// check: `server` is who asks).
pub struct Call<'a> {
    pub system: &'a System,
    /// The calling dext process (its user server).
    pub server: ServerId,
    /// The target: a registry entry, or one of the family's objects.
    pub object: ObjectId,
    /// The family the call was routed to, for making objects
    /// ([`FamilyId::object`]).
    pub family: FamilyId,
    /// The method called, and its arguments as the dext encoded them.
    pub method: MethodId,
    pub args: &'a [u8],
}

/// `IOService::RegisterInterrupt`: deliver interrupt `index` into `region`
/// from now on.
pub struct Interrupt {
    pub index: u32,
    pub region: Arc<SharedMemory>,
}

/// `IOService::ReadAsync`: read `length` bytes into `region`, then complete
/// `action` (see [`System::track_request`]).
pub struct Read {
    pub region: Arc<SharedMemory>,
    pub length: u64,
    pub action: u64,
}

impl Call<'_> {
    /// The target as a registry entry: what a call to one of the family's
    /// classes is made on (a call to one of the family's own objects
    /// names no entry, and no entry has its ID).
    pub fn entry(&self) -> EntryId {
        EntryId::of_object(self.object)
    }
}

/// The system side of some classes. Every method but `name`, `classes` and
/// `kernel_call` has a default that does nothing.
pub trait Family: Send + Sync + 'static {
    /// For logs: "USB", "HID".
    fn name(&self) -> &'static str;

    /// The classes whose objects this family serves, `(class, superclass)`.
    /// A class the wire protocol already knows may leave its superclass
    /// `None`; a new one names it, so that the registry knows its chain.
    /// An entry belongs to the family of the most derived class of its
    /// chain that some family claims, unless a family published it.
    fn classes(&self) -> Vec<(&'static str, Option<&'static str>)>;

    /// The family's matching rules.
    fn matchers(&self) -> Vec<Box<dyn FamilyMatcher>> {
        Vec::new()
    }

    /// Serves `call.method` on `call.object`. `None` when the method is not
    /// one of the family's interfaces (the core answers
    /// `kIOReturnUnsupported`).
    fn kernel_call(&self, call: &Call<'_>) -> Option<IOResult<Vec<u8>>>;

    /// True when a client's process may call `method` on a provider of this
    /// family (the family then checks the details): a driver drives its
    /// device.
    fn client_method(&self, method: MethodId) -> bool {
        let _ = method;
        false
    }

    /// A service of process `server` that may drive `object` though it is
    /// not `object`'s client, or `None`. What a client may do to its
    /// provider (the family's client methods, reading properties) is let
    /// through this way. USB lets the driver of one interface (or
    /// of the device) drive the device's other interfaces, as a CDC
    /// driver matched on the control interface drives its data interface.
    fn associated_driver(
        &self,
        system: &System,
        server: ServerId,
        object: EntryId,
    ) -> Option<EntryId> {
        let _ = (system, server, object);
        None
    }

    /// `IOService::RegisterInterrupt` on one of the family's entries.
    fn register_interrupt(&self, call: &Call<'_>, interrupt: Interrupt) -> IOResult<()> {
        let _ = (call, interrupt);
        Err(IOReturn::UNSUPPORTED)
    }

    /// `IOService::ReadAsync` on one of the family's entries.
    fn read_async(&self, call: &Call<'_>, read: Read) -> IOResult<()> {
        let _ = (call, read);
        Err(IOReturn::UNSUPPORTED)
    }

    /// Matching left `entry` (of any family) without a driver. Every family
    /// hears it, in registration order: a USB family configures a device,
    /// a HID family attaches to a HID interface.
    fn unclaimed(&self, system: &System, entry: EntryId) {
        let _ = (system, entry);
    }

    /// `entries` are about to stop, deepest first (terminate, unplug,
    /// crash): end the I/O waiting on them now, so that no driver's Stop
    /// waits for a transfer that will never come. They are already marked
    /// terminating (nothing attaches below them from here); the core
    /// completes the requests it tracks with `kIOReturnAborted` right
    /// after. By default each entry is handed to [`Family::departs`].
    fn departing(&self, system: &System, entries: &[EntryId]) {
        for id in entries {
            self.departs(system, *id);
        }
    }

    /// One entry of [`Family::departing`], for a family that ends each on
    /// its own.
    fn departs(&self, system: &System, entry: EntryId) {
        let _ = (system, entry);
    }

    /// `entry` left the registry: forget it.
    fn removed(&self, system: &System, entry: EntryId) {
        let _ = (system, entry);
    }
}

/// The families the core was started with, and which owns what.
pub(crate) struct Families {
    list: Vec<Arc<dyn Family>>,
    /// The owning family of each class a family claimed.
    by_class: std::collections::HashMap<&'static str, FamilyId>,
    /// Classes the families added to the wire protocol's hierarchy.
    superclasses: std::collections::HashMap<&'static str, &'static str>,
}

impl Families {
    pub(crate) fn new(list: Vec<Arc<dyn Family>>) -> Families {
        assert!(list.len() <= 255, "at most 255 families");
        let mut by_class = std::collections::HashMap::new();
        let mut superclasses = std::collections::HashMap::new();
        for (i, f) in list.iter().enumerate() {
            for (class, superclass) in f.classes() {
                if let Some(previous) = by_class.insert(class, FamilyId(i as u8)) {
                    tracing::error!(
                        "family   {} claims {class}, which {} claimed first; the last one owns it",
                        f.name(),
                        list[usize::from(previous.0)].name()
                    );
                }
                if let Some(s) = superclass {
                    superclasses.insert(class, s);
                }
            }
        }
        Families {
            list,
            by_class,
            superclasses,
        }
    }

    pub(crate) fn get(&self, id: FamilyId) -> Option<&Arc<dyn Family>> {
        self.list.get(usize::from(id.0))
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<dyn Family>> {
        self.list.iter()
    }

    /// The position of `family` in the table (by identity).
    pub(crate) fn id_of(&self, family: &dyn Family) -> Option<FamilyId> {
        self.list
            .iter()
            .position(|f| std::ptr::addr_eq(Arc::as_ptr(f), family as *const dyn Family))
            .map(|i| FamilyId(i as u8))
    }

    /// Every matcher of every family.
    pub(crate) fn matchers(&self) -> Vec<Box<dyn FamilyMatcher>> {
        self.list.iter().flat_map(|f| f.matchers()).collect()
    }

    /// `class` followed by its superclasses up to `OSObject`: the wire
    /// protocol's hierarchy, extended by the families' own classes.
    pub(crate) fn chain(&self, class: &str) -> Vec<String> {
        let mut out = vec![class.to_owned()];
        let mut current = class.to_owned();
        loop {
            let next = match self.superclasses.get(current.as_str()) {
                Some(s) => Some(*s),
                None => driverkit_wire::classes::superclass(&current),
            };
            match next {
                Some(s) if out.len() < 64 => {
                    out.push(s.to_owned());
                    current = s.to_owned();
                }
                _ => return out,
            }
        }
    }

    /// The family owning the most derived class of `chain` any family claims.
    pub(crate) fn owner(&self, chain: &[String]) -> Option<FamilyId> {
        chain
            .iter()
            .find_map(|c| self.by_class.get(c.as_str()).copied())
    }
}

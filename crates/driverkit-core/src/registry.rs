//! The I/O Registry: every service, its class, properties and links.
//!
//! The registry is plain data behind the daemon's state lock. It never calls
//! out (no RPC, no process work) so that holding the lock is always short.

use std::collections::BTreeMap;
use std::fmt;

use driverkit_wire::ObjectId;

use serde::Serialize;

use crate::family::FamilyId;
use crate::user_server::ServerId;

/// A registry entry ID, as ioreg prints it (`0x100000123`).
///
/// Its own type, not a bare `u64`, so that an entry cannot be mistaken for
/// a user server, a request or a count. It crosses the process boundary as
/// the [`ObjectId`] of the service ([`EntryId::object`]) and the control
/// socket as its number ([`EntryId::raw`]).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct EntryId(u64);

impl EntryId {
    /// The entry a number names (from the control socket or a dext's
    /// call): whether one exists is the registry's to say.
    pub const fn from_raw(id: u64) -> EntryId {
        EntryId(id)
    }

    /// The number ioreg prints.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// The entry's service as the wire names it.
    pub const fn object(self) -> ObjectId {
        ObjectId(self.0)
    }

    /// The entry a dext names as a wire object.
    pub const fn of_object(object: ObjectId) -> EntryId {
        EntryId(object.0)
    }
}

/// The number in decimal, as JSON and the control socket carry it;
/// `{:#x}` prints it as ioreg does (`0x100000123`).
impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// `0x100000105` as ioreg prints it, or the same number in decimal
/// (`4294967557`).
impl std::str::FromStr for EntryId {
    type Err = NotAnEntryId;

    fn from_str(s: &str) -> Result<EntryId, NotAnEntryId> {
        let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => s.parse(),
        };
        parsed.map(EntryId).map_err(|_| NotAnEntryId(s.to_owned()))
    }
}

/// A string that names no entry ID.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a registry entry ID (like 0x100000105)")]
pub struct NotAnEntryId(pub String);

impl fmt::LowerHex for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}

/// Where entry IDs start, like on macOS.
const FIRST_ID: EntryId = EntryId(0x1_0000_0100);

/// Lifecycle flags shown by ioreg.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct State {
    /// `register_service` has run: other drivers may match against it.
    pub registered: bool,
    /// Matching has run: as a provider (its clients were chosen), or as a
    /// client (it was chosen by matching).
    pub matched: bool,
    /// Started and not terminated.
    pub active: bool,
    /// Termination has begun; `stop` is coming or running.
    pub terminating: bool,
}

/// Which driver process hosts a service, and through which personality it
/// was matched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hosting {
    /// The user server (process) holding the instance.
    pub server: ServerId,
    /// The process ID.
    pub pid: u32,
    /// `CFBundleIdentifier` of the dext.
    pub bundle: String,
    /// The personality's name.
    pub personality: String,
}

/// One service.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub id: EntryId,
    pub name: String,
    /// The class and its superclasses, most derived first.
    pub class_chain: Vec<String>,
    pub properties: plist::Dictionary,
    pub provider: Option<EntryId>,
    pub clients: Vec<EntryId>,
    pub state: State,
    /// The `IOMatchCategory` this service occupies on its provider.
    pub match_category: Option<String>,
    /// Set for services implemented by a dext.
    pub hosting: Option<Hosting>,
    /// Drivers (`bundle/personality`) that failed to start on this provider
    /// or left it of their own accord: matching does not offer it to them
    /// again until the catalogue changes.
    #[serde(skip)]
    pub declined: Vec<String>,
    /// The family that serves calls to this entry, if any.
    #[serde(skip)]
    pub family: Option<FamilyId>,
}

impl Entry {
    /// The most derived class.
    pub fn class(&self) -> &str {
        self.class_chain
            .first()
            .map(String::as_str)
            .unwrap_or("OSObject")
    }

    /// What matching sees of this entry.
    pub fn match_target(&self) -> crate::family::MatchTarget<'_> {
        crate::family::MatchTarget {
            name: &self.name,
            class_chain: &self.class_chain,
            properties: &self.properties,
        }
    }

    /// True when the service is an instance of `class` or a subclass.
    pub fn is_kind_of(&self, class: &str) -> bool {
        self.class_chain.iter().any(|c| c == class)
    }
}

/// The registry.
#[derive(Debug)]
pub struct Registry {
    entries: BTreeMap<EntryId, Entry>,
    next_id: EntryId,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry {
            entries: BTreeMap::new(),
            next_id: FIRST_ID,
        }
    }

    /// Adds an entry of a class the wire protocol knows as a client of
    /// `provider` and returns its ID.
    pub fn insert(
        &mut self,
        name: &str,
        class: &str,
        properties: plist::Dictionary,
        provider: Option<EntryId>,
    ) -> EntryId {
        let class_chain = driverkit_wire::classes::chain(class)
            .into_iter()
            .map(str::to_owned)
            .collect();
        self.insert_with_chain(name, class_chain, properties, provider, None)
    }

    /// Adds an entry whose class chain (most derived first) and owning
    /// family are known.
    pub fn insert_with_chain(
        &mut self,
        name: &str,
        class_chain: Vec<String>,
        properties: plist::Dictionary,
        provider: Option<EntryId>,
        family: Option<FamilyId>,
    ) -> EntryId {
        let id = self.next_id;
        self.next_id = EntryId(id.0 + 1);
        self.entries.insert(
            id,
            Entry {
                id,
                name: name.to_owned(),
                class_chain,
                properties,
                provider,
                clients: Vec::new(),
                state: State::default(),
                match_category: None,
                hosting: None,
                declined: Vec::new(),
                family,
            },
        );
        if let Some(p) = provider.and_then(|p| self.entries.get_mut(&p)) {
            p.clients.push(id);
        }
        id
    }

    /// Removes an entry, unlinking it from its provider. Its clients must
    /// already be gone (termination is bottom-up).
    pub fn remove(&mut self, id: EntryId) -> Option<Entry> {
        let entry = self.entries.remove(&id)?;
        if let Some(p) = entry.provider.and_then(|p| self.entries.get_mut(&p)) {
            p.clients.retain(|c| *c != id);
        }
        Some(entry)
    }

    pub fn get(&self, id: EntryId) -> Option<&Entry> {
        self.entries.get(&id)
    }

    pub fn get_mut(&mut self, id: EntryId) -> Option<&mut Entry> {
        self.entries.get_mut(&id)
    }

    /// Every entry, mutably, in ID order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Entry> {
        self.entries.values_mut()
    }

    /// Every entry, in ID order.
    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `id` and everything below it, deepest first: the order termination
    /// stops them in.
    pub fn subtree_bottom_up(&self, id: EntryId) -> Vec<EntryId> {
        let mut out = Vec::new();
        self.collect_bottom_up(id, &mut out);
        out
    }

    fn collect_bottom_up(&self, id: EntryId, out: &mut Vec<EntryId>) {
        if let Some(e) = self.entries.get(&id) {
            for c in &e.clients {
                self.collect_bottom_up(*c, out);
            }
            out.push(id);
        }
    }

    /// A serializable copy of the tree under the roots (entries without a
    /// provider).
    pub fn snapshot(&self) -> Vec<Node> {
        self.entries
            .values()
            .filter(|e| e.provider.is_none())
            .map(|e| self.node(e))
            .collect()
    }

    fn node(&self, e: &Entry) -> Node {
        Node {
            id: e.id,
            name: e.name.clone(),
            class: e.class().to_owned(),
            class_chain: e.class_chain.clone(),
            state: e.state,
            pid: e.hosting.as_ref().map(|h| h.pid),
            properties: e.properties.clone(),
            children: e
                .clients
                .iter()
                .filter_map(|c| self.entries.get(c))
                .map(|c| self.node(c))
                .collect(),
        }
    }
}

/// One entry of a registry snapshot, as `ioreg` receives it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Node {
    pub id: EntryId,
    pub name: String,
    pub class: String,
    pub class_chain: Vec<String>,
    pub state: State,
    /// The PID of the dext hosting this service, if a dext does.
    pub pid: Option<u32>,
    pub properties: plist::Dictionary,
    pub children: Vec<Node>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_and_bottom_up_order() {
        let mut r = Registry::new();
        let root = r.insert("Root", "IORegistryEntry", Default::default(), None);
        let bus = r.insert("Bus", "IOService", Default::default(), Some(root));
        let dev = r.insert("Dev", "IOVirtualDevice", Default::default(), Some(bus));
        let drv = r.insert("Drv", "IOUserService", Default::default(), Some(dev));
        assert_eq!(root, EntryId::from_raw(0x1_0000_0100));
        assert_eq!(format!("{root:#x}"), "0x100000100");
        assert_eq!(root.to_string().parse::<EntryId>().ok(), Some(root));
        assert_eq!(r.subtree_bottom_up(bus), vec![drv, dev, bus]);
        assert!(r.get(dev).unwrap().is_kind_of("IOService"));
        r.remove(drv);
        assert!(r.get(dev).unwrap().clients.is_empty());
        let snap = r.snapshot();
        assert_eq!(snap.len(), 1);
        assert_eq!(snap[0].children[0].children[0].name, "Dev");
    }
}

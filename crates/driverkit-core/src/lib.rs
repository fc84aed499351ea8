//! The daemon's core: it plays the kernel's role, for any family.
//!
//! - [`registry`]: every service, its class, properties and links;
//! - [`matching`]: the personality catalogue and how candidates are chosen;
//! - [`lifecycle`]: what ties matching to processes ([`Core`]);
//! - [`family`]: the seam families plug into ([`Family`]), and [`System`],
//!   what the core lets families and backends do;
//! - `io_service`: a dext's calls into the system, routed to families;
//! - `user_server`: the dext processes and their sockets;
//! - [`user_client`]: `IOServiceOpen`, between apps and dexts;
//! - [`store`] and [`sysext`]: the extension store and its requests;
//! - [`control`]: the socket the `driverkit` CLI talks to, which families
//!   and backends extend with their own requests;
//! - [`ioreg`]: the registry as ioreg shows it.
//!
//! **Architecture Invariant:** the core names no family, no family class and
//! no backend. It does not depend on the USB or HID crates, and a test
//! (`tests/no_family_names.rs`) searches its sources for their words.
//! Everything a family does, it does through [`Family`] and [`System`].

mod channel_pool;
pub mod control;
mod dext_log;
mod epoll_loop;
pub mod family;
mod io_service;
pub mod ioreg;
pub mod lifecycle;
pub mod matching;
pub mod peer;
mod process;
pub mod registry;
pub mod root;
pub mod sandbox;
mod server_sockets;
pub mod store;
pub mod sysext;
mod system;
pub mod user_client;
mod user_server;
pub mod why;
mod workers;

pub use family::{Call, Family, FamilyId, FamilyMatcher, Interrupt, MatchTarget, Read};
pub use lifecycle::{Config, Core, CoreError, DeviceInfo, Event, RequestId};
pub use peer::{Peer, Role};
pub use registry::EntryId;
pub use system::{DriverCaller, Nub, Plugged, System};
pub use user_server::ServerId;

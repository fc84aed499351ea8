//! The wire protocol between the driverkit daemon and driver processes.
//!
//! This crate is the one both sides depend on; it knows nothing of either.
//! It holds:
//!
//! - [`header`]: the 32-byte message header, as a byte view and a `Repr`;
//! - [`codec`]: how typed arguments become payload bytes ([`Wire`]);
//! - [`transport`]: `SOCK_SEQPACKET` endpoints that pass descriptors;
//! - [`interfaces`]: the system classes' remote methods, declared with the
//!   `#[interface]` macro, which generates typed proxies and dispatchers;
//! - [`classes`]: the system class hierarchy;
//! - [`IOReturn`]: DriverKit's status codes.

pub mod channel;
pub mod classes;
pub mod codec;
pub mod event_log;
pub mod header;
pub mod hex;
pub mod interfaces;
pub mod interrupt;
mod ioreturn;
pub mod net;
pub mod pci;
pub mod ring;
pub mod root;
pub mod serial;
pub mod shm;
pub mod sync;
pub mod sysext_error;
pub mod transport;
pub mod user_client;

pub use codec::{decode_reply, Bytes, Decoder, Encoder, Wire, WireError};
pub use header::{
    Header, Kind, Packet, FLAG_SUPERDISPATCH, HEADER_LEN, PROTOCOL_VERSION, SYSTEM_MEMORY,
};
pub use ioreturn::{IOResult, IOReturn};

/// Identifies an object across the process boundary. For services it is the
/// registry entry ID; 0 is the user server (the dext process itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ObjectId(pub u64);

impl ObjectId {
    /// The user server, the receiver of lifecycle calls.
    pub const USER_SERVER: ObjectId = ObjectId(0);
}

/// A method's stable ID: FNV-1a 64 of `"Class::method"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MethodId(pub u64);

/// Carries a request to the other side and waits for its reply. Generated
/// proxies are generic over it, so the same proxy serves the daemon (calls
/// into a dext) and the SDK (calls into the daemon).
pub trait Caller {
    /// Sends `args` to `method` of `object`; the reply's payload or status.
    fn call(&self, object: ObjectId, method: MethodId, flags: u8, args: &[u8])
        -> IOResult<Vec<u8>>;
}

/// The name of a method of any system class, for logs.
pub fn method_name(id: MethodId) -> Option<&'static str> {
    interfaces::io_service_interface::method_name(id)
        .or_else(|| interfaces::io_user_server_interface::method_name(id))
}

// The generated code names this crate by its absolute path.
extern crate self as driverkit_wire;

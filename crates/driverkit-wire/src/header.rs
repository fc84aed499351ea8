//! The message header: a typed view over bytes and its validated `Repr`.
//!
//! Every message on a daemon <-> dext socket is one `SOCK_SEQPACKET` record:
//! a 32-byte header followed by the payload.
//!
//! ```text
//!  0      1      2             4                    8
//! +------+------+-------------+--------------------+
//! | kind | flags| version     | call id            |
//! +------+------+-------------+--------------------+
//! | object id (registry entry ID, 0 = the user server)  |
//! +-----------------------------------------------------+
//! | method id (FNV-1a of "Class::method")               |
//! +--------------------+--------------------------------+
//! | status (IOReturn)  | payload length                 |
//! +--------------------+--------------------------------+
//! ```
//!
//! [`Packet`] reads fields without ever panicking once `check_len` has
//! passed; [`Header`] is the parsed, validated form, and `emit` is its exact
//! inverse.

use crate::{IOReturn, MethodId, ObjectId};
use std::fmt;

/// Size of the fixed header.
pub const HEADER_LEN: usize = 32;
/// The protocol version this build speaks; a peer with another is refused.
pub const PROTOCOL_VERSION: u16 = 1;
/// `flags` bit: run the superclass implementation in the system
/// (`SUPERDISPATCH`), not the most derived one.
pub const FLAG_SUPERDISPATCH: u8 = 0x01;

mod field {
    use std::ops::Range;
    pub const KIND: usize = 0;
    pub const FLAGS: usize = 1;
    pub const VERSION: Range<usize> = 2..4;
    pub const CALL: Range<usize> = 4..8;
    pub const OBJECT: Range<usize> = 8..16;
    pub const METHOD: Range<usize> = 16..24;
    pub const STATUS: Range<usize> = 24..28;
    pub const LENGTH: Range<usize> = 28..32;
}

/// The bit that marks a region's ID as the system's (handed to a dext)
/// rather than one a dext registered.
pub const SYSTEM_MEMORY: u64 = 1 << 63;

/// What a message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A method call; a `Reply` with the same call id answers it.
    Request = 1,
    /// The answer to a `Request`.
    Reply = 2,
    /// A one-way method call (no reply).
    Oneway = 3,
    /// Dext -> daemon: a new call channel; the socket travels as `SCM_RIGHTS`.
    Channel = 4,
    /// Dext -> daemon, first message: the dext's protocol version and PID.
    Hello = 5,
    /// A shared-memory region under the ID in the object field; the memfd
    /// travels as `SCM_RIGHTS`. Dext -> daemon: registered for later calls
    /// to name. Daemon -> dext: handed over (IDs with [`SYSTEM_MEMORY`]
    /// set), for the dext to take when a call's answer names it.
    Memory = 6,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Request,
            2 => Kind::Reply,
            3 => Kind::Oneway,
            4 => Kind::Channel,
            5 => Kind::Hello,
            6 => Kind::Memory,
            _ => return None,
        })
    }
}

/// Why a header was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    /// Fewer bytes than a header.
    Truncated { len: usize },
    /// The length field disagrees with the record's size.
    Length { declared: usize, actual: usize },
    /// An unknown `kind` byte.
    Kind { found: u8 },
    /// A peer speaking another protocol version.
    Version { found: u16 },
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::Truncated { len } => write!(
                f,
                "message of {len} bytes is shorter than the {HEADER_LEN}-byte header"
            ),
            HeaderError::Length { declared, actual } => {
                write!(f, "header at offset 28 declares a {declared}-byte payload, the message carries {actual}")
            }
            HeaderError::Kind { found } => {
                write!(f, "header at offset 0: unknown message kind {found}")
            }
            HeaderError::Version { found } => {
                write!(
                    f,
                    "header at offset 2: protocol version {found}, expected {PROTOCOL_VERSION}"
                )
            }
        }
    }
}

impl std::error::Error for HeaderError {}

/// A read-only view of a message's bytes.
#[derive(Debug, Clone, Copy)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps bytes without checking them; accessors may then panic.
    pub fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Wraps bytes after [`Packet::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self, HeaderError> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Ensures every accessor is in bounds and the payload length is honest.
    pub fn check_len(&self) -> Result<(), HeaderError> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(HeaderError::Truncated { len });
        }
        let declared = self.payload_len() as usize;
        if declared != len - HEADER_LEN {
            return Err(HeaderError::Length {
                declared,
                actual: len - HEADER_LEN,
            });
        }
        Ok(())
    }

    fn u16_at(&self, r: std::ops::Range<usize>) -> u16 {
        let b = &self.buffer.as_ref()[r];
        u16::from_le_bytes([b[0], b[1]])
    }
    fn u32_at(&self, r: std::ops::Range<usize>) -> u32 {
        let b = &self.buffer.as_ref()[r];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
    fn u64_at(&self, r: std::ops::Range<usize>) -> u64 {
        let mut a = [0; 8];
        a.copy_from_slice(&self.buffer.as_ref()[r]);
        u64::from_le_bytes(a)
    }

    /// The raw kind byte.
    pub fn kind(&self) -> u8 {
        self.buffer.as_ref()[field::KIND]
    }
    /// The flags byte.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }
    /// The sender's protocol version.
    pub fn version(&self) -> u16 {
        self.u16_at(field::VERSION)
    }
    /// The call id that pairs a request with its reply.
    pub fn call(&self) -> u32 {
        self.u32_at(field::CALL)
    }
    /// The addressed object.
    pub fn object(&self) -> u64 {
        self.u64_at(field::OBJECT)
    }
    /// The method ID.
    pub fn method(&self) -> u64 {
        self.u64_at(field::METHOD)
    }
    /// The status of a reply.
    pub fn status(&self) -> u32 {
        self.u32_at(field::STATUS)
    }
    /// The declared payload length.
    pub fn payload_len(&self) -> u32 {
        self.u32_at(field::LENGTH)
    }
    /// The payload.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

/// A validated header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub flags: u8,
    pub call: u32,
    pub object: ObjectId,
    pub method: MethodId,
    pub status: IOReturn,
}

impl Header {
    /// A header for a message of `kind` with everything else zero.
    pub fn new(kind: Kind) -> Header {
        Header {
            kind,
            flags: 0,
            call: 0,
            object: ObjectId(0),
            method: MethodId(0),
            status: IOReturn::SUCCESS,
        }
    }

    /// The header of call `call` to `method` of `object`.
    pub fn request(call: u32, object: ObjectId, method: MethodId, flags: u8) -> Header {
        Header {
            kind: Kind::Request,
            flags,
            call,
            object,
            method,
            status: IOReturn::SUCCESS,
        }
    }

    /// Validates a packet's header.
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Header, HeaderError> {
        p.check_len()?;
        if p.version() != PROTOCOL_VERSION {
            return Err(HeaderError::Version { found: p.version() });
        }
        let kind = Kind::from_u8(p.kind()).ok_or(HeaderError::Kind { found: p.kind() })?;
        Ok(Header {
            kind,
            flags: p.flags(),
            call: p.call(),
            object: ObjectId(p.object()),
            method: MethodId(p.method()),
            status: IOReturn(p.status()),
        })
    }

    /// Writes the reply to `request` carrying `result` into `out`: the
    /// status in the header, the payload on success.
    pub fn emit_reply(request: &Header, result: &crate::IOResult<Vec<u8>>, out: &mut Vec<u8>) {
        let mut h = Header::new(Kind::Reply);
        h.call = request.call;
        h.object = request.object;
        h.method = request.method;
        match result {
            Ok(payload) => h.emit(payload, out),
            Err(status) => {
                h.status = *status;
                h.emit(&[], out)
            }
        }
    }

    /// Writes this header and `payload` as one message into `out` (cleared first).
    pub fn emit(&self, payload: &[u8], out: &mut Vec<u8>) {
        out.clear();
        out.reserve(HEADER_LEN + payload.len());
        out.push(self.kind as u8);
        out.push(self.flags);
        out.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        out.extend_from_slice(&self.call.to_le_bytes());
        out.extend_from_slice(&self.object.0.to_le_bytes());
        out.extend_from_slice(&self.method.0.to_le_bytes());
        out.extend_from_slice(&self.status.0.to_le_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(payload);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn short_and_lying_messages_are_refused() {
        assert_eq!(
            Packet::new_checked(&[0u8; 5][..]).unwrap_err(),
            HeaderError::Truncated { len: 5 }
        );
        let mut msg = Vec::new();
        Header::new(Kind::Request).emit(b"abc", &mut msg);
        msg.pop();
        assert_eq!(
            Packet::new_checked(&msg[..]).unwrap_err(),
            HeaderError::Length {
                declared: 3,
                actual: 2
            }
        );
        let mut msg = Vec::new();
        Header::new(Kind::Request).emit(b"", &mut msg);
        msg[0] = 99;
        assert_eq!(
            Header::parse(&Packet::new_unchecked(&msg[..])).unwrap_err(),
            HeaderError::Kind { found: 99 }
        );
    }

    proptest! {
        #[test]
        fn emit_then_parse_is_identity(kind in 1u8..=6, flags: u8, call: u32, object: u64, method: u64, status: u32,
                                       payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let h = Header { kind: Kind::from_u8(kind).unwrap(), flags, call, object: ObjectId(object),
                             method: MethodId(method), status: IOReturn(status) };
            let mut msg = Vec::new();
            h.emit(&payload, &mut msg);
            let p = Packet::new_checked(&msg[..]).unwrap();
            prop_assert_eq!(Header::parse(&p).unwrap(), h);
            prop_assert_eq!(p.payload(), &payload[..]);
        }

        #[test]
        fn parsing_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(p) = Packet::new_checked(&bytes[..]) {
                let _ = Header::parse(&p);
                let _ = p.payload();
            }
        }
    }
}

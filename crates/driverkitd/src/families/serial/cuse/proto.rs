//! The CUSE protocol on `/dev/cuse`: what the kernel asks of a character
//! device served in user space, and how it is answered (`fuse.h`,
//! `cuse.h`, the FUSE protocol version 7).
//!
//! Each `read` of `/dev/cuse` returns one request: a 40-byte header (its
//! length, opcode, a unique ID and the caller's uid, gid and pid) and the
//! opcode's body. Each `write` is one answer: a 16-byte header (length,
//! a negated errno, the request's unique ID) and the answer's body, or an
//! unsolicited notification (unique 0). [`Request::parse`] reads a
//! request, checking every length against the bytes there are (the bytes
//! come from the kernel, but a parser of outside bytes never indexes past
//! its input); the `*_reply` functions emit answers.

/// The protocol's major version, and the minor one this side speaks.
pub const KERNEL_VERSION: u32 = 7;
pub const KERNEL_MINOR: u32 = 31;

const IN_HEADER: usize = 40;
const OUT_HEADER: usize = 16;

/// Opcodes this side serves; any other is answered `ENOSYS`.
pub mod opcode {
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const FLUSH: u32 = 25;
    pub const INTERRUPT: u32 = 36;
    pub const IOCTL: u32 = 39;
    pub const POLL: u32 = 40;
    pub const CUSE_INIT: u32 = 4096;
}

/// `CUSE_UNRESTRICTED_IOCTL`: ioctls arrive as they were made (command
/// and argument), and the server says which user memory they read and
/// write; a tty's ioctls do not encode their sizes in their numbers.
const CUSE_UNRESTRICTED_IOCTL: u32 = 1;
/// `FUSE_IOCTL_*` flags.
pub const IOCTL_COMPAT: u32 = 1;
const IOCTL_RETRY: u32 = 4;
/// `FUSE_POLL_SCHEDULE_NOTIFY`: the caller sleeps; notify its handle.
pub const POLL_SCHEDULE_NOTIFY: u32 = 1;
/// `FUSE_NOTIFY_POLL`.
const NOTIFY_POLL: i32 = 1;
/// The most bytes a write request carries (`max_write`), and a read
/// answer (`max_read`).
pub const MAX_IO: u32 = 64 * 1024;
/// A request buffer: the largest write and its headers.
pub const REQUEST_BUFFER: usize = MAX_IO as usize + 4096;

/// Who made a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

/// One request of the kernel, its body decoded.
#[derive(Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// `CUSE_INIT`: the kernel's protocol version.
    Init {
        major: u32,
        minor: u32,
    },
    /// An `open` of the device node; `flags` as `open(2)`'s.
    Open {
        flags: u32,
    },
    Read {
        fh: u64,
        size: u32,
        flags: u32,
    },
    Write {
        fh: u64,
        data: &'a [u8],
    },
    /// The last close of an open file.
    Release {
        fh: u64,
    },
    /// Every `close` of a descriptor (`filp_close`).
    Flush {
        fh: u64,
    },
    Fsync {
        fh: u64,
    },
    /// The caller of request `unique` got a signal.
    Interrupt {
        unique: u64,
    },
    Ioctl(Ioctl<'a>),
    Poll {
        fh: u64,
        handle: u64,
        flags: u32,
        events: u32,
    },
    /// An opcode this side does not serve.
    Other {
        opcode: u32,
    },
}

/// An `ioctl`: the command, its argument (a value, or the caller's
/// address of its data), and the data the kernel brought along
/// (`input`, once the server asked for it) and room for an answer.
#[derive(Debug, PartialEq, Eq)]
pub struct Ioctl<'a> {
    pub fh: u64,
    pub flags: u32,
    pub cmd: u32,
    pub arg: u64,
    pub input: &'a [u8],
    pub out_size: u32,
}

/// Why a request could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Fewer bytes than a header.
    Short { len: usize },
    /// The header's length says otherwise than the bytes read.
    Length { said: u32, read: usize },
    /// The opcode's body is shorter than its fixed part.
    Body {
        opcode: u32,
        need: usize,
        have: usize,
    },
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::Short { len } => {
                write!(
                    f,
                    "a request of {len} bytes, shorter than its {IN_HEADER}-byte header"
                )
            }
            ParseError::Length { said, read } => {
                write!(f, "a request's header says {said} bytes, {read} were read")
            }
            ParseError::Body { opcode, need, have } => write!(
                f,
                "opcode {opcode}: a body of {have} bytes, its fixed part is {need}"
            ),
        }
    }
}

impl std::error::Error for ParseError {}

/// A request's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub opcode: u32,
    pub unique: u64,
    pub caller: Caller,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | (u64::from(u32_at(b, at + 4)) << 32)
}

impl<'a> Request<'a> {
    /// One request, as a `read` of `/dev/cuse` returned it.
    pub fn parse(bytes: &'a [u8]) -> Result<(Header, Request<'a>), ParseError> {
        if bytes.len() < IN_HEADER {
            return Err(ParseError::Short { len: bytes.len() });
        }
        let said = u32_at(bytes, 0);
        if said as usize != bytes.len() {
            return Err(ParseError::Length {
                said,
                read: bytes.len(),
            });
        }
        let header = Header {
            opcode: u32_at(bytes, 4),
            unique: u64_at(bytes, 8),
            caller: Caller {
                uid: u32_at(bytes, 24),
                gid: u32_at(bytes, 28),
                pid: u32_at(bytes, 32),
            },
        };
        let body = &bytes[IN_HEADER..];
        // The variable part after a fixed one: `len` bytes at `at`.
        let trailing = |at: usize, len: usize| {
            body.get(at..at + len).ok_or(ParseError::Body {
                opcode: header.opcode,
                need: at + len,
                have: body.len(),
            })
        };
        let need = |n: usize| {
            if body.len() < n {
                Err(ParseError::Body {
                    opcode: header.opcode,
                    need: n,
                    have: body.len(),
                })
            } else {
                Ok(())
            }
        };
        let request = match header.opcode {
            opcode::CUSE_INIT => {
                need(16)?;
                Request::Init {
                    major: u32_at(body, 0),
                    minor: u32_at(body, 4),
                }
            }
            opcode::OPEN => {
                need(8)?;
                Request::Open {
                    flags: u32_at(body, 0),
                }
            }
            opcode::READ => {
                need(40)?;
                Request::Read {
                    fh: u64_at(body, 0),
                    size: u32_at(body, 16),
                    flags: u32_at(body, 32),
                }
            }
            opcode::WRITE => {
                need(40)?;
                Request::Write {
                    fh: u64_at(body, 0),
                    data: trailing(40, u32_at(body, 16) as usize)?,
                }
            }
            opcode::RELEASE => {
                need(24)?;
                Request::Release {
                    fh: u64_at(body, 0),
                }
            }
            opcode::FLUSH => {
                need(24)?;
                Request::Flush {
                    fh: u64_at(body, 0),
                }
            }
            opcode::FSYNC => {
                need(16)?;
                Request::Fsync {
                    fh: u64_at(body, 0),
                }
            }
            opcode::INTERRUPT => {
                need(8)?;
                Request::Interrupt {
                    unique: u64_at(body, 0),
                }
            }
            opcode::IOCTL => {
                need(32)?;
                let input = trailing(32, u32_at(body, 24) as usize)?;
                Request::Ioctl(Ioctl {
                    fh: u64_at(body, 0),
                    flags: u32_at(body, 8),
                    cmd: u32_at(body, 12),
                    arg: u64_at(body, 16),
                    input,
                    out_size: u32_at(body, 28),
                })
            }
            opcode::POLL => {
                need(24)?;
                Request::Poll {
                    fh: u64_at(body, 0),
                    handle: u64_at(body, 8),
                    flags: u32_at(body, 16),
                    events: u32_at(body, 20),
                }
            }
            other => Request::Other { opcode: other },
        };
        Ok((header, request))
    }
}

/// An answer: the header and `body`.
fn answer(unique: u64, error: i32, body: &[&[u8]]) -> Vec<u8> {
    let len = OUT_HEADER + body.iter().map(|b| b.len()).sum::<usize>();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&error.to_le_bytes());
    out.extend_from_slice(&unique.to_le_bytes());
    for b in body {
        out.extend_from_slice(b);
    }
    out
}

/// A failure: `errno` (positive, as `libc::E*`).
pub fn error_reply(unique: u64, errno: i32) -> Vec<u8> {
    answer(unique, -errno, &[])
}

/// Success with no body (release, flush, fsync).
pub fn empty_reply(unique: u64) -> Vec<u8> {
    answer(unique, 0, &[])
}

/// `CUSE_INIT`'s answer: this side's version, unrestricted ioctls, the
/// sizes of reads and writes, a dynamic device number, and `DEVNAME`.
pub fn init_reply(unique: u64, minor: u32, devname: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(72);
    for v in [
        KERNEL_VERSION,
        minor,
        0,
        CUSE_UNRESTRICTED_IOCTL,
        MAX_IO,
        MAX_IO,
        0, // dev_major: the kernel picks one
        0,
    ] {
        body.extend_from_slice(&v.to_le_bytes());
    }
    body.resize(72, 0);
    let info = format!("DEVNAME={devname}\0");
    answer(unique, 0, &[&body, info.as_bytes()])
}

/// `OPEN`'s answer: the file handle.
pub fn open_reply(unique: u64, fh: u64) -> Vec<u8> {
    let mut body = [0u8; 16];
    body[..8].copy_from_slice(&fh.to_le_bytes());
    answer(unique, 0, &[&body])
}

/// `READ`'s answer: the bytes.
pub fn read_reply(unique: u64, data: &[u8]) -> Vec<u8> {
    answer(unique, 0, &[data])
}

/// `WRITE`'s answer: how many bytes were taken.
pub fn write_reply(unique: u64, written: u32) -> Vec<u8> {
    let mut body = [0u8; 8];
    body[..4].copy_from_slice(&written.to_le_bytes());
    answer(unique, 0, &[&body])
}

/// `POLL`'s answer: the events that hold now.
pub fn poll_reply(unique: u64, revents: u32) -> Vec<u8> {
    let mut body = [0u8; 8];
    body[..4].copy_from_slice(&revents.to_le_bytes());
    answer(unique, 0, &[&body])
}

/// Wakes the pollers registered under `handle` (they poll again).
pub fn poll_notify(handle: u64) -> Vec<u8> {
    answer(0, NOTIFY_POLL, &[&handle.to_le_bytes()])
}

/// `IOCTL`'s answer: the result and what it writes to the caller's memory.
pub fn ioctl_reply(unique: u64, result: i32, out: &[u8]) -> Vec<u8> {
    let mut body = [0u8; 16];
    body[..4].copy_from_slice(&result.to_le_bytes());
    answer(unique, 0, &[&body, out])
}

/// Asks the kernel to make the ioctl again with the caller's memory at
/// `input` (address, length) brought along and room for `output`.
pub fn ioctl_retry(unique: u64, input: Option<(u64, u64)>, output: Option<(u64, u64)>) -> Vec<u8> {
    let mut body = Vec::with_capacity(48);
    let flags = IOCTL_RETRY;
    body.extend_from_slice(&0i32.to_le_bytes());
    body.extend_from_slice(&flags.to_le_bytes());
    body.extend_from_slice(&u32::from(input.is_some()).to_le_bytes());
    body.extend_from_slice(&u32::from(output.is_some()).to_le_bytes());
    for (base, len) in input.into_iter().chain(output) {
        body.extend_from_slice(&base.to_le_bytes());
        body.extend_from_slice(&len.to_le_bytes());
    }
    answer(unique, 0, &[&body])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(opcode: u32, unique: u64, body: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&((IN_HEADER + body.len()) as u32).to_le_bytes());
        b.extend_from_slice(&opcode.to_le_bytes());
        b.extend_from_slice(&unique.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes()); // nodeid
        b.extend_from_slice(&1000u32.to_le_bytes());
        b.extend_from_slice(&1001u32.to_le_bytes());
        b.extend_from_slice(&42u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn a_write_carries_exactly_its_bytes() {
        let mut body = vec![0u8; 40];
        body[..8].copy_from_slice(&7u64.to_le_bytes());
        body[16..20].copy_from_slice(&3u32.to_le_bytes());
        body.extend_from_slice(b"abc");
        let bytes = request(opcode::WRITE, 9, &body);
        let (h, r) = Request::parse(&bytes).unwrap();
        assert_eq!((h.unique, h.caller.uid, h.caller.pid), (9, 1000, 42));
        assert_eq!(
            r,
            Request::Write {
                fh: 7,
                data: b"abc"
            }
        );
        // A size past the bytes there are is named, not read.
        body[16..20].copy_from_slice(&4u32.to_le_bytes());
        let bytes = request(opcode::WRITE, 9, &body);
        assert!(matches!(
            Request::parse(&bytes),
            Err(ParseError::Body {
                opcode: 16,
                need: 44,
                have: 43
            })
        ));
    }

    #[test]
    fn lengths_must_agree() {
        assert_eq!(Request::parse(&[0; 10]), Err(ParseError::Short { len: 10 }));
        let mut bytes = request(opcode::OPEN, 1, &[0; 8]);
        bytes.push(0);
        assert_eq!(
            Request::parse(&bytes),
            Err(ParseError::Length { said: 48, read: 49 })
        );
    }

    #[test]
    fn an_ioctl_brings_its_input() {
        let mut body = vec![0u8; 32];
        body[12..16].copy_from_slice(&0x5418u32.to_le_bytes());
        body[16..24].copy_from_slice(&0x7fff_0000u64.to_le_bytes());
        body[24..28].copy_from_slice(&4u32.to_le_bytes());
        body.extend_from_slice(&6u32.to_le_bytes());
        let bytes = request(opcode::IOCTL, 3, &body);
        let (_, r) = Request::parse(&bytes).unwrap();
        let Request::Ioctl(io) = r else {
            panic!("{r:?}")
        };
        assert_eq!(
            (io.cmd, io.arg, io.input),
            (0x5418, 0x7fff_0000, &6u32.to_le_bytes()[..])
        );
    }

    #[test]
    fn answers_say_their_length() {
        let r = init_reply(5, 31, "ttyDK0");
        assert_eq!(u32_at(&r, 0) as usize, r.len());
        assert_eq!(r.len(), 16 + 72 + "DEVNAME=ttyDK0\0".len());
        let retry = ioctl_retry(5, Some((0x1000, 36)), None);
        assert_eq!(retry.len(), 16 + 16 + 16);
        assert_eq!(u32_at(&retry, 16 + 8), 1); // one input iovec
        assert_eq!(
            error_reply(5, libc::ENOTTY)[4..8],
            (-libc::ENOTTY).to_le_bytes()
        );
    }
}

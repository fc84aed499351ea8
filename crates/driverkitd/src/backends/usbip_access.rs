//! Who may import an exported device. An export lends a device whole to its
//! peer, which then sends it any request it likes: it is as much as giving
//! the device node away, so it has an owner.
//!
//! - A peer's address must be in the export's `--allow` list (addresses or
//!   CIDR ranges); without one, only loopback peers are accepted, and an
//!   export listening beyond loopback is refused until `--allow` says who.
//! - A loopback peer is a local process, so its user is known: the owner of
//!   its socket, which the kernel tells through `sock_diag` (the query `ss
//!   -e` makes). It must be an administrator (root, the daemon's user, the
//!   administrator group) or a user the export names (`--user`).
//!
//! A remote peer's user is unknowable here; `--allow` is all there is, and
//! the export says so in the log.

use std::net::{IpAddr, SocketAddr};

/// An address or a range, `10.0.0.0/8` or `::1/128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub address: IpAddr,
    pub prefix: u8,
}

/// Why an export or an import was refused.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("--allow {0:?}: expected an IP address or a CIDR range (192.168.1.0/24, ::1)")]
    NotAnAddress(String),
    #[error("--allow {text:?}: a prefix length is 0 to {max}")]
    BadPrefix { text: String, max: u8 },
    #[error("exporting at {0} (beyond loopback) needs --allow ADDR|CIDR naming the machines that may import: whoever reaches the port drives the device")]
    NeedsAllow(SocketAddr),
    #[error("peer {peer} is not allowed to import (the export allows {allowed})")]
    NotAllowed { peer: SocketAddr, allowed: String },
    #[error("peer {peer}: its socket's owner cannot be found ({source})")]
    OwnerUnknown {
        peer: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("peer {peer} is a process of uid {uid}, which is neither an administrator nor a user the export names (`device export --user NAME`)")]
    NotAUser { peer: SocketAddr, uid: u32 },
}

impl From<AccessError> for String {
    fn from(e: AccessError) -> String {
        e.to_string()
    }
}

impl Cidr {
    /// Parses `ADDR` or `ADDR/PREFIX`; the error says what was expected.
    pub fn parse(text: &str) -> Result<Cidr, AccessError> {
        let (address, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let address: IpAddr = address
            .parse()
            .map_err(|_| AccessError::NotAnAddress(text.to_owned()))?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| {
                AccessError::BadPrefix {
                    text: text.to_owned(),
                    max,
                }
            })?,
        };
        Ok(Cidr { address, prefix })
    }

    /// Whether `ip` is in the range (an IPv4 peer on an IPv6 socket counts
    /// as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let keep = |bits: u32, width: u32| -> u128 {
            if bits == 0 {
                0
            } else {
                (!0u128 << (width - bits)) & (!0u128 >> (128 - width))
            }
        };
        match (self.address, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = keep(self.prefix.into(), 32);
                (u32::from(a) as u128 & mask) == (u32::from(b) as u128 & mask)
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = keep(self.prefix.into(), 128);
                (u128::from(a) & mask) == (u128::from(b) & mask)
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    /// As `--allow` takes it: `10.0.0.0/8`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

/// `10.0.0.0/8, 192.168.1.7/32`.
fn listed(ranges: &[Cidr]) -> String {
    ranges
        .iter()
        .map(Cidr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Who may import from one export.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Peer addresses accepted; empty: loopback only.
    pub allow: Vec<Cidr>,
    /// Users (besides administrators) whose local processes may import.
    pub users: Vec<u32>,
    /// Whether `uid` is an administrator of this daemon.
    pub admin_group: Option<String>,
}

impl Access {
    /// Refuses an export that would listen beyond loopback with no
    /// `--allow`, and warns for one that has it.
    pub fn check_listen(&self, listen: SocketAddr) -> Result<(), AccessError> {
        if listen.ip().is_loopback() {
            return Ok(());
        }
        if self.allow.is_empty() {
            return Err(AccessError::NeedsAllow(listen));
        }
        tracing::warn!(
            "usbip    exporting beyond loopback at {listen}, to {}: any process on those machines that reaches the port may import",
            listed(&self.allow)
        );
        Ok(())
    }

    /// Whether the peer at `peer` (connected to us at `local`) may import;
    /// the refusal names the rule.
    pub fn admit(&self, peer: SocketAddr, local: SocketAddr) -> Result<(), AccessError> {
        let ip = peer.ip();
        let loopback = match ip {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map_or(v6.is_loopback(), |v4| v4.is_loopback()),
            v4 => v4.is_loopback(),
        };
        let allowed = if self.allow.is_empty() {
            loopback
        } else {
            self.allow.iter().any(|c| c.contains(ip))
        };
        if !allowed {
            return Err(AccessError::NotAllowed {
                peer,
                allowed: if self.allow.is_empty() {
                    "loopback only; `device export --allow ADDR|CIDR` adds others".to_owned()
                } else {
                    listed(&self.allow)
                },
            });
        }
        if !loopback {
            return Ok(());
        }
        let uid = socket_owner(peer, local)
            .map_err(|source| AccessError::OwnerUnknown { peer, source })?;
        let me = rustix::process::geteuid().as_raw();
        let admin = uid == 0
            || uid == me
            || self
                .admin_group
                .as_deref()
                .is_some_and(|g| driverkit_core::peer::uid_in_group(uid, g));
        if admin || self.users.contains(&uid) {
            return Ok(());
        }
        Err(AccessError::NotAUser { peer, uid })
    }
}

/// The user owning the TCP socket at `peer` connected to `local`, both on
/// this machine: `sock_diag`'s exact lookup (`NETLINK_SOCK_DIAG`,
/// `SOCK_DIAG_BY_FAMILY`).
pub fn socket_owner(peer: SocketAddr, local: SocketAddr) -> std::io::Result<u32> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: a plain socket(2); the descriptor is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let request = diag_request(peer, local);
    // SAFETY: send(2) of our own buffer.
    let sent = unsafe { libc::send(fd.as_raw_fd(), request.as_ptr().cast(), request.len(), 0) };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut reply = [0u8; 4096];
    let timeout = libc::timeval {
        tv_sec: 2,
        tv_usec: 0,
    };
    // SAFETY: setsockopt(2) with a timeval of the size given.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    // SAFETY: recv(2) into our own buffer, at most its length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), reply.as_mut_ptr().cast(), reply.len(), 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    parse_diag_reply(&reply[..n as usize])
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_HEADER: usize = std::mem::size_of::<libc::nlmsghdr>();
const INET_DIAG_REQ_V2: usize = 56;
/// `inet_diag_msg`: family, state, timer, retrans, the socket ID (48),
/// expires, rqueue, wqueue, uid, inode.
const INET_DIAG_MSG: usize = 72;
const UID_OFFSET: usize = 64;

/// The exact-lookup request for the socket whose source is `peer` and
/// destination `local` (the peer's own socket, seen from its side).
fn diag_request(peer: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let v4 = |a: SocketAddr| match a.ip() {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    let (src, dst) = (v4(peer), v4(local));
    let family = if src.is_ipv4() && dst.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let bytes = |ip: IpAddr| -> [u8; 16] {
        let mut out = [0u8; 16];
        match ip {
            IpAddr::V4(a) if family == libc::AF_INET => out[..4].copy_from_slice(&a.octets()),
            IpAddr::V4(a) => out = a.to_ipv6_mapped().octets(),
            IpAddr::V6(a) => out = a.octets(),
        }
        out
    };
    let len = NLMSG_HEADER + INET_DIAG_REQ_V2;
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    m.push(family as u8);
    m.push(libc::IPPROTO_TCP as u8);
    m.push(0); // extensions
    m.push(0); // padding
    m.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
                                                  // inet_diag_sockid: ports big-endian, addresses, interface, cookie.
    m.extend_from_slice(&peer.port().to_be_bytes());
    m.extend_from_slice(&local.port().to_be_bytes());
    m.extend_from_slice(&bytes(src));
    m.extend_from_slice(&bytes(dst));
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[0xff; 8]); // INET_DIAG_NOCOOKIE
    m
}

/// The owner's uid from `sock_diag`'s reply: one `inet_diag_msg`, or an
/// error message (`ENOENT`: no such socket). Checked before every read.
pub fn parse_diag_reply(reply: &[u8]) -> std::io::Result<u32> {
    let malformed = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(reply.get(at..at + 4)?.try_into().ok()?))
    };
    let len =
        word(0).ok_or_else(|| malformed("a reply shorter than a netlink header".into()))? as usize;
    if len < NLMSG_HEADER || len > reply.len() {
        return Err(malformed(format!(
            "a netlink message of {len} bytes in a reply of {}",
            reply.len()
        )));
    }
    let kind = u16::from_ne_bytes([reply[4], reply[5]]);
    if kind == libc::NLMSG_ERROR as u16 {
        let code = word(NLMSG_HEADER)
            .ok_or_else(|| malformed("a netlink error without its code".into()))?
            as i32;
        // A kernel's is a negated errno; anything else is named as found.
        return Err(match code.checked_neg().filter(|e| *e > 0) {
            Some(errno) => std::io::Error::from_raw_os_error(errno),
            None => malformed(format!("a netlink error of code {code}")),
        });
    }
    if kind != SOCK_DIAG_BY_FAMILY {
        return Err(malformed(format!(
            "a netlink message of type {kind}, expected {SOCK_DIAG_BY_FAMILY}"
        )));
    }
    if len < NLMSG_HEADER + INET_DIAG_MSG {
        return Err(malformed(format!(
            "an inet_diag_msg of {} bytes, expected {INET_DIAG_MSG}",
            len - NLMSG_HEADER
        )));
    }
    word(NLMSG_HEADER + UID_OFFSET).ok_or_else(|| malformed("no uid".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_contain_what_they_should() {
        let lan = Cidr::parse("192.168.1.0/24").unwrap();
        assert!(lan.contains("192.168.1.77".parse().unwrap()));
        assert!(!lan.contains("192.168.2.1".parse().unwrap()));
        assert!(lan.contains("::ffff:192.168.1.5".parse().unwrap()));
        let one = Cidr::parse("10.0.0.2").unwrap();
        assert_eq!(one.prefix, 32);
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33")
            .unwrap_err()
            .to_string()
            .contains("0 to 32"));
        let e = Cidr::parse("lab").unwrap_err();
        assert!(matches!(e, AccessError::NotAnAddress(_)), "{e}");
        assert!(e.to_string().contains("CIDR"), "{e}");
    }

    #[test]
    fn beyond_loopback_an_export_needs_allow_and_peers_outside_it_are_refused() {
        let none = Access::default();
        let any: SocketAddr = "0.0.0.0:3240".parse().unwrap();
        let e = none.check_listen(any).unwrap_err();
        assert!(matches!(e, AccessError::NeedsAllow(_)), "{e}");
        assert!(e.to_string().contains("--allow"), "{e}");
        assert!(none.check_listen("127.0.0.1:3240".parse().unwrap()).is_ok());
        let lab = Access {
            allow: vec![Cidr::parse("10.1.0.0/16").unwrap()],
            ..Access::default()
        };
        assert!(lab.check_listen(any).is_ok());
        let local: SocketAddr = "10.1.0.1:3240".parse().unwrap();
        assert!(lab.admit("10.1.4.4:5000".parse().unwrap(), local).is_ok());
        let e = lab
            .admit("10.2.0.1:5000".parse().unwrap(), local)
            .unwrap_err();
        assert!(matches!(e, AccessError::NotAllowed { .. }), "{e}");
        let e = none
            .admit("192.168.0.9:5000".parse().unwrap(), local)
            .unwrap_err();
        assert!(e.to_string().contains("loopback only"), "{e}");
    }

    #[test]
    fn the_owner_of_a_local_connection_is_found() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        let uid = socket_owner(peer, server.local_addr().unwrap()).unwrap();
        assert_eq!(uid, rustix::process::geteuid().as_raw());
        drop(client);
    }

    #[test]
    fn bad_replies_are_errors_not_panics() {
        assert!(parse_diag_reply(&[]).is_err());
        // Found by the sock_diag fuzz target: an error code of i32::MIN
        // overflowed its negation.
        let mut error = vec![0u8; 20];
        error[..4].copy_from_slice(&20u32.to_ne_bytes());
        error[4..6].copy_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
        error[16..20].copy_from_slice(&i32::MIN.to_ne_bytes());
        assert!(parse_diag_reply(&error)
            .unwrap_err()
            .to_string()
            .contains("code -2147483648"));
        assert!(parse_diag_reply(&[200, 0, 0, 0]).is_err());
        let mut short = vec![0u8; 20];
        short[..4].copy_from_slice(&20u32.to_ne_bytes());
        short[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        assert!(parse_diag_reply(&short)
            .unwrap_err()
            .to_string()
            .contains("inet_diag_msg"));
    }
}

//! The refusal log: the kernel's audit records of what a dext's sandbox
//! refused, read by the daemon and logged under the dext's name.
//!
//! Seccomp (with `SECCOMP_FILTER_FLAG_LOG`, or in log mode) and Landlock
//! (ABI 7, `log_new_exec`) both report refusals as audit records. The
//! daemon joins the audit netlink socket's read-only multicast group
//! (`AUDIT_NLGRP_READLOG`, which needs `CAP_AUDIT_READ`, held by root), so
//! it sees them whether or not auditd runs, and without changing the
//! system's audit configuration. A Landlock access record names its domain,
//! not its process: the domain's first record (`status=allocated`) gives
//! the process that created it, which is the dext (the domain is made in
//! the child, just before its exec). The kernel writes that record right
//! after the domain's first refusal, so refusals of a domain not yet known
//! wait for it (a few, bounded).
//!
//! Landlock reports only while the kernel's audit is enabled (seccomp
//! always does). Where it is off (no auditd, no `audit=1`), a root daemon
//! turns it on and says so: without it an author would see `EACCES` and
//! never learn which path was refused. It leaves it on at stop: turning it
//! off would race with every other user of audit (a second daemon, an
//! auditd starting), and enabled is what auditd itself sets. With audit
//! already on nothing is changed.
//!
//! The parser reads bytes from the kernel; it never panics and has a fuzz
//! target (`fuzz/fuzz_targets/audit.rs`).

use driverkit_wire::sync::Locked;
use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Message and record types of `include/uapi/linux/audit.h` (the libc
/// crate has none of them), and the status mask bit for `enabled`.
const AUDIT_GET: u16 = 1000;
const AUDIT_SET: u16 = 1001;
const AUDIT_STATUS_ENABLED: u32 = 1;
const AUDIT_SECCOMP: u16 = 1326;
const AUDIT_LANDLOCK_ACCESS: u16 = 1423;
const AUDIT_LANDLOCK_DOMAIN: u16 = 1424;
/// The read-only multicast group of the audit socket.
const AUDIT_NLGRP_READLOG: u32 = 1;

/// One audit record of interest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A system call refused (or, in log mode, logged) by seccomp.
    Seccomp {
        pid: u32,
        syscall: u64,
        logged_only: bool,
    },
    /// A Landlock domain's first refusal: which process made it.
    LandlockDomain { domain: String, pid: u32 },
    /// A refusal by Landlock: what was refused (`fs.read_file`,
    /// `net.connect_tcp`...) and on what (`path="/etc/passwd"`).
    LandlockAccess {
        domain: String,
        blockers: String,
        object: String,
    },
}

/// Splits one netlink datagram into the records of interest. Never panics.
pub fn parse_datagram(bytes: &[u8]) -> Vec<Record> {
    const HEADER: usize = 16;
    let mut records = Vec::new();
    let mut rest = bytes;
    while rest.len() >= HEADER {
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        if len < HEADER || len > rest.len() {
            break;
        }
        if let Some(r) = parse_record(kind, &rest[HEADER..len]) {
            records.push(r);
        }
        // Messages are 4-byte aligned; the last may not be padded.
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    records
}

/// Parses the text of one record of type `kind`.
pub fn parse_record(kind: u16, text: &[u8]) -> Option<Record> {
    let text = std::str::from_utf8(text).ok()?;
    match kind {
        AUDIT_SECCOMP => {
            let code =
                u32::from_str_radix(field(text, "code")?.trim_start_matches("0x"), 16).ok()?;
            Some(Record::Seccomp {
                pid: field(text, "pid")?.parse().ok()?,
                syscall: field(text, "syscall")?.parse().ok()?,
                logged_only: code & libc::SECCOMP_RET_ACTION_FULL == libc::SECCOMP_RET_LOG,
            })
        }
        AUDIT_LANDLOCK_DOMAIN => (field(text, "status")? == "allocated").then(|| {
            Some(Record::LandlockDomain {
                domain: field(text, "domain")?.to_owned(),
                pid: field(text, "pid")?.parse().ok()?,
            })
        })?,
        AUDIT_LANDLOCK_ACCESS => {
            let blockers = field(text, "blockers")?;
            // What follows the blockers names the object refused.
            let object = text
                .split_once(blockers)
                .map(|(_, after)| after.trim())
                .unwrap_or_default();
            Some(Record::LandlockAccess {
                domain: field(text, "domain")?.to_owned(),
                blockers: blockers.to_owned(),
                object: object.to_owned(),
            })
        }
        _ => None,
    }
}

/// The value of `key=value` in a record: up to the next space, or within
/// quotes when quoted.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let mut from = 0;
    while let Some(at) = text.get(from..)?.find(key) {
        let start = from + at;
        let end = start + key.len();
        let boundary = start == 0 || text[..start].ends_with([' ', ':']);
        if boundary && text[end..].starts_with('=') {
            let value = &text[end + 1..];
            return Some(match value.strip_prefix('"') {
                Some(quoted) => quoted.split('"').next().unwrap_or_default(),
                None => value.split(' ').next().unwrap_or_default(),
            });
        }
        from = end;
    }
    None
}

/// The daemon's reader of the audit log.
pub(crate) struct Watch {
    labels: Arc<Mutex<HashMap<u32, String>>>,
    stop: Arc<AtomicBool>,
}

/// A netlink socket to the kernel's audit, whose reads give up after
/// `timeout`.
fn audit_socket(timeout: Duration) -> io::Result<OwnedFd> {
    use rustix::net::{netlink, socket_with, AddressFamily, SocketFlags, SocketType};
    let socket = socket_with(
        AddressFamily::NETLINK,
        SocketType::RAW,
        SocketFlags::CLOEXEC,
        Some(netlink::AUDIT),
    )?;
    rustix::net::sockopt::set_socket_timeout(
        &socket,
        rustix::net::sockopt::Timeout::Recv,
        Some(timeout),
    )?;
    Ok(socket)
}

/// Whether the kernel's audit is enabled: 0 off, 1 on, 2 on and locked.
fn audit_enabled() -> io::Result<u32> {
    let reply = audit_request(AUDIT_GET, &[])?;
    // struct audit_status { u32 mask; u32 enabled; ... }
    reply
        .get(4..8)
        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| io::Error::other("short AUDIT_GET reply"))
}

/// Switches the kernel's audit on.
fn set_audit_enabled() -> io::Result<()> {
    // struct audit_status is ten or more u32s; mask and enabled lead.
    let mut status = [0u8; 40];
    status[0..4].copy_from_slice(&AUDIT_STATUS_ENABLED.to_ne_bytes());
    status[4..8].copy_from_slice(&1u32.to_ne_bytes());
    audit_request(AUDIT_SET, &status).map(drop)
}

/// Sends one request on a fresh audit socket and returns the payload of
/// its reply (for `AUDIT_SET`, the acknowledgement).
fn audit_request(kind: u16, payload: &[u8]) -> io::Result<Vec<u8>> {
    use rustix::net::netlink;
    let socket = audit_socket(Duration::from_secs(2))?;
    let mut message = Vec::with_capacity(16 + payload.len());
    message.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
    message.extend_from_slice(&kind.to_ne_bytes());
    message.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    message.extend_from_slice(&1u32.to_ne_bytes());
    message.extend_from_slice(&0u32.to_ne_bytes());
    message.extend_from_slice(payload);
    rustix::net::sendto(
        &socket,
        &message,
        rustix::net::SendFlags::empty(),
        &netlink::SocketAddrNetlink::new(0, 0),
    )?;
    let mut buf = vec![0u8; 8192];
    loop {
        let (n, _) = rustix::net::recv(&socket, &mut buf[..], rustix::net::RecvFlags::empty())?;
        let reply = &buf[..n];
        if reply.len() < 16 {
            return Err(io::Error::other("short audit reply"));
        }
        let reply_kind = u16::from_ne_bytes([reply[4], reply[5]]);
        let body = &reply[16..];
        if reply_kind == libc::NLMSG_ERROR as u16 {
            let code = body
                .get(..4)
                .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                .unwrap_or(0);
            if code != 0 {
                return Err(io::Error::from_raw_os_error(-code));
            }
            if kind == AUDIT_SET {
                return Ok(Vec::new());
            }
            // The acknowledgement of a GET precedes or follows its answer.
            continue;
        }
        if reply_kind == kind {
            return Ok(body.to_vec());
        }
    }
}

impl Watch {
    /// Joins the audit log's read-only group and starts its reader.
    pub fn open() -> io::Result<Watch> {
        // Woken each second to notice the daemon's end.
        let socket = audit_socket(Duration::from_secs(1))?;
        rustix::net::bind(
            &socket,
            &rustix::net::netlink::SocketAddrNetlink::new(0, AUDIT_NLGRP_READLOG),
        )?;
        let labels = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (labels.clone(), stop.clone());
        std::thread::Builder::new()
            .name("sandbox-audit".into())
            .spawn(move || read_loop(socket, &l, &s))?;
        match audit_enabled() {
            Ok(0) => match set_audit_enabled() {
                Ok(()) => tracing::info!(
                    "sandbox  enabled the kernel's audit (it was off), so that Landlock refusals are logged"
                ),
                Err(e) => tracing::warn!(
                    "sandbox  Landlock refusals will not be logged: the kernel's audit is off and could not be enabled ({e})"
                ),
            },
            Ok(_) => {}
            Err(e) => tracing::warn!("sandbox  cannot read the kernel's audit status ({e})"),
        }
        Ok(Watch { labels, stop })
    }

    pub fn watch(&self, pid: u32, label: &str) {
        self.labels.locked().insert(pid, label.to_owned());
    }

    pub fn forget(&self, pid: u32) {
        self.labels.locked().remove(&pid);
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

fn read_loop(socket: OwnedFd, labels: &Mutex<HashMap<u32, String>>, stop: &AtomicBool) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut landlock = Attribution::default();
    while !stop.load(Ordering::Acquire) {
        let n = match rustix::net::recv(&socket, &mut buf[..], rustix::net::RecvFlags::empty()) {
            Ok((n, _)) => n,
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => 0,
            // The kernel dropped records for a slow reader: go on.
            Err(rustix::io::Errno::NOBUFS) => 0,
            Err(e) => {
                tracing::warn!(
                    "sandbox  audit log unreadable ({e}); refusals are no longer logged"
                );
                return;
            }
        };
        let labels = labels.locked();
        for record in parse_datagram(&buf[..n]) {
            match record {
                Record::Seccomp {
                    pid,
                    syscall,
                    logged_only,
                } => {
                    let Some(label) = labels.get(&pid) else {
                        continue;
                    };
                    let name = syscalls::Sysno::new(syscall as usize)
                        .map(|s| s.name())
                        .unwrap_or("unknown");
                    if logged_only {
                        tracing::warn!(
                            "sandbox  {label}: would refuse system call {name} ({syscall}); allowed in log mode"
                        );
                    } else {
                        tracing::warn!("sandbox  {label}: refused system call {name} ({syscall})");
                    }
                }
                Record::LandlockDomain { domain, pid } => landlock.domain(domain, pid),
                Record::LandlockAccess {
                    domain,
                    blockers,
                    object,
                } => landlock.refusal(domain, format!("{blockers} {object}")),
            }
        }
        for (pid, label, refusal) in landlock.attributable(&labels) {
            // Rust's runtime reads its own /proc/PID/maps at start (glibc's
            // pthread_getattr_np, for the main thread's stack guard) and
            // does without: expected of every dext, so not a warning.
            if refusal.contains(&format!("path=\"/proc/{pid}/")) {
                tracing::debug!(
                    "sandbox  {label}: Landlock refused {refusal} (its own /proc entry)"
                );
            } else {
                tracing::warn!("sandbox  {label}: Landlock refused {refusal}");
            }
        }
    }
}

/// Landlock refusals, matched to dexts. Three records race: a domain's
/// first refusal comes before the record naming its process, and a dext
/// may be refused something before the daemon has learnt its PID (between
/// its exec and the spawn's return). So every domain's process is kept
/// (bounded), and a refusal not yet attributable waits a few seconds.
#[derive(Default)]
struct Attribution {
    domains: HashMap<String, u32>,
    waiting: std::collections::VecDeque<(std::time::Instant, String, String)>,
}

impl Attribution {
    const DOMAINS: usize = 4096;
    const WAITING: usize = 256;
    const PATIENCE: Duration = Duration::from_secs(5);

    fn domain(&mut self, domain: String, pid: u32) {
        if self.domains.len() >= Self::DOMAINS {
            self.domains.clear();
        }
        self.domains.insert(domain, pid);
    }

    fn refusal(&mut self, domain: String, what: String) {
        if self.waiting.len() == Self::WAITING {
            self.waiting.pop_front();
        }
        self.waiting
            .push_back((std::time::Instant::now(), domain, what));
    }

    /// The refusals that can now be named, as (PID, dext label, what); the
    /// rest wait, unless they have waited too long or are not a dext's.
    fn attributable(&mut self, labels: &HashMap<u32, String>) -> Vec<(u32, String, String)> {
        let mut named = Vec::new();
        let now = std::time::Instant::now();
        self.waiting.retain(|(since, domain, what)| {
            match self.domains.get(domain).map(|pid| (*pid, labels.get(pid))) {
                Some((pid, Some(label))) => {
                    named.push((pid, label.clone(), what.clone()));
                    false
                }
                // Not (yet) known: wait, a while.
                _ => now.duration_since(*since) < Self::PATIENCE,
            }
        });
        named
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_of_seccomp_and_landlock_parse() {
        let seccomp = b"audit(1764480000.123:45): auid=4294967295 uid=65534 gid=65534 ses=4294967295 pid=4242 comm=\"d x\" exe=\"/b/d\" sig=0 arch=c000003e syscall=41 compat=0 ip=0x7f code=0x50000";
        assert_eq!(
            parse_record(AUDIT_SECCOMP, seccomp),
            Some(Record::Seccomp {
                pid: 4242,
                syscall: 41,
                logged_only: false
            })
        );
        let logged = b"audit(1.2:3): pid=7 syscall=41 code=0x7ffc0000";
        assert_eq!(
            parse_record(AUDIT_SECCOMP, logged),
            Some(Record::Seccomp {
                pid: 7,
                syscall: 41,
                logged_only: true
            })
        );
        let domain = b"audit(1.2:4): domain=195ba459b status=allocated mode=enforcing pid=300 uid=0 exe=\"/x\" comm=\"x\"";
        assert_eq!(
            parse_record(AUDIT_LANDLOCK_DOMAIN, domain),
            Some(Record::LandlockDomain {
                domain: "195ba459b".into(),
                pid: 300
            })
        );
        let freed = b"audit(1.2:5): domain=195ba459b status=deallocated denials=3";
        assert_eq!(parse_record(AUDIT_LANDLOCK_DOMAIN, freed), None);
        let access = b"audit(1.2:6): domain=195ba459b blockers=fs.read_file path=\"/etc/passwd\" dev=\"vda\" ino=42";
        assert_eq!(
            parse_record(AUDIT_LANDLOCK_ACCESS, access),
            Some(Record::LandlockAccess {
                domain: "195ba459b".into(),
                blockers: "fs.read_file".into(),
                object: "path=\"/etc/passwd\" dev=\"vda\" ino=42".into(),
            })
        );
    }

    #[test]
    fn a_refusal_is_named_whatever_order_its_records_and_the_pid_come_in() {
        let mut labels = HashMap::new();
        let mut a = Attribution::default();
        // The refusal first, then its domain's process, then the PID is
        // learnt by the daemon.
        a.refusal("d1".into(), "fs.read_file path=\"/etc/passwd\"".into());
        assert!(a.attributable(&labels).is_empty());
        a.domain("d1".into(), 42);
        assert!(a.attributable(&labels).is_empty(), "not a known dext yet");
        labels.insert(42, "Dext[42]".to_owned());
        assert_eq!(
            a.attributable(&labels),
            vec![(
                42,
                "Dext[42]".to_owned(),
                "fs.read_file path=\"/etc/passwd\"".to_owned()
            )]
        );
        assert!(a.attributable(&labels).is_empty(), "named once");
    }

    #[test]
    fn a_key_inside_another_key_or_value_is_not_taken() {
        // `pid` inside `ppid`, and `code` inside a quoted value.
        let text = "audit(1.2:3): ppid=1 comm=\"code=9\" pid=2 syscall=3 code=0x50000";
        assert_eq!(field(text, "pid"), Some("2"));
        assert_eq!(field(text, "code"), Some("0x50000"));
    }

    #[test]
    fn datagrams_split_into_records_and_truncation_is_harmless() {
        let mut datagram = Vec::new();
        for text in [&b"audit(1.2:3): pid=7 syscall=41 code=0x50000"[..], b"x"] {
            let len = 16 + text.len();
            datagram.extend_from_slice(&(len as u32).to_ne_bytes());
            datagram.extend_from_slice(&AUDIT_SECCOMP.to_ne_bytes());
            datagram.extend_from_slice(&[0; 10]);
            datagram.extend_from_slice(text);
            datagram.resize(datagram.len().next_multiple_of(4), 0);
        }
        assert_eq!(parse_datagram(&datagram).len(), 1);
        for cut in 0..datagram.len() {
            parse_datagram(&datagram[..cut]);
        }
    }
}

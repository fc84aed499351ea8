//! Who is asking: a control connection's peer, by its kernel-given
//! credentials (`SO_PEERCRED`), and the roles that decide what it may ask.
//!
//! - **Anyone** may read: the registry, devices, status, the extension
//!   list, pointer events, and open the user clients its entitlements
//!   allow.
//! - **An app** (a process whose executable sits in `NAME.app/Contents/MacOS`)
//!   may request activation of the dexts it carries, and deactivation or
//!   replacement of what it activated (`sysext`); never approve them.
//! - **An administrator** (root, the daemon's own user, or a member of the
//!   daemon's administrator group, `driverkit` by default) may do
//!   everything else: approve, trust keys, developer mode, uninstall,
//!   reset, load, plug and unplug, stop.
//!
//! Every refusal names the rule.
//!
//! **An app's identity** is the app its executable sits in, and it counts
//! only when it cannot be borrowed ([`Peer::app`]): the connection is
//! pinned to the process that opened it (its start time, its executable's
//! inode as it connected, and `SO_PEERPIDFD` where the kernel has it), so a
//! process that connects and then execs an entitled app is caught; the
//! control socket also refuses a request written by any other process
//! than the one that connected (`SCM_CREDENTIALS` on every read, see
//! `control`). For anyone but an administrator, the app's executable and
//! folders must not be writable by the caller, its environment must not
//! set `LD_PRELOAD` or `LD_AUDIT`, it must map no executable code from
//! outside the system's library folders and its own bundle, and it must
//! not be traced (unless developer mode is on). The app library makes its
//! process non-dumpable before it connects, so that the user's other
//! processes cannot ptrace it.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// The peer of a control connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Whether it is an administrator, or why not (for refusals).
    admin: Result<(), NotAdministrator>,
    /// The process as it connected.
    pin: Option<Pin>,
}

/// Why a peer is not an administrator.
#[derive(Debug, Clone, thiserror::Error)]
#[error("uid {uid} is not root{}", group.as_ref().map(|g| format!(" or in group {g}")).unwrap_or_default())]
pub struct NotAdministrator {
    pub uid: u32,
    /// The administrators' group, where the daemon has one.
    pub group: Option<String>,
}

/// Why a peer may not do what it asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Denied {
    /// A request for administrators only.
    #[error("{what} needs an administrator: {why}")]
    NotAdministrator { what: String, why: NotAdministrator },
    /// The process is not, or can no longer be shown to be, the one that
    /// connected.
    #[error("pid {pid}: {why}")]
    NotTheOneThatConnected { pid: u32, why: Unpinned },
    /// Its app's identity could be borrowed by its user.
    #[error("pid {pid} ({}): {why}", exe.display())]
    Borrowable {
        pid: u32,
        exe: PathBuf,
        why: Borrowable,
    },
}

/// How a connection lost the process that opened it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Unpinned {
    #[error("its executable cannot be read: {0}")]
    Unreadable(String),
    #[error("its connection carries no process to pin")]
    NoPin,
    #[error("the process that connected has ended")]
    Ended,
    #[error("not the process that connected (it ended and its PID was reused)")]
    Reused,
    #[error("it executed another program after it connected; an app's identity is the program that opened the connection")]
    Executed,
}

/// Why an app's identity does not count for the process running it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Borrowable {
    /// What the check needs from `/proc` or the file system cannot be read.
    #[error("{what} cannot be read: {error}")]
    Unreadable { what: String, error: String },
    #[error(
        "{} is writable by uid {uid} (owner {owner}, mode {mode:04o}); an app's identity counts only for an app its user cannot change: install it where only an administrator writes (like /opt)",
        path.display()
    )]
    Writable {
        path: PathBuf,
        uid: u32,
        owner: u32,
        mode: u32,
    },
    #[error("its environment sets {0}, which loads code the app does not carry; start the app without it")]
    Preloaded(&'static str),
    #[error("it runs code from {0}, outside the system's library folders and its own bundle")]
    ForeignCode(String),
    #[error("it is traced by pid {0} (a debugger could act in its name); developer mode (`driverkit sysext developer on`) allows debugging apps")]
    Traced(u32),
}

impl From<Denied> for String {
    fn from(e: Denied) -> String {
        e.to_string()
    }
}

/// What pins a connection to the process that opened it.
#[derive(Debug, Clone)]
struct Pin {
    /// Field 22 of `/proc/PID/stat`: a reused PID has another.
    start_time: u64,
    /// `/proc/PID/exe`'s device and inode when it connected: an exec
    /// changes them.
    exe: (u64, u64),
    /// `SO_PEERPIDFD`: the process itself, not its number.
    pidfd: Option<std::sync::Arc<OwnedFd>>,
}

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Reading, and what has its own check (IOServiceOpen).
    Anyone,
    /// Changing the system.
    Administrator,
}

/// Folders an app may map executable code from besides its own bundle.
const SYSTEM_LIBRARIES: &[&str] = &[
    "/usr/lib/",
    "/lib/",
    "/lib64/",
    "/usr/lib64/",
    "/usr/lib32/",
    "/lib32/",
];

impl Peer {
    /// The peer of `socket`, judged against administrator group `group`,
    /// and pinned to the process that connected.
    pub fn of(socket: impl std::os::fd::AsFd, group: Option<&str>) -> Peer {
        match rustix::net::sockopt::socket_peercred(&socket) {
            Ok(c) => {
                let pid = c.pid.as_raw_nonzero().get() as u32;
                let mut peer = Peer::new(pid, c.uid.as_raw(), c.gid.as_raw(), group);
                peer.pin = pin(socket.as_fd(), pid);
                peer
            }
            // No credentials: nobody in particular.
            Err(_) => Peer::new(0, u32::MAX, u32::MAX, group),
        }
    }

    /// A peer from its credentials (tests build them directly).
    pub fn new(pid: u32, uid: u32, gid: u32, group: Option<&str>) -> Peer {
        let daemon = rustix::process::geteuid().as_raw();
        let admin = if uid == 0 || uid == daemon {
            Ok(())
        } else {
            match group.and_then(group_id) {
                Some(admins) if gid == admins || supplementary_groups(pid).contains(&admins) => {
                    Ok(())
                }
                _ => Err(NotAdministrator {
                    uid,
                    group: group.map(str::to_owned),
                }),
            }
        };
        Peer {
            pid,
            uid,
            gid,
            admin,
            pin: None,
        }
    }

    /// Whether the peer may do `what`, which needs `role`; the refusal names
    /// the rule (`approve needs an administrator: uid 1000 is not root or in
    /// group driverkit`).
    pub fn allow(&self, role: Role, what: &str) -> Result<(), Denied> {
        match (role, &self.admin) {
            (Role::Anyone, _) | (Role::Administrator, Ok(())) => Ok(()),
            (Role::Administrator, Err(why)) => Err(Denied::NotAdministrator {
                what: what.to_owned(),
                why: why.clone(),
            }),
        }
    }

    pub fn is_admin(&self) -> bool {
        self.admin.is_ok()
    }

    /// Whether the peer is in group `gid` (primary or supplementary).
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || supplementary_groups(self.pid).contains(&gid)
    }

    /// Whether the peer is in the group named `name` (`/etc/group`).
    pub fn in_named_group(&self, name: &str) -> bool {
        group_id(name).is_some_and(|gid| self.in_group(gid))
    }

    /// The app the peer's executable sits in (`None`: not in an app), if
    /// its identity holds (see the module's comment); the refusal names the
    /// rule. `developer`: developer mode, in which a traced app counts.
    pub fn app(&self, developer: bool) -> Result<Option<PathBuf>, Denied> {
        let pid = self.pid;
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).map_err(|e| {
            Denied::NotTheOneThatConnected {
                pid,
                why: Unpinned::Unreadable(e.to_string()),
            }
        })?;
        self.still_the_one_that_connected()?;
        let Some(app) = driverkit_bundle::location::app_of_executable(&exe) else {
            return Ok(None);
        };
        if !self.is_admin() {
            self.check_not_borrowed(&exe, &app, developer)
                .map_err(|why| Denied::Borrowable { pid, exe, why })?;
            // Everything above was read from /proc while the process ran on.
            self.still_the_one_that_connected()?;
        }
        Ok(Some(app))
    }

    /// The process behind the PID is the one that connected, running the
    /// program it ran then.
    fn still_the_one_that_connected(&self) -> Result<(), Denied> {
        let pid = self.pid;
        let unpinned = |why| Denied::NotTheOneThatConnected { pid, why };
        let Some(pin) = &self.pin else {
            return Err(unpinned(Unpinned::NoPin));
        };
        if let Some(fd) = &pin.pidfd {
            if pidfd_pid(fd) != Some(pid) {
                return Err(unpinned(Unpinned::Ended));
            }
        }
        if start_time(pid) != Some(pin.start_time) {
            return Err(unpinned(Unpinned::Reused));
        }
        if exe_identity(pid) != Some(pin.exe) {
            return Err(unpinned(Unpinned::Executed));
        }
        Ok(())
    }

    /// The rules that keep a user from borrowing an app's identity.
    fn check_not_borrowed(
        &self,
        exe: &Path,
        app: &Path,
        developer: bool,
    ) -> Result<(), Borrowable> {
        let pid = self.pid;
        let unreadable = |what: String| {
            move |e: std::io::Error| Borrowable::Unreadable {
                what,
                error: e.to_string(),
            }
        };
        // 1. Nothing of the app is the caller's to change.
        let mut folder = exe.parent();
        let mut checked = vec![exe];
        while let Some(f) = folder {
            checked.push(f);
            if f == app {
                break;
            }
            folder = f.parent();
        }
        for path in checked {
            use std::os::unix::fs::MetadataExt;
            let meta =
                std::fs::symlink_metadata(path).map_err(unreadable(path.display().to_string()))?;
            let writable = meta.uid() == self.uid
                || (meta.mode() & 0o020 != 0 && self.in_group(meta.gid()))
                || meta.mode() & 0o002 != 0;
            if writable {
                return Err(Borrowable::Writable {
                    path: path.to_owned(),
                    uid: self.uid,
                    owner: meta.uid(),
                    mode: meta.mode() & 0o7777,
                });
            }
        }
        // 2. Nobody's code loaded into it.
        let environ = std::fs::read(format!("/proc/{pid}/environ"))
            .map_err(unreadable("its environment".into()))?;
        for var in environ.split(|b| *b == 0) {
            for name in ["LD_PRELOAD", "LD_AUDIT"] {
                if var.starts_with(format!("{name}=").as_bytes()) && var.len() > name.len() + 1 {
                    return Err(Borrowable::Preloaded(name));
                }
            }
        }
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
            .map_err(unreadable("its mappings".into()))?;
        if let Some(foreign) = foreign_code(&maps, app) {
            return Err(Borrowable::ForeignCode(foreign));
        }
        // 3. Not driven by someone else's debugger.
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map_err(unreadable("its status".into()))?;
        let tracer = status
            .lines()
            .find_map(|l| l.strip_prefix("TracerPid:"))
            .and_then(|t| t.trim().parse::<u32>().ok())
            .unwrap_or(0);
        if tracer != 0 && !developer {
            return Err(Borrowable::Traced(tracer));
        }
        Ok(())
    }
}

/// The first executable mapping of `maps` (`/proc/PID/maps`) from a file
/// outside the system's library folders and `app`.
fn foreign_code(maps: &str, app: &Path) -> Option<String> {
    maps.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let perms = fields.nth(1)?;
        let path = fields.nth(3)?;
        if !perms.contains('x') || !path.starts_with('/') {
            return None;
        }
        let inside = SYSTEM_LIBRARIES.iter().any(|l| path.starts_with(l))
            || Path::new(path).starts_with(app);
        (!inside).then(|| path.to_owned())
    })
}

/// Pins a connection to process `pid`.
fn pin(socket: std::os::fd::BorrowedFd<'_>, pid: u32) -> Option<Pin> {
    // The pidfd first: once taken, the process cannot be replaced under it.
    let pidfd = peer_pidfd(socket).map(std::sync::Arc::new);
    Some(Pin {
        start_time: start_time(pid)?,
        exe: exe_identity(pid)?,
        pidfd,
    })
}

/// `SO_PEERPIDFD` (Linux 6.5).
fn peer_pidfd(socket: std::os::fd::BorrowedFd<'_>) -> Option<OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd};
    const SO_PEERPIDFD: libc::c_int = 77;
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `fd`.
    let r = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            &mut fd as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    };
    // SAFETY: on success the kernel gave us a new descriptor.
    (r == 0 && fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The PID a pidfd stands for, `None` once the process has ended
/// (`Pid: -1` in its fdinfo).
fn pidfd_pid(fd: &OwnedFd) -> Option<u32> {
    use std::os::fd::AsRawFd;
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|p| p.trim().parse().ok())
}

/// Field 22 of `/proc/PID/stat` (after the command, which may hold spaces
/// and parentheses).
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// The device and inode of `/proc/PID/exe`.
fn exe_identity(pid: u32) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(format!("/proc/{pid}/exe")).ok()?;
    Some((meta.dev(), meta.ino()))
}

/// Whether user `uid` is in the group named `name`: its primary group
/// (`/etc/passwd`) or a member by name (`/etc/group`). For users known by
/// a socket's owner rather than a process (a USB/IP peer on loopback).
pub fn uid_in_group(uid: u32, name: &str) -> bool {
    let Some(gid) = group_id(name) else {
        return false;
    };
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let user = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[2].parse() == Ok(uid)).then(|| (f[0].to_owned(), f[3].parse().ok()))
    });
    let Some((user, primary)) = user else {
        return false;
    };
    if primary == Some(gid) {
        return true;
    }
    let groups = std::fs::read_to_string("/etc/group").unwrap_or_default();
    groups.lines().any(|l| {
        let f: Vec<&str> = l.split(':').collect();
        f.len() > 3 && f[0] == name && f[3].split(',').any(|m| m == user)
    })
}

/// The ID of group `name`, from `/etc/group`.
fn group_id(name: &str) -> Option<u32> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then_some(())?;
        f.next()?;
        f.next()?.parse().ok()
    })
}

/// The supplementary groups of process `pid`.
fn supplementary_groups(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Groups:")).map(|g| {
                g.split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_may_do_anything_and_others_only_read() {
        let root = Peer::new(1, 0, 0, Some("driverkit"));
        assert!(root.allow(Role::Administrator, "approve").is_ok());
        let user = Peer::new(1, 4000, 4000, Some("no-such-group-here"));
        assert!(user.allow(Role::Anyone, "ioreg").is_ok());
        assert_eq!(
            user.allow(Role::Administrator, "approve")
                .unwrap_err()
                .to_string(),
            "approve needs an administrator: uid 4000 is not root or in group no-such-group-here"
        );
        let no_group = Peer::new(1, 4000, 4000, None);
        assert_eq!(
            no_group
                .allow(Role::Administrator, "trust")
                .unwrap_err()
                .to_string(),
            "trust needs an administrator: uid 4000 is not root"
        );
        // A per-user daemon's own user administers it.
        let me = rustix::process::geteuid().as_raw();
        assert!(Peer::new(1, me, me, None).is_admin());
    }

    #[test]
    fn code_from_outside_the_system_and_the_bundle_is_foreign() {
        let maps = "55d0-55d1 r-xp 0 08:01 1 /opt/A.app/Contents/MacOS/a\n\
                    7f00-7f01 r-xp 0 08:01 2 /usr/lib/x86_64-linux-gnu/libc.so.6\n\
                    7f02-7f03 rw-p 0 08:01 3 /home/u/data\n\
                    7f04-7f05 r-xp 0 00:00 0 [vdso]\n";
        let app = Path::new("/opt/A.app");
        assert_eq!(foreign_code(maps, app), None);
        let evil = format!("{maps}7f06-7f07 r-xp 0 08:01 4 /home/u/evil.so\n");
        assert_eq!(foreign_code(&evil, app).as_deref(), Some("/home/u/evil.so"));
    }

    #[test]
    fn a_process_is_pinned_by_its_start_time_and_program() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let peer = Peer::of(&a, None);
        assert_eq!(peer.pid, std::process::id());
        assert!(peer.still_the_one_that_connected().is_ok());
        let mut moved = peer.clone();
        moved.pin.as_mut().unwrap().exe.1 ^= 1;
        let e = moved.still_the_one_that_connected().unwrap_err();
        assert!(
            matches!(
                e,
                Denied::NotTheOneThatConnected {
                    why: Unpinned::Executed,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("executed another program"), "{e}");
    }

    #[test]
    fn a_member_of_the_administrator_group_is_one() {
        // Group 0 exists everywhere (root); a non-root uid whose primary
        // group it is counts as an administrator when it is the group.
        let name = std::fs::read_to_string("/etc/group")
            .unwrap()
            .lines()
            .find(|l| l.split(':').nth(2) == Some("0"))
            .and_then(|l| l.split(':').next().map(str::to_owned))
            .unwrap();
        let member = Peer::new(1, 1000, 0, Some(&name));
        assert!(member.is_admin());
    }
}

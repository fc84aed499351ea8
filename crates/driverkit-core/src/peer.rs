//! Who is asking: a control connection's peer, by its kernel-given
//! credentials (`SO_PEERCRED`), and the roles that decide what it may ask.
//!
//! - **Anyone** may read: the registry, devices, status, events, the
//!   extension list, and open the user clients its entitlements allow.
//! - **An app** (a process whose executable sits in `NAME.app/Contents/MacOS`)
//!   may request activation and deactivation of the dexts it carries, never
//!   approve them.
//! - **An administrator** (root, or a member of the daemon's administrator
//!   group, `driverkit` by default) may do everything else: approve, trust
//!   keys, developer mode, uninstall, reset, load, plug and unplug, stop.
//!
//! Every refusal names the rule.

use std::path::PathBuf;

/// The peer of a control connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Why it is, or is not, an administrator (for refusals).
    admin: Result<(), String>,
}

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Reading, and what has its own check (IOServiceOpen).
    Anyone,
    /// Changing the system.
    Administrator,
}

impl Peer {
    /// The peer of `socket`, judged against administrator group `group`.
    pub fn of(socket: impl std::os::fd::AsFd, group: Option<&str>) -> Peer {
        match rustix::net::sockopt::socket_peercred(socket) {
            Ok(c) => Peer::new(
                c.pid.as_raw_nonzero().get() as u32,
                c.uid.as_raw(),
                c.gid.as_raw(),
                group,
            ),
            // No credentials: nobody in particular.
            Err(_) => Peer::new(0, u32::MAX, u32::MAX, group),
        }
    }

    /// A peer from its credentials (tests build them directly).
    pub fn new(pid: u32, uid: u32, gid: u32, group: Option<&str>) -> Peer {
        let admin = if uid == 0 {
            Ok(())
        } else {
            match group.and_then(group_id) {
                Some(admins) if gid == admins || supplementary_groups(pid).contains(&admins) => {
                    Ok(())
                }
                _ => Err(match group {
                    Some(g) => format!("uid {uid} is not root or in group {g}"),
                    None => format!("uid {uid} is not root"),
                }),
            }
        };
        Peer {
            pid,
            uid,
            gid,
            admin,
        }
    }

    /// Whether the peer may do `what`, which needs `role`; the refusal names
    /// the rule (`approve needs an administrator: uid 1000 is not root or in
    /// group driverkit`).
    pub fn allow(&self, role: Role, what: &str) -> Result<(), String> {
        match (role, &self.admin) {
            (Role::Anyone, _) | (Role::Administrator, Ok(())) => Ok(()),
            (Role::Administrator, Err(why)) => Err(format!("{what} needs an administrator: {why}")),
        }
    }

    pub fn is_admin(&self) -> bool {
        self.admin.is_ok()
    }

    /// The app the peer's executable sits in, if any.
    pub fn app(&self) -> Option<PathBuf> {
        let exe = std::fs::read_link(format!("/proc/{}/exe", self.pid)).ok()?;
        driverkit_bundle::location::app_of_executable(&exe)
    }
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
        let user = Peer::new(1, 1000, 1000, Some("no-such-group-here"));
        assert!(user.allow(Role::Anyone, "ioreg").is_ok());
        assert_eq!(
            user.allow(Role::Administrator, "approve").unwrap_err(),
            "approve needs an administrator: uid 1000 is not root or in group no-such-group-here"
        );
        let no_group = Peer::new(1, 1000, 1000, None);
        assert_eq!(
            no_group.allow(Role::Administrator, "trust").unwrap_err(),
            "trust needs an administrator: uid 1000 is not root"
        );
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

//! Where a daemon lives: its state directory, which holds the control
//! socket. Shared by the daemon, the CLI and apps, which must all find it
//! the same way.

use std::path::PathBuf;

/// `$DRIVERKIT_ROOT`, else `$XDG_STATE_HOME/driverkit`, else
/// `~/.local/state/driverkit`; with no home, root's is `/var/lib/driverkit`
/// (the system service's) and another user's `$XDG_RUNTIME_DIR/driverkit`,
/// else `/tmp/driverkit-UID`. Never `/tmp` for root: any user could make
/// that folder first (the daemon refuses a state folder it does not own,
/// so a user's own daemon in `/tmp` is at worst refused, never subverted).
pub fn default_root() -> PathBuf {
    if let Some(root) = std::env::var_os("DRIVERKIT_ROOT").filter(|s| !s.is_empty()) {
        return PathBuf::from(root);
    }
    if let Some(state) = std::env::var_os("XDG_STATE_HOME").filter(|s| !s.is_empty()) {
        return PathBuf::from(state).join("driverkit");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|s| !s.is_empty()) {
        return PathBuf::from(home).join(".local/state/driverkit");
    }
    let uid = rustix::process::getuid().as_raw();
    if uid == 0 {
        return PathBuf::from(SYSTEM_ROOT);
    }
    if let Some(run) = std::env::var_os("XDG_RUNTIME_DIR").filter(|s| !s.is_empty()) {
        return PathBuf::from(run).join("driverkit");
    }
    PathBuf::from(format!("/tmp/driverkit-{uid}"))
}

/// Where a client (the CLI, an app) finds the daemon: `$DRIVERKIT_ROOT`
/// if set; else the user's own daemon ([`default_root`]) if one runs there;
/// else the system service's if one runs; else the user's (to say none
/// runs there). A user of a machine with the system service needs no flag,
/// and one who runs a daemon of their own reaches it first.
pub fn client_root() -> PathBuf {
    if let Some(root) = std::env::var_os("DRIVERKIT_ROOT").filter(|s| !s.is_empty()) {
        return PathBuf::from(root);
    }
    pick(default_root(), PathBuf::from(SYSTEM_ROOT))
}

/// The user's daemon if it runs, else the system's if that runs, else the
/// user's.
fn pick(own: PathBuf, system: PathBuf) -> PathBuf {
    let runs = |root: &PathBuf| root.join(CONTROL_SOCKET).exists();
    if !runs(&own) && runs(&system) {
        system
    } else {
        own
    }
}

/// The system service's state folder (`contrib/systemd`).
pub const SYSTEM_ROOT: &str = "/var/lib/driverkit";

/// The control socket's file name in a state directory.
pub const CONTROL_SOCKET: &str = "driverkitd.sock";

#[cfg(test)]
mod tests {
    #[test]
    fn a_client_finds_its_own_daemon_first_then_the_systems() {
        let dir = std::env::temp_dir().join(format!("dk-root-{}", std::process::id()));
        let (own, system) = (dir.join("own"), dir.join("system"));
        for d in [&own, &system] {
            std::fs::create_dir_all(d).unwrap();
        }
        let pick = || super::pick(own.clone(), system.clone());
        assert_eq!(pick(), own, "neither runs: the user's, to say so");
        std::fs::write(system.join(super::CONTROL_SOCKET), b"").unwrap();
        assert_eq!(pick(), system, "only the system's runs");
        std::fs::write(own.join(super::CONTROL_SOCKET), b"").unwrap();
        assert_eq!(pick(), own, "the user's own comes first");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

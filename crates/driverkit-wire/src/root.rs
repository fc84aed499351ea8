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

/// The system service's state folder (`contrib/systemd`).
pub const SYSTEM_ROOT: &str = "/var/lib/driverkit";

/// The control socket's file name in a state directory.
pub const CONTROL_SOCKET: &str = "driverkitd.sock";

//! Where a daemon lives: its state directory, which holds the control
//! socket. Shared by the daemon, the CLI and apps, which must all find it
//! the same way.

use std::path::PathBuf;

/// `$DRIVERKIT_ROOT`, else `$XDG_STATE_HOME/driverkit`, else
/// `~/.local/state/driverkit`, else `/tmp/driverkit-UID`.
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
    PathBuf::from(format!(
        "/tmp/driverkit-{}",
        rustix::process::getuid().as_raw()
    ))
}

/// The control socket's file name in a state directory.
pub const CONTROL_SOCKET: &str = "driverkitd.sock";

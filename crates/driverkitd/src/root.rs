//! The state directory: where a daemon keeps its socket and lock, and how
//! every subcommand finds it.

use std::fs::File;
use std::path::Path;

pub use driverkit_wire::root::default_root;

/// Exclusive ownership of a root directory: one daemon per root.
pub struct RootLock {
    _file: File,
}

impl RootLock {
    /// Creates the directory if needed and locks it; an error names the
    /// daemon that holds it.
    pub fn acquire(root: &Path) -> Result<RootLock, String> {
        std::fs::create_dir_all(root)
            .map_err(|e| format!("cannot create {}: {e}", root.display()))?;
        let path = root.join("daemon.lock");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            return Err(format!(
                "another daemon (pid {}) already runs at {}",
                holder.trim(),
                root.display()
            ));
        }
        let _ = file.set_len(0);
        let _ = std::fs::write(&path, format!("{}\n", std::process::id()));
        Ok(RootLock { _file: file })
    }
}

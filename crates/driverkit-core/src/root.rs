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
        let try_lock = || {
            rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok()
        };
        // A daemon killed while it was starting a dext leaves the lock to
        // that half-started child until it execs: wait briefly when the
        // recorded holder is dead, refuse at once when it lives.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !try_lock() {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            let alive = holder
                .trim()
                .parse::<i32>()
                .ok()
                .and_then(rustix::process::Pid::from_raw)
                .is_some_and(|pid| rustix::process::test_kill_process(pid).is_ok());
            if alive || std::time::Instant::now() > deadline {
                return Err(format!(
                    "another daemon (pid {}) already runs at {}",
                    holder.trim(),
                    root.display()
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = file.set_len(0);
        let _ = std::fs::write(&path, format!("{}\n", std::process::id()));
        Ok(RootLock { _file: file })
    }
}

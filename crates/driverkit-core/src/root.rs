//! The state directory: where a daemon keeps its socket and lock, and how
//! every subcommand finds it.

use std::fs::File;
use std::path::{Path, PathBuf};

pub use driverkit_wire::root::{client_root, default_root, SYSTEM_ROOT};

/// Why a state folder cannot be a daemon's.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is a symbolic link; the daemon's lock file must be a file of its own: remove it", path.display())]
    LinkedLock { path: PathBuf },
    #[error("another daemon (pid {holder}) already runs at {}", root.display())]
    Held { root: PathBuf, holder: String },
    #[error("the state folder {} is not a folder (a link?); use another --root", root.display())]
    NotAFolder { root: PathBuf },
    #[error(
        "the state folder {} belongs to uid {owner}, not to the daemon's user (uid {me}); someone else made it: remove it, or use another --root",
        root.display()
    )]
    NotOurs { root: PathBuf, owner: u32, me: u32 },
    #[error(
        "the state folder {} may be written by others (mode {mode:04o}); `chmod go-w {}`, or use another --root",
        root.display(),
        root.display()
    )]
    WorldWritable { root: PathBuf, mode: u32 },
}

impl RootError {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RootError + '_ {
        move |source| RootError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

impl From<RootError> for String {
    fn from(e: RootError) -> String {
        e.to_string()
    }
}

/// Exclusive ownership of a root directory: one daemon per root.
pub struct RootLock {
    _file: File,
}

impl RootLock {
    /// Creates the directory if needed, checks that it is the daemon's
    /// user's and that nobody else may write in it ([`check_owned`]), and
    /// locks it; an error names the daemon that holds it.
    pub fn acquire(root: &Path) -> Result<RootLock, RootError> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::create_dir_all(root).map_err(RootError::io(root))?;
        check_owned(root)?;
        let path = root.join("daemon.lock");
        // Not through a link: a link planted here would make the daemon
        // truncate and write whatever it names.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => RootError::LinkedLock { path: path.clone() },
                _ => RootError::io(&path)(e),
            })?;
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
                return Err(RootError::Held {
                    root: root.to_owned(),
                    holder: holder.trim().to_owned(),
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = file.set_len(0);
        let _ =
            std::io::Write::write_all(&mut &file, format!("{}\n", std::process::id()).as_bytes());
        Ok(RootLock { _file: file })
    }
}

/// A state folder must be the daemon's user's, and no other user may write
/// in it: its socket, lock, store and logs are the daemon's word. (A
/// folder someone else made first, in `/tmp` say, or one anyone may write
/// in, is refused, named; one only its group may write in, as a umask of
/// 002 makes them, is closed.)
pub fn check_owned(root: &Path) -> Result<(), RootError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(root).map_err(RootError::io(root))?;
    let me = rustix::process::geteuid().as_raw();
    if !meta.is_dir() {
        return Err(RootError::NotAFolder {
            root: root.to_owned(),
        });
    }
    if meta.uid() != me {
        return Err(RootError::NotOurs {
            root: root.to_owned(),
            owner: meta.uid(),
            me,
        });
    }
    if meta.mode() & 0o002 != 0 {
        return Err(RootError::WorldWritable {
            root: root.to_owned(),
            mode: meta.mode() & 0o7777,
        });
    }
    if meta.mode() & 0o020 != 0 {
        // Its own user's folder, group-writable as a umask of 002 makes
        // them (a group of its own, on systems with user private groups):
        // closed, and said.
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.mode() & 0o7777 & !0o020;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(mode))
            .map_err(RootError::io(root))?;
        tracing::info!(
            "root     {} was group-writable; now mode {mode:04o}: the daemon's state is its user's alone",
            root.display()
        );
    }
    Ok(())
}

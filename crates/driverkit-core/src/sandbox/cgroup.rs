//! A control group per dext, where the daemon has a cgroup v2 subtree of
//! its own (a system service with `Delegate=yes`, or root): the kernel then
//! counts the dext's memory and tasks together (`memory.max`, `pids.max`,
//! where those controllers are enabled) and ends everything in it at once
//! (`cgroup.kill`) when the dext stops or crashes, so nothing it started
//! outlives it.
//!
//! ```text
//! <the daemon's cgroup>/            (systemd's driverkitd.service)
//!     daemon/                       the daemon moves itself here: a cgroup
//!                                   whose children have controllers holds
//!                                   no process itself
//!     dext-<n>/                     one per dext process
//! ```
//!
//! A daemon in the hierarchy's root (root in a container, a test machine)
//! makes `driverkit-<pid>/` there for its dexts instead, and removes those
//! of daemons that are gone.
//!
//! The child is born in its cgroup (`clone3` with `CLONE_INTO_CGROUP`), or,
//! where the kernel cannot do that (before 5.7, or not x86-64), joins it
//! before its exec by writing `0` to the `cgroup.procs` the daemon opened
//! for it (`exec`): from its first instruction, whatever it starts is
//! inside. Born there is the fast way: moving a live process between
//! cgroups waits for an RCU grace period (milliseconds), creating one in
//! place does not.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Where dexts' cgroups are made.
#[derive(Debug)]
pub(crate) struct Cgroups {
    parent: PathBuf,
    next: AtomicU64,
    /// `memory.max` and `pids.max` exist in a dext's cgroup.
    memory: bool,
    pids: bool,
}

/// One dext's cgroup.
#[derive(Debug)]
pub(crate) struct DextCgroup {
    path: PathBuf,
}

/// A dext's cgroup before its child starts: the folder (for
/// `CLONE_INTO_CGROUP`) and its `cgroup.procs` (to join by writing).
pub(crate) struct NewCgroup {
    pub group: DextCgroup,
    pub dir: OwnedFd,
    pub procs: OwnedFd,
}

/// Why the daemon has no cgroup subtree to make the dexts' groups in.
#[derive(Debug, thiserror::Error)]
pub enum NoCgroups {
    #[error("no cgroup v2 hierarchy is mounted")]
    NotMounted,
    #[error("this process is in no cgroup v2 group")]
    NotInOne,
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl Cgroups {
    /// Finds the daemon's cgroup v2 subtree and prepares it; `None`, with
    /// the reason, when there is none it may write.
    pub fn discover() -> Result<Cgroups, NoCgroups> {
        let mount = cgroup2_mount().ok_or(NoCgroups::NotMounted)?;
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|source| NoCgroups::Io {
                path: "/proc/self/cgroup".into(),
                source,
            })?
            .lines()
            .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
            .ok_or(NoCgroups::NotInOne)?;
        let own_dir = mount.join(own.trim_start_matches('/'));
        let parent = if own == "/" {
            remove_stale(&mount);
            let parent = mount.join(format!("driverkit-{}", std::process::id()));
            make_dir(&parent)?;
            parent
        } else {
            // Out of the way of the dexts' controllers: into a leaf.
            let leaf = own_dir.join("daemon");
            make_dir(&leaf)?;
            let procs = leaf.join("cgroup.procs");
            std::fs::write(&procs, "0").map_err(|source| NoCgroups::Io {
                path: procs.clone(),
                source,
            })?;
            own_dir
        };
        // The controllers this subtree was given, for the dexts below.
        let available =
            std::fs::read_to_string(parent.join("cgroup.controllers")).unwrap_or_default();
        for controller in ["memory", "pids"] {
            if available.split_whitespace().any(|c| c == controller) {
                let _ = std::fs::write(
                    parent.join("cgroup.subtree_control"),
                    format!("+{controller}"),
                );
            }
        }
        let enabled =
            std::fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap_or_default();
        let has = |c: &str| enabled.split_whitespace().any(|e| e == c);
        Ok(Cgroups {
            memory: has("memory"),
            pids: has("pids"),
            parent,
            next: AtomicU64::new(1),
        })
    }

    pub fn describe(&self) -> String {
        format!(
            "{} (memory.max {}, pids.max {})",
            self.parent.display(),
            if self.memory { "on" } else { "not delegated" },
            if self.pids { "on" } else { "not delegated" }
        )
    }

    /// A new cgroup for one dext, with its limits, opened for the child to
    /// be born in or to join.
    pub fn create(&self, memory: u64, tasks: u64) -> io::Result<NewCgroup> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let path = self.parent.join(format!("dext-{n}"));
        std::fs::create_dir(&path)?;
        let group = DextCgroup { path };
        if self.memory {
            std::fs::write(group.path.join("memory.max"), memory.to_string())?;
            let _ = std::fs::write(group.path.join("memory.swap.max"), "0");
        }
        if self.pids {
            std::fs::write(group.path.join("pids.max"), tasks.to_string())?;
        }
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(group.path.join("cgroup.procs"))?;
        let dir = rustix::fs::open(
            &group.path,
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?;
        Ok(NewCgroup {
            group,
            dir,
            procs: procs.into(),
        })
    }
}

impl DextCgroup {
    /// Ends every process in it (`cgroup.kill`; where the kernel predates
    /// it, SIGKILL to each process listed).
    pub fn kill(&self) {
        if std::fs::write(self.path.join("cgroup.kill"), "1").is_ok() {
            return;
        }
        let procs = std::fs::read_to_string(self.path.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

impl Drop for DextCgroup {
    /// The dext was reaped: what it left behind ends, and the cgroup goes
    /// once the kernel has emptied it.
    fn drop(&mut self) {
        self.kill();
        for _ in 0..100 {
            match std::fs::remove_dir(&self.path) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                _ => return,
            }
        }
        tracing::warn!(
            "sandbox  {}: still populated after cgroup.kill; left in place",
            self.path.display()
        );
    }
}

/// Whether this process could make cgroups for its dexts: a cgroup v2
/// hierarchy and its own group there writable (for benchmarks, which
/// compare with and without).
pub fn available() -> bool {
    let Some(mount) = cgroup2_mount() else {
        return false;
    };
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let Some(own) = own.lines().find_map(|l| l.strip_prefix("0::")) else {
        return false;
    };
    rustix::fs::access(
        mount.join(own.trim_start_matches('/')),
        rustix::fs::Access::WRITE_OK,
    )
    .is_ok()
}

/// Where cgroup v2 is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified`
/// on a hybrid system), from `/proc/self/mountinfo`.
fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let point = left.split_whitespace().nth(4)?;
        (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(point))
    })
}

fn make_dir(path: &Path) -> Result<(), NoCgroups> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(NoCgroups::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Removes the empty `driverkit-<pid>` groups of daemons that are gone.
fn remove_stale(mount: &Path) {
    let Ok(entries) = std::fs::read_dir(mount) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("driverkit-"))
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let alive = rustix::process::Pid::from_raw(pid)
            .is_some_and(|p| rustix::process::test_kill_process(p).is_ok());
        if !alive {
            if let Ok(children) = std::fs::read_dir(entry.path()) {
                for child in children.flatten().filter(|c| c.path().is_dir()) {
                    let _ = std::fs::write(child.path().join("cgroup.kill"), "1");
                    let _ = std::fs::remove_dir(child.path());
                }
            }
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

//! The dext sandbox: what a driver process may do besides talking to the
//! daemon.
//!
//! A dext is the code of a hardware vendor, run by a root daemon that owns
//! devices. It gets its socket and its log, and nothing else: its own
//! unprivileged user, a cleared environment, `no_new_privs`, a Landlock
//! domain that lets it read only its own bundle and the system's shared
//! libraries, with no TCP, no abstract unix sockets and no signals outside
//! itself, and a seccomp allowlist of what the SDK runtime calls. Device
//! access goes through the daemon, which hands over descriptors where a
//! family needs one.
//!
//! Everything is prepared in the daemon before `fork` (the ruleset, the
//! compiled filter, the executable's descriptor, argv and envp), so that
//! the child only makes system calls between `fork` and `exec`: the daemon
//! has many threads, and allocating in the child could deadlock on a lock
//! another thread held at the fork. The child execs its executable through
//! the descriptor (`execveat`), so the unprivileged user needs no search
//! permission on the daemon's private state directory.
//!
//! Refusals are reported by the kernel's audit records (see [`audit`]),
//! which the daemon reads and logs under the dext's name.
//!
//! One concept per file: [`seccomp`] is the allowlist, [`landlock`] the
//! filesystem and network rules, [`exec`] the child's side, [`audit`] the
//! refusal log, and this file the policy and its preparation.

pub mod audit;
pub(crate) mod cgroup;
mod exec;
mod landlock;
mod seccomp;

use std::ffi::OsStr;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;

pub(crate) use exec::Prepared;

/// How strictly dexts are confined (`driverkit run --sandbox`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Everything described above, refusals logged.
    #[default]
    Enforce,
    /// Nothing is refused by seccomp: each system call outside the
    /// allowlist is logged by name instead, so an author learns what the
    /// driver would need. Landlock has no permissive mode, so it is not
    /// applied; the user, environment and `no_new_privs` are as enforced.
    Log,
    /// No sandbox: for debugging a driver only. The daemon says so loudly.
    Off,
}

/// Why a sandbox policy cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("unknown sandbox mode '{0}': expected enforce, log or off")]
    UnknownMode(String),
    #[error("sandbox user '{0}' not found in /etc/passwd: create it, or choose another with --dext-user")]
    NoSuchUser(String),
    #[error(
        "sandbox user '{0}' is root: dexts must run unprivileged; choose another with --dext-user"
    )]
    RootUser(String),
    /// The seccomp filter does not compile for this machine.
    #[error("seccomp filter: {0}")]
    Seccomp(String),
    /// The Landlock rules every dext shares cannot be opened.
    #[error("landlock: {0}")]
    Landlock(String),
}

impl From<PolicyError> for String {
    fn from(e: PolicyError) -> String {
        e.to_string()
    }
}

impl std::str::FromStr for Mode {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Mode, PolicyError> {
        match s {
            "enforce" | "on" => Ok(Mode::Enforce),
            "log" => Ok(Mode::Log),
            "off" => Ok(Mode::Off),
            other => Err(PolicyError::UnknownMode(other.to_owned())),
        }
    }
}

/// The daemon's sandbox settings.
#[derive(Debug, Clone)]
pub struct Policy {
    pub mode: Mode,
    /// The user every dext runs as when the daemon is root (`--dext-user`).
    /// `None`, the default: each dext process gets a user of its own from
    /// [`DYNAMIC_UIDS`], so that no dext can touch another's processes and
    /// the kernel counts each one's threads apart ([`THREADS`]).
    pub user: Option<String>,
    /// A cgroup per dext where the daemon has a cgroup v2 subtree
    /// (`--no-cgroups` turns it off).
    pub cgroups: bool,
    /// The most a personality may ask for (`IOUserServerMemoryLimitMB`,
    /// `IOUserServerTaskLimit`): an administrator's limits.
    pub max: Limits,
}

/// What one dext process may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Private writable memory, bytes (`RLIMIT_DATA`, `memory.max`).
    pub memory: u64,
    /// Threads (`RLIMIT_NPROC` with a user of its own; `pids.max`).
    pub tasks: u64,
}

impl Default for Limits {
    /// Every dext's, unless its personality asks otherwise.
    fn default() -> Limits {
        Limits {
            memory: MEMORY,
            tasks: THREADS,
        }
    }
}

/// The personality keys that ask for other limits.
pub const MEMORY_KEY: &str = "IOUserServerMemoryLimitMB";
pub const TASKS_KEY: &str = "IOUserServerTaskLimit";

impl Limits {
    /// The limits `personality` asks for, within `max`; what it asks beyond
    /// `max` is cut to it, and said.
    pub fn asked(personality: &plist::Dictionary, max: Limits, name: &str) -> Limits {
        let mut limits = Limits::default();
        if let Some(mb) = personality
            .get(MEMORY_KEY)
            .and_then(plist::Value::as_unsigned_integer)
        {
            limits.memory = mb.saturating_mul(1 << 20);
        }
        if let Some(n) = personality
            .get(TASKS_KEY)
            .and_then(plist::Value::as_unsigned_integer)
        {
            limits.tasks = n;
        }
        if limits.memory > max.memory || limits.tasks > max.tasks {
            tracing::warn!(
                "sandbox  {name} asks for {} MiB and {} tasks; an administrator allows at most {} MiB and {} (--dext-memory-max-mb, --dext-tasks-max)",
                limits.memory >> 20,
                limits.tasks,
                max.memory >> 20,
                max.tasks
            );
        }
        Limits {
            memory: limits.memory.min(max.memory).max(16 << 20),
            tasks: limits.tasks.min(max.tasks).max(8),
        }
    }
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            mode: Mode::Enforce,
            user: None,
            cgroups: true,
            max: Limits {
                memory: 16 << 30,
                tasks: 4096,
            },
        }
    }
}

/// The users (and groups of the same number) dexts get, one per process,
/// as systemd's `DynamicUser=` does: the base plus the process's PID, which
/// no other live process has, whichever daemon started it. A private range
/// above the ones systemd hands out to system users, people, dynamic users
/// and containers (`0x70000000` = 1879048192 on; PIDs stay below 2^22).
pub const DYNAMIC_UIDS: std::ops::Range<u32> = 0x7000_0000..0x7000_0000 + (1 << 22);

/// The user a child takes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ChildUser {
    /// This one.
    Fixed(Credentials),
    /// `base + its PID`, user and group.
    FromPid { base: u32 },
}

/// Threads (and processes) one dext may have: `RLIMIT_NPROC`, which the
/// kernel counts per user, so it is one dext's only with its own user.
pub const THREADS: u64 = 512;

/// The private writable memory one dext may map (`RLIMIT_DATA`: heap,
/// thread stacks, anonymous mappings; not the regions it shares with the
/// daemon). Past it an allocation fails and the Rust runtime aborts the
/// dext, which the daemon sees as a crash; the daemon itself is untouched.
pub const MEMORY: u64 = 4 << 30;

/// Who dexts run as.
#[derive(Debug, Clone, Copy)]
enum Users {
    /// A user of its own per process (root daemon, the default).
    Dynamic,
    /// The one configured user for all (root daemon, `--dext-user`).
    Fixed(Credentials),
    /// The daemon's own user (a daemon that is not root cannot change it).
    Daemon,
}

/// A user and group ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub uid: u32,
    pub gid: u32,
}

impl Policy {
    /// Checks the policy as the daemon will resolve it, so that `run` can
    /// refuse a bad one before starting.
    pub fn check(&self) -> Result<(), PolicyError> {
        Sandbox::resolve(self).map(drop)
    }
}

/// The sandbox as resolved at the daemon's start: the user looked up, the
/// filter compiled once, the audit log opened.
pub(crate) struct Sandbox {
    mode: Mode,
    users: Users,
    filter: Option<Arc<seccomp::Compiled>>,
    audit: Option<audit::Watch>,
    /// The kernel's Landlock ABI (0: none).
    landlock_abi: i64,
    /// The Landlock rules every dext shares, opened once (enforce mode).
    shared_rules: Option<landlock::Shared>,
    /// Why no dext can be launched: a policy that could not be resolved.
    /// Never a silent fallback to running unconfined.
    broken: Option<PolicyError>,
    /// Where each dext's cgroup is made, if the daemon has a subtree.
    cgroups: Option<cgroup::Cgroups>,
}

impl Sandbox {
    /// Resolves `policy`. A configuration error (an unknown user) makes
    /// every launch fail with it; what the kernel lacks is logged and done
    /// without.
    pub fn new(policy: &Policy) -> Sandbox {
        let mut sandbox = Sandbox::resolve(policy).unwrap_or_else(|e| {
            tracing::error!("sandbox  {e}; no dext can be launched");
            Sandbox {
                mode: policy.mode,
                users: Users::Daemon,
                filter: None,
                audit: None,
                landlock_abi: 0,
                shared_rules: None,
                broken: Some(e),
                cgroups: None,
            }
        });
        if sandbox.mode != Mode::Off && sandbox.broken.is_none() && policy.cgroups {
            sandbox.cgroups = match cgroup::Cgroups::discover() {
                Ok(c) => {
                    tracing::info!("sandbox  a cgroup per dext under {}", c.describe());
                    Some(c)
                }
                Err(why) => {
                    tracing::info!(
                        "sandbox  no cgroup per dext ({why}): a dext is still one process (seccomp) with bounded memory and threads (rlimits)"
                    );
                    None
                }
            };
        }
        if sandbox.mode != Mode::Off && sandbox.broken.is_none() {
            sandbox.audit = match audit::Watch::open() {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(
                        "sandbox  refusals will not be logged by the daemon: the kernel's audit log is not readable ({e})"
                    );
                    None
                }
            };
        }
        sandbox
    }

    fn resolve(policy: &Policy) -> Result<Sandbox, PolicyError> {
        if policy.mode == Mode::Off {
            tracing::warn!(
                "sandbox  OFF: dexts run as the daemon's user with its authority; use this only to debug a driver"
            );
            return Ok(Sandbox {
                mode: Mode::Off,
                users: Users::Daemon,
                filter: None,
                audit: None,
                landlock_abi: 0,
                shared_rules: None,
                broken: None,
                cgroups: None,
            });
        }
        let users = match (&policy.user, rustix::process::geteuid().is_root()) {
            (_, false) => {
                tracing::info!(
                    "sandbox  dexts run as the daemon's own user (uid {}): only a root daemon can give them another",
                    rustix::process::geteuid().as_raw()
                );
                Users::Daemon
            }
            (None, true) => Users::Dynamic,
            (Some(user), true) => {
                let ids = user_ids(user).ok_or_else(|| PolicyError::NoSuchUser(user.clone()))?;
                if ids.uid == 0 {
                    return Err(PolicyError::RootUser(user.clone()));
                }
                tracing::info!(
                    "sandbox  every dext runs as {user} (uid {}): they share its thread limit of {THREADS}",
                    ids.uid
                );
                Users::Fixed(ids)
            }
        };
        let filter =
            seccomp::compile(policy.mode).map_err(|e| PolicyError::Seccomp(e.to_string()))?;
        if policy.mode == Mode::Log {
            tracing::warn!(
                "sandbox  LOG mode: system calls outside the allowlist are logged, not refused; Landlock is not applied"
            );
        }
        let landlock_abi = landlock::abi_version();
        if policy.mode == Mode::Enforce && landlock_abi == 0 {
            tracing::warn!(
                "sandbox  this kernel has no Landlock (not built, or not in the lsm= list): dexts are confined by their user and seccomp only"
            );
        }
        Ok(Sandbox {
            mode: policy.mode,
            users,
            filter: Some(Arc::new(filter)),
            audit: None,
            landlock_abi,
            shared_rules: match policy.mode {
                Mode::Enforce => Some(
                    landlock::Shared::open().map_err(|e| PolicyError::Landlock(e.to_string()))?,
                ),
                Mode::Log | Mode::Off => None,
            },
            broken: None,
            cgroups: None,
        })
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Prepares, in the daemon, everything the child needs to confine
    /// itself and exec `executable` with exactly `env`.
    pub fn prepare(
        &self,
        executable: &Path,
        bundle: &Path,
        env: &[(&OsStr, &OsStr)],
        limits: Limits,
    ) -> io::Result<Prepared> {
        if let Some(e) = &self.broken {
            return Err(io::Error::other(e.to_string()));
        }
        let fd = exec::open_executable(executable)?;
        let ruleset = match &self.shared_rules {
            Some(shared) => landlock::ruleset(shared, fd.as_fd(), bundle)?
                .map(|r| (r, landlock::restrict_flags(self.landlock_abi))),
            None => None,
        };
        let credentials = match self.users {
            Users::Daemon => None,
            Users::Fixed(c) => Some(ChildUser::Fixed(c)),
            Users::Dynamic => Some(ChildUser::FromPid {
                base: DYNAMIC_UIDS.start,
            }),
        };
        let cgroup = match &self.cgroups {
            Some(c) => Some(
                c.create(limits.memory, limits.tasks)
                    .map_err(|e| io::Error::new(e.kind(), format!("the dext's cgroup: {e}")))?,
            ),
            None => None,
        };
        Prepared::new(
            executable,
            fd,
            env,
            exec::Confinement {
                credentials,
                ruleset,
                filter: self.filter.clone(),
                log_refusals: self.mode == Mode::Enforce,
                cgroup,
                limits,
            },
        )
    }

    /// Attributes the refusals of process `pid` to `label` in the log.
    pub fn watch(&self, pid: u32, label: &str) {
        if let Some(a) = &self.audit {
            a.watch(pid, label);
        }
    }

    /// Forgets an exited process.
    pub fn forget(&self, pid: u32) {
        if let Some(a) = &self.audit {
            a.forget(pid);
        }
    }
}

/// Whether a daemon started now could give each dext a cgroup.
pub fn cgroups_available() -> bool {
    cgroup::available()
}

/// The user ID of `name` (or a number), from `/etc/passwd`.
pub fn user_id(name: &str) -> Option<u32> {
    user_ids(name).map(|c| c.uid)
}

/// The user and primary group IDs of `name`, from `/etc/passwd`, or of a
/// numeric ID (its group the same number), as systemd's `User=` takes.
fn user_ids(name: &str) -> Option<Credentials> {
    if let Ok(id) = name.parse::<u32>() {
        return Some(Credentials { uid: id, gid: id });
    }
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name).then_some(())?;
        let _password = fields.next()?;
        Some(Credentials {
            uid: fields.next()?.parse().ok()?,
            gid: fields.next()?.parse().ok()?,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_unknown_ones_are_named() {
        assert_eq!("log".parse::<Mode>(), Ok(Mode::Log));
        assert_eq!("enforce".parse::<Mode>(), Ok(Mode::Enforce));
        let e = "lax".parse::<Mode>().unwrap_err();
        assert_eq!(e, PolicyError::UnknownMode("lax".into()));
        let words = e.to_string();
        assert!(
            words.contains("'lax'") && words.contains("enforce, log or off"),
            "{words}"
        );
    }

    #[test]
    fn root_is_in_passwd_and_a_made_up_user_is_not() {
        assert_eq!(user_ids("root").map(|c| c.uid), Some(0));
        assert_eq!(user_ids("no-such-user-driverkit"), None);
        assert_eq!(
            user_ids("4242"),
            Some(Credentials {
                uid: 4242,
                gid: 4242
            })
        );
    }
}

//! The Landlock domain of a dext: what it may reach on the filesystem and
//! the network, and whom it may signal.
//!
//! Granted: reading its own bundle copy; reading the system's shared
//! libraries and the loader's cache (a dynamically linked dext cannot start
//! without them, and they hold nothing secret); executing its own
//! executable and the ELF loader, which the kernel opens for exec on its
//! behalf. Everything else the kernel's ABI lets us name is refused: other
//! files and directories (`/etc/passwd`, the daemon's state and control
//! socket directory, `/dev`), TCP bind and connect, abstract unix sockets
//! and signals outside the domain. On a kernel with an older Landlock ABI
//! the crate applies what it can (best effort); [`super::Sandbox::new`]
//! does not fail for it.

use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use landlock::{
    Access, AccessFs, AccessNet, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr,
    Scope, ABI,
};

/// The newest ABI this code names rights of; older kernels get a subset.
const ABI_WANTED: ABI = ABI::V7;

/// Directories of shared libraries and the loader's configuration.
const LIBRARIES: [&str; 6] = [
    "/lib",
    "/lib64",
    "/usr/lib",
    "/usr/lib64",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
];

/// The ELF interpreters of the architectures we build for: opened for exec
/// by the kernel when it starts a dynamically linked dext.
const LOADERS: [&str; 2] = ["/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1"];

/// The kernel's Landlock ABI version, 0 without Landlock.
pub(super) fn abi_version() -> i64 {
    const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;
    // SAFETY: the documented version query: no ruleset, size 0.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    v.max(0)
}

/// `landlock_restrict_self`'s flags for a kernel of ABI `abi`: the
/// refusals of the dext itself (after its exec) are what the daemon's log
/// reports, and ABI 7 logs only before an exec by default.
pub(super) fn restrict_flags(abi: i64) -> u32 {
    const LANDLOCK_RESTRICT_SELF_LOG_NEW_EXEC_ON: u32 = 2;
    if abi >= 7 {
        LANDLOCK_RESTRICT_SELF_LOG_NEW_EXEC_ON
    } else {
        0
    }
}

/// Builds the ruleset of one dext (in the daemon, before the spawn); `None`
/// where the kernel has no Landlock.
pub(super) fn ruleset(executable: &Path, bundle: &Path) -> io::Result<Option<OwnedFd>> {
    let refuse = |e: landlock::RulesetError| io::Error::other(format!("landlock: {e}"));
    let path = |p: &Path| {
        PathFd::new(p).map_err(|e| io::Error::other(format!("landlock: {}: {e}", p.display())))
    };
    let read = AccessFs::from_read(ABI_WANTED);
    let read_file = AccessFs::ReadFile | AccessFs::ReadDir;
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(ABI_WANTED))
        .and_then(|r| r.handle_access(AccessNet::from_all(ABI_WANTED)))
        .and_then(|r| r.scope(Scope::from_all(ABI_WANTED)))
        .and_then(|r| r.create())
        .map_err(refuse)?;
    // A bundle made in code (tests, embedders) may have no directory.
    if bundle.is_dir() {
        ruleset = ruleset
            .add_rule(PathBeneath::new(path(bundle)?, read))
            .map_err(refuse)?;
    }
    ruleset = ruleset
        .add_rule(PathBeneath::new(
            path(executable)?,
            AccessFs::Execute | AccessFs::ReadFile,
        ))
        .map_err(refuse)?;
    for dir in LIBRARIES.iter().map(Path::new).filter(|p| p.exists()) {
        let access = if dir.is_dir() {
            read_file
        } else {
            AccessFs::ReadFile.into()
        };
        ruleset = ruleset
            .add_rule(PathBeneath::new(path(dir)?, access))
            .map_err(refuse)?;
    }
    // The runtime gives stdin /dev/null once it has moved its socket away.
    ruleset = ruleset
        .add_rule(PathBeneath::new(
            path(Path::new("/dev/null"))?,
            AccessFs::ReadFile | AccessFs::WriteFile,
        ))
        .map_err(refuse)?;
    for loader in LOADERS.iter().map(Path::new).filter(|p| p.exists()) {
        ruleset = ruleset
            .add_rule(PathBeneath::new(
                path(loader)?,
                AccessFs::Execute | AccessFs::ReadFile,
            ))
            .map_err(refuse)?;
    }
    Ok(ruleset.into())
}

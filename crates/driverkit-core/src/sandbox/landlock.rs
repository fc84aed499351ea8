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
use std::path::Path;

use landlock::{
    Access, AccessFs, AccessNet, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreated,
    RulesetCreatedAttr, Scope, ABI,
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

/// Builds the ruleset of one dext (in the daemon, before fork).
pub(super) fn ruleset(executable: &Path, bundle: &Path) -> io::Result<RulesetCreated> {
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
        .map_err(refuse)?
        // The refusals of the dext itself (after exec) are what the
        // daemon's log reports: ABI 7 logs only before exec by default.
        .log_new_exec(true)
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
    Ok(ruleset)
}

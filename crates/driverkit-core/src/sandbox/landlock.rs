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
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use landlock::BitFlags;

use landlock::{
    Access, AccessFs, AccessNet, PathBeneath, Ruleset, RulesetAttr, RulesetCreatedAttr, Scope, ABI,
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

/// The rules every dext's domain shares (libraries, the loader,
/// `/dev/null`), their paths opened once when the daemon starts rather
/// than at every spawn.
pub(super) struct Shared {
    rules: Vec<(OwnedFd, BitFlags<AccessFs>)>,
}

impl Shared {
    pub fn open() -> io::Result<Shared> {
        let mut rules = Vec::new();
        let mut add = |p: &Path, access: BitFlags<AccessFs>| -> io::Result<()> {
            rules.push((opened(p)?, access));
            Ok(())
        };
        for lib in LIBRARIES.iter().map(Path::new).filter(|p| p.exists()) {
            let access = if lib.is_dir() {
                AccessFs::ReadFile | AccessFs::ReadDir
            } else {
                AccessFs::ReadFile.into()
            };
            add(lib, access)?;
        }
        // The runtime gives stdin /dev/null once it has moved its socket away.
        add(
            Path::new("/dev/null"),
            AccessFs::ReadFile | AccessFs::WriteFile,
        )?;
        for loader in LOADERS.iter().map(Path::new).filter(|p| p.exists()) {
            add(loader, AccessFs::Execute | AccessFs::ReadFile)?;
        }
        Ok(Shared { rules })
    }
}

/// `p` opened as Landlock names a file hierarchy (`O_PATH`).
fn opened(p: &Path) -> io::Result<OwnedFd> {
    rustix::fs::open(
        p,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| io::Error::other(format!("landlock: {}: {e}", p.display())))
}

/// Builds the ruleset of one dext (in the daemon, before the spawn): the
/// shared rules, its bundle, and its executable (the descriptor it will be
/// exec'd through). `None` where the kernel has no Landlock.
pub(super) fn ruleset(
    shared: &Shared,
    executable: BorrowedFd<'_>,
    bundle: &Path,
) -> io::Result<Option<OwnedFd>> {
    let refuse = |e: landlock::RulesetError| io::Error::other(format!("landlock: {e}"));
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(ABI_WANTED))
        .and_then(|r| r.handle_access(AccessNet::from_all(ABI_WANTED)))
        .and_then(|r| r.scope(Scope::from_all(ABI_WANTED)))
        .and_then(|r| r.create())
        .map_err(refuse)?;
    // A bundle made in code (tests, embedders) may have no directory.
    if bundle.is_dir() {
        ruleset = ruleset
            .add_rule(PathBeneath::new(
                opened(bundle)?,
                AccessFs::from_read(ABI_WANTED),
            ))
            .map_err(refuse)?;
    }
    ruleset = ruleset
        .add_rule(PathBeneath::new(
            executable,
            AccessFs::Execute | AccessFs::ReadFile,
        ))
        .map_err(refuse)?;
    for (fd, access) in &shared.rules {
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd.as_fd(), *access))
            .map_err(refuse)?;
    }
    Ok(ruleset.into())
}

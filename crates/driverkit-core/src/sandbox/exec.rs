//! The child's side: between `fork` and `exec`, confine the process and
//! exec the dext.
//!
//! Runs in the forked child of a multithreaded daemon, so it makes system
//! calls only: every allocation (argv, envp, the ruleset, the filter, the
//! executable's descriptor) was made by [`Prepared::new`] in the daemon.
//! The order matters: the user changes first (it needs privileges the
//! later steps give up), then `no_new_privs` and Landlock, then seccomp
//! (whose allowlist has none of the calls before it), and last the exec.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use landlock::RulesetCreated;
use seccompiler::BpfProgram;

use super::Credentials;

/// What a child needs to confine itself and exec, made before `fork`.
pub(crate) struct Prepared {
    /// The executable, opened `O_PATH`: exec'd through the descriptor, so
    /// the dext's user needs no search right on the directories above it.
    executable: OwnedFd,
    /// argv and envp as the kernel takes them (null-terminated arrays of
    /// pointers into `_strings`, which owns them and is never changed).
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    _strings: Vec<CString>,
    credentials: Option<Credentials>,
    ruleset: Option<RulesetCreated>,
    filter: Option<Arc<BpfProgram>>,
    /// Ask the kernel to log refused calls (enforce mode; log mode's action
    /// is logged anyway).
    log_refusals: bool,
}

// SAFETY: the raw pointers point into `_strings`, owned by the same value
// and never modified after `new`; nothing else is shared.
unsafe impl Send for Prepared {}
unsafe impl Sync for Prepared {}

/// A script cannot run sandboxed: the kernel would reopen it by a path
/// through a descriptor gone at exec, and its interpreter is not among
/// what the dext may execute. Say so, rather than fail with `ENOENT`.
fn refuse_script(executable: &Path) -> io::Result<()> {
    use std::io::Read;
    let mut magic = [0u8; 2];
    let read = std::fs::File::open(executable).and_then(|mut f| f.read(&mut magic));
    if matches!(read, Ok(2)) && &magic == b"#!" {
        return Err(io::Error::other(
            "a script (#!), and a sandboxed dext's executable must be a binary: build the driver as one, or debug it with `driverkit run --sandbox=off`",
        ));
    }
    Ok(())
}

impl Prepared {
    pub(super) fn new(
        executable: &Path,
        env: &[(&OsStr, &OsStr)],
        credentials: Option<Credentials>,
        ruleset: Option<RulesetCreated>,
        filter: Option<Arc<BpfProgram>>,
        log_refusals: bool,
    ) -> io::Result<Prepared> {
        refuse_script(executable)?;
        let fd = rustix::fs::open(
            executable,
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?;
        let nul = |bytes: Vec<u8>| {
            CString::new(bytes).map_err(|_| io::Error::other("a NUL byte in argv or envp"))
        };
        let mut strings = vec![nul(executable.as_os_str().as_bytes().to_vec())?];
        for (key, value) in env {
            let mut pair = key.as_bytes().to_vec();
            pair.push(b'=');
            pair.extend_from_slice(value.as_bytes());
            strings.push(nul(pair)?);
        }
        let pointers = |s: &[CString]| {
            s.iter()
                .map(|c| c.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect::<Vec<_>>()
        };
        Ok(Prepared {
            executable: fd,
            argv: pointers(&strings[..1]),
            envp: pointers(&strings[1..]),
            _strings: strings,
            credentials,
            ruleset,
            filter,
            log_refusals,
        })
    }

    /// Confines the calling process and execs the dext. Returns only on
    /// failure, with the error of the step that failed.
    ///
    /// # Safety
    /// Call only in a freshly forked child (a `pre_exec` hook): it changes
    /// the process's user and replaces its image.
    pub unsafe fn confine_and_exec(&mut self) -> io::Error {
        let failed = io::Error::last_os_error;
        if let Some(c) = self.credentials {
            // Supplementary groups first, then the group, then the user:
            // each later step drops the right to do the earlier ones.
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(c.gid, c.gid, c.gid) != 0
                || libc::setresuid(c.uid, c.uid, c.uid) != 0
            {
                return failed();
            }
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return failed();
        }
        if let Some(ruleset) = self.ruleset.take() {
            if ruleset.restrict_self().is_err() {
                return failed();
            }
        }
        if let Some(filter) = &self.filter {
            let program = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut libc::sock_filter,
            };
            let flags = if self.log_refusals {
                libc::SECCOMP_FILTER_FLAG_LOG
            } else {
                0
            };
            if libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                flags,
                &program as *const libc::sock_fprog,
            ) != 0
            {
                return failed();
            }
        }
        libc::syscall(
            libc::SYS_execveat,
            self.executable.as_raw_fd(),
            c"".as_ptr(),
            self.argv.as_ptr(),
            self.envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        );
        failed()
    }
}

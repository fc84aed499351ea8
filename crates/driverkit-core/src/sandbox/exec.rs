//! Starting a sandboxed dext: the child confines itself, then execs.
//!
//! The child shares the daemon's memory until its exec (`CLONE_VM |
//! CLONE_VFORK`, as `posix_spawn` does): copying the page tables of a large
//! multithreaded daemon for a `fork` cost more than the whole sandbox. So
//! the child makes raw system calls only, on its own stack, with every
//! allocation (argv, envp, the ruleset, the filter, the executable's
//! descriptor) made by [`Prepared::new`] in the daemon, and it writes
//! nothing of the daemon's memory but its error. glibc's `set*id` wrappers
//! are avoided on purpose: in a child sharing the daemon's memory they
//! would signal the daemon's threads to change their IDs too.
//!
//! The order matters: signal handlers reset, stdio in place, its own
//! process group; then its thread limit and its user (both need privileges
//! the later steps give up), then `no_new_privs` and Landlock, then seccomp (whose allowlist has
//! none of the calls before it), and last the exec.

use std::ffi::{c_int, c_long, c_void, CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use std::cell::UnsafeCell;

use super::cgroup::NewCgroup;
use super::seccomp::Compiled;
use super::{ChildUser, Credentials, Limits};
use crate::process::Process;

/// What a child needs to confine itself and exec, made before it starts.
pub(crate) struct Prepared {
    /// The executable, opened by the daemon: exec'd through the
    /// descriptor, so the dext's user needs no search right on the
    /// directories above it.
    executable: OwnedFd,
    /// argv and envp as the kernel takes them (null-terminated arrays of
    /// pointers into `_strings`, which owns them and is never changed).
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    _strings: Vec<CString>,
    credentials: Option<ChildUser>,
    /// The Landlock ruleset and the flags of `landlock_restrict_self`.
    ruleset: Option<(OwnedFd, u32)>,
    filter: Option<Filter>,
    /// Ask the kernel to log refused calls (enforce mode; log mode's action
    /// is logged anyway).
    log_refusals: bool,
    /// The dext's cgroup, to be born in or to join.
    cgroup: Option<NewCgroup>,
    limits: Limits,
}

/// This spawn's copy of the filters: the child writes its PID into its
/// copy of the allowlist (`pid_slots`) before installing it.
struct Filter {
    compiled: Arc<Compiled>,
    main: UnsafeCell<Vec<seccompiler::sock_filter>>,
}

// SAFETY: the raw pointers point into `_strings`, owned by the same value
// and never modified after `new`; the filter's cell is written only by the
// one child of `spawn`, while the parent waits (CLONE_VFORK).
unsafe impl Send for Prepared {}
// SAFETY: as for Send: nothing reads the cell while the child writes it.
unsafe impl Sync for Prepared {}

/// A script cannot run sandboxed: the kernel would reopen it by a path
/// through a descriptor gone at exec, and its interpreter is not among
/// what the dext may execute. Say so, rather than fail with `ENOENT`.
fn refuse_script(executable: &OwnedFd) -> io::Result<()> {
    let mut magic = [0u8; 2];
    if matches!(rustix::io::pread(executable, &mut magic, 0), Ok(2)) && &magic == b"#!" {
        return Err(io::Error::other(
            "a script (#!), and a sandboxed dext's executable must be a binary: build the driver as one, or debug it with `driverkit run --sandbox=off`",
        ));
    }
    Ok(())
}

/// Opens `executable` once, for everything the spawn needs of it: the
/// script check, its Landlock rule and the exec itself.
pub(super) fn open_executable(executable: &Path) -> io::Result<OwnedFd> {
    let fd = rustix::fs::open(
        executable,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    refuse_script(&fd)?;
    Ok(fd)
}

/// The steps of the child, to name the one that failed (by number; the
/// cgroup came last and runs third).
const STEPS: [&str; 10] = [
    "signals",
    "stdio",
    "process group",
    "limits",
    "user",
    "no_new_privs",
    "landlock",
    "seccomp",
    "exec",
    "cgroup",
];

/// The child's stack: what the steps above need, with room to spare.
const STACK: usize = 256 * 1024;

/// How a child confines itself, as the policy resolved it.
pub(super) struct Confinement {
    pub credentials: Option<ChildUser>,
    /// The Landlock ruleset and the flags of `landlock_restrict_self`.
    pub ruleset: Option<(OwnedFd, u32)>,
    pub filter: Option<Arc<Compiled>>,
    pub log_refusals: bool,
    pub cgroup: Option<NewCgroup>,
    pub limits: Limits,
}

impl Prepared {
    /// `fd` is `executable` as [`open_executable`] opened it.
    pub(super) fn new(
        executable: &Path,
        fd: OwnedFd,
        env: &[(&OsStr, &OsStr)],
        confinement: Confinement,
    ) -> io::Result<Prepared> {
        let filter = confinement.filter.map(|compiled| Filter {
            main: UnsafeCell::new(compiled.main.clone()),
            compiled,
        });
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
            credentials: confinement.credentials,
            ruleset: confinement.ruleset,
            filter,
            log_refusals: confinement.log_refusals,
            cgroup: confinement.cgroup,
            limits: confinement.limits,
        })
    }

    /// Starts the dext with `stdio` as its descriptors 0, 1 and 2, in its
    /// own process group, confined. Returns once it has exec'd (or failed
    /// to, naming the step). Once per `Prepared` (`&mut`: the child writes
    /// its PID into this value's filter).
    pub fn spawn(&mut self, stdio: [BorrowedFd<'_>; 3]) -> io::Result<Process> {
        let mut stack = vec![0u8; STACK];
        let mut child = Child {
            prepared: self,
            stdio: stdio.map(|fd| fd.as_raw_fd()),
            failure: AtomicI64::new(0),
            join_cgroup: false,
        };
        // SAFETY: the top of our own allocation, 16-byte aligned as the ABI
        // wants; the stack lives until clone returns, which with
        // CLONE_VFORK is after the child's exec or exit.
        let top = unsafe { stack.as_mut_ptr().add(STACK) };
        let top = (top as usize & !15) as *mut c_void;
        // No signal handler of the daemon may run in the child: blocked
        // here, reset in the child, unblocked just before its exec.
        // SAFETY: a sigset_t is plain integers; all zeroes is a valid
        // (empty) set.
        let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: plain libc calls on local sets; the child runs
        // `child_main` on its own stack with `child`, which outlives it.
        let pid = unsafe {
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            // Born in its cgroup where the kernel can; else it joins it.
            let born = match &child.prepared.cgroup {
                Some(c) => clone_into_cgroup(c.dir.as_raw_fd(), stack.as_mut_ptr(), STACK, &child),
                None => -(libc::ENOSYS as libc::c_long),
            };
            let (pid, spawned) = if born >= 0 {
                (born as libc::c_int, io::Error::from_raw_os_error(0))
            } else {
                child.join_cgroup = child.prepared.cgroup.is_some();
                let pid = libc::clone(
                    child_main,
                    top,
                    libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                    &child as *const Child as *mut c_void,
                );
                (pid, io::Error::last_os_error())
            };
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            if pid < 0 {
                return Err(spawned);
            }
            pid as u32
        };
        drop(stack);
        let failure = child.failure.load(Ordering::Acquire);
        let mut process = Process::from_pid(pid);
        if let Some(c) = self.cgroup.take() {
            process = process.with_cgroup(c.group);
        }
        match failure {
            0 => Ok(process),
            failure => {
                let _ = process.wait();
                let step = STEPS.get((failure >> 32) as usize).unwrap_or(&"?");
                let error = io::Error::from_raw_os_error(failure as i32);
                Err(io::Error::new(
                    error.kind(),
                    format!("starting the sandboxed dext ({step}): {error}"),
                ))
            }
        }
    }
}

/// What the child reads, and the one thing it writes: which step failed
/// and why (step << 32 | errno).
struct Child<'a> {
    prepared: &'a Prepared,
    stdio: [RawFd; 3],
    failure: AtomicI64,
    /// It was not born in its cgroup: it joins it itself.
    join_cgroup: bool,
}

/// `clone3(CLONE_VM | CLONE_VFORK | CLONE_INTO_CGROUP)`: the child is born
/// in the cgroup `cgroup` (a folder's descriptor) and runs `child_main` on
/// `stack`, as `clone` would; returns its PID, or `-errno` (`-ENOSYS` where
/// the kernel or this architecture cannot, and the caller falls back).
///
/// # Safety
/// As `clone` with `CLONE_VM | CLONE_VFORK`: `stack` (of `size` bytes)
/// and `child` outlive the child's exec or exit, which this waits for.
unsafe fn clone_into_cgroup(
    cgroup: RawFd,
    stack: *mut u8,
    size: usize,
    child: &Child<'_>,
) -> libc::c_long {
    #[cfg(target_arch = "x86_64")]
    {
        const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
        /// `struct clone_args` (version 2, with `cgroup`).
        #[repr(C)]
        struct CloneArgs {
            flags: u64,
            pidfd: u64,
            child_tid: u64,
            parent_tid: u64,
            exit_signal: u64,
            stack: u64,
            stack_size: u64,
            tls: u64,
            set_tid: u64,
            set_tid_size: u64,
            cgroup: u64,
        }
        let args = CloneArgs {
            flags: (libc::CLONE_VM | libc::CLONE_VFORK) as u64 | CLONE_INTO_CGROUP,
            pidfd: 0,
            child_tid: 0,
            parent_tid: 0,
            exit_signal: libc::SIGCHLD as u64,
            stack: stack as u64,
            // Its top 16-byte aligned, as the ABI wants at a call.
            stack_size: (((stack as usize + size) & !15) - stack as usize) as u64,
            tls: 0,
            set_tid: 0,
            set_tid_size: 0,
            cgroup: cgroup as u64,
        };
        let entry: extern "C" fn(*mut c_void) -> c_int = child_main;
        let ret: libc::c_long;
        // SAFETY: the parent gets the PID (or -errno) in rax and goes on as
        // from any system call. The child starts on its own stack (the
        // kernel sets rsp to stack + stack_size, 16-byte aligned), with
        // every other register as the parent had it: it calls
        // `child_main(child)` from r12 and r13, which never returns (it
        // execs or exits), and exits should it ever.
        unsafe {
            std::arch::asm!(
                "syscall",
                "test rax, rax",
                "jnz 2f",
                "xor ebp, ebp",
                "mov rdi, r13",
                "call r12",
                "mov edi, eax",
                "mov eax, {exit}",
                "syscall",
                "ud2",
                "2:",
                exit = const libc::SYS_exit,
                inlateout("rax") libc::SYS_clone3 => ret,
                in("rdi") &args as *const CloneArgs,
                in("rsi") std::mem::size_of::<CloneArgs>(),
                in("r12") entry,
                in("r13") child as *const Child as *mut c_void,
                lateout("rcx") _,
                lateout("r11") _,
            );
        }
        ret
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (cgroup, stack, size, child);
        -(libc::ENOSYS as libc::c_long)
    }
}

/// A raw system call's result: its error number on failure. (errno itself
/// is the daemon thread's, shared with the child until its exec.)
fn check(result: c_long) -> Result<(), i32> {
    if result < 0 {
        // SAFETY: reads the errno libc just set.
        Err(unsafe { *libc::__errno_location() })
    } else {
        Ok(())
    }
}

/// `prlimit64(0, resource, value)`, soft and hard, as a raw system call.
fn set_limit(resource: libc::__rlimit_resource_t, value: u64) -> Result<(), i32> {
    let limit = libc::rlimit64 {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: the kernel reads `limit`, a live local, and writes nothing.
    check(unsafe {
        libc::syscall(
            libc::SYS_prlimit64,
            0,
            resource,
            &limit as *const libc::rlimit64,
            std::ptr::null_mut::<libc::rlimit64>(),
        )
    })
}

extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `Child` the parent keeps alive until we exec or
    // exit (CLONE_VFORK).
    let child = unsafe { &*(arg as *const Child) };
    // SAFETY: we are the child, between clone and exec; see `confine`.
    let (step, errno) = unsafe { child.confine_and_exec() };
    child
        .failure
        .store(((step as i64) << 32) | errno as i64, Ordering::Release);
    // SAFETY: leaves without running anything of the daemon's.
    unsafe { libc::syscall(libc::SYS_exit_group, 127) };
    127
}

impl Child<'_> {
    /// Returns only on failure: the step and its error number.
    ///
    /// # Safety
    /// Only in the child between `clone` and `exec`, where nothing but
    /// raw system calls on memory prepared before the clone may run (see
    /// `confine`).
    unsafe fn confine_and_exec(&self) -> (usize, i32) {
        let p = self.prepared;
        let step = |n: usize, r: Result<(), i32>| r.map_err(|e| (n, e));
        let run = || -> Result<(), (usize, i32)> {
            // SAFETY: raw system calls on descriptors, strings and arrays
            // prepared (and kept alive by `p`) before the clone; no
            // allocation, no lock, as this function's caller promises.
            unsafe {
                // 0: the daemon's handlers are not the dext's; SIGPIPE, which
                // the Rust runtime ignores, gets its default back.
                for signal in 1..=64 {
                    if signal == libc::SIGKILL || signal == libc::SIGSTOP {
                        continue;
                    }
                    let mut action: libc::sigaction = std::mem::zeroed();
                    if libc::sigaction(signal, std::ptr::null(), &mut action) != 0 {
                        continue;
                    }
                    if action.sa_sigaction != libc::SIG_IGN || signal == libc::SIGPIPE {
                        action.sa_sigaction = libc::SIG_DFL;
                        action.sa_flags = 0;
                        step(
                            0,
                            check(libc::sigaction(signal, &action, std::ptr::null_mut()) as c_long),
                        )?;
                    }
                }
                // 1: its socket and its log as 0, 1 and 2.
                for (target, &fd) in self.stdio.iter().enumerate() {
                    if fd == target as RawFd {
                        // Already in place: only keep it across the exec.
                        step(
                            1,
                            check(libc::syscall(libc::SYS_fcntl, fd, libc::F_SETFD, 0)),
                        )?;
                    } else {
                        step(1, check(libc::syscall(libc::SYS_dup3, fd, target, 0)))?;
                    }
                }
                // 2: its own process group: Ctrl-C reaches only the daemon.
                step(2, check(libc::syscall(libc::SYS_setpgid, 0, 0)))?;
                // 9: its own cgroup, joined while still root ("0": the writer),
                // unless it was born there.
                if let (true, Some(c)) = (self.join_cgroup, &p.cgroup) {
                    let procs = &c.procs;
                    step(
                        9,
                        check(libc::syscall(
                            libc::SYS_write,
                            procs.as_raw_fd(),
                            c"0".as_ptr(),
                            1,
                        )),
                    )?;
                }
                // 3: its memory, and its threads, counted by the kernel per
                // user (its own).
                step(3, set_limit(libc::RLIMIT_DATA, p.limits.memory))?;
                if p.credentials.is_some() {
                    step(3, set_limit(libc::RLIMIT_NPROC, p.limits.tasks))?;
                }
                // 4: its own user: groups, then group, then user.
                let user = p.credentials.map(|u| match u {
                    ChildUser::Fixed(c) => c,
                    ChildUser::FromPid { base } => {
                        let id = base + libc::syscall(libc::SYS_getpid) as u32;
                        Credentials { uid: id, gid: id }
                    }
                });
                if let Some(c) = user {
                    step(
                        4,
                        check(libc::syscall(
                            libc::SYS_setgroups,
                            0,
                            std::ptr::null::<u32>(),
                        )),
                    )?;
                    step(
                        4,
                        check(libc::syscall(libc::SYS_setresgid, c.gid, c.gid, c.gid)),
                    )?;
                    step(
                        4,
                        check(libc::syscall(libc::SYS_setresuid, c.uid, c.uid, c.uid)),
                    )?;
                }
                step(
                    5,
                    check(libc::syscall(
                        libc::SYS_prctl,
                        libc::PR_SET_NO_NEW_PRIVS,
                        1,
                        0,
                        0,
                        0,
                    )),
                )?;
                if let Some((ruleset, flags)) = &p.ruleset {
                    step(
                        6,
                        check(libc::syscall(
                            libc::SYS_landlock_restrict_self,
                            ruleset.as_raw_fd(),
                            *flags,
                        )),
                    )?;
                }
                if let Some(filter) = &p.filter {
                    let flags = if p.log_refusals {
                        libc::SECCOMP_FILTER_FLAG_LOG
                    } else {
                        0
                    };
                    // Its own PID into its copy of the allowlist.
                    let main = &mut *filter.main.get();
                    let pid = libc::syscall(libc::SYS_getpid) as u32;
                    for &slot in &filter.compiled.pid_slots {
                        if let Some(instruction) = main.get_mut(slot) {
                            instruction.k = pid;
                        }
                    }
                    // clone3's first (the allowlist refuses seccomp itself),
                    // and unlogged: its ENOSYS is the C library's cue to fall
                    // back to clone, not a refusal worth a line.
                    for (program, flags) in [(&filter.compiled.no_clone3, 0), (&*main, flags)] {
                        let program = libc::sock_fprog {
                            len: program.len() as u16,
                            filter: program.as_ptr() as *mut libc::sock_filter,
                        };
                        step(
                            7,
                            check(libc::syscall(
                                libc::SYS_seccomp,
                                libc::SECCOMP_SET_MODE_FILTER,
                                flags,
                                &program as *const libc::sock_fprog,
                            )),
                        )?;
                    }
                }
                // Signals as a new program expects them: none blocked.
                let empty: libc::sigset_t = std::mem::zeroed();
                libc::syscall(
                    libc::SYS_rt_sigprocmask,
                    libc::SIG_SETMASK,
                    &empty as *const libc::sigset_t,
                    std::ptr::null_mut::<libc::sigset_t>(),
                    8,
                );
                step(
                    8,
                    check(libc::syscall(
                        libc::SYS_execveat,
                        p.executable.as_raw_fd(),
                        c"".as_ptr(),
                        p.argv.as_ptr(),
                        p.envp.as_ptr(),
                        libc::AT_EMPTY_PATH,
                    )),
                )
            }
        };
        match run() {
            Ok(()) => (8, libc::ENOEXEC),
            Err(failed) => failed,
        }
    }
}

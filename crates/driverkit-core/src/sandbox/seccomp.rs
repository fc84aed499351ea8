//! The seccomp allowlist of a dext: the system calls the SDK runtime and
//! Rust's standard library make, found by running every example driver in
//! `--sandbox=log` mode and reading what the kernel logged.
//!
//! A call outside the list fails with `EPERM` and is logged by the kernel
//! (`SECCOMP_FILTER_FLAG_LOG`), which the daemon reports by syscall name
//! (see `audit`). In log mode it is allowed and logged instead.
//!
//! Deliberately absent: `socket` (a dext reaches the world only through
//! the daemon: no TCP, no control socket, no netlink), `ptrace`, `mount`,
//! module, key and BPF calls, `io_uring` (its operations bypass this
//! filter), and every `set*id`. `execve` stays, since the filter is applied
//! before the dext's own exec; Landlock lets it execute nothing but its own
//! executable and the loader.
//!
//! **A dext is one process.** `clone` is allowed only with `CLONE_THREAD`
//! (which needs `CLONE_VM` and `CLONE_SIGHAND`: a thread, which cannot
//! outlive its process), and `clone3`, whose flags live in memory a filter
//! cannot read, fails with `ENOSYS` so that the C library falls back to
//! `clone` (a second filter, since one filter has one refusal). So a dext
//! cannot fork a child that outlives it. `kill` and `tgkill` reach only the
//! dext itself: their first argument must be its PID, which the compiled
//! filter holds as [`PID_PLACEHOLDER`] and each child writes in
//! ([`Compiled::pid_slots`]) before installing it. `tkill` is absent.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use syscalls::Sysno;

use super::Mode;

/// Allowed whatever their arguments.
const ALLOWED: &[Sysno] = &[
    // Descriptors: the socket, the log, shared-memory regions.
    Sysno::read,
    Sysno::write,
    Sysno::readv,
    Sysno::writev,
    Sysno::pread64,
    Sysno::pwrite64,
    Sysno::close,
    Sysno::dup,
    Sysno::dup3,
    Sysno::fcntl,
    Sysno::lseek,
    Sysno::fstat,
    Sysno::newfstatat,
    Sysno::statx,
    Sysno::openat,
    Sysno::getdents64,
    Sysno::readlinkat,
    Sysno::faccessat,
    Sysno::faccessat2,
    Sysno::pipe2,
    Sysno::memfd_create,
    Sysno::ftruncate,
    Sysno::fallocate,
    // Messages to and from the daemon.
    Sysno::recvmsg,
    Sysno::sendmsg,
    Sysno::recvfrom,
    Sysno::sendto,
    Sysno::shutdown,
    Sysno::getsockopt,
    Sysno::setsockopt,
    Sysno::ppoll,
    Sysno::epoll_create1,
    Sysno::epoll_ctl,
    Sysno::epoll_pwait,
    Sysno::eventfd2,
    // Memory.
    Sysno::mmap,
    Sysno::munmap,
    Sysno::mprotect,
    Sysno::mremap,
    Sysno::madvise,
    Sysno::brk,
    Sysno::membarrier,
    // Threads, time and signals (clone and kill below, with conditions).
    // clone3 passes this filter so that the other's ENOSYS is the answer
    // (of two refusals, the kernel returns the last installed filter's).
    Sysno::clone3,
    Sysno::futex,
    Sysno::set_robust_list,
    Sysno::rseq,
    Sysno::set_tid_address,
    Sysno::exit,
    Sysno::exit_group,
    Sysno::wait4,
    Sysno::rt_sigaction,
    Sysno::rt_sigprocmask,
    Sysno::rt_sigreturn,
    Sysno::sigaltstack,
    Sysno::sched_yield,
    Sysno::sched_getaffinity,
    Sysno::nanosleep,
    Sysno::clock_nanosleep,
    Sysno::clock_gettime,
    Sysno::clock_getres,
    Sysno::gettimeofday,
    Sysno::getpid,
    Sysno::gettid,
    Sysno::getppid,
    Sysno::getuid,
    Sysno::geteuid,
    Sysno::getgid,
    Sysno::getegid,
    Sysno::getrandom,
    Sysno::prctl,
    Sysno::prlimit64,
    Sysno::uname,
    Sysno::getcwd,
    // The dext's own exec (see above).
    Sysno::execve,
    Sysno::execveat,
    #[cfg(target_arch = "x86_64")]
    Sysno::arch_prctl,
    #[cfg(target_arch = "x86_64")]
    Sysno::poll,
    #[cfg(target_arch = "x86_64")]
    Sysno::epoll_wait,
    #[cfg(target_arch = "x86_64")]
    Sysno::access,
    #[cfg(target_arch = "x86_64")]
    Sysno::readlink,
    #[cfg(target_arch = "x86_64")]
    Sysno::open,
    #[cfg(target_arch = "x86_64")]
    Sysno::dup2,
];

/// `ioctl` requests a runtime makes on its own descriptors: is this a
/// terminal (the log writer asks), non-blocking and close-on-exec.
// The constants' type differs between C libraries (musl's are ints).
#[allow(clippy::unnecessary_cast)]
const IOCTLS: [u64; 4] = [
    libc::TCGETS as u64,
    libc::TIOCGWINSZ as u64,
    libc::FIONBIO as u64,
    libc::FIOCLEX as u64,
];

/// What stands for the dext's PID in the compiled filter until its child
/// writes it in: above any PID the kernel hands out (at most 2^22).
pub(super) const PID_PLACEHOLDER: u32 = 0x7fff_fff1;

/// The filters of a dext, compiled once per daemon.
pub(super) struct Compiled {
    /// The allowlist.
    pub main: BpfProgram,
    /// `clone3` fails with `ENOSYS`; everything else passes to `main`.
    pub no_clone3: BpfProgram,
    /// The instructions of `main` that compare with the dext's PID.
    pub pid_slots: Vec<usize>,
}

/// Compiles the filters for `mode`.
pub(super) fn compile(mode: Mode) -> Result<Compiled, seccompiler::BackendError> {
    let arch = if cfg!(target_arch = "aarch64") {
        TargetArch::aarch64
    } else {
        TargetArch::x86_64
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = ALLOWED
        .iter()
        .map(|s| (s.id() as i64, Vec::new()))
        .collect();
    let arg_is = |index: u8, value: u64| {
        SeccompCondition::new(index, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
            .and_then(|c| SeccompRule::new(vec![c]))
    };
    // Socket pairs for call channels: unix ones only.
    rules.insert(
        Sysno::socketpair.id() as i64,
        vec![arg_is(0, libc::AF_UNIX as u64)?],
    );
    rules.insert(
        Sysno::ioctl.id() as i64,
        IOCTLS
            .iter()
            .map(|&request| arg_is(1, request))
            .collect::<Result<_, _>>()?,
    );
    // Threads only.
    let thread = libc::CLONE_THREAD as u64;
    rules.insert(
        Sysno::clone.id() as i64,
        vec![SeccompRule::new(vec![SeccompCondition::new(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(thread),
            thread,
        )?])?],
    );
    // Signals to itself only.
    for call in [Sysno::kill, Sysno::tgkill] {
        rules.insert(call.id() as i64, vec![arg_is(0, PID_PLACEHOLDER.into())?]);
    }
    let refused = match mode {
        Mode::Log => SeccompAction::Log,
        Mode::Enforce | Mode::Off => SeccompAction::Errno(libc::EPERM as u32),
    };
    let main: BpfProgram =
        SeccompFilter::new(rules, refused, SeccompAction::Allow, arch)?.try_into()?;
    let pid_slots = main
        .iter()
        .enumerate()
        .filter(|(_, i)| i.k == PID_PLACEHOLDER)
        .map(|(n, _)| n)
        .collect();
    let no_clone3: BpfProgram = SeccompFilter::new(
        [(Sysno::clone3.id() as i64, Vec::new())]
            .into_iter()
            .collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )?
    .try_into()?;
    Ok(Compiled {
        main,
        no_clone3,
        pid_slots,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allowlist_compiles_for_both_modes() {
        for mode in [Mode::Enforce, Mode::Log] {
            let compiled = compile(mode).unwrap();
            assert!(
                compiled.main.len() > ALLOWED.len(),
                "{} instructions",
                compiled.main.len()
            );
            // One comparison with the PID each for kill and tgkill, and
            // nothing else that looks like it.
            assert_eq!(compiled.pid_slots.len(), 2, "{mode:?}");
        }
    }

    #[test]
    fn socket_and_ptrace_are_not_on_the_list() {
        for absent in [
            Sysno::clone,
            Sysno::kill,
            Sysno::tkill,
            Sysno::socket,
            Sysno::ptrace,
            Sysno::setuid,
            Sysno::io_uring_setup,
        ] {
            assert!(!ALLOWED.contains(&absent), "{absent:?}");
        }
    }
}

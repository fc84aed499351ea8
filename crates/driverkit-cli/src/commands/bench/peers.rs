//! The benches' peer processes: this binary started again with
//! `DRIVERKIT_BENCH_PEER` naming the peer and `DRIVERKIT_BENCH_FD` the one
//! descriptor it works on. Peers are not subcommands: the user's CLI lists
//! and parses only what a user runs.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};

/// The variable naming the peer a process is to be.
const PEER: &str = "DRIVERKIT_BENCH_PEER";
/// The variable holding the number of the peer's inherited descriptor.
const FD: &str = "DRIVERKIT_BENCH_FD";

/// A peer process a bench starts, and the arguments it takes.
#[derive(Clone, Copy)]
pub(super) enum Peer<'a> {
    /// The raw socket echo (`raw_pingpong`).
    Echo,
    /// The spinning shared-memory peer (`raw_spin_pingpong`).
    Spin,
    /// The futex-waiting peer (`raw_futex_pingpong`).
    Futex,
    /// The raw TAP forwarder, writing to the TAP named here.
    TapForward(&'a str),
    /// The eventfd waker of the PCI interrupt baseline.
    Eventfd,
    /// The raw pty echo of the serial baseline.
    PtyEcho,
    /// The data-queue consumer: `raw` or `dq`, entry size, count.
    Consume(&'a str, usize, usize),
}

impl<'a> Peer<'a> {
    fn name(self) -> &'static str {
        match self {
            Peer::Echo => "echo",
            Peer::Spin => "spin",
            Peer::Futex => "futex",
            Peer::TapForward(_) => "tap-forward",
            Peer::Eventfd => "eventfd",
            Peer::PtyEcho => "pty-echo",
            Peer::Consume(..) => "consume",
        }
    }

    /// The peer `name` and `args` ask for, or why none.
    pub(super) fn parse(name: &str, args: &'a [String]) -> Result<Peer<'a>, String> {
        let number = |i: usize| args.get(i).and_then(|a| a.parse::<usize>().ok());
        let peer = match (name, args) {
            ("echo", []) => Some(Peer::Echo),
            ("spin", []) => Some(Peer::Spin),
            ("futex", []) => Some(Peer::Futex),
            ("tap-forward", [second]) => Some(Peer::TapForward(second)),
            ("eventfd", []) => Some(Peer::Eventfd),
            ("pty-echo", []) => Some(Peer::PtyEcho),
            ("consume", [kind, _, _]) => match (number(1), number(2)) {
                (Some(entry), Some(n)) => Some(Peer::Consume(kind, entry, n)),
                _ => None,
            },
            _ => None,
        };
        peer.ok_or_else(|| {
            format!(
                "{PEER}={name} with arguments {args:?} names no bench peer; peers are started by `driverkit bench`"
            )
        })
    }

    fn args(self) -> Vec<String> {
        match self {
            Peer::TapForward(second) => vec![second.to_owned()],
            Peer::Consume(kind, entry, n) => {
                vec![kind.to_owned(), entry.to_string(), n.to_string()]
            }
            _ => Vec::new(),
        }
    }
}

/// The peer this process was started as (its name and arguments);
/// `None` for every other start.
pub(super) fn requested() -> Option<(String, Vec<String>)> {
    let name = std::env::var(PEER).ok()?;
    Some((name, std::env::args().skip(1).collect()))
}

/// In a peer: the descriptor `spawn_peer` handed it, now this process's
/// to own.
pub(super) fn inherited_fd() -> Result<OwnedFd, String> {
    let fd: i32 = std::env::var(FD)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or("no DRIVERKIT_BENCH_FD: a peer is started by `driverkit bench`")?;
    // SAFETY: the parent passes this one descriptor, open and inherited,
    // for this process alone to own; nothing here has taken it before.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Starts this binary as `peer`, handing it `fd`, spawned the way the
/// daemon spawns a dext: inheritable descriptor, no pre_exec hook, so
/// posix_spawn.
pub(super) fn spawn_peer(peer: Peer<'_>, fd: OwnedFd, stdout: Stdio) -> Result<Child, String> {
    rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::empty()).map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    Command::new(exe)
        .args(peer.args())
        .env(PEER, peer.name())
        .env(FD, fd.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .stdout(stdout)
        .spawn()
        .map_err(|e| e.to_string())
}

//! What a node's requests share: its termios, open files, buffers, and
//! the requests parked until the line lets them go.

use super::*;

/// A read waiting for bytes.
pub(super) struct PendingRead {
    pub(super) unique: u64,
    pub(super) size: usize,
    /// Bytes that complete it (`VMIN`, at most `size`; 1 with `VMIN` 0).
    pub(super) min: usize,
    /// `VTIME`: with `VMIN` 0 a total timeout, else between bytes.
    pub(super) vtime: Option<Duration>,
    pub(super) vmin_zero: bool,
    pub(super) since: Instant,
}

/// A blocking write not yet all accepted.
pub(super) struct PendingWrite {
    pub(super) unique: u64,
    pub(super) data: Vec<u8>,
    pub(super) done: usize,
}

/// What happens once the output has gone.
pub(super) enum After {
    Reply,
    Termios {
        termios: Termios,
        flush_input: bool,
    },
    /// The last close: hang up.
    Release,
}

pub(super) struct PendingDrain {
    pub(super) unique: u64,
    pub(super) after: After,
    pub(super) deadline: Option<Instant>,
}

pub(super) struct PendingModemWait {
    pub(super) unique: u64,
    pub(super) mask: u32,
}

pub(super) struct Poller {
    pub(super) handle: u64,
    pub(super) events: u32,
}

/// Everything a node's requests share.
pub(super) struct State {
    pub(super) termios: Termios,
    pub(super) opens: u32,
    /// Open files and their `open` flags (`O_NONBLOCK`).
    pub(super) files: HashMap<u64, u32>,
    pub(super) next_fh: u64,
    pub(super) exclusive: bool,
    pub(super) input: VecDeque<u8>,
    /// When bytes last arrived (`VTIME` between bytes).
    pub(super) last_rx: Instant,
    /// The far end sent XOFF (with `IXON`).
    pub(super) xoff: bool,
    /// `TCOOFF`.
    pub(super) suspended: bool,
    /// Bytes written while the output was stopped, sent first when it
    /// resumes (at most `STOPPED_MAX`).
    pub(super) stopped_output: VecDeque<u8>,
    pub(super) reads: VecDeque<PendingRead>,
    pub(super) writes: VecDeque<PendingWrite>,
    pub(super) drains: Vec<PendingDrain>,
    pub(super) modem_waits: Vec<PendingModemWait>,
    pub(super) pollers: Vec<Poller>,
    /// The modem inputs last reported, as `tiocm` bits.
    pub(super) modem: u32,
    pub(super) counters: Counters,
    pub(super) serial_flags: u32,
    pub(super) winsize: [u8; 8],
    pub(super) corrupt_logged: bool,
}

pub(super) struct Inner {
    pub(super) core: Arc<Core>,
    pub(super) dev: OwnedFd,
    pub(super) path: PathBuf,
    pub(super) index: u32,
    pub(super) state: Mutex<State>,
    /// Bumped (and woken) to make `cuse-io` look again.
    pub(super) kick: AtomicU32,
    /// Wakes `cuse-dev` out of its poll of the device when the node stops.
    pub(super) stop: Stop,
}

/// Replies and work that must wait until the state's lock is let go.
#[derive(Default)]
pub(super) struct Work {
    pub(super) replies: Vec<Vec<u8>>,
    pub(super) after: Vec<(u64, After)>,
    pub(super) deadline: Option<Instant>,
}

impl Work {
    pub(super) fn until(&mut self, at: Instant) {
        self.deadline = Some(self.deadline.map_or(at, |d| d.min(at)));
    }
}

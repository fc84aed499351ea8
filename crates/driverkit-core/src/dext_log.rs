//! The dexts' logs: their stdout and stderr, forwarded line by line into
//! the daemon's log under each dext's name, by one thread for all of them
//! (an `epoll` set), not one per dext: at a thousand dexts a thread each
//! was a thousand threads doing nothing.
//!
//! Per stream: lines are cut at [`LOG_LINE_MAX`] bytes, bytes that are not
//! UTF-8 shown as U+FFFD, and a token bucket lets through
//! [`limits::LOG_LINES_PER_SECOND`] lines a second (a burst of twice that),
//! counting what it drops and saying so once the rate allows again. The
//! dext never blocks on its log for long: the hub reads whatever a stream
//! has each time it is ready, a bounded amount per turn so that one
//! chattering dext cannot starve the others.

use driverkit_wire::sync::Locked;
use std::collections::HashMap;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use rustix::event::epoll;

use crate::user_server::limits;

/// The longest log line forwarded whole; a longer one is cut into pieces
/// of this size, so that a dext writing without newlines cannot make the
/// daemon hold an ever-growing line.
pub(crate) const LOG_LINE_MAX: usize = 4096;

/// What one turn reads of a stream before looking at the others.
const TURN: usize = 64 * 1024;

/// One dext's log stream and its state.
struct Stream {
    socket: UnixStream,
    label: String,
    line: Vec<u8>,
    tokens: f64,
    refilled: Instant,
    dropped: u64,
}

impl Stream {
    fn emit(&mut self, line: &[u8]) {
        let rate = f64::from(limits::LOG_LINES_PER_SECOND);
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.refilled).as_secs_f64() * rate).min(2.0 * rate);
        self.refilled = now;
        if self.tokens < 1.0 {
            self.dropped += 1;
            return;
        }
        self.tokens -= 1.0;
        let label = &self.label;
        if self.dropped > 0 {
            tracing::warn!(
                target: "dext",
                "{label}: limit: {} log line(s) dropped (more than {} a second)",
                self.dropped,
                limits::LOG_LINES_PER_SECOND
            );
            self.dropped = 0;
        }
        let text = String::from_utf8_lossy(line);
        tracing::info!(target: "dext", "{label}: {}", text.trim_end_matches('\r'));
    }

    /// Takes `bytes`, emitting each complete (or over-long) line.
    fn feed(&mut self, bytes: &[u8]) {
        for piece in bytes.split_inclusive(|b| *b == b'\n') {
            let (body, ends) = match piece.strip_suffix(b"\n") {
                Some(body) => (body, true),
                None => (piece, false),
            };
            for part in body.chunks(LOG_LINE_MAX) {
                if self.line.len() + part.len() > LOG_LINE_MAX {
                    let line = std::mem::take(&mut self.line);
                    self.emit(&line);
                }
                self.line.extend_from_slice(part);
            }
            if ends {
                let line = std::mem::take(&mut self.line);
                self.emit(&line);
            }
        }
    }

    /// Reads what the stream has, up to a turn's worth; false at its end.
    fn drain(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        let mut taken = 0;
        while taken < TURN {
            match self.socket.read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => {
                    taken += n;
                    self.feed(&chunk[..n]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            }
        }
        true
    }

    fn finish(mut self) {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.emit(&line);
        }
    }
}

/// The one thread that forwards every dext's log.
struct Hub {
    epoll: OwnedFd,
    streams: Mutex<HashMap<u64, Stream>>,
    next: std::sync::atomic::AtomicU64,
}

static HUB: OnceLock<Result<Hub, rustix::io::Errno>> = OnceLock::new();

fn hub() -> std::io::Result<&'static Hub> {
    // The thread starts once the hub is in the static, and is handed it:
    // a thread started inside the initialisation could look before the
    // static holds anything, and end, leaving every dext's log unread.
    let mut created = false;
    let hub = HUB
        .get_or_init(|| {
            created = true;
            let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
            Ok(Hub {
                epoll,
                streams: Mutex::new(HashMap::new()),
                next: std::sync::atomic::AtomicU64::new(1),
            })
        })
        .as_ref()
        .map_err(|e| std::io::Error::from(*e))?;
    if created {
        if let Err(e) = std::thread::Builder::new()
            .name("dext-logs".into())
            .spawn(move || hub.run())
        {
            tracing::error!("dext logs: cannot start the thread that forwards them: {e}");
        }
    }
    Ok(hub)
}

impl Hub {
    fn run(&self) {
        crate::epoll_loop::run(&self.epoll, "dext logs are", |token| {
            let mut streams = self.streams.locked();
            let Some(stream) = streams.get_mut(&token) else {
                return;
            };
            if !stream.drain() {
                if let Some(stream) = streams.remove(&token) {
                    let _ = epoll::delete(&self.epoll, stream.socket.as_fd());
                    stream.finish();
                }
            }
        });
    }
}

/// Forwards `socket` (a dext's stdout and stderr) into the log as `label`
/// until the dext closes it.
pub(crate) fn forward(socket: UnixStream, label: String) -> std::io::Result<()> {
    let hub = hub()?;
    socket.set_nonblocking(true)?;
    let token = hub.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let rate = f64::from(limits::LOG_LINES_PER_SECOND);
    let stream = Stream {
        socket,
        label,
        line: Vec::with_capacity(256),
        tokens: 2.0 * rate,
        refilled: Instant::now(),
        dropped: 0,
    };
    let mut streams = hub.streams.locked();
    epoll::add(
        &hub.epoll,
        stream.socket.as_fd(),
        epoll::EventData::new_u64(token),
        epoll::EventFlags::IN | epoll::EventFlags::RDHUP,
    )?;
    streams.insert(token, stream);
    Ok(())
}

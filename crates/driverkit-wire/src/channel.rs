//! A call channel in shared memory: the hot path of calls from a dext into
//! the system. One call is in flight at a time; a caller holds the channel
//! for the length of its call (the SDK pools channels).
//!
//! ```text
//!      0  closed flag (a cache line of its own)
//!     64  request slot: doorbell (counter, parked) | length | message...
//!  SLOT2  reply slot:   doorbell (counter, parked) | length | message...
//! ```
//!
//! Each slot keeps its counter, its length and the start of its message on
//! one cache line, so a small call moves one line each way, as close to the
//! two-counter spin floor as a call with a payload gets. Waiters watch only
//! the counter; closing rings both doorbells, so it is noticed anyway.
//!
//! A call that wakes either side from a park is a cold one, and the kernel
//! often runs the woken thread on its waker's CPU, where it can run only
//! once the waker stops: so after such a call both sides wait yielding the
//! CPU between looks instead of spinning (a call after an idle gap took
//! 35 µs; a raw futex round trip takes 3-5). A hot conversation never
//! parks, and spins as before.
//!
//! A message is the same bytes as on a socket (header and payload), so
//! both paths share one parser. The server copies a request out of the
//! region before parsing it: the peer could change it while it is read.
//! Either side may close the channel; waiters on both sides then return.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::shm::{Doorbell, SharedMemory, SPIN};
use crate::transport::MAX_MESSAGE;

const CLOSED: usize = 0;
/// A slot: doorbell at +0 (counter, parked), length at +8, message at +16.
const SLOT_LEN: usize = (16 + MAX_MESSAGE).next_multiple_of(64);
const REQUEST_BELL: usize = 64;
const REQUEST_LEN: usize = REQUEST_BELL + 8;
const REQUEST: usize = REQUEST_BELL + 16;
const REPLY_BELL: usize = REQUEST_BELL + SLOT_LEN;
const REPLY_LEN: usize = REPLY_BELL + 8;
const REPLY: usize = REPLY_BELL + 16;
/// The size of a channel's region.
pub const LEN: usize = REPLY_BELL + SLOT_LEN;

/// Why a call did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelError {
    /// The other side closed the channel (or went away).
    Closed,
    /// The message does not fit the channel.
    TooLarge,
    /// The peer published a length larger than the area.
    Corrupt,
    /// No reply before the deadline.
    Timeout,
}

/// One end of a call channel.
#[derive(Debug)]
pub struct ShmChannel {
    shm: SharedMemory,
}

impl ShmChannel {
    /// A new channel (the caller's end).
    pub fn create() -> std::io::Result<ShmChannel> {
        Ok(ShmChannel {
            shm: SharedMemory::create("driverkit-channel", LEN)?,
        })
    }

    /// The server's end of a channel received from a peer.
    pub fn open(shm: SharedMemory) -> std::io::Result<ShmChannel> {
        if shm.len() < LEN {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "call channel region too small",
            ));
        }
        Ok(ShmChannel { shm })
    }

    /// The region, to pass to the peer.
    pub fn memory(&self) -> &SharedMemory {
        &self.shm
    }

    fn bell(&self, at: usize) -> Doorbell<'_> {
        Doorbell::at(&self.shm, at)
    }

    /// True once either side closed the channel.
    pub fn is_closed(&self) -> bool {
        self.shm.u32_at(CLOSED).load(Ordering::Acquire) != 0
    }

    /// Closes the channel and wakes both sides.
    pub fn close(&self) {
        self.shm.u32_at(CLOSED).store(1, Ordering::Release);
        self.bell(REQUEST_BELL).ring();
        self.bell(REPLY_BELL).ring();
    }

    /// Caller: sends `request` and waits for the reply, copied into `reply`.
    pub fn call(
        &self,
        request: &[u8],
        reply: &mut Vec<u8>,
        deadline: Option<Instant>,
    ) -> Result<(), ChannelError> {
        if request.len() > MAX_MESSAGE {
            return Err(ChannelError::TooLarge);
        }
        if self.is_closed() {
            return Err(ChannelError::Closed);
        }
        let replies = self.shm.u32_at(REPLY_BELL);
        let before = replies.load(Ordering::Acquire);
        self.shm.write(REQUEST, request);
        self.shm
            .u32_at(REQUEST_LEN)
            .store(request.len() as u32, Ordering::Release);
        let woke = self.bell(REQUEST_BELL).ring();
        let replied = || replies.load(Ordering::Acquire) != before;
        // A server that was parked may be run on this CPU: yield to it.
        let (answered, _) = self
            .bell(REPLY_BELL)
            .wait_reporting(woke, SPIN, deadline, replied);
        if !answered {
            return Err(ChannelError::Timeout);
        }
        // Closing rings the bell too; it is never a reply.
        if self.is_closed() {
            return Err(ChannelError::Closed);
        }
        let len = self.shm.u32_at(REPLY_LEN).load(Ordering::Acquire) as usize;
        if len > MAX_MESSAGE {
            return Err(ChannelError::Corrupt);
        }
        reply.clear();
        reply.resize(len, 0);
        self.shm.read(REPLY, reply);
        Ok(())
    }

    /// Server: answers requests with `handle` until the channel closes.
    /// Between requests it spins for `spin`, then parks. A channel is served
    /// once, from its creation: counting starts at zero, so a request made
    /// before the server started is not missed.
    pub fn serve(
        &self,
        spin: Duration,
        mut handle: impl FnMut(&[u8], &mut Vec<u8>),
    ) -> ChannelError {
        let mut server = Server::default();
        // Whether the last call woke either side from a park: then the
        // caller may be on this CPU, and the next wait yields.
        let mut woken = false;
        loop {
            let bell = self.request_bell();
            let (_, parked) = bell.wait_reporting(woken, spin, None, || self.has_request(&server));
            match self.answer(&mut server, &mut handle) {
                Ok(woke) => woken = parked || woke,
                Err(e) => return e,
            }
        }
    }

    /// Server: the doorbell callers ring, for a server that waits on many
    /// channels at once ([`Doorbell::arm`]).
    pub fn request_bell(&self) -> Doorbell<'_> {
        self.bell(REQUEST_BELL)
    }

    /// Server: whether a request `server` has not answered is waiting, or
    /// the channel closed (closing rings the request bell too).
    pub fn has_request(&self, server: &Server) -> bool {
        self.shm.u32_at(REQUEST_BELL).load(Ordering::Acquire) != server.seen
    }

    /// Server: answers the waiting request with `handle` (call it once
    /// [`has_request`](ShmChannel::has_request) holds). Returns whether the
    /// reply woke a parked caller, or why the channel is finished.
    pub fn answer(
        &self,
        server: &mut Server,
        mut handle: impl FnMut(&[u8], &mut Vec<u8>),
    ) -> Result<bool, ChannelError> {
        if self.is_closed() {
            return Err(ChannelError::Closed);
        }
        server.seen = self.shm.u32_at(REQUEST_BELL).load(Ordering::Acquire);
        let len = self.shm.u32_at(REQUEST_LEN).load(Ordering::Acquire) as usize;
        if len > MAX_MESSAGE {
            self.close();
            return Err(ChannelError::Corrupt);
        }
        let Server { request, reply, .. } = server;
        request.clear();
        request.resize(len, 0);
        self.shm.read(REQUEST, request);
        reply.clear();
        handle(request, reply);
        let n = reply.len().min(MAX_MESSAGE);
        self.shm.write(REPLY, &reply[..n]);
        self.shm
            .u32_at(REPLY_LEN)
            .store(n as u32, Ordering::Release);
        Ok(self.bell(REPLY_BELL).ring())
    }
}

/// A server's side of one channel: the requests it answered (counting
/// starts at zero, so a request made before serving began is not missed)
/// and its buffers. The server copies a request out of the region before
/// parsing it: the peer could change it while it is read.
#[derive(Debug, Default)]
pub struct Server {
    seen: u32,
    request: Vec<u8>,
    reply: Vec<u8>,
}

impl Server {
    /// How many requests were answered: the request bell's futex word
    /// while no request waits.
    pub fn answered(&self) -> u32 {
        self.seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::sync::Arc;

    fn pair() -> (ShmChannel, Arc<ShmChannel>) {
        let client = ShmChannel::create().unwrap();
        let shared =
            SharedMemory::from_fd(client.memory().as_fd().try_clone_to_owned().unwrap(), LEN)
                .unwrap();
        (client, Arc::new(ShmChannel::open(shared).unwrap()))
    }

    #[test]
    fn calls_are_answered_in_turn_then_close_ends_both_sides() {
        let (client, server) = pair();
        let s = server.clone();
        let serving = std::thread::spawn(move || {
            s.serve(Duration::from_micros(10), |req, rep| {
                rep.extend_from_slice(b"re:");
                rep.extend_from_slice(req);
            })
        });
        let mut reply = Vec::new();
        for i in 0..1000u32 {
            client.call(&i.to_le_bytes(), &mut reply, None).unwrap();
            assert_eq!(reply[3..], i.to_le_bytes());
        }
        // Idle long enough for the server to park, then call again.
        std::thread::sleep(Duration::from_millis(20));
        client.call(b"late", &mut reply, None).unwrap();
        assert_eq!(reply, b"re:late");
        client.close();
        assert_eq!(serving.join().unwrap(), ChannelError::Closed);
        assert_eq!(
            client.call(b"x", &mut reply, None),
            Err(ChannelError::Closed)
        );
    }

    #[test]
    fn a_waiting_caller_returns_when_the_server_closes() {
        let (client, server) = pair();
        let s = server.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            s.close();
        });
        let mut reply = Vec::new();
        assert_eq!(
            client.call(b"never answered", &mut reply, None),
            Err(ChannelError::Closed)
        );
        let deadline = Some(Instant::now() + Duration::from_millis(10));
        let (client, _server) = pair();
        assert_eq!(
            client.call(b"slow", &mut reply, deadline),
            Err(ChannelError::Timeout)
        );
    }

    #[test]
    fn a_lying_length_closes_the_channel() {
        let (client, server) = pair();
        client
            .memory()
            .u32_at(REQUEST_LEN)
            .store(u32::MAX, Ordering::Release);
        Doorbell::at(client.memory(), REQUEST_BELL).ring();
        assert_eq!(
            server.serve(Duration::ZERO, |_, _| unreachable!("not handled")),
            ChannelError::Corrupt
        );
        assert!(client.is_closed());
    }
}

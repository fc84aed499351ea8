//! The loop of a thread that serves many descriptors through one epoll set
//! (every dext's log, every dext's main socket): one thread for all of
//! them instead of one each.

use std::os::fd::OwnedFd;

use rustix::event::epoll;

/// Waits on `epoll` forever, calling `ready` with the token of each
/// descriptor that is ready. Ends only if epoll itself fails, which is
/// logged as `what` (what stops being served).
pub(crate) fn run(epoll: &OwnedFd, what: &str, mut ready: impl FnMut(u64)) {
    let mut events = Vec::with_capacity(64);
    loop {
        events.clear();
        match epoll::wait(epoll, rustix::buffer::spare_capacity(&mut events), None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                tracing::error!("epoll failed ({e}): {what} no longer served");
                return;
            }
        }
        for event in &events {
            ready(event.data.u64());
        }
    }
}

//! The threads a family runs for one of its objects (a port's node, an
//! interface, a HID interface's poller): started together or not at all,
//! told to stop through one [`Stop`], and joined by their owner.
//!
//! Every family's pump had written this again: spawn with rollback, a stop
//! flag plus an eventfd to wake a thread out of `poll`, join on stop. One
//! copy keeps them alike (they had started to differ).

use driverkit_wire::sync::Locked;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rustix::event::{poll, PollFd, PollFlags, Timespec};

/// Tells an object's threads to stop: a flag they check, and an eventfd
/// that wakes any of them waiting in `poll` (it stays readable).
pub struct Stop {
    set: AtomicBool,
    wake: OwnedFd,
}

impl Stop {
    pub fn new() -> std::io::Result<Stop> {
        Ok(Stop {
            set: AtomicBool::new(false),
            wake: rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC)?,
        })
    }

    /// Whether the threads are to stop.
    pub fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    /// Tells them; true the first time only.
    pub fn set(&self) -> bool {
        let first = !self.set.swap(true, Ordering::AcqRel);
        if first {
            let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
        }
        first
    }

    /// What a thread adds to its `poll` set to be woken by [`Stop::set`].
    pub fn fd(&self) -> &OwnedFd {
        &self.wake
    }

    /// Sleeps `d`, or less when told to stop.
    pub fn sleep(&self, d: Duration) {
        if self.is_set() {
            return;
        }
        let mut fds = [PollFd::new(&self.wake, PollFlags::IN)];
        let ts = Timespec {
            tv_sec: d.as_secs() as i64,
            tv_nsec: d.subsec_nanos() as i64,
        };
        let _ = poll(&mut fds, Some(&ts));
    }
}

/// A thread's work on the object it serves.
pub type Body<S> = Box<dyn FnOnce(&S) + Send>;

/// Named threads serving one object, joined by [`Threads::join`].
pub struct Threads {
    handles: Mutex<Vec<JoinHandle<()>>>,
}

impl Threads {
    /// Starts one thread per body on `shared`. If one cannot start, none
    /// runs: `stop` tells those already started to stop, and they are
    /// joined before the error returns.
    pub fn start<S: Send + Sync + 'static>(
        shared: &Arc<S>,
        bodies: Vec<(String, Body<S>)>,
        stop: impl FnOnce(&S),
    ) -> std::io::Result<Threads> {
        let threads = Threads {
            handles: Mutex::new(Vec::new()),
        };
        for (label, body) in bodies {
            let s = shared.clone();
            match std::thread::Builder::new()
                .name(label.clone())
                .stack_size(256 * 1024)
                .spawn(move || body(&s))
            {
                Ok(t) => threads.handles.locked().push(t),
                Err(e) => {
                    stop(shared);
                    threads.join();
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!("cannot start {label}: {e}"),
                    ));
                }
            }
        }
        Ok(threads)
    }

    /// Waits for every thread to end (after they were told to stop).
    pub fn join(&self) {
        let handles = std::mem::take(&mut *self.handles.locked());
        for t in handles {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn threads_stop_when_told_and_are_joined() {
        let shared = Arc::new((Stop::new().unwrap(), AtomicUsize::new(0)));
        let body = || -> Body<(Stop, AtomicUsize)> {
            Box::new(|(stop, ran): &(Stop, AtomicUsize)| {
                while !stop.is_set() {
                    stop.sleep(Duration::from_secs(5));
                }
                ran.fetch_add(1, Ordering::SeqCst);
            })
        };
        let threads = Threads::start(
            &shared,
            vec![("t-a".into(), body()), ("t-b".into(), body())],
            |s| {
                s.0.set();
            },
        )
        .unwrap();
        assert!(shared.0.set(), "the first set says so");
        assert!(!shared.0.set(), "a second set does nothing");
        threads.join();
        assert_eq!(shared.1.load(Ordering::SeqCst), 2, "both bodies ended");
    }

    #[test]
    fn a_sleep_after_the_stop_returns_at_once_and_before_it_waits_it_out() {
        let stop = Stop::new().unwrap();
        stop.sleep(Duration::from_millis(1));
        assert!(!stop.is_set());
        stop.set();
        // An hour's sleep: the test ends only because a set stop skips it.
        stop.sleep(Duration::from_secs(3600));
        assert!(stop.is_set());
    }
}

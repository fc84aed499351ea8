//! The thread a family runs in a dext to turn the system's doorbell into
//! calls on the driver's queue (a serial port's, an Ethernet interface's,
//! a HID interface's reports).
//!
//! The three families had each written it: a cancel flag, a thread handle,
//! a wake-up and a join that must not be the watcher joining itself (a
//! driver may stop its port from a callback the watcher ran). One copy
//! keeps them alike.

use driverkit_wire::sync::Locked;
use driverkit_wire::{IOResult, IOReturn};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::thread::JoinHandle;

/// One watcher thread, and whether it is to end.
#[derive(Default)]
pub(crate) struct Watcher {
    cancelled: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Watcher {
    /// Whether the watcher is to end: its loop checks this.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// Starts the thread, named `name`, running `body`.
    pub fn start(&self, name: &str, body: impl FnOnce() + Send + 'static) -> IOResult<()> {
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(body)
            .map_err(|_| IOReturn::NO_RESOURCES)?;
        *self.thread.locked() = Some(thread);
        Ok(())
    }

    /// Starts the thread, as [`start`](Self::start), once `register` (the
    /// system's registration of what the thread is to watch) succeeded: a
    /// refused registration leaves no thread behind. The thread loses
    /// nothing by starting second when `body` looks at what it watches
    /// before it first waits.
    pub fn start_after(
        &self,
        register: impl FnOnce() -> IOResult<()>,
        name: &str,
        body: impl FnOnce() + Send + 'static,
    ) -> IOResult<()> {
        register()?;
        self.start(name, body)
    }

    /// Tells the thread to end, wakes it with `wake` (where it waits is
    /// the family's), and waits for it, unless this is that thread.
    pub fn cancel(&self, wake: impl FnOnce()) {
        self.cancelled.store(true, Ordering::Release);
        wake();
        let thread = self.thread.locked().take();
        if let Some(t) = thread.filter(|t| t.thread().id() != std::thread::current().id()) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Condvar};

    #[test]
    fn a_cancelled_watcher_is_woken_and_joined() {
        let w = Arc::new(Watcher::default());
        let bell = Arc::new((Mutex::new(()), Condvar::new()));
        let (w2, bell2) = (w.clone(), bell.clone());
        w.start("test-watcher", move || {
            let mut guard = bell2.0.locked();
            while !w2.is_cancelled() {
                guard = bell2.1.wait(guard).unwrap_or_else(|e| e.into_inner());
            }
        })
        .unwrap();
        w.cancel(|| {
            let _guard = bell.0.locked();
            bell.1.notify_all();
        });
        assert!(w.is_cancelled());
        assert!(w.thread.locked().is_none(), "joined");
    }

    #[test]
    fn a_watcher_cancelling_itself_does_not_wait_for_itself() {
        let w = Arc::new(Watcher::default());
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let w2 = w.clone();
        w.start("self-cancel", move || {
            // As a driver stopping its port from a callback the watcher
            // ran: the join is skipped, or this would never return.
            while w2.thread.locked().is_none() {
                std::thread::yield_now();
            }
            w2.cancel(|| {});
            let _ = done_tx.send(());
        })
        .unwrap();
        done_rx.recv().unwrap();
        assert!(w.is_cancelled());
    }

    #[test]
    fn a_refused_registration_starts_no_thread_and_an_accepted_one_does() {
        let w = Watcher::default();
        let refused = w.start_after(
            || Err(IOReturn::NOT_PERMITTED),
            "refused",
            || panic!("a refused registration's watcher ran"),
        );
        assert_eq!(refused, Err(IOReturn::NOT_PERMITTED));
        assert!(w.thread.locked().is_none(), "no thread after a refusal");
        let (tx, rx) = std::sync::mpsc::channel();
        w.start_after(|| Ok(()), "accepted", move || tx.send(()).unwrap())
            .unwrap();
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("the watcher runs once registered");
        w.cancel(|| ());
    }
}

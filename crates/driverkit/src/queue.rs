//! `IODispatchQueue`: a serial FIFO queue with its own thread.
//!
//! Every service has a queue named `Default`; every call the system makes
//! into a service runs there, so calls into one service never run in
//! parallel.

use driverkit_wire::sync::Locked;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::ThreadId;

use driverkit_wire::{IOResult, IOReturn};

type Job = Box<dyn FnOnce() + Send>;

/// A serial dispatch queue.
///
/// ```
/// use driverkit::IODispatchQueue;
/// let q = IODispatchQueue::create("Example").unwrap();
/// let answer = q.dispatch_sync(|| 6 * 7).unwrap();
/// assert_eq!(answer, 42);
/// ```
#[derive(Clone)]
pub struct IODispatchQueue {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    sender: Mutex<Option<mpsc::Sender<Job>>>,
    /// Set by `cancel`: work in place (`run_here_if_idle`) looks at this
    /// rather than taking the sender's lock on every call.
    cancelled: AtomicBool,
    thread: OnceLock<ThreadId>,
    /// Held by whoever runs the queue's work: its own thread for each job,
    /// or a thread running work in place (`run_here_if_idle`).
    running: Mutex<()>,
}

thread_local! {
    /// This thread's ID, without `thread::current()`'s reference count.
    static THIS_THREAD: ThreadId = std::thread::current().id();
    /// The queue whose work this thread is running in place, if any.
    static IN_PLACE: std::cell::Cell<*const Inner> = const { std::cell::Cell::new(std::ptr::null()) };
}

impl IODispatchQueue {
    /// Creates a queue and its thread.
    pub fn create(name: &str) -> IOResult<IODispatchQueue> {
        let (tx, rx) = mpsc::channel::<Job>();
        let inner = Arc::new(Inner {
            name: name.to_owned(),
            sender: Mutex::new(Some(tx)),
            cancelled: AtomicBool::new(false),
            thread: OnceLock::new(),
            running: Mutex::new(()),
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name(format!("queue:{name}"))
            // Driver code runs here; keep the stack modest so that idle dexts
            // stay small, but large enough for ordinary recursion.
            .stack_size(512 * 1024)
            .spawn(move || {
                // Until this runs, no code can be running on the queue, so
                // `on_queue` answering false meanwhile is correct.
                if let Some(inner) = weak.upgrade() {
                    let _ = inner.thread.set(std::thread::current().id());
                }
                while let Some(job) = next(&rx) {
                    let Some(inner) = weak.upgrade() else {
                        return job();
                    };
                    let _running = inner.running.locked();
                    job();
                }
            })
            .map_err(|_| IOReturn::NO_RESOURCES)?;
        Ok(IODispatchQueue { inner })
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// True when the calling thread is running this queue's work.
    pub fn on_queue(&self) -> bool {
        self.inner.thread.get() == Some(&THIS_THREAD.with(|id| *id))
            || IN_PLACE.with(|p| std::ptr::eq(p.get(), Arc::as_ptr(&self.inner)))
    }

    /// Runs `f` as the queue's work, but on the calling thread, when the
    /// queue is running nothing else; `Err(f)` when it is busy or
    /// cancelled. This is libdispatch's `dispatch_sync` onto an idle
    /// queue: it saves the hand-off to the queue's thread, which costs tens
    /// of microseconds when that thread is parked and a core when it spins.
    /// Like any work of the queue, `f` never runs alongside another job of
    /// it; unlike `dispatch_async`, it may run before jobs queued earlier
    /// that the queue's thread has not yet taken, so it is for work whose
    /// order against other sources does not matter (a source's own
    /// handler).
    pub(crate) fn run_here_if_idle<R, F: FnOnce() -> R>(&self, f: F) -> Result<R, F> {
        if self.on_queue() {
            return Err(f);
        }
        let Ok(_running) = self.inner.running.try_lock() else {
            return Err(f);
        };
        if self.inner.cancelled.load(Ordering::Acquire) {
            return Err(f);
        }
        let previous = IN_PLACE.with(|p| p.replace(Arc::as_ptr(&self.inner)));
        let result = f();
        IN_PLACE.with(|p| p.set(previous));
        Ok(result)
    }

    /// Runs `f` on the queue after everything queued before it.
    /// `kIOReturnOffline` once the queue is cancelled.
    pub fn dispatch_async(&self, f: impl FnOnce() + Send + 'static) -> IOResult<()> {
        let guard = self.inner.sender.locked();
        match guard.as_ref() {
            Some(tx) => tx.send(Box::new(f)).map_err(|_| IOReturn::OFFLINE),
            None => Err(IOReturn::OFFLINE),
        }
    }

    /// Runs `f` on the queue and waits for its result. Dispatching
    /// synchronously onto the queue you are running on would wait forever,
    /// so it fails at once with `kIOReturnBusy` instead.
    pub fn dispatch_sync<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> IOResult<R> {
        if self.on_queue() {
            return Err(IOReturn::BUSY);
        }
        let (tx, rx) = mpsc::sync_channel(1);
        self.dispatch_async(move || {
            let _ = tx.send(f());
        })?;
        rx.recv().map_err(|_| IOReturn::ABORTED)
    }

    /// Stops accepting work. Work already queued still runs, then
    /// `handler`, on the queue, last; then the thread exits.
    pub fn cancel(&self, handler: impl FnOnce() + Send + 'static) {
        self.inner.cancelled.store(true, Ordering::Release);
        let sender = self.inner.sender.locked().take();
        if let Some(tx) = sender {
            let _ = tx.send(Box::new(handler));
        }
    }
}

/// The next job: spinning for a moment first, as work often comes in
/// bursts (a report, then its completion) and a parked thread takes tens of
/// microseconds to wake on another core; then parked, costing nothing.
fn next(rx: &mpsc::Receiver<Job>) -> Option<Job> {
    let began = std::time::Instant::now();
    loop {
        match rx.try_recv() {
            Ok(job) => return Some(job),
            Err(mpsc::TryRecvError::Disconnected) => return None,
            // Yielding rather than spinning: on a machine with fewer cores
            // than busy threads, the thread about to send the job may be
            // waiting for this very core.
            Err(mpsc::TryRecvError::Empty) if began.elapsed() < driverkit_wire::shm::SPIN => {
                std::thread::yield_now()
            }
            Err(mpsc::TryRecvError::Empty) => return rx.recv().ok(),
        }
    }
}

impl std::fmt::Debug for IODispatchQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IODispatchQueue")
            .field("name", &self.inner.name)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_runs_in_fifo_order() {
        let q = IODispatchQueue::create("fifo").unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        for i in 0..100 {
            let seen = seen.clone();
            q.dispatch_async(move || seen.lock().unwrap().push(i))
                .unwrap();
        }
        q.dispatch_sync(|| ()).unwrap();
        assert_eq!(*seen.lock().unwrap(), (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn sync_dispatch_onto_own_queue_is_an_error_not_a_hang() {
        let q = IODispatchQueue::create("self").unwrap();
        let q2 = q.clone();
        let inner = q
            .dispatch_sync(move || (q2.on_queue(), q2.dispatch_sync(|| ())))
            .unwrap();
        assert_eq!(inner, (true, Err(IOReturn::BUSY)));
        assert!(!q.on_queue());
    }

    #[test]
    fn cancel_runs_its_handler_after_queued_work_then_refuses_more() {
        let q = IODispatchQueue::create("gone").unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        q.dispatch_async(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            s.lock().unwrap().push("work");
        })
        .unwrap();
        let (tx, rx) = mpsc::channel();
        let s = seen.clone();
        q.cancel(move || {
            s.lock().unwrap().push("cancel handler");
            tx.send(()).unwrap();
        });
        assert_eq!(q.dispatch_async(|| ()), Err(IOReturn::OFFLINE));
        rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        assert_eq!(*seen.lock().unwrap(), ["work", "cancel handler"]);
    }

    #[test]
    fn work_runs_in_place_only_on_an_idle_open_queue() {
        let q = IODispatchQueue::create("in-place").unwrap();
        let here = std::thread::current().id();
        let q2 = q.clone();
        let ran = q.run_here_if_idle(|| {
            assert_eq!(std::thread::current().id(), here);
            assert!(q2.on_queue(), "work in place is the queue's work");
            assert_eq!(q2.dispatch_sync(|| ()), Err(IOReturn::BUSY));
        });
        assert!(ran.is_ok(), "an idle queue runs the work in place");
        assert!(!q.on_queue(), "only while the work runs");

        // Busy: a job of the queue is running.
        let (started, release) = (mpsc::channel(), mpsc::channel::<()>());
        q.dispatch_async(move || {
            started.0.send(()).unwrap();
            let _ = release.1.recv();
        })
        .unwrap();
        started.1.recv().unwrap();
        assert!(q.run_here_if_idle(|| ()).is_err(), "never beside a job");
        release.0.send(()).unwrap();
        q.dispatch_sync(|| ()).unwrap();

        q.cancel(|| ());
        assert!(
            q.run_here_if_idle(|| ()).is_err(),
            "a cancelled queue runs nothing"
        );
    }
}

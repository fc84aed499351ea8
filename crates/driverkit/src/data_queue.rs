//! `IODataQueueDispatchSource`: a ring of entries in shared memory with
//! callbacks when data arrives (`DataAvailable`) and when the consumer has
//! made room (`DataServiced`).
//!
//! The ring lives in a sealed memfd, so its two ends can be in two
//! processes ([`IODataQueueDispatchSource::memory`] on one side,
//! [`IODataQueueDispatchSource::from_memory`] on the other). A watcher
//! thread per callback waits on the ring's doorbell (spinning briefly, then
//! parked on a futex, so an idle queue costs no CPU) and runs the callback's
//! method on its queue, one run at a time.

use driverkit_wire::sync::Locked;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use driverkit_wire::ring::Ring;
use driverkit_wire::shm::{SharedMemory, SPIN};
use driverkit_wire::{IOResult, IOReturn};

use crate::action::{ActionArgs, OSAction};
use crate::queue::IODispatchQueue;

/// How often a parked watcher looks at its flags even without a doorbell.
const RECHECK: Duration = Duration::from_millis(250);

struct Source {
    ring: Ring,
    queue: IODispatchQueue,
    enabled: AtomicBool,
    /// Where a paused source's watchers sleep until `set_enable(true)`.
    resumed: (Mutex<()>, std::sync::Condvar),
    cancelled: AtomicBool,
    watchers: Mutex<Vec<JoinHandle<()>>>,
}

/// A data queue dispatch source.
///
/// ```
/// use driverkit::{IODataQueueDispatchSource, IODispatchQueue};
/// let q = IODispatchQueue::create("Example").unwrap();
/// let dq = IODataQueueDispatchSource::create(1024, &q).unwrap();
/// dq.enqueue(5, |slot| slot.copy_from_slice(b"hello")).unwrap();
/// let mut out = Vec::new();
/// dq.dequeue(&mut out).unwrap();
/// assert_eq!(out, b"hello");
/// ```
#[derive(Clone)]
pub struct IODataQueueDispatchSource {
    inner: Arc<Source>,
}

impl IODataQueueDispatchSource {
    /// A new queue of `byte_count` bytes whose callbacks run on `queue`'s
    /// side (each callback on its own action's queue).
    pub fn create(byte_count: usize, queue: &IODispatchQueue) -> IOResult<Self> {
        let ring = Ring::create("IODataQueueDispatchSource", byte_count)
            .map_err(|_| IOReturn::NO_MEMORY)?;
        Ok(Self::with_ring(ring, queue))
    }

    /// The other end of a queue whose memory came from another process.
    pub fn from_memory(fd: OwnedFd, queue: &IODispatchQueue) -> IOResult<Self> {
        let shm = SharedMemory::from_fd(fd, 0).map_err(|_| IOReturn::BAD_ARGUMENT)?;
        let ring = Ring::open(shm).map_err(|_| IOReturn::BAD_ARGUMENT)?;
        Ok(Self::with_ring(ring, queue))
    }

    fn with_ring(ring: Ring, queue: &IODispatchQueue) -> Self {
        IODataQueueDispatchSource {
            inner: Arc::new(Source {
                ring,
                queue: queue.clone(),
                enabled: AtomicBool::new(true),
                resumed: Default::default(),
                cancelled: AtomicBool::new(false),
                watchers: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The shared memory, to hand to the other process.
    pub fn memory(&self) -> &SharedMemory {
        self.inner.ring.memory()
    }

    /// Calls `action` (type `IODataQueueDispatchSource::DataAvailable`)
    /// whenever entries are waiting.
    pub fn set_data_available_handler(&self, action: &OSAction) -> IOResult<()> {
        action.expect_type("IODataQueueDispatchSource::DataAvailable")?;
        let source = self.inner.clone();
        let action = action.clone();
        self.watch("DataAvailable", move || {
            if !source.enabled.load(Ordering::Acquire) {
                // Paused with entries waiting: sleep, not spin.
                source.sleep_while_paused();
                return true;
            }
            let deadline = Some(Instant::now() + RECHECK);
            if source.ring.wait_for_data(SPIN, deadline) && source.enabled.load(Ordering::Acquire) {
                let again = source.clone();
                run_and_wait(&action, &source, move || {
                    // A producer streaming entries refills the ring within
                    // microseconds: wait that long (spinning, never parked)
                    // before handing the queue back.
                    again.enabled.load(Ordering::Acquire)
                        && (again.ring.is_data_available()
                            || again
                                .ring
                                .wait_for_data(STREAM_GAP, Some(Instant::now() + STREAM_GAP)))
                })
            } else {
                true
            }
        })
    }

    /// Calls `action` (type `IODataQueueDispatchSource::DataServiced`)
    /// after the consumer dequeues.
    pub fn set_data_serviced_handler(&self, action: &OSAction) -> IOResult<()> {
        action.expect_type("IODataQueueDispatchSource::DataServiced")?;
        let source = self.inner.clone();
        let action = action.clone();
        let mut head = source.ring.head();
        self.watch("DataServiced", move || {
            let deadline = Some(Instant::now() + RECHECK);
            if !source.ring.wait_for_dequeue(head, SPIN, deadline) {
                return true;
            }
            // Seen, whether or not it runs: a paused source must not see
            // the same dequeue again and again (a spinning watcher).
            head = source.ring.head();
            if source.enabled.load(Ordering::Acquire) {
                run_and_wait(&action, &source, || false)
            } else {
                true
            }
        })
    }

    /// Runs `step` on a watcher thread until it returns false or the source
    /// is cancelled.
    fn watch(&self, what: &str, mut step: impl FnMut() -> bool + Send + 'static) -> IOResult<()> {
        let source = self.inner.clone();
        let handle = std::thread::Builder::new()
            .name(format!("dq:{what}"))
            .stack_size(64 * 1024)
            .spawn(move || {
                while !source.cancelled.load(Ordering::Acquire) {
                    if !step() {
                        break;
                    }
                }
            })
            .map_err(|_| IOReturn::NO_RESOURCES)?;
        self.inner.watchers.locked().push(handle);
        Ok(())
    }

    /// Appends an entry of `size` bytes written by `fill`;
    /// `kIOReturnOverrun` when it does not fit.
    pub fn enqueue(&self, size: usize, fill: impl FnOnce(&mut [u8])) -> IOResult<()> {
        self.inner.ring.enqueue(size, fill)
    }

    /// Removes the oldest entry into `out`; `kIOReturnUnderrun` when empty.
    pub fn dequeue(&self, out: &mut Vec<u8>) -> IOResult<()> {
        self.inner.ring.dequeue(out)
    }

    /// Copies the oldest entry into `out` without removing it.
    pub fn peek(&self, out: &mut Vec<u8>) -> IOResult<()> {
        self.inner.ring.peek(out)
    }

    /// True when an entry is waiting.
    pub fn is_data_available(&self) -> bool {
        self.inner.ring.is_data_available()
    }

    /// True when an entry of `size` bytes fits now.
    pub fn can_enqueue_data(&self, size: usize) -> bool {
        self.inner.ring.can_enqueue(size)
    }

    /// Pauses or resumes the callbacks (entries still queue up).
    pub fn set_enable(&self, enable: bool) {
        self.inner.enabled.store(enable, Ordering::Release);
        self.inner.wake_watchers();
    }

    /// Stops the callbacks and waits for the watchers to end; `handler`
    /// then runs on the source's queue. After it, no callback runs again.
    pub fn cancel(&self, handler: impl FnOnce() + Send + 'static) -> IOResult<()> {
        self.inner.cancelled.store(true, Ordering::Release);
        self.inner.wake_watchers();
        let watchers: Vec<_> = self.inner.watchers.locked().drain(..).collect();
        let me = std::thread::current().id();
        for w in watchers {
            if w.thread().id() != me {
                let _ = w.join();
            }
        }
        self.inner.queue.dispatch_async(handler)
    }
}

impl Source {
    /// Wakes the watchers, wherever they wait (paused, or on the ring).
    fn wake_watchers(&self) {
        {
            let _held = self.resumed.0.locked();
            self.resumed.1.notify_all();
        }
        self.ring.wake_all();
    }

    /// Sleeps until the source is resumed or cancelled (or `RECHECK`).
    fn sleep_while_paused(&self) {
        let held = self.resumed.0.locked();
        if self.enabled.load(Ordering::Acquire) || self.cancelled.load(Ordering::Acquire) {
            return;
        }
        let _ = self.resumed.1.wait_timeout(held, RECHECK);
    }
}

/// How long a streaming consumer waits for the next entry before it gives
/// its queue back.
const STREAM_GAP: Duration = Duration::from_micros(20);

/// How long one queue turn may keep re-running a callback while `again`
/// holds, before other work on that queue gets its turn.
const BATCH_BUDGET: Duration = Duration::from_millis(1);

/// Runs `action` on its queue (again while `again()` holds, within
/// `BATCH_BUDGET`) and waits until it is done (or until the source is
/// cancelled), so that one callback never overlaps the next.
fn run_and_wait(
    action: &OSAction,
    source: &Source,
    again: impl Fn() -> bool + Send + 'static,
) -> bool {
    let (done_tx, done_rx) = mpsc::sync_channel(1);
    if action
        .invoke_while(ActionArgs::None, BATCH_BUDGET, again, move || {
            let _ = done_tx.send(());
        })
        .is_err()
    {
        return false;
    }
    loop {
        match done_rx.recv_timeout(RECHECK) {
            Ok(()) => return true,
            Err(mpsc::RecvTimeoutError::Timeout) if !source.cancelled.load(Ordering::Acquire) => {
                continue
            }
            Err(_) => return false,
        }
    }
}

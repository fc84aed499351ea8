//! `IOInterruptDispatchSource`: a provider's interrupts, delivered as
//! `InterruptOccurred(action, count, time)` on the action's queue.
//!
//! The dext hands the system a small shared-memory region (a counter and a
//! doorbell) through its provider; the system raises interrupts into it. A
//! watcher thread sleeps on the doorbell and runs the callback with the
//! number of interrupts since the last run, so none is lost when several
//! arrive while the callback runs.

use driverkit_wire::sync::Locked;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use driverkit_wire::interfaces::{io_service_interface, IOServiceInterface};
use driverkit_wire::interrupt;
use driverkit_wire::shm::{SharedMemory, SPIN};
use driverkit_wire::{IOResult, IOReturn, ObjectId};

use crate::action::{ActionArgs, OSAction};
use crate::queue::IODispatchQueue;
use crate::runtime::{register_memory, SystemCaller};
use crate::service::IOService;
use crate::time::now_ns;

const RECHECK: Duration = Duration::from_millis(250);

struct Source {
    shm: SharedMemory,
    queue: IODispatchQueue,
    enabled: AtomicBool,
    cancelled: AtomicBool,
    watcher: Mutex<Option<JoinHandle<()>>>,
}

/// An interrupt source.
#[derive(Clone)]
pub struct IOInterruptDispatchSource {
    inner: Arc<Source>,
}

impl IOInterruptDispatchSource {
    /// Interrupt `index` of `provider`; the cancel handler runs on `queue`.
    /// `kIOReturnNotFound` when the provider has no such interrupt.
    pub fn create(provider: &IOService, index: u32, queue: &IODispatchQueue) -> IOResult<Self> {
        let shm = SharedMemory::create("IOInterruptDispatchSource", interrupt::LEN)
            .map_err(|_| IOReturn::NO_MEMORY)?;
        let memory = register_memory(&shm)?;
        let proxy = io_service_interface::Proxy {
            caller: &SystemCaller,
            object: ObjectId(provider.registry_entry_id()),
            flags: 0,
        };
        proxy.register_interrupt(index, memory)?;
        Ok(IOInterruptDispatchSource {
            inner: Arc::new(Source {
                shm,
                queue: queue.clone(),
                enabled: AtomicBool::new(true),
                cancelled: AtomicBool::new(false),
                watcher: Mutex::new(None),
            }),
        })
    }

    /// Interrupts `0..actions.len()` of `provider`, each with its action,
    /// on `queue`: the set-up of a driver whose device raises several.
    pub fn create_all(
        provider: &IOService,
        queue: &IODispatchQueue,
        actions: &[OSAction],
    ) -> IOResult<Vec<Self>> {
        let mut sources = Vec::with_capacity(actions.len());
        for (index, action) in actions.iter().enumerate() {
            let source = Self::create(provider, index as u32, queue)?;
            source.set_handler(action)?;
            sources.push(source);
        }
        Ok(sources)
    }

    /// Cancels `sources` from a method running on their own queue (a
    /// driver's Stop): each watcher is joined, so no interrupt runs after
    /// this; their cancel handlers, which would run on this very queue
    /// once the method returns, are not waited for.
    pub fn cancel_all(sources: Vec<Self>) -> IOResult<()> {
        for s in sources {
            s.cancel(|| ())?;
        }
        Ok(())
    }

    /// The callback (type `IOInterruptDispatchSource::InterruptOccurred`).
    pub fn set_handler(&self, action: &OSAction) -> IOResult<()> {
        action.expect_type("IOInterruptDispatchSource::InterruptOccurred")?;
        let source = self.inner.clone();
        let action = action.clone();
        let mut seen = interrupt::count(&source.shm);
        // Spinning for the next interrupt pays only after one the driver
        // handled: a level-triggered line the driver keeps letting go
        // before its interrupt is taken (a UART read right after it
        // transmitted) would keep a core spinning for nothing, a core the
        // driver's own work waits for on a small machine.
        let mut spin = SPIN;
        let handle = std::thread::Builder::new()
            .name("interrupt".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                while !source.cancelled.load(Ordering::Acquire) {
                    let deadline = Some(Instant::now() + RECHECK);
                    let shm = &source.shm;
                    if !interrupt::doorbell(shm)
                        .wait(spin, deadline, || interrupt::count(shm) != seen)
                    {
                        continue;
                    }
                    if source.cancelled.load(Ordering::Acquire)
                        || !source.enabled.load(Ordering::Acquire)
                    {
                        continue;
                    }
                    let now = interrupt::count(shm);
                    let count = now.wrapping_sub(seen);
                    seen = now;
                    if interrupt::let_go(shm) {
                        // A level-triggered line already let go: nothing
                        // to handle (the driver got there first).
                        spin = Duration::ZERO;
                        continue;
                    }
                    let (done_tx, done_rx) = mpsc::sync_channel(1);
                    let args = ActionArgs::Interrupt {
                        count,
                        time: now_ns(),
                    };
                    // Looked at again when the handler's turn comes: the
                    // driver, busy on the queue meanwhile, may have let the
                    // line go (read the bytes it stood for).
                    let line = source.clone();
                    let still_asserted = move || !interrupt::let_go(&line.shm);
                    if action
                        .invoke_in_place(args, still_asserted, move |ran| {
                            let _ = done_tx.send(ran);
                        })
                        .is_err()
                    {
                        break;
                    }
                    loop {
                        match done_rx.recv_timeout(RECHECK) {
                            Ok(ran) => {
                                spin = if ran { SPIN } else { Duration::ZERO };
                                break;
                            }
                            Err(_) if source.cancelled.load(Ordering::Acquire) => return,
                            Err(_) => {}
                        }
                    }
                }
            })
            .map_err(|_| IOReturn::NO_RESOURCES)?;
        *self.inner.watcher.locked() = Some(handle);
        Ok(())
    }

    /// Pauses or resumes the callback; interrupts meanwhile are counted and
    /// reported on resume.
    pub fn set_enable(&self, enable: bool) {
        self.inner.enabled.store(enable, Ordering::Release);
        interrupt::doorbell(&self.inner.shm).ring();
    }

    /// Stops the callback and waits for the watcher; `handler` then runs on
    /// the source's queue.
    pub fn cancel(&self, handler: impl FnOnce() + Send + 'static) -> IOResult<()> {
        self.inner.cancelled.store(true, Ordering::Release);
        interrupt::doorbell(&self.inner.shm).ring();
        let watcher = self.inner.watcher.locked().take();
        if let Some(w) = watcher.filter(|w| w.thread().id() != std::thread::current().id()) {
            let _ = w.join();
        }
        self.inner.queue.dispatch_async(handler)
    }
}

//! `OSAction`: a method of a service, bound as a callback, with zeroed
//! reference storage.
//!
//! A driver declares a callback method with `#[action(Class::Method)]` in a
//! `#[driverkit::actions]` block; the method must have exactly the signature
//! of the callback it stands for (a compile error otherwise), and the macro
//! generates `create_action_<method>(reference_size)`. Invoking an action
//! runs its method on the method's queue (`Default`, or the one named with
//! `queue = "…"`, DriverKit's QUEUENAME), after everything queued before.

use driverkit_wire::sync::Locked;
use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use driverkit_wire::{IOResult, IOReturn};

use crate::queue::IODispatchQueue;
use crate::runtime::Service;

/// What a callback is called with, besides its action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionArgs {
    /// `DataAvailable`, `DataServiced`: no arguments.
    None,
    /// `TimerOccurred(time)`: the time it ran, in monotonic nanoseconds.
    Time(u64),
    /// `InterruptOccurred(count, time)`.
    Interrupt {
        /// Interrupts since the last delivery.
        count: u64,
        /// When the last one came, in monotonic nanoseconds.
        time: u64,
    },
    /// An asynchronous request completed: its status and byte count.
    Completion {
        /// How the request ended.
        status: IOReturn,
        /// The bytes it moved.
        actual: u64,
    },
}

/// A callback type: the signature a method must have to be an action of
/// this type. Implemented by the marker types in [`types`].
pub trait ActionType<S>: 'static {
    /// `Class::Method`, checked by the sources that take the action.
    const NAME: &'static str;
    /// The method's exact type.
    type Method: Copy + Send + Sync + 'static;
    /// Calls `method` with `args` (ignored when they are not of this type).
    fn invoke(method: Self::Method, service: &S, action: &OSAction, args: ActionArgs);
}

/// The callback types, named like DriverKit's: `types::IODataQueueDispatchSource::DataAvailable`.
#[allow(non_snake_case)]
pub mod types {
    /// Callbacks of `IODataQueueDispatchSource`.
    pub mod IODataQueueDispatchSource {
        /// `DataAvailable(action)`: entries are waiting.
        pub struct DataAvailable;
        /// `DataServiced(action)`: the consumer made room.
        pub struct DataServiced;
    }
    /// Callbacks of `IOTimerDispatchSource`.
    pub mod IOTimerDispatchSource {
        /// `TimerOccurred(action, time)`.
        pub struct TimerOccurred;
    }
    /// Callbacks of `IOInterruptDispatchSource`.
    pub mod IOInterruptDispatchSource {
        /// `InterruptOccurred(action, count, time)`.
        pub struct InterruptOccurred;
    }
    /// Callbacks of `IOService`'s asynchronous requests.
    pub mod IOService {
        /// `CompleteAsync(action, status, actualBytes)`.
        pub struct CompleteAsync;
    }
}

macro_rules! no_args {
    ($($t:path => $name:literal),*) => {$(
        impl<S: 'static> ActionType<S> for $t {
            const NAME: &'static str = $name;
            type Method = fn(&S, &OSAction);
            fn invoke(method: Self::Method, service: &S, action: &OSAction, _: ActionArgs) {
                method(service, action)
            }
        }
    )*};
}
no_args!(
    types::IODataQueueDispatchSource::DataAvailable => "IODataQueueDispatchSource::DataAvailable",
    types::IODataQueueDispatchSource::DataServiced => "IODataQueueDispatchSource::DataServiced"
);

impl<S: 'static> ActionType<S> for types::IOTimerDispatchSource::TimerOccurred {
    const NAME: &'static str = "IOTimerDispatchSource::TimerOccurred";
    type Method = fn(&S, &OSAction, u64);
    fn invoke(method: Self::Method, service: &S, action: &OSAction, args: ActionArgs) {
        if let ActionArgs::Time(t) = args {
            method(service, action, t)
        }
    }
}

impl<S: 'static> ActionType<S> for types::IOInterruptDispatchSource::InterruptOccurred {
    const NAME: &'static str = "IOInterruptDispatchSource::InterruptOccurred";
    type Method = fn(&S, &OSAction, u64, u64);
    fn invoke(method: Self::Method, service: &S, action: &OSAction, args: ActionArgs) {
        if let ActionArgs::Interrupt { count, time } = args {
            method(service, action, count, time)
        }
    }
}

impl<S: 'static> ActionType<S> for types::IOService::CompleteAsync {
    const NAME: &'static str = "IOService::CompleteAsync";
    type Method = fn(&S, &OSAction, IOReturn, u64);
    fn invoke(method: Self::Method, service: &S, action: &OSAction, args: ActionArgs) {
        if let ActionArgs::Completion { status, actual } = args {
            method(service, action, status, actual)
        }
    }
}

type Invoke = Box<dyn Fn(&OSAction, ActionArgs) + Send + Sync>;

struct Inner {
    type_name: &'static str,
    queue: IODispatchQueue,
    invoke: Invoke,
    reference: Mutex<Box<[u8]>>,
    cancelled: AtomicBool,
    /// The service whose method this is.
    owner: driverkit_wire::ObjectId,
    aborted: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

/// A callback: a service's method, its queue, and reference storage.
#[derive(Clone)]
pub struct OSAction {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for OSAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OSAction")
            .field("type", &self.inner.type_name)
            .finish()
    }
}

impl OSAction {
    /// An action whose method is `invoke`, on `queue`: the tests' stand-in
    /// for a service's method.
    #[cfg(test)]
    fn bound(queue: &IODispatchQueue, invoke: Invoke) -> OSAction {
        OSAction::from_parts(
            "Test::Method",
            queue.clone(),
            invoke,
            0,
            driverkit_wire::ObjectId(0),
        )
    }

    /// An action of `type_name` whose method `invoke` runs on `queue`,
    /// with `reference_size` zeroed bytes of reference storage.
    fn from_parts(
        type_name: &'static str,
        queue: IODispatchQueue,
        invoke: Invoke,
        reference_size: usize,
        owner: driverkit_wire::ObjectId,
    ) -> OSAction {
        OSAction {
            inner: Arc::new(Inner {
                type_name,
                queue,
                invoke,
                reference: Mutex::new(vec![0; reference_size].into_boxed_slice()),
                cancelled: AtomicBool::new(false),
                owner,
                aborted: Mutex::new(None),
            }),
        }
    }

    /// Binds `method` of `service` as an action of type `T`. Used by the
    /// generated `create_action_<method>`.
    #[doc(hidden)]
    pub fn create<T: ActionType<S>, S: Service>(
        service: &S,
        method: T::Method,
        queue_name: &str,
        reference_size: usize,
    ) -> IOResult<OSAction> {
        let queue = service.copy_dispatch_queue(queue_name)?;
        // The action keeps the service only weakly: a forgotten action does
        // not keep a freed service alive, it just stops calling it.
        let target = service.base().weak_self().ok_or(IOReturn::NOT_READY)?;
        let invoke: Invoke = Box::new(move |action, args| {
            let target: Option<Arc<dyn Any + Send + Sync>> = target.upgrade();
            if let Some(service) = target.as_ref().and_then(|t| t.downcast_ref::<S>()) {
                T::invoke(method, service, action, args);
            }
        });
        Ok(OSAction::from_parts(
            T::NAME,
            queue,
            invoke,
            reference_size,
            driverkit_wire::ObjectId(service.registry_entry_id()),
        ))
    }

    /// `Class::Method` of the callback this action stands for.
    pub fn type_name(&self) -> &'static str {
        self.inner.type_name
    }

    /// The reference storage: zeroed at creation, `reference_size` bytes,
    /// private to this process.
    pub fn reference(&self) -> MutexGuard<'_, Box<[u8]>> {
        self.inner.reference.locked()
    }

    /// The queue the method runs on.
    pub fn queue(&self) -> &IODispatchQueue {
        &self.inner.queue
    }

    /// Runs the method on its queue with `args`; nothing once cancelled.
    /// `done` runs on the queue right after the method (or instead of it,
    /// when cancelled meanwhile).
    pub(crate) fn invoke(
        &self,
        args: ActionArgs,
        done: impl FnOnce() + Send + 'static,
    ) -> IOResult<()> {
        let me = self.clone();
        self.inner.queue.dispatch_async(move || {
            if !me.is_cancelled() {
                (me.inner.invoke)(&me, args);
            }
            done();
        })
    }

    /// Like `invoke`, but on the calling thread when the action's queue is
    /// idle (`IODispatchQueue::run_here_if_idle`): a source's own handler
    /// then costs no hand-off between threads. The method runs only if
    /// `wanted()` still holds when its turn comes: a level-triggered
    /// interrupt whose line the driver let go meanwhile (it read the bytes
    /// the line stood for, busy on that very queue) is no interrupt any
    /// more, as a CPU never takes an INTx line deasserted before it was
    /// acknowledged. `done(ran)` follows, with whether the method ran.
    pub(crate) fn invoke_in_place(
        &self,
        args: ActionArgs,
        wanted: impl Fn() -> bool + Send + 'static,
        done: impl FnOnce(bool) + Send + 'static,
    ) -> IOResult<()> {
        let me = self.clone();
        let job = move || {
            let ran = !me.is_cancelled() && wanted();
            if ran {
                (me.inner.invoke)(&me, args);
            }
            done(ran);
        };
        match self.inner.queue.run_here_if_idle(job) {
            Ok(()) => Ok(()),
            Err(job) => self.inner.queue.dispatch_async(job),
        }
    }

    /// Like `invoke`, but while `again()` holds the method runs again right
    /// away on the same queue turn (for at most `budget`), sparing a hand-off
    /// between threads per batch while data keeps streaming in.
    pub(crate) fn invoke_while(
        &self,
        args: ActionArgs,
        budget: std::time::Duration,
        again: impl Fn() -> bool + Send + 'static,
        done: impl FnOnce() + Send + 'static,
    ) -> IOResult<()> {
        let me = self.clone();
        self.inner.queue.dispatch_async(move || {
            let until = std::time::Instant::now() + budget;
            let mut runs = 0u32;
            while !me.is_cancelled() {
                (me.inner.invoke)(&me, args);
                runs = runs.wrapping_add(1);
                // The clock is read every 64 runs: at small entries a run
                // costs less than a clock read here.
                if !again() || (runs.is_multiple_of(64) && std::time::Instant::now() >= until) {
                    break;
                }
            }
            done();
        })
    }

    /// True once cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::Acquire)
    }

    /// Stops further calls; `handler` runs on the action's queue after any
    /// call already queued, so that once it runs the method never will.
    pub fn cancel(&self, handler: impl FnOnce() + Send + 'static) -> IOResult<()> {
        self.inner.cancelled.store(true, Ordering::Release);
        self.inner.queue.dispatch_async(handler)
    }

    /// Runs `handler` (on the action's queue) if the system drops the action
    /// without ever calling it: a request whose completion can no longer
    /// reach its service (DriverKit's `SetAbortedHandler`).
    pub fn set_aborted_handler(&self, handler: impl FnOnce() + Send + 'static) {
        *self.inner.aborted.locked() = Some(Box::new(handler));
    }

    /// The service whose method this action calls.
    pub(crate) fn owner(&self) -> driverkit_wire::ObjectId {
        self.inner.owner
    }

    /// The action was dropped unused: its aborted handler runs, once.
    pub(crate) fn abort(&self) {
        let handler = self.inner.aborted.locked().take();
        if let Some(h) = handler {
            let _ = self.inner.queue.dispatch_async(h);
        }
    }

    /// Fails with `kIOReturnBadArgument` unless this action is of type `name`.
    pub(crate) fn expect_type(&self, name: &str) -> IOResult<()> {
        if self.inner.type_name == name {
            Ok(())
        } else {
            Err(IOReturn::BAD_ARGUMENT)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::mpsc;

    /// Invokes an interrupt's action in place while the queue runs a job
    /// that blocks until told; the line is let go meanwhile when
    /// `let_go`. Returns what `done` said and how often the method ran.
    fn interrupt_while_busy(let_go: bool) -> (bool, usize) {
        let queue = IODispatchQueue::create("busy").unwrap();
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = runs.clone();
        let action = OSAction::bound(
            &queue,
            Box::new(move |_, _| {
                counted.fetch_add(1, Ordering::SeqCst);
            }),
        );
        let (started_tx, started) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        queue
            .dispatch_async(move || {
                started_tx.send(()).unwrap();
                released.recv().unwrap();
            })
            .unwrap();
        started.recv().unwrap();
        let asserted = Arc::new(AtomicBool::new(true));
        let line = asserted.clone();
        let (done_tx, done) = mpsc::channel();
        let args = ActionArgs::Interrupt { count: 1, time: 0 };
        action
            .invoke_in_place(
                args,
                move || line.load(Ordering::SeqCst),
                move |ran| done_tx.send(ran).unwrap(),
            )
            .unwrap();
        if let_go {
            // The driver, busy on the queue, read what the line stood for.
            asserted.store(false, Ordering::SeqCst);
        }
        release.send(()).unwrap();
        let ran = done
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap();
        (ran, runs.load(Ordering::SeqCst))
    }

    #[test]
    fn a_line_let_go_while_the_queue_was_busy_runs_no_handler() {
        assert_eq!(interrupt_while_busy(true), (false, 0));
    }

    #[test]
    fn a_line_still_asserted_runs_its_handler_once_the_queue_is_free() {
        assert_eq!(interrupt_while_busy(false), (true, 1));
    }
}

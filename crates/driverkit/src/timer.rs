//! `IOTimerDispatchSource`: calls `TimerOccurred(action, time)` on the
//! action's queue at a deadline.

use driverkit_wire::sync::{Locked, Waited};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use driverkit_wire::{IOResult, IOReturn};

use crate::action::{ActionArgs, OSAction};
use crate::queue::IODispatchQueue;
use crate::time::now_ns;

/// Below this, the timer thread spins instead of sleeping: a sleep wakes
/// tens of microseconds late here, a spin on time.
const SPIN_BELOW_NS: u64 = 100_000;

#[derive(Default)]
struct State {
    action: Option<OSAction>,
    /// Deadline and leeway, in monotonic nanoseconds.
    armed: Option<(u64, u64)>,
    cancelled: bool,
    enabled: bool,
}

struct Timer {
    queue: IODispatchQueue,
    state: Mutex<State>,
    changed: Condvar,
}

/// A one-shot timer that can be re-armed.
#[derive(Clone)]
pub struct IOTimerDispatchSource {
    inner: Arc<Timer>,
}

impl IOTimerDispatchSource {
    /// A timer whose cancel handler runs on `queue`.
    pub fn create(queue: &IODispatchQueue) -> IOResult<Self> {
        let inner = Arc::new(Timer {
            queue: queue.clone(),
            state: Mutex::new(State {
                enabled: true,
                ..State::default()
            }),
            changed: Condvar::new(),
        });
        let t = inner.clone();
        std::thread::Builder::new()
            .name("timer".into())
            .stack_size(64 * 1024)
            .spawn(move || run(&t))
            .map_err(|_| IOReturn::NO_RESOURCES)?;
        Ok(IOTimerDispatchSource { inner })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.locked()
    }

    /// The callback (type `IOTimerDispatchSource::TimerOccurred`).
    pub fn set_handler(&self, action: &OSAction) -> IOResult<()> {
        action.expect_type("IOTimerDispatchSource::TimerOccurred")?;
        self.state().action = Some(action.clone());
        Ok(())
    }

    /// Fires once at `deadline` (monotonic nanoseconds, see
    /// [`crate::time::now_ns`]), no later than `leeway` after it if it can.
    /// Re-arming replaces the previous deadline.
    pub fn wake_at_time(&self, deadline: u64, leeway: u64) -> IOResult<()> {
        let mut s = self.state();
        if s.cancelled {
            return Err(IOReturn::OFFLINE);
        }
        s.armed = Some((deadline, leeway));
        drop(s);
        self.inner.changed.notify_all();
        Ok(())
    }

    /// Fires once `after` from now.
    pub fn wake_after(&self, after: Duration) -> IOResult<()> {
        self.wake_at_time(now_ns() + after.as_nanos() as u64, 0)
    }

    /// Pauses or resumes firing (a deadline that passes while disabled fires
    /// on resume).
    pub fn set_enable(&self, enable: bool) {
        self.state().enabled = enable;
        self.inner.changed.notify_all();
    }

    /// Stops the timer; `handler` runs on the timer's queue afterwards.
    pub fn cancel(&self, handler: impl FnOnce() + Send + 'static) -> IOResult<()> {
        let mut s = self.state();
        s.cancelled = true;
        s.armed = None;
        drop(s);
        self.inner.changed.notify_all();
        self.inner.queue.dispatch_async(handler)
    }
}

fn run(t: &Timer) {
    let mut s = t.state.locked();
    loop {
        if s.cancelled {
            return;
        }
        let Some((deadline, leeway)) = s.armed.filter(|_| s.enabled) else {
            s = t.changed.waited(s);
            continue;
        };
        let now = now_ns();
        if now < deadline {
            let left = deadline - now;
            if left > SPIN_BELOW_NS || leeway >= SPIN_BELOW_NS {
                let sleep = if leeway >= SPIN_BELOW_NS {
                    left
                } else {
                    left - SPIN_BELOW_NS
                };
                s = t.changed.waited_timeout(s, Duration::from_nanos(sleep)).0;
                continue;
            }
            // Close to a tight deadline: spin the rest, unlocked, so that
            // re-arming or cancelling is not blocked meanwhile.
            drop(s);
            while now_ns() < deadline {
                std::hint::spin_loop();
            }
            s = t.state.locked();
            if s.armed != Some((deadline, leeway)) {
                continue;
            }
        }
        s.armed = None;
        if let Some(action) = s.action.clone() {
            let fired = now_ns();
            drop(s);
            let _ = action.invoke(ActionArgs::Time(fired), || ());
            s = t.state.locked();
        }
    }
}

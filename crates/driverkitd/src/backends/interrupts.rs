//! The interrupt lines of virtual devices: each raises an interrupt every
//! period into the regions dexts subscribed through
//! `IOService::register_interrupt`. A region whose dext has gone (its memory
//! table dropped) is forgotten at the next interrupt.

use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use driverkit_wire::interrupt;
use driverkit_wire::shm::SharedMemory;
use driverkit_wire::{IOResult, IOReturn};

/// The regions one interrupt line raises into.
#[derive(Default)]
pub struct Subscribers(Mutex<Vec<Weak<SharedMemory>>>);

impl Subscribers {
    /// Delivers the line's interrupts into `region` from now on. A region
    /// too small to be a mailbox is refused here, not found out in the
    /// middle of an interrupt.
    pub fn add(&self, region: &Arc<SharedMemory>) -> IOResult<()> {
        interrupt::check(region)?;
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::downgrade(region));
        Ok(())
    }

    /// Raises one interrupt into every region still mapped.
    pub fn raise(&self) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|w| match w.upgrade() {
                Some(region) => {
                    interrupt::raise(&region);
                    true
                }
                None => false,
            });
    }
}

struct Line {
    subscribers: Subscribers,
    stopped: Mutex<bool>,
    wake: Condvar,
}

/// A device's interrupt lines, each on its own thread while the device is
/// plugged.
pub struct InterruptModel {
    lines: Vec<Arc<Line>>,
}

impl InterruptModel {
    /// Starts one line per period.
    pub fn start(device: &str, periods: &[Duration]) -> InterruptModel {
        let lines = periods
            .iter()
            .enumerate()
            .map(|(i, period)| {
                let line = Arc::new(Line {
                    subscribers: Subscribers::default(),
                    stopped: Mutex::new(false),
                    wake: Condvar::new(),
                });
                let l = line.clone();
                let period = *period;
                let spawned = std::thread::Builder::new()
                    .name(format!("irq:{device}:{i}"))
                    .stack_size(64 * 1024)
                    .spawn(move || run(&l, period));
                if let Err(e) = spawned {
                    tracing::error!("interrupt {i} of {device} cannot run: {e}");
                }
                line
            })
            .collect();
        InterruptModel { lines }
    }

    /// Delivers interrupt `index` into `region` from now on.
    pub fn subscribe(&self, index: u32, region: &Arc<SharedMemory>) -> IOResult<()> {
        let line = self.lines.get(index as usize).ok_or(IOReturn::NOT_FOUND)?;
        line.subscribers.add(region)
    }

    /// Stops every line (the device is gone).
    pub fn stop(&self) {
        for line in &self.lines {
            *line.stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
            line.wake.notify_all();
        }
    }
}

impl Drop for InterruptModel {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(line: &Line, period: Duration) {
    let mut stopped = line.stopped.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        stopped = line
            .wake
            .wait_timeout(stopped, period)
            .unwrap_or_else(|e| e.into_inner())
            .0;
        if *stopped {
            return;
        }
        line.subscribers.raise();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_region_too_small_for_a_mailbox_is_refused_not_a_panic() {
        let model = InterruptModel::start("t", &[Duration::from_millis(1)]);
        let tiny = Arc::new(SharedMemory::create("tiny", 16).unwrap());
        assert_eq!(model.subscribe(0, &tiny), Err(IOReturn::BAD_ARGUMENT));
        let fine = Arc::new(SharedMemory::create("fine", interrupt::LEN).unwrap());
        assert_eq!(model.subscribe(0, &fine), Ok(()));
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            interrupt::count(&fine) > 0,
            "the line raises into a good region"
        );
        assert_eq!(model.subscribe(7, &fine), Err(IOReturn::NOT_FOUND));
    }
}

//! The interrupt lines of virtual devices: each raises an interrupt every
//! period into the regions dexts subscribed through
//! `IOService::register_interrupt`. A region whose dext has gone (its memory
//! table dropped) is forgotten at the next interrupt.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

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
    period: Duration,
    stopped: AtomicBool,
}

/// A device's interrupt lines while the device is plugged. Every line of
/// every virtual device is raised by one thread, the ticker: a thread per
/// line would make a thousand plugged sensors a thousand daemon threads.
pub struct InterruptModel {
    lines: Vec<Arc<Line>>,
}

impl InterruptModel {
    /// Starts one line per period.
    pub fn start(device: &str, periods: &[Duration]) -> InterruptModel {
        let lines: Vec<_> = periods
            .iter()
            .map(|period| {
                Arc::new(Line {
                    subscribers: Subscribers::default(),
                    // A zero period would keep the ticker busy forever.
                    period: (*period).max(MIN_PERIOD),
                    stopped: AtomicBool::new(false),
                })
            })
            .collect();
        match ticker() {
            Ok(ticker) => {
                for line in &lines {
                    ticker.add(line);
                }
            }
            Err(e) => tracing::error!("the interrupts of {device} cannot run: {e}"),
        }
        InterruptModel { lines }
    }

    /// Delivers interrupt `index` into `region` from now on.
    pub fn subscribe(&self, index: u32, region: &Arc<SharedMemory>) -> IOResult<()> {
        let line = self.lines.get(index as usize).ok_or(IOReturn::NOT_FOUND)?;
        line.subscribers.add(region)
    }

    /// Stops every line (the device is gone); the ticker forgets them when
    /// they are next due.
    pub fn stop(&self) {
        for line in &self.lines {
            line.stopped.store(true, Ordering::Release);
        }
    }
}

impl Drop for InterruptModel {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The shortest period a line may have.
const MIN_PERIOD: Duration = Duration::from_micros(100);

/// The thread that raises every line when it is due.
struct Ticker {
    /// Lines by when they are next due; the sequence number keeps equal
    /// instants apart (a `Weak` has no order).
    due: Mutex<BinaryHeap<Reverse<(Instant, u64)>>>,
    lines: Mutex<HashMap<u64, Weak<Line>>>,
    next: AtomicU64,
    changed: Condvar,
}

static TICKER: OnceLock<Result<Ticker, String>> = OnceLock::new();

fn ticker() -> Result<&'static Ticker, String> {
    // As with the log hub: the thread is handed the ticker once it is in
    // the static, never started from inside the initialisation.
    let mut created = false;
    let ticker = TICKER
        .get_or_init(|| {
            created = true;
            Ok(Ticker {
                due: Mutex::new(BinaryHeap::new()),
                lines: Mutex::new(HashMap::new()),
                next: AtomicU64::new(0),
                changed: Condvar::new(),
            })
        })
        .as_ref()
        .map_err(Clone::clone)?;
    if created {
        std::thread::Builder::new()
            .name("irq-ticker".into())
            .stack_size(64 * 1024)
            .spawn(move || ticker.run())
            .map_err(|e| format!("cannot start the interrupt ticker: {e}"))?;
    }
    Ok(ticker)
}

impl Ticker {
    fn add(&self, line: &Arc<Line>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, Arc::downgrade(line));
        self.due
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Reverse((Instant::now() + line.period, id)));
        self.changed.notify_one();
    }

    fn run(&self) {
        let mut due = self.due.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let now = Instant::now();
            let Some(&Reverse((when, id))) = due.peek() else {
                due = self.changed.wait(due).unwrap_or_else(|e| e.into_inner());
                continue;
            };
            if when > now {
                due = self
                    .changed
                    .wait_timeout(due, when - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                continue;
            }
            due.pop();
            let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
            let line = lines.get(&id).and_then(Weak::upgrade);
            match line {
                Some(line) if !line.stopped.load(Ordering::Acquire) => {
                    drop(lines);
                    line.subscribers.raise();
                    // A line that fell behind (the machine was busy) goes on
                    // from now: late interrupts are not made up in a burst.
                    let next = (when + line.period).max(now);
                    due.push(Reverse((next, id)));
                }
                _ => {
                    lines.remove(&id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_ticker_raises_every_line_and_forgets_stopped_ones() {
        let fast = InterruptModel::start("fast", &[Duration::from_millis(1)]);
        let slow = InterruptModel::start(
            "slow",
            &[Duration::from_millis(1), Duration::from_secs(3600)],
        );
        let regions: Vec<_> = (0..3)
            .map(|_| Arc::new(SharedMemory::create("line", interrupt::LEN).unwrap()))
            .collect();
        fast.subscribe(0, &regions[0]).unwrap();
        slow.subscribe(0, &regions[1]).unwrap();
        slow.subscribe(1, &regions[2]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while interrupt::count(&regions[0]) < 5 || interrupt::count(&regions[1]) < 5 {
            assert!(Instant::now() < deadline, "both 1 ms lines keep raising");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            interrupt::count(&regions[2]),
            0,
            "an hourly line waits its hour"
        );
        drop(fast);
        std::thread::sleep(Duration::from_millis(20));
        let stopped_at = interrupt::count(&regions[0]);
        let slow_at = interrupt::count(&regions[1]);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            interrupt::count(&regions[0]),
            stopped_at,
            "a dropped model's line stops"
        );
        assert!(interrupt::count(&regions[1]) > slow_at, "the others go on");
    }

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

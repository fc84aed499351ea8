//! The interrupt lines of virtual devices: each raises an interrupt every
//! period into the regions dexts subscribed through
//! `IOService::register_interrupt`. A region whose dext has gone (its memory
//! table dropped) is forgotten at the next interrupt.

use driverkit_wire::sync::{Locked, Waited};
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, Ordering};
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
        self.0.locked().push(Arc::downgrade(region));
        Ok(())
    }

    /// For a level-triggered source: the line asserted (before a raise)
    /// or let go, in every region still mapped.
    pub fn set_line(&self, asserted: bool) {
        for w in self.0.locked().iter() {
            if let Some(region) = w.upgrade() {
                interrupt::set_line(&region, asserted);
            }
        }
    }

    /// Raises one interrupt into every region still mapped.
    pub fn raise(&self) {
        self.0.locked().retain(|w| match w.upgrade() {
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
    due: Mutex<BinaryHeap<Due>>,
    changed: Condvar,
}

/// When a line is next due. Ordered soonest first, so that the heap's top
/// is the next line to raise.
struct Due {
    when: Instant,
    line: Weak<Line>,
}

impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.when.cmp(&self.when)
    }
}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        self.when == other.when
    }
}

impl Eq for Due {}

static TICKER: OnceLock<Ticker> = OnceLock::new();

fn ticker() -> std::io::Result<&'static Ticker> {
    // As with the log hub: the thread is handed the ticker once it is in
    // the static, never started from inside the initialisation.
    let mut created = false;
    let ticker = TICKER.get_or_init(|| {
        created = true;
        Ticker {
            due: Mutex::new(BinaryHeap::new()),
            changed: Condvar::new(),
        }
    });
    if created {
        std::thread::Builder::new()
            .name("irq-ticker".into())
            .stack_size(64 * 1024)
            .spawn(move || ticker.run())?;
    }
    Ok(ticker)
}

impl Ticker {
    fn add(&self, line: &Arc<Line>) {
        self.due.locked().push(Due {
            when: Instant::now() + line.period,
            line: Arc::downgrade(line),
        });
        self.changed.notify_one();
    }

    fn run(&self) {
        let mut due = self.due.locked();
        loop {
            let now = Instant::now();
            let Some(when) = due.peek().map(|d| d.when) else {
                due = self.changed.waited(due);
                continue;
            };
            if when > now {
                due = self.changed.waited_timeout(due, when - now).0;
                continue;
            }
            let Some(Due { line: weak, .. }) = due.pop() else {
                continue;
            };
            // A dropped or stopped line is forgotten here.
            let Some(line) = weak
                .upgrade()
                .filter(|l| !l.stopped.load(Ordering::Acquire))
            else {
                continue;
            };
            line.subscribers.raise();
            // A line that fell behind (the machine was busy) goes on from
            // now: late interrupts are not made up in a burst.
            due.push(Due {
                when: (when + line.period).max(now),
                line: weak,
            });
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

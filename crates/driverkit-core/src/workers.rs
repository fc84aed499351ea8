//! Pools of worker threads: the daemon's lifecycle jobs (matching,
//! termination, relaunch, a dext's socket calls, reaping) and its I/O.
//!
//! A job may block for as long as a dext takes to answer (up to the call
//! timeout). An **elastic** pool never makes a job wait for a busy worker:
//! when no worker is idle, it adds one. That suits I/O, where a transfer
//! waits as long as its device and holds its thread meanwhile. A
//! **bounded** pool adds workers up to its ceiling and then queues the job
//! for the next worker that frees up: a burst of a thousand device plugs
//! then waits its turn instead of growing the daemon by a thread per
//! starting dext (it grew by over two hundred). Its jobs must therefore
//! never wait for one another, only for dexts and devices, and a job that
//! is due later waits on the pool's one timer ([`Workers::run_after`]),
//! not on a worker. Idle workers are reused, which saves a thread creation
//! on every device plug, and retire after a while.

use driverkit_wire::sync::{Locked, Waited};
use std::collections::{BinaryHeap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

type Job = Box<dyn FnOnce() + Send>;

/// How long an idle worker waits for work before it exits.
const IDLE_RETIREMENT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Workers blocked waiting for a job; each will take one.
    idle: usize,
    /// Workers alive, idle or busy.
    threads: usize,
    /// Jobs due later, earliest first, and whether the timer thread runs.
    later: BinaryHeap<Later>,
    timer: bool,
}

/// A job due at `at`.
struct Later {
    at: Instant,
    job: Job,
}

impl PartialEq for Later {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}

impl Eq for Later {}

impl PartialOrd for Later {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Later {
    /// Reversed: the heap's top is the earliest.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.at.cmp(&self.at)
    }
}

struct Shared {
    queue: Mutex<Queue>,
    /// A job was queued (for the workers).
    ready: Condvar,
    /// A job due later was added (for the timer).
    later: Condvar,
    /// The most workers at once.
    ceiling: usize,
}

/// A pool. Cloning shares it.
#[derive(Clone)]
pub struct Workers {
    shared: Arc<Shared>,
}

impl Default for Workers {
    fn default() -> Self {
        Workers::elastic()
    }
}

impl Workers {
    /// A pool that adds a worker whenever none is idle.
    pub fn elastic() -> Workers {
        Workers::bounded(usize::MAX)
    }

    /// A pool of at most `ceiling` workers (at least one).
    pub fn bounded(ceiling: usize) -> Workers {
        Workers {
            shared: Arc::new(Shared {
                queue: Mutex::new(Queue::default()),
                ready: Condvar::new(),
                later: Condvar::new(),
                ceiling: ceiling.max(1),
            }),
        }
    }

    /// Runs `job` on an idle worker, or on a new one if there are more jobs
    /// waiting than idle workers and the pool is below its ceiling; else
    /// the job waits for the next worker that frees up. If no thread can
    /// be created, the job likewise waits for a busy one.
    pub fn run(&self, job: impl FnOnce() + Send + 'static) {
        let shared = &self.shared;
        let mut q = shared.queue.locked();
        q.jobs.push_back(Box::new(job));
        if q.jobs.len() <= q.idle || q.threads >= shared.ceiling {
            drop(q);
            shared.ready.notify_one();
            return;
        }
        q.threads += 1;
        drop(q);
        let pool = shared.clone();
        if let Err(e) = std::thread::Builder::new()
            .name("worker".into())
            .spawn(move || work(&pool))
        {
            shared.queue.locked().threads -= 1;
            tracing::error!("cannot start a worker thread ({e}); the job waits for a busy one");
        }
    }

    /// Runs `job` once `delay` has passed, holding no worker meanwhile:
    /// the pool's one timer thread keeps every job due later.
    pub fn run_after(&self, delay: Duration, job: impl FnOnce() + Send + 'static) {
        let shared = &self.shared;
        let mut q = shared.queue.locked();
        q.later.push(Later {
            at: Instant::now() + delay,
            job: Box::new(job),
        });
        if std::mem::replace(&mut q.timer, true) {
            drop(q);
            shared.later.notify_one();
            return;
        }
        drop(q);
        let pool = self.clone();
        if let Err(e) = std::thread::Builder::new()
            .name("worker-timer".into())
            .spawn(move || pool.keep_time())
        {
            // Without a timer the jobs run now rather than never.
            tracing::error!("cannot start the workers' timer ({e}); delayed jobs run at once");
            let due: Vec<Later> = {
                let mut q = shared.queue.locked();
                q.timer = false;
                q.later.drain().collect()
            };
            for later in due {
                self.run(later.job);
            }
        }
    }

    /// The timer thread: hands each job due later to the pool when it is
    /// due; exits once none is left.
    fn keep_time(&self) {
        let shared = &self.shared;
        let mut q = shared.queue.locked();
        loop {
            let Some(at) = q.later.peek().map(|l| l.at) else {
                q.timer = false;
                return;
            };
            let now = Instant::now();
            if at > now {
                q = shared.later.waited_timeout(q, at - now).0;
                continue;
            }
            if let Some(due) = q.later.pop() {
                drop(q);
                self.run(due.job);
                q = shared.queue.locked();
            }
        }
    }
}

fn work(shared: &Shared) {
    let mut q = shared.queue.locked();
    loop {
        if let Some(job) = q.jobs.pop_front() {
            drop(q);
            job();
            q = shared.queue.locked();
            continue;
        }
        q.idle += 1;
        let (guard, waited) = shared.ready.waited_timeout(q, IDLE_RETIREMENT);
        q = guard;
        q.idle -= 1;
        if waited.timed_out() && q.jobs.is_empty() {
            q.threads -= 1;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn jobs_run_even_when_every_worker_is_blocked() {
        let pool = Workers::default();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        // Two jobs that block until released.
        for _ in 0..2 {
            let rx = release_rx.clone();
            pool.run(move || {
                let _ = rx.lock().unwrap().recv();
            });
        }
        let (done_tx, done_rx) = mpsc::channel();
        pool.run(move || done_tx.send(()).unwrap());
        done_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("a third job runs while two block");
        release_tx.send(()).unwrap();
        release_tx.send(()).unwrap();
    }

    #[test]
    fn idle_workers_are_reused() {
        let pool = Workers::default();
        let (tx, rx) = mpsc::channel();
        let mut threads = std::collections::HashSet::new();
        for _ in 0..50 {
            let tx = tx.clone();
            pool.run(move || tx.send(std::thread::current().id()).unwrap());
            threads.insert(rx.recv().unwrap());
            // Let the worker go back to waiting before the next job.
            while pool.shared.queue.lock().unwrap().idle == 0 {
                std::thread::yield_now();
            }
        }
        assert_eq!(threads.len(), 1, "one worker serves 50 sequential jobs");
    }

    #[test]
    fn a_bounded_pool_never_has_more_workers_than_its_ceiling_and_runs_every_job() {
        let pool = Workers::bounded(3);
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        let (done_tx, done_rx) = mpsc::channel();
        // Ten jobs that block until released: three run, seven wait.
        for i in 0..10 {
            let (rx, done) = (release_rx.clone(), done_tx.clone());
            pool.run(move || {
                let _ = rx.lock().unwrap().recv();
                done.send(i).unwrap();
            });
        }
        assert_eq!(pool.shared.queue.lock().unwrap().threads, 3);
        assert!(done_rx.recv_timeout(Duration::from_millis(100)).is_err());
        for _ in 0..10 {
            release_tx.send(()).unwrap();
        }
        let mut done: Vec<i32> = (0..10)
            .map(|_| done_rx.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        done.sort();
        assert_eq!(done, (0..10).collect::<Vec<_>>());
        assert!(pool.shared.queue.lock().unwrap().threads <= 3);
    }

    #[test]
    fn a_job_due_later_holds_no_worker_while_it_waits() {
        let pool = Workers::bounded(1);
        let (tx, rx) = mpsc::channel();
        let later = tx.clone();
        pool.run_after(Duration::from_millis(300), move || {
            later.send("later").unwrap()
        });
        // The one worker is free for what comes meanwhile.
        pool.run(move || tx.send("now").unwrap());
        let first = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let second = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!((first, second), ("now", "later"));
    }

    #[test]
    fn jobs_due_later_run_in_the_order_they_are_due() {
        let pool = Workers::bounded(1);
        let (tx, rx) = mpsc::channel();
        for (delay, name) in [(200, "c"), (50, "a"), (100, "b")] {
            let tx = tx.clone();
            pool.run_after(Duration::from_millis(delay), move || tx.send(name).unwrap());
        }
        let got: Vec<_> = (0..3)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        assert_eq!(got, ["a", "b", "c"]);
    }
}

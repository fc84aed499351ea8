//! An elastic pool of worker threads for the daemon's lifecycle jobs
//! (matching, termination, relaunch).
//!
//! A job may block for as long as a dext takes to answer (up to the call
//! timeout), so the pool never makes a job wait for a busy worker: when no
//! worker is idle, it adds one. Idle workers are reused, which saves a
//! thread creation on every device plug, and retire after a while.

use driverkit_wire::sync::{Locked, Waited};
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

type Job = Box<dyn FnOnce() + Send>;

/// How long an idle worker waits for work before it exits.
const IDLE_RETIREMENT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Workers blocked waiting for a job; each will take one.
    idle: usize,
}

/// The pool. Cloning shares it.
#[derive(Clone, Default)]
pub struct Workers {
    shared: Arc<(Mutex<Queue>, Condvar)>,
}

impl Workers {
    /// Runs `job` on an idle worker, or on a new one if there are more jobs
    /// waiting than idle workers. If no thread can be created, the job stays
    /// queued for the next worker that frees up.
    pub fn run(&self, job: impl FnOnce() + Send + 'static) {
        let (lock, ready) = &*self.shared;
        let mut q = lock.locked();
        q.jobs.push_back(Box::new(job));
        let enough = q.jobs.len() <= q.idle;
        drop(q);
        if enough {
            ready.notify_one();
            return;
        }
        let shared = self.shared.clone();
        if let Err(e) = std::thread::Builder::new()
            .name("worker".into())
            .spawn(move || work(&shared))
        {
            tracing::error!("cannot start a worker thread ({e}); the job waits for a busy one");
        }
    }
}

fn work(shared: &(Mutex<Queue>, Condvar)) {
    let (lock, ready) = shared;
    let mut q = lock.locked();
    loop {
        if let Some(job) = q.jobs.pop_front() {
            drop(q);
            job();
            q = lock.locked();
            continue;
        }
        q.idle += 1;
        let (guard, waited) = ready.waited_timeout(q, IDLE_RETIREMENT);
        q = guard;
        q.idle -= 1;
        if waited.timed_out() && q.jobs.is_empty() {
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
            while pool.shared.0.lock().unwrap().idle == 0 {
                std::thread::yield_now();
            }
        }
        assert_eq!(threads.len(), 1, "one worker serves 50 sequential jobs");
    }
}

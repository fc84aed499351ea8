//! One way to take a lock everywhere: [`Locked::locked`], and to wait on a
//! condition variable: [`Waited`].
//!
//! A thread that panics while it holds a `Mutex` poisons it. Nothing here
//! treats that as a reason to stop: the daemon must outlive one thread's
//! panic (its data stays as consistent as each critical section leaves it,
//! and the panic itself is logged), and a dext aborts on panic, so it
//! never sees a poisoned lock at all. So every lock is taken past its
//! poisoning, by this one function rather than 270 spelled-out closures.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError, WaitTimeoutResult};
use std::time::Duration;

/// `Mutex::lock`, poisoned or not.
pub trait Locked<T: ?Sized> {
    /// The guard, whether or not a panicking thread held the lock before.
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> Locked<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `Condvar::wait` and `wait_timeout`, poisoned or not (as [`Locked`]).
pub trait Waited {
    fn waited<'a, T>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T>;
    fn waited_timeout<'a, T>(
        &self,
        guard: MutexGuard<'a, T>,
        timeout: Duration,
    ) -> (MutexGuard<'a, T>, WaitTimeoutResult);
}

impl Waited for Condvar {
    fn waited<'a, T>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
        self.wait(guard).unwrap_or_else(PoisonError::into_inner)
    }

    fn waited_timeout<'a, T>(
        &self,
        guard: MutexGuard<'a, T>,
        timeout: Duration,
    ) -> (MutexGuard<'a, T>, WaitTimeoutResult) {
        self.wait_timeout(guard, timeout)
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_is_still_taken() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let poisoner = m.clone();
        let _ = std::thread::spawn(move || {
            let _guard = poisoner.lock().unwrap();
            panic!("poisons the lock");
        })
        .join();
        assert!(m.is_poisoned());
        *m.locked() += 1;
        assert_eq!(*m.locked(), 2);
    }
}

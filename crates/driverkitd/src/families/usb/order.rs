//! A pipe's transfers in the order its driver asked for them, as DriverKit
//! keeps them: queued on the endpoint one after the other, and completed
//! to the driver in that same order.
//!
//! Each `AsyncIO` runs its blocking transfer on a worker of its own, so
//! without this two workers race twice: to queue their transfers on the
//! endpoint (the device then fills the later one first), and to deliver
//! their completions (a driver reading 62-byte packets got two of them
//! swapped, now and then). A ticket, taken when the driver's call arrives,
//! orders both: a worker queues its transfer only once the one before has
//! its place (`UsbTransport::transfer_queued`), and its completion reaches
//! the driver only after the one before. The USB/IP server keeps an
//! endpoint's URBs in the order they arrived the same way.

use driverkit_wire::sync::{Locked, Waited};
use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex};

type Delivery = Box<dyn FnOnce() + Send>;

/// One pipe's order.
#[derive(Default)]
pub struct InOrder {
    state: Mutex<State>,
    queued_turn: Condvar,
}

#[derive(Default)]
struct State {
    next_ticket: u64,
    /// Tickets below this have their transfer queued (or never will).
    queued: u64,
    /// Tickets below this have been delivered.
    delivered: u64,
    /// Completions that wait for an earlier one.
    waiting: BTreeMap<u64, Delivery>,
    /// A thread is delivering: others leave their completion to it.
    delivering: bool,
}

impl InOrder {
    /// The next transfer's place.
    pub fn ticket(&self) -> u64 {
        let mut st = self.lock();
        st.next_ticket += 1;
        st.next_ticket - 1
    }

    /// Waits until every earlier ticket's transfer has its place on the
    /// endpoint.
    pub fn wait_to_queue(&self, ticket: u64) {
        let mut st = self.lock();
        while st.queued < ticket {
            st = self.queued_turn.waited(st);
        }
    }

    /// `ticket`'s transfer has its place (or failed before it got one): the
    /// next may queue. Idempotent.
    pub fn queued(&self, ticket: u64) {
        let mut st = self.lock();
        if st.queued <= ticket {
            st.queued = ticket + 1;
            drop(st);
            self.queued_turn.notify_all();
        }
    }

    /// Runs `deliver` once every earlier ticket's delivery has run, on this
    /// thread or on the one delivering then.
    pub fn deliver(&self, ticket: u64, deliver: impl FnOnce() + Send + 'static) {
        let mut st = self.lock();
        st.waiting.insert(ticket, Box::new(deliver));
        if st.delivering {
            return;
        }
        st.delivering = true;
        loop {
            let next = st.delivered;
            let Some(run) = st.waiting.remove(&next) else {
                break;
            };
            st.delivered += 1;
            drop(st);
            run();
            st = self.lock();
        }
        st.delivering = false;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.locked()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn completions_reach_the_driver_in_ticket_order_whoever_finishes_first() {
        let order = Arc::new(InOrder::default());
        let tickets: Vec<u64> = (0..64).map(|_| order.ticket()).collect();
        let seen = Arc::new(Mutex::new(Vec::new()));
        // Finished in a scrambled order, on many threads.
        let mut scrambled = tickets.clone();
        scrambled.sort_by_key(|t| (t * 37) % 64);
        let threads: Vec<_> = scrambled
            .into_iter()
            .map(|t| {
                let (order, seen) = (order.clone(), seen.clone());
                std::thread::spawn(move || {
                    order.queued(t);
                    order.deliver(t, move || seen.lock().unwrap().push(t));
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*seen.lock().unwrap(), tickets);
    }

    #[test]
    fn a_transfer_queues_only_after_the_one_before_has_its_place() {
        let order = Arc::new(InOrder::default());
        let (first, second) = (order.ticket(), order.ticket());
        let queued = Arc::new(Mutex::new(Vec::new()));
        let waiter = {
            let (order, queued) = (order.clone(), queued.clone());
            std::thread::spawn(move || {
                order.wait_to_queue(second);
                queued.lock().unwrap().push(second);
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        queued.lock().unwrap().push(first);
        order.queued(first);
        waiter.join().unwrap();
        assert_eq!(*queued.lock().unwrap(), [first, second]);
    }
}

//! Every dext's call channels, served by a few threads.
//!
//! A dext calls the system on call channels (shared memory, one call in
//! flight each, see `driverkit_wire::channel`). A thread per channel made a
//! thousand dexts thousands of daemon threads, nearly all parked. Here the
//! channels are split into shards of at most [`SHARD`], and the pool's
//! threads take turns as each shard's leader (the leader/followers pattern):
//!
//! - The **leader** of a shard parks on every idle channel of the shard at
//!   once (`futex_waitv`, armed through each request doorbell's parked
//!   count, so a caller's ring wakes it). When a request arrives it takes
//!   that channel and answers the call itself: no hand-off between the
//!   wake-up and the answer.
//! - While it serves, the thread spins on that channel for the next request
//!   as a thread of its own would (`SPIN`, the hot path), then gives the
//!   channel back to its shard and leads it again. Only half the CPUs'
//!   worth of threads spin at once ([`spin_budget`]); the others give the
//!   channel back at once, so that a crowd of busy dexts is not starved by
//!   the threads waiting for them.
//!
//! A call may block (it may wait on another dext, whose own calls must
//! still be answered meanwhile), so a shard cannot simply wait for its
//! leader. Handing the leadership to another thread before each answer
//! cost every cold call a second wake-up (16-24 µs against 4-5 µs), so the
//! leadership is *deferred* instead: the watchdog thread gives the shard to
//! another thread only if its leader has been away over [`DEFERRAL`] and is
//! inside a handler or another channel of the shard has a call waiting.
//! So the pool runs one leader per shard, one thread per blocked call (at
//! most [`MAX_AWAY`]), and one spare, whatever the number of dexts.
//!
//! Architecture invariant: a channel is served by at most one thread at a
//! time, and a channel's per-channel state (its handler, its counters)
//! travels with it, so a request is never answered twice or out of order.

use driverkit_wire::sync::Locked;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use driverkit_wire::channel::{Server, ShmChannel};
use driverkit_wire::shm::{wait_any, wait_entry, SPIN};
use rustix::thread::futex;

/// What answers one channel's requests: request bytes in, reply bytes out.
pub(crate) type Handler = Box<dyn FnMut(&[u8], &mut Vec<u8>) + Send>;

/// Channels one leader watches: `futex_waitv` takes at most 128 words, and
/// one is the shard's own.
const SHARD: usize = 127;
/// How long an idle follower waits before it exits (the last spare stays).
#[cfg(not(test))]
const RETIREMENT: Duration = Duration::from_secs(10);
#[cfg(test)]
const RETIREMENT: Duration = Duration::from_millis(200);
/// How long a leader sleeps before it looks again on its own: only a safety
/// net, as every change to what it watches wakes it.
const SAFETY_NET: Duration = Duration::from_secs(1);

/// How many of the pool's threads may spin for a channel's next request at
/// once: half the CPUs, at least one. A spinner keeps a CPU busy, and past
/// that it takes the CPU from the very callers it waits for: a thousand
/// dexts starting at once on two cores had eighty threads spinning here,
/// and some dexts' `Start` ran past the call timeout. A thread over the
/// budget gives its channel back to the shard's leader at once (the next
/// call on it pays a wake-up).
fn spin_budget() -> &'static SpinBudget {
    static BUDGET: OnceLock<SpinBudget> = OnceLock::new();
    BUDGET.get_or_init(|| {
        SpinBudget::new(std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)))
    })
}

/// At most `limit` spinners at once.
struct SpinBudget {
    limit: usize,
    spinning: AtomicUsize,
}

/// One of a [`SpinBudget`]'s places, held while its thread spins.
struct Spinning<'a>(&'a SpinBudget);

impl SpinBudget {
    fn new(limit: usize) -> SpinBudget {
        SpinBudget {
            limit,
            spinning: AtomicUsize::new(0),
        }
    }

    /// A place to spin in, or `None` when the budget is spent.
    fn enter(&self) -> Option<Spinning<'_>> {
        let before = self.spinning.fetch_add(1, Ordering::AcqRel);
        if before >= self.limit {
            self.spinning.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Spinning(self))
    }
}

impl Drop for Spinning<'_> {
    fn drop(&mut self) {
        self.0.spinning.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves `channel` with `handler` until either side closes it.
pub(crate) fn serve(channel: Arc<ShmChannel>, handler: Handler) {
    pool().add(channel, handler);
}

/// A channel's server side while no thread serves it.
struct Idle {
    server: Server,
    handler: Handler,
    /// Whether the leader announced itself on the channel's doorbell.
    armed: bool,
}

struct Slot {
    channel: Arc<ShmChannel>,
    /// `None` while a thread serves the channel.
    idle: Option<Idle>,
}

struct Shard {
    slots: Mutex<Vec<Slot>>,
    /// A futex word the leader waits on besides the channels: bumped when
    /// it must look again (a channel added or given back, the shard
    /// retired).
    changed: AtomicU32,
    /// Set once its last channel left: it is out of the pool, and its
    /// leader goes back to the idle threads.
    retired: AtomicBool,
}

impl Shard {
    fn slots(&self) -> std::sync::MutexGuard<'_, Vec<Slot>> {
        self.slots.locked()
    }

    fn wake_leader(&self) {
        self.changed.fetch_add(1, Ordering::SeqCst);
        let _ = futex::wake(&self.changed, futex::Flags::PRIVATE, 1);
    }

    /// A channel whose thread stopped spinning on it: watched again (the
    /// leader woken to arm it, unless the giver leads the shard itself).
    fn give_back(&self, channel: &Arc<ShmChannel>, idle: Idle, wake: bool) {
        let mut slots = self.slots();
        if let Some(slot) = slots.iter_mut().find(|s| Arc::ptr_eq(&s.channel, channel)) {
            slot.idle = Some(idle);
        }
        drop(slots);
        if wake {
            self.wake_leader();
        }
    }

    /// Whether a channel no thread serves has a request waiting.
    fn has_waiting_request(&self) -> bool {
        self.slots().iter().any(|slot| {
            slot.idle
                .as_ref()
                .is_some_and(|idle| slot.channel.has_request(&idle.server))
        })
    }

    fn remove(&self, channel: &Arc<ShmChannel>) {
        self.slots().retain(|s| !Arc::ptr_eq(&s.channel, channel));
    }
}

/// A channel a leader took to answer.
struct Taken {
    shard: Arc<Shard>,
    channel: Arc<ShmChannel>,
    idle: Idle,
    /// Whether the thread is inside the handler (see [`Deferred`]).
    answering: Arc<AtomicBool>,
}

#[derive(Default)]
struct State {
    shards: Vec<Arc<Shard>>,
    /// Shards waiting for a thread to lead them.
    leaderless: VecDeque<Arc<Shard>>,
    /// Threads waiting to lead, the most recently idle last: work goes to
    /// it first, so that in a busy pool the threads beyond what the load
    /// needs stay idle long enough to retire.
    idle: Vec<Arc<Follower>>,
    /// The pool's threads.
    threads: usize,
    /// Shards whose leader is away answering calls, by when the watchdog
    /// looks at whether another thread must lead them.
    deferred: VecDeque<Deferred>,
}

/// An idle pool thread, and the shard handed to it.
struct Follower {
    thread: std::thread::Thread,
    work: Mutex<Option<Arc<Shard>>>,
}

/// A shard whose leader is away.
struct Deferred {
    due: Instant,
    shard: Arc<Shard>,
    /// True while the leader is inside a call's handler (where it may
    /// block), false while it spins for the next request.
    answering: Arc<AtomicBool>,
}

struct Pool {
    state: Mutex<State>,
    /// 1 while the watchdog sleeps until a leadership is deferred (a futex
    /// word): the deferral then wakes it.
    watchdog_parked: AtomicU32,
    /// False if the watchdog could not start: leadership then passes at
    /// once.
    watchdog: AtomicBool,
}

static POOL: OnceLock<Pool> = OnceLock::new();

/// Requests a leader found only when its safety net expired: lost wake-ups,
/// always zero unless the arming protocol is broken; tests check it.
static LOST_WAKEUPS: AtomicU64 = AtomicU64::new(0);

fn pool() -> &'static Pool {
    // As the log hub does: the watchdog is handed the pool once it is in
    // the static, never started from inside the initialisation.
    let mut created = false;
    let pool = POOL.get_or_init(|| {
        created = true;
        Pool {
            state: Mutex::new(State::default()),
            watchdog_parked: AtomicU32::new(0),
            watchdog: AtomicBool::new(true),
        }
    });
    if created {
        if let Err(e) = std::thread::Builder::new()
            .name("channels-watch".into())
            .stack_size(64 * 1024)
            .spawn(move || pool.watch())
        {
            tracing::error!(
                "call channels: cannot start the watchdog ({e}); each cold call wakes a second thread"
            );
            pool.watchdog.store(false, Ordering::Release);
        }
    }
    pool
}

/// How long a leader may answer calls before its shard gets another
/// leader: past one spin window and a quick call, so that a cold call's
/// only wake-up is the caller's, yet short enough that a call that blocks
/// (on another dext, say) holds up its shard's other channels only about
/// this long (plus one look of the watchdog).
const DEFERRAL: Duration = Duration::from_millis(1);
/// Threads beyond one leader per shard: calls that may be blocked at once
/// before a shard must wait for one of them to end.
const MAX_AWAY: usize = 64;
/// How often the watchdog looks while leaderships are being deferred, and
/// how long after the last one it keeps looking before it sleeps. It looks
/// rather than arming a timer per call: here programming a timer costs
/// about 10 µs (a virtual machine's timer traps), three times a cold
/// call's own cost.
const WATCH_EVERY: Duration = Duration::from_millis(1);
const WATCH_FOR: Duration = Duration::from_millis(100);

impl Pool {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.locked()
    }

    fn add(&'static self, channel: Arc<ShmChannel>, handler: Handler) {
        let slot = Slot {
            channel,
            idle: Some(Idle {
                server: Server::default(),
                handler,
                armed: false,
            }),
        };
        let mut state = self.state();
        let open = state
            .shards
            .iter()
            .find(|shard| shard.slots().len() < SHARD)
            .cloned();
        match open {
            Some(shard) => {
                // Under the pool's lock, so that the shard cannot retire
                // between being chosen and getting the channel.
                shard.slots().push(slot);
                drop(state);
                shard.wake_leader();
            }
            None => {
                let shard = Arc::new(Shard {
                    slots: Mutex::new(vec![slot]),
                    changed: AtomicU32::new(0),
                    retired: AtomicBool::new(false),
                });
                state.shards.push(shard.clone());
                self.enlist(state, [shard]);
            }
        }
    }

    /// Hands `shards` to a leader each: the most recently idle followers,
    /// or new threads if too few are idle. Never waits for a thread to
    /// start.
    fn enlist(
        &'static self,
        mut state: std::sync::MutexGuard<'_, State>,
        shards: impl IntoIterator<Item = Arc<Shard>>,
    ) {
        let mut woken = Vec::new();
        let mut unserved = Vec::new();
        for shard in shards {
            match state.idle.pop() {
                Some(follower) => {
                    *follower.work.locked() = Some(shard);
                    woken.push(follower.thread.clone());
                }
                None => unserved.push(shard),
            }
        }
        for shard in unserved {
            // Past the cap a shard waits for a thread to come back: on an
            // overloaded machine every leader is late, and replacing each
            // would only add threads competing for the same cores.
            if state.threads >= state.shards.len() + MAX_AWAY {
                state.leaderless.push_back(shard);
                continue;
            }
            let first = shard.clone();
            let spawned = std::thread::Builder::new()
                .name("channels".into())
                .spawn(move || self.follow(Some(first)));
            match spawned {
                Ok(_) => state.threads += 1,
                Err(e) => {
                    tracing::error!(
                        "cannot start a thread to serve call channels ({e}); their shard waits for a busy one"
                    );
                    state.leaderless.push_back(shard);
                }
            }
        }
        drop(state);
        for thread in woken {
            thread.unpark();
        }
    }

    /// The leader of `shard` is about to answer a call: another thread
    /// leads it if the leader is not back within [`DEFERRAL`]. Costs no
    /// system call unless the watchdog sleeps.
    fn defer(&'static self, shard: Arc<Shard>, answering: Arc<AtomicBool>) {
        let mut state = self.state();
        if !self.watchdog.load(Ordering::Acquire) {
            return self.enlist(state, [shard]);
        }
        state.deferred.push_back(Deferred {
            due: Instant::now() + DEFERRAL,
            shard,
            answering,
        });
        drop(state);
        if self.watchdog_parked.swap(0, Ordering::SeqCst) == 1 {
            let _ = futex::wake(&self.watchdog_parked, futex::Flags::PRIVATE, 1);
        }
    }

    /// Takes `shard` out of the pool if its last channel left, so that the
    /// pool shrinks back when dexts end (its leader then idles, and
    /// retires as idle threads do).
    fn retire_if_empty(&self, shard: &Arc<Shard>) {
        let mut state = self.state();
        if !shard.slots().is_empty() {
            return;
        }
        shard.retired.store(true, Ordering::Release);
        state.shards.retain(|s| !Arc::ptr_eq(s, shard));
        state.leaderless.retain(|s| !Arc::ptr_eq(s, shard));
        drop(state);
        shard.wake_leader();
    }

    /// The leader of `shard` is back: true if the shard is still its to
    /// lead (nobody took over meanwhile). Its own deferral is taken first,
    /// so that each one left names a thread still away.
    fn resume(&self, shard: &Arc<Shard>, answering: &Arc<AtomicBool>) -> bool {
        let mut state = self.state();
        let ours = |d: &Deferred| Arc::ptr_eq(&d.shard, shard);
        let Some(at) = state
            .deferred
            .iter()
            .position(|d| ours(d) && Arc::ptr_eq(&d.answering, answering))
            .or_else(|| state.deferred.iter().position(ours))
        else {
            return false;
        };
        state.deferred.remove(at);
        true
    }

    /// The watchdog: gives every shard whose leader is overdue to another
    /// thread; sleeps once nothing was deferred for a while.
    fn watch(&'static self) {
        let mut last_seen = Instant::now();
        loop {
            let mut state = self.state();
            let now = Instant::now();
            if !state.deferred.is_empty() {
                last_seen = now;
            } else if now.duration_since(last_seen) > WATCH_FOR {
                // Announced, then looked at again: a deferral after the
                // look finds the watchdog parked and wakes it.
                self.watchdog_parked.store(1, Ordering::SeqCst);
                let empty = state.deferred.is_empty();
                drop(state);
                if empty {
                    let _ = futex::wait(&self.watchdog_parked, futex::Flags::PRIVATE, 1, None);
                }
                self.watchdog_parked.store(0, Ordering::SeqCst);
                last_seen = Instant::now();
                continue;
            }
            // An overdue leader's shard gets another leader only if it must:
            // the leader is inside a handler (which may block), or another
            // of its channels has a request waiting. A leader merely
            // spinning on a busy channel keeps its shard.
            let mut overdue = Vec::new();
            while state.deferred.front().is_some_and(|d| d.due <= now) {
                let Some(mut d) = state.deferred.pop_front() else {
                    break;
                };
                if d.answering.load(Ordering::Acquire) || d.shard.has_waiting_request() {
                    overdue.push(d.shard);
                } else {
                    d.due = now + DEFERRAL;
                    state.deferred.push_back(d);
                }
            }
            if overdue.is_empty() {
                drop(state);
            } else {
                self.enlist(state, overdue);
            }
            std::thread::sleep(WATCH_EVERY);
        }
    }

    /// A pool thread: leads a shard when one needs it, answers the channel
    /// it took, and leads again if its shard is still its own; idle, it
    /// retires after a while unless it is the last idle one.
    fn follow(&'static self, first: Option<Arc<Shard>>) {
        let me = Arc::new(Follower {
            thread: std::thread::current(),
            work: Mutex::new(None),
        });
        // Whether this thread is inside a handler, for the watchdog; one
        // flag for the thread's life, not one per call.
        let answering = Arc::new(AtomicBool::new(false));
        let take = |me: &Follower| me.work.locked().take();
        let mut next = first;
        loop {
            if let Some(mut shard) = next.take() {
                loop {
                    let Some(taken) = self.lead(shard, &answering) else {
                        break;
                    };
                    match self.serve_taken(taken) {
                        Some(again) => shard = again,
                        None => break,
                    }
                }
                continue;
            }
            let mut state = self.state();
            if let Some(shard) = state.leaderless.pop_front() {
                next = Some(shard);
                continue;
            }
            state.idle.push(me.clone());
            drop(state);
            let mut until = Instant::now() + RETIREMENT;
            next = loop {
                if let Some(shard) = take(&me) {
                    break Some(shard);
                }
                let left = until.saturating_duration_since(Instant::now());
                if !left.is_zero() {
                    std::thread::park_timeout(left);
                    continue;
                }
                let mut state = self.state();
                // Work handed over under the lock is seen under it.
                if let Some(shard) = take(&me) {
                    break Some(shard);
                }
                if state.idle.len() > 1 {
                    state.idle.retain(|f| !Arc::ptr_eq(f, &me));
                    state.threads -= 1;
                    return;
                }
                until = Instant::now() + RETIREMENT;
            };
        }
    }

    /// Leads `shard` until one of its channels has a request; then takes
    /// it, defers the leadership, and returns it. `None` once the shard
    /// retired.
    fn lead(&'static self, shard: Arc<Shard>, answering: &Arc<AtomicBool>) -> Option<Taken> {
        // The channel the last wake-up named, looked at first.
        let mut woken: Option<usize> = None;
        let mut waits: Vec<futex::Wait> = Vec::with_capacity(SHARD + 1);
        let mut watched: Vec<usize> = Vec::with_capacity(SHARD);
        let mut timed_out = false;
        loop {
            let mut slots = shard.slots();
            if shard.retired.load(Ordering::Acquire) {
                return None;
            }
            let changed = shard.changed.load(Ordering::SeqCst);
            // A closed channel needs no look of its own: closing rings its
            // request bell, so it is taken like a call, and leaves the
            // shard when answering it finds it closed.
            let ready = woken
                .take()
                .filter(|&i| {
                    slots.get(i).is_some_and(|s| {
                        s.idle
                            .as_ref()
                            .is_some_and(|idle| s.channel.has_request(&idle.server))
                    })
                })
                .or_else(|| {
                    // Armed first, looked at after: a ring between the two
                    // finds the leader announced, or changes the word it
                    // waits on, so it is never missed.
                    slots.iter_mut().position(|slot| {
                        let Some(idle) = slot.idle.as_mut() else {
                            return false;
                        };
                        if !idle.armed {
                            slot.channel.request_bell().arm();
                            idle.armed = true;
                        }
                        slot.channel.has_request(&idle.server)
                    })
                });
            if let Some(i) = ready {
                if timed_out {
                    // Found by the safety net, not by a wake-up.
                    LOST_WAKEUPS.fetch_add(1, Ordering::Relaxed);
                }
                let slot = &mut slots[i];
                let mut idle = slot.idle.take().expect("a ready slot is idle");
                if idle.armed {
                    slot.channel.request_bell().disarm();
                    idle.armed = false;
                }
                let channel = slot.channel.clone();
                drop(slots);
                self.defer(shard.clone(), answering.clone());
                return Some(Taken {
                    shard,
                    channel,
                    idle,
                    answering: answering.clone(),
                });
            }
            waits.clear();
            watched.clear();
            waits.push(wait_entry(&shard.changed, changed, true));
            for (i, slot) in slots.iter().enumerate() {
                if let Some(idle) = slot.idle.as_ref().filter(|idle| idle.armed) {
                    let word = slot.channel.request_bell().futex_word();
                    waits.push(wait_entry(word, idle.server.answered(), false));
                    watched.push(i);
                }
            }
            // The words stay valid while the lock is released: a slot's
            // channel (and its mapping) leaves the shard only on this thread
            // or on the thread serving it, and a served slot is not watched.
            drop(slots);
            match wait_any(&waits, SAFETY_NET) {
                Ok(k) => {
                    timed_out = false;
                    woken = k.checked_sub(1).and_then(|k| watched.get(k).copied());
                }
                Err(e) => timed_out = e == rustix::io::Errno::TIMEDOUT,
            }
        }
    }

    /// Answers the taken channel's request, then the next ones while they
    /// come within the spin window, then gives the channel back. Returns the
    /// shard if this thread is still its leader.
    fn serve_taken(&self, taken: Taken) -> Option<Arc<Shard>> {
        let Taken {
            shard,
            channel,
            mut idle,
            answering,
        } = taken;
        // The caller found the channel watched, not served: a cold call,
        // whose caller the kernel may run on this CPU, so the next wait
        // yields.
        let mut woken = true;
        loop {
            answering.store(true, Ordering::Release);
            let answered = channel.answer(&mut idle.server, &mut idle.handler);
            answering.store(false, Ordering::Release);
            match answered {
                Ok(woke) => woken |= woke,
                Err(end) => {
                    tracing::debug!("a call channel ended: {end:?}");
                    shard.remove(&channel);
                    self.retire_if_empty(&shard);
                    return self.resume(&shard, &answering).then_some(shard);
                }
            }
            let bell = channel.request_bell();
            let next = || channel.has_request(&idle.server);
            let again = match spin_budget().enter() {
                Some(_spinning) => bell.spin_until(woken, SPIN, next),
                None => next(),
            };
            if !again {
                let leads = self.resume(&shard, &answering);
                // A leader that comes back looks at its shard anyway.
                shard.give_back(&channel, idle, !leads);
                return leads.then_some(shard);
            }
            woken = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use driverkit_wire::channel::{self, ChannelError};
    use driverkit_wire::shm::SharedMemory;
    use std::os::fd::AsFd;
    use std::time::Instant;

    #[test]
    fn no_more_threads_spin_than_the_budget_and_a_place_frees_when_its_spinner_stops() {
        let budget = SpinBudget::new(2);
        let a = budget.enter().expect("a first place");
        let b = budget.enter().expect("a second place");
        assert!(budget.enter().is_none(), "a third spinner is over budget");
        drop(a);
        let c = budget.enter().expect("the place the first spinner left");
        assert!(budget.enter().is_none());
        drop((b, c));
        assert_eq!(budget.spinning.load(Ordering::Acquire), 0);
        assert!(spin_budget().limit >= 1);
    }

    /// A caller's end, and the server's end handed to the pool with a
    /// handler that answers `tag` followed by the request.
    fn served(tag: u8) -> ShmChannel {
        served_by(Box::new(move |request: &[u8], reply: &mut Vec<u8>| {
            reply.push(tag);
            reply.extend_from_slice(request);
        }))
    }

    /// A caller's end, its server's end handed to the pool with `handler`.
    fn served_by(handler: Handler) -> ShmChannel {
        let client = ShmChannel::create().unwrap();
        let fd = client.memory().as_fd().try_clone_to_owned().unwrap();
        let server = ShmChannel::open(SharedMemory::from_fd(fd, channel::LEN).unwrap()).unwrap();
        serve(Arc::new(server), handler);
        client
    }

    fn deadline() -> Option<Instant> {
        Some(Instant::now() + Duration::from_secs(20))
    }

    fn pool_threads() -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|name| name.trim() == "channels")
            .count()
    }

    #[test]
    fn many_channels_are_answered_by_a_few_threads() {
        // 300 channels: three shards. Calls after each channel went idle
        // (the leader's wake-up path) and back to back (the spin path).
        let clients: Vec<_> = (0..300).map(|i| served(i as u8)).collect();
        let mut reply = Vec::new();
        for round in 0..2u8 {
            for (i, client) in clients.iter().enumerate() {
                client.call(&[round, 7], &mut reply, deadline()).unwrap();
                assert_eq!(reply, [i as u8, round, 7], "channel {i}, round {round}");
            }
        }
        for (i, client) in clients.iter().enumerate().step_by(37) {
            for n in 0..50u8 {
                client.call(&[n], &mut reply, deadline()).unwrap();
                assert_eq!(reply, [i as u8, n]);
            }
        }
        // Threads that served a burst retire once idle; what stays is a
        // leader per shard and a spare (the other test's shard too).
        let until = Instant::now() + Duration::from_secs(20);
        while pool_threads() > 6 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
        let threads = pool_threads();
        assert!(
            threads <= 6,
            "300 idle channels in 3 shards are watched by {threads} threads"
        );
        assert_eq!(
            LOST_WAKEUPS.load(Ordering::Relaxed),
            0,
            "every call woke its leader"
        );
        // Closed by the caller: the shard forgets it, the others go on.
        clients[5].close();
        assert_eq!(
            clients[5].call(&[1], &mut reply, deadline()),
            Err(ChannelError::Closed)
        );
        clients[6].call(&[1], &mut reply, deadline()).unwrap();
        assert_eq!(reply, [6, 1]);
        // All closed: their shards retire (what stays holds the other
        // test's channels), and so, once idle, do their leaders.
        for client in &clients {
            client.close();
        }
        let shards = || {
            let state = pool().state();
            let sizes: Vec<usize> = state.shards.iter().map(|s| s.slots().len()).collect();
            sizes
        };
        // The other test holds at most 6 channels.
        let until = Instant::now() + Duration::from_secs(20);
        while shards().iter().sum::<usize>() > 6 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(50));
        let sizes = shards();
        assert!(sizes.iter().sum::<usize>() <= 6, "channels left: {sizes:?}");
        assert!(
            !sizes.contains(&0),
            "a shard without channels stays in the pool: {sizes:?}"
        );
        assert!(
            sizes.len() < 3,
            "shards for the other test's channels: {sizes:?}"
        );
    }

    #[test]
    fn a_blocked_call_does_not_hold_up_the_other_channels_of_its_shard() {
        let (release, released) = std::sync::mpsc::channel::<()>();
        let released = Mutex::new(released);
        let client = served_by(Box::new(move |_: &[u8], reply: &mut Vec<u8>| {
            // Blocks as a call waiting on another dext does.
            let _ = released.lock().unwrap().recv();
            reply.push(1);
        }));
        let blocked = std::thread::spawn(move || {
            let mut reply = Vec::new();
            client.call(&[0], &mut reply, deadline()).map(|()| reply)
        });
        std::thread::sleep(Duration::from_millis(50));
        // Channels added after it share its shard (or the next).
        let others: Vec<_> = (0..5).map(|i| served(10 + i)).collect();
        let mut reply = Vec::new();
        for (i, other) in others.iter().enumerate() {
            other.call(&[9], &mut reply, deadline()).unwrap();
            assert_eq!(reply, [10 + i as u8, 9]);
        }
        assert!(!blocked.is_finished(), "the first call still blocks");
        release.send(()).unwrap();
        assert_eq!(blocked.join().unwrap(), Ok(vec![1]));
    }
}

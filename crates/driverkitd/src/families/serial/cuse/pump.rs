//! The node's side of the port's rings: received bytes into the input
//! buffer, written bytes out to the driver, and the parked requests that
//! a change lets go (`cuse-io`).

use super::*;

impl Inner {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.locked()
    }

    pub(super) fn send(&self, bytes: &[u8]) {
        // ENOENT: the request was interrupted and is gone.
        if let Err(e) = rustix::io::write(&self.dev, bytes) {
            if e != Errno::NOENT && !self.core.stopped() {
                tracing::warn!("serial   {}: answering the kernel: {e}", self.core.name);
            }
        }
    }

    /// Tells both threads to stop: `cuse-dev` through the stop's eventfd,
    /// `cuse-io` through a kick.
    pub(super) fn tell_stop(&self) {
        self.stop.set();
        self.kick();
    }

    pub(super) fn kick(&self) {
        self.kick.fetch_add(1, Ordering::SeqCst);
        let _ = rustix::thread::futex::wake(&self.kick, rustix::thread::futex::Flags::PRIVATE, 1);
    }

    /// How many bytes may go into the TX ring now (none while the output
    /// is stopped).
    pub(super) fn tx_room(&self, st: &State) -> usize {
        if st.xoff || st.suspended {
            return 0;
        }
        let q = &self.core.queues;
        let tx = q.tx();
        let (Ok(unsent), Ok(free)) = (q.tx_unsent(), tx.free()) else {
            return 0;
        };
        let line = (st.termios.ospeed as u128 * AHEAD.as_micros() / 10_000_000) as usize;
        let bound = line.clamp(AHEAD_MIN, tx.size() as usize);
        bound.saturating_sub(unsent as usize).min(free as usize)
    }

    /// The output has gone: nothing parked, and the hardware sent all
    /// (or, for a driver that does not say, took all).
    pub(super) fn drained(&self, st: &State) -> bool {
        st.writes.is_empty()
            && st.stopped_output.is_empty()
            && self.core.queues.tx_unsent().is_ok_and(|u| u == 0)
    }

    pub(super) fn revents(&self, st: &State) -> u32 {
        let mut r = 0;
        if !st.input.is_empty() {
            r |= POLLIN | POLLRDNORM;
        }
        // Stopped, a tty stays writable while its buffer has room (the
        // output waits there); running, while the line can take more.
        let writable = if st.xoff || st.suspended {
            st.stopped_output.len() < WAKEUP_CHARS
        } else {
            st.stopped_output.is_empty() && self.tx_room(st) > 0
        };
        if writable {
            r |= POLLOUT | POLLWRNORM;
        }
        r
    }

    /// Received bytes into the input (`IXON` applied); while nobody has
    /// the node open they are dropped, as a closed UART drops them.
    pub(super) fn pull_rx(&self, st: &mut State) {
        let q = &self.core.queues;
        let rx = q.rx();
        if st.opens == 0 {
            let n = rx.discard();
            if n > 0 {
                self.core
                    .rx_dropped
                    .fetch_add(u64::from(n), Ordering::Relaxed);
            }
        } else {
            let room = INPUT_MAX - st.input.len().min(INPUT_MAX);
            let mut buf = [0u8; INPUT_MAX];
            let n = match rx.peek(&mut buf[..room]) {
                Ok(n) => n,
                Err(_) => {
                    if !st.corrupt_logged {
                        tracing::error!(
                            "serial   {}: the driver left its RX ring's indices inconsistent; dropping what it holds",
                            self.core.name
                        );
                        st.corrupt_logged = true;
                    }
                    rx.discard();
                    0
                }
            };
            if n == 0 {
                return;
            }
            let ixon = st.termios.iflag & bits::IXON != 0;
            let ixany = st.termios.iflag & bits::IXANY != 0;
            let (start, stop) = (st.termios.cc[bits::VSTART], st.termios.cc[bits::VSTOP]);
            for &b in &buf[..n] {
                if ixon && b == stop {
                    st.xoff = true;
                    continue;
                }
                if ixon && b == start {
                    st.xoff = false;
                    continue;
                }
                if ixon && ixany {
                    st.xoff = false;
                }
                st.input.push_back(b);
            }
            let _ = rx.consume(n);
            st.last_rx = Instant::now();
            st.counters.rx = st.counters.rx.wrapping_add(n as u32);
            self.core.rx_bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
        if q.rx_blocked() {
            q.bell(DRIVER_BELL).ring();
        }
    }

    /// Puts what fits of `data` in the TX ring; how much did.
    pub(super) fn put_tx(&self, st: &mut State, data: &[u8]) -> usize {
        if st.xoff || st.suspended {
            let n = STOPPED_MAX
                .saturating_sub(st.stopped_output.len())
                .min(data.len());
            st.stopped_output.extend(&data[..n]);
            return n;
        }
        // What waited while stopped goes first.
        if !st.stopped_output.is_empty() {
            // Taken out for the call (it needs the state), not copied.
            let mut waiting = std::mem::take(&mut st.stopped_output);
            let sent = self.to_ring(st, waiting.make_contiguous());
            waiting.drain(..sent);
            st.stopped_output = waiting;
            if !st.stopped_output.is_empty() {
                return 0;
            }
        }
        self.to_ring(st, data)
    }

    /// As much of `data` as the line may take now, into the TX ring.
    fn to_ring(&self, st: &mut State, data: &[u8]) -> usize {
        let n = self.tx_room(st).min(data.len());
        if n == 0 {
            return 0;
        }
        let put = self.core.queues.tx().write(&data[..n]).unwrap_or(0);
        if put > 0 {
            st.counters.tx = st.counters.tx.wrapping_add(put as u32);
            self.core.tx_bytes.fetch_add(put as u64, Ordering::Relaxed);
            self.core.queues.bell(DRIVER_BELL).notify();
        }
        put
    }

    /// Everything that may have become possible: bytes in, reads and
    /// writes served, drains finished, pollers woken.
    pub(super) fn pump(&self, st: &mut State, work: &mut Work) {
        let now = Instant::now();
        self.pull_rx(st);
        // Reads, in the order they came.
        while let Some(r) = st.reads.front() {
            let have = st.input.len();
            let timed_out = match (r.vtime, r.vmin_zero) {
                (Some(t), true) => now >= r.since + t,
                (Some(t), false) => have > 0 && now >= st.last_rx + t,
                (None, _) => false,
            };
            if have < r.min && !timed_out {
                if let Some(t) = r.vtime {
                    work.until(if r.vmin_zero {
                        r.since + t
                    } else {
                        st.last_rx + t
                    });
                }
                break;
            }
            let n = have.min(r.size);
            let data: Vec<u8> = st.input.drain(..n).collect();
            work.replies.push(proto::read_reply(r.unique, &data));
            st.reads.pop_front();
            // Room in the input again: more may wait in the ring.
            self.pull_rx(st);
        }
        // What waited while the output was stopped, then the writes, in
        // the order they came.
        if !st.stopped_output.is_empty() {
            self.put_tx(st, &[]);
        }
        while let Some(mut w) = st.writes.pop_front() {
            let put = self.put_tx(st, &w.data[w.done..]);
            w.done += put;
            if w.done == w.data.len() {
                work.replies
                    .push(proto::write_reply(w.unique, w.done as u32));
            } else {
                st.writes.push_front(w);
                break;
            }
        }
        if !st.drains.is_empty() {
            let drained = self.drained(st);
            let mut i = 0;
            while i < st.drains.len() {
                let d = &st.drains[i];
                let expired = d.deadline.is_some_and(|at| now >= at);
                if drained || expired {
                    let d = st.drains.swap_remove(i);
                    work.after.push((d.unique, d.after));
                } else {
                    if let Some(at) = d.deadline {
                        work.until(at);
                    }
                    i += 1;
                }
            }
        }
        // Pollers waiting for an event that now holds.
        if !st.pollers.is_empty() {
            let holds = self.revents(st);
            let mut i = 0;
            while i < st.pollers.len() {
                if st.pollers[i].events & holds != 0 {
                    let p = st.pollers.swap_remove(i);
                    work.replies.push(proto::poll_notify(p.handle));
                } else {
                    i += 1;
                }
            }
        }
    }

    /// Sends what `work` holds and runs what waited for a drain.
    pub(super) fn finish(&self, work: Work) {
        for r in &work.replies {
            self.send(r);
        }
        for (unique, after) in work.after {
            match after {
                After::Reply => self.send(&proto::ioctl_reply(unique, 0, &[])),
                After::Termios {
                    termios,
                    flush_input,
                } => {
                    let answer = match self.apply_termios(termios, flush_input) {
                        Ok(()) => proto::ioctl_reply(unique, 0, &[]),
                        Err(e) => proto::error_reply(unique, e),
                    };
                    self.send(&answer);
                }
                After::Release => {
                    self.hang_up();
                    self.send(&proto::empty_reply(unique));
                }
            }
        }
    }

    /// Runs `f` on the state, then pumps, then answers.
    pub(super) fn with_state(&self, f: impl FnOnce(&Inner, &mut State, &mut Work)) {
        let mut work = Work::default();
        {
            let mut st = self.lock();
            f(self, &mut st, &mut work);
            self.pump(&mut st, &mut work);
        }
        self.finish(work);
        self.kick();
    }

    // --- cuse-dev ----------------------------------------------------------

    pub(super) fn move_bytes(&self) {
        let q = &self.core.queues;
        let (rx_bell, tx_bell) = (q.bell(RX_DATA_BELL), q.bell(TX_SPACE_BELL));
        rx_bell.arm();
        tx_bell.arm();
        while !self.core.stopped() {
            let seen = [
                rx_bell.futex_word().load(Ordering::SeqCst),
                tx_bell.futex_word().load(Ordering::SeqCst),
                self.kick.load(Ordering::SeqCst),
            ];
            let mut work = Work::default();
            {
                let mut st = self.lock();
                self.pump(&mut st, &mut work);
            }
            let timeout = work.deadline.map_or(IDLE, |at| {
                at.saturating_duration_since(Instant::now()).min(IDLE)
            });
            self.finish(work);
            let waits = [
                wait_entry(rx_bell.futex_word(), seen[0], false),
                wait_entry(tx_bell.futex_word(), seen[1], false),
                wait_entry(&self.kick, seen[2], true),
            ];
            let _ = wait_any(&waits, timeout);
        }
        rx_bell.disarm();
        tx_bell.disarm();
    }
}

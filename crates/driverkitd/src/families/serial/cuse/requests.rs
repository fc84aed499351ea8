//! The kernel's requests as `cuse-dev` reads them: open, release, read,
//! write, interrupt; a request that must wait is parked in the state.

use super::*;

impl Inner {
    pub(super) fn serve_requests(&self) {
        let mut buf = vec![0u8; proto::REQUEST_BUFFER];
        while !self.core.stopped() {
            let mut fds = [
                PollFd::new(&self.dev, PollFlags::IN),
                PollFd::new(self.stop.fd(), PollFlags::IN),
            ];
            if poll(&mut fds, Some(&timespec(Duration::from_secs(1)))).is_err() {
                continue;
            }
            match rustix::io::read(&self.dev, &mut buf) {
                // The far end closed (only a test's socket does that).
                Ok(0) => return,
                Ok(n) => match Request::parse(&buf[..n]) {
                    Ok((h, r)) => self.handle(h, r),
                    Err(e) => {
                        tracing::error!("serial   {}: {CUSE_DEVICE}: {e}", self.core.name)
                    }
                },
                // Nothing yet, or a request withdrawn before it was read.
                Err(Errno::AGAIN) | Err(Errno::INTR) | Err(Errno::NOENT) => {}
                Err(e) => {
                    if !self.core.stopped() {
                        tracing::error!("serial   {}: {CUSE_DEVICE} ended: {e}", self.core.name);
                    }
                    return;
                }
            }
        }
    }

    pub(super) fn handle(&self, h: proto::Header, r: Request<'_>) {
        let unique = h.unique;
        match r {
            Request::Open { flags } => self.open(unique, h.caller, flags),
            Request::Read { fh, size, flags } => {
                // A read carries the file's flags as they are now
                // (`fcntl` may have changed them since the open).
                if let Some(f) = self.lock().files.get_mut(&fh) {
                    *f = flags;
                }
                let nonblock = flags & libc::O_NONBLOCK as u32 != 0;
                self.read(unique, size as usize, nonblock)
            }
            Request::Write { fh, data } => self.write(unique, fh, data),
            Request::Release { fh } => self.release(unique, fh),
            Request::Flush { .. } | Request::Fsync { .. } => self.send(&proto::empty_reply(unique)),
            Request::Interrupt { unique } => self.interrupt(unique),
            Request::Ioctl(io) => self.ioctl(unique, &io),
            Request::Poll {
                handle,
                flags,
                events,
                ..
            } => self.with_state(|me, st, work| {
                let revents = me.revents(st);
                if flags & proto::POLL_SCHEDULE_NOTIFY != 0 && revents & events == 0 {
                    st.pollers.retain(|p| p.handle != handle);
                    st.pollers.push(Poller { handle, events });
                }
                work.replies.push(proto::poll_reply(unique, revents));
            }),
            Request::Init { .. } | Request::Other { .. } => {
                self.send(&proto::error_reply(unique, libc::ENOSYS))
            }
        }
    }

    /// An open: the first one activates the port, with an empty input
    /// and the modem outputs raised (as Linux's tty layer raises DTR and
    /// RTS on open).
    pub(super) fn open(&self, unique: u64, caller: Caller, flags: u32) {
        let (fh, first) = {
            let mut st = self.lock();
            if st.exclusive && st.opens > 0 && caller.uid != 0 {
                drop(st);
                self.send(&proto::error_reply(unique, libc::EBUSY));
                return;
            }
            st.opens += 1;
            let fh = st.next_fh;
            st.next_fh += 1;
            st.files.insert(fh, flags);
            let first = st.opens == 1;
            if first {
                st.input.clear();
                st.xoff = false;
                st.suspended = false;
                st.stopped_output.clear();
                let dropped = self.core.queues.rx().discard();
                self.core
                    .rx_dropped
                    .fetch_add(u64::from(dropped), Ordering::Relaxed);
            }
            (fh, first)
        };
        if first {
            self.core.opened(&self.path);
            let _ = self.core.program_mcr(true, true);
        }
        self.send(&proto::open_reply(unique, fh));
    }

    /// The last close of an open file; the port's last waits for the
    /// output (at most `CLOSING_WAIT`) and hangs up.
    pub(super) fn release(&self, unique: u64, fh: u64) {
        let last = {
            let mut st = self.lock();
            st.files.remove(&fh);
            st.opens = st.opens.saturating_sub(1);
            st.opens == 0
        };
        if !last {
            self.send(&proto::empty_reply(unique));
            return;
        }
        self.with_state(|_, st, _| {
            st.drains.push(PendingDrain {
                unique,
                after: After::Release,
                deadline: Some(Instant::now() + CLOSING_WAIT),
            });
        });
    }

    /// After the last close: modem outputs dropped (`HUPCL`), the port
    /// deactivated, unless a program opened it again meanwhile.
    pub(super) fn hang_up(&self) {
        let (hupcl, orphans) = {
            let mut st = self.lock();
            if st.opens > 0 {
                return;
            }
            st.exclusive = false;
            st.input.clear();
            // Nothing should wait with no file open; whatever does hears
            // the hang-up rather than waiting for ever.
            let mut orphans: Vec<u64> = st.reads.drain(..).map(|r| r.unique).collect();
            orphans.extend(st.writes.drain(..).map(|w| w.unique));
            orphans.extend(st.modem_waits.drain(..).map(|w| w.unique));
            (st.termios.cflag & bits::HUPCL != 0, orphans)
        };
        for unique in orphans {
            self.send(&proto::error_reply(unique, libc::EIO));
        }
        self.core.closed(&self.path, hupcl);
    }

    pub(super) fn read(&self, unique: u64, size: usize, nonblock: bool) {
        self.with_state(|_, st, work| {
            let (vmin, vtime) = st.termios.vmin_vtime();
            let min = usize::from(vmin.max(1)).min(size.max(1));
            let now = if !st.reads.is_empty() {
                // Behind another reader: in line.
                None
            } else if nonblock {
                Some(if st.input.is_empty() {
                    Err(libc::EAGAIN)
                } else {
                    Ok(())
                })
            } else if (vmin == 0 && vtime == 0) || st.input.len() >= min {
                Some(Ok(()))
            } else {
                None
            };
            match now {
                Some(Ok(())) => {
                    let n = st.input.len().min(size);
                    let data: Vec<u8> = st.input.drain(..n).collect();
                    work.replies.push(proto::read_reply(unique, &data));
                }
                Some(Err(e)) => work.replies.push(proto::error_reply(unique, e)),
                None => st.reads.push_back(PendingRead {
                    unique,
                    size,
                    min,
                    vtime: (vtime > 0).then(|| Duration::from_millis(u64::from(vtime) * 100)),
                    vmin_zero: vmin == 0,
                    since: Instant::now(),
                }),
            }
        });
    }

    /// A write: what fits now is taken; a non-blocking writer hears how
    /// much (or `EAGAIN`), a blocking one waits until all is taken.
    pub(super) fn write(&self, unique: u64, fh: u64, data: &[u8]) {
        self.with_state(|me, st, work| {
            let nonblock = st
                .files
                .get(&fh)
                .is_some_and(|flags| flags & libc::O_NONBLOCK as u32 != 0);
            // Behind others: wait in line.
            let put = if st.writes.is_empty() {
                me.put_tx(st, data)
            } else {
                0
            };
            if put == data.len() || (nonblock && put > 0) {
                work.replies.push(proto::write_reply(unique, put as u32));
            } else if nonblock {
                work.replies.push(proto::error_reply(unique, libc::EAGAIN));
            } else {
                st.writes.push_back(PendingWrite {
                    unique,
                    data: data.to_vec(),
                    done: put,
                });
            }
        });
    }

    /// A signal for the caller of `unique`: its wait ends with `EINTR`
    /// (a write with bytes taken reports them).
    pub(super) fn interrupt(&self, unique: u64) {
        let answer = {
            let mut st = self.lock();
            if let Some(i) = st.reads.iter().position(|r| r.unique == unique) {
                st.reads.remove(i);
                Some(proto::error_reply(unique, libc::EINTR))
            } else if let Some(i) = st.writes.iter().position(|w| w.unique == unique) {
                let w = st.writes.remove(i).expect("found above");
                Some(if w.done > 0 {
                    proto::write_reply(unique, w.done as u32)
                } else {
                    proto::error_reply(unique, libc::EINTR)
                })
            } else if let Some(i) = st
                .drains
                .iter()
                .position(|d| d.unique == unique && !matches!(d.after, After::Release))
            {
                st.drains.swap_remove(i);
                Some(proto::error_reply(unique, libc::EINTR))
            } else if let Some(i) = st.modem_waits.iter().position(|w| w.unique == unique) {
                st.modem_waits.swap_remove(i);
                Some(proto::error_reply(unique, libc::EINTR))
            } else {
                None
            }
        };
        if let Some(a) = answer {
            self.send(&a);
        }
    }
}

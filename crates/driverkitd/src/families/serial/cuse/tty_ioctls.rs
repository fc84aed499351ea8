//! The ioctls a program makes of a serial port, served: termios, modem
//! lines, breaks, drains, flushes, counters and waits for modem changes.

use super::*;

impl Inner {
    pub(super) fn ioctl(&self, unique: u64, io: &proto::Ioctl<'_>) {
        let termios = self.lock().termios;
        match ioctl::decode(io.cmd, io.arg, io.input, io.out_size as usize, &termios) {
            Decoded::Fetch { input, output } => self.send(&proto::ioctl_retry(
                unique,
                (input > 0).then_some((io.arg, input as u64)),
                (output > 0).then_some((io.arg, output as u64)),
            )),
            Decoded::Refused(e) => {
                if e == libc::ENOTTY {
                    tracing::debug!(
                        "serial   {}: ioctl {:#x} is not a serial port's (ENOTTY)",
                        self.core.name,
                        io.cmd
                    );
                }
                self.send(&proto::error_reply(unique, e))
            }
            Decoded::Ready(request) => self.serve_ioctl(unique, request),
        }
    }

    pub(super) fn serve_ioctl(&self, unique: u64, request: TtyIoctl) {
        let ok = |out: &[u8]| proto::ioctl_reply(unique, 0, out);
        let int = |v: u32| proto::ioctl_reply(unique, 0, &v.to_le_bytes());
        let answer = match request {
            TtyIoctl::GetTermios { v2 } => ok(&self.lock().termios.emit(v2)),
            TtyIoctl::SetTermios { when, termios } => {
                if when == When::Now {
                    match self.apply_termios(termios, false) {
                        Ok(()) => ok(&[]),
                        Err(e) => proto::error_reply(unique, e),
                    }
                } else {
                    return self.park_drain(
                        unique,
                        After::Termios {
                            termios,
                            flush_input: when == When::Flush,
                        },
                    );
                }
            }
            TtyIoctl::GetModem => match self.core.driver(|d| d.hw_get_modem_status()) {
                Ok(inputs) => {
                    let line = self.core.line();
                    int(ioctl::modem_bits((line.dtr, line.rts), inputs))
                }
                Err(e) => proto::error_reply(unique, errno(e)),
            },
            TtyIoctl::SetModem { how, bits } => {
                let line = self.core.line();
                let want = |bit: u32, was: bool| match how {
                    ModemSet::Set => bits & bit != 0,
                    ModemSet::Bis => was || bits & bit != 0,
                    ModemSet::Bic => was && bits & bit == 0,
                };
                let (dtr, rts) = (want(tiocm::DTR, line.dtr), want(tiocm::RTS, line.rts));
                match self.core.program_mcr(dtr, rts) {
                    Ok(()) => ok(&[]),
                    Err(refused) => proto::error_reply(unique, errno(refused.error)),
                }
            }
            TtyIoctl::WaitModem { mask } => {
                self.lock()
                    .modem_waits
                    .push(PendingModemWait { unique, mask });
                return;
            }
            TtyIoctl::GetCounters => ok(&self.lock().counters.emit()),
            TtyIoctl::Drain => return self.park_drain(unique, After::Reply),
            TtyIoctl::SendBreak { ms } => return self.send_break(unique, ms),
            TtyIoctl::Break { on } => match self.core.driver(|d| d.hw_send_break(on)) {
                Ok(()) => ok(&[]),
                Err(e) => proto::error_reply(unique, errno(e)),
            },
            TtyIoctl::Flush { input, output } => {
                {
                    let mut st = self.lock();
                    if input {
                        st.input.clear();
                        self.core.queues.rx().discard();
                    }
                    if output {
                        st.stopped_output.clear();
                    }
                }
                let r = self.core.log_refusal(
                    "a FIFO reset",
                    self.core.driver(|d| d.hw_reset_fifo(output, input)),
                );
                match r {
                    Ok(()) => ok(&[]),
                    Err(e) => proto::error_reply(unique, errno(e)),
                }
            }
            TtyIoctl::FlowControl { arg } => {
                let mut reply = ok(&[]);
                self.with_state(|me, st, _| match arg {
                    0 => st.suspended = true,
                    1 => st.suspended = false,
                    _ => {
                        let c = st.termios.cc[if arg == 2 { bits::VSTOP } else { bits::VSTART }];
                        // A flow character goes ahead of the bound, as a
                        // UART sends it ahead of its FIFO.
                        if me.core.queues.tx().write(&[c]).unwrap_or(0) == 1 {
                            me.core.queues.bell(DRIVER_BELL).notify();
                        } else {
                            reply = proto::error_reply(unique, libc::EIO);
                        }
                    }
                });
                reply
            }
            TtyIoctl::InputWaiting => {
                let st = self.lock();
                let ring = self.core.queues.rx().used().unwrap_or(0) as usize;
                int((st.input.len() + ring) as u32)
            }
            TtyIoctl::OutputWaiting => {
                let st = self.lock();
                let parked: usize = st.writes.iter().map(|w| w.data.len() - w.done).sum();
                int(self.core.queues.tx_unsent().unwrap_or(0) + parked as u32)
            }
            TtyIoctl::Exclusive { on } => {
                self.lock().exclusive = on;
                ok(&[])
            }
            TtyIoctl::GetSerial => {
                let st = self.lock();
                let fifo = self.tx_room(&st) + self.core.queues.tx_unsent().unwrap_or(0) as usize;
                ok(&ioctl::serial_struct(
                    self.index,
                    fifo as u32,
                    st.serial_flags,
                ))
            }
            TtyIoctl::SetSerial { flags } => {
                self.lock().serial_flags = flags;
                ok(&[])
            }
            TtyIoctl::GetWinsize => ok(&self.lock().winsize),
            TtyIoctl::SetWinsize { size } => {
                self.lock().winsize = size;
                ok(&[])
            }
            TtyIoctl::GetLineDiscipline => int(0),
            TtyIoctl::SetLineDiscipline { ldisc: 0 } => ok(&[]),
            TtyIoctl::SetLineDiscipline { .. } => proto::error_reply(unique, libc::EINVAL),
        };
        self.send(&answer);
    }

    pub(super) fn park_drain(&self, unique: u64, after: After) {
        self.with_state(|_, st, _| {
            st.drains.push(PendingDrain {
                unique,
                after,
                deadline: None,
            })
        });
    }

    /// `tcsendbreak`: the line held in break for `ms`, on its own thread
    /// so that the node keeps serving meanwhile.
    pub(super) fn send_break(&self, unique: u64, ms: u32) {
        let core = self.core.clone();
        let dev = match self.dev.as_fd().try_clone_to_owned() {
            Ok(fd) => fd,
            Err(_) => return self.send(&proto::error_reply(unique, libc::EIO)),
        };
        let spawned = std::thread::Builder::new()
            .name("cuse-break".into())
            .spawn(move || {
                let r = core.driver(|d| d.hw_send_break(true)).and_then(|()| {
                    std::thread::sleep(Duration::from_millis(ms.into()));
                    core.driver(|d| d.hw_send_break(false))
                });
                let answer = match core.log_refusal("a break", r) {
                    Ok(()) => proto::ioctl_reply(unique, 0, &[]),
                    Err(e) => proto::error_reply(unique, errno(e)),
                };
                let _ = rustix::io::write(&dev, &answer);
            });
        if spawned.is_err() {
            self.send(&proto::error_reply(unique, libc::EAGAIN));
        }
    }

    /// A program's new termios: what changed reaches the driver; kept only
    /// if the driver took it. `B0` drops the modem outputs instead of
    /// setting a rate, and a rate after `B0` raises them again.
    pub(super) fn apply_termios(&self, new: Termios, flush_input: bool) -> Result<(), i32> {
        let old = self.lock().termios;
        let hang = new.cflag & bits::CBAUD == 0;
        let was_hung = old.cflag & bits::CBAUD == 0;
        let mut effective = new;
        if hang {
            effective.ospeed = old.ospeed;
            effective.ispeed = old.ispeed;
        }
        let want = line_of(&effective, Some(self.core.line()));
        self.core
            .program(want, false)
            .map_err(|refused| errno(refused.error))?;
        if hang && !was_hung {
            let _ = self.core.program_mcr(false, false);
        } else if was_hung && !hang {
            let _ = self.core.program_mcr(true, true);
        }
        self.with_state(|me, st, _| {
            st.termios = new;
            if st.termios.iflag & bits::IXON == 0 {
                st.xoff = false;
            }
            if flush_input {
                st.input.clear();
                me.core.queues.rx().discard();
            }
        });
        Ok(())
    }

    // --- cuse-io -----------------------------------------------------------
}

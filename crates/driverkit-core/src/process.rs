//! A child process known by its PID: what the daemon needs of a dext's
//! process (kill it, reap it), whichever way it was spawned (std's
//! `Command`, or the sandbox's own spawn, which std cannot express).

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use rustix::process::{Pid, WaitOptions};

/// A child of this process, reaped at most once.
#[derive(Debug)]
pub(crate) struct Process {
    pid: u32,
}

impl Process {
    /// A child this process spawned and has not reaped.
    pub fn from_pid(pid: u32) -> Process {
        Process { pid }
    }

    /// Takes over a child std spawned. `Child` has no destructor of its
    /// own (it neither waits nor kills), so from here on the process is
    /// this value's to reap.
    pub fn adopt(child: std::process::Child) -> Process {
        Process { pid: child.id() }
    }

    pub fn id(&self) -> u32 {
        self.pid
    }

    fn rustix_pid(&self) -> io::Result<Pid> {
        Pid::from_raw(self.pid as i32).ok_or_else(|| io::Error::other("PID 0"))
    }

    /// SIGKILL.
    pub fn kill(&self) -> io::Result<()> {
        rustix::process::kill_process(self.rustix_pid()?, rustix::process::Signal::KILL)
            .map_err(io::Error::from)
    }

    /// Its exit status if it has exited (and reaps it), `None` if not yet.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.wait_with(WaitOptions::NOHANG)
    }

    /// Waits for it to exit and reaps it.
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            match self.wait_with(WaitOptions::empty()) {
                Ok(Some(status)) => return Ok(status),
                Ok(None) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn wait_with(&mut self, options: WaitOptions) -> io::Result<Option<ExitStatus>> {
        let waited = rustix::process::waitpid(Some(self.rustix_pid()?), options)?;
        Ok(waited.map(|(_, status)| ExitStatus::from_raw(status.as_raw())))
    }
}

//! A child process known by its PID: what the daemon needs of a dext's
//! process (kill it, reap it), whichever way it was spawned (std's
//! `Command`, or the sandbox's own spawn, which std cannot express).

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use rustix::process::{Pid, WaitOptions};

/// A child of this process, reaped at most once; with its cgroup, if it
/// has one, which ends with it (anything the child started is killed
/// when the value drops, after the child was reaped).
#[derive(Debug)]
pub(crate) struct Process {
    pid: u32,
    cgroup: Option<crate::sandbox::cgroup::DextCgroup>,
}

impl Process {
    /// A child this process spawned and has not reaped.
    pub fn from_pid(pid: u32) -> Process {
        Process { pid, cgroup: None }
    }

    /// The child lives in `cgroup`.
    pub fn with_cgroup(mut self, cgroup: crate::sandbox::cgroup::DextCgroup) -> Process {
        self.cgroup = Some(cgroup);
        self
    }

    /// Takes over a child std spawned. `Child` has no destructor of its
    /// own (it neither waits nor kills), so from here on the process is
    /// this value's to reap.
    pub fn adopt(child: std::process::Child) -> Process {
        Process::from_pid(child.id())
    }

    pub fn id(&self) -> u32 {
        self.pid
    }

    fn rustix_pid(&self) -> io::Result<Pid> {
        Pid::from_raw(self.pid as i32).ok_or_else(|| io::Error::other("PID 0"))
    }

    /// SIGKILL, to everything in its cgroup too.
    pub fn kill(&self) -> io::Result<()> {
        if let Some(c) = &self.cgroup {
            c.kill();
        }
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

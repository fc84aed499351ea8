//! `IONotificationPortRef`: where asynchronous completions wait for the
//! app's thread.
//!
//! On macOS a completion is a Mach message to the port, and the app's run
//! loop or dispatch queue runs its callback. Linux has neither, so a port
//! here is a queue with an eventfd beside it: the fd polls readable while
//! completions wait, and `IONotificationPortDispatch` runs their callbacks
//! on the calling thread. A C app puts the fd in its `poll` loop; Python
//! in its selector. Callbacks never run on a library thread, as on macOS.

use driverkit_wire::sync::Locked;
use std::collections::VecDeque;
use std::ffi::c_void;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Mutex;

/// `IOAsyncCallback`: `(refcon, result, args, numArgs)`.
pub type AsyncCallback = unsafe extern "C" fn(*mut c_void, u32, *mut *mut c_void, u32);

/// A completion waiting for its callback.
struct Done {
    callback: AsyncCallback,
    refcon: usize,
    result: u32,
    values: Vec<u64>,
}

pub struct Port {
    waiting: Mutex<VecDeque<Done>>,
    ready: OwnedFd,
}

impl Port {
    pub fn new() -> std::io::Result<Port> {
        let ready = new_eventfd()?;
        Ok(Port {
            waiting: Mutex::new(VecDeque::new()),
            ready,
        })
    }

    pub fn fd(&self) -> i32 {
        self.ready.as_raw_fd()
    }

    /// Queues a completion (on the library's thread that received it) and
    /// makes the fd readable.
    pub fn complete(&self, callback: AsyncCallback, refcon: usize, result: u32, values: Vec<u64>) {
        self.waiting.locked().push_back(Done {
            callback,
            refcon,
            result,
            values,
        });
        let one = 1u64.to_ne_bytes();
        // SAFETY: writing 8 bytes from a live buffer to our own eventfd.
        unsafe { libc::write(self.ready.as_raw_fd(), one.as_ptr().cast(), 8) };
    }

    /// Runs the callbacks of every completion that has arrived, in order,
    /// on this thread; returns how many ran.
    pub fn dispatch(&self) -> u32 {
        let mut count = [0u8; 8];
        // SAFETY: reading at most 8 bytes into a live buffer from our own
        // non-blocking eventfd (EAGAIN when nothing waits).
        unsafe { libc::read(self.ready.as_raw_fd(), count.as_mut_ptr().cast(), 8) };
        let mut ran = 0;
        loop {
            // One at a time, the lock not held: a callback may call again.
            let next = self.waiting.locked().pop_front();
            let Some(done) = next else { return ran };
            let mut args: Vec<*mut c_void> = done
                .values
                .iter()
                .map(|v| *v as usize as *mut c_void)
                .collect();
            // SAFETY: the app gave this function pointer as its
            // IOAsyncCallback with the call (`reference[1]`), and the
            // refcon beside it; the arguments live across the call.
            unsafe {
                (done.callback)(
                    done.refcon as *mut c_void,
                    done.result,
                    args.as_mut_ptr(),
                    args.len() as u32,
                )
            };
            ran += 1;
        }
    }
}

fn new_eventfd() -> std::io::Result<OwnedFd> {
    // SAFETY: eventfd returns a new descriptor or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor only this value owns.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
}

//! DriverKitTestDriver: a dext whose behaviour its personality scripts, so
//! that tests can make a real process fail, panic, abort or hang in Start.
//!
//! Personality keys:
//! - `TestStartBehavior`: `ok` (default), `fail` (Start returns
//!   kIOReturnError), `panic`, `abort`, `kill-self` (SIGKILL), `hang`,
//!   `spew` (writes 1 MiB to stderr with no newline and bytes that are not
//!   UTF-8, then logs `after the spew` and starts), `hog` (registers two
//!   600 MiB buffers with reads from its provider, past the system's 1 GiB
//!   per dext, and publishes the second read's status as `TestHogStatus`),
//!   `escape` (tries what its sandbox must refuse: reading `/etc/passwd`,
//!   connecting to the control socket named by `TestEscapeSocket`,
//!   executing `/bin/true`, opening a TCP socket to 127.0.0.1, and
//!   publishes each outcome in `TestEscape`, then starts), `random-fault`
//!   (for the crash campaign: at each Start, with one chance in two, one of
//!   panic, abort, `exit(0)` mid-call, closing its descriptors (its socket
//!   among them) or hanging; otherwise starts), `channels` (300 threads
//!   each call the system at once, so each opens a call channel, past the
//!   system's 256 per dext; publishes how many calls succeeded as
//!   `TestChannelCalls`), `threads` (starts up to 2,000 threads that
//!   wait, past the system's 512 per dext, and publishes how many started
//!   as `TestThreadsStarted`), `pci-bad-input` and `pci-crash-mid-dma`
//!   (on an edu function: [`super::pci_test`]; outcomes in `TestPCI` and
//!   `TestPCIStartState`);
//! - `TestStartDelayMs`: sleep this long in Start first;
//! - `TestTerminateAfterMs`: once started, terminate itself this much later;
//! - `TestReadLength`: ask the provider for an asynchronous read of this
//!   many bytes into a shared buffer, and publish the outcome
//!   (`TestReadStatus`, `TestReadVerified`).
//!
//! It publishes `TestDriverPID` before acting, so a test can find its
//! process while Start runs.

use driverkit_wire::sync::Locked;
use std::time::Duration;

use driverkit::prelude::*;
use driverkit::runtime::ClassEntry;

pub const EXECUTABLE: &str = "DriverKitTestDriver";

pub const INFO_PLIST: &str = include_str!("TestDriver.Info.plist");

pub fn classes() -> Vec<ClassEntry> {
    vec![driverkit::runtime::class::<TestDriver>()]
}

#[derive(Default)]
pub struct TestIvars {
    buffer: std::sync::Mutex<Option<IOBufferMemoryDescriptor>>,
}

#[driverkit::service(superclass = IOService, ivars = TestIvars)]
pub struct TestDriver;

impl IOServiceImpl for TestDriver {
    fn init(&self) -> IOResult<TestIvars> {
        Ok(TestIvars::default())
    }

    fn start(&self, provider: &IOService) -> IOResult<()> {
        self.super_start(provider)?;
        self.set_property("TestDriverPID", std::process::id() as i64)?;
        let p = self.personality();
        if let Some(ms) = p
            .get("TestStartDelayMs")
            .and_then(plist::Value::as_unsigned_integer)
        {
            std::thread::sleep(Duration::from_millis(ms));
        }
        let mut behavior = p
            .get("TestStartBehavior")
            .and_then(plist::Value::as_string)
            .unwrap_or("ok");
        if behavior == "random-fault" {
            behavior = random_fault();
        }
        driverkit::info!("start: behaving {behavior:?}");
        match behavior {
            "fail" => return Err(IOReturn::ERROR),
            "panic" => panic!("TestDriver was told to panic in Start"),
            "abort" => std::process::abort(),
            "kill-self" => {
                let me = rustix::process::getpid();
                let _ = rustix::process::kill_process(me, rustix::process::Signal::KILL);
            }
            "hang" => loop {
                std::thread::sleep(Duration::from_secs(3600));
            },
            "hoard" => {
                // 10 GiB, every page written: past the sandbox's memory
                // limit the allocation fails and the runtime aborts.
                let hoard = vec![1u8; 10 << 30];
                driverkit::info!("hoarded {} bytes", hoard.len());
            }
            "spew" => {
                use std::io::Write;
                let mut err = std::io::stderr().lock();
                let _ = err.write_all(&[0xff, 0xfe, b'x', 0xc3]);
                let _ = err.write_all(&vec![b'y'; 1 << 20]);
                let _ = err.write_all(b"\n");
                drop(err);
                driverkit::info!("after the spew");
            }
            "hog" => {
                let mut statuses = Vec::new();
                let mut kept = Vec::new();
                for _ in 0..2 {
                    let buffer = IOBufferMemoryDescriptor::create(600 << 20)?;
                    let done = self.create_action_read_done(0)?;
                    let status = provider.read_async(&buffer, 16, &done);
                    statuses.push(status.err().and_then(|e| e.name()).unwrap_or("ok"));
                    kept.push((buffer, done));
                }
                self.set_property("TestHogStatus", statuses.join(","))?;
                std::mem::forget(kept);
            }
            "exit0" => std::process::exit(0),
            "pci-bad-input" => {
                let outcomes = super::pci_test::bad_input(provider)?;
                self.set_property("TestPCI", plist::Value::Dictionary(outcomes))?;
            }
            "pci-crash-mid-dma" => {
                if let Some(state) = super::pci_test::crash_mid_dma(provider)? {
                    self.set_property("TestPCIStartState", plist::Value::Dictionary(state))?;
                }
            }
            "threads" => {
                let (hold, wait) = std::sync::mpsc::channel::<()>();
                let wait = std::sync::Arc::new(std::sync::Mutex::new(wait));
                let mut started = 0i64;
                for _ in 0..2000 {
                    let wait = wait.clone();
                    let spawned =
                        std::thread::Builder::new()
                            .stack_size(64 * 1024)
                            .spawn(move || {
                                let _ = wait.lock().map(|w| w.recv());
                            });
                    if spawned.is_err() {
                        break;
                    }
                    started += 1;
                }
                self.set_property("TestThreadsStarted", started)?;
                // The threads stay until the process ends.
                std::mem::forget(hold);
            }
            "channels" => {
                let barrier = std::sync::Arc::new(std::sync::Barrier::new(300));
                let threads: Vec<_> = (0..300)
                    .map(|_| {
                        let me = self.as_service();
                        let barrier = barrier.clone();
                        std::thread::spawn(move || {
                            barrier.wait();
                            let ok = me.copy_property("TestDriverPID").is_ok();
                            // Held until every thread has called, so that
                            // no channel is reused.
                            barrier.wait();
                            ok
                        })
                    })
                    .collect();
                let ok = threads
                    .into_iter()
                    .map(|t| t.join().unwrap_or(false))
                    .filter(|&ok| ok)
                    .count();
                self.set_property("TestChannelCalls", ok as i64)?;
            }
            "socket-flood" => {
                // Calls on the main socket instead of a channel, as fast as
                // the socket takes them: the system answers them one at a
                // time on one worker (the runtime ignores the replies).
                let sent = flood_main_socket(20_000);
                self.set_property("TestSocketFlood", sent as i64)?;
            }
            "close-socket" => {
                // Every descriptor past stdio, the daemon's socket among them.
                for fd in 3..1024 {
                    // SAFETY: the process is meant to lose them; nothing is
                    // used after this but the runtime's own error paths.
                    unsafe { rustix::io::close(fd) };
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            "escape" => {
                let socket = p
                    .get("TestEscapeSocket")
                    .and_then(plist::Value::as_string)
                    .unwrap_or("/run/driverkit/driverkit.sock");
                self.set_property("TestEscape", escape(socket))?;
            }
            _ => {}
        }
        if let Some(len) = p
            .get("TestReadLength")
            .and_then(plist::Value::as_unsigned_integer)
        {
            let buffer = IOBufferMemoryDescriptor::create(len as usize)?;
            let done = self.create_action_read_done(0)?;
            done.set_aborted_handler(|| {
                driverkit::info!("read dropped without completion: aborted handler ran")
            });
            provider.read_async(&buffer, len, &done)?;
            *self.ivars().buffer.locked() = Some(buffer);
        }
        self.set_property("TestDriverStarted", true)?;
        if let Some(ms) = p
            .get("TestTerminateAfterMs")
            .and_then(plist::Value::as_unsigned_integer)
        {
            let me = self.as_service();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(ms));
                driverkit::info!("terminating myself");
                let _ = me.terminate();
            });
        }
        self.register_service()
    }

    fn stop(&self, provider: &IOService) -> IOResult<()> {
        driverkit::info!("stop");
        self.super_stop(provider)
    }

    fn free(&self) {
        driverkit::info!("free");
    }
}

/// One fault in two: which one, by a random draw.
fn random_fault() -> &'static str {
    use std::hash::{BuildHasher, Hasher};
    let draw = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    const FAULTS: [&str; 5] = ["panic", "abort", "exit0", "close-socket", "hang"];
    if draw.is_multiple_of(2) {
        "ok"
    } else {
        FAULTS[(draw / 2 % FAULTS.len() as u64) as usize]
    }
}

/// Tries each thing a sandboxed dext must not do; each outcome is `done`
/// or `refused: <the error>`.
fn escape(control_socket: &str) -> plist::Dictionary {
    fn outcome<T>(r: std::io::Result<T>) -> plist::Value {
        match r {
            Ok(_) => "done".into(),
            Err(e) => format!("refused: {e}").into(),
        }
    }
    let mut out = plist::Dictionary::new();
    out.insert(
        "read /etc/passwd".into(),
        outcome(std::fs::read("/etc/passwd")),
    );
    out.insert(
        "connect control socket".into(),
        outcome(std::os::unix::net::UnixStream::connect(control_socket)),
    );
    out.insert(
        "exec /bin/true".into(),
        outcome(std::process::Command::new("/bin/true").status()),
    );
    out.insert(
        "tcp 127.0.0.1".into(),
        outcome(std::net::TcpStream::connect(("127.0.0.1", 9))),
    );
    // A child that would outlive the dext, holding what it holds.
    // SAFETY: the child only sleeps and exits, with no lock or allocation.
    let forked = match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()),
        0 => {
            // SAFETY: plain sleeps and an exit without unwinding. Long
            // enough that only the dext's end (its cgroup) can end it.
            unsafe {
                libc::sleep(600);
                libc::_exit(0)
            }
        }
        child => Ok(child),
    };
    if let Ok(child) = forked {
        out.insert("fork pid".into(), (child as i64).into());
    }
    out.insert("fork".into(), outcome(forked));
    out.insert(
        "signal pid 1".into(),
        outcome(
            rustix::process::test_kill_process(rustix::process::Pid::INIT)
                .map_err(std::io::Error::from),
        ),
    );
    out.insert(
        "thread".into(),
        outcome(
            std::thread::Builder::new()
                .spawn(|| 7)
                .and_then(|t| t.join().map_err(|_| std::io::Error::other("panicked"))),
        ),
    );
    driverkit::info!("escape attempts: {out:?}");
    out
}

#[driverkit::actions]
impl TestDriver {
    #[action(IOService::CompleteAsync)]
    fn read_done(&self, _action: &OSAction, status: IOReturn, actual: u64) {
        driverkit::info!("read completed: {status} after {actual} bytes");
        // Published together, so that whoever sees the status sees the
        // verdict too.
        let mut outcome = plist::Dictionary::new();
        outcome.insert("TestReadStatus".into(), status.name().unwrap_or("?").into());
        let buffer = self.ivars().buffer.locked().clone();
        if let (Ok(()), Some(buffer)) = (status.into_result(), buffer) {
            // The device wrote byte i as (its entry ID + i), in place.
            let seed = self.provider().registry_entry_id() as u8;
            let mut data = vec![0; actual as usize];
            let verified = buffer
                .create_mapping()
                .and_then(|m| m.read(0, &mut data))
                .is_ok()
                && data
                    .iter()
                    .enumerate()
                    .all(|(i, b)| *b == seed.wrapping_add(i as u8));
            outcome.insert("TestReadVerified".into(), verified.into());
        }
        let _ = self.set_properties(outcome);
    }
}

/// Sends `n` requests for an object the system does not know on this
/// process's main socket (found as its one SOCK_SEQPACKET descriptor);
/// returns how many were sent.
fn flood_main_socket(n: usize) -> usize {
    use std::os::fd::BorrowedFd;
    let socket = (3..1024).find(|&fd| {
        // SAFETY: only looked at; a descriptor that is not open fails.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        rustix::net::sockopt::socket_type(fd) == Ok(rustix::net::SocketType::SEQPACKET)
    });
    let Some(socket) = socket else { return 0 };
    // SAFETY: the runtime keeps the socket open for the process's life.
    let socket = unsafe { BorrowedFd::borrow_raw(socket) };
    let mut message = Vec::new();
    let mut sent = 0;
    for call in 0..n {
        driverkit_wire::Header::request(
            0x4000_0000 | call as u32,
            driverkit_wire::ObjectId(0xdead_0000),
            driverkit_wire::MethodId(1),
            0,
        )
        .emit(&[], &mut message);
        if rustix::net::send(socket, &message, rustix::net::SendFlags::NOSIGNAL).is_err() {
            break;
        }
        sent += 1;
    }
    sent
}

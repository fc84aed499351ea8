//! User servers: the dext processes, and the daemon's end of their sockets.
//!
//! Each process gets a `SOCK_SEQPACKET` socket as descriptor 3. Over it the
//! daemon calls the dext (create, start, stop, free, exit) and the dext
//! sends its `Hello` and opens call channels. The channels are served by
//! the channel pool (`channel_pool`), whose threads answer the dext's calls
//! into the system (`SUPERDISPATCH` and `KERNEL` methods) on the thread the
//! call woke, without any hand-off.
//!
//! The main socket is read by the one thread that reads every dext's
//! (`server_sockets`), the only place where a process's end is noticed: EOF
//! means the process exited or crashed. Then a worker reaps the child,
//! fails every call in flight with `kIOReturnOffline`, and reports to the
//! daemon.

use driverkit_wire::sync::{Locked, Waited};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, Weak};
use std::time::Duration;

use driverkit_wire::channel::{self, ShmChannel};
use driverkit_wire::shm::SharedMemory;
use driverkit_wire::transport::{self, Endpoint, MessageBuf};
use driverkit_wire::{
    Caller, Decoder, Header, IOResult, IOReturn, Kind, MethodId, ObjectId, Packet, Wire,
};

use crate::lifecycle::Inner;
use crate::process::Process;
use crate::sandbox::{Mode, Sandbox};

/// The environment variable that tells a dext its socket's descriptor
/// number (driverkit::runtime::SERVER_FD_ENV; the daemon does not depend on
/// the SDK).
const SERVER_FD_ENV: &str = "DRIVERKIT_SERVER_FD";
/// What one dext may hold of the system, so that no driver can exhaust the
/// daemon: past a limit its call fails with `kIOReturnNoResources` and the
/// log names the limit.
pub(crate) mod limits {
    /// Shared-memory regions registered at once, and their total size.
    pub const MEMORY_REGIONS: usize = 4096;
    pub const MEMORY_BYTES: u64 = 1 << 30;
    /// Asynchronous requests waiting for their completion.
    pub const PENDING_REQUESTS: usize = 4096;
    /// Call channels: one per dext thread that calls the system, so far
    /// more than any driver needs.
    pub const CALL_CHANNELS: usize = 256;
    /// Log lines a second, beyond a burst of twice as many.
    pub const LOG_LINES_PER_SECOND: u32 = 1000;
}

/// The regions a dext registered, by its IDs, and those refused.
#[derive(Default)]
struct Memory {
    regions: HashMap<u64, Arc<SharedMemory>>,
    bytes: u64,
    refused: std::collections::HashSet<u64>,
}

/// The variables of the daemon's environment a dext sees: its log filter
/// and colour choice, and Rust's backtrace switch. Nothing else.
const INHERITED_ENV: [&str; 3] = ["DRIVERKIT_LOG", "NO_COLOR", "RUST_BACKTRACE"];

/// How long a new process has to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

type Pending = HashMap<u32, mpsc::SyncSender<IOResult<Vec<u8>>>>;

/// A user server: one dext process the core started, numbered from 1 in
/// launch order and never reused while the daemon runs. The registry's
/// `Hosting` names it, and every call a dext makes carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct ServerId(u64);

impl ServerId {
    /// The first server.
    pub(crate) const FIRST: ServerId = ServerId(1);

    /// The server launched after this one.
    pub(crate) fn next(self) -> ServerId {
        ServerId(self.0 + 1)
    }

    /// The server a number names, for tests of the families.
    pub const fn from_raw(id: u64) -> ServerId {
        ServerId(id)
    }

    /// The number, for logs and tests.
    pub const fn raw(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for ServerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

/// A running dext process.
pub struct UserServer {
    pub id: ServerId,
    /// `IOUserServerName`.
    pub name: String,
    /// `CFBundleIdentifier` of the dext.
    pub bundle: String,
    pub pid: u32,
    /// True when processes of this server host several services
    /// (`IOUserServerOneProcess`).
    pub one_process: bool,
    main: Endpoint,
    pending: Mutex<Pending>,
    next_call: AtomicU32,
    alive: AtomicBool,
    exit_requested: AtomicBool,
    call_timeout: Duration,
    /// Call channels being served, closed when the process ends so that
    /// their threads end too.
    channels: Mutex<Vec<Arc<ShmChannel>>>,
    /// Shared-memory regions the dext registered, by its IDs.
    memory: Mutex<Memory>,
    memory_arrived: std::sync::Condvar,
    /// Calls that came on the main socket, answered on a worker in order.
    socket_calls: Mutex<SocketCalls>,
}

#[derive(Default)]
struct SocketCalls {
    waiting: std::collections::VecDeque<(Header, Vec<u8>)>,
    /// A worker is answering them.
    running: bool,
}

impl std::fmt::Debug for UserServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (pid {})", self.name, self.pid)
    }
}

/// Everything needed to start a dext process.
pub struct Launch<'a> {
    pub id: ServerId,
    pub name: &'a str,
    pub bundle: &'a str,
    pub executable: &'a Path,
    /// The bundle directory, the one place the dext may read.
    pub bundle_path: &'a Path,
    pub sandbox: &'a Sandbox,
    pub one_process: bool,
    pub call_timeout: Duration,
    /// What the process may use (its personality's ask, within the
    /// administrator's limits).
    pub limits: crate::sandbox::Limits,
}

impl UserServer {
    /// Starts the process, waits for its hello, and starts serving it.
    pub fn spawn(launch: Launch<'_>, daemon: Weak<Inner>) -> std::io::Result<Arc<UserServer>> {
        let (ours, theirs) = transport::socketpair()?;
        // stdout and stderr share one stream socket, drained by one thread.
        let (log_reader, log_writer) = UnixStream::pair()?;
        // The child gets exactly three descriptors, mapped explicitly by the
        // spawn itself (dup2 onto 0, 1 and 2): its socket as stdin (the SDK
        // moves it out of the way at once), its log as stdout and stderr.
        // Every descriptor of the daemon is close-on-exec, and none is ever
        // made inheritable, so however many spawns run at once, no dext can
        // receive another's socket.
        // A dext gets none of the daemon's environment (it may hold what a
        // driver has no business reading), only what the runtime reads.
        let mut env: Vec<(&OsStr, &OsStr)> = Vec::new();
        let inherited: Vec<_> = INHERITED_ENV
            .iter()
            .filter_map(|name| Some((*name, std::env::var_os(name)?)))
            .collect();
        for (name, value) in &inherited {
            env.push((OsStr::new(name), value));
        }
        env.push((OsStr::new(SERVER_FD_ENV), OsStr::new("0")));
        let log_writer = OwnedFd::from(log_writer);
        let spawned = if launch.sandbox.mode() == Mode::Off {
            // Without the sandbox, std can use posix_spawn (vfork).
            let mut cmd = Command::new(launch.executable);
            cmd.env_clear()
                .envs(env.iter().copied())
                .stdin(OwnedFd::from(theirs))
                .stdout(log_writer.try_clone()?)
                .stderr(log_writer)
                // Its own process group: Ctrl-C in the daemon's terminal
                // must reach the daemon only, which then stops every dext
                // in order.
                .process_group(0);
            // The parent's copies of the child's ends close with `cmd`.
            cmd.spawn().map(Process::adopt)
        } else {
            // The child confines itself and execs the dext with exactly
            // `env` (see sandbox::exec).
            let theirs = OwnedFd::from(theirs);
            launch
                .sandbox
                .prepare(launch.executable, launch.bundle_path, &env, launch.limits)
                .and_then(|mut prepared| {
                    prepared.spawn([theirs.as_fd(), log_writer.as_fd(), log_writer.as_fd()])
                })
        };
        let mut child = spawned?;
        let pid = child.id();
        // Started while the child is still exec'ing, off the critical path.
        let label = format!("{}[{pid}]", launch.name);
        launch.sandbox.watch(pid, &label);
        if let Err(e) = crate::dext_log::forward(log_reader, label) {
            tracing::warn!("{}[{pid}]: its log is not forwarded ({e})", launch.name);
        }
        if let Err(e) = wait_hello(&ours, pid) {
            let _ = child.kill();
            let status = child.wait().ok();
            let reason = status.map(describe).unwrap_or_else(|| "unknown".into());
            return Err(std::io::Error::other(format!("{e} (process {reason})")));
        }
        let server = Arc::new(UserServer {
            id: launch.id,
            name: launch.name.to_owned(),
            bundle: launch.bundle.to_owned(),
            pid,
            one_process: launch.one_process,
            main: ours,
            pending: Mutex::new(HashMap::new()),
            next_call: AtomicU32::new(1),
            alive: AtomicBool::new(true),
            exit_requested: AtomicBool::new(false),
            call_timeout: launch.call_timeout,
            channels: Mutex::new(Vec::new()),
            memory: Mutex::new(Memory::default()),
            memory_arrived: std::sync::Condvar::new(),
            socket_calls: Mutex::new(SocketCalls::default()),
        });
        crate::server_sockets::watch(server.clone(), child, daemon)?;
        Ok(server)
    }

    /// False once the process has exited.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// True once the daemon has asked the process to exit.
    pub fn exit_requested(&self) -> bool {
        self.exit_requested.load(Ordering::Acquire)
    }

    /// Asks the process to exit; the reader thread notices the exit.
    pub fn request_exit(&self) {
        self.exit_requested.store(true, Ordering::Release);
        let proxy = driverkit_wire::interfaces::io_user_server_interface::Proxy {
            caller: self,
            object: ObjectId::USER_SERVER,
            flags: 0,
        };
        use driverkit_wire::interfaces::IOUserServerInterface;
        if let Err(e) = proxy.exit() {
            tracing::warn!("{self:?} did not acknowledge exit ({e}); killing it");
            self.kill();
        }
    }

    /// SIGKILL. The server counts as gone from here on, so that whoever is
    /// waiting on it treats its work as crashed, not as failed, even before
    /// the reader thread has seen the process end.
    pub fn kill(&self) {
        self.alive.store(false, Ordering::Release);
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }

    /// The socket the daemon reads.
    pub(crate) fn socket(&self) -> std::os::fd::BorrowedFd<'_> {
        self.main.as_fd()
    }

    /// Handles up to `burst` messages waiting on the main socket, without
    /// blocking. Returns why the process ended once its socket says so.
    pub(crate) fn read_ready(
        self: &Arc<Self>,
        buf: &mut MessageBuf,
        daemon: &Weak<Inner>,
        burst: usize,
    ) -> Option<String> {
        for _ in 0..burst {
            match self.main.try_recv_message(buf) {
                Ok(Some((h, fd))) => self.handle(h, fd, buf, daemon),
                Ok(None) => return Some("closed its connection".to_owned()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // A process that sends garbage is not trusted further.
                    tracing::error!("{self:?} sent a bad message: {e}; killing it");
                    self.kill();
                    return Some(format!("sent a bad message: {e}"));
                }
            }
        }
        None
    }

    fn handle(
        self: &Arc<Self>,
        h: Header,
        fd: Option<OwnedFd>,
        buf: &MessageBuf,
        daemon: &Weak<Inner>,
    ) {
        match h.kind {
            Kind::Reply => {
                let result = h.status.into_result().map(|()| buf.payload().to_vec());
                if let Some(waiter) = self.pending.locked().remove(&h.call) {
                    let _ = waiter.send(result);
                }
            }
            Kind::Channel => {
                let channel = fd
                    .ok_or_else(|| std::io::Error::other("no region passed"))
                    .and_then(|fd| SharedMemory::from_fd(fd, channel::LEN))
                    .and_then(ShmChannel::open);
                let open = self.channels.locked().len();
                match channel {
                    Ok(c) if open >= limits::CALL_CHANNELS => {
                        tracing::warn!(
                            "limit    {self:?}: past {} call channels; the new one is closed and calls on it fail",
                            limits::CALL_CHANNELS
                        );
                        c.close();
                    }
                    Ok(c) => self.serve_channel(Arc::new(c), daemon.clone()),
                    Err(e) => tracing::warn!("{self:?} opened a bad call channel: {e}"),
                }
            }
            Kind::Request | Kind::Oneway => {
                // Calls normally travel on channels; answer anyway, on a
                // worker, as a call may block and this thread reads every
                // dext's socket; one at a time and in order, as the
                // process's own reader thread once did, so that a dext
                // flooding its socket holds one worker, not a thousand.
                let Some(d) = daemon.upgrade() else {
                    let _ = self.main.reply(&h, Err(IOReturn::OFFLINE));
                    return;
                };
                let mut calls = self.socket_calls.locked();
                if calls.waiting.len() >= limits::PENDING_REQUESTS {
                    drop(calls);
                    tracing::warn!(
                        "limit    {self:?}: past {} calls waiting on its socket; refused",
                        limits::PENDING_REQUESTS
                    );
                    let _ = self.main.reply(&h, Err(IOReturn::NO_RESOURCES));
                    return;
                }
                calls.waiting.push_back((h, buf.payload().to_vec()));
                if !std::mem::replace(&mut calls.running, true) {
                    let (server, daemon) = (self.clone(), d.clone());
                    d.io_workers
                        .run(move || server.answer_socket_calls(&daemon));
                }
            }
            Kind::Hello => tracing::warn!("{self:?} said hello twice"),
            Kind::Memory => match fd.map(|fd| SharedMemory::from_fd(fd, 0)) {
                Some(Ok(shm)) => {
                    let mut memory = self.memory.locked();
                    let size = shm.len() as u64;
                    if memory.regions.len() >= limits::MEMORY_REGIONS
                        || memory.bytes + size > limits::MEMORY_BYTES
                    {
                        tracing::warn!(
                            "limit    {self:?}: registered memory past {} regions or {} MiB; region {} ({} KiB) refused",
                            limits::MEMORY_REGIONS,
                            limits::MEMORY_BYTES >> 20,
                            h.object.0,
                            size >> 10
                        );
                        // Remembered so that a call naming it says
                        // why; bounded, as the dext may keep trying.
                        if memory.refused.len() < limits::MEMORY_REGIONS {
                            memory.refused.insert(h.object.0);
                        }
                    } else if let Some(old) = memory.regions.insert(h.object.0, Arc::new(shm)) {
                        memory.bytes = memory.bytes - old.len() as u64 + size;
                    } else {
                        memory.bytes += size;
                    }
                    drop(memory);
                    self.memory_arrived.notify_all();
                }
                Some(Err(e)) => tracing::warn!("{self:?} registered bad memory: {e}"),
                None => tracing::warn!("{self:?} registered memory without a region"),
            },
        }
    }

    /// Answers the calls that came on the main socket, in order, until none
    /// is left.
    fn answer_socket_calls(&self, daemon: &Arc<Inner>) {
        loop {
            let next = {
                let mut calls = self.socket_calls.locked();
                let next = calls.waiting.pop_front();
                calls.running = next.is_some();
                next
            };
            let Some((h, args)) = next else { return };
            let result = daemon.kernel_call(self.id, &h, &args, &mut Default::default());
            let _ = self.main.reply(&h, result);
        }
    }

    /// The process's end: its channels closed, its calls failed, the
    /// process reaped (which may take a grace period), the daemon told.
    pub(crate) fn ended(self: Arc<Self>, mut child: Process, end: &str, daemon: &Weak<Inner>) {
        self.alive.store(false, Ordering::Release);
        for channel in self.channels.locked().drain(..) {
            channel.close();
        }
        for (_, waiter) in self.pending.locked().drain() {
            let _ = waiter.send(Err(IOReturn::OFFLINE));
        }
        let status = reap(&mut child, end);
        if let Some(d) = daemon.upgrade() {
            d.sandbox.forget(self.pid);
            d.server_exited(&self, &status);
        }
    }

    fn serve_channel(&self, channel: Arc<ShmChannel>, daemon: Weak<Inner>) {
        let server = self.id;
        self.channels.locked().push(channel.clone());
        let mut own = crate::io_service::OwnRoutes::new();
        let handler = move |request: &[u8], reply: &mut Vec<u8>| {
            let header = match Header::parse(&Packet::new_unchecked(request)) {
                Ok(h) if h.kind == Kind::Request => h,
                _ => {
                    // Not a call: answer with an error the caller can see.
                    Header::emit_reply(
                        &Header::new(Kind::Request),
                        &Err(IOReturn::BAD_ARGUMENT),
                        reply,
                    );
                    return;
                }
            };
            let result = match daemon.upgrade() {
                Some(d) => d.kernel_call(
                    server,
                    &header,
                    &request[driverkit_wire::HEADER_LEN..],
                    &mut own,
                ),
                None => Err(IOReturn::OFFLINE),
            };
            Header::emit_reply(&header, &result, reply);
        };
        crate::channel_pool::serve(channel, Box::new(handler));
    }
}

impl UserServer {
    /// The region the dext registered as `id`. The registration travels on
    /// the main socket and the call naming it on a call channel, so the call
    /// may arrive first: wait briefly for it.
    pub fn memory(&self, id: u64) -> IOResult<Arc<SharedMemory>> {
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        let mut table = self.memory.locked();
        loop {
            if let Some(m) = table.regions.get(&id) {
                return Ok(m.clone());
            }
            if table.refused.contains(&id) {
                return Err(IOReturn::NO_RESOURCES);
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || !self.is_alive() {
                return Err(IOReturn::BAD_ARGUMENT);
            }
            table = self.memory_arrived.waited_timeout(table, left).0;
        }
    }
}

/// A request on its way: wait for it with [`UserServer::wait`].
pub struct InFlight {
    call: u32,
    method: MethodId,
    reply: mpsc::Receiver<IOResult<Vec<u8>>>,
}

impl UserServer {
    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.locked()
    }

    /// Hands `shm` to the dext (a `Memory` message on the main socket, the
    /// descriptor as `SCM_RIGHTS`), under a new ID of the system's.
    pub fn give_memory(&self, shm: std::os::fd::BorrowedFd<'_>) -> IOResult<u64> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        if !self.is_alive() {
            return Err(IOReturn::OFFLINE);
        }
        let id = driverkit_wire::SYSTEM_MEMORY | NEXT.fetch_add(1, Ordering::Relaxed);
        let mut h = Header::new(Kind::Memory);
        h.object = ObjectId(id);
        self.main
            .send(&h, &[], Some(shm))
            .map_err(|_| IOReturn::OFFLINE)?;
        Ok(id)
    }

    /// Sends a request without waiting for its reply.
    pub fn send_request(
        &self,
        object: ObjectId,
        method: MethodId,
        flags: u8,
        args: &[u8],
    ) -> IOResult<InFlight> {
        self.send_request_with(object, method, flags, args, None)
    }

    /// A call that passes a descriptor along (`connect`'s socket).
    pub fn call_with_fd(
        &self,
        object: ObjectId,
        method: MethodId,
        args: &[u8],
        fd: std::os::fd::BorrowedFd<'_>,
    ) -> IOResult<Vec<u8>> {
        let request = self.send_request_with(object, method, 0, args, Some(fd))?;
        self.wait(request)
    }

    fn send_request_with(
        &self,
        object: ObjectId,
        method: MethodId,
        flags: u8,
        args: &[u8],
        fd: Option<std::os::fd::BorrowedFd<'_>>,
    ) -> IOResult<InFlight> {
        if !self.is_alive() {
            return Err(IOReturn::OFFLINE);
        }
        let call = self.next_call.fetch_add(1, Ordering::Relaxed);
        let (tx, reply) = mpsc::sync_channel(1);
        self.pending().insert(call, tx);
        let h = Header::request(call, object, method, flags);
        if self.main.send(&h, args, fd).is_err() {
            self.pending().remove(&call);
            return Err(IOReturn::OFFLINE);
        }
        Ok(InFlight {
            call,
            method,
            reply,
        })
    }

    /// Waits for a request's reply. A dext that does not answer within the
    /// call timeout is killed as hung.
    pub fn wait(&self, request: InFlight) -> IOResult<Vec<u8>> {
        match request.reply.recv_timeout(self.call_timeout) {
            Ok(result) => result,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                self.pending().remove(&request.call);
                let name = driverkit_wire::method_name(request.method).unwrap_or("a method");
                tracing::error!(
                    "{self:?} did not answer {name} within {:?}; killing it as hung",
                    self.call_timeout
                );
                self.kill();
                Err(IOReturn::TIMEOUT)
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(IOReturn::OFFLINE),
        }
    }
}

impl Caller for UserServer {
    fn call(
        &self,
        object: ObjectId,
        method: MethodId,
        flags: u8,
        args: &[u8],
    ) -> IOResult<Vec<u8>> {
        let request = self.send_request(object, method, flags, args)?;
        self.wait(request)
    }
}

/// Sends calls back to back without waiting, then collects their results in
/// order: the daemon sends `create` and `start` together, since the dext runs
/// them in order on the service's queue anyway, saving a round trip on every
/// driver start. Only for methods that return `()`: each call answers
/// "nothing yet" at once.
pub struct Batch<'a> {
    server: &'a UserServer,
    sent: std::cell::RefCell<Vec<IOResult<InFlight>>>,
}

impl<'a> Batch<'a> {
    pub fn new(server: &'a UserServer) -> Self {
        Batch {
            server,
            sent: Default::default(),
        }
    }

    /// The results of every call made through this caller, in order.
    pub fn finish(self) -> Vec<IOResult<()>> {
        self.sent
            .into_inner()
            .into_iter()
            .map(|sent| driverkit_wire::decode_reply::<()>(&self.server.wait(sent?)?))
            .collect()
    }
}

impl Caller for Batch<'_> {
    fn call(
        &self,
        object: ObjectId,
        method: MethodId,
        flags: u8,
        args: &[u8],
    ) -> IOResult<Vec<u8>> {
        self.sent
            .borrow_mut()
            .push(self.server.send_request(object, method, flags, args));
        Ok(Vec::new())
    }
}

fn wait_hello(endpoint: &Endpoint, pid: u32) -> std::io::Result<()> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let mut fds = [PollFd::new(endpoint, PollFlags::IN)];
    let timeout = Timespec {
        tv_sec: HELLO_TIMEOUT.as_secs() as i64,
        tv_nsec: 0,
    };
    if poll(&mut fds, Some(&timeout))? == 0 {
        return Err(std::io::Error::other(format!(
            "pid {pid} did not say hello within {HELLO_TIMEOUT:?}"
        )));
    }
    let mut buf = MessageBuf::default();
    match endpoint.recv_message(&mut buf)? {
        Some((h, _)) if h.kind == Kind::Hello => {
            let said = u32::decode(&mut Decoder::new(buf.payload())).unwrap_or(0);
            if said != pid {
                tracing::warn!("pid {pid} introduced itself as pid {said}");
            }
            Ok(())
        }
        Some((h, _)) => Err(std::io::Error::other(format!(
            "pid {pid} sent {:?} before hello",
            h.kind
        ))),
        None => Err(std::io::Error::other(format!(
            "pid {pid} exited before saying hello"
        ))),
    }
}

/// Waits for the child after its socket closed; a process that closed the
/// socket but lingers is killed after a grace period.
fn reap(child: &mut Process, end: &str) -> String {
    for _ in 0..200 {
        if let Ok(Some(status)) = child.try_wait() {
            return describe(status);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    tracing::warn!("pid {} {end} but did not exit; killing it", child.id());
    let _ = child.kill();
    child
        .wait()
        .map(describe)
        .unwrap_or_else(|e| format!("could not be reaped: {e}"))
}

/// `exited with status 0`, `killed by SIGKILL`...
pub fn describe(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with status {code}");
    }
    match status.signal() {
        Some(sig) => {
            let name = match sig {
                6 => "SIGABRT",
                9 => "SIGKILL",
                11 => "SIGSEGV",
                15 => "SIGTERM",
                2 => "SIGINT",
                _ => "",
            };
            if status.core_dumped() {
                format!("killed by signal {sig} {name} (core dumped)")
            } else {
                format!("killed by signal {sig} {name}")
            }
        }
        None => format!("{status}"),
    }
}

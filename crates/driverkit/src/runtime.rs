//! The dext side of the process boundary: creating service instances,
//! routing the system's calls onto their queues, and carrying the driver's
//! calls to the system.
//!
//! Threads: the main thread reads the control socket the daemon handed over;
//! each service's `Default` queue runs that service's methods. Calls into
//! the system travel on call channels (shared-memory regions that travel to
//! the daemon once, where the daemon's channel pool serves them: a pool
//! thread leads a shard of channels, answers the one that called, spins
//! briefly for its next call and then parks; `driverkit-core::channel_pool`):
//! a thread keeps the channel it used last,
//! and otherwise takes one from a pool, so a call takes no lock and makes no
//! hand-off between threads. One channel is opened right after hello, so
//! the first `super_start` does not wait for one.

use driverkit_wire::sync::{Locked, Waited};
use std::collections::HashMap;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex, OnceLock};

use driverkit_wire::channel::{ChannelError, ShmChannel};
use driverkit_wire::interfaces::{io_user_server_interface, IOUserServerInterface};
use driverkit_wire::transport::{Endpoint, MessageBuf};
use driverkit_wire::{
    Caller, Encoder, Header, IOResult, IOReturn, Kind, MethodId, ObjectId, Packet, Wire,
};

use crate::action::{ActionArgs, OSAction};
use crate::queue::IODispatchQueue;
use crate::service::{IOService, IOServiceImpl};

/// The environment variable holding the number of the socket the daemon
/// hands to a dext.
pub const SERVER_FD_ENV: &str = "DRIVERKIT_SERVER_FD";

/// Implemented by `#[driverkit::service]`; connects a driver's type to the
/// runtime. Not implemented by hand.
pub trait Service: Sized + Send + Sync + 'static {
    /// The driver's state, allocated by `init`.
    type Ivars: Send + Sync + 'static;
    /// The system class this service extends.
    type Superclass: ClassDispatch<Self>;
    /// The Rust type name, matched against a personality's `IOUserClass`.
    const CLASS_NAME: &'static str;
    #[doc(hidden)]
    fn from_base(base: ServiceBase<Self::Ivars>) -> Self;
    #[doc(hidden)]
    fn base(&self) -> &ServiceBase<Self::Ivars>;

    /// The driver's state. Available from the end of `init` until the
    /// service is released after `free`.
    ///
    /// # Panics
    /// When called inside `init`, before the ivars exist.
    fn ivars(&self) -> &Self::Ivars {
        self.base()
            .ivars
            .get()
            .expect("ivars used before init returned them")
    }

    /// The provider this service was started on.
    fn provider(&self) -> IOService {
        IOService::from_id(self.base().provider)
    }

    /// The registry entry ID of this service.
    fn registry_entry_id(&self) -> u64 {
        self.base().object.0
    }

    /// A handle on this service that can be sent to other threads, for
    /// example to call `terminate` later.
    fn as_service(&self) -> IOService {
        IOService::from_id(self.base().object)
    }

    /// The properties the service was created with: its personality, merged
    /// into the registry entry by the system.
    fn personality(&self) -> &plist::Dictionary {
        &self.base().properties
    }

    /// Names a queue for the methods declared with `queue = "name"`
    /// (DriverKit's `SetDispatchQueue`). `Default` is set by the system.
    fn set_dispatch_queue(&self, name: &str, queue: IODispatchQueue) {
        self.base().queues.locked().insert(name.to_owned(), queue);
    }

    /// The queue set under `name`; `kIOReturnNotFound` if none.
    fn copy_dispatch_queue(&self, name: &str) -> IOResult<IODispatchQueue> {
        self.base()
            .queues
            .locked()
            .get(name)
            .cloned()
            .ok_or(IOReturn::NOT_FOUND)
    }
}

/// Routes the system's calls to the methods a superclass lets a driver
/// override. Implemented by each system class for its subclasses.
pub trait ClassDispatch<S> {
    /// Runs `method` on `service`; `None` when the class has no such method.
    fn dispatch(service: &S, method: MethodId, args: &[u8]) -> Option<IOResult<Vec<u8>>>;
}

/// What every service instance holds, hidden inside the struct that
/// `#[driverkit::service]` generates.
pub struct ServiceBase<I> {
    object: ObjectId,
    provider: ObjectId,
    properties: plist::Dictionary,
    ivars: OnceLock<I>,
    queues: Mutex<HashMap<String, IODispatchQueue>>,
    me: std::sync::Weak<dyn std::any::Any + Send + Sync>,
    /// What the superclass's family keeps per instance (an event service's
    /// open interface).
    family: OnceLock<Arc<dyn std::any::Any + Send + Sync>>,
}

impl<I> ServiceBase<I> {
    /// The family state set by `set_family`, if it is a `T`.
    pub(crate) fn family<T: Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        self.family.get()?.clone().downcast::<T>().ok()
    }

    pub(crate) fn set_family<T: Send + Sync + 'static>(&self, state: Arc<T>) -> IOResult<()> {
        self.family.set(state).map_err(|_| IOReturn::INTERNAL_ERROR)
    }

    /// The service itself, weakly: what actions call.
    pub(crate) fn weak_self(&self) -> Option<std::sync::Weak<dyn std::any::Any + Send + Sync>> {
        (self.me.strong_count() > 0).then(|| self.me.clone())
    }
}

/// A service instance as the runtime sees it, whatever its type.
pub(crate) trait Instance: Send + Sync {
    fn into_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync>;
    fn init(&self) -> IOResult<()>;
    fn free(&self);
    fn dispatch(&self, method: MethodId, args: &[u8]) -> IOResult<Vec<u8>>;
}

impl<S: Service + IOServiceImpl> Instance for S {
    fn into_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync> {
        self
    }
    fn init(&self) -> IOResult<()> {
        let ivars = IOServiceImpl::init(self)?;
        self.base()
            .ivars
            .set(ivars)
            .map_err(|_| IOReturn::INTERNAL_ERROR)
    }
    fn free(&self) {
        IOServiceImpl::free(self)
    }
    fn dispatch(&self, method: MethodId, args: &[u8]) -> IOResult<Vec<u8>> {
        S::Superclass::dispatch(self, method, args).unwrap_or(Err(IOReturn::UNSUPPORTED))
    }
}

/// A class a dext can instantiate; see [`crate::dext_main!`].
pub struct ClassEntry {
    name: &'static str,
    create: fn(Birth) -> Arc<dyn Instance>,
}

/// What a new instance starts with.
struct Birth {
    object: ObjectId,
    provider: ObjectId,
    properties: plist::Dictionary,
    queue: IODispatchQueue,
}

/// The table entry for service type `S`.
pub fn class<S: Service + IOServiceImpl>() -> ClassEntry {
    ClassEntry {
        name: S::CLASS_NAME,
        create: |b: Birth| {
            let mut queues = HashMap::new();
            queues.insert("Default".to_owned(), b.queue);
            Arc::new_cyclic(|me: &std::sync::Weak<S>| {
                S::from_base(ServiceBase {
                    object: b.object,
                    provider: b.provider,
                    properties: b.properties,
                    ivars: OnceLock::new(),
                    queues: Mutex::new(queues),
                    me: me.clone(),
                    family: OnceLock::new(),
                })
            })
        },
    }
}

/// Creates an instance of `S` outside any daemon, with its `Default` queue,
/// and runs its `init`: for unit tests of a driver's own logic. Calls into
/// the system from it fail with `kIOReturnNotReady`.
pub fn instantiate<S: Service + IOServiceImpl>() -> IOResult<Arc<S>> {
    let queue = IODispatchQueue::create("Default")?;
    let instance = (class::<S>().create)(Birth {
        object: ObjectId(0),
        provider: ObjectId(0),
        properties: plist::Dictionary::new(),
        queue: queue.clone(),
    });
    let init = instance.clone();
    queue.dispatch_sync(move || init.init())??;
    let any: Arc<dyn std::any::Any + Send + Sync> = instance.into_any();
    any.downcast::<S>().map_err(|_| IOReturn::INTERNAL_ERROR)
}

impl ClassEntry {
    /// The class name a personality's `IOUserClass` selects.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

struct Hosted {
    instance: Arc<dyn Instance>,
    queue: IODispatchQueue,
}

struct Runtime {
    main: Endpoint,
    classes: Vec<ClassEntry>,
    objects: Mutex<HashMap<ObjectId, Hosted>>,
    /// Idle call channels.
    channels: Mutex<Vec<Channel>>,
    /// A `Default` queue made ahead of the first `create`, while the system
    /// is still busy with its side of the launch.
    spare_queue: Mutex<Option<IODispatchQueue>>,
    /// Completion actions of asynchronous requests in flight, by the ID the
    /// system will complete them with.
    actions: Mutex<HashMap<u64, OSAction>>,
    /// Regions the system handed over, until the call that names them
    /// takes them (see [`take_system_memory`]).
    given: Mutex<HashMap<u64, std::os::fd::OwnedFd>>,
    given_arrived: std::sync::Condvar,
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// The instance hosted as `object` and its queue, for work that reaches it
/// other than through the system's socket (a user client's app).
pub(crate) fn hosted(object: ObjectId) -> Option<(Arc<dyn Instance>, IODispatchQueue)> {
    let rt = RUNTIME.get()?;
    let objects = rt.objects.locked();
    objects
        .get(&object)
        .map(|h| (h.instance.clone(), h.queue.clone()))
}

/// `OSDynamicCast`: the instance of `S` behind `service`, when this
/// process hosts it (a user client reaching the driver that is its
/// provider). `None` for a service of another process or another class.
pub fn dynamic_cast<S: Service>(service: &IOService) -> Option<Arc<S>> {
    let (instance, _) = hosted(ObjectId(service.registry_entry_id()))?;
    instance.into_any().downcast::<S>().ok()
}

/// Runs a dext whose executable holds `classes`; never returns. The daemon
/// starts the executable with its socket as stdin and `DRIVERKIT_SERVER_FD=0`.
pub fn run(classes: Vec<ClassEntry>) -> ! {
    crate::log::init();
    // A panic on any queue is a crash of the dext, as in DriverKit: the
    // process ends, and the system cleans up and relaunches it. Unwinding
    // only the queue's thread would leave a half-dead driver behind.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::exit(101);
    }));
    let Some(main) = inherited_socket() else {
        eprintln!(
            "this program is a DriverKit extension: the driverkit daemon starts it \
             ({SERVER_FD_ENV} is not set to an open socket)"
        );
        std::process::exit(2);
    };
    let rt = RUNTIME.get_or_init(|| Runtime {
        main,
        classes,
        objects: Mutex::new(HashMap::new()),
        channels: Mutex::new(Vec::new()),
        spare_queue: Mutex::new(None),
        actions: Mutex::new(HashMap::new()),
        given: Mutex::new(HashMap::new()),
        given_arrived: std::sync::Condvar::new(),
    });
    let mut hello = Encoder::new();
    std::process::id().encode(&mut hello);
    if rt
        .main
        .send(&Header::new(Kind::Hello), hello.as_bytes(), None)
        .is_err()
    {
        std::process::exit(3);
    }
    if let Ok(first) = Channel::open(rt) {
        rt.channels.locked().push(first);
    }
    let mut buf = MessageBuf::default();
    loop {
        let (header, fd) = match rt.main.recv_message(&mut buf) {
            Ok(Some(m)) => m,
            Ok(None) => {
                tracing::info!("the system closed the connection; exiting");
                std::process::exit(0);
            }
            Err(e) => {
                tracing::error!("bad message from the system: {e}; exiting");
                std::process::exit(4);
            }
        };
        match header.kind {
            Kind::Request | Kind::Oneway if header.object == ObjectId::USER_SERVER => {
                let server = ServerHandler {
                    rt,
                    fd: std::cell::RefCell::new(fd),
                };
                let result =
                    io_user_server_interface::dispatch(&server, header.method, buf.payload())
                        .unwrap_or(Err(IOReturn::UNSUPPORTED));
                rt.reply(&header, result);
                if header.method == io_user_server_interface::EXIT {
                    std::process::exit(0);
                }
            }
            Kind::Request | Kind::Oneway => rt.dispatch_to_service(header, buf.payload()),
            Kind::Memory => match fd {
                Some(fd) => {
                    let mut given = rt.given.locked();
                    given.insert(header.object.0, fd);
                    drop(given);
                    rt.given_arrived.notify_all();
                }
                None => tracing::warn!("the system handed over memory without a region"),
            },
            other => tracing::warn!("ignoring an unexpected {other:?} message from the system"),
        }
    }
}

fn inherited_socket() -> Option<Endpoint> {
    let raw: i32 = std::env::var(SERVER_FD_ENV).ok()?.parse().ok()?;
    if raw == 0 {
        // The daemon hands the socket over as stdin: move it to a
        // close-on-exec descriptor of its own (children of this dext must
        // not inherit the daemon connection), and give stdin /dev/null.
        let fd = rustix::io::fcntl_dupfd_cloexec(rustix::stdio::stdin(), 3).ok()?;
        let null = rustix::fs::open(
            "/dev/null",
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .ok()?;
        rustix::stdio::dup2_stdin(&null).ok()?;
        return Some(Endpoint::new(fd));
    }
    if raw < 3 {
        return None;
    }
    // SAFETY: the daemon passes exactly one descriptor, by number, for this
    // process to own; nothing else in the process refers to it. The fcntl
    // check below refuses a number that is not open.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    rustix::io::fcntl_getfd(&fd).ok()?;
    // Children of this dext must not inherit the daemon connection.
    rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC).ok()?;
    Some(Endpoint::new(fd))
}

impl Runtime {
    fn reply(&self, request: &Header, result: IOResult<Vec<u8>>) {
        if let Err(e) = self.main.reply(request, result) {
            tracing::warn!("could not reply to the system: {e}");
        }
    }

    fn dispatch_to_service(&'static self, header: Header, payload: &[u8]) {
        let objects = self.objects.locked();
        let Some(hosted) = objects.get(&header.object) else {
            drop(objects);
            self.reply(&header, Err(IOReturn::NOT_FOUND));
            return;
        };
        let instance = hosted.instance.clone();
        let args = payload.to_vec();
        let queued = hosted.queue.dispatch_async(move || {
            let result = instance.dispatch(header.method, &args);
            self.reply(&header, result);
        });
        drop(objects);
        if queued.is_err() {
            self.reply(&header, Err(IOReturn::OFFLINE));
        }
    }
}

struct ServerHandler {
    rt: &'static Runtime,
    /// The descriptor that came with the request (`connect`'s socket).
    fd: std::cell::RefCell<Option<OwnedFd>>,
}

impl IOUserServerInterface for ServerHandler {
    fn create(
        &self,
        object: ObjectId,
        user_class: String,
        provider: ObjectId,
        properties: plist::Dictionary,
    ) -> IOResult<()> {
        let Some(entry) = self.rt.classes.iter().find(|c| c.name == user_class) else {
            let known: Vec<_> = self.rt.classes.iter().map(|c| c.name).collect();
            tracing::error!("IOUserClass {user_class:?} is not in this dext (it has {known:?})");
            return Err(IOReturn::NOT_FOUND);
        };
        let spare = self.rt.spare_queue.locked().take();
        let queue = match spare {
            Some(q) => q,
            None => IODispatchQueue::create("Default")?,
        };
        let instance = (entry.create)(Birth {
            object,
            provider,
            properties,
            queue: queue.clone(),
        });
        let init = instance.clone();
        queue.dispatch_sync(move || init.init())??;
        self.rt
            .objects
            .locked()
            .insert(object, Hosted { instance, queue });
        Ok(())
    }

    fn free(&self, object: ObjectId) -> IOResult<()> {
        let hosted = self.rt.objects.locked().remove(&object);
        let Some(Hosted { instance, queue }) = hosted else {
            return Err(IOReturn::NOT_FOUND);
        };
        crate::user_client::forget(object);
        // Completions still owed to this service can never reach it now.
        let orphaned: Vec<OSAction> = {
            let mut actions = self.rt.actions.locked();
            let ids: Vec<u64> = actions
                .iter()
                .filter(|(_, a)| a.owner() == object)
                .map(|(k, _)| *k)
                .collect();
            ids.into_iter().filter_map(|k| actions.remove(&k)).collect()
        };
        for action in orphaned {
            action.abort();
        }
        // free runs on the service's queue after everything queued before
        // it; the instance and its ivars are dropped when the last
        // reference (this closure's) goes.
        let result = queue.dispatch_sync(move || instance.free());
        queue.cancel(|| ());
        result
    }

    fn complete_async(&self, action: u64, status: u32, actual: u64) -> IOResult<()> {
        let action = self.rt.actions.locked().remove(&action);
        let action = action.ok_or(IOReturn::NOT_FOUND)?;
        action.invoke(
            ActionArgs::Completion {
                status: IOReturn(status),
                actual,
            },
            || (),
        )
    }

    fn exit(&self) -> IOResult<()> {
        tracing::debug!("exit requested by the system");
        Ok(())
    }

    fn connect(&self, object: ObjectId, role: u8) -> IOResult<()> {
        let socket = self.fd.borrow_mut().take().ok_or(IOReturn::BAD_ARGUMENT)?;
        crate::user_client::connect(object, role, socket)
    }
}

/// A connection for calls into the system, used by one caller at a time:
/// a call channel in shared memory, whose region travels to the daemon once.
struct Channel {
    shm: ShmChannel,
    request: Vec<u8>,
    reply: Vec<u8>,
    next_call: u32,
}

impl Channel {
    fn open(rt: &Runtime) -> IOResult<Channel> {
        let shm = ShmChannel::create().map_err(|_| IOReturn::NO_RESOURCES)?;
        rt.main
            .send(&Header::new(Kind::Channel), &[], Some(shm.memory().as_fd()))
            .map_err(|_| IOReturn::OFFLINE)?;
        Ok(Channel {
            shm,
            request: Vec::new(),
            reply: Vec::new(),
            next_call: 1,
        })
    }

    fn call(
        &mut self,
        object: ObjectId,
        method: MethodId,
        flags: u8,
        args: &[u8],
    ) -> IOResult<Vec<u8>> {
        let call = self.next_call;
        self.next_call = self.next_call.wrapping_add(1);
        Header::request(call, object, method, flags).emit(args, &mut self.request);
        self.shm
            .call(&self.request, &mut self.reply, None)
            .map_err(|e| match e {
                ChannelError::TooLarge => IOReturn::BAD_ARGUMENT,
                ChannelError::Closed | ChannelError::Corrupt | ChannelError::Timeout => {
                    IOReturn::OFFLINE
                }
            })?;
        let reply = Header::parse(&Packet::new_unchecked(&self.reply[..]))
            .map_err(|_| IOReturn::OFFLINE)?;
        if reply.kind != Kind::Reply || reply.call != call {
            return Err(IOReturn::OFFLINE);
        }
        reply.status.into_result()?;
        Ok(self.reply[driverkit_wire::HEADER_LEN..].to_vec())
    }
}

/// The channel a thread used last, kept for its next call so that the hot
/// path takes no lock; given back to the pool when the thread ends.
struct CachedChannel(Option<Channel>);

impl Drop for CachedChannel {
    fn drop(&mut self) {
        if let (Some(c), Some(rt)) = (self.0.take(), RUNTIME.get()) {
            rt.channels.locked().push(c);
        }
    }
}

thread_local! {
    static CACHED: std::cell::RefCell<CachedChannel> = const { std::cell::RefCell::new(CachedChannel(None)) };
}

/// Keeps `action` until the system completes the request it was sent with;
/// returns the ID the system completes it by.
fn register_action(action: &OSAction) -> IOResult<u64> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let rt = RUNTIME.get().ok_or(IOReturn::NOT_READY)?;
    let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    rt.actions.locked().insert(id, action.clone());
    Ok(id)
}

/// Sends an asynchronous request whose data is in `buffer` and whose
/// completion (`IOService::CompleteAsync`) is `completion`: `send` gets the
/// buffer's memory ID and the action's ID. If the request does not reach
/// the system, the action is forgotten again.
pub(crate) fn submit_async(
    buffer: &crate::memory::IOBufferMemoryDescriptor,
    completion: &OSAction,
    send: impl FnOnce(u64, u64) -> IOResult<()>,
) -> IOResult<()> {
    completion.expect_type("IOService::CompleteAsync")?;
    let memory = buffer.memory_id()?;
    let action = register_action(completion)?;
    let sent = send(memory, action);
    if sent.is_err() {
        unregister_action(action);
    }
    sent
}

/// Forgets an action whose request never reached the system.
fn unregister_action(id: u64) {
    if let Some(rt) = RUNTIME.get() {
        rt.actions.locked().remove(&id);
    }
}

/// Registers a shared-memory region with the system for later calls to name
/// by the returned ID. The region travels over the main socket; the system
/// waits for it if a call naming it overtakes it.
pub(crate) fn register_memory(shm: &driverkit_wire::shm::SharedMemory) -> IOResult<u64> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let rt = RUNTIME.get().ok_or(IOReturn::NOT_READY)?;
    let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut h = Header::new(Kind::Memory);
    h.object = ObjectId(id);
    rt.main
        .send(&h, &[], Some(shm.as_fd()))
        .map_err(|_| IOReturn::OFFLINE)?;
    Ok(id)
}

/// Takes the region the system handed over as `id` (named by a call's
/// answer), waiting briefly: it travels on the main socket, the answer on a
/// call channel, and either may come first.
pub(crate) fn take_system_memory(id: u64) -> IOResult<std::os::fd::OwnedFd> {
    let rt = RUNTIME.get().ok_or(IOReturn::NOT_READY)?;
    if id & driverkit_wire::SYSTEM_MEMORY == 0 {
        return Err(IOReturn::BAD_ARGUMENT);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut given = rt.given.locked();
    loop {
        if let Some(fd) = given.remove(&id) {
            return Ok(fd);
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(IOReturn::TIMEOUT);
        }
        given = rt.given_arrived.waited_timeout(given, left).0;
    }
}

/// Carries the driver's calls to the system over a call channel: the one
/// this thread used last, else one from the pool, else a new one. A
/// family's client side makes its `Proxy` with it (`caller: &SystemCaller`).
pub struct SystemCaller;

impl Caller for SystemCaller {
    fn call(
        &self,
        object: ObjectId,
        method: MethodId,
        flags: u8,
        args: &[u8],
    ) -> IOResult<Vec<u8>> {
        let rt = RUNTIME.get().ok_or(IOReturn::NOT_READY)?;
        // Taken out for the length of the call: a call made from inside
        // another (there are none today) would simply use a second channel.
        let cached = CACHED.with(|c| c.borrow_mut().0.take());
        let mut channel = match cached {
            Some(c) => c,
            None => match rt.channels.locked().pop() {
                Some(c) => c,
                None => Channel::open(rt)?,
            },
        };
        let result = channel.call(object, method, flags, args);
        // A channel whose peer is gone is dropped, not kept.
        if result != Err(IOReturn::OFFLINE) {
            let spare = CACHED.with(|c| c.borrow_mut().0.replace(channel));
            if let Some(spare) = spare {
                rt.channels.locked().push(spare);
            }
        }
        result
    }
}

/// Defines `main` for a dext holding the listed service types.
///
/// ```text
/// driverkit::dext_main!(NullDriver);
/// ```
#[macro_export]
macro_rules! dext_main {
    ($($class:ty),+ $(,)?) => {
        fn main() {
            // The project this executable was built from, for `driverkit
            // build` to check: a target directory shared between projects
            // may hand one project another's build.
            static BUILT_FROM: &str = ::std::concat!(
                "driverkit-built-from:",
                ::std::env!("CARGO_MANIFEST_DIR"),
                "\0"
            );
            ::std::hint::black_box(BUILT_FROM);
            $crate::runtime::run(::std::vec![$($crate::runtime::class::<$class>()),+])
        }
    };
}

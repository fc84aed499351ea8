//! `IOUserClient`: the door through which a driver's own app reaches it.
//!
//! An app opens a service (`IOServiceOpen(type)`); the service's
//! `new_user_client(type)` names a dictionary of its personality
//! (`UserClientProperties` by default: `IOClass` = `IOUserUserClient`,
//! `IOUserClass` = the dext's class); the system creates that user client
//! in this process, starts it, and hands the app and the dext a direct socket pair:
//! calls from then on go straight from the app to this process. Each call
//! runs [`IOUserClientImpl::external_method`] on the user client's queue;
//! [`dispatch_external_method`] checks a call against a typed table first.
//! When the app closes the connection or dies, the system stops and frees
//! the user client, so a driver releases in `stop` what it held for the
//! app.
//!
//! ```
//! use driverkit::prelude::*;
//! use driverkit::user_client::*;
//!
//! #[driverkit::service(superclass = IOUserClient, ivars = ())]
//! pub struct Adder;
//!
//! impl IOServiceImpl for Adder {
//!     fn init(&self) -> IOResult<()> { Ok(()) }
//! }
//!
//! fn add(_: &Adder, args: &mut IOUserClientMethodArguments) -> IOResult<()> {
//!     args.scalar_output = vec![args.scalar_input[0] + args.scalar_input[1]];
//!     Ok(())
//! }
//!
//! impl IOUserClientImpl for Adder {
//!     fn external_method(&self, selector: u64, args: &mut IOUserClientMethodArguments) -> IOResult<()> {
//!         const METHODS: &[IOUserClientMethodDispatch<Adder>] = &[IOUserClientMethodDispatch {
//!             function: add,
//!             check_completion_exists: false,
//!             check_scalar_input_count: 2,
//!             check_structure_input_size: 0,
//!             check_scalar_output_count: 1,
//!             check_structure_output_size: 0,
//!         }];
//!         dispatch_external_method(self, selector, args, METHODS)
//!     }
//! }
//! ```

use driverkit_wire::sync::Locked;
use std::cell::Cell;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, Weak};

use driverkit_wire::channel::ShmChannel;
use driverkit_wire::codec::{Decoder, Encoder, Wire};
use driverkit_wire::interfaces::{io_service_interface, io_user_client_interface};
use driverkit_wire::transport::Endpoint;
use driverkit_wire::user_client::{
    Call, CallOutputs, ChannelAnswer, Completion, FLAG_ASYNC, MAX_SCALARS, SELECTOR_CHANNEL,
    SELECTOR_MAP_MEMORY,
};
use driverkit_wire::{Header, IOResult, IOReturn, MethodId, ObjectId};

use crate::memory::{IOBufferMemoryDescriptor, IOMemoryDescriptor};
use crate::runtime::ClassDispatch;
use crate::service::{IOService, IOServiceImpl};

/// The superclass of a dext's user client:
/// `#[driverkit::service(superclass = IOUserClient, ...)]`.
pub struct IOUserClient;

/// A structure size a dispatch entry does not check
/// (`kIOUserClientVariableStructureSize`).
pub const VARIABLE_STRUCTURE_SIZE: u32 = u32::MAX;

/// One call of the app, and what the method answers.
#[derive(Debug, Default)]
pub struct IOUserClientMethodArguments {
    /// The method the app called.
    pub selector: u64,
    /// The app's scalar arguments.
    pub scalar_input: Vec<u64>,
    /// The structure input, whether it came in the message or, when large,
    /// in a memory descriptor (`structure_input_descriptor`).
    pub structure_input: Vec<u8>,
    /// True when `structure_input` came through a memory descriptor.
    pub structure_input_descriptor: bool,
    /// How many scalars the app expects back; fill `scalar_output`.
    pub scalar_output_count: u32,
    /// The method's scalar answers, as many as the app expects.
    pub scalar_output: Vec<u64>,
    /// The most structure bytes the app accepts; fill `structure_output`.
    pub structure_output_maximum_size: u32,
    /// The method's structure answer.
    pub structure_output: Vec<u8>,
    /// For an asynchronous call: complete it, now or later, with
    /// [`IOUserClientCompletion::complete`].
    pub completion: Option<IOUserClientCompletion>,
}

/// The completion of an asynchronous call (DriverKit's `OSAction` passed
/// to `ExternalMethod`, completed with `AsyncCompletion`). Keep it as long
/// as the work runs; completing it after the app has gone does nothing.
#[derive(Debug, Clone)]
pub struct IOUserClientCompletion {
    notify: Weak<Mutex<Option<Endpoint>>>,
    reference: u64,
}

impl IOUserClientCompletion {
    /// `AsyncCompletion(action, status, values)`: sends the app `status`
    /// and up to 16 values. `kIOReturnNotOpen` when the app has closed.
    pub fn complete(&self, status: IOReturn, values: &[u64]) -> IOResult<()> {
        if values.len() > driverkit_wire::user_client::MAX_ASYNC_VALUES {
            return Err(IOReturn::BAD_ARGUMENT);
        }
        let notify = self.notify.upgrade().ok_or(IOReturn::NOT_OPEN)?;
        let guard = notify.locked();
        let endpoint = guard.as_ref().ok_or(IOReturn::NOT_OPEN)?;
        let mut h = Header::new(driverkit_wire::Kind::Oneway);
        h.method = MethodId(self.reference);
        let mut e = Encoder::new();
        Completion {
            status: status.0,
            values: values.to_vec(),
        }
        .encode(&mut e);
        endpoint
            .send(&h, e.as_bytes(), None)
            .map_err(|_| IOReturn::NOT_OPEN)
    }
}

/// One entry of a user client's method table (`IOUserClientMethodDispatch`).
pub struct IOUserClientMethodDispatch<S> {
    /// The method, run with the driver and the call's arguments.
    pub function: fn(&S, &mut IOUserClientMethodArguments) -> IOResult<()>,
    /// The method is asynchronous: a completion must come with the call
    /// (and must not, when false).
    pub check_completion_exists: bool,
    /// How many scalar arguments the method takes, exactly.
    pub check_scalar_input_count: u32,
    /// Bytes of structure input, or [`VARIABLE_STRUCTURE_SIZE`].
    pub check_structure_input_size: u32,
    /// How many scalar answers the method gives, exactly.
    pub check_scalar_output_count: u32,
    /// Bytes of structure output, or [`VARIABLE_STRUCTURE_SIZE`].
    pub check_structure_output_size: u32,
}

/// What a user client implements.
pub trait IOUserClientImpl: IOServiceImpl {
    /// `ExternalMethod`: the app's call. Usually
    /// `dispatch_external_method(self, selector, args, TABLE)`.
    fn external_method(
        &self,
        selector: u64,
        args: &mut IOUserClientMethodArguments,
    ) -> IOResult<()> {
        let _ = (selector, args);
        Err(IOReturn::UNSUPPORTED)
    }

    /// `CopyClientMemoryForType`: memory the app maps with
    /// `IOConnectMapMemory`.
    fn copy_client_memory_for_type(&self, memory_type: u64) -> IOResult<IOBufferMemoryDescriptor> {
        let _ = memory_type;
        Err(IOReturn::UNSUPPORTED)
    }
}

/// Runs `selector` from `table` after checking the call against it:
/// `kIOReturnBadArgument` for an unknown selector, a completion where none
/// belongs (or none where one must be), or scalar counts and structure
/// sizes other than the entry's. A method that fills more output than the
/// app accepts fails the same way.
pub fn dispatch_external_method<S>(
    service: &S,
    selector: u64,
    args: &mut IOUserClientMethodArguments,
    table: &[IOUserClientMethodDispatch<S>],
) -> IOResult<()> {
    let Some(entry) = usize::try_from(selector).ok().and_then(|i| table.get(i)) else {
        refuse(match table.len() {
            0 => format!("selector {selector} is not in the driver's dispatch table (it has none)"),
            n => format!(
                "selector {selector} is not in the driver's dispatch table (it has selectors 0 to {})",
                n - 1
            ),
        });
        return Err(IOReturn::BAD_ARGUMENT);
    };
    let sized =
        |check: u32, actual: usize| check == VARIABLE_STRUCTURE_SIZE || check as usize == actual;
    let ok = entry.check_completion_exists == args.completion.is_some()
        && entry.check_scalar_input_count as usize == args.scalar_input.len()
        && sized(entry.check_structure_input_size, args.structure_input.len())
        && entry.check_scalar_output_count == args.scalar_output_count
        && (entry.check_structure_output_size == VARIABLE_STRUCTURE_SIZE
            || entry.check_structure_output_size <= args.structure_output_maximum_size);
    if !ok {
        // The app sees kIOReturnBadArgument and these words; so does the
        // driver's log.
        let size = |check: u32| {
            if check == VARIABLE_STRUCTURE_SIZE {
                "any size".to_owned()
            } else {
                format!("{check} bytes")
            }
        };
        refuse(format!(
            "selector {selector} expects {} scalar in, {} scalar out, structure in {}, structure out {}, {}; the call had {} scalar in, room for {} scalar out, a {}-byte structure in, room for {} bytes out, {}",
            entry.check_scalar_input_count,
            entry.check_scalar_output_count,
            size(entry.check_structure_input_size),
            size(entry.check_structure_output_size),
            if entry.check_completion_exists { "a completion" } else { "no completion" },
            args.scalar_input.len(),
            args.scalar_output_count,
            args.structure_input.len(),
            args.structure_output_maximum_size,
            if args.completion.is_some() { "a completion" } else { "no completion" },
        ));
        return Err(IOReturn::BAD_ARGUMENT);
    }
    (entry.function)(service, args)?;
    if args.scalar_output.len() > args.scalar_output_count as usize
        || args.structure_output.len() > args.structure_output_maximum_size as usize
    {
        return Err(IOReturn::BAD_ARGUMENT);
    }
    Ok(())
}

thread_local! {
    /// Why the call being dispatched on this thread was refused, for the
    /// app (its reply carries it) and the log.
    static REFUSAL: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Refuses the call being dispatched, in words the app gets with its
/// `kIOReturnBadArgument`.
fn refuse(why: String) {
    tracing::warn!("external method: {why}");
    REFUSAL.with(|r| *r.borrow_mut() = Some(why));
}

thread_local! {
    /// The memfd travelling with the call being dispatched on this thread:
    /// in, a large structure input; out, `CopyClientMemoryForType`'s memory.
    static CALL_FD: std::cell::RefCell<(Option<OwnedFd>, Option<OwnedFd>)> =
        const { std::cell::RefCell::new((None, None)) };
}

impl<S: IOUserClientImpl> ClassDispatch<S> for IOUserClient {
    fn dispatch(service: &S, method: MethodId, args: &[u8]) -> Option<IOResult<Vec<u8>>> {
        match method {
            io_user_client_interface::EXTERNAL_METHOD => Some(external_method(service, args)),
            io_user_client_interface::COPY_CLIENT_MEMORY => Some(copy_memory(service, args)),
            io_service_interface::STOP => {
                // The app is gone: no completion of this user client can
                // reach it any more.
                if let Some(conn) = connection(service.registry_entry_id()) {
                    *conn.notify.locked() = None;
                }
                <IOService as ClassDispatch<S>>::dispatch(service, method, args)
            }
            _ => <IOService as ClassDispatch<S>>::dispatch(service, method, args),
        }
    }
}

fn external_method<S: IOUserClientImpl>(service: &S, payload: &[u8]) -> IOResult<Vec<u8>> {
    let mut spare = SPARE_CALL.with(Cell::take).unwrap_or_default();
    let result = external_method_with(service, payload, &mut spare);
    let ReusedCall { call, args } = &mut *spare;
    args.completion = None;
    // What the method grew is bounded too: a method may push any number
    // of outputs (too many scalars is refused, but their room stays).
    let kept = [
        call.args.structure_input.capacity(),
        args.structure_input.capacity(),
        args.structure_output.capacity(),
        args.scalar_output.capacity() * size_of::<u64>(),
    ];
    if kept.iter().all(|&n| n <= KEEP_BYTES) {
        SPARE_CALL.with(|s| s.set(Some(spare)));
    }
    result
}

/// A call and its method's arguments, kept from the last call on a thread
/// for their vectors: the next call decodes into them and its method fills
/// them, so that a call allocates nothing but its encoded result (itself
/// recycled by the call channel, see [`recycle_result`]). Three
/// allocations per scalar call were a good part of its time in the dext.
#[derive(Default)]
struct ReusedCall {
    call: Call,
    args: IOUserClientMethodArguments,
}

/// The most structure bytes a thread keeps between calls.
const KEEP_BYTES: usize = 4096;

thread_local! {
    static SPARE_CALL: Cell<Option<Box<ReusedCall>>> = const { Cell::new(None) };
    static SPARE_RESULT: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// Gives a call's encoded result back once it has been sent, for the
/// next call on this thread to encode into.
fn recycle_result(result: Vec<u8>) {
    if result.capacity() <= KEEP_BYTES {
        SPARE_RESULT.with(|s| s.set(result));
    }
}

fn external_method_with<S: IOUserClientImpl>(
    service: &S,
    payload: &[u8],
    spare: &mut ReusedCall,
) -> IOResult<Vec<u8>> {
    let ReusedCall { call, args } = spare;
    call.decode_into(&mut Decoder::new(payload))
        .map_err(|_| IOReturn::BAD_ARGUMENT)?;
    let memory = CALL_FD.with(|c| c.borrow_mut().0.take());
    match memory {
        Some(_)
            if call.args.structure_input_length
                > driverkit_wire::user_client::MAX_MEMORY_STRUCT =>
        {
            return Err(IOReturn::BAD_ARGUMENT)
        }
        Some(fd) => {
            let shm = driverkit_wire::shm::SharedMemory::from_fd(
                fd,
                call.args.structure_input_length as usize,
            )
            .map_err(|_| IOReturn::BAD_ARGUMENT)?;
            let mut bytes = vec![0; call.args.structure_input_length as usize];
            if !shm.read(0, &mut bytes) {
                return Err(IOReturn::BAD_ARGUMENT);
            }
            args.structure_input = bytes;
            args.structure_input_descriptor = true;
        }
        None => {
            std::mem::swap(&mut args.structure_input, &mut call.args.structure_input);
            args.structure_input_descriptor = false;
        }
    }
    std::mem::swap(&mut args.scalar_input, &mut call.args.scalar_input);
    args.selector = call.selector;
    args.completion = (call.flags & FLAG_ASYNC != 0).then(|| IOUserClientCompletion {
        notify: connection(service.registry_entry_id())
            .map(|c| Arc::downgrade(&c.notify))
            .unwrap_or_default(),
        reference: call.args.async_reference,
    });
    args.scalar_output_count = call.args.scalar_output_count;
    args.scalar_output.clear();
    args.structure_output_maximum_size = call.args.structure_output_max;
    args.structure_output.clear();
    service.external_method(call.selector, args)?;
    if args.scalar_output.len() > MAX_SCALARS {
        return Err(IOReturn::BAD_ARGUMENT);
    }
    let mut e = Encoder::new();
    CallOutputs {
        scalar_output: &args.scalar_output,
        structure_output: &args.structure_output,
    }
    .encode(&mut e);
    let mut out = SPARE_RESULT.with(Cell::take);
    out.clear();
    out.extend_from_slice(e.as_bytes());
    Ok(out)
}

fn copy_memory<S: IOUserClientImpl>(service: &S, payload: &[u8]) -> IOResult<Vec<u8>> {
    let mut d = Decoder::new(payload);
    let memory_type = u64::decode(&mut d).map_err(|_| IOReturn::BAD_ARGUMENT)?;
    let read_only = bool::decode(&mut d).map_err(|_| IOReturn::BAD_ARGUMENT)?;
    let buffer = service.copy_client_memory_for_type(memory_type)?;
    let fd = buffer.share(read_only)?;
    CALL_FD.with(|c| c.borrow_mut().1 = Some(fd));
    let mut e = Encoder::new();
    (buffer.get_length() as u64).encode(&mut e);
    Ok(e.as_bytes().to_vec())
}

/// A user client's sockets in this process.
pub(crate) struct Connection {
    /// Where completions go; `None` once the app has gone.
    notify: Arc<Mutex<Option<Endpoint>>>,
    /// The call channels the app handed over; closed when the app goes or
    /// the user client is freed (their threads hold the user client).
    channels: Mutex<Vec<Arc<ShmChannel>>>,
}

impl Connection {
    fn close_channels(&self) {
        for c in self.channels.locked().drain(..) {
            c.close();
        }
    }
}

static CONNECTIONS: Mutex<Vec<(u64, Arc<Connection>)>> = Mutex::new(Vec::new());

fn connection(object: u64) -> Option<Arc<Connection>> {
    CONNECTIONS
        .locked()
        .iter()
        .find(|(o, _)| *o == object)
        .map(|(_, c)| c.clone())
}

fn connection_or_new(object: u64) -> Arc<Connection> {
    let mut all = CONNECTIONS.locked();
    if let Some((_, c)) = all.iter().find(|(o, _)| *o == object) {
        return c.clone();
    }
    let c = Arc::new(Connection {
        notify: Arc::new(Mutex::new(None)),
        channels: Mutex::new(Vec::new()),
    });
    all.push((object, c.clone()));
    c
}

/// Forgets a freed user client's connection, and closes its channels.
pub(crate) fn forget(object: ObjectId) {
    let mut gone = Vec::new();
    CONNECTIONS.locked().retain(|(o, c)| {
        if *o == object.0 {
            gone.push(c.clone());
        }
        *o != object.0
    });
    for c in gone {
        c.close_channels();
    }
}

/// The system handed user client `object` a socket (`connect`).
pub(crate) fn connect(object: ObjectId, role: u8, socket: OwnedFd) -> IOResult<()> {
    let endpoint = Endpoint::new(socket);
    match role {
        driverkit_wire::user_client::ROLE_NOTIFICATIONS => {
            *connection_or_new(object.0).notify.locked() = Some(endpoint);
            Ok(())
        }
        driverkit_wire::user_client::ROLE_CALLS => {
            let connection = connection_or_new(object.0);
            std::thread::Builder::new()
                .name(format!("user-client:{:#x}", object.0))
                .spawn(move || serve_calls(object, endpoint, connection))
                .map(drop)
                .map_err(|_| IOReturn::NO_RESOURCES)
        }
        _ => Err(IOReturn::BAD_ARGUMENT),
    }
}

/// Serves the app's calls until it closes its socket: each runs as the
/// user client's work, on this thread when its queue is idle (the common
/// case: no hand-off between the app's call and the method). An app may
/// also hand over a call channel in shared memory, served by a thread of
/// its own that spins between calls like the system's call channels.
fn serve_calls(object: ObjectId, endpoint: Endpoint, connection: Arc<Connection>) {
    let mut buf = driverkit_wire::transport::MessageBuf::default();
    loop {
        let (header, fd) = match endpoint.recv_message(&mut buf) {
            Ok(Some(m)) => m,
            Ok(None) | Err(_) => break,
        };
        if header.kind != driverkit_wire::Kind::Request {
            continue;
        }
        if header.method.0 == SELECTOR_CHANNEL {
            let opened = fd
                .ok_or(IOReturn::BAD_ARGUMENT)
                .and_then(|fd| serve_channel(object, fd));
            let result = opened.map(|c| {
                let mut channels = connection.channels.locked();
                channels.push(c);
                Vec::new()
            });
            if endpoint.reply(&header, result).is_err() {
                break;
            }
            continue;
        }
        let Answered { result, out, why } = handle_call(object, &header, buf.payload(), fd);
        let reply = Header {
            kind: driverkit_wire::Kind::Reply,
            ..header
        };
        let sent = match (&result, &out) {
            (Ok(payload), Some(fd)) => {
                endpoint.send(&reply, payload, Some(std::os::fd::AsFd::as_fd(fd)))
            }
            // A refusal's payload is its reason in words.
            (Err(status), _) if !why.is_empty() => endpoint.send(
                &Header {
                    status: *status,
                    ..reply
                },
                why.as_bytes(),
                None,
            ),
            _ => endpoint.reply(&header, result),
        };
        if sent.is_err() {
            break;
        }
    }
    // The app is gone: so are its channels' threads.
    connection.close_channels();
}

/// Serves a call channel the app created: calls without descriptors. The
/// channel's thread holds the user client from here on (a lookup per call
/// cost as much as the method); freeing the user client closes the
/// channel.
fn serve_channel(object: ObjectId, fd: OwnedFd) -> IOResult<Arc<ShmChannel>> {
    let shm = driverkit_wire::shm::SharedMemory::from_fd(fd, driverkit_wire::channel::LEN)
        .map_err(|_| IOReturn::BAD_ARGUMENT)?;
    let channel = Arc::new(ShmChannel::open(shm).map_err(|_| IOReturn::BAD_ARGUMENT)?);
    let (instance, queue) = crate::runtime::hosted(object).ok_or(IOReturn::NOT_OPEN)?;
    let served = channel.clone();
    std::thread::Builder::new()
        .name(format!("user-client-channel:{:#x}", object.0))
        .spawn(move || {
            // A request is a `Call`: the arguments of ExternalMethod
            // as they are dispatched, so they are not decoded here.
            served.serve(driverkit_wire::shm::SPIN, |request, reply| {
                let method = io_user_client_interface::EXTERNAL_METHOD;
                let answered = run_call(&instance, &queue, method, request, None);
                ChannelAnswer::emit(&answered.result, &answered.why, reply);
                if let Ok(bytes) = answered.result {
                    recycle_result(bytes);
                }
            });
        })
        .map_err(|_| IOReturn::NO_RESOURCES)?;
    Ok(channel)
}

/// One call of the app from its socket (a `Call`, as on a channel, with a
/// descriptor perhaps): run as the user client's work, answered.
fn handle_call(object: ObjectId, header: &Header, payload: &[u8], fd: Option<OwnedFd>) -> Answered {
    let refused = |status| Answered {
        result: Err(status),
        out: None,
        why: String::new(),
    };
    let Some((instance, queue)) = crate::runtime::hosted(object) else {
        return refused(IOReturn::NOT_OPEN);
    };
    if header.method.0 != SELECTOR_MAP_MEMORY {
        let method = io_user_client_interface::EXTERNAL_METHOD;
        return run_call(&instance, &queue, method, payload, fd);
    }
    let Ok(call) = Call::decode(&mut Decoder::new(payload)) else {
        return refused(IOReturn::BAD_ARGUMENT);
    };
    let scalar = |i: usize| call.args.scalar_input.get(i).copied().unwrap_or(0);
    let mut e = Encoder::new();
    scalar(0).encode(&mut e);
    (scalar(1) != 0).encode(&mut e);
    let method = io_user_client_interface::COPY_CLIENT_MEMORY;
    run_call(&instance, &queue, method, e.as_bytes(), fd)
}

/// Runs `method` of a user client (`instance`) with `args` as its
/// work: on this thread when its queue is idle (the common case: no
/// hand-off between the app's call and the method), queued otherwise.
fn run_call(
    instance: &Arc<dyn crate::runtime::Instance>,
    queue: &crate::IODispatchQueue,
    method: MethodId,
    args: &[u8],
    fd: Option<OwnedFd>,
) -> Answered {
    let mut fd = fd;
    match queue.run_here_if_idle(|| dispatch(&**instance, method, args, fd.take())) {
        Ok(r) => r,
        Err(_) => {
            let (instance, args) = (instance.clone(), args.to_vec());
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            let _ = queue.dispatch_async(move || {
                let _ = tx.send(dispatch(&*instance, method, &args, fd));
            });
            rx.recv().unwrap_or(Answered {
                result: Err(IOReturn::OFFLINE),
                out: None,
                why: String::new(),
            })
        }
    }
}

/// Dispatches `method` to `instance` with the call's descriptor in reach
/// of the method (`CALL_FD`), and takes back the one it answers with.
fn dispatch(
    instance: &dyn crate::runtime::Instance,
    method: MethodId,
    args: &[u8],
    fd: Option<OwnedFd>,
) -> Answered {
    CALL_FD.with(|c| *c.borrow_mut() = (fd, None));
    REFUSAL.with(|r| *r.borrow_mut() = None);
    let result = instance.dispatch(method, args);
    let out = CALL_FD.with(|c| {
        let mut c = c.borrow_mut();
        c.0 = None;
        c.1.take()
    });
    let why = REFUSAL.with(|r| r.borrow_mut().take()).unwrap_or_default();
    Answered { result, out, why }
}

/// A dispatched call's answer: its result, the descriptor it answers with,
/// and, refused, why in words.
struct Answered {
    result: IOResult<Vec<u8>>,
    out: Option<OwnedFd>,
    why: String,
}

impl IOBufferMemoryDescriptor {
    /// A descriptor of this buffer's memory for another process: the same
    /// memfd, or a read-only reopening of it that cannot be mapped for
    /// writing.
    pub(crate) fn share(&self, read_only: bool) -> IOResult<OwnedFd> {
        let fd = self.shm_fd().map_err(|_| IOReturn::NO_RESOURCES)?;
        if !read_only {
            return Ok(fd);
        }
        let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
        rustix::fs::open(
            path.as_str(),
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|_| IOReturn::NO_RESOURCES)
    }
}

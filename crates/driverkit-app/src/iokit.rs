//! The IOKit user-space API, in Rust form: find services, read their
//! properties, open a connection to a driver's user client and call it.
//!
//! ```no_run
//! use driverkit_app::iokit::*;
//! use driverkit_app::System;
//!
//! let system = System::default();
//! let service = io_service_get_matching_services(&system, &Matching::name("NullDriver"))?
//!     .into_iter()
//!     .next()
//!     .expect("NullDriver runs");
//! let connection = io_service_open(&system, service, 0)?;
//! let sum = connection.call_scalar_method(0, &[2, 40], 1)?;
//! assert_eq!(sum, [42]);
//! connection.close();
//! # Ok::<(), driverkit_wire::IOReturn>(())
//! ```
//!
//! `io_service_open` asks the daemon, which checks the app's entitlements
//! and brokers a direct socket to the driver's process; every call after
//! that goes straight to the driver.

use driverkit_wire::sync::Locked;
use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use driverkit_wire::channel::ShmChannel;
use driverkit_wire::codec::{Decoder, Encoder, Wire};
use driverkit_wire::transport::{Endpoint, MessageBuf};
use driverkit_wire::user_client::{
    Call, CallInputs, CallResult, ChannelAnswer, Completion, FLAG_ASYNC, FLAG_STRUCT_IN_MEMORY,
    MAX_INLINE_STRUCT, MAX_SCALARS, SELECTOR_CHANNEL, SELECTOR_MAP_MEMORY,
};
use driverkit_wire::{Header, IOReturn, Kind, MethodId, ObjectId};
use plist::{Dictionary, Value};

use crate::System;

/// A registry entry ID (`io_service_t`).
pub type IOService = u64;

/// Which services: by class (the entry's class or a superclass, like
/// `IOServiceMatching`), by name (`IOServiceNameMatching`: the IOUserClass
/// of a dext's service), and by properties (each must be present and
/// equal).
#[derive(Debug, Clone, Default)]
pub struct Matching {
    /// The class the service is (or derives from), `IOProviderClass`-style.
    pub class: Option<String>,
    /// The service's registry name.
    pub name: Option<String>,
    /// Properties the service must have, each with the value given.
    pub properties: Dictionary,
}

impl Matching {
    /// Services of class `class` (`IOServiceMatching`).
    pub fn class(class: &str) -> Matching {
        Matching {
            class: Some(class.into()),
            ..Default::default()
        }
    }

    /// Services named `name` (`IOServiceNameMatching`).
    pub fn name(name: &str) -> Matching {
        Matching {
            name: Some(name.into()),
            ..Default::default()
        }
    }

    /// A matching dictionary as IOKit takes it: `IOProviderClass` (the
    /// class), `IONameMatch` (the name), `IOPropertyMatch` (properties).
    pub fn from_dictionary(d: &Dictionary) -> Matching {
        let text = |k: &str| d.get(k).and_then(Value::as_string).map(str::to_owned);
        Matching {
            class: text("IOProviderClass"),
            name: text("IONameMatch"),
            properties: d
                .get("IOPropertyMatch")
                .and_then(Value::as_dictionary)
                .cloned()
                .unwrap_or_default(),
        }
    }

    /// And this property must equal `value`.
    pub fn property(mut self, key: &str, value: impl Into<Value>) -> Matching {
        self.properties.insert(key.into(), value.into());
        self
    }

    fn matches(&self, entry: &Dictionary) -> bool {
        let text = |k: &str| entry.get(k).and_then(Value::as_string);
        let class_ok = self.class.as_deref().is_none_or(|c| {
            entry
                .get("IOObjectClassChain")
                .and_then(Value::as_array)
                .is_some_and(|chain| chain.iter().any(|v| v.as_string() == Some(c)))
        });
        let name_ok = self
            .name
            .as_deref()
            .is_none_or(|n| text("IORegistryEntryName") == Some(n));
        let registered = entry
            .get("IOServiceState")
            .and_then(Value::as_dictionary)
            .and_then(|s| s.get("registered"))
            .and_then(Value::as_boolean)
            == Some(true);
        registered
            && class_ok
            && name_ok
            && self.properties.iter().all(|(k, v)| entry.get(k) == Some(v))
    }
}

fn status_error(status: u64) -> IOReturn {
    IOReturn(u32::try_from(status).unwrap_or(IOReturn::ERROR.0))
}

/// Every registry entry, flattened, with its properties.
fn entries(system: &System) -> Result<Vec<Dictionary>, IOReturn> {
    let answer = system
        .call(serde_json::json!({ "op": "registry" }))
        .map_err(|_| IOReturn::NOT_READY)?;
    let xml = answer
        .get("plist")
        .and_then(serde_json::Value::as_str)
        .ok_or(IOReturn::INTERNAL_ERROR)?;
    let root = Value::from_reader_xml(xml.as_bytes()).map_err(|_| IOReturn::INTERNAL_ERROR)?;
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(Value::Dictionary(mut d)) = stack.pop() {
        if let Some(Value::Array(children)) = d.remove("IORegistryEntryChildren") {
            stack.extend(children);
        }
        out.push(d);
    }
    Ok(out)
}

fn id_of(d: &Dictionary) -> Option<IOService> {
    d.get("IORegistryEntryID")
        .and_then(Value::as_unsigned_integer)
}

/// `IOServiceGetMatchingServices`: the registered services that match
/// (a service is visible to apps once it calls `register_service`).
pub fn io_service_get_matching_services(
    system: &System,
    matching: &Matching,
) -> Result<Vec<IOService>, IOReturn> {
    let mut ids: Vec<IOService> = entries(system)?
        .iter()
        .filter(|d| matching.matches(d))
        .filter_map(id_of)
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

/// `IORegistryEntryCreateCFProperties`: a service's properties.
pub fn io_registry_entry_properties(
    system: &System,
    service: IOService,
) -> Result<Dictionary, IOReturn> {
    entries(system)?
        .into_iter()
        .find(|d| id_of(d) == Some(service))
        .ok_or(IOReturn::NOT_FOUND)
}

/// What a matching notification reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceNotification {
    /// A matching service started (`kIOFirstMatchNotification`).
    Matched(IOService),
    /// A service that matched left (`kIOTerminatedNotification`).
    Terminated(IOService),
}

/// `IOServiceAddMatchingNotification`: calls `callback` on a thread of its
/// own as matching services appear and go, until the returned handle is
/// dropped or the daemon stops. Services already running are reported
/// first, as IOKit's iterator does when it is armed.
pub fn io_service_add_matching_notification(
    system: &System,
    matching: Matching,
    mut callback: impl FnMut(ServiceNotification) + Send + 'static,
) -> Result<NotificationHandle, IOReturn> {
    let mut stream = system.stream(serde_json::json!({ "op": "lifecycle" }))?;
    let mut known: Vec<IOService> = io_service_get_matching_services(system, &matching)?;
    for s in &known {
        callback(ServiceNotification::Matched(*s));
    }
    let system = system.clone();
    let stopper = stream
        .get_ref()
        .try_clone()
        .map_err(|_| IOReturn::NO_RESOURCES)?;
    std::thread::Builder::new()
        .name("iokit-notifications".into())
        .spawn(move || {
            let mut line = String::new();
            while stream.read_line(&mut line).is_ok_and(|n| n > 0) {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                line.clear();
                if let Some(id) = v.get("started").and_then(serde_json::Value::as_u64) {
                    let matched = io_registry_entry_properties(&system, id)
                        .is_ok_and(|d| matching.matches(&d));
                    if matched && !known.contains(&id) {
                        known.push(id);
                        callback(ServiceNotification::Matched(id));
                    }
                } else if let Some(id) = v.get("removed").and_then(serde_json::Value::as_u64) {
                    if let Some(i) = known.iter().position(|k| *k == id) {
                        known.swap_remove(i);
                        callback(ServiceNotification::Terminated(id));
                    }
                }
            }
        })
        .map_err(|_| IOReturn::NO_RESOURCES)?;
    Ok(NotificationHandle { stream: stopper })
}

/// Keeps a matching notification armed; dropping it stops it.
pub struct NotificationHandle {
    stream: UnixStream,
}

impl Drop for NotificationHandle {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

type Callback = Box<dyn FnOnce(IOReturn, Vec<u64>) + Send>;

/// Completions waiting for their asynchronous call's answer, by reference.
#[derive(Default)]
struct Pending(Mutex<HashMap<u64, Callback>>);

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Callback>> {
        self.0.locked()
    }
}

/// An open connection to a user client (`io_connect_t`).
pub struct IOConnect {
    user_client: u64,
    calls: Mutex<Calls>,
    /// The call channel in shared memory, for calls without descriptors.
    channel: Option<Arc<ShmChannel>>,
    /// Completions waiting for their asynchronous call's answer.
    pending: Arc<Pending>,
    next_reference: std::sync::atomic::AtomicU64,
    /// The daemon connection that stands for this open; closing it closes
    /// the user client.
    control: UnixStream,
}

/// The call socket and what a call reuses: one call at a time holds it,
/// on the socket or on the channel.
struct Calls {
    endpoint: Endpoint,
    buf: MessageBuf,
    next: u32,
    reply: Vec<u8>,
}

thread_local! {
    static LAST_REFUSAL: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

thread_local! {
    static LAST_CALL_REFUSAL: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

fn set_call_refusal(why: &str) {
    LAST_CALL_REFUSAL.with(|r| *r.borrow_mut() = (!why.is_empty()).then(|| why.to_owned()));
}

/// Why the driver refused this thread's last call on a connection, in its
/// words (what the method expects, against what the call had), when it
/// said; `None` after a call that succeeded or a refusal without words.
pub fn last_call_refusal() -> Option<String> {
    LAST_CALL_REFUSAL.with(|r| r.borrow().clone())
}

/// Why the system refused this thread's last `io_service_open`, in words
/// (which entitlement is missing, which signature it wants), where the
/// app can act on it; `None` after an open that succeeded.
pub fn last_open_refusal() -> Option<String> {
    LAST_REFUSAL.with(|r| r.borrow().clone())
}

/// `IOServiceOpen(service, type)`: `kIOReturnNotPermitted` unless this
/// app's entitlements name the driver (or it admits any app);
/// [`last_open_refusal`] then says why.
pub fn io_service_open(
    system: &System,
    service: IOService,
    kind: u32,
) -> Result<IOConnect, IOReturn> {
    let mut control = system.connect().map_err(|_| IOReturn::NOT_READY)?;
    let request = serde_json::json!({ "op": "service_open", "service": service, "kind": kind });
    control
        .write_all(format!("{request}\n").as_bytes())
        .map_err(|_| IOReturn::NOT_READY)?;
    let (answer, fds) = recv_line_with_fds(&control)?;
    let answer: serde_json::Value =
        serde_json::from_str(&answer).map_err(|_| IOReturn::INTERNAL_ERROR)?;
    let ok = answer.get("ok").ok_or(IOReturn::INTERNAL_ERROR)?;
    let status = ok
        .get("status")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(1);
    let reason = ok.get("reason").and_then(serde_json::Value::as_str);
    LAST_REFUSAL.with(|r| *r.borrow_mut() = reason.map(str::to_owned));
    if status != 0 {
        return Err(status_error(status));
    }
    let user_client = ok
        .get("user_client")
        .and_then(serde_json::Value::as_u64)
        .ok_or(IOReturn::INTERNAL_ERROR)?;
    let mut fds = fds.into_iter();
    let (Some(calls), Some(notifications)) = (fds.next(), fds.next()) else {
        return Err(IOReturn::INTERNAL_ERROR);
    };
    let calls = Endpoint::new(calls);
    let channel = open_channel(&calls, user_client).ok().map(Arc::new);
    let pending: Arc<Pending> = Arc::default();
    let waiting = pending.clone();
    let watched = channel.clone();
    std::thread::Builder::new()
        .name("iokit-async".into())
        .spawn(move || {
            serve_completions(Endpoint::new(notifications), waiting);
            // The driver's process is gone: a call waiting on the channel
            // must not wait forever.
            if let Some(c) = watched {
                c.close();
            }
        })
        .map_err(|_| IOReturn::NO_RESOURCES)?;
    Ok(IOConnect {
        user_client,
        calls: Mutex::new(Calls {
            endpoint: calls,
            buf: MessageBuf::default(),
            next: 1,
            reply: Vec::new(),
        }),
        channel,
        pending,
        next_reference: 1.into(),
        control,
    })
}

/// Hands the driver a call channel in shared memory.
fn open_channel(calls: &Endpoint, user_client: u64) -> Result<ShmChannel, IOReturn> {
    let channel = ShmChannel::create().map_err(|_| IOReturn::NO_MEMORY)?;
    let header = Header::request(0, ObjectId(user_client), MethodId(SELECTOR_CHANNEL), 0);
    calls
        .send(&header, &[], Some(channel.memory().as_fd()))
        .map_err(|_| IOReturn::NOT_RESPONDING)?;
    let mut buf = MessageBuf::default();
    match calls.recv_message(&mut buf) {
        Ok(Some((reply, _))) if reply.kind == Kind::Reply && reply.status == IOReturn::SUCCESS => {
            Ok(channel)
        }
        _ => Err(IOReturn::UNSUPPORTED),
    }
}

/// Runs each completion's callback as it arrives; when the driver's end
/// closes, the calls still waiting complete with `kIOReturnAborted`.
fn serve_completions(endpoint: Endpoint, pending: Arc<Pending>) {
    let mut buf = MessageBuf::default();
    while let Ok(Some((header, _))) = endpoint.recv_message(&mut buf) {
        let Ok(c) = Completion::decode(&mut Decoder::new(buf.payload())) else {
            continue;
        };
        let callback = pending.lock().remove(&header.method.0);
        if let Some(callback) = callback {
            callback(IOReturn(c.status), c.values);
        }
    }
    let orphans: Vec<Callback> = pending.lock().drain().map(|(_, c)| c).collect();
    for callback in orphans {
        callback(IOReturn::ABORTED, Vec::new());
    }
}

/// A line and the descriptors that came with it, from a stream socket.
fn recv_line_with_fds(stream: &UnixStream) -> Result<(String, Vec<OwnedFd>), IOReturn> {
    let mut bytes = Vec::new();
    let mut fds = Vec::new();
    let mut chunk = [0u8; 512];
    while !bytes.contains(&b'\n') {
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
        let mut ancillary = rustix::net::RecvAncillaryBuffer::new(&mut space);
        let got = rustix::net::recvmsg(
            stream,
            &mut [std::io::IoSliceMut::new(&mut chunk)],
            &mut ancillary,
            rustix::net::RecvFlags::CMSG_CLOEXEC,
        )
        .map_err(|_| IOReturn::NOT_READY)?;
        for message in ancillary.drain() {
            if let rustix::net::RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        if got.bytes == 0 {
            return Err(IOReturn::NOT_READY);
        }
        bytes.extend_from_slice(&chunk[..got.bytes]);
    }
    Ok((String::from_utf8_lossy(&bytes).into_owned(), fds))
}

impl IOConnect {
    /// The user client's registry entry.
    pub fn user_client(&self) -> IOService {
        self.user_client
    }

    /// `IOConnectCallMethod`: up to 16 scalars each way, a structure in
    /// (larger than 4 KiB travels as shared memory), a structure out of at
    /// most `structure_output_max` bytes.
    pub fn call_method(
        &self,
        selector: u64,
        scalar_input: &[u64],
        structure_input: &[u8],
        scalar_output_count: u32,
        structure_output_max: u32,
    ) -> Result<(Vec<u64>, Vec<u8>), IOReturn> {
        self.call(
            selector,
            scalar_input,
            structure_input,
            scalar_output_count,
            structure_output_max,
            0,
            None,
        )
    }

    /// `IOConnectCallScalarMethod`.
    pub fn call_scalar_method(
        &self,
        selector: u64,
        input: &[u64],
        output_count: u32,
    ) -> Result<Vec<u64>, IOReturn> {
        self.call_method(selector, input, &[], output_count, 0)
            .map(|(s, _)| s)
    }

    /// `IOConnectCallStructMethod`.
    pub fn call_struct_method(
        &self,
        selector: u64,
        input: &[u8],
        output_max: u32,
    ) -> Result<Vec<u8>, IOReturn> {
        self.call_method(selector, &[], input, 0, output_max)
            .map(|(_, s)| s)
    }

    /// `IOConnectCallAsyncMethod`: the call returns at once with its
    /// immediate outputs; `completion` runs, on another thread, with the
    /// status and values the driver completes it with (`kIOReturnAborted`
    /// if the driver goes away first).
    #[allow(clippy::too_many_arguments)]
    pub fn call_async_method(
        &self,
        selector: u64,
        scalar_input: &[u64],
        structure_input: &[u8],
        scalar_output_count: u32,
        structure_output_max: u32,
        completion: impl FnOnce(IOReturn, Vec<u64>) + Send + 'static,
    ) -> Result<(Vec<u64>, Vec<u8>), IOReturn> {
        let reference = self
            .next_reference
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.pending.lock().insert(reference, Box::new(completion));
        let result = self.call(
            selector,
            scalar_input,
            structure_input,
            scalar_output_count,
            structure_output_max,
            reference,
            None,
        );
        if result.is_err() {
            self.pending.lock().remove(&reference);
        }
        result
    }

    /// `IOConnectMapMemory`: the memory of `memory_type` the driver
    /// provides (`CopyClientMemoryForType`), mapped into this process;
    /// read-only when asked (the driver then sends a descriptor that cannot
    /// be mapped for writing).
    pub fn map_memory(&self, memory_type: u64, read_only: bool) -> Result<MappedMemory, IOReturn> {
        let mut fd = None;
        let (lengths, _) = self.call(
            SELECTOR_MAP_MEMORY,
            &[memory_type, read_only as u64],
            &[],
            1,
            0,
            0,
            Some(&mut fd),
        )?;
        let fd = fd.ok_or(IOReturn::INTERNAL_ERROR)?;
        let file = std::fs::File::from(fd);
        let len = file.metadata().map_err(|_| IOReturn::NO_MEMORY)?.len() as usize;
        let _ = lengths;
        let map = if read_only {
            // SAFETY: the region is shared with the driver, which may write
            // it at any time; reads copy out (`read`), never hand out
            // references into it.
            Mapping::ReadOnly(
                unsafe { memmap2::Mmap::map(&file) }.map_err(|_| IOReturn::NO_MEMORY)?,
            )
        } else {
            // SAFETY: as above; writes copy in (`write`).
            Mapping::ReadWrite(
                unsafe { memmap2::MmapMut::map_mut(&file) }.map_err(|_| IOReturn::NO_MEMORY)?,
            )
        };
        Ok(MappedMemory { map, len })
    }

    /// `IOServiceClose`: the driver's user client stops.
    pub fn close(self) {
        drop(self);
    }

    #[allow(clippy::too_many_arguments)]
    fn call(
        &self,
        selector: u64,
        scalar_input: &[u64],
        structure_input: &[u8],
        scalar_output_count: u32,
        structure_output_max: u32,
        async_reference: u64,
        fd_out: Option<&mut Option<OwnedFd>>,
    ) -> Result<(Vec<u64>, Vec<u8>), IOReturn> {
        if scalar_input.len() > MAX_SCALARS || scalar_output_count as usize > MAX_SCALARS {
            return Err(IOReturn::BAD_ARGUMENT);
        }
        let mut flags = 0;
        if async_reference != 0 {
            flags |= FLAG_ASYNC;
        }
        if structure_input.len() as u64 > driverkit_wire::user_client::MAX_MEMORY_STRUCT {
            return Err(IOReturn::BAD_ARGUMENT);
        }
        let large = structure_input.len() > MAX_INLINE_STRUCT;
        let memory = if large {
            flags |= FLAG_STRUCT_IN_MEMORY;
            let shm = driverkit_wire::shm::SharedMemory::create(
                "IOConnectCallMethod",
                structure_input.len(),
            )
            .map_err(|_| IOReturn::NO_MEMORY)?;
            shm.write(0, structure_input);
            Some(shm)
        } else {
            None
        };
        let inputs = CallInputs {
            scalar_input,
            structure_input: if large { &[] } else { structure_input },
            structure_input_length: if large {
                structure_input.len() as u64
            } else {
                0
            },
            scalar_output_count,
            structure_output_max,
            async_reference,
        };
        let mut e = Encoder::new();
        let mut guard = self.calls.locked();
        let Calls {
            endpoint,
            buf,
            next,
            reply,
        } = &mut *guard;
        Call::encode_inputs(selector, flags, &inputs, &mut e);
        if let (Some(channel), None, None) = (&self.channel, &memory, &fd_out) {
            channel
                .call(e.as_bytes(), reply, None)
                .map_err(|_| IOReturn::NOT_RESPONDING)?;
            let answer = ChannelAnswer::decode(&mut Decoder::new(reply))
                .map_err(|_| IOReturn::INTERNAL_ERROR)?;
            if answer.status != IOReturn::SUCCESS.0 {
                set_call_refusal(&answer.refusal);
                return Err(IOReturn(answer.status));
            }
            set_call_refusal("");
            return Ok((answer.result.scalar_output, answer.result.structure_output));
        }
        let call = *next;
        *next = next.wrapping_add(1);
        let header = Header::request(call, ObjectId(self.user_client), MethodId(selector), flags);
        endpoint
            .send(&header, e.as_bytes(), memory.as_ref().map(|m| m.as_fd()))
            .map_err(|_| IOReturn::NOT_RESPONDING)?;
        loop {
            // The driver's end closing (its process died) is an error, not
            // a hang.
            let (reply, fd) = match endpoint.recv_message(buf) {
                Ok(Some(m)) => m,
                _ => return Err(IOReturn::NOT_RESPONDING),
            };
            if reply.kind != Kind::Reply || reply.call != call {
                continue;
            }
            if reply.status != IOReturn::SUCCESS {
                // A refusal's payload is the driver's reason in words.
                set_call_refusal(&String::from_utf8_lossy(buf.payload()));
                return Err(reply.status);
            }
            set_call_refusal("");
            if let Some(out) = fd_out {
                *out = fd;
                let mut d = Decoder::new(buf.payload());
                let len = u64::decode(&mut d).map_err(|_| IOReturn::INTERNAL_ERROR)?;
                return Ok((vec![len], Vec::new()));
            }
            let result = CallResult::decode(&mut Decoder::new(buf.payload()))
                .map_err(|_| IOReturn::INTERNAL_ERROR)?;
            return Ok((result.scalar_output, result.structure_output));
        }
    }
}

impl Drop for IOConnect {
    fn drop(&mut self) {
        if let Some(c) = &self.channel {
            c.close();
        }
        let _ = self.control.write_all(b"{\"op\":\"service_close\"}\n");
        let _ = self.control.shutdown(std::net::Shutdown::Both);
    }
}

enum Mapping {
    ReadOnly(memmap2::Mmap),
    ReadWrite(memmap2::MmapMut),
}

/// Memory a driver shares with this app.
pub struct MappedMemory {
    map: Mapping,
    len: usize,
}

impl MappedMemory {
    /// The mapping's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where the memory is mapped in this process, for a C caller
    /// (`IOConnectMapMemory64`'s address); valid while this lives.
    pub fn as_ptr(&self) -> *const u8 {
        match &self.map {
            Mapping::ReadOnly(m) => m.as_ptr(),
            Mapping::ReadWrite(m) => m.as_ptr(),
        }
    }

    /// Copies `out.len()` bytes from `offset`.
    pub fn read(&self, offset: usize, out: &mut [u8]) -> Result<(), IOReturn> {
        let bytes: &[u8] = match &self.map {
            Mapping::ReadOnly(m) => m,
            Mapping::ReadWrite(m) => m,
        };
        let end = offset
            .checked_add(out.len())
            .ok_or(IOReturn::BAD_ARGUMENT)?;
        out.copy_from_slice(bytes.get(offset..end).ok_or(IOReturn::BAD_ARGUMENT)?);
        Ok(())
    }

    /// Copies `data` in at `offset`; `kIOReturnNotPermitted` on a read-only
    /// mapping.
    pub fn write(&mut self, offset: usize, data: &[u8]) -> Result<(), IOReturn> {
        let Mapping::ReadWrite(m) = &mut self.map else {
            return Err(IOReturn::NOT_PERMITTED);
        };
        let end = offset
            .checked_add(data.len())
            .ok_or(IOReturn::BAD_ARGUMENT)?;
        m.get_mut(offset..end)
            .ok_or(IOReturn::BAD_ARGUMENT)?
            .copy_from_slice(data);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(registered: bool) -> Dictionary {
        let mut state = Dictionary::new();
        state.insert("registered".into(), registered.into());
        let mut d = Dictionary::new();
        d.insert("IORegistryEntryName".into(), "NullDriver".into());
        d.insert(
            "IOObjectClassChain".into(),
            Value::Array(vec!["IOUserService".into(), "IOService".into()]),
        );
        d.insert("IOServiceState".into(), Value::Dictionary(state));
        d.insert("Color".into(), "blue".into());
        d
    }

    #[test]
    fn matching_by_class_name_and_properties_of_registered_services() {
        let e = entry(true);
        assert!(Matching::class("IOService").matches(&e));
        assert!(!Matching::class("IOUSBHostDevice").matches(&e));
        assert!(Matching::name("NullDriver")
            .property("Color", "blue")
            .matches(&e));
        assert!(!Matching::name("NullDriver")
            .property("Color", "red")
            .matches(&e));
        assert!(
            !Matching::name("NullDriver").matches(&entry(false)),
            "not registered yet"
        );
        let mut dict = Dictionary::new();
        dict.insert("IOProviderClass".into(), "IOUserService".into());
        let mut props = Dictionary::new();
        props.insert("Color".into(), "blue".into());
        dict.insert("IOPropertyMatch".into(), Value::Dictionary(props));
        assert!(Matching::from_dictionary(&dict).matches(&e));
    }
}

//! The control socket: how `driverkit` subcommands reach a running daemon.
//!
//! `<root>/driverkitd.sock`, a Unix stream socket carrying JSON lines: one
//! request object, one response object (`{"ok": ...}` or `{"error": "..."}`).
//! It is a tool interface, not a hot path; JSON keeps it inspectable with
//! `socat`.

use driverkit_wire::sync::Locked;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use serde::{Deserialize, Serialize};

use crate::lifecycle::Core;
use crate::peer::{Peer, Role};
use crate::registry::EntryId;

/// The socket's file name inside the root directory.
pub const SOCKET: &str = driverkit_wire::root::CONTROL_SOCKET;

/// A request the core serves itself. Families and backends add their own
/// requests as [`Extensions`]; a client's request type may combine both
/// (serde's untagged enum of the tagged ones): every request is a JSON
/// object whose `op` names it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// The registry, as an XML plist archive in `{"plist": ...}`.
    Registry,
    /// Unplug a plugged device by ID.
    Unplug { id: EntryId },
    /// The plugged devices.
    Devices,
    /// Load a `.dext` bundle and match it.
    Load { path: PathBuf },
    /// PID and dext PIDs.
    Status,
    /// Why each personality does or does not drive entry `id`
    /// (`why::Explanation`).
    Why { id: EntryId },
    /// Subscribe to services starting and leaving: `{"started": ID}`,
    /// `{"removed": ID}` lines after the answer.
    Lifecycle,
    /// `IOServiceOpen(service, kind)`: see `serve_connection`.
    ServiceOpen { service: EntryId, kind: u32 },
    /// Stop every dext and exit.
    Shutdown,
    /// Activate the dext `bundle_id` of the app at `app`. Answers
    /// `{"outcome": Outcome}` or `{"failure": Failure}` (see `sysext`).
    SysextActivate {
        app: PathBuf,
        bundle_id: String,
        #[serde(default)]
        replacement: crate::sysext::Replacement,
    },
    /// Deactivate an extension; answers like `SysextActivate`.
    SysextDeactivate { bundle_id: String },
    /// A person approves an extension waiting for it; answers like
    /// `SysextActivate`.
    SysextApprove { bundle_id: String },
    /// Stop and remove an extension now.
    SysextUninstall { bundle_id: String },
    /// Stop and remove every extension.
    SysextReset,
    /// The store's records.
    SysextList,
    /// Developer mode on or off.
    SysextDeveloper { on: bool },
    /// Trust signatures by a public key (hex).
    SysextTrust { key: String },
}

/// Why a family's or a backend's request was refused: its own error, said
/// in words on the wire (the control protocol carries words; the handler's
/// callers may still look at the type).
pub type Refusal = Box<dyn std::error::Error + Send + Sync>;

/// Serves one request of a family or backend: the request object (with its
/// `op`), answered with a JSON value or a refusal.
pub type Handler =
    Box<dyn Fn(&serde_json::Value) -> Result<serde_json::Value, Refusal> + Send + Sync>;

/// Serves a streaming request for a peer (who may get less than others:
/// keyboard events): after the handler has written its answer line, the
/// connection is the stream's until the client closes it.
pub type StreamHandler =
    Box<dyn Fn(&serde_json::Value, &Peer, UnixStream) -> std::io::Result<()> + Send + Sync>;

/// The requests families and backends add to the control socket, by `op`,
/// each with the role it needs.
#[derive(Default)]
pub struct Extensions {
    requests: std::collections::HashMap<String, (Role, Handler)>,
    streams: std::collections::HashMap<String, (Role, StreamHandler)>,
}

impl Extensions {
    /// Serves requests whose `op` is `op` with `handler`, for peers in
    /// `role`.
    pub fn request(
        &mut self,
        op: &str,
        role: Role,
        handler: impl Fn(&serde_json::Value) -> Result<serde_json::Value, Refusal>
            + Send
            + Sync
            + 'static,
    ) {
        self.requests
            .insert(op.to_owned(), (role, Box::new(handler)));
    }

    /// Serves streaming requests whose `op` is `op` with `handler`.
    pub fn stream(
        &mut self,
        op: &str,
        role: Role,
        handler: impl Fn(&serde_json::Value, &Peer, UnixStream) -> std::io::Result<()>
            + Send
            + Sync
            + 'static,
    ) {
        self.streams
            .insert(op.to_owned(), (role, Box::new(handler)));
    }
}

/// The longest request line: a device file's text travels in one.
pub const MAX_LINE: usize = 8 << 20;
/// The longest request line of anyone but an administrator, whose requests
/// (reading, an app's activation or IOServiceOpen) are all small.
pub const MAX_USER_LINE: usize = 64 << 10;
/// Control connections served at once; more are answered with an error.
pub const MAX_CONNECTIONS: usize = 256;
/// Control connections one user may hold at once, so that no user can
/// take them all.
pub const MAX_CONNECTIONS_PER_USER: usize = 64;
/// Matching notifications a client may leave unread before its stream is
/// cut off.
pub const LIFECYCLE_BACKLOG: usize = 4096;

/// What a core request needs, and its name for refusals.
fn role_of(req: &Request) -> (Role, &'static str) {
    use Request::*;
    match req {
        Registry => (Role::Anyone, "ioreg"),
        Devices => (Role::Anyone, "device list"),
        Status => (Role::Anyone, "status"),
        Why { .. } => (Role::Anyone, "why"),
        Lifecycle => (Role::Anyone, "matching notifications"),
        SysextList => (Role::Anyone, "sysext list"),
        // Its own check: the app's entitlements (user_client).
        ServiceOpen { .. } => (Role::Anyone, "IOServiceOpen"),
        // An app's own requests are checked against the app (`handle`).
        SysextActivate { .. } => (Role::Anyone, "sysext activate"),
        SysextDeactivate { .. } => (Role::Anyone, "sysext deactivate"),
        Unplug { .. } => (Role::Administrator, "device unplug"),
        Load { .. } => (Role::Administrator, "load"),
        Shutdown => (Role::Administrator, "stop"),
        SysextApprove { .. } => (Role::Administrator, "approve"),
        SysextUninstall { .. } => (Role::Administrator, "uninstall"),
        SysextReset => (Role::Administrator, "reset"),
        SysextDeveloper { .. } => (Role::Administrator, "developer mode"),
        SysextTrust { .. } => (Role::Administrator, "trust"),
    }
}

/// A control connection as the daemon reads it: every byte must come from
/// the process that connected. With `SO_PASSCRED`, the kernel tells each
/// read who wrote its bytes (`SCM_CREDENTIALS`, the writer's process, not
/// a claim of it); bytes written by any other process (a child that
/// inherited the socket while its parent exec'd an entitled app) end the
/// connection.
pub(crate) struct FromPeer {
    stream: UnixStream,
    pid: u32,
}

impl FromPeer {
    /// Reads `stream`, whose peer is process `pid`.
    pub(crate) fn new(stream: UnixStream, pid: u32) -> std::io::Result<FromPeer> {
        rustix::net::sockopt::set_socket_passcred(&stream, true)?;
        Ok(FromPeer { stream, pid })
    }
}

impl std::io::Read for FromPeer {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::fd::AsRawFd;
        // Room for one ucred, and for descriptors a client should not send
        // (closed below).
        let mut control = [0u64; 64];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: a zeroed msghdr is valid; its pointers are set to live
        // buffers of the lengths given.
        let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
        header.msg_iov = &mut iov;
        header.msg_iovlen = 1;
        header.msg_control = control.as_mut_ptr().cast();
        header.msg_controllen = std::mem::size_of_val(&control);
        // SAFETY: recvmsg writes within the buffers `header` describes.
        let n =
            unsafe { libc::recvmsg(self.stream.as_raw_fd(), &mut header, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut writer = None;
        // SAFETY: the CMSG_* walk stays within what recvmsg filled
        // (msg_controllen), reading each message by its own length.
        unsafe {
            let mut message = libc::CMSG_FIRSTHDR(&header);
            while !message.is_null() {
                let data = libc::CMSG_DATA(message);
                let len = (*message).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                match ((*message).cmsg_level, (*message).cmsg_type) {
                    (libc::SOL_SOCKET, libc::SCM_CREDENTIALS)
                        if len >= std::mem::size_of::<libc::ucred>() =>
                    {
                        let c = std::ptr::read_unaligned(data as *const libc::ucred);
                        writer = Some(c.pid);
                    }
                    (libc::SOL_SOCKET, libc::SCM_RIGHTS) => {
                        for i in 0..len / 4 {
                            let fd = std::ptr::read_unaligned((data as *const i32).add(i));
                            libc::close(fd);
                        }
                    }
                    _ => {}
                }
                message = libc::CMSG_NXTHDR(&header, message);
            }
        }
        match writer {
            // 0: written before anyone asked for credentials (a socket
            // pair; an accepted connection inherits the listener's
            // SO_PASSCRED, so its bytes always carry them).
            Some(pid) if pid != 0 && pid as u32 != self.pid => Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "a request written by pid {pid} on the connection pid {} opened; a connection is its opener's alone",
                    self.pid
                ),
            )),
            _ => Ok(n as usize),
        }
    }
}

/// Reads one line of at most `limit` bytes; `None` at the end.
fn read_line(reader: &mut BufReader<FromPeer>, limit: usize) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    loop {
        let available = reader.fill_buf()?;
        if available.is_empty() {
            return Ok((!line.is_empty()).then(|| String::from_utf8_lossy(&line).into_owned()));
        }
        let (taken, done) = match available.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        line.extend_from_slice(&available[..taken]);
        reader.consume(taken);
        if line.len() > limit {
            return Err(std::io::Error::other(format!(
                "a request line longer than {limit} bytes"
            )));
        }
        if done {
            return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
        }
    }
}

/// Decodes the request object a handler got into its own request type.
pub fn decode<T: serde::de::DeserializeOwned>(
    request: &serde_json::Value,
) -> Result<T, BadRequest> {
    T::deserialize(request).map_err(BadRequest)
}

/// A request whose fields are not the request's.
#[derive(Debug, thiserror::Error)]
#[error("bad request: {0}")]
pub struct BadRequest(#[source] pub serde_json::Error);

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Response {
    Ok(serde_json::Value),
    Error(String),
}

/// Serves the control socket until the process exits.
pub fn serve(
    daemon: Core,
    extensions: Extensions,
    root: &Path,
    shutdown: mpsc::Sender<()>,
) -> std::io::Result<PathBuf> {
    let extensions = std::sync::Arc::new(extensions);
    let path = root.join(SOCKET);
    // The root lock is held, so a socket file left here is stale.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    // Connections accepted from it are born with SO_PASSCRED, so even
    // bytes written before `FromPeer` sets it again carry their writer.
    rustix::net::sockopt::set_socket_passcred(&listener, true)?;
    // Anyone may connect: anyone may read. What changes the system is
    // checked per request, by the peer's credentials.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o666))?;
    // Connections held, in all and per user.
    let open = std::sync::Arc::new(std::sync::Mutex::new(
        std::collections::HashMap::<u32, usize>::new(),
    ));
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let uid = rustix::net::sockopt::socket_peercred(&stream)
                    .map_or(u32::MAX, |c| c.uid.as_raw());
                let refusal = {
                    let mut held = open.locked();
                    let all: usize = held.values().sum();
                    let mine = held.entry(uid).or_default();
                    if all >= MAX_CONNECTIONS {
                        Some(format!("too many control connections (at most {MAX_CONNECTIONS}); try again"))
                    } else if *mine >= MAX_CONNECTIONS_PER_USER {
                        Some(format!("uid {uid} holds {MAX_CONNECTIONS_PER_USER} control connections, the most one user may; close some"))
                    } else {
                        *mine += 1;
                        None
                    }
                };
                if let Some(why) = refusal {
                    let answer = serde_json::json!({ "error": why });
                    let _ = (&stream).write_all(format!("{answer}\n").as_bytes());
                    continue;
                }
                let daemon = daemon.clone();
                let shutdown = shutdown.clone();
                let extensions = extensions.clone();
                let open = open.clone();
                let release = move || {
                    let mut held = open.locked();
                    if let Some(n) = held.get_mut(&uid) {
                        *n -= 1;
                        if *n == 0 {
                            held.remove(&uid);
                        }
                    }
                };
                let release_if_unspawned = release.clone();
                let spawned = std::thread::Builder::new()
                    .name("control-client".into())
                    .spawn(move || {
                        let peer = Peer::of(&stream, daemon.admin_group());
                        if let Err(e) =
                            serve_client(stream, &peer, &daemon, &extensions, &shutdown)
                        {
                            tracing::debug!("control client: {e}");
                        }
                        release();
                    });
                if spawned.is_err() {
                    release_if_unspawned();
                    tracing::warn!("control: cannot serve a connection");
                }
            }
        })?;
    Ok(path)
}

fn serve_client(
    stream: UnixStream,
    peer: &Peer,
    daemon: &Core,
    extensions: &Extensions,
    shutdown: &mpsc::Sender<()>,
) -> std::io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(FromPeer::new(stream, peer.pid)?);
    loop {
        let limit = if peer.is_admin() {
            MAX_LINE
        } else {
            MAX_USER_LINE
        };
        let line = match read_line(&mut reader, limit) {
            Ok(Some(line)) => line,
            Ok(None) => return Ok(()),
            Err(e) => {
                // Answer why, then hang up: the rest of the line is garbage.
                let answer = serde_json::json!({ "error": e.to_string() });
                let _ = writer.write_all(format!("{answer}\n").as_bytes());
                return Err(e);
            }
        };
        // A family's or a backend's request, by its op.
        let object = serde_json::from_str::<serde_json::Value>(&line).ok();
        // A stop is answered before the daemon is told to stop: the
        // answer would otherwise race the daemon's exit.
        let mut stop_after_answer = false;
        let op = object
            .as_ref()
            .and_then(|o| o.get("op"))
            .and_then(serde_json::Value::as_str);
        if let (Some(o), Some(op)) = (&object, op) {
            if let Some((role, handler)) = extensions.streams.get(op) {
                if let Err(e) = peer.allow(*role, op) {
                    let answer = serde_json::json!({ "error": e.to_string() });
                    writer.write_all(format!("{answer}\n").as_bytes())?;
                    continue;
                }
                return handler(o, peer, writer);
            }
        }
        let extension = match (&object, op) {
            (Some(o), Some(op)) => extensions.requests.get(op).map(|(role, h)| {
                peer.allow(*role, op)
                    .map_err(String::from)
                    .and_then(|()| h(o).map_err(|e| e.to_string()))
            }),
            _ => None,
        };
        let response = match extension {
            Some(Ok(v)) => Response::Ok(v),
            Some(Err(e)) => Response::Error(e),
            // The line is parsed once: a core request is read from the
            // value already parsed for the extensions' lookup.
            None => match object
                .as_ref()
                .map_or_else(|| serde_json::from_str(&line), Request::deserialize)
            {
                Ok(req) => {
                    let (role, what) = role_of(&req);
                    match peer.allow(role, what) {
                        Err(e) => Response::Error(e.into()),
                        Ok(()) => match req {
                            Request::Lifecycle => return stream_lifecycle(daemon, writer),
                            Request::ServiceOpen { service, kind } => {
                                return serve_connection(
                                    daemon, peer, reader, writer, service, kind,
                                )
                            }
                            Request::Shutdown => {
                                stop_after_answer = true;
                                Response::Ok(serde_json::json!({}))
                            }
                            req => match handle(daemon, peer, req) {
                                Ok(v) => Response::Ok(v),
                                Err(e) => Response::Error(e.to_string()),
                            },
                        },
                    }
                }
                Err(e) => Response::Error(format!("bad request: {e}")),
            },
        };
        let mut text = serde_json::to_string(&response)
            .unwrap_or_else(|_| r#"{"error":"unencodable"}"#.into());
        text.push('\n');
        writer.write_all(text.as_bytes())?;
        if stop_after_answer {
            let _ = shutdown.send(());
            return Ok(());
        }
    }
}

/// `IOServiceOpen` on this connection: answers `{"ok": {"status": 0,
/// "user_client": ID}}` with the app's call and notification sockets
/// attached (`SCM_RIGHTS`), or `{"ok": {"status": IOReturn, "reason":
/// WORDS}}` (the reason where the app can act on it). The
/// connection then stands for the open user client: a `service_close`
/// line or the app's end closes it.
fn serve_connection(
    daemon: &Core,
    peer: &Peer,
    mut reader: BufReader<FromPeer>,
    writer: UnixStream,
    service: EntryId,
    kind: u32,
) -> std::io::Result<()> {
    let opened = match daemon.open_user_client(service, kind, peer) {
        Ok(o) => o,
        Err(refusal) => {
            let mut answer = serde_json::json!({ "ok": { "status": refusal.status.0 } });
            if let Some(reason) = refusal.reason {
                answer["ok"]["reason"] = reason.into();
            }
            let mut w = &writer;
            return w.write_all(format!("{answer}\n").as_bytes());
        }
    };
    let answer = format!(
        "{{\"ok\":{{\"status\":0,\"user_client\":{}}}}}\n",
        opened.user_client
    );
    let fds = [
        std::os::fd::AsFd::as_fd(&opened.calls),
        std::os::fd::AsFd::as_fd(&opened.notifications),
    ];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut ancillary = rustix::net::SendAncillaryBuffer::new(&mut space);
    ancillary.push(rustix::net::SendAncillaryMessage::ScmRights(&fds));
    let sent = rustix::net::sendmsg(
        &writer,
        &[std::io::IoSlice::new(answer.as_bytes())],
        &mut ancillary,
        rustix::net::SendFlags::NOSIGNAL,
    );
    drop(opened.calls);
    drop(opened.notifications);
    if sent.is_ok() {
        // Until the app closes the connection, or dies.
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
            if line.contains("service_close") {
                break;
            }
            line.clear();
        }
    }
    daemon.close_user_client(opened.user_client);
    Ok(())
}

/// Writes `{"started": ID}` and `{"removed": ID}` lines as services start
/// and leave the registry, until the client goes away (matching
/// notifications for apps).
fn stream_lifecycle(daemon: &Core, mut writer: UnixStream) -> std::io::Result<()> {
    let events = daemon.subscribe_bounded(LIFECYCLE_BACKLOG);
    writer.write_all(b"{\"ok\":{}}\n")?;
    for event in events {
        let line = match event {
            crate::Event::Started { service, .. } => format!("{{\"started\":{service}}}\n"),
            crate::Event::Removed { service } => format!("{{\"removed\":{service}}}\n"),
            crate::Event::Exited { .. } => continue,
        };
        writer.write_all(line.as_bytes())?;
    }
    Ok(())
}

/// Why the sysext requests of a peer are refused.
#[derive(Debug, thiserror::Error)]
pub enum NotARequester {
    #[error("sysext: the requesting app's identity does not hold: {0}")]
    Identity(#[source] crate::peer::Denied),
    #[error("sysext: uid {0} is neither an administrator nor an app (a program in NAME.app/Contents/MacOS)")]
    Neither(u32),
    #[error("sysext activate: uid {uid} may ask only for the dexts of its own app, and it is not {}", app.display())]
    NotItsApp { uid: u32, app: PathBuf },
}

/// A streaming request sent where a one-answer request was expected.
#[derive(Debug, thiserror::Error)]
#[error("a streaming request; it has its own connection")]
pub struct Streaming;

fn handle(daemon: &Core, peer: &Peer, req: Request) -> Result<serde_json::Value, Refusal> {
    use serde_json::json;
    Ok(match req {
        Request::Registry => {
            let mut xml = Vec::new();
            daemon.registry_plist().to_writer_xml(&mut xml)?;
            json!({ "plist": String::from_utf8_lossy(&xml) })
        }
        Request::Unplug { id } => {
            daemon.unplug(id)?;
            json!({})
        }
        Request::Devices => serde_json::to_value(daemon.devices())?,
        Request::Load { path } => json!({ "bundle": daemon.load_for_developer(&path)? }),
        Request::Status => json!({ "pid": std::process::id(), "dexts": daemon.pids() }),
        Request::Why { id } => serde_json::to_value(daemon.why(id)?)?,
        Request::Lifecycle | Request::ServiceOpen { .. } => return Err(Streaming.into()),
        Request::SysextActivate {
            app,
            bundle_id,
            replacement,
        } => {
            // An app asks for its own dexts; an administrator for any app's.
            let who = requester(daemon, peer)?;
            if !who.admin && who.app.as_deref() != Some(app.as_path()) {
                return Err(NotARequester::NotItsApp { uid: peer.uid, app }.into());
            }
            answer(daemon.activate_for(&app, &bundle_id, replacement, &who))
        }
        Request::SysextDeactivate { bundle_id } => {
            let who = requester(daemon, peer)?;
            answer(daemon.deactivate_for(&bundle_id, &who))
        }
        Request::SysextApprove { bundle_id } => {
            let app = peer.app(daemon.trust().0).ok().flatten();
            answer(daemon.approve_by(&bundle_id, app.as_deref()))
        }
        Request::SysextUninstall { bundle_id } => {
            daemon.uninstall(&bundle_id)?;
            json!({})
        }
        Request::SysextReset => json!({ "removed": daemon.reset_extensions()? }),
        Request::SysextList => serde_json::to_value(daemon.extensions()?)?,
        Request::SysextDeveloper { on } => {
            daemon.set_developer_mode(on)?;
            json!({})
        }
        Request::SysextTrust { key } => {
            daemon.trust_key(&key)?;
            json!({})
        }
        // serve_client signals the stop once this answer is written.
        Request::Shutdown => json!({}),
    })
}

/// Who asks for a system extension request: an administrator, or an app
/// whose identity holds (`Peer::app`); anyone else is refused with the
/// rule that failed.
fn requester(daemon: &Core, peer: &Peer) -> Result<crate::sysext::Requester, NotARequester> {
    let app = match peer.app(daemon.trust().0) {
        Ok(app) => app,
        Err(_) if peer.is_admin() => None,
        Err(why) => {
            tracing::warn!("sysext   refused: {why}");
            return Err(NotARequester::Identity(why));
        }
    };
    if app.is_none() && !peer.is_admin() {
        return Err(NotARequester::Neither(peer.uid));
    }
    Ok(crate::sysext::Requester {
        app,
        uid: peer.uid,
        admin: peer.is_admin(),
    })
}

/// A system extension request's answer: how it ended, or why it failed.
fn answer(result: Result<crate::sysext::Outcome, crate::sysext::Failure>) -> serde_json::Value {
    match result {
        Ok(outcome) => serde_json::json!({ "outcome": outcome }),
        Err(failure) => serde_json::json!({ "failure": failure }),
    }
}

/// Why a request to the daemon got no answer, or got a refusal.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens at the state folder's socket.
    #[error("no daemon is running at {} ({source}); start one with `driverkit run`", root.display())]
    NoDaemon {
        root: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The connection failed while a request or its answer was on it.
    #[error("daemon connection: {0}")]
    Connection(#[from] std::io::Error),
    /// The daemon hung up before it answered.
    #[error("the daemon closed the connection")]
    Closed,
    /// The daemon answered with something that is not an answer.
    #[error("bad answer from the daemon: {0}")]
    BadAnswer(String),
    /// The daemon refused the request and said why.
    #[error("{0}")]
    Refused(String),
    /// The registry archive the daemon sent does not read as one.
    #[error("bad registry archive: {0}")]
    Archive(String),
}

impl From<ClientError> for String {
    fn from(e: ClientError) -> String {
        e.to_string()
    }
}

/// A connection to a running daemon.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects to the daemon whose state directory is `root`.
    pub fn connect(root: &Path) -> Result<Client, ClientError> {
        let path = root.join(SOCKET);
        let stream = UnixStream::connect(&path).map_err(|source| ClientError::NoDaemon {
            root: root.to_owned(),
            source,
        })?;
        let writer = stream.try_clone()?;
        Ok(Client {
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Sends one request (the core's [`Request`], a family's, or a type
    /// combining them) and waits for its answer.
    pub fn request<R: Serialize>(&mut self, req: &R) -> Result<serde_json::Value, ClientError> {
        let mut line = serde_json::to_string(req).map_err(std::io::Error::other)?;
        line.push('\n');
        self.writer.write_all(line.as_bytes())?;
        let mut answer = String::new();
        self.reader.read_line(&mut answer)?;
        if answer.is_empty() {
            return Err(ClientError::Closed);
        }
        match serde_json::from_str::<Response>(&answer)
            .map_err(|e| ClientError::BadAnswer(e.to_string()))?
        {
            Response::Ok(v) => Ok(v),
            Response::Error(e) => Err(ClientError::Refused(e)),
        }
    }

    /// Sends a streaming request; after its answer, the connection carries
    /// one JSON object per line, each decoded as `T`.
    pub fn stream<R: Serialize, T: serde::de::DeserializeOwned>(
        self,
        req: &R,
    ) -> Result<impl Iterator<Item = Result<T, ClientError>>, ClientError> {
        self.stream_answered(req).map(|(_, lines)| lines)
    }

    /// [`Client::stream`], with the answer that opened the stream.
    pub fn stream_answered<R: Serialize, T: serde::de::DeserializeOwned>(
        mut self,
        req: &R,
    ) -> Result<
        (
            serde_json::Value,
            impl Iterator<Item = Result<T, ClientError>>,
        ),
        ClientError,
    > {
        let answer = self.request(req)?;
        Ok((
            answer,
            self.reader.lines().map(|line| {
                serde_json::from_str(&line?).map_err(|e| ClientError::BadAnswer(e.to_string()))
            }),
        ))
    }

    /// The registry tree.
    pub fn registry(&mut self) -> Result<crate::ioreg::Node, ClientError> {
        let v = self.request(&Request::Registry)?;
        let xml = v
            .get("plist")
            .and_then(|p| p.as_str())
            .ok_or_else(|| ClientError::BadAnswer("a registry answer without plist".into()))?;
        let value = plist::Value::from_reader_xml(xml.as_bytes())
            .map_err(|e| ClientError::Archive(e.to_string()))?;
        crate::ioreg::Node::from_archive(&value).map_err(|e| ClientError::Archive(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn exchange(daemon: &Core, lines: &[String]) -> Vec<serde_json::Value> {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let d = daemon.clone();
        let (tx, _rx) = mpsc::channel();
        let server = std::thread::spawn(move || {
            let peer = Peer::of(&theirs, None);
            serve_client(theirs, &peer, &d, &Extensions::default(), &tx)
        });
        let mut writer = ours.try_clone().unwrap();
        let mut reader = BufReader::new(ours);
        let mut answers = Vec::new();
        for l in lines {
            writer.write_all(format!("{l}\n").as_bytes()).unwrap();
            let mut answer = String::new();
            reader.read_line(&mut answer).unwrap();
            answers.push(serde_json::from_str(&answer).unwrap());
        }
        drop(writer);
        drop(reader);
        let _ = server.join();
        answers
    }

    #[test]
    fn garbage_requests_get_an_error_and_the_connection_goes_on() {
        let root = tempfile::tempdir().unwrap();
        let daemon = Core::start(crate::Config::new(root.path().to_owned()), Vec::new());
        let answers = exchange(
            &daemon,
            &[
                "{not json".into(),
                r#"{"op":"launch_missiles"}"#.into(),
                r#"{"op":"unplug","id":"seven"}"#.into(),
                r#"{"op":"unplug","id":7}"#.into(),
                r#"{"op":"devices"}"#.into(),
            ],
        );
        assert!(answers[0]["error"]
            .as_str()
            .unwrap()
            .starts_with("bad request"));
        assert!(answers[1]["error"]
            .as_str()
            .unwrap()
            .contains("launch_missiles"));
        assert!(answers[2]["error"].is_string());
        assert!(answers[3]["error"]
            .as_str()
            .unwrap()
            .contains("no plugged device with id 0x7"));
        assert_eq!(answers[4]["ok"], serde_json::json!([]));
    }

    /// A fresh daemon serving one end of a socket pair made by this
    /// process (so the peer is this process); the other end, and the
    /// server's result.
    fn served_pair() -> (UnixStream, std::thread::JoinHandle<std::io::Result<()>>) {
        let root = tempfile::tempdir().unwrap();
        let daemon = Core::start(crate::Config::new(root.path().to_owned()), Vec::new());
        let (ours, theirs) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || {
            let _root = root;
            let (tx, _rx) = mpsc::channel();
            let peer = Peer::of(&theirs, None);
            serve_client(theirs, &peer, &daemon, &Extensions::default(), &tx)
        });
        (ours, server)
    }

    #[test]
    fn a_request_line_past_the_cap_is_answered_and_the_connection_closed() {
        let (ours, server) = served_pair();
        let mut writer = ours.try_clone().unwrap();
        let long = vec![b'a'; MAX_LINE + 2];
        // The server answers and hangs up before it has read it all.
        let _ = writer.write_all(&long);
        let mut answer = String::new();
        BufReader::new(ours).read_line(&mut answer).unwrap();
        assert!(answer.contains("longer than"), "{answer}");
        assert!(server.join().unwrap().is_err());
    }

    /// `line` written on `stream` by a child process that inherited it.
    fn written_by_a_child(stream: UnixStream, line: &str) {
        let status = std::process::Command::new("sh")
            .args(["-c", &format!("echo '{line}' >&0")])
            .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(
                stream,
            )))
            .status()
            .unwrap();
        assert!(status.success());
    }

    #[test]
    fn a_request_written_by_another_process_than_the_one_that_connected_ends_the_connection() {
        let (ours, server) = served_pair();
        // A child that inherited the socket writes a request on it.
        written_by_a_child(ours.try_clone().unwrap(), r#"{"op":"status"}"#);
        let e = server.join().unwrap().unwrap_err();
        assert!(
            e.to_string().contains("a connection is its opener's alone"),
            "{e}"
        );
    }

    #[test]
    fn bytes_written_before_the_daemon_accepted_still_name_their_writer() {
        let dir = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(dir.path().join("s")).unwrap();
        rustix::net::sockopt::set_socket_passcred(&listener, true).unwrap();
        let client = UnixStream::connect(dir.path().join("s")).unwrap();
        written_by_a_child(client, "x");
        let (server, _) = listener.accept().unwrap();
        let mut reader = FromPeer::new(server, std::process::id()).unwrap();
        let e = std::io::Read::read(&mut reader, &mut [0u8; 8]).unwrap_err();
        assert!(e.to_string().contains("opener's alone"), "{e}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn any_line_gets_an_answer(line in "[^\n]{0,200}") {
            let root = tempfile::tempdir().unwrap();
            let daemon = Core::start(crate::Config::new(root.path().to_owned()), Vec::new());
            let answers = exchange(&daemon, &[line, r#"{"op":"status"}"#.to_owned()]);
            prop_assert!(answers[0].get("ok").is_some() || answers[0].get("error").is_some());
            prop_assert!(answers[1]["ok"]["pid"].is_u64());
        }
    }
}

//! The control socket's vocabulary: the core's requests
//! ([`driverkit_core::control::Request`]) and the ones this daemon's
//! backends and families add ([`DeviceRequest`], [`HidRequest`]), served
//! through [`driverkit_core::control::Extensions`]. A client sends any of
//! them as [`Request`].

use std::io::Write;
use std::os::unix::net::UnixStream;

use driverkit_core::control::{decode, Extensions, Refusal};
use driverkit_core::{EntryId, Role};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::backends::virtual_device;
use crate::families::hid::HidEvent;
use crate::Daemon;

pub use driverkit_core::control::{Client, ClientError, Request as CoreRequest, SOCKET};

/// A device to plug: a built-in by name, or a file's text (read by the CLI,
/// so that the daemon never opens paths on a client's behalf).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceArg {
    Builtin(String),
    File {
        path: String,
        text: String,
    },
    /// A recording (pcapng or pcap of usbmon packets) to play back, its
    /// bytes as hex.
    Recording {
        path: String,
        hex: String,
        #[serde(default)]
        fast: bool,
        /// The device of a whole bus's capture: `[bus, device]`.
        #[serde(default)]
        device: Option<(u16, u8)>,
    },
}

/// Requests of the device backends.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum DeviceRequest {
    /// Plug a virtual device; answers its registry entry ID.
    Plug { device: DeviceArg },
    /// Import a device from a USB/IP server; answers its entry ID.
    Attach { url: String },
    /// Export USB devices over USB/IP (every one when `ids` is empty);
    /// answers the address and each device's bus ID.
    Export {
        ids: Vec<EntryId>,
        #[serde(default = "default_listen")]
        listen: String,
        /// Peer addresses or CIDR ranges that may import (loopback when
        /// empty).
        #[serde(default)]
        allow: Vec<String>,
        /// Users (names or IDs) whose local processes may import, besides
        /// administrators.
        #[serde(default)]
        users: Vec<String>,
    },
    /// Make a virtual keyboard type `text`.
    Type { id: EntryId, text: String },
    /// Queue one input report (hex) on a virtual USB HID device.
    Report { id: EntryId, report: String },
    /// The last output report (SET_REPORT) a virtual USB device got, as
    /// hex, or null.
    Output { id: EntryId },
}

fn default_listen() -> String {
    "127.0.0.1:3240".into()
}

/// Requests of the HID family.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum HidRequest {
    /// Subscribe to the HID event stream: after the answer, the connection
    /// carries one event object per line until the client closes it.
    Events,
}

/// Requests of the serial family: what a pty cannot carry (data bits,
/// parity, modem lines, breaks), and a port's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum SerialRequest {
    /// A port's line, modem status and counters. `port`: its
    /// `IOTTYDevice`, callout path or registry ID.
    SerialGet { port: String },
    /// Changes the fields given, through the driver's `hw_*` methods.
    SerialSet {
        port: String,
        #[serde(default)]
        set: SerialSettings,
    },
}

/// What `serial set` may change; absent fields stay.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialSettings {
    pub baud: Option<u32>,
    pub data_bits: Option<u8>,
    /// none, odd, even, mark, space
    pub parity: Option<String>,
    /// 1, 1.5 or 2
    pub stop_bits: Option<String>,
    /// none, rtscts or xonxoff
    pub flow: Option<String>,
    pub dtr: Option<bool>,
    pub rts: Option<bool>,
    /// A break of this many milliseconds.
    pub break_ms: Option<u32>,
}

/// Any request this daemon serves.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Request {
    Core(driverkit_core::control::Request),
    Device(DeviceRequest),
    Hid(HidRequest),
    Serial(SerialRequest),
}

impl From<driverkit_core::control::Request> for Request {
    fn from(r: driverkit_core::control::Request) -> Request {
        Request::Core(r)
    }
}

impl From<DeviceRequest> for Request {
    fn from(r: DeviceRequest) -> Request {
        Request::Device(r)
    }
}

/// The requests of this daemon's backends and families, for the core's
/// control socket.
pub fn extensions(daemon: &Daemon) -> Extensions {
    let mut x = Extensions::default();
    // Changing what is plugged, lent or typed is an administrator's;
    // reading what a device last got is anyone's.
    for (op, role) in [
        ("plug", Role::Administrator),
        ("attach", Role::Administrator),
        ("export", Role::Administrator),
        ("type", Role::Administrator),
        ("report", Role::Administrator),
        ("output", Role::Anyone),
    ] {
        let d = daemon.clone();
        x.request(op, role, move |request| {
            device_request(&d, decode(request)?)
        });
    }
    // Reading a port is anyone's; changing its line an administrator's
    // (the tty's own permissions govern its data).
    for (op, role) in [
        ("serial_get", Role::Anyone),
        ("serial_set", Role::Administrator),
    ] {
        let d = daemon.clone();
        x.request(op, role, move |request| {
            serial_request(&d, decode(request)?)
        });
    }
    let d = daemon.clone();
    x.stream("events", Role::Anyone, move |_, peer, writer| {
        stream_events(&d, may_read_keys(peer), writer)
    });
    // A device's traffic is its users' keystrokes and data: an
    // administrator's, as usbmon is root's.
    let d = daemon.clone();
    x.stream("record", Role::Administrator, move |request, _, writer| {
        stream_record(&d, request, writer)
    });
    x
}

/// `{"op": "record", "id": ID, "restart": BOOL}`: answers the device's
/// name, then one line per usbmon packet (`{"usbmon": HEX}`, header and
/// data) until the client goes away. With `restart`, the device's drivers
/// stop and match again once the recording runs, so that it holds their
/// start (the requests a replay must answer).
fn stream_record(
    daemon: &Daemon,
    request: &serde_json::Value,
    mut writer: UnixStream,
) -> std::io::Result<()> {
    let id = EntryId::from_raw(request["id"].as_u64().unwrap_or(0));
    let (preamble, live) = match daemon.record_usb(id) {
        Ok(r) => r,
        Err(e) => {
            return writer.write_all(format!("{}\n", json!({ "error": e.to_string() })).as_bytes());
        }
    };
    writer.write_all(format!("{}\n", json!({ "ok": { "id": id } })).as_bytes())?;
    // Lines for a batch of records, written at once.
    let lines = |records: &[crate::families::usb::tap::Record]| {
        let mut out = Vec::new();
        let mut bytes = Vec::new();
        for r in records {
            for (packet, data) in r.packets() {
                bytes.clear();
                packet.emit(data, &mut bytes);
                out.extend_from_slice(b"{\"usbmon\":\"");
                out.extend_from_slice(driverkit_wire::hex::encode(&bytes, "").as_bytes());
                out.extend_from_slice(b"\"}\n");
            }
        }
        out
    };
    writer.write_all(&lines(&preamble))?;
    if request["restart"].as_bool() == Some(true) {
        match daemon.core().restart_drivers(id) {
            Ok(names) => tracing::info!("record   {id:#x}: restarting {}", names.join(", ")),
            Err(e) => tracing::warn!("record   {id:#x}: no restart: {e}"),
        }
    }
    while let Some(batch) = live.next_batch(std::time::Duration::from_secs(1)) {
        if batch.is_empty() {
            // Quiet: is the client still there?
            if client_gone(&writer) {
                return Ok(());
            }
            continue;
        }
        writer.write_all(&lines(&batch))?;
    }
    Ok(())
}

/// Whether the other end of `stream` closed (it sends nothing otherwise).
fn client_gone(stream: &UnixStream) -> bool {
    let mut fds = [rustix::event::PollFd::new(
        stream,
        rustix::event::PollFlags::IN | rustix::event::PollFlags::RDHUP,
    )];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(rustix::event::poll(&mut fds, Some(&zero)), Ok(n) if n > 0)
}

fn device_request(daemon: &Daemon, request: DeviceRequest) -> Result<serde_json::Value, Refusal> {
    match request {
        DeviceRequest::Plug { device } => {
            let spec = match device {
                DeviceArg::Builtin(name) => virtual_device::builtin(&name).ok_or_else(|| {
                    let known: Vec<_> = virtual_device::builtin_names().collect();
                    format!(
                        "no built-in device named {name:?} (built in: {})",
                        known.join(", ")
                    )
                })?,
                DeviceArg::File { path, text } => virtual_device::parse(&text, &path)?,
                DeviceArg::Recording {
                    path,
                    hex,
                    fast,
                    device,
                } => {
                    let bytes = driverkit_wire::hex::decode(&hex)
                        .map_err(|e| format!("{path}: the recording's bytes: {e}"))?;
                    let name = std::path::Path::new(&path)
                        .file_stem()
                        .map_or_else(|| path.clone(), |s| s.to_string_lossy().into_owned());
                    let id = daemon.plug_recording(&name, &bytes, fast, device)?;
                    return Ok(json!({ "id": id }));
                }
            };
            Ok(json!({ "id": daemon.plug(spec)? }))
        }
        DeviceRequest::Attach { url } => Ok(json!({ "id": daemon.attach_usbip(&url)? })),
        DeviceRequest::Export {
            ids,
            listen,
            allow,
            users,
        } => {
            let (address, exported) = daemon.export_usbip(&ids, &listen, &allow, &users)?;
            Ok(json!({
                "address": address.to_string(),
                "devices": exported
                    .into_iter()
                    .map(|(id, busid)| json!({ "id": id, "busid": busid }))
                    .collect::<Vec<_>>(),
            }))
        }
        DeviceRequest::Type { id, text } => Ok(json!({ "reports": daemon.type_text(id, &text)? })),
        DeviceRequest::Report { id, report } => {
            let bytes = driverkit_wire::hex::decode(&report).map_err(|e| format!("report: {e}"))?;
            daemon.queue_report(id, &bytes)?;
            Ok(json!({}))
        }
        DeviceRequest::Output { id } => {
            let hex = daemon
                .last_output_report(id)
                .map(|r| driverkit_wire::hex::encode(&r, " "));
            Ok(json!({ "report": hex }))
        }
    }
}

/// A `serial set` asking for a line no UART has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadLine {
    #[error("baud: expected a rate above 0")]
    Baud,
    #[error("data bits: expected 5 to 8, found {0}")]
    DataBits(u8),
    #[error("parity: expected none, odd, even, mark or space, found {0:?}")]
    Parity(String),
    #[error("stop bits: expected 1, 1.5 or 2, found {0:?}")]
    StopBits(String),
    #[error("flow: expected none, rtscts or xonxoff, found {0:?}")]
    Flow(String),
}

fn serial_request(daemon: &Daemon, request: SerialRequest) -> Result<serde_json::Value, Refusal> {
    use driverkit_wire::serial::{FlowControl, Parity};
    let (port, set) = match request {
        SerialRequest::SerialGet { port } => (port, None),
        SerialRequest::SerialSet { port, set } => (port, Some(set)),
    };
    let (id, port) = daemon
        .families
        .serial
        .port(&daemon.core().system(), &port)?;
    if let Some(set) = set {
        let mut line = port.line();
        if let Some(baud) = set.baud {
            if baud == 0 {
                return Err(BadLine::Baud.into());
            }
            line.termios.baud = baud;
        }
        if let Some(bits) = set.data_bits {
            if !(5..=8).contains(&bits) {
                return Err(BadLine::DataBits(bits).into());
            }
            line.data_bits = bits;
        }
        if let Some(p) = &set.parity {
            line.parity = Parity::from_name(p).ok_or_else(|| BadLine::Parity(p.clone()))?;
        }
        if let Some(stop) = &set.stop_bits {
            line.termios.half_stop_bits = match stop.as_str() {
                "1" => 2,
                "1.5" => 3,
                "2" => 4,
                other => return Err(BadLine::StopBits(other.to_owned()).into()),
            };
        }
        if let Some(f) = &set.flow {
            line.termios.flow = match f.as_str() {
                "none" => FlowControl::default(),
                "rtscts" => FlowControl::RTS_CTS,
                "xonxoff" => FlowControl::XON_XOFF,
                other => return Err(BadLine::Flow(other.to_owned()).into()),
            };
        }
        line.dtr = set.dtr.unwrap_or(line.dtr);
        line.rts = set.rts.unwrap_or(line.rts);
        port.set(line, set.break_ms)?;
    }
    let line = port.line();
    let (tx, rx, dropped) = port.counters();
    let modem = port
        .modem_status()
        .ok()
        .map(|(cts, dsr, ri, dcd)| json!({ "cts": cts, "dsr": dsr, "ri": ri, "dcd": dcd }));
    Ok(json!({
        "id": id,
        "callout": port.callout(),
        "tty": port.node(),
        "node": port.kind().name(),
        "open": port.is_open(),
        "baud": line.termios.baud,
        "data_bits": line.data_bits,
        "parity": line.parity.name(),
        "stop_bits": f64::from(line.termios.half_stop_bits) / 2.0,
        "flow": line.termios.flow.to_wire(),
        "dtr": line.dtr,
        "rts": line.rts,
        "modem": modem,
        "tx_bytes": tx,
        "rx_bytes": rx,
        "rx_dropped_while_closed": dropped,
    }))
}

/// Writes every HID event as a JSON line until the client goes away.
/// The group that reads keyboards, as Linux's `/dev/input/event*` are
/// `root:input 0660`.
pub const INPUT_GROUP: &str = "input";

/// Whether `peer` gets keyboard events: administrators and members of the
/// input group, the same people Linux lets read `/dev/input`. Anyone else
/// gets pointer and scroll events only: a keylogger for every local user
/// is what the input group exists to prevent.
fn may_read_keys(peer: &driverkit_core::peer::Peer) -> bool {
    peer.is_admin() || peer.in_named_group(INPUT_GROUP)
}

/// The event stream; its answer says whether keyboard events are in it.
fn stream_events(daemon: &Daemon, keyboard: bool, mut writer: UnixStream) -> std::io::Result<()> {
    let mut events = daemon.subscribe_hid();
    let answer = if keyboard {
        json!({ "ok": { "keyboard": true } })
    } else {
        json!({ "ok": { "keyboard": false, "why": format!(
            "keyboard events go only to administrators and members of the {INPUT_GROUP} group (as /dev/input does); this stream has pointer and scroll events"
        ) } })
    };
    writer.write_all(format!("{answer}\n").as_bytes())?;
    while let Some(event) = events.next(None) {
        if !keyboard && event.kind == driverkit_wire::interfaces::hid_event::KEYBOARD {
            continue;
        }
        let mut text = serde_json::to_string(&event).map_err(std::io::Error::other)?;
        text.push('\n');
        writer.write_all(text.as_bytes())?;
    }
    Ok(())
}

/// Subscribes to the HID event stream of the daemon at `root`. The first
/// value is why keyboard events are left out, if they are.
pub fn events(
    root: &std::path::Path,
) -> Result<
    (
        Option<String>,
        impl Iterator<Item = Result<HidEvent, ClientError>>,
    ),
    ClientError,
> {
    let (answer, lines) = Client::connect(root)?.stream_answered(&HidRequest::Events)?;
    let without_keys = (answer["keyboard"] == false).then(|| {
        answer["why"]
            .as_str()
            .unwrap_or("no keyboard events")
            .to_owned()
    });
    Ok((without_keys, lines))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_kind_travels_as_its_op() {
        let plug = serde_json::to_value(Request::from(DeviceRequest::Plug {
            device: DeviceArg::Builtin("sensor".into()),
        }))
        .unwrap();
        assert_eq!(plug["op"], "plug");
        let status =
            serde_json::to_value(Request::from(driverkit_core::control::Request::Status)).unwrap();
        assert_eq!(status, json!({ "op": "status" }));
        let back: Request =
            serde_json::from_value(json!({ "op": "type", "id": 7, "text": "x" })).unwrap();
        assert!(matches!(
            back,
            Request::Device(DeviceRequest::Type { id, .. }) if id == EntryId::from_raw(7)
        ));
    }

    #[test]
    fn a_bad_plug_names_the_built_ins() {
        let root = tempfile::tempdir().unwrap();
        let daemon = Daemon::start(crate::Config::new(root.path().to_owned()));
        let x = extensions(&daemon);
        let e = device_request(
            &daemon,
            decode(&json!({ "op": "plug", "device": { "builtin": "nonesuch" } })).unwrap(),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("no built-in device named \"nonesuch\""),
            "{e}"
        );
        assert!(e.to_string().contains("keyboard"), "{e}");
        drop(x);
        daemon.shutdown();
    }
}

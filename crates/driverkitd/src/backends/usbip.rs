//! A USB/IP client: devices exported by any USB/IP server (Linux's
//! `usbipd`, or a simulated one) become transports like any other.
//!
//! One TCP connection per imported device. Callers write CMD_SUBMIT under a
//! lock and wait for their RET_SUBMIT, which a reader thread routes by
//! sequence number, so many URBs are in flight at once. An abort or a
//! timeout sends CMD_UNLINK; the waiting caller gets `kIOReturnAborted` or
//! `kIOReturnTimeout` either way (a RET_SUBMIT that crosses the unlink is
//! dropped). When the connection drops, every waiter fails with
//! `kIOReturnNoDevice` and the daemon unplugs the device.

use driverkit_wire::sync::Locked;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use driverkit_usb::usbip::{self, DeviceInfo, OpHeader, Urb, UrbHead};
use driverkit_usb::Setup;
use driverkit_wire::{IOResult, IOReturn};

use crate::families::usb::{Completed, Transfer, UsbTransport};

/// The IANA port of USB/IP.
pub const DEFAULT_PORT: u16 = 3240;

/// Why a device could not be listed or imported from a USB/IP server.
#[derive(Debug, thiserror::Error)]
pub enum UsbIpError {
    #[error("{url:?}: expected usbip://HOST[:PORT]/BUSID")]
    NotAUrl { url: String },
    #[error("{url:?}: no bus ID after the host (usbip://HOST/BUSID)")]
    NoBusId { url: String },
    #[error("{url:?}: the bus ID must have 1 to 31 characters")]
    BusIdLength { url: String },
    #[error("{url:?}: {problem}")]
    BadServer {
        url: String,
        problem: Box<UsbIpError>,
    },
    #[error("{0:?} is not a port number")]
    NotAPort(String),
    #[error("no host")]
    NoHost,
    #[error("{host}:{port}: {source}")]
    Resolve {
        host: String,
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("{host}:{port}: no address")]
    NoAddress { host: String, port: u16 },
    #[error("{0}: connection refused: no USB/IP server listens there (Linux's usbipd, or `driverkit device export` on the other host)")]
    Refused(std::net::SocketAddr),
    #[error("{address}: {source}")]
    Connect {
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("no {what} from the server within {} s", ANSWER_TIMEOUT.as_secs())]
    Timeout { what: String },
    #[error("reading {what}: {source}")]
    Read {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The server's answer does not read as USB/IP.
    #[error("{operation}: {error}")]
    Protocol {
        operation: &'static str,
        #[source]
        error: driverkit_usb::Error,
    },
    #[error("OP_REP_DEVLIST: {0} devices is not believable")]
    TooManyDevices(u32),
    #[error("{host}:{port} refused to list devices (status {status})")]
    ListRefused {
        host: String,
        port: u16,
        status: u32,
    },
    #[error("usbip://{}:{}/{}: the server refused the import (status {status}): no such device, or in use", url.host, url.port, url.busid)]
    ImportRefused { url: UsbIpUrl, status: u32 },
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The imported device could not be published.
    #[error(transparent)]
    Plug(#[from] crate::families::usb::PlugError),
}

impl From<UsbIpError> for String {
    fn from(e: UsbIpError) -> String {
        e.to_string()
    }
}

/// `usbip://HOST[:PORT]/BUSID`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsbIpUrl {
    pub host: String,
    pub port: u16,
    pub busid: String,
}

impl UsbIpUrl {
    pub fn parse(url: &str) -> Result<UsbIpUrl, UsbIpError> {
        let owned = || url.to_owned();
        let rest = url
            .strip_prefix("usbip://")
            .ok_or_else(|| UsbIpError::NotAUrl { url: owned() })?;
        let (server, busid) = rest
            .split_once('/')
            .ok_or_else(|| UsbIpError::NoBusId { url: owned() })?;
        if busid.is_empty() || busid.len() > 31 {
            return Err(UsbIpError::BusIdLength { url: owned() });
        }
        let (host, port) = split_host(server).map_err(|e| UsbIpError::BadServer {
            url: owned(),
            problem: Box::new(e),
        })?;
        Ok(UsbIpUrl {
            host,
            port,
            busid: busid.to_owned(),
        })
    }
}

/// `HOST[:PORT]`.
pub fn split_host(server: &str) -> Result<(String, u16), UsbIpError> {
    match server.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() => Ok((
            host.to_owned(),
            port.parse()
                .map_err(|_| UsbIpError::NotAPort(port.to_owned()))?,
        )),
        _ if !server.is_empty() => Ok((server.to_owned(), DEFAULT_PORT)),
        _ => Err(UsbIpError::NoHost),
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a server may take to answer an operation: Linux's usbipd hands
/// the connection to the kernel's usbip-host before it answers an import.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

fn connect(host: &str, port: u16) -> Result<TcpStream, UsbIpError> {
    let addrs: Vec<_> = (host, port)
        .to_socket_addrs()
        .map_err(|source| UsbIpError::Resolve {
            host: host.to_owned(),
            port,
            source,
        })?
        .collect();
    let mut last = UsbIpError::NoAddress {
        host: host.to_owned(),
        port,
    };
    for a in addrs {
        match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                last = UsbIpError::Refused(a)
            }
            Err(source) => last = UsbIpError::Connect { address: a, source },
        }
    }
    Err(last)
}

fn read_exact(s: &mut TcpStream, n: usize, what: &str) -> Result<Vec<u8>, UsbIpError> {
    let mut b = vec![0u8; n];
    s.read_exact(&mut b).map_err(|source| match source.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => UsbIpError::Timeout {
            what: what.to_owned(),
        },
        _ => UsbIpError::Read {
            what: what.to_owned(),
            source,
        },
    })?;
    Ok(b)
}

/// One exported device of a server, for `driverkit device list --usbip`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Exported {
    pub busid: String,
    pub id_vendor: u16,
    pub id_product: u16,
    pub device_class: u8,
    pub speed: u32,
    /// `(class, subclass, protocol)` per interface.
    pub interfaces: Vec<(u8, u8, u8)>,
}

/// OP_REQ_DEVLIST: the devices a server exports.
pub fn list(host: &str, port: u16) -> Result<Vec<Exported>, UsbIpError> {
    let protocol = |error| UsbIpError::Protocol {
        operation: "OP_REP_DEVLIST",
        error,
    };
    let mut s = connect(host, port)?;
    s.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    let req = OpHeader {
        version: usbip::VERSION,
        code: usbip::op::REQ_DEVLIST,
        status: 0,
    };
    s.write_all(&req.emit())?;
    let head = OpHeader::parse(&read_exact(&mut s, 8, "OP_REP_DEVLIST")?).map_err(protocol)?;
    head.expect(usbip::op::REP_DEVLIST).map_err(protocol)?;
    if head.status != 0 {
        return Err(UsbIpError::ListRefused {
            host: host.to_owned(),
            port,
            status: head.status,
        });
    }
    // The reply has no total length and some servers keep the connection
    // open: read the count, then each device and its interface records.
    let mut body = read_exact(&mut s, 4, "the device count")?;
    let count = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    if count > 4096 {
        return Err(UsbIpError::TooManyDevices(count));
    }
    for i in 0..count {
        let device = read_exact(&mut s, usbip::DEVICE_LEN, &format!("device {i}"))?;
        let interfaces = usize::from(device[usbip::DEVICE_LEN - 1]);
        body.extend(device);
        body.extend(read_exact(
            &mut s,
            4 * interfaces,
            &format!("device {i}'s interfaces"),
        )?);
    }
    let devices = usbip::parse_devlist(&body).map_err(protocol)?;
    Ok(devices
        .into_iter()
        .map(|(d, interfaces)| Exported {
            busid: d.busid,
            id_vendor: d.id_vendor,
            id_product: d.id_product,
            device_class: d.device_class,
            speed: d.speed,
            interfaces,
        })
        .collect())
}

type Waiter = mpsc::Sender<IOResult<Completed>>;

struct Pending {
    endpoint: u8,
    /// Bytes asked for (IN) or sent (OUT): a reply never counts more.
    length: usize,
    waiter: Waiter,
}

/// An imported device.
pub struct UsbIpDevice {
    url: UsbIpUrl,
    info: DeviceInfo,
    writer: Mutex<TcpStream>,
    pending: Mutex<HashMap<u32, Pending>>,
    next_seq: AtomicU32,
    aborts: Mutex<HashMap<u8, u64>>,
    closed: AtomicBool,
    /// Runs once when the connection drops without `close`.
    on_disconnect: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    location: AtomicU32,
}

impl UsbIpDevice {
    /// OP_REQ_IMPORT of `url`'s bus ID; then URBs may flow.
    pub fn import(url: &UsbIpUrl) -> Result<Arc<UsbIpDevice>, UsbIpError> {
        let protocol = |error| UsbIpError::Protocol {
            operation: "OP_REP_IMPORT",
            error,
        };
        let mut s = connect(&url.host, url.port)?;
        s.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        s.write_all(&usbip::emit_import(&url.busid))?;
        let head = OpHeader::parse(&read_exact(&mut s, 8, "OP_REP_IMPORT")?).map_err(protocol)?;
        head.expect(usbip::op::REP_IMPORT).map_err(protocol)?;
        if head.status != 0 {
            return Err(UsbIpError::ImportRefused {
                url: url.clone(),
                status: head.status,
            });
        }
        let info = DeviceInfo::parse(&read_exact(&mut s, usbip::DEVICE_LEN, "the device")?)
            .map_err(protocol)?;
        s.set_read_timeout(None)?;
        let reader = s.try_clone()?;
        let device = Arc::new(UsbIpDevice {
            url: url.clone(),
            info,
            writer: Mutex::new(s),
            pending: Mutex::new(HashMap::new()),
            next_seq: AtomicU32::new(1),
            aborts: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            on_disconnect: Mutex::new(None),
            location: AtomicU32::new(0),
        });
        let weak = Arc::downgrade(&device);
        std::thread::Builder::new()
            .name(format!("usbip:{}", url.busid))
            .spawn(move || read_loop(reader, weak))?;
        Ok(device)
    }

    /// What to do when the server goes away (the daemon unplugs).
    pub fn on_disconnect(&self, f: impl FnOnce() + Send + 'static) {
        *self.on_disconnect.locked() = Some(Box::new(f));
    }

    /// The device as the server described it.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    pub fn set_location(&self, location: u32) {
        self.location.store(location, Ordering::Relaxed);
    }

    /// Sends a CMD_SUBMIT and waits for its answer; `queued` runs once it
    /// is on the wire (the server's kernel queues URBs in arrival order).
    #[allow(clippy::too_many_arguments)]
    fn submit(
        &self,
        endpoint: u8,
        setup: [u8; 8],
        data: &[u8],
        length: usize,
        timeout: Option<Duration>,
        submitted: Option<u64>,
        queued: &mut dyn FnMut(),
    ) -> IOResult<Completed> {
        if self.closed.load(Ordering::Acquire) {
            return Err(IOReturn::NO_DEVICE);
        }
        let direction = u32::from(endpoint & 0x80 != 0);
        let seqnum = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        {
            // Registered under the aborts lock: an abort either sees this
            // URB pending or happened before, which the generation shows.
            let aborts = self.aborts.locked();
            if submitted.is_some_and(|g| aborts.get(&endpoint).copied().unwrap_or(0) != g) {
                return Err(IOReturn::ABORTED);
            }
            self.pending.locked().insert(
                seqnum,
                Pending {
                    endpoint,
                    length: if endpoint & 0x80 != 0 {
                        length
                    } else {
                        data.len()
                    },
                    waiter: tx,
                },
            );
        }
        let urb = Urb::Submit {
            seqnum,
            devid: self.info.devid(),
            direction,
            endpoint: u32::from(endpoint & 0x0f),
            transfer_flags: 0,
            length: if direction == 1 {
                length as u32
            } else {
                data.len() as u32
            },
            // The server's kernel refuses an interrupt URB with no interval
            // (usb_submit_urb: -EINVAL); 1 asks for the fastest polling the
            // endpoint allows, which the host controller clamps to its
            // bInterval. Control and bulk ignore it.
            interval: u32::from(endpoint & 0x0f != 0),
            setup,
            data: if direction == 1 {
                Vec::new()
            } else {
                data.to_vec()
            },
        };
        if self.send(&urb).is_err() {
            self.forget(seqnum);
            return Err(IOReturn::NO_DEVICE);
        }
        queued();
        let answer = match timeout {
            Some(t) => rx.recv_timeout(t).map_err(|e| match e {
                mpsc::RecvTimeoutError::Timeout => IOReturn::TIMEOUT,
                mpsc::RecvTimeoutError::Disconnected => IOReturn::NO_DEVICE,
            }),
            None => rx.recv().map_err(|_| IOReturn::NO_DEVICE),
        };
        match answer {
            Ok(result) => result,
            Err(IOReturn::TIMEOUT) => {
                if self.forget(seqnum) {
                    self.unlink(seqnum, endpoint);
                }
                Err(IOReturn::TIMEOUT)
            }
            Err(e) => Err(e),
        }
    }

    fn send(&self, urb: &Urb) -> std::io::Result<()> {
        self.writer.locked().write_all(&urb.emit())
    }

    /// Drops a pending URB; true if it was still pending.
    fn forget(&self, seqnum: u32) -> bool {
        self.pending.locked().remove(&seqnum).is_some()
    }

    fn unlink(&self, victim: u32, endpoint: u8) {
        let seqnum = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let _ = self.send(&Urb::Unlink {
            seqnum,
            devid: self.info.devid(),
            direction: u32::from(endpoint & 0x80 != 0),
            endpoint: u32::from(endpoint & 0x0f),
            victim,
        });
    }

    fn disconnected(&self) {
        let was_closed = self.closed.swap(true, Ordering::AcqRel);
        let pending: Vec<Pending> = self.pending.locked().drain().map(|(_, p)| p).collect();
        for p in pending {
            let _ = p.waiter.send(Err(IOReturn::NO_DEVICE));
        }
        if !was_closed {
            tracing::warn!("usbip    {}: connection lost; unplugging", self.source());
            let f = self.on_disconnect.locked().take();
            if let Some(f) = f {
                f();
            }
        }
    }
}

/// The rest of a URB whose 48-byte header was read: its payload, then the
/// whole message parsed. `direction`: a reply's, known from its
/// submission (see `UrbHead::parse_reply`); `None` reads it from the
/// header. The payload is bounded before it is read.
pub(crate) fn read_urb(
    s: &mut TcpStream,
    head: &[u8; usbip::URB_HEADER_LEN],
    direction: Option<u32>,
) -> Result<Urb, driverkit_usb::Error> {
    let h = match direction {
        Some(d) => UrbHead::parse_reply(head, d)?,
        None => UrbHead::parse(head)?,
    };
    let mut whole = head.to_vec();
    whole.resize(usbip::URB_HEADER_LEN + h.payload, 0);
    s.read_exact(&mut whole[usbip::URB_HEADER_LEN..])
        .map_err(|e| driverkit_usb::Error {
            offset: usbip::URB_HEADER_LEN,
            expected: format!("{} bytes of URB data", h.payload),
            found: e.to_string(),
        })?;
    match direction {
        Some(d) => Urb::parse_reply(&whole, d),
        None => Urb::parse(&whole),
    }
}

/// A transfer's failure as the Linux errno a USB/IP peer expects: the
/// inverse of [`status`], for the server's replies.
pub(crate) fn errno_of(e: IOReturn) -> i32 {
    match e {
        IOReturn::USB_PIPE_STALLED => usbip::errno::EPIPE,
        IOReturn::ABORTED => usbip::errno::ECONNRESET,
        IOReturn::TIMEOUT => usbip::errno::ETIMEDOUT,
        IOReturn::NO_DEVICE => usbip::errno::ESHUTDOWN,
        _ => 71, // EPROTO
    }
}

/// Linux's URB status, as IOReturn. Any value, `i32::MIN` included.
fn status(errno: i32) -> IOReturn {
    match errno.checked_neg().unwrap_or(i32::MAX) {
        0 => IOReturn::SUCCESS,
        usbip::errno::EPIPE => IOReturn::USB_PIPE_STALLED,
        usbip::errno::ECONNRESET | usbip::errno::ENOENT => IOReturn::ABORTED,
        usbip::errno::ETIMEDOUT => IOReturn::TIMEOUT,
        usbip::errno::ESHUTDOWN => IOReturn::NO_DEVICE,
        _ => IOReturn::IO_ERROR,
    }
}

fn read_loop(mut s: TcpStream, device: std::sync::Weak<UsbIpDevice>) {
    let mut head = [0u8; usbip::URB_HEADER_LEN];
    loop {
        if s.read_exact(&mut head).is_err() {
            break;
        }
        // Whether IN data follows a RET_SUBMIT is the submission's
        // direction, not the reply's (Linux's stub zeroes it).
        let seqnum = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        let submitted_in = device.upgrade().and_then(|d| {
            d.pending
                .locked()
                .get(&seqnum)
                .map(|p| p.endpoint & 0x80 != 0)
        });
        let direction = u32::from(submitted_in.unwrap_or(false));
        let parsed = read_urb(&mut s, &head, Some(direction));
        let Some(d) = device.upgrade() else { return };
        let urb = match parsed {
            Ok(u) => u,
            Err(e) => {
                tracing::error!("usbip    {}: bad message from the server: {e}", d.source());
                break;
            }
        };
        match urb {
            Urb::RetSubmit {
                seqnum,
                status: st,
                actual_length,
                data,
            } => {
                let p = d.pending.locked().remove(&seqnum);
                if let Some(p) = p {
                    // Never more than was asked for, whatever the peer says.
                    let result = match status(st) {
                        IOReturn::SUCCESS if p.endpoint & 0x80 != 0 => {
                            let mut data = data;
                            data.truncate(p.length);
                            Ok(Completed {
                                actual: data.len(),
                                data,
                            })
                        }
                        IOReturn::SUCCESS => Ok(Completed {
                            actual: (actual_length as usize).min(p.length),
                            data: Vec::new(),
                        }),
                        e => Err(e),
                    };
                    let _ = p.waiter.send(result);
                }
            }
            // The unlinked URB's waiter was answered when it was aborted.
            Urb::RetUnlink { .. } => {}
            Urb::Submit { .. } | Urb::Unlink { .. } => {
                tracing::warn!(
                    "usbip    {}: the server sent a command; ignored",
                    d.source()
                );
            }
        }
    }
    if let Some(d) = device.upgrade() {
        d.disconnected();
    }
}

impl UsbTransport for UsbIpDevice {
    fn source(&self) -> String {
        format!(
            "usbip://{}:{}/{}",
            self.url.host, self.url.port, self.url.busid
        )
    }

    /// Linux's `USB_SPEED_*` as the server reports it, as `USBSpeed`.
    fn speed(&self) -> u8 {
        match self.info.speed {
            1 => 0,
            3 => 2,
            5 => 3,
            6 => 4,
            _ => 1,
        }
    }

    fn location_id(&self) -> u32 {
        self.location.load(Ordering::Relaxed)
    }

    fn control(&self, setup: Setup, data: &[u8], timeout: Option<Duration>) -> IOResult<Vec<u8>> {
        let endpoint = if setup.is_in() { 0x80 } else { 0x00 };
        let length = usize::from(setup.length);
        let done = self.submit(
            endpoint,
            setup.emit(),
            data,
            length,
            timeout,
            None,
            &mut || {},
        )?;
        Ok(done.data)
    }

    fn transfer_queued(&self, t: Transfer<'_>, queued: &mut dyn FnMut()) -> IOResult<Completed> {
        let setup = [0; 8];
        let abort_generation = Some(t.submitted);
        self.submit(
            t.address,
            setup,
            t.data,
            t.length,
            t.timeout,
            abort_generation,
            queued,
        )
    }

    fn abort_generation(&self, address: u8) -> u64 {
        self.aborts.locked().get(&address).copied().unwrap_or(0)
    }

    fn abort(&self, address: u8) {
        let victims: Vec<(u32, Pending)> = {
            let mut aborts = self.aborts.locked();
            *aborts.entry(address).or_insert(0) += 1;
            let mut pending = self.pending.locked();
            let seqs: Vec<u32> = pending
                .iter()
                .filter(|(_, p)| p.endpoint == address)
                .map(|(s, _)| *s)
                .collect();
            seqs.into_iter()
                .filter_map(|s| pending.remove(&s).map(|p| (s, p)))
                .collect()
        };
        for (seqnum, p) in victims {
            self.unlink(seqnum, address);
            let _ = p.waiter.send(Err(IOReturn::ABORTED));
        }
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let _ = self.writer.locked().shutdown(Shutdown::Both);
        self.disconnected();
    }
}

/// Imports a device from a USB/IP server (`usbip://HOST[:PORT]/BUSID`) into
/// the USB family, under `bus`. A dropped connection unplugs it.
pub fn attach(
    system: &driverkit_core::System,
    usb: &crate::families::usb::UsbFamily,
    bus: driverkit_core::EntryId,
    url: &str,
) -> Result<driverkit_core::EntryId, UsbIpError> {
    let url = UsbIpUrl::parse(url)?;
    let device = UsbIpDevice::import(&url)?;
    let info = device.info();
    // Bus 0x20 and up for USB/IP, then the server's bus and device.
    device.set_location(0x2000_0000 | (info.busnum & 0xf) << 20 | (info.devnum & 0xf) << 16);
    let id = usb
        .plug(system, None, device.clone(), bus)
        .inspect_err(|_| UsbTransport::close(&*device))?;
    let system = system.clone();
    device.on_disconnect(move || system.schedule_terminate(id));
    Ok(id)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_status_maps_without_overflow() {
        assert_eq!(status(0), IOReturn::SUCCESS);
        assert_eq!(status(-usbip::errno::EPIPE), IOReturn::USB_PIPE_STALLED);
        assert_eq!(status(i32::MIN), IOReturn::IO_ERROR);
        assert_eq!(status(i32::MAX), IOReturn::IO_ERROR);
        // What the server sends is read back as what it meant.
        for e in [
            IOReturn::USB_PIPE_STALLED,
            IOReturn::ABORTED,
            IOReturn::TIMEOUT,
            IOReturn::NO_DEVICE,
            IOReturn::IO_ERROR,
        ] {
            assert_eq!(status(-errno_of(e)), e);
        }
    }

    use super::*;

    #[test]
    fn urls_name_what_is_wrong() {
        assert_eq!(
            UsbIpUrl::parse("usbip://127.0.0.1:3241/1-1").unwrap(),
            UsbIpUrl {
                host: "127.0.0.1".into(),
                port: 3241,
                busid: "1-1".into()
            }
        );
        assert_eq!(UsbIpUrl::parse("usbip://host/2-1").unwrap().port, 3240);
        assert!(UsbIpUrl::parse("http://h/1")
            .unwrap_err()
            .to_string()
            .contains("usbip://"));
        assert!(UsbIpUrl::parse("usbip://h")
            .unwrap_err()
            .to_string()
            .contains("bus ID"));
        assert!(UsbIpUrl::parse("usbip://h:x/1")
            .unwrap_err()
            .to_string()
            .contains("port"));
    }

    #[test]
    fn a_closed_port_is_a_clear_error() {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = free.local_addr().unwrap().port();
        drop(free);
        let e = list("127.0.0.1", port).unwrap_err();
        assert!(e.to_string().contains("127.0.0.1"), "{e}");
        assert!(
            e.to_string().contains("no USB/IP server listens there"),
            "{e}"
        );
    }
}

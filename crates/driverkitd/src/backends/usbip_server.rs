//! The USB/IP server: any USB device the daemon holds (virtual, imported,
//! or a real one no dext drives) exported with the kernel's own protocol
//! (USB/IP 1.1.1), so that Linux's `usbip attach` on another machine imports
//! it through `vhci-hcd`, and a lab or a CI fleet shares devices across
//! hosts. Our own client imports from it too.
//!
//! One connection per import, from a peer the export admits
//! (`usbip_access`: its address, and on loopback its user). While a peer
//! has a device, the USB family lends it out whole (our own services on it
//! stop; matching leaves it alone); it comes back when the peer
//! disconnects. CMD_SUBMITs run on the connection's pool, a thread for
//! each URB in flight (a transfer blocks until the device answers, and an
//! IN may wait for ever, so fewer threads would let pending reads starve
//! the rest), reused, at most [`MAX_IN_FLIGHT`] URBs and
//! [`MAX_BYTES_IN_FLIGHT`] bytes at once per connection: past that the connection stops reading its peer (TCP pushes
//! back), so a peer that floods, or never reads its answers, stalls only
//! itself. CMD_UNLINK aborts the URB's
//! endpoint (our transports abort per endpoint) and answers
//! `-ECONNRESET`; the other URBs aborted with it answer the same, as a
//! host controller would after an endpoint reset.

use driverkit_wire::sync::{Locked, Waited};
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use driverkit_core::{EntryId, System};

use super::usbip_access::{Access, AccessError};
use crate::families::usb::order::InOrder;
use driverkit_usb::usbip::{self, cmd, op, DeviceInfo, OpHeader, Urb};
use driverkit_usb::{DeviceDescriptor, Setup};

use crate::families::usb::{Transfer, UsbDevice, UsbFamily};

/// URBs one connection may have in flight, each on its thread.
pub const MAX_IN_FLIGHT: usize = 64;
/// Payload bytes one connection may hold in flight.
pub const MAX_BYTES_IN_FLIGHT: usize = 64 << 20;
/// Connections one server serves at once.
pub const MAX_PEERS: usize = 16;

/// The server: its address, what it exports and to whom.
pub struct UsbIpServer {
    pub address: SocketAddr,
    exported: Arc<Mutex<HashSet<EntryId>>>,
    access: Arc<Mutex<Access>>,
}

/// Why an export could not start.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("--listen {0:?}: expected HOST:PORT with HOST an IP address")]
    NotAnAddress(String),
    #[error("cannot listen for USB/IP at {listen}: {source}")]
    Listen {
        listen: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error(transparent)]
    Lend(#[from] crate::families::usb::LendError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("the USB/IP server did not start")]
    NotStarted,
}

impl From<ExportError> for String {
    fn from(e: ExportError) -> String {
        e.to_string()
    }
}

/// Why the server stopped serving one peer.
#[derive(Debug, thiserror::Error)]
enum PeerError {
    #[error("reading {what}: {source}")]
    Read {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("bad {what}: {error}")]
    Malformed {
        what: &'static str,
        #[source]
        error: driverkit_usb::Error,
    },
    #[error("unknown operation {0:#06x}")]
    UnknownOperation(u16),
    #[error("{busid}: {source}")]
    Connection {
        busid: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{busid}: bad message from the peer: {error}")]
    BadMessage {
        busid: String,
        #[source]
        error: driverkit_usb::Error,
    },
    #[error("{0}: cannot start a transfer")]
    NoWorker(String),
    #[error(
        "{busid}: the peer sent a reply (command {}); it is the client",
        cmd::RET_SUBMIT
    )]
    ReplyFromClient { busid: String },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl UsbIpServer {
    /// Listens at `listen` (port 0: any free one) and serves, to the peers
    /// `access` admits, until the daemon exits.
    pub fn start(
        system: System,
        usb: Arc<UsbFamily>,
        listen: &str,
        access: Access,
    ) -> Result<UsbIpServer, ExportError> {
        let wanted: SocketAddr = listen
            .parse()
            .map_err(|_| ExportError::NotAnAddress(listen.to_owned()))?;
        access.check_listen(wanted)?;
        let listener = TcpListener::bind(wanted).map_err(|source| ExportError::Listen {
            listen: listen.to_owned(),
            source,
        })?;
        let address = listener.local_addr()?;
        let exported: Arc<Mutex<HashSet<EntryId>>> = Arc::default();
        let access = Arc::new(Mutex::new(access));
        let (shared, rules) = (exported.clone(), access.clone());
        let peers = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        std::thread::Builder::new()
            .name("usbip-server".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    use std::sync::atomic::Ordering;
                    let peer = stream.peer_addr().ok();
                    let shown = peer.map_or_else(|| "(no address)".to_owned(), |p| p.to_string());
                    let admitted = match (peer, stream.local_addr()) {
                        (Some(p), Ok(l)) => rules.locked().admit(p, l).map_err(|e| e.to_string()),
                        _ => Err("a peer without an address".to_owned()),
                    };
                    if let Err(why) = admitted {
                        tracing::warn!("usbip    refused: {why}");
                        continue;
                    }
                    if peers.fetch_add(1, Ordering::AcqRel) >= MAX_PEERS {
                        peers.fetch_sub(1, Ordering::AcqRel);
                        tracing::warn!(
                            "usbip    refused {shown}: {MAX_PEERS} peers are served already"
                        );
                        continue;
                    }
                    let (system, usb, exported, served) =
                        (system.clone(), usb.clone(), shared.clone(), peers.clone());
                    let spawned =
                        std::thread::Builder::new()
                            .name("usbip-peer".into())
                            .spawn(move || {
                                if let Err(e) = serve(stream, &system, &usb, &exported) {
                                    tracing::warn!("usbip    peer {shown}: {e}");
                                }
                                served.fetch_sub(1, Ordering::AcqRel);
                            });
                    if spawned.is_err() {
                        peers.fetch_sub(1, Ordering::AcqRel);
                    }
                }
            })?;
        tracing::info!("usbip    exporting at {address}");
        Ok(UsbIpServer {
            address,
            exported,
            access,
        })
    }

    /// Adds devices to what the server exports, and peers and users to who
    /// may import them.
    pub fn export(&self, ids: &[EntryId], more: &Access) -> Result<(), ExportError> {
        let mut access = self.access.locked();
        let mut next = access.clone();
        next.allow.extend(more.allow.iter().copied());
        next.users.extend(more.users.iter().copied());
        next.check_listen(self.address)?;
        *access = next;
        self.exported.locked().extend(ids);
        Ok(())
    }
}

/// The bus ID a device is exported under, from its `locationID`: the bus,
/// then the ports (`1-1`, `1-2.3`), as Linux names USB devices.
pub fn bus_id(location: u32) -> String {
    let bus = location >> 24;
    let mut ports = Vec::new();
    for i in 0..6 {
        let port = (location >> (20 - 4 * i)) & 0xf;
        if port == 0 {
            break;
        }
        ports.push(port.to_string());
    }
    if ports.is_empty() {
        ports.push("0".into());
    }
    format!("{bus}-{}", ports.join("."))
}

/// How the server describes a device.
fn describe(entry: EntryId, device: &UsbDevice) -> Option<usbip::Exported> {
    let d = DeviceDescriptor::new_checked(&device.enumerated.device, 0).ok()?;
    let location = device.transport.location_id();
    let config = device.enumerated.configurations.first()?;
    let (_, interfaces) = driverkit_usb::interfaces(config).ok()?;
    let interfaces: Vec<(u8, u8, u8)> = interfaces
        .iter()
        .filter(|i| i.descriptor.alternate_setting() == 0)
        .map(|i| {
            (
                i.descriptor.interface_class(),
                i.descriptor.interface_subclass(),
                i.descriptor.interface_protocol(),
            )
        })
        .collect();
    let busid = bus_id(location);
    Some((
        DeviceInfo {
            path: format!("/sys/devices/driverkit/{busid}"),
            busnum: (location >> 24).max(1),
            // Unique per device on this server.
            devnum: (entry.raw() & 0xffff) as u32,
            busid,
            // USB_SPEED_FULL.
            speed: 2,
            id_vendor: d.vendor_id(),
            id_product: d.product_id(),
            bcd_device: d.bcd_device(),
            device_class: d.device_class(),
            device_subclass: d.device_subclass(),
            device_protocol: d.device_protocol(),
            configuration_value: config.get(5).copied().unwrap_or(1),
            num_configurations: d.num_configurations(),
            num_interfaces: interfaces.len() as u8,
        },
        interfaces,
    ))
}

fn read(s: &mut TcpStream, n: usize, what: &'static str) -> Result<Vec<u8>, PeerError> {
    let mut b = vec![0u8; n];
    s.read_exact(&mut b)
        .map_err(|source| PeerError::Read { what, source })?;
    Ok(b)
}

fn serve(
    mut s: TcpStream,
    system: &System,
    usb: &Arc<UsbFamily>,
    exported: &Mutex<HashSet<EntryId>>,
) -> Result<(), PeerError> {
    let _ = s.set_nodelay(true);
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let head =
        OpHeader::parse(&read(&mut s, usbip::OP_HEADER_LEN, "an operation")?).map_err(|error| {
            PeerError::Malformed {
                what: "operation",
                error,
            }
        })?;
    let devices: Vec<(EntryId, usbip::Exported)> = {
        let ids: Vec<EntryId> = exported.locked().iter().copied().collect();
        ids.into_iter()
            .filter_map(|id| {
                let d = usb.device(id)?;
                Some((id, describe(id, &d)?))
            })
            .collect()
    };
    let reply = |code: u16, status: u32| {
        OpHeader {
            version: usbip::VERSION,
            code,
            status,
        }
        .emit()
    };
    match head.code {
        op::REQ_DEVLIST => {
            let list: Vec<_> = devices.into_iter().map(|(_, d)| d).collect();
            let mut out = reply(op::REP_DEVLIST, 0).to_vec();
            out.extend(usbip::emit_devlist(&list));
            Ok(s.write_all(&out)?)
        }
        op::REQ_IMPORT => {
            let busid = usbip::parse_import(&read(&mut s, 32, "the bus ID")?).map_err(|error| {
                PeerError::Malformed {
                    what: "import",
                    error,
                }
            })?;
            let Some((entry, (info, _))) = devices.into_iter().find(|(_, (d, _))| d.busid == busid)
            else {
                tracing::warn!("usbip    import of {busid:?}: no such exported device");
                return Ok(s.write_all(&reply(op::REP_IMPORT, 1))?);
            };
            let device = match usb.lend(system, entry) {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!("usbip    import of {busid}: {e}");
                    return Ok(s.write_all(&reply(op::REP_IMPORT, 1))?);
                }
            };
            let mut out = reply(op::REP_IMPORT, 0).to_vec();
            out.extend(info.emit());
            s.write_all(&out)?;
            tracing::info!(
                "usbip    {busid} [{entry:#x}] lent to {}",
                s.peer_addr().map_or_else(
                    |_| "a peer without an address".to_owned(),
                    |a| a.to_string()
                )
            );
            let result = serve_urbs(s, &device, &busid);
            usb.give_back(system, entry);
            tracing::info!("usbip    {busid} [{entry:#x}] back");
            result
        }
        other => Err(PeerError::UnknownOperation(other)),
    }
}

/// A URB on its way: its endpoint, and whether an UNLINK took it.
struct InFlight {
    address: u8,
    unlinked: bool,
}

/// What one connection holds in flight, and the wait for room.
#[derive(Default)]
struct Budget {
    held: Mutex<(usize, usize)>,
    room: std::sync::Condvar,
}

impl Budget {
    /// Waits until one more URB of `bytes` fits, then takes it.
    fn take(&self, bytes: usize) {
        let mut held = self.held.locked();
        while held.0 >= MAX_IN_FLIGHT || (held.1 > 0 && held.1 + bytes > MAX_BYTES_IN_FLIGHT) {
            held = self.room.waited(held);
        }
        held.0 += 1;
        held.1 += bytes;
    }

    fn give(&self, bytes: usize) {
        let mut held = self.held.locked();
        held.0 -= 1;
        held.1 -= bytes;
        self.room.notify_all();
    }

    /// Waits until nothing is in flight, at most `limit`.
    fn drain(&self, limit: Duration) {
        let deadline = std::time::Instant::now() + limit;
        let mut held = self.held.locked();
        while held.0 > 0 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            held = self.room.waited_timeout(held, left).0;
        }
    }
}

/// One CMD_SUBMIT to run: queued on its endpoint after the URBs that
/// arrived before it (`turn`), as Linux's `usbip_host` submits them.
struct Job {
    turn: Option<(Arc<InOrder>, u64)>,
    seqnum: u32,
    direction: u32,
    endpoint: u32,
    address: u8,
    length: usize,
    setup: [u8; 8],
    data: Vec<u8>,
    submitted: u64,
    /// What it holds of the budget.
    bytes: usize,
}

fn serve_urbs(s: TcpStream, device: &Arc<UsbDevice>, busid: &str) -> Result<(), PeerError> {
    s.set_read_timeout(None)?;
    let writer = Arc::new(Mutex::new(s.try_clone()?));
    let in_flight: Arc<Mutex<HashMap<u32, InFlight>>> = Arc::default();
    let budget = Arc::new(Budget::default());
    let mut orders: HashMap<u8, Arc<InOrder>> = HashMap::new();
    let pool = Arc::new(Pool {
        state: Mutex::default(),
        ready: std::sync::Condvar::new(),
        device: device.clone(),
        writer: writer.clone(),
        in_flight: in_flight.clone(),
        budget: budget.clone(),
    });
    let send = |writer: &Mutex<TcpStream>, urb: &Urb| {
        let _ = writer.locked().write_all(&urb.emit());
    };
    let mut s = s;
    let end = loop {
        let mut head = [0u8; usbip::URB_HEADER_LEN];
        if let Err(e) = s.read_exact(&mut head) {
            break if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Ok(())
            } else {
                Err(PeerError::Connection {
                    busid: busid.to_owned(),
                    source: e,
                })
            };
        }
        let parsed = super::usbip::read_urb(&mut s, &head, None);
        let urb = match parsed {
            Ok(u) => u,
            Err(error) => {
                break Err(PeerError::BadMessage {
                    busid: busid.to_owned(),
                    error,
                })
            }
        };
        match urb {
            Urb::Submit {
                seqnum,
                direction,
                endpoint,
                length,
                setup,
                data,
                ..
            } => {
                let address = (endpoint & 0x0f) as u8 | if direction == 1 { 0x80 } else { 0 };
                let length = (length as usize).min(usbip::MAX_PAYLOAD);
                let bytes = data.len().max(if direction == 1 { length } else { 0 });
                // Past the budget, stop reading the peer until a URB ends.
                budget.take(bytes);
                let submitted = device.transport.abort_generation(address);
                in_flight.locked().insert(
                    seqnum,
                    InFlight {
                        address,
                        unlinked: false,
                    },
                );
                // Data endpoints keep the order the URBs arrived in.
                let turn = (endpoint & 0x0f != 0).then(|| {
                    let order = orders.entry(address).or_default().clone();
                    let ticket = order.ticket();
                    (order, ticket)
                });
                let job = Job {
                    turn,
                    seqnum,
                    direction,
                    endpoint,
                    address,
                    length,
                    setup,
                    data,
                    submitted,
                    bytes,
                };
                if !pool.run(job) {
                    break Err(PeerError::NoWorker(busid.to_owned()));
                }
            }
            Urb::Unlink { seqnum, victim, .. } => {
                let address = {
                    let mut t = in_flight.locked();
                    t.get_mut(&victim).map(|v| {
                        v.unlinked = true;
                        v.address
                    })
                };
                let status = match address {
                    Some(a) => {
                        if a & 0x0f != 0 {
                            device.transport.abort(a);
                        }
                        -usbip::errno::ECONNRESET
                    }
                    // Already answered: nothing to unlink.
                    None => 0,
                };
                send(&writer, &Urb::RetUnlink { seqnum, status });
            }
            Urb::RetSubmit { .. } | Urb::RetUnlink { .. } => {
                break Err(PeerError::ReplyFromClient {
                    busid: busid.to_owned(),
                });
            }
        }
    };
    // The peer is gone: whatever it left waiting ends, and so do the
    // workers (a worker blocked writing to a peer that never reads is
    // released by the shutdown).
    let _ = s.shutdown(std::net::Shutdown::Both);
    let addresses: HashSet<u8> = in_flight.locked().values().map(|t| t.address).collect();
    for a in addresses.into_iter().filter(|a| a & 0x0f != 0) {
        device.transport.abort(a);
    }
    // What the peer left running ends with the aborts; wait for it
    // before the device is given back.
    budget.drain(Duration::from_secs(10));
    pool.close();
    end
}

/// The threads that run one connection's URBs: made as URBs come and none
/// is idle, never more than [`MAX_IN_FLIGHT`] (the budget holds no more
/// URBs than that, so none waits for a thread: an IN that waits for ever
/// cannot starve the rest), reused, gone when the connection ends.
struct Pool {
    state: Mutex<PoolState>,
    ready: std::sync::Condvar,
    device: Arc<UsbDevice>,
    writer: Arc<Mutex<TcpStream>>,
    in_flight: Arc<Mutex<HashMap<u32, InFlight>>>,
    budget: Arc<Budget>,
}

#[derive(Default)]
struct PoolState {
    jobs: std::collections::VecDeque<Job>,
    idle: usize,
    threads: usize,
    closed: bool,
}

impl Pool {
    /// Runs `job` on an idle thread or a new one; false if none could be
    /// made.
    fn run(self: &Arc<Self>, job: Job) -> bool {
        let mut st = self.state.locked();
        st.jobs.push_back(job);
        if st.idle >= st.jobs.len() {
            drop(st);
            self.ready.notify_one();
            return true;
        }
        if st.threads >= MAX_IN_FLIGHT {
            return true; // one frees up: the budget holds no more
        }
        st.threads += 1;
        drop(st);
        let pool = self.clone();
        let spawned = std::thread::Builder::new()
            .name("usbip-urb".into())
            .spawn(move || pool.work());
        if spawned.is_err() {
            self.state.locked().threads -= 1;
        }
        spawned.is_ok()
    }

    fn work(&self) {
        let send = |writer: &Mutex<TcpStream>, urb: &Urb| {
            let _ = writer.locked().write_all(&urb.emit());
        };
        let mut st = self.state.locked();
        loop {
            if let Some(job) = st.jobs.pop_front() {
                drop(st);
                let bytes = job.bytes;
                run_urb(&self.device, job, &self.writer, &self.in_flight, send);
                self.budget.give(bytes);
                st = self.state.locked();
                continue;
            }
            if st.closed {
                st.threads -= 1;
                return;
            }
            st.idle += 1;
            st = self.ready.waited(st);
            st.idle -= 1;
        }
    }

    /// The connection ended: idle threads leave, busy ones once done.
    fn close(&self) {
        self.state.locked().closed = true;
        self.ready.notify_all();
    }
}

/// Runs one URB on the device and answers it, unless an UNLINK already
/// did.
fn run_urb(
    device: &UsbDevice,
    job: Job,
    writer: &Mutex<TcpStream>,
    in_flight: &Mutex<HashMap<u32, InFlight>>,
    send: impl Fn(&Mutex<TcpStream>, &Urb),
) {
    let transport = &device.transport;
    let result = if job.endpoint & 0x0f == 0 {
        transport
            .control(
                Setup::parse(job.setup),
                &job.data,
                Some(Duration::from_secs(10)),
            )
            .map(|d| (d.len(), d))
    } else {
        let turn = job.turn.as_ref();
        if let Some((order, ticket)) = turn {
            order.wait_to_queue(*ticket);
        }
        let mut queued = || {
            if let Some((order, ticket)) = turn {
                order.queued(*ticket);
            }
        };
        let transfer = Transfer {
            address: job.address,
            data: &job.data,
            length: job.length,
            timeout: None,
            submitted: job.submitted,
        };
        let result = transport.transfer_queued(transfer, &mut queued);
        // Failed before it had a place: the next may go.
        queued();
        result.map(|c| {
            if job.address & 0x80 != 0 {
                (c.data.len(), c.data)
            } else {
                (c.actual, Vec::new())
            }
        })
    };
    let unlinked = in_flight
        .locked()
        .remove(&job.seqnum)
        .is_none_or(|t| t.unlinked);
    if unlinked {
        return; // answered by RET_UNLINK
    }
    let urb = match result {
        Ok((actual, data)) => Urb::RetSubmit {
            seqnum: job.seqnum,
            status: 0,
            actual_length: actual as u32,
            data: if job.direction == 1 { data } else { Vec::new() },
        },
        Err(e) => Urb::RetSubmit {
            seqnum: job.seqnum,
            status: -super::usbip::errno_of(e),
            actual_length: 0,
            data: Vec::new(),
        },
    };
    send(writer, &urb);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_ids_follow_the_location() {
        assert_eq!(bus_id(0x0110_0000), "1-1");
        assert_eq!(bus_id(0x0123_0000), "1-2.3");
        assert_eq!(bus_id(0x2000_0000), "32-0");
    }
}

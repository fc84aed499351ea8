//! The USB/IP server: any USB device the daemon holds (virtual, imported,
//! or a real one no dext drives) exported with the kernel's own protocol
//! (USB/IP 1.1.1), so that Linux's `usbip attach` on another machine imports
//! it through `vhci-hcd`, and a lab or a CI fleet shares devices across
//! hosts. Our own client imports from it too.
//!
//! One connection per import. While a peer has a device, the USB family
//! lends it out whole (our own services on it stop; matching leaves it
//! alone); it comes back when the peer disconnects. Each CMD_SUBMIT runs
//! on a worker, so many URBs are in flight; CMD_UNLINK aborts the URB's
//! endpoint (our transports abort per endpoint) and answers
//! `-ECONNRESET`; the other URBs aborted with it answer the same, as a
//! host controller would after an endpoint reset.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use driverkit_core::{EntryId, System};
use driverkit_usb::usbip::{self, cmd, op, DeviceInfo, OpHeader, Urb};
use driverkit_usb::{DeviceDescriptor, Setup};

use crate::families::usb::{UsbDevice, UsbFamily};

/// The server: its address and what it exports.
pub struct UsbIpServer {
    pub address: SocketAddr,
    exported: Arc<Mutex<HashSet<EntryId>>>,
}

impl UsbIpServer {
    /// Listens at `listen` (port 0: any free one) and serves until the
    /// daemon exits.
    pub fn start(system: System, usb: Arc<UsbFamily>, listen: &str) -> Result<UsbIpServer, String> {
        let listener = TcpListener::bind(listen)
            .map_err(|e| format!("cannot listen for USB/IP at {listen}: {e}"))?;
        let address = listener.local_addr().map_err(|e| e.to_string())?;
        let exported: Arc<Mutex<HashSet<EntryId>>> = Arc::default();
        let shared = exported.clone();
        std::thread::Builder::new()
            .name("usbip-server".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    let (system, usb, exported) = (system.clone(), usb.clone(), shared.clone());
                    let _ =
                        std::thread::Builder::new()
                            .name("usbip-peer".into())
                            .spawn(move || {
                                let peer = stream
                                    .peer_addr()
                                    .map(|a| a.to_string())
                                    .unwrap_or_default();
                                if let Err(e) = serve(stream, &system, &usb, &exported) {
                                    tracing::warn!("usbip    peer {peer}: {e}");
                                }
                            });
                }
            })
            .map_err(|e| e.to_string())?;
        tracing::info!("usbip    exporting at {address}");
        Ok(UsbIpServer { address, exported })
    }

    /// Adds devices to what the server exports.
    pub fn export(&self, ids: &[EntryId]) {
        self.exported
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(ids);
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
            devnum: (entry & 0xffff) as u32,
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

fn read(s: &mut TcpStream, n: usize, what: &str) -> Result<Vec<u8>, String> {
    let mut b = vec![0u8; n];
    s.read_exact(&mut b)
        .map_err(|e| format!("reading {what}: {e}"))?;
    Ok(b)
}

fn serve(
    mut s: TcpStream,
    system: &System,
    usb: &Arc<UsbFamily>,
    exported: &Mutex<HashSet<EntryId>>,
) -> Result<(), String> {
    let _ = s.set_nodelay(true);
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let head = OpHeader::parse(&read(&mut s, usbip::OP_HEADER_LEN, "an operation")?)
        .map_err(|e| format!("bad operation: {e}"))?;
    let devices: Vec<(EntryId, usbip::Exported)> = {
        let ids: Vec<EntryId> = exported
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect();
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
            s.write_all(&out).map_err(|e| e.to_string())
        }
        op::REQ_IMPORT => {
            let busid = usbip::parse_import(&read(&mut s, 32, "the bus ID")?)
                .map_err(|e| format!("bad import: {e}"))?;
            let Some((entry, (info, _))) = devices.into_iter().find(|(_, (d, _))| d.busid == busid)
            else {
                tracing::warn!("usbip    import of {busid:?}: no such exported device");
                return s
                    .write_all(&reply(op::REP_IMPORT, 1))
                    .map_err(|e| e.to_string());
            };
            let device = match usb.lend(system, entry) {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!("usbip    import of {busid}: {e}");
                    return s
                        .write_all(&reply(op::REP_IMPORT, 1))
                        .map_err(|e| e.to_string());
                }
            };
            let mut out = reply(op::REP_IMPORT, 0).to_vec();
            out.extend(info.emit());
            s.write_all(&out).map_err(|e| e.to_string())?;
            tracing::info!(
                "usbip    {busid} [{entry:#x}] lent to {:?}",
                s.peer_addr().ok()
            );
            let result = serve_urbs(s, &device, &busid);
            usb.give_back(system, entry);
            tracing::info!("usbip    {busid} [{entry:#x}] back");
            result
        }
        other => Err(format!("unknown operation {other:#06x}")),
    }
}

/// A URB on its way: its endpoint, and whether an UNLINK took it.
struct InFlight {
    address: u8,
    unlinked: bool,
}

fn serve_urbs(s: TcpStream, device: &Arc<UsbDevice>, busid: &str) -> Result<(), String> {
    s.set_read_timeout(None).map_err(|e| e.to_string())?;
    let writer = Arc::new(Mutex::new(s.try_clone().map_err(|e| e.to_string())?));
    let in_flight: Arc<Mutex<HashMap<u32, InFlight>>> = Arc::default();
    let mut s = s;
    let send = |writer: &Mutex<TcpStream>, urb: &Urb| {
        let _ = writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_all(&urb.emit());
    };
    let end = loop {
        let mut head = [0u8; usbip::URB_HEADER_LEN];
        if let Err(e) = s.read_exact(&mut head) {
            break if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Ok(())
            } else {
                Err(format!("{busid}: {e}"))
            };
        }
        let parsed = super::usbip::read_urb(&mut s, &head, None);
        let urb = match parsed {
            Ok(u) => u,
            Err(e) => break Err(format!("{busid}: bad message from the peer: {e}")),
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
                let transport = device.transport.clone();
                let submitted = transport.abort_generation(address);
                in_flight.lock().unwrap_or_else(|e| e.into_inner()).insert(
                    seqnum,
                    InFlight {
                        address,
                        unlinked: false,
                    },
                );
                let (writer, in_flight) = (writer.clone(), in_flight.clone());
                let length = (length as usize).min(usbip::MAX_PAYLOAD);
                let spawned =
                    std::thread::Builder::new()
                        .name("usbip-urb".into())
                        .spawn(move || {
                            let result = if endpoint & 0x0f == 0 {
                                transport
                                    .control(
                                        Setup::parse(setup),
                                        &data,
                                        Some(Duration::from_secs(10)),
                                    )
                                    .map(|d| (d.len(), d))
                            } else {
                                transport
                                    .transfer(address, &data, length, None, submitted)
                                    .map(|c| {
                                        if address & 0x80 != 0 {
                                            (c.data.len(), c.data)
                                        } else {
                                            (c.actual, Vec::new())
                                        }
                                    })
                            };
                            let unlinked = in_flight
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .remove(&seqnum)
                                .is_none_or(|t| t.unlinked);
                            if unlinked {
                                return; // answered by RET_UNLINK
                            }
                            let urb = match result {
                                Ok((actual, data)) => Urb::RetSubmit {
                                    seqnum,
                                    status: 0,
                                    actual_length: actual as u32,
                                    data: if direction == 1 { data } else { Vec::new() },
                                },
                                Err(e) => Urb::RetSubmit {
                                    seqnum,
                                    status: -super::usbip::errno_of(e),
                                    actual_length: 0,
                                    data: Vec::new(),
                                },
                            };
                            send(&writer, &urb);
                        });
                if spawned.is_err() {
                    break Err(format!("{busid}: cannot start a transfer"));
                }
            }
            Urb::Unlink { seqnum, victim, .. } => {
                let address = {
                    let mut t = in_flight.lock().unwrap_or_else(|e| e.into_inner());
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
                break Err(format!(
                    "{busid}: the peer sent a reply (command {}); it is the client",
                    cmd::RET_SUBMIT
                ));
            }
        }
    };
    // The peer is gone: whatever it left waiting ends.
    let addresses: HashSet<u8> = in_flight
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .map(|t| t.address)
        .collect();
    for a in addresses.into_iter().filter(|a| a & 0x0f != 0) {
        device.transport.abort(a);
    }
    end
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

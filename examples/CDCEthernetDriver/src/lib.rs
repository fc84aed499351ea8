//! CDCEthernetDriver: a USB CDC Ethernet (ECM) adapter as an Ethernet
//! interface.
//!
//! Its personality matches the adapter's communication (control) interface
//! and names `IOUserNetworkEthernet` as its class. In `start` it reads the
//! control interface's functional descriptors ([`cdc`]): the Union names
//! the data interface, the Ethernet Networking descriptor the string that
//! holds the MAC address and the largest frame. Then it takes the data
//! interface from the device (`CopyDevice`, `CopyInterface`), selects the
//! alternate setting that has the bulk endpoints (ECM keeps alternate 0
//! empty, so a host that is not using the function moves nothing), and
//! registers an interface with the adapter's MAC.
//!
//! On the `Default` queue:
//!
//! - `tx_packets_available`: each frame goes out as one bulk-OUT transfer,
//!   up to [`WRITES`] in flight; a frame that fills its last USB packet
//!   exactly gets one byte of padding (no zero-length packets needed);
//! - [`READS`] bulk-IN reads stay in flight, each completing with one frame
//!   (a transfer ends at a short packet); a frame with no empty buffer to
//!   go into waits, its read parked, until `rx_buffers_available`;
//! - the interrupt endpoint's NETWORK_CONNECTION notifications set the
//!   link (only on a change: QEMU's usb-net repeats its notification at
//!   every poll). Until the first one the link is taken as up: some
//!   adapters never send one;
//! - `ip link set promisc|allmulticast|down` become
//!   SET_ETHERNET_PACKET_FILTER (0 while down). A device that refuses the
//!   request delivers everything anyway: the refusal is
//!   logged, not fatal, as in Linux's cdc_ether.

pub mod cdc;

use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Mutex;

use driverkit::net::media;
use driverkit::prelude::*;
use driverkit::usb::{Direction, TransferType};

use cdc::{filter, Notification};

/// The bundle's Info.plist, for hosts that assemble the bundle themselves.
pub const INFO_PLIST: &str = include_str!("../Info.plist");

/// What the driver is entitled to: `Entitlements.plist`, installed in its bundle.
pub const ENTITLEMENTS: &str = include_str!("../Entitlements.plist");

/// Bulk-IN reads and bulk-OUT writes in flight.
pub const READS: usize = 8;
pub const WRITES: usize = 8;
/// A transfer's buffer: the largest Ethernet frame and then some (a read
/// of exactly the frame size would not end at a frame's short packet).
const TRANSFER: usize = 2048;
const PACKETS: u32 = 256;
const BUFFER: u32 = 2048;
const NOTIFICATION: usize = 16;
const CONTROL_TIMEOUT_MS: u32 = 1000;

#[derive(Default)]
pub struct CDCEthernetDriverIvars {
    usb: WhileStarted<Usb>,
    /// Per write slot: the packet its transfer carries.
    writing: Mutex<Vec<Option<IOUserNetworkPacket>>>,
    /// Frames received with no empty buffer to go into, and their reads.
    held: Mutex<Vec<(usize, Vec<u8>)>>,
    /// The packet filter asked for, and whether the interface is up.
    filter: AtomicU16,
    enabled: AtomicBool,
    /// The filter the device was last given (None before the first): an
    /// unchanged filter is not sent again.
    programmed: Mutex<Option<u16>>,
    max_segment: AtomicU16,
    multicast_filters: AtomicU16,
    /// The link as last reported (some devices repeat their notification
    /// at every poll).
    link: Mutex<Option<bool>>,
}

struct Usb {
    control: IOUSBHostInterface,
    control_number: u8,
    notify: Option<IOUSBHostPipe>,
    max_packet: usize,
    /// The transfers in flight on the bulk-IN and bulk-OUT pipes (which
    /// they hold).
    reads: TransferSlots,
    writes: TransferSlots,
    status: (IOBufferMemoryDescriptor, OSAction),
}

#[driverkit::service(superclass = IOUserNetworkEthernet, ivars = CDCEthernetDriverIvars)]
pub struct CDCEthernetDriver;

/// The data interface's setting with a bulk endpoint each way: its
/// number, bulk IN and OUT addresses and OUT's packet size.
fn data_setting(
    configuration: &driverkit::usb::descriptors::ConfigurationRepr,
    number: u8,
) -> Option<(u8, u8, u8, usize)> {
    configuration
        .interfaces
        .iter()
        .filter(|i| i.number == number)
        .find_map(|i| {
            let bulk = |direction| {
                i.endpoints
                    .iter()
                    .find(|e| e.transfer_type == TransferType::Bulk && e.direction() == direction)
            };
            let (bin, bout) = (bulk(Direction::In)?, bulk(Direction::Out)?);
            Some((
                i.alternate_setting,
                bin.address,
                bout.address,
                usize::from(bout.max_packet_size),
            ))
        })
}

/// `result`, with what failed logged by name.
fn step<T>(what: &str, result: IOResult<T>) -> IOResult<T> {
    result.inspect_err(|e| driverkit::error!("start: {what}: {e}"))
}

impl CDCEthernetDriver {
    fn submit_read(&self, slot: usize) {
        if let Err(e) = self.ivars().usb.with(|u| u.reads.read(slot)) {
            driverkit::warn!("bulk IN read {slot}: {e}");
        }
    }

    fn submit_status(&self) {
        let submitted = self.ivars().usb.with(|u| match &u.notify {
            Some(pipe) => pipe.async_io(&u.status.0, NOTIFICATION, &u.status.1, 0),
            None => Ok(()),
        });
        if let Err(e) = submitted {
            driverkit::warn!("interrupt IN: {e}");
        }
    }

    /// SET_ETHERNET_PACKET_FILTER with what the interface asks for now,
    /// unless the device has it already.
    fn program_filter(&self) {
        let i = self.ivars();
        // Held across the request: two changes at once reach the device
        // in the order they were decided.
        let mut programmed = i.programmed.locked();
        let bits = if i.enabled.load(Ordering::Relaxed) {
            i.filter.load(Ordering::Relaxed)
        } else {
            0
        };
        if *programmed == Some(bits) {
            return;
        }
        let done = self.ivars().usb.with(|u| {
            u.control.device_request(
                cdc::packet_filter(u.control_number, bits),
                &[],
                CONTROL_TIMEOUT_MS,
            )
        });
        match done {
            Ok(_) => {
                *programmed = Some(bits);
                driverkit::info!("packet filter {bits:#04x}");
            }
            Err(e) => {
                *programmed = None;
                driverkit::info!(
                    "packet filter {bits:#04x} refused by the device ({e}); it delivers what it will"
                )
            }
        }
    }

    fn set_filter_bit(&self, bit: u16, on: bool) {
        if on {
            self.ivars().filter.fetch_or(bit, Ordering::Relaxed);
        } else {
            self.ivars().filter.fetch_and(!bit, Ordering::Relaxed);
        }
        self.program_filter();
    }

    /// Frames from the TX queue into free write slots, one transfer each.
    fn send_pending(&self) {
        let mut writing = self.ivars().writing.locked();
        loop {
            let Some(slot) = writing.iter().position(Option::is_none) else {
                return; // a completion sends the next
            };
            let Some(packet) = self.tx_take(1).pop() else {
                return;
            };
            let mut frame = Vec::with_capacity(TRANSFER);
            let sent = self.packet_data(&packet, &mut frame).and_then(|()| {
                self.ivars().usb.with(|u| {
                    cdc::pad_for_bulk(&mut frame, u.max_packet);
                    u.writes.send(slot, &frame, CONTROL_TIMEOUT_MS)
                })
            });
            match sent {
                Ok(()) => writing[slot] = Some(packet),
                Err(e) => {
                    driverkit::warn!("bulk OUT: {e}; frame dropped");
                    let _ = self.tx_complete(&[packet]);
                }
            }
        }
    }

    /// Hands `frame` up; false when no empty buffer waits.
    fn deliver(&self, frame: &[u8]) -> bool {
        let Some(empty) = self.rx_take_empty(1).pop() else {
            return false;
        };
        match self.rx_fill(empty, frame) {
            Ok(p) => {
                let _ = self.rx_complete(&[p]);
            }
            Err(_) => {
                // Larger than a buffer: dropped, the buffer given back.
                let _ = self.rx_complete(&[empty]);
            }
        }
        true
    }
}

impl IOServiceImpl for CDCEthernetDriver {
    fn init(&self) -> IOResult<CDCEthernetDriverIvars> {
        let ivars = CDCEthernetDriverIvars::default();
        ivars.filter.store(
            filter::DIRECTED | filter::BROADCAST | filter::MULTICAST,
            Ordering::Relaxed,
        );
        *ivars.writing.locked() = vec![None; WRITES];
        Ok(ivars)
    }

    fn start(&self, provider: &IOService) -> IOResult<()> {
        self.super_start(provider)?;
        let control = IOUSBHostInterface::from_provider(provider);
        let control_descriptor = step("the control interface's descriptor", control.descriptor())?;
        let functional = cdc::functional(control_descriptor.extra.iter().map(Vec::as_slice))
            .ok_or_else(|| {
                driverkit::error!(
                    "the control interface has no Union and Ethernet descriptors: not CDC ECM"
                );
                IOReturn::UNSUPPORTED
            })?;
        let device = step("CopyDevice", control.copy_device())?;
        let mac_text = step(
            "the iMACAddress string",
            device.copy_string_descriptor(functional.mac_string),
        )?;
        let mac = cdc::mac_from_string(&mac_text).ok_or_else(|| {
            driverkit::error!("iMACAddress string {mac_text:?} is not 12 hex digits");
            IOReturn::UNSUPPORTED
        })?;
        let configuration = step(
            "the configuration descriptor",
            device.copy_descriptors().and_then(|d| d.configuration()),
        )?;
        let (alternate, bulk_in, bulk_out, max_packet) = step(
            "a data interface setting with bulk IN and OUT",
            data_setting(&configuration, functional.data_interface).ok_or(IOReturn::NOT_FOUND),
        )?;
        let data = step(
            "the data interface",
            device.copy_interfaces().and_then(|all| {
                all.into_iter()
                    .find(|i| i.interface_number() == Ok(functional.data_interface))
                    .ok_or(IOReturn::NOT_FOUND)
            }),
        )?;
        step(
            "SelectAlternateSetting",
            data.select_alternate_setting(alternate),
        )?;
        let notify = control_descriptor
            .endpoints
            .iter()
            .find(|e| e.transfer_type == TransferType::Interrupt && e.address & 0x80 != 0)
            .map(|e| step("the interrupt pipe", control.copy_pipe(e.address)))
            .transpose()?;
        let bulk_in = step("the bulk IN pipe", data.copy_pipe(bulk_in))?;
        let bulk_out = step("the bulk OUT pipe", data.copy_pipe(bulk_out))?;
        let reads =
            TransferSlots::create(bulk_in, READS, TRANSFER, || self.create_action_read_done(1))?;
        let writes = TransferSlots::create(bulk_out, WRITES, TRANSFER, || {
            self.create_action_write_done(1)
        })?;
        let status = (
            IOBufferMemoryDescriptor::create(NOTIFICATION)?,
            self.create_action_notified(0)?,
        );
        self.ivars().usb.set(Usb {
            control_number: control_descriptor.number,
            control,
            notify,
            max_packet,
            reads,
            writes,
            status,
        });
        self.ivars()
            .max_segment
            .store(functional.max_segment_size, Ordering::Relaxed);
        self.ivars()
            .multicast_filters
            .store(functional.multicast_filters, Ordering::Relaxed);
        self.register_ethernet_interface(mac, PACKETS, BUFFER)?;
        self.report_link_status(true, media::ETHERNET_AUTO)?;
        for slot in 0..READS {
            self.submit_read(slot);
        }
        self.submit_status();
        self.register_service()?;
        driverkit::info!(
            "start: CDC ECM, MAC {mac_text}, data interface {} alternate {alternate}, frames up to {} bytes",
            functional.data_interface,
            functional.max_segment_size
        );
        Ok(())
    }

    fn stop(&self, provider: &IOService) -> IOResult<()> {
        let usb = self.ivars().usb.take();
        if let Some(u) = usb {
            let _ = u.reads.pipe().abort();
            let _ = u.writes.pipe().abort();
            if let Some(n) = &u.notify {
                let _ = n.abort();
            }
        }
        driverkit::info!("stop");
        self.super_stop(provider)
    }
}

impl IOUserNetworkEthernetImpl for CDCEthernetDriver {
    fn tx_packets_available(&self) {
        self.send_pending();
    }

    /// Held frames go up first, then their reads go out again.
    fn rx_buffers_available(&self) {
        let mut held = self.ivars().held.locked();
        while let Some((slot, frame)) = held.first() {
            if !self.deliver(frame) {
                return;
            }
            let slot = *slot;
            held.remove(0);
            self.submit_read(slot);
        }
    }

    fn set_interface_enable(&self, enable: bool) -> IOResult<()> {
        driverkit::info!("set_interface_enable({enable})");
        self.ivars().enabled.store(enable, Ordering::Relaxed);
        self.program_filter();
        Ok(())
    }

    fn set_promiscuous_mode_enable(&self, enable: bool) -> IOResult<()> {
        driverkit::info!("set_promiscuous_mode_enable({enable})");
        self.set_filter_bit(filter::PROMISCUOUS, enable);
        Ok(())
    }

    fn set_all_multicast_mode_enable(&self, enable: bool) -> IOResult<()> {
        driverkit::info!("set_all_multicast_mode_enable({enable})");
        self.set_filter_bit(filter::ALL_MULTICAST, enable);
        Ok(())
    }

    /// Up to what the device filters, the list goes to the device; past
    /// that (or with no filters at all) all multicast is taken.
    fn set_multicast_addresses(&self, addresses: &[[u8; 6]]) -> IOResult<()> {
        let filters = usize::from(self.ivars().multicast_filters.load(Ordering::Relaxed));
        driverkit::info!(
            "set_multicast_addresses({} addresses; the device filters {filters})",
            addresses.len()
        );
        let fits = addresses.len() <= filters;
        if fits {
            let sent = self.ivars().usb.with(|u| {
                let (setup, data) = cdc::multicast_filters(u.control_number, addresses);
                u.control.device_request(setup, &data, CONTROL_TIMEOUT_MS)
            });
            if let Err(e) = sent {
                driverkit::info!("multicast filters refused by the device ({e})");
            }
        }
        self.set_filter_bit(filter::ALL_MULTICAST, !fits);
        Ok(())
    }

    fn set_mtu(&self, mtu: u32) -> IOResult<()> {
        driverkit::info!("set_mtu({mtu})");
        if mtu > self.get_max_transfer_unit() {
            return Err(IOReturn::BAD_ARGUMENT);
        }
        Ok(())
    }

    /// The device's largest frame less the Ethernet header.
    fn get_max_transfer_unit(&self) -> u32 {
        u32::from(self.ivars().max_segment.load(Ordering::Relaxed)).saturating_sub(14)
    }
}

#[driverkit::actions]
impl CDCEthernetDriver {
    /// A bulk-IN transfer: one frame.
    #[action(IOService::CompleteAsync)]
    fn read_done(&self, action: &OSAction, status: IOReturn, actual: u64) {
        let slot = TransferSlots::slot_of(action);
        if status == IOReturn::ABORTED {
            return;
        }
        let read = match status {
            IOReturn::SUCCESS => self.ivars().usb.with(|u| u.reads.received(slot, actual)),
            failed => Err(failed),
        };
        // A failed read goes out again: the reads in flight stay as many.
        let frame = match read {
            Ok(frame) => frame,
            Err(e) => {
                driverkit::warn!("bulk IN: {e}");
                return self.submit_read(slot);
            }
        };
        if !frame.is_empty() {
            let mut held = self.ivars().held.locked();
            if !held.is_empty() || !self.deliver(&frame) {
                held.push((slot, frame));
                return;
            }
        }
        self.submit_read(slot);
    }

    /// A bulk-OUT transfer ended: its buffer goes back; the next frame goes.
    #[action(IOService::CompleteAsync)]
    fn write_done(&self, action: &OSAction, status: IOReturn, _actual: u64) {
        let slot = TransferSlots::slot_of(action);
        if status != IOReturn::SUCCESS && status != IOReturn::ABORTED {
            driverkit::warn!("bulk OUT: {status}");
        }
        let packet = self
            .ivars()
            .writing
            .locked()
            .get_mut(slot)
            .and_then(Option::take);
        if let Some(p) = packet {
            let _ = self.tx_complete(&[p]);
        }
        if status != IOReturn::ABORTED {
            self.send_pending();
        }
    }

    /// A notification from the interrupt endpoint.
    #[action(IOService::CompleteAsync)]
    fn notified(&self, _action: &OSAction, status: IOReturn, actual: u64) {
        if status == IOReturn::ABORTED {
            return;
        }
        if status == IOReturn::SUCCESS {
            let mut bytes = vec![0u8; (actual as usize).min(NOTIFICATION)];
            if self
                .ivars()
                .usb
                .with(|u| u.status.0.create_mapping()?.read(0, &mut bytes))
                .is_err()
            {
                return; // stopping
            }
            match cdc::notification(&bytes) {
                Some(Notification::NetworkConnection(up)) => {
                    let mut link = self.ivars().link.locked();
                    if *link != Some(up) {
                        driverkit::info!("network connection: {}", if up { "up" } else { "down" });
                        let _ = self.report_link_status(up, media::ETHERNET_AUTO);
                        *link = Some(up);
                    }
                }
                Some(Notification::ConnectionSpeed { down, up }) => {
                    driverkit::info!("connection speed: {down} bit/s down, {up} bit/s up");
                }
                Some(Notification::Other(code)) => driverkit::info!("notification {code:#04x}"),
                None => driverkit::warn!("malformed notification {bytes:02x?}"),
            }
        } else {
            driverkit::warn!("interrupt IN: {status}");
        }
        self.submit_status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use driverkit::runtime::instantiate;

    /// The driver as `init` leaves it, outside any daemon (no device).
    fn driver() -> std::sync::Arc<CDCEthernetDriver> {
        instantiate::<CDCEthernetDriver>().unwrap()
    }

    #[test]
    fn more_groups_than_the_device_filters_take_all_multicast() {
        let d = driver();
        let i = d.ivars();
        i.multicast_filters.store(2, Ordering::Relaxed);
        let group = |n: u8| [0x01, 0x00, 0x5e, 0, 0, n];
        d.set_multicast_addresses(&[group(1), group(2)]).unwrap();
        assert_eq!(i.filter.load(Ordering::Relaxed) & filter::ALL_MULTICAST, 0);
        d.set_multicast_addresses(&[group(1), group(2), group(3)])
            .unwrap();
        assert_ne!(i.filter.load(Ordering::Relaxed) & filter::ALL_MULTICAST, 0);
        d.set_multicast_addresses(&[]).unwrap();
        assert_eq!(i.filter.load(Ordering::Relaxed) & filter::ALL_MULTICAST, 0);
    }

    #[test]
    fn a_filter_the_device_did_not_take_is_not_remembered_as_programmed() {
        let d = driver();
        d.set_interface_enable(true).unwrap();
        d.set_promiscuous_mode_enable(true).unwrap();
        let i = d.ivars();
        assert_ne!(i.filter.load(Ordering::Relaxed) & filter::PROMISCUOUS, 0);
        // No device took it: the next change is sent again, not skipped.
        assert_eq!(*i.programmed.locked(), None);
    }

    #[test]
    fn an_mtu_past_the_devices_segment_is_refused() {
        let d = driver();
        d.ivars().max_segment.store(1514, Ordering::Relaxed);
        assert_eq!(d.get_max_transfer_unit(), 1500);
        assert_eq!(d.set_mtu(1500), Ok(()));
        assert_eq!(d.set_mtu(1501), Err(IOReturn::BAD_ARGUMENT));
    }
}

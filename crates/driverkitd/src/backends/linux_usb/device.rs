//! A real USB device through usbfs (the `nusb` crate), as a
//! [`UsbTransport`].
//!
//! Claims follow the kernel's ownership: an interface a kernel driver
//! serves is taken only when a dext asks for it and may (see
//! `families::usb::KEEP_HOST_DRIVER`); the driver is written down in the
//! ledger, detached, and attached again at the last release.

use driverkit_wire::sync::Locked;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use driverkit_usb::{Setup, TransferType};
use driverkit_wire::{IOResult, IOReturn};
use nusb::transfer::{Bulk, ControlIn, ControlOut, ControlType, In, Interrupt, Out, Recipient};
use nusb::MaybeFuture;
use plist::Value;

use super::endpoint::{self, Command, EndpointThread, Request};
use super::ledger::Ledger;
use super::sysfs;
use crate::families::usb::{Completed, Enumerated, Transfer, UsbTransport};

/// A claimed interface: nusb's handle, how many claims, and the kernel
/// driver detached for it.
struct Claim {
    interface: nusb::Interface,
    count: usize,
    detached: Option<String>,
}

pub struct LinuxUsbDevice {
    device: nusb::Device,
    /// `/sys/bus/usb/devices/1-1`.
    sysfs: PathBuf,
    /// `/dev/bus/usb/001/002`, for messages.
    node: String,
    location: u32,
    speed: u8,
    ledger: Arc<Ledger>,
    claims: Mutex<HashMap<u8, Claim>>,
    /// Interfaces a kernel driver let go of when it was detached from a
    /// sibling (a CDC driver holds the control and the data interface):
    /// attached again once none of the daemon's claims is in the way.
    orphans: Mutex<HashMap<u8, String>>,
    endpoints: Mutex<HashMap<u8, EndpointThread>>,
    /// Abort generations of endpoints without a thread yet.
    generations: Mutex<HashMap<u8, Arc<AtomicU64>>>,
    closed: AtomicBool,
}

impl std::fmt::Debug for LinuxUsbDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.node)
    }
}

/// Where usbfs nodes live.
pub const USBFS: &str = "/dev/bus/usb";

/// How to let the daemon open usbfs nodes without running it as root.
pub const ACCESS_HINT: &str =
    "run the daemon as root, or install contrib/udev/70-driverkit-usb.rules \
(it gives group driverkit access to usbfs nodes) and run the daemon as a member of that group";

impl LinuxUsbDevice {
    /// Opens the device `info` describes.
    pub fn open(
        info: &nusb::DeviceInfo,
        ledger: Arc<Ledger>,
    ) -> Result<Self, super::LinuxUsbError> {
        let node = format!("{USBFS}/{:03}/{:03}", info.busnum(), info.device_address());
        let device = info.open().wait().map_err(|source| {
            if source.kind() == nusb::ErrorKind::PermissionDenied {
                super::LinuxUsbError::PermissionDenied {
                    node: node.clone(),
                    hint: ACCESS_HINT,
                }
            } else {
                super::LinuxUsbError::Open {
                    node: node.clone(),
                    source,
                }
            }
        })?;
        // locationID as macOS forms it: the bus in the top byte, then one
        // nibble per port of the path.
        let mut location = u32::from(info.busnum()) << 24;
        for (i, port) in info.port_chain().iter().take(6).enumerate() {
            location |= u32::from(*port & 0xf) << (20 - 4 * i);
        }
        Ok(LinuxUsbDevice {
            device,
            sysfs: info.sysfs_path().to_owned(),
            node,
            location,
            speed: match info.speed() {
                Some(nusb::Speed::Low) => 0,
                Some(nusb::Speed::Full) | None => 1,
                Some(nusb::Speed::High) => 2,
                Some(nusb::Speed::Super) => 3,
                Some(_) => 4,
            },
            ledger,
            claims: Mutex::default(),
            orphans: Mutex::default(),
            endpoints: Mutex::default(),
            generations: Mutex::default(),
            closed: AtomicBool::new(false),
        })
    }

    fn claims(&self) -> MutexGuard<'_, HashMap<u8, Claim>> {
        self.claims.locked()
    }

    fn generation(&self, address: u8) -> Arc<AtomicU64> {
        self.generations
            .locked()
            .entry(address)
            .or_default()
            .clone()
    }

    fn current_configuration(&self) -> u8 {
        self.device
            .active_configuration()
            .map(|c| c.configuration_value())
            .unwrap_or(0)
    }

    fn interface_dir(&self, number: u8) -> PathBuf {
        sysfs::interface_dir(&self.sysfs, self.current_configuration(), number)
    }

    /// The interface an endpoint belongs to, and its transfer type, in the
    /// active configuration.
    fn endpoint_owner(&self, address: u8) -> Option<(u8, TransferType)> {
        let config = self.device.active_configuration().ok()?;
        for interface in config.interface_alt_settings() {
            for ep in interface.endpoints() {
                if ep.address() == address {
                    let kind = match ep.transfer_type() {
                        nusb::descriptors::TransferType::Bulk => TransferType::Bulk,
                        nusb::descriptors::TransferType::Interrupt => TransferType::Interrupt,
                        nusb::descriptors::TransferType::Isochronous => TransferType::Isochronous,
                        nusb::descriptors::TransferType::Control => TransferType::Control,
                    };
                    return Some((interface.interface_number(), kind));
                }
            }
        }
        None
    }

    /// The endpoint's thread, started on first use (its interface must be
    /// claimed).
    fn endpoint(&self, address: u8) -> IOResult<mpsc::Sender<Command>> {
        let mut endpoints = self.endpoints.locked();
        if let Some(t) = endpoints.get(&address) {
            return Ok(t.commands.clone());
        }
        let (number, kind) = self.endpoint_owner(address).ok_or(IOReturn::NOT_FOUND)?;
        let interface = self
            .claims()
            .get(&number)
            .map(|c| c.interface.clone())
            .ok_or(IOReturn::NOT_OPEN)?;
        let generation = self.generation(address);
        let (tx, rx) = mpsc::channel();
        let g = generation.clone();
        let name = format!("usb-ep:{}:{address:02x}", self.node);
        let open = |e: nusb::Error| {
            tracing::warn!("usb      {}: endpoint {address:#04x}: {e}", self.node);
            IOReturn::NOT_FOUND
        };
        let spawned = match (kind, address & 0x80 != 0) {
            (TransferType::Bulk, true) => {
                let ep = interface.endpoint::<Bulk, In>(address).map_err(open)?;
                std::thread::Builder::new()
                    .name(name)
                    .spawn(move || endpoint::run(ep, rx, g))
            }
            (TransferType::Bulk, false) => {
                let ep = interface.endpoint::<Bulk, Out>(address).map_err(open)?;
                std::thread::Builder::new()
                    .name(name)
                    .spawn(move || endpoint::run(ep, rx, g))
            }
            (TransferType::Interrupt, true) => {
                let ep = interface.endpoint::<Interrupt, In>(address).map_err(open)?;
                std::thread::Builder::new()
                    .name(name)
                    .spawn(move || endpoint::run(ep, rx, g))
            }
            (TransferType::Interrupt, false) => {
                let ep = interface
                    .endpoint::<Interrupt, Out>(address)
                    .map_err(open)?;
                std::thread::Builder::new()
                    .name(name)
                    .spawn(move || endpoint::run(ep, rx, g))
            }
            // Isochronous stays out of scope, as in DriverKit.
            _ => return Err(IOReturn::UNSUPPORTED),
        };
        spawned.map_err(|_| IOReturn::NO_RESOURCES)?;
        endpoints.insert(
            address,
            EndpointThread {
                commands: tx.clone(),
                generation,
            },
        );
        Ok(tx)
    }

    /// Stops the threads of the endpoints of interface `number`.
    fn close_endpoints(&self, number: u8) {
        let mut endpoints = self.endpoints.locked();
        endpoints.retain(|address, _| {
            self.endpoint_owner(*address)
                .is_none_or(|(owner, _)| owner != number)
        });
    }

    /// A GET_DESCRIPTOR(Report) to an interface a kernel HID driver holds:
    /// answered from the kernel's copy, as the kernel answers device and
    /// configuration descriptors from its own, without taking the interface.
    fn kernel_report_descriptor(&self, setup: &Setup) -> Option<Vec<u8>> {
        let is_report = setup.request_type == 0x81
            && setup.request == driverkit_usb::repr::request::GET_DESCRIPTOR
            && setup.value >> 8 == u16::from(driverkit_usb::kind::HID_REPORT);
        let number = u8::try_from(setup.index).ok()?;
        if !is_report || self.claims().contains_key(&number) {
            return None;
        }
        let mut bytes = sysfs::report_descriptor(&self.interface_dir(number))?;
        bytes.truncate(usize::from(setup.length));
        Some(bytes)
    }
}

fn control_type(request_type: u8) -> ControlType {
    match (request_type >> 5) & 3 {
        0 => ControlType::Standard,
        1 => ControlType::Class,
        _ => ControlType::Vendor,
    }
}

fn recipient(request_type: u8) -> Recipient {
    match request_type & 0x1f {
        0 => Recipient::Device,
        1 => Recipient::Interface,
        2 => Recipient::Endpoint,
        _ => Recipient::Other,
    }
}

fn transfer_error(e: nusb::transfer::TransferError) -> IOReturn {
    use nusb::transfer::TransferError as E;
    match e {
        E::Cancelled => IOReturn::TIMEOUT,
        E::Stall => IOReturn::USB_PIPE_STALLED,
        E::Disconnected => IOReturn::NO_DEVICE,
        E::InvalidArgument => IOReturn::BAD_ARGUMENT,
        E::Fault | E::Unknown(_) => IOReturn::IO_ERROR,
    }
}

impl UsbTransport for LinuxUsbDevice {
    fn source(&self) -> String {
        format!("usbfs:{}", self.node)
    }

    fn location_id(&self) -> u32 {
        self.location
    }

    fn speed(&self) -> u8 {
        self.speed
    }

    fn control(&self, setup: Setup, data: &[u8], timeout: Option<Duration>) -> IOResult<Vec<u8>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(IOReturn::NO_DEVICE);
        }
        if let Some(bytes) = self.kernel_report_descriptor(&setup) {
            return Ok(bytes);
        }
        if setup.request_type == 0
            && setup.request == driverkit_usb::repr::request::SET_CONFIGURATION
        {
            return self
                .set_configuration(setup.value as u8)
                .map(|()| Vec::new());
        }
        // usbfs has no "forever": a long one stands for it.
        let timeout = timeout.unwrap_or(Duration::from_secs(3600));
        if setup.is_in() {
            let mut bytes = self
                .device
                .control_in(
                    ControlIn {
                        control_type: control_type(setup.request_type),
                        recipient: recipient(setup.request_type),
                        request: setup.request,
                        value: setup.value,
                        index: setup.index,
                        length: setup.length,
                    },
                    timeout,
                )
                .wait()
                .map_err(transfer_error)?;
            bytes.truncate(usize::from(setup.length));
            Ok(bytes)
        } else {
            self.device
                .control_out(
                    ControlOut {
                        control_type: control_type(setup.request_type),
                        recipient: recipient(setup.request_type),
                        request: setup.request,
                        value: setup.value,
                        index: setup.index,
                        data,
                    },
                    timeout,
                )
                .wait()
                .map_err(transfer_error)?;
            Ok(Vec::new())
        }
    }

    /// In the endpoint thread's queue, which it submits to usbfs in order.
    fn transfer_queued(&self, t: Transfer<'_>, queued: &mut dyn FnMut()) -> IOResult<Completed> {
        let Transfer {
            address,
            data,
            length,
            timeout,
            submitted,
        } = t;
        if self.closed.load(Ordering::Acquire) {
            return Err(IOReturn::NO_DEVICE);
        }
        let commands = self.endpoint(address)?;
        let (reply, result) = mpsc::sync_channel(1);
        let request = Request {
            data: data.to_vec(),
            length,
            deadline: timeout.map(|t| Instant::now() + t),
            submitted,
            reply,
        };
        commands
            .send(Command::Transfer(request))
            .map_err(|_| IOReturn::NO_DEVICE)?;
        queued();
        // The endpoint's thread answers every transfer it took.
        result.recv().unwrap_or(Err(IOReturn::ABORTED))
    }

    fn abort_generation(&self, address: u8) -> u64 {
        self.generation(address).load(Ordering::Acquire)
    }

    fn abort(&self, address: u8) {
        self.generation(address).fetch_add(1, Ordering::AcqRel);
        let endpoints = self.endpoints.locked();
        if let Some(t) = endpoints.get(&address) {
            let _ = t.commands.send(Command::Abort);
        }
    }

    fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.endpoints.locked().clear();
        let claims: Vec<u8> = self.claims().keys().copied().collect();
        for number in claims {
            self.give_back(number);
        }
    }

    fn active_configuration(&self) -> Option<u8> {
        Some(self.current_configuration())
    }

    fn set_configuration(&self, value: u8) -> IOResult<()> {
        if self.current_configuration() == value {
            return Ok(());
        }
        self.device.set_configuration(value).wait().map_err(|e| {
            tracing::warn!("usb      {}: configuration {value}: {e}", self.node);
            IOReturn::EXCLUSIVE_ACCESS
        })
    }

    /// USBDEVFS_SETINTERFACE through the claimed interface, so that the
    /// kernel (and the host controller) knows the new endpoints. The old
    /// setting's endpoint threads end first: usbfs refuses while their
    /// endpoints are open, and they let go asynchronously.
    fn set_interface(&self, number: u8, alternate: u8) -> IOResult<()> {
        let interface = self
            .claims()
            .get(&number)
            .map(|c| c.interface.clone())
            .ok_or(IOReturn::NOT_OPEN)?;
        self.close_endpoints(number);
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match interface.set_alt_setting(alternate).wait() {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == nusb::ErrorKind::Busy && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => {
                    tracing::warn!(
                        "usb      {} interface {number}: alternate setting {alternate}: {e}",
                        self.node
                    );
                    return Err(match e.kind() {
                        nusb::ErrorKind::NotFound => IOReturn::BAD_ARGUMENT,
                        nusb::ErrorKind::Disconnected => IOReturn::NO_DEVICE,
                        nusb::ErrorKind::Busy => IOReturn::BUSY,
                        _ => IOReturn::IO_ERROR,
                    });
                }
            }
        }
    }

    fn claim(&self, number: u8, may_detach: bool) -> IOResult<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(IOReturn::NO_DEVICE);
        }
        let mut claims = self.claims();
        if let Some(c) = claims.get_mut(&number) {
            c.count += 1;
            return Ok(());
        }
        let dir = self.interface_dir(number);
        let bound = sysfs::driver(&dir).filter(|d| d != "usbfs");
        let interface = match &bound {
            Some(driver) if !may_detach => {
                tracing::info!(
                    "usb      {} interface {number}: {driver} keeps it (the personality asks so, or no dext asked)",
                    self.node
                );
                return Err(IOReturn::EXCLUSIVE_ACCESS);
            }
            Some(driver) => {
                let siblings = self.interfaces_bound_to(driver, number);
                self.ledger.detaching(&dir, driver);
                let claimed = self.device.detach_and_claim_interface(number).wait();
                if claimed.is_err() {
                    self.ledger.attached(&dir);
                }
                self.note_orphans(siblings, driver);
                tracing::info!(
                    "usb      {} interface {number}: detached {driver}, claimed",
                    self.node
                );
                claimed
            }
            None => self.device.claim_interface(number).wait(),
        }
        .map_err(|e| {
            tracing::warn!("usb      {} interface {number}: cannot claim: {e}", self.node);
            match e.kind() {
                nusb::ErrorKind::Busy => IOReturn::EXCLUSIVE_ACCESS,
                nusb::ErrorKind::Disconnected => IOReturn::NO_DEVICE,
                _ => IOReturn::NOT_PERMITTED,
            }
        })?;
        claims.insert(
            number,
            Claim {
                interface,
                count: 1,
                detached: bound,
            },
        );
        Ok(())
    }

    fn release(&self, number: u8) {
        let last = {
            let mut claims = self.claims();
            match claims.get_mut(&number) {
                Some(c) if c.count > 1 => {
                    c.count -= 1;
                    false
                }
                Some(_) => true,
                None => false,
            }
        };
        if last {
            self.give_back(number);
        }
    }

    /// The kernel's copy: usbfs's descriptors file and sysfs's strings. No
    /// bus traffic, and no race with the kernel's own drivers probing it.
    fn host_enumerated(&self) -> Option<Enumerated> {
        let text = |name: &str| {
            std::fs::read_to_string(self.sysfs.join(name))
                .ok()
                .map(|s| s.trim_end_matches('\n').to_owned())
        };
        Some(Enumerated {
            device: self.device.device_descriptor().as_bytes().to_vec(),
            configurations: self
                .device
                .configurations()
                .map(|c| c.as_bytes().to_vec())
                .collect(),
            manufacturer: text("manufacturer"),
            product: text("product"),
            serial: text("serial"),
        })
    }

    fn properties(&self) -> plist::Dictionary {
        let mut p = plist::Dictionary::new();
        p.insert(
            "IOLinuxSysfsPath".into(),
            Value::String(self.sysfs.display().to_string()),
        );
        p.insert("IOLinuxDeviceNode".into(), Value::String(self.node.clone()));
        p
    }

    fn interface_properties(&self, number: u8) -> plist::Dictionary {
        let dir = self.interface_dir(number);
        let mut p = plist::Dictionary::new();
        p.insert(
            "IOLinuxSysfsPath".into(),
            Value::String(dir.display().to_string()),
        );
        if let Some(driver) = sysfs::driver(&dir) {
            p.insert("IOLinuxDriver".into(), Value::String(driver));
        }
        p
    }
}

impl LinuxUsbDevice {
    /// The interfaces of the active configuration other than `except` that
    /// `driver` is bound to now.
    fn interfaces_bound_to(&self, driver: &str, except: u8) -> Vec<u8> {
        let Ok(config) = self.device.active_configuration() else {
            return Vec::new();
        };
        let mut numbers: Vec<u8> = config
            .interfaces()
            .map(|i| i.interface_number())
            .filter(|n| *n != except)
            .filter(|n| sysfs::driver(&self.interface_dir(*n)).as_deref() == Some(driver))
            .collect();
        numbers.dedup();
        numbers
    }

    /// Of `siblings`, those `driver` let go of are written down (in the
    /// ledger too: a daemon killed now leaves them to the next one).
    fn note_orphans(&self, siblings: Vec<u8>, driver: &str) {
        let mut orphans = self.orphans.locked();
        for n in siblings {
            let dir = self.interface_dir(n);
            if sysfs::driver(&dir).is_none() {
                tracing::info!(
                    "usb      {} interface {n}: {driver} let go of it too",
                    self.node
                );
                self.ledger.detaching(&dir, driver);
                orphans.insert(n, driver.to_owned());
            }
        }
    }

    /// Attaches the kernel driver to the orphans the daemon holds no claim
    /// of; one that is bound again (by itself or through a sibling) is
    /// crossed out.
    fn reattach_orphans(&self) {
        // Once nothing of the daemon's is in the way, and in interface
        // order: a driver that holds several interfaces (cdc_ether) binds
        // through its first and claims the rest itself.
        if !self.claims().is_empty() {
            return;
        }
        let mut orphans = self.orphans.locked();
        let mut numbers: Vec<u8> = orphans.keys().copied().collect();
        numbers.sort_unstable();
        // usbfs lets an interface go only when the last endpoint thread
        // holding it has ended, a moment after the release: try again for
        // a while.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let mut unbound = 0;
            for n in &numbers {
                let dir = self.interface_dir(*n);
                if sysfs::driver(&dir).is_none() {
                    let _ = self.device.attach_kernel_driver(*n);
                    unbound += usize::from(sysfs::driver(&dir).is_none());
                }
            }
            if unbound == 0 || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        orphans.retain(|n, driver| {
            let dir = self.interface_dir(*n);
            let back = sysfs::driver(&dir).is_some();
            if back {
                tracing::info!(
                    "usb      {} interface {n}: {driver} attached again",
                    self.node
                );
                self.ledger.attached(&dir);
            } else {
                tracing::warn!(
                    "usb      {} interface {n}: {driver} did not bind again",
                    self.node
                );
            }
            !back
        });
    }

    /// Releases interface `number` whatever its count, and attaches the
    /// kernel driver detached for it.
    fn give_back(&self, number: u8) {
        self.close_endpoints(number);
        let Some(claim) = self.claims().remove(&number) else {
            return;
        };
        let dir = self.interface_dir(number);
        let _ = claim.interface.release().wait();
        let spans_siblings = !self.orphans.locked().is_empty();
        if let (Some(driver), true) = (&claim.detached, spans_siblings) {
            // Its driver held siblings too: it comes back with them.
            self.orphans.locked().insert(number, driver.clone());
        } else if let Some(driver) = claim.detached {
            match self.device.attach_kernel_driver(number) {
                // Busy: the kernel bound a driver again by itself.
                Err(e) if e.kind() == nusb::ErrorKind::Busy => tracing::info!(
                    "usb      {} interface {number}: released, a kernel driver is bound again",
                    self.node
                ),
                Ok(()) => tracing::info!(
                    "usb      {} interface {number}: released, {driver} attached again",
                    self.node
                ),
                Err(e) => tracing::warn!(
                    "usb      {} interface {number}: {driver} not attached again: {e}",
                    self.node
                ),
            }
            self.ledger.attached(&dir);
        }
        self.reattach_orphans();
    }
}

impl Drop for LinuxUsbDevice {
    fn drop(&mut self) {
        UsbTransport::close(self);
    }
}

//! USB devices, whatever carries their bytes: the one boundary between the
//! USB family and the backends that carry them (virtual devices, USB/IP).
//! A backend implements [`UsbTransport`] and hands it to
//! [`UsbFamily::plug`](super::UsbFamily::plug).
//!
//! A transport moves control requests and transfers; it knows nothing of
//! the registry, configurations or drivers. Calls block the calling thread
//! until the device answers, times out, or the transfer is aborted, so
//! several transfers are in flight when several threads wait.

use std::time::Duration;

use driverkit_usb::Setup;

use super::PlugError;
use driverkit_wire::{IOResult, IOReturn};

/// A finished transfer: the data of an IN transfer, the count of an OUT one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Completed {
    pub data: Vec<u8>,
    pub actual: usize,
}

/// Where a streamed IN endpoint's data goes: called with each transfer's
/// data on the thread that completes it.
pub type InSink = std::sync::Arc<dyn Fn(&[u8]) + Send + Sync>;

/// A USB device's wire.
/// One transfer as a driver asked for it: endpoint `address` (bit 7 set:
/// IN, of at most `length` bytes; clear: OUT, sending `data`), its
/// timeout, and `submitted`, the endpoint's abort generation when it was
/// asked for (an abort since then ends it with `kIOReturnAborted`, even if
/// it had not started waiting yet).
#[derive(Debug, Clone, Copy)]
pub struct Transfer<'a> {
    pub address: u8,
    pub data: &'a [u8],
    pub length: usize,
    pub timeout: Option<Duration>,
    pub submitted: u64,
}

pub trait UsbTransport: Send + Sync {
    /// Where the device is, for logs and `device list` (`builtin:keyboard`,
    /// `usbip://127.0.0.1:3240/1-1`).
    fn source(&self) -> String;

    /// `locationID` as macOS forms it: the bus in the top byte, then one
    /// nibble per port of the path.
    fn location_id(&self) -> u32;

    /// A control request on endpoint 0. `data` is the OUT data stage; an
    /// IN request returns at most `setup.length` bytes.
    fn control(&self, setup: Setup, data: &[u8], timeout: Option<Duration>) -> IOResult<Vec<u8>>;

    /// One transfer ([`Transfer`]). `queued` runs once the transfer holds its place
    /// on the endpoint: transfers of one endpoint queued one after the
    /// other are served, and complete, in that order, as a host controller
    /// serves an endpoint's queue. Whoever keeps several transfers in
    /// flight on one endpoint queues the next only after `queued` ran for
    /// the one before, so that the device's order is the submitter's.
    fn transfer_queued(&self, t: Transfer<'_>, queued: &mut dyn FnMut()) -> IOResult<Completed>;

    /// [`UsbTransport::transfer_queued`] for one transfer at a time.
    fn transfer(
        &self,
        address: u8,
        data: &[u8],
        length: usize,
        timeout: Option<Duration>,
        submitted: u64,
    ) -> IOResult<Completed> {
        let t = Transfer {
            address,
            data,
            length,
            timeout,
            submitted,
        };
        self.transfer_queued(t, &mut || {})
    }

    /// Streams IN endpoint `address` into `sink`: each transfer's data (at
    /// most `length` bytes) is handed to it by the thread that completes
    /// the transfer, so no thread of the caller waits in between (a poller
    /// thread is one more wake-up on every report). False when the
    /// transport cannot: the caller then loops on [`UsbTransport::transfer`].
    /// Ends with [`UsbTransport::stop_stream`] or `close`.
    fn stream_in(&self, address: u8, length: usize, sink: InSink) -> bool {
        let _ = (address, length, sink);
        false
    }

    /// Ends [`UsbTransport::stream_in`] on `address`; the sink is dropped
    /// once any call of it in progress returns.
    fn stop_stream(&self, address: u8) {
        let _ = address;
    }

    /// The number of aborts of `address` so far.
    fn abort_generation(&self, address: u8) -> u64;

    /// Ends the transfers submitted to `address` so far with
    /// `kIOReturnAborted`.
    fn abort(&self, address: u8);

    /// The device is going away: every waiting and later call fails.
    fn close(&self);

    /// The configuration the device is in now, when the transport knows it
    /// without asking the device (Linux configured it already). `None`:
    /// unconfigured, or unknown.
    fn active_configuration(&self) -> Option<u8> {
        None
    }

    /// SET_CONFIGURATION. A transport whose host keeps its own view of the
    /// device (Linux) does it through that host.
    fn set_configuration(&self, value: u8) -> IOResult<()> {
        let setup = Setup {
            request_type: 0x00,
            request: driverkit_usb::repr::request::SET_CONFIGURATION,
            value: value.into(),
            index: 0,
            length: 0,
        };
        self.control(setup, &[], Some(Duration::from_secs(5)))
            .map(drop)
    }

    /// SET_INTERFACE: alternate setting `alternate` of `interface` (which
    /// the caller claimed). A transport whose host keeps its own view of
    /// the interface (Linux) does it through that host.
    fn set_interface(&self, interface: u8, alternate: u8) -> IOResult<()> {
        let setup = Setup {
            request_type: 0x01,
            request: driverkit_usb::repr::request::SET_INTERFACE,
            value: alternate.into(),
            index: interface.into(),
            length: 0,
        };
        self.control(setup, &[], Some(Duration::from_secs(5)))
            .map(drop)
    }

    /// Takes interface `interface` for the system's drivers, before any
    /// transfer on it. Where another driver of the host holds it (Linux's
    /// kernel drivers), it is detached only when `may_detach`; otherwise
    /// the answer is `kIOReturnExclusiveAccess`. Claims count: the
    /// interface goes back at the last [`UsbTransport::release`].
    fn claim(&self, interface: u8, may_detach: bool) -> IOResult<()> {
        let _ = (interface, may_detach);
        Ok(())
    }

    /// Gives back one claim of `interface`; at the last, a host driver that
    /// was detached for it is attached again.
    fn release(&self, interface: u8) {
        let _ = interface;
    }

    /// The descriptors and strings as the host read them when the device
    /// arrived (Linux keeps them in sysfs): the family then need not ask
    /// the device again. `None`: the family enumerates it.
    fn host_enumerated(&self) -> Option<Enumerated> {
        None
    }

    /// The bus speed as macOS's `USBSpeed` counts it: 0 low, 1 full,
    /// 2 high, 3 super, 4 super+. Virtual devices are full speed.
    fn speed(&self) -> u8 {
        1
    }

    /// What the host knows of the device beyond its descriptors, as
    /// registry properties (`IOLinuxSysfsPath`...).
    fn properties(&self) -> plist::Dictionary {
        plist::Dictionary::new()
    }

    /// What the host knows of interface `interface` now (`IOLinuxDriver`:
    /// the host driver bound to it).
    fn interface_properties(&self, interface: u8) -> plist::Dictionary {
        let _ = interface;
        plist::Dictionary::new()
    }
}

/// What the family reads from a device once, when it is plugged.
#[derive(Debug, Clone)]
pub struct Enumerated {
    pub device: Vec<u8>,
    /// Every configuration, whole (`wTotalLength` bytes).
    pub configurations: Vec<Vec<u8>>,
    pub manufacturer: Option<String>,
    pub product: Option<String>,
    pub serial: Option<String>,
}

const ENUMERATION_TIMEOUT: Option<Duration> = Some(Duration::from_secs(5));

/// Reads the descriptors the way a host does: the device descriptor, each
/// configuration's first 9 bytes and then all of it, and the strings the
/// device descriptor names (in the first language the device offers).
pub fn enumerate(t: &dyn UsbTransport) -> Result<Enumerated, PlugError> {
    use driverkit_usb::{kind, ConfigurationDescriptor, DeviceDescriptor, StringDescriptor};
    let malformed = |what: &str| {
        let what = what.to_owned();
        move |error| PlugError::Descriptor {
            from: t.source(),
            what,
            error,
        }
    };
    if let Some(e) = t.host_enumerated() {
        // Still checked as if read from the wire.
        DeviceDescriptor::new_checked(&e.device, 0).map_err(malformed("device descriptor"))?;
        for (i, c) in e.configurations.iter().enumerate() {
            driverkit_usb::interfaces(c).map_err(malformed(&format!("configuration {i}")))?;
        }
        return Ok(e);
    }
    let io = |status: IOReturn, what: &str| PlugError::Read {
        from: t.source(),
        what: what.to_owned(),
        status,
    };
    let device = t
        .control(
            Setup::get_descriptor(kind::DEVICE, 0, 0, 18),
            &[],
            ENUMERATION_TIMEOUT,
        )
        .map_err(|e| io(e, "the device descriptor"))?;
    let view = DeviceDescriptor::new_checked(&device, 0).map_err(malformed("device descriptor"))?;
    let mut configurations = Vec::new();
    for index in 0..view.num_configurations() {
        let what = format!("configuration {index}");
        let head = t
            .control(
                Setup::get_descriptor(kind::CONFIGURATION, index, 0, 9),
                &[],
                ENUMERATION_TIMEOUT,
            )
            .map_err(|e| io(e, &what))?;
        let total = ConfigurationDescriptor::new_checked(&head, 0)
            .map_err(malformed(&what))?
            .total_length();
        let whole = t
            .control(
                Setup::get_descriptor(kind::CONFIGURATION, index, 0, total),
                &[],
                ENUMERATION_TIMEOUT,
            )
            .map_err(|e| io(e, &what))?;
        driverkit_usb::interfaces(&whole).map_err(malformed(&what))?;
        configurations.push(whole);
    }
    let language = t
        .control(
            Setup::get_descriptor(kind::STRING, 0, 0, 255),
            &[],
            ENUMERATION_TIMEOUT,
        )
        .ok()
        .and_then(|b| {
            StringDescriptor::new_checked(&b, 0)
                .ok()?
                .language_ids()
                .first()
                .copied()
        });
    let string = |index: u8| -> Option<String> {
        if index == 0 {
            return None;
        }
        let b = t
            .control(
                Setup::get_descriptor(kind::STRING, index, language?, 255),
                &[],
                ENUMERATION_TIMEOUT,
            )
            .ok()?;
        Some(StringDescriptor::new_checked(&b, 0).ok()?.text())
    };
    Ok(Enumerated {
        manufacturer: string(view.manufacturer_index()),
        product: string(view.product_index()),
        serial: string(view.serial_number_index()),
        device,
        configurations,
    })
}

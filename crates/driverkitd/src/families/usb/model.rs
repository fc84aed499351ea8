//! The family's model of a plugged device: the device, its interfaces and
//! their endpoints, the claims a dext holds on an interface, and pipes.

use super::*;
use driverkit_core::ServerId;

/// A plugged USB device.
pub struct UsbDevice {
    pub entry: EntryId,
    /// The backend's transport, tapped: recorders hear its traffic.
    pub transport: Arc<dyn UsbTransport>,
    pub tap: Arc<tap::Tap>,
    pub enumerated: Enumerated,
    /// The selected configuration value; 0 when unconfigured.
    pub configuration: Mutex<u8>,
}

/// An endpoint of an interface nub.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    pub address: u8,
    pub transfer_type: TransferType,
    pub max_packet_size: u16,
    pub interval: u8,
}

/// An interface of a configured device, published as a nub.
pub struct UsbInterface {
    /// Its nub.
    pub entry: EntryId,
    pub device: Arc<UsbDevice>,
    pub number: u8,
    pub class: u8,
    /// The alternate setting selected now, and its endpoints.
    pub(super) setting: Mutex<(u8, Vec<Endpoint>)>,
}

impl UsbInterface {
    /// The endpoints of the alternate setting selected now.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.setting.locked().1.clone()
    }

    /// Takes the interface for a driver (see [`UsbTransport::claim`]); its
    /// nub shows the host driver bound now (`IOLinuxDriver`).
    pub fn claim(&self, system: &System, may_detach: bool) -> IOResult<()> {
        self.device.transport.claim(self.number, may_detach)?;
        self.show_host_driver(system);
        Ok(())
    }

    /// Gives one claim back.
    pub fn release(&self, system: &System) {
        self.device.transport.release(self.number);
        self.show_host_driver(system);
    }

    pub(super) fn show_host_driver(&self, system: &System) {
        let now = self.device.transport.interface_properties(self.number);
        match now.get("IOLinuxDriver") {
            Some(driver) => system.set_property(self.entry, "IOLinuxDriver", driver.clone()),
            None => system.remove_property(self.entry, "IOLinuxDriver"),
        }
    }
}

/// A claim of an interface (see [`UsbTransport::claim`]) that a dext's
/// pipe or selected alternate setting holds while it lives.
pub(super) struct Hold {
    /// To show the interface's host driver again when the hold goes.
    pub(super) system: System,
    pub(super) interface: Arc<UsbInterface>,
    pub(super) interface_entry: EntryId,
    pub(super) server: ServerId,
    /// The dext's service that drives the interface.
    pub(super) client: Option<EntryId>,
}

impl Hold {
    /// Claims `interface` for `client` of process `server`.
    pub(super) fn take(
        system: &System,
        interface: Arc<UsbInterface>,
        server: ServerId,
        client: Option<EntryId>,
    ) -> IOResult<Hold> {
        interface.claim(system, may_detach(system, client))?;
        Ok(Hold {
            system: system.clone(),
            interface_entry: interface.entry,
            interface,
            server,
            client,
        })
    }

    /// Whether it goes with entry `id` (its interface, or its driver).
    pub(super) fn goes_with(&self, id: EntryId) -> bool {
        self.interface_entry == id || self.client == Some(id)
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.interface.release(&self.system);
    }
}

/// A pipe a dext copied from an interface.
pub(super) struct Pipe {
    pub(super) hold: Hold,
    pub(super) endpoint: Endpoint,
    /// Its asynchronous transfers, queued and completed in order.
    pub(super) order: Arc<order::InOrder>,
}

/// The personality key by which a driver leaves a host's own driver (Linux's
/// kernel driver) in place rather than have it detached: its claims fail
/// with `kIOReturnExclusiveAccess` while the host driver is bound.
pub const KEEP_HOST_DRIVER: &str = "IOLinuxKeepKernelDriver";

/// Whether the host driver of an interface may be detached for `client`.
pub fn may_detach(system: &System, client: Option<EntryId>) -> bool {
    client
        .and_then(|c| system.property(c, KEEP_HOST_DRIVER))
        .and_then(|v| v.as_boolean())
        != Some(true)
}

impl Pipe {
    /// The endpoint's abort generation now: what a transfer asked for now
    /// is submitted under.
    pub(super) fn generation(&self) -> u64 {
        self.hold
            .interface
            .device
            .transport
            .abort_generation(self.endpoint.address)
    }
}

/// The endpoints of one alternate setting, as the family keeps them.
pub(super) fn endpoints_of(setting: &driverkit_usb::Interface<'_>) -> Vec<Endpoint> {
    setting
        .endpoints
        .iter()
        .map(|e| Endpoint {
            address: e.address(),
            transfer_type: e.transfer_type(),
            max_packet_size: e.max_packet_size(),
            interval: e.interval(),
        })
        .collect()
}

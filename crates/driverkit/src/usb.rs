//! USBDriverKit: the USB device, its interfaces and their pipes, as a
//! driver whose provider is an `IOUSBHostDevice` or `IOUSBHostInterface`
//! sees them.
//!
//! ```text
//! fn start(&self, provider: &IOService) -> IOResult<()> {
//!     self.super_start(provider)?;
//!     let device = IOUSBHostDevice::from_provider(provider);
//!     device.set_configuration(1, true)?;            // interfaces get nubs
//!     let firmware = device.device_request(Setup { request_type: 0xc0, request: 1, .. }, &[], 1000)?;
//!     self.register_service()
//! }
//! ```
//!
//! Transfers move data through an [`IOBufferMemoryDescriptor`]: the system
//! reads or writes the buffer in place. Asynchronous calls complete through
//! an `OSAction` of type `IOService::CompleteAsync` (status, bytes done).

use driverkit_usb::{ConfigurationRepr, DeviceDescriptor, InterfaceRepr, Setup};
use driverkit_wire::interfaces::{
    iousb_host_device_interface, iousb_host_interface_interface, iousb_host_pipe_interface,
    IOUSBHostDeviceInterface, IOUSBHostInterfaceInterface, IOUSBHostPipeInterface,
};
use driverkit_wire::{Bytes, IOResult, IOReturn, ObjectId};

use crate::memory::{IOBufferMemoryDescriptor, IOMemoryDescriptor};
use crate::runtime::SystemCaller;
use crate::service::{IOService, IOServiceApi};
use crate::OSAction;

pub use driverkit_usb::{self as descriptors, Direction, TransferType};

/// A USB device: your provider when your personality's `IOProviderClass` is
/// `IOUSBHostDevice`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IOUSBHostDevice {
    service: IOService,
}

/// One interface of a configured device: your provider when your
/// personality's `IOProviderClass` is `IOUSBHostInterface`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IOUSBHostInterface {
    service: IOService,
}

/// An endpoint of an interface, for transfers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IOUSBHostPipe {
    id: ObjectId,
    address: u8,
}

fn device_proxy(id: ObjectId) -> iousb_host_device_interface::Proxy<'static, SystemCaller> {
    iousb_host_device_interface::Proxy {
        caller: &SystemCaller,
        object: id,
        flags: 0,
    }
}

fn pipe_proxy(id: ObjectId) -> iousb_host_pipe_interface::Proxy<'static, SystemCaller> {
    iousb_host_pipe_interface::Proxy {
        caller: &SystemCaller,
        object: id,
        flags: 0,
    }
}

fn setup_word(setup: &Setup) -> u64 {
    u64::from_le_bytes(setup.emit())
}

/// The descriptors of a device, owned, with views on demand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceDescriptors {
    /// The device descriptor's 18 bytes.
    pub device: Vec<u8>,
    /// The current configuration's whole descriptor, interfaces and endpoints included.
    pub configuration: Vec<u8>,
}

impl DeviceDescriptors {
    /// The device descriptor's view.
    pub fn device(&self) -> IOResult<DeviceDescriptor<'_>> {
        DeviceDescriptor::new_checked(&self.device, 0).map_err(|_| IOReturn::IO_ERROR)
    }
    /// The configuration as values.
    pub fn configuration(&self) -> IOResult<ConfigurationRepr> {
        ConfigurationRepr::parse(&self.configuration).map_err(|_| IOReturn::IO_ERROR)
    }
}

impl IOUSBHostDevice {
    /// The device behind `provider`.
    pub fn from_provider(provider: &IOService) -> IOUSBHostDevice {
        IOUSBHostDevice { service: *provider }
    }

    /// The device as a plain service (properties, registry ID).
    pub fn service(&self) -> &IOService {
        &self.service
    }

    fn id(&self) -> ObjectId {
        self.service.target_id()
    }

    /// `CopyDeviceDescriptor` and `CopyConfigurationDescriptor` (the current
    /// configuration, or the first one while unconfigured).
    pub fn copy_descriptors(&self) -> IOResult<DeviceDescriptors> {
        let (device, configuration) = device_proxy(self.id()).copy_descriptors()?;
        Ok(DeviceDescriptors {
            device: device.0,
            configuration: configuration.0,
        })
    }

    /// `CopyStringDescriptor`: string `index` as text.
    pub fn copy_string_descriptor(&self, index: u8) -> IOResult<String> {
        device_proxy(self.id()).copy_string(index)
    }

    /// `DeviceRequest`: a control request; returns the IN data stage.
    pub fn device_request(&self, setup: Setup, data: &[u8], timeout_ms: u32) -> IOResult<Vec<u8>> {
        if !setup.is_in() && data.len() != usize::from(setup.length) {
            return Err(IOReturn::BAD_ARGUMENT);
        }
        device_proxy(self.id())
            .device_request(setup_word(&setup), Bytes(data.to_vec()), timeout_ms)
            .map(|b| b.0)
    }

    /// `AsyncDeviceRequest`: the data stage is in `buffer` (filled for IN);
    /// `completion` (`IOService::CompleteAsync`) runs when it is done.
    pub fn async_device_request(
        &self,
        setup: Setup,
        buffer: &IOBufferMemoryDescriptor,
        completion: &OSAction,
        timeout_ms: u32,
    ) -> IOResult<()> {
        crate::runtime::submit_async(buffer, completion, |memory, action| {
            device_proxy(self.id()).async_device_request(
                setup_word(&setup),
                memory,
                action,
                timeout_ms,
            )
        })
    }

    /// `SetConfiguration(value, matchInterfaces)`: with `match_interfaces`
    /// the interfaces become nubs that drivers (or the system) match.
    pub fn set_configuration(&self, value: u8, match_interfaces: bool) -> IOResult<()> {
        device_proxy(self.id()).set_configuration(value, match_interfaces)
    }

    /// `CreateInterfaceIterator` and `CopyInterface`: the interfaces of the
    /// current configuration, by interface number. The driver of the
    /// device, or of any of its interfaces, may drive them.
    pub fn copy_interfaces(&self) -> IOResult<Vec<IOUSBHostInterface>> {
        Ok(device_proxy(self.id())
            .copy_interfaces()?
            .into_iter()
            .map(|id| IOUSBHostInterface {
                service: IOService::from_id(id),
            })
            .collect())
    }
}

impl IOUSBHostInterface {
    /// The interface behind `provider`.
    pub fn from_provider(provider: &IOService) -> IOUSBHostInterface {
        IOUSBHostInterface { service: *provider }
    }

    /// The interface as a service (its properties, its provider).
    pub fn service(&self) -> &IOService {
        &self.service
    }

    /// `bInterfaceNumber`, from the registry.
    pub fn interface_number(&self) -> IOResult<u8> {
        self.service
            .copy_property("bInterfaceNumber")?
            .and_then(|v| v.as_unsigned_integer())
            .and_then(|n| u8::try_from(n).ok())
            .ok_or(IOReturn::NOT_FOUND)
    }

    fn proxy(&self) -> iousb_host_interface_interface::Proxy<'static, SystemCaller> {
        iousb_host_interface_interface::Proxy {
            caller: &SystemCaller,
            object: self.service.target_id(),
            flags: 0,
        }
    }

    /// `bAlternateSetting` selected now, from the registry.
    pub fn alternate_setting(&self) -> IOResult<u8> {
        self.service
            .copy_property("bAlternateSetting")?
            .and_then(|v| v.as_unsigned_integer())
            .and_then(|n| u8::try_from(n).ok())
            .ok_or(IOReturn::NOT_FOUND)
    }

    /// `CopyPipe(endpointAddress)`: an endpoint of the alternate setting
    /// selected now.
    pub fn copy_pipe(&self, address: u8) -> IOResult<IOUSBHostPipe> {
        let id = self.proxy().copy_pipe(address)?;
        Ok(IOUSBHostPipe { id, address })
    }

    /// The pipe of the first endpoint of the selected alternate setting
    /// that moves `transfer_type` data `direction`: what a driver that
    /// needs "the bulk IN pipe" asks, instead of walking the descriptors.
    pub fn copy_pipe_of(
        &self,
        transfer_type: TransferType,
        direction: Direction,
    ) -> IOResult<IOUSBHostPipe> {
        let endpoint = self
            .descriptor()?
            .endpoints
            .into_iter()
            .find(|e| e.transfer_type == transfer_type && e.direction() == direction)
            .ok_or(IOReturn::NOT_FOUND)?;
        self.copy_pipe(endpoint.address)
    }

    /// `CopyDevice`: the device this interface belongs to.
    pub fn copy_device(&self) -> IOResult<IOUSBHostDevice> {
        Ok(IOUSBHostDevice {
            service: IOService::from_id(self.proxy().copy_device()?),
        })
    }

    /// `SelectAlternateSetting`: the interface's endpoints are those of
    /// `alternate` from now on; pipes of the old setting end (their
    /// transfers with `kIOReturnAborted`) and must be copied again.
    pub fn select_alternate_setting(&self, alternate: u8) -> IOResult<()> {
        self.proxy().select_alternate_setting(alternate)
    }

    /// `DeviceRequest`: a control request on the device's endpoint 0, as
    /// [`IOUSBHostDevice::device_request`] (the family keeps
    /// SET_CONFIGURATION to itself).
    pub fn device_request(&self, setup: Setup, data: &[u8], timeout_ms: u32) -> IOResult<Vec<u8>> {
        if !setup.is_in() && data.len() != usize::from(setup.length) {
            return Err(IOReturn::BAD_ARGUMENT);
        }
        iousb_host_interface_interface::Proxy {
            caller: &SystemCaller,
            object: self.service.target_id(),
            flags: 0,
        }
        .device_request(setup_word(&setup), Bytes(data.to_vec()), timeout_ms)
        .map(|b| b.0)
    }

    /// `GetInterfaceDescriptor`: this interface, in the alternate setting
    /// selected now, in the device's current configuration, with its
    /// class-specific descriptors and endpoints.
    pub fn descriptor(&self) -> IOResult<InterfaceRepr> {
        let number = self.interface_number()?;
        let alternate = self.alternate_setting().unwrap_or(0);
        let configuration = iousb_host_interface_interface::Proxy {
            caller: &SystemCaller,
            object: self.service.target_id(),
            flags: 0,
        }
        .copy_configuration()?;
        ConfigurationRepr::parse(&configuration.0)
            .map_err(|_| IOReturn::IO_ERROR)?
            .interfaces
            .into_iter()
            .find(|i| i.number == number && i.alternate_setting == alternate)
            .ok_or(IOReturn::NOT_FOUND)
    }
}

impl IOUSBHostPipe {
    /// `bEndpointAddress`.
    pub fn address(&self) -> u8 {
        self.address
    }

    /// `IO`: one transfer of `length` bytes of `buffer` (filled for IN
    /// pipes, sent for OUT); returns the bytes transferred. A timeout of 0
    /// waits forever.
    pub fn io(
        &self,
        buffer: &IOBufferMemoryDescriptor,
        length: usize,
        timeout_ms: u32,
    ) -> IOResult<usize> {
        let memory = buffer.memory_id()?;
        pipe_proxy(self.id)
            .io(memory, length as u64, timeout_ms)
            .map(|n| n as usize)
    }

    /// `AsyncIO`: the same, completed through `completion`
    /// (`IOService::CompleteAsync`).
    pub fn async_io(
        &self,
        buffer: &IOBufferMemoryDescriptor,
        length: usize,
        completion: &OSAction,
        timeout_ms: u32,
    ) -> IOResult<()> {
        crate::runtime::submit_async(buffer, completion, |memory, action| {
            pipe_proxy(self.id).async_io(memory, length as u64, action, timeout_ms)
        })
    }

    /// `Abort`: transfers in flight complete with `kIOReturnAborted`.
    pub fn abort(&self) -> IOResult<()> {
        pipe_proxy(self.id).abort()
    }

    /// `ClearStall`, with the CLEAR_FEATURE request to the device when
    /// `with_request`.
    pub fn clear_stall(&self, with_request: bool) -> IOResult<()> {
        pipe_proxy(self.id).clear_stall(with_request)
    }
}

/// Transfers a driver keeps in flight on one pipe, as it queues several
/// bulk-IN reads so that the device never waits for the next one (or
/// several bulk-OUT writes): per slot a buffer and the completion action,
/// whose reference's first byte is the slot's number, so that a completion
/// knows which buffer it finished.
///
/// ```text
/// let reads = TransferSlots::create(bulk_in, 4, 512, || self.create_action_read_done(1))?;
/// for slot in 0..reads.len() { reads.read(slot)?; }
/// // in read_done(action, status, actual):
/// let slot = TransferSlots::slot_of(action);
/// let bytes = reads.received(slot, actual)?;
/// ```
pub struct TransferSlots {
    pipe: IOUSBHostPipe,
    size: usize,
    slots: Vec<(IOBufferMemoryDescriptor, OSAction)>,
}

impl TransferSlots {
    /// `count` slots (at most 256) of `size` bytes on `pipe`; `action`
    /// makes each slot's completion, with a reference of at least one byte.
    pub fn create(
        pipe: IOUSBHostPipe,
        count: usize,
        size: usize,
        mut action: impl FnMut() -> IOResult<OSAction>,
    ) -> IOResult<TransferSlots> {
        let count = u8::try_from(count.saturating_sub(1)).map_err(|_| IOReturn::BAD_ARGUMENT)?;
        let mut slots = Vec::new();
        for slot in 0..=count {
            let action = action()?;
            *action
                .reference()
                .first_mut()
                .ok_or(IOReturn::BAD_ARGUMENT)? = slot;
            slots.push((IOBufferMemoryDescriptor::create(size)?, action));
        }
        Ok(TransferSlots { pipe, size, slots })
    }

    /// The slot whose transfer `action` (one of these slots') completed.
    pub fn slot_of(action: &OSAction) -> usize {
        action.reference().first().copied().map_or(0, usize::from)
    }

    /// How many slots there are.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Each slot's buffer size: the most one transfer moves.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The pipe the transfers go on.
    pub fn pipe(&self) -> &IOUSBHostPipe {
        &self.pipe
    }

    /// Starts `slot`'s read of a whole buffer, with no timeout (a read
    /// waits for the device).
    pub fn read(&self, slot: usize) -> IOResult<()> {
        let (buffer, action) = self.slots.get(slot).ok_or(IOReturn::BAD_ARGUMENT)?;
        self.pipe.async_io(buffer, self.size, action, 0)
    }

    /// Fills `slot`'s buffer with `data` and starts its transfer, completed
    /// with `kIOReturnTimeout` after `timeout_ms` (0: never).
    pub fn send(&self, slot: usize, data: &[u8], timeout_ms: u32) -> IOResult<()> {
        if data.len() > self.size {
            return Err(IOReturn::BAD_ARGUMENT);
        }
        let (buffer, action) = self.slots.get(slot).ok_or(IOReturn::BAD_ARGUMENT)?;
        buffer.create_mapping()?.write(0, data)?;
        self.pipe.async_io(buffer, data.len(), action, timeout_ms)
    }

    /// What `slot`'s completed read brought: the first `actual` bytes of
    /// its buffer (at most its size).
    pub fn received(&self, slot: usize, actual: u64) -> IOResult<Vec<u8>> {
        let (buffer, _) = self.slots.get(slot).ok_or(IOReturn::BAD_ARGUMENT)?;
        let mut data = vec![0u8; usize::try_from(actual).map_or(self.size, |n| n.min(self.size))];
        buffer.create_mapping()?.read(0, &mut data)?;
        Ok(data)
    }
}

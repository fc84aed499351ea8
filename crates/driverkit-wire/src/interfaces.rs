//! The remote methods of the system classes, declared once for both sides.
//!
//! `#[local]` methods run in the dext and are called by the system (or, with
//! `FLAG_SUPERDISPATCH`, run the system's superclass implementation on the
//! dext's behalf). `#[kernel]` methods run in the daemon.

use crate::{Bytes, IOResult, ObjectId};
use driverkit_macros::interface;

/// The user server: the dext process itself, object 0. The daemon creates
/// and frees service instances through it.
#[interface(class = "IOUserServer")]
pub trait IOUserServerInterface {
    /// Instantiates `user_class` as service `object` and runs its `init`,
    /// which allocates the ivars.
    #[local]
    fn create(
        &self,
        object: ObjectId,
        user_class: String,
        provider: ObjectId,
        properties: plist::Dictionary,
    ) -> IOResult<()>;
    /// Runs `free` on `object` and releases it and its ivars.
    #[local]
    fn free(&self, object: ObjectId) -> IOResult<()>;
    /// Asks the process to exit once it has replied.
    #[local]
    fn exit(&self) -> IOResult<()>;
    /// Completes an asynchronous request: runs the action the dext
    /// registered as `action` with the request's status and byte count.
    #[local]
    fn complete_async(&self, action: u64, status: u32, actual: u64) -> IOResult<()>;
    /// Hands user client `object` one of its sockets to an app (`role`:
    /// `user_client::ROLE_CALLS` or `ROLE_NOTIFICATIONS`); the socket
    /// travels with this request as `SCM_RIGHTS`.
    #[local]
    fn connect(&self, object: ObjectId, role: u8) -> IOResult<()>;
}

/// `IOUserClient`: a dext's door for an app. The dext calls these on
/// itself, from the thread serving the app's call socket, so that they run
/// on the user client's queue like any method of it; the daemon is not on
/// this path.
#[interface(class = "IOUserClient")]
pub trait IOUserClientInterface {
    /// `ExternalMethod`: the app's call `selector` with `args`
    /// (`flags`: `user_client::FLAG_*`). Its arguments are encoded as a
    /// `user_client::Call`, so a call from the channel is dispatched
    /// as it came.
    #[local]
    fn external_method(
        &self,
        selector: u64,
        flags: u8,
        args: crate::user_client::CallArgs,
    ) -> IOResult<crate::user_client::CallResult>;
    /// `CopyClientMemoryForType`: the memory travels back beside the reply.
    #[local]
    fn copy_client_memory(&self, memory_type: u64, read_only: bool) -> IOResult<()>;
}

/// `IOService`, the base class of every service.
#[interface(class = "IOService")]
pub trait IOServiceInterface {
    /// Starts the service on `provider`. The dext calls super first.
    #[local]
    fn start(&self, provider: ObjectId) -> IOResult<()>;
    /// Stops the service. The dext cancels its work, then calls super last.
    #[local]
    fn stop(&self, provider: ObjectId) -> IOResult<()>;
    /// Tells a provider that one of its clients' processes crashed.
    #[local]
    fn client_crashed(&self, client: ObjectId, options: u64) -> IOResult<()>;
    /// Power state changes (Off 0, On 1, Low 2).
    #[local]
    fn set_power_state(&self, power_flags: u32) -> IOResult<()>;
    /// `NewUserClient(type)`: the key of the personality dictionary that
    /// describes the user client an app's `IOServiceOpen(type)` gets (its
    /// `IOClass` and `IOUserClass`), as DriverKit's `Create(this, key, …)`.
    #[local]
    fn new_user_client(&self, kind: u32) -> IOResult<String>;

    /// Publishes the service so that matching runs against it.
    #[kernel]
    fn register_service(&self) -> IOResult<()>;
    /// Merges `properties` into the service's registry properties.
    #[kernel]
    fn set_properties(&self, properties: plist::Dictionary) -> IOResult<()>;
    /// All registry properties of the service.
    #[kernel]
    fn copy_properties(&self) -> IOResult<plist::Dictionary>;
    /// One registry property, `None` when absent.
    #[kernel]
    fn copy_property(&self, key: String) -> IOResult<Option<plist::Value>>;
    /// Removes one registry property.
    #[kernel]
    fn remove_property(&self, key: String) -> IOResult<()>;
    /// Renames the service in the registry.
    #[kernel]
    fn set_name(&self, name: String) -> IOResult<()>;
    /// The registry entry ID of the service.
    #[kernel]
    fn get_registry_entry_id(&self) -> IOResult<u64>;
    /// Starts asynchronous termination, which ends in `stop`.
    #[kernel]
    fn terminate(&self, options: u64) -> IOResult<()>;
    /// Delivers interrupt `index` of this (provider) service into the
    /// caller's shared-memory region `memory` (see `interrupt` for the
    /// layout): the counter goes up and the doorbell rings per interrupt.
    #[kernel]
    fn register_interrupt(&self, index: u32, memory: u64) -> IOResult<()>;
    /// Asks this (provider) device to fill `length` bytes of the caller's
    /// region `memory` in place; completes later with `complete_async` on
    /// the caller's user server, or with `kIOReturnAborted` if the device goes.
    #[kernel]
    fn read_async(&self, memory: u64, length: u64, action: u64) -> IOResult<()>;
}

/// `IOUSBHostDevice`: a USB device, called by the driver it is provider of.
/// Data of asynchronous and large requests travels in a region the dext
/// registered (`memory`), written or read in place by the system.
#[interface(class = "IOUSBHostDevice")]
pub trait IOUSBHostDeviceInterface {
    /// The device descriptor and the current (or first) configuration
    /// descriptor, whole.
    #[kernel]
    fn copy_descriptors(&self) -> IOResult<(Bytes, Bytes)>;
    /// A string descriptor's text (`index` 0 is not a string).
    #[kernel]
    fn copy_string(&self, index: u8) -> IOResult<String>;
    /// A control request on endpoint 0; returns the data stage of an IN
    /// request (`data` is sent for OUT requests, `length` bounds IN ones).
    #[kernel]
    fn device_request(&self, setup: u64, data: Bytes, timeout_ms: u32) -> IOResult<Bytes>;
    /// The same, completed later through `action` (IN data lands in
    /// `memory`, OUT data is taken from it).
    #[kernel]
    fn async_device_request(
        &self,
        setup: u64,
        memory: u64,
        action: u64,
        timeout_ms: u32,
    ) -> IOResult<()>;
    /// Selects configuration `value` (0 unconfigures); with
    /// `match_interfaces` the interfaces become nubs and matching runs.
    #[kernel]
    fn set_configuration(&self, value: u8, match_interfaces: bool) -> IOResult<()>;
    /// `CreateInterfaceIterator` and `CopyInterface`: the interfaces of the
    /// current configuration (their registry IDs, by interface number).
    /// Unconfigured: `kIOReturnNotReady`.
    #[kernel]
    fn copy_interfaces(&self) -> IOResult<Vec<ObjectId>>;
}

/// `IOUSBHostInterface`: one interface of a configured device.
#[interface(class = "IOUSBHostInterface")]
pub trait IOUSBHostInterfaceInterface {
    /// The device's current configuration descriptor, whole, from which
    /// the interface's own descriptors are read.
    #[kernel]
    fn copy_configuration(&self) -> IOResult<Bytes>;
    /// The pipe of endpoint `address` of this interface, as an object the
    /// caller may do I/O on.
    #[kernel]
    fn copy_pipe(&self, address: u8) -> IOResult<ObjectId>;
    /// `IOUSBHostInterface::DeviceRequest`: a control request on the
    /// device's endpoint 0 from a driver of one of its interfaces (vendor
    /// and class requests). `setup` and the data stage as for
    /// `IOUSBHostDevice`'s.
    #[kernel]
    fn device_request(&self, setup: u64, data: Bytes, timeout_ms: u32) -> IOResult<Bytes>;
    /// `CopyDevice`: the device this interface is part of.
    #[kernel]
    fn copy_device(&self) -> IOResult<ObjectId>;
    /// `SelectAlternateSetting`: SET_INTERFACE; the interface's endpoints
    /// are those of `alternate` from now on. Refused with
    /// `kIOReturnBusy` while the caller holds pipes of the old setting
    /// that another process shares, `kIOReturnBadArgument` for a setting
    /// the interface does not have.
    #[kernel]
    fn select_alternate_setting(&self, alternate: u8) -> IOResult<()>;
}

/// `IOUSBHostPipe`: an endpoint of an interface the caller opened.
#[interface(class = "IOUSBHostPipe")]
pub trait IOUSBHostPipeInterface {
    /// A transfer of `length` bytes in `memory` (filled for IN, sent for
    /// OUT); returns the bytes transferred. A timeout of 0 waits forever.
    #[kernel]
    fn io(&self, memory: u64, length: u64, timeout_ms: u32) -> IOResult<u64>;
    /// The same, completed later with `complete_async` on `action`.
    #[kernel]
    fn async_io(&self, memory: u64, length: u64, action: u64, timeout_ms: u32) -> IOResult<()>;
    /// Ends every transfer in flight on the pipe with `kIOReturnAborted`.
    #[kernel]
    fn abort(&self) -> IOResult<()>;
    /// Clears a halt on the endpoint (and, with `with_request`, sends the
    /// device CLEAR_FEATURE(ENDPOINT_HALT)).
    #[kernel]
    fn clear_stall(&self, with_request: bool) -> IOResult<()>;
}

/// `IOHIDInterface`: the reports of a HID device, for the event service
/// that opened it.
#[interface(class = "IOHIDInterface")]
pub trait IOHIDInterfaceInterface {
    /// Delivers every input report, from now on, into the caller's
    /// data-queue region `memory` (each entry: an 8-byte timestamp in ns,
    /// then the report). Only one client may have the interface open.
    #[kernel]
    fn open(&self, memory: u64) -> IOResult<()>;
    /// Stops delivering reports.
    #[kernel]
    fn close(&self) -> IOResult<()>;
    /// Sends a report to the device (`report_type` 2 = output, 3 = feature).
    #[kernel]
    fn set_report(&self, report_type: u8, report_id: u8, report: Bytes) -> IOResult<()>;
}

/// `IOUserHIDDevice`: a HID device a dext implements (a virtual keyboard, a
/// device on a bus the system does not know).
#[interface(class = "IOUserHIDDevice")]
pub trait IOUserHIDDeviceInterface {
    /// Publishes the device's `IOHIDInterface` with `description`
    /// (VendorID, ProductID, Product, Transport...) and its report
    /// descriptor. Once per service.
    #[kernel]
    fn create_interface(
        &self,
        description: plist::Dictionary,
        report_descriptor: Bytes,
    ) -> IOResult<()>;
    /// An input report from the device, to whoever opened the interface.
    #[kernel]
    fn handle_report(&self, report: Bytes) -> IOResult<()>;
}

/// `IOHIDEventService`: where an event service's decoded events enter the
/// system's event stream.
#[interface(class = "IOHIDEventService")]
pub trait IOHIDEventServiceInterface {
    /// The service's events, from now on, are in the event log (see
    /// `event_log`) in the caller's region `memory`, where the system's
    /// subscribers read them. Once per service.
    #[kernel]
    fn set_event_log(&self, memory: u64) -> IOResult<()>;
}

/// One event: `kind` (see `hid_event`), usage page, usage, up to three
/// values (key value; dx, dy, buttons; scroll dx, dy, dz), and a timestamp
/// in ns on the monotonic clock.
pub type HidEventRecord = (u8, u32, u32, (i64, i64, i64), u64);

/// The kinds of [`HidEventRecord`].
pub mod hid_event {
    pub const KEYBOARD: u8 = 3;
    pub const RELATIVE_POINTER: u8 = 4;
    pub const SCROLL: u8 = 6;
}

/// `IOUserSerial`: a serial port a dext drives (SerialDriverKit). The
/// system holds a tty for it; the data travels in the port's rings
/// (`serial::SerialPortInterface`), whose doorbells stand for
/// `TxDataAvailable`, `RxFreeSpaceAvailable`, `RxDataAvailable` and
/// `TxFreeSpaceAvailable`. The `hw_*` methods are the tty's line settings
/// reaching the driver.
#[interface(class = "IOUserSerial")]
pub trait IOUserSerialInterface {
    /// The tty was opened: power the port up (super first).
    #[local]
    fn hw_activate(&self) -> IOResult<()>;
    /// The tty's last close: power the port down (super last).
    #[local]
    fn hw_deactivate(&self) -> IOResult<()>;
    /// Empties the transmit and/or receive FIFO of the hardware.
    #[local]
    fn hw_reset_fifo(&self, tx: bool, rx: bool) -> IOResult<()>;
    /// Starts (`true`) or ends a break condition.
    #[local]
    fn hw_send_break(&self, send: bool) -> IOResult<()>;
    /// The whole line format: baud, data bits (5 to 8), stop bits in
    /// halves (2 = one, 3 = one and a half, 4 = two) and parity
    /// (`serial::parity`).
    #[local]
    fn hw_program_uart(
        &self,
        baud: u32,
        data_bits: u8,
        half_stop_bits: u8,
        parity: u8,
    ) -> IOResult<()>;
    /// The baud rate alone.
    #[local]
    fn hw_program_baud_rate(&self, baud: u32) -> IOResult<()>;
    /// The modem control outputs.
    #[local]
    fn hw_program_mcr(&self, dtr: bool, rts: bool) -> IOResult<()>;
    /// The modem status inputs: `(cts, dsr, ri, dcd)`.
    #[local]
    fn hw_get_modem_status(&self) -> IOResult<(bool, bool, bool, bool)>;
    /// Flow control (`serial::flow` bits) and the XON/XOFF characters.
    #[local]
    fn hw_program_flow_control(&self, arg: u32, xon: u8, xoff: u8) -> IOResult<()>;
    /// How long the hardware may hold received bytes before it reports
    /// them, in milliseconds.
    #[local]
    fn hw_program_latency_timer(&self, latency_ms: u32) -> IOResult<()>;

    /// `ConnectQueues`: the port's rings are in the caller's region
    /// `memory` (geometry written in it); the system makes the tty.
    /// Answers the handed-over descriptors (see `serial::TtyControl`) of
    /// a tty the driver's process moves the bytes of itself, a pty's
    /// master and its control socket, or `(0, 0)` when the system serves
    /// the node (CUSE).
    #[kernel]
    fn connect_queues(&self, memory: u64) -> IOResult<(u64, u64)>;
    /// `SetModemStatus`: the modem status inputs changed.
    #[kernel]
    fn set_modem_status(&self, cts: bool, dsr: bool, ri: bool, dcd: bool) -> IOResult<()>;
    /// `RxError`: the hardware saw a receive error.
    #[kernel]
    fn rx_error(&self, overrun: bool, gotbreak: bool, framing: bool, parity: bool) -> IOResult<()>;
}

/// `IOUARTDevice`: a UART the system reaches (the virtual one of the
/// default run): a transmit FIFO, a receive FIFO, modem lines and three
/// interrupts (0: received bytes waiting, 1: room in the transmit FIFO or
/// the transmit FIFO emptied, 2: the modem status changed), through
/// `IOService::RegisterInterrupt`.
#[interface(class = "IOUARTDevice")]
pub trait IOUARTDeviceInterface {
    /// Puts bytes in the transmit FIFO; returns how many fit. When not all
    /// did, interrupt 1 comes once there is room.
    #[kernel]
    /// Also returns the transmit FIFO's level after it (bytes not yet on
    /// the wire), as a UART's status register is read with its data.
    fn transmit(&self, data: Bytes) -> IOResult<(u64, u32)>;
    /// Takes up to `max` received bytes.
    #[kernel]
    fn receive(&self, max: u32) -> IOResult<Bytes>;
    /// The line format (as `hw_program_uart`'s).
    #[kernel]
    fn set_line(&self, baud: u32, data_bits: u8, half_stop_bits: u8, parity: u8) -> IOResult<()>;
    /// Drives DTR and RTS.
    #[kernel]
    fn set_modem_control(&self, dtr: bool, rts: bool) -> IOResult<()>;
    /// `(cts, dsr, ri, dcd)`.
    #[kernel]
    fn modem_status(&self) -> IOResult<(bool, bool, bool, bool)>;
    /// Empties the FIFOs.
    #[kernel]
    fn reset_fifo(&self, tx: bool, rx: bool) -> IOResult<()>;
    /// Holds the line in break (`on`) or lets it go.
    #[kernel]
    fn set_break(&self, on: bool) -> IOResult<()>;
    /// Bytes in the transmit FIFO not yet on the wire (a FIFO level
    /// register).
    #[kernel]
    fn transmit_pending(&self) -> IOResult<u32>;
}

/// `IOUserNetworkEthernet`: an Ethernet interface a dext drives
/// (NetworkingDriverKit). The system holds a network interface for it (a
/// TAP device); frames travel in the pool and queues of
/// `net::NetInterface`, whose doorbells stand for the queues'
/// DataAvailable actions. The `set_*` methods are what `ip link set` asks.
#[interface(class = "IOUserNetworkEthernet")]
pub trait IOUserNetworkEthernetInterface {
    /// `ip link set up` (true) or `down`.
    #[local]
    fn set_interface_enable(&self, enable: bool) -> IOResult<()>;
    #[local]
    fn set_promiscuous_mode_enable(&self, enable: bool) -> IOResult<()>;
    #[local]
    fn set_all_multicast_mode_enable(&self, enable: bool) -> IOResult<()>;
    /// The multicast addresses to receive, 6 bytes each.
    #[local]
    fn set_multicast_addresses(&self, addresses: Vec<Bytes>) -> IOResult<()>;
    #[local]
    fn set_mtu(&self, mtu: u32) -> IOResult<()>;
    #[local]
    fn get_max_transfer_unit(&self) -> IOResult<u32>;

    /// `RegisterEthernetInterface`: the MAC address, and the caller's
    /// region `memory` holding the pool and the queues (geometry written in
    /// it); the system makes the interface.
    #[kernel]
    fn register_ethernet_interface(&self, mac: Bytes, memory: u64) -> IOResult<()>;
    /// `ReportLinkStatus`: the carrier, and the media (`net::media`).
    #[kernel]
    fn report_link_status(&self, up: bool, media: u32) -> IOResult<()>;
}

/// `IOVirtualNIC`: one end of the virtual cable of the default run: frames
/// transmitted at one end arrive at the other. The cable is memory, as a
/// NIC's descriptor rings are: two data queues (rings of frames), each
/// written by one end's driver and read by the other's, with no call and
/// no system thread per frame. Interrupt 0 says the link changed.
#[interface(class = "IOVirtualNIC")]
pub trait IOVirtualNICInterface {
    /// This end's transmit queue (the far end's receive queue) and receive
    /// queue, as regions the system hands over (their IDs).
    #[kernel]
    fn copy_queues(&self) -> IOResult<(u64, u64)>;
    /// Whether the cable is plugged, and enabled, at both ends.
    #[kernel]
    fn link_up(&self) -> IOResult<bool>;
    /// Enables or disables this end (its PHY): a disabled end takes the
    /// link down for both.
    #[kernel]
    fn set_enable(&self, enable: bool) -> IOResult<()>;
}

/// `IOPCIDevice`: one PCI function, called by the driver it is provider
/// of. Every register access is checked by the system before it reaches
/// the device: inside the space or the BAR, naturally aligned, of width 1,
/// 2, 4 (or 8 for BARs); anything else is `kIOReturnBadArgument`. Until
/// `open`, only configuration reads are allowed.
#[interface(class = "IOPCIDevice")]
pub trait IOPCIDeviceInterface {
    /// `Open`: the caller becomes the device's one user; Memory Space is
    /// enabled. Another opener: `kIOReturnExclusiveAccess`.
    #[kernel]
    fn open(&self) -> IOResult<()>;
    /// `Close`: Bus Master and Memory Space are cleared, DMA mappings and
    /// mapped BARs revoked.
    #[kernel]
    fn close(&self) -> IOResult<()>;
    /// `ConfigurationRead8/16/32` (`width` in bytes).
    #[kernel]
    fn configuration_read(&self, offset: u16, width: u8) -> IOResult<u64>;
    /// `ConfigurationWrite8/16/32`.
    #[kernel]
    fn configuration_write(&self, offset: u16, width: u8, value: u64) -> IOResult<()>;
    /// `MemoryRead8/16/32/64` from BAR `memory_index` at `offset`.
    #[kernel]
    fn memory_read(&self, memory_index: u8, offset: u64, width: u8) -> IOResult<u64>;
    /// `MemoryWrite8/16/32/64`.
    #[kernel]
    fn memory_write(&self, memory_index: u8, offset: u64, width: u8, value: u64) -> IOResult<()>;
    /// `GetBARInfo`: the memory index of BAR `bar`, its size and its type
    /// (`pci::bar_type`). A BAR the device does not implement:
    /// `kIOReturnNotFound`.
    #[kernel]
    fn get_bar_info(&self, bar: u8) -> IOResult<(u8, u64, u8)>;
    /// `FindPCICapability`: the offset of capability `id` (with
    /// `pci::capability::EXTENDED` for the extended list), after the one at
    /// `after` (0: from the start). Absent: `kIOReturnNotFound`.
    #[kernel]
    fn find_capability(&self, id: u32, after: u16) -> IOResult<u16>;
    /// `GetBusDeviceFunction`.
    #[kernel]
    fn get_bus_device_function(&self) -> IOResult<(u8, u8, u8)>;
    /// `Reset` (`pci::reset`): the device returns to its power-on state.
    #[kernel]
    fn reset(&self, options: u32) -> IOResult<()>;
    /// `ConfigureInterrupts`: MSI, MSI-X or INTx (`pci::interrupt_type`),
    /// at least `min` and at most `max` vectors; returns how many the
    /// device got, each an index for `IOInterruptDispatchSource::Create`.
    #[kernel]
    fn configure_interrupts(&self, kind: u32, min: u32, max: u32) -> IOResult<u32>;
    /// Beyond DriverKit: BAR `memory_index` mapped into the caller: the
    /// memory the system hands over (its ID), its length, and whether
    /// writes must still travel as `memory_write` (a modelled device sees
    /// them only that way; a real one's BAR takes stores). The system
    /// keeps the authority: `close`, a stop or a crash clears Memory
    /// Space, after which the mapping reads all-ones.
    #[kernel]
    fn copy_mapped_bar(&self, memory_index: u8) -> IOResult<(u64, u64, bool)>;
    /// `IODMACommand::PrepareForDMA`: makes `length` bytes of the caller's
    /// region `memory` from `offset` reachable by the device's DMA, at
    /// addresses below 2^`address_bits`; returns the segments (device
    /// address, length). Beyond the device's reach: `kIOReturnBadArgument`.
    #[kernel]
    fn prepare_dma(
        &self,
        memory: u64,
        offset: u64,
        length: u64,
        address_bits: u8,
    ) -> IOResult<Vec<(u64, u64)>>;
    /// `IODMACommand::CompleteDMA`: the mapping that starts at device
    /// address `address` ends; the device can no longer reach it.
    #[kernel]
    fn complete_dma(&self, address: u64) -> IOResult<()>;
}

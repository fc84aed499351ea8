//! The driverkit SDK: what a driver author depends on.
//!
//! A driver is a normal Cargo binary. It declares its services with
//! `#[driverkit::service]`, implements the methods it overrides, and hands
//! its service types to [`dext_main!`]. The system starts the binary in its
//! own process when a personality in the bundle's `Info.plist` matches.
//!
//! ```text
//! use driverkit::prelude::*;
//!
//! #[derive(Default)]
//! pub struct NullDriverIvars { /* the driver's state */ }
//!
//! #[driverkit::service(superclass = IOService, ivars = NullDriverIvars)]
//! pub struct NullDriver;
//!
//! impl IOServiceImpl for NullDriver {
//!     fn init(&self) -> IOResult<NullDriverIvars> { Ok(NullDriverIvars::default()) }
//!     fn start(&self, provider: &IOService) -> IOResult<()> {
//!         self.super_start(provider)?;
//!         self.set_property("Greeting", "hello")?;
//!         self.register_service()
//!     }
//! }
//!
//! driverkit::dext_main!(NullDriver);
//! ```
//!
//! This crate never depends on the daemon: everything it knows of the system
//! is the wire protocol in `driverkit-wire`.

#![warn(missing_docs)]

pub mod action;
pub mod data_queue;
pub mod hid;
pub mod interrupt;
mod log;
pub mod memory;
pub mod net;
pub mod pci;
pub mod queue;
pub mod runtime;
pub mod serial;
pub mod service;
pub mod time;
pub mod timer;
pub mod usb;
pub mod user_client;
mod watcher;

pub use action::OSAction;
pub use data_queue::IODataQueueDispatchSource;
pub use driverkit_macros::{actions, service};
pub use driverkit_wire::{IOResult, IOReturn};
pub use hid::{
    IOHIDElement, IOUserHIDDevice, IOUserHIDDeviceApi, IOUserHIDDeviceImpl, IOUserHIDEventService,
    IOUserHIDEventServiceApi, IOUserHIDEventServiceImpl,
};
pub use interrupt::IOInterruptDispatchSource;
pub use memory::{IOBufferMemoryDescriptor, IOMemoryDescriptor, IOMemoryMap};
pub use net::{
    IOUserNetworkEthernet, IOUserNetworkEthernetApi, IOUserNetworkEthernetImpl,
    IOUserNetworkPacket, IOVirtualNIC,
};
pub use pci::{IODMACommand, IOPCIDevice, IOPCIMappedBar};
pub use queue::IODispatchQueue;
pub use runtime::dynamic_cast as OSDynamicCast;
pub use serial::{IOUARTDevice, IOUserSerial, IOUserSerialApi, IOUserSerialImpl, ModemStatus};
pub use service::{IOService, IOServiceApi, IOServiceImpl, IOServiceSuper, WhileStarted};
pub use timer::IOTimerDispatchSource;
pub use usb::{IOUSBHostDevice, IOUSBHostInterface, IOUSBHostPipe, TransferSlots};
pub use user_client::{IOUserClient, IOUserClientImpl};

/// Logging macros for drivers (lines go to the system's log).
pub use tracing::{debug, error, info, warn};

/// Everything a driver usually needs.
/// Property values (`set_property`, descriptions, Info.plist): the same
/// `plist` the SDK speaks, so a driver needs no version of its own.
pub use plist;

/// What a driver imports: `use driverkit::prelude::*;`.
pub mod prelude {
    pub use crate::runtime::Service;
    pub use crate::{
        IOBufferMemoryDescriptor, IODataQueueDispatchSource, IODispatchQueue,
        IOInterruptDispatchSource, IOMemoryDescriptor, IOResult, IOReturn, IOService, IOServiceApi,
        IOServiceImpl, IOServiceSuper, IOTimerDispatchSource, OSAction, WhileStarted,
    };
    pub use crate::{IODMACommand, IOPCIDevice, IOPCIMappedBar, OSDynamicCast};
    pub use crate::{
        IOHIDElement, IOUSBHostDevice, IOUSBHostInterface, IOUSBHostPipe, IOUserHIDDevice,
        IOUserHIDDeviceApi, IOUserHIDDeviceImpl, IOUserHIDEventService, IOUserHIDEventServiceApi,
        IOUserHIDEventServiceImpl, TransferSlots,
    };
    pub use crate::{IOUARTDevice, IOUserSerial, IOUserSerialApi, IOUserSerialImpl, ModemStatus};
    pub use crate::{IOUserClient, IOUserClientImpl};
    pub use crate::{
        IOUserNetworkEthernet, IOUserNetworkEthernetApi, IOUserNetworkEthernetImpl,
        IOUserNetworkPacket, IOVirtualNIC,
    };
    pub use driverkit_wire::sync::{Locked, Waited};
}

// `#[driverkit::service]` names this crate by its absolute path.
extern crate self as driverkit;

//! PCIDriverKit: a PCI function as the driver whose provider is an
//! `IOPCIDevice` sees it.
//!
//! ```text
//! fn start(&self, provider: &IOService) -> IOResult<()> {
//!     self.super_start(provider)?;
//!     let pci = IOPCIDevice::from_provider(provider);
//!     pci.open()?;                                   // Memory Space on
//!     let id = pci.memory_read32(0, 0x00)?;          // BAR0, offset 0
//!     pci.configure_interrupts(interrupt_type::MSI, 1, 1)?;
//!     let irq = IOInterruptDispatchSource::create(provider, 0, &queue)?;
//!     ...
//! }
//! ```
//!
//! Each `memory_read32` is a call into the system, as each `MemoryRead32`
//! is a call into the kernel on macOS. Beyond DriverKit, [`IOPCIDevice::map_bar`]
//! maps a BAR into the driver, so registers read at memory speed; the
//! system keeps the authority and takes the mapping's meaning away (Memory
//! Space off: all-ones) when the driver closes, stops or crashes.
//!
//! DMA: an [`IODMACommand`] makes an [`IOBufferMemoryDescriptor`]
//! reachable by the device at the addresses `prepare_for_dma` returns, all
//! below the limit the command was created with, until `complete_dma`.

use driverkit_wire::sync::Locked;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use driverkit_wire::interfaces::{iopci_device_interface, IOPCIDeviceInterface};
use driverkit_wire::pci::Width;
use driverkit_wire::shm::SharedMemory;
use driverkit_wire::{IOResult, IOReturn, ObjectId};

use crate::memory::IOBufferMemoryDescriptor;
use crate::runtime::SystemCaller;
use crate::service::IOService;

pub use driverkit_wire::pci::{
    bar_type, capability, command, interrupt_type, reg, reset, Location,
};

/// A PCI function: your provider when your personality's
/// `IOProviderClass` is `IOPCIDevice`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IOPCIDevice {
    service: IOService,
}

/// `GetBARInfo`'s answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarInfo {
    /// What `memory_read*` and `map_bar` take to name this BAR.
    pub memory_index: u8,
    /// The BAR's size in bytes.
    pub size: u64,
    /// `bar_type`.
    pub kind: u8,
}

impl IOPCIDevice {
    /// The function behind `provider`.
    pub fn from_provider(provider: &IOService) -> IOPCIDevice {
        IOPCIDevice { service: *provider }
    }

    /// The function as a plain service (properties, registry ID).
    pub fn service(&self) -> &IOService {
        &self.service
    }

    fn proxy(&self) -> iopci_device_interface::Proxy<'static, SystemCaller> {
        iopci_device_interface::Proxy {
            caller: &SystemCaller,
            object: ObjectId(self.service.registry_entry_id()),
            flags: 0,
        }
    }

    /// `Open`: this driver becomes the function's one user (another has
    /// it: `kIOReturnExclusiveAccess`); Memory Space is enabled.
    pub fn open(&self) -> IOResult<()> {
        self.proxy().open()
    }

    /// `Close`: Bus Master and Memory Space off, DMA mappings ended.
    pub fn close(&self) -> IOResult<()> {
        self.proxy().close()
    }

    /// Reads a byte of configuration space at `offset`.
    pub fn configuration_read8(&self, offset: u16) -> IOResult<u8> {
        Ok(self.proxy().configuration_read(offset, 1)? as u8)
    }
    /// Reads 16 bits of configuration space at `offset`.
    pub fn configuration_read16(&self, offset: u16) -> IOResult<u16> {
        Ok(self.proxy().configuration_read(offset, 2)? as u16)
    }
    /// Reads 32 bits of configuration space at `offset`.
    pub fn configuration_read32(&self, offset: u16) -> IOResult<u32> {
        Ok(self.proxy().configuration_read(offset, 4)? as u32)
    }
    /// Writes a byte of configuration space at `offset`.
    pub fn configuration_write8(&self, offset: u16, value: u8) -> IOResult<()> {
        self.proxy().configuration_write(offset, 1, value.into())
    }
    /// Writes 16 bits of configuration space at `offset`.
    pub fn configuration_write16(&self, offset: u16, value: u16) -> IOResult<()> {
        self.proxy().configuration_write(offset, 2, value.into())
    }
    /// Writes 32 bits of configuration space at `offset`.
    pub fn configuration_write32(&self, offset: u16, value: u32) -> IOResult<()> {
        self.proxy().configuration_write(offset, 4, value.into())
    }

    /// Reads a byte of BAR `memory_index` at `offset`.
    pub fn memory_read8(&self, memory_index: u8, offset: u64) -> IOResult<u8> {
        Ok(self.proxy().memory_read(memory_index, offset, 1)? as u8)
    }
    /// Reads 16 bits of BAR `memory_index` at `offset`.
    pub fn memory_read16(&self, memory_index: u8, offset: u64) -> IOResult<u16> {
        Ok(self.proxy().memory_read(memory_index, offset, 2)? as u16)
    }
    /// Reads 32 bits of BAR `memory_index` at `offset`.
    pub fn memory_read32(&self, memory_index: u8, offset: u64) -> IOResult<u32> {
        Ok(self.proxy().memory_read(memory_index, offset, 4)? as u32)
    }
    /// Reads 64 bits of BAR `memory_index` at `offset`.
    pub fn memory_read64(&self, memory_index: u8, offset: u64) -> IOResult<u64> {
        self.proxy().memory_read(memory_index, offset, 8)
    }
    /// Writes a byte of BAR `memory_index` at `offset`.
    pub fn memory_write8(&self, memory_index: u8, offset: u64, value: u8) -> IOResult<()> {
        self.proxy()
            .memory_write(memory_index, offset, 1, value.into())
    }
    /// Writes 16 bits of BAR `memory_index` at `offset`.
    pub fn memory_write16(&self, memory_index: u8, offset: u64, value: u16) -> IOResult<()> {
        self.proxy()
            .memory_write(memory_index, offset, 2, value.into())
    }
    /// Writes 32 bits of BAR `memory_index` at `offset`.
    pub fn memory_write32(&self, memory_index: u8, offset: u64, value: u32) -> IOResult<()> {
        self.proxy()
            .memory_write(memory_index, offset, 4, value.into())
    }
    /// Writes 64 bits of BAR `memory_index` at `offset`.
    pub fn memory_write64(&self, memory_index: u8, offset: u64, value: u64) -> IOResult<()> {
        self.proxy().memory_write(memory_index, offset, 8, value)
    }

    /// Lets the function master the bus (its DMA, and its MSI, which is a
    /// memory write) or stops it: the command register's Bus Master bit,
    /// as IOKit's `setBusMasterEnable`. The system clears it when the
    /// driver closes, stops or crashes.
    pub fn set_bus_master_enable(&self, enable: bool) -> IOResult<()> {
        let cmd = self.configuration_read16(reg::COMMAND)?;
        let cmd = if enable {
            cmd | command::BUS_MASTER
        } else {
            cmd & !command::BUS_MASTER
        };
        self.configuration_write16(reg::COMMAND, cmd)
    }

    /// `GetBARInfo` for BAR `bar` (0 to 5); `kIOReturnNotFound` when the
    /// function does not implement it.
    pub fn get_bar_info(&self, bar: u8) -> IOResult<BarInfo> {
        let (memory_index, size, kind) = self.proxy().get_bar_info(bar)?;
        Ok(BarInfo {
            memory_index,
            size,
            kind,
        })
    }

    /// `FindPCICapability`: the offset of capability `id` (or of
    /// `capability::EXTENDED | id` in the extended list), searching after
    /// the one at `after` (0: from the start).
    pub fn find_pci_capability(&self, id: u32, after: u16) -> IOResult<u16> {
        self.proxy().find_capability(id, after)
    }

    /// `GetBusDeviceFunction`.
    pub fn get_bus_device_function(&self) -> IOResult<Location> {
        let (bus, device, function) = self.proxy().get_bus_device_function()?;
        Ok(Location {
            bus,
            device,
            function,
        })
    }

    /// `Reset`: a function-level reset; DMA mappings end, Memory Space
    /// comes back on, everything else is the power-on state.
    pub fn reset(&self) -> IOResult<()> {
        self.proxy().reset(reset::FUNCTION)
    }

    /// `ConfigureInterrupts`: `interrupt_type::MSI`, `MSIX` or `LEVEL`
    /// (INTx), between `min` and `max` vectors; how many the function got.
    pub fn configure_interrupts(&self, kind: u32, min: u32, max: u32) -> IOResult<u32> {
        self.proxy().configure_interrupts(kind, min, max)
    }

    /// Beyond DriverKit: BAR `memory_index` mapped into this process.
    pub fn map_bar(&self, memory_index: u8) -> IOResult<IOPCIMappedBar> {
        let (id, length, writes_trap) = self.proxy().copy_mapped_bar(memory_index)?;
        let fd = crate::runtime::take_system_memory(id)?;
        let length = usize::try_from(length).map_err(|_| IOReturn::NO_MEMORY)?;
        let shm = SharedMemory::map_device(fd, length).map_err(|_| IOReturn::NO_MEMORY)?;
        Ok(IOPCIMappedBar {
            shm,
            device: *self,
            memory_index,
            writes_trap,
        })
    }
}

/// A BAR mapped into the driver: loads are memory reads, with no call.
/// Stores are memory writes on a real function; on a modelled one, which
/// sees no stores, they travel as `memory_write` calls. Every offset is
/// checked (inside, aligned): `kIOReturnBadArgument` otherwise.
pub struct IOPCIMappedBar {
    shm: SharedMemory,
    device: IOPCIDevice,
    memory_index: u8,
    writes_trap: bool,
}

impl IOPCIMappedBar {
    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        self.shm.len() as u64
    }

    /// Whether the mapping has no bytes.
    pub fn is_empty(&self) -> bool {
        self.shm.is_empty()
    }

    fn at(&self, offset: u64, width: Width) -> IOResult<usize> {
        if !width.fits(offset, self.len()) {
            return Err(IOReturn::BAD_ARGUMENT);
        }
        Ok(offset as usize)
    }

    /// Reads a byte at `offset` of the mapped BAR.
    pub fn read8(&self, offset: u64) -> IOResult<u8> {
        Ok(self
            .shm
            .u8_at(self.at(offset, Width::W8)?)
            .load(Ordering::Acquire))
    }
    /// Reads 16 bits at `offset` of the mapped BAR.
    pub fn read16(&self, offset: u64) -> IOResult<u16> {
        Ok(self
            .shm
            .u16_at(self.at(offset, Width::W16)?)
            .load(Ordering::Acquire))
    }
    /// Reads 32 bits at `offset` of the mapped BAR.
    pub fn read32(&self, offset: u64) -> IOResult<u32> {
        Ok(self
            .shm
            .u32_at(self.at(offset, Width::W32)?)
            .load(Ordering::Acquire))
    }
    /// Reads 64 bits at `offset` of the mapped BAR.
    pub fn read64(&self, offset: u64) -> IOResult<u64> {
        Ok(self
            .shm
            .u64_at(self.at(offset, Width::W64)?)
            .load(Ordering::Acquire))
    }

    /// Writes 32 bits at `offset` of the mapped BAR.
    pub fn write32(&self, offset: u64, value: u32) -> IOResult<()> {
        let at = self.at(offset, Width::W32)?;
        if self.writes_trap {
            return self.device.memory_write32(self.memory_index, offset, value);
        }
        self.shm.u32_at(at).store(value, Ordering::Release);
        Ok(())
    }
    /// Writes 64 bits at `offset` of the mapped BAR.
    pub fn write64(&self, offset: u64, value: u64) -> IOResult<()> {
        let at = self.at(offset, Width::W64)?;
        if self.writes_trap {
            return self.device.memory_write64(self.memory_index, offset, value);
        }
        self.shm.u64_at(at).store(value, Ordering::Release);
        Ok(())
    }
}

/// One run of device addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IOAddressSegment {
    /// The segment's address as the device sees it (the IOMMU's).
    pub address: u64,
    /// The segment's length in bytes.
    pub length: u64,
}

/// `IODMACommand`: a buffer made reachable by a function's DMA.
pub struct IODMACommand {
    device: IOPCIDevice,
    address_bits: u8,
    /// The first segment's address while prepared.
    prepared: Mutex<Option<u64>>,
}

impl IODMACommand {
    /// `IODMACommand::Create` with `maxAddressBits`: every address it gives
    /// is below `2^max_address_bits` (the device's DMA mask).
    pub fn create(device: &IOPCIDevice, max_address_bits: u8) -> IOResult<IODMACommand> {
        if !(12..=64).contains(&max_address_bits) {
            return Err(IOReturn::BAD_ARGUMENT);
        }
        Ok(IODMACommand {
            device: *device,
            address_bits: max_address_bits,
            prepared: Mutex::new(None),
        })
    }

    /// `PrepareForDMA`: `length` bytes of `buffer` from `offset`, as
    /// device addresses. One preparation at a time (`kIOReturnBusy`).
    pub fn prepare_for_dma(
        &self,
        buffer: &IOBufferMemoryDescriptor,
        offset: u64,
        length: u64,
    ) -> IOResult<Vec<IOAddressSegment>> {
        let mut prepared = self.prepared.locked();
        if prepared.is_some() {
            return Err(IOReturn::BUSY);
        }
        let segments = self.device.proxy().prepare_dma(
            buffer.memory_id()?,
            offset,
            length,
            self.address_bits,
        )?;
        let segments: Vec<IOAddressSegment> = segments
            .into_iter()
            .map(|(address, length)| IOAddressSegment { address, length })
            .collect();
        *prepared = segments.first().map(|s| s.address);
        Ok(segments)
    }

    /// `CompleteDMA`: the device can no longer reach the buffer.
    pub fn complete_dma(&self) -> IOResult<()> {
        let address = self.prepared.locked().take().ok_or(IOReturn::NOT_READY)?;
        self.device.proxy().complete_dma(address)
    }
}

//! PCI (PCIDriverKit): `IOPCIDevice` nubs, one per function a backend
//! plugs (a model of QEMU's edu device; real functions through VFIO), and
//! the driver's calls on them: configuration space, BARs, interrupts, DMA.
//!
//! The family is where the authority sits. A backend's [`PciDevice`] does
//! whatever it is told; the family decides what a driver may tell it:
//! every access is checked against the space or the BAR (inside, aligned,
//! a real width) before it reaches the device; only the process that
//! `open`ed a function reaches its BARs, its interrupts and its DMA; and
//! when that driver closes, stops or crashes, the family takes the device
//! back in a fixed order ([`PciFamily::revoke`]): Bus Master off first
//! (no DMA after this instant), Memory Space off (a mapped BAR reads
//! all-ones), the DMA mappings gone, and, unless the driver closed it
//! cleanly, a reset, so the next driver starts on a device in its
//! power-on state.
//!
//! Matching is [`matching`] (`IOPCIMatch` and friends, `transport.pci`);
//! the DMA address space is [`dma`].

pub mod dma;
pub mod matching;

use driverkit_wire::sync::Locked;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use driverkit_core::{Call, EntryId, Family, FamilyMatcher, Interrupt, Plugged, ServerId, System};
use driverkit_wire::interfaces::{iopci_device_interface, IOPCIDeviceInterface};
use driverkit_wire::pci::{self, command, reg, Location, Width};
use driverkit_wire::shm::SharedMemory;
use driverkit_wire::{IOResult, IOReturn, MethodId};

/// One BAR of a function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    pub size: u64,
    /// `pci::bar_type`.
    pub kind: u8,
}

/// A BAR as memory a driver can map.
pub struct MappedBar {
    /// What the driver maps: a model's register file (a memfd), or a real
    /// BAR (sysfs's `resourceN`), from offset 0.
    pub memory: std::os::fd::OwnedFd,
    /// Bytes mapped: the BAR's size.
    pub length: u64,
    /// Writes reach the device only as `memory_write` calls (a model,
    /// which sees no stores).
    pub writes_trap: bool,
}

/// What a device's DMA may reach: `length` bytes of `region` from
/// `offset` (both page-aligned, inside the region), at bus address
/// `address`.
pub struct DmaWindow {
    pub address: u64,
    pub region: Arc<SharedMemory>,
    pub offset: usize,
    pub length: usize,
}

/// What a PCI function does; its backend implements it. Every argument
/// has been checked by the family: offsets are inside, aligned and of a
/// width the space allows.
pub trait PciDevice: Send + Sync {
    fn location(&self) -> Location;
    /// A driver opened the function: take it from whoever had it (a
    /// kernel driver) so that the calls below reach it.
    fn claim(&self) -> IOResult<()> {
        Ok(())
    }
    /// Its driver is gone (after [`PciFamily::revoke`]): give it back.
    fn release(&self) {}
    /// [`pci::CONFIG_SPACE`] or [`pci::CONFIG_SPACE_EXTENDED`].
    fn config_space(&self) -> u16;
    fn config_read(&self, offset: u16, width: Width) -> u32;
    fn config_write(&self, offset: u16, width: Width, value: u32);
    /// BAR `index` (0 to 5), if the function implements it.
    fn bar(&self, index: u8) -> Option<Bar>;
    fn bar_read(&self, index: u8, offset: u64, width: Width) -> u64;
    fn bar_write(&self, index: u8, offset: u64, width: Width, value: u64);
    /// BAR `index` as memory a driver can map.
    fn map_bar(&self, index: u8) -> IOResult<MappedBar>;
    /// Switches the function to `kind` with between `min` and `max`
    /// vectors; returns how many it has.
    fn configure_interrupts(&self, kind: pci::InterruptKind, min: u32, max: u32) -> IOResult<u32>;
    /// Delivers vector `index` into `region` from now on.
    fn subscribe_interrupt(&self, index: u32, region: &Arc<SharedMemory>) -> IOResult<()>;
    /// Makes `window` reachable by the device's DMA.
    fn dma_map(&self, window: DmaWindow) -> IOResult<()>;
    /// The device can no longer reach `address..address + length`.
    fn dma_unmap(&self, address: u64, length: u64);
    /// A function-level reset: the power-on state, interrupts off.
    fn reset(&self) -> IOResult<()>;
    /// The function left the registry.
    fn unplugged(&self) {}
}

/// Who opened a function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Owner {
    server: ServerId,
    /// The caller's client of the nub (its driver), whose end ends the
    /// ownership.
    client: EntryId,
}

struct Function {
    device: Arc<dyn PciDevice>,
    owner: Option<Owner>,
    dma: dma::AddressSpace,
}

/// The PCI family.
#[derive(Default)]
pub struct PciFamily {
    functions: Mutex<HashMap<EntryId, Function>>,
}

/// The properties IOPCIFamily publishes on a nub, read from the
/// function's configuration header, and its name (`pciVVVV,DDDD`).
fn nub_properties(device: &dyn PciDevice) -> (String, plist::Dictionary) {
    let r16 = |at| device.config_read(at, Width::W16) as u64;
    let class = device.config_read(reg::REVISION_ID, Width::W32) as u64 >> 8;
    let vendor = r16(reg::VENDOR_ID);
    let product = r16(reg::DEVICE_ID);
    let name = format!("pci{vendor:x},{product:x}");
    let mut p = plist::Dictionary::new();
    for (key, value) in [
        ("vendor-id", vendor),
        ("device-id", product),
        ("subsystem-vendor-id", r16(reg::SUBSYSTEM_VENDOR_ID)),
        ("subsystem-id", r16(reg::SUBSYSTEM_ID)),
        ("class-code", class),
        (
            "revision-id",
            device.config_read(reg::REVISION_ID, Width::W8) as u64,
        ),
    ] {
        p.insert(key.into(), plist::Value::Integer(value.into()));
    }
    p.insert("IOName".into(), name.clone().into());
    p.insert("IOPCILocation".into(), device.location().to_string().into());
    (name, p)
}

/// Sets bits `set` and clears bits `clear` of the function's command
/// register.
fn set_command(device: &dyn PciDevice, set: u16, clear: u16) {
    let cmd = device.config_read(reg::COMMAND, Width::W16) as u16;
    device.config_write(reg::COMMAND, Width::W16, u32::from((cmd | set) & !clear));
}

impl PciFamily {
    fn lock(&self) -> MutexGuard<'_, HashMap<EntryId, Function>> {
        self.functions.locked()
    }

    /// Publishes a function as an `IOPCIDevice` under `bus` and matches
    /// it. `extra`: properties the backend adds (where it came from).
    pub fn plug(
        &self,
        system: &System,
        bus: EntryId,
        source: &str,
        extra: plist::Dictionary,
        device: Arc<dyn PciDevice>,
    ) -> Result<EntryId, driverkit_core::CoreError> {
        let (name, mut properties) = nub_properties(&*device);
        properties.extend(extra);
        let plugged = Plugged {
            name: &name,
            properties,
            bus,
            source,
        };
        system.plug_device(self, "IOPCIDevice", plugged, |id| {
            self.lock().insert(
                id,
                Function {
                    device,
                    owner: None,
                    dma: Default::default(),
                },
            );
        })
    }

    fn device(&self, entry: EntryId) -> IOResult<Arc<dyn PciDevice>> {
        self.lock()
            .get(&entry)
            .map(|f| f.device.clone())
            .ok_or(IOReturn::NO_DEVICE)
    }

    /// The device, for a call that needs the function open by the caller.
    fn opened(&self, call: &Call<'_>) -> IOResult<Arc<dyn PciDevice>> {
        let functions = self.lock();
        let f = functions.get(&call.entry()).ok_or(IOReturn::NO_DEVICE)?;
        match f.owner {
            Some(o) if o.server == call.server => Ok(f.device.clone()),
            _ => Err(IOReturn::NOT_OPEN),
        }
    }

    /// Takes function `entry` back from whoever opened it: Bus Master off
    /// first, then Memory Space, then the DMA mappings, then (`reset`) a
    /// function-level reset. Nothing happens to a function nobody opened.
    fn revoke(&self, entry: EntryId, reset: bool) {
        let (device, mappings) = {
            let mut functions = self.lock();
            let Some(f) = functions.get_mut(&entry) else {
                return;
            };
            if f.owner.take().is_none() {
                return;
            }
            (f.device.clone(), f.dma.release_all())
        };
        set_command(&*device, 0, command::BUS_MASTER);
        set_command(&*device, 0, command::MEMORY_SPACE);
        for m in &mappings {
            device.dma_unmap(m.address, m.length);
        }
        if reset {
            if let Err(e) = device.reset() {
                tracing::warn!(
                    "pci      {}: reset after its driver: {e}",
                    device.location()
                );
            }
        }
        tracing::info!(
            "pci      {}: taken back (Bus Master and Memory Space off, {} DMA mapping(s) ended{})",
            device.location(),
            mappings.len(),
            if reset { ", reset" } else { "" }
        );
        device.release();
    }
}

struct PciCall<'a> {
    family: &'a PciFamily,
    call: &'a Call<'a>,
}

impl PciCall<'_> {
    fn bar(&self, device: &dyn PciDevice, index: u8, offset: u64, width: u8) -> IOResult<Width> {
        let width = Width::of(width)?;
        let bar = device.bar(index).ok_or(IOReturn::BAD_ARGUMENT)?;
        if !width.fits(offset, bar.size) {
            return Err(IOReturn::BAD_ARGUMENT);
        }
        Ok(width)
    }

    fn config(&self, device: &dyn PciDevice, offset: u16, width: u8) -> IOResult<Width> {
        let width = Width::of(width)?;
        if width == Width::W64 || !width.fits(offset.into(), device.config_space().into()) {
            return Err(IOReturn::BAD_ARGUMENT);
        }
        Ok(width)
    }
}

impl IOPCIDeviceInterface for PciCall<'_> {
    fn open(&self) -> IOResult<()> {
        let client = self
            .call
            .system
            .client_in(self.call.entry(), self.call.server)
            .ok_or(IOReturn::NOT_PERMITTED)?;
        let device = {
            let mut functions = self.family.lock();
            let f = functions
                .get_mut(&self.call.entry())
                .ok_or(IOReturn::NO_DEVICE)?;
            match f.owner {
                Some(o) if o.server == self.call.server => return Ok(()),
                Some(_) => return Err(IOReturn::EXCLUSIVE_ACCESS),
                None => {}
            }
            f.owner = Some(Owner {
                server: self.call.server,
                client,
            });
            f.device.clone()
        };
        if let Err(e) = device.claim() {
            if let Some(f) = self.family.lock().get_mut(&self.call.entry()) {
                f.owner = None;
            }
            return Err(e);
        }
        set_command(&*device, command::MEMORY_SPACE, 0);
        Ok(())
    }

    fn close(&self) -> IOResult<()> {
        self.family.opened(self.call)?;
        self.family.revoke(self.call.entry(), false);
        Ok(())
    }

    /// Anyone matched on the function may read its configuration; only
    /// its opener writes.
    fn configuration_read(&self, offset: u16, width: u8) -> IOResult<u64> {
        let device = self.family.device(self.call.entry())?;
        let width = self.config(&*device, offset, width)?;
        Ok(device.config_read(offset, width).into())
    }

    fn configuration_write(&self, offset: u16, width: u8, value: u64) -> IOResult<()> {
        let device = self.family.opened(self.call)?;
        let width = self.config(&*device, offset, width)?;
        if width.mask(value) != value {
            return Err(IOReturn::BAD_ARGUMENT);
        }
        device.config_write(offset, width, value as u32);
        Ok(())
    }

    fn memory_read(&self, memory_index: u8, offset: u64, width: u8) -> IOResult<u64> {
        let device = self.family.opened(self.call)?;
        let width = self.bar(&*device, memory_index, offset, width)?;
        Ok(device.bar_read(memory_index, offset, width))
    }

    fn memory_write(&self, memory_index: u8, offset: u64, width: u8, value: u64) -> IOResult<()> {
        let device = self.family.opened(self.call)?;
        let width = self.bar(&*device, memory_index, offset, width)?;
        if width.mask(value) != value {
            return Err(IOReturn::BAD_ARGUMENT);
        }
        device.bar_write(memory_index, offset, width, value);
        Ok(())
    }

    fn get_bar_info(&self, bar: u8) -> IOResult<(u8, u64, u8)> {
        let device = self.family.device(self.call.entry())?;
        let info = device.bar(bar).ok_or(IOReturn::NOT_FOUND)?;
        Ok((bar, info.size, info.kind))
    }

    fn find_capability(&self, id: u32, after: u16) -> IOResult<u16> {
        let device = self.family.device(self.call.entry())?;
        let space = device.config_space();
        if after != 0 && !Width::W8.fits(after.into(), space.into()) {
            return Err(IOReturn::BAD_ARGUMENT);
        }
        pci::find_capability(space, id, after, |at| {
            Width::W32
                .fits(at.into(), space.into())
                .then(|| device.config_read(at, Width::W32))
        })
        .ok_or(IOReturn::NOT_FOUND)
    }

    fn get_bus_device_function(&self) -> IOResult<(u8, u8, u8)> {
        let l = self.family.device(self.call.entry())?.location();
        Ok((l.bus, l.device, l.function))
    }

    fn reset(&self, options: u32) -> IOResult<()> {
        if options != pci::reset::FUNCTION {
            return Err(IOReturn::BAD_ARGUMENT);
        }
        let device = self.family.opened(self.call)?;
        // What the driver had mapped no longer means anything to a reset
        // device; the opener keeps the function.
        let mappings = self
            .family
            .lock()
            .get_mut(&self.call.entry())
            .map(|f| f.dma.release_all())
            .unwrap_or_default();
        for m in &mappings {
            device.dma_unmap(m.address, m.length);
        }
        device.reset()?;
        set_command(&*device, command::MEMORY_SPACE, 0);
        Ok(())
    }

    fn configure_interrupts(&self, kind: u32, min: u32, max: u32) -> IOResult<u32> {
        let kind = pci::InterruptKind::from_wire(kind).ok_or(IOReturn::BAD_ARGUMENT)?;
        if min == 0 || min > max {
            return Err(IOReturn::BAD_ARGUMENT);
        }
        self.family
            .opened(self.call)?
            .configure_interrupts(kind, min, max)
    }

    fn copy_mapped_bar(&self, memory_index: u8) -> IOResult<(u64, u64, bool)> {
        let device = self.family.opened(self.call)?;
        device.bar(memory_index).ok_or(IOReturn::BAD_ARGUMENT)?;
        let mapped = device.map_bar(memory_index)?;
        let id = self
            .call
            .system
            .give_region(self.call.server, std::os::fd::AsFd::as_fd(&mapped.memory))?;
        Ok((id, mapped.length, mapped.writes_trap))
    }

    fn prepare_dma(
        &self,
        memory: u64,
        offset: u64,
        length: u64,
        address_bits: u8,
    ) -> IOResult<Vec<(u64, u64)>> {
        let device = self.family.opened(self.call)?;
        let region = self.call.system.region(self.call.server, memory)?;
        let end = offset.checked_add(length).ok_or(IOReturn::BAD_ARGUMENT)?;
        if length == 0 || end > region.len() as u64 {
            return Err(IOReturn::BAD_ARGUMENT);
        }
        let first_page = offset - offset % dma::PAGE;
        let span = end - first_page;
        let address = self
            .family
            .lock()
            .get_mut(&self.call.entry())
            .ok_or(IOReturn::NO_DEVICE)?
            .dma
            .allocate(span, address_bits, self.call.server)?;
        let mapped_length = span
            .next_multiple_of(dma::PAGE)
            .min(region.len() as u64 - first_page);
        let window = DmaWindow {
            address,
            region,
            offset: first_page as usize,
            length: mapped_length as usize,
        };
        if let Err(e) = device.dma_map(window) {
            if let Some(f) = self.family.lock().get_mut(&self.call.entry()) {
                let _ = f.dma.release(address, self.call.server);
            }
            return Err(e);
        }
        Ok(vec![(address + offset % dma::PAGE, length)])
    }

    fn complete_dma(&self, address: u64) -> IOResult<()> {
        let device = self.family.opened(self.call)?;
        let mapping = self
            .family
            .lock()
            .get_mut(&self.call.entry())
            .ok_or(IOReturn::NO_DEVICE)?
            .dma
            .release(address, self.call.server)?;
        device.dma_unmap(mapping.address, mapping.length);
        Ok(())
    }
}

impl Family for PciFamily {
    fn name(&self) -> &'static str {
        "PCI"
    }

    fn classes(&self) -> Vec<(&'static str, Option<&'static str>)> {
        vec![("IOPCIDevice", None)]
    }

    fn matchers(&self) -> Vec<Box<dyn FamilyMatcher>> {
        vec![Box::new(matching::PciMatcher)]
    }

    fn kernel_call(&self, call: &Call<'_>) -> Option<IOResult<Vec<u8>>> {
        let (method, args) = (call.method, call.args);
        iopci_device_interface::dispatch(&PciCall { family: self, call }, method, args)
    }

    /// A function's driver drives it.
    fn client_method(&self, method: MethodId) -> bool {
        iopci_device_interface::method_name(method).is_some()
    }

    fn register_interrupt(&self, call: &Call<'_>, interrupt: Interrupt) -> IOResult<()> {
        self.opened(call)?
            .subscribe_interrupt(interrupt.index, &interrupt.region)
    }

    /// The nub departing (unplugged): whoever has it loses it now, before
    /// its Stop.
    fn departs(&self, _system: &System, entry: EntryId) {
        self.revoke(entry, true);
    }

    /// A driver that opened a function left the registry (stopped without
    /// closing, or crashed): the function is taken back and reset. A
    /// function that left is unplugged.
    fn removed(&self, _system: &System, entry: EntryId) {
        let owned: Vec<EntryId> = self
            .lock()
            .iter()
            .filter(|(_, f)| f.owner.is_some_and(|o| o.client == entry))
            .map(|(id, _)| *id)
            .collect();
        for id in owned {
            self.revoke(id, true);
        }
        let gone = self.lock().remove(&entry);
        if let Some(f) = gone {
            f.device.unplugged();
        }
    }
}

//! One real PCI function as a [`PciDevice`]. Until a driver opens it, it
//! stays with its kernel driver and its configuration space is read from
//! sysfs; once opened, it is bound to `vfio-pci` and goes through VFIO:
//! configuration space as the device's region, interrupts as eventfds the
//! kernel signals (a thread per vector turns them into the dext's
//! interrupt regions), DMA as IOMMU mappings of the dext's own memory,
//! reset. Released, it goes back to its kernel driver.
//!
//! Memory BARs are the exception: the daemon reaches them through sysfs's
//! `resourceN` mapped, as the dext does with a mapped BAR, and never
//! through VFIO's BAR regions. Once vfio-pci touches a BAR it requests
//! its range, and a kernel with `CONFIG_IO_STRICT_DEVMEM` (Debian's)
//! then refuses every sysfs mapping of a busy range, which would leave
//! the dext no way to map it. I/O BARs, which cannot be mapped, go
//! through VFIO.

use driverkit_wire::sync::Locked;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use driverkit_wire::pci::{self, InterruptKind, Location, Width};
use driverkit_wire::shm::SharedMemory;
use driverkit_wire::{IOResult, IOReturn};
use vfio_ioctls::{VfioContainer, VfioDevice, VfioOps};
use vmm_sys_util::eventfd::EventFd;

use super::sysfs;
use crate::backends::interrupts::Subscribers;
use crate::families::pci::{Bar, DmaWindow, MappedBar, PciDevice};

/// VFIO's PCI indices (`linux/vfio.h`): the configuration space region,
/// and the INTx, MSI and MSI-X interrupt sets.
const CONFIG_REGION: u32 = 7;
const INTX: u32 = 0;
const MSI: u32 = 1;
const MSIX: u32 = 2;

/// The function while a driver has it.
struct Claimed {
    container: Arc<VfioContainer>,
    device: VfioDevice,
    /// The kernel driver it was taken from.
    original: Option<String>,
    irq: Option<Interrupts>,
    /// DMA mappings: the memory stays mapped in the daemon while the
    /// device may reach it.
    dma: HashMap<u64, (Arc<SharedMemory>, usize)>,
    /// The memory BARs, mapped from sysfs.
    bars: [Option<SharedMemory>; 6],
}

/// BAR `index` of the function at `path` mapped from sysfs, if it is a
/// memory BAR and the kernel lets it be mapped.
fn map_resource(path: &std::path::Path, index: usize, bar: &Bar) -> Option<SharedMemory> {
    if bar.kind & 0x7f == pci::bar_type::IO {
        return None;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path.join(format!("resource{index}")))
        .ok()?;
    SharedMemory::map_device(file.into(), usize::try_from(bar.size).ok()?)
        .inspect_err(|e| tracing::warn!("pci      {}: mapping BAR{index}: {e}", path.display()))
        .ok()
}

/// The eventfds of the vectors the driver configured, and the thread
/// that raises them into the dext's regions.
struct Interrupts {
    set: u32,
    stop: Arc<AtomicBool>,
    fds: Vec<Arc<EventFd>>,
}

impl Drop for Interrupts {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for fd in &self.fds {
            let _ = fd.write(1);
        }
    }
}

/// A real PCI function.
pub struct LinuxPciFunction {
    path: PathBuf,
    location: Location,
    config_space: u16,
    bars: [Option<Bar>; 6],
    /// Vector `i`'s subscribers (the dext's interrupt regions).
    vectors: Arc<Vec<Subscribers>>,
    claimed: Mutex<Option<Claimed>>,
}

/// The most vectors a driver can configure here.
const MAX_VECTORS: usize = 32;

impl LinuxPciFunction {
    /// The function at `path` (`/sys/bus/pci/devices/DDDD:BB:DD.F`).
    pub fn open(path: PathBuf) -> Result<LinuxPciFunction, super::LinuxPciError> {
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let location = sysfs::location(&name)
            .ok_or_else(|| super::LinuxPciError::NotAnAddress(name.clone()))?;
        let config_len = std::fs::metadata(path.join("config"))
            .map_err(|source| super::LinuxPciError::Io {
                path: path.join("config"),
                source,
            })?
            .len();
        let config_space = if config_len >= u64::from(pci::CONFIG_SPACE_EXTENDED) {
            pci::CONFIG_SPACE_EXTENDED
        } else {
            pci::CONFIG_SPACE
        };
        let resource = std::fs::read_to_string(path.join("resource")).unwrap_or_default();
        Ok(LinuxPciFunction {
            location,
            config_space,
            bars: sysfs::bars(&resource),
            vectors: Arc::new((0..MAX_VECTORS).map(|_| Subscribers::default()).collect()),
            claimed: Mutex::new(None),
            path,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Option<Claimed>> {
        self.claimed.locked()
    }

    /// The kernel driver it has now.
    pub fn driver(&self) -> Option<String> {
        sysfs::driver(&self.path)
    }

    /// `access` on BAR `index` where it is mapped (a memory BAR of a
    /// claimed function); `None` sends the caller to VFIO's region.
    fn with_mapped_bar<T>(&self, index: u8, access: impl FnOnce(&SharedMemory) -> T) -> Option<T> {
        let claimed = self.lock();
        let bar = claimed.as_ref()?.bars[usize::from(index)].as_ref()?;
        Some(access(bar))
    }

    fn region_read(&self, region: u32, offset: u64, width: Width) -> u64 {
        let mut bytes = [0xffu8; 8];
        let n = width.bytes() as usize;
        match &*self.lock() {
            Some(c) => c.device.region_read(region, &mut bytes[..n], offset),
            // Before a driver opened it, only configuration reads come
            // here, from sysfs (as root it shows the whole space).
            None if region == CONFIG_REGION => {
                if let Ok(f) = File::open(self.path.join("config")) {
                    let _ = f.read_exact_at(&mut bytes[..n], offset);
                }
            }
            None => {}
        }
        width.mask(u64::from_le_bytes(bytes))
    }

    fn region_write(&self, region: u32, offset: u64, width: Width, value: u64) {
        if let Some(c) = &*self.lock() {
            let n = width.bytes() as usize;
            c.device
                .region_write(region, &value.to_le_bytes()[..n], offset);
        }
    }
}

/// Waits on each vector's eventfd and raises the vector into its
/// subscribers; an INTx is unmasked again after each (VFIO masks it when
/// it fires; the device holds the line until the driver acknowledges, so
/// a still-asserted line fires again at once).
/// VFIO's interrupt set for `kind`: INTx for a level interrupt, MSI,
/// MSI-X.
fn interrupt_set(kind: InterruptKind) -> u32 {
    match kind {
        InterruptKind::Level => INTX,
        InterruptKind::Msi => MSI,
        InterruptKind::MsiX => MSIX,
    }
}

fn watch(fd: Arc<EventFd>, stop: Arc<AtomicBool>, vectors: Arc<Vec<Subscribers>>, vector: usize) {
    while fd.read().is_ok() {
        if stop.load(Ordering::Acquire) {
            return;
        }
        if let Some(s) = vectors.get(vector) {
            s.raise();
        }
    }
}

impl PciDevice for LinuxPciFunction {
    fn location(&self) -> Location {
        self.location
    }

    /// Bound to `vfio-pci`, then opened through a container of its own
    /// (its group set to the IOMMU's type 1).
    fn claim(&self) -> IOResult<()> {
        let mut claimed = self.lock();
        if claimed.is_some() {
            return Ok(());
        }
        let original = sysfs::driver(&self.path).filter(|d| d != "vfio-pci");
        let fail = |what: &dyn std::fmt::Display| {
            tracing::error!("pci      {}: {what}", self.location);
            IOReturn::NOT_PERMITTED
        };
        sysfs::bind(&self.path, "vfio-pci").map_err(|e| fail(&e))?;
        let opened = VfioContainer::new(None)
            .map(Arc::new)
            .and_then(|container| {
                let ops: Arc<dyn VfioOps> = container.clone();
                VfioDevice::new(&self.path, ops, false).map(|device| (container, device))
            });
        let (container, device) = match opened {
            Ok(pair) => pair,
            Err(e) => {
                let _ = sysfs::give_back(&self.path);
                return Err(fail(&format_args!("opening it through VFIO: {e}")));
            }
        };
        tracing::info!(
            "pci      {}: taken from {} for its driver (vfio-pci)",
            self.location,
            original.as_deref().unwrap_or("no kernel driver")
        );
        let bars = std::array::from_fn(|i| {
            self.bars[i]
                .as_ref()
                .and_then(|bar| map_resource(&self.path, i, bar))
        });
        *claimed = Some(Claimed {
            container,
            device,
            original,
            irq: None,
            dma: HashMap::new(),
            bars,
        });
        Ok(())
    }

    /// Closing the device lets vfio-pci disable it; then its own kernel
    /// driver (if it had one) gets it back.
    fn release(&self) {
        let Some(claimed) = self.lock().take() else {
            return;
        };
        let original = claimed.original.clone();
        drop(claimed);
        match sysfs::give_back(&self.path) {
            Ok(()) => tracing::info!(
                "pci      {}: given back ({})",
                self.location,
                original.as_deref().unwrap_or("no kernel driver")
            ),
            Err(e) => tracing::warn!("pci      {}: giving it back: {e}", self.location),
        }
    }

    fn config_space(&self) -> u16 {
        self.config_space
    }

    fn config_read(&self, offset: u16, width: Width) -> u32 {
        self.region_read(CONFIG_REGION, offset.into(), width) as u32
    }

    fn config_write(&self, offset: u16, width: Width, value: u32) {
        self.region_write(CONFIG_REGION, offset.into(), width, value.into());
    }

    fn bar(&self, index: u8) -> Option<Bar> {
        self.bars.get(usize::from(index)).copied().flatten()
    }

    /// A load of exactly `width` from the mapped BAR (the family checked
    /// the offset), or VFIO's region for an I/O BAR.
    fn bar_read(&self, index: u8, offset: u64, width: Width) -> u64 {
        let at = offset as usize;
        let mapped = self.with_mapped_bar(index, |m| match width {
            Width::W8 => m.u8_at(at).load(Ordering::Acquire).into(),
            Width::W16 => m.u16_at(at).load(Ordering::Acquire).into(),
            Width::W32 => m.u32_at(at).load(Ordering::Acquire).into(),
            Width::W64 => m.u64_at(at).load(Ordering::Acquire),
        });
        mapped.unwrap_or_else(|| self.region_read(index.into(), offset, width))
    }

    fn bar_write(&self, index: u8, offset: u64, width: Width, value: u64) {
        let at = offset as usize;
        let mapped = self.with_mapped_bar(index, |m| match width {
            Width::W8 => m.u8_at(at).store(value as u8, Ordering::Release),
            Width::W16 => m.u16_at(at).store(value as u16, Ordering::Release),
            Width::W32 => m.u32_at(at).store(value as u32, Ordering::Release),
            Width::W64 => m.u64_at(at).store(value, Ordering::Release),
        });
        if mapped.is_none() {
            self.region_write(index.into(), offset, width, value);
        }
        // The driver's write is typically its acknowledgment: a masked
        // INTx may fire again.
        if let Some(c) = &*self.lock() {
            if c.irq.as_ref().is_some_and(|i| i.set == INTX) {
                let _ = c.device.unmask_irq(INTX);
            }
        }
    }

    /// sysfs's `resourceN`: the BAR itself, which the dext maps. Memory
    /// BARs only (an I/O BAR cannot be mapped).
    fn map_bar(&self, index: u8) -> IOResult<MappedBar> {
        let bar = self.bar(index).ok_or(IOReturn::BAD_ARGUMENT)?;
        if bar.kind & 0x7f == pci::bar_type::IO {
            return Err(IOReturn::UNSUPPORTED);
        }
        let path = self.path.join(format!("resource{index}"));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| {
                tracing::warn!("pci      {}: {}: {e}", self.location, path.display());
                IOReturn::NOT_PERMITTED
            })?;
        Ok(MappedBar {
            memory: file.into(),
            length: bar.size,
            writes_trap: false,
        })
    }

    fn configure_interrupts(&self, kind: InterruptKind, min: u32, max: u32) -> IOResult<u32> {
        let mut claimed = self.lock();
        let c = claimed.as_mut().ok_or(IOReturn::NOT_OPEN)?;
        let set = interrupt_set(kind);
        let available = c.device.get_irq_info(set).map_or(0, |i| i.count);
        let count = available.min(max).min(MAX_VECTORS as u32);
        if count < min {
            return Err(IOReturn::UNSUPPORTED);
        }
        // The old set first: one kind at a time.
        if let Some(old) = c.irq.take() {
            let _ = c.device.disable_irq(old.set);
        }
        let fds: Vec<Arc<EventFd>> = (0..count)
            .map(|_| EventFd::new(libc::EFD_CLOEXEC).map(Arc::new))
            .collect::<Result<_, _>>()
            .map_err(|_| IOReturn::NO_RESOURCES)?;
        c.device
            .enable_irq(set, fds.iter().map(|f| &**f).collect())
            .map_err(|e| {
                tracing::warn!("pci      {}: enabling interrupts: {e}", self.location);
                IOReturn::UNSUPPORTED
            })?;
        let stop = Arc::new(AtomicBool::new(false));
        // Enabled from here: kept in the claim before a watcher starts,
        // so that a failed start disables them and ends the watchers
        // already running (Interrupts' drop), as a release does.
        let irq = c.irq.insert(Interrupts {
            set,
            stop: stop.clone(),
            fds,
        });
        for (vector, fd) in irq.fds.iter().enumerate() {
            let (fd, stop, vectors) = (fd.clone(), stop.clone(), self.vectors.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("pci-irq:{}:{vector}", self.location))
                .stack_size(64 * 1024)
                .spawn(move || watch(fd, stop, vectors, vector));
            if spawned.is_err() {
                if let Some(irq) = c.irq.take() {
                    let _ = c.device.disable_irq(irq.set);
                }
                return Err(IOReturn::NO_RESOURCES);
            }
        }
        Ok(count)
    }

    fn subscribe_interrupt(&self, index: u32, region: &Arc<SharedMemory>) -> IOResult<()> {
        let configured = self
            .lock()
            .as_ref()
            .and_then(|c| c.irq.as_ref().map(|i| i.fds.len()))
            .unwrap_or(0);
        if index as usize >= configured {
            return Err(IOReturn::NOT_FOUND);
        }
        self.vectors[index as usize].add(region)
    }

    fn dma_map(&self, window: DmaWindow) -> IOResult<()> {
        let (address, region, length) = (window.address, window.region, window.length);
        let mut claimed = self.lock();
        let c = claimed.as_mut().ok_or(IOReturn::NOT_OPEN)?;
        // SAFETY: the range is inside the region's mapping, which stays
        // mapped (the Arc is kept in `dma`) until `dma_unmap` unmaps it
        // from the IOMMU first. The daemon touches the region only
        // through `SharedMemory`'s copies and atomics, never through a
        // reference to its bytes.
        let mapped = unsafe {
            c.container
                .vfio_dma_map(address, length, region.as_ptr().add(window.offset))
        };
        mapped.map_err(|e| {
            tracing::warn!(
                "pci      {}: IOMMU mapping at {address:#x}: {e}",
                self.location
            );
            IOReturn::NO_RESOURCES
        })?;
        c.dma.insert(address, (region, length));
        Ok(())
    }

    fn dma_unmap(&self, address: u64, _length: u64) {
        if let Some(c) = &mut *self.lock() {
            if let Some((_, length)) = c.dma.remove(&address) {
                if let Err(e) = c.container.vfio_dma_unmap(address, length) {
                    tracing::warn!(
                        "pci      {}: IOMMU unmapping {address:#x}: {e}",
                        self.location
                    );
                }
            }
        }
    }

    /// VFIO's reset (a function-level or bus reset, where the device has
    /// one), with its interrupts off.
    fn reset(&self) -> IOResult<()> {
        let mut claimed = self.lock();
        let c = claimed.as_mut().ok_or(IOReturn::NOT_OPEN)?;
        if let Some(old) = c.irq.take() {
            let _ = c.device.disable_irq(old.set);
        }
        c.device.reset();
        Ok(())
    }

    fn unplugged(&self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_interrupt_kind_is_refused_not_taken_for_intx() {
        use driverkit_wire::pci::interrupt_type;
        let set = |wire| InterruptKind::from_wire(wire).map(interrupt_set);
        assert_eq!(set(interrupt_type::LEVEL), Some(INTX));
        assert_eq!(set(interrupt_type::MSI), Some(MSI));
        assert_eq!(set(interrupt_type::MSIX), Some(MSIX));
        assert_eq!(set(0x4), None);
    }
}

//! Real PCI functions on Linux: every function sysfs lists becomes an
//! `IOPCIDevice` nub under a `PCI0` node, visible to matching like any
//! other; a function stays with its kernel driver until a dext that
//! matched it opens it, is then driven through VFIO, and goes back to its
//! kernel driver when that dext closes, stops or crashes.
//!
//! Only where VFIO exists (`/dev/vfio/vfio`: the `vfio` module loaded): a
//! function the daemon cannot take is not worth showing as drivable. DMA
//! needs an IOMMU (type 1), so the machine needs one (in a QEMU guest:
//! `-machine q35 -device intel-iommu` and `intel_iommu=on`); VFIO's
//! no-IOMMU mode gives no DMA mappings and is not used.
//!
//! - [`sysfs`]: what sysfs says of a function, and rebinding it;
//! - [`function`]: one function as a `PciDevice`, through VFIO.
//!
//! Functions are listed once, at start: PCI hot-plug is left for later.

pub mod function;
pub mod sysfs;

use std::path::Path;
use std::sync::Arc;

use driverkit_core::{EntryId, Nub, System};

use crate::families::pci::PciFamily;
use function::LinuxPciFunction;

/// The VFIO container device: present once the `vfio` module is loaded.
const VFIO: &str = "/dev/vfio/vfio";

/// Why the host's PCI functions, or one of them, cannot be driven.
#[derive(Debug, thiserror::Error)]
pub enum LinuxPciError {
    #[error("{VFIO} does not exist (no VFIO: modprobe vfio-pci)")]
    NoVfio,
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot publish the PCI bus: {0}")]
    Bus(driverkit_wire::IOReturn),
    #[error("{0}: not a PCI address")]
    NotAnAddress(String),
}

/// The Linux PCI backend: what it plugged.
pub struct LinuxPci {
    _functions: Vec<(EntryId, Arc<LinuxPciFunction>)>,
}

impl LinuxPci {
    /// Plugs every function sysfs lists under a `PCI0` node.
    pub fn start(system: System, pci: Arc<PciFamily>) -> Result<LinuxPci, LinuxPciError> {
        if !Path::new(VFIO).exists() {
            return Err(LinuxPciError::NoVfio);
        }
        let mut entries: Vec<_> = std::fs::read_dir(sysfs::DEVICES)
            .map_err(|source| LinuxPciError::Io {
                path: sysfs::DEVICES.into(),
                source,
            })?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        entries.sort();
        let bus = system
            .publish(Nub {
                name: "PCI0",
                class: "IOPCIBridge",
                properties: Default::default(),
                provider: system.root().map_err(LinuxPciError::Bus)?,
                family: None,
                plugged_from: None,
                matched: true,
            })
            .map_err(LinuxPciError::Bus)?;
        let mut functions = Vec::new();
        for path in entries {
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let function = match LinuxPciFunction::open(path) {
                Ok(f) => Arc::new(f),
                Err(e) => {
                    tracing::warn!("pci      not plugging {name}: {e}");
                    continue;
                }
            };
            let mut extra = plist::Dictionary::new();
            if let Some(driver) = function.driver() {
                extra.insert("IOPCIKernelDriver".into(), driver.into());
            }
            match pci.plug(
                &system,
                bus,
                &format!("linux:{name}"),
                extra,
                function.clone(),
            ) {
                Ok(id) => functions.push((id, function)),
                Err(e) => tracing::warn!("pci      not plugging {name}: {e}"),
            }
        }
        tracing::info!("pci      {} real function(s) plugged", functions.len());
        Ok(LinuxPci {
            _functions: functions,
        })
    }
}

//! The PCI family's system side. So far its matching: personalities whose
//! provider is an `IOPCIDevice` are held to `IOPCIMatch`,
//! `IOPCIPrimaryMatch`, `IOPCISecondaryMatch` and `IOPCIClassMatch`
//! ([`matching`]), and to the `transport.pci` entitlement, on whatever
//! publishes `IOPCIDevice` nubs (device files today). The device's methods
//! (configuration space, BARs, interrupts, DMA) come with its devices: a
//! model of QEMU's edu device, and real ones through VFIO.

pub mod matching;

use driverkit_core::{Call, Family, FamilyMatcher};
use driverkit_wire::{IOResult, MethodId};

#[derive(Default)]
pub struct PciFamily;

impl Family for PciFamily {
    fn name(&self) -> &'static str {
        "PCI"
    }

    /// None yet: `IOPCIDevice` nubs belong to whoever publishes them.
    fn classes(&self) -> Vec<(&'static str, Option<&'static str>)> {
        Vec::new()
    }

    fn matchers(&self) -> Vec<Box<dyn FamilyMatcher>> {
        vec![Box::new(matching::PciMatcher)]
    }

    fn kernel_call(&self, _: &Call<'_>, _: MethodId, _: &[u8]) -> Option<IOResult<Vec<u8>>> {
        None
    }
}

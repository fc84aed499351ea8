//! A function's DMA address space, as the system hands it out: each
//! `PrepareForDMA` gets one run of pages, below the address limit the
//! driver asked for, that no other mapping of the function uses. The
//! backend puts the pages there (an IOMMU mapping, or the model's table);
//! this only decides where.

use driverkit_core::ServerId;
use driverkit_wire::{IOResult, IOReturn};

pub const PAGE: u64 = 4096;

/// The lowest address handed out: page 0 stays unmapped, so a driver that
/// programs a device with a zero address faults instead of reaching memory.
const FIRST: u64 = 0x10_0000;

/// One prepared mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// Where it starts in the device's address space (page-aligned).
    pub address: u64,
    /// Its length in bytes (whole pages).
    pub length: u64,
    /// The process that prepared it.
    pub server: ServerId,
}

/// The mappings of one function, sorted by address.
#[derive(Default, Debug)]
pub struct AddressSpace {
    mappings: Vec<Mapping>,
}

impl AddressSpace {
    /// A free run of `length` bytes (rounded up to pages) ending at or
    /// below `2^address_bits`, first fit. `kIOReturnBadArgument` when the
    /// limit cannot hold it at all (the driver asked for the impossible),
    /// `kIOReturnNoResources` when it could but the space is full.
    pub fn allocate(&mut self, length: u64, address_bits: u8, server: ServerId) -> IOResult<u64> {
        if length == 0 || !(12..=64).contains(&address_bits) {
            return Err(IOReturn::BAD_ARGUMENT);
        }
        let length = length
            .checked_next_multiple_of(PAGE)
            .ok_or(IOReturn::BAD_ARGUMENT)?;
        let limit = if address_bits == 64 {
            u64::MAX
        } else {
            1u64 << address_bits
        };
        if FIRST.checked_add(length).is_none_or(|end| end > limit) {
            return Err(IOReturn::BAD_ARGUMENT);
        }
        let mut at = FIRST;
        let mut slot = self.mappings.len();
        for (i, m) in self.mappings.iter().enumerate() {
            if at + length <= m.address {
                slot = i;
                break;
            }
            at = at.max(m.address + m.length);
        }
        if at.checked_add(length).is_none_or(|end| end > limit) {
            return Err(IOReturn::NO_RESOURCES);
        }
        self.mappings.insert(
            slot,
            Mapping {
                address: at,
                length,
                server,
            },
        );
        Ok(at)
    }

    /// Ends the mapping that starts at `address` (or contains it: a
    /// driver completes with the first segment's address, which need not
    /// be page-aligned), if `server` made it.
    pub fn release(&mut self, address: u64, server: ServerId) -> IOResult<Mapping> {
        let i = self
            .mappings
            .iter()
            .position(|m| {
                m.server == server && (m.address..m.address + m.length).contains(&address)
            })
            .ok_or(IOReturn::NOT_FOUND)?;
        Ok(self.mappings.remove(i))
    }

    /// Every mapping, ended: the function was closed or its driver went.
    pub fn release_all(&mut self) -> Vec<Mapping> {
        std::mem::take(&mut self.mappings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: ServerId = ServerId::from_raw(1);
    const TWO: ServerId = ServerId::from_raw(2);

    #[test]
    fn mappings_fit_below_the_limit_without_overlapping() {
        let mut space = AddressSpace::default();
        let a = space.allocate(4096, 28, ONE).unwrap();
        let b = space.allocate(5000, 28, ONE).unwrap();
        assert_eq!(a, FIRST);
        assert_eq!(b, FIRST + PAGE);
        let c = space.allocate(1, 28, ONE).unwrap();
        assert_eq!(c, FIRST + 3 * PAGE);
        assert_eq!(space.release(b + 100, ONE).unwrap().length, 2 * PAGE);
        assert_eq!(
            space.allocate(8192, 28, ONE).unwrap(),
            b,
            "the hole is reused"
        );
        assert_eq!(
            space.release(a, TWO),
            Err(IOReturn::NOT_FOUND),
            "only its maker ends it"
        );
        assert_eq!(space.release_all().len(), 3);
    }

    #[test]
    fn the_impossible_is_a_bad_argument_and_a_full_space_no_resources() {
        let mut space = AddressSpace::default();
        assert_eq!(space.allocate(4096, 11, ONE), Err(IOReturn::BAD_ARGUMENT));
        assert_eq!(space.allocate(4096, 65, ONE), Err(IOReturn::BAD_ARGUMENT));
        assert_eq!(space.allocate(0, 28, ONE), Err(IOReturn::BAD_ARGUMENT));
        assert_eq!(
            space.allocate(1 << 28, 28, ONE),
            Err(IOReturn::BAD_ARGUMENT)
        );
        assert_eq!(
            space.allocate(u64::MAX, 64, ONE),
            Err(IOReturn::BAD_ARGUMENT)
        );
        let most = (1 << 21) - FIRST;
        assert_eq!(space.allocate(most, 21, ONE), Ok(FIRST));
        assert_eq!(space.allocate(4096, 21, ONE), Err(IOReturn::NO_RESOURCES));
    }
}

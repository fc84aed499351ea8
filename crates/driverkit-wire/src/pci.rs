//! PCI's vocabulary, shared by the system (which reaches devices) and the
//! SDK (whose drivers name registers): the configuration space header's
//! registers and bits, access widths, BAR kinds, interrupt kinds, and the
//! capability lists' walk.
//!
//! The walk reads bytes a device chose, so it is bounded: a list that loops
//! or points outside the space ends the walk, never the caller.

use crate::{IOResult, IOReturn};

/// The conventional configuration space; a PCI Express function has
/// [`CONFIG_SPACE_EXTENDED`].
pub const CONFIG_SPACE: u16 = 256;
pub const CONFIG_SPACE_EXTENDED: u16 = 4096;

/// Configuration header registers (type 0).
pub mod reg {
    pub const VENDOR_ID: u16 = 0x00;
    pub const DEVICE_ID: u16 = 0x02;
    pub const COMMAND: u16 = 0x04;
    pub const STATUS: u16 = 0x06;
    pub const REVISION_ID: u16 = 0x08;
    /// Programming interface, subclass, base class: the three bytes from
    /// 0x09, which IOKit's `class-code` holds as one number.
    pub const CLASS_CODE: u16 = 0x09;
    pub const HEADER_TYPE: u16 = 0x0e;
    pub const BAR0: u16 = 0x10;
    pub const SUBSYSTEM_VENDOR_ID: u16 = 0x2c;
    pub const SUBSYSTEM_ID: u16 = 0x2e;
    pub const CAPABILITIES: u16 = 0x34;
    pub const INTERRUPT_LINE: u16 = 0x3c;
    pub const INTERRUPT_PIN: u16 = 0x3d;
}

/// Bits of the command register.
pub mod command {
    pub const IO_SPACE: u16 = 1 << 0;
    pub const MEMORY_SPACE: u16 = 1 << 1;
    pub const BUS_MASTER: u16 = 1 << 2;
    pub const INTX_DISABLE: u16 = 1 << 10;
}

/// The status register's "has a capability list" bit.
pub const STATUS_CAPABILITIES: u16 = 1 << 4;

/// Capability IDs a driver commonly looks for.
pub mod capability {
    pub const POWER_MANAGEMENT: u32 = 0x01;
    pub const MSI: u32 = 0x05;
    pub const VENDOR: u32 = 0x09;
    pub const EXPRESS: u32 = 0x10;
    pub const MSIX: u32 = 0x11;
    /// `FindPCICapability`'s option for extended capabilities (IDs of the
    /// list at 0x100, PCI Express only).
    pub const EXTENDED: u32 = 1 << 31;
}

/// How wide one register access is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Width {
    W8 = 1,
    W16 = 2,
    W32 = 4,
    W64 = 8,
}

impl Width {
    /// The width of `bytes`, or `kIOReturnBadArgument`.
    pub fn of(bytes: u8) -> IOResult<Width> {
        match bytes {
            1 => Ok(Width::W8),
            2 => Ok(Width::W16),
            4 => Ok(Width::W32),
            8 => Ok(Width::W64),
            _ => Err(IOReturn::BAD_ARGUMENT),
        }
    }

    pub fn bytes(self) -> u64 {
        self as u64
    }

    /// `value` cut to this width.
    pub fn mask(self, value: u64) -> u64 {
        match self {
            Width::W64 => value,
            w => value & ((1u64 << (w.bytes() * 8)) - 1),
        }
    }

    /// Whether an access of this width at `offset` stays inside `size`
    /// bytes and is naturally aligned, as the bus requires: every access a
    /// driver asks for is checked by this before it reaches a device.
    pub fn fits(self, offset: u64, size: u64) -> bool {
        offset.is_multiple_of(self.bytes())
            && offset
                .checked_add(self.bytes())
                .is_some_and(|end| end <= size)
    }
}

/// What a BAR is (`GetBARInfo`'s type).
pub mod bar_type {
    pub const MEMORY32: u8 = 0;
    pub const MEMORY64: u8 = 1;
    pub const IO: u8 = 2;
    pub const MEMORY_PREFETCHABLE: u8 = 0x80;
}

/// `ConfigureInterrupts`' kinds (DriverKit's values).
pub mod interrupt_type {
    /// INTx, level-triggered (`kIOInterruptTypeLevel`).
    pub const LEVEL: u32 = 0x1;
    /// MSI (`kIOInterruptTypePCIMessaged`).
    pub const MSI: u32 = 0x0001_0000;
    /// MSI-X (`kIOInterruptTypePCIMessagedX`).
    pub const MSIX: u32 = 0x0002_0000;
}

/// An interrupt kind, decoded from [`interrupt_type`]'s values once, where
/// a request enters the system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptKind {
    /// INTx, level-triggered.
    Level,
    /// MSI.
    Msi,
    /// MSI-X.
    MsiX,
}

impl InterruptKind {
    /// The kind a wire value names; `None` for any other value.
    pub fn from_wire(value: u32) -> Option<InterruptKind> {
        Some(match value {
            interrupt_type::LEVEL => InterruptKind::Level,
            interrupt_type::MSI => InterruptKind::Msi,
            interrupt_type::MSIX => InterruptKind::MsiX,
            _ => return None,
        })
    }

    /// Its wire value (`ConfigureInterrupts`' `interruptType`).
    pub fn to_wire(self) -> u32 {
        match self {
            InterruptKind::Level => interrupt_type::LEVEL,
            InterruptKind::Msi => interrupt_type::MSI,
            InterruptKind::MsiX => interrupt_type::MSIX,
        }
    }
}

/// `Reset`'s options: a function-level reset, or whatever the device
/// supports.
pub mod reset {
    pub const FUNCTION: u32 = 0;
}

/// Finds capability `id` in a configuration space read through `read32`
/// (dword-aligned offsets), from the start of its list or, when `after` is
/// non-zero, from the entry after the one at `after`: `FindPCICapability`.
/// `id | capability::EXTENDED` walks the extended list at 0x100, where
/// `space` is [`CONFIG_SPACE_EXTENDED`]. `None` when absent. At most 48
/// (conventional) or 960 (extended) entries are visited, and an entry
/// pointing outside its list's range ends the walk.
pub fn find_capability(
    space: u16,
    id: u32,
    after: u16,
    mut read32: impl FnMut(u16) -> Option<u32>,
) -> Option<u16> {
    if id & capability::EXTENDED != 0 {
        let wanted = id & 0xffff;
        if space < CONFIG_SPACE_EXTENDED {
            return None;
        }
        let mut at = 0x100u16;
        if after != 0 {
            at = (read32(after & !3)? >> 20) as u16 & !3;
        }
        for _ in 0..960 {
            if !(0x100..CONFIG_SPACE_EXTENDED - 3).contains(&at) {
                return None;
            }
            let header = read32(at)?;
            if header == 0 || header == u32::MAX {
                return None;
            }
            if header & 0xffff == wanted {
                return Some(at);
            }
            at = (header >> 20) as u16 & !3;
        }
        return None;
    }
    let status = (read32(reg::COMMAND)? >> 16) as u16;
    if status & STATUS_CAPABILITIES == 0 {
        return None;
    }
    let mut at = if after == 0 {
        read32(reg::CAPABILITIES)? as u16 & 0xfc
    } else {
        (read32(after & !3)? >> 8) as u16 & 0xfc
    };
    for _ in 0..48 {
        if !(0x40..CONFIG_SPACE).contains(&at) {
            return None;
        }
        let header = read32(at)?;
        if header & 0xff == id & 0xff {
            return Some(at);
        }
        at = (header >> 8) as u16 & 0xfc;
    }
    None
}

/// A bus address, as `IOPCIDevice::GetBusDeviceFunction` gives it and
/// `lspci` prints it (`00:03.0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Location {
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.device, self.function)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn space(bytes: &[u8]) -> impl FnMut(u16) -> Option<u32> + '_ {
        |at| {
            let at = usize::from(at);
            bytes
                .get(at..at + 4)
                .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
        }
    }

    /// A header with the capability bit, MSI at 0x40, a vendor capability
    /// at 0x50, and an extended list: AER (1) at 0x100, then 0x0b at 0x140.
    fn sample() -> Vec<u8> {
        let mut s = vec![0u8; 4096];
        s[0x06] = STATUS_CAPABILITIES as u8;
        s[0x34] = 0x40;
        s[0x40] = 0x05;
        s[0x41] = 0x50;
        s[0x50] = 0x09;
        s[0x51] = 0x00;
        s[0x100..0x104].copy_from_slice(&(0x0001u32 | 1 << 16 | 0x140 << 20).to_le_bytes());
        s[0x140..0x144].copy_from_slice(&(0x000bu32 | 1 << 16).to_le_bytes());
        s
    }

    #[test]
    fn finds_conventional_and_extended_capabilities() {
        let s = sample();
        assert_eq!(find_capability(4096, 0x05, 0, space(&s)), Some(0x40));
        assert_eq!(find_capability(4096, 0x09, 0, space(&s)), Some(0x50));
        assert_eq!(find_capability(4096, 0x09, 0x40, space(&s)), Some(0x50));
        assert_eq!(find_capability(4096, 0x05, 0x40, space(&s)), None);
        assert_eq!(find_capability(4096, 0x10, 0, space(&s)), None);
        let ext = capability::EXTENDED;
        assert_eq!(find_capability(4096, ext | 1, 0, space(&s)), Some(0x100));
        assert_eq!(find_capability(4096, ext | 0x0b, 0, space(&s)), Some(0x140));
        assert_eq!(
            find_capability(4096, ext | 0x0b, 0x100, space(&s)),
            Some(0x140)
        );
        assert_eq!(find_capability(256, ext | 1, 0, space(&s)), None);
    }

    #[test]
    fn a_looping_list_ends() {
        let mut s = sample();
        s[0x51] = 0x40; // 0x50 points back at 0x40
        assert_eq!(find_capability(4096, 0x10, 0, space(&s)), None);
        s[0x140..0x144].copy_from_slice(&(0x000bu32 | 0x100 << 20).to_le_bytes());
        assert_eq!(
            find_capability(4096, capability::EXTENDED | 7, 0, space(&s)),
            None
        );
    }

    #[test]
    fn widths_fit_aligned_and_inside() {
        assert!(Width::W32.fits(0xffc, 4096));
        assert!(!Width::W32.fits(0xffe, 4096));
        assert!(!Width::W32.fits(0x1000, 4096));
        assert!(!Width::W64.fits(u64::MAX - 7, u64::MAX));
        assert!(Width::W8.fits(0xfff, 4096));
        assert_eq!(Width::W16.mask(0x1234_5678), 0x5678);
        assert_eq!(Width::of(3), Err(IOReturn::BAD_ARGUMENT));
    }

    proptest! {
        #[test]
        fn any_space_is_walked_without_panicking(
            bytes in proptest::collection::vec(any::<u8>(), 0..4200),
            id in any::<u32>(),
            after in any::<u16>(),
        ) {
            let found = find_capability(4096, id, after, space(&bytes));
            if let Some(at) = found {
                prop_assert!(at % 4 == 0 && at < 4096);
            }
        }
    }
}

//! What sysfs says of a PCI function, and how a function changes hands
//! between kernel drivers (`driver_override`, `unbind`, `drivers_probe`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use driverkit_wire::pci::{bar_type, Location};

use crate::families::pci::Bar;

pub const DEVICES: &str = "/sys/bus/pci/devices";

/// `DDDD:BB:DD.F` as a location (the domain is dropped: DriverKit's
/// `GetBusDeviceFunction` has none).
pub fn location(name: &str) -> Option<Location> {
    let (_domain, rest) = name.split_once(':')?;
    let (bus, rest) = rest.split_once(':')?;
    let (device, function) = rest.split_once('.')?;
    Some(Location {
        bus: u8::from_str_radix(bus, 16).ok()?,
        device: u8::from_str_radix(device, 16).ok()?.min(31),
        function: u8::from_str_radix(function, 16).ok()?.min(7),
    })
}

const IORESOURCE_IO: u64 = 0x100;
const IORESOURCE_MEM: u64 = 0x200;
const IORESOURCE_PREFETCH: u64 = 0x2000;
const IORESOURCE_MEM_64: u64 = 0x0010_0000;

/// The six BARs from sysfs's `resource` file (one `start end flags` line
/// of hex per resource, BARs first). A line that does not parse, an empty
/// resource, or one no BAR can be (the whole 64-bit space), is a BAR the
/// function does not have.
pub fn bars(resource: &str) -> [Option<Bar>; 6] {
    let mut out = [None; 6];
    for (slot, line) in out.iter_mut().zip(resource.lines()) {
        let mut words = line
            .split_whitespace()
            .map(|w| u64::from_str_radix(w.trim_start_matches("0x"), 16).ok());
        let (Some(Some(start)), Some(Some(end)), Some(Some(flags))) =
            (words.next(), words.next(), words.next())
        else {
            continue;
        };
        if end <= start || flags & (IORESOURCE_IO | IORESOURCE_MEM) == 0 {
            continue;
        }
        let Some(size) = (end - start).checked_add(1) else {
            continue;
        };
        let mut kind = if flags & IORESOURCE_IO != 0 {
            bar_type::IO
        } else if flags & IORESOURCE_MEM_64 != 0 {
            bar_type::MEMORY64
        } else {
            bar_type::MEMORY32
        };
        if flags & IORESOURCE_PREFETCH != 0 {
            kind |= bar_type::MEMORY_PREFETCHABLE;
        }
        *slot = Some(Bar { size, kind });
    }
    out
}

/// The kernel driver bound to the function, if any.
pub fn driver(function: &Path) -> Option<String> {
    let link = std::fs::read_link(function.join("driver")).ok()?;
    Some(link.file_name()?.to_string_lossy().into_owned())
}

/// Why a function could not be handed to a driver, or back.
#[derive(Debug, thiserror::Error)]
pub enum SysfsError {
    #[error("writing {text:?} to {}: {source}", path.display())]
    Write {
        text: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{name}: {driver} did not bind it")]
    NotBound { name: String, driver: String },
    #[error("{}: not a PCI function", .0.display())]
    NotAFunction(PathBuf),
}

fn write(path: PathBuf, text: &str) -> Result<(), SysfsError> {
    std::fs::write(&path, text).map_err(|source| SysfsError::Write {
        text: text.to_owned(),
        path,
        source,
    })
}

/// Binds `function` to kernel driver `to` (`vfio-pci`), taking it from the
/// driver it has: `driver_override`, unbind, then a probe, which binds the
/// override. Waits until sysfs shows it bound.
pub fn bind(function: &Path, to: &str) -> Result<(), SysfsError> {
    let name = name(function)?;
    write(function.join("driver_override"), to)?;
    if let Some(current) = driver(function) {
        if current == to {
            return Ok(());
        }
        write(function.join("driver/unbind"), &name)?;
    }
    write(PathBuf::from("/sys/bus/pci/drivers_probe"), &name)?;
    wait_for(|| driver(function).as_deref() == Some(to)).map_err(|_| SysfsError::NotBound {
        name,
        driver: to.to_owned(),
    })
}

/// Gives `function` back: unbound from whatever has it, no override, and
/// probed again so that its own kernel driver (if any) binds.
pub fn give_back(function: &Path) -> Result<(), SysfsError> {
    let name = name(function)?;
    // A newline clears the override.
    write(function.join("driver_override"), "\n")?;
    if driver(function).is_some() {
        write(function.join("driver/unbind"), &name)?;
    }
    write(PathBuf::from("/sys/bus/pci/drivers_probe"), &name)
}

fn name(function: &Path) -> Result<String, SysfsError> {
    function
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| SysfsError::NotAFunction(function.to_owned()))
}

fn wait_for(done: impl Fn() -> bool) -> Result<(), ()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        if Instant::now() > deadline {
            return Err(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        assert_eq!(
            location("0000:00:03.0"),
            Some(Location {
                bus: 0,
                device: 3,
                function: 0
            })
        );
        assert_eq!(
            location("0000:1f:1c.7"),
            Some(Location {
                bus: 0x1f,
                device: 0x1c,
                function: 7
            })
        );
        assert_eq!(location("nonsense"), None);
    }

    /// The `resource` file of QEMU's edu device in a q35 guest, and of a
    /// function with a 64-bit prefetchable BAR and an I/O BAR.
    #[test]
    fn bars_from_the_resource_file() {
        let edu = "0x00000000fea00000 0x00000000feafffff 0x0000000000040200\n\
                   0x0000000000000000 0x0000000000000000 0x0000000000000000\n";
        let b = bars(edu);
        assert_eq!(
            b[0],
            Some(Bar {
                size: 1 << 20,
                kind: bar_type::MEMORY32
            })
        );
        assert!(b[1..].iter().all(Option::is_none));
        let other = "0x00000000fc000000 0x00000000fc003fff 0x000000000014220c\n\
                     0x000000000000c000 0x000000000000c03f 0x0000000000040101\n\
                     garbage\n";
        let b = bars(other);
        assert_eq!(
            b[0],
            Some(Bar {
                size: 0x4000,
                kind: bar_type::MEMORY64 | bar_type::MEMORY_PREFETCHABLE
            })
        );
        assert_eq!(
            b[1],
            Some(Bar {
                size: 0x40,
                kind: bar_type::IO
            })
        );
        assert_eq!(b[2], None);
    }

    /// Found by the `pci_config` fuzz target: a resource spanning every
    /// address has a size one past `u64::MAX`.
    #[test]
    fn a_resource_spanning_every_address_is_no_bar_not_an_overflow() {
        let whole = "0x0000000000000000 0xffffffffffffffff 0x0000000000040200\n";
        assert_eq!(bars(whole)[0], None);
    }
}

//! What Linux's sysfs says of a USB device and its interfaces: the driver
//! bound to an interface, the kernel's copy of a HID report descriptor.

use std::path::{Path, PathBuf};

/// The sysfs directory of interface `number` of the device at `device`
/// (`/sys/bus/usb/devices/1-1` -> `1-1:1.0`), in configuration `config`.
pub fn interface_dir(device: &Path, config: u8, number: u8) -> PathBuf {
    let name = device
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    device.join(format!("{name}:{config}.{number}"))
}

/// The driver bound to the interface at `dir` now, if any.
pub fn driver(dir: &Path) -> Option<String> {
    let link = std::fs::read_link(dir.join("driver")).ok()?;
    Some(link.file_name()?.to_string_lossy().into_owned())
}

/// The report descriptor the kernel's HID driver read from the interface
/// at `dir` (`<dir>/<hid device>/report_descriptor`), if one is bound.
pub fn report_descriptor(dir: &Path) -> Option<Vec<u8>> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path().join("report_descriptor");
        if let Ok(bytes) = std::fs::read(&path) {
            if !bytes.is_empty() {
                return Some(bytes);
            }
        }
    }
    None
}

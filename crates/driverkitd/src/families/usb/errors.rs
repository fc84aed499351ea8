//! Why the USB family could not take a device in, or lend one out.

use driverkit_core::EntryId;
use driverkit_wire::IOReturn;

/// Why a plugged device was not published.
#[derive(Debug, thiserror::Error)]
pub enum PlugError {
    /// A descriptor could not be read from the device.
    #[error("{from}: reading {what}: {status}")]
    Read {
        from: String,
        what: String,
        status: IOReturn,
    },
    /// A descriptor the device gave is malformed.
    #[error("{from}: {what}: {error}")]
    Descriptor {
        from: String,
        what: String,
        #[source]
        error: driverkit_usb::Error,
    },
    /// The bus the device was to go under has left the registry.
    #[error("{from}: its bus is gone ({status})")]
    BusGone { from: String, status: IOReturn },
}

/// Why a device cannot be recorded or lent out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LendError {
    #[error("{0:#x} is not a USB device (see `driverkit device list`)")]
    NotUsb(EntryId),
    #[error("{entry:#x} is driven by {name} [{service:#x}]; stop its driver first (or run the daemon with --no-embedded)")]
    Driven {
        entry: EntryId,
        name: String,
        service: EntryId,
    },
    #[error("{0:#x} is lent out already")]
    LentAlready(EntryId),
}

impl From<PlugError> for String {
    fn from(e: PlugError) -> String {
        e.to_string()
    }
}

impl From<LendError> for String {
    fn from(e: LendError) -> String {
        e.to_string()
    }
}

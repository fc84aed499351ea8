//! What can be wrong with a device description (a `.toml` device file or a
//! built-in one), named by file and key, and what can go wrong plugging
//! the device it describes.

use driverkit_core::{CoreError, EntryId};

/// What is wrong with a description: the key, and what it should hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadDescription {
    /// Not TOML at all.
    #[error("{0}")]
    Syntax(String),
    /// A key that holds what it may not.
    #[error("key {key}: {problem}")]
    Key { key: String, problem: String },
    /// A key no description has.
    #[error("unknown key {0:?}: expected name, class, [properties], [[interrupts]], [usb], [uart], [cable] or [pci]")]
    UnknownKey(String),
    /// More than one kind of device in one description.
    #[error("a device is one of [usb], [uart], [cable] or [pci]")]
    SeveralKinds,
}

impl BadDescription {
    /// Key `key` holds what it may not: `problem` says what it should.
    pub fn key(key: impl Into<String>, problem: impl Into<String>) -> BadDescription {
        BadDescription::Key {
            key: key.into(),
            problem: problem.into(),
        }
    }

    /// The same problem, seen from the table `prefix` holds it in.
    pub fn under(self, prefix: &str) -> BadDescription {
        match self {
            BadDescription::Key { key, problem } => BadDescription::Key {
                key: if key.is_empty() {
                    prefix.to_owned()
                } else {
                    format!("{prefix}.{key}")
                },
                problem,
            },
            other => other,
        }
    }
}

/// A description that does not describe a device: the file, and what is
/// wrong in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {problem}")]
pub struct SpecError {
    pub file: String,
    pub problem: BadDescription,
}

/// Why a described device was not plugged, or cannot do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(transparent)]
    Description(#[from] SpecError),
    #[error("the daemon is stopping: there is no virtual bus to plug into")]
    NoBus,
    /// What a modelled device runs on: the memory of its queues and
    /// registers, its threads.
    #[error("{what}: {source}")]
    Resource {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no virtual USB device with id {0:#x} (see `driverkit device list`)")]
    NotVirtualUsb(EntryId),
    #[error("device {0:#x} has no HID interrupt-IN endpoint")]
    NoHidInput(EntryId),
    #[error("device {id:#x}: endpoint {address:#04x}: {status}")]
    Endpoint {
        id: EntryId,
        address: u8,
        status: driverkit_wire::IOReturn,
    },
    /// Text a virtual keyboard cannot type.
    #[error(transparent)]
    Untypable(#[from] crate::families::hid::NoKey),
    #[error(transparent)]
    Plug(#[from] CoreError),
    #[error(transparent)]
    UsbPlug(#[from] crate::families::usb::PlugError),
}

impl From<DeviceError> for String {
    fn from(e: DeviceError) -> String {
        e.to_string()
    }
}

impl From<SpecError> for String {
    fn from(e: SpecError) -> String {
        e.to_string()
    }
}

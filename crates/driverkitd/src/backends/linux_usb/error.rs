//! Why the host's USB devices, or one of them, cannot be driven.

use driverkit_wire::IOReturn;

/// What went wrong starting the backend or taking a device in.
#[derive(Debug, thiserror::Error)]
pub enum LinuxUsbError {
    #[error("{0} does not exist (no USB here)")]
    NoUsbfs(&'static str),
    #[error("cannot watch the kernel's uevents: {0}")]
    Uevents(#[source] std::io::Error),
    #[error("cannot list USB devices: {0}")]
    List(#[source] nusb::Error),
    #[error("cannot start the uevent thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("cannot open {node}: permission denied; {hint}")]
    PermissionDenied { node: String, hint: &'static str },
    #[error("cannot open {node}: {source}")]
    Open {
        node: String,
        #[source]
        source: nusb::Error,
    },
    #[error("no registry to hang bus {busnum} on: {status}")]
    NoRoot { busnum: u8, status: IOReturn },
    #[error("cannot publish bus {busnum}: {status}")]
    Bus { busnum: u8, status: IOReturn },
    #[error(transparent)]
    Plug(#[from] crate::families::usb::PlugError),
}

/// Why a kernel driver a previous daemon detached was not attached again.
#[derive(Debug, thiserror::Error)]
pub(super) enum NotReattached {
    #[error("not an interface directory")]
    NotAnInterface,
    #[error("the device is gone")]
    Gone,
    #[error(transparent)]
    Usb(#[from] nusb::Error),
}

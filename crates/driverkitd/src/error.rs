//! Why the daemon refused or failed a request: each backend's and family's
//! own error, kept whole so that a caller can match it.

use driverkit_core::control::ClientError;
use driverkit_core::root::RootError;
use driverkit_core::CoreError;

use crate::backends::description::DeviceError;
use crate::backends::replay::ReplayError;
use crate::backends::usbip::UsbIpError;
use crate::backends::usbip_access::AccessError;
use crate::backends::usbip_server::ExportError;
use crate::families::usb::{LendError, PlugError};

/// What the daemon's API ([`crate::Daemon`], [`crate::run`]) answers when
/// it cannot do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error(transparent)]
    Root(#[from] RootError),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Plug(#[from] PlugError),
    #[error(transparent)]
    Lend(#[from] LendError),
    #[error(transparent)]
    UsbIp(#[from] UsbIpError),
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A recording that cannot be replayed; `name` is how it was given.
    #[error("{name}: {error}")]
    Replay {
        name: String,
        #[source]
        error: ReplayError,
    },
    #[error("--user {0:?}: no such user in /etc/passwd")]
    NoSuchUser(String),
    #[error("cannot listen at {}: {source}", path.display())]
    Listen {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<DaemonError> for String {
    fn from(e: DaemonError) -> String {
        e.to_string()
    }
}

//! `IOReturn`: DriverKit's status codes, numerically identical so that
//! Apple's documentation still explains them.

use std::fmt;

/// A DriverKit status code (`sys_iokit | sub_iokit_common | code`).
///
/// Errors are `Result<T, IOReturn>`; `IOReturn::SUCCESS` only appears on the
/// wire, never as an `Err`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct IOReturn(pub u32);

/// The result of every DriverKit call.
pub type IOResult<T> = Result<T, IOReturn>;

macro_rules! codes {
    ($($name:ident = $value:literal, $label:literal;)*) => {
        impl IOReturn {
            $(#[doc = concat!("`", $label, "`")] pub const $name: IOReturn = IOReturn($value);)*

            /// DriverKit's name of this code, such as `kIOReturnBadArgument`.
            pub fn name(self) -> Option<&'static str> {
                match self.0 { $($value => Some($label),)* _ => None }
            }
        }
    };
}

codes! {
    SUCCESS = 0x0000_0000, "kIOReturnSuccess";
    ERROR = 0xe000_02bc, "kIOReturnError";
    NO_MEMORY = 0xe000_02bd, "kIOReturnNoMemory";
    NO_RESOURCES = 0xe000_02be, "kIOReturnNoResources";
    BAD_ARGUMENT = 0xe000_02c2, "kIOReturnBadArgument";
    EXCLUSIVE_ACCESS = 0xe000_02c5, "kIOReturnExclusiveAccess";
    UNSUPPORTED = 0xe000_02c7, "kIOReturnUnsupported";
    INTERNAL_ERROR = 0xe000_02c9, "kIOReturnInternalError";
    IO_ERROR = 0xe000_02ca, "kIOReturnIOError";
    NOT_OPEN = 0xe000_02cd, "kIOReturnNotOpen";
    OFFLINE = 0xe000_02d7, "kIOReturnOffline";
    NOT_READY = 0xe000_02d8, "kIOReturnNotReady";
    BUSY = 0xe000_02d5, "kIOReturnBusy";
    TIMEOUT = 0xe000_02d6, "kIOReturnTimeout";
    NOT_PERMITTED = 0xe000_02e2, "kIOReturnNotPermitted";
    NOT_RESPONDING = 0xe000_02ed, "kIOReturnNotResponding";
    NO_DEVICE = 0xe000_02c0, "kIOReturnNoDevice";
    UNDERRUN = 0xe000_02e7, "kIOReturnUnderrun";
    OVERRUN = 0xe000_02e8, "kIOReturnOverrun";
    ABORTED = 0xe000_02eb, "kIOReturnAborted";
    NO_COMPLETION = 0xe000_02ec, "kIOReturnNoCompletion";
    NOT_FOUND = 0xe000_02f0, "kIOReturnNotFound";
    USB_PIPE_STALLED = 0xe000_404f, "kIOUSBPipeStalled";
}

impl IOReturn {
    /// `Ok(())` for `SUCCESS`, `Err(self)` otherwise.
    pub fn into_result(self) -> IOResult<()> {
        if self == IOReturn::SUCCESS {
            Ok(())
        } else {
            Err(self)
        }
    }
}

impl fmt::Debug for IOReturn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} (0x{:08x})", self.0),
            None => write!(f, "IOReturn(0x{:08x})", self.0),
        }
    }
}

impl fmt::Display for IOReturn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl std::error::Error for IOReturn {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_driverkit_headers() {
        assert_eq!(IOReturn::BAD_ARGUMENT.0, 0xe00002c2);
        assert_eq!(IOReturn::OFFLINE.name(), Some("kIOReturnOffline"));
        // IOReturn.h: kIOReturnOffline is 0x2d7, kIOReturnNotReady 0x2d8.
        assert_eq!(IOReturn::OFFLINE.0, 0xe00002d7);
        assert_eq!(
            format!("{}", IOReturn::NOT_FOUND),
            "kIOReturnNotFound (0xe00002f0)"
        );
        assert_eq!(IOReturn::SUCCESS.into_result(), Ok(()));
        assert_eq!(IOReturn::ABORTED.into_result(), Err(IOReturn::ABORTED));
    }
}

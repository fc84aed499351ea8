//! HID report descriptors for driverkit.
//!
//! - [`item`]: the descriptor's items as typed views over its bytes;
//! - [`descriptor`]: the parser that turns items into collections and
//!   elements, as the HID family publishes them (`IOHIDInterface`'s
//!   `ReportDescriptor`, `MaxInputReportSize`, `DeviceUsagePairs`) and as
//!   `driverkit hid decode` prints them.
//!
//! Parsing never panics on any input; errors name the offset.

pub mod descriptor;
pub mod item;

pub use descriptor::{Collection, Element, Error, ReportDescriptor, ReportType};

//! HID report descriptors for driverkit.
//!
//! - [`item`]: the descriptor's items as typed views over its bytes;
//! - [`descriptor`]: the parser that turns items into collections and
//!   elements, as the HID family publishes them (`IOHIDInterface`'s
//!   `ReportDescriptor`, `MaxInputReportSize`, `DeviceUsagePairs`) and as
//!   `driverkit hid decode` prints them;
//! - [`values`]: values of input reports per usage, and the events their
//!   changes mean.
//!
//! Parsing never panics on any input; errors name the offset.

pub mod descriptor;
pub mod item;
pub mod values;

pub use descriptor::{Collection, Element, Error, ReportDescriptor, ReportType};
pub use values::{Event, EventTranslator, InputState, InputUsage};

//! USB descriptors as typed views over their bytes (USB 2.0 chapter 9,
//! USB 3.2 section 9.6.2 for BOS).
//!
//! Each view (`DeviceDescriptor`, `ConfigurationDescriptor`, ...) is made
//! with `new_checked`, which verifies the length and type bytes against the
//! slice once; after that, accessors read fields without copying and
//! without ever panicking. [`Descriptors`] walks the descriptors that follow
//! a configuration descriptor (interfaces, endpoints, class-specific ones
//! such as HID's). Every refusal names the offset, what was expected and
//! what was found.

use std::fmt;

pub mod recording;
pub mod repr;
pub mod usbip;
pub mod usbmon;

pub use repr::{
    ConfigurationRepr, DeviceRepr, Direction, EndpointRepr, InterfaceRepr, Recipient, RequestKind,
    Setup,
};

/// `bDescriptorType` values.
pub mod kind {
    pub const DEVICE: u8 = 1;
    pub const CONFIGURATION: u8 = 2;
    pub const STRING: u8 = 3;
    pub const INTERFACE: u8 = 4;
    pub const ENDPOINT: u8 = 5;
    pub const BOS: u8 = 15;
    pub const DEVICE_CAPABILITY: u8 = 16;
    pub const HID: u8 = 0x21;
    pub const HID_REPORT: u8 = 0x22;
}

/// A malformed descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub offset: usize,
    pub expected: String,
    pub found: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "descriptor at offset {}: expected {}, found {}",
            self.offset, self.expected, self.found
        )
    }
}

impl std::error::Error for Error {}

fn check(bytes: &[u8], offset: usize, kind: u8, min_len: usize, name: &str) -> Result<(), Error> {
    let err = |expected: String, found: String| Error {
        offset,
        expected,
        found,
    };
    if bytes.len() < 2 {
        return Err(err(
            format!("a {name} descriptor"),
            format!("{} bytes", bytes.len()),
        ));
    }
    let (len, ty) = (usize::from(bytes[0]), bytes[1]);
    if ty != kind {
        return Err(err(
            format!("bDescriptorType {kind} ({name})"),
            format!("{ty}"),
        ));
    }
    if len < min_len {
        return Err(err(
            format!("bLength of at least {min_len} for a {name} descriptor"),
            format!("{len}"),
        ));
    }
    if len > bytes.len() {
        return Err(err(
            format!("{len} bytes (bLength)"),
            format!("{} bytes", bytes.len()),
        ));
    }
    Ok(())
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

/// Typed views over descriptors: `Name, type, minimum length, label;` each.
macro_rules! views {
    ($($(#[$doc:meta])* $name:ident, $kind:expr, $len:expr, $label:literal;)*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct $name<'a> {
            bytes: &'a [u8],
        }

        impl<'a> $name<'a> {
            /// Checks the type and length bytes; `offset` is only for errors.
            pub fn new_checked(bytes: &'a [u8], offset: usize) -> Result<Self, Error> {
                check(bytes, offset, $kind, $len, $label)?;
                Ok(Self { bytes: &bytes[..usize::from(bytes[0])] })
            }

            /// The descriptor's bytes (`bLength` of them).
            pub fn as_bytes(&self) -> &'a [u8] {
                self.bytes
            }
        }
    )*};
}

views! {
    /// The 18-byte device descriptor.
    DeviceDescriptor, kind::DEVICE, 18, "device";
    /// The 9-byte configuration descriptor that heads a configuration.
    ConfigurationDescriptor, kind::CONFIGURATION, 9, "configuration";
    /// An interface (alternate setting) descriptor.
    InterfaceDescriptor, kind::INTERFACE, 9, "interface";
    /// An endpoint descriptor.
    EndpointDescriptor, kind::ENDPOINT, 7, "endpoint";
    /// A string descriptor: UTF-16LE text, or the language ID list.
    StringDescriptor, kind::STRING, 2, "string";
    /// The Binary Object Store header.
    BosDescriptor, kind::BOS, 5, "BOS";
}

impl DeviceDescriptor<'_> {
    pub fn bcd_usb(&self) -> u16 {
        u16_at(self.bytes, 2)
    }
    pub fn device_class(&self) -> u8 {
        self.bytes[4]
    }
    pub fn device_subclass(&self) -> u8 {
        self.bytes[5]
    }
    pub fn device_protocol(&self) -> u8 {
        self.bytes[6]
    }
    pub fn max_packet_size0(&self) -> u8 {
        self.bytes[7]
    }
    pub fn vendor_id(&self) -> u16 {
        u16_at(self.bytes, 8)
    }
    pub fn product_id(&self) -> u16 {
        u16_at(self.bytes, 10)
    }
    pub fn bcd_device(&self) -> u16 {
        u16_at(self.bytes, 12)
    }
    pub fn manufacturer_index(&self) -> u8 {
        self.bytes[14]
    }
    pub fn product_index(&self) -> u8 {
        self.bytes[15]
    }
    pub fn serial_number_index(&self) -> u8 {
        self.bytes[16]
    }
    pub fn num_configurations(&self) -> u8 {
        self.bytes[17]
    }
}

impl<'a> ConfigurationDescriptor<'a> {
    /// `wTotalLength`: this descriptor and all that follow it.
    pub fn total_length(&self) -> u16 {
        u16_at(self.bytes, 2)
    }
    pub fn num_interfaces(&self) -> u8 {
        self.bytes[4]
    }
    pub fn configuration_value(&self) -> u8 {
        self.bytes[5]
    }
    pub fn configuration_index(&self) -> u8 {
        self.bytes[6]
    }
    pub fn attributes(&self) -> u8 {
        self.bytes[7]
    }
    /// `bMaxPower` in units of 2 mA (USB 2) or 8 mA (SuperSpeed).
    pub fn max_power(&self) -> u8 {
        self.bytes[8]
    }

    /// Checks a whole configuration (`wTotalLength` bytes) and returns the
    /// header view and a walker over what follows it.
    pub fn parse(bytes: &'a [u8]) -> Result<(Self, Descriptors<'a>), Error> {
        let head = Self::new_checked(bytes, 0)?;
        let total = whole_length(head.bytes.len(), head.total_length(), bytes.len())?;
        let start = head.bytes.len();
        Ok((
            head,
            Descriptors {
                bytes: &bytes[..total],
                offset: start,
            },
        ))
    }
}

impl InterfaceDescriptor<'_> {
    pub fn interface_number(&self) -> u8 {
        self.bytes[2]
    }
    pub fn alternate_setting(&self) -> u8 {
        self.bytes[3]
    }
    pub fn num_endpoints(&self) -> u8 {
        self.bytes[4]
    }
    pub fn interface_class(&self) -> u8 {
        self.bytes[5]
    }
    pub fn interface_subclass(&self) -> u8 {
        self.bytes[6]
    }
    pub fn interface_protocol(&self) -> u8 {
        self.bytes[7]
    }
    pub fn interface_index(&self) -> u8 {
        self.bytes[8]
    }
}

/// An endpoint's transfer type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum TransferType {
    Control,
    Isochronous,
    Bulk,
    Interrupt,
}

impl EndpointDescriptor<'_> {
    /// `bEndpointAddress`: direction in bit 7 (1 = IN), number in bits 0-3.
    pub fn address(&self) -> u8 {
        self.bytes[2]
    }
    pub fn is_in(&self) -> bool {
        self.address() & 0x80 != 0
    }
    pub fn number(&self) -> u8 {
        self.address() & 0x0F
    }
    pub fn attributes(&self) -> u8 {
        self.bytes[3]
    }
    pub fn transfer_type(&self) -> TransferType {
        match self.attributes() & 0x03 {
            0 => TransferType::Control,
            1 => TransferType::Isochronous,
            2 => TransferType::Bulk,
            _ => TransferType::Interrupt,
        }
    }
    /// `wMaxPacketSize`, bits 0-10 (bits 11-12 are high-bandwidth extras).
    pub fn max_packet_size(&self) -> u16 {
        u16_at(self.bytes, 4) & 0x07FF
    }
    pub fn interval(&self) -> u8 {
        self.bytes[6]
    }
}

impl StringDescriptor<'_> {
    /// The text, decoded from UTF-16LE; unpaired surrogates become U+FFFD.
    pub fn text(&self) -> String {
        let units: Vec<u16> = self.bytes[2..]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        char::decode_utf16(units)
            .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect()
    }

    /// String descriptor 0: the language IDs the device supports.
    pub fn language_ids(&self) -> Vec<u16> {
        self.bytes[2..]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect()
    }
}

impl<'a> BosDescriptor<'a> {
    pub fn total_length(&self) -> u16 {
        u16_at(self.bytes, 2)
    }
    pub fn num_device_caps(&self) -> u8 {
        self.bytes[4]
    }

    /// Checks a whole BOS (`wTotalLength` bytes) and returns its device
    /// capability descriptors as `(bDevCapabilityType, bytes)`.
    pub fn parse(bytes: &'a [u8]) -> Result<(Self, Vec<Capability<'a>>), Error> {
        let head = Self::new_checked(bytes, 0)?;
        let total = whole_length(head.bytes.len(), head.total_length(), bytes.len())?;
        let mut caps = Vec::new();
        for d in (Descriptors {
            bytes: &bytes[..total],
            offset: head.bytes.len(),
        }) {
            let (offset, raw) = d?;
            check(raw, offset, kind::DEVICE_CAPABILITY, 3, "device capability")?;
            caps.push((raw[2], raw));
        }
        if caps.len() != usize::from(head.num_device_caps()) {
            return Err(Error {
                offset: 4,
                expected: format!(
                    "{} device capabilities (bNumDeviceCaps)",
                    head.num_device_caps()
                ),
                found: format!("{}", caps.len()),
            });
        }
        Ok((head, caps))
    }
}

/// Checks a `wTotalLength` against the header's length and the bytes given.
fn whole_length(header: usize, total: u16, given: usize) -> Result<usize, Error> {
    let total = usize::from(total);
    if total < header || total > given {
        return Err(Error {
            offset: 2,
            expected: format!("wTotalLength between {header} and the {given} bytes given"),
            found: format!("{total}"),
        });
    }
    Ok(total)
}

/// A device capability of a BOS: `(bDevCapabilityType, its bytes)`.
pub type Capability<'a> = (u8, &'a [u8]);

/// Walks consecutive descriptors, yielding `(offset, bytes)` of each; a
/// `bLength` below 2 or past the end is an error (and ends the walk).
#[derive(Debug, Clone)]
pub struct Descriptors<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Descriptors<'a> {
    /// Walks `bytes` from its start.
    pub fn new(bytes: &'a [u8]) -> Self {
        Descriptors { bytes, offset: 0 }
    }
}

impl<'a> Iterator for Descriptors<'a> {
    type Item = Result<(usize, &'a [u8]), Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let at = self.offset;
        let rest = self.bytes.get(at..).filter(|r| !r.is_empty())?;
        let len = usize::from(rest[0]);
        if len < 2 || len > rest.len() {
            self.offset = self.bytes.len();
            return Some(Err(Error {
                offset: at,
                expected: format!("a bLength from 2 to the {} bytes left", rest.len()),
                found: format!("{len}"),
            }));
        }
        self.offset += len;
        Some(Ok((at, &rest[..len])))
    }
}

/// One interface of a configuration, with its endpoints and the
/// class-specific descriptors between them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface<'a> {
    /// Offset of the interface descriptor in the configuration.
    pub offset: usize,
    pub descriptor: InterfaceDescriptor<'a>,
    pub endpoints: Vec<EndpointDescriptor<'a>>,
    /// Other descriptors (HID, CDC functional...) as `(type, bytes)`.
    pub extra: Vec<(u8, &'a [u8])>,
}

/// Groups a configuration's descriptors by interface, checking that each
/// interface has the endpoints it declares and that the configuration has
/// the interfaces it declares.
pub fn interfaces<'a>(
    configuration: &'a [u8],
) -> Result<(ConfigurationDescriptor<'a>, Vec<Interface<'a>>), Error> {
    let (head, rest) = ConfigurationDescriptor::parse(configuration)?;
    let mut out: Vec<Interface<'a>> = Vec::new();
    for d in rest {
        let (offset, raw) = d?;
        match raw[1] {
            kind::INTERFACE => {
                if let Some(prev) = out.last() {
                    check_endpoints(prev)?;
                }
                out.push(Interface {
                    offset,
                    descriptor: InterfaceDescriptor::new_checked(raw, offset)?,
                    endpoints: Vec::new(),
                    extra: Vec::new(),
                });
            }
            kind::ENDPOINT => {
                let ep = EndpointDescriptor::new_checked(raw, offset)?;
                let Some(current) = out.last_mut() else {
                    return Err(Error {
                        offset,
                        expected: "an interface before endpoints".into(),
                        found: "an endpoint".into(),
                    });
                };
                current.endpoints.push(ep);
            }
            other => {
                if let Some(current) = out.last_mut() {
                    current.extra.push((other, raw));
                }
            }
        }
    }
    if let Some(last) = out.last() {
        check_endpoints(last)?;
    }
    let mut numbers: Vec<u8> = out
        .iter()
        .map(|i| i.descriptor.interface_number())
        .collect();
    numbers.dedup();
    if numbers.len() != usize::from(head.num_interfaces()) {
        return Err(Error {
            offset: 4,
            expected: format!("{} interfaces (bNumInterfaces)", head.num_interfaces()),
            found: format!("{}", numbers.len()),
        });
    }
    Ok((head, out))
}

fn check_endpoints(i: &Interface<'_>) -> Result<(), Error> {
    let declared = usize::from(i.descriptor.num_endpoints());
    if i.endpoints.len() != declared {
        return Err(Error {
            offset: i.offset,
            expected: format!(
                "{declared} endpoints in interface {} alternate {}",
                i.descriptor.interface_number(),
                i.descriptor.alternate_setting()
            ),
            found: format!("{}", i.endpoints.len()),
        });
    }
    Ok(())
}

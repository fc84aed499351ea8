//! Descriptors as plain values that emit their bytes: what a virtual device
//! is made of. `parse` on the emitted bytes gives the same values back (the
//! round trip is a property test), so a device built here reads like a real
//! one to every parser in the system.

use crate::{interfaces, kind, DeviceDescriptor, Error, TransferType};

/// A device descriptor's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRepr {
    pub bcd_usb: u16,
    pub device_class: u8,
    pub device_subclass: u8,
    pub device_protocol: u8,
    pub max_packet_size0: u8,
    pub vendor_id: u16,
    pub product_id: u16,
    pub bcd_device: u16,
    pub manufacturer_index: u8,
    pub product_index: u8,
    pub serial_number_index: u8,
    pub num_configurations: u8,
}

impl DeviceRepr {
    /// The 18 bytes of the descriptor.
    pub fn emit(&self) -> [u8; 18] {
        let mut b = [0u8; 18];
        b[0] = 18;
        b[1] = kind::DEVICE;
        b[2..4].copy_from_slice(&self.bcd_usb.to_le_bytes());
        b[4] = self.device_class;
        b[5] = self.device_subclass;
        b[6] = self.device_protocol;
        b[7] = self.max_packet_size0;
        b[8..10].copy_from_slice(&self.vendor_id.to_le_bytes());
        b[10..12].copy_from_slice(&self.product_id.to_le_bytes());
        b[12..14].copy_from_slice(&self.bcd_device.to_le_bytes());
        b[14] = self.manufacturer_index;
        b[15] = self.product_index;
        b[16] = self.serial_number_index;
        b[17] = self.num_configurations;
        b
    }

    /// The values of a checked view.
    pub fn parse(d: &DeviceDescriptor<'_>) -> DeviceRepr {
        DeviceRepr {
            bcd_usb: d.bcd_usb(),
            device_class: d.device_class(),
            device_subclass: d.device_subclass(),
            device_protocol: d.device_protocol(),
            max_packet_size0: d.max_packet_size0(),
            vendor_id: d.vendor_id(),
            product_id: d.product_id(),
            bcd_device: d.bcd_device(),
            manufacturer_index: d.manufacturer_index(),
            product_index: d.product_index(),
            serial_number_index: d.serial_number_index(),
            num_configurations: d.num_configurations(),
        }
    }
}

/// An endpoint descriptor's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRepr {
    pub address: u8,
    pub transfer_type: TransferType,
    pub max_packet_size: u16,
    pub interval: u8,
}

impl Direction {
    /// The direction bit 7 of `byte` gives (an endpoint address, a
    /// `bmRequestType`).
    pub fn of_bit7(byte: u8) -> Direction {
        if byte & 0x80 != 0 {
            Direction::In
        } else {
            Direction::Out
        }
    }
}

impl EndpointRepr {
    /// Which way the endpoint's data flows (bit 7 of its address).
    pub fn direction(&self) -> Direction {
        Direction::of_bit7(self.address)
    }

    /// True for an IN endpoint (device to host).
    pub fn is_in(&self) -> bool {
        self.address & 0x80 != 0
    }
}

/// An interface (one alternate setting), its class-specific descriptors
/// (emitted between the interface and its endpoints, as HID requires) and
/// its endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceRepr {
    pub number: u8,
    pub alternate_setting: u8,
    pub class: u8,
    pub subclass: u8,
    pub protocol: u8,
    pub string_index: u8,
    /// Whole descriptors, each starting with its `bLength`.
    pub extra: Vec<Vec<u8>>,
    pub endpoints: Vec<EndpointRepr>,
}

/// A configuration and everything under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigurationRepr {
    pub value: u8,
    pub string_index: u8,
    pub attributes: u8,
    /// In units of 2 mA.
    pub max_power: u8,
    pub interfaces: Vec<InterfaceRepr>,
}

impl ConfigurationRepr {
    /// The configuration descriptor with its interfaces, class-specific
    /// descriptors and endpoints, `wTotalLength` filled in.
    pub fn emit(&self) -> Vec<u8> {
        let mut out = vec![9, kind::CONFIGURATION, 0, 0, 0, self.value];
        out.extend([self.string_index, self.attributes, self.max_power]);
        let mut numbers: Vec<u8> = self.interfaces.iter().map(|i| i.number).collect();
        numbers.sort_unstable();
        numbers.dedup();
        out[4] = numbers.len() as u8;
        for i in &self.interfaces {
            out.extend([
                9,
                kind::INTERFACE,
                i.number,
                i.alternate_setting,
                i.endpoints.len() as u8,
                i.class,
                i.subclass,
                i.protocol,
                i.string_index,
            ]);
            for extra in &i.extra {
                out.extend(extra);
            }
            for e in &i.endpoints {
                let ty = match e.transfer_type {
                    TransferType::Control => 0,
                    TransferType::Isochronous => 1,
                    TransferType::Bulk => 2,
                    TransferType::Interrupt => 3,
                };
                out.extend([7, kind::ENDPOINT, e.address, ty]);
                out.extend(e.max_packet_size.to_le_bytes());
                out.push(e.interval);
            }
        }
        let total = out.len() as u16;
        out[2..4].copy_from_slice(&total.to_le_bytes());
        out
    }

    /// The values of a configuration's bytes.
    pub fn parse(bytes: &[u8]) -> Result<ConfigurationRepr, Error> {
        let (head, list) = interfaces(bytes)?;
        Ok(ConfigurationRepr {
            value: head.configuration_value(),
            string_index: head.configuration_index(),
            attributes: head.attributes(),
            max_power: head.max_power(),
            interfaces: list
                .iter()
                .map(|i| InterfaceRepr {
                    number: i.descriptor.interface_number(),
                    alternate_setting: i.descriptor.alternate_setting(),
                    class: i.descriptor.interface_class(),
                    subclass: i.descriptor.interface_subclass(),
                    protocol: i.descriptor.interface_protocol(),
                    string_index: i.descriptor.interface_index(),
                    extra: i.extra.iter().map(|(_, b)| b.to_vec()).collect(),
                    endpoints: i
                        .endpoints
                        .iter()
                        .map(|e| EndpointRepr {
                            address: e.address(),
                            transfer_type: e.transfer_type(),
                            max_packet_size: e.max_packet_size(),
                            interval: e.interval(),
                        })
                        .collect(),
                })
                .collect(),
        })
    }
}

/// A string descriptor holding `text` as UTF-16LE (at most 126 units; the
/// rest is cut, as `bLength` is one byte).
pub fn string_descriptor(text: &str) -> Vec<u8> {
    let units: Vec<u16> = text.encode_utf16().take(126).collect();
    let mut out = vec![(2 + 2 * units.len()) as u8, kind::STRING];
    for u in units {
        out.extend(u.to_le_bytes());
    }
    out
}

/// String descriptor zero: the supported language IDs.
pub fn language_descriptor(languages: &[u16]) -> Vec<u8> {
    let mut out = vec![(2 + 2 * languages.len().min(126)) as u8, kind::STRING];
    for l in languages.iter().take(126) {
        out.extend(l.to_le_bytes());
    }
    out
}

/// A HID class descriptor announcing one report descriptor of `report_len`
/// bytes (HID 1.11, 6.2.1).
pub fn hid_descriptor(report_len: u16) -> Vec<u8> {
    let mut out = vec![9, kind::HID, 0x11, 0x01, 0, 1, kind::HID_REPORT];
    out.extend(report_len.to_le_bytes());
    out
}

/// Which way data flows: bit 7 of `bmRequestType` and of an endpoint's
/// address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Host to device.
    Out,
    /// Device to host.
    In,
}

/// Who defines a request: bits 5 and 6 of `bmRequestType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// USB 2.0's own (chapter 9).
    Standard,
    /// The device class's (CDC, HID...).
    Class,
    /// The vendor's.
    Vendor,
}

/// What a request is addressed to: bits 0 to 4 of `bmRequestType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recipient {
    /// The device.
    Device,
    /// An interface (its number in `wIndex`).
    Interface,
    /// An endpoint (its address in `wIndex`).
    Endpoint,
    /// Something else the class defines.
    Other,
}

/// The eight bytes of a control request's setup stage (USB 2.0, 9.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setup {
    pub request_type: u8,
    pub request: u8,
    pub value: u16,
    pub index: u16,
    pub length: u16,
}

impl Setup {
    /// A request of `kind` to `recipient`, its data flowing `direction`:
    /// `bmRequestType` made from its three parts.
    pub fn new(
        direction: Direction,
        kind: RequestKind,
        recipient: Recipient,
        request: u8,
        value: u16,
        index: u16,
        length: u16,
    ) -> Setup {
        let direction = match direction {
            Direction::Out => 0x00,
            Direction::In => 0x80,
        };
        let kind = match kind {
            RequestKind::Standard => 0x00,
            RequestKind::Class => 0x20,
            RequestKind::Vendor => 0x40,
        };
        let recipient = match recipient {
            Recipient::Device => 0,
            Recipient::Interface => 1,
            Recipient::Endpoint => 2,
            Recipient::Other => 3,
        };
        Setup {
            request_type: direction | kind | recipient,
            request,
            value,
            index,
            length,
        }
    }

    /// A vendor request to the device with no data stage (what a chip's
    /// settings usually are).
    pub fn vendor_out(request: u8, value: u16, index: u16) -> Setup {
        Setup::new(
            Direction::Out,
            RequestKind::Vendor,
            Recipient::Device,
            request,
            value,
            index,
            0,
        )
    }

    /// A vendor request that reads `length` bytes from the device.
    pub fn vendor_in(request: u8, value: u16, index: u16, length: u16) -> Setup {
        Setup {
            length,
            ..Setup::vendor_out(request, value, index)
        }
        .toward(Direction::In)
    }

    /// A class request to interface `interface` that sends `length` bytes
    /// (none for a request with no data stage).
    pub fn class_out(request: u8, value: u16, interface: u8, length: u16) -> Setup {
        Setup::new(
            Direction::Out,
            RequestKind::Class,
            Recipient::Interface,
            request,
            value,
            u16::from(interface),
            length,
        )
    }

    /// A class request that reads `length` bytes from interface
    /// `interface`.
    pub fn class_in(request: u8, value: u16, interface: u8, length: u16) -> Setup {
        Setup::class_out(request, value, interface, length).toward(Direction::In)
    }

    /// The same request with its data stage (bit 7 of `bmRequestType`)
    /// going `direction`.
    pub fn toward(self, direction: Direction) -> Setup {
        let rest = self.request_type & 0x7f;
        Setup {
            request_type: match direction {
                Direction::In => rest | 0x80,
                Direction::Out => rest,
            },
            ..self
        }
    }

    /// Which way the data stage goes.
    pub fn direction(&self) -> Direction {
        Direction::of_bit7(self.request_type)
    }

    /// True when data flows from the device (bit 7 of bmRequestType).
    pub fn is_in(&self) -> bool {
        self.request_type & 0x80 != 0
    }

    pub fn emit(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0] = self.request_type;
        b[1] = self.request;
        b[2..4].copy_from_slice(&self.value.to_le_bytes());
        b[4..6].copy_from_slice(&self.index.to_le_bytes());
        b[6..8].copy_from_slice(&self.length.to_le_bytes());
        b
    }

    pub fn parse(b: [u8; 8]) -> Setup {
        Setup {
            request_type: b[0],
            request: b[1],
            value: u16::from_le_bytes([b[2], b[3]]),
            index: u16::from_le_bytes([b[4], b[5]]),
            length: u16::from_le_bytes([b[6], b[7]]),
        }
    }

    /// Standard GET_DESCRIPTOR of `kind`/`index` to the device.
    pub fn get_descriptor(kind: u8, index: u8, language: u16, length: u16) -> Setup {
        Setup {
            request_type: 0x80,
            request: request::GET_DESCRIPTOR,
            value: u16::from(kind) << 8 | u16::from(index),
            index: language,
            length,
        }
    }
}

/// Standard and HID class request codes.
pub mod request {
    pub const GET_STATUS: u8 = 0;
    pub const CLEAR_FEATURE: u8 = 1;
    pub const SET_ADDRESS: u8 = 5;
    pub const GET_DESCRIPTOR: u8 = 6;
    pub const GET_CONFIGURATION: u8 = 8;
    pub const SET_CONFIGURATION: u8 = 9;
    pub const SET_INTERFACE: u8 = 11;
    /// HID class requests (to an interface).
    pub const HID_GET_REPORT: u8 = 1;
    pub const HID_SET_REPORT: u8 = 9;
    pub const HID_SET_IDLE: u8 = 0x0a;
    pub const HID_SET_PROTOCOL: u8 = 0x0b;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn request_types_are_made_from_their_parts() {
        // FTDI's SET_BAUD_RATE and a vendor read of it, CDC's
        // SET_ETHERNET_PACKET_FILTER, HID's GET_REPORT: bmRequestType as
        // their specifications spell it.
        assert_eq!(Setup::vendor_out(3, 0x4138, 0).request_type, 0x40);
        assert_eq!(Setup::vendor_in(0x90, 0, 0, 2).request_type, 0xc0);
        let filter = Setup::class_out(0x43, 0x0c, 1, 0);
        assert_eq!((filter.request_type, filter.index), (0x21, 1));
        assert_eq!(
            Setup::class_in(request::HID_GET_REPORT, 0x0100, 0, 8).request_type,
            0xa1
        );
        let standard = Setup::new(
            Direction::In,
            RequestKind::Standard,
            Recipient::Endpoint,
            request::GET_STATUS,
            0,
            0x81,
            2,
        );
        assert_eq!(standard.request_type, 0x82);
        assert_eq!(standard.direction(), Direction::In);
        assert_eq!(Setup::vendor_out(1, 0, 0).direction(), Direction::Out);
    }

    #[test]
    fn an_endpoint_says_its_direction() {
        let ep = |address| EndpointRepr {
            address,
            transfer_type: TransferType::Bulk,
            max_packet_size: 64,
            interval: 0,
        };
        assert!(ep(0x81).is_in());
        assert_eq!(ep(0x81).direction(), Direction::In);
        assert!(!ep(0x02).is_in());
        assert_eq!(ep(0x02).direction(), Direction::Out);
    }

    fn transfer_type() -> impl Strategy<Value = TransferType> {
        prop_oneof![
            Just(TransferType::Isochronous),
            Just(TransferType::Bulk),
            Just(TransferType::Interrupt),
        ]
    }

    prop_compose! {
        fn endpoint()(address: u8, t in transfer_type(), max_packet_size in 0u16..0x800, interval: u8) -> EndpointRepr {
            EndpointRepr { address, transfer_type: t, max_packet_size, interval }
        }
    }

    prop_compose! {
        fn interface(number: u8)(alternate_setting: u8, class: u8, subclass: u8, protocol: u8,
                     string_index: u8, report_len: Option<u16>,
                     endpoints in proptest::collection::vec(endpoint(), 0..4)) -> InterfaceRepr {
            InterfaceRepr {
                number, alternate_setting, class, subclass, protocol, string_index,
                extra: report_len.map(hid_descriptor).into_iter().collect(),
                endpoints,
            }
        }
    }

    proptest! {
        #[test]
        fn device_round_trips(vendor_id: u16, product_id: u16, bcd_device: u16, class: u8, n: u8) {
            let d = DeviceRepr {
                bcd_usb: 0x0200, device_class: class, device_subclass: 0, device_protocol: 0,
                max_packet_size0: 64, vendor_id, product_id, bcd_device,
                manufacturer_index: 1, product_index: 2, serial_number_index: 3,
                num_configurations: n,
            };
            let bytes = d.emit();
            let view = DeviceDescriptor::new_checked(&bytes, 0).unwrap();
            prop_assert_eq!(DeviceRepr::parse(&view), d);
        }

        #[test]
        fn configuration_round_trips(value: u8, attributes: u8, max_power: u8,
                                     a in interface(0), b in interface(1)) {
            let c = ConfigurationRepr { value, string_index: 0, attributes, max_power, interfaces: vec![a, b] };
            prop_assert_eq!(ConfigurationRepr::parse(&c.emit()).unwrap(), c);
        }

        #[test]
        fn setup_round_trips(b: [u8; 8]) {
            prop_assert_eq!(Setup::parse(b).emit(), b);
        }
    }

    #[test]
    fn strings_are_utf16() {
        let s = string_descriptor("Kb");
        assert_eq!(s, [6, 3, b'K', 0, b'b', 0]);
        let view = crate::StringDescriptor::new_checked(&s, 0).unwrap();
        assert_eq!(view.text(), "Kb");
    }
}

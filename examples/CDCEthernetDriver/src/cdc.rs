//! The parts of USB CDC (Communications Device Class 1.2) and its ECM
//! subclass (Ethernet Control Model 1.2) this driver needs, as pure
//! functions over bytes: the control interface's functional descriptors,
//! the MAC address string, packet filter requests and the interrupt
//! endpoint's notifications. Nothing here panics on short or odd input.

use driverkit::usb::descriptors::Setup;

/// `bDescriptorType` of class-specific interface descriptors.
pub const CS_INTERFACE: u8 = 0x24;
/// Functional descriptor subtypes (CDC 1.2, table 13).
const UNION: u8 = 0x06;
const ETHERNET_NETWORKING: u8 = 0x0f;

/// `SET_ETHERNET_PACKET_FILTER` (ECM 1.2, 6.2.4) and its `wValue` bits.
const SET_ETHERNET_PACKET_FILTER: u8 = 0x43;
const SET_ETHERNET_MULTICAST_FILTERS: u8 = 0x40;
pub mod filter {
    pub const PROMISCUOUS: u16 = 0x01;
    pub const ALL_MULTICAST: u16 = 0x02;
    pub const DIRECTED: u16 = 0x04;
    pub const BROADCAST: u16 = 0x08;
    pub const MULTICAST: u16 = 0x10;
}

/// What the control interface's functional descriptors say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Functional {
    /// The Union descriptor's first subordinate interface: the data
    /// interface whose bulk endpoints carry the frames.
    pub data_interface: u8,
    /// The string descriptor holding the MAC address as 12 hex digits.
    pub mac_string: u8,
    /// The largest frame the device moves, Ethernet header included (no
    /// FCS).
    pub max_segment_size: u16,
    /// How many multicast addresses the device filters (0: none, so it
    /// takes all multicast or none).
    pub multicast_filters: u16,
}

/// Reads the Union and Ethernet Networking functional descriptors among an
/// interface's class-specific descriptors (each as its whole bytes).
/// `None` when either is missing or short: not an ECM control interface.
pub fn functional<'a>(extra: impl IntoIterator<Item = &'a [u8]>) -> Option<Functional> {
    let mut data_interface = None;
    let mut ethernet = None;
    for d in extra {
        if d.get(1) != Some(&CS_INTERFACE) {
            continue;
        }
        match d.get(2) {
            Some(&UNION) => data_interface = data_interface.or(d.get(4).copied()),
            Some(&ETHERNET_NETWORKING) if d.len() >= 13 => {
                ethernet = Some((
                    d[3],
                    u16::from_le_bytes([d[8], d[9]]),
                    // Bit 15 says the filtering is imperfect (hashed).
                    u16::from_le_bytes([d[10], d[11]]) & 0x7fff,
                ))
            }
            _ => {}
        }
    }
    let (mac_string, max_segment_size, multicast_filters) = ethernet?;
    Some(Functional {
        data_interface: data_interface?,
        mac_string,
        max_segment_size,
        multicast_filters,
    })
}

/// The MAC address of `iMACAddress`'s string: 12 hex digits, the first
/// octet first (ECM 1.2, 5.4).
pub fn mac_from_string(text: &str) -> Option<[u8; 6]> {
    let text = text.trim();
    if text.len() != 12 || !text.is_ascii() {
        return None;
    }
    let mut mac = [0u8; 6];
    for (i, octet) in mac.iter_mut().enumerate() {
        *octet = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(mac)
}

/// SET_ETHERNET_MULTICAST_FILTERS (ECM 1.2, 6.2.1): the request to control
/// interface `interface` and its data, six bytes per address.
pub fn multicast_filters(interface: u8, addresses: &[[u8; 6]]) -> (Setup, Vec<u8>) {
    let data: Vec<u8> = addresses.iter().flatten().copied().collect();
    let setup = Setup::class_out(
        SET_ETHERNET_MULTICAST_FILTERS,
        addresses.len() as u16,
        interface,
        data.len() as u16,
    );
    (setup, data)
}

/// The packet filter request to control interface `interface`.
pub fn packet_filter(interface: u8, bits: u16) -> Setup {
    Setup::class_out(SET_ETHERNET_PACKET_FILTER, bits, interface, 0)
}

/// A notification from the interrupt endpoint (CDC 1.2, 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notification {
    /// NETWORK_CONNECTION: the cable is (dis)connected.
    NetworkConnection(bool),
    /// CONNECTION_SPEED_CHANGE: downstream and upstream bits per second.
    ConnectionSpeed { down: u32, up: u32 },
    /// Anything else, by its code.
    Other(u8),
}

/// Parses one notification: an 8-byte header (bmRequestType 0xA1,
/// bNotificationCode, wValue, wIndex, wLength) and its data.
pub fn notification(bytes: &[u8]) -> Option<Notification> {
    if bytes.len() < 8 || bytes[0] != 0xa1 {
        return None;
    }
    let value = u16::from_le_bytes([bytes[2], bytes[3]]);
    Some(match bytes[1] {
        0x00 => Notification::NetworkConnection(value != 0),
        0x2a => {
            let data = bytes.get(8..16)?;
            let word =
                |i: usize| u32::from_le_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]);
            Notification::ConnectionSpeed {
                down: word(0),
                up: word(4),
            }
        }
        code => Notification::Other(code),
    })
}

/// A frame as it goes out on bulk OUT. A transfer ends at a short packet,
/// so a frame that fills its last packet exactly would run into the next
/// one: it gets one byte of padding instead of a zero-length packet, as
/// Linux's usbnet does (the receiver's IP length ignores it).
pub fn pad_for_bulk(frame: &mut Vec<u8>, max_packet: usize) {
    if max_packet != 0 && frame.len().is_multiple_of(max_packet) {
        frame.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The control interface's descriptors of QEMU's usb-net (its CDC
    /// configuration): Header, Union (0 → 1), Ethernet (string 3, 1514).
    const QEMU: [&[u8]; 3] = [
        &[0x05, 0x24, 0x00, 0x10, 0x01],
        &[0x05, 0x24, 0x06, 0x00, 0x01],
        &[0x0d, 0x24, 0x0f, 0x03, 0, 0, 0, 0, 0xea, 0x05, 0, 0, 0],
    ];

    #[test]
    fn functional_descriptors_name_the_data_interface_and_mac_string() {
        assert_eq!(
            functional(QEMU),
            Some(Functional {
                data_interface: 1,
                mac_string: 3,
                max_segment_size: 1514,
                multicast_filters: 0,
            })
        );
        // No Ethernet descriptor, or a short one: not ECM.
        assert_eq!(functional(QEMU[..2].iter().copied()), None);
        assert_eq!(functional([QEMU[1], &QEMU[2][..9]]), None);
        // Other descriptor types are skipped.
        assert_eq!(
            functional([&[0x09u8, 0x21, 0x11][..], QEMU[1], QEMU[2]]).map(|f| f.data_interface),
            Some(1)
        );
    }

    #[test]
    fn mac_strings_are_twelve_hex_digits() {
        assert_eq!(
            mac_from_string("525400123456"),
            Some([0x52, 0x54, 0x00, 0x12, 0x34, 0x56])
        );
        assert_eq!(
            mac_from_string("40aBcD010203"),
            Some([0x40, 0xab, 0xcd, 1, 2, 3])
        );
        for bad in [
            "",
            "52540012345",
            "5254001234567",
            "52540012345g",
            "52:54:00:12",
        ] {
            assert_eq!(mac_from_string(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn notifications_parse_and_short_ones_do_not() {
        let connected = [0xa1, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00];
        assert_eq!(
            notification(&connected),
            Some(Notification::NetworkConnection(true))
        );
        let mut gone = connected;
        gone[2] = 0;
        assert_eq!(
            notification(&gone),
            Some(Notification::NetworkConnection(false))
        );
        let mut speed = vec![0xa1, 0x2a, 0, 0, 0, 0, 8, 0];
        speed.extend(100_000_000u32.to_le_bytes());
        speed.extend(10_000_000u32.to_le_bytes());
        assert_eq!(
            notification(&speed),
            Some(Notification::ConnectionSpeed {
                down: 100_000_000,
                up: 10_000_000
            })
        );
        assert_eq!(notification(&speed[..12]), None);
        assert_eq!(notification(&connected[..7]), None);
        assert_eq!(notification(&[0x21, 0, 1, 0, 0, 0, 0, 0]), None);
    }

    #[test]
    fn frames_filling_their_last_packet_get_one_byte_of_padding() {
        let mut f = vec![1u8; 128];
        pad_for_bulk(&mut f, 64);
        assert_eq!(f.len(), 129);
        let mut f = vec![1u8; 100];
        pad_for_bulk(&mut f, 64);
        assert_eq!(f.len(), 100);
    }

    #[test]
    fn multicast_filters_carry_six_bytes_per_address() {
        let (s, data) = multicast_filters(2, &[[1, 0, 0x5e, 0, 0, 1], [0x33, 0x33, 0, 0, 0, 1]]);
        assert_eq!(
            (s.request_type, s.request, s.value, s.index, s.length),
            (0x21, 0x40, 2, 2, 12)
        );
        assert_eq!(data, [1, 0, 0x5e, 0, 0, 1, 0x33, 0x33, 0, 0, 0, 1]);
    }

    #[test]
    fn the_packet_filter_goes_to_the_control_interface() {
        let s = packet_filter(0, filter::DIRECTED | filter::BROADCAST);
        assert_eq!(
            (s.request_type, s.request, s.value, s.index, s.length),
            (0x21, 0x43, 0x0c, 0, 0)
        );
    }
}

//! A USB keyboard's descriptors, malformed ones, and random bytes.

use driverkit_usb::*;
use proptest::prelude::*;

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

/// A keyboard like QEMU's usb-kbd: 0627:0001, one HID boot interface.
const DEVICE: &str = "12 01 00 02 00 00 00 40 27 06 01 00 00 01 01 02 03 01";
const CONFIG: &str = "09 02 22 00 01 01 00 a0 32 \
                      09 04 00 00 01 03 01 01 00 \
                      09 21 11 01 00 01 22 3f 00 \
                      07 05 81 03 08 00 0a";
const BOS: &str = "05 0f 0c 00 01 07 10 02 02 00 00 00";

#[test]
fn device_descriptor_fields() {
    let bytes = hex(DEVICE);
    let d = DeviceDescriptor::new_checked(&bytes, 0).unwrap();
    assert_eq!(
        (d.vendor_id(), d.product_id(), d.bcd_device()),
        (0x0627, 0x0001, 0x0100)
    );
    assert_eq!(
        (d.device_class(), d.device_subclass(), d.device_protocol()),
        (0, 0, 0)
    );
    assert_eq!(
        (d.bcd_usb(), d.max_packet_size0(), d.num_configurations()),
        (0x0200, 64, 1)
    );
    assert_eq!(
        (
            d.manufacturer_index(),
            d.product_index(),
            d.serial_number_index()
        ),
        (1, 2, 3)
    );
}

#[test]
fn configuration_groups_interfaces_endpoints_and_class_descriptors() {
    let bytes = hex(CONFIG);
    let (c, ifaces) = interfaces(&bytes).unwrap();
    assert_eq!(
        (
            c.total_length(),
            c.num_interfaces(),
            c.configuration_value(),
            c.max_power()
        ),
        (34, 1, 1, 0x32)
    );
    assert_eq!(ifaces.len(), 1);
    let i = &ifaces[0];
    assert_eq!(
        (
            i.descriptor.interface_class(),
            i.descriptor.interface_subclass(),
            i.descriptor.interface_protocol()
        ),
        (3, 1, 1)
    );
    assert_eq!(i.extra.len(), 1);
    assert_eq!(i.extra[0].0, kind::HID, "the HID descriptor rides along");
    let ep = i.endpoints[0];
    assert!(ep.is_in());
    assert_eq!(
        (
            ep.number(),
            ep.transfer_type(),
            ep.max_packet_size(),
            ep.interval()
        ),
        (1, TransferType::Interrupt, 8, 10)
    );
}

#[test]
fn strings_and_languages() {
    let qemu = hex("0a 03 51 00 45 00 4d 00 55 00");
    assert_eq!(
        StringDescriptor::new_checked(&qemu, 0).unwrap().text(),
        "QEMU"
    );
    let langs = hex("04 03 09 04");
    assert_eq!(
        StringDescriptor::new_checked(&langs, 0)
            .unwrap()
            .language_ids(),
        [0x0409]
    );
    let lone_surrogate = hex("04 03 00 d8");
    assert_eq!(
        StringDescriptor::new_checked(&lone_surrogate, 0)
            .unwrap()
            .text(),
        "\u{FFFD}"
    );
}

#[test]
fn bos_and_its_capabilities() {
    let bytes = hex(BOS);
    let (b, caps) = BosDescriptor::parse(&bytes).unwrap();
    assert_eq!((b.total_length(), b.num_device_caps()), (12, 1));
    assert_eq!(caps[0].0, 2, "USB 2.0 extension");
}

#[test]
fn malformed_descriptors_say_where_and_what() {
    let short = hex("12 01 00 02");
    let e = DeviceDescriptor::new_checked(&short, 0).unwrap_err();
    assert_eq!(
        (e.expected.as_str(), e.found.as_str()),
        ("18 bytes (bLength)", "4 bytes")
    );

    let e = DeviceDescriptor::new_checked(&hex(CONFIG), 0).unwrap_err();
    assert_eq!(
        (e.expected.as_str(), e.found.as_str()),
        ("bDescriptorType 1 (device)", "2")
    );

    let mut long_total = hex(CONFIG);
    long_total[2] = 0x40;
    let e = interfaces(&long_total).unwrap_err();
    assert_eq!(e.offset, 2);
    assert!(
        e.expected
            .contains("wTotalLength between 9 and the 34 bytes"),
        "{e}"
    );

    let mut zero_len = hex(CONFIG);
    zero_len[18] = 0;
    let e = interfaces(&zero_len).unwrap_err();
    assert_eq!((e.offset, e.found.as_str()), (18, "0"));

    let mut two_endpoints = hex(CONFIG);
    two_endpoints[13] = 2;
    let e = interfaces(&two_endpoints).unwrap_err();
    assert_eq!(e.offset, 9);
    assert_eq!(e.expected, "2 endpoints in interface 0 alternate 0");

    let mut bad_caps = hex(BOS);
    bad_caps[4] = 3;
    let e = BosDescriptor::parse(&bad_caps).unwrap_err();
    assert_eq!(e.expected, "3 device capabilities (bNumDeviceCaps)");
}

proptest! {
    /// No bytes panic any entry point.
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80), offset in 0usize..1000) {
        if let Ok(d) = DeviceDescriptor::new_checked(&bytes, offset) {
            let _ = (d.vendor_id(), d.num_configurations());
        }
        if let Ok(s) = StringDescriptor::new_checked(&bytes, offset) {
            let _ = (s.text(), s.language_ids());
        }
        if let Ok(e) = EndpointDescriptor::new_checked(&bytes, offset) {
            let _ = (e.transfer_type(), e.max_packet_size());
        }
        let _ = interfaces(&bytes);
        let _ = BosDescriptor::parse(&bytes);
        let _ = Descriptors::new(&bytes).count();
    }

    /// Nor does a real configuration with a byte changed.
    #[test]
    fn corrupted_configurations_never_panic(at in any::<prop::sample::Index>(), byte: u8) {
        let mut bytes = hex(CONFIG);
        let i = at.index(bytes.len());
        bytes[i] = byte;
        let _ = interfaces(&bytes);
    }
}

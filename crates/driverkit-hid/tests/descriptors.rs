//! Report descriptors of real devices, malformed ones, and random bytes.

use driverkit_hid::{ReportDescriptor, ReportType};
use proptest::prelude::*;

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

/// HID 1.11 Appendix B.1: the boot protocol keyboard.
const KEYBOARD: &str = "05 01 09 06 a1 01 05 07 19 e0 29 e7 15 00 25 01 75 01 95 08 81 02 95 01 75 08 81 01 \
                        95 05 75 01 05 08 19 01 29 05 91 02 95 01 75 03 91 01 95 06 75 08 15 00 25 65 05 07 \
                        19 00 29 65 81 00 c0";

/// HID 1.11 Appendix B.2: the boot protocol mouse.
const MOUSE: &str =
    "05 01 09 02 a1 01 09 01 a1 00 05 09 19 01 29 03 15 00 25 01 95 03 75 01 81 02 95 01 \
                     75 05 81 01 05 01 09 30 09 31 15 81 25 7f 75 08 95 02 81 06 c0 c0";

/// A gamepad with a report ID: 16 buttons and four 8-bit axes.
const GAMEPAD: &str =
    "05 01 09 05 a1 01 85 01 05 09 19 01 29 10 15 00 25 01 75 01 95 10 81 02 05 01 09 30 \
                       09 31 09 32 09 35 15 00 26 ff 00 75 08 95 04 81 02 c0";

/// A vendor-page device (64-byte reports both ways) using push and pop.
const VENDOR: &str =
    "06 00 ff 09 01 a1 01 15 00 26 ff 00 75 08 a4 95 40 09 01 81 02 75 10 b4 95 40 09 02 91 02 c0";

#[test]
fn boot_keyboard() {
    let d = ReportDescriptor::parse(&hex(KEYBOARD)).unwrap();
    assert_eq!(d.device_usage_pairs(), [(0x01, 0x06)]);
    assert!(d.report_ids.is_empty());
    let e = &d.elements;
    assert_eq!(e.len(), 5);
    // Modifiers: 8 one-bit variables, LeftControl (0xE0) to Right GUI (0xE7).
    assert_eq!(
        (
            e[0].report_type,
            e[0].bit_offset,
            e[0].report_size,
            e[0].report_count
        ),
        (ReportType::Input, 0, 1, 8)
    );
    assert!(e[0].is_variable() && !e[0].is_constant());
    assert_eq!(
        e[0].usages,
        (0xE0..=0xE7).map(|u| 0x0007_0000 | u).collect::<Vec<_>>()
    );
    // The reserved byte.
    assert!(e[1].is_constant());
    assert_eq!(e[1].bit_offset, 8);
    // LEDs: five outputs on the LED page, then 3 bits of padding.
    assert_eq!(
        (e[2].report_type, e[2].bit_offset, e[2].report_count),
        (ReportType::Output, 0, 5)
    );
    assert_eq!(
        e[2].usages,
        (1..=5).map(|u| 0x0008_0000 | u).collect::<Vec<_>>()
    );
    assert_eq!(
        (e[3].report_type, e[3].bit_offset, e[3].report_size),
        (ReportType::Output, 5, 3)
    );
    // Six key codes: an array over usages 0..=0x65.
    assert!(!e[4].is_variable());
    assert_eq!(
        (e[4].bit_offset, e[4].report_size, e[4].report_count),
        (16, 8, 6)
    );
    assert_eq!((e[4].logical_minimum, e[4].logical_maximum), (0, 0x65));
    assert_eq!(e[4].usages.len(), 0x66);
    assert_eq!(d.max_report_size(ReportType::Input), 8);
    assert_eq!(d.max_report_size(ReportType::Output), 1);
}

#[test]
fn boot_mouse() {
    let d = ReportDescriptor::parse(&hex(MOUSE)).unwrap();
    assert_eq!(d.collections.len(), 2);
    assert_eq!((d.collections[0].kind, d.collections[0].usage), (1, 0x02));
    assert_eq!(
        (
            d.collections[1].kind,
            d.collections[1].usage,
            d.collections[1].parent
        ),
        (0, 0x01, Some(0))
    );
    assert_eq!(d.device_usage_pairs(), [(0x01, 0x02)]);
    let axes = &d.elements[2];
    assert_eq!(axes.usages, [0x0001_0030, 0x0001_0031]);
    assert!(axes.is_relative());
    assert_eq!(
        (axes.logical_minimum, axes.logical_maximum),
        (-127, 127),
        "signed one-byte values"
    );
    assert_eq!((axes.bit_offset, axes.collection), (8, Some(1)));
    assert_eq!(d.max_report_size(ReportType::Input), 3);
}

#[test]
fn gamepad_with_a_report_id() {
    let d = ReportDescriptor::parse(&hex(GAMEPAD)).unwrap();
    assert_eq!(d.report_ids, [1]);
    assert_eq!(d.device_usage_pairs(), [(0x01, 0x05)]);
    assert!(d.elements.iter().all(|e| e.report_id == 1));
    assert_eq!(d.elements[0].usages.len(), 16);
    assert_eq!(d.elements[1].bit_offset, 16);
    assert_eq!(
        d.elements[1].logical_maximum, 255,
        "26 ff 00 is 255, not -1"
    );
    assert_eq!(
        d.max_report_size(ReportType::Input),
        1 + 2 + 4,
        "the ID byte, buttons, axes"
    );
}

#[test]
fn vendor_page_with_push_and_pop() {
    let d = ReportDescriptor::parse(&hex(VENDOR)).unwrap();
    assert_eq!(d.device_usage_pairs(), [(0xFF00, 0x01)]);
    let (input, output) = (&d.elements[0], &d.elements[1]);
    assert_eq!(input.usages, [0xFF00_0001]);
    assert_eq!((input.report_size, input.report_count), (8, 64));
    assert_eq!(
        output.report_size, 8,
        "pop restored the size pushed before it was set to 16"
    );
    assert_eq!(
        (output.report_type, output.usages[0]),
        (ReportType::Output, 0xFF00_0002)
    );
    assert_eq!(d.max_report_size(ReportType::Input), 64);
}

#[test]
fn malformed_descriptors_name_the_offset() {
    let cases = [
        ("b4", 0, "pop without a matching push"),
        ("c0", 0, "end collection without an open collection"),
        (
            "05 01 09 02 a1 01 09 01",
            4,
            "collection 0 opened here is never closed",
        ),
        ("85 00", 0, "report ID 0: expected 1 to 255"),
        ("05 01 27 ff", 2, "item needs 4 data bytes, 1 left"),
        ("19 05 29 01", 2, "usage maximum 0x1 below minimum 0x5"),
        ("29 05", 0, "usage maximum without a usage minimum"),
        ("0c", 0, "reserved item type 3"),
        ("f1 00", 0, "unknown main item tag 15"),
        ("19 00 2a ff ff", 2, "longer than 4096"),
    ];
    for (bytes, offset, problem) in cases {
        let e = ReportDescriptor::parse(&hex(bytes)).unwrap_err();
        assert_eq!(e.offset, offset, "{bytes}: {e}");
        assert!(
            e.problem.contains(problem),
            "{bytes}: expected {problem:?}, got {e}"
        );
    }
}

#[test]
fn the_parse_serializes_to_json() {
    let d = ReportDescriptor::parse(&hex(MOUSE)).unwrap();
    let v = serde_json::to_value(&d).unwrap();
    assert_eq!(v["collections"][1]["parent"], 0);
    assert_eq!(v["elements"][2]["logical_minimum"], -127);
}

proptest! {
    /// No input panics the parser.
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = ReportDescriptor::parse(&bytes);
    }

    /// Nor does a real descriptor with bytes changed.
    #[test]
    fn corrupted_real_descriptors_never_panic(at in any::<prop::sample::Index>(), byte: u8, which in 0usize..4) {
        let mut bytes = hex([KEYBOARD, MOUSE, GAMEPAD, VENDOR][which]);
        let i = at.index(bytes.len());
        bytes[i] = byte;
        if let Ok(d) = ReportDescriptor::parse(&bytes) {
            let _ = d.max_report_size(ReportType::Input);
            let _ = d.device_usage_pairs();
        }
    }
}

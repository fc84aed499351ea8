//! The USB and HID families end to end: a plugged virtual keyboard becomes
//! device and interface nubs, an IOHIDInterface, the HIDKeyboardDriver dext
//! in its own process, and keystrokes at an events subscriber; the mouse
//! gets the system's default event service; a vendor-class device waits for
//! its driver's SetConfiguration and then carries control requests and bulk
//! transfers.

mod support;

use serde_json::{json, Value};
use support::*;

fn parse_hex(s: &str) -> u64 {
    u64::from_str_radix(s.trim().trim_start_matches("0x"), 16).unwrap()
}

/// `driverkit events --json --count N`, started and listening.
fn subscribe(d: &Daemon, count: usize) -> std::process::Child {
    let (child, said) = subscribe_as(d, None, count);
    assert!(said.contains("listening"), "events said {said:?}");
    child
}

/// The text that keyboard events type (US layout, Shift tracked).
fn typed(events: &[Value]) -> String {
    let mut shift = false;
    let mut out = String::new();
    for e in events {
        assert_eq!(e["kind"], "keyboard", "{e}");
        assert_eq!(e["usage_page"], 7);
        let (usage, down) = (e["usage"].as_u64().unwrap(), e["value"] == 1);
        if usage == 0xe1 {
            shift = down;
        } else if down {
            out.push(driverkitd::families::hid::usage_char(usage as u32, shift).unwrap());
        }
    }
    out
}

fn child_of<'a>(nodes: &'a [Value], parent: &Value, class: &str) -> &'a Value {
    let ids: Vec<&Value> = parent["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["id"])
        .collect();
    nodes
        .iter()
        .find(|n| ids.contains(&&n["id"]) && n["class"] == class)
        .unwrap_or_else(|| panic!("no {class} under {}", parent["name"]))
}

#[test]
fn a_typed_string_reaches_an_events_subscriber_through_the_keyboard_dext() {
    let d = Daemon::start(&["--no-default-devices"]);
    let device = parse_hex(&d.cli(&["device", "plug", "keyboard"]));
    let driver = d.wait_node("HIDKeyboardDriver active", |n| {
        n["name"] == "HIDKeyboardDriver" && n["state"]["active"] == true
    });
    let pid = driver["pid"].as_u64().unwrap();
    assert!(alive(pid));
    assert_ne!(
        pid,
        u64::from(d.pid()),
        "the driver runs in its own process"
    );

    // The path, as ioreg shows it.
    let nodes = d.nodes();
    let usb = nodes.iter().find(|n| n["id"] == device).unwrap();
    let p = &usb["properties"];
    assert_eq!(usb["class"], "IOUSBHostDevice");
    assert_eq!(p["idVendor"], 0x1209);
    assert_eq!(p["idProduct"], 1);
    assert_eq!(p["bcdDevice"], 0x100);
    assert_eq!(p["bDeviceClass"], 0);
    assert_eq!(p["USB Product Name"], "Virtual Keyboard");
    assert_eq!(p["USB Vendor Name"], "driverkit");
    assert_eq!(p["USB Serial Number"], "VK-0001");
    assert!(p["locationID"].as_u64().unwrap() > 0);
    let interface = child_of(&nodes, usb, "IOUSBHostInterface");
    let ip = &interface["properties"];
    assert_eq!(ip["bInterfaceNumber"], 0);
    assert_eq!(ip["bInterfaceClass"], 3);
    assert_eq!(ip["bInterfaceSubClass"], 1);
    assert_eq!(ip["bInterfaceProtocol"], 1);
    assert_eq!(ip["bConfigurationValue"], 1);
    let hid_device = child_of(&nodes, interface, "IOUSBHostHIDDevice");
    let hid = child_of(&nodes, hid_device, "IOHIDInterface");
    let hp = &hid["properties"];
    assert_eq!(hp["VendorID"], 0x1209);
    assert_eq!(hp["ProductID"], 1);
    assert_eq!(hp["PrimaryUsagePage"], 1);
    assert_eq!(hp["PrimaryUsage"], 6);
    assert_eq!(hp["Transport"], "USB");
    assert_eq!(hp["MaxInputReportSize"], 8);
    assert_eq!(hp["MaxOutputReportSize"], 1);
    assert_eq!(hp["DeviceUsagePairs"][0]["DeviceUsagePage"], 1);
    assert_eq!(hp["DeviceUsagePairs"][0]["DeviceUsage"], 6);
    assert_eq!(
        child_of(&nodes, hid, "IOUserHIDEventService")["id"],
        driver["id"]
    );
    assert_eq!(
        driver["properties"]["IOProbeScore"], 200,
        "VendorID + ProductID"
    );

    let text = "Hello, DriverKit 42!";
    let shifted = text
        .chars()
        .filter(|c| driverkitd::families::hid::ascii_usage(*c).unwrap().0)
        .count();
    // A press and a release per key, Shift's too.
    let listener = subscribe(&d, (text.chars().count() + shifted) * 2);
    d.cli(&["device", "type", &format!("{device:#x}"), text]);
    let events = events_of(listener);
    assert_eq!(typed(&events), text);
    for e in &events {
        assert_eq!(e["service"], id_of(&driver), "dispatched by the dext");
    }
    let stamps: Vec<u64> = events
        .iter()
        .map(|e| e["timestamp"].as_u64().unwrap())
        .collect();
    assert!(
        stamps.windows(2).all(|w| w[0] <= w[1]),
        "in order: {stamps:?}"
    );

    // Unplug: the dext stops and its process goes; the stack leaves.
    d.cli(&["device", "unplug", &format!("{device:#x}")]);
    d.wait_until("the keyboard's stack gone", || {
        d.nodes().iter().all(|n| {
            n["class"] != "IOHIDInterface"
                && n["class"] != "IOUSBHostInterface"
                && n["id"] != device
        })
    });
    d.wait_until("the driver's process gone", || !alive(pid));
    d.wait_log("stop: dispatched", 1);
}

#[test]
fn without_a_matching_dext_the_system_event_service_takes_the_reports() {
    let d = Daemon::start(&["--no-default-devices", "--no-embedded"]);
    let mouse = parse_hex(&d.cli(&["device", "plug", "mouse"]));
    d.wait_node("the default event service", |n| {
        n["class"] == "IOHIDEventDriver"
    });
    let keyboard = parse_hex(&d.cli(&["device", "plug", "keyboard"]));
    d.wait_until("two default event services", || {
        d.nodes()
            .iter()
            .filter(|n| n["class"] == "IOHIDEventDriver")
            .count()
            == 2
    });
    let listener = subscribe(&d, 4);
    d.cli(&["device", "type", &format!("{keyboard:#x}"), "ok"]);
    let events = events_of(listener);
    assert_eq!(typed(&events), "ok");

    let listener = subscribe(&d, 1);
    // Button 1 down, dx 3, dy -2, no wheel.
    d.cli(&["device", "report", &format!("{mouse:#x}"), "01 03 fe 00"]);
    let events = events_of(listener);
    assert_eq!(events[0]["kind"], "pointer", "{events:?}");
    assert_eq!(events[0]["values"], json!([3, -2, 1]));
}

/// What a mouse event service dispatches for a report, by kind.
fn pointer_and_scroll(events: &[Value]) -> (Vec<Value>, Vec<Value>) {
    let of = |kind: &str| -> Vec<Value> {
        events
            .iter()
            .filter(|e| e["kind"] == kind)
            .map(|e| e["values"].clone())
            .collect()
    };
    (of("pointer"), of("scroll"))
}

#[test]
fn an_event_service_keeping_the_sdks_handle_report_dispatches_pointer_and_scroll() {
    let d = Daemon::start(&[
        "--no-default-devices",
        "--no-embedded",
        "--with-tool",
        "DriverKitUsbTestDriver",
    ]);
    let mouse = d.cli(&["device", "plug", "mouse"]).trim().to_owned();
    let service = d.wait_node("MouseEventService active", |n| {
        n["name"] == "MouseEventService" && n["state"]["active"] == true
    });
    // The bundle's VirtualHIDKeyboard types "h" every 50 ms through the
    // system's event service meanwhile: listen long enough to be sure the
    // mouse's events are in, then keep the mouse service's.
    let listener = subscribe(&d, 24);
    // Button 1 down and a move; then button up and the wheel one notch.
    d.cli(&["device", "report", &mouse, "01 05 fb 00"]);
    d.cli(&["device", "report", &mouse, "00 00 00 01"]);
    let events: Vec<Value> = events_of(listener)
        .into_iter()
        .filter(|e| e["service"] == id_of(&service))
        .collect();
    let (pointer, scroll) = pointer_and_scroll(&events);
    assert_eq!(pointer, [json!([5, -5, 1]), json!([0, 0, 0])], "{events:?}");
    assert_eq!(scroll.len(), 1, "{events:?}");
    assert_eq!(
        scroll[0]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| **v == 1)
            .count(),
        1,
        "one notch on one axis: {events:?}"
    );
}

#[test]
fn caps_lock_turns_the_keyboard_led_on_and_off_through_the_dext() {
    let d = Daemon::start(&["--no-default-devices"]);
    let keyboard = d.cli(&["device", "plug", "keyboard"]).trim().to_owned();
    d.wait_node("HIDKeyboardDriver active", |n| {
        n["name"] == "HIDKeyboardDriver" && n["state"]["active"] == true
    });
    assert_eq!(
        d.cli(&["device", "output", &keyboard]).trim(),
        "",
        "no output report before Caps Lock"
    );
    // The keyboard's output report is its LED byte; Caps Lock is bit 1.
    for led in ["02", "00"] {
        d.cli(&["device", "report", &keyboard, "00 00 39 00 00 00 00 00"]);
        d.cli(&["device", "report", &keyboard, "00 00 00 00 00 00 00 00"]);
        d.wait_until(&format!("the LED report {led}"), || {
            d.cli(&["device", "output", &keyboard]).trim() == led
        });
    }
}

#[test]
fn a_vendor_device_waits_for_its_driver_which_then_talks_to_it() {
    let d = Daemon::start(&[
        "--no-default-devices",
        "--no-embedded",
        "--with-tool",
        "DriverKitUsbTestDriver",
    ]);
    let plain = parse_hex(&d.cli(&["device", "plug", "vendor-bulk"]));
    let iface = d.wait_node("the interface driver done", |n| {
        n["name"] == "UsbTestInterface" && n["properties"]["TestAbortStatus"].is_string()
    });
    let ip = &iface["properties"];
    assert_eq!(ip["TestInterfaceClass"], 0xff);
    assert_eq!(ip["TestEndpoints"], serde_json::json!([0x02, 0x82]));
    assert_eq!(ip["TestSent"], 19);
    assert_eq!(ip["TestEcho"], "echo through a pipe");
    assert_eq!(ip["TestTimeoutStatus"], "kIOReturnTimeout");
    assert_eq!(ip["TestAbortStatus"], "kIOReturnAborted");
    // Interface 1, taken through the device by interface 0's driver.
    assert_eq!(ip["TestInterfaceNumbers"], serde_json::json!([0, 1]));
    assert_eq!(ip["TestAlt0PipeStatus"], "kIOReturnNotFound");
    assert_eq!(ip["TestAlt7Status"], "kIOReturnBadArgument");
    assert_eq!(ip["TestAlternateSetting"], 1);
    assert_eq!(ip["TestAltEcho"], "through alternate setting 1");
    // Eight reads in flight on one pipe, 256 numbered packets: every
    // completion in the device's order.
    let ordered = d.wait_node("the ordered reads done", |n| {
        n["name"] == "UsbTestInterface" && n["properties"]["TestOrderedReads"].is_number()
    });
    assert_eq!(ordered["properties"]["TestOrderedReads"], 256);
    assert_eq!(ordered["properties"]["TestOrderedMisplaced"], 0);
    assert_eq!(
        ip["IOProbeScore"], 90000,
        "idVendor + idProduct + bInterfaceNumber + bConfigurationValue"
    );
    let dev = d.wait_node("the device driver", |n| n["name"] == "UsbTestDevice");
    let p = &dev["properties"];
    assert_eq!(p["TestVendor"], 0x1209);
    assert_eq!(p["TestProduct"], "Vendor Bulk Device");
    // Interface descriptors: 0, 1, and 1's alternate setting 1.
    assert_eq!(p["TestInterfaces"], 3);
    assert_eq!(p["TestStallStatus"], "kIOUSBPipeStalled");
    assert_eq!(p["IOProbeScore"], 90000, "idVendor + idProduct");
    let usb = d.nodes().into_iter().find(|n| n["id"] == plain).unwrap();
    assert_eq!(usb["properties"]["kUSBCurrentConfiguration"], 1);
    d.cli(&["device", "unplug", &format!("{plain:#x}")]);
    d.wait_until("the stack gone", || {
        d.nodes().iter().all(|n| n["id"] != plain)
    });
}

#[test]
fn a_vendor_device_without_a_driver_stays_unconfigured() {
    let d = Daemon::start(&["--no-default-devices", "--no-embedded"]);
    let id = parse_hex(&d.cli(&["device", "plug", "vendor-bulk"]));
    let keyboard = parse_hex(&d.cli(&["device", "plug", "keyboard"]));
    // The keyboard, plugged after, is configured; the vendor device is not.
    d.wait_node("the keyboard's interface", |n| {
        n["class"] == "IOUSBHostInterface"
    });
    let nodes = d.nodes();
    let vendor = nodes.iter().find(|n| n["id"] == id).unwrap();
    assert!(
        vendor["children"].as_array().is_none_or(|c| c.is_empty()),
        "{vendor}"
    );
    assert!(vendor["properties"]
        .get("kUSBCurrentConfiguration")
        .is_none());
    let kb = nodes.iter().find(|n| n["id"] == keyboard).unwrap();
    assert_eq!(kb["properties"]["kUSBCurrentConfiguration"], 1);
}

#[test]
fn a_dext_made_hid_device_types_through_the_system_event_service() {
    let d = Daemon::start(&[
        "--no-default-devices",
        "--no-embedded",
        "--with-tool",
        "DriverKitUsbTestDriver",
    ]);
    let device = d.wait_node("the dext's HID device", |n| {
        n["name"] == "VirtualHIDKeyboard"
    });
    assert_eq!(device["class"], "IOUserHIDDevice");
    let interface = d.wait_node("its IOHIDInterface", |n| {
        n["class"] == "IOHIDInterface" && n["properties"]["ProductID"] == 0x10
    });
    assert_eq!(interface["properties"]["Transport"], "Virtual");
    assert_eq!(interface["properties"]["PrimaryUsage"], 6);
    let listener = subscribe(&d, 4);
    let events = events_of(listener);
    let service = d.wait_node("the default event service", |n| {
        n["class"] == "IOHIDEventDriver"
    });
    for e in &events {
        assert_eq!(e["usage"], 0x0b, "{e}");
        assert_eq!(e["service"], id_of(&service));
    }
    let values: Vec<i64> = events
        .iter()
        .map(|e| e["value"].as_i64().unwrap())
        .collect();
    assert!(
        values.windows(2).all(|w| w[0] != w[1]),
        "press, release, press...: {values:?}"
    );
}

/// A device without strings is named as lsusb names it, from the USB ID
/// Repository, and the registry says where the names came from.
#[test]
fn a_device_without_strings_is_named_from_the_usb_id_repository() {
    let d = Daemon::start(&["--no-default-devices", "--no-embedded"]);
    // No manufacturer or product string in its descriptors.
    let file = device_file(
        d.root.path(),
        "ftdi.toml",
        "class = \"IOUSBHostDevice\"\nname = \"FTDI\"\n\
         [usb]\nidVendor = 0x0403\nidProduct = 0x6001\nbDeviceClass = 0\n\
         [[usb.interfaces]]\nbInterfaceClass = 0xff\n",
    );
    let id = parse_hex(&d.cli(&["device", "plug", &file]));
    let node = d.wait_node("the FTDI device", |n| n["id"] == id);
    let props = &node["properties"];
    assert_eq!(
        props["USB Product Name"], "FT232 Serial (UART) IC",
        "{node}"
    );
    assert_eq!(
        props["USB Vendor Name"],
        "Future Technology Devices International, Ltd"
    );
    assert_eq!(props["DriverKitNamesFrom"], "usb.ids");
}

//! The USB/IP client against a server this project did not write: the
//! `usbip` crate's simulated HID keyboard on loopback. Listing, import,
//! enumeration through URBs, the keyboard dext typing, and a dropped
//! connection unplugging the device.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use support::*;
use usbip::hid::{UsbHidKeyboardHandler, UsbHidKeyboardReport};

type Handler = Arc<Mutex<Box<dyn usbip::UsbInterfaceHandler + Send>>>;

/// Serves one simulated keyboard (VID 0x1209, PID 1: what the example
/// HIDKeyboardDriver matches) on a free loopback port.
fn server() -> (tokio::runtime::Runtime, u16, Handler) {
    let handler: Handler = Arc::new(Mutex::new(Box::new(UsbHidKeyboardHandler::new_keyboard())));
    let mut device = usbip::UsbDevice::new(0).with_interface(
        usbip::ClassCode::HID as u8,
        0x01,
        0x01,
        Some("Test HID"),
        vec![usbip::UsbEndpoint {
            address: 0x81,
            attributes: 0x03,
            max_packet_size: 0x08,
            interval: 10,
        }],
        handler.clone(),
    );
    device.vendor_id = 0x1209;
    device.product_id = 0x0001;
    // Bound here, on a port the kernel picks, and served by the crate's
    // per-connection handler: no window in which another test could take it.
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = Arc::new(usbip::UsbIpServer::new_simulated(vec![device]));
    rt.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
        while let Ok((mut socket, _)) = listener.accept().await {
            let server = server.clone();
            tokio::spawn(async move {
                let _ = usbip::handler(&mut socket, server).await;
            });
        }
    });
    (rt, port, handler)
}

/// What `driver` dispatched while `typing` typed `text` (lower case):
/// `driverkit events` listens first, then the keys come.
fn typed_through(d: &Daemon, driver: &Value, text: &str, typing: impl FnOnce()) -> String {
    let mut events = Command::new(EXE)
        .arg("--root")
        .arg(d.state())
        .args(["events", "--json", "--count", &(text.len() * 2).to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(events.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("listening"));
    typing();
    let out = events.wait_with_output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["value"] == 1)
        .inspect(|e| assert_eq!(e["service"], id_of(driver)))
        .map(|e| {
            driverkitd::families::hid::usage_char(e["usage"].as_u64().unwrap() as u32, false)
                .unwrap()
        })
        .collect()
}

fn press(handler: &Handler, text: &str) {
    let mut h = handler.lock().unwrap();
    let kb = h.as_any().downcast_mut::<UsbHidKeyboardHandler>().unwrap();
    for c in text.bytes() {
        kb.pending_key_events
            .push_back(UsbHidKeyboardReport::from_ascii(c));
    }
}

#[test]
fn a_keyboard_imported_over_usbip_types_through_the_dext_and_unplugs_when_the_server_goes() {
    let (rt, port, handler) = server();
    let d = Daemon::start(&["--no-default-devices"]);
    let server = format!("127.0.0.1:{port}");
    let mut listed = String::new();
    d.wait_until("the server lists its device", || {
        let out = Command::new(EXE)
            .args(["device", "list", "--json", "--usbip", &server])
            .output()
            .unwrap();
        listed = String::from_utf8_lossy(&out.stdout).into_owned();
        out.status.success()
    });
    let exported: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(exported[0]["busid"], "0-0-0");
    assert_eq!(exported[0]["id_vendor"], 0x1209);
    assert_eq!(exported[0]["interfaces"][0][0], 3);

    let id = d.cli(&["device", "attach", &format!("usbip://{server}/0-0-0")]);
    let id = u64::from_str_radix(id.trim().trim_start_matches("0x"), 16).unwrap();
    let driver = d.wait_node("HIDKeyboardDriver on the USB/IP keyboard", |n| {
        n["name"] == "HIDKeyboardDriver" && n["state"]["active"] == true
    });
    let nodes = d.nodes();
    let usb = nodes.iter().find(|n| n["id"] == id).unwrap();
    assert_eq!(usb["properties"]["idVendor"], 0x1209);
    assert_eq!(usb["properties"]["USB Product Name"], "Product");
    assert!(usb["properties"]["locationID"].as_u64().unwrap() >= 0x2000_0000);

    let text = "hello usbip";
    let typed = typed_through(&d, &driver, text, || press(&handler, text));
    assert_eq!(typed, text);

    // The server goes away: the device is unplugged, its driver stopped.
    let pid = driver["pid"].as_u64().unwrap();
    rt.shutdown_background();
    d.wait_until("the USB/IP device unplugged", || {
        d.nodes().iter().all(|n| n["id"] != id)
    });
    d.wait_until("the driver's process gone", || !alive(pid));
    assert!(
        d.log().contains("connection lost; unplugging"),
        "{}",
        d.log()
    );
}

#[test]
fn attaching_an_unknown_bus_id_names_it() {
    let (_rt, port, _handler) = server();
    let d = Daemon::start(&["--no-default-devices", "--no-embedded"]);
    let out = Command::new(EXE)
        .arg("--root")
        .arg(d.state())
        .args(["device", "attach", &format!("usbip://127.0.0.1:{port}/9-9")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("9-9") && err.contains("refused the import"),
        "{err}"
    );
}

#[test]
fn a_daemon_exports_its_virtual_keyboard_and_another_daemon_types_through_it() {
    // The exporter drives nothing itself; the importer has the drivers.
    let exporter = Daemon::start(&[
        "--no-default-devices",
        "--no-embedded",
        "--device",
        "keyboard",
    ]);
    let importer = Daemon::start(&["--no-default-devices"]);
    let keyboard = exporter.wait_node("the virtual keyboard", |n| n["name"] == "VirtualKeyboard");
    let keyboard_id = id_of(&keyboard);
    let listen = format!("127.0.0.1:{}", free_port());
    let out = exporter.cli(&["device", "export", &keyboard_id, "--listen", &listen]);
    assert!(
        out.contains(&format!("exported as usbip://{listen}/1-1")),
        "{out}"
    );
    // The export lists like any USB/IP server's.
    let listed = importer.cli(&["device", "list", "--json", "--usbip", &listen]);
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed[0]["busid"], "1-1");
    assert_eq!(listed[0]["id_vendor"], 0x1209);
    assert_eq!(listed[0]["interfaces"][0][0], 3);

    let id = importer.cli(&["device", "attach", &format!("usbip://{listen}/1-1")]);
    let id = u64::from_str_radix(id.trim().trim_start_matches("0x"), 16).unwrap();
    let driver = importer.wait_node("HIDKeyboardDriver on the imported keyboard", |n| {
        n["name"] == "HIDKeyboardDriver" && n["state"]["active"] == true
    });
    // Lent out: the exporter's own HID services on it are gone.
    exporter.wait_until("the exporter's services off the keyboard", || {
        exporter
            .nodes()
            .iter()
            .all(|n| n["name"] != "IOHIDEventDriver" && n["name"] != "IOUSBHostInterface@0")
    });
    // A device a dext drives is not exported.
    let refused = importer.run_cli(&[
        "device",
        "export",
        &format!("{id:#x}"),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("HIDKeyboardDriver") && err.contains("stop its driver"),
        "{err}"
    );

    let text = "over usbip";
    let typed = typed_through(&importer, &driver, text, || {
        exporter.cli(&["device", "type", &keyboard_id, text]);
    });
    assert_eq!(typed, text);

    // The importer lets go: the exporter has its keyboard back.
    importer.cli(&["device", "unplug", &format!("{id:#x}")]);
    exporter.wait_until("the keyboard back with the system's HID services", || {
        exporter
            .nodes()
            .iter()
            .any(|n| n["name"] == "IOHIDEventDriver")
    });
    assert!(
        exporter.log().contains("usbip    1-1"),
        "{}",
        exporter.log()
    );
}

#[test]
fn a_peer_sending_garbage_gets_a_clear_error_and_the_server_goes_on() {
    use std::io::Write;
    let exporter = Daemon::start(&[
        "--no-default-devices",
        "--no-embedded",
        "--device",
        "keyboard",
    ]);
    let listen = format!("127.0.0.1:{}", free_port());
    exporter.cli(&["device", "export", "all", "--listen", &listen]);
    for junk in [
        &b"\x01\x11\x80\x03\0\0\0\0short"[..],
        &[0xffu8; 64][..],
        &b""[..],
    ] {
        let mut s = std::net::TcpStream::connect(&listen).unwrap();
        s.write_all(junk).unwrap();
        drop(s);
    }
    // An import followed by a URB with a lying length, then a hang-up.
    let mut s = std::net::TcpStream::connect(&listen).unwrap();
    s.write_all(&driverkit_usb::usbip::emit_import("1-1"))
        .unwrap();
    let mut reply = vec![0u8; 8 + 312];
    std::io::Read::read_exact(&mut s, &mut reply).unwrap();
    assert_eq!(&reply[4..8], &[0, 0, 0, 0], "the import succeeds");
    let mut urb = vec![0u8; 48];
    urb[3] = 1; // CMD_SUBMIT
    urb[24..28].copy_from_slice(&u32::MAX.to_be_bytes()); // OUT length: 4 GiB
    s.write_all(&urb).unwrap();
    drop(s);
    exporter.wait_until("the bad URB named in the log", || {
        exporter.log().contains("bad message from the peer")
    });
    // The server still serves, and the keyboard came back.
    let listed = exporter.cli(&["device", "list", "--json", "--usbip", &listen]);
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed[0]["busid"], "1-1");
    exporter.wait_until("the keyboard back", || {
        exporter.log().contains("usbip    1-1") && exporter.log().contains("back")
    });
}

/// A USB/IP "server" that answers the import properly, then misbehaves.
fn lying_server(after_import: &'static [u8]) -> u16 {
    use std::io::{Read, Write};
    let port = free_port();
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            let mut request = [0u8; 8 + 32];
            if s.read_exact(&mut request).is_err() {
                continue;
            }
            let mut reply = driverkit_usb::usbip::OpHeader {
                version: driverkit_usb::usbip::VERSION,
                code: driverkit_usb::usbip::op::REP_IMPORT,
                status: 0,
            }
            .emit()
            .to_vec();
            reply.extend(
                driverkit_usb::usbip::DeviceInfo {
                    path: "/x".into(),
                    busid: "1-1".into(),
                    busnum: 1,
                    devnum: 2,
                    speed: 2,
                    id_vendor: 0x1209,
                    id_product: 0x77,
                    bcd_device: 0,
                    device_class: 0,
                    device_subclass: 0,
                    device_protocol: 0,
                    configuration_value: 1,
                    num_configurations: 1,
                    num_interfaces: 1,
                }
                .emit(),
            );
            let _ = s.write_all(&reply);
            // The first URB the client sends (its GET_DESCRIPTOR) gets this,
            // under its own sequence number.
            let mut urb = [0u8; 48];
            let _ = s.read_exact(&mut urb);
            let mut answer = after_import.to_vec();
            if answer.len() >= 8 {
                answer[4..8].copy_from_slice(&urb[4..8]);
            }
            let _ = s.write_all(&answer);
        }
    });
    port
}

#[test]
fn a_server_that_lies_after_the_import_gets_a_clear_error_and_no_device() {
    let d = Daemon::start(&["--no-default-devices", "--no-embedded"]);
    // Garbage; a RET_SUBMIT announcing 4 GiB of data; a hang-up mid-transfer.
    let mut huge = vec![0u8; 48];
    huge[3] = 3; // RET_SUBMIT
    huge[15] = 1; // direction IN
    huge[24..28].copy_from_slice(&u32::MAX.to_be_bytes());
    let huge: &'static [u8] = Box::leak(huge.into_boxed_slice());
    for (reply, needle) in [
        (&[0xffu8; 48][..], "URB command"),
        (huge, "at most"),
        (&[][..], "connection lost"),
    ] {
        let port = lying_server(reply);
        let out = d.run_cli(&["device", "attach", &format!("usbip://127.0.0.1:{port}/1-1")]);
        assert!(!out.status.success(), "a lying server gave a device");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("reading the device descriptor"), "{err}");
        d.wait_until(&format!("the log naming {needle:?}"), || {
            d.log().contains(needle)
        });
    }
    assert!(d.nodes().iter().all(|n| n["class"] != "IOUSBHostDevice"));
    assert!(!d.log().contains("panicked"));
}

/// A pipe's completions reach its driver in the device's order over USB/IP
/// too: the test driver keeps 8 reads in flight on an imported vendor
/// device while 256 numbered packets are echoed through it.
#[test]
fn many_reads_in_flight_on_an_imported_pipe_complete_in_order() {
    let exporter = Daemon::start(&[
        "--no-default-devices",
        "--no-embedded",
        "--device",
        "vendor-bulk",
    ]);
    let importer = Daemon::start(&[
        "--no-default-devices",
        "--no-embedded",
        "--with-tool",
        "DriverKitUsbTestDriver",
    ]);
    let listen = format!("127.0.0.1:{}", free_port());
    exporter.cli(&["device", "export", "all", "--listen", &listen]);
    importer.cli(&["device", "attach", &format!("usbip://{listen}/1-1")]);
    let done = importer.wait_node("the ordered reads done over USB/IP", |n| {
        n["name"] == "UsbTestInterface" && n["properties"]["TestOrderedReads"].is_number()
    });
    assert_eq!(done["properties"]["TestOrderedReads"], 256);
    assert_eq!(done["properties"]["TestOrderedMisplaced"], 0);
}

/// A USB/IP import is recorded like any device, and the recording ends on
/// its own, whole, when the device goes (its server went away).
#[test]
fn an_imported_device_is_recorded_until_it_goes_and_the_file_is_whole() {
    use driverkit_usb::recording;
    use driverkit_usb::usbmon::{Event, Transfer};

    let (rt, port, handler) = server();
    let d = Daemon::start(&["--no-default-devices"]);
    let id = d.cli(&[
        "device",
        "attach",
        &format!("usbip://127.0.0.1:{port}/0-0-0"),
    ]);
    let driver = d.wait_node("HIDKeyboardDriver on the USB/IP keyboard", |n| {
        n["name"] == "HIDKeyboardDriver" && n["state"]["active"] == true
    });
    let kept = tempfile::tempdir().unwrap();
    let file = kept.path().join("imported.pcapng");
    let mut recorder = Command::new(EXE)
        .arg("--root")
        .arg(d.state())
        .args(["device", "record", id.trim(), "-o"])
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Its first words: it records from then on.
    let mut said = BufReader::new(recorder.stderr.take().unwrap());
    let mut line = String::new();
    said.read_line(&mut line).unwrap();
    assert!(line.contains("recording"), "{line}");
    assert_eq!(
        typed_through(&d, &driver, "hi", || press(&handler, "hi")),
        "hi"
    );
    // No duration, no Ctrl-C: the device's end ends the recording.
    rt.shutdown_background();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = recorder.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the recording outlived its device"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut said, &mut rest).unwrap();
    assert!(status.success(), "{status}: {rest}");
    assert!(rest.contains("packets in"), "{rest}");
    let frames = recording::read(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(frames[1].data[1], 1, "a device descriptor first");
    let pressed: Vec<u8> = frames
        .iter()
        .filter(|f| {
            f.packet.transfer == Transfer::Interrupt
                && f.packet.event == Event::Complete
                && f.packet.endpoint == 0x81
        })
        .filter_map(|f| f.data.get(2).copied().filter(|u| *u != 0))
        .collect();
    assert_eq!(pressed, vec![0x0b, 0x0c], "h and i, through USB/IP");
}

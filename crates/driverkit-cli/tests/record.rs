//! Recording a USB device's traffic: the virtual keyboard recorded while
//! `device type` types "hello", read back by our reader and by tshark
//! (Wireshark's own dissector, which finds the interrupt-IN reports), and
//! played back on a fresh daemon, where HIDKeyboardDriver types "hello"
//! again; its live trace; and who may record.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use driverkit_usb::recording;
use driverkit_usb::usbmon::{Event, Transfer};
use support::*;

fn keyboard(d: &Daemon) -> String {
    let id = d.cli(&["device", "plug", "keyboard"]).trim().to_owned();
    d.wait_node("HIDKeyboardDriver active", |n| {
        n["name"] == "HIDKeyboardDriver" && n["state"]["active"] == true
    });
    id
}

/// `device record` (or `trace`) as a child, its first words read: it
/// listens from then on.
fn start(d: &Daemon, args: &[&str]) -> std::process::Child {
    let mut child = Command::new(EXE)
        .arg("--root")
        .arg(d.state())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Give the daemon the subscription before typing starts.
    std::thread::sleep(Duration::from_millis(700));
    if let Ok(Some(status)) = child.try_wait() {
        let out = child.wait_with_output().unwrap();
        panic!(
            "{args:?} ended at once ({status}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    child
}

/// What a recording's interrupt-IN completions carried: the reports.
fn interrupt_in_data(frames: &[recording::Frame]) -> Vec<Vec<u8>> {
    frames
        .iter()
        .filter(|f| {
            f.packet.transfer == Transfer::Interrupt
                && f.packet.event == Event::Complete
                && f.packet.endpoint & 0x80 != 0
        })
        .map(|f| f.data.clone())
        .collect()
}

/// `device record ID -o FILE --duration SECONDS` and `extra`, started as
/// `start` starts it.
fn record(
    d: &Daemon,
    id: &str,
    file: &std::path::Path,
    seconds: &str,
    extra: &[&str],
) -> std::process::Child {
    let mut args = vec!["device", "record", id, "-o", file.to_str().unwrap()];
    args.extend(["--duration", seconds]);
    args.extend(extra);
    start(d, &args)
}

/// The keyboard usages pressed in reports (boot protocol: bytes 2..8).
fn pressed(reports: &[Vec<u8>]) -> Vec<u8> {
    reports
        .iter()
        .filter_map(|r| r.get(2).copied().filter(|u| *u != 0))
        .collect()
}

#[test]
fn a_keyboard_recorded_while_typing_reads_back_here_and_in_tshark() {
    let d = Daemon::start(&["--no-default-devices"]);
    let kb = keyboard(&d);
    let file = d.root.path().join("keyboard.pcapng");
    let recorder = record(&d, &kb, &file, "4", &[]);
    d.cli(&["device", "type", &kb, "hello"]);
    let out = recorder.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("packets in"), "{said}");

    let frames = recording::read(&std::fs::read(&file).unwrap()).unwrap();
    // First what the device is: its device descriptor fetched, as a host
    // would, though recording began long after enumeration.
    let first = &frames[0].packet;
    assert_eq!(first.event, Event::Submit);
    assert_eq!(first.setup, Some([0x80, 6, 0, 1, 0, 0, 18, 0]));
    assert_eq!(frames[1].data.len(), 18);
    assert_eq!(frames[1].data[1], 1, "a device descriptor");
    // Then the keystrokes: interrupt-IN completions, h e l l o.
    let reports = interrupt_in_data(&frames);
    assert_eq!(
        pressed(&reports),
        [0x0b, 0x08, 0x0f, 0x0f, 0x12],
        "{reports:?}"
    );
    // Each submission has its completion.
    for f in frames.iter().filter(|f| f.packet.event == Event::Submit) {
        assert!(
            frames
                .iter()
                .any(|c| c.packet.id == f.packet.id && c.packet.event == Event::Complete),
            "frame {} has no completion",
            f.number
        );
    }

    // Wireshark's dissector: USB throughout, nothing malformed, and the
    // same ten interrupt-IN completions (five keys, down and up).
    let tshark = |filter: &str| {
        let out = Command::new("tshark")
            .arg("-r")
            .arg(&file)
            .args(["-Y", filter])
            .output()
            .expect("tshark (apt install tshark)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        tshark("_ws.malformed || _ws.expert.severity >= warning"),
        ""
    );
    assert_eq!(tshark("!usb").lines().count(), 0, "every frame is USB");
    let interrupt_in = tshark(
        "usb.transfer_type == 0x01 && usb.endpoint_address.direction == 1 && usb.urb_type == 67",
    );
    assert_eq!(interrupt_in.lines().count(), 10, "{interrupt_in}");
    let descriptors = tshark("usb.bDescriptorType == 0x01");
    assert!(
        !descriptors.is_empty(),
        "the device descriptor is dissected"
    );
    // Times as they were: the whole recording spans its 4 seconds, not a
    // thousand times that (the container's resolution is said).
    let last = tshark("frame")
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned();
    let seconds: f64 = last
        .split_whitespace()
        .nth(1)
        .and_then(|t| t.parse().ok())
        .unwrap_or(f64::MAX);
    assert!(
        seconds < 10.0,
        "the last frame {seconds} s after the first: {last}"
    );
}

#[test]
fn a_recording_plays_back_on_a_fresh_daemon_and_the_same_driver_types_the_same() {
    let d = Daemon::start(&["--no-default-devices"]);
    let kb = keyboard(&d);
    let kept = tempfile::tempdir().unwrap();
    let file = kept.path().join("hello.pcapng");
    let recorder = record(&d, &kb, &file, "3", &[]);
    d.cli(&["device", "type", &kb, "hello"]);
    assert!(recorder.wait_with_output().unwrap().status.success());
    drop(d);

    // A daemon that never saw the keyboard: the recording is the device.
    let fresh = Daemon::start(&["--no-default-devices"]);
    let (events, said) = subscribe_as(&fresh, None, 10);
    assert!(said.contains("listening"), "{said}");
    let played = fresh.cli(&["device", "plug", file.to_str().unwrap()]);
    let node = fresh.wait_node("HIDKeyboardDriver on the recording", |n| {
        n["name"] == "HIDKeyboardDriver" && n["state"]["active"] == true
    });
    assert!(node["pid"].is_u64());
    let typed: String = events_of(events)
        .iter()
        .filter(|e| e["value"] == 1)
        .filter_map(|e| driverkitd::families::hid::usage_char(e["usage"].as_u64()? as u32, false))
        .collect();
    assert_eq!(typed, "hello");
    let devices = fresh.cli(&["device", "list"]);
    assert!(
        devices.contains(&format!("{} ", played.trim())) && devices.contains("recording:hello"),
        "{devices}"
    );
    assert!(
        !fresh.log().contains("stalled"),
        "nothing diverged:\n{}",
        fresh.log()
    );
}

#[test]
fn a_live_trace_prints_each_transfer_as_usbmon_text_does() {
    let d = Daemon::start(&["--no-default-devices"]);
    let kb = keyboard(&d);
    let tracer = start(&d, &["device", "trace", &kb, "--duration", "3"]);
    d.cli(&["device", "type", &kb, "h"]);
    let out = tracer.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(" S Ci:1:"),
        "the descriptors' requests:\n{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains(" C Ii:1:") && l.ends_with(" 0 8 = 00000b00 00000000")),
        "the h's report:\n{text}"
    );
}

#[test]
fn only_an_administrator_may_record_a_device() {
    let d = Daemon::start(&["--no-default-devices"]);
    let kb = keyboard(&d);
    for dir in [d.root.path().to_owned(), d.state()] {
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    }
    let out = as_nobody(&d, &["device", "trace", &kb, "--duration", "1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("needs an administrator: uid 65534 is not root or in group driverkit"),
        "{err}"
    );
    // A recording of what is not a USB device says so.
    let out = d.run_cli(&["device", "trace", "0x999", "--duration", "1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("0x999 is not a USB device"), "{err}");
}

/// `--restart-drivers`: the device's driver stops and starts again inside
/// the recording (a new process), so that a replay finds the requests a
/// driver sends as it starts; the recording still holds the device.
#[test]
fn a_recording_with_restarted_drivers_holds_a_new_start() {
    let d = Daemon::start(&["--no-default-devices"]);
    let kb = keyboard(&d);
    let before = d.wait_node("HIDKeyboardDriver", |n| {
        n["name"] == "HIDKeyboardDriver" && n["state"]["active"] == true
    })["pid"]
        .as_u64()
        .unwrap();
    let file = d.root.path().join("restarted.pcapng");
    let recorder = record(&d, &kb, &file, "3", &["--restart-drivers"]);
    let after = d.wait_node("HIDKeyboardDriver started again", |n| {
        n["name"] == "HIDKeyboardDriver"
            && n["state"]["active"] == true
            && n["pid"].as_u64().is_some_and(|p| p != before)
    });
    d.cli(&["device", "type", &kb, "h"]);
    assert!(recorder.wait_with_output().unwrap().status.success());
    assert!(
        d.log().contains("restart  HIDKeyboardDriver"),
        "{}",
        d.log()
    );
    assert_ne!(after["pid"].as_u64(), Some(before));
    let frames = recording::read(&std::fs::read(&file).unwrap()).unwrap();
    let reports = interrupt_in_data(&frames);
    assert_eq!(
        pressed(&reports),
        vec![0x0b],
        "the h, typed after the restart"
    );
}

//! The PCI family end to end on the model of QEMU's edu device:
//! EduDriver's whole life and its user client, the requests a driver must
//! be refused, and a driver that crashes while the device is about to
//! write into its memory. (The same driver on QEMU's real edu device, through
//! VFIO, is `.ci/guest-pci`.)

mod support;

use serde_json::Value;
use support::*;

fn edu_nub(d: &Daemon) -> Value {
    d.wait_node("the edu function", |n| n["class"] == "IOPCIDevice")
}

#[test]
fn edu_driver_drives_the_model_and_answers_its_app() {
    let d = Daemon::start(&["--no-default-devices", "--device", "edu"]);
    let driver = d.wait_node("EduDriver started", |n| {
        n["name"] == "EduDriver" && n["properties"]["EduDMA"].is_boolean()
    });
    let p = &driver["properties"];
    assert_eq!(p["EduID"], "0x010000ed", "{p}");
    assert_eq!(p["EduLiveness"], true, "{p}");
    assert_eq!(p["EduDMA"], true, "4 KiB to the device and back: {p}");
    let factorials: Vec<u64> = p["EduFactorials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = (0..=12u64).map(|n| (1..=n).product()).collect();
    assert_eq!(factorials, expected, "0! to 12! by interrupt");

    let nub = &edu_nub(&d)["properties"];
    assert_eq!(nub["vendor-id"], 0x1234, "{nub}");
    assert_eq!(nub["device-id"], 0x11e8, "{nub}");
    assert_eq!(nub["subsystem-vendor-id"], 0x1af4, "{nub}");
    assert_eq!(nub["subsystem-id"], 0x1100, "{nub}");
    assert_eq!(nub["class-code"], 0xff0000, "{nub}");
    assert_eq!(nub["revision-id"], 0x10, "{nub}");
    assert_eq!(nub["IOName"], "pci1234,11e8", "{nub}");
    assert_eq!(nub["IOPCILocation"], "00:03.0", "{nub}");

    let out = d.cli(&[
        "call",
        "EduDriver",
        "0",
        "--scalar",
        "10",
        "--scalar-out",
        "1",
    ]);
    assert!(out.contains("[3628800]"), "{out}");
    let out = d.cli(&[
        "call",
        "EduDriver",
        "0",
        "--scalar",
        "12",
        "--scalar-out",
        "1",
    ]);
    assert!(out.contains("[479001600]"), "{out}");
    let refused = d.run_cli(&["call", "EduDriver", "0", "--scalar-out", "1"]);
    assert!(
        !refused.status.success(),
        "a call without its scalar is refused"
    );
}

fn tested(d: &Daemon, behavior: &str) {
    let bundle = test_bundle(
        d.root.path(),
        "org.test.Pci",
        &[P {
            name: "EduTest",
            provider_class: "IOPCIDevice",
            extra: &format!(
                "<key>IOPCIPrimaryMatch</key><string>0x11e81234</string>\
                 <key>IOProbeScore</key><integer>1000</integer>\
                 <key>TestStartBehavior</key><string>{behavior}</string>"
            ),
        }],
    );
    d.load(&bundle);
}

#[test]
fn what_a_driver_must_be_refused_is_a_bad_argument_and_reaches_no_device() {
    let d = Daemon::start(&["--no-embedded", "--no-default-devices", "--device", "edu"]);
    tested(&d, "pci-bad-input");
    let node = d.wait_node("the test driver's outcomes", |n| {
        n["properties"]["TestPCI"].is_object()
    });
    let t = &node["properties"]["TestPCI"];
    let bad = "kIOReturnBadArgument";
    for (key, want) in [
        ("ReadBeforeOpen", Value::from("kIOReturnNotOpen")),
        ("ConfigVendor", Value::from(0x1234)),
        ("ConfigPast4KiB", bad.into()),
        ("ConfigPastSpace", bad.into()),
        ("ConfigUnaligned", bad.into()),
        ("ConfigWriteTooWide", Value::from(0)),
        ("BarLastWord", Value::from(0xffff_ffffu32)),
        ("BarPastEnd", bad.into()),
        ("BarStraddlingEnd", bad.into()),
        ("BarUnaligned", bad.into()),
        ("BarMissing", bad.into()),
        ("BarInfoMissing", "kIOReturnNotFound".into()),
        ("MsiX", "kIOReturnUnsupported".into()),
        ("MsiCapability", Value::from(0x40)),
        ("ExtendedCapability", "kIOReturnNotFound".into()),
        ("MappedID", Value::from(0x0100_00ed)),
        ("MappedPastEnd", bad.into()),
        ("DmaBeyondMask", bad.into()),
        ("DmaPastBuffer", bad.into()),
        ("DmaBelowMask", Value::from(1)),
        ("DmaComplete", Value::from(1)),
        ("DmaCompleteTwice", "kIOReturnNotReady".into()),
        ("ReadAfterClose", "kIOReturnNotOpen".into()),
        ("MappedAfterClose", Value::from(0xffff_ffffu32)),
    ] {
        assert_eq!(t[key], want, "{key}: {t}");
    }
}

#[test]
fn a_driver_that_crashes_mid_dma_loses_the_device_first_and_its_successor_starts_clean() {
    let d = Daemon::start(&[
        "--no-embedded",
        "--no-default-devices",
        "--relaunch-backoff-ms",
        "20",
    ]);
    // The device starts a transfer 1 s after its command: the driver is
    // long gone by then.
    let file = device_file(
        d.root.path(),
        "slow-edu.toml",
        "name = \"edu\"\n[pci]\nmodel = \"edu\"\ndma_delay_ms = 1000\n",
    );
    d.cli(&["device", "plug", &file]);
    tested(&d, "pci-crash-mid-dma");
    let node = d.wait_node("the relaunched driver", |n| {
        n["properties"]["TestPCIStartState"].is_object()
    });
    let s = &node["properties"]["TestPCIStartState"];
    assert_eq!(s["Command"], 0, "Bus Master and Memory Space off: {s}");
    for key in ["Liveness", "IrqStatus", "DmaCommand", "DmaCount"] {
        assert_eq!(s[key], 0, "{key} is the power-on value: {s}");
    }
    let log = d.log();
    let at = |needle: &str| {
        log.find(needle)
            .unwrap_or_else(|| panic!("no {needle:?} in:\n{log}"))
    };
    let programmed = at("DMA programmed; aborting before the device writes");
    let crash = at("crash    org.test.Pci pid");
    let taken = at("taken back (Bus Master and Memory Space off, 1 DMA mapping(s) ended, reset)");
    let dropped = at("reset with a DMA transfer in flight: dropped");
    let relaunch = at("relaunch org.test.Pci/EduTest");
    // The dext's own line travels through its log stream, which the
    // daemon relays on a thread of its own: it may be written after the
    // daemon's lines about the crash. The daemon's lines are in order.
    assert!(programmed > 0 && crash < taken, "{log}");
    assert!(taken < relaunch && dropped < relaunch, "{log}");
    assert!(!log.contains("DMA fault"), "the device never wrote: {log}");
}

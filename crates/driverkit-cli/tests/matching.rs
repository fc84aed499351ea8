//! Categories, scores and hand-over on a failed Start, with real dexts.

mod support;

use support::*;

#[test]
fn categories_attach_side_by_side_the_best_score_wins_and_a_failed_start_hands_over() {
    let d = Daemon::start(&["--no-embedded", "--no-default-devices"]);
    let dir = d.root.path().to_owned();
    let m = "<key>IOPropertyMatch</key><dict><key>TestDevice</key><true/></dict>";
    let p = |cat: &str, score: i64, behavior: &str| {
        format!(
            "{m}<key>IOMatchCategory</key><string>{cat}</string><key>IOProbeScore</key><integer>{score}</integer>\
             <key>TestStartBehavior</key><string>{behavior}</string>"
        )
    };
    let (a_high, a_low, b, c_fail, c_next) = (
        p("A", 100, "ok"),
        p("A", 10, "ok"),
        p("B", 0, "ok"),
        p("C", 50, "fail"),
        p("C", 5, "ok"),
    );
    let bundle = test_bundle(
        &dir,
        "org.test.Match",
        &[
            P {
                name: "AHigh",
                provider_class: "IOVirtualDevice",
                extra: &a_high,
            },
            P {
                name: "ALow",
                provider_class: "IOVirtualDevice",
                extra: &a_low,
            },
            P {
                name: "B",
                provider_class: "IOVirtualDevice",
                extra: &b,
            },
            P {
                name: "CFail",
                provider_class: "IOVirtualDevice",
                extra: &c_fail,
            },
            P {
                name: "CNext",
                provider_class: "IOVirtualDevice",
                extra: &c_next,
            },
            // Provider class includes subclasses: IOService matches a device.
            P {
                name: "Base",
                provider_class: "IOService",
                extra: &format!("{m}<key>IOMatchCategory</key><string>D</string>"),
            },
            // A property the device does not have never matches.
            P {
                name: "Other",
                provider_class: "IOVirtualDevice",
                extra: "<key>IOPropertyMatch</key><dict><key>TestDevice</key><false/></dict>",
            },
        ],
    );
    d.load(&bundle);
    let id = plug_test_device(&d);
    d.wait_until("four active clients", || {
        d.nodes()
            .iter()
            .filter(|n| n["name"] == "TestDriver" && n["state"]["active"] == true)
            .count()
            == 4
    });
    d.wait_log("start    TestDriver", 5);
    let nodes = d.nodes();
    let device = nodes.iter().find(|n| n["id"] == id).unwrap();
    let mut winners: Vec<&str> = device["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(personality)
        .collect();
    winners.sort();
    assert_eq!(winners, ["AHigh", "B", "Base", "CNext"]);
    let log = d.log();
    assert!(
        log.contains("failed with kIOReturnError (0xe00002bc); trying the next candidate"),
        "{log}"
    );
    assert!(
        log.contains("match    TestDriver (org.test.Match/CFail)"),
        "CFail was tried first:\n{log}"
    );
    assert!(
        !log.contains("org.test.Match/ALow"),
        "the lower score in a taken category is never tried:\n{log}"
    );
    assert!(!log.contains("org.test.Match/Other"), "{log}");
}

#[test]
fn name_and_resource_matching() {
    let d = Daemon::start(&["--no-embedded", "--no-default-devices"]);
    let dir = d.root.path().to_owned();
    let bundle = test_bundle(
        &dir,
        "org.test.Names",
        &[
            P {
                name: "ByName",
                provider_class: "IOVirtualDevice",
                extra: "<key>IONameMatch</key><array><string>Gizmo</string><string>Gadget</string></array>",
            },
            P {
                name: "Resource",
                provider_class: "IOUserResources",
                extra: "<key>IOResourceMatch</key><string>IOKit</string><key>IOMatchCategory</key><string>r</string>",
            },
            P {
                name: "MissingResource",
                provider_class: "IOUserResources",
                extra: "<key>IOResourceMatch</key><string>IONoSuchThing</string><key>IOMatchCategory</key><string>m</string>",
            },
        ],
    );
    d.load(&bundle);
    d.cli(&[
        "device",
        "plug",
        &device_file(&dir, "g.toml", "name = \"Gadget\"\n"),
    ]);
    d.cli(&[
        "device",
        "plug",
        &device_file(&dir, "w.toml", "name = \"Whatsit\"\n"),
    ]);
    d.wait_node("ByName on Gadget", |n| {
        personality(n) == "ByName" && n["state"]["active"] == true
    });
    d.wait_node("Resource on IOUserResources", |n| {
        personality(n) == "Resource" && n["state"]["active"] == true
    });
    let nodes = d.nodes();
    assert_eq!(
        nodes.iter().filter(|n| personality(n) == "ByName").count(),
        1,
        "only Gadget matches by name"
    );
    assert!(nodes.iter().all(|n| personality(n) != "MissingResource"));
}

#[test]
fn when_a_driver_goes_away_the_provider_rematches_without_it() {
    let d = Daemon::start(&["--no-embedded", "--no-default-devices"]);
    let dir = d.root.path().to_owned();
    let m = "<key>IOPropertyMatch</key><dict><key>TestDevice</key><true/></dict>";
    let quitter = format!("{m}<key>IOProbeScore</key><integer>100</integer><key>TestTerminateAfterMs</key><integer>100</integer>");
    let bundle = test_bundle(
        &dir,
        "org.test.Leave",
        &[
            P {
                name: "Quitter",
                provider_class: "IOVirtualDevice",
                extra: &quitter,
            },
            P {
                name: "Successor",
                provider_class: "IOVirtualDevice",
                extra: m,
            },
        ],
    );
    d.load(&bundle);
    plug_test_device(&d);
    d.wait_node("Successor active", |n| {
        personality(n) == "Successor" && n["state"]["active"] == true
    });
    let log = d.log();
    assert!(log.contains("start    TestDriver"), "{log}");
    let quitter_start = log.find("org.test.Leave/Quitter").unwrap();
    let successor_start = log.find("org.test.Leave/Successor").unwrap();
    assert!(
        quitter_start < successor_start,
        "the better driver ran first:\n{log}"
    );
    // The dext's own line travels through the log thread: it may trail.
    d.wait_log("terminating myself", 1);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        d.log()
            .matches("match    TestDriver (org.test.Leave/Quitter)")
            .count(),
        1,
        "not offered again"
    );
}

#[test]
fn usb_devices_match_by_the_qa1076_ladder() {
    let d = Daemon::start(&["--no-embedded", "--no-default-devices"]);
    let dir = d.root.path().to_owned();
    let vp = "<key>idVendor</key><integer>1575</integer><key>idProduct</key><integer>1</integer>";
    let exact = format!("{vp}<key>bcdDevice</key><integer>256</integer>");
    let star = "<key>idVendor</key><integer>1575</integer><key>idProduct</key><string>*</string>\
                <key>IOMatchCategory</key><string>star</string>";
    let bundle = test_bundle(
        &dir,
        "org.test.Usb",
        &[
            P { name: "VendorProduct", provider_class: "IOUSBHostDevice", extra: vp },
            P { name: "Exact", provider_class: "IOUSBHostDevice", extra: &exact },
            P { name: "Star", provider_class: "IOUSBHostDevice", extra: star },
            P {
                name: "OtherVendor",
                provider_class: "IOUSBHostDevice",
                extra: "<key>idVendor</key><integer>1</integer><key>idProduct</key><integer>1</integer>\
                        <key>IOMatchCategory</key><string>other</string>",
            },
        ],
    );
    d.load(&bundle);
    let dev = device_file(
        &dir,
        "kbd.toml",
        "name = \"USB Keyboard\"\nclass = \"IOUSBHostDevice\"\n[properties]\nidVendor = 1575\nidProduct = 1\nbcdDevice = 256\n",
    );
    d.cli(&["device", "plug", &dev]);
    d.wait_until("two drivers active", || {
        d.nodes()
            .iter()
            .filter(|n| n["name"] == "TestDriver" && n["state"]["active"] == true)
            .count()
            == 2
    });
    let nodes = d.nodes();
    let score = |p: &str| {
        nodes
            .iter()
            .find(|n| personality(n) == p)
            .map(|n| n["properties"]["IOProbeScore"].clone())
    };
    assert_eq!(
        score("Exact"),
        Some(100_000.into()),
        "the 100000 row wins its category"
    );
    assert_eq!(score("VendorProduct"), None);
    assert_eq!(score("Star"), Some(89_000.into()), "a wildcard costs 1000");
    assert_eq!(score("OtherVendor"), None);
}

/// `driverkit why ID` gives every personality considered for a provider its
/// outcome: who runs, who lost a tie and by which rule, who scored lower
/// and to whom, who was refused and by which key.
#[test]
fn why_explains_each_personality_for_a_provider() {
    let d = Daemon::start(&["--no-embedded", "--no-default-devices"]);
    let test_device = "<key>IOPropertyMatch</key><dict><key>TestDevice</key><true/></dict>";
    let bundle = test_bundle(
        d.root.path(),
        "org.test.Why",
        &[
            P {
                name: "A",
                provider_class: "IOVirtualDevice",
                extra: test_device,
            },
            P {
                name: "B",
                provider_class: "IOVirtualDevice",
                extra: test_device,
            },
            P {
                name: "Low",
                provider_class: "IOVirtualDevice",
                extra: &format!("{test_device}<key>IOProbeScore</key><integer>-5</integer>"),
            },
            P {
                name: "Other",
                provider_class: "IOVirtualDevice",
                extra: "<key>IOPropertyMatch</key><dict><key>TestDevice</key><false/></dict>",
            },
            P {
                name: "Elsewhere",
                provider_class: "IOUserResources",
                extra: "",
            },
        ],
    );
    d.load(&bundle);
    let id = plug_test_device(&d);
    d.wait_node("the winner running", |n| {
        n["name"] == "TestDriver" && n["state"]["active"] == true
    });
    let answer: serde_json::Value =
        serde_json::from_str(&d.cli(&["why", &format!("{id:#x}"), "--json"])).unwrap();
    let of = |name: &str| {
        answer["considered"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["personality"] == format!("org.test.Why/{name}"))
            .unwrap_or_else(|| panic!("{name} not considered: {answer}"))
            .clone()
    };
    assert_eq!(of("A")["outcome"], "runs", "{answer}");
    let b = of("B");
    assert_eq!(b["outcome"], "tie", "{answer}");
    assert!(
        b["reason"].as_str().unwrap().contains(
            "broken by bundle identifier, then personality name: org.test.Why/A sorts first"
        ),
        "{b}"
    );
    let low = of("Low");
    assert_eq!(low["outcome"], "lost");
    assert!(
        low["reason"]
            .as_str()
            .unwrap()
            .contains("-5 < 0 (org.test.Why/A)"),
        "{low}"
    );
    let other = of("Other");
    assert_eq!(other["outcome"], "refused");
    assert!(
        other["reason"].as_str().unwrap().contains(
            "IOPropertyMatch does not match (TestDevice: wants false, the provider has true)"
        ),
        "{other}"
    );
    assert_eq!(answer["other_classes"], 1, "{answer}");
    // The text form says the same, for a person.
    let text = d.cli(&["why", &format!("{id:#x}")]);
    assert!(text.contains("tie       org.test.Why/B"), "{text}");
    // By its registry name, when one entry has it; a name no entry has is
    // said so.
    let by_name = d.cli(&["why", "T"]);
    assert_eq!(by_name, text);
    let out = d.run_cli(&["why", "NoSuchEntry"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no registry entry is named \"NoSuchEntry\""),
        "{err}"
    );
    d.interrupt();
}

//! Plug -> match -> a dext in its own process -> unplug -> Stop, free, exit.

mod support;

use support::*;

#[test]
fn a_plugged_device_gets_its_dext_in_its_own_process_and_unplug_cleans_up() {
    let d = Daemon::start(&["--no-default-devices"]);
    // The embedded NullDriver matches IOUserResources without any device.
    let null = d.wait_node("NullDriver active", |n| {
        n["name"] == "NullDriver" && n["state"]["active"] == true
    });
    assert_eq!(
        null["properties"]["NullDriverGreeting"],
        "Hello from a dext"
    );
    let null_pid = null["pid"].as_u64().unwrap();
    assert_ne!(null_pid, u64::from(d.pid()));

    let plugged = d.cli(&["device", "plug", "sensor"]);
    let device_id = u64::from_str_radix(plugged.trim().trim_start_matches("0x"), 16).unwrap();
    let driver = d.wait_node("VirtualSensorDriver active", |n| {
        n["name"] == "VirtualSensorDriver" && n["state"]["active"] == true
    });
    let device = d
        .nodes()
        .into_iter()
        .find(|n| n["id"] == device_id)
        .unwrap();
    // Provider -> client, with the states and properties ioreg shows.
    assert_eq!(device["children"][0]["id"], driver["id"]);
    assert_eq!(device["class"], "IOVirtualDevice");
    assert_eq!(driver["class"], "IOUserService");
    for flag in ["registered", "matched", "active"] {
        assert_eq!(driver["state"][flag], true, "{flag}");
        assert_eq!(device["state"][flag], true, "{flag}");
    }
    assert_eq!(
        driver["properties"]["TemperatureFahrenheit"], 69,
        "read from the provider: 21 C"
    );
    assert_eq!(
        driver["properties"]["IOPropertyMatch"]["SensorKind"],
        "thermometer"
    );
    let pid = driver["pid"].as_u64().unwrap();
    assert!(alive(pid));
    assert_ne!(pid, null_pid, "one process per matched service");
    let text = d.cli(&["ioreg", "-c", "IOUserService"]);
    assert!(
        text.contains(&format!(
            "+-o VirtualSensorDriver  <class IOUserService, id {}, registered, matched, active, pid {pid}>",
            id_of(&driver)
        )),
        "{text}"
    );

    d.cli(&["device", "unplug", &format!("{device_id:#x}")]);
    // Unplug returns once the stack is down: entries gone, process gone.
    let ids: Vec<_> = d.nodes().iter().map(|n| n["id"].clone()).collect();
    assert!(!ids.contains(&driver["id"]) && !ids.contains(&device["id"]));
    d.wait_until("the dext process to exit", || !alive(pid));
    d.wait_log(
        &format!("exit     com.example.VirtualSensorDriver pid {pid}:"),
        1,
    );
    let log = d.log();
    let stop = log
        .find(&format!(
            "stop     VirtualSensorDriver [{}] in pid {pid}: ok",
            id_of(&driver)
        ))
        .expect("stop logged");
    let free = log
        .find(&format!(
            "free     VirtualSensorDriver [{}] in pid {pid}: ok",
            id_of(&driver)
        ))
        .expect("free logged");
    let exit = log
        .find(&format!(
            "exit     com.example.VirtualSensorDriver pid {pid}: exited with status 0"
        ))
        .expect("exit");
    assert!(
        stop < free && free < exit,
        "Stop, then free, then exit:\n{log}"
    );
    assert!(
        log.contains(&format!(
            "VirtualSensorDriver[{pid}]:  INFO stop: last reading 21"
        )),
        "the dext's own stop ran"
    );
    assert!(alive(null_pid), "other dexts are untouched");

    let log = d.interrupt();
    assert!(!alive(null_pid), "Ctrl-C stops every dext:\n{log}");
    assert!(log.contains(&format!(
        "free     NullDriver [{}] in pid {null_pid}: ok",
        id_of(&null)
    )));
}

#[test]
fn ctrl_c_stops_every_dext_and_leaves_no_process_behind() {
    let d = Daemon::start(&[]);
    d.wait_node("PacketQueueDriver active", |n| {
        n["name"] == "PacketQueueDriver" && n["state"]["active"] == true
    });
    d.wait_node("VirtualSensorDriver active", |n| {
        n["name"] == "VirtualSensorDriver" && n["state"]["active"] == true
    });
    d.wait_node("NullDriver active", |n| {
        n["name"] == "NullDriver" && n["state"]["active"] == true
    });
    d.wait_node("HIDKeyboardDriver active", |n| {
        n["name"] == "HIDKeyboardDriver" && n["state"]["active"] == true
    });
    d.wait_node("VirtualSerialDriver active", |n| {
        n["name"] == "VirtualSerialDriver" && n["state"]["active"] == true
    });
    d.wait_node("EduDriver active", |n| {
        n["name"] == "EduDriver" && n["state"]["active"] == true
    });
    d.wait_until("both ends of the cable driven", || {
        d.nodes()
            .iter()
            .filter(|n| n["name"] == "VirtualEthernetDriver" && n["state"]["active"] == true)
            .count()
            == 2
    });
    let pids: Vec<u64> = d.nodes().iter().filter_map(|n| n["pid"].as_u64()).collect();
    assert_eq!(
        pids.len(),
        8,
        "the seven example drivers, one of them on both cable ends"
    );
    let log = d.interrupt();
    for pid in pids {
        assert!(!alive(pid), "pid {pid} outlived the daemon\n{log}");
        assert!(
            log.contains(&format!("pid {pid}: exited with status 0")),
            "{log}"
        );
    }
}

#[test]
fn a_bundle_loaded_at_run_time_matches_existing_devices() {
    let d = Daemon::start(&["--no-embedded", "--no-default-devices"]);
    let dir = d.root.path().to_owned();
    plug_test_device(&d);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(
        d.nodes().iter().all(|n| n["name"] != "TestDriver"),
        "nothing matches before the load"
    );
    let bundle = test_bundle(
        &dir,
        "org.test.Late",
        &[P {
            name: "Late",
            provider_class: "IOVirtualDevice",
            extra: "<key>IOPropertyMatch</key><dict><key>TestDevice</key><true/></dict>",
        }],
    );
    d.load(&bundle);
    d.wait_node("TestDriver active after load", |n| {
        n["name"] == "TestDriver" && n["state"]["active"] == true
    });
}

#[test]
fn one_process_personalities_share_a_pid() {
    let d = Daemon::start(&["--no-embedded", "--no-default-devices"]);
    let dir = d.root.path().to_owned();
    let shared = "<key>IOUserServerOneProcess</key><true/><key>IOPropertyMatch</key><dict><key>TestDevice</key><true/></dict>";
    let alone = "<key>IOPropertyMatch</key><dict><key>TestDevice</key><true/></dict>";
    let bundle = test_bundle(
        &dir,
        "org.test.Shared",
        &[
            P {
                name: "S1",
                provider_class: "IOVirtualDevice",
                extra: &format!("{shared}<key>IOMatchCategory</key><string>s1</string>"),
            },
            P {
                name: "S2",
                provider_class: "IOVirtualDevice",
                extra: &format!("{shared}<key>IOMatchCategory</key><string>s2</string>"),
            },
            P {
                name: "A1",
                provider_class: "IOVirtualDevice",
                extra: &format!("{alone}<key>IOMatchCategory</key><string>a1</string>"),
            },
        ],
    );
    d.load(&bundle);
    plug_test_device(&d);
    d.wait_until("three active clients", || {
        d.nodes()
            .iter()
            .filter(|n| n["name"] == "TestDriver" && n["state"]["active"] == true)
            .count()
            == 3
    });
    let nodes = d.nodes();
    let pid_of = |p: &str| {
        nodes.iter().find(|n| personality(n) == p).unwrap()["pid"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(
        pid_of("S1"),
        pid_of("S2"),
        "IOUserServerOneProcess shares one process"
    );
    assert_ne!(pid_of("S1"), pid_of("A1"));
}

#[test]
fn the_packet_queue_example_moves_packets_and_stop_cancels_its_sources_first() {
    let d = Daemon::start(&["--no-default-devices"]);
    let node = d.wait_node("two packets through the data queue", |n| {
        n["name"] == "PacketQueueDriver"
            && n["properties"]["PacketsReceived"]
                .as_i64()
                .is_some_and(|r| r >= 2)
    });
    let pid = node["pid"].as_u64().unwrap();
    assert!(node["properties"]["PacketsSent"].as_i64().unwrap() >= 2);
    let log = d.interrupt();
    let timer = log
        .find("INFO stop: timer cancelled")
        .expect("timer cancelled in Stop");
    let queue = log
        .find("INFO stop: data queue cancelled")
        .expect("data queue cancelled in Stop");
    let summary = log
        .find("INFO stop: sent ")
        .expect("Stop went on after both cancel handlers");
    assert!(timer < summary && queue < summary, "{log}");
    assert!(
        log.contains(&format!(
            "exit     com.example.PacketQueueDriver pid {pid}: exited with status 0"
        )),
        "{log}"
    );
}

#[test]
fn a_dext_killed_while_holding_a_data_queue_leaves_the_daemon_consistent() {
    let d = Daemon::start(&["--no-default-devices", "--relaunch-backoff-ms", "20"]);
    let first = d.wait_node("packets flowing", |n| {
        n["name"] == "PacketQueueDriver"
            && n["properties"]["PacketsReceived"]
                .as_i64()
                .is_some_and(|r| r >= 1)
    });
    let pid = first["pid"].as_u64().unwrap();
    kill9(pid);
    d.wait_log(
        &format!("crash    com.example.PacketQueueDriver pid {pid}: killed by signal 9 SIGKILL"),
        1,
    );
    let again = d.wait_node("the relaunched driver moving packets", |n| {
        n["name"] == "PacketQueueDriver"
            && n["pid"].as_u64() != Some(pid)
            && n["properties"]["PacketsReceived"]
                .as_i64()
                .is_some_and(|r| r >= 1)
    });
    assert_ne!(again["id"], first["id"]);
    // The daemon still serves everything else.
    d.wait_node("NullDriver active", |n| {
        n["name"] == "NullDriver" && n["state"]["active"] == true
    });
    d.interrupt();
}

#[test]
fn a_virtual_devices_interrupts_reach_its_driver_until_it_is_unplugged() {
    let d = Daemon::start(&["--no-embedded", "--no-default-devices"]);
    let dir = d.root.path().to_owned();
    let bundle = driverkit_cli_example_bundle(&dir, "VirtualSensorDriver");
    d.load(&bundle);
    let dev = device_file(
        &dir,
        "irq.toml",
        "name = \"Irq\"\n[properties]\nSensorKind = \"thermometer\"\nReadingCelsius = 0\n[[interrupts]]\nperiod_ms = 20\n",
    );
    let id = d.cli(&["device", "plug", &dev]);
    let node = d.wait_node("ten interrupts counted", |n| {
        n["name"] == "VirtualSensorDriver"
            && n["properties"]["InterruptsSeen"]
                .as_i64()
                .is_some_and(|c| c >= 10)
    });
    let pid = node["pid"].as_u64().unwrap();
    d.cli(&["device", "unplug", id.trim()]);
    d.wait_log(
        &format!("exit     com.example.VirtualSensorDriver pid {pid}: exited with status 0"),
        1,
    );
    // Printed by the dext's Stop only after the source's cancel handler ran.
    let log = d.log();
    let line = format!("VirtualSensorDriver[{pid}]:  INFO stop: last reading 0 °C after ");
    let at = log
        .find(&line)
        .unwrap_or_else(|| panic!("Stop cancelled the interrupt source:\n{log}"));
    let counted: u64 = log[at + line.len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(counted >= 10, "{counted} interrupts");
    let ids: Vec<_> = d.nodes().iter().map(|n| n["id"].clone()).collect();
    assert!(!ids.contains(&node["id"]));
}

/// A bundle for one of the examples built into the `driverkit` binary.
fn driverkit_cli_example_bundle(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let plist = std::fs::read_to_string(format!(
        "{}/../../examples/{name}/Info.plist",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let entitlements = std::fs::read_to_string(format!(
        "{}/../../examples/{name}/Entitlements.plist",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let id = format!("com.example.{name}");
    let bundle = driverkit_bundle::location::dext_in_app(&dir.join("Examples.app"), &id);
    std::fs::create_dir_all(&bundle).unwrap();
    std::fs::write(bundle.join("Info.plist"), plist).unwrap();
    std::fs::write(bundle.join("Entitlements.plist"), entitlements).unwrap();
    std::os::unix::fs::symlink(EXE, bundle.join(name)).unwrap();
    bundle
}

#[test]
fn an_async_read_fills_the_shared_buffer_in_place_and_completes_its_action() {
    let d = Daemon::start(&["--no-embedded", "--no-default-devices"]);
    let dir = d.root.path().to_owned();
    let bundle = test_bundle(
        &dir,
        "org.test.Read",
        &[P {
            name: "Reader",
            provider_class: "IOVirtualDevice",
            extra: "<key>IOPropertyMatch</key><dict><key>TestDevice</key><true/></dict>\
                    <key>TestReadLength</key><integer>65536</integer>",
        }],
    );
    d.load(&bundle);
    plug_test_device(&d);
    let node = d.wait_node("the read completed", |n| {
        n["properties"]["TestReadStatus"].is_string()
    });
    assert_eq!(node["properties"]["TestReadStatus"], "kIOReturnSuccess");
    assert_eq!(
        node["properties"]["TestReadVerified"], true,
        "64 KiB written by the device, read by the dext"
    );
}

#[test]
fn a_read_in_flight_completes_with_aborted_when_the_device_is_unplugged() {
    let d = Daemon::start(&["--no-embedded", "--no-default-devices"]);
    let dir = d.root.path().to_owned();
    let bundle = test_bundle(
        &dir,
        "org.test.Slow",
        &[P {
            name: "SlowReader",
            provider_class: "IOVirtualDevice",
            extra: "<key>IOPropertyMatch</key><dict><key>TestDevice</key><true/></dict>\
                    <key>TestReadLength</key><integer>16</integer>",
        }],
    );
    d.load(&bundle);
    let dev = device_file(
        &dir,
        "slow.toml",
        "name = \"T\"\n[properties]\nTestDevice = true\nReadLatencyMs = 600000\n",
    );
    let id = d.cli(&["device", "plug", &dev]);
    let node = d.wait_node("the reader started", |n| {
        n["properties"]["TestDriverStarted"] == true
    });
    let pid = node["pid"].as_u64().unwrap();
    d.cli(&["device", "unplug", id.trim()]);
    d.wait_log(&format!("exit     org.test.Slow pid {pid}"), 1);
    let log = d.log();
    let aborted = log
        .find(&format!(
            "Slow[{pid}]:  INFO read completed: kIOReturnAborted (0xe00002eb) after 0 bytes"
        ))
        .unwrap_or_else(|| panic!("the read was aborted:\n{log}"));
    let stopped = log
        .find(&format!("Slow[{pid}]:  INFO stop"))
        .expect("the dext's stop ran");
    assert!(
        aborted < stopped,
        "aborted before Stop, both from the dext's own log:\n{log}"
    );
}

#[test]
fn a_completion_that_can_no_longer_arrive_runs_the_aborted_handler() {
    let d = Daemon::start(&["--no-embedded", "--no-default-devices"]);
    let dir = d.root.path().to_owned();
    let bundle = test_bundle(
        &dir,
        "org.test.Leaver",
        &[P {
            name: "Leaver",
            provider_class: "IOVirtualDevice",
            extra: "<key>IOPropertyMatch</key><dict><key>TestDevice</key><true/></dict>\
                    <key>TestReadLength</key><integer>16</integer>\
                    <key>TestTerminateAfterMs</key><integer>100</integer>",
        }],
    );
    d.load(&bundle);
    let dev = device_file(
        &dir,
        "slow.toml",
        "name = \"T\"\n[properties]\nTestDevice = true\nReadLatencyMs = 600000\n",
    );
    d.cli(&["device", "plug", &dev]);
    // The driver leaves its device (which stays) with the read in flight.
    d.wait_log("read dropped without completion: aborted handler ran", 1);
    assert!(!d.log().contains("read completed"), "{}", d.log());
}

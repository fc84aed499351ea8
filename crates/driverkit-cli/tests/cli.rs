//! The command line on its own: validate, errors without a daemon, bench.

mod support;

use std::process::Command;

use support::*;

#[test]
fn validate_prints_personalities_and_refuses_broken_bundles() {
    let dir = tempfile::tempdir().unwrap();
    let good = test_bundle(
        dir.path(),
        "org.test.Good",
        &[P {
            name: "Good",
            provider_class: "IOUserResources",
            extra: "<key>IOProbeScore</key><integer>7</integer>",
        }],
    );
    let out = Command::new(EXE)
        .arg("validate")
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("org.test.Good 1.0 (1): valid"), "{text}");
    assert!(text.contains("in app: "), "{text}");
    assert!(text.contains("personality \"Good\""), "{text}");
    assert!(text.contains("IOProbeScore     7"), "{text}");

    let bad = test_bundle(
        dir.path(),
        "org.test.Bad",
        &[P {
            name: "Bad",
            provider_class: "IONotAClass",
            extra: "",
        }],
    );
    let out = Command::new(EXE)
        .arg("validate")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("org.test.Bad.dext"), "{err}");
    assert!(err.contains("personality \"Bad\""), "{err}");
    assert!(
        err.contains("key IOProviderClass: unknown class \"IONotAClass\""),
        "{err}"
    );
}

#[test]
fn subcommands_without_a_daemon_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(EXE)
        .arg("--root")
        .arg(dir.path())
        .arg("ioreg")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("no daemon is running at"), "{err}");
    assert!(err.contains("driverkit run"), "{err}");
}

#[test]
fn bad_device_files_and_ids_are_refused_with_the_reason() {
    let d = Daemon::start(&["--no-embedded", "--no-default-devices"]);
    let f = device_file(
        d.root.path(),
        "bad.toml",
        "name = \"X\"\nclass = \"IOFluxCapacitor\"\n",
    );
    let out = Command::new(EXE)
        .arg("--root")
        .arg(d.state())
        .args(["device", "plug", &f])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("bad.toml: key class: \"IOFluxCapacitor\" is not a system service class"),
        "{err}"
    );
    let out = Command::new(EXE)
        .arg("--root")
        .arg(d.state())
        .args(["device", "unplug", "0x123"])
        .output()
        .unwrap();
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("no plugged device with id 0x123"));
    // A second daemon on the same root is refused.
    let out = Command::new(EXE)
        .arg("--root")
        .arg(d.state())
        .arg("run")
        .output()
        .unwrap();
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("already runs at"));
    // The daemon is still fine.
    assert!(d.cli(&["device", "list"]).starts_with("ID"));
}

#[test]
fn ioreg_archive_and_filters() {
    let d = Daemon::start(&[]);
    d.wait_node("VirtualSensorDriver active", |n| {
        n["name"] == "VirtualSensorDriver" && n["state"]["active"] == true
    });
    let xml = d.cli(&["ioreg", "-a"]);
    let v = plist::Value::from_reader_xml(xml.as_bytes()).unwrap();
    let root = v.as_dictionary().unwrap();
    assert_eq!(root["IORegistryEntryName"].as_string(), Some("Root"));
    assert!(root["IORegistryEntryChildren"].as_array().is_some());
    let rooted = d.cli(&["ioreg", "-r", "-n", "VirtualSensor"]);
    assert!(
        rooted.starts_with("+-o VirtualSensor  <class IOVirtualDevice"),
        "{rooted}"
    );
    assert!(
        rooted.contains("\"SensorKind\" = \"thermometer\""),
        "{rooted}"
    );
    assert!(!rooted.contains("NullDriver"), "{rooted}");
    let by_class = d.cli(&["ioreg", "-r", "-c", "IOUserResources", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&by_class).unwrap();
    assert_eq!(v[0]["name"], "IOUserResources");
    // IDs in the same hex form as the text output's.
    let id = v[0]["id"].as_str().expect("a hex ID string");
    assert!(
        d.cli(&["ioreg"])
            .contains(&format!("<class IOUserResources, id {id},")),
        "{id}"
    );
    // A filter matching nothing prints nothing and fails, as grep does.
    for args in [
        &["ioreg", "-c", "NoSuchClass"][..],
        &["ioreg", "-n", "NoSuchName"],
        &["ioreg", "-r", "-c", "NoSuchClass", "--json"],
    ] {
        let out = d.run_cli(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{args:?}");
    }
}

/// `--repeat N`: each figure once, as the median of N runs with their
/// spread, judged on the medians.
#[test]
fn bench_repeat_reports_the_median_of_the_runs() {
    let out = Command::new(EXE)
        .args([
            "bench",
            "--quick",
            "--json",
            "--only",
            "data_queue_16B",
            "--repeat",
            "3",
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert_eq!(said.matches("bench: run ").count(), 3, "{said}");
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Two figures of that name (two baselines), each summarized once.
    assert_eq!(lines.len(), 2, "{lines:?}");
    for l in &lines {
        assert_eq!(l["bench"], "data_queue_16B");
        assert_eq!(l["runs"], 3);
        let (lo, mid, hi) = (
            l["min"].as_f64().unwrap(),
            l["median"].as_f64().unwrap(),
            l["max"].as_f64().unwrap(),
        );
        assert!(lo <= mid && mid <= hi, "{l}");
        assert_eq!(l["ratios"].as_array().unwrap().len(), 3, "{l}");
    }
    assert_ne!(lines[0]["baseline"], lines[1]["baseline"]);
}

#[test]
fn bench_quick_reports_every_figure_beside_its_baseline() {
    let out = Command::new(EXE)
        .args(["bench", "--quick", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut names: Vec<&str> = lines.iter().map(|l| l["bench"].as_str().unwrap()).collect();
    // Beside the same spawn without a cgroup, where the daemon can make
    // cgroups (root on a cgroup v2 machine); nowhere else.
    let cgroup = names.iter().position(|n| *n == "spawn_to_start_cgroup");
    assert_eq!(
        cgroup.is_some(),
        driverkit_core::sandbox::cgroups_available(),
        "{names:?}"
    );
    if let Some(i) = cgroup {
        names.remove(i);
    }
    assert_eq!(
        names,
        [
            "rpc_roundtrip",
            "rpc_roundtrip",
            "rpc_roundtrip_cold",
            "userclient_scalar_roundtrip",
            "userclient_scalar_roundtrip",
            "userclient_scalar_roundtrip_c",
            "userclient_scalar_roundtrip_idle",
            "spawn_to_start",
            "spawn_to_start_sandboxed",
            "match_per_device_1k",
            "match_per_device_10k",
            "match_per_device_100k",
            "dext_rss",
            "daemon_rss",
            "daemon_threads_102_dexts",
            "daemon_threads_peak_102_dexts",
            "daemon_fds_102_dexts",
            "daemon_rss_102_dexts",
            "idle_cpu_dext",
            "idle_cpu_daemon",
            "data_queue_16B",
            "data_queue_16B",
            "data_queue_4KiB",
            "data_queue_4KiB",
            "timer_lateness",
            "hid_report_latency",
            "hid_report_latency",
            "hid_report_latency",
            "hid_report_latency",
            "hid_report_latency_idle",
            "hid_report_latency_idle",
            "hid_reports_per_sec",
            "hid_reports_per_sec_recorded",
            "usbip_control_roundtrip",
            "usbip_control_roundtrip_recorded",
            "serial_throughput",
            "serial_byte_latency",
            "net_throughput",
            "net_packets_per_sec",
            "net_latency",
            "pci_register_read_call",
            "pci_register_read_mapped",
            "pci_interrupt_latency",
            "hid_descriptor_parse"
        ]
    );
    let baselines: Vec<&str> = lines
        .iter()
        .map(|l| l["baseline"].as_str().unwrap())
        .collect();
    assert_eq!(baselines[..2], ["raw_seqpacket", "raw_spin_shm"]);
    for l in &lines {
        // CPU shares of idle processes may well be zero.
        let idle = l["unit"] == "%core";
        // Each figure's keys say what it is: percentiles of many samples,
        // the median and lowest of a few runs, or one value.
        let keys: &[&str] = if l.get("p50").is_some() {
            &["p50", "p99", "baseline_p50", "baseline_p99"]
        } else if l.get("median").is_some() {
            &["median", "lowest", "baseline_median", "baseline_lowest"]
        } else {
            &["value", "baseline_value"]
        };
        for k in keys {
            assert!(
                l[k].as_f64().is_some_and(|x| x > 0.0 || (idle && x == 0.0)),
                "{k} in {l}"
            );
        }
        if let Some(met) = l.get("met") {
            assert!(met.is_boolean() && l["target"].is_string(), "{l}");
        }
    }
}

#[test]
fn hid_decode_prints_a_descriptor_as_json_and_refuses_a_broken_one() {
    let keyboard = "05 01 09 06 a1 01 05 07 19 e0 29 e7 15 00 25 01 75 01 95 08 81 02 c0";
    let out = Command::new(EXE)
        .args(["hid", "decode", keyboard, "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["collections"][0]["usage"], 6);
    assert_eq!(v["elements"][0]["usages"][0], 0x0007_00E0);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("report_descriptor");
    std::fs::write(&file, [0x05u8, 0x01, 0xb4]).unwrap();
    let out = Command::new(EXE)
        .args(["hid", "decode"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("at offset 2: pop without a matching push"),
        "{err}"
    );
}

#[test]
fn completions_and_man_pages_come_from_the_command_line_definitions() {
    let out = Command::new(EXE)
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let script = String::from_utf8(out.stdout).unwrap();
    for sub in ["ioreg", "device", "sysext", "export"] {
        assert!(script.contains(sub), "the bash completion knows {sub}");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(EXE)
        .arg("man")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    // In man1/, where man(1) looks under a MANPATH directory.
    let page = std::fs::read_to_string(dir.path().join("man1/driverkit-device-export.1")).unwrap();
    assert!(page.contains(".TH"), "a roff man page");
    assert!(page.contains("listen"), "with its options");
}

#[test]
fn run_with_a_bundle_it_will_not_load_fails_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let stray = dir.path().join("Stray.dext");
    std::fs::create_dir_all(&stray).unwrap();
    let out = Command::new(EXE)
        .arg("--root")
        .arg(dir.path().join("state"))
        .args([
            "run",
            "--no-default-devices",
            "--no-linux-usb",
            "--no-uinput",
            "--bundle",
        ])
        .arg(&stray)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the daemon started without its bundle"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--bundle") && err.contains("SystemExtensions"),
        "{err}"
    );
}

#[test]
fn a_client_whose_output_closed_ends_by_sigpipe_without_a_panic() {
    use std::os::unix::process::ExitStatusExt;
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(EXE)
        .args(["completions", "bash"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// What people read (answers, refusals, errors) is words, never Rust's
/// debug formatting or a bare errno: a snapshot of the commands a
/// newcomer's first hour runs into, right and wrong.
#[test]
fn user_facing_messages_carry_no_rust_debug_text() {
    const DEBUG_TEXT: [&str; 5] = ["Some(", "{ ", "Ok(", "Err(", "os error"];
    let check = |what: &str, out: &std::process::Output| {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!text.trim().is_empty(), "{what}: said nothing");
        for bad in DEBUG_TEXT {
            assert!(!text.contains(bad), "{what}: {bad:?} in\n{text}");
        }
        text
    };
    // No daemon yet.
    let nowhere = tempfile::tempdir().unwrap();
    for args in [&["status"][..], &["ioreg"], &["call", "NullDriver", "0"]] {
        let out = Command::new(EXE)
            .arg("--root")
            .arg(nowhere.path())
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success());
        check(&format!("{args:?} without a daemon"), &out);
    }
    // The README's default daemon.
    let d = Daemon::start(&[]);
    d.wait_node("NullDriver", |n| {
        n["name"] == "NullDriver" && n["state"]["active"] == true
    });
    d.wait_node("VirtualSensorDriver", |n| {
        n["name"] == "VirtualSensorDriver" && n["state"]["registered"] == true
    });
    let broken = nowhere.path().join("Broken.dext");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(
        broken.join("Info.plist"),
        "<?xml version=\"1.0\"?>\n<plist version=\"1.0\">\n<dict>\n<key>A</key>\n<strin>x</string>\n</dict>\n</plist>\n",
    )
    .unwrap();
    let cases: [(&[&str], bool); 18] = [
        (&["status"], true),
        (&["device", "list"], true),
        (&["sysext", "list"], true),
        (&["why", "NullDriver"], true),
        (
            &[
                "call",
                "NullDriver",
                "0",
                "--scalar",
                "2",
                "--scalar",
                "40",
                "--scalar-out",
                "1",
            ],
            true,
        ),
        (
            &[
                "hid",
                "decode",
                "05 01 09 06 a1 01 05 07 19 e0 29 e7 15 00 25 01 75 01 95 08 81 02 c0",
            ],
            true,
        ),
        (
            &[
                "call",
                "NullDriver",
                "0",
                "--scalar",
                "1",
                "--scalar-out",
                "1",
            ],
            false,
        ),
        (&["call", "NullDriver", "9"], false),
        (&["call", "VirtualSensorDriver", "0"], false),
        (&["sysext", "approve", "com.example.Nope"], false),
        (&["sysext", "deactivate", "com.example.Nope"], false),
        (&["device", "unplug", "0x999"], false),
        (&["why", "0x999"], false),
        (&["device", "plug", "/nonexistent"], false),
        (&["serial", "get", "0x999"], false),
        (&["hid", "decode", "05 01 c0"], false),
        (&["validate", broken.to_str().unwrap()], false),
        (&["load", "/nonexistent/X.dext"], false),
    ];
    for (args, succeeds) in cases {
        let out = d.run_cli(args);
        assert_eq!(out.status.success(), succeeds, "{args:?}: {out:?}");
        let text = check(&format!("{args:?}"), &out);
        if args
            == [
                "call",
                "NullDriver",
                "0",
                "--scalar",
                "1",
                "--scalar-out",
                "1",
            ]
        {
            // What the method expects, from the driver itself.
            assert!(text.contains("selector 0 expects 2 scalar in"), "{text}");
        }
        if args[0] == "validate" {
            assert!(text.contains("line 5, column"), "{text}");
        }
        if args == ["call", "VirtualSensorDriver", "0"] {
            assert!(
                text.contains("is not in an app, so nothing entitles it"),
                "{text}"
            );
        }
    }
    // And the daemon's own log after all that (what journalctl shows).
    let log = d.log();
    assert!(log.contains("ready"), "{log}");
    for bad in DEBUG_TEXT {
        assert!(!log.contains(bad), "the daemon's log: {bad:?} in\n{log}");
    }
}

/// The systemd unit as shipped (its ExecStart pointed at this build)
/// passes `systemd-analyze verify` with nothing to say, its man page
/// included.
#[test]
fn the_systemd_unit_verifies_clean() {
    let dir = tempfile::tempdir().unwrap();
    let man = dir.path().join("man");
    let made = Command::new(EXE).arg("man").arg(&man).output().unwrap();
    assert!(made.status.success());
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../contrib/systemd/driverkitd.service"),
    )
    .unwrap();
    assert!(
        unit.contains("ExecStart=/usr/local/bin/driverkit "),
        "{unit}"
    );
    let file = dir.path().join("driverkitd.service");
    std::fs::write(&file, unit.replace("/usr/local/bin/driverkit", EXE)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&file)
        .env("MANPATH", &man)
        .output()
        .expect("systemd-analyze (apt install systemd)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && !said.contains("driverkitd.service"),
        "{said}"
    );
}

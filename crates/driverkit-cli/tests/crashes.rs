//! A dext that panics, aborts or is killed never takes the daemon down.

mod support;

use support::*;

fn crashing(behavior: &str, signal_text: &str) {
    let d = Daemon::start(&[
        "--no-embedded",
        "--no-default-devices",
        "--relaunch-limit",
        "2",
        "--relaunch-backoff-ms",
        "20",
    ]);
    start_behaving(&d, "org.test.Crash", "Crasher", behavior);
    d.wait_log("giving up org.test.Crash/Crasher", 1);
    let log = d.log();
    // One launch and two relaunches, then no more.
    assert_eq!(
        log.matches("launch   org.test.Crash pid").count(),
        3,
        "{log}"
    );
    assert_eq!(
        log.matches("crash    org.test.Crash pid").count(),
        3,
        "{log}"
    );
    assert!(
        log.contains(signal_text),
        "expected {signal_text:?}:\n{log}"
    );
    assert!(
        log.contains("client_crashed: T ["),
        "the provider is told:\n{log}"
    );
    assert!(
        log.contains("relaunch org.test.Crash/Crasher in 20 ms (relaunch 1 of 2)"),
        "{log}"
    );
    assert!(
        log.contains("relaunch org.test.Crash/Crasher in 40 ms (relaunch 2 of 2)"),
        "backoff doubles:\n{log}"
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        d.log().matches("launch   org.test.Crash pid").count(),
        3,
        "not tried again"
    );
    // The daemon is fine and its registry consistent.
    let nodes = d.nodes();
    assert!(
        nodes.iter().all(|n| n["name"] != "TestDriver"),
        "crashed services are removed"
    );
    let device = nodes.iter().find(|n| n["name"] == "T").unwrap();
    assert_eq!(device["state"]["active"], true);
    d.interrupt();
}

#[test]
fn a_panic_in_start_is_contained_and_relaunches_stop_at_the_limit() {
    crashing("panic", "exited with status 101");
}

#[test]
fn an_abort_in_start_is_contained() {
    crashing("abort", "killed by signal 6 SIGABRT");
}

#[test]
fn a_sigkill_during_start_is_contained() {
    crashing("kill-self", "killed by signal 9 SIGKILL");
}

#[test]
fn killed_from_outside_during_start_then_relaunched() {
    let d = Daemon::start(&[
        "--no-embedded",
        "--no-default-devices",
        "--relaunch-backoff-ms",
        "20",
    ]);
    let dir = d.root.path().to_owned();
    let bundle = test_bundle(
        &dir,
        "org.test.Slow",
        &[P {
            name: "Slow",
            provider_class: "IOVirtualDevice",
            extra: "<key>IOPropertyMatch</key><dict><key>TestDevice</key><true/></dict>\
                    <key>TestStartDelayMs</key><integer>1500</integer>",
        }],
    );
    d.load(&bundle);
    plug_test_device(&d);
    // TestDriverPID is published before Start sleeps: Start is running.
    let starting = d.wait_node("a TestDriver in Start", |n| {
        n["properties"]["TestDriverPID"].is_u64()
    });
    assert_eq!(starting["state"]["active"], false, "Start has not returned");
    let first = starting["properties"]["TestDriverPID"].as_u64().unwrap();
    kill9(first);
    d.wait_log(
        &format!("crash    org.test.Slow pid {first}: killed by signal 9 SIGKILL"),
        1,
    );
    let relaunched = d.wait_node("the relaunched TestDriver active", |n| {
        n["name"] == "TestDriver" && n["state"]["active"] == true
    });
    assert_ne!(relaunched["pid"].as_u64().unwrap(), first);
    assert!(!alive(first));
    d.interrupt();
}

#[test]
fn a_hung_start_is_killed_after_the_call_timeout() {
    let d = Daemon::start(&[
        "--no-embedded",
        "--no-default-devices",
        "--relaunch-limit",
        "0",
        "--call-timeout-ms",
        "2000",
    ]);
    start_behaving(&d, "org.test.Hang", "Hang", "hang");
    d.wait_log("giving up org.test.Hang/Hang", 1);
    let log = d.log();
    assert!(
        log.contains("did not answer IOService::start within 2s; killing it as hung"),
        "{log}"
    );
    d.interrupt();
}

/// The socket inodes a process holds open (stdout and stderr share one).
fn sockets_of(pid: u64) -> std::collections::BTreeSet<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Default::default();
    };
    dir.flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// The defect a crash campaign found: killing every dext at once, round
/// after round, left one dext's daemon socket open in two dext processes.
/// Every dext must hold only sockets no other dext holds, however the
/// relaunches interleave.
#[test]
fn killing_every_dext_at_once_never_hands_one_dext_anothers_socket() {
    let d = Daemon::start(&[
        "--relaunch-limit",
        "1000000",
        "--relaunch-backoff-ms",
        "1",
        "--no-default-devices",
        "--device",
        "sensor",
        "--device",
        "keyboard",
    ]);
    let running = |d: &Daemon| -> Vec<u64> {
        d.nodes()
            .iter()
            .filter(|n| n["state"]["active"] == true)
            .filter_map(|n| n["pid"].as_u64())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    d.wait_until("four example dexts", || running(&d).len() == 4);
    for round in 0..8 {
        let pids = running(&d);
        for pid in &pids {
            kill9(*pid);
        }
        d.wait_until(&format!("round {round}: four new dexts"), || {
            let now = running(&d);
            now.len() == 4 && now.iter().all(|p| !pids.contains(p) && alive(*p))
        });
        let mut seen = std::collections::HashMap::new();
        for pid in running(&d) {
            for inode in sockets_of(pid) {
                if let Some(other) = seen.insert(inode, pid) {
                    panic!("round {round}: socket {inode} is open in dexts {other} and {pid}");
                }
            }
        }
    }
}

/// A dext that writes a megabyte without a newline and bytes that are not
/// UTF-8: its log is cut into bounded lines, shown with U+FFFD, and goes
/// on; the dext is not blocked on a log nobody reads.
#[test]
fn a_dext_spewing_garbage_on_stderr_is_logged_in_bounded_lines_and_goes_on() {
    let d = Daemon::start(&["--no-embedded", "--no-default-devices"]);
    start_behaving(&d, "org.test.Spew", "Spewer", "spew");
    d.wait_log("after the spew", 1);
    d.wait_node("the spewer started", |n| {
        n["name"] == "TestDriver" && n["state"]["active"] == true
    });
    let log = d.log();
    assert!(
        log.contains('\u{fffd}'),
        "invalid UTF-8 is shown, not a stop"
    );
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 4096 + 200, "a log line of {longest} bytes");
    let pieces = log.lines().filter(|l| l.contains("yyyyyyyy")).count();
    assert!(
        pieces >= (1 << 20) / 4096,
        "the megabyte arrives, in {pieces} pieces"
    );
}

/// A driver that crashes again only after a quiet period starts counting
/// afresh (UMDF's policy): with a limit of one relaunch, two crashes far
/// apart are two first crashes, and ioreg shows the count on the provider.
#[test]
fn crashes_far_apart_are_each_a_first_crash() {
    let d = Daemon::start(&[
        "--no-embedded",
        "--no-default-devices",
        "--relaunch-limit",
        "1",
        "--relaunch-backoff-ms",
        "10",
        "--relaunch-quiet-s",
        "1",
    ]);
    let dir = d.root.path().to_owned();
    let bundle = test_bundle(
        &dir,
        "org.test.Quiet",
        &[P {
            name: "Quiet",
            provider_class: "IOVirtualDevice",
            extra: "<key>IOPropertyMatch</key><dict><key>TestDevice</key><true/></dict>",
        }],
    );
    d.load(&bundle);
    let device = plug_test_device(&d);
    let mut last = 0;
    for round in 0..2 {
        let driver = d.wait_node("the driver running", |n| {
            n["name"] == "TestDriver"
                && n["state"]["active"] == true
                && n["pid"].as_u64().is_some_and(|p| p != last)
        });
        last = driver["pid"].as_u64().unwrap();
        if round == 1 {
            break;
        }
        kill9(last);
        // Quiet for longer than --relaunch-quiet-s.
        d.wait_log("relaunch org.test.Quiet/Quiet", 1);
        std::thread::sleep(std::time::Duration::from_millis(1500));
    }
    kill9(last);
    d.wait_log("relaunch org.test.Quiet/Quiet", 2);
    let log = d.log();
    assert!(!log.contains("giving up org.test.Quiet"), "{log}");
    assert_eq!(
        log.matches("(relaunch 1 of 1)").count(),
        2,
        "each crash counted as a first one:\n{log}"
    );
    let provider = d
        .nodes()
        .into_iter()
        .find(|n| n["id"] == device)
        .expect("the device");
    let record = &provider["properties"]["DriverKitCrashes"]["org.test.Quiet/Quiet"];
    assert_eq!(record["Crashes"], 1, "{provider}");
    assert_eq!(record["GivenUp"], false);
    assert!(
        record["LastReason"].as_str().unwrap().contains("SIGKILL"),
        "{record}"
    );
}

/// A dext registering more shared memory than the system gives one dext:
/// its call fails with kIOReturnNoResources and the log names the limit.
#[test]
fn a_dext_past_its_memory_limit_gets_no_resources_and_the_limit_is_named() {
    let d = Daemon::start(&["--no-embedded", "--no-default-devices"]);
    start_behaving(&d, "org.test.Hog", "Hog", "hog");
    let driver = d.wait_node("the hog started", |n| {
        n["name"] == "TestDriver" && n["state"]["active"] == true
    });
    assert_eq!(
        driver["properties"]["TestHogStatus"], "ok,kIOReturnNoResources",
        "{driver}"
    );
    d.wait_log("limit    ", 1);
    assert!(d.log().contains("registered memory past"), "{}", d.log());
}

/// A dext gets none of the daemon's environment: only the runtime's own
/// variables and its log filter.
#[test]
fn a_dext_inherits_nothing_of_the_daemons_environment() {
    let d = Daemon::start_with_env(
        &["--no-default-devices"],
        &[
            ("DRIVERKIT_TEST_SECRET", "hunter2"),
            ("RUST_BACKTRACE", "1"),
        ],
    );
    let driver = d.wait_node("NullDriver running", |n| {
        n["name"] == "NullDriver" && n["state"]["active"] == true
    });
    let pid = driver["pid"].as_u64().unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let mut names: Vec<String> = environ
        .split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| {
            let v = String::from_utf8_lossy(v);
            v.split('=').next().unwrap_or_default().to_owned()
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "DRIVERKIT_LOG",
            "DRIVERKIT_SERVER_FD",
            "NO_COLOR",
            "RUST_BACKTRACE"
        ],
        "the daemon's own environment held DRIVERKIT_TEST_SECRET"
    );
}

/// A dext that opens more call channels than the system serves: the ones
/// past the limit are closed (their calls fail), the log names the limit,
/// and the daemon is none the worse.
#[test]
fn call_channels_past_the_limit_are_refused_and_named() {
    let d = Daemon::start(&["--no-embedded", "--no-default-devices"]);
    start_behaving(&d, "org.test.Channels", "Channels", "channels");
    let driver = d.wait_node("the TestDriver with its channel count", |n| {
        n["name"] == "TestDriver" && n["properties"]["TestChannelCalls"].is_u64()
    });
    let ok = driver["properties"]["TestChannelCalls"].as_u64().unwrap();
    // Start's own thread holds one channel; 255 more are served.
    assert_eq!(ok, 255, "{driver}");
    d.wait_log("limit    org.test.Channels", 1);
    assert!(d.log().contains("past 256 call channels"), "{}", d.log());
    let threads = d.threads();
    assert!(threads < 256 + 64, "the daemon holds {threads} threads");
    d.interrupt();
}

/// A dext that floods its main socket with calls (not on a channel): the
/// system answers them in order on one worker, so the daemon's threads stay
/// few, and it answers the dext's next call on a channel as before.
#[test]
fn calls_flooding_the_main_socket_hold_one_worker() {
    let d = Daemon::start(&["--no-embedded", "--no-default-devices"]);
    start_behaving(&d, "org.test.Flood", "Flood", "socket-flood");
    let driver = d.wait_node("the TestDriver with its flood count", |n| {
        n["name"] == "TestDriver" && n["properties"]["TestSocketFlood"].is_u64()
    });
    let sent = driver["properties"]["TestSocketFlood"].as_u64().unwrap();
    assert_eq!(sent, 20_000, "{driver}");
    let threads = d.threads();
    assert!(threads < 40, "the daemon holds {threads} threads");
    d.interrupt();
}

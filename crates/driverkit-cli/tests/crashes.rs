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
    let dir = d.root.path().to_owned();
    let bundle = test_bundle(
        &dir,
        "org.test.Crash",
        &[P {
            name: "Crasher",
            provider_class: "IOVirtualDevice",
            extra: &format!(
                "<key>IOPropertyMatch</key><dict><key>TestDevice</key><true/></dict>\
                 <key>TestStartBehavior</key><string>{behavior}</string>"
            ),
        }],
    );
    d.cli(&["load", bundle.to_str().unwrap()]);
    plug_test_device(&d);
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
    d.cli(&["load", bundle.to_str().unwrap()]);
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
    let dir = d.root.path().to_owned();
    let bundle = test_bundle(
        &dir,
        "org.test.Hang",
        &[P {
            name: "Hang",
            provider_class: "IOVirtualDevice",
            extra: "<key>IOPropertyMatch</key><dict><key>TestDevice</key><true/></dict>\
                    <key>TestStartBehavior</key><string>hang</string>",
        }],
    );
    d.cli(&["load", bundle.to_str().unwrap()]);
    plug_test_device(&d);
    d.wait_log("giving up org.test.Hang/Hang", 1);
    let log = d.log();
    assert!(
        log.contains("did not answer IOService::start within 2s; killing it as hung"),
        "{log}"
    );
    d.interrupt();
}

//! User clients end to end: this test process is the app. It finds
//! NullDriver, opens its user client through the daemon and calls it over
//! the direct connection: every call shape, the argument checks, an app
//! killed with a call pending, a driver killed during a call, and opens
//! refused and allowed by entitlements.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use driverkit_app::iokit::*;
use driverkit_app::System;
use driverkit_wire::IOReturn;
use null_driver::selector;
use support::*;

fn null_driver(d: &Daemon) -> (System, IOService) {
    let node = d.wait_node("NullDriver active", |n| {
        n["name"] == "NullDriver" && n["state"]["active"] == true
    });
    (System::at(d.state()), node["id"].as_u64().unwrap())
}

#[test]
fn every_call_shape_reaches_the_driver_directly() {
    let d = Daemon::start(&["--no-default-devices"]);
    let (system, service) = null_driver(&d);
    assert_eq!(
        io_service_get_matching_services(&system, &Matching::name("NullDriver")).unwrap(),
        [service]
    );
    assert_eq!(
        io_service_get_matching_services(
            &system,
            &Matching::class("IOService").property("NullDriverGreeting", "Hello from a dext")
        )
        .unwrap(),
        [service]
    );
    let props = io_registry_entry_properties(&system, service).unwrap();
    assert_eq!(
        props["NullDriverGreeting"].as_string(),
        Some("Hello from a dext")
    );

    let c = io_service_open(&system, service, 0).unwrap();
    // The user client is in the registry, under the service.
    let uc = d.wait_node("the user client", |n| n["name"] == "NullDriverUserClient");
    assert_eq!(uc["id"].as_u64(), Some(c.user_client()));
    assert_eq!(uc["class"], "IOUserUserClient");

    // Scalars.
    assert_eq!(
        c.call_scalar_method(selector::ADD, &[2, 40], 1).unwrap(),
        [42]
    );
    // Structures.
    assert_eq!(
        c.call_struct_method(selector::REVERSE, b"driverkit", 64)
            .unwrap(),
        b"tikrevird"
    );
    // A large structure goes as shared memory.
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let sum: u64 = big.iter().map(|b| u64::from(*b)).sum();
    let (out, _) = c.call_method(selector::CHECKSUM, &[], &big, 2, 0).unwrap();
    assert_eq!(out, [sum, big.len() as u64]);
    // Asynchronous: the completion carries the driver's values.
    let (tx, rx) = std::sync::mpsc::channel();
    c.call_async_method(
        selector::DOUBLE_LATER,
        &[21, 20],
        &[],
        0,
        0,
        move |status, values| {
            tx.send((status, values)).unwrap();
        },
    )
    .unwrap();
    let (status, values) = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!((status, values), (IOReturn::SUCCESS, vec![42]));
    // Shared memory the driver provides, read-write and read-only.
    let mut rw = c.map_memory(null_driver::GREETING_MEMORY, false).unwrap();
    let mut greeting = vec![0; null_driver::GREETING.len()];
    rw.read(0, &mut greeting).unwrap();
    assert_eq!(greeting, null_driver::GREETING);
    rw.write(100, b"app was here").unwrap();
    let mut ro = c.map_memory(null_driver::GREETING_MEMORY, true).unwrap();
    let mut seen = [0u8; 12];
    ro.read(100, &mut seen).unwrap();
    assert_eq!(&seen, b"app was here", "the same memory");
    assert_eq!(ro.write(0, b"x"), Err(IOReturn::NOT_PERMITTED));
    assert!(ro.len() >= 4096);

    // Closing stops the user client.
    let id = c.user_client();
    c.close();
    d.wait_until("the user client leaves", || {
        !d.nodes().iter().any(|n| n["id"].as_u64() == Some(id))
    });
}

#[test]
fn calls_that_do_not_fit_the_method_table_are_bad_arguments() {
    let d = Daemon::start(&["--no-default-devices"]);
    let (system, service) = null_driver(&d);
    // NullDriver's NewUserClient refuses types other than 0.
    assert_eq!(
        io_service_open(&system, service, 7).map(drop).err(),
        Some(IOReturn::UNSUPPORTED)
    );
    let c = io_service_open(&system, service, 0).unwrap();
    let bad = Some(IOReturn::BAD_ARGUMENT);
    // Too few scalars, too many expected back, an unknown selector.
    assert_eq!(c.call_scalar_method(selector::ADD, &[1], 1).err(), bad);
    assert_eq!(c.call_scalar_method(selector::ADD, &[1, 2], 2).err(), bad);
    assert_eq!(c.call_scalar_method(99, &[], 0).err(), bad);
    // The driver's log says what the method expects and what came.
    d.wait_log(
        "selector 0 expects 2 scalar in, 1 scalar out, structure in 0 bytes, structure out 0 bytes, no completion; the call had 1 scalar in",
        1,
    );
    d.wait_log("selector 99 is not in the dispatch table", 1);
    // A structure where the method takes none.
    assert_eq!(
        c.call_method(selector::ADD, &[1, 2], b"x", 1, 0)
            .map(drop)
            .err(),
        bad
    );
    // An asynchronous method called synchronously, and the reverse.
    assert_eq!(
        c.call_scalar_method(selector::DOUBLE_LATER, &[1, 1], 0)
            .err(),
        bad
    );
    assert_eq!(
        c.call_async_method(selector::ADD, &[1, 2], &[], 1, 0, |_, _| ())
            .map(drop)
            .err(),
        bad
    );
    // An output larger than the app accepts.
    assert_eq!(
        c.call_struct_method(selector::REVERSE, b"abcdef", 3).err(),
        bad
    );
    // More than 16 scalars never leave the app.
    assert_eq!(c.call_scalar_method(selector::ADD, &[0; 17], 1).err(), bad);
    // The connection still works.
    assert_eq!(
        c.call_scalar_method(selector::ADD, &[1, 2], 1).unwrap(),
        [3]
    );
}

#[test]
fn an_app_killed_with_a_call_pending_releases_it_in_the_driver() {
    let d = Daemon::start(&["--no-default-devices"]);
    null_driver(&d);
    // Another process is the app: an asynchronous call due in a minute.
    let mut app = Command::new(EXE)
        .arg("--root")
        .arg(d.state())
        .args([
            "call",
            "NullDriver",
            "2",
            "--scalar",
            "1",
            "--scalar",
            "60000",
            "--async",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let uc = d.wait_node("the app's user client", |n| {
        n["name"] == "NullDriverUserClient"
    });
    d.wait_until("the call is pending in the driver", || {
        d.log().contains("an app opened NullDriver")
    });
    // Give the call time to reach the driver, then kill the app.
    std::thread::sleep(Duration::from_millis(300));
    app.kill().unwrap();
    app.wait().unwrap();
    d.wait_until("the user client leaves", || {
        !d.nodes().iter().any(|n| n["id"] == uc["id"])
    });
    d.wait_until("the driver released the pending completion", || {
        d.log()
            .contains("the app is gone; released 1 pending completion(s)")
    });
    // The driver still serves other apps.
    let (system, service) = null_driver(&d);
    let c = io_service_open(&system, service, 0).unwrap();
    assert_eq!(
        c.call_scalar_method(selector::ADD, &[1, 1], 1).unwrap(),
        [2]
    );
}

#[test]
fn a_driver_killed_during_a_call_fails_the_call_instead_of_hanging() {
    let d = Daemon::start(&["--no-default-devices"]);
    let (system, service) = null_driver(&d);
    let c = io_service_open(&system, service, 0).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    c.call_async_method(
        selector::DOUBLE_LATER,
        &[1, 60_000],
        &[],
        0,
        0,
        move |status, _| {
            tx.send(status).unwrap();
        },
    )
    .unwrap();
    let pid = d
        .nodes()
        .into_iter()
        .find(|n| n["name"] == "NullDriver")
        .unwrap()["pid"]
        .as_u64()
        .unwrap();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        kill9(pid);
    });
    // A slow synchronous call is in progress when the driver dies.
    let slow = c.call_scalar_method(selector::DELAY, &[10_000], 0);
    killer.join().unwrap();
    assert_eq!(slow, Err(IOReturn::NOT_RESPONDING));
    // The pending asynchronous call completes as aborted.
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(30)).unwrap(),
        IOReturn::ABORTED
    );
    assert_eq!(
        c.call_scalar_method(selector::ADD, &[1, 1], 1),
        Err(IOReturn::NOT_RESPONDING)
    );
}

/// NullDriver in `Shipped.app`, entitled to nothing beyond being a driver:
/// only an app that names it may open it.
fn strict_null_driver(dir: &Path) -> PathBuf {
    let dext =
        dir.join("Shipped.app/Contents/Library/SystemExtensions/com.example.NullDriver.dext");
    std::fs::create_dir_all(&dext).unwrap();
    std::fs::write(dext.join("Info.plist"), null_driver::INFO_PLIST).unwrap();
    std::fs::write(
        dext.join("Entitlements.plist"),
        r#"<plist version="1.0"><dict><key>com.apple.developer.driverkit</key><true/></dict></plist>"#,
    )
    .unwrap();
    let exe = dext.join("NullDriver");
    std::fs::write(
        &exe,
        format!("#!/bin/bash\nexec -a NullDriver {EXE} \"$@\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    dext
}

/// A copy of the `driverkit` binary as the executable of `NAME.app`, whose
/// entitlements name `access`.
fn app_binary(dir: &Path, name: &str, access: &[&str]) -> PathBuf {
    let contents = dir.join(format!("{name}.app/Contents"));
    std::fs::create_dir_all(contents.join("MacOS")).unwrap();
    let ids: String = access
        .iter()
        .map(|a| format!("<string>{a}</string>"))
        .collect();
    std::fs::write(
        contents.join("Entitlements.plist"),
        format!(
            r#"<plist version="1.0"><dict><key>com.apple.developer.driverkit.userclient-access</key><array>{ids}</array></dict></plist>"#
        ),
    )
    .unwrap();
    let exe = contents.join("MacOS/driverkit");
    std::fs::copy(EXE, &exe).unwrap();
    exe
}

#[test]
fn only_an_entitled_app_may_open_a_driver_that_does_not_admit_any() {
    // The dext's executable is a script wrapping this binary, which only
    // an unsandboxed daemon runs; this test is about entitlements.
    let d = Daemon::start(&["--no-embedded", "--no-default-devices", "--sandbox=off"]);
    let dir = d.root.path().join("apps");
    let dext = strict_null_driver(&dir);
    d.load(&dext);
    null_driver(&d);
    let call = |exe: &Path| {
        Command::new(exe)
            .arg("--root")
            .arg(d.state())
            .args([
                "call",
                "NullDriver",
                "0",
                "--scalar",
                "20",
                "--scalar",
                "22",
                "--scalar-out",
                "1",
            ])
            .output()
            .unwrap()
    };
    // Not an app, and an app that names another driver: refused.
    for exe in [
        PathBuf::from(EXE),
        app_binary(&dir, "Other", &["com.example.Else"]),
    ] {
        let out = call(&exe);
        assert!(!out.status.success());
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(
            e.contains("kIOReturnNotPermitted"),
            "{}: {e}",
            exe.display()
        );
    }
    assert!(d
        .log()
        .contains("is not entitled to com.example.NullDriver's user clients"));
    // This process is not an app either.
    let (system, service) = null_driver(&d);
    assert_eq!(
        io_service_open(&system, service, 0).map(drop).err(),
        Some(IOReturn::NOT_PERMITTED)
    );
    // The app that names it.
    let out = call(&app_binary(&dir, "Maker", &["com.example.NullDriver"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("scalars: [42]"));

    // Outside developer mode an app's entitlements are only its word: an
    // unsigned app is refused, naming the rule...
    d.cli(&["sysext", "developer", "off"]);
    let maker = app_binary(&dir, "Maker", &["com.example.NullDriver"]);
    let out = call(&maker);
    assert!(!out.status.success());
    d.wait_log(
        "an app's entitlements count only when the app is signed by a trusted key",
        1,
    );
    assert!(d.log().contains("the bundle is not signed"), "{}", d.log());
    // ...and signed by a key the system trusts, it is believed.
    let key = d.root.path().join("app-key");
    d.cli(&["key", "new", key.to_str().unwrap()]);
    let app = maker.parent().unwrap().parent().unwrap().parent().unwrap();
    let signing = driverkit_bundle::signature::SigningKey::load(&key).unwrap();
    driverkit_bundle::signature::sign(app, &signing).unwrap();
    let out = call(&maker);
    assert!(!out.status.success(), "signed by a key not yet trusted");
    d.wait_log("which this system does not trust", 1);
    d.cli(&["sysext", "trust", &format!("{}.pub", key.display())]);
    let out = call(&maker);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("scalars: [42]"));
}

#[test]
fn matching_notifications_report_services_as_they_come_and_go() {
    let d = Daemon::start(&["--no-default-devices"]);
    let system = System::at(d.state());
    let (tx, rx) = std::sync::mpsc::channel();
    let _armed = io_service_add_matching_notification(
        &system,
        Matching::name("VirtualSensorDriver"),
        move |n| {
            let _ = tx.send(n);
        },
    )
    .unwrap();
    let device = d.cli(&["device", "plug", "sensor"]);
    let next = || rx.recv_timeout(Duration::from_secs(30)).unwrap();
    let ServiceNotification::Matched(service) = next() else {
        panic!("expected a match first")
    };
    let props = io_registry_entry_properties(&system, service).unwrap();
    assert_eq!(
        props["IOUserClass"].as_string(),
        Some("VirtualSensorDriver")
    );
    d.cli(&["device", "unplug", device.trim()]);
    assert_eq!(next(), ServiceNotification::Terminated(service));
}

//! User clients end to end: this test process is the app. It finds
//! NullDriver, opens its user client through the daemon and calls it over
//! the direct connection: every call shape, the argument checks, an app
//! killed with a call pending, a driver killed during a call, and opens
//! refused and allowed by entitlements. Then the same from C and Python,
//! through the IOKitLib library (`crates/driverkit-iokit`).

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
    assert!(
        last_call_refusal()
            .is_some_and(|why| why.contains("the call had 2 scalar in, room for 2 scalar out")),
        "the app hears why: {:?}",
        last_call_refusal()
    );
    assert_eq!(c.call_scalar_method(99, &[], 0).err(), bad);
    assert_eq!(
        last_call_refusal().as_deref(),
        Some("selector 99 is not in the driver's dispatch table (it has selectors 0 to 4)")
    );
    // The driver's log says what the method expects and what came.
    d.wait_log(
        "selector 0 expects 2 scalar in, 1 scalar out, structure in 0 bytes, structure out 0 bytes, no completion; the call had 1 scalar in",
        1,
    );
    d.wait_log("selector 99 is not in the driver's dispatch table", 1);
    // A call that succeeds leaves no refusal behind.
    assert_eq!(c.call_scalar_method(selector::ADD, &[1, 2], 1), Ok(vec![3]));
    assert_eq!(last_call_refusal(), None);
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
    app_of(dir, name, access, Path::new(EXE))
}

/// A copy of `program` as the executable of `NAME.app`, whose entitlements
/// name `access`.
fn app_of(dir: &Path, name: &str, access: &[&str], program: &Path) -> PathBuf {
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
    let exe = contents.join("MacOS").join(program.file_name().unwrap());
    std::fs::copy(program, &exe).unwrap();
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
            e.contains("kIOReturnNotPermitted") && e.contains("user clients"),
            "the refusal and why: {}: {e}",
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

/// Where the build left the IOKitLib library (beside this test's binary,
/// or among the dependencies' outputs), and its headers.
fn iokit_library() -> (PathBuf, PathBuf) {
    let profile = Path::new(EXE).parent().unwrap();
    // The newest: a build of this package alone refreshes the one beside
    // the binary, a build of driverkit the dependency's.
    let lib = [profile.to_path_buf(), profile.join("deps")]
        .into_iter()
        .filter_map(|d| {
            let modified = d
                .join("libdriverkit_iokit.so")
                .metadata()
                .ok()?
                .modified()
                .ok()?;
            Some((modified, d))
        })
        .max()
        .expect("libdriverkit_iokit.so is built with driverkit (a dependency)")
        .1;
    let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("../driverkit-iokit/include");
    (lib, include)
}

/// Compiles `examples/NullDriverAppC` against the header, unchanged, as
/// its Makefile does (warnings are errors).
fn null_driver_app_c(dir: &Path) -> PathBuf {
    let (lib, include) = iokit_library();
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/NullDriverAppC/NullDriverAppC.c");
    std::fs::create_dir_all(dir).unwrap();
    let exe = dir.join("NullDriverAppC");
    let out = Command::new("cc")
        .args(["-O1", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&exe)
        .arg(&source)
        .arg("-I")
        .arg(&include)
        .arg("-L")
        .arg(&lib)
        .arg("-ldriverkit_iokit")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .output()
        .expect("cc (apt install build-essential) compiles the C example");
    assert!(
        out.status.success(),
        "cc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

fn run_in(state: &Path, program: &mut Command) -> (bool, String, String) {
    // Cargo's test environment names both library folders; the program
    // gets the one it was linked against.
    let out = program
        .env("DRIVERKIT_ROOT", state)
        .env("LD_LIBRARY_PATH", iokit_library().0)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What NullDriverApp prints, in C and Python alike.
const EVERY_CALL: [&str; 5] = [
    "= 42",
    "REVERSE(\"stressed\")   = \"desserts\"",
    "[1048576, 1048576] (sent as shared memory)",
    "0x00000000 [42] (completed by the driver's timer)",
    "(4096 bytes, read-only) says \"Hello from NullDriver's shared memory\"",
];

#[test]
fn a_c_app_and_a_python_script_make_every_call_through_iokitlib() {
    let d = Daemon::start(&["--no-default-devices"]);
    null_driver(&d);
    let dir = d.root.path().join("c");
    let (ok, out, err) = run_in(&d.state(), &mut Command::new(null_driver_app_c(&dir)));
    assert!(ok, "{out}{err}");
    assert!(out.contains("it says \"Hello from a dext\""), "{out}");
    for line in EVERY_CALL {
        assert!(out.contains(line), "C: {line:?} missing from\n{out}");
    }

    let (lib, _) = iokit_library();
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/NullDriverAppPython/null_driver_app.py");
    let (ok, out, err) = run_in(
        &d.state(),
        Command::new("python3")
            .arg(&script)
            .env("DRIVERKIT_IOKIT_LIB", lib.join("libdriverkit_iokit.so")),
    );
    assert!(ok, "{out}{err}");
    assert!(out.contains("it says \"Hello from a dext\""), "{out}");
    for line in EVERY_CALL {
        assert!(out.contains(line), "Python: {line:?} missing from\n{out}");
    }
    // Python's bad input: IOKitError with Apple's name, never a crash.
    let python_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../python");
    let (ok, out, err) = run_in(
        &d.state(),
        Command::new("python3")
            .arg("-c")
            .arg(
                r#"
import driverkit_iokit as iokit
s = iokit.get_matching_service(iokit.name_matching("NullDriver"))
c = s.open()
for call in (lambda: c.call_scalar(0, [0] * 17, 1), lambda: c.call_scalar(0, [1], 1)):
    try:
        call()
    except iokit.IOKitError as e:
        print(e.name)
closed = c.handle
c.close()
try:
    iokit.Connection(closed).call_scalar(0, [2, 40], 1)
except iokit.IOKitError as e:
    print(e.name)
print(iokit.get_matching_service(iokit.name_matching("NoSuchDriver")))
"#,
            )
            .env("PYTHONPATH", &python_dir)
            .env("DRIVERKIT_IOKIT_LIB", lib.join("libdriverkit_iokit.so")),
    );
    assert!(ok, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "kIOReturnBadArgument", "{out}");
    assert!(
        lines[1].starts_with("kIOReturn"),
        "the driver's own check: {out}"
    );
    assert_eq!(lines[2..], ["kIOReturnNotOpen", "None"], "{out}");

    // The user clients they opened closed with them.
    d.wait_until("the C and Python apps' user clients to close", || {
        !d.nodes()
            .iter()
            .any(|n| n["name"] == "NullDriverUserClient")
    });
}

#[test]
fn a_c_app_is_entitled_exactly_as_a_rust_app() {
    let d = Daemon::start(&["--no-embedded", "--no-default-devices", "--sandbox=off"]);
    let dir = d.root.path().join("apps");
    d.load(&strict_null_driver(&dir));
    null_driver(&d);
    let program = null_driver_app_c(&d.root.path().join("c"));
    // Not in an app, and in an app entitled to another driver: refused.
    for exe in [
        program.clone(),
        app_of(&dir, "Other", &["com.example.Else"], &program),
    ] {
        let (ok, out, err) = run_in(&d.state(), &mut Command::new(&exe));
        assert!(!ok, "{}: {out}", exe.display());
        assert!(
            err.contains("IOServiceOpen failed: 0xe00002e2"),
            "kIOReturnNotPermitted: {err}"
        );
        // The app hears why, as the daemon's log says it.
        assert!(
            err.contains("nothing entitles it to com.example.NullDriver's user clients")
                || err.contains("com.apple.developer.driverkit.userclient-access does not name it"),
            "{err}"
        );
    }
    // The daemon's log reaches the test through a reader thread: waited
    // for, not read at once.
    d.wait_log("is not in an app, so nothing entitles it", 1);
    d.wait_log(
        "is not entitled to com.example.NullDriver's user clients",
        1,
    );
    // The app that names it.
    let (ok, out, err) = run_in(
        &d.state(),
        &mut Command::new(app_of(&dir, "Maker", &["com.example.NullDriver"], &program)),
    );
    assert!(ok, "{out}{err}");
    assert!(out.contains(EVERY_CALL[0]), "{out}");
}

#[test]
fn bad_input_to_the_c_library_gets_an_ioreturn_never_a_crash() {
    use driverkit_iokit::cf::CFTypeRef;
    use driverkit_iokit::corefoundation::*;
    use driverkit_iokit::*;
    use std::ptr::{null, null_mut};

    let d = Daemon::start(&["--no-default-devices"]);
    null_driver(&d);
    let bad = IOReturn::BAD_ARGUMENT.0 as i32;
    let root = std::ffi::CString::new(d.state().to_str().unwrap()).unwrap();
    let mut main = 0;
    assert_eq!(IOMainPortForRoot(root.as_ptr(), &mut main), 0);
    assert_eq!(IOMainPortForRoot(null(), &mut main), bad);

    // Matching: no dictionary, or not a dictionary.
    let mut iterator = 0;
    assert_eq!(
        IOServiceGetMatchingServices(main, null(), &mut iterator),
        bad
    );
    let not_a_dictionary = CFStringCreateWithCString(null(), c"NullDriver".as_ptr(), 0x0800_0100);
    assert_eq!(IOServiceGetMatchingService(main, not_a_dictionary), 0);
    assert_eq!(CFGetTypeID(not_a_dictionary), 0, "consumed, as IOKit does");
    let service = IOServiceGetMatchingService(main, IOServiceNameMatching(c"NullDriver".as_ptr()));
    assert_ne!(service, 0);
    assert_eq!(IOServiceOpen(service, 0, 0, null_mut()), bad);
    assert_eq!(IORegistryEntryGetRegistryEntryID(service, null_mut()), bad);
    assert!(IORegistryEntryCreateCFProperty(service, null(), null(), 0).is_null());

    let mut c = 0;
    assert_eq!(IOServiceOpen(service, 0, 0, &mut c), 0);
    let mut out = [0u64; 16];
    let mut n = 1u32;
    // Counts that do not match the pointers.
    assert_eq!(
        IOConnectCallScalarMethod(c, 0, null(), 2, out.as_mut_ptr(), &mut n),
        bad
    );
    assert_eq!(
        IOConnectCallScalarMethod(c, 0, [1, 2].as_ptr(), 2, null_mut(), &mut n),
        bad
    );
    assert_eq!(
        IOConnectCallScalarMethod(c, 0, [0u64; 17].as_ptr(), 17, out.as_mut_ptr(), &mut n),
        bad
    );
    let mut room = 8usize;
    assert_eq!(
        IOConnectCallStructMethod(c, 1, null(), 4, out.as_mut_ptr().cast(), &mut room),
        bad
    );
    // The driver's own checks answer too (ADD takes two scalars).
    n = 1;
    assert_ne!(
        IOConnectCallScalarMethod(c, 0, [1].as_ptr(), 1, out.as_mut_ptr(), &mut n),
        0
    );
    // A good call still works after all that.
    n = 1;
    assert_eq!(
        IOConnectCallScalarMethod(c, 0, [2, 40].as_ptr(), 2, out.as_mut_ptr(), &mut n),
        0
    );
    assert_eq!((out[0], n), (42, 1));
    // Asynchronous calls without a callback, a port, or enough reference.
    let port = IONotificationPortCreate(0);
    let wake = IONotificationPortGetMachPort(port);
    let mut reference = [0u64; 8];
    let call_async = |wake: u32, reference: *mut u64, count: u32| {
        IOConnectCallAsyncMethod(
            c,
            2,
            wake,
            reference,
            count,
            [21, 1].as_ptr(),
            2,
            null(),
            0,
            null_mut(),
            null_mut(),
            null_mut(),
            null_mut(),
        )
    };
    assert_eq!(
        call_async(wake, reference.as_mut_ptr(), 8),
        bad,
        "no callback"
    );
    extern "C" fn ignore(_: *mut std::ffi::c_void, _: i32, _: *mut *mut std::ffi::c_void, _: u32) {}
    reference[1] = ignore as *const () as usize as u64;
    assert_eq!(
        call_async(wake, reference.as_mut_ptr(), 2),
        bad,
        "no refcon slot"
    );
    assert_eq!(call_async(wake, null_mut(), 8), bad);
    assert_eq!(call_async(c, reference.as_mut_ptr(), 8), bad, "not a port");
    // Mapping: nowhere to say where.
    let mut size = 0u64;
    assert_eq!(IOConnectMapMemory64(c, 0, 0, null_mut(), &mut size, 1), bad);
    assert_eq!(IOConnectUnmapMemory64(c, 0, 0, 0x1000), bad);

    // A closed connection, and a released service.
    assert_eq!(IOServiceClose(c), 0);
    n = 1;
    assert_eq!(
        IOConnectCallScalarMethod(c, 0, [2, 40].as_ptr(), 2, out.as_mut_ptr(), &mut n),
        IOReturn::NOT_OPEN.0 as i32
    );
    assert_eq!(IOServiceClose(c), bad);
    assert_eq!(IOObjectRelease(service), 0);
    assert_eq!(IOObjectRelease(service), bad);
    let mut id = 0;
    assert_eq!(IORegistryEntryGetRegistryEntryID(service, &mut id), bad);
    assert_eq!(IOServiceOpen(service, 0, 0, &mut c), bad);
    // A destroyed port, released and foreign CF objects.
    IONotificationPortDestroy(port);
    IONotificationPortDestroy(port);
    assert_eq!(IONotificationPortGetFileDescriptor(port), -1);
    assert_eq!(IONotificationPortDispatch(null_mut()), 0);
    let s = CFStringCreateWithCString(null(), c"gone".as_ptr(), 0x0800_0100);
    CFRelease(s);
    CFRelease(s);
    let mut buf = [0i8; 16];
    assert_eq!(CFStringGetCString(s, buf.as_mut_ptr(), 16, 0x0800_0100), 0);
    let garbage = 0xdead_beef_usize as CFTypeRef;
    assert_eq!(CFGetTypeID(garbage), 0);
    assert!(CFDictionaryGetValue(garbage, garbage).is_null());
    assert_eq!(
        IOMainPortForRoot(root.as_ptr(), &mut main),
        0,
        "still answering"
    );
}

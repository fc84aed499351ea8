//! Delivering a driver: the seed's path from `driverkit new` to an upgraded
//! and deactivated driver, every refusal of activation, and the store's
//! crash safety under kill -9 at each step of activate, upgrade and
//! uninstall.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

/// Where the generated projects build: their own target directory (a
/// cargo inside a test must not wait for the lock of the cargo running the
/// tests), kept across runs.
fn template_target() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/template-builds")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn driverkit(args: &[&str]) -> Command {
    let mut c = Command::new(EXE);
    c.args(args);
    c
}

#[test]
fn the_seed_new_build_activate_approve_match_upgrade_deactivate() {
    let d = Daemon::start(&["--no-embedded", "--no-default-devices"]);
    let work = tempfile::tempdir().unwrap();
    let project = work.path().join("Seed");

    // A signing key the system trusts.
    let key = work.path().join("seed.key");
    run(&mut driverkit(&["key", "new", key.to_str().unwrap()]));
    d.cli(&["sysext", "trust", &format!("{}.pub", key.display())]);

    // new -> build.
    let made = run(&mut driverkit(&[
        "new",
        "Seed",
        "--family",
        "usb",
        "--path",
        project.to_str().unwrap(),
    ]));
    assert!(made.contains("com.example.Seed"), "{made}");
    let build = || {
        run(driverkit(&[
            "build",
            "--debug",
            "--project",
            project.to_str().unwrap(),
            "--sign",
            key.to_str().unwrap(),
        ])
        .env("CARGO_TARGET_DIR", template_target()))
    };
    let built = build();
    assert!(
        built.contains("com.example.Seed 1.0 (1), signed"),
        "{built}"
    );
    let app = project.join("build/Seed.app");
    assert!(app
        .join("Contents/Library/SystemExtensions/com.example.Seed.dext/_CodeSignature/Signature")
        .is_file());

    // activate, from the app itself: it waits for a person.
    let app_exe = app.join("Contents/MacOS/Seed-app");
    // The same directory across the daemon's restarts.
    let state = d.state();
    let as_app = |arg: &str| {
        run(Command::new(&app_exe)
            .arg(arg)
            .env("DRIVERKIT_ROOT", &state))
    };
    let said = as_app("activate");
    assert!(said.contains("approve the driver"), "{said}");
    assert_eq!(
        state_of(&d, "com.example.Seed").as_deref(),
        Some("waiting_for_user")
    );
    let device = d.cli(&["device", "plug", "vendor-bulk"]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        !d.nodes().iter().any(|n| n["name"] == "Seed"),
        "nothing runs before approval"
    );

    // approve -> matched on the virtual device.
    d.cli(&["sysext", "approve", "com.example.Seed"]);
    let first = d.wait_node("Seed v1 on the vendor-bulk device", |n| {
        n["name"] == "Seed" && n["state"]["active"] == true
    });
    assert_eq!(first["properties"]["SeedProduct"], "Vendor Bulk Device");
    let listing = d.cli(&["sysext", "list"]);
    assert!(
        listing.contains("com.example.Seed")
            && listing.contains("1.0/1")
            && listing.contains("[activated enabled]"),
        "{listing}"
    );

    // The store's copy outlives the app and a restart of the daemon.
    std::fs::remove_dir_all(project.join("build")).unwrap();
    let d = d.restart(&["--no-embedded", "--no-default-devices"], &[]);
    d.cli(&["device", "plug", "vendor-bulk"]);
    d.wait_node("Seed v1 again after the restart", |n| {
        n["name"] == "Seed" && n["state"]["active"] == true
    });
    let _ = device;

    // upgrade: a higher version, built and activated; the app's delegate
    // answers the replacement question.
    let info_path = project.join("Info.plist");
    let info = std::fs::read_to_string(&info_path).unwrap();
    let info = info
        .replace(
            "<key>CFBundleVersion</key>\n\t<string>1</string>",
            "<key>CFBundleVersion</key>\n\t<string>2</string>",
        )
        .replace(
            "<key>CFBundleShortVersionString</key>\n\t<string>1.0</string>",
            "<key>CFBundleShortVersionString</key>\n\t<string>2.0</string>",
        )
        .replace(
            "<key>IOUserClass</key>",
            "<key>SeedGeneration</key>\n\t\t\t<integer>2</integer>\n\t\t\t<key>IOUserClass</key>",
        );
    std::fs::write(&info_path, info).unwrap();
    let built = build();
    assert!(
        built.contains("com.example.Seed 2.0 (2), signed"),
        "{built}"
    );
    let old_pid = d.nodes().into_iter().find(|n| n["name"] == "Seed").unwrap()["pid"].clone();
    let said = as_app("activate");
    assert!(said.contains("replacing 1.0 with 2.0"), "{said}");
    let second = d.wait_node("Seed v2 running", |n| {
        n["name"] == "Seed"
            && n["properties"]["SeedGeneration"] == 2
            && n["state"]["active"] == true
    });
    assert_ne!(
        second["pid"], old_pid,
        "the new version runs in a new process"
    );
    assert!(d.cli(&["sysext", "list"]).contains("2.0/2"));

    // deactivate -> gone.
    as_app("deactivate");
    d.wait_until("Seed stopped", || {
        !d.nodes().iter().any(|n| n["name"] == "Seed")
    });
    assert_eq!(
        state_of(&d, "com.example.Seed").as_deref(),
        Some("terminated_waiting_to_uninstall")
    );
    let d = d.restart(&["--no-embedded", "--no-default-devices"], &[]);
    assert_eq!(state_of(&d, "com.example.Seed"), None);
    assert!(!d.state().join("extensions/com.example.Seed").exists());
}

#[test]
fn every_refusal_names_its_reason() {
    let d = Daemon::start(&["--no-embedded", "--no-default-devices"]);
    let dir = d.root.path().join("apps");
    std::fs::create_dir_all(&dir).unwrap();
    let id = "com.example.Shipped";
    let key = dir.join("k");
    d.cli(&["key", "new", key.to_str().unwrap()]);
    d.cli(&["sysext", "trust", &format!("{}.pub", key.display())]);
    let sign = |app: &Path| {
        let dext = app.join(format!("Contents/Library/SystemExtensions/{id}.dext"));
        let k = driverkit_bundle::signature::SigningKey::load(&key).unwrap();
        driverkit_bundle::signature::sign(&dext, &k).unwrap();
        dext
    };

    // Missing keys: the file and the key are named.
    for missing in [
        "CFBundleVersion",
        "OSBundleUsageDescription",
        "IOKitPersonalities",
    ] {
        let app = make_app(
            &dir,
            "Missing",
            &AppSpec {
                without: &[missing],
                ..Default::default()
            },
        );
        let e = refused(&d, &app, id);
        assert!(
            e.contains("validation failed (code 9)")
                && e.contains(missing)
                && e.contains("Info.plist"),
            "{e}"
        );
    }
    // Not inside Contents/Library/SystemExtensions: `load` refuses it...
    let loose = dir.join(format!("{id}.dext"));
    let app = make_app(&dir, "Good", &AppSpec::default());
    std::fs::rename(
        app.join(format!("Contents/Library/SystemExtensions/{id}.dext")),
        &loose,
    )
    .unwrap();
    let out = d.run_cli(&["load", loose.to_str().unwrap()]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("is not inside an app's Contents/Library/SystemExtensions folder"),
        "{e}"
    );
    // In place, but outside developer mode: `load` would skip activation,
    // approval and the signature check.
    d.cli(&["sysext", "developer", "off"]);
    let placed = make_app(&dir, "Placed", &AppSpec::default())
        .join(format!("Contents/Library/SystemExtensions/{id}.dext"));
    let out = d.run_cli(&["load", placed.to_str().unwrap()]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("load needs developer mode") && e.contains("sysext developer on"),
        "{e}"
    );
    // ...and an app without it in place has no such extension.
    let e = refused(&d, &app, id);
    assert!(
        e.contains("extension not found (code 4)") && e.contains(&format!("no {id}.dext")),
        "{e}"
    );
    // Not an app at all.
    let e = refused(&d, &loose, id);
    assert!(
        e.contains("unsupported parent bundle location (code 3)"),
        "{e}"
    );
    // A relative path, which would name something else in the daemon.
    let mut client = driverkitd::control::Client::connect(&d.state()).unwrap();
    let answer = client
        .request(&driverkitd::control::CoreRequest::SysextActivate {
            app: "Good.app".into(),
            bundle_id: id.into(),
            replacement: Default::default(),
        })
        .unwrap();
    assert_eq!(answer["failure"]["code"], 3, "{answer}");
    assert!(answer["failure"]["message"]
        .as_str()
        .unwrap()
        .contains("absolute path"));
    // An unknown bundle ID, to activate and to deactivate.
    let app = make_app(&dir, "Good", &AppSpec::default());
    let e = refused(&d, &app, "com.example.Unknown");
    assert!(e.contains("extension not found (code 4)"), "{e}");
    let out = d.run_cli(&["sysext", "deactivate", "com.example.Unknown"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("extension not found (code 4)"));
    // The device's vendor is not among the dext's USB entitlements.
    let app = make_app(
        &dir,
        "Vendor",
        &AppSpec {
            personality: "<key>IOProviderClass</key><string>IOUSBHostDevice</string>\
                          <key>idVendor</key><integer>1452</integer>",
            entitlements: "<key>com.apple.developer.driverkit.transport.usb</key>\
                           <array><dict><key>idVendor</key><integer>4617</integer></dict></array>",
            ..Default::default()
        },
    );
    sign(&app);
    let e = refused(&d, &app, id);
    assert!(
        e.contains("missing entitlement (code 2)")
            && e.contains("idVendor 1452")
            && e.contains("Shipped"),
        "{e}"
    );
    // The app may not install drivers.
    let app = make_app(
        &dir,
        "NoInstall",
        &AppSpec {
            app_may_install: false,
            ..Default::default()
        },
    );
    let e = refused(&d, &app, id);
    assert!(
        e.contains("missing entitlement (code 2)") && e.contains("system-extension.install"),
        "{e}"
    );
    // Unsigned.
    let app = make_app(&dir, "Good", &AppSpec::default());
    let e = refused(&d, &app, id);
    assert!(
        e.contains("code signature invalid (code 8)") && e.contains("not signed"),
        "{e}"
    );
    // Signed, then a file altered: the file is named.
    let dext = sign(&app);
    std::fs::write(
        dext.join("Info.plist"),
        std::fs::read_to_string(dext.join("Info.plist")).unwrap() + " ",
    )
    .unwrap();
    let e = refused(&d, &app, id);
    assert!(
        e.contains("code signature invalid (code 8)") && e.contains("file Info.plist changed"),
        "{e}"
    );
    // Signed by a key the system does not trust.
    let app = make_app(&dir, "Good", &AppSpec::default());
    let stranger = dir.join("stranger");
    d.cli(&["key", "new", stranger.to_str().unwrap()]);
    let k = driverkit_bundle::signature::SigningKey::load(&stranger).unwrap();
    driverkit_bundle::signature::sign(
        &app.join(format!("Contents/Library/SystemExtensions/{id}.dext")),
        &k,
    )
    .unwrap();
    let e = refused(&d, &app, id);
    assert!(e.contains("does not trust"), "{e}");

    // Version 2 goes in; then version 1 is refused as lower, and version 2
    // again is "already active".
    let v2 = make_app(
        &dir,
        "Two",
        &AppSpec {
            version: "2",
            ..Default::default()
        },
    );
    sign(&v2);
    d.cli(&["sysext", "activate", v2.to_str().unwrap(), id]);
    let v1 = make_app(&dir, "One", &AppSpec::default());
    sign(&v1);
    let e = refused(&d, &v1, id);
    assert!(
        e.contains("forbidden by system policy (code 10)")
            && e.contains("lower than the active 2.0 (2)"),
        "{e}"
    );
    let again = d.cli(&["sysext", "activate", v2.to_str().unwrap(), id]);
    assert!(again.contains("this version is active already"), "{again}");
    // Asked to replace with 3 and cancelling keeps 2.
    let v3 = make_app(
        &dir,
        "Three",
        &AppSpec {
            version: "3",
            ..Default::default()
        },
    );
    sign(&v3);
    let out = d.run_cli(&["sysext", "activate", v3.to_str().unwrap(), id, "--cancel"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("request canceled (code 11)"));
    assert_eq!(records(&d)["extensions"][id]["version"], "2");
    // Developer mode takes an unsigned, lower version.
    d.cli(&["sysext", "developer", "on"]);
    let unsigned_v1 = make_app(&dir, "One", &AppSpec::default());
    d.cli(&[
        "sysext",
        "activate",
        unsigned_v1.to_str().unwrap(),
        id,
        "--replace",
    ]);
    assert_eq!(records(&d)["extensions"][id]["version"], "1");
}

/// The stored copy of `id`: exactly one generation on disk, the one the
/// record names, holding the record's version.
fn check_store(d: &Daemon, id: &str) -> Option<String> {
    let r = records(d);
    let dir = d.state().join("extensions").join(id);
    let Some(e) = r["extensions"].get(id) else {
        assert!(!dir.exists(), "no record, but {} remains", dir.display());
        return None;
    };
    let copies: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|c| c.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(copies, [format!("{}.dext", e["generation"])], "{r}");
    let info = std::fs::read_to_string(dir.join(&copies[0]).join("Info.plist")).unwrap();
    let version = e["version"].as_str().unwrap().to_owned();
    assert!(
        info.contains(&format!(
            "<key>CFBundleVersion</key><string>{version}</string>"
        )),
        "the copy holds the record's version {version}"
    );
    assert!(!d.state().join("extensions/staging").exists());
    Some(version)
}

/// The apps' executable is a small script (copied at every activation),
/// which only an unsandboxed daemon runs; the kill -9 tests are about the
/// store and the dexts' lifetime.
const KILL_ARGS: [&str; 3] = ["--no-embedded", "--no-default-devices", "--sandbox=off"];

/// A daemon in developer mode and two apps carrying versions 1 and 2 of
/// `com.example.Shipped`.
fn kill_campaign_daemon() -> (Daemon, PathBuf, PathBuf) {
    let d = Daemon::start(&KILL_ARGS);
    let dir = d.root.path().join("apps");
    std::fs::create_dir_all(&dir).unwrap();
    let v1 = make_app(&dir, "One", &AppSpec::default());
    let v2 = make_app(
        &dir,
        "Two",
        &AppSpec {
            version: "2",
            ..Default::default()
        },
    );
    d.cli(&["sysext", "developer", "on"]);
    (d, v1, v2)
}

#[test]
fn the_store_is_whole_after_kill_9_at_any_step() {
    let id = "com.example.Shipped";
    let (mut d, v1, v2) = kill_campaign_daemon();
    let args = KILL_ARGS;
    // Every crash point, every time it is passed during one operation.
    let points = [
        ("store-committed", 1),
        ("store-copied", 1),
        ("store-staged", 1),
        ("store-committed", 2),
        ("store-committed", 3),
    ];
    type Op<'a> = (
        &'a str,
        Vec<&'a str>,
        Option<&'a str>,
        &'a [Option<&'a str>],
    );
    let v1s = v1.to_str().unwrap();
    let v2s = v2.to_str().unwrap();
    // (name, the operation, the state it starts from, acceptable versions after)
    let ops: Vec<Op> = vec![
        (
            "activate",
            vec!["sysext", "activate", v1s, id],
            None,
            &[None, Some("1")],
        ),
        (
            "upgrade",
            vec!["sysext", "activate", v2s, id, "--replace"],
            Some(v1s),
            &[Some("1"), Some("2")],
        ),
        (
            "uninstall",
            vec!["sysext", "uninstall", id],
            Some(v1s),
            &[Some("1"), None],
        ),
    ];
    let mut crashes = 0;
    for (name, op, from, acceptable) in &ops {
        for (point, nth) in points {
            // The starting state, cleanly.
            d.cli(&["sysext", "reset"]);
            if let Some(app) = from {
                d.cli(&["sysext", "activate", app, id]);
                d.cli(&["sysext", "approve", id]);
            }
            let n = nth.to_string();
            d = d.restart(
                &args,
                &[("DRIVERKIT_CRASH_AT", point), ("DRIVERKIT_CRASH_COUNT", &n)],
            );
            let out = d.run_cli(op);
            let died =
                !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("daemon");
            if died {
                d.wait_exit();
                crashes += 1;
            }
            d = d.restart(&args, &[]);
            let version = check_store(&d, id);
            assert!(
                acceptable.contains(&version.as_deref()),
                "{name}, killed at {point} #{nth}: found version {version:?}"
            );
            // An enabled extension runs again after the restart.
            if records(&d)["extensions"][id]["state"] == "enabled" {
                d.wait_node("the extension's service after the restart", |node| {
                    node["name"] == "TestDriver"
                        && node["properties"]["TestVersion"].as_str() == version.as_deref()
                });
            }
        }
    }
    // Activation passes every point but the third commit (a generation is
    // reserved, then the record commits). An upgrade passes the third too:
    // the CLI asks the replacement question first, and the versions it
    // compares are read from a checked copy (reserved, copied, then
    // dropped), never from the app's own files. Uninstalling only commits
    // once.
    assert_eq!(crashes, 4 + 5 + 1, "the crash points the operations pass");
}

#[test]
fn every_family_template_builds_its_test_passes_and_it_runs_on_the_default_daemon() {
    // The README's default daemon: the example drivers and the built-in
    // devices they match. A new project's driver must win its device.
    let d = Daemon::start(&[]);
    // Unsigned, as a developer's first builds are.
    d.cli(&["sysext", "developer", "on"]);
    let work = tempfile::tempdir().unwrap();
    for family in ["generic", "usb", "hid", "serial", "net", "pci"] {
        let name = format!("Template{}", family.to_uppercase());
        let project = work.path().join(&name);
        run(&mut driverkit(&[
            "new",
            &name,
            "--family",
            family,
            "--path",
            project.to_str().unwrap(),
        ]));
        let tested = run(Command::new(env!("CARGO"))
            .args(["test", "--quiet"])
            .current_dir(&project)
            .env("CARGO_TARGET_DIR", template_target()));
        assert!(
            tested.contains("1 passed"),
            "{family}: the bundle test ran and passed:\n{tested}"
        );
        run(
            driverkit(&["build", "--debug", "--project", project.to_str().unwrap()])
                .env("CARGO_TARGET_DIR", template_target()),
        );
        let app = project.join(format!("build/{name}.app"));
        let id = format!("com.example.{name}");
        d.cli(&["sysext", "activate", app.to_str().unwrap(), &id]);
        d.cli(&["sysext", "approve", &id]);
        d.wait_node(&format!("{name} running on the default daemon"), |n| {
            n["name"] == name.as_str() && n["state"]["active"] == true && n["pid"].is_u64()
        });
    }
}

#[test]
fn two_driver_projects_of_one_name_each_ship_their_own_code() {
    let work = tempfile::tempdir().unwrap();
    let make = |family: &str| {
        let project = work.path().join(family).join("Twin");
        std::fs::create_dir_all(project.parent().unwrap()).unwrap();
        run(&mut driverkit(&[
            "new",
            "Twin",
            "--family",
            family,
            "--path",
            project.to_str().unwrap(),
        ]));
        project
    };
    let build = |project: &Path| {
        driverkit(&["build", "--debug", "--project", project.to_str().unwrap()])
            .env("CARGO_TARGET_DIR", template_target())
            .output()
            .unwrap()
    };
    let dext_of =
        |project: &Path| {
            std::fs::read(project.join(
                "build/Twin.app/Contents/Library/SystemExtensions/com.example.Twin.dext/Twin",
            ))
            .unwrap()
        };
    let has = |exe: &[u8], text: &str| exe.windows(text.len()).any(|w| w == text.as_bytes());
    let (usb, serial) = (make("usb"), make("serial"));
    // One after the other, then the first again: each app carries its own
    // family's code (the USB template's property, the serial template's
    // log line).
    for project in [&usb, &serial, &usb] {
        let out = build(project);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (u, s) = (dext_of(&usb), dext_of(&serial));
    assert!(has(&u, "TwinProduct") && !has(&u, "a serial port over the UART"));
    assert!(has(&s, "a serial port over the UART") && !has(&s, "TwinProduct"));

    // A copy of a project keeps its package name: cargo would hand it the
    // original's build; driverkit build refuses, and says what to do.
    let copy = work.path().join("copy/Twin");
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    let copied = Command::new("cp")
        .args(["-a", usb.to_str().unwrap(), copy.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(copied.success());
    std::fs::remove_dir_all(copy.join("build")).unwrap();
    let out = build(&copy);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the copy shipped the original's build"
    );
    assert!(
        err.contains(&format!(
            "was built from {}, not from this project",
            usb.display()
        )) && err.contains("another driver project with the same package name")
            && err.contains("[package] name"),
        "{err}"
    );
    assert!(
        !copy.join("build/Twin.app").exists(),
        "no app from a refused build"
    );
}

#[test]
fn roles_are_checked_by_peer_credentials_and_an_app_cannot_approve_itself() {
    use std::os::unix::fs::PermissionsExt;
    assert!(
        rustix::process::geteuid().is_root(),
        "this test runs the daemon as root and the CLI as nobody; run it as root"
    );
    let d = Daemon::start(&["--no-embedded", "--no-default-devices"]);
    // Let nobody reach the socket (the socket itself is 0666).
    for dir in [d.root.path().to_owned(), d.state()] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // Anyone may read.
    for args in [
        &["ioreg"][..],
        &["device", "list"],
        &["status"],
        &["sysext", "list"],
    ] {
        let out = as_nobody(&d, args);
        assert!(
            out.status.success(),
            "{args:?} as nobody: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Nothing else: each refusal names the rule.
    let bundle = d.root.path().join("x.dext");
    for (args, what) in [
        (&["sysext", "approve", "com.example.X"][..], "approve"),
        (&["sysext", "developer", "on"], "developer mode"),
        (&["sysext", "uninstall", "com.example.X"], "uninstall"),
        (&["sysext", "reset"], "reset"),
        (&["device", "plug", "sensor"], "plug"),
        (&["stop"], "stop"),
    ] {
        let out = as_nobody(&d, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} as nobody succeeded");
        assert!(
            err.contains(&format!(
                "{what} needs an administrator: uid 65534 is not root or in group driverkit"
            )),
            "{args:?}: {err}"
        );
    }
    let key = d.root.path().join("k");
    d.cli(&["key", "new", key.to_str().unwrap()]);
    std::fs::set_permissions(
        format!("{}.pub", key.display()),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let out = as_nobody(&d, &["sysext", "trust", &format!("{}.pub", key.display())]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("trust needs an administrator"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::create_dir_all(&bundle).unwrap();
    let out = as_nobody(&d, &["load", bundle.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("load needs an administrator"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(d.nodes().iter().all(|n| n["name"] != "VirtualSensor"));

    // An app asks for its dext and may not approve it itself, even as root.
    let dir = d.root.path().join("apps");
    std::fs::create_dir_all(&dir).unwrap();
    let app = make_app(&dir, "Maker", &AppSpec::default());
    let macos = app.join("Contents/MacOS");
    std::fs::create_dir_all(&macos).unwrap();
    let app_exe = macos.join("driverkit");
    std::fs::copy(EXE, &app_exe).unwrap();
    d.cli(&["sysext", "developer", "on"]);
    let from_app = |args: &[&str]| {
        Command::new(&app_exe)
            .arg("--root")
            .arg(d.state())
            .args(args)
            .output()
            .unwrap()
    };
    let id = "com.example.Shipped";
    let out = from_app(&["sysext", "activate", app.to_str().unwrap(), id]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("waiting for user"),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = from_app(&["sysext", "approve", id]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the app approved its own request");
    assert!(err.contains("cannot approve its own request"), "{err}");
    assert_eq!(state_of(&d, id).as_deref(), Some("waiting_for_user"));
    // A person approves it.
    d.cli(&["sysext", "approve", id]);
    assert_eq!(state_of(&d, id).as_deref(), Some("enabled"));
}

#[test]
fn a_link_in_a_bundle_is_refused_and_only_the_checked_copy_is_kept() {
    let d = Daemon::start(&["--no-embedded", "--no-default-devices"]);
    d.cli(&["sysext", "developer", "on"]);
    let dir = d.root.path().join("apps");
    std::fs::create_dir_all(&dir).unwrap();
    let app = make_app(&dir, "Linked", &AppSpec::default());
    let id = "com.example.Shipped";
    let dext = app.join(format!("Contents/Library/SystemExtensions/{id}.dext"));
    // The driver's executable is a link to a file outside the bundle, which
    // could change after the system checked it.
    let outside = dir.join("elsewhere");
    std::fs::rename(dext.join("DriverKitTestDriver"), &outside).unwrap();
    std::os::unix::fs::symlink(&outside, dext.join("DriverKitTestDriver")).unwrap();
    let err = refused(&d, &app, id);
    assert!(
        err.contains("a symbolic link") && err.contains("DriverKitTestDriver"),
        "{err}"
    );
    assert_eq!(state_of(&d, id), None);
    // A link that stays inside is refused too: a bundle holds files.
    std::fs::remove_file(dext.join("DriverKitTestDriver")).unwrap();
    std::fs::create_dir_all(dext.join("bin")).unwrap();
    std::fs::rename(&outside, dext.join("bin/driver")).unwrap();
    std::os::unix::fs::symlink("bin/driver", dext.join("DriverKitTestDriver")).unwrap();
    let err = refused(&d, &app, id);
    assert!(err.contains("a symbolic link"), "{err}");
    // The file itself is accepted.
    std::fs::remove_file(dext.join("DriverKitTestDriver")).unwrap();
    std::fs::rename(dext.join("bin/driver"), dext.join("DriverKitTestDriver")).unwrap();
    d.cli(&["sysext", "activate", app.to_str().unwrap(), id]);
    assert_eq!(state_of(&d, id).as_deref(), Some("waiting_for_user"));
    // Nothing was left in staging.
    let staging = d.state().join("extensions/staging");
    assert!(
        std::fs::read_dir(&staging).map_or(true, |mut r| r.next().is_none()),
        "staging holds leftovers"
    );
}

/// kill -9 of the daemon at a random moment of an activation, an upgrade
/// or an uninstall, round after round (`DRIVERKIT_KILL_ROUNDS`, a few in
/// CI): the store is wholly old or wholly new every time, and no dext
/// outlives the daemon that started it.
#[test]
fn the_store_is_whole_and_no_dext_survives_after_kill_9_at_random_moments() {
    let rounds: u64 = std::env::var("DRIVERKIT_KILL_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(12);
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("kill -9 campaign: {rounds} rounds, seed {seed}");
    let mut draw = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let id = "com.example.Shipped";
    let (mut d, v1, v2) = kill_campaign_daemon();
    let args = KILL_ARGS;
    let (v1s, v2s) = (v1.to_str().unwrap(), v2.to_str().unwrap());
    let mut outcomes = std::collections::BTreeMap::new();
    for round in 0..rounds {
        // A random starting state, then a random operation.
        let (name, op, acceptable): (&str, Vec<&str>, &[Option<&str>]) = match draw() % 3 {
            0 => (
                "activate",
                vec!["sysext", "activate", v1s, id],
                &[None, Some("1")],
            ),
            1 => (
                "upgrade",
                vec!["sysext", "activate", v2s, id, "--replace"],
                &[Some("1"), Some("2")],
            ),
            _ => (
                "uninstall",
                vec!["sysext", "uninstall", id],
                &[Some("1"), None],
            ),
        };
        d.cli(&["sysext", "reset"]);
        if name != "activate" {
            d.cli(&["sysext", "activate", v1s, id]);
            d.cli(&["sysext", "approve", id]);
        }
        let mut cli = std::process::Command::new(EXE)
            .arg("--root")
            .arg(d.state())
            .args(&op)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_micros(draw() % 8_000));
        let dexts = children_of(d.pid());
        d = d.restart(&args, &[]);
        let _ = cli.wait();
        d.wait_until(
            &format!("round {round}: the dexts of the killed daemon gone"),
            || dexts.iter().all(|&pid| !alive(pid)),
        );
        let version = check_store(&d, id);
        assert!(
            acceptable.contains(&version.as_deref()),
            "round {round}, {name}: found version {version:?}"
        );
        *outcomes
            .entry(format!("{name} -> {version:?}"))
            .or_insert(0) += 1;
    }
    eprintln!("kill -9 campaign: outcomes {outcomes:?}");
}

/// A macOS project's Info.plist, full of Xcode's build variables, builds
/// unchanged: `driverkit build` substitutes them; `validate` of the raw
/// file and a build without the values name what is missing.
#[test]
fn an_xcode_info_plist_builds_unchanged() {
    let work = tempfile::tempdir().unwrap();
    let project = work.path().join("XcodeStyle");
    run(&mut driverkit(&[
        "new",
        "XcodeStyle",
        "--path",
        project.to_str().unwrap(),
    ]));
    // Apple's NullDriver sample's Info.plist, as Xcode writes it.
    let apple = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../driverkit-bundle/tests/real-projects/NullDriver/Info.plist");
    std::fs::copy(&apple, project.join("Info.plist")).unwrap();
    let out = driverkit(&["validate", project.join("Info.plist").to_str().unwrap()])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && e.contains("$(EXECUTABLE_NAME)") && e.contains("driverkit build"),
        "{e}"
    );
    // Nothing says what PRODUCT_BUNDLE_IDENTIFIER is: named, before cargo runs.
    let out = driverkit(&[
        "build",
        "--project",
        project.to_str().unwrap(),
        "--product-name",
        "XcodeStyle",
    ])
    .output()
    .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && e.contains("$(PRODUCT_BUNDLE_IDENTIFIER)")
            && e.contains("--bundle-id"),
        "{e}"
    );
    let built = run(driverkit(&[
        "build",
        "--debug",
        "--project",
        project.to_str().unwrap(),
        "--product-name",
        "XcodeStyle",
        "--bundle-id",
        "com.example.XcodeStyle",
    ])
    .env("CARGO_TARGET_DIR", template_target()));
    assert!(built.contains("built "), "{built}");
    let dext = project
        .join("build/XcodeStyle.app/Contents/Library/SystemExtensions/com.example.XcodeStyle.dext");
    let validated = run(&mut driverkit(&["validate", dext.to_str().unwrap()]));
    assert!(validated.contains("com.example.XcodeStyle"), "{validated}");
    let info = std::fs::read_to_string(dext.join("Info.plist")).unwrap();
    assert!(!info.contains("$("), "{info}");
    assert!(
        info.contains("<string>XcodeStyle</string>") && info.contains("<string>DEXT</string>"),
        "{info}"
    );
}

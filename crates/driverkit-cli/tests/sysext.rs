//! Delivering a driver: the seed's path from `driverkit new` to an upgraded
//! and deactivated driver, every refusal of activation, and the store's
//! crash safety under kill -9 at each step of activate, upgrade and
//! uninstall.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
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

fn records(d: &Daemon) -> Value {
    serde_json::from_str(&d.cli(&["sysext", "list", "--json"])).unwrap()
}

fn state_of(d: &Daemon, id: &str) -> Option<String> {
    records(d)["extensions"][id]["state"]
        .as_str()
        .map(str::to_owned)
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

//! The trust boundary of a root daemon, tried as an unprivileged local user
//! (`nobody`, by `setpriv`) would: hostile files in bundles and apps, other
//! users' extensions, borrowed app identities, keystrokes, and state folders
//! and identifiers that name what they should not. Each attack is refused,
//! with the rule in the answer and in the daemon's log.

mod support;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

const NOBODY: &str = "65534";

fn must_be_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "these tests run the daemon as root and the attacks as nobody; run them as root"
    );
}

/// A root daemon whose state folder nobody may reach (its socket is
/// 0666), as a system service's is.
fn root_daemon(args: &[&str]) -> Daemon {
    must_be_root();
    let d = Daemon::start(args);
    for dir in [d.root.path().to_owned(), d.state()] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    d
}

/// An app installed by root (root's, `0755` all the way), whose executable
/// is the CLI: what an unprivileged user may run as an app.
fn installed_app(d: &Daemon, name: &str, spec: &AppSpec<'_>) -> (PathBuf, PathBuf) {
    let dir = d.root.path().join("apps");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let app = make_app(&dir, name, spec);
    let exe = app.join("Contents/MacOS/driverkit");
    std::fs::create_dir_all(exe.parent().unwrap()).unwrap();
    std::fs::copy(EXE, &exe).unwrap();
    for path in [
        app.clone(),
        app.join("Contents"),
        app.join("Contents/MacOS"),
        exe.clone(),
    ] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    (app, exe)
}

/// `exe --root STATE ARGS` as nobody, with `env` added.
fn nobody_runs(d: &Daemon, exe: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = as_user(NOBODY, exe);
    c.arg("--root")
        .arg(d.state())
        .args(args)
        .envs(env.iter().copied());
    c
}

fn output(mut c: Command) -> (bool, String) {
    let out = c.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Nothing is left half made in the store's staging folder.
fn staging_is_empty(d: &Daemon) {
    let staging = d.state().join("extensions/staging");
    let left: Vec<_> = std::fs::read_dir(&staging)
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "staging holds {left:?}");
}

fn sign(dext: &Path, key: &driverkit_bundle::signature::SigningKey) {
    driverkit_bundle::signature::sign(dext, key).unwrap();
}

fn dext_of(app: &Path, id: &str) -> PathBuf {
    driverkit_bundle::location::dext_in_app(app, id)
}

/// What an attacker plants in a bundle.
enum Node {
    /// A file with this mode.
    File(u32),
    /// A symbolic link to this path.
    Link(&'static str),
    Fifo,
    /// `/dev/null`'s device number.
    Device,
}

fn plant(path: &Path, node: &Node) {
    match node {
        Node::File(mode) => {
            std::fs::write(path, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(*mode)).unwrap();
        }
        Node::Link(to) => std::os::unix::fs::symlink(to, path).unwrap(),
        Node::Fifo | Node::Device => {
            let (kind, device) = match node {
                Node::Fifo => (rustix::fs::FileType::Fifo, 0),
                _ => (
                    rustix::fs::FileType::CharacterDevice,
                    rustix::fs::makedev(1, 3),
                ),
            };
            rustix::fs::mknodat(
                rustix::fs::CWD,
                path,
                kind,
                rustix::fs::Mode::from_raw_mode(0o644),
                device,
            )
            .unwrap();
        }
    }
}

/// A signing key the daemon trusts.
fn trusted_key(d: &Daemon, name: &str) -> driverkit_bundle::signature::SigningKey {
    let key = driverkit_bundle::signature::SigningKey::generate().unwrap();
    let dir = d.root.path().join("keys");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{name}.pub"));
    std::fs::write(&file, key.public_hex()).unwrap();
    d.cli(&["sysext", "trust", file.to_str().unwrap()]);
    key
}

#[test]
fn hostile_files_in_a_bundle_are_refused_by_name_and_leave_nothing_behind() {
    let d = root_daemon(&["--no-embedded", "--no-default-devices"]);
    let key = trusted_key(&d, "k");
    let id = "com.example.Shipped";
    let cases = [
        ("setuid", "sh", Node::File(0o4755), "setuid"),
        ("setgid", "sh", Node::File(0o2755), "setgid"),
        ("0666", "data", Node::File(0o666), "writable by any user"),
        (
            "link",
            "passwd",
            Node::Link("/etc/passwd"),
            "a symbolic link",
        ),
        ("fifo", "pipe", Node::Fifo, "a FIFO"),
        (
            "device node",
            "null",
            Node::Device,
            "a character device node",
        ),
        (
            "setuid in _CodeSignature",
            "_CodeSignature/sh",
            Node::File(0o4755),
            "setuid",
        ),
        (
            "an extra file in _CodeSignature",
            "_CodeSignature/sh",
            Node::File(0o755),
            "holds only CodeResources and Signature",
        ),
    ];
    for developer in ["on", "off"] {
        d.cli(&["sysext", "developer", developer]);
        for (what, file, node, rule) in &cases {
            let dir = d.root.path().join(format!("apps-{developer}"));
            std::fs::create_dir_all(&dir).unwrap();
            let app = make_app(&dir, "Hostile", &AppSpec::default());
            let dext = dext_of(&app, id);
            // Signed first: a signature covers neither modes beyond the
            // execute bit nor _CodeSignature/, so what is planted after
            // rides along unless the copy refuses it.
            sign(&dext, &key);
            plant(&dext.join(file), node);
            let err = refused(&d, &app, id);
            assert!(
                err.contains(rule) && err.contains(file.rsplit('/').next().unwrap()),
                "developer {developer}, {what}: {err}"
            );
            assert_eq!(state_of(&d, id), None, "{what}");
            staging_is_empty(&d);
        }
    }
    d.wait_log("refused:", 16);
    assert!(!d.state().join(format!("extensions/{id}")).exists());
}

#[test]
fn the_store_holds_what_was_checked_with_modes_the_system_sets() {
    let d = root_daemon(&["--no-embedded", "--no-default-devices", "--sandbox=off"]);
    let key = trusted_key(&d, "k");
    let id = "com.example.Shipped";
    let dir = d.root.path().join("apps");
    std::fs::create_dir_all(&dir).unwrap();
    let app = make_app(&dir, "Checked", &AppSpec::default());
    let dext = dext_of(&app, id);
    // A group-writable data file and an executable with odd modes: the
    // store decides the modes, not the app.
    std::fs::write(dext.join("firmware.bin"), [1, 2, 3]).unwrap();
    std::fs::set_permissions(
        dext.join("firmware.bin"),
        std::fs::Permissions::from_mode(0o660),
    )
    .unwrap();
    std::fs::set_permissions(
        dext.join("DriverKitTestDriver"),
        std::fs::Permissions::from_mode(0o710),
    )
    .unwrap();
    sign(&dext, &key);
    d.cli(&["sysext", "activate", app.to_str().unwrap(), id]);
    // Swapped after the system checked it: the app's copy says "evil".
    std::fs::write(dext.join("DriverKitTestDriver"), "#!/bin/sh\nexit 3\n").unwrap();
    d.cli(&["sysext", "approve", id]);
    let node = d.wait_node("the checked copy running", |n| {
        n["name"] == "TestDriver" && n["properties"]["TestDriverStarted"] == true
    });
    assert_eq!(node["properties"]["TestVersion"], "1");
    let store = d.state().join("extensions");
    let copy = std::fs::read_dir(store.join(id))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let mode = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(p).unwrap();
        (m.uid(), m.mode() & 0o7777)
    };
    assert_eq!(mode(&copy.join("DriverKitTestDriver")), (0, 0o755));
    assert_eq!(mode(&copy.join("firmware.bin")), (0, 0o644));
    assert_eq!(mode(&copy.join("Info.plist")), (0, 0o644));
    assert_eq!(mode(&copy), (0, 0o755));
    assert_eq!(mode(&store), (0, 0o755));
    // Staging, when it exists, is the daemon's alone (it is removed after
    // each commit).
    if store.join("staging").exists() {
        assert_eq!(mode(&store.join("staging")), (0, 0o700));
    }
    assert!(std::fs::read_to_string(copy.join("DriverKitTestDriver"))
        .unwrap()
        .contains("exec -a DriverKitTestDriver"));
}

/// Runs `c` and waits at most `limit` for it: a request that hangs is a
/// defect, named, not a stuck test.
fn finishes_within(mut c: Command, limit: Duration) -> (bool, String) {
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("{c:?} still runs after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn an_apps_entitlements_as_a_fifo_or_a_link_to_dev_zero_are_refused_and_stall_nobody() {
    let d = root_daemon(&["--no-embedded", "--no-default-devices"]);
    d.cli(&["sysext", "developer", "on"]);
    let id = "com.example.Shipped";
    let dir = d.root.path().join("apps");
    std::fs::create_dir_all(&dir).unwrap();
    let app = make_app(&dir, "Fifo", &AppSpec::default());
    let entitlements = app.join("Contents/Entitlements.plist");
    for (what, node, rule) in [
        ("a FIFO", &Node::Fifo, "a FIFO"),
        (
            "a link to /dev/zero",
            &Node::Link("/dev/zero"),
            "a symbolic link",
        ),
    ] {
        std::fs::remove_file(&entitlements).unwrap();
        plant(&entitlements, node);
        let mut activate = Command::new(EXE);
        activate.arg("--root").arg(d.state()).args([
            "sysext",
            "activate",
            app.to_str().unwrap(),
            id,
        ]);
        let mut list = Command::new(EXE);
        list.arg("--root").arg(d.state()).args(["sysext", "list"]);
        let (listed, _) = finishes_within(list, Duration::from_secs(20));
        assert!(listed, "{what}: sysext list");
        let (ok, out) = finishes_within(activate, Duration::from_secs(20));
        assert!(
            !ok && out.contains(rule) && out.contains("Entitlements.plist"),
            "{what}: {out}"
        );
    }
    // The daemon did not read /dev/zero: its memory stayed small.
    let rss_kib = rss_kib(d.pid());
    assert!(rss_kib < 512 << 10, "the daemon holds {rss_kib} KiB");
}

#[test]
fn only_the_activating_app_its_user_or_an_administrator_may_deactivate_or_replace() {
    let d = root_daemon(&["--no-embedded", "--no-default-devices"]);
    let (a, b) = (trusted_key(&d, "a"), trusted_key(&d, "b"));
    // An administrator activates com.good.X from its own app.
    let good = "com.good.X";
    let (good_app, _) = installed_app(&d, "Good", &AppSpec::of(good));
    sign(&dext_of(&good_app, good), &a);
    d.cli(&["sysext", "activate", good_app.to_str().unwrap(), good]);
    d.cli(&["sysext", "approve", good]);
    // nobody's app carries an empty com.good.X.dext, and a version 2.
    let (evil_app, evil) = installed_app(
        &d,
        "Evil",
        &AppSpec {
            id: good,
            version: "2",
            ..Default::default()
        },
    );
    sign(&dext_of(&evil_app, good), &a);
    let (ok, out) = output(nobody_runs(&d, &evil, &["sysext", "deactivate", good], &[]));
    assert!(
        !ok && out
            .contains("only that app, run by that user, or an administrator may deactivate it")
            && out.contains("Good.app"),
        "{out}"
    );
    let (ok, out) = output(nobody_runs(
        &d,
        &evil,
        &[
            "sysext",
            "activate",
            evil_app.to_str().unwrap(),
            good,
            "--replace",
        ],
        &[],
    ));
    assert!(!ok && out.contains("may replace it"), "{out}");
    assert_eq!(state_of(&d, good).as_deref(), Some("enabled"));
    assert_eq!(records(&d)["extensions"][good]["version"], "1");

    // nobody's own app: its extension is its own to replace, with the
    // same key only, and to deactivate.
    let mine = "com.nobody.Y";
    let (v1_app, v1) = installed_app(&d, "Mine1", &AppSpec::of(mine));
    sign(&dext_of(&v1_app, mine), &a);
    let (ok, out) = output(nobody_runs(
        &d,
        &v1,
        &["sysext", "activate", v1_app.to_str().unwrap(), mine],
        &[],
    ));
    assert!(ok && out.contains("waiting for user"), "{out}");
    d.cli(&["sysext", "approve", mine]);
    assert_eq!(records(&d)["extensions"][mine]["owner"], 65534);
    // Version 2 from the same app path, signed by another key.
    let dir = v1_app.parent().unwrap().to_owned();
    let replace_from = |version: &str, key: &driverkit_bundle::signature::SigningKey| {
        std::fs::remove_dir_all(dext_of(&v1_app, mine)).unwrap();
        let fresh = make_app(
            &dir.join("fresh"),
            "Mine1",
            &AppSpec {
                id: mine,
                version,
                ..Default::default()
            },
        );
        std::fs::rename(dext_of(&fresh, mine), dext_of(&v1_app, mine)).unwrap();
        sign(&dext_of(&v1_app, mine), key);
        output(nobody_runs(
            &d,
            &v1,
            &[
                "sysext",
                "activate",
                v1_app.to_str().unwrap(),
                mine,
                "--replace",
            ],
            &[],
        ))
    };
    let (ok, out) = replace_from("2", &b);
    assert!(!ok && out.contains("signed by another key"), "{out}");
    assert_eq!(records(&d)["extensions"][mine]["version"], "1");
    let (ok, out) = replace_from("2", &a);
    assert!(ok, "{out}");
    assert_eq!(records(&d)["extensions"][mine]["version"], "2");
    let (ok, out) = output(nobody_runs(&d, &v1, &["sysext", "deactivate", mine], &[]));
    assert!(ok, "{out}");
    // An administrator may deactivate anyone's.
    d.cli(&["sysext", "deactivate", good]);
}

#[test]
fn a_borrowed_app_identity_is_refused() {
    let d = root_daemon(&["--no-embedded", "--no-default-devices"]);
    d.cli(&["sysext", "developer", "on"]);
    let id = "com.nobody.Z";
    let (app, exe) = installed_app(
        &d,
        "Borrowed",
        &AppSpec {
            id,
            ..Default::default()
        },
    );
    let activate = ["sysext", "activate", app.to_str().unwrap(), id];

    // Code the app does not carry, by the environment.
    let libc = std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.contains("libc.so"))
        .unwrap()
        .to_owned();
    let (ok, out) = output(nobody_runs(&d, &exe, &activate, &[("LD_PRELOAD", &libc)]));
    assert!(!ok && out.contains("sets LD_PRELOAD"), "{out}");

    // Started under a debugger its user controls.
    let mut gdb = as_user(NOBODY, "gdb");
    gdb.args(["-q", "-batch", "-ex", "run", "--args"])
        .arg(&exe)
        .arg("--root")
        .arg(d.state())
        .args(["sysext", "activate", app.to_str().unwrap(), id])
        .env("HOME", "/nonexistent");
    d.cli(&["sysext", "developer", "off"]);
    let (_, out) = output(gdb);
    assert!(out.contains("is traced by pid"), "{out}");
    d.cli(&["sysext", "developer", "on"]);

    // Connect, then exec the app, while a child that kept the connection
    // writes the request.
    let script = format!(
        r#"
import os, socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect({socket:?})
if os.fork() == 0:
    time.sleep(1.0)
    s.sendall(b'{{"op":"sysext_activate","app":{app:?},"bundle_id":"{id}"}}\n')
    print(s.makefile().readline(), flush=True)
    os._exit(0)
os.set_inheritable(s.fileno(), True)
os.execv({exe:?}, [{exe:?}, "--root", {root:?}, "events", "--count", "1"])
"#,
        socket = d.state().join("driverkitd.sock").to_str().unwrap(),
        app = app.to_str().unwrap(),
        exe = exe.to_str().unwrap(),
        root = d.state().to_str().unwrap(),
    );
    let mut python = as_user(NOBODY, "/usr/bin/python3");
    python
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = python.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert!(
        line.contains("a connection is its opener's alone"),
        "{line}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // An app its user can change is no identity.
    let own = d.root.path().join("own");
    std::fs::create_dir_all(&own).unwrap();
    let mine = make_app(
        &own,
        "Mine",
        &AppSpec {
            id,
            ..Default::default()
        },
    );
    let mine_exe = mine.join("Contents/MacOS/driverkit");
    std::fs::create_dir_all(mine_exe.parent().unwrap()).unwrap();
    std::fs::copy(EXE, &mine_exe).unwrap();
    Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(&own)
        .status()
        .unwrap();
    std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (ok, out) = output(nobody_runs(
        &d,
        &mine_exe,
        &["sysext", "activate", mine.to_str().unwrap(), id],
        &[],
    ));
    assert!(!ok && out.contains("is writable by uid 65534"), "{out}");

    // The same app, untouched, is one.
    let (ok, out) = output(nobody_runs(&d, &exe, &activate, &[]));
    assert!(ok, "{out}");
    let log = d.log();
    for rule in [
        "sets LD_PRELOAD",
        "is traced by pid",
        "writable by uid 65534",
    ] {
        assert!(log.contains(rule), "the log names {rule:?}:\n{log}");
    }
}

#[test]
fn keyboard_events_go_only_to_administrators_and_the_input_group() {
    let d = root_daemon(&["--no-default-devices", "--no-embedded"]);
    let hex = |s: String| u64::from_str_radix(s.trim().trim_start_matches("0x"), 16).unwrap();
    let keyboard = hex(d.cli(&["device", "plug", "keyboard"]));
    let mouse = hex(d.cli(&["device", "plug", "mouse"]));
    d.wait_until("two event services", || {
        d.nodes()
            .iter()
            .filter(|n| n["class"] == "IOHIDEventDriver")
            .count()
            == 2
    });
    let (root, said) = subscribe_as(&d, None, 5);
    assert!(!said.contains("note:"), "{said}");
    let (nobody, said) = subscribe_as(&d, Some(NOBODY), 1);
    assert!(
        said.contains("keyboard events go only to administrators and members of the input group"),
        "{said}"
    );
    d.cli(&["device", "type", &format!("{keyboard:#x}"), "pw"]);
    d.cli(&["device", "report", &format!("{mouse:#x}"), "01 03 fe 00"]);
    let root = events_of(root);
    assert_eq!(
        root.iter().filter(|e| e["kind"] == "keyboard").count(),
        4,
        "root sees the keys: {root:?}"
    );
    let nobody = events_of(nobody);
    assert_eq!(nobody.len(), 1);
    assert_eq!(
        nobody[0]["kind"], "pointer",
        "nobody sees the pointer only: {nobody:?}"
    );
}

#[test]
fn a_bundle_identifier_that_names_other_folders_is_refused() {
    let d = root_daemon(&["--no-embedded", "--no-default-devices"]);
    d.cli(&["sysext", "developer", "on"]);
    let dir = d.root.path().join("apps");
    std::fs::create_dir_all(&dir).unwrap();
    let app = make_app(&dir, "Dots", &AppSpec::default());
    for id in ["../evil", "com..x", "com.x/y"] {
        let err = refused(&d, &app, id);
        assert!(
            err.contains("bundle identifier") && err.contains("reverse-DNS"),
            "{id}: {err}"
        );
    }
    assert!(!d.state().join("evil").exists());
    // Inside a bundle's Info.plist too.
    let app = make_app(
        &dir,
        "Inner",
        &AppSpec {
            id: "com.x.y",
            ..Default::default()
        },
    );
    let info = dext_of(&app, "com.x.y").join("Info.plist");
    let text = std::fs::read_to_string(&info).unwrap().replace(
        "<key>CFBundleIdentifier</key><string>com.x.y</string>",
        "<key>CFBundleIdentifier</key><string>com.x/../y</string>",
    );
    std::fs::write(&info, text).unwrap();
    let err = refused(&d, &app, "com.x.y");
    assert!(
        err.contains("CFBundleIdentifier") && err.contains("'/'"),
        "{err}"
    );
    staging_is_empty(&d);
}

#[test]
fn a_per_user_daemons_own_user_administers_it() {
    must_be_root();
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = root.path().join("state");
    std::fs::create_dir(&state).unwrap();
    Command::new("chown")
        .args(["65534:65534"])
        .arg(&state)
        .status()
        .unwrap();
    let mut daemon = as_user(NOBODY, EXE)
        .arg("--root")
        .arg(&state)
        .args(["run", "--no-embedded", "--no-default-devices"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let as_nobody = |args: &[&str]| {
        let mut c = as_user(NOBODY, EXE);
        c.arg("--root").arg(&state).args(args);
        output(c)
    };
    let start = Instant::now();
    while !as_nobody(&["status"]).0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the daemon never answered"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (ok, out) = as_nobody(&["device", "plug", "sensor"]);
    assert!(ok, "its own user plugs a device: {out}");
    let (ok, out) = as_nobody(&["stop"]);
    assert!(ok, "its own user stops it: {out}");
    assert!(daemon.wait().unwrap().success());
}

#[test]
fn a_state_folder_someone_else_made_or_may_write_and_a_linked_lock_are_refused() {
    must_be_root();
    let dir = tempfile::tempdir().unwrap();
    let run = |root: &Path| {
        output({
            let mut c = Command::new(EXE);
            c.arg("--root")
                .arg(root)
                .args(["run", "--no-embedded", "--no-default-devices"]);
            c
        })
    };
    // Made first by another user (as anyone may in /tmp).
    let theirs = dir.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    Command::new("chown")
        .args(["65534:65534"])
        .arg(&theirs)
        .status()
        .unwrap();
    let (ok, out) = run(&theirs);
    assert!(!ok && out.contains("belongs to uid 65534"), "{out}");
    // Anyone may write in it.
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (ok, out) = run(&open);
    assert!(
        !ok && out.contains("may be written by others (mode 0777)"),
        "{out}"
    );
    // Group-writable only, as a umask of 002 makes a user's folders: its
    // own user's, so it is closed rather than refused.
    let grouped = dir.path().join("grouped");
    std::fs::create_dir(&grouped).unwrap();
    std::fs::set_permissions(&grouped, std::fs::Permissions::from_mode(0o775)).unwrap();
    driverkit_core::root::check_owned(&grouped).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&grouped).unwrap().mode() & 0o7777, 0o755);
    // Its lock file is a link to a file the daemon would truncate.
    let linked = dir.path().join("linked");
    std::fs::create_dir(&linked).unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    std::os::unix::fs::symlink(&victim, linked.join("daemon.lock")).unwrap();
    let (ok, out) = run(&linked);
    assert!(
        !ok && out.contains("daemon.lock is a symbolic link"),
        "{out}"
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
}

/// A raw USB/IP client, 30 lines of Python as an unprivileged user would
/// write: imports bus ID 1-1 from `listen` and reads the device
/// descriptor. Prints `closed` when the server hangs up without an
/// answer, `status N` when it refuses the import, or the descriptor's hex.
const RAW_IMPORT: &str = r#"
import socket, struct, sys
host, port = sys.argv[1].rsplit(":", 1)
s = socket.create_connection((host, int(port)))
s.sendall(struct.pack(">HHI", 0x0111, 0x8003, 0) + b"1-1".ljust(32, b"\0"))
def recv(n):
    b = b""
    while len(b) < n:
        try:
            c = s.recv(n - len(b))
        except ConnectionResetError:
            c = b""
        if not c:
            return None
        b += c
    return b
head = recv(8)
if head is None:
    print("closed"); sys.exit(0)
version, code, status = struct.unpack(">HHI", head)
if status != 0:
    print("status", status); sys.exit(0)
info = recv(312)
setup = bytes([0x80, 6, 0, 1, 0, 0, 18, 0])
s.sendall(struct.pack(">IIIIIIIIII", 1, 1, 0, 1, 0, 0, 18, 0, 0, 0) + setup)
ret = recv(48)
status, actual = struct.unpack(">iI", ret[20:28])
data = recv(actual) if actual else b""
print("status", status, "descriptor", data.hex())
"#;

fn raw_import_as(d: &Daemon, user: &str, listen: &str) -> String {
    let mut c = as_user(user, "/usr/bin/python3");
    c.args(["-c", RAW_IMPORT, listen]);
    let (ok, out) = finishes_within(c, Duration::from_secs(30));
    assert!(ok, "{out}\n{}", d.log());
    out
}

/// A root daemon exporting its virtual keyboard (bus ID 1-1) on loopback,
/// and where.
fn exporting_keyboard() -> (Daemon, String) {
    let d = root_daemon(&[
        "--no-default-devices",
        "--no-embedded",
        "--device",
        "keyboard",
    ]);
    let listen = format!("127.0.0.1:{}", free_port());
    d.cli(&["device", "export", "all", "--listen", &listen]);
    (d, listen)
}

#[test]
fn a_usbip_export_admits_only_the_peers_and_users_it_names() {
    let (d, listen) = exporting_keyboard();
    // nobody's process on loopback: not an administrator, not named.
    let out = raw_import_as(&d, NOBODY, &listen);
    assert!(out.contains("closed"), "{out}");
    d.wait_log(
        "which is neither an administrator nor a user the export names",
        1,
    );
    assert!(d.log().contains("uid 65534"), "{}", d.log());
    // Root's is an administrator's.
    let out = raw_import_as(&d, "0", &listen);
    assert!(out.contains("status 0 descriptor 1201"), "{out}");
    // Once the export names nobody, nobody's works.
    d.cli(&[
        "device", "export", "all", "--listen", &listen, "--user", "nobody",
    ]);
    let out = raw_import_as(&d, NOBODY, &listen);
    assert!(out.contains("status 0 descriptor 1201"), "{out}");
    // Beyond loopback, an export must say who may import.
    let wide = format!("0.0.0.0:{}", free_port());
    let out = d.run_cli(&["device", "export", "all", "--listen", &wide]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("needs --allow"),
        "{err}"
    );
    let out = d.run_cli(&[
        "device",
        "export",
        "all",
        "--listen",
        &wide,
        "--allow",
        "10.0.0.0/8",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.wait_log("exporting beyond loopback", 1);
    // Loopback is not in 10.0.0.0/8: even root's process is refused there.
    let out = raw_import_as(&d, "0", &wide.replace("0.0.0.0", "127.0.0.1"));
    assert!(out.contains("closed"), "{out}");
    d.wait_log("is not allowed to import", 1);
}

#[test]
fn a_usbip_peer_that_floods_and_never_reads_its_answers_stalls_only_itself() {
    use std::io::{Read, Write};
    let (d, listen) = exporting_keyboard();
    let threads_before = d.threads();
    let mut s = std::net::TcpStream::connect(&listen).unwrap();
    s.write_all(&driverkit_usb::usbip::emit_import("1-1"))
        .unwrap();
    let mut reply = vec![0u8; 8 + 312];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(&reply[4..8], &[0, 0, 0, 0], "the import succeeds");
    // 10,000 GET_DESCRIPTORs, none of whose answers is ever read.
    s.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut sent = 0;
    let mut most_threads = 0;
    for seqnum in 1..=10_000u32 {
        let mut urb = Vec::with_capacity(48);
        for word in [1, seqnum, 0, 1, 0, 0, 18, 0, 0, 0] {
            urb.extend_from_slice(&u32::to_be_bytes(word));
        }
        urb.extend_from_slice(&[0x80, 6, 0, 1, 0, 0, 18, 0]);
        if s.write_all(&urb).is_err() {
            break; // the daemon stopped reading: pushed back
        }
        sent += 1;
        if seqnum % 500 == 0 {
            most_threads = most_threads.max(d.threads());
        }
    }
    most_threads = most_threads.max(d.threads());
    eprintln!("flood: {sent} URBs written; daemon threads {threads_before} before, at most {most_threads} during");
    // A thread per URB in flight, at most 64 of them for this peer.
    assert!(
        most_threads <= threads_before + 64 + 4,
        "threads grew from {threads_before} to {most_threads}"
    );
    let rss_kib = rss_kib(d.pid());
    assert!(rss_kib < 256 << 10, "the daemon holds {rss_kib} KiB");
    // Another peer is served meanwhile.
    let listed = d.cli(&["device", "list", "--usbip", &listen]);
    assert!(
        listed.contains("1-1") || listed.is_empty() || listed.contains("no device"),
        "{listed}"
    );
    let status = d.cli(&["status"]);
    assert!(status.contains("daemon pid"), "{status}");
    // The flooder leaves; its device comes back.
    drop(s);
    d.wait_until("the keyboard back", || {
        d.log().contains("usbip    1-1") && d.log().contains("back")
    });
}

#[test]
fn apples_usb_development_wildcard_is_for_developer_mode_only() {
    let d = root_daemon(&["--no-embedded", "--no-default-devices"]);
    let key = trusted_key(&d, "k");
    let id = "com.example.Wild";
    let dir = d.root.path().join("apps");
    std::fs::create_dir_all(&dir).unwrap();
    let app = make_app(
        &dir,
        "Wild",
        &AppSpec {
            id,
            personality: "<key>IOProviderClass</key><string>IOUSBHostDevice</string>\
                          <key>idVendor</key><integer>4660</integer>",
            entitlements: "<key>com.apple.developer.driverkit.transport.usb</key>\
                           <array><dict><key>idVendor</key><string>*</string></dict></array>",
            ..Default::default()
        },
    );
    let dext = dext_of(&app, id);
    sign(&dext, &key);
    let err = refused(&d, &app, id);
    assert!(
        err.contains("idVendor \"*\"") && err.contains("developer mode"),
        "{err}"
    );
    let validated = d.cli(&["validate", dext.to_str().unwrap()]);
    assert!(
        validated.contains("valid for development")
            && validated.contains(
                "warning: com.apple.developer.driverkit.transport.usb names idVendor \"*\""
            ),
        "{validated}"
    );
    d.cli(&["sysext", "developer", "on"]);
    d.cli(&["sysext", "activate", app.to_str().unwrap(), id]);
    assert_eq!(state_of(&d, id).as_deref(), Some("waiting_for_user"));
    d.wait_log("Apple's wildcard for development-signed dexts", 1);
}

//! A real daemon (`driverkit run`) in a temporary root, driven through the
//! real CLI, with test bundles whose executables are links to the
//! `driverkit` binary (which becomes the built-in test driver by name).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const EXE: &str = env!("CARGO_BIN_EXE_driverkit");
const WAIT: Duration = Duration::from_secs(30);

pub struct Daemon {
    child: Option<Child>,
    pub root: tempfile::TempDir,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    /// `driverkit run --root TMP ARGS...`, waiting until it answers.
    pub fn start(args: &[&str]) -> Daemon {
        Daemon::spawn(tempfile::tempdir().unwrap(), args, &[])
    }

    /// A daemon with more in its environment.
    #[allow(dead_code)]
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Daemon {
        Daemon::spawn(tempfile::tempdir().unwrap(), args, env)
    }

    /// Stops this daemon (SIGKILL if it still runs) and starts another on
    /// the same state directory with `args` and `env`.
    pub fn restart(mut self, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let root = std::mem::replace(&mut self.root, tempfile::tempdir().unwrap());
        Daemon::spawn(root, args, env)
    }

    /// Waits for the daemon to have exited by itself (a crash point).
    pub fn wait_exit(&mut self) {
        let child = self.child.as_mut().unwrap();
        let deadline = Instant::now() + WAIT;
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the daemon did not die");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs a subcommand; its output whether or not it succeeded.
    pub fn run_cli(&self, args: &[&str]) -> Output {
        self.try_cli(args)
    }

    fn spawn(root: tempfile::TempDir, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut child = Command::new(EXE)
            .arg("run")
            .arg("--root")
            .arg(root.path().join("state"))
            // The tests' typing must not reach the desktop of the machine
            // running them.
            .arg("--no-uinput")
            .arg("--no-linux-usb")
            .args(args)
            .env("DRIVERKIT_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&strip_ansi(&line));
                l.push('\n');
            }
        });
        let d = Daemon {
            child: Some(child),
            root,
            log,
        };
        d.wait_until("the daemon answers", || {
            d.try_cli(&["status"]).status.success()
        });
        d
    }

    pub fn state(&self) -> PathBuf {
        self.root.path().join("state")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// The daemon's threads now, from /proc.
    pub fn threads(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap()
    }

    fn try_cli(&self, args: &[&str]) -> Output {
        Command::new(EXE)
            .arg("--root")
            .arg(self.state())
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs a subcommand against this daemon; panics with its stderr if it fails.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = self.try_cli(args);
        assert!(
            out.status.success(),
            "driverkit {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `ioreg --json`, flattened: every node, depth first.
    pub fn nodes(&self) -> Vec<Value> {
        let mut tree: Value = serde_json::from_str(&self.cli(&["ioreg", "--json"])).unwrap();
        numeric_ids(&mut tree);
        let mut out = Vec::new();
        flatten(&tree, &mut out);
        out
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn wait_until(&self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done() {
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}\n--- daemon log ---\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Waits for a node satisfying `pred` and returns it.
    pub fn wait_node(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let mut found = None;
        self.wait_until(what, || {
            found = self.nodes().into_iter().find(|n| pred(n));
            found.is_some()
        });
        found.unwrap()
    }

    pub fn wait_log(&self, needle: &str, count: usize) {
        self.wait_until(&format!("{count} x {needle:?} in the log"), || {
            self.log().matches(needle).count() >= count
        });
    }

    /// `load PATH`, which needs developer mode: turned on first (tests of
    /// what developer mode allows use `sysext developer` themselves).
    pub fn load(&self, bundle: &Path) -> String {
        self.cli(&["sysext", "developer", "on"]);
        self.cli(&["load", bundle.to_str().unwrap()])
    }

    /// Sends SIGINT (Ctrl-C) and waits for a clean exit.
    pub fn interrupt(mut self) -> String {
        let mut child = self.child.take().unwrap();
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
        let status = child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let log = self.log();
        assert!(status.success(), "daemon exited with {status}\n{log}");
        log
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `ioreg --json` prints IDs as the text does (0x...); tests compare them
/// as the numbers `device plug` and the APIs give.
fn numeric_ids(node: &mut Value) {
    if let Some(hex) = node["id"].as_str() {
        node["id"] = u64::from_str_radix(hex.trim_start_matches("0x"), 16)
            .expect("a hex registry ID")
            .into();
    }
    if let Some(children) = node["children"].as_array_mut() {
        children.iter_mut().for_each(numeric_ids);
    }
}

fn flatten(node: &Value, out: &mut Vec<Value>) {
    out.push(node.clone());
    if let Some(children) = node["children"].as_array() {
        for c in children {
            flatten(c, out);
        }
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// True while `pid` is a live (not zombie) process.
pub fn alive(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

pub fn kill9(pid: u64) {
    let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
}

/// A personality of the built-in test driver.
pub struct P<'a> {
    pub name: &'a str,
    pub provider_class: &'a str,
    pub extra: &'a str,
}

/// Writes `<dir>/Tests.app/Contents/Library/SystemExtensions/<id>.dext`
/// for the built-in test driver with `ps`, entitled to the USB vendors and
/// PCI devices its personalities name.
pub fn test_bundle(dir: &Path, id: &str, ps: &[P<'_>]) -> PathBuf {
    let bundle = driverkit_bundle::location::dext_in_app(&dir.join("Tests.app"), id);
    std::fs::create_dir_all(&bundle).unwrap();
    // Each personality's value of `key` (as `<type>` in its extra keys),
    // as an entitlement entry `{ key = value }`.
    let entries = |key: &str, kind: &str| -> String {
        let tag = format!("<key>{key}</key><{kind}>");
        ps.iter()
            .filter_map(|p| {
                let rest = &p.extra[p.extra.find(&tag)? + tag.len()..];
                let value = &rest[..rest.find('<')?];
                Some(format!(
                    "<dict><key>{key}</key><{kind}>{value}</{kind}></dict>"
                ))
            })
            .collect()
    };
    let vendors = entries("idVendor", "integer");
    let pci = entries("IOPCIPrimaryMatch", "string");
    std::fs::write(
        bundle.join("Entitlements.plist"),
        format!(
            r#"<plist version="1.0"><dict>
  <key>com.apple.developer.driverkit</key><true/>
  <key>com.apple.developer.driverkit.transport.usb</key><array>{vendors}</array>
  <key>com.apple.developer.driverkit.transport.pci</key><array>{pci}</array>
</dict></plist>"#
        ),
    )
    .unwrap();
    let mut personalities = String::new();
    for p in ps {
        personalities.push_str(&format!(
            "<key>{name}</key><dict>
               <key>CFBundleIdentifier</key><string>{id}</string>
               <key>IOClass</key><string>IOUserService</string>
               <key>IOUserClass</key><string>TestDriver</string>
               <key>IOUserServerName</key><string>{id}</string>
               <key>IOProviderClass</key><string>{class}</string>
               {extra}
             </dict>",
            name = p.name,
            class = p.provider_class,
            extra = p.extra
        ));
    }
    let info = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<plist version="1.0"><dict>
  <key>CFBundleIdentifier</key><string>{id}</string>
  <key>CFBundleExecutable</key><string>DriverKitTestDriver</string>
  <key>CFBundleVersion</key><string>1</string>
  <key>CFBundleShortVersionString</key><string>1.0</string>
  <key>OSBundleUsageDescription</key><string>The fault-injection test driver.</string>
  <key>IOKitPersonalities</key><dict>{personalities}</dict>
</dict></plist>"#
    );
    std::fs::write(bundle.join("Info.plist"), info).unwrap();
    let link = bundle.join("DriverKitTestDriver");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(EXE, link).unwrap();
    bundle
}

/// Writes a device file and returns its path.
pub fn device_file(dir: &Path, file: &str, body: &str) -> String {
    let path = dir.join(file);
    std::fs::write(&path, body).unwrap();
    path.to_str().unwrap().to_owned()
}

pub fn id_of(node: &Value) -> String {
    format!("{:#x}", node["id"].as_u64().unwrap())
}

pub fn personality(node: &Value) -> &str {
    node["properties"]["IOMatchedPersonality"]
        .as_str()
        .unwrap_or("")
}

/// Plugs a virtual device named `T` with `TestDevice = true` (what the test
/// personalities match) and returns its registry entry ID.
pub fn plug_test_device(d: &Daemon) -> u64 {
    let dev = device_file(
        d.root.path(),
        "t.toml",
        "name = \"T\"\n[properties]\nTestDevice = true\n",
    );
    let id = d.cli(&["device", "plug", &dev]);
    u64::from_str_radix(id.trim().trim_start_matches("0x"), 16).unwrap()
}

/// Loads test bundle `id` with one personality, `name`, that matches the
/// test device and starts the test driver behaving as `behavior`
/// (`TestStartBehavior`), then plugs the device.
pub fn start_behaving(d: &Daemon, id: &str, name: &str, behavior: &str) {
    let extra = format!(
        "<key>IOPropertyMatch</key><dict><key>TestDevice</key><true/></dict>\
         <key>TestStartBehavior</key><string>{behavior}</string>"
    );
    let bundle = test_bundle(
        d.root.path(),
        id,
        &[P {
            name,
            provider_class: "IOVirtualDevice",
            extra: &extra,
        }],
    );
    d.load(&bundle);
    plug_test_device(d);
}

/// The children of process `parent` (a daemon's dexts), from /proc: the
/// fourth field of `stat`, after the parenthesised name.
pub fn children_of(parent: u32) -> Vec<u64> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    s[s.rfind(')')? + 2..]
                        .split(' ')
                        .nth(1)?
                        .parse::<u32>()
                        .ok()
                })
                == Some(parent)
        })
        .collect()
}

// Apps and users, for the system extension and trust-boundary tests.

pub fn records(d: &Daemon) -> Value {
    serde_json::from_str(&d.cli(&["sysext", "list", "--json"])).unwrap()
}

pub fn state_of(d: &Daemon, id: &str) -> Option<String> {
    records(d)["extensions"][id]["state"]
        .as_str()
        .map(str::to_owned)
}

/// An app carrying the built-in test driver as the dext `id`, version
/// `version` (CFBundleVersion; the short version is `version.0`), matched
/// on IOUserResources, with the service property `TestVersion`.
pub struct AppSpec<'a> {
    pub id: &'a str,
    pub version: &'a str,
    /// Extra personality keys.
    pub personality: &'a str,
    /// The dext's entitlement keys, beyond `driverkit`.
    pub entitlements: &'a str,
    pub app_may_install: bool,
    /// Info.plist keys to leave out.
    pub without: &'a [&'a str],
}

impl<'a> AppSpec<'a> {
    /// The default app, carrying the dext `id`.
    pub fn of(id: &'a str) -> AppSpec<'a> {
        AppSpec {
            id,
            ..Default::default()
        }
    }
}

impl Default for AppSpec<'_> {
    fn default() -> Self {
        AppSpec {
            id: "com.example.Shipped",
            version: "1",
            personality: "<key>IOProviderClass</key><string>IOUserResources</string>\
                          <key>IOResourceMatch</key><string>IOKit</string>",
            entitlements: "",
            app_may_install: true,
            without: &[],
        }
    }
}

pub fn make_app(dir: &Path, name: &str, spec: &AppSpec<'_>) -> PathBuf {
    let app = dir.join(format!("{name}.app"));
    let _ = std::fs::remove_dir_all(&app);
    let dext = app.join(format!(
        "Contents/Library/SystemExtensions/{}.dext",
        spec.id
    ));
    std::fs::create_dir_all(&dext).unwrap();
    let mut keys = vec![
        (
            "CFBundleIdentifier",
            format!("<string>{}</string>", spec.id),
        ),
        (
            "CFBundleExecutable",
            "<string>DriverKitTestDriver</string>".into(),
        ),
        (
            "CFBundleVersion",
            format!("<string>{}</string>", spec.version),
        ),
        (
            "CFBundleShortVersionString",
            format!("<string>{}.0</string>", spec.version),
        ),
        (
            "OSBundleUsageDescription",
            "<string>Shipped in an app.</string>".into(),
        ),
        (
            "IOKitPersonalities",
            format!(
                "<dict><key>Shipped</key><dict>\
                   <key>CFBundleIdentifier</key><string>{id}</string>\
                   <key>IOClass</key><string>IOUserService</string>\
                   <key>IOUserClass</key><string>TestDriver</string>\
                   <key>IOUserServerName</key><string>{id}</string>\
                   <key>TestVersion</key><string>{v}</string>\
                   {p}</dict></dict>",
                id = spec.id,
                v = spec.version,
                p = spec.personality
            ),
        ),
    ];
    keys.retain(|(k, _)| !spec.without.contains(k));
    let body: String = keys
        .iter()
        .map(|(k, v)| format!("<key>{k}</key>{v}"))
        .collect();
    std::fs::write(
        dext.join("Info.plist"),
        format!(r#"<plist version="1.0"><dict>{body}</dict></plist>"#),
    )
    .unwrap();
    std::fs::write(
        dext.join("Entitlements.plist"),
        format!(
            r#"<plist version="1.0"><dict><key>com.apple.developer.driverkit</key><true/>{}</dict></plist>"#,
            spec.entitlements
        ),
    )
    .unwrap();
    // A small executable (the store copies it at every activation) that
    // becomes the built-in test driver by its argv[0].
    let exe = dext.join("DriverKitTestDriver");
    std::fs::write(
        &exe,
        format!("#!/bin/bash\nexec -a DriverKitTestDriver {EXE} \"$@\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(
        app.join("Contents/Entitlements.plist"),
        format!(
            r#"<plist version="1.0"><dict><key>com.apple.developer.system-extension.install</key><{}/></dict></plist>"#,
            spec.app_may_install
        ),
    )
    .unwrap();
    app
}

/// `driverkit sysext activate`'s failure message (it must fail).
pub fn refused(d: &Daemon, app: &Path, id: &str) -> String {
    let out = d.run_cli(&["sysext", "activate", app.to_str().unwrap(), id, "--replace"]);
    assert!(
        !out.status.success(),
        "activation of {} succeeded",
        app.display()
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs the CLI as `nobody` (uid 65534), as an unprivileged user would.
pub fn as_nobody(d: &Daemon, args: &[&str]) -> std::process::Output {
    as_user("65534", EXE)
        .arg("--root")
        .arg(d.state())
        .args(args)
        .output()
        .expect("setpriv (util-linux)")
}

/// `program` run as `user` (a number; its group the same), with no
/// supplementary groups, by util-linux's `setpriv`.
pub fn as_user(user: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid", user, "--regid", user, "--clear-groups", "--"])
        .arg(program);
    c
}

/// The JSON lines a finished `driverkit events --json` printed.
pub fn events_of(child: Child) -> Vec<Value> {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A free port below the ephemeral range (a test's USB/IP server takes
/// ephemeral ones), never the same twice in this process: a daemon binds
/// it later, so two tests must not be handed the same one meanwhile.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let first = 24_000 + (std::process::id() % 4_000) as u16;
    loop {
        let port = first + NEXT.fetch_add(1, Ordering::Relaxed) % 4_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The resident memory of process `pid`, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// `driverkit events --json --count N` by `user` (root when `None`),
/// listening; the note it printed first, if any.
pub fn subscribe_as(d: &Daemon, user: Option<&str>, count: usize) -> (std::process::Child, String) {
    let mut c = match user {
        Some(u) => as_user(u, EXE),
        None => Command::new(EXE),
    };
    let mut child = c
        .arg("--root")
        .arg(d.state())
        .args(["events", "--json", "--count", &count.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut said = String::new();
    loop {
        let mut line = String::new();
        err.read_line(&mut line).unwrap();
        said.push_str(&line);
        if line.contains("listening") || line.is_empty() {
            break;
        }
    }
    (child, said)
}

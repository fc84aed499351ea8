//! Every dext runs sandboxed: its own unprivileged user, `no_new_privs`,
//! a seccomp filter and a Landlock domain; what it tries beyond them is
//! refused, and the daemon's log names it.

mod support;

use support::*;

/// The fields of `/proc/<pid>/status` a sandboxed process is judged by.
fn status_of(pid: u64) -> (u32, String, String) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status:\n{text}"))
    };
    let uid = field("Uid:")
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    (uid, field("NoNewPrivs:"), field("Seccomp:"))
}

fn running_as_root() -> bool {
    rustix::process::geteuid().is_root()
}

#[test]
fn every_example_dext_runs_unprivileged_with_no_new_privs_and_a_seccomp_filter() {
    let d = Daemon::start(&[]);
    let examples = [
        "NullDriver",
        "VirtualSensorDriver",
        "PacketQueueDriver",
        "HIDKeyboardDriver",
    ];
    d.wait_until("every example dext running", || {
        let nodes = d.nodes();
        examples.iter().all(|name| {
            nodes
                .iter()
                .any(|n| n["name"] == *name && n["pid"].is_u64() && n["state"]["active"] == true)
        })
    });
    for node in d.nodes().iter().filter(|n| n["pid"].is_u64()) {
        let pid = node["pid"].as_u64().unwrap();
        let (uid, no_new_privs, seccomp) = status_of(pid);
        let name = &node["name"];
        if running_as_root() {
            assert_ne!(uid, 0, "{name} (pid {pid}) runs as root");
        }
        assert_eq!(no_new_privs, "1", "{name} (pid {pid})");
        assert_eq!(seccomp, "2", "{name} (pid {pid}): 2 is a filter");
    }
    let log = d.interrupt();
    assert!(!log.contains("sandbox  OFF"), "{log}");
}

fn escape_bundle(d: &Daemon) -> std::path::PathBuf {
    let socket = d.state().join(driverkit_wire::root::CONTROL_SOCKET);
    test_bundle(
        d.root.path(),
        "org.test.Escape",
        &[P {
            name: "Escaper",
            provider_class: "IOVirtualDevice",
            extra: &format!(
                "<key>IOPropertyMatch</key><dict><key>TestDevice</key><true/></dict>\
                 <key>TestStartBehavior</key><string>escape</string>\
                 <key>TestEscapeSocket</key><string>{}</string>",
                socket.display()
            ),
        }],
    )
}

fn escape_outcomes(d: &Daemon) -> serde_json::Value {
    let bundle = escape_bundle(d);
    d.load(&bundle);
    plug_test_device(d);
    let node = d.wait_node("the escaping TestDriver started", |n| {
        n["name"] == "TestDriver" && n["properties"]["TestEscape"].is_object()
    });
    node["properties"]["TestEscape"].clone()
}

#[test]
fn a_dext_that_tries_to_escape_is_refused_and_the_daemon_logs_it() {
    let d = Daemon::start(&["--no-embedded", "--no-default-devices"]);
    let outcomes = escape_outcomes(&d);
    for attempt in [
        "read /etc/passwd",
        "connect control socket",
        "exec /bin/true",
        "tcp 127.0.0.1",
        // A dext is one process, and signals reach only itself.
        "fork",
        "signal pid 1",
    ] {
        let outcome = outcomes[attempt].as_str().unwrap_or_default();
        assert!(
            outcome.starts_with("refused: "),
            "{attempt}: {outcome}\n{outcomes}"
        );
    }
    // Threads still start (clone with CLONE_THREAD; glibc falls back from
    // clone3, which fails with ENOSYS).
    assert_eq!(outcomes["thread"], "done", "{outcomes}");
    // The kernel's audit records, read by the daemon and named.
    d.wait_log("Landlock refused fs.read_file path=\"/etc/passwd\"", 1);
    // Running another program needs a new process first, which a dext
    // cannot make (Landlock's exec rule stands behind it).
    d.wait_log("refused system call clone (56)", 1);
    // Reaching the control socket or TCP needs a socket, which no dext has.
    d.wait_log("refused system call socket", 2);
    let log = d.log();
    assert!(
        log.contains("sandbox  org.test.Escape["),
        "refusals carry the dext's name:\n{log}"
    );
    d.interrupt();
}

#[test]
fn a_dext_that_hoards_memory_dies_at_its_limit_and_the_daemon_goes_on() {
    let d = Daemon::start(&["--no-embedded", "--no-default-devices"]);
    let bundle = test_bundle(
        d.root.path(),
        "org.test.Hoard",
        &[P {
            name: "Hoarder",
            provider_class: "IOVirtualDevice",
            extra: "<key>IOPropertyMatch</key><dict><key>TestDevice</key><true/></dict>\
                    <key>TestStartBehavior</key><string>hoard</string>",
        }],
    );
    d.load(&bundle);
    plug_test_device(&d);
    // Its allocation failed (the runtime says so) and it ended: a crash.
    d.wait_log("memory allocation of 10737418240 bytes failed", 1);
    d.wait_log("crashed", 1);
    // The daemon is unharmed: it answers, and its own memory stayed small.
    let status = d.cli(&["status"]);
    assert!(status.contains("pid"), "{status}");
    let rss_kib = rss_kib(d.pid());
    assert!(rss_kib < 1 << 20, "the daemon holds {rss_kib} KiB");
    d.interrupt();
}

/// The cgroup v2 hierarchy this machine has, if the daemon (root) can make
/// groups in it.
fn cgroup2_writable() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.contains(" - cgroup2 "))
        && running_as_root()
}

/// In log mode seccomp lets a fork through (and logs it): the dext's
/// cgroup is what ends the child, when the dext stops and when it crashes.
#[test]
fn nothing_a_dext_started_outlives_it_when_it_stops_or_crashes() {
    if !cgroup2_writable() {
        eprintln!("no writable cgroup v2 here: the seccomp test above covers fork");
        return;
    }
    let d = Daemon::start(&["--no-embedded", "--no-default-devices", "--sandbox=log"]);
    let bundle = escape_bundle(&d);
    d.load(&bundle);
    for ending in ["stop", "crash"] {
        let device = plug_test_device(&d);
        let node = d.wait_node("the escaping TestDriver started", |n| {
            n["name"] == "TestDriver" && n["properties"]["TestEscape"].is_object()
        });
        let outcomes = &node["properties"]["TestEscape"];
        assert_eq!(outcomes["fork"], "done", "{outcomes}");
        let child = outcomes["fork pid"].as_u64().unwrap();
        let dext = node["properties"]["TestDriverPID"].as_u64().unwrap();
        assert!(alive(child), "the forked child runs");
        let cgroup = std::fs::read_to_string(format!("/proc/{child}/cgroup")).unwrap();
        assert!(
            cgroup.contains("/dext-"),
            "the child is in its dext's cgroup: {cgroup}"
        );
        match ending {
            "stop" => {
                d.cli(&["device", "unplug", &format!("{device:#x}")]);
            }
            _ => kill9(dext),
        }
        d.wait_until(
            &format!("the forked child gone after the dext's {ending}"),
            || !alive(child),
        );
        d.wait_until("the dext gone", || !alive(dext));
        if ending == "crash" {
            d.wait_log("crashed", 1);
        }
    }
}

/// A limit of `/proc/PID/limits` (its soft value), by its name.
fn limit_of(pid: u64, name: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l[name.len()..].split_whitespace().next().map(str::to_owned))
        .unwrap_or_default()
}

#[test]
fn a_personality_asks_for_its_limits_within_the_administrators() {
    let d = Daemon::start(&[
        "--no-embedded",
        "--no-default-devices",
        "--dext-memory-max-mb",
        "128",
    ]);
    let bundle = test_bundle(
        d.root.path(),
        "org.test.Limits",
        &[P {
            name: "Limited",
            provider_class: "IOVirtualDevice",
            extra: "<key>IOPropertyMatch</key><dict><key>TestDevice</key><true/></dict>\
                    <key>IOUserServerMemoryLimitMB</key><integer>256</integer>\
                    <key>IOUserServerTaskLimit</key><integer>64</integer>",
        }],
    );
    d.load(&bundle);
    plug_test_device(&d);
    let node = d.wait_node("the limited TestDriver started", |n| {
        n["name"] == "TestDriver" && n["properties"]["TestDriverStarted"] == true
    });
    let pid = node["properties"]["TestDriverPID"].as_u64().unwrap();
    // 256 MiB asked, 128 allowed.
    assert_eq!(limit_of(pid, "Max data size"), (128u64 << 20).to_string());
    if running_as_root() {
        assert_eq!(limit_of(pid, "Max processes"), "64");
    }
    d.wait_log("an administrator allows at most 128 MiB", 1);
}

#[test]
fn log_mode_names_each_call_the_sandbox_would_refuse_and_refuses_none() {
    let d = Daemon::start(&["--no-embedded", "--no-default-devices", "--sandbox=log"]);
    let outcomes = escape_outcomes(&d);
    d.wait_log("would refuse system call socket", 1);
    // Its fork went through (logged); its cgroup, where there is one, ends
    // the child with the dext, and otherwise we do.
    if let Some(child) = outcomes["fork pid"].as_u64() {
        d.wait_log("would refuse system call clone", 1);
        kill9(child);
    }
    // Landlock has no permissive mode, so log mode does not apply it.
    assert_eq!(outcomes["read /etc/passwd"], "done", "{outcomes}");
    let log = d.interrupt();
    assert!(
        log.contains("LOG mode"),
        "the mode is said at start:\n{log}"
    );
}

#[test]
fn without_the_sandbox_the_daemon_says_so_loudly() {
    let d = Daemon::start(&["--no-embedded", "--no-default-devices", "--no-sandbox"]);
    let outcomes = escape_outcomes(&d);
    assert_eq!(outcomes["read /etc/passwd"], "done", "{outcomes}");
    // Unconfined, its fork succeeded, and nothing ends the child but us.
    if let Some(child) = outcomes["fork pid"].as_u64() {
        kill9(child);
    }
    let log = d.interrupt();
    assert!(log.contains("sandbox  OFF"), "{log}");
}

#[test]
fn an_unknown_sandbox_user_is_refused_before_the_daemon_starts() {
    let d = Daemon::start(&["--no-embedded", "--no-default-devices"]);
    let out = d.run_cli(&["run", "--dext-user", "no-such-user-driverkit"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    if running_as_root() {
        assert!(
            err.contains("sandbox user 'no-such-user-driverkit' not found in /etc/passwd"),
            "{err}"
        );
    }
    d.interrupt();
}

#[test]
fn a_script_executable_is_refused_with_the_reason() {
    let d = Daemon::start(&[
        "--no-embedded",
        "--no-default-devices",
        "--relaunch-limit",
        "0",
    ]);
    let bundle = test_bundle(
        d.root.path(),
        "org.test.Script",
        &[P {
            name: "Scripted",
            provider_class: "IOVirtualDevice",
            extra: "<key>IOPropertyMatch</key><dict><key>TestDevice</key><true/></dict>",
        }],
    );
    let exe = bundle.join("DriverKitTestDriver");
    std::fs::remove_file(&exe).unwrap();
    std::fs::write(&exe, format!("#!/bin/sh\nexec {EXE} \"$@\"\n")).unwrap();
    std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    d.load(&bundle);
    plug_test_device(&d);
    d.wait_log("a sandboxed dext's executable must be a binary", 1);
    d.interrupt();
}

#[test]
fn each_dext_has_a_user_of_its_own_and_a_thread_limit() {
    let d = Daemon::start(&["--no-default-devices"]);
    let uids = |d: &Daemon| -> Vec<u32> {
        d.nodes()
            .iter()
            .filter_map(|n| n["pid"].as_u64())
            .map(|pid| status_of(pid).0)
            .collect()
    };
    d.wait_until("NullDriver and PacketQueueDriver running", || {
        uids(&d).len() >= 2
    });
    let mut seen = uids(&d);
    if running_as_root() {
        let all = seen.len();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), all, "two dexts share a user: {seen:?}");
        assert!(seen.iter().all(|&u| u >= 0x7000_0000), "{seen:?}");
    }
    start_behaving(&d, "org.test.Threads", "Threads", "threads");
    let node = d.wait_node("the TestDriver counting its threads", |n| {
        n["name"] == "TestDriver" && n["properties"]["TestThreadsStarted"].is_u64()
    });
    let started = node["properties"]["TestThreadsStarted"].as_u64().unwrap();
    if running_as_root() {
        // Its own main thread and runtime threads count too.
        assert!(started < 512 && started > 400, "{started} threads started");
    }
    d.interrupt();
}

//! Processes: a dext's start, the memory of a dext and of the daemon, and
//! the CPU an idle daemon spends.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use driverkit_core::sandbox::Mode;
use driverkitd::{Daemon, Event};

use super::baselines::{spawn_echo, stop_echo};
use super::harness::{
    bench_daemon, bench_daemon_confined, bench_daemon_sandboxed, bench_device, cpu_seconds,
    percentiles, rss_kib, wait_started, Figure, Stat, Target,
};
use crate::drivers;

/// Plugs a device for the bench dext of `daemon`, waits for its Start and
/// then for its process to exit after the unplug; returns the time from
/// plug to Start.
pub(super) fn one_spawn(
    daemon: &Daemon,
    events: &std::sync::mpsc::Receiver<Event>,
    name: &str,
) -> Result<f64, String> {
    let t = Instant::now();
    let dev = daemon.plug(bench_device(name, &[]))?;
    let (_, at) = wait_started(events, dev)?;
    let took = at.duration_since(t).as_nanos() as f64 / 1e3;
    daemon.unplug(dev)?;
    loop {
        match events.recv_timeout(Duration::from_secs(10)) {
            Ok(Event::Exited { .. }) => break,
            Ok(_) => continue,
            Err(_) => return Err("the bench dext did not exit".to_owned()),
        }
    }
    daemon.wait_idle(Duration::from_secs(10));
    Ok(took)
}

/// Four measurements alternate, so that all see the same machine: a bare
/// fork+exec+handshake, the daemon's spawn with the sandbox (what users
/// run, in a cgroup of its own where the daemon can make one), the same
/// without a cgroup, and the same without the sandbox. Each waits for the
/// previous dext to exit.
pub(super) fn spawn_to_start(root: &Path, n: usize) -> Result<Vec<Figure>, String> {
    let bench = drivers::find(drivers::bench::EXECUTABLE)?;
    let cgroups = driverkit_core::sandbox::cgroups_available();
    let sandboxed = bench_daemon_sandboxed(root, bench, Mode::Enforce)?;
    let no_cgroup = bench_daemon_confined(root, bench, Mode::Enforce, false)?;
    let plain = bench_daemon_sandboxed(root, bench, Mode::Off)?;
    let (sandboxed_events, no_cgroup_events, plain_events) = (
        sandboxed.subscribe(),
        no_cgroup.subscribe(),
        plain.subscribe(),
    );
    let mut floor = Vec::new();
    let mut confined = Vec::new();
    let mut without_cgroup = Vec::new();
    let mut unconfined = Vec::new();
    let result = (|| {
        for i in 0..n {
            let t = Instant::now();
            let (child, ep) = spawn_echo()?;
            floor.push(t.elapsed().as_nanos() as f64 / 1e3);
            stop_echo(child, ep);
            confined.push(one_spawn(
                &sandboxed,
                &sandboxed_events,
                &format!("BenchSpawn{i}"),
            )?);
            if cgroups {
                without_cgroup.push(one_spawn(
                    &no_cgroup,
                    &no_cgroup_events,
                    &format!("BenchSpawn{i}"),
                )?);
            }
            unconfined.push(one_spawn(&plain, &plain_events, &format!("BenchSpawn{i}"))?);
        }
        Ok::<(), String>(())
    })();
    sandboxed.shutdown();
    no_cgroup.shutdown();
    plain.shutdown();
    result?;
    let (b50, b99) = percentiles(floor);
    let (p50, p99) = percentiles(confined);
    let (u50, u99) = percentiles(unconfined);
    let mut cgroup_figure = Vec::new();
    if cgroups {
        let (n50, n99) = percentiles(without_cgroup);
        cgroup_figure.push(Figure {
            bench: "spawn_to_start_cgroup",
            unit: "us",
            p50,
            p99,
            baseline: Some(("spawn_to_start_no_cgroup", n50, n99)),
            stat: Stat::Percentiles,
            target: Some(Target::RatioAtMost(1.1)),
        });
    }
    let mut figures = cgroup_figure;
    figures.extend([
        Figure {
            bench: "spawn_to_start",
            unit: "us",
            p50,
            p99,
            baseline: Some(("fork_exec_handshake", b50, b99)),
            stat: Stat::Percentiles,
            target: None,
        },
        Figure {
            bench: "spawn_to_start_sandboxed",
            unit: "us",
            p50,
            p99,
            baseline: Some(("spawn_to_start_no_sandbox", u50, u99)),
            stat: Stat::Percentiles,
            target: Some(Target::RatioAtMost(1.2)),
        },
    ]);
    Ok(figures)
}

pub(super) fn dext_rss(root: &Path) -> Result<Figure, String> {
    let (child, ep) = spawn_echo()?;
    std::thread::sleep(Duration::from_millis(300));
    let floor = rss_kib(child.id());
    stop_echo(child, ep);
    let daemon = bench_daemon(root, drivers::find("NullDriver")?)?;
    let events = daemon.subscribe();
    let deadline = Instant::now() + Duration::from_secs(30);
    let pid = loop {
        match events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Event::Started { pid, .. }) => break Ok(pid),
            Ok(_) => continue,
            Err(_) => break Err("NullDriver did not start".to_owned()),
        }
    };
    let rss = pid.and_then(|pid| {
        std::thread::sleep(Duration::from_millis(500));
        rss_kib(pid)
    });
    daemon.shutdown();
    let (rss, floor) = (rss?, floor?);
    Ok(Figure {
        bench: "dext_rss",
        unit: "KiB",
        p50: rss,
        p99: rss,
        baseline: Some(("bare_process", floor, floor)),
        stat: Stat::Single,
        target: None,
    })
}

pub(super) fn daemon_rss(root: &Path, devices: usize) -> Result<Figure, String> {
    let state = root.join("rss-daemon");
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut daemon = Command::new(exe)
        .args(["run", "--no-embedded", "--no-default-devices", "--root"])
        .arg(&state)
        .env("DRIVERKIT_LOG", "warn")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let result = (|| {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut client = loop {
            match driverkitd::control::Client::connect(&state) {
                Ok(c) => break c,
                Err(e) if Instant::now() > deadline => return Err(String::from(e)),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        std::thread::sleep(Duration::from_millis(300));
        let empty = rss_kib(daemon.id())?;
        for _ in 0..devices {
            client.request(&driverkitd::control::DeviceRequest::Plug {
                device: driverkitd::control::DeviceArg::Builtin("widget".into()),
            })?;
        }
        std::thread::sleep(Duration::from_millis(500));
        let full = rss_kib(daemon.id())?;
        let _ = client.request(&driverkitd::control::CoreRequest::Shutdown);
        Ok((full, empty))
    })();
    let _ = daemon.wait();
    let mut err = String::new();
    if let Some(mut s) = daemon.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    let (full, empty) = result.map_err(|e| format!("{e}\n{err}"))?;
    Ok(Figure {
        bench: "daemon_rss",
        unit: "KiB",
        p50: full,
        p99: full,
        baseline: Some(("daemon_no_devices", empty, empty)),
        stat: Stat::Single,
        target: None,
    })
}

/// Share of one core an idle NullDriver dext and the daemon use over
/// `seconds`, beside an idle process blocked in a read.
pub(super) fn idle_cpu(root: &Path, seconds: u64) -> Result<Vec<Figure>, String> {
    let (child, ep) = spawn_echo()?;
    let daemon = bench_daemon(root, drivers::find("NullDriver")?)?;
    let events = daemon.subscribe();
    let pid = loop {
        match events.recv_timeout(Duration::from_secs(30)) {
            Ok(Event::Started { pid, .. }) => break Ok(pid),
            Ok(_) => continue,
            Err(_) => break Err("NullDriver did not start".to_owned()),
        }
    };
    let result = pid.and_then(|pid| {
        std::thread::sleep(Duration::from_millis(500));
        let me = std::process::id();
        let before = (
            cpu_seconds(pid)?,
            cpu_seconds(me)?,
            cpu_seconds(child.id())?,
        );
        std::thread::sleep(Duration::from_secs(seconds));
        let after = (
            cpu_seconds(pid)?,
            cpu_seconds(me)?,
            cpu_seconds(child.id())?,
        );
        let pct = |a: f64, b: f64| 100.0 * (b - a) / seconds as f64;
        Ok((
            pct(before.0, after.0),
            pct(before.1, after.1),
            pct(before.2, after.2),
        ))
    });
    daemon.shutdown();
    stop_echo(child, ep);
    let (dext, daemon, floor) = result?;
    let figure = |bench, v| Figure {
        bench,
        unit: "%core",
        p50: v,
        p99: v,
        baseline: Some(("idle_blocked_process", floor, floor)),
        stat: Stat::Single,
        target: None,
    };
    Ok(vec![
        figure("idle_cpu_dext", dext),
        figure("idle_cpu_daemon", daemon),
    ])
}

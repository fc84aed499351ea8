//! `daemon_threads`, `daemon_fds` and `daemon_rss` with many running dexts:
//! a real `driverkit run` with the example drivers, and N virtual sensors
//! plugged, each driven by its own VirtualSensorDriver process. Each figure
//! stands beside the same daemon before the sensors were plugged (the two
//! example dexts that need no device running).

use super::harness::{Figure, Stat, Target};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The dexts running before any device: NullDriver and PacketQueueDriver.
const BASE: usize = 2;

/// (threads, descriptors, resident KiB) of process `pid`.
fn footprint(pid: u32) -> Result<(f64, f64, f64), String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("pid {pid}: {e}"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .ok_or_else(|| format!("pid {pid}: no {name}"))
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map_err(|e| format!("pid {pid}: {e}"))?
        .count() as f64;
    Ok((field("Threads:")?, fds, field("VmRSS:")?))
}

/// The daemon's dext PIDs, from `status`.
fn dexts(client: &mut driverkitd::control::Client) -> Result<usize, String> {
    let answer = client.request(&driverkitd::control::CoreRequest::Status)?;
    Ok(answer["dexts"].as_array().map_or(0, Vec::len))
}

/// The figures at `sensors` plugged sensors.
pub fn daemon_scale(root: &std::path::Path, sensors: usize) -> Result<Vec<Figure>, String> {
    let state = root.join(format!("scale-{sensors}"));
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut daemon = Command::new(exe)
        .args([
            "run",
            "--no-default-devices",
            "--no-uinput",
            "--no-linux-usb",
            "--root",
        ])
        .arg(&state)
        .env("DRIVERKIT_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let pid = daemon.id();
    let result = (|| {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut client = loop {
            match driverkitd::control::Client::connect(&state) {
                Ok(c) => break c,
                Err(e) if Instant::now() > deadline => return Err(String::from(e)),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        // The example drivers running, then the daemon settled.
        while dexts(&mut client)? < BASE {
            if Instant::now() > deadline {
                return Err("the example drivers did not start".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(500));
        let before = footprint(pid)?;
        for _ in 0..sensors {
            client.request(&driverkitd::control::DeviceRequest::Plug {
                device: driverkitd::control::DeviceArg::Builtin("sensor".into()),
            })?;
        }
        let deadline = Instant::now() + Duration::from_secs(120 + sensors as u64 / 5);
        while dexts(&mut client)? < BASE + sensors {
            if Instant::now() > deadline {
                return Err(format!(
                    "{} of {sensors} sensor drivers started",
                    dexts(&mut client)?.saturating_sub(BASE)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Idle workers retire after 10 s: measure what stays.
        std::thread::sleep(Duration::from_secs(11));
        let after = footprint(pid)?;
        let _ = client.request(&driverkitd::control::CoreRequest::Shutdown);
        Ok((before, after))
    })();
    if result.is_err() {
        let _ = daemon.kill();
    }
    let _ = daemon.wait();
    let ((t0, f0, r0), (t1, f1, r1)) = result?;
    let running = (BASE + sensors) as f64;
    let name = |what: &str| -> &'static str {
        Box::leak(format!("daemon_{what}_{}_dexts", BASE + sensors).into_boxed_str())
    };
    let figure = |what, unit, value, base, target| Figure {
        bench: name(what),
        unit,
        p50: value,
        p99: value,
        baseline: Some(("daemon_2_dexts", base, base)),
        stat: Stat::Single,
        target,
    };
    // Issue 18's targets at 1,000 dexts: at most one daemon thread per dext
    // and 64 MiB.
    let large = sensors >= 1_000;
    Ok(vec![
        figure(
            "threads",
            "threads",
            t1,
            t0,
            large.then_some(Target::AtMost(running)),
        ),
        figure("fds", "fds", f1, f0, None),
        figure(
            "rss",
            "KiB",
            r1,
            r0,
            large.then_some(Target::AtMost(64.0 * 1024.0)),
        ),
    ])
}

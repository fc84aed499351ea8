//! `daemon_threads`, `daemon_fds` and `daemon_rss` with many running dexts:
//! a real `driverkit run` with the example drivers, and N virtual sensors
//! plugged, each driven by its own VirtualSensorDriver process. Each figure
//! stands beside the same daemon before the sensors were plugged (the two
//! example dexts that need no device running).
//!
//! `daemon_threads_peak` is the most threads the daemon had at any look
//! (every 50 ms) from the first plug until the figures are taken: what a
//! burst of starts costs, not only what stays. With [`Load::Busy`] a
//! thread per CPU spins in this process meanwhile, as a busy machine's
//! other work would: the daemon's callers then run late, which must delay
//! them, never grow the daemon past its ceiling.

use super::harness::{Figure, Stat, Target};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Issue 31's ceiling on the daemon's threads, whatever the load.
const THREAD_CEILING: f64 = 64.0;

/// What else the machine does while the sensors are plugged.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Load {
    /// Nothing.
    Idle,
    /// A thread per CPU spins in this process.
    Busy,
}

/// Threads that run until dropped: each runs its body while the shared
/// stop flag is clear.
struct Background {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Background {
    /// `n` threads, each looping over `body` until the stop.
    fn start(n: usize, body: impl Fn() + Clone + Send + 'static) -> Background {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..n)
            .map(|_| {
                let (stop, body) = (stop.clone(), body.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        body();
                    }
                })
            })
            .collect();
        Background { stop, threads }
    }

    /// A thread per CPU, spinning.
    fn spinners() -> Background {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Background::start(cpus, std::hint::spin_loop)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The most threads process `pid` had at any look, every 50 ms, while the
/// returned watcher runs; read once it is dropped.
fn watch_peak_threads(pid: u32) -> (Arc<AtomicU64>, Background) {
    let peak = Arc::new(AtomicU64::new(0));
    let seen = peak.clone();
    let watcher = Background::start(1, move || {
        if let Ok((threads, _, _)) = footprint(pid) {
            seen.fetch_max(threads as u64, Ordering::Relaxed);
        }
        std::thread::sleep(Duration::from_millis(50));
    });
    (peak, watcher)
}

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

/// The figures at `sensors` plugged sensors, under `load`.
pub fn daemon_scale(
    root: &std::path::Path,
    sensors: usize,
    load: Load,
) -> Result<Vec<Figure>, String> {
    let loaded = load == Load::Busy;
    let state = root.join(format!(
        "scale-{sensors}{}",
        if loaded { "-loaded" } else { "" }
    ));
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
        let spinners = loaded.then(Background::spinners);
        let (peak, watcher) = watch_peak_threads(pid);
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
        drop(watcher);
        let peak = peak.load(Ordering::Relaxed) as f64;
        drop(spinners);
        let _ = client.request(&driverkitd::control::CoreRequest::Shutdown);
        Ok((before, after, peak))
    })();
    if result.is_err() {
        let _ = daemon.kill();
    }
    let _ = daemon.wait();
    let ((t0, f0, r0), (t1, f1, r1), peak) = result?;
    let name = |what: &str| -> &'static str {
        let under = if loaded { "_loaded" } else { "" };
        Box::leak(format!("daemon_{what}_{}_dexts{under}", BASE + sensors).into_boxed_str())
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
    // At 1,000 dexts: issue 31's ceiling on threads (after the burst and
    // at its peak) and issue 18's 64 MiB.
    let large = sensors >= 1_000;
    let ceiling = large.then_some(Target::AtMost(THREAD_CEILING));
    let mut figures = vec![
        figure("threads", "threads", t1, t0, ceiling),
        figure("threads_peak", "threads", peak, t0, ceiling),
    ];
    if loaded {
        // Under load only the threads tell: the rest is the idle run's.
        return Ok(figures);
    }
    figures.extend([
        figure("fds", "fds", f1, f0, None),
        figure(
            "rss",
            "KiB",
            r1,
            r0,
            large.then_some(Target::AtMost(64.0 * 1024.0)),
        ),
    ]);
    Ok(figures)
}

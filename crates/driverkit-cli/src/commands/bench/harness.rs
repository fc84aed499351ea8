//! What every bench shares: a figure and its target, percentiles, and the
//! daemons and devices benches run against.

use std::path::Path;
use std::time::{Duration, Instant};

use driverkit_core::sandbox::Mode;
use driverkit_core::EntryId;
use driverkitd::backends::virtual_device::DeviceSpec;
use driverkitd::{Config, Daemon, Event};
use plist::Value;

use crate::drivers;

#[derive(Clone)]
pub(super) struct Figure {
    pub bench: &'static str,
    pub unit: &'static str,
    /// The figure's two numbers: what they are is `stat`'s to say.
    pub p50: f64,
    pub p99: f64,
    pub baseline: Option<(&'static str, f64, f64)>,
    pub stat: Stat,
    /// The target an issue set for it, if any.
    pub target: Option<Target>,
}

/// What a figure's two numbers are, so that no label claims more than the
/// measurement: a p99 is a 99th percentile of many samples, nothing else.
#[derive(Clone, Copy)]
pub(super) enum Stat {
    /// The 50th and 99th percentiles of many samples (latencies).
    Percentiles,
    /// The median and the lowest of a few runs.
    MedianLowest { runs: usize },
    /// One measurement (in `p50`).
    Single,
}

impl Stat {
    pub(super) fn labels(self) -> (String, Option<String>) {
        match self {
            Stat::Percentiles => ("p50".into(), Some("p99".into())),
            Stat::MedianLowest { runs } => (
                format!("median of {runs}"),
                Some(format!("lowest of {runs}")),
            ),
            Stat::Single => ("value".into(), None),
        }
    }

    fn keys(self) -> (&'static str, Option<&'static str>) {
        match self {
            Stat::Percentiles => ("p50", Some("p99")),
            Stat::MedianLowest { .. } => ("median", Some("lowest")),
            Stat::Single => ("value", None),
        }
    }
}

/// A target, on the first number (p50, median or value).
#[derive(Clone, Copy)]
pub(super) enum Target {
    /// At most this many times the baseline's.
    RatioAtMost(f64),
    /// At least this many times the baseline's (throughputs).
    AtLeastRatio(f64),
    /// At most this, in the figure's unit.
    AtMost(f64),
    /// At least this, in the figure's unit.
    AtLeast(f64),
}

impl Target {
    pub(super) fn describe(self, unit: &str) -> String {
        match self {
            Target::RatioAtMost(r) => format!("<= {r}x"),
            Target::AtLeastRatio(r) => format!(">= {r}x"),
            Target::AtMost(v) => format!("<= {v} {unit}"),
            Target::AtLeast(v) => format!(">= {v} {unit}"),
        }
    }

    pub(super) fn met(self, value: f64, baseline: Option<f64>) -> Option<bool> {
        match self {
            Target::RatioAtMost(r) => baseline.map(|b| value <= r * b),
            Target::AtLeastRatio(r) => baseline.map(|b| value >= r * b),
            Target::AtMost(v) => Some(value <= v),
            Target::AtLeast(v) => Some(value >= v),
        }
    }
}

/// The table's header, printed once before the first figure.
pub(super) fn print_header() {
    println!(
        "{:<28} {:<24} {:>14} {:>14} {:<9} {:<26} {:>14} {:>14} {:>8} {:<18} MET",
        "BENCH", "STAT", "OURS", "TAIL", "UNIT", "BASELINE", "BASE", "BASE TAIL", "RATIO", "TARGET"
    );
}

impl Figure {
    pub(super) fn print(&self, json: bool) {
        let (first, second) = self.stat.keys();
        let base = self.baseline.map(|(_, b, _)| b);
        let met = self.target.and_then(|t| t.met(self.p50, base));
        if json {
            let mut o = serde_json::json!({ "bench": self.bench, "unit": self.unit });
            o[first] = self.p50.into();
            if let Some(k) = second {
                o[k] = self.p99.into();
            }
            if let Some((name, b50, b99)) = self.baseline {
                o["baseline"] = name.into();
                o[format!("baseline_{first}")] = b50.into();
                if let Some(k) = second {
                    o[format!("baseline_{k}")] = b99.into();
                }
            }
            if let Some(t) = self.target {
                o["target"] = t.describe(self.unit).into();
            }
            if let Some(m) = met {
                o["met"] = m.into();
            }
            println!("{o}");
            return;
        }
        let (label, tail_label) = self.stat.labels();
        let stat = match &tail_label {
            Some(t) => format!("{label}/{t}"),
            None => label,
        };
        let tail = |v: f64| {
            if tail_label.is_some() {
                format!("{v:.1}")
            } else {
                "-".into()
            }
        };
        let (bname, b50, b99, ratio) = match self.baseline {
            Some((name, b50, b99)) => (
                name,
                format!("{b50:.1}"),
                tail(b99),
                match self.p50 / b50 {
                    r if !(r.is_finite() && b50 > 0.0) => "-".into(),
                    // Far below the baseline: say by how much.
                    r if r < 0.1 => format!("1/{:.0}", 1.0 / r),
                    r => format!("{r:.2}x"),
                },
            ),
            None => ("-", "-".into(), "-".into(), "-".into()),
        };
        println!(
            "{:<28} {:<24} {:>14.1} {:>14} {:<9} {:<26} {:>14} {:>14} {:>8} {:<18} {}",
            self.bench,
            stat,
            self.p50,
            tail(self.p99),
            self.unit,
            bname,
            b50,
            b99,
            ratio,
            self.target
                .map(|t| t.describe(self.unit))
                .unwrap_or_else(|| "-".into()),
            match met {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "-",
            }
        );
    }
}

/// p50 and p99 of samples.
/// Runs `work` while USB device `id` is recorded, its packets taken as
/// `driverkit device record` takes them; answers `work`'s result and how
/// many packets the recording held.
pub(super) fn while_recorded<T>(
    daemon: &Daemon,
    id: EntryId,
    work: impl FnOnce() -> T,
) -> Result<(T, usize), String> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let (preamble, live) = daemon.record_usb(id)?;
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let drained = std::thread::spawn(move || {
        let mut packets = 0usize;
        while !stopped.load(Ordering::Acquire) {
            match live.next_batch(Duration::from_millis(100)) {
                Some(batch) => packets += batch.iter().map(|r| r.packets().count()).sum::<usize>(),
                None => break,
            }
        }
        packets
    });
    let result = work();
    stop.store(true, Ordering::Release);
    let packets = preamble.len() + drained.join().unwrap_or(0);
    Ok((result, packets))
}

pub(super) fn percentiles(mut v: Vec<f64>) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.99))
}

pub(super) fn bench_daemon(root: &Path, bundle_of: &drivers::Embedded) -> Result<Daemon, String> {
    bench_daemon_sandboxed(root, bundle_of, Mode::Enforce)
}

/// A bench daemon whose serial ports are nodes of kind `nodes`.
pub(super) fn bench_daemon_serial(
    root: &Path,
    bundle_of: &drivers::Embedded,
    nodes: driverkitd::families::serial::NodeChoice,
) -> Result<Daemon, String> {
    bench_daemon_with(root, bundle_of, &format!("{nodes:?}"), |config| {
        config.serial_nodes = nodes;
    })
}

/// A daemon with `bundle_of` loaded, in a state folder of its own
/// (`state-<executable>-<variant>`), its config changed by `tweak`.
pub(super) fn bench_daemon_with(
    root: &Path,
    bundle_of: &drivers::Embedded,
    variant: &str,
    tweak: impl FnOnce(&mut Config),
) -> Result<Daemon, String> {
    let dir = root.join("bundles");
    let bundle = drivers::materialize(bundle_of, &dir)?;
    let mut config = Config::new(root.join(format!("state-{}-{variant}", bundle_of.executable)));
    config.bundles.push(bundle);
    tweak(&mut config);
    Ok(Daemon::start(config))
}

/// A daemon whose dexts are confined as `sandbox` says (the default,
/// enforce, is what users run).
pub(super) fn bench_daemon_sandboxed(
    root: &Path,
    bundle_of: &drivers::Embedded,
    sandbox: Mode,
) -> Result<Daemon, String> {
    bench_daemon_confined(root, bundle_of, sandbox, true)
}

/// A bench daemon with the sandbox in `sandbox` mode, and a cgroup per
/// dext or not.
pub(super) fn bench_daemon_confined(
    root: &Path,
    bundle_of: &drivers::Embedded,
    sandbox: Mode,
    cgroups: bool,
) -> Result<Daemon, String> {
    let variant = format!(
        "{sandbox:?}-{}",
        if cgroups { "cgroups" } else { "no-cgroups" }
    );
    bench_daemon_with(root, bundle_of, &variant, |config| {
        config.sandbox.mode = sandbox;
        config.sandbox.cgroups = cgroups;
    })
}

pub(super) fn bench_device(name: &str, extra: &[(&str, Value)]) -> DeviceSpec {
    let mut properties = plist::Dictionary::new();
    properties.insert("BenchDevice".into(), Value::Boolean(true));
    for (k, v) in extra {
        properties.insert((*k).into(), v.clone());
    }
    DeviceSpec {
        name: name.into(),
        class: "IOVirtualDevice".into(),
        properties,
        interrupts: Vec::new(),
        source: "bench".into(),
        usb: None,
        uart: None,
        cable: None,
        pci: None,
    }
}

/// The registry properties of `service` (what a bench driver published).
pub(super) fn service_properties(
    daemon: &Daemon,
    service: EntryId,
) -> Result<plist::Dictionary, String> {
    daemon
        .system()
        .properties(service)
        .ok_or_else(|| "the bench service vanished".into())
}

pub(super) fn wait_started(
    events: &std::sync::mpsc::Receiver<Event>,
    provider: EntryId,
) -> Result<(EntryId, Instant), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(Event::Started {
                service,
                provider: p,
                at,
                ..
            }) if p == provider => return Ok((service, at)),
            Ok(_) => continue,
            Err(_) => return Err("the bench driver did not start within 30 s".into()),
        }
    }
}

pub(super) fn rss_kib(pid: u32) -> Result<f64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("pid {pid}: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("pid {pid}: no VmRSS"))
}

/// CPU time of a process, in seconds (utime + stime).
pub(super) fn cpu_seconds(pid: u32) -> Result<f64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("pid {pid}: {e}"))?;
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .ok_or(format!("pid {pid}: bad stat"))
    };
    // After the command: state is field 0, utime 11, stime 12.
    // The kernel's USER_HZ, fixed at 100 on Linux for /proc.
    let hz = 100.0;
    Ok((ticks(11)? + ticks(12)?) / hz)
}

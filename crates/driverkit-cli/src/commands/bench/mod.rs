//! `driverkit bench`: the figures the issues set targets for, each beside a
//! baseline measured in the same run.
//!
//! | bench              | what                                             | baseline                          |
//! |--------------------|--------------------------------------------------|-----------------------------------|
//! | `rpc_roundtrip`    | a dext's SUPERDISPATCH call with one `u32`       | raw SOCK_SEQPACKET ping-pong       |
//! | `spawn_to_start`   | device plugged -> the dext's Start returned      | fork+exec+handshake of this binary |
//! | `spawn_to_start_sandboxed` | the same, sandboxed (the default)        | the same with `--sandbox=off`      |
//! | `spawn_to_start_cgroup` | the same, sandboxed, in a cgroup of its own | the same with `--no-cgroups` (only where the daemon can make cgroups) |
//! | `match_per_device_*` | candidates for one device, 1k/10k/100k realistic personalities | a linear scan of the same |
//! | `dext_rss`         | resident memory of the idle NullDriver dext      | this binary idle as a bare process |
//! | `daemon_rss`       | resident memory of the daemon, 100 devices       | the same daemon with no devices    |
//!
//! The asynchronous runtime's figures are in `sources`, the HID family's
//! in `hid`, the serial family's in `serial`, the Ethernet family's in
//! `net`, the PCI family's in `pci`, USB/IP's in `usb`, matching's in
//! `matching`, the daemon at scale in `scale`.
//!
//! Layers: this file picks what runs (`run_all`) and starts peers; the
//! per-family modules measure; `harness` (figures, targets, daemons),
//! `baselines` (the raw floors) and `peers` (starting a peer process) are
//! what they share, and import none of them.

use clap::Args;
use driverkitd::families::serial::NodeChoice;
use std::process::ExitCode;

mod baselines;
mod harness;
mod hid;
mod matching;
mod net;
mod pci;
mod peers;
mod process;
mod repeat;
mod rpc;
mod scale;
mod serial;
mod sources;
mod usb;

use harness::{print_header, Figure};
use peers::Peer;
use process::{daemon_rss, dext_rss, idle_cpu, spawn_to_start};
use rpc::{rpc_roundtrip, userclient_scalar_roundtrip};

#[derive(Args)]
pub struct BenchArgs {
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    /// Fewer iterations (for a smoke test; figures are noisier).
    #[arg(long)]
    quick: bool,
    /// Run only the benchmarks whose name contains this.
    #[arg(long, value_name = "NAME")]
    only: Option<String>,
    /// Run everything N times and report, per figure, the median of the
    /// runs' first number (p50 or median) with its spread, the target
    /// judged on the medians: one noisy run neither hides nor invents a
    /// regression.
    #[arg(long, value_name = "N", default_value_t = 1)]
    repeat: usize,
}

pub fn bench(args: BenchArgs) -> Result<(), String> {
    let json = args.json;
    if args.repeat <= 1 {
        if !json {
            print_header();
        }
        return run_all(&args, &mut |figures| {
            figures.into_iter().for_each(|f| f.print(json))
        });
    }
    let mut runs = Vec::new();
    for run in 1..=args.repeat {
        eprintln!("bench: run {run} of {}", args.repeat);
        let mut figures = Vec::new();
        run_all(&args, &mut |f| figures.extend(f))?;
        runs.push(figures);
    }
    repeat::print(&runs, json);
    Ok(())
}

/// Every wanted benchmark once, each one's figures handed to `show` as
/// they come.
fn run_all(args: &BenchArgs, show: &mut dyn FnMut(Vec<Figure>)) -> Result<(), String> {
    let scale = if args.quick { 10 } else { 1 };
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let wanted = |name: &str| args.only.as_deref().is_none_or(|o| name.contains(o));
    if wanted("rpc_roundtrip") {
        show(rpc_roundtrip(dir.path(), 20_000 / scale)?);
    }
    if wanted("userclient_scalar_roundtrip") {
        show(userclient_scalar_roundtrip(dir.path(), 20_000 / scale)?);
    }
    if wanted("spawn_to_start") {
        show(spawn_to_start(dir.path(), 100 / scale)?);
    }
    if wanted("match_per_device") {
        show(matching::match_per_device(400 / scale)?);
    }
    if wanted("dext_rss") {
        show(vec![dext_rss(dir.path())?]);
    }
    if wanted("daemon_rss") {
        show(vec![daemon_rss(dir.path(), 100)?]);
    }
    if wanted("daemon_scale") {
        show(scale::daemon_scale(dir.path(), 100, scale::Load::Idle)?);
        if !args.quick {
            show(scale::daemon_scale(dir.path(), 1_000, scale::Load::Idle)?);
            show(scale::daemon_scale(dir.path(), 1_000, scale::Load::Busy)?);
        }
    }
    if wanted("idle_cpu") {
        show(idle_cpu(dir.path(), if args.quick { 1 } else { 10 })?);
    }
    let reps = if args.quick { 1 } else { 5 };
    for (entry, n, name) in [
        (16, 2_000_000 / scale, "data_queue_16B"),
        (4096, 200_000 / scale, "data_queue_4KiB"),
    ] {
        if wanted(name) {
            show(sources::data_queue(entry, n, reps)?);
        }
    }
    if wanted("timer_lateness") {
        show(vec![sources::timer_lateness(1000 / scale)?]);
    }
    if wanted("hid_report_latency") {
        show(hid::report_latency(dir.path(), 10_000 / scale)?);
    }
    if wanted("hid_reports_per_sec") {
        show(hid::reports_per_sec(
            dir.path(),
            1_000_000 / scale,
            if args.quick { 1 } else { 3 },
        )?);
    }
    if wanted("usbip_control_roundtrip") {
        show(usb::usbip_control_roundtrip(dir.path(), 5_000 / scale)?);
    }
    // The pty node everywhere; the CUSE node where the kernel has one.
    let mut nodes = vec![NodeChoice::Pty];
    if driverkitd::families::serial::cuse::available() {
        nodes.push(NodeChoice::Cuse);
    }
    for node in nodes {
        if wanted(serial::name("serial_throughput", node)) {
            show(serial::throughput(
                dir.path(),
                node,
                (64 << 20) / scale,
                if args.quick { 1 } else { 3 },
            )?);
        }
        if wanted(serial::name("serial_byte_latency", node)) {
            show(serial::byte_latency(dir.path(), node, 5_000 / scale)?);
        }
    }
    if ["net_throughput", "net_packets_per_sec", "net_latency"]
        .iter()
        .any(|n| wanted(n))
    {
        show(net::figures(dir.path(), args.quick)?);
    }
    if [
        "pci_register_read_call",
        "pci_register_read_mapped",
        "pci_interrupt_latency",
    ]
    .iter()
    .any(|n| wanted(n))
    {
        show(pci::figures(dir.path(), args.quick)?);
    }
    if wanted("hid_descriptor_parse") {
        show(vec![hid::descriptor_parse(100_000 / scale)?]);
    }
    Ok(())
}

/// When this process was started as one of the benches' peers: runs it
/// and says how it ended. `None` for every other start.
pub fn run_peer_if_asked() -> Option<ExitCode> {
    let (name, args) = peers::requested()?;
    let result = Peer::parse(&name, &args).and_then(|peer| match peer {
        Peer::Echo => baselines::echo_peer(),
        Peer::Spin => baselines::spin_peer(),
        Peer::Futex => baselines::futex_peer(),
        Peer::TapForward(second) => net::tap_forward_peer(second),
        Peer::Eventfd => pci::eventfd_peer(),
        Peer::PtyEcho => serial::pty_echo_peer(),
        Peer::Consume(kind, entry, n) => sources::consume(kind, entry, n),
    });
    Some(match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("driverkit bench peer {name}: {message}");
            ExitCode::FAILURE
        }
    })
}

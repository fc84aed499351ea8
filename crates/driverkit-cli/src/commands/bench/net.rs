//! The Ethernet family's figures: traffic between two network namespaces
//! through two interfaces.
//!
//! | bench            | what                                                        | baseline |
//! |------------------|-------------------------------------------------------------|----------|
//! | `net_throughput` | TCP, ns A → TAP → dext → virtual cable → dext → TAP → ns B, Gbit/s | two TAPs joined by a plain process forwarding frames (`raw_tap_forwarder`) |
//! | `net_packets_per_sec` | UDP datagrams of 64 bytes delivered per second, the same path | the same forwarder |
//! | `net_latency`    | a UDP ping-pong of one byte, the same path                  | the same forwarder |
//!
//! The namespaces, addresses (169.254.0.0/16) and sockets are the bench's
//! own; the traffic code is the same for both paths. Needs root.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::harness::{bench_daemon, percentiles, Figure, Stat, Target};
use super::peers::{spawn_peer, Peer};
use crate::drivers;

const A: &str = "169.254.90.1";
const B: &str = "169.254.90.2";

/// Two namespaces holding interfaces `ends`, addressed and up; removed
/// when dropped.
struct Pair {
    names: [String; 2],
}

impl Pair {
    fn new(ends: [&str; 2]) -> Result<Pair, String> {
        let names = [0, 1].map(|i| format!("dkbench{i}-{}", std::process::id()));
        for (i, (ns, end)) in names.iter().zip(ends).enumerate() {
            let addr = format!("{}/16", [A, B][i]);
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            for args in [
                vec!["netns", "add", ns],
                vec!["link", "set", end, "netns", ns],
                vec!["-n", ns, "addr", "add", &addr, "dev", end],
                vec!["-n", ns, "link", "set", end, "up"],
                vec!["-n", ns, "link", "set", "lo", "up"],
            ] {
                ip(&args)?;
            }
        }
        Ok(Pair { names })
    }

    /// Runs `f` on a thread inside namespace `i`.
    fn within<T: Send + 'static>(
        &self,
        i: usize,
        f: impl FnOnce() -> Result<T, String> + Send + 'static,
    ) -> std::thread::JoinHandle<Result<T, String>> {
        let path = format!("/var/run/netns/{}", self.names[i]);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
            rustix::thread::move_into_link_name_space(
                ns.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .map_err(|e| format!("setns {path}: {e}"))?;
            f()
        })
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// What one path measured.
struct Measured {
    gbit: f64,
    pps: f64,
    latency: (f64, f64),
}

fn measure(pair: &Pair, bytes: usize, datagrams: usize, pings: usize) -> Result<Measured, String> {
    // Let the kernel settle (neighbour discovery) with a few pings first.
    wait_reachable(pair)?;
    let gbit = tcp(pair, bytes)?;
    let pps = udp_flood(pair, datagrams)?;
    let latency = ping_pong(pair, pings)?;
    Ok(Measured { gbit, pps, latency })
}

fn wait_reachable(pair: &Pair) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if ping_pong(pair, 1).is_ok() {
            return Ok(());
        }
    }
    Err("the namespaces never reached each other".into())
}

/// TCP goodput of `bytes`, Gbit/s, timed at the receiver.
fn tcp(pair: &Pair, bytes: usize) -> Result<f64, String> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = pair.within(1, move || {
        let l = TcpListener::bind((B, 5201)).map_err(|e| e.to_string())?;
        let _ = ready_tx.send(());
        let (mut c, _) = l.accept().map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0;
        let start = Instant::now();
        while got < bytes {
            let n = c.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            got += n;
        }
        Ok((got, start.elapsed()))
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| "the TCP receiver did not start")?;
    let client = pair.within(0, move || {
        let mut c = TcpStream::connect((B, 5201)).map_err(|e| e.to_string())?;
        let chunk = vec![0x5au8; 1 << 20];
        let mut sent = 0;
        while sent < bytes {
            let n = chunk.len().min(bytes - sent);
            c.write_all(&chunk[..n]).map_err(|e| e.to_string())?;
            sent += n;
        }
        Ok(())
    });
    client.join().map_err(|_| "the TCP sender panicked")??;
    let (got, took) = server.join().map_err(|_| "the TCP receiver panicked")??;
    if got < bytes {
        return Err(format!("TCP: {got} of {bytes} bytes arrived"));
    }
    Ok(got as f64 * 8.0 / took.as_secs_f64() / 1e9)
}

/// 64-byte datagrams sent as fast as A can, counted at B: delivered per
/// second over the time B saw them arrive.
fn udp_flood(pair: &Pair, n: usize) -> Result<f64, String> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = pair.within(1, move || {
        let s = UdpSocket::bind((B, 5202)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .map_err(|e| e.to_string())?;
        let _ = ready_tx.send(());
        let mut buf = [0u8; 2048];
        let (mut count, mut first, mut last) = (0usize, None, Instant::now());
        while s.recv(&mut buf).is_ok() {
            let now = Instant::now();
            first.get_or_insert(now);
            last = now;
            count += 1;
        }
        let took = first.map_or(Duration::ZERO, |f| last.duration_since(f));
        Ok((count, took))
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| "the UDP receiver did not start")?;
    let client = pair.within(0, move || {
        let s = UdpSocket::bind((A, 0)).map_err(|e| e.to_string())?;
        let to: SocketAddr = format!("{B}:5202").parse().map_err(|_| "address")?;
        let payload = [0u8; 64];
        for _ in 0..n {
            // A full socket buffer drops here, as it would on a NIC.
            let _ = s.send_to(&payload, to);
        }
        Ok(())
    });
    client.join().map_err(|_| "the UDP sender panicked")??;
    let (count, took) = server.join().map_err(|_| "the UDP receiver panicked")??;
    if count < 2 || took.is_zero() {
        return Err("no datagrams arrived".into());
    }
    Ok(count as f64 / took.as_secs_f64())
}

/// One-byte UDP round trips, µs (p50, p99), after a tenth as warm-up.
fn ping_pong(pair: &Pair, n: usize) -> Result<(f64, f64), String> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let echo = pair.within(1, move || {
        let s = UdpSocket::bind((B, 5203)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        let _ = ready_tx.send(());
        let mut buf = [0u8; 16];
        while let Ok((len, from)) = s.recv_from(&mut buf) {
            if buf[..len] == [0xff] {
                break;
            }
            let _ = s.send_to(&buf[..len], from);
        }
        Ok(())
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| "the echo did not start")?;
    let client = pair.within(0, move || {
        let s = UdpSocket::bind((A, 0)).map_err(|e| e.to_string())?;
        s.connect((B, 5203)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(1)))
            .map_err(|e| e.to_string())?;
        let mut samples = Vec::with_capacity(n);
        let mut b = [0u8; 16];
        for i in 0..n + n / 10 {
            let t = Instant::now();
            s.send(&[i as u8 & 0x7f]).map_err(|e| e.to_string())?;
            s.recv(&mut b).map_err(|e| format!("no echo: {e}"))?;
            if i >= n / 10 {
                samples.push(t.elapsed().as_nanos() as f64 / 1000.0);
            }
        }
        let _ = s.send(&[0xff]);
        Ok(samples)
    });
    let samples = client.join().map_err(|_| "the pinger panicked")?;
    let _ = echo.join();
    Ok(percentiles(samples?))
}

/// The framework's path: the default cable, both ends driven.
fn ours(root: &Path, bytes: usize, datagrams: usize, pings: usize) -> Result<Measured, String> {
    let driver = drivers::find("VirtualEthernetDriver")?;
    let daemon = bench_daemon(root, driver)?;
    daemon.plug(driverkitd::backends::virtual_device::builtin("cable").ok_or("no cable")?)?;
    let names = wait_interfaces(&daemon)?;
    let pair = Pair::new([&names[0], &names[1]]);
    let r = pair.and_then(|p| measure(&p, bytes, datagrams, pings));
    daemon.shutdown();
    r
}

fn wait_interfaces(daemon: &driverkitd::Daemon) -> Result<Vec<String>, String> {
    fn collect(node: &plist::Value, out: &mut Vec<String>) {
        let Some(d) = node.as_dictionary() else {
            return;
        };
        if let Some(n) = d.get("BSD Name").and_then(|v| v.as_string()) {
            out.push(n.to_owned());
        }
        if let Some(c) = d.get("IORegistryEntryChildren").and_then(|v| v.as_array()) {
            c.iter().for_each(|c| collect(c, out));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let mut names = Vec::new();
        collect(&daemon.registry_plist(), &mut names);
        if names.len() == 2 {
            return Ok(names);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err("the cable's interfaces did not appear within 30 s".into())
}

/// The baseline: two TAPs and a plain process forwarding frames between
/// them, nothing else.
fn raw(bytes: usize, datagrams: usize, pings: usize) -> Result<Measured, String> {
    let make = |i: u8| {
        tun_rs::DeviceBuilder::new()
            .name("dkraw%d")
            .layer(tun_rs::Layer::L2)
            .mac_addr([0x02, 0x66, 0, 0, 0, i])
            .build_sync()
            .map_err(|e| format!("a TAP for the baseline: {e}"))
    };
    let (t0, t1) = (make(1)?, make(2)?);
    let names = [
        t0.name().map_err(|e| e.to_string())?,
        t1.name().map_err(|e| e.to_string())?,
    ];
    let (fd0, fd1): (OwnedFd, OwnedFd) = (
        t0.as_fd().try_clone_to_owned().map_err(|e| e.to_string())?,
        t1.as_fd().try_clone_to_owned().map_err(|e| e.to_string())?,
    );
    // The helper gets both: the first by DRIVERKIT_BENCH_FD, the second's
    // number as an argument (inherited: no close-on-exec).
    rustix::io::fcntl_setfd(&fd1, rustix::io::FdFlags::empty()).map_err(|e| e.to_string())?;
    let second = fd1.as_raw_fd().to_string();
    let mut child = spawn_peer(Peer::TapForward(&second), fd0, Stdio::inherit())?;
    drop(fd1);
    let pair = Pair::new([&names[0], &names[1]]);
    let r = pair.and_then(|p| measure(&p, bytes, datagrams, pings));
    let _ = child.kill();
    let _ = child.wait();
    drop((t0, t1));
    r
}

/// The baseline's forwarder: frames from one TAP to the other, both ways.
pub fn tap_forward_peer(second: &str) -> Result<(), String> {
    use std::os::fd::FromRawFd;
    let first = std::fs::File::from(super::peers::inherited_fd()?);
    let second: i32 = second.parse().map_err(|_| "the second TAP's descriptor")?;
    // SAFETY: the parent passes this second descriptor too (its number as
    // the argument, inherited) for this process alone to own.
    let taps: [std::fs::File; 2] = [first, unsafe { std::fs::File::from_raw_fd(second) }];
    let mut buf = vec![0u8; 65536];
    loop {
        let mut fds = [
            rustix::event::PollFd::new(&taps[0], rustix::event::PollFlags::IN),
            rustix::event::PollFd::new(&taps[1], rustix::event::PollFlags::IN),
        ];
        rustix::event::poll(&mut fds, None).map_err(|e| e.to_string())?;
        let ready = [0, 1].map(|i| fds[i].revents().contains(rustix::event::PollFlags::IN));
        for i in 0..2 {
            if ready[i] {
                let n = (&taps[i]).read(&mut buf).map_err(|e| e.to_string())?;
                let _ = (&taps[1 - i]).write(&buf[..n]);
            }
        }
    }
}

pub(super) fn figures(root: &Path, quick: bool) -> Result<Vec<Figure>, String> {
    let (bytes, datagrams, pings) = if quick {
        (16 << 20, 20_000, 500)
    } else {
        (256 << 20, 200_000, 5_000)
    };
    let o = ours(root, bytes, datagrams, pings)?;
    let r = raw(bytes, datagrams, pings)?;
    Ok(vec![
        Figure {
            bench: "net_throughput",
            unit: "Gbit/s",
            p50: o.gbit,
            p99: o.gbit,
            baseline: Some(("raw_tap_forwarder", r.gbit, r.gbit)),
            stat: Stat::Single,
            target: Some(Target::AtLeastRatio(0.8)),
        },
        Figure {
            bench: "net_packets_per_sec",
            unit: "pkt/s",
            p50: o.pps,
            p99: o.pps,
            baseline: Some(("raw_tap_forwarder", r.pps, r.pps)),
            stat: Stat::Single,
            target: Some(Target::AtLeastRatio(0.8)),
        },
        Figure {
            bench: "net_latency",
            unit: "us",
            p50: o.latency.0,
            p99: o.latency.1,
            baseline: Some(("raw_tap_forwarder", r.latency.0, r.latency.1)),
            stat: Stat::Percentiles,
            target: None,
        },
    ])
}

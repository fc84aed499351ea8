//! The serial family's figures: a program's bytes through a serial port
//! and back.
//!
//! | bench                  | what                                                        | baseline |
//! |------------------------|-------------------------------------------------------------|----------|
//! | `serial_throughput`    | program → tty → dext → virtual UART (loopback) → dext → tty → program, bytes/s | a raw pty pair whose master a plain process echoes |
//! | `serial_byte_latency`  | one byte there and back, the same path                      | the same raw pty echo |
//! | `serial_throughput_cuse`, `serial_byte_latency_cuse` | the same through the port's CUSE node (where the kernel has `/dev/cuse`) | the same raw pty echo |
//!
//! The UART is the virtual one with `pace = "none"` (as fast as memory),
//! so that the figure is the framework's, not a line rate's. The program
//! side is the same code for both: a raw tty, a writer thread and a
//! reader.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use driverkitd::backends::virtual_device;

use driverkitd::families::serial::NodeChoice;

use super::harness::{bench_daemon_serial, percentiles, Figure, Stat, Target};
use super::peers::{spawn_peer, Peer};
use crate::drivers;

/// A figure's name for a port of kind `node`: the pty's is the plain one.
pub(super) fn name(bench: &'static str, node: NodeChoice) -> &'static str {
    match (bench, node) {
        ("serial_throughput", NodeChoice::Cuse) => "serial_throughput_cuse",
        ("serial_byte_latency", NodeChoice::Cuse) => "serial_byte_latency_cuse",
        _ => bench,
    }
}

/// Runs `measure` against the framework's port (a node of kind `node`)
/// and the raw pty echo.
fn both<T>(
    root: &Path,
    node: NodeChoice,
    mut measure: impl FnMut(&Path) -> Result<T, String>,
) -> Result<(T, T), String> {
    let ours = {
        let driver = drivers::find("VirtualSerialDriver")?;
        let daemon = bench_daemon_serial(root, driver, node)?;
        let spec = virtual_device::parse(
            "name = \"BenchUART\"\n[uart]\npace = \"none\"\nfifo = 65536\n",
            "bench",
        )?;
        daemon.plug(spec)?;
        let path = wait_for_port(&daemon)?;
        let r = measure(Path::new(&path));
        daemon.shutdown();
        r?
    };
    let raw = {
        let (echo, slave) = raw_pty_echo()?;
        let r = measure(&slave);
        stop(echo);
        r?
    };
    Ok((ours, raw))
}

pub(super) fn throughput(
    root: &Path,
    node: NodeChoice,
    bytes: usize,
    runs: usize,
) -> Result<Vec<Figure>, String> {
    let mut ours = Vec::new();
    let mut raw = Vec::new();
    for _ in 0..runs {
        let (o, r) = both(root, node, |path| transfer(path, bytes))?;
        ours.push(o);
        raw.push(r);
    }
    let stat = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        (v[v.len() / 2], v[0])
    };
    let (o50, olow) = stat(ours);
    let (r50, rlow) = stat(raw);
    Ok(vec![Figure {
        bench: name("serial_throughput", node),
        unit: "MB/s",
        p50: o50,
        p99: olow,
        baseline: Some(("raw_pty_echo", r50, rlow)),
        stat: Stat::MedianLowest { runs },
        // "At least 0.8x the raw echo": the ratio printed is ours/raw.
        // The target is the pty's; the CUSE node's figure is reported.
        target: (node == NodeChoice::Pty).then_some(Target::AtLeastRatio(0.8)),
    }])
}

pub(super) fn byte_latency(root: &Path, node: NodeChoice, n: usize) -> Result<Vec<Figure>, String> {
    let ((o50, o99), (r50, r99)) = both(root, node, |path| round_trips(path, n))?;
    Ok(vec![Figure {
        bench: name("serial_byte_latency", node),
        unit: "us",
        p50: o50,
        p99: o99,
        baseline: Some(("raw_pty_echo", r50, r99)),
        stat: Stat::Percentiles,
        // "At most 2x a raw pty echo", on the pty; the CUSE node's figure
        // is reported.
        target: (node == NodeChoice::Pty).then_some(Target::RatioAtMost(2.0)),
    }])
}

/// Opens a tty raw at 4 Mbaud, as a serial program does: the virtual
/// UART does not pace, but a CUSE node lets a writer only so far ahead of
/// the line's rate.
fn open_raw(path: &Path) -> Result<std::fs::File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(rustix::fs::OFlags::NOCTTY.bits() as i32)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut t = rustix::termios::tcgetattr(&f).map_err(|e| e.to_string())?;
    t.make_raw();
    t.set_speed(4_000_000).map_err(|e| e.to_string())?;
    rustix::termios::tcsetattr(&f, rustix::termios::OptionalActions::Now, &t)
        .map_err(|e| e.to_string())?;
    Ok(f)
}

/// MB/s of `bytes` written and read back.
fn transfer(path: &Path, bytes: usize) -> Result<f64, String> {
    let tty = open_raw(path)?;
    let mut writer = tty.try_clone().map_err(|e| e.to_string())?;
    let start = Instant::now();
    let sender = std::thread::spawn(move || {
        let chunk = vec![0x5au8; 16 * 1024];
        let mut sent = 0;
        while sent < bytes {
            let n = chunk.len().min(bytes - sent);
            if writer.write_all(&chunk[..n]).is_err() {
                break;
            }
            sent += n;
        }
    });
    let mut reader = tty;
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < bytes {
        let fd = reader.as_fd();
        let mut fds = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN,
        )];
        let ts = rustix::event::Timespec {
            tv_sec: 10,
            tv_nsec: 0,
        };
        if rustix::event::poll(&mut fds, Some(&ts)).map_err(|e| e.to_string())? == 0 {
            return Err(format!(
                "{}: no echo for 10 s after {got} bytes",
                path.display()
            ));
        }
        got += reader.read(&mut buf).map_err(|e| e.to_string())?;
    }
    let secs = start.elapsed().as_secs_f64();
    let _ = sender.join();
    Ok(bytes as f64 / secs / 1e6)
}

/// One byte there and back, `n` times (after a tenth as warm-up): µs.
fn round_trips(path: &Path, n: usize) -> Result<(f64, f64), String> {
    let mut tty = open_raw(path)?;
    let mut samples = Vec::with_capacity(n);
    let mut b = [0u8; 1];
    for i in 0..n + n / 10 {
        let t = Instant::now();
        tty.write_all(&[i as u8]).map_err(|e| e.to_string())?;
        tty.read_exact(&mut b).map_err(|e| e.to_string())?;
        if b[0] != i as u8 {
            return Err(format!("byte {i} came back as {}", b[0]));
        }
        if i >= n / 10 {
            samples.push(t.elapsed().as_nanos() as f64 / 1000.0);
        }
    }
    Ok(percentiles(samples))
}

/// The port's callout path, once the driver has connected its queues.
fn wait_for_port(daemon: &driverkitd::Daemon) -> Result<String, String> {
    fn find(node: &plist::Value) -> Option<String> {
        let d = node.as_dictionary()?;
        if let Some(p) = d.get("IOCalloutDevice").and_then(|v| v.as_string()) {
            return Some(p.to_owned());
        }
        d.get("IORegistryEntryChildren")?
            .as_array()?
            .iter()
            .find_map(find)
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(p) = find(&daemon.registry_plist()) {
            return Ok(p);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err("the serial port did not appear within 30 s".into())
}

/// A pty pair whose master a plain process echoes; returns it and the
/// slave's path.
fn raw_pty_echo() -> Result<(std::process::Child, std::path::PathBuf), String> {
    use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
    let err = |e: rustix::io::Errno| e.to_string();
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).map_err(err)?;
    grantpt(&master).map_err(err)?;
    unlockpt(&master).map_err(err)?;
    let slave = ptsname(&master, Vec::new()).map_err(err)?;
    let slave = std::path::PathBuf::from(slave.to_str().map_err(|e| e.to_string())?);
    let mut t = rustix::termios::tcgetattr(&master).map_err(err)?;
    t.make_raw();
    rustix::termios::tcsetattr(&master, rustix::termios::OptionalActions::Now, &t).map_err(err)?;
    let child = spawn_peer(Peer::PtyEcho, master, Stdio::inherit())?;
    Ok((child, slave))
}

fn stop(mut child: std::process::Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The baseline's echo: reads the master, writes back what it read.
pub fn pty_echo_peer() -> Result<(), String> {
    let master: OwnedFd = super::peers::inherited_fd()?;
    let mut master = std::fs::File::from(master);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match master.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                if master.write_all(&buf[..n]).is_err() {
                    return Ok(());
                }
            }
            // EIO: no program has the slave open yet, or any more.
            Err(e) if e.raw_os_error() == Some(5) => std::thread::sleep(Duration::from_millis(1)),
            Err(_) => return Ok(()),
        }
    }
}

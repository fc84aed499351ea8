//! The serial family end to end: VirtualSerialDriver over a virtual UART
//! gives a real tty, which pyserial, stty, picocom (in tmux, as a person
//! types) and plain file descriptors use like any serial port.

mod support;

use std::io::Write;
use std::os::fd::AsFd;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// A UART as fast as memory, with room for `fifo` bytes each way.
fn fast_uart(d: &Daemon, name: &str, fifo: usize) -> String {
    device_file(
        d.root.path(),
        &format!("{name}.toml"),
        &format!("name = \"{name}\"\n[uart]\npace = \"none\"\nfifo = {fifo}\n"),
    )
}

fn callout(node: &Value) -> String {
    node["properties"]["IOCalloutDevice"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn node_by_id(d: &Daemon, id: u64) -> Value {
    d.nodes()
        .into_iter()
        .find(|n| n["id"].as_u64() == Some(id))
        .unwrap_or(Value::Null)
}

fn plug(d: &Daemon, file: &str) -> u64 {
    let id = d.cli(&["device", "plug", file]);
    u64::from_str_radix(id.trim().trim_start_matches("0x"), 16).unwrap()
}

/// The serial service whose provider is `uart`.
fn port_over(d: &Daemon, uart: u64) -> Value {
    d.wait_node("the serial port's tty", |n| {
        n["class"] == "IOUserSerial"
            && n["properties"]["IOCalloutDevice"].is_string()
            && parent_of(d, n["id"].as_u64().unwrap()) == Some(uart)
    })
}

fn parent_of(d: &Daemon, id: u64) -> Option<u64> {
    fn walk(node: &Value, parent: Option<u64>, id: u64) -> Option<Option<u64>> {
        if node["id"].as_u64() == Some(id) {
            return Some(parent);
        }
        node["children"]
            .as_array()?
            .iter()
            .find_map(|c| walk(c, node["id"].as_u64(), id))
    }
    let mut tree: Value = serde_json::from_str(&d.cli(&["ioreg", "--json"])).unwrap();
    fn ids(node: &mut Value) {
        if let Some(hex) = node["id"].as_str() {
            node["id"] = u64::from_str_radix(hex.trim_start_matches("0x"), 16)
                .unwrap()
                .into();
        }
        if let Some(c) = node["children"].as_array_mut() {
            c.iter_mut().for_each(ids);
        }
    }
    ids(&mut tree);
    walk(&tree, None, id).flatten()
}

/// The system's Python, where `apt install python3-serial` puts pyserial
/// (a user's pyenv may come first on PATH).
fn python(script: &str, args: &[&str]) -> String {
    let python = ["/usr/bin/python3", "python3"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("python3");
    let out = Command::new(python)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "python3 failed (pyserial is `apt install python3-serial`):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn pyserial_gets_back_a_mebibyte_of_random_bytes_in_order() {
    let d = Daemon::start(&["--no-default-devices"]);
    let uart = plug(&d, &fast_uart(&d, "FastUART", 65536));
    let port = port_over(&d, uart);
    let path = callout(&port);
    assert!(
        path.ends_with(port["properties"]["IOTTYDevice"].as_str().unwrap()),
        "the callout link is named after the service: {path}"
    );
    assert_eq!(
        std::fs::read_link(&path).unwrap().to_str().unwrap(),
        port["properties"]["IODialinDevice"].as_str().unwrap(),
        "the link points at the tty"
    );
    let out = python(
        r#"
import hashlib, os, sys, threading, serial
data = os.urandom(1 << 20)
s = serial.Serial(sys.argv[1], 115200, timeout=20)
got = bytearray()
def read():
    global got
    while len(got) < len(data):
        chunk = s.read(min(65536, len(data) - len(got)))
        if not chunk:
            break
        got += chunk
reader = threading.Thread(target=read)
reader.start()
for i in range(0, len(data), 8192):
    s.write(data[i:i + 8192])
reader.join()
s.close()
print(len(got), hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest(), bytes(got) == data)
"#,
        &[&path],
    );
    assert_eq!(out.trim(), "1048576 True True", "every byte back, in order");
    d.wait_log("hw_program_baud_rate(115200)", 1);
    let port = node_by_id(&d, port["id"].as_u64().unwrap());
    assert_eq!(port["properties"]["BaudRate"], 115200);
    assert_eq!(port["properties"]["IOSerialLine"]["BaudRate"], 115200);
}

#[test]
fn stty_flush_open_and_close_reach_the_driver() {
    let d = Daemon::start(&["--no-default-devices"]);
    let uart = plug(&d, &fast_uart(&d, "U", 4096));
    let port = port_over(&d, uart);
    let id = port["id"].as_u64().unwrap();
    let path = callout(&port);
    assert_eq!(port["properties"]["IOSerialOpen"], false);

    // A port starts at 9600 baud: to 115200 and back.
    for baud in ["115200", "9600"] {
        let out = Command::new("stty")
            .args(["-F", &path, baud])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        d.wait_log(&format!("hw_program_baud_rate({baud})"), 1);
    }
    d.wait_until("BaudRate 9600 on the driver", || {
        node_by_id(&d, id)["properties"]["BaudRate"] == 9600
    });
    // Each stty opened and closed it: activate, the change, deactivate.
    d.wait_log("hw_deactivate", 2);
    let log = d.log();
    let activate = log.rfind("hw_activate").expect("opening activates");
    let baud = log.find("hw_program_baud_rate(9600)").unwrap();
    let deactivate = log.rfind("hw_deactivate").unwrap();
    assert!(activate < baud && baud < deactivate, "in order:\n{log}");

    // Two stop bits reach hw_program_uart; a flush of both directions
    // reaches hw_reset_fifo; the tty is open meanwhile.
    python(
        r#"
import sys, termios, time, os
fd = os.open(sys.argv[1], os.O_RDWR | os.O_NOCTTY)
a = termios.tcgetattr(fd)
a[2] |= termios.CSTOPB
termios.tcsetattr(fd, termios.TCSANOW, a)
termios.tcflush(fd, termios.TCIOFLUSH)
time.sleep(0.5)
os.close(fd)
"#,
        &[&path],
    );
    d.wait_log("hw_program_uart(9600, 8, 4, None)", 1);
    d.wait_until("a reset of both FIFOs", || {
        let log = d.log();
        log.contains("hw_reset_fifo(tx true") && log.contains("rx true)")
    });
    d.wait_log("hw_deactivate", 3);
    d.wait_until("IOSerialOpen false", || {
        node_by_id(&d, id)["properties"]["IOSerialOpen"] == false
    });
    // The last close dropped DTR and RTS (HUPCL), and the line says so.
    let line = &node_by_id(&d, id)["properties"]["IOSerialLine"];
    assert_eq!(
        (&line["DTR"], &line["RTS"]),
        (&Value::Bool(false), &Value::Bool(false))
    );
    assert!(
        node_by_id(&d, id)["properties"]["FIFOResets"]
            .as_u64()
            .unwrap()
            >= 1
    );

    // What a pty cannot carry fails loudly for the program: modem lines.
    let err = python(
        r#"
import sys, os, fcntl, termios, struct
fd = os.open(sys.argv[1], os.O_RDWR | os.O_NOCTTY)
try:
    fcntl.ioctl(fd, termios.TIOCMGET, struct.pack('i', 0))
    print("silently accepted")
except OSError as e:
    print(e.strerror)
"#,
        &[&path],
    );
    assert_eq!(err.trim(), "Inappropriate ioctl for device");
}

#[test]
fn picocom_in_tmux_sees_a_typed_line_come_back() {
    let d = Daemon::start(&["--no-default-devices"]);
    let uart = plug(&d, "uart"); // the built-in, paced at the line rate
    let path = callout(&port_over(&d, uart));
    let session = format!("dk-serial-{}", std::process::id());
    let tmux = |args: &[&str]| {
        let out = Command::new("tmux").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "120",
        "-y",
        "30",
        &format!("picocom -b 115200 {path}"),
    ]);
    let kill = KillSession(session.clone());
    d.wait_until("picocom to open the port", || {
        tmux(&["capture-pane", "-p", "-t", &session]).contains("Terminal ready")
    });
    // Typed as a person would: picocom does not echo locally, so the text
    // on the screen came back through the UART.
    for word in ["hello ", "serial ", "world"] {
        tmux(&["send-keys", "-t", &session, "-l", word]);
        std::thread::sleep(Duration::from_millis(150));
    }
    d.wait_until("the line echoed on picocom's screen", || {
        tmux(&["capture-pane", "-p", "-t", &session]).contains("hello serial world")
    });
    d.wait_log("hw_program_baud_rate(115200)", 1);
    drop(kill);
}

struct KillSession(String);

impl Drop for KillSession {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .output();
    }
}

/// Opens a tty raw and non-blocking.
fn open_raw(path: &str) -> std::fs::File {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc_o_noctty())
        .open(path)
        .unwrap();
    let mut t = rustix::termios::tcgetattr(&f).unwrap();
    t.make_raw();
    rustix::termios::tcsetattr(&f, rustix::termios::OptionalActions::Now, &t).unwrap();
    rustix::fs::fcntl_setfl(&f, rustix::fs::OFlags::NONBLOCK).unwrap();
    f
}

fn libc_o_noctty() -> i32 {
    rustix::fs::OFlags::NOCTTY.bits() as i32
}

use std::os::unix::fs::OpenOptionsExt;

/// Writes until the tty takes no more; returns what it took.
fn write_until_full(f: &mut std::fs::File, seed: u8) -> Vec<u8> {
    let mut written = Vec::new();
    let chunk: Vec<u8> = (0..4096u32).map(|i| (i as u8).wrapping_mul(seed)).collect();
    let mut idle_since = Instant::now();
    while idle_since.elapsed() < Duration::from_millis(500) {
        match f.write(&chunk) {
            Ok(n) => {
                written.extend_from_slice(&chunk[..n]);
                idle_since = Instant::now();
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("write: {e}"),
        }
        assert!(
            written.len() < 64 << 20,
            "the tty took 64 MiB without reading"
        );
    }
    written
}

fn rss_kib(pid: u64) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_reader_that_never_reads_holds_the_writer_back_and_nothing_is_lost() {
    let d = Daemon::start(&["--no-default-devices"]);
    let uart = plug(&d, &fast_uart(&d, "U", 4096));
    let port = port_over(&d, uart);
    let pid = port["pid"].as_u64().unwrap();
    let mut f = open_raw(&callout(&port));
    let written = write_until_full(&mut f, 7);
    // Bounded by the buffers on the way (two pty buffers, two rings, two
    // FIFOs), nowhere near what a writer could push.
    assert!(
        written.len() < 2 << 20,
        "{} bytes taken with nobody reading",
        written.len()
    );
    let (daemon_rss, dext_rss) = (rss_kib(d.pid().into()), rss_kib(pid));
    // Still held back a while later, memory flat.
    let more = write_until_full(&mut f, 7);
    assert!(more.len() < 64 * 1024, "{} more bytes taken", more.len());
    assert!(rss_kib(d.pid().into()) < daemon_rss + 4096);
    assert!(rss_kib(pid) < dext_rss + 4096);
    let mut all = written;
    all.extend(more);
    // Now read: every byte comes back, in order.
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = vec![0u8; 65536];
    while got.len() < all.len() && Instant::now() < deadline {
        match std::io::Read::read(&mut f, &mut buf) {
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("read: {e}"),
        }
    }
    assert_eq!(got.len(), all.len());
    assert!(got == all, "the bytes came back in order");
}

#[test]
fn a_crash_with_both_rings_full_hangs_up_the_reader_and_the_relaunch_gets_a_fresh_tty() {
    let d = Daemon::start(&["--no-default-devices"]);
    let uart = plug(&d, &fast_uart(&d, "U", 4096));
    let port = port_over(&d, uart);
    let (id, pid) = (port["id"].as_u64().unwrap(), port["pid"].as_u64().unwrap());
    let path = callout(&port);
    let old_tty = port["properties"]["IODialinDevice"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut f = open_raw(&path);
    let written = write_until_full(&mut f, 3);
    assert!(written.len() > 65536, "both rings hold bytes");
    kill9(pid);
    // The reader sees the hang-up: a read that ends (EIO or end of file),
    // not one that waits forever.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = vec![0u8; 65536];
    let hung_up = loop {
        assert!(Instant::now() < deadline, "the tty never hung up");
        let fd = f.as_fd();
        let mut fds = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN,
        )];
        let _ = rustix::event::poll(&mut fds, None);
        match std::io::Read::read(&mut f, &mut buf) {
            Ok(0) => break "end of file",
            Ok(_) => continue, // what was already on its way
            Err(e) if e.raw_os_error() == Some(5) => break "EIO",
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => panic!("read: {e}"),
        }
    };
    eprintln!("the reader saw {hung_up}");
    drop(f);
    // The relaunched driver has a new service and a fresh tty at the same
    // link; it echoes.
    let new = d.wait_node("the relaunched port", |n| {
        n["class"] == "IOUserSerial"
            && n["id"].as_u64() != Some(id)
            && n["properties"]["IOCalloutDevice"].as_str() == Some(&path)
    });
    assert_ne!(new["pid"].as_u64(), Some(pid));
    let new_tty = std::fs::read_link(&path).unwrap();
    eprintln!("old tty {old_tty}, new {}", new_tty.display());
    let out = python(
        r#"
import sys, os, tty, select
fd = os.open(sys.argv[1], os.O_RDWR | os.O_NOCTTY)
tty.setraw(fd)
os.write(fd, b"fresh")
got = b""
while len(got) < 5 and select.select([fd], [], [], 10)[0]:
    got += os.read(fd, 100)
print(got.decode())
"#,
        &[&path],
    );
    assert_eq!(
        out.trim(),
        "fresh",
        "nothing of the old rings leaks into the new tty"
    );
}

#[test]
fn serial_set_carries_what_a_pty_cannot_and_unknown_ports_are_named() {
    let d = Daemon::start(&["--no-default-devices"]);
    let uart = plug(&d, &fast_uart(&d, "U", 4096));
    let port = port_over(&d, uart);
    let id = port["id"].as_u64().unwrap();
    let name = port["properties"]["IOTTYDevice"]
        .as_str()
        .unwrap()
        .to_owned();
    // Seven data bits and even parity: a tty would have made them 8N1.
    d.cli(&[
        "serial",
        "set",
        &name,
        "--data-bits",
        "7",
        "--parity",
        "even",
    ]);
    d.wait_log("hw_program_uart(9600, 7, 2, Even)", 1);
    // DTR and RTS: the loopback plug wires them to DSR/DCD and CTS, which
    // come back through the driver's modem status interrupt.
    d.cli(&[
        "serial",
        "set",
        &callout(&port),
        "--dtr",
        "on",
        "--rts",
        "off",
    ]);
    let got: Value = serde_json::from_str(&d.cli(&["serial", "get", &name, "--json"])).unwrap();
    assert_eq!(got["data_bits"], 7);
    assert_eq!(got["parity"], "even");
    assert_eq!(got["dtr"], true);
    assert_eq!(got["modem"]["dsr"], true);
    assert_eq!(got["modem"]["cts"], false);
    d.wait_until("DSR on in the registry", || {
        node_by_id(&d, id)["properties"]["IOSerialModemStatus"]["DSR"] == true
    });
    // A break reaches the UART, held and let go.
    d.cli(&["serial", "set", &name, "--break", "10"]);
    d.wait_log("uart     break off", 1);
    assert!(d.log().contains("uart     break on"));
    // A program's last close drops DTR and RTS (HUPCL): the line says so,
    // and the loopback's DSR follows.
    let out = Command::new("stty")
        .args(["-F", &callout(&port)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    d.wait_log("hw_deactivate", 1);
    d.wait_until("DTR off after the last close", || {
        let got: Value = serde_json::from_str(&d.cli(&["serial", "get", &name, "--json"])).unwrap();
        got["dtr"] == false && got["rts"] == false && got["modem"]["dsr"] == false
    });
    // A port that is not there is named, with the ones that are.
    let out = d.run_cli(&["serial", "get", "nonesuch"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no serial port \"nonesuch\"") && err.contains(&name),
        "{err}"
    );
}

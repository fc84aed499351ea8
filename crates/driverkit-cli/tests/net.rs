//! The Ethernet family end to end: VirtualEthernetDriver on each end of the
//! virtual cable gives two real network interfaces; in two network
//! namespaces this test makes, they ping each other and carry a TCP
//! transfer, and a driver's crash leaves its interface in place.
//!
//! Addresses are link-local (169.254.0.0/16), only inside the namespaces
//! the test creates and removes.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::*;

/// A network namespace, removed when dropped.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("dk{tag}{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Netns(name)
    }

    /// Moves interface `dev` in, gives it `addr`, and brings it up.
    fn take(&self, dev: &str, addr: &str) {
        ip(&["link", "set", dev, "netns", &self.0]);
        ip(&["-n", &self.0, "addr", "add", addr, "dev", dev]);
        ip(&["-n", &self.0, "link", "set", dev, "up"]);
    }

    fn exec(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0]).args(args);
        c
    }

    fn link(&self, dev: &str) -> String {
        String::from_utf8(
            Command::new("ip")
                .args(["-n", &self.0, "-br", "link", "show", dev])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ping(ns: &Netns, addr: &str) -> bool {
    ns.exec(&["ping", "-c", "3", "-i", "0.2", "-W", "2", addr])
        .output()
        .expect("ping (iputils-ping)")
        .status
        .success()
}

/// The two interfaces' nodes, once both exist.
/// The cable's two interfaces, once their drivers have reported the link
/// (a driver registers its interface first, then reports the link: the
/// interface is there, carrier off, in between).
fn interfaces(d: &Daemon) -> Vec<Value> {
    let mut found = Vec::new();
    d.wait_until("two Ethernet interfaces, their links reported", || {
        found = d
            .nodes()
            .into_iter()
            .filter(|n| {
                n["class"] == "IOUserNetworkEthernet" && n["properties"]["BSD Name"].is_string()
            })
            .collect();
        found.len() == 2 && found.iter().all(|n| n["properties"]["IOLinkStatus"] == 3)
    });
    found
}

fn bsd_name(n: &Value) -> String {
    n["properties"]["BSD Name"].as_str().unwrap().to_owned()
}

const TCP: &str = r#"
import hashlib, os, socket, sys
mode, addr = sys.argv[1], sys.argv[2]
if mode == "server":
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, 5001)); s.listen(1)
    print("listening", flush=True)
    c, _ = s.accept(); h = hashlib.sha256(); n = 0
    while True:
        b = c.recv(1 << 16)
        if not b: break
        h.update(b); n += len(b)
    print(n, h.hexdigest(), flush=True)
else:
    data = os.urandom(1 << 20); h = hashlib.sha256()
    c = socket.create_connection((addr, 5001), timeout=60)
    for i in range(int(sys.argv[3])):
        c.sendall(data); h.update(data)
    c.close()
    print(int(sys.argv[3]) << 20, h.hexdigest(), flush=True)
"#;

/// MiB from `from` to `to_addr` in `to`, checked by SHA-256 at both ends.
fn transfer(from: &Netns, to: &Netns, to_addr: &str, mib: usize) {
    use std::io::BufRead;
    let mut server = to
        .exec(&["/usr/bin/python3", "-c", TCP, "server", to_addr])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(server.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "listening");
    let sent = from
        .exec(&[
            "/usr/bin/python3",
            "-c",
            TCP,
            "client",
            to_addr,
            &mib.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let received = lines.next().unwrap().unwrap();
    let _ = server.wait();
    assert_eq!(
        received,
        String::from_utf8(sent.stdout).unwrap().trim(),
        "every byte arrived, checksum and all"
    );
}

#[test]
fn two_namespaces_ping_and_move_100_mib_over_the_cable() {
    let d = Daemon::start(&["--no-default-devices"]);
    d.cli(&["device", "plug", "cable"]);
    let ifs = interfaces(&d);
    for n in &ifs {
        let p = &n["properties"];
        assert_eq!(p["IOLinkStatus"], 3, "valid and active: {p}");
        assert!(
            p["IOMACAddress"].is_string() || p["IOMACAddress"].is_object(),
            "{p}"
        );
        assert_eq!(p["IOMaxTransferUnit"], 1500);
    }
    let (a, b) = (Netns::new("a"), Netns::new("b"));
    a.take(&bsd_name(&ifs[0]), "169.254.77.1/16");
    b.take(&bsd_name(&ifs[1]), "169.254.77.2/16");
    assert!(ping(&a, "169.254.77.2"), "a pings b");
    assert!(ping(&b, "169.254.77.1"), "b pings a");
    transfer(&a, &b, "169.254.77.2", 100);
}

#[test]
fn a_crash_leaves_the_interface_drops_carrier_and_the_relaunch_resumes() {
    let d = Daemon::start(&["--no-default-devices"]);
    d.cli(&["device", "plug", "cable"]);
    let ifs = interfaces(&d);
    let (a, b) = (Netns::new("c"), Netns::new("d"));
    let (dev_a, dev_b) = (bsd_name(&ifs[0]), bsd_name(&ifs[1]));
    a.take(&dev_a, "169.254.78.1/16");
    b.take(&dev_b, "169.254.78.2/16");
    assert!(ping(&a, "169.254.78.2"));
    let fds_before = std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
        .unwrap()
        .count();
    for round in 0..3 {
        // Under load: a flood of pings while the driver dies.
        let mut flood = a
            .exec(&["ping", "-f", "-w", "3", "169.254.78.2"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let driver = d
            .nodes()
            .into_iter()
            .find(|n| {
                n["class"] == "IOUserNetworkEthernet"
                    && n["properties"]["BSD Name"] == dev_a.as_str()
            })
            .unwrap();
        let pid = driver["pid"].as_u64().unwrap();
        kill9(pid);
        d.wait_log("driver away, carrier off", round + 1);
        assert!(
            !a.link(&dev_a).is_empty(),
            "the interface stays: {}",
            a.link(&dev_a)
        );
        d.wait_until("the relaunched driver", || {
            d.nodes().iter().any(|n| {
                n["properties"]["BSD Name"] == dev_a.as_str()
                    && n["pid"].as_u64().is_some_and(|p| p != pid)
                    && n["state"]["active"] == true
            })
        });
        d.wait_until("carrier back", || a.link(&dev_a).contains("LOWER_UP"));
        let _ = flood.wait();
        assert!(ping(&a, "169.254.78.2"), "round {round}: traffic resumes");
    }
    std::thread::sleep(Duration::from_millis(300));
    let fds_after = std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
        .unwrap()
        .count();
    assert!(
        fds_after <= fds_before + 2,
        "the daemon's descriptors: {fds_before} before three crashes, {fds_after} after"
    );
    transfer(&a, &b, "169.254.78.2", 10);
}

#[test]
fn ip_link_changes_reach_the_driver_and_a_frame_past_the_mtu_is_dropped_and_counted() {
    let d = Daemon::start(&["--no-default-devices"]);
    d.cli(&["device", "plug", "cable"]);
    let ifs = interfaces(&d);
    let (a, b) = (Netns::new("e"), Netns::new("f"));
    let (dev_a, dev_b) = (bsd_name(&ifs[0]), bsd_name(&ifs[1]));
    a.take(&dev_a, "169.254.79.1/16");
    b.take(&dev_b, "169.254.79.2/16");
    d.wait_log("set_interface_enable(true)", 2);
    // MTU and promiscuous mode, as a user sets them, inside the namespace
    // the interface was moved to.
    ip(&["-n", &a.0, "link", "set", &dev_a, "mtu", "1800"]);
    d.wait_log("set_mtu(1800)", 1);
    d.wait_until("IOMaxTransferUnit 1800", || {
        d.nodes().iter().any(|n| {
            n["properties"]["BSD Name"] == dev_a.as_str()
                && n["properties"]["IOMaxTransferUnit"] == 1800
        })
    });
    ip(&["-n", &a.0, "link", "set", &dev_a, "promisc", "on"]);
    d.wait_log("set_promiscuous_mode_enable(true)", 1);
    // A multicast address the kernel is asked to receive reaches the
    // driver's list (rtnetlink does not announce it: dev_mcast is read).
    ip(&[
        "-n",
        &a.0,
        "maddr",
        "add",
        "01:00:5e:01:02:03",
        "dev",
        &dev_a,
    ]);
    d.wait_until("the driver's multicast list", || {
        d.nodes().iter().any(|n| {
            n["properties"]["BSD Name"] == dev_a.as_str()
                && n["properties"]["MulticastAddresses"]
                    .as_array()
                    .is_some_and(|l| l.iter().any(|a| a == "01:00:5e:01:02:03"))
        })
    });
    // Past what the driver's buffers hold: refused, and set back.
    ip(&["-n", &a.0, "link", "set", &dev_a, "mtu", "9000"]);
    d.wait_log("the driver refused MTU 9000; set back to 1800", 1);
    d.wait_until("the MTU back at 1800", || {
        a.link(&dev_a).is_empty() || {
            let out = Command::new("ip")
                .args(["-n", &a.0, "link", "show", &dev_a])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).contains("mtu 1800")
        }
    });
    // A sends 1,800-byte frames; b's MTU is 1,500: they are dropped at b,
    // counted, never truncated into b's kernel.
    let out = a
        .exec(&[
            "ping",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "1",
            "-s",
            "1700",
            "-M",
            "do",
            "169.254.79.2",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "no echo of a frame b cannot take");
    d.wait_until("b counted the frames too long", || {
        d.nodes().iter().any(|n| {
            n["properties"]["BSD Name"] == dev_b.as_str()
                && n["properties"]["IONetworkStatistics"]["RxTooLong"]
                    .as_u64()
                    .is_some_and(|c| c >= 3)
        })
    });
    // `ip link set down` reaches the driver, which takes its end of the
    // cable down: the peer sees its carrier go.
    ip(&["-n", &b.0, "link", "set", &dev_b, "down"]);
    d.wait_log("set_interface_enable(false)", 1);
    d.wait_until("a's carrier off", || a.link(&dev_a).contains("NO-CARRIER"));
    assert!(
        !ping(&a, "169.254.79.2"),
        "nothing crosses a cable one end took down"
    );
    ip(&["-n", &b.0, "link", "set", &dev_b, "up"]);
    d.wait_until("a's carrier back", || a.link(&dev_a).contains("LOWER_UP"));
    d.wait_until("traffic again", || ping(&a, "169.254.79.2"));
}

#[test]
fn an_interface_whose_namespace_is_deleted_gets_a_stand_in_that_works() {
    let d = Daemon::start(&["--no-default-devices"]);
    d.cli(&["device", "plug", "cable"]);
    let ifs = interfaces(&d);
    let (first, other) = (bsd_name(&ifs[0]), bsd_name(&ifs[1]));
    {
        let gone = Netns::new("g");
        gone.take(&first, "169.254.79.1/16");
        d.wait_log(&format!("net      {first}: up reached the driver"), 1);
        // `ip netns del`, as the README's cleanup does: the namespace
        // goes (the daemon does not hold it), and the interface with it.
    }
    d.wait_log(&format!("net      {first} is gone"), 1);
    d.wait_log("stands in for VirtualEthernetDriver", 1);
    // Its driver heard it go down (and so the cable's link): the two are
    // there, links down until a user brings them up again.
    let names: Vec<String> = d
        .nodes()
        .into_iter()
        .filter(|n| n["class"] == "IOUserNetworkEthernet")
        .map(|n| bsd_name(&n))
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&other), "{names:?}");
    let stand_in = names.iter().find(|n| **n != other).unwrap().clone();
    // The stand-in is a real interface here, and works as the first did.
    ip(&["link", "show", &stand_in]);
    let (a, b) = (Netns::new("s"), Netns::new("t"));
    a.take(&stand_in, "169.254.79.1/16");
    b.take(&other, "169.254.79.2/16");
    assert!(ping(&a, "169.254.79.2"), "the stand-in pings the other end");
}

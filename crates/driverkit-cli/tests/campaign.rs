//! The crash campaign: faults injected into concurrent dexts, round after
//! round, and during their relaunches. After every round every service is
//! back with a live process, and no daemon socket is held by two processes
//! (the defect this campaign once found); at the end the daemon's
//! descriptors, threads and memory are back where they started, and it
//! stops on SIGINT.
//!
//! `DRIVERKIT_CAMPAIGN_ROUNDS` sets the rounds (CI runs a few; each round
//! is one external fault per dext plus the faults the relaunched dexts
//! draw in Start). `DRIVERKIT_CAMPAIGN_SEED` replays a run.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use support::*;

const DEXTS: usize = 4;

/// xorshift64*: reproducible from the seed the test prints.
struct Draw(u64);

impl Draw {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The socket inodes each of `pids` holds.
fn sockets_of(pid: u64) -> Vec<u64> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    fds.flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy().into_owned();
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// (descriptors, threads, resident KiB) of `pid`.
fn footprint(pid: u32) -> (usize, u64, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    };
    (fds, field("Threads:"), field("VmRSS:"))
}

/// Every faulty service active with a live process; their PIDs.
fn all_back(d: &Daemon) -> Option<Vec<u64>> {
    let nodes = d.nodes();
    let pids: Vec<u64> = nodes
        .iter()
        .filter(|n| n["name"] == "TestDriver" && n["state"]["active"] == true)
        .filter_map(|n| n["pid"].as_u64())
        .filter(|&pid| alive(pid))
        .collect();
    (pids.len() == DEXTS).then_some(pids)
}

#[test]
fn faults_in_concurrent_dexts_and_their_relaunches_leave_the_daemon_whole() {
    let rounds: usize = std::env::var("DRIVERKIT_CAMPAIGN_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(6);
    let seed: u64 = std::env::var("DRIVERKIT_CAMPAIGN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("campaign: {rounds} rounds, DRIVERKIT_CAMPAIGN_SEED={seed}");
    let mut draw = Draw(seed);
    let d = Daemon::start(&[
        "--no-embedded",
        "--no-default-devices",
        "--relaunch-limit",
        "1000000",
        "--relaunch-backoff-ms",
        "1",
        "--call-timeout-ms",
        "500",
    ]);
    let personalities: Vec<String> = (0..DEXTS)
        .map(|slot| {
            format!(
                "<key>IOPropertyMatch</key><dict><key>CampaignSlot</key><integer>{slot}</integer></dict>\
                 <key>TestStartBehavior</key><string>random-fault</string>"
            )
        })
        .collect();
    let names: Vec<String> = (0..DEXTS).map(|slot| format!("Faulty{slot}")).collect();
    let ps: Vec<P> = (0..DEXTS)
        .map(|slot| P {
            name: &names[slot],
            provider_class: "IOVirtualDevice",
            extra: &personalities[slot],
        })
        .collect();
    let bundle = test_bundle(d.root.path(), "org.test.Campaign", &ps);
    d.load(&bundle);
    for slot in 0..DEXTS {
        let file = device_file(
            d.root.path(),
            &format!("slot{slot}.toml"),
            &format!("name = \"Slot{slot}\"\n[properties]\nCampaignSlot = {slot}\n"),
        );
        d.cli(&["device", "plug", &file]);
    }
    let daemon = d.pid();
    let mut pids = Vec::new();
    d.wait_until("every faulty service up", || {
        all_back(&d).map(|p| pids = p).is_some()
    });
    let before = footprint(daemon);
    let mut external = 0;
    for round in 0..rounds {
        // One external fault per dext, all at once.
        for &pid in &pids {
            let signal = match draw.next() % 3 {
                0 => rustix::process::Signal::KILL,
                1 => rustix::process::Signal::ABORT,
                _ => rustix::process::Signal::TERM,
            };
            if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(p, signal);
                external += 1;
            }
        }
        d.wait_until(
            &format!("every service back after round {round}"),
            || match all_back(&d) {
                Some(p) if p.iter().all(|pid| !pids.contains(pid)) => {
                    pids = p;
                    true
                }
                _ => false,
            },
        );
        // Each socket of a dext is held by that dext alone.
        let mut holders: HashMap<u64, Vec<u64>> = HashMap::new();
        for child in children_of(daemon) {
            let mut inodes = sockets_of(child);
            // stdout and stderr share the log socket.
            inodes.sort_unstable();
            inodes.dedup();
            for inode in inodes {
                holders.entry(inode).or_default().push(child);
            }
        }
        let shared: Vec<_> = holders.iter().filter(|(_, h)| h.len() > 1).collect();
        assert!(
            shared.is_empty(),
            "round {round}: sockets held by several dexts: {shared:?}\n{}",
            d.log()
        );
    }
    let log = d.log();
    let in_start = ["panicked", "SIGABRT", "exited with status 0", "timed out"]
        .iter()
        .map(|needle| log.matches(needle).count())
        .sum::<usize>();
    eprintln!(
        "campaign: {external} external faults, {} crashes logged in all (faults drawn in Start included)",
        log.matches("crash    org.test.Campaign").count()
    );
    assert!(in_start > 0, "no fault was drawn in Start:\n{log}");
    // Idle workers retire after 10 s; then the daemon is back to its size.
    let settled = Instant::now() + Duration::from_secs(40);
    let after = loop {
        let now = footprint(daemon);
        if (now.0 <= before.0 + 2 && now.1 <= before.1 + 2) || Instant::now() > settled {
            break now;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(
        after.0 <= before.0 + 2,
        "descriptors: {} before, {} after",
        before.0,
        after.0
    );
    assert!(
        after.1 <= before.1 + 2,
        "threads: {} before, {} after",
        before.1,
        after.1
    );
    assert!(
        after.2 <= before.2 + 16 * 1024,
        "resident memory: {} KiB before, {} KiB after",
        before.2,
        after.2
    );
    eprintln!("campaign: daemon (fds, threads, RSS KiB) before {before:?}, after {after:?}");
    // SIGINT stops it, dexts first (interrupt asserts a clean exit).
    let log = d.interrupt();
    assert!(log.contains("stopped  daemon"), "{log}");
    for pid in pids {
        assert!(!alive(pid), "dext {pid} outlived its daemon");
    }
}

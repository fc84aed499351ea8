//! A dext's call into the system and an app's call into its user client,
//! each beside the raw floors.

use std::path::Path;
use std::time::{Duration, Instant};

use plist::Value;

use super::baselines::{raw_futex_pingpong, raw_pingpong, raw_spin_pingpong, COLD_GAP_US};
use super::harness::{
    bench_daemon, bench_device, percentiles, service_properties, wait_started, Figure, Stat, Target,
};
use crate::drivers;

/// An app's scalar call into a dext and back: `IOConnectCallScalarMethod`
/// on NullDriver's user client (ADD), over the connection the daemon
/// brokered. This process is the app.
pub(super) fn userclient_scalar_roundtrip(root: &Path, n: usize) -> Result<Vec<Figure>, String> {
    use driverkit_app::iokit::{io_service_get_matching_services, io_service_open, Matching};
    let (b50, b99) = raw_pingpong(n)?;
    let (s50, s99) = raw_spin_pingpong(n)?;
    let embedded = drivers::find("NullDriver")?;
    let daemon = bench_daemon(root, embedded)?;
    let state = root.join(format!("state-{}", embedded.executable));
    std::fs::create_dir_all(&state).map_err(|e| e.to_string())?;
    let (stop, _stopped) = std::sync::mpsc::channel();
    driverkit_core::control::serve(
        daemon.core().clone(),
        daemon.control_extensions(),
        &state,
        stop,
    )
    .map_err(|e| e.to_string())?;
    let system = driverkit_app::System::at(&state);
    let deadline = Instant::now() + Duration::from_secs(30);
    let service = loop {
        let found = io_service_get_matching_services(&system, &Matching::name("NullDriver"))
            .map_err(|e| e.to_string())?;
        if let Some(s) = found.first() {
            break *s;
        }
        if Instant::now() > deadline {
            return Err("NullDriver did not start within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let connection = io_service_open(&system, service, 0).map_err(|e| e.to_string())?;
    let c_api = iokit_c::Connection::open(&state)?;
    // The Rust app's calls and the C library's, in alternating blocks so
    // that the machine's drift falls on both alike.
    let mut samples = Vec::with_capacity(n);
    let mut c_samples = Vec::with_capacity(n);
    const BLOCK: u64 = 1000;
    for i in 0..(n + n / 10) as u64 {
        let from_c = (i / BLOCK) % 2 == 1;
        let t = Instant::now();
        let out = if from_c {
            vec![c_api.add(i, 1)?]
        } else {
            connection
                .call_scalar_method(null_driver::selector::ADD, &[i, 1], 1)
                .map_err(|e| e.to_string())?
        };
        let took = t.elapsed().as_nanos() as f64;
        if out != [i + 1] {
            return Err(format!("ADD({i}, 1) answered {out:?}"));
        }
        if i as usize >= n / 10 {
            if from_c {
                c_samples.push(took);
            } else {
                samples.push(took);
            }
        }
    }
    drop(c_api);
    // After an idle gap: the dext's channel thread has parked.
    let cold = (n / 20).max(20);
    let mut idle = Vec::with_capacity(cold);
    for i in 0..cold as u64 {
        std::thread::sleep(Duration::from_micros(COLD_GAP_US));
        let t = Instant::now();
        let out = connection
            .call_scalar_method(null_driver::selector::ADD, &[i, 2], 1)
            .map_err(|e| e.to_string())?;
        idle.push(t.elapsed().as_nanos() as f64);
        if out != [i + 2] {
            return Err(format!("ADD({i}, 2) answered {out:?}"));
        }
    }
    connection.close();
    daemon.shutdown();
    let (p50, p99) = percentiles(samples);
    let (i50, i99) = percentiles(idle);
    let (f50, f99) = raw_futex_pingpong(cold)?;
    // Issue 18's target: at most twice the shared-memory spin floor.
    let figure = |baseline: (&'static str, f64, f64)| Figure {
        bench: "userclient_scalar_roundtrip",
        unit: "ns",
        p50,
        p99,
        baseline: Some(baseline),
        stat: Stat::Percentiles,
        target: (baseline.0 == "raw_spin_shm").then_some(Target::RatioAtMost(2.0)),
    };
    let (c50, c99) = percentiles(c_samples);
    Ok(vec![
        figure(("raw_seqpacket", b50, b99)),
        figure(("raw_spin_shm", s50, s99)),
        Figure {
            bench: "userclient_scalar_roundtrip_c",
            unit: "ns",
            p50: c50,
            p99: c99,
            baseline: Some(("userclient_scalar_roundtrip (Rust)", p50, p99)),
            stat: Stat::Percentiles,
            // Issue 34: IOKitLib's C calls cost at most a tenth more than
            // the Rust app's, same run.
            target: Some(Target::RatioAtMost(1.1)),
        },
        Figure {
            bench: "userclient_scalar_roundtrip_idle",
            unit: "ns",
            p50: i50,
            p99: i99,
            baseline: Some(("raw_futex_wake_cold", f50, f99)),
            stat: Stat::Percentiles,
            // Issue 18: at most twice the floor after an idle gap too.
            target: Some(Target::RatioAtMost(2.0)),
        },
    ])
}

/// The C library's side of `userclient_scalar_roundtrip_c`: the calls a C
/// app makes (`IOServiceGetMatchingService`, `IOServiceOpen`,
/// `IOConnectCallScalarMethod`), through their C entry points.
pub(super) mod iokit_c {
    use driverkit_iokit as c;
    use std::path::Path;

    pub struct Connection(u32);

    impl Connection {
        pub fn open(state: &Path) -> Result<Connection, String> {
            let root = std::ffi::CString::new(state.as_os_str().as_encoded_bytes())
                .map_err(|e| e.to_string())?;
            let mut main = 0;
            if c::IOMainPortForRoot(root.as_ptr(), &mut main) != 0 {
                return Err("IOMainPortForRoot failed".into());
            }
            let service = c::IOServiceGetMatchingService(
                main,
                c::IOServiceNameMatching(c"NullDriver".as_ptr()),
            );
            c::IOObjectRelease(main);
            if service == 0 {
                return Err("IOServiceGetMatchingService found no NullDriver".into());
            }
            let mut connect = 0;
            let kr = c::IOServiceOpen(service, 0, 0, &mut connect);
            c::IOObjectRelease(service);
            if kr != 0 {
                return Err(format!("IOServiceOpen: {:#x}", kr as u32));
            }
            Ok(Connection(connect))
        }

        pub fn add(&self, a: u64, b: u64) -> Result<u64, String> {
            let input = [a, b];
            let mut out = 0u64;
            let mut count = 1u32;
            let kr = c::IOConnectCallScalarMethod(
                self.0,
                null_driver::selector::ADD as u32,
                input.as_ptr(),
                2,
                &mut out,
                &mut count,
            );
            if kr != 0 {
                return Err(format!("IOConnectCallScalarMethod: {:#x}", kr as u32));
            }
            Ok(out)
        }
    }

    impl Drop for Connection {
        fn drop(&mut self) {
            c::IOServiceClose(self.0);
        }
    }
}

pub(super) fn rpc_roundtrip(root: &Path, n: usize) -> Result<Vec<Figure>, String> {
    let (b50, b99) = raw_pingpong(n)?;
    let (s50, s99) = raw_spin_pingpong(n)?;
    let daemon = bench_daemon(root, drivers::find(drivers::bench::EXECUTABLE)?)?;
    let events = daemon.subscribe();
    let cold = (n / 20).max(20) as u64;
    let dev = daemon.plug(bench_device(
        "BenchRPC",
        &[
            ("BenchSuperCalls", Value::Integer((n as u64).into())),
            ("BenchColdCalls", Value::Integer(cold.into())),
            ("BenchColdGapUs", Value::Integer(COLD_GAP_US.into())),
        ],
    ))?;
    let started = wait_started(&events, dev);
    let figures = started.and_then(|(service, _)| {
        let properties = service_properties(&daemon, service)?;
        let get = |k: &str| {
            properties
                .get(k)
                .and_then(Value::as_signed_integer)
                .ok_or(format!("no {k}"))
        };
        Ok((
            (get("BenchP50Ns")? as f64, get("BenchP99Ns")? as f64),
            (get("BenchColdP50Ns")? as f64, get("BenchColdP99Ns")? as f64),
        ))
    });
    daemon.shutdown();
    let ((p50, p99), (c50, c99)) = figures?;
    let (f50, f99) = raw_futex_pingpong(cold as usize)?;
    Ok(vec![
        Figure {
            bench: "rpc_roundtrip",
            unit: "ns",
            p50,
            p99,
            baseline: Some(("raw_seqpacket", b50, b99)),
            stat: Stat::Percentiles,
            target: None,
        },
        Figure {
            bench: "rpc_roundtrip",
            unit: "ns",
            p50,
            p99,
            baseline: Some(("raw_spin_shm", s50, s99)),
            stat: Stat::Percentiles,
            target: None,
        },
        Figure {
            bench: "rpc_roundtrip_cold",
            unit: "ns",
            p50: c50,
            p99: c99,
            baseline: Some(("raw_futex_wake_cold", f50, f99)),
            stat: Stat::Percentiles,
            target: None,
        },
    ])
}

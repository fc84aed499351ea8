//! DriverKitBenchDriver: measures calls into the system from inside a real
//! dext, for `driverkit bench`.
//!
//! With `BenchSuperCalls = N` in its personality, Start makes N
//! `super_set_power_state(On)` calls (a SUPERDISPATCH with one small
//! argument), then publishes `BenchP50Ns` and `BenchP99Ns`. With
//! `BenchColdCalls = M` too, it then makes M more, each after
//! `BenchColdGapUs` of sleep (long enough for the daemon's channel-pool
//! thread to stop spinning and go back to parking on its shard), and
//! publishes `BenchColdP50Ns` and
//! `BenchColdP99Ns`.
//!
//! The same bundle's `PCIBench` personality runs [`super::pci_bench`] on
//! an edu function.

use std::time::Instant;

use driverkit::prelude::*;
use driverkit::runtime::ClassEntry;

pub const EXECUTABLE: &str = "DriverKitBenchDriver";

pub const INFO_PLIST: &str = include_str!("BenchDriver.Info.plist");

/// The bench driver's entitlements: the edu function for PCIBenchDriver.
pub const ENTITLEMENTS: &str = include_str!("BenchDriver.Entitlements.plist");

pub fn classes() -> Vec<ClassEntry> {
    vec![
        driverkit::runtime::class::<BenchDriver>(),
        driverkit::runtime::class::<super::pci_bench::PCIBenchDriver>(),
    ]
}

#[driverkit::service(superclass = IOService)]
pub struct BenchDriver;

impl IOServiceImpl for BenchDriver {
    fn init(&self) -> IOResult<()> {
        Ok(())
    }

    fn start(&self, provider: &IOService) -> IOResult<()> {
        self.super_start(provider)?;
        let number =
            |key| -> IOResult<u64> { Ok(provider.copy_number_property(key)?.unwrap_or(0)) };
        let calls = number("BenchSuperCalls")?;
        let (cold, gap) = (number("BenchColdCalls")?, number("BenchColdGapUs")?);
        for (n, gap, p50, p99) in [
            (calls, 0, "BenchP50Ns", "BenchP99Ns"),
            (cold, gap, "BenchColdP50Ns", "BenchColdP99Ns"),
        ] {
            if n == 0 {
                continue;
            }
            let mut samples = Vec::with_capacity(n as usize);
            for _ in 0..n {
                if gap > 0 {
                    std::thread::sleep(std::time::Duration::from_micros(gap));
                }
                let t = Instant::now();
                self.super_set_power_state(1)?;
                samples.push(t.elapsed().as_nanos() as u64);
            }
            samples.sort_unstable();
            let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize] as i64;
            self.set_property(p50, at(0.50))?;
            self.set_property(p99, at(0.99))?;
        }
        self.register_service()
    }
}

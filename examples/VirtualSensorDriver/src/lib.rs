//! VirtualSensorDriver: a dext for a device, matched by a device property.
//!
//! Its personality asks for an `IOVirtualDevice` whose `SensorKind` is
//! `thermometer` (`IOPropertyMatch`). On start it reads its provider's
//! `ReadingCelsius` through the system and publishes the reading in
//! Fahrenheit on its own registry entry. The sensor raises interrupt 0 for
//! each new sample; the driver counts them on its `Samples` queue
//! (`InterruptsSeen` in the registry) and cancels the source in Stop before
//! calling super.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use driverkit::prelude::*;

/// The bundle's Info.plist, for hosts that assemble the bundle themselves.
pub const INFO_PLIST: &str = include_str!("../Info.plist");

/// What the driver is entitled to: `Entitlements.plist`, installed in its bundle.
pub const ENTITLEMENTS: &str = include_str!("../Entitlements.plist");

/// The last reading, in Celsius.
#[derive(Default)]
pub struct VirtualSensorDriverIvars {
    celsius: AtomicI64,
    interrupts: AtomicU64,
    samples: Mutex<Option<IOInterruptDispatchSource>>,
}

#[driverkit::service(superclass = IOService, ivars = VirtualSensorDriverIvars)]
pub struct VirtualSensorDriver;

impl IOServiceImpl for VirtualSensorDriver {
    fn init(&self) -> IOResult<VirtualSensorDriverIvars> {
        Ok(VirtualSensorDriverIvars::default())
    }

    fn start(&self, provider: &IOService) -> IOResult<()> {
        self.super_start(provider)?;
        let celsius = match provider.copy_property("ReadingCelsius")? {
            Some(plist::Value::Integer(i)) => i.as_signed().ok_or(IOReturn::BAD_ARGUMENT)?,
            _ => {
                driverkit::error!("the provider has no integer ReadingCelsius");
                return Err(IOReturn::NOT_FOUND);
            }
        };
        self.ivars().celsius.store(celsius, Ordering::Relaxed);
        self.set_property("TemperatureFahrenheit", celsius * 9 / 5 + 32)?;

        let queue = IODispatchQueue::create("Samples")?;
        self.set_dispatch_queue("Samples", queue.clone());
        let samples = IOInterruptDispatchSource::create(provider, 0, &queue)?;
        samples.set_handler(&self.create_action_sample_ready(0)?)?;
        *self.ivars().samples.locked() = Some(samples);
        self.register_service()?;
        driverkit::info!("start: sensor at {celsius} °C");
        Ok(())
    }

    fn stop(&self, provider: &IOService) -> IOResult<()> {
        // Cancel the interrupt source and wait for its cancel handler: after
        // it, `sample_ready` never runs again. Only then call super.
        let samples = self.ivars().samples.locked().take();
        if let Some(s) = samples {
            let (done_tx, done_rx) = mpsc::channel();
            s.cancel(move || {
                let _ = done_tx.send(());
            })?;
            done_rx
                .recv_timeout(Duration::from_secs(5))
                .map_err(|_| IOReturn::TIMEOUT)?;
        }
        driverkit::info!(
            "stop: last reading {} °C after {} interrupts",
            self.ivars().celsius.load(Ordering::Relaxed),
            self.ivars().interrupts.load(Ordering::Relaxed)
        );
        self.super_stop(provider)
    }

    fn free(&self) {
        driverkit::info!("free");
    }
}

#[driverkit::actions]
impl VirtualSensorDriver {
    /// The sensor signalled `count` new samples since the last call.
    #[action(IOInterruptDispatchSource::InterruptOccurred, queue = "Samples")]
    fn sample_ready(&self, _action: &OSAction, count: u64, _time: u64) {
        let seen = self.ivars().interrupts.fetch_add(count, Ordering::Relaxed) + count;
        let _ = self.set_property("InterruptsSeen", seen as i64);
    }
}

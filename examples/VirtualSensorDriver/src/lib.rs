//! VirtualSensorDriver: a dext for a device, matched by a device property.
//!
//! Its personality asks for an `IOVirtualDevice` whose `SensorKind` is
//! `thermometer` (`IOPropertyMatch`). On start it reads its provider's
//! `ReadingCelsius` through the system and publishes the reading in
//! Fahrenheit on its own registry entry.

use std::sync::atomic::{AtomicI64, Ordering};

use driverkit::prelude::*;

/// The bundle's Info.plist, for hosts that assemble the bundle themselves.
pub const INFO_PLIST: &str = include_str!("../Info.plist");

/// The last reading, in Celsius.
#[derive(Default)]
pub struct VirtualSensorDriverIvars {
    celsius: AtomicI64,
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
        self.register_service()?;
        driverkit::info!("start: sensor at {celsius} °C");
        Ok(())
    }

    fn stop(&self, provider: &IOService) -> IOResult<()> {
        driverkit::info!(
            "stop: last reading {} °C",
            self.ivars().celsius.load(Ordering::Relaxed)
        );
        self.super_stop(provider)
    }

    fn free(&self) {
        driverkit::info!("free");
    }
}

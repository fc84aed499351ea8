//! NullDriver: the smallest useful dext, like Apple's NullDriver sample.
//!
//! It needs no hardware: its personality matches `IOUserResources` with
//! `IOResourceMatch = IOKit`, so the system starts it as soon as the driver
//! is loaded. It logs each step of its lifecycle and publishes a property
//! that `driverkit ioreg -l` shows.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use driverkit::prelude::*;

/// The bundle's Info.plist, for hosts that assemble the bundle themselves
/// (`driverkit run` embeds this driver).
pub const INFO_PLIST: &str = include_str!("../Info.plist");

/// What the driver is entitled to: `Entitlements.plist`, installed in its bundle.
pub const ENTITLEMENTS: &str = include_str!("../Entitlements.plist");

/// NullDriver's state. A service has no fields: its state lives here,
/// allocated by `init` and released after `free`.
#[derive(Default)]
pub struct NullDriverIvars {
    started_at: AtomicU64,
}

#[driverkit::service(superclass = IOService, ivars = NullDriverIvars)]
pub struct NullDriver;

impl IOServiceImpl for NullDriver {
    fn init(&self) -> IOResult<NullDriverIvars> {
        driverkit::info!("init: ivars allocated");
        Ok(NullDriverIvars::default())
    }

    fn start(&self, provider: &IOService) -> IOResult<()> {
        // The superclass's Start runs in the system (SUPERDISPATCH).
        self.super_start(provider)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.ivars().started_at.store(now, Ordering::Relaxed);
        self.set_property("NullDriverGreeting", "Hello from a dext")?;
        self.set_property("NullDriverPID", std::process::id() as i64)?;
        self.register_service()?;
        driverkit::info!(
            "start: registered as {:#x} on provider {:#x}",
            self.registry_entry_id(),
            provider.registry_entry_id()
        );
        Ok(())
    }

    fn stop(&self, provider: &IOService) -> IOResult<()> {
        let started = self.ivars().started_at.load(Ordering::Relaxed);
        driverkit::info!("stop: ran since {started} (unix time)");
        // Nothing asynchronous to cancel; super comes last.
        self.super_stop(provider)
    }

    fn free(&self) {
        driverkit::info!("free: releasing ivars");
    }
}

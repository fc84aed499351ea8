//! HIDKeyboardDriver, the seed's running example: a keyboard's event
//! service.
//!
//! It is an `IOUserHIDEventService` subclass matched to the virtual
//! keyboard by VendorID and ProductID. `init` allocates the ivars; `start`
//! calls super, keeps the keyboard elements (usage page 7) that
//! `get_elements` returns, and registers the service; `handle_report`
//! dispatches a keyboard event for each element the report changed. The
//! LEDs follow Caps Lock, to show the output path.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use driverkit::hid::ReportType;
use driverkit::prelude::*;

/// The bundle's Info.plist, for hosts that assemble the bundle themselves.
pub const INFO_PLIST: &str = include_str!("../Info.plist");

/// What the driver is entitled to: `Entitlements.plist`, installed in its bundle.
pub const ENTITLEMENTS: &str = include_str!("../Entitlements.plist");

/// HID usage page 7: keys.
const KEYBOARD_PAGE: u16 = 0x07;
const CAPS_LOCK: u16 = 0x39;
/// LED page usage 2.
const CAPS_LOCK_LED: u16 = 0x02;

/// The keyboard's elements and what the driver counts.
#[derive(Default)]
pub struct HIDKeyboardDriverIvars {
    /// The keys and modifiers, filled by `start`.
    keyboard: OnceLock<Vec<Arc<IOHIDElement>>>,
    events: AtomicU64,
    caps_lock: AtomicBool,
}

#[driverkit::service(superclass = IOUserHIDEventService, ivars = HIDKeyboardDriverIvars)]
pub struct HIDKeyboardDriver;

impl IOServiceImpl for HIDKeyboardDriver {
    fn init(&self) -> IOResult<HIDKeyboardDriverIvars> {
        Ok(HIDKeyboardDriverIvars::default())
    }

    fn start(&self, provider: &IOService) -> IOResult<()> {
        self.super_start(provider)?;
        let keys: Vec<_> = self
            .get_elements()?
            .into_iter()
            .filter(|e| e.usage_page() == KEYBOARD_PAGE)
            .collect();
        if keys.is_empty() {
            driverkit::error!("start: the device has no keyboard elements");
            return Err(IOReturn::UNSUPPORTED);
        }
        driverkit::info!("start: {} keyboard elements", keys.len());
        let _ = self.ivars().keyboard.set(keys);
        self.register_service()
    }

    fn stop(&self, provider: &IOService) -> IOResult<()> {
        driverkit::info!(
            "stop: dispatched {} keyboard events",
            self.ivars().events.load(Ordering::Relaxed)
        );
        self.super_stop(provider)
    }
}

impl IOUserHIDEventServiceImpl for HIDKeyboardDriver {
    fn handle_report(&self, timestamp: u64, _report: &[u8], _type: ReportType, report_id: u8) {
        let Some(keys) = self.ivars().keyboard.get() else {
            return;
        };
        // An element whose timestamp is this report's changed in it.
        for key in keys
            .iter()
            .filter(|e| e.report_id() == report_id && e.timestamp() == timestamp)
        {
            let value = key.value();
            if self
                .dispatch_keyboard_event(timestamp, key.usage_page(), key.usage(), value, 0, true)
                .is_ok()
            {
                self.ivars().events.fetch_add(1, Ordering::Relaxed);
            }
            if key.usage() == CAPS_LOCK && value == 1 {
                let on = !self.ivars().caps_lock.fetch_xor(true, Ordering::Relaxed);
                let _ = self.set_led_state(CAPS_LOCK_LED, on);
            }
        }
    }
}

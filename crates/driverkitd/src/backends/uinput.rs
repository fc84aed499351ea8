//! Forwarding HID events to Linux through uinput, so that ordinary
//! applications (a console, X, a Wayland compositor, anything reading
//! `/dev/input/event*`) receive what event services dispatch.
//!
//! Each event service that dispatches gets its own uinput device, named and
//! identified (vendor, product, version) after its `IOHIDInterface`, as
//! macOS shows one HID device per service; the device goes when the
//! service does. Keyboard usages become Linux key codes by the same table
//! the kernel's own HID driver uses (`hid_keyboard` in
//! `drivers/hid/hid-input.c`), pointer motion and buttons become `REL_X`,
//! `REL_Y` and `BTN_*`, scrolling becomes `REL_WHEEL` and `REL_HWHEEL`.
//!
//! This is the one place the daemon talks to uinput. Where `/dev/uinput`
//! cannot be opened (no module, no permission), forwarding is off and the
//! event stream is unchanged.

use driverkit_wire::sync::Locked;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use driverkit_core::{EntryId, Event, System};
use driverkit_wire::interfaces::hid_event;
use evdev::uinput::VirtualDevice;
use evdev::{AttributeSet, BusType, EventType, InputEvent, InputId, KeyCode, RelativeAxisCode};

use crate::families::hid::{HidEvent, HidFamily};

/// Where applications find the devices this module makes.
pub const UINPUT: &str = "/dev/uinput";

/// Linux key codes (`KEY_*`) by HID keyboard usage (page 7), 0 where the
/// kernel has none. The kernel's mapping, so that a key reads the same
/// through a dext as through the kernel's own driver.
#[rustfmt::skip]
const KEYBOARD: [u8; 256] = [
      0,  0,  0,  0, 30, 48, 46, 32, 18, 33, 34, 35, 23, 36, 37, 38,
     50, 49, 24, 25, 16, 19, 31, 20, 22, 47, 17, 45, 21, 44,  2,  3,
      4,  5,  6,  7,  8,  9, 10, 11, 28,  1, 14, 15, 57, 12, 13, 26,
     27, 43, 43, 39, 40, 41, 51, 52, 53, 58, 59, 60, 61, 62, 63, 64,
     65, 66, 67, 68, 87, 88, 99, 70,119,110,102,104,111,107,109,106,
    105,108,103, 69, 98, 55, 74, 78, 96, 79, 80, 81, 75, 76, 77, 71,
     72, 73, 82, 83, 86,127,116,117,183,184,185,186,187,188,189,190,
    191,192,193,194,134,138,130,132,128,129,131,137,133,135,136,113,
    115,114,  0,  0,  0,121,  0, 89, 93,124, 92, 94, 95,  0,  0,  0,
    122,123, 90, 91, 85,  0,  0,  0,  0,  0,  0,  0,111,  0,  0,  0,
      0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,
      0,  0,  0,  0,  0,  0,179,180,  0,  0,  0,  0,  0,  0,  0,  0,
      0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,
      0,  0,  0,  0,  0,  0,  0,  0,111,  0,  0,  0,  0,  0,  0,  0,
     29, 42, 56,125, 97, 54,100,126,164,166,165,163,161,115,114,113,
    150,158,159,128,136,177,178,176,142,152,173,140,  0,  0,  0,  0,
];

/// HID usage page of keyboard usages.
const KEYBOARD_PAGE: u32 = 0x07;

/// Pointer buttons 1..5 (bit 0..4 of the event's button mask).
const BUTTONS: [KeyCode; 5] = [
    KeyCode::BTN_LEFT,
    KeyCode::BTN_RIGHT,
    KeyCode::BTN_MIDDLE,
    KeyCode::BTN_SIDE,
    KeyCode::BTN_EXTRA,
];

/// The Linux key code of a keyboard usage, if Linux has one.
pub fn key_code(usage_page: u32, usage: u32) -> Option<KeyCode> {
    if usage_page != KEYBOARD_PAGE {
        return None;
    }
    let code = *KEYBOARD.get(usize::try_from(usage).ok()?)?;
    (code != 0).then_some(KeyCode::new(code.into()))
}

/// The input events one HID event becomes, without the closing
/// `SYN_REPORT`. `buttons` is the service's pointer button mask so far: a
/// pointer event reports only the buttons that changed.
pub fn linux_events(event: &HidEvent, buttons: &mut u32) -> Vec<InputEvent> {
    let rel = |axis: RelativeAxisCode, v: i64| {
        InputEvent::new(EventType::RELATIVE.0, axis.0, v.clamp(-32768, 32767) as i32)
    };
    let mut out = Vec::new();
    match event.kind {
        hid_event::KEYBOARD => {
            if let Some(key) = key_code(event.usage_page, event.usage) {
                let value = i32::from(event.values.0 != 0);
                out.push(InputEvent::new(EventType::KEY.0, key.0, value));
            }
        }
        hid_event::RELATIVE_POINTER => {
            let (dx, dy, mask) = event.values;
            if dx != 0 {
                out.push(rel(RelativeAxisCode::REL_X, dx));
            }
            if dy != 0 {
                out.push(rel(RelativeAxisCode::REL_Y, dy));
            }
            let mask = mask as u32;
            for (bit, button) in BUTTONS.iter().enumerate() {
                let (was, is) = (*buttons >> bit & 1, mask >> bit & 1);
                if was != is {
                    out.push(InputEvent::new(EventType::KEY.0, button.0, is as i32));
                }
            }
            *buttons = mask;
        }
        hid_event::SCROLL => {
            let (dx, dy, _) = event.values;
            if dy != 0 {
                out.push(rel(RelativeAxisCode::REL_WHEEL, dy));
            }
            if dx != 0 {
                out.push(rel(RelativeAxisCode::REL_HWHEEL, dx));
            }
        }
        _ => {}
    }
    out
}

/// Who a service's uinput device says it is.
pub struct Identity {
    pub name: String,
    pub vendor: u16,
    pub product: u16,
    pub version: u16,
}

/// The uinput devices of the event services that have dispatched.
pub struct Uinput {
    devices: HashMap<EntryId, Forwarded>,
}

struct Forwarded {
    device: VirtualDevice,
    buttons: u32,
}

/// Why events cannot reach the kernel's input layer.
#[derive(Debug, thiserror::Error)]
pub enum UinputError {
    #[error("{UINPUT}: {0}")]
    Unavailable(#[source] std::io::Error),
    #[error("{UINPUT}: cannot create a device for {name}: {source}")]
    Create {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{UINPUT}: {0}")]
    Emit(#[source] std::io::Error),
}

impl Uinput {
    /// Forwarding, if `/dev/uinput` can be opened; why not otherwise.
    pub fn open() -> Result<Uinput, UinputError> {
        std::fs::OpenOptions::new()
            .write(true)
            .open(UINPUT)
            .map_err(UinputError::Unavailable)?;
        Ok(Uinput {
            devices: HashMap::new(),
        })
    }

    /// Makes `service`'s device, if it has none yet. Done when an event
    /// service starts, so that the device is there, and readers can open
    /// it, before its first event.
    pub fn ensure(
        &mut self,
        service: EntryId,
        identity: impl FnOnce() -> Identity,
    ) -> Result<(), UinputError> {
        self.device(service, identity).map(drop)
    }

    /// Forwards `event`, making its service's device first if needed.
    pub fn forward(
        &mut self,
        event: &HidEvent,
        identity: impl FnOnce() -> Identity,
    ) -> Result<(), UinputError> {
        let forwarded = self.device(event.service, identity)?;
        let events = linux_events(event, &mut forwarded.buttons);
        if events.is_empty() {
            return Ok(());
        }
        // `emit` closes the batch with SYN_REPORT.
        forwarded.device.emit(&events).map_err(UinputError::Emit)
    }

    fn device(
        &mut self,
        service: EntryId,
        identity: impl FnOnce() -> Identity,
    ) -> Result<&mut Forwarded, UinputError> {
        match self.devices.entry(service) {
            std::collections::hash_map::Entry::Occupied(o) => Ok(o.into_mut()),
            std::collections::hash_map::Entry::Vacant(v) => {
                let identity = identity();
                let device = create(&identity).map_err(|source| UinputError::Create {
                    name: identity.name.clone(),
                    source,
                })?;
                tracing::info!(
                    "uinput   [{service:#x}] {:?} forwards its events",
                    identity.name
                );
                Ok(v.insert(Forwarded { device, buttons: 0 }))
            }
        }
    }

    /// The service is gone: so is its device.
    pub fn remove(&mut self, service: EntryId) {
        self.devices.remove(&service);
    }
}

fn create(identity: &Identity) -> std::io::Result<VirtualDevice> {
    let mut keys = AttributeSet::<KeyCode>::new();
    for code in KEYBOARD.iter().filter(|c| **c != 0) {
        keys.insert(KeyCode::new((*code).into()));
    }
    for button in BUTTONS {
        keys.insert(button);
    }
    let mut axes = AttributeSet::<RelativeAxisCode>::new();
    for axis in [
        RelativeAxisCode::REL_X,
        RelativeAxisCode::REL_Y,
        RelativeAxisCode::REL_WHEEL,
        RelativeAxisCode::REL_HWHEEL,
    ] {
        axes.insert(axis);
    }
    // uinput names are at most 80 bytes with the terminator.
    let name: String = identity.name.chars().take(64).collect();
    VirtualDevice::builder()?
        .name(&name)
        .input_id(InputId::new(
            BusType::BUS_VIRTUAL,
            identity.vendor,
            identity.product,
            identity.version,
        ))
        .with_keys(&keys)?
        .with_relative_axes(&axes)?
        .build()
}

/// Forwards the event stream to Linux through uinput while the daemon
/// runs, one device per event service; logs why not where `/dev/uinput`
/// does not open. Two threads: one makes a service's device when it
/// starts and drops it when it leaves the registry, one forwards events.
pub fn forward(system: &System, hid: &HidFamily) {
    let uinput = match Uinput::open() {
        Ok(u) => Arc::new(Mutex::new(u)),
        Err(e) => {
            tracing::info!("uinput   off: {e}");
            return;
        }
    };
    let Some(lifecycle) = system.subscribe() else {
        return;
    };
    let mut events = hid.subscribe();
    let (s, u) = (system.clone(), uinput.clone());
    let forward = move || {
        while let Some(event) = events.next(None) {
            let result = u.locked().forward(&event, || identity(&s, event.service));
            if let Err(e) = result {
                tracing::warn!("uinput   [{:#x}] {e}", event.service);
            }
        }
    };
    let system = system.clone();
    let follow = move || {
        for event in lifecycle {
            let mut u = uinput.locked();
            match event {
                Event::Started { service, .. } => {
                    if system.is_kind_of(service, "IOHIDEventService") {
                        if let Err(e) = u.ensure(service, || identity(&system, service)) {
                            tracing::warn!("uinput   [{service:#x}] {e}");
                        }
                    }
                }
                Event::Removed { service } => u.remove(service),
                Event::Exited { .. } => {}
            }
        }
    };
    let spawned = std::thread::Builder::new()
        .name("uinput".into())
        .spawn(forward)
        .and_then(|_| {
            std::thread::Builder::new()
                .name("uinput-follow".into())
                .spawn(follow)
        });
    if let Err(e) = spawned {
        tracing::warn!("uinput   off: cannot start its threads: {e}");
    }
}

/// Who an event service's uinput device says it is: the service's name,
/// and the IDs of the `IOHIDInterface` it serves.
fn identity(system: &System, service: EntryId) -> Identity {
    let interface = system
        .provider(service)
        .and_then(|p| system.properties(p))
        .unwrap_or_default();
    let number = |key: &str| {
        interface
            .get(key)
            .and_then(plist::Value::as_unsigned_integer)
            .and_then(|n| u16::try_from(n).ok())
            .unwrap_or(0)
    };
    Identity {
        name: format!(
            "DriverKit {}",
            system
                .name(service)
                .unwrap_or_else(|| "IOHIDEventService".to_owned())
        ),
        vendor: number("VendorID"),
        product: number("ProductID"),
        version: number("VersionNumber"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: u8, usage_page: u32, usage: u32, values: (i64, i64, i64)) -> HidEvent {
        HidEvent {
            kind,
            usage_page,
            usage,
            values,
            timestamp: 0,
            service: EntryId::from_raw(0x1000),
        }
    }

    fn triples(events: &[InputEvent]) -> Vec<(u16, u16, i32)> {
        events
            .iter()
            .map(|e| (e.event_type().0, e.code(), e.value()))
            .collect()
    }

    #[test]
    fn keyboard_usages_become_the_kernels_key_codes() {
        let mut buttons = 0;
        for (usage, key) in [
            (0x04, KeyCode::KEY_A),
            (0x1d, KeyCode::KEY_Z),
            (0x1e, KeyCode::KEY_1),
            (0x27, KeyCode::KEY_0),
            (0x28, KeyCode::KEY_ENTER),
            (0x2c, KeyCode::KEY_SPACE),
            (0x39, KeyCode::KEY_CAPSLOCK),
            (0x4f, KeyCode::KEY_RIGHT),
            (0xe1, KeyCode::KEY_LEFTSHIFT),
            (0xe7, KeyCode::KEY_RIGHTMETA),
        ] {
            let down = linux_events(
                &event(hid_event::KEYBOARD, 7, usage, (1, 0, 0)),
                &mut buttons,
            );
            assert_eq!(
                triples(&down),
                [(EventType::KEY.0, key.0, 1)],
                "usage {usage:#x}"
            );
            let up = linux_events(
                &event(hid_event::KEYBOARD, 7, usage, (0, 0, 0)),
                &mut buttons,
            );
            assert_eq!(
                triples(&up),
                [(EventType::KEY.0, key.0, 0)],
                "usage {usage:#x}"
            );
        }
        // Reserved usages, other pages, and usages past the table: nothing.
        for (page, usage) in [(7, 0x01), (7, 0xff), (7, 0x1_0000), (0x0c, 0x04)] {
            let none = linux_events(
                &event(hid_event::KEYBOARD, page, usage, (1, 0, 0)),
                &mut buttons,
            );
            assert!(none.is_empty(), "page {page:#x} usage {usage:#x}");
        }
    }

    #[test]
    fn pointer_events_report_motion_and_only_the_buttons_that_changed() {
        let mut buttons = 0;
        let press = linux_events(
            &event(hid_event::RELATIVE_POINTER, 1, 0, (5, -3, 0b001)),
            &mut buttons,
        );
        let (rel, key) = (EventType::RELATIVE.0, EventType::KEY.0);
        assert_eq!(
            triples(&press),
            [
                (rel, RelativeAxisCode::REL_X.0, 5),
                (rel, RelativeAxisCode::REL_Y.0, -3),
                (key, KeyCode::BTN_LEFT.0, 1),
            ]
        );
        let swap = linux_events(
            &event(hid_event::RELATIVE_POINTER, 1, 0, (0, 0, 0b010)),
            &mut buttons,
        );
        assert_eq!(
            triples(&swap),
            [
                (key, KeyCode::BTN_LEFT.0, 0),
                (key, KeyCode::BTN_RIGHT.0, 1)
            ]
        );
        let scroll = linux_events(&event(hid_event::SCROLL, 1, 0, (2, -1, 0)), &mut buttons);
        assert_eq!(
            triples(&scroll),
            [
                (rel, RelativeAxisCode::REL_WHEEL.0, -1),
                (rel, RelativeAxisCode::REL_HWHEEL.0, 2),
            ]
        );
        let huge = linux_events(
            &event(hid_event::RELATIVE_POINTER, 1, 0, (i64::MAX, 0, 0b010)),
            &mut buttons,
        );
        assert_eq!(triples(&huge), [(rel, RelativeAxisCode::REL_X.0, 32767)]);
    }
}

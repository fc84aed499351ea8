//! The calls a dext makes into the HID family: opening an interface's
//! reports into its ring, a virtual device's reports, and an event
//! service's event log.

use std::sync::Arc;
use std::time::Duration;

use driverkit_core::{Call, EntryId};
use driverkit_usb::repr::request;
use driverkit_usb::Setup;
use driverkit_wire::event_log::EventLog;
use driverkit_wire::interfaces::{
    IOHIDEventServiceInterface, IOHIDInterfaceInterface, IOUserHIDDeviceInterface,
};
use driverkit_wire::ring::Ring;
use driverkit_wire::sync::Locked;
use driverkit_wire::{Bytes, IOResult, IOReturn};

use super::{deliver, stop_reading, HidFamily, HidInterface, Sink};

/// One call of a dext into the HID family.
pub(super) struct HidCall<'a> {
    pub(super) family: &'a HidFamily,
    pub(super) call: &'a Call<'a>,
}

impl HidCall<'_> {
    fn hid_interface(&self) -> IOResult<Arc<HidInterface>> {
        self.family
            .lock()
            .interfaces
            .get(&self.call.entry())
            .cloned()
            .ok_or(IOReturn::UNSUPPORTED)
    }

    /// The caller's service that is a client of this interface.
    fn hid_client(&self) -> IOResult<EntryId> {
        self.call
            .system
            .client_in(self.call.entry(), self.call.server)
            .ok_or(IOReturn::NOT_PERMITTED)
    }
}

impl IOHIDInterfaceInterface for HidCall<'_> {
    fn open(&self, memory: u64) -> IOResult<()> {
        let hid = self.hid_interface()?;
        let client = self.hid_client()?;
        let region = self.call.system.region(self.call.server, memory)?;
        let ring = region
            .try_clone()
            .and_then(Ring::open)
            .map_err(|_| IOReturn::BAD_ARGUMENT)?;
        // The dext's personality matched: the USB interface is taken from
        // the host's driver (unless the personality keeps it) for as long
        // as the interface is open.
        self.family.start_reading(
            self.call.system,
            &hid,
            crate::families::usb::may_detach(self.call.system, Some(client)),
        )?;
        let replaced = {
            let mut sink = hid.sink.locked();
            let replaced = match &*sink {
                Sink::Dext { client: other, .. } if *other != client => {
                    return Err(IOReturn::EXCLUSIVE_ACCESS)
                }
                Sink::Default { service, .. } => Some(*service),
                _ => None,
            };
            *sink = Sink::Dext { client, ring };
            replaced
        };
        // A dext's event service takes over from the system's default one.
        if let Some(default) = replaced {
            self.call.system.schedule_terminate(default);
        }
        Ok(())
    }

    fn close(&self) -> IOResult<()> {
        let hid = self.hid_interface()?;
        let client = self.hid_client()?;
        let mut sink = hid.sink.locked();
        if matches!(&*sink, Sink::Dext { client: c, .. } if *c == client) {
            *sink = Sink::Nobody;
            drop(sink);
            stop_reading(self.call.system, &hid);
        }
        Ok(())
    }

    fn set_report(&self, report_type: u8, report_id: u8, report: Bytes) -> IOResult<()> {
        let hid = self.hid_interface()?;
        self.hid_client()?;
        if !(1..=3).contains(&report_type) || report.0.len() > 4096 {
            return Err(IOReturn::BAD_ARGUMENT);
        }
        // A dext's virtual device takes no output reports (yet).
        let usb = hid.usb.as_ref().ok_or(IOReturn::UNSUPPORTED)?;
        let setup = Setup {
            request_type: 0x21,
            request: request::HID_SET_REPORT,
            value: u16::from(report_type) << 8 | u16::from(report_id),
            index: usb.number.into(),
            length: report.0.len() as u16,
        };
        usb.device
            .transport
            .control(setup, &report.0, Some(Duration::from_secs(5)))
            .map(|_| ())
    }
}

impl IOUserHIDDeviceInterface for HidCall<'_> {
    fn create_interface(
        &self,
        description: plist::Dictionary,
        report_descriptor: Bytes,
    ) -> IOResult<()> {
        self.family.create_user_device(
            self.call.system,
            self.call.entry(),
            description,
            report_descriptor.0,
        )
    }

    fn handle_report(&self, report: Bytes) -> IOResult<()> {
        let hid = self
            .family
            .lock()
            .devices
            .get(&self.call.entry())
            .cloned()
            .ok_or(IOReturn::NOT_OPEN)?;
        if report.0.is_empty() || report.0.len() > 4096 {
            return Err(IOReturn::BAD_ARGUMENT);
        }
        deliver(&hid, &report.0);
        Ok(())
    }
}

impl IOHIDEventServiceInterface for HidCall<'_> {
    /// The dext's event service writes its events into `memory`; the
    /// stream's subscribers read them there from now on.
    fn set_event_log(&self, memory: u64) -> IOResult<()> {
        let service = self.call.entry();
        if !self.call.system.is_kind_of(service, "IOHIDEventService") {
            return Err(IOReturn::UNSUPPORTED);
        }
        let region = self.call.system.region(self.call.server, memory)?;
        let log = region.try_clone().and_then(EventLog::open).map_err(|e| {
            tracing::warn!("hid      [{service:#x}] event log refused: {e}");
            IOReturn::BAD_ARGUMENT
        })?;
        self.family.events.add(service, Arc::new(log));
        Ok(())
    }
}

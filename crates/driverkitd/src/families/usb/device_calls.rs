//! `IOUSBHostDevice` as dexts call it, and what every call of a dext into
//! the family shares (`UsbCall`).

use super::*;

/// One call of a dext into the USB family.
pub(super) struct UsbCall<'a> {
    pub(super) family: &'a UsbFamily,
    pub(super) call: &'a Call<'a>,
}

/// The selected configuration's descriptor; `None` while unconfigured.
pub(super) fn current_configuration(d: &UsbDevice) -> Option<Bytes> {
    let current = *d.configuration.locked();
    d.enumerated
        .configurations
        .iter()
        .find(|c| current != 0 && c.get(5) == Some(&current))
        .cloned()
        .map(Bytes)
}

/// A driver's control request on endpoint 0 of `d`.
pub(super) fn control_request(
    d: &UsbDevice,
    setup: u64,
    data: Bytes,
    timeout_ms: u32,
) -> IOResult<Bytes> {
    let setup = setup_from(setup);
    if setup.request == driverkit_usb::repr::request::SET_CONFIGURATION && setup.request_type == 0 {
        // The family owns configurations: it must see the change.
        return Err(IOReturn::NOT_PERMITTED);
    }
    d.transport
        .control(setup, &data.0, timeout(timeout_ms))
        .map(Bytes)
}

/// `setup` as the wire carries it: the eight setup bytes, little-endian.
pub(super) fn setup_from(setup: u64) -> Setup {
    Setup::parse(setup.to_le_bytes())
}

pub(super) fn timeout(ms: u32) -> Option<Duration> {
    (ms != 0).then(|| Duration::from_millis(ms.into()))
}

impl UsbCall<'_> {
    pub(super) fn usb_device(&self) -> IOResult<Arc<UsbDevice>> {
        self.family
            .device(self.call.entry())
            .ok_or(IOReturn::UNSUPPORTED)
    }

    pub(super) fn usb_interface(&self) -> IOResult<Arc<UsbInterface>> {
        self.family
            .interface(self.call.entry())
            .ok_or(IOReturn::UNSUPPORTED)
    }

    /// A pipe, only for the process that copied it.
    pub(super) fn pipe(&self) -> IOResult<Arc<Pipe>> {
        let st = self.family.lock();
        let pipe = st.pipes.get(&self.call.object).ok_or(IOReturn::NOT_FOUND)?;
        if pipe.hold.server != self.call.server {
            return Err(IOReturn::NOT_PERMITTED);
        }
        Ok(pipe.clone())
    }
}

impl IOUSBHostDeviceInterface for UsbCall<'_> {
    fn copy_descriptors(&self) -> IOResult<(Bytes, Bytes)> {
        let d = self.usb_device()?;
        let config = current_configuration(&d)
            .or_else(|| d.enumerated.configurations.first().cloned().map(Bytes))
            .unwrap_or_default();
        Ok((Bytes(d.enumerated.device.clone()), config))
    }

    fn copy_string(&self, index: u8) -> IOResult<String> {
        let d = self.usb_device()?;
        if index == 0 {
            return Err(IOReturn::BAD_ARGUMENT);
        }
        let b = d.transport.control(
            Setup::get_descriptor(kind::STRING, index, 0x0409, 255),
            &[],
            Some(Duration::from_secs(5)),
        )?;
        driverkit_usb::StringDescriptor::new_checked(&b, 0)
            .map(|s| s.text())
            .map_err(|_| IOReturn::IO_ERROR)
    }

    fn device_request(&self, setup: u64, data: Bytes, timeout_ms: u32) -> IOResult<Bytes> {
        control_request(&*self.usb_device()?, setup, data, timeout_ms)
    }

    fn async_device_request(
        &self,
        setup: u64,
        memory: u64,
        action: u64,
        timeout_ms: u32,
    ) -> IOResult<()> {
        let d = self.usb_device()?;
        let setup = setup_from(setup);
        let region = self.call.system.region(self.call.server, memory)?;
        if usize::from(setup.length) > region.len() {
            return Err(IOReturn::BAD_ARGUMENT);
        }
        UsbFamily::run_async(self.call, d.entry, action, move || {
            let mut out = vec![0u8; usize::from(setup.length)];
            if !setup.is_in() {
                region.read(0, &mut out);
            }
            let data = d.transport.control(setup, &out, timeout(timeout_ms))?;
            if setup.is_in() {
                region.write(0, &data);
                Ok(data.len() as u64)
            } else {
                Ok(out.len() as u64)
            }
        })
    }

    fn set_configuration(&self, value: u8, match_interfaces: bool) -> IOResult<()> {
        let d = self.usb_device()?;
        self.family
            .configure(self.call.system, &d, value, match_interfaces)
    }

    fn copy_interfaces(&self) -> IOResult<Vec<ObjectId>> {
        let d = self.usb_device()?;
        let mut interfaces: Vec<(u8, EntryId)> = self
            .family
            .lock()
            .interfaces
            .values()
            .filter(|i| Arc::ptr_eq(&i.device, &d))
            .map(|i| (i.number, i.entry))
            .collect();
        if interfaces.is_empty() {
            return Err(IOReturn::NOT_READY);
        }
        interfaces.sort();
        Ok(interfaces.into_iter().map(|(_, e)| e.object()).collect())
    }
}

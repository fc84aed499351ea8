//! `IOUSBHostInterface` as dexts call it: pipes and alternate settings.

use super::*;

impl IOUSBHostInterfaceInterface for UsbCall<'_> {
    fn device_request(&self, setup: u64, data: Bytes, timeout_ms: u32) -> IOResult<Bytes> {
        control_request(&self.usb_interface()?.device, setup, data, timeout_ms)
    }

    fn copy_device(&self) -> IOResult<ObjectId> {
        self.copy_device_of_interface()
    }

    fn select_alternate_setting(&self, alternate: u8) -> IOResult<()> {
        self.select_setting(alternate)
    }

    fn copy_configuration(&self) -> IOResult<Bytes> {
        let interface = self.usb_interface()?;
        current_configuration(&interface.device).ok_or(IOReturn::NOT_READY)
    }

    fn copy_pipe(&self, address: u8) -> IOResult<ObjectId> {
        let interface = self.usb_interface()?;
        let endpoint = interface
            .endpoints()
            .into_iter()
            .find(|e| e.address == address)
            .ok_or(IOReturn::NOT_FOUND)?;
        let client = self
            .family
            .driver_of(self.call.system, self.call.server, self.call.entry());
        // Open is exclusive: an interface whose pipes another process
        // holds is that process's.
        if self
            .family
            .held_elsewhere(self.call.entry(), self.call.server)
        {
            return Err(IOReturn::EXCLUSIVE_ACCESS);
        }
        // The interface is the dext's from its first pipe on: a host driver
        // bound to it is detached now (and attached again when the last
        // pipe goes), unless the personality keeps it.
        let hold = Hold::take(self.call.system, interface, self.call.server, client)?;
        let mut st = self.family.lock();
        st.next_pipe += 1;
        let id = self.call.family.object(st.next_pipe);
        st.pipes.insert(
            id,
            Arc::new(Pipe {
                hold,
                endpoint,
                order: Arc::default(),
            }),
        );
        Ok(id)
    }
}

impl UsbCall<'_> {
    pub(super) fn copy_device_of_interface(&self) -> IOResult<ObjectId> {
        Ok(self.usb_interface()?.device.entry.object())
    }

    /// SET_INTERFACE through the transport; the caller's pipes of the old
    /// setting go (their transfers end with `kIOReturnAborted`).
    pub(super) fn select_setting(&self, alternate: u8) -> IOResult<()> {
        let interface = self.usb_interface()?;
        let config = current_configuration(&interface.device).ok_or(IOReturn::NOT_READY)?;
        let (_, settings) = driverkit_usb::interfaces(&config.0).map_err(|_| IOReturn::IO_ERROR)?;
        let setting = settings
            .iter()
            .find(|i| {
                i.descriptor.interface_number() == interface.number
                    && i.descriptor.alternate_setting() == alternate
            })
            .ok_or(IOReturn::BAD_ARGUMENT)?;
        if self
            .family
            .held_elsewhere(interface.entry, self.call.server)
        {
            return Err(IOReturn::EXCLUSIVE_ACCESS);
        }
        let client = self
            .family
            .driver_of(self.call.system, self.call.server, interface.entry);
        // The interface must be ours (the host driver detached) before the
        // host lets us change its setting, and stays ours in that setting
        // while the driver lives.
        let hold = Hold::take(
            self.call.system,
            interface.clone(),
            self.call.server,
            client,
        )?;
        let old: Vec<Arc<Pipe>> = {
            let mut st = self.family.lock();
            let gone: Vec<ObjectId> = st
                .pipes
                .iter()
                .filter(|(_, p)| p.hold.interface_entry == interface.entry)
                .map(|(k, _)| *k)
                .collect();
            gone.iter().filter_map(|k| st.pipes.remove(k)).collect()
        };
        for pipe in &old {
            interface.device.transport.abort(pipe.endpoint.address);
        }
        drop(old);
        let result = interface
            .device
            .transport
            .set_interface(interface.number, alternate);
        if result.is_ok() {
            let mut st = self.family.lock();
            let before = std::mem::take(&mut st.selections);
            let (same, mut kept): (Vec<Hold>, Vec<Hold>) = before
                .into_iter()
                .partition(|h| h.interface_entry == interface.entry);
            kept.push(hold);
            st.selections = kept;
            drop(st);
            drop(same);
            *interface.setting.locked() = (alternate, endpoints_of(setting));
            self.call.system.set_property(
                interface.entry,
                "bAlternateSetting",
                i64::from(alternate).into(),
            );
        }
        result
    }
}

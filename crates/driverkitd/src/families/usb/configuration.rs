//! Configuration policy: a device no driver claimed is configured as a
//! host would (vendor-class devices wait for a driver's
//! `SetConfiguration`), and its interfaces are published as nubs.

use super::*;

impl UsbFamily {
    pub(super) fn unclaimed_device(&self, system: &System, entry: EntryId) {
        if self.lock().lent.contains(&entry) {
            return;
        }
        let device = self.device(entry);
        let Some(device) = device else { return };
        let vendor_class = DeviceDescriptor::new_checked(&device.enumerated.device, 0)
            .is_ok_and(|d| d.device_class() == 0xff);
        let current = *device.configuration.locked();
        let has_interfaces = self
            .lock()
            .interfaces
            .values()
            .any(|i| Arc::ptr_eq(&i.device, &device));
        // A device a driver configured (without interfaces) stays as it is;
        // one the host configured (Linux) gets the nubs of its interfaces.
        let host_configured = device.transport.active_configuration().is_some();
        if vendor_class || has_interfaces || (current != 0 && !host_configured) {
            return;
        }
        // A host that configured the device already (Linux) keeps its
        // configuration: its interfaces get nubs.
        let value = match current {
            0 => match device.enumerated.configurations.first() {
                Some(first) => first.get(5).copied().unwrap_or(1),
                None => return,
            },
            v => v,
        };
        if let Err(e) = self.configure(system, &device, value, true) {
            tracing::warn!("configure [{entry:#x}] with configuration {value} failed: {e}");
        }
    }

    /// SET_CONFIGURATION, then (with `match_interfaces`) one nub per
    /// interface, each matched. Nubs of the previous configuration go first.
    pub(super) fn configure(
        &self,
        system: &System,
        device: &Arc<UsbDevice>,
        value: u8,
        match_interfaces: bool,
    ) -> IOResult<()> {
        let config = if value == 0 {
            None
        } else {
            Some(
                device
                    .enumerated
                    .configurations
                    .iter()
                    .find(|c| c.get(5) == Some(&value))
                    .ok_or(IOReturn::BAD_ARGUMENT)?,
            )
        };
        let old: Vec<EntryId> = {
            let st = self.lock();
            st.interfaces
                .iter()
                .filter(|(_, i)| Arc::ptr_eq(&i.device, device))
                .map(|(id, _)| *id)
                .collect()
        };
        for id in old {
            system.terminate(id);
        }
        let current = *device.configuration.locked();
        if current != value || device.transport.active_configuration().is_none() {
            device.transport.set_configuration(value)?;
        }
        *device.configuration.locked() = value;
        let Some(config) = config else { return Ok(()) };
        system.set_property(
            device.entry,
            "kUSBCurrentConfiguration",
            i64::from(value).into(),
        );
        let (_, interfaces) = driverkit_usb::interfaces(config).map_err(|_| IOReturn::IO_ERROR)?;
        let mut nubs = Vec::new();
        {
            let device_props = system.properties(device.entry).unwrap_or_default();
            for i in interfaces
                .iter()
                .filter(|i| i.descriptor.alternate_setting() == 0)
            {
                let d = &i.descriptor;
                let mut p = plist::Dictionary::new();
                // Interface nubs carry the device's identity too: the
                // interface ladder's rows start with idVendor and idProduct.
                for key in ["idVendor", "idProduct", "bcdDevice", "locationID"] {
                    if let Some(v) = device_props.get(key) {
                        p.insert(key.into(), v.clone());
                    }
                }
                let int = |v: u8| Value::Integer(u64::from(v).into());
                p.extend(device.transport.interface_properties(d.interface_number()));
                p.insert("bConfigurationValue".into(), int(value));
                p.insert("bInterfaceNumber".into(), int(d.interface_number()));
                p.insert("bAlternateSetting".into(), int(0));
                p.insert("bInterfaceClass".into(), int(d.interface_class()));
                p.insert("bInterfaceSubClass".into(), int(d.interface_subclass()));
                p.insert("bInterfaceProtocol".into(), int(d.interface_protocol()));
                p.insert("bNumEndpoints".into(), int(d.num_endpoints()));
                let name = format!("IOUSBHostInterface@{}", d.interface_number());
                let endpoints = endpoints_of(i);
                let id = system
                    .publish(Nub {
                        name: &name,
                        class: "IOUSBHostInterface",
                        properties: p,
                        provider: device.entry,
                        family: Some(self),
                        plugged_from: None,
                        matched: false,
                    })
                    .map_err(|_| IOReturn::NO_DEVICE)?;
                self.lock().interfaces.insert(
                    id,
                    Arc::new(UsbInterface {
                        entry: id,
                        device: device.clone(),
                        number: d.interface_number(),
                        class: d.interface_class(),
                        setting: Mutex::new((0, endpoints)),
                    }),
                );
                nubs.push(id);
            }
        }
        if match_interfaces {
            for id in nubs {
                system.match_nub(id);
            }
        }
        Ok(())
    }
}

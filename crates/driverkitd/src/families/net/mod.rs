//! Ethernet interfaces (NetworkingDriverKit): a dext's
//! `IOUserNetworkEthernet` becomes a real network interface, a TAP device
//! the daemon owns, and the virtual cable's ends (`IOVirtualNIC`) are
//! devices such a driver may drive.
//!
//! `register_ethernet_interface` (the SDK's, in the driver's `start`)
//! brings the driver's pool and queues; the family makes the TAP, or takes
//! back the one its provider had before (a relaunched driver keeps its
//! interface, its name and its addresses), and starts the
//! [`interface::Interface`] between them. `report_link_status` sets the
//! carrier. When the service departs (stop, crash) the threads end and the
//! carrier drops; the TAP is parked under the provider until a driver
//! comes back, and goes with the provider.

pub mod interface;
mod ioctl;
pub mod link;
pub mod tap;

use driverkit_wire::sync::Locked;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use driverkit_core::{Call, EntryId, Family, Interrupt, Plugged, System};
use driverkit_wire::interfaces::{
    io_user_network_ethernet_interface, io_virtual_nic_interface, IOUserNetworkEthernetInterface,
    IOVirtualNICInterface,
};
use driverkit_wire::net::NetInterface;
use driverkit_wire::shm::SharedMemory;
use driverkit_wire::{Bytes, IOResult, IOReturn, MethodId};

use interface::{Counters, Interface};
use tap::Tap;

/// What one end of a virtual cable does; its backend implements it.
pub trait NicDevice: Send + Sync {
    /// The end's transmit and receive queues: data queue regions, each
    /// written by one end's driver and read by the other's.
    fn queues(&self) -> [Arc<SharedMemory>; 2];
    fn link_up(&self) -> bool;
    fn set_enable(&self, enable: bool);
    /// Interrupt 0: the link changed.
    fn subscribe_interrupt(&self, index: u32, region: &Arc<SharedMemory>) -> IOResult<()>;
    fn unplugged(&self) {}
}

/// The Ethernet family.
#[derive(Default)]
pub struct NetFamily {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Running interfaces, by service.
    running: HashMap<EntryId, Running>,
    /// TAPs whose driver is away, by provider.
    parked: HashMap<EntryId, Arc<Tap>>,
    nics: HashMap<EntryId, Arc<dyn NicDevice>>,
}

struct Running {
    provider: EntryId,
    /// Its TAP is `interface.tap()`: a stand-in replaces one the kernel
    /// removed.
    interface: Interface,
    counters: Arc<Counters>,
}

impl NetFamily {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.locked()
    }

    /// Publishes one end of a virtual cable and matches it.
    pub fn plug_nic(
        &self,
        system: &System,
        plugged: Plugged<'_>,
        device: Arc<dyn NicDevice>,
    ) -> Result<EntryId, driverkit_core::CoreError> {
        system.plug_device(self, "IOVirtualNIC", plugged, |id| {
            self.lock().nics.insert(id, device);
        })
    }

    fn nic(&self, id: EntryId) -> IOResult<Arc<dyn NicDevice>> {
        self.lock()
            .nics
            .get(&id)
            .cloned()
            .ok_or(IOReturn::NOT_FOUND)
    }

    /// The interface's name: `IOLinuxInterfaceName` if the personality
    /// or driver set it, else `dk%d`; the kernel turns `%d` into the first
    /// free number, so that two daemons never fight over a name.
    fn interface_name(system: &System, service: EntryId) -> String {
        system
            .property(service, "IOLinuxInterfaceName")
            .and_then(|v| v.as_string().map(str::to_owned))
            .filter(|n| !n.is_empty() && n.len() < 16)
            .unwrap_or_else(|| "dk%d".into())
    }

    fn register(&self, call: &Call<'_>, mac: Bytes, memory: u64) -> IOResult<()> {
        let system = call.system;
        let service = call.entry();
        let mac: [u8; 6] = mac
            .0
            .as_slice()
            .try_into()
            .map_err(|_| IOReturn::BAD_ARGUMENT)?;
        if self.lock().running.contains_key(&service) {
            return Err(IOReturn::BUSY);
        }
        let region = system.region(call.server, memory)?;
        let net = NetInterface::open(region.try_clone().map_err(|_| IOReturn::NO_MEMORY)?)?;
        let provider = system.provider(service).ok_or(IOReturn::NOT_FOUND)?;
        let name = Self::interface_name(system, service);
        let parked = self.lock().parked.remove(&provider);
        let tap = match parked {
            Some(tap) => tap,
            None => Arc::new(Tap::create(&name, mac, 1500).map_err(|e| {
                tracing::error!("net      cannot make interface {name}: {e}");
                IOReturn::NO_RESOURCES
            })?),
        };
        let counters = Arc::new(Counters::default());
        let apply: interface::Apply = {
            let (system, name) = (system.clone(), tap.name().to_owned());
            Box::new(move |change| apply(&system, service, &name, change))
        };
        let publish: interface::Publish = {
            let system = system.clone();
            Box::new(move |c| interface::publish_counters(&system, service, c))
        };
        let vanished: interface::Vanished = {
            let (system, gone) = (system.clone(), tap.name().to_owned());
            Box::new(move || stand_in(&system, service, &gone, mac))
        };
        let interface = Interface::start(
            tap.name().to_owned(),
            tap.clone(),
            net,
            counters.clone(),
            apply,
            publish,
            vanished,
        )?;
        for (key, value) in [
            ("BSD Name", plist::Value::String(tap.name().to_owned())),
            ("IOMACAddress", plist::Value::Data(mac.to_vec())),
            ("IOLinkStatus", plist::Value::Integer(1.into())),
            (
                "IOMaxTransferUnit",
                plist::Value::Integer(i64::from(tap.mtu()).into()),
            ),
        ] {
            system.set_property(service, key, value);
        }
        tracing::info!(
            "net      {}: interface {} for {}",
            system.name(service).unwrap_or_default(),
            tap.name(),
            driverkit_wire::hex::encode(&mac, ":")
        );
        self.lock().running.insert(
            service,
            Running {
                provider,
                interface,
                counters,
            },
        );
        Ok(())
    }

    fn link_status(&self, call: &Call<'_>, up: bool, media: u32) -> IOResult<()> {
        let tap = self
            .lock()
            .running
            .get(&call.entry())
            .map(|r| r.interface.tap())
            .ok_or(IOReturn::NOT_READY)?;
        tap.set_carrier(up).map_err(|_| IOReturn::IO_ERROR)?;
        // IOLinkStatus: valid (1) and active (2), as IONetworkMedium's.
        let status = if up { 3 } else { 1 };
        call.system.set_property(
            call.entry(),
            "IOLinkStatus",
            plist::Value::Integer(status.into()),
        );
        call.system.set_property(
            call.entry(),
            "IOLinkSpeed",
            plist::Value::Integer(i64::from(media).into()),
        );
        tracing::info!(
            "net      {}: carrier {}",
            tap.name(),
            if up { "on" } else { "off" }
        );
        Ok(())
    }

    /// Ends the interface of `service`, outside the lock; the TAP stays,
    /// carrier off, for the next driver of its provider.
    fn end(&self, system: &System, service: EntryId) {
        let running = self.lock().running.remove(&service);
        if let Some(r) = running {
            r.interface.stop();
            interface::publish_counters(system, service, &r.counters);
            let tap = r.interface.tap();
            let _ = tap.set_carrier(false);
            tracing::info!("net      {}: driver away, carrier off", tap.name());
            self.lock().parked.insert(r.provider, tap);
        }
    }
}

/// A new TAP for `service`'s interface `gone`, which the kernel removed
/// (with its network namespace, say): named as the first was, carrier as
/// the driver last reported, shown in ioreg and said in the log.
fn stand_in(system: &System, service: EntryId, gone: &str, mac: [u8; 6]) -> Option<Arc<Tap>> {
    let name = NetFamily::interface_name(system, service);
    let tap = match Tap::create(&name, mac, 1500) {
        Ok(t) => Arc::new(t),
        Err(e) => {
            tracing::error!("net      {gone} is gone and no interface can stand in for it: {e}");
            return None;
        }
    };
    let up = system
        .property(service, "IOLinkStatus")
        .and_then(|v| v.as_signed_integer())
        == Some(3);
    let _ = tap.set_carrier(up);
    system.set_property(
        service,
        "BSD Name",
        plist::Value::String(tap.name().to_owned()),
    );
    let new = if tap.name() == gone { "a new " } else { "" };
    tracing::info!(
        "net      {gone} is gone (its network namespace was deleted?); {new}{} stands in for {}, in the daemon's namespace, down",
        tap.name(),
        system.name(service).unwrap_or_default()
    );
    Some(tap)
}

/// A user's `ip link set` to the driver of `service`: true if it took it.
fn apply(system: &System, service: EntryId, name: &str, change: link::Change) -> bool {
    use link::Change;
    let Some(caller) = system.driver(service) else {
        return false;
    };
    let driver = io_user_network_ethernet_interface::Proxy {
        caller: &caller,
        object: service.object(),
        flags: 0,
    };
    let result = match change {
        Change::Enable(on) => driver.set_interface_enable(on),
        Change::Promiscuous(on) => driver.set_promiscuous_mode_enable(on),
        Change::AllMulticast(on) => driver.set_all_multicast_mode_enable(on),
        Change::Multicast(ref addresses) => driver.set_multicast_addresses(
            addresses
                .iter()
                .map(|a| driverkit_wire::Bytes(a.to_vec()))
                .collect(),
        ),
        Change::Mtu(mtu) => driver.set_mtu(mtu).inspect(|()| {
            system.set_property(
                service,
                "IOMaxTransferUnit",
                plist::Value::Integer(i64::from(mtu).into()),
            )
        }),
    };
    match result {
        Ok(()) => {
            tracing::info!("net      {name}: {change} reached the driver");
            true
        }
        Err(e) => {
            tracing::warn!("net      {name}: the driver refused {change}: {e}");
            false
        }
    }
}

struct NetCall<'a> {
    family: &'a NetFamily,
    call: &'a Call<'a>,
}

impl IOUserNetworkEthernetInterface for NetCall<'_> {
    fn register_ethernet_interface(&self, mac: Bytes, memory: u64) -> IOResult<()> {
        self.family.register(self.call, mac, memory)
    }

    fn report_link_status(&self, up: bool, media: u32) -> IOResult<()> {
        self.family.link_status(self.call, up, media)
    }
}

impl IOVirtualNICInterface for NetCall<'_> {
    fn copy_queues(&self) -> IOResult<(u64, u64)> {
        let [tx, rx] = self.family.nic(self.call.entry())?.queues();
        let system = self.call.system;
        Ok((
            system.give_region(self.call.server, std::os::fd::AsFd::as_fd(&*tx))?,
            system.give_region(self.call.server, std::os::fd::AsFd::as_fd(&*rx))?,
        ))
    }

    fn link_up(&self) -> IOResult<bool> {
        Ok(self.family.nic(self.call.entry())?.link_up())
    }

    fn set_enable(&self, enable: bool) -> IOResult<()> {
        self.family.nic(self.call.entry())?.set_enable(enable);
        Ok(())
    }
}

impl Family for NetFamily {
    fn name(&self) -> &'static str {
        "networking"
    }

    fn classes(&self) -> Vec<(&'static str, Option<&'static str>)> {
        vec![("IOUserNetworkEthernet", None), ("IOVirtualNIC", None)]
    }

    fn kernel_call(&self, call: &Call<'_>) -> Option<IOResult<Vec<u8>>> {
        let (method, args) = (call.method, call.args);
        let c = NetCall { family: self, call };
        if io_user_network_ethernet_interface::method_name(method).is_some() {
            if !call
                .system
                .is_kind_of(call.entry(), "IOUserNetworkEthernet")
            {
                return Some(Err(IOReturn::UNSUPPORTED));
            }
            return io_user_network_ethernet_interface::dispatch(&c, method, args);
        }
        io_virtual_nic_interface::dispatch(&c, method, args)
    }

    /// A cable end's driver drives it.
    fn client_method(&self, method: MethodId) -> bool {
        io_virtual_nic_interface::method_name(method).is_some()
    }

    fn register_interrupt(&self, call: &Call<'_>, interrupt: Interrupt) -> IOResult<()> {
        self.nic(call.entry())?
            .subscribe_interrupt(interrupt.index, &interrupt.region)
    }

    fn departs(&self, system: &System, entry: EntryId) {
        self.end(system, entry);
    }

    /// A provider's parked TAP goes with it.
    fn removed(&self, system: &System, entry: EntryId) {
        self.end(system, entry);
        let (tap, nic) = {
            let mut st = self.lock();
            (st.parked.remove(&entry), st.nics.remove(&entry))
        };
        if let Some(tap) = tap {
            tracing::info!("net      {}: removed with its device", tap.name());
        }
        if let Some(nic) = nic {
            nic.unplugged();
        }
    }
}

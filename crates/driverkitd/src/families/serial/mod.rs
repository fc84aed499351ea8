//! Serial ports (SerialDriverKit): a dext's `IOUserSerial` becomes a real
//! tty that any program opens, and UARTs (`IOUARTDevice`) are devices such
//! a driver may drive.
//!
//! When a serial driver has started, its SDK connects the port's queues
//! (`connect_queues`, a region with the RX and TX rings); the family then
//! makes the port ([`port::Port`]) and its node, linked at
//! `<links>/<IOTTYDevice>` (`IOCalloutDevice`): a CUSE device the daemon
//! serves ([`cuse`]), or a pty ([`pty`]) whose bytes the driver's own
//! process moves, with a duplicate of its master and a control socket
//! handed over in `connect_queues`'s answer; either way the family turns
//! what programs do to the tty into the driver's `hw_*` calls ([`tty`]
//! says how Linux tells a pty's master). The port ends when its service
//! departs (stop, crash): the tty hangs up under its readers and the link
//! goes; a relaunched driver connects again and gets a fresh tty at the
//! same link.
//!
//! A UART is a backend's [`UartDevice`], published as an `IOUARTDevice`
//! nub: its driver transmits and receives through the family, and hears
//! its interrupts through `IOService::RegisterInterrupt`.

pub mod cuse;
pub mod port;
pub mod pty;
pub mod tty;

use driverkit_wire::sync::Locked;
use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use driverkit_core::{Call, EntryId, Family, Interrupt, Plugged, System};
use driverkit_wire::interfaces::{
    io_user_serial_interface, iouart_device_interface, IOUARTDeviceInterface, IOUserSerialInterface,
};
use driverkit_wire::serial::{Parity, SerialPortInterface};
use driverkit_wire::shm::SharedMemory;
use driverkit_wire::{Bytes, IOResult, IOReturn, MethodId};

pub use port::{Line, NodeKind, Port};

/// The most a `receive` returns at once.
const RECEIVE_MAX: u32 = 64 * 1024;

/// What a UART does; its backend implements it.
pub trait UartDevice: Send + Sync {
    /// Puts bytes in the transmit FIFO; returns how many fit.
    fn transmit(&self, data: &[u8]) -> usize;
    /// Takes up to `max` received bytes.
    fn receive(&self, max: usize) -> Vec<u8>;
    /// The line format (baud, data bits, half stop bits, parity).
    fn set_line(&self, baud: u32, data_bits: u8, half_stop_bits: u8, parity: Parity);
    fn set_modem_control(&self, dtr: bool, rts: bool);
    /// `(cts, dsr, ri, dcd)`.
    fn modem_status(&self) -> (bool, bool, bool, bool);
    fn reset_fifo(&self, tx: bool, rx: bool);
    /// Holds the line in break (`on`) or lets it go.
    fn set_break(&self, on: bool);
    /// Bytes in the transmit FIFO not yet on the wire.
    fn transmit_pending(&self) -> usize;
    /// Delivers interrupt `index` (0 received, 1 transmit room, 2 modem
    /// status) into `region` from now on.
    fn subscribe_interrupt(&self, index: u32, region: &Arc<SharedMemory>) -> IOResult<()>;
    /// The UART left the registry: stop whatever runs it.
    fn unplugged(&self) {}
}

/// Which node a port gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NodeChoice {
    /// A CUSE device where `/dev/cuse` opens, else a pty.
    #[default]
    Auto,
    /// Only CUSE: a port without it fails to connect, and says why.
    Cuse,
    Pty,
}

/// A serial request the family cannot serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SerialError {
    #[error("serial nodes: expected auto, cuse or pty, found {0:?}")]
    UnknownNodeKind(String),
    #[error(
        "no serial port {name:?}; the ports are: {} (see `driverkit ioreg -c IOUserSerial`)",
        if known.is_empty() { "none".to_owned() } else { known.join(", ") }
    )]
    NoSuchPort { name: String, known: Vec<String> },
    /// The port's driver refused part of a line change.
    #[error("{port}: {refused}")]
    Refused {
        port: String,
        #[source]
        refused: port::Refused,
    },
}

impl std::str::FromStr for NodeChoice {
    type Err = SerialError;
    fn from_str(s: &str) -> Result<NodeChoice, SerialError> {
        match s {
            "auto" => Ok(NodeChoice::Auto),
            "cuse" => Ok(NodeChoice::Cuse),
            "pty" => Ok(NodeChoice::Pty),
            _ => Err(SerialError::UnknownNodeKind(s.to_owned())),
        }
    }
}

/// The serial family.
pub struct SerialFamily {
    /// Where ports' callout links go.
    links: Option<PathBuf>,
    nodes: NodeChoice,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    ports: HashMap<EntryId, Arc<Port>>,
    uarts: HashMap<EntryId, Arc<dyn UartDevice>>,
}

impl SerialFamily {
    /// Ports are linked under `links` (`<root>/dev/serial/by-driverkit`);
    /// `None`: only their `/dev/pts` path.
    pub fn new(links: Option<PathBuf>, nodes: NodeChoice) -> SerialFamily {
        SerialFamily {
            links,
            nodes,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.locked()
    }

    /// Publishes a UART and matches it.
    pub fn plug_uart(
        &self,
        system: &System,
        plugged: Plugged<'_>,
        device: Arc<dyn UartDevice>,
    ) -> Result<EntryId, driverkit_core::CoreError> {
        system.plug_device(self, "IOUARTDevice", plugged, |id| {
            self.lock().uarts.insert(id, device);
        })
    }

    /// The port of serial service `id`, or of the one service whose
    /// `IOTTYDevice` or callout path is `name`.
    pub fn port(&self, system: &System, name: &str) -> Result<(EntryId, Arc<Port>), SerialError> {
        let st = self.lock();
        let by_id = name
            .parse::<EntryId>()
            .ok()
            .and_then(|id| st.ports.get(&id).map(|p| (id, p)));
        let found = by_id.or_else(|| {
            st.ports.iter().map(|(id, p)| (*id, p)).find(|(id, p)| {
                p.callout().to_str() == Some(name)
                    || system
                        .property(*id, "IOTTYDevice")
                        .and_then(|v| v.as_string().map(|s| s == name))
                        .unwrap_or(false)
            })
        });
        match found {
            Some((id, p)) => Ok((id, p.clone())),
            None => {
                let known: Vec<String> = st
                    .ports
                    .keys()
                    .filter_map(|id| {
                        system
                            .property(*id, "IOTTYDevice")
                            .and_then(|v| v.as_string().map(str::to_owned))
                    })
                    .collect();
                Err(SerialError::NoSuchPort {
                    name: name.to_owned(),
                    known,
                })
            }
        }
    }

    fn uart(&self, id: EntryId) -> IOResult<Arc<dyn UartDevice>> {
        self.lock()
            .uarts
            .get(&id)
            .cloned()
            .ok_or(IOReturn::NOT_FOUND)
    }

    /// `IOTTYBaseName`-`IOTTYSuffix`: the driver's, else its registry name
    /// and its provider's location (or registry ID).
    fn tty_name(system: &System, service: EntryId) -> (String, String) {
        let string = |id: EntryId, key: &str| {
            system
                .property(id, key)
                .and_then(|v| v.as_string().map(str::to_owned))
        };
        let base = string(service, "IOTTYBaseName")
            .or_else(|| system.name(service))
            .unwrap_or_else(|| "serial".into());
        let suffix = string(service, "IOTTYSuffix").unwrap_or_else(|| {
            let provider = system.provider(service).unwrap_or(service);
            match system
                .property(provider, "locationID")
                .and_then(|v| v.as_unsigned_integer())
            {
                Some(location) => format!("{location:x}"),
                None => format!("{provider:x}"),
            }
        });
        let clean = |s: String| {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                        c
                    } else {
                        '-'
                    }
                })
                .collect::<String>()
        };
        (clean(base), clean(suffix))
    }

    /// Makes the port; answers the IDs of the descriptors handed over for
    /// the driver's process to pump its tty, or `(0, 0)`.
    fn connect(&self, call: &Call<'_>, memory: u64) -> IOResult<(u64, u64)> {
        let system = call.system;
        let service = call.entry();
        if self.lock().ports.contains_key(&service) {
            return Err(IOReturn::BUSY);
        }
        let region = system.region(call.server, memory)?;
        let shm = region.try_clone().map_err(|_| IOReturn::NO_MEMORY)?;
        let queues = SerialPortInterface::open(shm)?;
        let (base, suffix) = Self::tty_name(system, service);
        let device = format!("{base}-{suffix}");
        let link = self.links.as_ref().map(|dir| dir.join(&device));
        let name = system.name(service).unwrap_or_else(|| device.clone());
        let port = self.make_port(system, service, &name, queues, link)?;
        for (key, value) in [
            ("IOTTYBaseName", base),
            ("IOTTYSuffix", suffix),
            ("IOTTYDevice", device),
            ("IOCalloutDevice", port.callout().display().to_string()),
            ("IODialinDevice", port.node().display().to_string()),
        ] {
            system.set_property(service, key, value.into());
        }
        tracing::info!(
            "serial   {name}: {} node {} at {}",
            port.kind().name(),
            port.node().display(),
            port.callout().display()
        );
        let handover = match port.handover() {
            Some((master, control)) => (
                system.give_region(call.server, master.as_fd())?,
                system.give_region(call.server, control.as_fd())?,
            ),
            None => (0, 0),
        };
        self.lock().ports.insert(service, Arc::new(port));
        Ok(handover)
    }

    /// A CUSE node where there is `/dev/cuse` (unless ptys were asked
    /// for), else a pty.
    fn make_port(
        &self,
        system: &System,
        service: EntryId,
        name: &str,
        queues: SerialPortInterface,
        link: Option<PathBuf>,
    ) -> IOResult<Port> {
        let cuse = match self.nodes {
            NodeChoice::Pty => false,
            NodeChoice::Cuse => true,
            NodeChoice::Auto => cuse::available(),
        };
        if cuse {
            let core = Arc::new(port::Core::new(
                system.clone(),
                service,
                name.to_owned(),
                queues,
                cuse::CuseNode::initial_line(),
            ));
            return match cuse::CuseNode::start(core.clone()) {
                Ok(node) => Ok(Port::new(core, Box::new(node), link)),
                Err(e) => {
                    tracing::error!("serial   {name}: no CUSE node: {e}");
                    Err(IOReturn::NO_RESOURCES)
                }
            };
        }
        let (tty, termios) = pty::PtyNode::open_tty()?;
        let core = Arc::new(port::Core::new(
            system.clone(),
            service,
            name.to_owned(),
            queues,
            Line {
                termios,
                data_bits: 8,
                parity: Parity::None,
                dtr: false,
                rts: false,
            },
        ));
        let node = pty::PtyNode::start(core.clone(), tty)?;
        Ok(Port::new(core, Box::new(node), link))
    }

    fn port_of(&self, service: EntryId) -> Option<Arc<Port>> {
        self.lock().ports.get(&service).cloned()
    }

    /// Ends the port of `service`, outside the family's lock: its threads
    /// may be in a call to the driver, which may be calling the family.
    fn end_port(&self, service: EntryId) {
        let port = self.lock().ports.remove(&service);
        if let Some(port) = port {
            port.stop();
        }
    }
}

/// A call on a serial service or a UART.
struct SerialCall<'a> {
    family: &'a SerialFamily,
    call: &'a Call<'a>,
}

impl IOUserSerialInterface for SerialCall<'_> {
    fn connect_queues(&self, memory: u64) -> IOResult<(u64, u64)> {
        self.family.connect(self.call, memory)
    }

    fn set_modem_status(&self, cts: bool, dsr: bool, ri: bool, dcd: bool) -> IOResult<()> {
        let mut d = plist::Dictionary::new();
        for (k, v) in [("CTS", cts), ("DSR", dsr), ("RI", ri), ("DCD", dcd)] {
            d.insert(k.into(), v.into());
        }
        self.call.system.set_property(
            self.call.entry(),
            "IOSerialModemStatus",
            plist::Value::Dictionary(d),
        );
        if let Some(port) = self.family.port_of(self.call.entry()) {
            port.modem_changed((cts, dsr, ri, dcd));
        }
        Ok(())
    }

    /// Counted per kind in `IOSerialErrors`.
    fn rx_error(&self, overrun: bool, gotbreak: bool, framing: bool, parity: bool) -> IOResult<()> {
        let system = self.call.system;
        let mut d = match system.property(self.call.entry(), "IOSerialErrors") {
            Some(plist::Value::Dictionary(d)) => d,
            _ => plist::Dictionary::new(),
        };
        for (k, hit) in [
            ("Overrun", overrun),
            ("Break", gotbreak),
            ("Framing", framing),
            ("Parity", parity),
        ] {
            let n = d.get(k).and_then(|v| v.as_unsigned_integer()).unwrap_or(0);
            d.insert(k.into(), ((n + u64::from(hit)) as i64).into());
        }
        system.set_property(
            self.call.entry(),
            "IOSerialErrors",
            plist::Value::Dictionary(d),
        );
        if let Some(port) = self.family.port_of(self.call.entry()) {
            port.rx_error(overrun, gotbreak, framing, parity);
        }
        Ok(())
    }
}

impl IOUARTDeviceInterface for SerialCall<'_> {
    fn transmit(&self, data: Bytes) -> IOResult<(u64, u32)> {
        let uart = self.family.uart(self.call.entry())?;
        let taken = uart.transmit(&data.0);
        Ok((taken as u64, uart.transmit_pending() as u32))
    }

    fn receive(&self, max: u32) -> IOResult<Bytes> {
        let max = max.min(RECEIVE_MAX) as usize;
        Ok(Bytes(self.family.uart(self.call.entry())?.receive(max)))
    }

    fn set_line(&self, baud: u32, data_bits: u8, half_stop_bits: u8, parity: u8) -> IOResult<()> {
        if baud == 0 || !(5..=8).contains(&data_bits) || !(2..=4).contains(&half_stop_bits) {
            return Err(IOReturn::BAD_ARGUMENT);
        }
        let parity = Parity::from_wire(parity).ok_or(IOReturn::BAD_ARGUMENT)?;
        self.family
            .uart(self.call.entry())?
            .set_line(baud, data_bits, half_stop_bits, parity);
        Ok(())
    }

    fn set_modem_control(&self, dtr: bool, rts: bool) -> IOResult<()> {
        self.family
            .uart(self.call.entry())?
            .set_modem_control(dtr, rts);
        Ok(())
    }

    fn modem_status(&self) -> IOResult<(bool, bool, bool, bool)> {
        Ok(self.family.uart(self.call.entry())?.modem_status())
    }

    fn reset_fifo(&self, tx: bool, rx: bool) -> IOResult<()> {
        self.family.uart(self.call.entry())?.reset_fifo(tx, rx);
        Ok(())
    }

    fn set_break(&self, on: bool) -> IOResult<()> {
        self.family.uart(self.call.entry())?.set_break(on);
        Ok(())
    }

    fn transmit_pending(&self) -> IOResult<u32> {
        Ok(self.family.uart(self.call.entry())?.transmit_pending() as u32)
    }
}

impl Family for SerialFamily {
    fn name(&self) -> &'static str {
        "serial"
    }

    fn classes(&self) -> Vec<(&'static str, Option<&'static str>)> {
        vec![("IOUserSerial", None), ("IOUARTDevice", None)]
    }

    fn kernel_call(&self, call: &Call<'_>) -> Option<IOResult<Vec<u8>>> {
        let (method, args) = (call.method, call.args);
        let c = SerialCall { family: self, call };
        if io_user_serial_interface::method_name(method).is_some() {
            // Only a serial service's own process connects its queues.
            if !call.system.is_kind_of(call.entry(), "IOUserSerial") {
                return Some(Err(IOReturn::UNSUPPORTED));
            }
            return io_user_serial_interface::dispatch(&c, method, args);
        }
        iouart_device_interface::dispatch(&c, method, args)
    }

    /// A UART's driver drives it.
    fn client_method(&self, method: MethodId) -> bool {
        iouart_device_interface::method_name(method).is_some()
    }

    fn register_interrupt(&self, call: &Call<'_>, interrupt: Interrupt) -> IOResult<()> {
        self.uart(call.entry())?
            .subscribe_interrupt(interrupt.index, &interrupt.region)
    }

    /// A departing serial service's tty hangs up now, before its driver's
    /// Stop (or right after its crash).
    fn departs(&self, _system: &System, entry: EntryId) {
        self.end_port(entry);
    }

    fn removed(&self, _system: &System, entry: EntryId) {
        self.end_port(entry);
        let uart = self.lock().uarts.remove(&entry);
        if let Some(uart) = uart {
            uart.unplugged();
        }
    }
}

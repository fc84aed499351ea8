//! Virtual devices described in TOML files: the embedded default for
//! `driverkit run`, and what tests plug in CI.
//!
//! ```toml
//! name = "VirtualSensor"          # registry name (required)
//! class = "IOVirtualDevice"       # a system class (default IOVirtualDevice)
//!
//! [properties]                    # registry properties, as plist values
//! SensorKind = "thermometer"      # string
//! ReadingCelsius = 21             # integer (float -> real, bool -> boolean)
//! Firmware = { "$data" = "dead" } # data, as hex
//! ```
//!
//! Tables become dictionaries and arrays arrays; TOML dates become dates.
//!
//! A device can raise interrupts, numbered from 0 in the order listed:
//!
//! ```toml
//! [[interrupts]]
//! period_ms = 100                 # one interrupt every 100 ms
//! ```
//!
//! A `[usb]` table makes it a USB device (class `IOUSBHostDevice`); its
//! format is in [`virtual_usb`](super::virtual_usb). A `[uart]` table makes
//! it a UART (class `IOUARTDevice`, [`virtual_uart`](super::virtual_uart)).
//! A `[pci]` table makes it a PCI function (class `IOPCIDevice`) of a
//! modelled device; `model = "edu"` is QEMU's edu device
//! ([`virtual_edu`](super::virtual_edu)).
//!
//! [`VirtualDevices`] is the backend: it hangs a `VirtualBus` under the
//! registry root and plugs each device into the family that serves it (a
//! USB device into the USB family, anything else as a plain device), with
//! the behaviour its file describes (interrupt lines, reads, endpoints).

use driverkit_wire::sync::Locked;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use driverkit_core::{EntryId, Nub, System};
use driverkit_wire::shm::SharedMemory;
use driverkit_wire::IOResult;
use plist::Value;

use super::description::{BadDescription, DeviceError, SpecError};
use super::interrupts::InterruptModel;
use super::virtual_cable::CableSpec;
use super::virtual_edu::VirtualEdu;
use super::virtual_uart::{UartSpec, VirtualUart};
use super::virtual_usb::{UsbSpec, VirtualUsb};
use crate::families::net::NetFamily;
use crate::families::pci::PciFamily;
use crate::families::plain::{PlainDevice, PlainFamily};
use crate::families::serial::SerialFamily;

use crate::families::usb::{UsbFamily, UsbTransport};

/// A parsed device file.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceSpec {
    pub name: String,
    pub class: String,
    pub properties: plist::Dictionary,
    /// The period of each interrupt the device raises.
    pub interrupts: Vec<std::time::Duration>,
    /// Where it came from (a path or `builtin:NAME`), for `device list`.
    pub source: String,
    /// A USB device's descriptors and endpoints.
    pub usb: Option<UsbSpec>,
    /// A UART's FIFOs, pace and modem script.
    pub uart: Option<UartSpec>,
    /// A virtual cable: two NICs back to back.
    pub cable: Option<CableSpec>,
    /// A modelled PCI function.
    pub pci: Option<PciSpec>,
}

/// `[pci]`: which device the model is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PciSpec {
    /// The only model so far: `edu`.
    pub model: String,
    /// How long a DMA transfer waits before it starts (QEMU's edu: 100 ms
    /// of virtual time); 10 ms if absent.
    #[serde(default = "default_dma_delay_ms")]
    pub dma_delay_ms: u64,
}

fn default_dma_delay_ms() -> u64 {
    10
}

const BUILTINS: &[(&str, &str)] = &[
    ("sensor", include_str!("../../devices/sensor.toml")),
    ("widget", include_str!("../../devices/widget.toml")),
    ("keyboard", include_str!("../../devices/keyboard.toml")),
    ("mouse", include_str!("../../devices/mouse.toml")),
    ("uart", include_str!("../../devices/uart.toml")),
    ("cable", include_str!("../../devices/cable.toml")),
    ("edu", include_str!("../../devices/edu.toml")),
    (
        "vendor-bulk",
        include_str!("../../devices/vendor-bulk.toml"),
    ),
];

/// The names of the built-in device files.
pub fn builtin_names() -> impl Iterator<Item = &'static str> {
    BUILTINS.iter().map(|(n, _)| *n)
}

/// A built-in device by name.
pub fn builtin(name: &str) -> Option<DeviceSpec> {
    let (_, text) = BUILTINS.iter().find(|(n, _)| *n == name)?;
    parse(text, &format!("builtin:{name}")).ok()
}

/// The report descriptor of HID interface `interface` of built-in device
/// `name` (`keyboard`, `mouse`): a real device's bytes for drivers and
/// benchmarks that need one.
pub fn builtin_report_descriptor(name: &str, interface: usize) -> Option<Vec<u8>> {
    let spec = builtin(name)?.usb?;
    from_hex(
        spec.interfaces
            .get(interface)?
            .report_descriptor
            .as_deref()?,
    )
    .ok()
}

/// Parses a device file; errors name the file and the key.
pub fn parse(text: &str, source: &str) -> Result<DeviceSpec, SpecError> {
    parse_table(text)
        .map_err(|problem| SpecError {
            file: source.to_owned(),
            problem,
        })
        .map(|mut spec| {
            spec.source = source.to_owned();
            spec
        })
}

/// A kind's table (`[usb]`, `[uart]`, `[cable]`, `[pci]`) as its spec; a
/// wrong or missing key is named under the table's.
fn section<S: serde::de::DeserializeOwned>(
    key: &str,
    table: &toml::Table,
) -> Result<S, BadDescription> {
    toml::Value::Table(table.clone())
        .try_into()
        .map_err(|e: toml::de::Error| BadDescription::key(key, e.message().trim()))
}

/// [`parse`], the file's name left to the caller.
fn parse_table(text: &str) -> Result<DeviceSpec, BadDescription> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| BadDescription::Syntax(e.to_string()))?;
    let mut name = None;
    let mut class = "IOVirtualDevice".to_owned();
    let mut properties = plist::Dictionary::new();
    let mut interrupts = Vec::new();
    let mut usb = None;
    let mut uart = None;
    let mut cable = None;
    let mut pci = None;
    for (key, value) in &table {
        match (key.as_str(), value) {
            ("name", toml::Value::String(s)) if !s.is_empty() => name = Some(s.clone()),
            ("class", toml::Value::String(s)) => class = s.clone(),
            ("properties", toml::Value::Table(t)) => {
                for (k, v) in t {
                    properties.insert(
                        k.clone(),
                        to_plist(v).map_err(|e| e.under(&format!("properties.{k}")))?,
                    );
                }
            }
            ("interrupts", toml::Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let period = item
                        .get("period_ms")
                        .and_then(toml::Value::as_integer)
                        .filter(|ms| (1..=3_600_000).contains(ms))
                        .ok_or_else(|| {
                            BadDescription::key(
                                format!("interrupts[{i}].period_ms"),
                                "expected milliseconds from 1 to 3600000",
                            )
                        })?;
                    interrupts.push(std::time::Duration::from_millis(period as u64));
                }
            }
            ("usb", toml::Value::Table(t)) => {
                let spec: UsbSpec = section("usb", t)?;
                spec.validate()?;
                usb = Some(spec);
            }
            ("uart", toml::Value::Table(t)) => {
                let spec: UartSpec = section("uart", t)?;
                spec.validate()?;
                uart = Some(spec);
            }
            ("cable", toml::Value::Table(t)) => {
                let spec: CableSpec = section("cable", t)?;
                spec.validate()?;
                cable = Some(spec);
            }
            ("pci", toml::Value::Table(t)) => {
                let spec: PciSpec = section("pci", t)?;
                if spec.model != "edu" {
                    return Err(BadDescription::key(
                        "pci.model",
                        format!(
                            "expected \"edu\" (QEMU's edu device, the one modelled), found {:?}",
                            spec.model
                        ),
                    ));
                }
                pci = Some(spec);
            }
            ("interrupts", other) => {
                return Err(BadDescription::key(
                    "interrupts",
                    format!("expected [[interrupts]] tables, found {}", other.type_str()),
                ))
            }
            ("name" | "class", other) => {
                return Err(BadDescription::key(
                    key.as_str(),
                    format!("expected a non-empty string, found {}", other.type_str()),
                ))
            }
            ("properties", other) => {
                return Err(BadDescription::key(
                    "properties",
                    format!("expected a table, found {}", other.type_str()),
                ))
            }
            (other, _) => return Err(BadDescription::UnknownKey(other.to_owned())),
        }
    }
    let name = name.ok_or_else(|| BadDescription::key("name", "missing"))?;
    // A kind's table makes the device of its class: the class is the
    // kind's unless the file names it, and then it must be the kind's.
    let kinds = [
        (
            usb.is_some(),
            "IOUSBHostDevice",
            "a device with [usb] is an IOUSBHostDevice",
        ),
        (
            uart.is_some(),
            "IOUARTDevice",
            "a device with [uart] is an IOUARTDevice",
        ),
        (
            cable.is_some(),
            "IOVirtualNIC",
            "a [cable] is two IOVirtualNIC ends",
        ),
        (
            pci.is_some(),
            "IOPCIDevice",
            "a device with [pci] is an IOPCIDevice",
        ),
    ];
    let mut present = kinds.iter().filter(|(present, ..)| *present);
    if let Some((_, kind_class, rule)) = present.next() {
        if present.next().is_some() {
            return Err(BadDescription::SeveralKinds);
        }
        if !table.contains_key("class") {
            class = (*kind_class).to_owned();
        } else if class != *kind_class {
            return Err(BadDescription::key(
                "class",
                format!("{rule}, found {class:?}"),
            ));
        }
    }
    let chain = driverkit_wire::classes::chain(&class);
    if !driverkit_wire::classes::is_system_class(&class) || !chain.contains(&"IOService") {
        let services: Vec<&str> = driverkit_wire::classes::all()
            .filter(|c| driverkit_wire::classes::chain(c).contains(&"IOService"))
            .collect();
        return Err(BadDescription::key(
            "class",
            format!(
                "{class:?} is not a system service class; one of {}",
                services.join(", ")
            ),
        ));
    }
    Ok(DeviceSpec {
        name,
        class,
        properties,
        interrupts,
        source: String::new(),
        usb,
        uart,
        cable,
        pci,
    })
}

/// A TOML value as the plist value a registry property holds; an error's
/// key is relative to `v`.
fn to_plist(v: &toml::Value) -> Result<Value, BadDescription> {
    Ok(match v {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::Integer((*i).into()),
        toml::Value::Float(f) => Value::Real(*f),
        toml::Value::Boolean(b) => Value::Boolean(*b),
        toml::Value::Datetime(d) => {
            let text = d.to_string();
            let date = plist::Date::from_xml_format(&text).map_err(|_| BadDescription::Key {
                key: String::new(),
                problem: format!(
                    "date {text} is not a full UTC timestamp (like 2024-05-01T12:00:00Z)"
                ),
            })?;
            Value::Date(date)
        }
        toml::Value::Array(a) => Value::Array(a.iter().map(to_plist).collect::<Result<_, _>>()?),
        toml::Value::Table(t) if t.len() == 1 && t.contains_key("$data") => match &t["$data"] {
            toml::Value::String(hex) => {
                Value::Data(from_hex(hex).map_err(|e| BadDescription::key("$data", e.to_string()))?)
            }
            other => {
                return Err(BadDescription::key(
                    "$data",
                    format!("expected a hex string, found {}", other.type_str()),
                ))
            }
        },
        toml::Value::Table(t) => {
            let mut d = plist::Dictionary::new();
            for (k, v) in t {
                d.insert(k.clone(), to_plist(v).map_err(|e| e.under(k))?);
            }
            Value::Dictionary(d)
        }
    })
}

/// Device files write data as hex (`driverkit_wire::hex::decode`).
pub use driverkit_wire::hex::decode as from_hex;

/// The virtual-device backend: the `VirtualBus` and what is plugged in it.
pub struct VirtualDevices {
    system: System,
    usb: Arc<UsbFamily>,
    plain: Arc<PlainFamily>,
    serial: Arc<SerialFamily>,
    net: Arc<NetFamily>,
    pci: Arc<PciFamily>,
    /// None only when the core was gone before the bus was made.
    bus: Option<EntryId>,
    state: Mutex<Plugged>,
}

#[derive(Default)]
struct Plugged {
    next_location: u32,
    /// The last PCI slot given (functions are 00:SS.0 from slot 3).
    pci_slot: u8,
    /// Virtual USB devices, for typing and injecting reports.
    usb: HashMap<EntryId, Arc<VirtualUsb>>,
}

impl VirtualDevices {
    /// Hangs the `VirtualBus` under the registry root.
    pub fn new(
        system: System,
        usb: Arc<UsbFamily>,
        plain: Arc<PlainFamily>,
        serial: Arc<SerialFamily>,
        net: Arc<NetFamily>,
        pci: Arc<PciFamily>,
    ) -> VirtualDevices {
        let bus = system
            .root()
            .and_then(|root| {
                system.publish(Nub {
                    name: "VirtualBus",
                    class: "IOVirtualBus",
                    properties: Default::default(),
                    provider: root,
                    family: None,
                    plugged_from: None,
                    matched: true,
                })
            })
            // Only when the core is already gone; plugs then fail.
            .inspect_err(|e| tracing::error!("cannot publish the virtual bus: {e}"))
            .ok();
        VirtualDevices {
            system,
            usb,
            plain,
            serial,
            net,
            pci,
            bus,
            state: Mutex::default(),
        }
    }

    /// The bus USB/IP imports hang under too (they are virtual to the host).
    pub fn bus(&self) -> Result<EntryId, DeviceError> {
        self.bus.ok_or(DeviceError::NoBus)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Plugged> {
        self.state.locked()
    }

    /// A location on the bus for the next device (USB's `locationID`
    /// layout: bus 1, then a port number).
    fn next_location(&self) -> u32 {
        let mut st = self.lock();
        st.next_location += 1;
        0x0100_0000 | (st.next_location & 0xf) << 20
    }

    /// Plugs a device into the virtual bus; it is matched.
    pub fn plug(&self, spec: DeviceSpec) -> Result<EntryId, DeviceError> {
        let bus = self.bus()?;
        if let Some(usb) = &spec.usb {
            let location = self.next_location();
            let device = Arc::new(VirtualUsb::new(usb, &spec.source, location)?);
            let id = self
                .usb
                .plug(&self.system, Some(&spec.name), device.clone(), bus)
                .inspect_err(|_| device.close())?;
            self.lock().usb.insert(id, device);
            return Ok(id);
        }
        if let Some(cable) = &spec.cable {
            // Both ends; the first's ID answers.
            let (a, b) = super::virtual_cable::cable(cable)?;
            let mut first = None;
            for (end, device) in [("A", a), ("B", b)] {
                let mut properties = spec.properties.clone();
                properties.insert("CableEnd".into(), end.into());
                properties.insert(
                    "locationID".into(),
                    Value::Integer(self.next_location().into()),
                );
                let plugged = driverkit_core::Plugged {
                    name: &format!("{}{end}", spec.name),
                    properties,
                    bus,
                    source: &spec.source,
                };
                let id = self.net.plug_nic(&self.system, plugged, device)?;
                first.get_or_insert(id);
            }
            return Ok(first.expect("a cable has two ends"));
        }
        if let Some(pci) = &spec.pci {
            let slot = {
                let mut st = self.lock();
                st.pci_slot = st.pci_slot.max(2).wrapping_add(1) % 32;
                st.pci_slot
            };
            let delay = Duration::from_millis(pci.dma_delay_ms.min(60_000));
            let device = VirtualEdu::start(&spec.name, slot, delay)?;
            return self
                .pci
                .plug(
                    &self.system,
                    bus,
                    &spec.source,
                    spec.properties.clone(),
                    device.clone(),
                )
                .inspect_err(|_| crate::families::pci::PciDevice::unplugged(&*device))
                .map_err(DeviceError::from);
        }
        if let Some(uart) = &spec.uart {
            let device = VirtualUart::start(&spec.name, uart);
            let mut properties = spec.properties.clone();
            properties.insert(
                "locationID".into(),
                Value::Integer(self.next_location().into()),
            );
            return self
                .serial
                .plug_uart(
                    &self.system,
                    driverkit_core::Plugged {
                        name: &spec.name,
                        properties,
                        bus,
                        source: &spec.source,
                    },
                    device.clone(),
                )
                .inspect_err(|_| device.unplug())
                .map_err(DeviceError::from);
        }
        let latency = spec
            .properties
            .get("ReadLatencyMs")
            .and_then(Value::as_unsigned_integer)
            .unwrap_or(10);
        let device = Arc::new(VirtualPlainDevice {
            interrupts: (!spec.interrupts.is_empty())
                .then(|| InterruptModel::start(&spec.name, &spec.interrupts)),
            latency: Duration::from_millis(latency),
        });
        self.plain
            .plug(
                &self.system,
                &spec.class,
                driverkit_core::Plugged {
                    name: &spec.name,
                    properties: spec.properties.clone(),
                    bus,
                    source: &spec.source,
                },
                device,
            )
            .map_err(DeviceError::from)
    }

    /// The virtual USB device `id`, while it is plugged.
    pub fn usb_device(&self, id: EntryId) -> Result<Arc<VirtualUsb>, DeviceError> {
        let mut st = self.lock();
        // Forget the ones that left the registry meanwhile.
        st.usb.retain(|_, d| !d.is_closed());
        st.usb
            .get(&id)
            .cloned()
            .ok_or(DeviceError::NotVirtualUsb(id))
    }
}

impl VirtualDevices {
    /// Makes virtual keyboard `id` type `text`: a press and a release
    /// report per character, queued on its interrupt-IN endpoint.
    pub fn type_text(&self, id: EntryId, text: &str) -> Result<usize, DeviceError> {
        let reports =
            crate::families::hid::keyboard_reports(text).map_err(DeviceError::Untypable)?;
        for r in &reports {
            self.queue_report(id, r)?;
        }
        Ok(reports.len())
    }

    /// Queues one input report on virtual USB device `id`'s first HID
    /// interrupt-IN endpoint.
    pub fn queue_report(&self, id: EntryId, report: &[u8]) -> Result<(), DeviceError> {
        let device = self.usb_device(id)?;
        let address = device
            .hid_input_endpoint()
            .ok_or(DeviceError::NoHidInput(id))?;
        device
            .queue_in(address, report)
            .map_err(|status| DeviceError::Endpoint {
                id,
                address,
                status,
            })
    }

    /// The last output report (SET_REPORT) virtual USB device `id` got.
    pub fn last_output_report(&self, id: EntryId) -> Option<Vec<u8>> {
        let device = self.usb_device(id).ok()?;
        device.last_set_report(0).map(|(_, _, data)| data)
    }
}

/// A plain virtual device: its interrupt lines, and reads whose byte `i`
/// is `entry + i` (low byte), after `ReadLatencyMs` (10 ms if absent).
struct VirtualPlainDevice {
    interrupts: Option<InterruptModel>,
    latency: Duration,
}

impl PlainDevice for VirtualPlainDevice {
    fn subscribe_interrupt(&self, index: u32, region: &Arc<SharedMemory>) -> IOResult<()> {
        self.interrupts
            .as_ref()
            .ok_or(driverkit_wire::IOReturn::NOT_FOUND)?
            .subscribe(index, region)
    }

    fn read(&self, entry: EntryId, length: usize) -> (Duration, Vec<u8>) {
        let seed = entry.raw() as u8;
        let data = (0..length).map(|i| seed.wrapping_add(i as u8)).collect();
        (self.latency, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn builtins_parse() {
        for name in builtin_names() {
            assert!(builtin(name).is_some(), "{name}");
        }
        let w = builtin("widget").unwrap();
        assert_eq!(w.class, "IOVirtualDevice");
        assert_eq!(
            w.properties["Firmware"],
            Value::Data(vec![0xde, 0xad, 0xbe, 0xef])
        );
    }

    #[test]
    fn errors_name_file_and_key() {
        let e = parse("name = 3", "f.toml").unwrap_err();
        assert_eq!(e.file, "f.toml");
        assert!(
            matches!(&e.problem, BadDescription::Key { key, .. } if key == "name"),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            "f.toml: key name: expected a non-empty string, found integer"
        );
        let e = parse("name = \"x\"\nclass = \"IOFoo\"", "f.toml").unwrap_err();
        assert!(e.to_string().contains("key class"), "{e}");
        let e = parse(
            "name = \"x\"\n[properties]\nF = { \"$data\" = \"abc\" }",
            "f.toml",
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("key properties.F.$data: odd number"),
            "{e}"
        );
        let e = parse("name = \"x\"\n[[interrupts]]\nperiod_ms = 0", "f.toml").unwrap_err();
        assert!(e.to_string().contains("key interrupts[0].period_ms"), "{e}");
        let ok = parse(
            "name = \"x\"\n[[interrupts]]\nperiod_ms = 5\n[[interrupts]]\nperiod_ms = 7",
            "f.toml",
        )
        .unwrap();
        assert_eq!(
            ok.interrupts,
            [
                std::time::Duration::from_millis(5),
                std::time::Duration::from_millis(7)
            ]
        );
        let e = parse("nmae = \"x\"", "f.toml").unwrap_err();
        assert!(e.to_string().contains("unknown key \"nmae\""), "{e}");
        let e = parse("name = [", "f.toml").unwrap_err();
        assert!(matches!(e.problem, BadDescription::Syntax(_)), "{e}");
        assert!(e.to_string().starts_with("f.toml: "), "{e}");
    }

    proptest! {
        #[test]
        fn any_text_is_an_error_or_a_device(text in ".{0,200}") {
            let _ = parse(&text, "p.toml");
        }
    }
}

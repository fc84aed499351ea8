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
//! format is in `usb::virtual_usb`.

use plist::Value;

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
    pub usb: Option<super::usb::virtual_usb::UsbSpec>,
}

const BUILTINS: &[(&str, &str)] = &[
    ("sensor", include_str!("../../devices/sensor.toml")),
    ("widget", include_str!("../../devices/widget.toml")),
];

/// The names of the built-in device files.
pub fn builtin_names() -> impl Iterator<Item = &'static str> {
    BUILTINS
        .iter()
        .chain(super::usb::virtual_usb::BUILTINS)
        .map(|(n, _)| *n)
}

/// A built-in device by name.
pub fn builtin(name: &str) -> Option<DeviceSpec> {
    let (_, text) = BUILTINS
        .iter()
        .chain(super::usb::virtual_usb::BUILTINS)
        .find(|(n, _)| *n == name)?;
    parse(text, &format!("builtin:{name}")).ok()
}

/// Parses a device file; errors name the file and the key.
pub fn parse(text: &str, source: &str) -> Result<DeviceSpec, String> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| format!("{source}: {e}"))?;
    let mut name = None;
    let mut class = "IOVirtualDevice".to_owned();
    let mut properties = plist::Dictionary::new();
    let mut interrupts = Vec::new();
    let mut usb = None;
    for (key, value) in &table {
        match (key.as_str(), value) {
            ("name", toml::Value::String(s)) if !s.is_empty() => name = Some(s.clone()),
            ("class", toml::Value::String(s)) => class = s.clone(),
            ("properties", toml::Value::Table(t)) => {
                for (k, v) in t {
                    properties.insert(
                        k.clone(),
                        to_plist(v).map_err(|e| format!("{source}: key properties.{k}: {e}"))?,
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
                            format!("{source}: key interrupts[{i}].period_ms: expected milliseconds from 1 to 3600000")
                        })?;
                    interrupts.push(std::time::Duration::from_millis(period as u64));
                }
            }
            ("usb", toml::Value::Table(t)) => {
                let spec: super::usb::virtual_usb::UsbSpec = toml::Value::Table(t.clone())
                    .try_into()
                    .map_err(|e: toml::de::Error| format!("{source}: key usb: {}", e.message().trim()))?;
                spec.validate().map_err(|e| format!("{source}: {e}"))?;
                if !table.contains_key("class") {
                    class = "IOUSBHostDevice".to_owned();
                }
                usb = Some(spec);
            }
            ("interrupts", other) => {
                return Err(format!("{source}: key interrupts: expected [[interrupts]] tables, found {}", other.type_str()))
            }
            ("name" | "class", other) => {
                return Err(format!(
                    "{source}: key {key}: expected a non-empty string, found {}",
                    other.type_str()
                ))
            }
            ("properties", other) => {
                return Err(format!(
                    "{source}: key properties: expected a table, found {}",
                    other.type_str()
                ))
            }
            (other, _) => {
                return Err(format!(
                    "{source}: unknown key {other:?}: expected name, class, [properties], [[interrupts]] or [usb]"
                ))
            }
        }
    }
    let name = name.ok_or_else(|| format!("{source}: key name: missing"))?;
    if usb.is_some() && class != "IOUSBHostDevice" {
        return Err(format!(
            "{source}: key class: a device with [usb] is an IOUSBHostDevice, found {class:?}"
        ));
    }
    let chain = driverkit_wire::classes::chain(&class);
    if !driverkit_wire::classes::is_system_class(&class) || !chain.contains(&"IOService") {
        return Err(format!(
            "{source}: key class: {class:?} is not a system service class"
        ));
    }
    Ok(DeviceSpec {
        name,
        class,
        properties,
        interrupts,
        source: source.to_owned(),
        usb,
    })
}

fn to_plist(v: &toml::Value) -> Result<Value, String> {
    Ok(match v {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::Integer((*i).into()),
        toml::Value::Float(f) => Value::Real(*f),
        toml::Value::Boolean(b) => Value::Boolean(*b),
        toml::Value::Datetime(d) => {
            let text = d.to_string();
            let date = plist::Date::from_xml_format(&text).map_err(|_| {
                format!("date {text} is not a full UTC timestamp (like 2024-05-01T12:00:00Z)")
            })?;
            Value::Date(date)
        }
        toml::Value::Array(a) => Value::Array(a.iter().map(to_plist).collect::<Result<_, _>>()?),
        toml::Value::Table(t) if t.len() == 1 && t.contains_key("$data") => match &t["$data"] {
            toml::Value::String(hex) => {
                Value::Data(from_hex(hex).map_err(|e| format!("$data: {e}"))?)
            }
            other => {
                return Err(format!(
                    "$data: expected a hex string, found {}",
                    other.type_str()
                ))
            }
        },
        toml::Value::Table(t) => {
            let mut d = plist::Dictionary::new();
            for (k, v) in t {
                d.insert(k.clone(), to_plist(v).map_err(|e| format!("{k}: {e}"))?);
            }
            Value::Dictionary(d)
        }
    })
}

/// Device files write data as hex (`driverkit_wire::hex::decode`).
pub use driverkit_wire::hex::decode as from_hex;

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
        assert_eq!(
            e,
            "f.toml: key name: expected a non-empty string, found integer"
        );
        let e = parse("name = \"x\"\nclass = \"IOFoo\"", "f.toml").unwrap_err();
        assert!(e.contains("key class"), "{e}");
        let e = parse(
            "name = \"x\"\n[properties]\nF = { \"$data\" = \"abc\" }",
            "f.toml",
        )
        .unwrap_err();
        assert!(e.contains("key properties.F: $data: odd number"), "{e}");
        let e = parse("name = \"x\"\n[[interrupts]]\nperiod_ms = 0", "f.toml").unwrap_err();
        assert!(e.contains("key interrupts[0].period_ms"), "{e}");
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
        assert!(e.contains("unknown key \"nmae\""), "{e}");
        let e = parse("name = [", "f.toml").unwrap_err();
        assert!(e.starts_with("f.toml: "), "{e}");
    }

    proptest! {
        #[test]
        fn any_text_is_an_error_or_a_device(text in ".{0,200}") {
            let _ = parse(&text, "p.toml");
        }
    }
}

//! Entitlements: what a dext may match and which family roles it may take,
//! and what an app may do with drivers. They live in `Entitlements.plist`,
//! in the dext and in the app's `Contents`, with DriverKit's keys; the
//! `com.apple.developer.` prefix is optional, so an entitlements file from
//! a macOS project reads as it is.
//!
//! | key (without the prefix)                     | for  | value                                  |
//! |-----------------------------------------------|------|----------------------------------------|
//! | `driverkit`                                   | dext | true: it is a driver at all            |
//! | `driverkit.transport.usb`                     | dext | array of `{ idVendor = N }` (or `"*"`) |
//! | `driverkit.transport.hid`                     | dext | true                                   |
//! | `driverkit.transport.pci`                     | dext | array of `{ IOPCIPrimaryMatch = "…" }` |
//! | `driverkit.family.hid.device`                 | dext | true: may be an `IOUserHIDDevice`      |
//! | `driverkit.family.hid.eventservice`           | dext | true: may be an `IOUserHIDEventService`|
//! | `driverkit.family.serial`                     | dext | true: may be an `IOUserSerial`         |
//! | `driverkit.family.networking`                 | dext | true: may be an `IOUserNetworkEthernet`|
//! | `driverkit.allow-any-userclient-access`       | dext | true: any app may open it              |
//! | `driverkit.userclient-access`                 | app  | array of dext bundle IDs it may open   |
//! | `system-extension.install`                    | app  | true: it may activate its drivers      |

use std::path::Path;

use plist::Value;

use crate::personality::type_name;
use crate::Personality;

/// The file, in a dext and in an app's `Contents`.
pub const FILE: &str = "Entitlements.plist";

const PREFIX: &str = "com.apple.developer.";

/// Parsed entitlements; absent keys are false or empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entitlements {
    pub driverkit: bool,
    /// `idVendor`s of `transport.usb`.
    pub usb_vendors: Vec<u32>,
    /// `transport.usb` holds `{ idVendor = "*" }`: Apple's wildcard for
    /// development-signed dexts (any vendor). The system accepts it only
    /// in developer mode (`sysext`); [`Entitlements::allow`] treats it as
    /// any vendor.
    pub usb_any_vendor: bool,
    pub hid: bool,
    /// `IOPCIPrimaryMatch` strings of `transport.pci`.
    pub pci: Vec<String>,
    pub hid_device: bool,
    pub hid_event_service: bool,
    pub serial: bool,
    pub networking: bool,
    pub allow_any_userclient_access: bool,
    /// Bundle IDs of `userclient-access` (an app's).
    pub userclient_access: Vec<String>,
    pub system_extension_install: bool,
}

impl Entitlements {
    /// Reads `file`; a missing file is no entitlements at all. Errors name
    /// the file and the key.
    /// The file is read as hostile (`untrusted::read_file`): a link, a
    /// FIFO or a file over [`crate::untrusted::MAX_PLIST`] is refused.
    pub fn load(file: &Path) -> Result<Entitlements, String> {
        let Some(bytes) = crate::untrusted::read_file(file, crate::untrusted::MAX_PLIST)? else {
            return Ok(Entitlements::default());
        };
        let dict = crate::parse_info(&bytes).map_err(|e| format!("{}: {e}", file.display()))?;
        Entitlements::parse(&dict).map_err(|(key, e)| format!("{}, key {key}: {e}", file.display()))
    }

    /// From a parsed dictionary: `(key, problem)` on a wrong type. Keys
    /// this version does not know are ignored, as the system ignores
    /// entitlements it has no use for.
    pub fn parse(dict: &plist::Dictionary) -> Result<Entitlements, (String, String)> {
        let mut e = Entitlements::default();
        for (key, value) in dict {
            let short = key.strip_prefix(PREFIX).unwrap_or(key);
            let flag = |v: &Value| match v {
                Value::Boolean(b) => Ok(*b),
                other => Err((
                    key.clone(),
                    format!("expected a boolean, found {}", type_name(other)),
                )),
            };
            let array = |v: &Value| match v {
                Value::Array(a) => Ok(a.clone()),
                other => Err((
                    key.clone(),
                    format!("expected an array, found {}", type_name(other)),
                )),
            };
            match short {
                "driverkit" => e.driverkit = flag(value)?,
                "driverkit.transport.hid" => e.hid = flag(value)?,
                "driverkit.family.hid.device" => e.hid_device = flag(value)?,
                "driverkit.family.hid.eventservice" => e.hid_event_service = flag(value)?,
                "driverkit.family.serial" => e.serial = flag(value)?,
                "driverkit.family.networking" => e.networking = flag(value)?,
                "driverkit.allow-any-userclient-access" => {
                    e.allow_any_userclient_access = flag(value)?
                }
                "system-extension.install" => e.system_extension_install = flag(value)?,
                "driverkit.transport.usb" => {
                    for (i, item) in array(value)?.iter().enumerate() {
                        let wanted = item.as_dictionary().and_then(|d| d.get("idVendor"));
                        if wanted.and_then(Value::as_string) == Some("*") {
                            e.usb_any_vendor = true;
                            continue;
                        }
                        let vendor = wanted
                            .and_then(Value::as_unsigned_integer)
                            .and_then(|v| u32::try_from(v).ok())
                            .ok_or_else(|| {
                                (
                                    format!("{key}[{i}]"),
                                    "expected { idVendor = integer } (or \"*\", Apple's development wildcard)".to_string(),
                                )
                            })?;
                        e.usb_vendors.push(vendor);
                    }
                }
                "driverkit.transport.pci" => {
                    for (i, item) in array(value)?.iter().enumerate() {
                        let m = item
                            .as_dictionary()
                            .and_then(|d| d.get("IOPCIPrimaryMatch"))
                            .and_then(Value::as_string)
                            .ok_or_else(|| {
                                (
                                    format!("{key}[{i}]"),
                                    "expected { IOPCIPrimaryMatch = string }".to_string(),
                                )
                            })?;
                        e.pci.push(m.to_owned());
                    }
                }
                "driverkit.userclient-access" => {
                    for (i, item) in array(value)?.iter().enumerate() {
                        let id = item.as_string().ok_or_else(|| {
                            (
                                format!("{key}[{i}]"),
                                format!("expected a bundle ID string, found {}", type_name(item)),
                            )
                        })?;
                        e.userclient_access.push(id.to_owned());
                    }
                }
                _ => {}
            }
        }
        Ok(e)
    }

    /// What in these entitlements only a development-signed dext may carry
    /// (Apple's `idVendor = "*"` wildcard), said for the person deciding;
    /// `None` when nothing is.
    pub fn development_only(&self) -> Option<String> {
        self.usb_any_vendor.then(|| {
            format!(
                "{PREFIX}driverkit.transport.usb names idVendor \"*\", Apple's wildcard for development-signed dexts (any USB vendor); a shipped dext lists its vendors' IDs"
            )
        })
    }

    /// Whether a dext with these entitlements may use `p`; the error names
    /// the entitlement it lacks.
    pub fn allow(&self, p: &Personality) -> Result<(), String> {
        let lacks = |what: &str| Err(format!("the dext lacks the entitlement {PREFIX}{what}"));
        if !self.driverkit {
            return lacks("driverkit");
        }
        let family = match p.io_class.as_str() {
            "IOUserHIDEventService" => {
                Some((self.hid_event_service, "driverkit.family.hid.eventservice"))
            }
            "IOUserHIDDevice" => Some((self.hid_device, "driverkit.family.hid.device")),
            "IOUserSerial" => Some((self.serial, "driverkit.family.serial")),
            "IOUserNetworkEthernet" => Some((self.networking, "driverkit.family.networking")),
            _ => None,
        };
        if let Some((false, name)) = family {
            return lacks(name);
        }
        match p.provider_class.as_str() {
            "IOUSBHostDevice" | "IOUSBHostInterface" => {
                let vendor = p
                    .properties
                    .get("idVendor")
                    .and_then(Value::as_unsigned_integer);
                match vendor {
                    _ if self.usb_any_vendor => Ok(()),
                    Some(v) if self.usb_vendors.iter().any(|e| u64::from(*e) == v) => Ok(()),
                    Some(v) => Err(format!(
                        "the dext's {PREFIX}driverkit.transport.usb does not list idVendor {v} ({v:#06x}) that personality {:?} matches",
                        p.name
                    )),
                    None => Err(format!(
                        "personality {:?} matches USB devices without an idVendor; {PREFIX}driverkit.transport.usb entitles a dext to named vendors only",
                        p.name
                    )),
                }
            }
            "IOHIDInterface" | "IOHIDDevice" if !self.hid => lacks("driverkit.transport.hid"),
            "IOPCIDevice" => {
                let wanted = ["IOPCIPrimaryMatch", "IOPCIMatch"]
                    .iter()
                    .find_map(|k| p.properties.get(k).and_then(Value::as_string));
                match wanted {
                    Some(m) if self.pci.iter().any(|e| e == m) => Ok(()),
                    _ => Err(format!(
                        "the dext's {PREFIX}driverkit.transport.pci does not list the PCI match of personality {:?}",
                        p.name
                    )),
                }
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn personality(io_class: &str, provider: &str, extra: &[(&str, Value)]) -> Personality {
        let mut d = plist::Dictionary::new();
        for (k, v) in [
            ("IOClass", io_class),
            ("IOUserClass", "Mine"),
            ("IOUserServerName", "com.example.driver"),
            ("IOProviderClass", provider),
            ("CFBundleIdentifier", "com.example.driver"),
        ] {
            d.insert(k.into(), v.into());
        }
        for (k, v) in extra {
            d.insert((*k).into(), v.clone());
        }
        Personality::parse("P", &Value::Dictionary(d), "com.example.driver").unwrap()
    }

    fn entitlements(xml_body: &str) -> Result<Entitlements, (String, String)> {
        let xml = format!(r#"<plist version="1.0"><dict>{xml_body}</dict></plist>"#);
        Entitlements::parse(&crate::parse_info(xml.as_bytes()).unwrap())
    }

    #[test]
    fn usb_matching_needs_the_vendor_listed() {
        let e = entitlements(
            "<key>com.apple.developer.driverkit</key><true/>\
             <key>com.apple.developer.driverkit.transport.usb</key>\
             <array><dict><key>idVendor</key><integer>4617</integer></dict></array>",
        )
        .unwrap();
        assert_eq!(e.usb_vendors, [4617]);
        let ours = personality(
            "IOUserService",
            "IOUSBHostDevice",
            &[("idVendor", 4617.into())],
        );
        assert_eq!(e.allow(&ours), Ok(()));
        let theirs = personality(
            "IOUserService",
            "IOUSBHostInterface",
            &[("idVendor", 0x05ac.into())],
        );
        let why = e.allow(&theirs).unwrap_err();
        assert!(
            why.contains("idVendor 1452") && why.contains("transport.usb"),
            "{why}"
        );
        let any = personality("IOUserService", "IOUSBHostDevice", &[]);
        assert!(e.allow(&any).unwrap_err().contains("without an idVendor"));
        assert!(Entitlements::default()
            .allow(&ours)
            .unwrap_err()
            .contains("driverkit"));
    }

    #[test]
    fn apples_development_wildcard_is_any_vendor() {
        // As public projects ship it for development signing.
        let e = entitlements(
            "<key>com.apple.developer.driverkit</key><true/>\
             <key>com.apple.developer.driverkit.transport.usb</key>\
             <array><dict><key>idVendor</key><string>*</string></dict></array>",
        )
        .unwrap();
        assert!(e.usb_any_vendor && e.usb_vendors.is_empty());
        let any = personality(
            "IOUserService",
            "IOUSBHostDevice",
            &[("idVendor", 0x05ac.into())],
        );
        assert_eq!(e.allow(&any), Ok(()));
        let (key, why) = entitlements(
            "<key>driverkit.transport.usb</key><array><dict><key>idVendor</key><string>apple</string></dict></array>",
        )
        .unwrap_err();
        assert_eq!(key, "driverkit.transport.usb[0]");
        assert!(why.contains("\"*\""), "{why}");
    }

    #[test]
    fn hid_and_family_roles_need_their_entitlements() {
        let base = entitlements("<key>driverkit</key><true/>").unwrap();
        let service = personality("IOUserHIDEventService", "IOHIDInterface", &[]);
        assert!(base
            .allow(&service)
            .unwrap_err()
            .contains("family.hid.eventservice"));
        let with_family = Entitlements {
            hid_event_service: true,
            ..base.clone()
        };
        assert!(with_family
            .allow(&service)
            .unwrap_err()
            .contains("transport.hid"));
        let both = Entitlements {
            hid: true,
            ..with_family
        };
        assert_eq!(both.allow(&service), Ok(()));
        let device = personality("IOUserHIDDevice", "IOUserResources", &[]);
        assert!(both
            .allow(&device)
            .unwrap_err()
            .contains("family.hid.device"));
        let plain = personality("IOUserService", "IOUserResources", &[]);
        assert_eq!(base.allow(&plain), Ok(()));
    }

    #[test]
    fn wrong_types_name_the_key() {
        let (key, why) = entitlements("<key>driverkit</key><string>yes</string>").unwrap_err();
        assert_eq!(key, "driverkit");
        assert!(why.contains("expected a boolean, found a string"));
        let (key, _) = entitlements(
            "<key>driverkit.transport.usb</key><array><dict><key>idProduct</key><integer>1</integer></dict></array>",
        )
        .unwrap_err();
        assert_eq!(key, "driverkit.transport.usb[0]");
        let app = entitlements(
            "<key>com.apple.developer.driverkit.userclient-access</key><array><string>com.example.driver</string></array>",
        )
        .unwrap();
        assert_eq!(app.userclient_access, ["com.example.driver"]);
    }

    fn any_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            any::<bool>().prop_map(Value::Boolean),
            any::<i64>().prop_map(|i| Value::Integer(i.into())),
            ".{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::vec(("idVendor|IOPCIPrimaryMatch|x", inner), 0..3)
                    .prop_map(|kv| Value::Dictionary(kv.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// Any value under any known key: parsed or refused with the key
        /// named, never a panic; and whatever parses, `allow` answers.
        #[test]
        fn any_entitlements_parse_or_name_the_key(
            entries in proptest::collection::vec((
                "(com\\.apple\\.developer\\.)?driverkit(\\.transport\\.(usb|hid|pci)|\\.family\\.(hid\\.device|hid\\.eventservice|serial|networking)|\\.allow-any-userclient-access|\\.userclient-access)?|system-extension\\.install",
                any_value(),
            ), 0..6)
        ) {
            let dict: plist::Dictionary = entries.into_iter().collect();
            match Entitlements::parse(&dict) {
                Ok(e) => {
                    let p = personality("IOUserService", "IOUSBHostDevice", &[("idVendor", 1.into())]);
                    let _ = e.allow(&p);
                }
                Err((key, _)) => proptest::prop_assert!(dict.keys().any(|k| key.starts_with(k.as_str()))),
            }
        }
    }
}

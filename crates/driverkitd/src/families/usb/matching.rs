//! USB matching: Technical Q&A 1076's ladders for devices and interfaces.
//!
//! The USB keys a personality carries must be exactly one row of the
//! ladder; each must equal the provider's property, except that `"*"`
//! matches anything at a cost of 1000, and `idProductMask` compares the
//! product ID under a mask. A personality with no USB key at all is left to
//! the generic keys (IOPropertyMatch, IONameMatch). Rows marked "vendor" need
//! the class to be 0xFF; the class rows need it not to be.

use driverkit_bundle::Personality;
use plist::Value;

use driverkit_core::{FamilyMatcher, MatchTarget};

/// When a row applies, depending on the provider's class.
#[derive(Clone, Copy, PartialEq)]
enum ClassRule {
    Any,
    VendorOnly,
    NotVendor,
}

/// A rung of a ladder: its score and when it applies. Both ladders have
/// the same six: product-specific, product, two vendor-specific (class
/// 0xFF) and two class rungs.
const RUNGS: [(i64, ClassRule); 6] = [
    (100_000, ClassRule::Any),
    (90_000, ClassRule::Any),
    (80_000, ClassRule::VendorOnly),
    (70_000, ClassRule::VendorOnly),
    (60_000, ClassRule::NotVendor),
    (50_000, ClassRule::NotVendor),
];

/// The keys of each rung, for devices.
const DEVICE_LADDER: [&[&str]; 6] = [
    &["idVendor", "idProduct", "bcdDevice"],
    &["idVendor", "idProduct"],
    &["idVendor", "bDeviceSubClass", "bDeviceProtocol"],
    &["idVendor", "bDeviceSubClass"],
    &["bDeviceClass", "bDeviceSubClass", "bDeviceProtocol"],
    &["bDeviceClass", "bDeviceSubClass"],
];

/// The keys of each rung, for interfaces: a product's interface is named
/// by its configuration and number.
const INTERFACE_LADDER: [&[&str]; 6] = [
    &[
        "idVendor",
        "idProduct",
        "bcdDevice",
        "bConfigurationValue",
        "bInterfaceNumber",
    ],
    &[
        "idVendor",
        "idProduct",
        "bConfigurationValue",
        "bInterfaceNumber",
    ],
    &["idVendor", "bInterfaceSubClass", "bInterfaceProtocol"],
    &["idVendor", "bInterfaceSubClass"],
    &[
        "bInterfaceClass",
        "bInterfaceSubClass",
        "bInterfaceProtocol",
    ],
    &["bInterfaceClass", "bInterfaceSubClass"],
];

/// Every key either ladder uses, plus the mask.
const USB_KEYS: &[&str] = &[
    "idVendor",
    "idProduct",
    "bcdDevice",
    "bDeviceClass",
    "bDeviceSubClass",
    "bDeviceProtocol",
    "bConfigurationValue",
    "bInterfaceNumber",
    "bInterfaceClass",
    "bInterfaceSubClass",
    "bInterfaceProtocol",
];

/// Matches personalities against `IOUSBHostDevice` or `IOUSBHostInterface`.
pub struct UsbMatcher {
    class: &'static str,
    ladder: [&'static [&'static str]; 6],
    class_key: &'static str,
}

impl UsbMatcher {
    /// The matcher for device nubs.
    pub fn device() -> Self {
        UsbMatcher {
            class: "IOUSBHostDevice",
            ladder: DEVICE_LADDER,
            class_key: "bDeviceClass",
        }
    }
    /// The matcher for interface nubs.
    pub fn interface() -> Self {
        UsbMatcher {
            class: "IOUSBHostInterface",
            ladder: INTERFACE_LADDER,
            class_key: "bInterfaceClass",
        }
    }
}

fn number(v: &Value) -> Option<i64> {
    match v {
        Value::Integer(i) => i.as_signed().or_else(|| i.as_unsigned().map(|u| u as i64)),
        _ => None,
    }
}

fn is_wildcard(v: &Value) -> bool {
    v.as_string() == Some("*")
}

impl FamilyMatcher for UsbMatcher {
    fn provider_class(&self) -> &'static str {
        self.class
    }

    fn score(&self, p: &Personality, target: &MatchTarget<'_>) -> Option<i64> {
        let props = &p.properties;
        let mut present: Vec<&str> = USB_KEYS
            .iter()
            .copied()
            .filter(|k| props.contains_key(k))
            .collect();
        if present.is_empty() {
            return Some(0);
        }
        present.sort_unstable();
        let rung = self.ladder.iter().position(|keys| {
            let mut keys = keys.to_vec();
            keys.sort_unstable();
            keys == present
        })?;
        let (keys, (mut score, rule)) = (self.ladder[rung], RUNGS[rung]);
        let class = target.properties.get(self.class_key).and_then(number);
        match (rule, class) {
            (ClassRule::VendorOnly, Some(c)) if c != 0xFF => return None,
            (ClassRule::VendorOnly, None) => return None,
            (ClassRule::NotVendor, Some(0xFF)) => return None,
            _ => {}
        }
        for key in keys {
            let wanted = &props[*key];
            if is_wildcard(wanted) {
                score -= 1000;
                continue;
            }
            let have = target.properties.get(key).and_then(number)?;
            let want = number(wanted)?;
            let mask = if *key == "idProduct" {
                props
                    .get("idProductMask")
                    .and_then(number)
                    .unwrap_or(0xFFFF)
            } else {
                -1
            };
            if have & mask != want & mask {
                return None;
            }
        }
        Some(score)
    }

    fn index_key(&self, p: &Personality) -> Option<(String, Value)> {
        let v = p.properties.get("idVendor")?;
        number(v).map(|_| ("idVendor".to_owned(), v.clone()))
    }

    /// A USB device or interface only of a vendor the dext is entitled to
    /// (`com.apple.developer.driverkit.transport.usb`).
    fn entitled(&self, bundle: &driverkit_bundle::Bundle, target: &MatchTarget<'_>) -> bool {
        let Some(e) = &bundle.entitlements else {
            return true;
        };
        target
            .properties
            .get("idVendor")
            .and_then(Value::as_unsigned_integer)
            .is_some_and(|v| e.usb_vendors.iter().any(|x| u64::from(*x) == v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn personality(class: &str, keys: &[(&str, Value)]) -> Personality {
        let mut p = plist::Dictionary::new();
        for (k, v) in [
            ("CFBundleIdentifier", "com.t".into()),
            ("IOClass", "IOUserService".into()),
            ("IOUserClass", "T".into()),
            ("IOUserServerName", "com.t".into()),
            ("IOProviderClass", class.into()),
        ] {
            p.insert(k.to_owned(), v);
        }
        for (k, v) in keys {
            p.insert((*k).to_owned(), v.clone());
        }
        let mut ps = plist::Dictionary::new();
        ps.insert("P".into(), Value::Dictionary(p));
        let info = driverkit_bundle::minimal_info("com.t", "x", ps);
        driverkit_bundle::Bundle::from_info(Path::new("/t.dext"), info)
            .unwrap()
            .personalities
            .remove(0)
    }

    fn int(v: i64) -> Value {
        Value::Integer(v.into())
    }

    fn score(m: &UsbMatcher, keys: &[(&str, Value)], device: &[(&str, Value)]) -> Option<i64> {
        let p = personality(m.class, keys);
        let props: plist::Dictionary = device
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        let chain = vec![m.class.to_owned(), "IOService".to_owned()];
        m.score(
            &p,
            &MatchTarget {
                name: "d",
                class_chain: &chain,
                properties: &props,
            },
        )
    }

    /// The `(key, value)`s of `from` named by `keys`.
    fn pick(from: &[(&'static str, Value)], keys: &[&'static str]) -> Vec<(&'static str, Value)> {
        keys.iter()
            .map(|k| (*k, from.iter().find(|(n, _)| n == k).unwrap().1.clone()))
            .collect()
    }

    fn keyboard() -> Vec<(&'static str, Value)> {
        vec![
            ("idVendor", int(0x0627)),
            ("idProduct", int(0x0001)),
            ("bcdDevice", int(0x0100)),
            ("bDeviceClass", int(0)),
            ("bDeviceSubClass", int(0)),
            ("bDeviceProtocol", int(0)),
        ]
    }

    #[test]
    fn every_device_row() {
        let m = UsbMatcher::device();
        let kb = keyboard();
        assert_eq!(
            score(&m, &pick(&kb, &["idVendor", "idProduct", "bcdDevice"]), &kb),
            Some(100_000)
        );
        assert_eq!(
            score(&m, &pick(&kb, &["idVendor", "idProduct"]), &kb),
            Some(90_000)
        );
        assert_eq!(
            score(
                &m,
                &pick(&kb, &["bDeviceClass", "bDeviceSubClass", "bDeviceProtocol"]),
                &kb
            ),
            Some(60_000)
        );
        assert_eq!(
            score(&m, &pick(&kb, &["bDeviceClass", "bDeviceSubClass"]), &kb),
            Some(50_000)
        );
        // The vendor rows need class 0xFF.
        assert_eq!(
            score(
                &m,
                &pick(&kb, &["idVendor", "bDeviceSubClass", "bDeviceProtocol"]),
                &kb
            ),
            None
        );
        let mut vendor = kb.clone();
        vendor[3].1 = int(0xFF);
        assert_eq!(
            score(
                &m,
                &pick(&vendor, &["idVendor", "bDeviceSubClass", "bDeviceProtocol"]),
                &vendor
            ),
            Some(80_000)
        );
        assert_eq!(
            score(
                &m,
                &pick(&vendor, &["idVendor", "bDeviceSubClass"]),
                &vendor
            ),
            Some(70_000)
        );
        // ...and the class rows refuse it.
        assert_eq!(
            score(
                &m,
                &pick(&vendor, &["bDeviceClass", "bDeviceSubClass"]),
                &vendor
            ),
            None
        );
    }

    #[test]
    fn every_interface_row() {
        let m = UsbMatcher::interface();
        let nub = [
            ("idVendor", int(0x0627)),
            ("idProduct", int(1)),
            ("bcdDevice", int(0x0100)),
            ("bConfigurationValue", int(1)),
            ("bInterfaceNumber", int(0)),
            ("bInterfaceClass", int(3)),
            ("bInterfaceSubClass", int(1)),
            ("bInterfaceProtocol", int(1)),
        ];
        for (keys, want) in [
            (
                &[
                    "idVendor",
                    "idProduct",
                    "bcdDevice",
                    "bConfigurationValue",
                    "bInterfaceNumber",
                ][..],
                Some(100_000),
            ),
            (
                &[
                    "idVendor",
                    "idProduct",
                    "bConfigurationValue",
                    "bInterfaceNumber",
                ][..],
                Some(90_000),
            ),
            (
                &["idVendor", "bInterfaceSubClass", "bInterfaceProtocol"][..],
                None,
            ),
            (&["idVendor", "bInterfaceSubClass"][..], None),
            (
                &[
                    "bInterfaceClass",
                    "bInterfaceSubClass",
                    "bInterfaceProtocol",
                ][..],
                Some(60_000),
            ),
            (&["bInterfaceClass", "bInterfaceSubClass"][..], Some(50_000)),
        ] {
            assert_eq!(score(&m, &pick(&nub, keys), &nub), want, "{keys:?}");
        }
        let mut vendor = nub.to_vec();
        vendor[5].1 = int(0xFF);
        assert_eq!(
            score(
                &m,
                &pick(
                    &vendor,
                    &["idVendor", "bInterfaceSubClass", "bInterfaceProtocol"]
                ),
                &vendor
            ),
            Some(80_000)
        );
        assert_eq!(
            score(
                &m,
                &pick(&vendor, &["idVendor", "bInterfaceSubClass"]),
                &vendor
            ),
            Some(70_000)
        );
    }

    #[test]
    fn wildcards_masks_mismatches_and_partial_rows() {
        let m = UsbMatcher::device();
        let kb = keyboard();
        let star = Value::String("*".into());
        assert_eq!(
            score(
                &m,
                &[("idVendor", int(0x0627)), ("idProduct", star.clone())],
                &kb
            ),
            Some(89_000)
        );
        assert_eq!(
            score(&m, &[("idVendor", star.clone()), ("idProduct", star)], &kb),
            Some(88_000)
        );
        let masked = [
            ("idVendor", int(0x0627)),
            ("idProduct", int(0x00F1)),
            ("idProductMask", int(0x000F)),
        ];
        assert_eq!(
            score(&m, &masked, &kb),
            Some(90_000),
            "0x0001 & 0xF == 0x00F1 & 0xF"
        );
        let masked_off = [
            ("idVendor", int(0x0627)),
            ("idProduct", int(0x00F2)),
            ("idProductMask", int(0x000F)),
        ];
        assert_eq!(score(&m, &masked_off, &kb), None);
        assert_eq!(
            score(&m, &[("idVendor", int(0x0628)), ("idProduct", int(1))], &kb),
            None,
            "another vendor"
        );
        assert_eq!(
            score(&m, &[("idVendor", int(0x0627))], &kb),
            None,
            "idVendor alone is no row"
        );
        assert_eq!(
            score(&m, &[], &kb),
            Some(0),
            "no USB keys: generic matching decides"
        );
    }

    #[test]
    fn personalities_are_indexed_by_vendor() {
        let m = UsbMatcher::device();
        let p = personality(
            "IOUSBHostDevice",
            &[("idVendor", int(0x0627)), ("idProduct", int(1))],
        );
        assert_eq!(m.index_key(&p), Some(("idVendor".to_owned(), int(0x0627))));
        let p = personality(
            "IOUSBHostDevice",
            &[
                ("idVendor", Value::String("*".into())),
                ("idProduct", int(1)),
            ],
        );
        assert_eq!(m.index_key(&p), None);
    }

    #[test]
    fn a_usb_device_matches_only_dexts_entitled_to_its_vendor() {
        use driverkit_core::matching::Catalogue;
        let mut personality = plist::Dictionary::new();
        personality.insert("IOProviderClass".into(), "IOUSBHostDevice".into());
        personality.insert("idVendor".into(), 4617.into());
        personality.insert("idProduct".into(), 1.into());
        let bundle = |id: &str, name: &str, vendor: u32| {
            let mut p = personality.clone();
            p.insert("CFBundleIdentifier".into(), id.into());
            p.insert("IOClass".into(), "IOUserService".into());
            p.insert("IOUserClass".into(), name.into());
            p.insert("IOUserServerName".into(), id.into());
            let mut ps = plist::Dictionary::new();
            ps.insert(name.into(), Value::Dictionary(p));
            let info = driverkit_bundle::minimal_info(id, "x", ps);
            let mut b = driverkit_bundle::Bundle::from_info(Path::new("/b.dext"), info).unwrap();
            b.entitlements = Some(driverkit_bundle::Entitlements {
                driverkit: true,
                usb_vendors: vec![vendor],
                ..Default::default()
            });
            b
        };
        let mut cat = Catalogue::new(vec![
            Box::new(UsbMatcher::device()),
            Box::new(UsbMatcher::interface()),
        ]);
        cat.add_bundle(bundle("com.a", "A", 4617));
        cat.add_bundle(bundle("com.b", "B", 0x05ac));
        let c: Vec<String> = driverkit_wire::classes::chain("IOUSBHostDevice")
            .into_iter()
            .map(str::to_owned)
            .collect();
        let mut props = plist::Dictionary::new();
        props.insert("idVendor".into(), 4617.into());
        props.insert("idProduct".into(), 1.into());
        let t = MatchTarget {
            name: "Device",
            class_chain: &c,
            properties: &props,
        };
        let names: Vec<_> = cat
            .candidates(&t, &Default::default())
            .iter()
            .map(|c| c.driver.personality.name.clone())
            .collect();
        assert_eq!(
            names,
            ["A"],
            "B's personality says 4617, its entitlements do not"
        );
    }
}

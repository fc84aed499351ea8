//! PCI matching on `IOPCIDevice`, as IOPCIFamily does it.
//!
//! Each key holds a list of `0xDDDDVVVV` words, each optionally masked
//! (`0xDDDDVVVV&0xMMMMMMMM`), separated by spaces; a key matches when any
//! word does:
//!
//! | key                   | compared with                                      |
//! |-----------------------|----------------------------------------------------|
//! | `IOPCIPrimaryMatch`   | `device-id << 16 \| vendor-id`                     |
//! | `IOPCISecondaryMatch` | `subsystem-id << 16 \| subsystem-vendor-id`        |
//! | `IOPCIMatch`          | either of the two                                  |
//! | `IOPCIClassMatch`     | `class-code << 8` (class, subclass, interface, 00) |
//!
//! Every key a personality names must match; as in IOKit the keys filter
//! and `IOProbeScore` orders. A personality with none of them is left to
//! the generic keys.

use driverkit_bundle::Personality;
use driverkit_core::{FamilyMatcher, MatchTarget};
use plist::Value;

/// One word of a match list: a value and the bits that count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatchWord {
    pub value: u32,
    pub mask: u32,
}

impl MatchWord {
    fn matches(&self, id: u32) -> bool {
        id & self.mask == self.value & self.mask
    }
}

/// What is wrong with a PCI match list, and in which word.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadMatchList {
    #[error("{0:?}: expected a hexadecimal word such as 0x11e81234")]
    NotHex(String),
    #[error("{0:?}: expected at most 8 hexadecimal digits after 0x")]
    TooLong(String),
    #[error("an empty match list: expected words such as 0x11e81234")]
    Empty,
}

/// Parses a match list (`"0x11e81234 0x00001af4&0x0000ffff"`). Errors name
/// the word and say what was expected.
pub fn parse_list(text: &str) -> Result<Vec<MatchWord>, BadMatchList> {
    let number = |s: &str| -> Result<u32, BadMatchList> {
        let hex = s
            .strip_prefix("0x")
            .or_else(|| s.strip_prefix("0X"))
            .ok_or_else(|| BadMatchList::NotHex(s.to_owned()))?;
        u32::from_str_radix(hex, 16).map_err(|_| BadMatchList::TooLong(s.to_owned()))
    };
    let words: Vec<MatchWord> = text
        .split_whitespace()
        .map(|word| match word.split_once('&') {
            Some((value, mask)) => Ok(MatchWord {
                value: number(value)?,
                mask: number(mask)?,
            }),
            None => Ok(MatchWord {
                value: number(word)?,
                mask: u32::MAX,
            }),
        })
        .collect::<Result<_, BadMatchList>>()?;
    if words.is_empty() {
        return Err(BadMatchList::Empty);
    }
    Ok(words)
}

/// A device's identity as the match keys see it, from its nub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PciIds {
    pub primary: u32,
    pub secondary: u32,
    pub class: u32,
}

impl PciIds {
    /// From the nub's `vendor-id`, `device-id`, `subsystem-vendor-id`,
    /// `subsystem-id` and `class-code`; `None` without a vendor and device.
    pub fn of(properties: &plist::Dictionary) -> Option<PciIds> {
        let get = |k: &str| {
            properties
                .get(k)
                .and_then(Value::as_unsigned_integer)
                .and_then(|v| u32::try_from(v).ok())
        };
        let id = |hi: u32, lo: u32| (hi & 0xffff) << 16 | (lo & 0xffff);
        Some(PciIds {
            primary: id(get("device-id")?, get("vendor-id")?),
            secondary: id(
                get("subsystem-id").unwrap_or(0),
                get("subsystem-vendor-id").unwrap_or(0),
            ),
            class: (get("class-code").unwrap_or(0) & 0x00ff_ffff) << 8,
        })
    }
}

pub const KEYS: [&str; 4] = [
    "IOPCIMatch",
    "IOPCIPrimaryMatch",
    "IOPCISecondaryMatch",
    "IOPCIClassMatch",
];

/// Whether the personality's PCI keys let `ids` through; a key that is not
/// a string list, or does not parse, lets nothing through.
pub fn matches(properties: &plist::Dictionary, ids: &PciIds) -> bool {
    KEYS.iter().all(|key| {
        let Some(v) = properties.get(key) else {
            return true;
        };
        let Some(words) = v.as_string().and_then(|t| parse_list(t).ok()) else {
            return false;
        };
        words.iter().any(|w| match *key {
            "IOPCIMatch" => w.matches(ids.primary) || w.matches(ids.secondary),
            "IOPCIPrimaryMatch" => w.matches(ids.primary),
            "IOPCISecondaryMatch" => w.matches(ids.secondary),
            _ => w.matches(ids.class),
        })
    })
}

pub struct PciMatcher;

impl FamilyMatcher for PciMatcher {
    fn provider_class(&self) -> &'static str {
        "IOPCIDevice"
    }

    fn score(&self, personality: &Personality, target: &MatchTarget<'_>) -> Option<i64> {
        if !KEYS.iter().any(|k| personality.properties.contains_key(k)) {
            return Some(0);
        }
        let ids = PciIds::of(target.properties)?;
        matches(&personality.properties, &ids).then_some(0)
    }

    /// A dext is entitled to the devices its `transport.pci` match lists
    /// let through (the personality's own keys were held to them when its
    /// bundle loaded).
    fn entitled(&self, bundle: &driverkit_bundle::Bundle, target: &MatchTarget<'_>) -> bool {
        let Some(e) = &bundle.entitlements else {
            return true;
        };
        let Some(ids) = PciIds::of(target.properties) else {
            return false;
        };
        e.pci.iter().any(|list| {
            parse_list(list).is_ok_and(|words| {
                words
                    .iter()
                    .any(|w| w.matches(ids.primary) || w.matches(ids.secondary))
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// QEMU's edu device: 1234:11e8, class 00ff00, subsystem 1af4:1100.
    fn edu() -> PciIds {
        let mut p = plist::Dictionary::new();
        for (k, v) in [
            ("vendor-id", 0x1234u64),
            ("device-id", 0x11e8),
            ("subsystem-vendor-id", 0x1af4),
            ("subsystem-id", 0x1100),
            ("class-code", 0x00ff00),
        ] {
            p.insert(k.into(), Value::Integer(v.into()));
        }
        PciIds::of(&p).unwrap()
    }

    fn keys(pairs: &[(&str, &str)]) -> plist::Dictionary {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect()
    }

    #[test]
    fn identity_words_come_from_the_nub() {
        assert_eq!(
            edu(),
            PciIds {
                primary: 0x11e8_1234,
                secondary: 0x1100_1af4,
                class: 0x00ff_0000
            }
        );
        assert_eq!(PciIds::of(&plist::Dictionary::new()), None);
    }

    #[test]
    fn every_key_and_mask_form() {
        let d = edu();
        let yes = |pairs: &[(&str, &str)]| assert!(matches(&keys(pairs), &d), "{pairs:?}");
        let no = |pairs: &[(&str, &str)]| assert!(!matches(&keys(pairs), &d), "{pairs:?}");
        // Exact words, each key.
        yes(&[("IOPCIPrimaryMatch", "0x11e81234")]);
        yes(&[("IOPCISecondaryMatch", "0x11001af4")]);
        yes(&[("IOPCIMatch", "0x11e81234")]);
        yes(&[("IOPCIMatch", "0x11001af4")]); // IOPCIMatch takes either
        yes(&[("IOPCIClassMatch", "0x00ff0000")]);
        no(&[("IOPCIPrimaryMatch", "0x11001af4")]); // the secondary is not primary
        no(&[("IOPCISecondaryMatch", "0x11e81234")]);
        no(&[("IOPCIClassMatch", "0x02000000")]);
        // Masks: any device of a vendor, a class whatever its interface.
        yes(&[("IOPCIPrimaryMatch", "0x00001234&0x0000ffff")]);
        no(&[("IOPCIPrimaryMatch", "0x00001235&0x0000ffff")]);
        yes(&[("IOPCIClassMatch", "0x00ff0000&0xffff0000")]);
        yes(&[("IOPCIClassMatch", "0x00000000&0xff000000")]);
        // Lists: any word.
        yes(&[("IOPCIPrimaryMatch", "0x10001af4 0x11e81234")]);
        yes(&[(
            "IOPCIPrimaryMatch",
            "0x10001af4  0x11e81234&0xffffffff\t0x1",
        )]);
        // Every key named must match.
        yes(&[
            ("IOPCIPrimaryMatch", "0x11e81234"),
            ("IOPCIClassMatch", "0x00ff0000&0xffff0000"),
        ]);
        no(&[
            ("IOPCIPrimaryMatch", "0x11e81234"),
            ("IOPCIClassMatch", "0x02000000&0xffff0000"),
        ]);
        // Unparsable lists match nothing.
        no(&[("IOPCIPrimaryMatch", "11e81234")]);
        no(&[("IOPCIPrimaryMatch", "")]);
        no(&[("IOPCIPrimaryMatch", "0x11e81234&")]);
    }

    #[test]
    fn bad_lists_say_what_was_expected() {
        let e = parse_list("0x11e81234 zz").unwrap_err();
        assert_eq!(e, BadMatchList::NotHex("zz".into()));
        assert!(
            e.to_string().contains("\"zz\"") && e.to_string().contains("hexadecimal"),
            "{e}"
        );
        let e = parse_list("0x123456789").unwrap_err();
        assert!(e.to_string().contains("at most 8"), "{e}");
        assert_eq!(parse_list("  ").unwrap_err(), BadMatchList::Empty);
        assert_eq!(
            parse_list("0x1234&0xffff").unwrap(),
            [MatchWord {
                value: 0x1234,
                mask: 0xffff
            }]
        );
    }

    /// Through the core's catalogue: personalities by each key, and the
    /// entitlement, which holds at matching time too.
    #[test]
    fn the_catalogue_holds_pci_keys_and_the_entitlement() {
        use driverkit_core::matching::Catalogue;
        let bundle = |id: &str, name: &str, key: &str, list: &str, entitled: &str| {
            let mut p = plist::Dictionary::new();
            for (k, v) in [
                ("CFBundleIdentifier", id),
                ("IOClass", "IOUserService"),
                ("IOUserClass", name),
                ("IOUserServerName", id),
                ("IOProviderClass", "IOPCIDevice"),
                (key, list),
            ] {
                p.insert(k.into(), v.into());
            }
            let mut ps = plist::Dictionary::new();
            ps.insert(name.into(), Value::Dictionary(p));
            let info = driverkit_bundle::minimal_info(id, "x", ps);
            let mut b =
                driverkit_bundle::Bundle::from_info(std::path::Path::new("/b.dext"), info).unwrap();
            b.entitlements = Some(driverkit_bundle::Entitlements {
                driverkit: true,
                pci: vec![entitled.into()],
                ..Default::default()
            });
            b
        };
        let mut cat = Catalogue::new(vec![Box::new(PciMatcher)]);
        cat.add_bundle(bundle(
            "com.a",
            "Primary",
            "IOPCIPrimaryMatch",
            "0x11e81234",
            "0x11e81234",
        ));
        cat.add_bundle(bundle(
            "com.b",
            "Vendor",
            "IOPCIMatch",
            "0x00001234&0x0000ffff",
            "0x00001234&0x0000ffff",
        ));
        cat.add_bundle(bundle(
            "com.c",
            "Class",
            "IOPCIClassMatch",
            "0x00ff0000&0xffff0000",
            "0x11e81234",
        ));
        cat.add_bundle(bundle(
            "com.d",
            "Other",
            "IOPCIPrimaryMatch",
            "0x10001af4",
            "0x10001af4",
        ));
        // Its keys match the edu device; its entitlement names another.
        cat.add_bundle(bundle(
            "com.e",
            "Unentitled",
            "IOPCIClassMatch",
            "0x00ff0000",
            "0x10001af4",
        ));
        let chain: Vec<String> = driverkit_wire::classes::chain("IOPCIDevice")
            .into_iter()
            .map(str::to_owned)
            .collect();
        let mut props = plist::Dictionary::new();
        for (k, v) in [
            ("vendor-id", 0x1234u64),
            ("device-id", 0x11e8),
            ("class-code", 0x00ff00),
        ] {
            props.insert(k.into(), Value::Integer(v.into()));
        }
        let t = MatchTarget {
            name: "edu",
            class_chain: &chain,
            properties: &props,
        };
        let mut names: Vec<_> = cat
            .candidates(&t, &Default::default())
            .iter()
            .map(|c| c.driver.personality.name.clone())
            .collect();
        names.sort();
        assert_eq!(names, ["Class", "Primary", "Vendor"]);
    }
}

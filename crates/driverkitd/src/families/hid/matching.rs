//! HID matching on `IOHIDInterface`.

use driverkit_bundle::Personality;
use driverkit_core::{FamilyMatcher, MatchTarget};
use plist::Value;

/// HID matching on `IOHIDInterface`: each of VendorID, ProductID,
/// VersionNumber, LocationID, Transport, PrimaryUsagePage and PrimaryUsage
/// a personality names must equal the interface's; each pair of its
/// DeviceUsagePairs must be among the interface's. Every key that matched
/// adds 100, so the more specific personality wins.
pub struct HidMatcher;

const HID_KEYS: &[&str] = &[
    "VendorID",
    "ProductID",
    "VersionNumber",
    "LocationID",
    "Transport",
    "PrimaryUsagePage",
    "PrimaryUsage",
];

fn pair_of(v: &Value) -> Option<(u64, Option<u64>)> {
    let d = v.as_dictionary()?;
    let page = d.get("DeviceUsagePage")?.as_unsigned_integer()?;
    Some((
        page,
        d.get("DeviceUsage").and_then(Value::as_unsigned_integer),
    ))
}

impl FamilyMatcher for HidMatcher {
    fn provider_class(&self) -> &'static str {
        "IOHIDInterface"
    }

    fn score(&self, personality: &Personality, target: &MatchTarget<'_>) -> Option<i64> {
        let mut score = 0;
        for key in HID_KEYS {
            if let Some(wanted) = personality.properties.get(key) {
                if target.properties.get(key) != Some(wanted) {
                    return None;
                }
                score += 100;
            }
        }
        if let Some(wanted) = personality.properties.get("DeviceUsagePairs") {
            let have: Vec<(u64, Option<u64>)> = target
                .properties
                .get("DeviceUsagePairs")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(pair_of).collect())
                .unwrap_or_default();
            for w in wanted.as_array()?.iter() {
                let (page, usage) = pair_of(w)?;
                let found = have
                    .iter()
                    .any(|(p, u)| *p == page && (usage.is_none() || *u == usage));
                if !found {
                    return None;
                }
            }
            score += 100;
        }
        Some(score)
    }

    fn index_key(&self, personality: &Personality) -> Option<(String, Value)> {
        personality
            .properties
            .get("VendorID")
            .map(|v| ("VendorID".to_owned(), v.clone()))
    }
}

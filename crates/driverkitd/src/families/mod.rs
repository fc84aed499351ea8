//! The families' system side. Each family owns some classes and, for
//! services of those classes, decides whether a personality matches and how
//! well (the hook USB, HID and PCI fill in with their ladders and keys).

pub mod hid;
pub mod io_service;
pub mod usb;
pub mod usb_device;

use driverkit_bundle::Personality;

/// What matching knows of a provider.
pub struct MatchTarget<'a> {
    pub name: &'a str,
    pub class_chain: &'a [String],
    pub properties: &'a plist::Dictionary,
}

/// A family's matching rules.
pub trait FamilyMatcher: Send + Sync {
    /// The provider class this family scores (subclasses included).
    fn provider_class(&self) -> &'static str;

    /// `None` when the personality's family keys rule the provider out;
    /// otherwise the family's score, added to `IOProbeScore`.
    fn score(&self, personality: &Personality, target: &MatchTarget<'_>) -> Option<i64>;

    /// A `(key, value)` that every matching provider must carry, used to
    /// index personalities so that matching cost does not grow with the size
    /// of the catalogue. `None` when the personality cannot be indexed.
    fn index_key(&self, personality: &Personality) -> Option<(String, plist::Value)> {
        let _ = personality;
        None
    }
}

/// The matchers of every family the daemon has.
pub fn matchers() -> Vec<Box<dyn FamilyMatcher>> {
    vec![
        Box::new(usb::UsbMatcher::device()),
        Box::new(usb::UsbMatcher::interface()),
        Box::new(hid::HidMatcher),
    ]
}

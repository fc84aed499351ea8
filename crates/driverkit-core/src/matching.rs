//! Matching: which personalities may drive a provider, in which order.
//!
//! Personalities are indexed by `IOProviderClass`, then by one key that a
//! matching provider must carry (the first scalar of `IOPropertyMatch`, the
//! name of `IONameMatch`, or a family's own key), so that looking up the
//! candidates of a provider costs about the same with ten personalities as
//! with ten thousand. The passive keys are then checked, the family scores,
//! and the candidates are grouped by `IOMatchCategory`, best first.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use driverkit_bundle::{Bundle, Personality};
use plist::Value;

use crate::family::{FamilyMatcher, MatchTarget};

/// A personality and the bundle it came from.
#[derive(Debug)]
pub struct Driver {
    pub personality: Personality,
    pub bundle: Arc<Bundle>,
}

impl Driver {
    /// `bundle-id/personality`, for logs and the relaunch ledger.
    pub fn key(&self) -> String {
        format!("{}/{}", self.bundle.identifier, self.personality.name)
    }
}

/// One candidate for a provider.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub driver: Arc<Driver>,
    pub score: i64,
}

/// A scalar plist value that can be hashed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Scalar {
    Str(String),
    Int(i128),
    Bool(bool),
}

fn scalar(v: &Value) -> Option<Scalar> {
    match v {
        Value::String(s) => Some(Scalar::Str(s.clone())),
        Value::Integer(i) => i
            .as_signed()
            .map(i128::from)
            .or_else(|| i.as_unsigned().map(i128::from))
            .map(Scalar::Int),
        Value::Boolean(b) => Some(Scalar::Bool(*b)),
        _ => None,
    }
}

/// The key under which `IONameMatch` is indexed (not a property name).
const NAME_KEY: &str = "\0name";

#[derive(Default)]
struct ClassIndex {
    unindexed: Vec<usize>,
    by_key: HashMap<(String, Scalar), Vec<usize>>,
    keys: HashSet<String>,
}

/// Every known personality, indexed for matching.
#[derive(Default)]
pub struct Catalogue {
    drivers: Vec<Arc<Driver>>,
    by_class: HashMap<String, ClassIndex>,
    families: Vec<Box<dyn FamilyMatcher>>,
}

impl Catalogue {
    /// An empty catalogue scoring with `families`.
    pub fn new(families: Vec<Box<dyn FamilyMatcher>>) -> Self {
        Catalogue {
            drivers: Vec::new(),
            by_class: HashMap::new(),
            families,
        }
    }

    /// Adds every personality of `bundle`, replacing a bundle of the same
    /// identifier.
    pub fn add_bundle(&mut self, bundle: Bundle) {
        self.remove_bundle(&bundle.identifier);
        let bundle = Arc::new(bundle);
        for p in &bundle.personalities {
            self.add(Arc::new(Driver {
                personality: p.clone(),
                bundle: bundle.clone(),
            }));
        }
    }

    /// Removes a bundle's personalities; true when there were any.
    pub fn remove_bundle(&mut self, identifier: &str) -> bool {
        let before = self.drivers.len();
        let kept: Vec<_> = self
            .drivers
            .drain(..)
            .filter(|d| d.bundle.identifier != identifier)
            .collect();
        let removed = kept.len() != before;
        if removed {
            self.by_class.clear();
            for d in kept {
                self.add(d);
            }
        } else {
            self.drivers = kept;
        }
        removed
    }

    /// The bundles in the catalogue.
    pub fn bundles(&self) -> Vec<Arc<Bundle>> {
        let mut seen = HashSet::new();
        self.drivers
            .iter()
            .filter(|d| seen.insert(d.bundle.identifier.clone()))
            .map(|d| d.bundle.clone())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.drivers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.drivers.is_empty()
    }

    fn add(&mut self, driver: Arc<Driver>) {
        let i = self.drivers.len();
        let key = self.index_key(&driver.personality);
        let index = self
            .by_class
            .entry(driver.personality.provider_class.clone())
            .or_default();
        match key {
            Some((k, v)) => {
                index.keys.insert(k.clone());
                index.by_key.entry((k, v)).or_default().push(i);
            }
            None => index.unindexed.push(i),
        }
        self.drivers.push(driver);
    }

    fn family(&self, class_chain: &[String]) -> Option<&dyn FamilyMatcher> {
        // The most derived class a family owns decides.
        class_chain
            .iter()
            .find_map(|c| self.families.iter().find(|f| f.provider_class() == c))
            .map(|f| &**f)
    }

    fn index_key(&self, p: &Personality) -> Option<(String, Scalar)> {
        let chain: Vec<String> = driverkit_wire::classes::chain(&p.provider_class)
            .into_iter()
            .map(str::to_owned)
            .collect();
        if let Some(f) = self.family(&chain) {
            if let Some((k, v)) = f.index_key(p) {
                return scalar(&v).map(|s| (k, s));
            }
        }
        if let Some(Value::Dictionary(d)) = p.properties.get("IOPropertyMatch") {
            let mut keys: Vec<_> = d
                .iter()
                .filter_map(|(k, v)| scalar(v).map(|s| (k.clone(), s)))
                .collect();
            keys.sort_by(|a, b| a.0.cmp(&b.0));
            if let Some(first) = keys.into_iter().next() {
                return Some(first);
            }
        }
        if let Some(Value::String(name)) = p.properties.get("IONameMatch") {
            return Some((NAME_KEY.to_owned(), Scalar::Str(name.clone())));
        }
        None
    }

    /// The candidates for `target`, best first (ties broken by bundle and
    /// personality name so that matching is deterministic). `resources` are
    /// the names published on IOResources, for `IOResourceMatch`.
    pub fn candidates(
        &self,
        target: &MatchTarget<'_>,
        resources: &plist::Dictionary,
    ) -> Vec<Candidate> {
        let mut seen = Vec::new();
        for class in target.class_chain {
            let Some(index) = self.by_class.get(class) else {
                continue;
            };
            seen.extend_from_slice(&index.unindexed);
            for key in &index.keys {
                let value = if key == NAME_KEY {
                    Some(Scalar::Str(target.name.to_owned()))
                } else {
                    target.properties.get(key).and_then(scalar)
                };
                if let Some(v) = value {
                    if let Some(found) = index.by_key.get(&(key.clone(), v)) {
                        seen.extend_from_slice(found);
                    }
                }
            }
        }
        let family = self.family(target.class_chain);
        let mut out: Vec<Candidate> = seen
            .into_iter()
            .filter_map(|i| {
                let driver = &self.drivers[i];
                let p = &driver.personality;
                // A family holds the line on its transport entitlements at
                // matching too, whatever a personality's keys say.
                let entitled = family.is_none_or(|f| f.entitled(&driver.bundle, target));
                if !passive_match(p, target, resources) || !entitled {
                    return None;
                }
                let family_score = match family {
                    Some(f) => f.score(p, target)?,
                    None => 0,
                };
                Some(Candidate {
                    driver: driver.clone(),
                    score: family_score.saturating_add(p.probe_score),
                })
            })
            .collect();
        out.sort_by(best_first);
        out
    }
}

/// Matching's order of candidates: the best score first, a tie broken by
/// bundle identifier, then personality name, so that matching is
/// deterministic.
pub fn best_first(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    b.score
        .cmp(&a.score)
        .then_with(|| a.driver.bundle.identifier.cmp(&b.driver.bundle.identifier))
        .then_with(|| a.driver.personality.name.cmp(&b.driver.personality.name))
}

/// Why a personality is, or is not, a candidate for a provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It matches, with this score.
    Candidate { score: i64 },
    /// Its `IOProviderClass` is not among the provider's classes.
    WrongClass { wants: String },
    /// A generic key rules it out: which, and why.
    Mismatch { key: String, why: String },
    /// The family's keys rule it out (which key, where it can tell).
    FamilyMismatch { key: Option<String>, why: String },
    /// The dext is not entitled to this provider's transport.
    NotEntitled,
}

impl Catalogue {
    /// Every personality of the catalogue, with its verdict for `target`:
    /// what `candidates` decides, with the reason for each one it leaves
    /// out. Slow (no index): for `driverkit why`, not for matching.
    pub fn explain(
        &self,
        target: &MatchTarget<'_>,
        resources: &plist::Dictionary,
    ) -> Vec<(Arc<Driver>, Verdict)> {
        let family = self.family(target.class_chain);
        self.drivers
            .iter()
            .map(|driver| {
                let p = &driver.personality;
                let verdict = if !target.class_chain.contains(&p.provider_class) {
                    Verdict::WrongClass {
                        wants: p.provider_class.clone(),
                    }
                } else if let Some((key, why)) = passive_mismatch(p, target, resources) {
                    Verdict::Mismatch { key, why }
                } else if !family.is_none_or(|f| f.entitled(&driver.bundle, target)) {
                    Verdict::NotEntitled
                } else {
                    let family_score = match family {
                        Some(f) => f.score(p, target),
                        None => Some(0),
                    };
                    match family_score {
                        Some(score) => Verdict::Candidate {
                            score: score.saturating_add(p.probe_score),
                        },
                        None => {
                            let key = differing_key(p, target);
                            Verdict::FamilyMismatch {
                                why: match &key {
                                    Some(k) => format!(
                                        "{k}: the personality wants {}, the provider has {}",
                                        show(p.properties.get(k)),
                                        show(target.properties.get(k))
                                    ),
                                    None => "the family's keys rule it out".to_owned(),
                                },
                                key,
                            }
                        }
                    }
                };
                (driver.clone(), verdict)
            })
            .collect()
    }
}

/// A personality key the provider also has, with another value: the likely
/// reason a family refused it (exact for plain keys, a guess for masks).
fn differing_key(p: &Personality, target: &MatchTarget<'_>) -> Option<String> {
    let mut keys: Vec<&String> = p.properties.keys().collect();
    keys.sort();
    keys.into_iter()
        .find(|k| {
            target
                .properties
                .get(k.as_str())
                .is_some_and(|have| !value_matches(&p.properties[k.as_str()], have))
        })
        .cloned()
}

fn show(v: Option<&Value>) -> String {
    match v {
        None => "nothing".to_owned(),
        Some(Value::String(s)) => format!("{s:?}"),
        Some(Value::Integer(i)) => i.to_string(),
        Some(Value::Boolean(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
    }
}

/// Splits candidates by `IOMatchCategory`, keeping each group's order and
/// the order in which categories first appear.
pub fn by_category(candidates: Vec<Candidate>) -> Vec<(String, Vec<Candidate>)> {
    let mut out: Vec<(String, Vec<Candidate>)> = Vec::new();
    for c in candidates {
        let cat = c.driver.personality.match_category.clone();
        match out.iter_mut().find(|(k, _)| *k == cat) {
            Some((_, group)) => group.push(c),
            None => out.push((cat, vec![c])),
        }
    }
    out
}

/// The generic keys every family honours.
fn passive_match(p: &Personality, target: &MatchTarget<'_>, resources: &plist::Dictionary) -> bool {
    target.class_chain.contains(&p.provider_class)
        && passive_mismatch(p, target, resources).is_none()
}

/// The generic key that rules `p` out for `target`, and why; `None` when
/// they all match.
fn passive_mismatch(
    p: &Personality,
    target: &MatchTarget<'_>,
    resources: &plist::Dictionary,
) -> Option<(String, String)> {
    let miss = |key: &str, why: String| Some((key.to_owned(), why));
    match p.properties.get("IOPropertyMatch") {
        Some(Value::Dictionary(d)) if !dict_matches(d, target.properties) => {
            let missing = d
                .iter()
                .find(|(k, v)| {
                    !target
                        .properties
                        .get(k.as_str())
                        .is_some_and(|h| value_matches(v, h))
                })
                .map(|(k, v)| {
                    format!(
                        "{k}: wants {}, the provider has {}",
                        show(Some(v)),
                        show(target.properties.get(k.as_str()))
                    )
                })
                .unwrap_or_default();
            return miss("IOPropertyMatch", missing);
        }
        Some(Value::Array(alternatives))
            if !alternatives.iter().any(
                |a| matches!(a, Value::Dictionary(d) if dict_matches(d, target.properties)),
            ) =>
        {
            return miss(
                "IOPropertyMatch",
                format!("none of its {} alternatives matches", alternatives.len()),
            );
        }
        _ => {}
    }
    if let Some(names) = p.properties.get("IONameMatch") {
        if !strings(names).any(|n| n == target.name) {
            return miss(
                "IONameMatch",
                format!(
                    "wants {}, the provider is named {:?}",
                    show(Some(names)),
                    target.name
                ),
            );
        }
    }
    if let Some(wanted) = p.properties.get("IOResourceMatch") {
        if let Some(absent) = strings(wanted).find(|r| !resources.contains_key(r)) {
            return miss("IOResourceMatch", format!("{absent:?} is not published"));
        }
    }
    None
}

fn strings(v: &Value) -> Box<dyn Iterator<Item = &str> + '_> {
    match v {
        Value::String(s) => Box::new(std::iter::once(s.as_str())),
        Value::Array(a) => Box::new(a.iter().filter_map(Value::as_string)),
        _ => Box::new(std::iter::empty()),
    }
}

/// IOKit's property match: every key of `wanted` is in `have` with an equal
/// value; dictionaries match as subsets, recursively.
fn dict_matches(wanted: &plist::Dictionary, have: &plist::Dictionary) -> bool {
    wanted
        .iter()
        .all(|(k, w)| have.get(k).is_some_and(|h| value_matches(w, h)))
}

fn value_matches(wanted: &Value, have: &Value) -> bool {
    match (wanted, have) {
        (Value::Dictionary(w), Value::Dictionary(h)) => dict_matches(w, h),
        (Value::Integer(_), Value::Integer(_)) => scalar(wanted) == scalar(have),
        _ => wanted == have,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    pub(crate) fn bundle(id: &str, personalities: Vec<(&str, plist::Dictionary)>) -> Bundle {
        let mut ps = plist::Dictionary::new();
        for (name, mut p) in personalities {
            p.insert("CFBundleIdentifier".into(), id.into());
            p.insert("IOClass".into(), "IOUserService".into());
            p.insert("IOUserClass".into(), name.into());
            p.insert("IOUserServerName".into(), id.into());
            ps.insert(name.into(), Value::Dictionary(p));
        }
        let info = driverkit_bundle::minimal_info(id, "x", ps);
        Bundle::from_info(Path::new("/b.dext"), info).unwrap()
    }

    fn dict(pairs: &[(&str, Value)]) -> plist::Dictionary {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    fn chain(c: &str) -> Vec<String> {
        driverkit_wire::classes::chain(c)
            .into_iter()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn provider_class_includes_subclasses_and_keys_filter() {
        let mut cat = Catalogue::new(Vec::new());
        cat.add_bundle(bundle(
            "com.a",
            vec![
                ("Any", dict(&[("IOProviderClass", "IOService".into())])),
                (
                    "Sensor",
                    dict(&[
                        ("IOProviderClass", "IOVirtualDevice".into()),
                        (
                            "IOPropertyMatch",
                            Value::Dictionary(dict(&[("Kind", "thermo".into())])),
                        ),
                        ("IOProbeScore", Value::Integer(10.into())),
                    ]),
                ),
                (
                    "Named",
                    dict(&[
                        ("IOProviderClass", "IOVirtualDevice".into()),
                        ("IONameMatch", "Widget".into()),
                    ]),
                ),
                (
                    "NeedsResource",
                    dict(&[
                        ("IOProviderClass", "IOUserResources".into()),
                        ("IOResourceMatch", "IOKit".into()),
                    ]),
                ),
            ],
        ));
        let props = dict(&[("Kind", "thermo".into())]);
        let c = chain("IOVirtualDevice");
        let t = MatchTarget {
            name: "Thermo",
            class_chain: &c,
            properties: &props,
        };
        let names: Vec<_> = cat
            .candidates(&t, &Default::default())
            .iter()
            .map(|c| c.driver.personality.name.clone())
            .collect();
        assert_eq!(names, ["Sensor", "Any"]);

        let other = dict(&[("Kind", "hygro".into())]);
        let t = MatchTarget {
            name: "Widget",
            class_chain: &c,
            properties: &other,
        };
        let names: Vec<_> = cat
            .candidates(&t, &Default::default())
            .iter()
            .map(|c| c.driver.personality.name.clone())
            .collect();
        assert_eq!(names, ["Any", "Named"]);

        let r = chain("IOUserResources");
        let empty = plist::Dictionary::new();
        let t = MatchTarget {
            name: "IOUserResources",
            class_chain: &r,
            properties: &empty,
        };
        assert_eq!(
            cat.candidates(&t, &Default::default()).len(),
            1,
            "IOKit not published: only Any"
        );
        let published = dict(&[("IOKit", "IOKit".into())]);
        assert_eq!(cat.candidates(&t, &published).len(), 2);
    }

    #[test]
    fn categories_group_candidates() {
        let mut cat = Catalogue::new(Vec::new());
        let p = |cat_name: &str, score: i64| {
            dict(&[
                ("IOProviderClass", "IOService".into()),
                ("IOMatchCategory", cat_name.into()),
                ("IOProbeScore", Value::Integer(score.into())),
            ])
        };
        cat.add_bundle(bundle(
            "com.a",
            vec![("A1", p("a", 5)), ("A2", p("a", 9)), ("B", p("b", 1))],
        ));
        let c = chain("IOService");
        let props = plist::Dictionary::new();
        let t = MatchTarget {
            name: "x",
            class_chain: &c,
            properties: &props,
        };
        let groups = by_category(cat.candidates(&t, &Default::default()));
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].0, "a");
        let a: Vec<_> = groups[0]
            .1
            .iter()
            .map(|c| c.driver.personality.name.as_str())
            .collect();
        assert_eq!(a, ["A2", "A1"]);
    }

    #[test]
    fn property_match_alternatives_and_nested_dicts() {
        let have = dict(&[
            ("A", Value::Integer(1.into())),
            (
                "D",
                Value::Dictionary(dict(&[("x", "1".into()), ("y", "2".into())])),
            ),
        ]);
        assert!(dict_matches(
            &dict(&[("D", Value::Dictionary(dict(&[("x", "1".into())])))]),
            &have
        ));
        assert!(!dict_matches(
            &dict(&[("A", Value::Integer(2.into()))]),
            &have
        ));
        assert!(!dict_matches(&dict(&[("Missing", "x".into())]), &have));
    }

    #[test]
    fn replacing_a_bundle_drops_its_old_personalities() {
        let mut cat = Catalogue::new(Vec::new());
        cat.add_bundle(bundle(
            "com.a",
            vec![("Old", dict(&[("IOProviderClass", "IOService".into())]))],
        ));
        cat.add_bundle(bundle(
            "com.b",
            vec![("Other", dict(&[("IOProviderClass", "IOService".into())]))],
        ));
        cat.add_bundle(bundle(
            "com.a",
            vec![("New", dict(&[("IOProviderClass", "IOService".into())]))],
        ));
        let c = chain("IOService");
        let props = plist::Dictionary::new();
        let t = MatchTarget {
            name: "x",
            class_chain: &c,
            properties: &props,
        };
        let mut names: Vec<_> = cat
            .candidates(&t, &Default::default())
            .iter()
            .map(|c| c.driver.personality.name.clone())
            .collect();
        names.sort();
        assert_eq!(names, ["New", "Other"]);
    }
}

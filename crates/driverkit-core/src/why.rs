//! `driverkit why ID`: for a provider, every personality matching
//! considered, its score, and why each one runs, lost or was refused.
//!
//! It replays matching's decision without its index (`Catalogue::explain`)
//! and adds what the lifecycle knows: who runs now, who declined the
//! provider, who was given up after crashes. A tie is reported as one,
//! with the rule that broke it.

use serde::Serialize;

use crate::lifecycle::{Core, CoreError};
use crate::matching::{best_first, Candidate, Verdict};
use crate::registry::EntryId;

/// One personality, as matching saw it for the provider.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Considered {
    /// `bundle-id/personality`.
    pub personality: String,
    /// Its `IOMatchCategory`.
    pub category: String,
    /// Its score, when it matched.
    pub score: Option<i64>,
    /// `runs`, `chosen`, `lost`, `tie`, `declined`, `given up` or `refused`.
    pub outcome: &'static str,
    pub reason: String,
}

/// The answer for one provider.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub provider: String,
    pub classes: Vec<String>,
    pub considered: Vec<Considered>,
    /// Personalities for other provider classes, not considered.
    pub other_classes: usize,
}

impl Core {
    /// Why each personality does or does not drive `provider`.
    pub fn why(&self, provider: EntryId) -> Result<Explanation, CoreError> {
        let st = self.inner.lock();
        let entry = st
            .registry
            .get(provider)
            .ok_or(CoreError::NoEntry(provider))?;
        let resources = st.resources();
        let target = entry.match_target();
        // Who runs on it now, by personality.
        let running: Vec<(String, String)> = entry
            .clients
            .iter()
            .filter_map(|c| st.registry.get(*c)?.hosting.as_ref())
            .map(|h| (h.bundle.clone(), h.personality.clone()))
            .collect();
        let mut other_classes = 0;
        let mut refused = Vec::new();
        let mut candidates = Vec::new();
        for (driver, verdict) in st.catalogue.explain(&target, &resources) {
            let p = &driver.personality;
            let considered = |outcome, score, reason| Considered {
                personality: driver.key(),
                category: p.match_category.clone(),
                score,
                outcome,
                reason,
            };
            match verdict {
                Verdict::WrongClass { .. } => other_classes += 1,
                Verdict::Mismatch { key, why } => refused.push(considered(
                    "refused",
                    None,
                    format!("{key} does not match ({why})"),
                )),
                Verdict::FamilyMismatch { why, .. } => {
                    refused.push(considered("refused", None, format!("family keys: {why}")))
                }
                Verdict::NotEntitled => refused.push(considered(
                    "refused",
                    None,
                    format!(
                        "{} is not entitled to this provider's transport (Entitlements.plist)",
                        driver.bundle.identifier
                    ),
                )),
                Verdict::Candidate { score } => {
                    if st.disabled.contains(&driver.key()) {
                        refused.push(considered(
                            "given up",
                            Some(score),
                            "given up after crashing past the relaunch limit (DriverKitCrashes on the provider says more); a new version or a daemon restart tries it again".to_owned(),
                        ));
                    } else if entry.declined.contains(&driver.key()) {
                        refused.push(considered(
                            "declined",
                            Some(score),
                            "its Start failed or it declined the provider; not offered it again"
                                .to_owned(),
                        ));
                    } else {
                        candidates.push(Candidate {
                            driver: driver.clone(),
                            score,
                        });
                    }
                }
            }
        }
        // In matching's own order, so that who wins here wins there.
        candidates.sort_by(best_first);
        let mut considered = Vec::new();
        let mut winners: Vec<(String, String, i64)> = Vec::new();
        for Candidate { driver, score } in &candidates {
            let category = &driver.personality.match_category;
            let runs = running
                .iter()
                .any(|(b, p)| *b == driver.bundle.identifier && *p == driver.personality.name);
            let (outcome, reason) = match winners.iter().find(|(c, _, _)| c == category) {
                None => {
                    winners.push((category.clone(), driver.key(), *score));
                    if runs {
                        ("runs", format!("the best score in category {category}"))
                    } else {
                        (
                            "chosen",
                            format!("the best score in category {category}, but not running (starting, or its Start failed)"),
                        )
                    }
                }
                Some((_, winner, best)) if best > score => (
                    if runs { "runs" } else { "lost" },
                    format!("a lower score in category {category}: {score} < {best} ({winner})"),
                ),
                Some((_, winner, best)) => (
                    if runs { "runs" } else { "tie" },
                    format!(
                        "a tie at score {best} with {winner} in category {category}, broken by bundle identifier, then personality name: {winner} sorts first; raise IOProbeScore or use another IOMatchCategory to change it"
                    ),
                ),
            };
            considered.push(Considered {
                personality: driver.key(),
                category: category.clone(),
                score: Some(*score),
                outcome,
                reason,
            });
        }
        considered.extend(refused);
        Ok(Explanation {
            provider: format!("{} [{provider:#x}]", entry.name),
            classes: entry.class_chain.clone(),
            considered,
            other_classes,
        })
    }
}

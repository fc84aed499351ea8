//! Bundle versions: `CFBundleVersion` and `CFBundleShortVersionString`,
//! dotted non-negative integers ("1", "1.2", "2.0.13"), compared part by
//! part with missing parts as 0, so "1.0" equals "1" and "1.10" is above
//! "1.9", as the system compares them when it decides an upgrade.

use std::cmp::Ordering;
use std::fmt;

/// A dotted version.
///
/// ```
/// use driverkit_bundle::Version;
/// let v = |s| Version::parse(s).unwrap();
/// assert!(v("1.10") > v("1.9"));
/// assert_eq!(v("2.0"), v("2"));
/// assert!(Version::parse("1.x").is_err());
/// ```
#[derive(Debug, Clone, Default, Eq)]
pub struct Version {
    parts: Vec<u64>,
}

impl Version {
    /// Parses "N(.N)*"; the error says what was found.
    pub fn parse(s: &str) -> Result<Version, String> {
        let parts: Result<Vec<u64>, _> = s.split('.').map(str::parse::<u64>).collect();
        match parts {
            Ok(parts) if !s.is_empty() => Ok(Version { parts }),
            _ => Err(format!(
                "expected a version of dot-separated numbers (\"1.2.3\"), found {s:?}"
            )),
        }
    }

    fn part(&self, i: usize) -> u64 {
        self.parts.get(i).copied().unwrap_or(0)
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        let n = self.parts.len().max(other.parts.len());
        (0..n)
            .map(|i| self.part(i).cmp(&other.part(i)))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.parts.iter().map(u64::to_string).collect();
        f.write_str(&parts.join("."))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bad_versions_say_what_they_found() {
        for bad in ["", "1.", ".1", "1..2", "v1", "1.-2", "1.2 "] {
            let e = Version::parse(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    proptest! {
        #[test]
        fn order_is_numeric_part_by_part(a in proptest::collection::vec(0u64..20, 1..4),
                                         b in proptest::collection::vec(0u64..20, 1..4)) {
            let text = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(".");
            let (va, vb) = (Version::parse(&text(&a)).unwrap(), Version::parse(&text(&b)).unwrap());
            let pad = |v: &[u64]| { let mut v = v.to_vec(); v.resize(4, 0); v };
            prop_assert_eq!(va.cmp(&vb), pad(&a).cmp(&pad(&b)));
            prop_assert_eq!(Version::parse(&va.to_string()).unwrap(), va);
        }

        #[test]
        fn parse_never_panics(s in ".{0,20}") {
            let _ = Version::parse(&s);
        }
    }
}

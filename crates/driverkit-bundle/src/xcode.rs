//! Xcode's build settings in a dext project's `Info.plist`, so that a
//! macOS dext project's files work unchanged.
//!
//! Xcode writes `$(PRODUCT_BUNDLE_IDENTIFIER)` and friends into the
//! `Info.plist` it creates, substitutes them at build time, and, with
//! `GENERATE_INFOPLIST_FILE`, adds the bundle keys a project's file leaves
//! out (`CFBundleExecutable`, `CFBundleVersion`...). `driverkit build` does
//! the same with [`Settings`]; a bundle whose `Info.plist` still holds a
//! variable was never built, and [`unresolved`] names what is missing.
//!
//! Syntax: `$(NAME)` or `${NAME}`, with Xcode's `:rfc1034identifier`,
//! `:c99extidentifier`, `:identifier`, `:lower` and `:upper` modifiers.

use std::collections::BTreeMap;

use plist::{Dictionary, Value};

/// The build settings a dext's `Info.plist` may name.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    values: BTreeMap<String, String>,
}

/// The keys `GENERATE_INFOPLIST_FILE` adds when a project's file has none,
/// and the setting each comes from.
const GENERATED: [(&str, &str); 8] = [
    ("CFBundleDevelopmentRegion", "$(DEVELOPMENT_LANGUAGE)"),
    ("CFBundleExecutable", "$(EXECUTABLE_NAME)"),
    ("CFBundleIdentifier", "$(PRODUCT_BUNDLE_IDENTIFIER)"),
    ("CFBundleInfoDictionaryVersion", "6.0"),
    ("CFBundleName", "$(PRODUCT_NAME)"),
    ("CFBundlePackageType", "$(PRODUCT_BUNDLE_PACKAGE_TYPE)"),
    ("CFBundleShortVersionString", "$(MARKETING_VERSION)"),
    ("CFBundleVersion", "$(CURRENT_PROJECT_VERSION)"),
];

impl Settings {
    /// The settings of a dext target named `product_name` with identifier
    /// `bundle_identifier` at `version`, as Xcode derives the rest.
    pub fn new(bundle_identifier: &str, product_name: &str, version: &str) -> Settings {
        let mut s = Settings::default();
        s.set("PRODUCT_BUNDLE_IDENTIFIER", bundle_identifier);
        s.set("PRODUCT_NAME", product_name);
        s.set("EXECUTABLE_NAME", product_name);
        s.set("TARGET_NAME", product_name);
        s.set(
            "PRODUCT_MODULE_NAME",
            &modified(product_name, "c99extidentifier").unwrap_or_default(),
        );
        s.set("DEVELOPMENT_LANGUAGE", "en");
        s.set("PRODUCT_BUNDLE_PACKAGE_TYPE", "DEXT");
        s.set("MARKETING_VERSION", version);
        s.set("CURRENT_PROJECT_VERSION", version);
        s
    }

    /// Sets (or replaces) one setting, such as
    /// `INFOPLIST_KEY_OSBundleUsageDescription`.
    pub fn set(&mut self, name: &str, value: &str) {
        self.values.insert(name.to_owned(), value.to_owned());
    }

    /// Forgets a setting: a variable naming it is then reported missing.
    pub fn remove(&mut self, name: &str) {
        self.values.remove(name);
    }

    /// Substitutes every variable of `info` and adds the generated keys it
    /// lacks (and `INFOPLIST_KEY_<key>` settings, as Xcode does). On
    /// failure, the names no setting gives, and `info` is unchanged.
    pub fn apply(&self, info: &mut Dictionary) -> Result<(), Vec<String>> {
        let mut out = info.clone();
        for (key, template) in GENERATED {
            if !out.contains_key(key) {
                out.insert(key.to_owned(), template.into());
            }
        }
        for (name, value) in &self.values {
            if let Some(key) = name.strip_prefix("INFOPLIST_KEY_") {
                if !out.contains_key(key) {
                    out.insert(key.to_owned(), value.clone().into());
                }
            }
        }
        let mut missing = Vec::new();
        let mut expanded = Value::Dictionary(out);
        self.expand_value(&mut expanded, &mut missing);
        if !missing.is_empty() {
            missing.sort();
            missing.dedup();
            return Err(missing);
        }
        if let Value::Dictionary(d) = expanded {
            *info = d;
        }
        Ok(())
    }

    fn expand_value(&self, v: &mut Value, missing: &mut Vec<String>) {
        match v {
            Value::String(s) => match expand(s, |name| self.values.get(name).cloned()) {
                Ok(new) => *s = new,
                Err(names) => missing.extend(names),
            },
            Value::Array(items) => items.iter_mut().for_each(|i| self.expand_value(i, missing)),
            Value::Dictionary(d) => {
                for (_, item) in d.iter_mut() {
                    self.expand_value(item, missing);
                }
            }
            _ => {}
        }
    }
}

/// The build variables `info` still names, sorted: empty for a built
/// `Info.plist`.
pub fn unresolved(info: &Dictionary) -> Vec<String> {
    let mut names = Vec::new();
    collect(&Value::Dictionary(info.clone()), &mut names);
    names.sort();
    names.dedup();
    names
}

fn collect(v: &Value, names: &mut Vec<String>) {
    match v {
        Value::String(s) => {
            if let Err(found) = expand(s, |_| None) {
                names.extend(found);
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect(i, names)),
        Value::Dictionary(d) => d.values().for_each(|i| collect(i, names)),
        _ => {}
    }
}

/// Expands `$(NAME[:modifier])` and `${NAME[:modifier]}` in `s`; the
/// names `lookup` does not know on failure. Text that only looks like a
/// variable (`$5`, an unclosed `$(`) is kept as it is.
pub fn expand(s: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, Vec<String>> {
    let mut out = String::with_capacity(s.len());
    let mut missing = Vec::new();
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let close = match after.chars().next() {
            Some('(') => ')',
            Some('{') => '}',
            _ => {
                out.push('$');
                rest = after;
                continue;
            }
        };
        let Some(end) = after.find(close) else {
            out.push_str(&rest[at..]);
            rest = "";
            break;
        };
        let inner = &after[1..end];
        let (name, modifier) = match inner.split_once(':') {
            Some((n, m)) => (n, Some(m)),
            None => (inner, None),
        };
        match lookup(name) {
            Some(value) => match modifier {
                None => out.push_str(&value),
                Some(m) => match modified(&value, m) {
                    Some(v) => out.push_str(&v),
                    None => missing.push(format!("{name}:{m} (unknown modifier)")),
                },
            },
            None => missing.push(name.to_owned()),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(missing)
    }
}

/// Xcode's value modifiers.
fn modified(value: &str, modifier: &str) -> Option<String> {
    let map = |keep: fn(char) -> bool, with: char| {
        value
            .chars()
            .map(|c| if keep(c) { c } else { with })
            .collect::<String>()
    };
    Some(match modifier {
        "rfc1034identifier" => map(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.', '-'),
        "c99extidentifier" | "identifier" => {
            let s = map(|c| c.is_ascii_alphanumeric() || c == '_', '_');
            if s.starts_with(|c: char| c.is_ascii_digit()) {
                format!("_{s}")
            } else {
                s
            }
        }
        "lower" => value.to_lowercase(),
        "upper" => value.to_uppercase(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        match name {
            "PRODUCT_BUNDLE_IDENTIFIER" => Some("com.example.My Driver".into()),
            "PRODUCT_NAME" => Some("9Lives".into()),
            _ => None,
        }
    }

    #[test]
    fn both_forms_and_modifiers_expand() {
        assert_eq!(
            expand("$(PRODUCT_BUNDLE_IDENTIFIER:rfc1034identifier).x", lookup),
            Ok("com.example.My-Driver.x".into())
        );
        assert_eq!(
            expand("${PRODUCT_NAME:c99extidentifier}", lookup),
            Ok("_9Lives".into())
        );
        assert_eq!(expand("$(PRODUCT_NAME:lower)", lookup), Ok("9lives".into()));
        assert_eq!(
            expand("costs $5 (or $(", lookup),
            Ok("costs $5 (or $(".into())
        );
    }

    #[test]
    fn unknown_names_and_modifiers_are_named() {
        assert_eq!(
            expand("$(EXECUTABLE_NAME)-$(PRODUCT_NAME:weird)", lookup),
            Err(vec![
                "EXECUTABLE_NAME".into(),
                "PRODUCT_NAME:weird (unknown modifier)".into()
            ])
        );
    }

    #[test]
    fn apply_adds_the_generated_keys_and_leaves_info_alone_on_failure() {
        let mut info = Dictionary::new();
        info.insert("OSBundleUsageDescription".into(), "".into());
        info.insert("X".into(), "$(PRODUCT_BUNDLE_IDENTIFIER)".into());
        let settings = Settings::new("com.example.Null", "NullDriver", "1.2");
        settings.apply(&mut info).unwrap();
        assert_eq!(info["CFBundleExecutable"], "NullDriver".into());
        assert_eq!(info["CFBundleIdentifier"], "com.example.Null".into());
        assert_eq!(info["CFBundlePackageType"], "DEXT".into());
        assert_eq!(info["CFBundleVersion"], "1.2".into());
        assert_eq!(info["X"], "com.example.Null".into());
        assert!(unresolved(&info).is_empty());

        let mut raw = Dictionary::new();
        raw.insert("Y".into(), "$(NOT_A_SETTING)".into());
        let before = raw.clone();
        assert_eq!(settings.apply(&mut raw), Err(vec!["NOT_A_SETTING".into()]));
        assert_eq!(raw, before);
        assert_eq!(unresolved(&raw), vec!["NOT_A_SETTING".to_owned()]);
    }
}

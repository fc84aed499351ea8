//! Driver bundles on disk: `<bundle-id>.dext/` with an `Info.plist` (XML or
//! binary) and the executable named by `CFBundleExecutable`.
//!
//! [`Bundle::load`] reads and validates a bundle. Every refusal is a
//! [`BundleError`] naming the bundle, the file, the personality and the key
//! at fault, so a driver author can fix it without guessing. Nothing here
//! panics on any input.
//!
//! This crate is not the extension store (which copies, signs and versions
//! bundles); it only reads what is on disk.

pub mod entitlements;
mod error;
pub mod location;
mod personality;
pub mod signature;
pub mod untrusted;
pub mod version;
pub mod xcode;

use std::path::{Path, PathBuf};

pub use entitlements::Entitlements;
pub use error::BundleError;
pub use personality::{Personality, DEFAULT_MATCH_CATEGORY};
pub use version::Version;

/// A validated driver bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The `.dext` directory.
    pub path: PathBuf,
    /// `CFBundleIdentifier`.
    pub identifier: String,
    /// The executable named by `CFBundleExecutable`, inside the bundle.
    pub executable: PathBuf,
    /// The whole `Info.plist`.
    pub info: plist::Dictionary,
    /// `IOKitPersonalities`, sorted by name.
    pub personalities: Vec<Personality>,
    /// The dext's `Entitlements.plist` (empty when it has none): always
    /// set by [`Bundle::load`]. `None` only for bundles made in code
    /// ([`Bundle::from_info`]: tests, benchmarks), which nothing checks.
    pub entitlements: Option<Entitlements>,
}

impl Bundle {
    /// Whether the dext's entitlements allow each of its personalities;
    /// the error names the personality and the entitlement it lacks.
    /// Bundles made in code carry none and pass.
    pub fn check_entitlements(&self) -> Result<(), BundleError> {
        let Some(e) = &self.entitlements else {
            return Ok(());
        };
        for p in &self.personalities {
            e.allow(p).map_err(|problem| {
                BundleError::new(&self.path, problem)
                    .in_file(&self.path.join(entitlements::FILE))
                    .personality(&p.name)
            })?;
        }
        Ok(())
    }

    /// `CFBundleVersion` (validated by `from_info`).
    pub fn version(&self) -> Version {
        self.version_of("CFBundleVersion")
    }

    /// `CFBundleShortVersionString` (validated by `from_info`).
    pub fn short_version(&self) -> Version {
        self.version_of("CFBundleShortVersionString")
    }

    fn version_of(&self, key: &str) -> Version {
        self.info
            .get(key)
            .and_then(plist::Value::as_string)
            .and_then(|s| Version::parse(s).ok())
            .unwrap_or_default()
    }
}

impl Bundle {
    /// Reads and validates the bundle at `path`.
    pub fn load(path: &Path) -> Result<Bundle, BundleError> {
        let err = |problem: String| BundleError::new(path, problem);
        let meta =
            std::fs::metadata(path).map_err(|e| err(format!("cannot read the bundle: {e}")))?;
        if !meta.is_dir() {
            return Err(err(
                "not a directory: a bundle is a `<bundle-id>.dext/` directory".into(),
            ));
        }
        if path.extension().and_then(|e| e.to_str()) != Some("dext") {
            // Say where the dext is for the things people point at instead.
            let hint = if path.extension().and_then(|e| e.to_str()) == Some("app") {
                format!(
                    "; an app carries its dexts in {}/Contents/Library/SystemExtensions/<bundle-id>.dext",
                    path.display()
                )
            } else if path.join("Cargo.toml").is_file() {
                "; this is a project: `driverkit build` makes build/NAME.app/Contents/Library/SystemExtensions/<bundle-id>.dext".into()
            } else {
                String::new()
            };
            return Err(err(format!("the directory name must end in `.dext`{hint}")));
        }
        let info_path = ["Info.plist", "Contents/Info.plist"]
            .iter()
            .map(|p| path.join(p))
            .find(|p| p.is_file())
            .ok_or_else(|| err("no Info.plist in the bundle".into()))?;
        let bytes = untrusted::read_file(&info_path, untrusted::MAX_PLIST)
            .and_then(|b| b.ok_or_else(|| "vanished while it was read".to_owned()))
            .map_err(|e| BundleError::new(path, format!("cannot read: {e}")).in_file(&info_path))?;
        let info = parse_info(&bytes)
            .map_err(|problem| BundleError::new(path, problem).in_file(&info_path))?;
        check_built(&info)
            .map_err(|problem| BundleError::new(path, problem).in_file(&info_path))?;
        let mut bundle = Bundle::from_info(path, info).map_err(|e| e.in_file(&info_path))?;
        let exe_dir = if info_path.ends_with("Contents/Info.plist") {
            path.join("Contents/MacOS")
        } else {
            path.to_owned()
        };
        bundle.executable = exe_dir.join(&bundle.executable);
        check_executable(&bundle.executable).map_err(|problem| {
            BundleError::new(path, problem)
                .in_file(&info_path)
                .key("CFBundleExecutable")
        })?;
        let file = path.join(entitlements::FILE);
        bundle.entitlements =
            Some(Entitlements::load(&file).map_err(|problem| BundleError::new(path, problem))?);
        Ok(bundle)
    }

    /// Validates an already parsed `Info.plist` for a bundle at `path`.
    /// `executable` is left relative; [`Bundle::load`] resolves and checks it.
    pub fn from_info(path: &Path, info: plist::Dictionary) -> Result<Bundle, BundleError> {
        let identifier = required_string(path, &info, "CFBundleIdentifier")?;
        check_identifier(&identifier)
            .map_err(|problem| BundleError::new(path, problem).key("CFBundleIdentifier"))?;
        let executable = required_string(path, &info, "CFBundleExecutable")?;
        // The system decides upgrades by these and shows the description
        // to the person approving the driver.
        for key in ["CFBundleVersion", "CFBundleShortVersionString"] {
            let v = required_string(path, &info, key)?;
            version::Version::parse(&v)
                .map_err(|problem| BundleError::new(path, problem).key(key))?;
        }
        // Present, but it may be empty: Apple's NullDriver sample and
        // Xcode's DriverKit template ship it so, and macOS accepts them.
        // `driverkit validate` warns about an empty one.
        match info.get("OSBundleUsageDescription") {
            None => {
                return Err(BundleError::new(path, "missing".into()).key("OSBundleUsageDescription"))
            }
            Some(plist::Value::String(_)) => {}
            Some(other) => {
                return Err(BundleError::new(
                    path,
                    format!("expected a string, found {}", personality::type_name(other)),
                )
                .key("OSBundleUsageDescription"))
            }
        }
        if executable.contains('/') || executable == ".." || executable == "." {
            return Err(BundleError::new(
                path,
                format!("expected a file name inside the bundle, found {executable:?}"),
            )
            .key("CFBundleExecutable"));
        }
        let personalities = match info.get("IOKitPersonalities") {
            None => return Err(BundleError::new(path, "missing".into()).key("IOKitPersonalities")),
            Some(plist::Value::Dictionary(d)) if d.is_empty() => {
                return Err(BundleError::new(
                    path,
                    "empty: a driver needs at least one personality".into(),
                )
                .key("IOKitPersonalities"))
            }
            Some(plist::Value::Dictionary(d)) => d,
            Some(other) => {
                return Err(BundleError::new(
                    path,
                    format!(
                        "expected a dictionary, found {}",
                        personality::type_name(other)
                    ),
                )
                .key("IOKitPersonalities"))
            }
        };
        let mut parsed = Vec::with_capacity(personalities.len());
        for (name, value) in personalities {
            parsed.push(Personality::parse(name, value, &identifier).map_err(
                |(key, problem)| {
                    let e = BundleError::new(path, problem).personality(name);
                    match key {
                        Some(k) => e.key(&k),
                        None => e,
                    }
                },
            )?);
        }
        parsed.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Bundle {
            path: path.to_owned(),
            identifier,
            executable: PathBuf::from(executable),
            info,
            personalities: parsed,
            entitlements: None,
        })
    }
}

/// The smallest `Info.plist` that validates: `identifier`, `executable`,
/// version 1 (short version "1.0"), a usage description, `personalities`.
/// For tools and tests that make bundles in code.
pub fn minimal_info(
    identifier: &str,
    executable: &str,
    personalities: plist::Dictionary,
) -> plist::Dictionary {
    let mut info = plist::Dictionary::new();
    info.insert("CFBundleIdentifier".into(), identifier.into());
    info.insert("CFBundleExecutable".into(), executable.into());
    info.insert("CFBundleVersion".into(), "1".into());
    info.insert("CFBundleShortVersionString".into(), "1.0".into());
    info.insert(
        "OSBundleUsageDescription".into(),
        format!("{identifier} (made in code)").into(),
    );
    info.insert(
        "IOKitPersonalities".into(),
        plist::Value::Dictionary(personalities),
    );
    info
}

/// Parses `Info.plist` bytes, XML or binary; the root must be a dictionary.
pub fn parse_info(bytes: &[u8]) -> Result<plist::Dictionary, String> {
    if bytes.is_empty() {
        return Err("empty file: expected an XML or binary property list".into());
    }
    let value = plist::Value::from_reader(std::io::Cursor::new(bytes))
        .map_err(|e| format!("not a valid property list: {}", plist_error(&e, bytes)))?;
    match value {
        plist::Value::Dictionary(d) => Ok(d),
        other => Err(format!(
            "the root must be a dictionary, found {}",
            personality::type_name(&other)
        )),
    }
}

/// A plist parser's error in words, with the line and column where the
/// parser stopped (the crate says only `Kind (offset N)`).
pub fn plist_error(e: &plist::Error, bytes: &[u8]) -> String {
    let text = e.to_string();
    let (kind, offset) = match text.rsplit_once(" (offset ") {
        Some((kind, rest)) => (
            kind.to_owned(),
            rest.trim_end_matches(')').parse::<usize>().ok(),
        ),
        None => (text.clone(), None),
    };
    let name = kind.split([' ', '{']).next().unwrap_or_default();
    let what = match name {
        "UnexpectedEof" | "UnexpectedEndOfEventStream" => {
            "the file ends in the middle of a value (an element not closed?)".to_owned()
        }
        "UnknownXmlElement" => {
            "an element property lists do not have (they have dict, key, array, string, integer, real, true, false, data and date)".to_owned()
        }
        "UnclosedXmlElement" => "an element that is not closed".to_owned(),
        "UnexpectedXmlOpeningTag" => "an element where none may start (inside a value)".to_owned(),
        "UnexpectedXmlCharactersExpectedElement" => "text where an element was expected".to_owned(),
        "InvalidXmlSyntax" => "XML that is not well-formed (a tag not closed, or closed by another)".to_owned(),
        "InvalidXmlUtf8" => "bytes that are not UTF-8".to_owned(),
        "InvalidIntegerString" => "an <integer> that is not a whole number".to_owned(),
        "InvalidRealString" => "a <real> that is not a number".to_owned(),
        "InvalidDataString" => "<data> that is not base64".to_owned(),
        "InvalidDateString" => "a <date> that is not ISO 8601 (2026-01-31T12:00:00Z)".to_owned(),
        "UnexpectedEventType" => format!("a value of the wrong kind where the structure needs another ({kind})"),
        "InvalidMagic" => "neither XML nor a binary property list (bplist00)".to_owned(),
        _ => kind.clone(),
    };
    let Some(offset) = offset.filter(|o| *o <= bytes.len()) else {
        return what;
    };
    let before = &bytes[..offset];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    let column = String::from_utf8_lossy(&bytes[line_start..offset])
        .chars()
        .count()
        + 1;
    let line_end = bytes[line_start..]
        .iter()
        .position(|b| *b == b'\n')
        .map_or(bytes.len(), |i| line_start + i);
    let shown = String::from_utf8_lossy(&bytes[line_start..line_end]);
    let shown = shown.trim();
    if shown.is_empty() || shown.len() > 120 {
        format!("line {line}, column {column}: {what}")
    } else {
        format!("line {line}, column {column} (`{shown}`): {what}")
    }
}

/// Refuses an `Info.plist` that still names Xcode build variables: it was
/// copied from a project, not built.
pub fn check_built(info: &plist::Dictionary) -> Result<(), String> {
    let names = xcode::unresolved(info);
    if names.is_empty() {
        return Ok(());
    }
    Err(format!(
        "unresolved Xcode build variables: {}; this Info.plist was never built: `driverkit build` substitutes them \
         (PRODUCT_BUNDLE_IDENTIFIER from [package.metadata.driverkit] bundle-identifier in Cargo.toml or --bundle-id, \
         PRODUCT_NAME and EXECUTABLE_NAME from --product-name or the package name)",
        names
            .iter()
            .map(|n| format!("$({n})"))
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

fn required_string(
    path: &Path,
    dict: &plist::Dictionary,
    key: &str,
) -> Result<String, BundleError> {
    match dict.get(key) {
        None => Err(BundleError::new(path, "missing".into()).key(key)),
        Some(plist::Value::String(s)) if s.is_empty() => {
            Err(BundleError::new(path, "empty string".into()).key(key))
        }
        Some(plist::Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(BundleError::new(
            path,
            format!("expected a string, found {}", personality::type_name(other)),
        )
        .key(key)),
    }
}

/// The longest bundle identifier accepted (Apple's limit for
/// `CFBundleIdentifier` is not written down; a DNS name is 253).
pub const MAX_IDENTIFIER: usize = 255;

/// Whether `id` is a bundle identifier: reverse-DNS characters (letters,
/// digits, `-`, `_`, `.`), no empty part, at most [`MAX_IDENTIFIER`]
/// bytes. It names folders of the extension store, so a `/` or `..` in
/// it would name others.
pub fn check_identifier(id: &str) -> Result<(), String> {
    if id.len() > MAX_IDENTIFIER {
        return Err(format!(
            "{} bytes, more than the {MAX_IDENTIFIER} a bundle identifier may have",
            id.len()
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "{id:?} holds {c:?}; a bundle identifier is reverse-DNS: letters, digits, '-', '_' and '.' (like com.example.MyDriver)"
        ));
    }
    if id.split('.').any(str::is_empty) {
        return Err(format!(
            "{id:?} has an empty part (a leading, trailing or doubled '.'); a bundle identifier is reverse-DNS, like com.example.MyDriver"
        ));
    }
    Ok(())
}

fn check_executable(exe: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(exe)
        .map_err(|e| format!("executable {} is missing: {e}", exe.display()))?;
    if !meta.is_file() {
        return Err(format!("executable {} is not a file", exe.display()));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(format!(
            "executable {} is not executable (mode {:o})",
            exe.display(),
            meta.permissions().mode() & 0o777
        ));
    }
    Ok(())
}

#[cfg(test)]
mod plist_error_tests {
    #[test]
    fn a_broken_info_plist_is_told_by_line_and_column_in_words() {
        let bytes = b"<?xml version=\"1.0\"?>\n<plist version=\"1.0\">\n<dict>\n  <key>A</key>\n  <strin>x</string>\n</dict>\n</plist>\n";
        let e = super::parse_info(bytes).unwrap_err();
        assert!(
            e.starts_with("not a valid property list: line 5, column "),
            "{e}"
        );
        assert!(
            e.contains("<strin>x</string>") && e.contains("element property lists do not have"),
            "{e}"
        );
        assert!(
            !e.contains("offset") && !e.contains("UnknownXmlElement"),
            "{e}"
        );
        let e = super::parse_info(b"<plist><dict><key>A</key><integer>x</integer></dict></plist>")
            .unwrap_err();
        assert!(
            e.contains("line 1, column") && e.contains("not a whole number"),
            "{e}"
        );
        let e = super::parse_info(b"<plist><dict><key>A</key>").unwrap_err();
        assert!(
            e.contains("ends in the middle") || e.contains("not closed"),
            "{e}"
        );
    }
}

use std::fmt;
use std::path::{Path, PathBuf};

/// Why a bundle was refused: where, and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleError {
    /// The bundle directory.
    pub bundle: PathBuf,
    /// The file at fault, when it is one file (usually `Info.plist`).
    pub file: Option<PathBuf>,
    /// The personality at fault, by its name in `IOKitPersonalities`.
    pub personality: Option<String>,
    /// The key at fault.
    pub key: Option<String>,
    /// What was wrong: expected versus found.
    pub problem: String,
}

impl BundleError {
    pub(crate) fn new(bundle: &Path, problem: String) -> Self {
        BundleError {
            bundle: bundle.to_owned(),
            file: None,
            personality: None,
            key: None,
            problem,
        }
    }
    pub(crate) fn in_file(mut self, file: &Path) -> Self {
        self.file.get_or_insert_with(|| file.to_owned());
        self
    }
    pub(crate) fn personality(mut self, name: &str) -> Self {
        self.personality = Some(name.to_owned());
        self
    }
    pub(crate) fn key(mut self, key: &str) -> Self {
        self.key = Some(match self.key.take() {
            // Nested keys read outside in: IOPropertyMatch.VendorID.
            Some(inner) => format!("{key}.{inner}"),
            None => key.to_owned(),
        });
        self
    }
}

impl fmt::Display for BundleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bundle {}", self.bundle.display())?;
        if let Some(file) = &self.file {
            write!(f, ", file {}", file.display())?;
        }
        if let Some(p) = &self.personality {
            write!(f, ", personality {p:?}")?;
        }
        if let Some(k) = &self.key {
            write!(f, ", key {k}")?;
        }
        write!(f, ": {}", self.problem)
    }
}

impl std::error::Error for BundleError {}

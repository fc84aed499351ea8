//! Bundle signatures. A signed dext holds, in `_CodeSignature/`:
//!
//! - `CodeResources`: one line per file of the bundle, `<sha256 hex>  <path>`,
//!   sorted by path (the format of `sha256sum`, so `sha256sum -c` checks it
//!   too); every regular file except `_CodeSignature/` itself;
//! - `Signature`: `<public key hex> <ed25519 signature hex>` of
//!   `CodeResources`'s bytes.
//!
//! [`verify`] recomputes the manifest and names the first file that
//! changed, appeared or went missing, then checks the signature, then
//! whether the key is one the caller trusts. Keys are 32 random bytes
//! ([`SigningKey`]), kept as hex in a file only its owner reads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, Verifier};
use sha2::{Digest, Sha256};

/// The folder of a bundle that holds its signature.
pub const DIR: &str = "_CodeSignature";
const MANIFEST: &str = "CodeResources";
const SIGNATURE: &str = "Signature";

/// A signing key.
pub struct SigningKey(ed25519_dalek::SigningKey);

impl SigningKey {
    /// A new random key.
    pub fn generate() -> std::io::Result<SigningKey> {
        let mut seed = [0u8; 32];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut seed)?;
        Ok(SigningKey(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }

    /// Reads a key file (64 hex digits); the error names the file.
    pub fn load(path: &Path) -> Result<SigningKey, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let seed: [u8; 32] = from_hex(text.trim())
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                format!(
                    "{}: expected a signing key of 64 hex digits",
                    path.display()
                )
            })?;
        Ok(SigningKey(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }

    /// The key as its file holds it.
    pub fn to_hex(&self) -> String {
        hex(self.0.as_bytes())
    }

    /// The public half, as hex: what a system trusts.
    pub fn public_hex(&self) -> String {
        hex(self.0.verifying_key().as_bytes())
    }
}

/// Writes `bundle`'s manifest and its signature with `key`.
pub fn sign(bundle: &Path, key: &SigningKey) -> Result<(), String> {
    let manifest = manifest(bundle)?;
    let dir = bundle.join(DIR);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let signature = key.0.sign(manifest.as_bytes());
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
    };
    write(MANIFEST, &manifest)?;
    write(
        SIGNATURE,
        &format!("{} {}\n", key.public_hex(), hex(&signature.to_bytes())),
    )
}

/// Why a bundle's signature does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Unsigned,
    /// A file differs from the manifest: changed, added or missing.
    Altered {
        file: PathBuf,
        how: &'static str,
    },
    /// The manifest or signature files are malformed, or the signature does
    /// not match the manifest.
    BadSignature(String),
    /// Signed, intact, but by a key the system does not trust.
    Untrusted {
        key: String,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Unsigned => write!(f, "the bundle is not signed (no {DIR}/{SIGNATURE})"),
            Refusal::Altered { file, how } => {
                write!(
                    f,
                    "file {} {how} since the bundle was signed",
                    file.display()
                )
            }
            Refusal::BadSignature(why) => write!(f, "the signature does not hold: {why}"),
            Refusal::Untrusted { key } => {
                write!(f, "signed by key {key}, which this system does not trust")
            }
        }
    }
}

/// Checks `bundle` against its signature, and the key against `trusted`
/// (public keys as hex). Returns the signing key's hex.
pub fn verify(bundle: &Path, trusted: &[String]) -> Result<String, Refusal> {
    let dir = bundle.join(DIR);
    let sig_text = match std::fs::read_to_string(dir.join(SIGNATURE)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Refusal::Unsigned),
        Err(e) => return Err(Refusal::BadSignature(format!("{SIGNATURE}: {e}"))),
    };
    let signed = std::fs::read_to_string(dir.join(MANIFEST))
        .map_err(|e| Refusal::BadSignature(format!("{MANIFEST}: {e}")))?;
    let now = manifest(bundle).map_err(Refusal::BadSignature)?;
    if let Some((file, how)) = first_difference(&signed, &now) {
        return Err(Refusal::Altered { file, how });
    }
    let mut words = sig_text.split_whitespace();
    let (Some(key_hex), Some(sig_hex), None) = (words.next(), words.next(), words.next()) else {
        return Err(Refusal::BadSignature(format!(
            "{SIGNATURE}: expected \"<public key hex> <signature hex>\""
        )));
    };
    let key: [u8; 32] = from_hex(key_hex)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            Refusal::BadSignature(format!("{SIGNATURE}: a public key is 64 hex digits"))
        })?;
    let sig: [u8; 64] = from_hex(sig_hex)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            Refusal::BadSignature(format!("{SIGNATURE}: a signature is 128 hex digits"))
        })?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&key)
        .map_err(|_| Refusal::BadSignature("not an ed25519 public key".into()))?;
    key.verify(
        signed.as_bytes(),
        &ed25519_dalek::Signature::from_bytes(&sig),
    )
    .map_err(|_| Refusal::BadSignature(format!("{MANIFEST} was not signed by key {key_hex}")))?;
    let key_hex = key_hex.to_ascii_lowercase();
    if !trusted.iter().any(|t| t.eq_ignore_ascii_case(&key_hex)) {
        return Err(Refusal::Untrusted { key: key_hex });
    }
    Ok(key_hex)
}

/// `<sha256>  <path>` for every file of `bundle` but the signature's own.
fn manifest(bundle: &Path) -> Result<String, String> {
    let mut files = BTreeMap::new();
    walk(bundle, Path::new(""), &mut files)?;
    Ok(files
        .iter()
        .map(|(path, hash)| format!("{hash}  {}\n", path.display()))
        .collect())
}

fn walk(root: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, String>) -> Result<(), String> {
    let dir = root.join(rel);
    let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
        let rel = rel.join(entry.file_name());
        if rel == Path::new(DIR) {
            continue;
        }
        let path = root.join(&rel);
        // Followed: a bundle's executable may be a link, and what runs is
        // what it points to.
        let meta = std::fs::metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if meta.is_dir() {
            walk(root, &rel, out)?;
        } else {
            let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            out.insert(rel, hex(&Sha256::digest(&bytes)));
        }
    }
    Ok(())
}

/// The first path, in order, whose line differs between two manifests.
fn first_difference(signed: &str, now: &str) -> Option<(PathBuf, &'static str)> {
    let parse = |text: &str| -> BTreeMap<PathBuf, String> {
        text.lines()
            .filter_map(|l| l.split_once("  "))
            .map(|(h, p)| (PathBuf::from(p), h.to_owned()))
            .collect()
    };
    let (signed, now) = (parse(signed), parse(now));
    let mut paths: Vec<&PathBuf> = signed.keys().chain(now.keys()).collect();
    paths.sort();
    paths.dedup();
    paths
        .into_iter()
        .find_map(|p| match (signed.get(p), now.get(p)) {
            (Some(a), Some(b)) if a != b => Some((p.clone(), "changed")),
            (Some(_), None) => Some((p.clone(), "is missing")),
            (None, Some(_)) => Some((p.clone(), "was added")),
            _ => None,
        })
}

fn hex(bytes: &[u8]) -> String {
    driverkit_wire::hex::encode(bytes, "")
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    driverkit_wire::hex::decode(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let b = dir.path().join("com.example.dext");
        std::fs::create_dir_all(b.join("Resources")).unwrap();
        std::fs::write(b.join("Info.plist"), "info").unwrap();
        std::fs::write(b.join("Driver"), "exe").unwrap();
        std::fs::write(b.join("Resources/firmware.bin"), [1, 2, 3]).unwrap();
        (dir, b)
    }

    #[test]
    fn a_signed_bundle_verifies_under_a_trusted_key_only() {
        let (_d, b) = bundle();
        assert_eq!(verify(&b, &[]), Err(Refusal::Unsigned));
        let key = SigningKey::generate().unwrap();
        sign(&b, &key).unwrap();
        assert_eq!(verify(&b, &[key.public_hex()]), Ok(key.public_hex()));
        assert_eq!(
            verify(&b, &[]),
            Err(Refusal::Untrusted {
                key: key.public_hex()
            })
        );
        let manifest = std::fs::read_to_string(b.join(DIR).join(MANIFEST)).unwrap();
        assert!(
            manifest.contains("  Resources/firmware.bin\n"),
            "{manifest}"
        );
    }

    #[test]
    fn an_altered_bundle_names_the_file() {
        let (_d, b) = bundle();
        let key = SigningKey::generate().unwrap();
        sign(&b, &key).unwrap();
        let trusted = [key.public_hex()];
        std::fs::write(b.join("Resources/firmware.bin"), [1, 2, 4]).unwrap();
        let e = verify(&b, &trusted).unwrap_err();
        assert_eq!(
            e.to_string(),
            "file Resources/firmware.bin changed since the bundle was signed"
        );
        std::fs::write(b.join("Resources/firmware.bin"), [1, 2, 3]).unwrap();
        std::fs::write(b.join("extra"), "x").unwrap();
        assert!(verify(&b, &trusted)
            .unwrap_err()
            .to_string()
            .contains("file extra was added"));
        std::fs::remove_file(b.join("extra")).unwrap();
        std::fs::remove_file(b.join("Driver")).unwrap();
        assert!(verify(&b, &trusted)
            .unwrap_err()
            .to_string()
            .contains("file Driver is missing"));
        std::fs::write(b.join("Driver"), "exe").unwrap();
        assert_eq!(verify(&b, &trusted), Ok(key.public_hex()));
        // A manifest edited to match altered files no longer matches the
        // signature.
        std::fs::write(b.join("Driver"), "evil").unwrap();
        let forged = std::fs::read_to_string(b.join(DIR).join(MANIFEST))
            .unwrap()
            .replace(
                &hex(&Sha256::digest(b"exe")),
                &hex(&Sha256::digest(b"evil")),
            );
        std::fs::write(b.join(DIR).join(MANIFEST), forged).unwrap();
        assert!(matches!(
            verify(&b, &trusted),
            Err(Refusal::BadSignature(_))
        ));
    }

    #[test]
    fn keys_round_trip_through_their_file() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate().unwrap();
        std::fs::write(dir.path().join("k"), key.to_hex()).unwrap();
        assert_eq!(
            SigningKey::load(&dir.path().join("k"))
                .unwrap()
                .public_hex(),
            key.public_hex()
        );
        std::fs::write(dir.path().join("bad"), "zz").unwrap();
        assert!(SigningKey::load(&dir.path().join("bad"))
            .err()
            .unwrap()
            .contains("64 hex digits"));
    }

    proptest::proptest! {
        #[test]
        fn any_signature_files_are_refused_not_a_panic(manifest in ".{0,200}", signature in ".{0,200}") {
            let (_d, b) = bundle();
            std::fs::create_dir_all(b.join(DIR)).unwrap();
            std::fs::write(b.join(DIR).join(MANIFEST), &manifest).unwrap();
            std::fs::write(b.join(DIR).join(SIGNATURE), &signature).unwrap();
            proptest::prop_assert!(verify(&b, &[]).is_err());
        }
    }
}

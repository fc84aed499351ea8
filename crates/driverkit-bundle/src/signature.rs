//! Bundle signatures. A signed dext holds, in `_CodeSignature/` and
//! nothing else there:
//!
//! - `CodeResources`: the manifest. A first line `driverkit-manifest 2`,
//!   then one line per regular file of the bundle (every one but
//!   `_CodeSignature/`'s own), sorted by path:
//!   `<sha256 hex> <mode> <path>`, where the mode is `0755` for a file
//!   with an execute bit and `0644` for any other: the modes the system
//!   gives the store's copy, so what may run is signed too.
//! - `Signature`: `<public key hex> <ed25519 signature hex>` of
//!   `CodeResources`'s bytes.
//!
//! [`verify`] reads the bundle as hostile (`untrusted`: no link followed,
//! no special file, bounded sizes), checks the signature, then recomputes
//! the manifest and names the first file that changed, appeared, went
//! missing or changed mode, then whether the key is one the caller
//! trusts. Keys are 32 random bytes ([`SigningKey`]), kept as hex in a
//! file only its owner reads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use std::os::fd::AsFd;

use ed25519_dalek::{Signer, Verifier};
use sha2::{Digest, Sha256};

use crate::untrusted;

/// The folder of a bundle that holds its signature.
pub const DIR: &str = "_CodeSignature";
pub const MANIFEST: &str = "CodeResources";
pub const SIGNATURE: &str = "Signature";

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
    /// `_CodeSignature/` holds a file that is not the signature's own (the
    /// manifest does not cover that folder, so nothing there is signed).
    Smuggled {
        file: PathBuf,
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
            Refusal::Smuggled { file } => write!(
                f,
                "{} is not part of the signature: {DIR}/ holds only {MANIFEST} and {SIGNATURE}, and nothing else there is signed",
                file.display()
            ),
        }
    }
}

/// Checks `bundle` against its signature, and the key against `trusted`
/// (public keys as hex). Returns the signing key's hex.
pub fn verify(bundle: &Path, trusted: &[String]) -> Result<String, Refusal> {
    let dir = untrusted::open_dir(bundle).map_err(Refusal::BadSignature)?;
    let read = |name: &str, limit: u64| {
        untrusted::read_in(dir.as_fd(), &Path::new(DIR).join(name), limit, bundle)
            .map_err(Refusal::BadSignature)
    };
    let Some(sig_bytes) = read(SIGNATURE, 4096)? else {
        return Err(Refusal::Unsigned);
    };
    let sig_text = String::from_utf8(sig_bytes)
        .map_err(|_| Refusal::BadSignature(format!("{SIGNATURE}: not UTF-8 text")))?;
    let signed = read(MANIFEST, MAX_MANIFEST)?
        .ok_or_else(|| Refusal::BadSignature(format!("{MANIFEST} is missing")))?;
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
    key.verify(&signed, &ed25519_dalek::Signature::from_bytes(&sig))
        .map_err(|_| {
            Refusal::BadSignature(format!("{MANIFEST} was not signed by key {key_hex}"))
        })?;
    let signed = String::from_utf8(signed)
        .map_err(|_| Refusal::BadSignature(format!("{MANIFEST}: not UTF-8 text")))?;
    let signed =
        parse_manifest(&signed).map_err(|e| Refusal::BadSignature(format!("{MANIFEST}: {e}")))?;
    let (now, extra) = files(dir.as_fd(), bundle).map_err(Refusal::BadSignature)?;
    if let Some(file) = extra {
        return Err(Refusal::Smuggled { file });
    }
    if let Some((file, how)) = first_difference(&signed, &now) {
        return Err(Refusal::Altered { file, how });
    }
    let key_hex = key_hex.to_ascii_lowercase();
    if !trusted.iter().any(|t| t.eq_ignore_ascii_case(&key_hex)) {
        return Err(Refusal::Untrusted { key: key_hex });
    }
    Ok(key_hex)
}

/// The largest manifest read (a bundle's most files, a line each).
const MAX_MANIFEST: u64 = 4 << 20;

/// The first line of a manifest of this format.
const MANIFEST_HEADER: &str = "driverkit-manifest 2";

/// A file as a manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// SHA-256, lowercase hex.
    pub sha256: String,
    /// Whether the store's copy is executable (mode `0755`, else `0644`).
    pub executable: bool,
}

fn mode_text(executable: bool) -> &'static str {
    if executable {
        "0755"
    } else {
        "0644"
    }
}

/// A manifest's text for `files`.
pub fn emit_manifest(files: &BTreeMap<PathBuf, Listed>) -> String {
    let mut text = format!("{MANIFEST_HEADER}\n");
    for (path, f) in files {
        text.push_str(&format!(
            "{} {} {}\n",
            f.sha256,
            mode_text(f.executable),
            path.display()
        ));
    }
    text
}

/// Parses a manifest; errors name the line. Paths are relative, inside
/// the bundle (no `..`, `.` or empty part), outside `_CodeSignature/`,
/// sorted and unique.
pub fn parse_manifest(text: &str) -> Result<BTreeMap<PathBuf, Listed>, String> {
    let mut lines = text.split_inclusive('\n');
    match lines.next() {
        Some(l) if l == format!("{MANIFEST_HEADER}\n") => {}
        _ => {
            return Err(format!(
                "line 1: expected {MANIFEST_HEADER:?} (a manifest of an older format: sign the bundle again with `driverkit build --sign`)"
            ))
        }
    }
    let mut files = BTreeMap::new();
    let mut last: Option<String> = None;
    for (i, line) in lines.enumerate() {
        let n = i + 2;
        let line = line
            .strip_suffix('\n')
            .ok_or_else(|| format!("line {n}: not ended by a newline"))?;
        let mut parts = line.splitn(3, ' ');
        let (Some(hash), Some(mode), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!(
                "line {n}: expected \"<sha256 hex> <0644|0755> <path>\""
            ));
        };
        if hash.len() != 64 || !hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(format!(
                "line {n}: expected a SHA-256 as 64 lowercase hex digits, found {hash:?}"
            ));
        }
        let executable = match mode {
            "0755" => true,
            "0644" => false,
            other => {
                return Err(format!(
                    "line {n}: expected mode 0644 or 0755, found {other:?}"
                ))
            }
        };
        let bad_part = path
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..");
        if bad_part || path.chars().any(char::is_control) {
            return Err(format!(
                "line {n}: {path:?} is not a path inside the bundle"
            ));
        }
        if path == DIR || path.starts_with(&format!("{DIR}/")) {
            return Err(format!(
                "line {n}: {path:?} is the signature's own folder, which a manifest does not list"
            ));
        }
        if last.as_deref().is_some_and(|l| l >= path) {
            return Err(format!(
                "line {n}: {path:?} is out of order or repeated (paths are sorted, each once)"
            ));
        }
        last = Some(path.to_owned());
        files.insert(
            PathBuf::from(path),
            Listed {
                sha256: hash.to_owned(),
                executable,
            },
        );
    }
    Ok(files)
}

/// The bundle's files as a manifest lists them, and the first file of
/// `_CodeSignature/` that is not the signature's own, if any.
fn files(
    dir: std::os::fd::BorrowedFd<'_>,
    shown: &Path,
) -> Result<(BTreeMap<PathBuf, Listed>, Option<PathBuf>), String> {
    let mut files = BTreeMap::new();
    let mut extra = None;
    untrusted::walk(dir, shown, &mut |rel, item| {
        if rel.starts_with(DIR) {
            if smuggled(rel) {
                extra.get_or_insert_with(|| rel.to_owned());
            }
            return Ok(());
        }
        match item {
            untrusted::Item::Dir => {}
            untrusted::Item::File {
                mut file,
                executable,
                ..
            } => {
                let mut hasher = Sha256::new();
                let mut buffer = vec![0u8; 64 << 10];
                loop {
                    let n = std::io::Read::read(&mut file, &mut buffer)
                        .map_err(|e| format!("{}: {e}", shown.join(rel).display()))?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buffer[..n]);
                }
                files.insert(
                    rel.to_owned(),
                    Listed {
                        sha256: hex(&hasher.finalize()),
                        executable,
                    },
                );
            }
        }
        Ok(())
    })?;
    Ok((files, extra))
}

/// Whether `rel` (a path in a bundle) sits in `_CodeSignature/` without
/// being one of the signature's own two files: nothing there is signed.
pub fn smuggled(rel: &Path) -> bool {
    rel.strip_prefix(DIR).is_ok_and(|inside| {
        !inside.as_os_str().is_empty()
            && inside != Path::new(MANIFEST)
            && inside != Path::new(SIGNATURE)
    })
}

/// The manifest of every file of `bundle` but the signature's own.
fn manifest(bundle: &Path) -> Result<String, String> {
    let dir = untrusted::open_dir(bundle)?;
    let (files, _) = files(dir.as_fd(), bundle)?;
    Ok(emit_manifest(&files))
}

/// The first path, in order, whose line differs between two manifests.
fn first_difference(
    signed: &BTreeMap<PathBuf, Listed>,
    now: &BTreeMap<PathBuf, Listed>,
) -> Option<(PathBuf, &'static str)> {
    let mut paths: Vec<&PathBuf> = signed.keys().chain(now.keys()).collect();
    paths.sort();
    paths.dedup();
    paths
        .into_iter()
        .find_map(|p| match (signed.get(p), now.get(p)) {
            (Some(a), Some(b)) if a.sha256 != b.sha256 => Some((p.clone(), "changed")),
            (Some(a), Some(b)) if a.executable != b.executable => {
                Some((p.clone(), "changed mode (executable or not)"))
            }
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
            manifest.starts_with("driverkit-manifest 2\n")
                && manifest.contains(" 0644 Resources/firmware.bin\n"),
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
    fn a_changed_execute_bit_and_a_file_beside_the_signature_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let (_d, b) = bundle();
        let key = SigningKey::generate().unwrap();
        sign(&b, &key).unwrap();
        let trusted = [key.public_hex()];
        std::fs::set_permissions(
            b.join("Resources/firmware.bin"),
            PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        assert_eq!(
            verify(&b, &trusted).unwrap_err().to_string(),
            "file Resources/firmware.bin changed mode (executable or not) since the bundle was signed"
        );
        std::fs::set_permissions(
            b.join("Resources/firmware.bin"),
            PermissionsExt::from_mode(0o644),
        )
        .unwrap();
        // The manifest does not cover _CodeSignature/: anything else there
        // would ride along unsigned.
        std::fs::write(b.join(DIR).join("sh"), "#!").unwrap();
        assert_eq!(
            verify(&b, &trusted),
            Err(Refusal::Smuggled {
                file: Path::new(DIR).join("sh")
            })
        );
        std::fs::remove_file(b.join(DIR).join("sh")).unwrap();
        assert_eq!(verify(&b, &trusted), Ok(key.public_hex()));
    }

    #[test]
    fn manifests_parse_as_they_are_emitted_and_bad_lines_are_named() {
        let mut files = BTreeMap::new();
        files.insert(
            PathBuf::from("a b/c"),
            Listed {
                sha256: "0".repeat(64),
                executable: true,
            },
        );
        files.insert(
            PathBuf::from("z"),
            Listed {
                sha256: "f".repeat(64),
                executable: false,
            },
        );
        assert_eq!(parse_manifest(&emit_manifest(&files)).unwrap(), files);
        let h = "0".repeat(64);
        for (text, says) in [
            (String::new(), "line 1"),
            (
                format!("{MANIFEST_HEADER}\n{h} 4755 x\n"),
                "line 2: expected mode",
            ),
            (
                format!("{MANIFEST_HEADER}\n{h} 0644 ../x\n"),
                "not a path inside",
            ),
            (
                format!("{MANIFEST_HEADER}\n{h} 0644 {DIR}/x\n"),
                "signature's own folder",
            ),
            (
                format!("{MANIFEST_HEADER}\n{h} 0644 b\n{h} 0644 a\n"),
                "line 3: \"a\" is out of order",
            ),
            (
                format!("{MANIFEST_HEADER}\n{h} 0644 a"),
                "not ended by a newline",
            ),
        ] {
            let e = parse_manifest(&text).unwrap_err();
            assert!(e.contains(says), "{text:?}: {e}");
        }
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
        fn any_manifest_text_parses_or_is_refused_and_round_trips(text in "(driverkit-manifest 2\n)?[0-9a-f ./x\n]{0,200}") {
            if let Ok(files) = parse_manifest(&text) {
                proptest::prop_assert_eq!(parse_manifest(&emit_manifest(&files)).unwrap(), files);
            }
        }

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

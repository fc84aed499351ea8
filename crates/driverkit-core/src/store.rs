//! The extension store: the drivers the system has activated, copied out of
//! their apps so that they outlive the app and a restart of the daemon.
//!
//! ```text
//! <root>/extensions/
//!     store.json                      the one commit point (see below)
//!     staging/                        copies in progress
//!     <bundle-id>/<generation>.dext/  each activated copy
//! ```
//!
//! **Crash safety.** `store.json` is the only thing that says what is
//! installed, and it only ever changes by an atomic rename of a fully
//! written and synced file. A new copy is written under `staging/`, synced,
//! and renamed to its generation's name *before* the record that names it
//! is committed; an old copy is deleted only *after* the record that no
//! longer names it is committed. So a `kill -9` at any instant leaves
//! either the old record with its old copy intact, or the new record with
//! its new copy intact; `open` then deletes whatever no record names
//! (half copies, superseded generations).
//!
//! **What the store holds is the system's.** The store belongs to the
//! daemon's user and only it may write there (folders `0755`, `staging/`
//! `0700`: a dext's own user must read its copy, nobody else needs
//! staging). A copy is made from an app's bundle read as hostile
//! (`driverkit_bundle::untrusted`: no link followed, only regular files and
//! folders, nothing setuid, setgid or world-writable, bounded sizes) and
//! written with modes the system sets: `0644`, or `0755` for a file with an
//! execute bit (which the signed manifest records). `_CodeSignature/` is
//! copied only with the signature's own two files in it.
//!
//! **No lock across a user's files.** Copying reads the user's files, so
//! it runs outside the store's lock: [`Store::reserve`] takes a generation
//! (locked, brief), [`stage`] copies into `staging/` (no lock), and
//! [`Store::install`] renames the checked copy into place (locked, brief).
//!
//! This module knows files and records; what activation means (versions,
//! signatures, approval, matching) is `sysext`'s.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use driverkit_bundle::signature;
use serde::{Deserialize, Serialize};

/// Where an extension is in its life, as `systemextensionsctl` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExtensionState {
    /// Activated, but a person has not approved it yet: not loaded.
    WaitingForUser,
    /// Activated and approved: loaded and matching.
    Enabled,
    /// Deactivated: stopped, and removed at the next start of the daemon
    /// (macOS removes it at the next reboot).
    TerminatedWaitingToUninstall,
}

impl ExtensionState {
    /// The state as `systemextensionsctl list` prints it.
    pub fn label(self) -> &'static str {
        match self {
            ExtensionState::WaitingForUser => "[activated waiting for user]",
            ExtensionState::Enabled => "[activated enabled]",
            ExtensionState::TerminatedWaitingToUninstall => "[terminated waiting to uninstall]",
        }
    }
}

/// One installed extension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extension {
    pub bundle_id: String,
    /// `CFBundleVersion`.
    pub version: String,
    /// `CFBundleShortVersionString`.
    pub short_version: String,
    pub state: ExtensionState,
    /// Which copy: `<bundle-id>/<generation>.dext`.
    pub generation: u64,
    /// The app it was activated from.
    pub app: PathBuf,
    /// The public key that signed it, if it was signed.
    pub signed_by: Option<String>,
    /// The user whose request activated it: with `app`, who may deactivate
    /// or replace it besides an administrator. `None` in records written
    /// before it was kept: administrators only.
    #[serde(default)]
    pub owner: Option<u32>,
}

/// Everything `store.json` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Records {
    /// `driverkit sysext developer on`: unsigned bundles and equal or lower
    /// versions are accepted.
    pub developer_mode: bool,
    /// Public keys (hex) whose signatures the system accepts.
    pub trusted_keys: Vec<String>,
    pub extensions: BTreeMap<String, Extension>,
    /// The next copy's generation; never reused.
    pub next_generation: u64,
}

/// The store on disk.
pub struct Store {
    dir: PathBuf,
    records: Records,
}

/// Why the extension store could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file or folder of the store, or of the bundle being copied.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `store.json` does not parse.
    #[error("{}: not a store record file: {source}", path.display())]
    Records {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A folder of the store that is not the daemon user's folder: someone
    /// else could change the store under it.
    #[error(
        "{}: {found} (uid {owner}), not a folder of the daemon's user (uid {me}); the extension store must be the daemon's alone: remove it, or start the daemon with another --root",
        path.display()
    )]
    NotOurs {
        path: PathBuf,
        found: &'static str,
        owner: u32,
        me: u32,
    },
    /// The bundle identifier cannot name a folder of the store.
    #[error("bundle identifier: {0}")]
    Identifier(String),
    /// The bundle was refused as it was read (a link, a FIFO, a size, a
    /// mode: `driverkit_bundle::untrusted` says which).
    #[error("{0}")]
    Bundle(String),
    /// `_CodeSignature/` holds a file the signature does not cover.
    #[error(
        "{}: {} holds only {} and {}; nothing else there is signed",
        path.display(),
        signature::DIR,
        signature::MANIFEST,
        signature::SIGNATURE
    )]
    Unsigned { path: PathBuf },
    /// A file of the bundle grew while it was copied.
    #[error("{}: grew past {limit} bytes while it was copied", path.display())]
    Grew { path: PathBuf, limit: u64 },
}

impl StoreError {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
        move |source| StoreError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

impl From<StoreError> for String {
    fn from(e: StoreError) -> String {
        e.to_string()
    }
}

const RECORDS: &str = "store.json";
const STAGING: &str = "staging";

impl Store {
    /// Opens (or creates) the store at `dir`, finishing what a crash
    /// interrupted: copies no record names are deleted, and extensions
    /// waiting to uninstall are removed.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(StoreError::io(dir))?;
        own_folder(dir, 0o755)?;
        let file = dir.join(RECORDS);
        let records = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StoreError::Records {
                path: file.clone(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Records::default(),
            Err(e) => return Err(StoreError::io(&file)(e)),
        };
        let mut store = Store {
            dir: dir.to_owned(),
            records,
        };
        let uninstalling: Vec<String> = store
            .records
            .extensions
            .values()
            .filter(|e| e.state == ExtensionState::TerminatedWaitingToUninstall)
            .map(|e| e.bundle_id.clone())
            .collect();
        if !uninstalling.is_empty() {
            let mut next = store.records.clone();
            for id in &uninstalling {
                next.extensions.remove(id);
            }
            store.commit(next)?;
        }
        store.collect_garbage();
        Ok(store)
    }

    pub fn records(&self) -> &Records {
        &self.records
    }

    /// Where an extension's copy is.
    pub fn bundle_path(&self, e: &Extension) -> PathBuf {
        self.dir
            .join(&e.bundle_id)
            .join(format!("{}.dext", e.generation))
    }

    /// Where a generation of `bundle_id` lives.
    pub fn copy_path(&self, bundle_id: &str, generation: u64) -> PathBuf {
        self.dir.join(bundle_id).join(format!("{generation}.dext"))
    }

    /// Copies the bundle at `source` into the store as a new generation of
    /// `bundle_id`, synced, under its final name; nothing names it until a
    /// record does (`commit`). Returns the generation. (Activation does
    /// the same in three steps, so that the copy runs unlocked.)
    pub fn add_copy(&mut self, source: &Path, bundle_id: &str) -> Result<u64, StoreError> {
        let generation = self.reserve()?;
        let staged = self.staged_path(bundle_id, generation)?;
        let from = driverkit_bundle::untrusted::open_dir(source).map_err(StoreError::Bundle)?;
        stage(std::os::fd::AsFd::as_fd(&from), source, &staged)?;
        self.install(bundle_id, generation)?;
        Ok(generation)
    }

    /// Takes the next generation for a copy. Committed first, so that a
    /// crash never reuses a generation whose half copy is still on disk.
    pub fn reserve(&mut self) -> Result<u64, StoreError> {
        let generation = self.records.next_generation;
        let mut next = self.records.clone();
        next.next_generation += 1;
        self.commit(next)?;
        Ok(generation)
    }

    /// Where generation `generation` of `bundle_id` is staged: under
    /// `staging/` (made here, `0700`), nothing there yet.
    pub fn staged_path(&self, bundle_id: &str, generation: u64) -> Result<PathBuf, StoreError> {
        driverkit_bundle::check_identifier(bundle_id)
            .map_err(|e| StoreError::Identifier(e.to_string()))?;
        let staging = self.dir.join(STAGING);
        own_folder(&staging, 0o700)?;
        let staged = staging.join(format!("{bundle_id}-{generation}.dext"));
        let _ = std::fs::remove_dir_all(&staged);
        Ok(staged)
    }

    /// Renames a staged copy (checked by the caller) into place.
    pub fn install(&mut self, bundle_id: &str, generation: u64) -> Result<PathBuf, StoreError> {
        let staged = self
            .dir
            .join(STAGING)
            .join(format!("{bundle_id}-{generation}.dext"));
        let home = self.dir.join(bundle_id);
        own_folder(&home, 0o755)?;
        let target = home.join(format!("{generation}.dext"));
        std::fs::rename(&staged, &target).map_err(StoreError::io(&target))?;
        sync_dir(&home)?;
        crash_point("store-staged");
        Ok(target)
    }

    /// Makes `next` the store's records: written to a temporary file,
    /// synced, renamed over `store.json`, the directory synced. Then copies
    /// no record names any more are deleted.
    pub fn commit(&mut self, next: Records) -> Result<(), StoreError> {
        let file = self.dir.join(RECORDS);
        let temporary = self.dir.join(format!("{RECORDS}.new"));
        let bytes = serde_json::to_vec_pretty(&next).map_err(|source| StoreError::Records {
            path: file.clone(),
            source,
        })?;
        let mut f = std::fs::File::create(&temporary).map_err(StoreError::io(&temporary))?;
        f.write_all(&bytes)
            .and_then(|()| f.sync_all())
            .map_err(StoreError::io(&temporary))?;
        std::fs::rename(&temporary, &file).map_err(StoreError::io(&file))?;
        sync_dir(&self.dir)?;
        self.records = next;
        crash_point("store-committed");
        self.collect_garbage();
        Ok(())
    }

    /// Deletes staging leftovers and every copy no record names.
    fn collect_garbage(&self) {
        let _ = std::fs::remove_dir_all(self.dir.join(STAGING));
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if !path.is_dir() {
                continue;
            }
            let id = entry.file_name().to_string_lossy().into_owned();
            let keep = self.records.extensions.get(&id).map(|e| e.generation);
            let Ok(copies) = std::fs::read_dir(&path) else {
                continue;
            };
            for copy in copies.flatten() {
                let name = copy.file_name().to_string_lossy().into_owned();
                if keep.is_none_or(|g| name != format!("{g}.dext")) {
                    let _ = std::fs::remove_dir_all(copy.path());
                }
            }
            if keep.is_none() {
                let _ = std::fs::remove_dir(&path);
            }
        }
    }
}

/// Makes the store's folder `dir` if it is not there, and makes sure it is
/// the daemon user's with `mode`: a folder someone else owns could be
/// changed under the store.
fn own_folder(dir: &Path, mode: u32) -> Result<(), StoreError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(StoreError::io(dir)(e)),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(StoreError::io(dir))?;
    let me = rustix::process::geteuid().as_raw();
    if !meta.is_dir() || meta.uid() != me {
        return Err(StoreError::NotOurs {
            path: dir.to_owned(),
            found: if meta.is_dir() {
                "a folder of another user"
            } else {
                "not a folder"
            },
            owner: meta.uid(),
            me,
        });
    }
    if meta.mode() & 0o7777 != mode {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
            .map_err(StoreError::io(dir))?;
    }
    Ok(())
}

/// Copies the bundle `from` (an app's, whose path is `source`: read as
/// hostile) to `to`, which must not exist: folders `0755`, files `0644` or
/// `0755` (any execute bit), every file synced. `_CodeSignature/` may hold
/// only the signature's own files. Takes no lock: the caller holds none
/// either.
pub fn stage(
    from: std::os::fd::BorrowedFd<'_>,
    source: &Path,
    to: &Path,
) -> Result<(), StoreError> {
    use driverkit_bundle::untrusted;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let create_dir = |dir: &Path| {
        std::fs::create_dir(dir)
            .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)))
            .map_err(StoreError::io(dir))
    };
    create_dir(to)?;
    let mut dirs = vec![to.to_owned()];
    // The walk's callback answers in the bundle crate's words (a String);
    // what went wrong on our side is kept here, typed.
    let mut ours: Option<StoreError> = None;
    let mut copy = |rel: &Path, item: untrusted::Item| -> Result<(), StoreError> {
        if signature::smuggled(rel) {
            return Err(StoreError::Unsigned {
                path: source.join(rel),
            });
        }
        let target = to.join(rel);
        match item {
            untrusted::Item::Dir => {
                create_dir(&target)?;
                dirs.push(target);
            }
            untrusted::Item::File {
                mut file,
                executable,
                ..
            } => {
                let mode = if executable { 0o755 } else { 0o644 };
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .open(&target)
                    .map_err(StoreError::io(&target))?;
                let limit = untrusted::MAX_FILE;
                let n = std::io::copy(&mut std::io::Read::take(&mut file, limit + 1), &mut out)
                    .map_err(StoreError::io(&source.join(rel)))?;
                if n > limit {
                    return Err(StoreError::Grew {
                        path: source.join(rel),
                        limit,
                    });
                }
                // The umask does not decide what the dext's user may read.
                out.set_permissions(std::fs::Permissions::from_mode(mode))
                    .and_then(|()| out.sync_all())
                    .map_err(StoreError::io(&target))?;
            }
        }
        Ok(())
    };
    let copied = untrusted::walk(from, source, &mut |rel, item| {
        copy(rel, item).map_err(|e| {
            let words = e.to_string();
            ours = Some(e);
            words
        })
    });
    if let Err(words) = copied {
        let _ = std::fs::remove_dir_all(to);
        return Err(ours.take().unwrap_or(StoreError::Bundle(words)));
    }
    for dir in dirs.iter().rev() {
        sync_dir(dir)?;
    }
    crash_point("store-copied");
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(StoreError::io(dir))
}

/// Fault injection for the crash-safety tests: with
/// `DRIVERKIT_CRASH_AT=<point>` in its environment, the daemon dies like
/// `kill -9` (no unwinding, no cleanup) the `DRIVERKIT_CRASH_COUNT`-th time
/// (default first) it passes `point`.
pub(crate) fn crash_point(point: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static PASSES: AtomicU64 = AtomicU64::new(0);
    if std::env::var("DRIVERKIT_CRASH_AT").is_ok_and(|p| p == point) {
        let nth = std::env::var("DRIVERKIT_CRASH_COUNT")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(1);
        if PASSES.fetch_add(1, Ordering::SeqCst) + 1 >= nth {
            let _ = rustix::process::kill_process(
                rustix::process::getpid(),
                rustix::process::Signal::KILL,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(dir: &Path, content: &str) -> PathBuf {
        let b = dir.join("src.dext");
        std::fs::create_dir_all(b.join("Resources")).unwrap();
        std::fs::write(b.join("Info.plist"), content).unwrap();
        std::fs::write(b.join("Resources/x"), content).unwrap();
        b
    }

    fn record(id: &str, generation: u64, state: ExtensionState) -> Extension {
        Extension {
            bundle_id: id.into(),
            version: "1".into(),
            short_version: "1.0".into(),
            state,
            generation,
            app: "/A.app".into(),
            signed_by: None,
            owner: None,
        }
    }

    #[test]
    fn a_copy_exists_only_once_a_record_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let src = bundle(dir.path(), "v1");
        let root = dir.path().join("store");
        let mut store = Store::open(&root).unwrap();
        let g = store.add_copy(&src, "com.x").unwrap();
        // Not committed: a restart drops the copy.
        drop(store);
        let mut store = Store::open(&root).unwrap();
        assert!(!root.join("com.x").exists());
        let g2 = store.add_copy(&src, "com.x").unwrap();
        assert_ne!(g, g2, "generations are never reused");
        let mut next = store.records().clone();
        next.extensions
            .insert("com.x".into(), record("com.x", g2, ExtensionState::Enabled));
        store.commit(next).unwrap();
        let store = Store::open(&root).unwrap();
        let e = &store.records().extensions["com.x"];
        assert_eq!(
            std::fs::read_to_string(store.bundle_path(e).join("Resources/x")).unwrap(),
            "v1"
        );
    }

    #[test]
    fn replacing_deletes_the_old_copy_after_the_commit_and_uninstalling_waits_for_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let mut store = Store::open(&root).unwrap();
        let g1 = store.add_copy(&bundle(dir.path(), "v1"), "com.x").unwrap();
        let mut next = store.records().clone();
        next.extensions
            .insert("com.x".into(), record("com.x", g1, ExtensionState::Enabled));
        store.commit(next).unwrap();
        let old = store.bundle_path(&store.records().extensions["com.x"]);
        let g2 = store.add_copy(&bundle(dir.path(), "v2"), "com.x").unwrap();
        assert!(
            old.exists(),
            "the old copy stays until the new record commits"
        );
        let mut next = store.records().clone();
        next.extensions
            .insert("com.x".into(), record("com.x", g2, ExtensionState::Enabled));
        store.commit(next).unwrap();
        assert!(!old.exists());

        let mut next = store.records().clone();
        next.extensions.get_mut("com.x").unwrap().state =
            ExtensionState::TerminatedWaitingToUninstall;
        store.commit(next).unwrap();
        assert!(root.join("com.x").exists());
        let store = Store::open(&root).unwrap();
        assert!(store.records().extensions.is_empty());
        assert!(!root.join("com.x").exists());
    }

    #[test]
    fn a_corrupt_record_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(RECORDS), "{").unwrap();
        let e = Store::open(dir.path()).err().unwrap();
        assert!(matches!(e, StoreError::Records { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("store.json: not a store record file"),
            "{e}"
        );
    }
}

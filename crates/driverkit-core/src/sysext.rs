//! System extension requests: activation, approval, deactivation and the
//! store's housekeeping, with the outcomes and error codes of Apple's
//! SystemExtensions framework (`OSSystemExtensionRequest`).
//!
//! Activation: the app must be entitled to install (`system-extension.install`),
//! the dext must sit in the app's `Contents/Library/SystemExtensions` and
//! validate, its entitlements must cover its personalities, and it must be
//! signed by a trusted key unless developer mode is on. Then the versions
//! decide: a higher version asks the requester (replace or cancel); an equal
//! one is "already active" (developer mode replaces it); a lower one is
//! refused (developer mode asks). A first activation waits for a person's
//! approval; a replacement of an approved extension takes over at once:
//! the old version's services stop, the new version loads and matching runs
//! again, without restarting the daemon.

use driverkit_wire::sync::Locked;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use driverkit_bundle::{location, signature, untrusted, Bundle, Entitlements, Version};
use serde::{Deserialize, Serialize};

use crate::lifecycle::CoreError;
use crate::store::{self, Extension, ExtensionState, Records, Store};
use crate::Core;

/// `OSSystemExtensionError` codes.
pub use driverkit_wire::sysext_error as code;

/// A failed request: an `OSSystemExtensionError` code and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub code: i64,
    pub reason: String,
    pub message: String,
}

impl Failure {
    fn new(code: i64, message: impl Into<String>) -> Failure {
        let reason = code::reason(code);
        Failure {
            code,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {}): {}", self.reason, self.code, self.message)
    }
}

impl std::error::Error for Failure {}

/// What the requester answers when an extension would replace another
/// (`actionForReplacingExtension`); `Ask` makes the request return the
/// question instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Replacement {
    #[default]
    Ask,
    Replace,
    Cancel,
}

/// An extension's versions, as a replacement question shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versions {
    pub version: String,
    pub short_version: String,
}

/// How a request that did not fail ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Done; the extension is now in `state`.
    Completed { state: String },
    /// Done, nothing changed: this version is active already.
    AlreadyActive { state: String },
    /// The requester must decide: ask again with `Replace` or `Cancel`.
    ReplacementQuestion { existing: Versions, new: Versions },
}

fn versions(b: &Bundle) -> Versions {
    Versions {
        version: b.version().to_string(),
        short_version: b.short_version().to_string(),
    }
}

/// Who makes a request on the store: the app of the asking process (its
/// identity checked by `peer`), the user, and whether an administrator.
#[derive(Debug, Clone)]
pub struct Requester {
    pub app: Option<PathBuf>,
    pub uid: u32,
    pub admin: bool,
}

impl Requester {
    /// The daemon's own user (programmatic requests, tests).
    pub fn administrator() -> Requester {
        Requester {
            app: None,
            uid: rustix::process::geteuid().as_raw(),
            admin: true,
        }
    }

    /// Whether this requester may change `existing` (deactivate, replace):
    /// an administrator, or the app that activated it, run by the same
    /// user. The refusal names the rule.
    fn may_change(&self, existing: &Extension, what: &str) -> Result<(), Failure> {
        if self.admin {
            return Ok(());
        }
        let same_app = self.app.as_deref() == Some(existing.app.as_path());
        if same_app && existing.owner == Some(self.uid) {
            return Ok(());
        }
        Err(Failure::new(
            code::AUTHORIZATION_REQUIRED,
            format!(
                "{what} {}: it was activated from {}{}; only that app, run by that user, or an administrator may {what} it (this request is from {}, uid {})",
                existing.bundle_id,
                existing.app.display(),
                existing
                    .owner
                    .map_or_else(|| " by an administrator".to_owned(), |u| format!(" by uid {u}")),
                self.app
                    .as_deref()
                    .map_or_else(|| "no app".to_owned(), |a| a.display().to_string()),
                self.uid
            ),
        ))
    }
}

/// Refuses what only a development-signed dext may carry outside
/// developer mode; in it, warns.
fn check_development_only(bundle: &Bundle, developer: bool) -> Result<(), Failure> {
    let Some(what) = bundle
        .entitlements
        .as_ref()
        .and_then(|e| e.development_only())
    else {
        return Ok(());
    };
    if developer {
        tracing::warn!(
            "sysext   {}: {what}; accepted in developer mode only",
            bundle.identifier
        );
        return Ok(());
    }
    Err(Failure::new(
        code::FORBIDDEN_BY_SYSTEM_POLICY,
        format!(
            "{}: {what}; the system accepts it only in developer mode (`driverkit sysext developer on`)",
            bundle.identifier
        ),
    ))
}

impl Core {
    /// Runs `f` on the store; a store that failed to open answers why.
    /// Developer mode, and the keys whose signatures the system accepts:
    /// what decides whether an app's or a dext's own word counts. With no
    /// store, neither (no developer mode, no key).
    pub(crate) fn trust(&self) -> (bool, Vec<String>) {
        let guard = self.inner.store.locked();
        match &*guard {
            Ok(store) => (
                store.records().developer_mode,
                store.records().trusted_keys.clone(),
            ),
            Err(_) => (false, Vec::new()),
        }
    }

    /// `load PATH`: a bundle straight from a path skips activation,
    /// approval and the signature check, so only developer mode allows it.
    pub fn load_for_developer(&self, path: &Path) -> Result<String, CoreError> {
        // Where it is says more than whether it may be loaded.
        driverkit_bundle::location::containing_app(path).map_err(CoreError::NotInAnApp)?;
        if !self.trust().0 {
            return Err(CoreError::NeedsDeveloperMode(path.to_owned()));
        }
        self.load_bundle(path)
    }

    fn with_store<R>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<R, Failure>,
    ) -> Result<R, Failure> {
        let mut guard = self.inner.store.locked();
        match &mut *guard {
            Ok(store) => f(store),
            Err(e) => Err(Failure::new(
                code::UNKNOWN,
                format!("the extension store is unavailable: {e}"),
            )),
        }
    }

    /// Changes the store's records as `f` says and commits them; nothing
    /// changes when `f` fails.
    fn change_records<R>(
        &self,
        f: impl FnOnce(&Store, &mut Records) -> Result<R, Failure>,
    ) -> Result<R, Failure> {
        self.with_store(|s| {
            let mut next = s.records().clone();
            let r = f(s, &mut next)?;
            s.commit(next).map_err(|e| Failure::new(code::UNKNOWN, e))?;
            Ok(r)
        })
    }

    /// One request at a time: versions are compared and the store changed
    /// under this guard.
    fn one_request(&self) -> std::sync::MutexGuard<'_, ()> {
        self.inner.sysext_lock.locked()
    }

    /// The store's records.
    pub fn extensions(&self) -> Result<Records, Failure> {
        self.with_store(|s| Ok(s.records().clone()))
    }

    /// `OSSystemExtensionRequest.activationRequest(forExtensionWithIdentifier:)`
    /// from the app at `app`, asked by an administrator.
    pub fn activate(
        &self,
        app: &Path,
        bundle_id: &str,
        replacement: Replacement,
    ) -> Result<Outcome, Failure> {
        self.activate_for(app, bundle_id, replacement, &Requester::administrator())
    }

    /// [`Core::activate`] asked by `who`; an app that asks may then not
    /// approve it, and only an administrator or the app that activated an
    /// extension (same user, same signing key) may replace it.
    ///
    /// The app's files are read as hostile and without any lock held: the
    /// dext is copied into the store's staging first, and everything after
    /// reads only that copy, which is all that will ever run.
    pub fn activate_for(
        &self,
        app: &Path,
        bundle_id: &str,
        replacement: Replacement,
        who: &Requester,
    ) -> Result<Outcome, Failure> {
        driverkit_bundle::check_identifier(bundle_id).map_err(|e| {
            Failure::new(code::VALIDATION_FAILED, format!("bundle identifier: {e}"))
        })?;
        if !app.is_absolute() {
            return Err(Failure::new(
                code::UNSUPPORTED_PARENT_BUNDLE_LOCATION,
                format!(
                    "{}: an app is named by its absolute path (the system does not share the requester's working directory)",
                    app.display()
                ),
            ));
        }
        let app_dir = match untrusted::open_dir(app) {
            Ok(d) if app.extension().is_some_and(|e| e == "app") => d,
            _ => {
                return Err(Failure::new(
                    code::UNSUPPORTED_PARENT_BUNDLE_LOCATION,
                    format!("{} is not an app (a NAME.app directory)", app.display()),
                ))
            }
        };
        let app_entitlements = Entitlements::load(
            &app.join("Contents")
                .join(driverkit_bundle::entitlements::FILE),
        )
        .map_err(|e| Failure::new(code::VALIDATION_FAILED, e))?;
        if !app_entitlements.system_extension_install {
            return Err(Failure::new(
                code::MISSING_ENTITLEMENT,
                format!(
                    "the app {} lacks the entitlement com.apple.developer.system-extension.install",
                    app.display()
                ),
            ));
        }
        let dext = location::dext_in_app(app, bundle_id);
        let within = dext.strip_prefix(app).unwrap_or(&dext);
        let source = untrusted::open_dir_in(app_dir.as_fd(), within, app)
            .map_err(|e| Failure::new(code::VALIDATION_FAILED, e))?
            .ok_or_else(|| {
                Failure::new(
                    code::EXTENSION_NOT_FOUND,
                    format!(
                        "no {bundle_id}.dext in {}/{}",
                        app.display(),
                        location::SYSTEM_EXTENSIONS
                    ),
                )
            })?;
        let (generation, staged) = self.with_store(|s| {
            let g = s.reserve().map_err(|e| Failure::new(code::UNKNOWN, e))?;
            let staged = s
                .staged_path(bundle_id, g)
                .map_err(|e| Failure::new(code::UNKNOWN, e))?;
            Ok((g, staged))
        })?;
        let result = store::stage(source.as_fd(), &dext, &staged)
            .map_err(|e| {
                tracing::warn!("sysext   {bundle_id}: refused: {e}");
                Failure::new(code::VALIDATION_FAILED, e)
            })
            .and_then(|()| {
                self.activate_staged(app, &dext, &staged, generation, bundle_id, replacement, who)
            });
        if result.is_err() || !matches!(result, Ok(Outcome::Completed { .. })) {
            let _ = std::fs::remove_dir_all(&staged);
        }
        // Recorded once the request has been validated and done: the app
        // that asked may not approve it.
        if let (Some(r), Ok(Outcome::Completed { .. })) = (&who.app, &result) {
            self.inner
                .requesters
                .locked()
                .insert(bundle_id.to_owned(), r.to_owned());
        }
        result
    }

    /// The rest of an activation, on the staged copy: validation,
    /// entitlements, signature, then (one request at a time) versions, who
    /// may replace what, and the commit.
    #[allow(clippy::too_many_arguments)]
    fn activate_staged(
        &self,
        app: &Path,
        dext: &Path,
        staged: &Path,
        generation: u64,
        bundle_id: &str,
        replacement: Replacement,
        who: &Requester,
    ) -> Result<Outcome, Failure> {
        // Messages name the app's dext, which the user knows, not staging.
        let shown =
            |e: String| e.replace(&staged.display().to_string(), &dext.display().to_string());
        let bundle = Bundle::load(staged)
            .map_err(|e| Failure::new(code::VALIDATION_FAILED, shown(e.to_string())))?;
        if bundle.identifier != bundle_id {
            return Err(Failure::new(
                code::VALIDATION_FAILED,
                format!(
                    "{}: CFBundleIdentifier is {:?}, expected {bundle_id:?} (the bundle's name)",
                    dext.display(),
                    bundle.identifier
                ),
            ));
        }
        bundle
            .check_entitlements()
            .map_err(|e| Failure::new(code::MISSING_ENTITLEMENT, shown(e.to_string())))?;
        let (developer, trusted) = self.trust();
        check_development_only(&bundle, developer)?;
        let signed_by = match signature::verify(staged, &trusted) {
            Ok(key) => Some(key),
            Err(_) if developer => None,
            Err(refusal) => {
                return Err(Failure::new(
                    code::CODE_SIGNATURE_INVALID,
                    format!(
                        "{}: {} (sign it with `driverkit build --sign KEY` and trust the key with `driverkit sysext trust KEY.pub`, or, while developing, `driverkit sysext developer on`)",
                        dext.display(),
                        shown(refusal.to_string())
                    ),
                ))
            }
        };
        let _one = self.one_request();
        let existing = self
            .with_store(|s| Ok(s.records().extensions.get(bundle_id).cloned()))?
            .filter(|e| e.state != ExtensionState::TerminatedWaitingToUninstall);
        if let Some(old) = &existing {
            let old_v = (
                Version::parse(&old.version).unwrap_or_default(),
                Version::parse(&old.short_version).unwrap_or_default(),
            );
            let new_v = (bundle.version(), bundle.short_version());
            let question = Outcome::ReplacementQuestion {
                existing: Versions {
                    version: old.version.clone(),
                    short_version: old.short_version.clone(),
                },
                new: versions(&bundle),
            };
            match (new_v.cmp(&old_v), developer) {
                (std::cmp::Ordering::Equal, false) => {
                    return Ok(Outcome::AlreadyActive {
                        state: old.state.label().into(),
                    })
                }
                (std::cmp::Ordering::Less, false) => {
                    return Err(Failure::new(
                        code::FORBIDDEN_BY_SYSTEM_POLICY,
                        format!(
                            "{bundle_id} {} ({}) is lower than the active {} ({}); developer mode allows going back",
                            new_v.1, new_v.0, old.short_version, old.version
                        ),
                    ))
                }
                _ => {}
            }
            who.may_change(old, "replace")?;
            if !who.admin && old.signed_by.is_some() && old.signed_by != signed_by {
                return Err(Failure::new(
                    code::AUTHORIZATION_REQUIRED,
                    format!(
                        "replace {bundle_id}: the active version was signed by key {}, this one {}; only an administrator may replace an extension with one signed by another key",
                        old.signed_by.as_deref().unwrap_or("-"),
                        signed_by.as_deref().map_or_else(|| "is unsigned".to_owned(), |k| format!("by key {k}"))
                    ),
                ));
            }
            match replacement {
                Replacement::Ask => return Ok(question),
                Replacement::Cancel => {
                    return Err(Failure::new(
                        code::REQUEST_CANCELED,
                        format!("the requester kept {bundle_id} {}", old.short_version),
                    ))
                }
                Replacement::Replace => {}
            }
        }
        // An approved extension stays approved across versions.
        let state = match &existing {
            Some(old) if old.state == ExtensionState::Enabled => ExtensionState::Enabled,
            _ => ExtensionState::WaitingForUser,
        };
        self.with_store(|s| {
            s.install(bundle_id, generation)
                .map(drop)
                .map_err(|e| Failure::new(code::UNKNOWN, e))
        })?;
        let installed = self.change_records(|s, next| {
            let record = Extension {
                bundle_id: bundle_id.to_owned(),
                version: bundle.version().to_string(),
                short_version: bundle.short_version().to_string(),
                state,
                generation,
                app: app.to_owned(),
                signed_by,
                owner: Some(who.uid),
            };
            let path = s.bundle_path(&record);
            next.extensions.insert(bundle_id.to_owned(), record);
            Ok(path)
        })?;
        tracing::info!(
            "sysext   {bundle_id} {} ({}) activated from {} by uid {}: {}",
            bundle.short_version(),
            bundle.version(),
            app.display(),
            who.uid,
            state.label()
        );
        if state == ExtensionState::Enabled {
            self.replace_running(bundle_id, &installed)?;
        }
        Ok(Outcome::Completed {
            state: state.label().into(),
        })
    }

    /// `driverkit sysext approve`: the person allows the extension; it
    /// loads and matches.
    pub fn approve(&self, bundle_id: &str) -> Result<Outcome, Failure> {
        self.approve_by(bundle_id, None)
    }

    /// [`Core::approve`] by a process of the app at `approver`, if any: the
    /// app that requested the activation can never approve it.
    pub fn approve_by(&self, bundle_id: &str, approver: Option<&Path>) -> Result<Outcome, Failure> {
        let requester = self.inner.requesters.locked().get(bundle_id).cloned();
        if let (Some(a), Some(r)) = (approver, &requester) {
            if a == r.as_path() {
                return Err(Failure::new(
                    code::AUTHORIZATION_REQUIRED,
                    format!(
                        "approve: {} requested {bundle_id} and cannot approve its own request; a person approves it with `driverkit sysext approve`",
                        r.display()
                    ),
                ));
            }
        }
        let _one = self.one_request();
        let path = self.change_records(|s, next| {
            let e = next
                .extensions
                .get_mut(bundle_id)
                .filter(|e| e.state == ExtensionState::WaitingForUser)
                .ok_or_else(|| {
                    Failure::new(
                        code::EXTENSION_NOT_FOUND,
                        format!("no extension {bundle_id} is waiting for approval"),
                    )
                })?;
            e.state = ExtensionState::Enabled;
            Ok(s.bundle_path(e))
        })?;
        tracing::info!("sysext   {bundle_id} approved");
        self.replace_running(bundle_id, &path)?;
        Ok(Outcome::Completed {
            state: ExtensionState::Enabled.label().into(),
        })
    }

    /// `OSSystemExtensionRequest.deactivationRequest`: the extension's
    /// services stop, and it waits to be uninstalled at the next start.
    pub fn deactivate(&self, bundle_id: &str) -> Result<Outcome, Failure> {
        self.deactivate_for(bundle_id, &Requester::administrator())
    }

    /// [`Core::deactivate`] asked by `who`: an administrator, or the app
    /// that activated it, run by the same user.
    pub fn deactivate_for(&self, bundle_id: &str, who: &Requester) -> Result<Outcome, Failure> {
        let _one = self.one_request();
        self.change_records(|_, next| {
            let e = next
                .extensions
                .get_mut(bundle_id)
                .filter(|e| e.state != ExtensionState::TerminatedWaitingToUninstall)
                .ok_or_else(|| {
                    Failure::new(
                        code::EXTENSION_NOT_FOUND,
                        format!("no active extension {bundle_id}"),
                    )
                })?;
            who.may_change(e, "deactivate")?;
            e.state = ExtensionState::TerminatedWaitingToUninstall;
            Ok(())
        })?;
        self.unload_bundle(bundle_id);
        tracing::info!("sysext   {bundle_id} deactivated");
        Ok(Outcome::Completed {
            state: ExtensionState::TerminatedWaitingToUninstall.label().into(),
        })
    }

    /// `driverkit sysext uninstall`: stopped and removed now.
    pub fn uninstall(&self, bundle_id: &str) -> Result<(), Failure> {
        let _one = self.one_request();
        self.change_records(|_, next| {
            next.extensions.remove(bundle_id).map(drop).ok_or_else(|| {
                Failure::new(
                    code::EXTENSION_NOT_FOUND,
                    format!("no extension {bundle_id}"),
                )
            })
        })?;
        self.unload_bundle(bundle_id);
        tracing::info!("sysext   {bundle_id} uninstalled");
        Ok(())
    }

    /// `driverkit sysext reset`: every extension stopped and removed.
    pub fn reset_extensions(&self) -> Result<usize, Failure> {
        let _one = self.one_request();
        let ids: Vec<String> = self.change_records(|_, next| {
            Ok(std::mem::take(&mut next.extensions).into_keys().collect())
        })?;
        for id in &ids {
            self.unload_bundle(id);
        }
        Ok(ids.len())
    }

    /// `driverkit sysext developer on|off`.
    pub fn set_developer_mode(&self, on: bool) -> Result<(), Failure> {
        let _one = self.one_request();
        self.change_records(|_, next| {
            next.developer_mode = on;
            Ok(())
        })
    }

    /// `driverkit sysext trust KEY.pub`: signatures by this public key
    /// (hex) are accepted.
    pub fn trust_key(&self, public_hex: &str) -> Result<(), Failure> {
        let key = public_hex.trim().to_ascii_lowercase();
        if key.len() != 64 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Failure::new(
                code::VALIDATION_FAILED,
                format!("expected a public key of 64 hex digits, found {key:?}"),
            ));
        }
        let _one = self.one_request();
        self.change_records(|_, next| {
            if !next.trusted_keys.contains(&key) {
                next.trusted_keys.push(key);
            }
            Ok(())
        })
    }

    /// Loads the enabled extensions at start.
    pub(crate) fn load_extensions(&self) {
        let enabled: Vec<(String, std::path::PathBuf)> = self
            .with_store(|s| {
                Ok(s.records()
                    .extensions
                    .values()
                    .filter(|e| e.state == ExtensionState::Enabled)
                    .map(|e| (e.bundle_id.clone(), s.bundle_path(e)))
                    .collect())
            })
            .unwrap_or_default();
        for (id, path) in enabled {
            if let Err(e) = self.add_bundle(&path) {
                tracing::error!("sysext   {id}: its stored copy does not load: {e}");
            }
        }
    }

    /// Stops whatever runs of `bundle_id` and loads the copy at `path`,
    /// which matches again everywhere.
    fn replace_running(&self, bundle_id: &str, path: &Path) -> Result<(), Failure> {
        self.unload_bundle(bundle_id);
        self.add_bundle(path)
            .map(drop)
            .map_err(|e| Failure::new(code::VALIDATION_FAILED, e))
    }
}

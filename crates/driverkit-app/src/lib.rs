//! The app side of driverkit: what an app that ships a driver links, the
//! way a macOS app uses the SystemExtensions framework.
//!
//! An app asks the system to activate the driver inside it, and the system
//! answers through a delegate, as `OSSystemExtensionRequest` does:
//!
//! ```no_run
//! use driverkit_app::*;
//!
//! struct Installer;
//! impl OSSystemExtensionRequestDelegate for Installer {
//!     fn action_for_replacing_extension(
//!         &mut self,
//!         existing: &ExtensionVersions,
//!         new: &ExtensionVersions,
//!     ) -> ReplacementAction {
//!         println!("replacing {} with {}", existing.short_version, new.short_version);
//!         ReplacementAction::Replace
//!     }
//!     fn request_needs_user_approval(&mut self) {
//!         println!("approve it with `driverkit sysext approve com.example.driver`");
//!     }
//! }
//!
//! let system = System::default();
//! let request = OSSystemExtensionRequest::activation("/opt/Example.app", "com.example.driver");
//! match request.submit(&system, &mut Installer) {
//!     Ok(result) => println!("{result:?}"),
//!     Err(e) => eprintln!("activation failed: {e}"),
//! }
//! ```
//!
//! This crate speaks the daemon's control protocol (JSON lines on its
//! socket) and depends on nothing of the daemon's.

#![warn(missing_docs)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

pub mod iokit;

use serde::Deserialize;
use serde_json::{json, Value};

/// The system an app talks to: a daemon's state directory.
#[derive(Debug, Clone)]
pub struct System {
    root: PathBuf,
}

impl Default for System {
    /// The daemon every tool finds by default: `DRIVERKIT_ROOT`, else the
    /// user's own if it runs, else the system service's.
    fn default() -> System {
        System::at(driverkit_wire::root::client_root())
    }
}

impl System {
    /// The daemon whose state directory is `root` (`driverkit --root`).
    pub fn at(root: impl Into<PathBuf>) -> System {
        System { root: root.into() }
    }

    /// The daemon's control socket.
    pub(crate) fn socket(&self) -> PathBuf {
        self.root.join(driverkit_wire::root::CONTROL_SOCKET)
    }

    /// Connects to the daemon. Talking to a daemon of another user (root's,
    /// say), this process first becomes non-dumpable: the daemon trusts it
    /// as its app, and its user's other processes must not be able to
    /// ptrace it or read its memory to act in its name.
    pub(crate) fn connect(&self) -> std::io::Result<UnixStream> {
        let path = self.socket();
        let owner = std::fs::metadata(&path).map(|m| std::os::unix::fs::MetadataExt::uid(&m));
        if owner.is_ok_and(|uid| uid != rustix::process::geteuid().as_raw()) {
            rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)?;
        }
        UnixStream::connect(path)
    }

    /// Sends a streaming request; the reader is past the daemon's answer.
    pub(crate) fn stream(
        &self,
        request: Value,
    ) -> Result<BufReader<UnixStream>, driverkit_wire::IOReturn> {
        use driverkit_wire::IOReturn;
        let mut stream = self.connect().map_err(|_| IOReturn::NOT_READY)?;
        stream
            .write_all(format!("{request}\n").as_bytes())
            .map_err(|_| IOReturn::NOT_READY)?;
        let mut reader = BufReader::new(stream);
        let mut answer = String::new();
        reader
            .read_line(&mut answer)
            .map_err(|_| IOReturn::NOT_READY)?;
        if !answer.starts_with("{\"ok\"") {
            return Err(IOReturn::NOT_READY);
        }
        Ok(reader)
    }

    pub(crate) fn call(&self, request: Value) -> Result<Value, OSSystemExtensionError> {
        let path = self.socket();
        let unreachable = |e: std::io::Error| OSSystemExtensionError {
            code: 1,
            reason: "unknown".into(),
            message: format!(
                "no driverkit daemon is running at {} ({e}); start one with `driverkit run`",
                path.display()
            ),
        };
        let mut stream = self.connect().map_err(unreachable)?;
        let mut line = request.to_string();
        line.push('\n');
        stream.write_all(line.as_bytes()).map_err(unreachable)?;
        let mut answer = String::new();
        BufReader::new(&stream)
            .read_line(&mut answer)
            .map_err(unreachable)?;
        let answer: Value = serde_json::from_str(&answer).map_err(|e| OSSystemExtensionError {
            code: 1,
            reason: "unknown".into(),
            message: format!("the daemon's answer is not JSON: {e}"),
        })?;
        match answer {
            Value::Object(mut o) if o.contains_key("ok") => Ok(o.remove("ok").unwrap_or_default()),
            other => Err(OSSystemExtensionError {
                code: 1,
                reason: "unknown".into(),
                message: other
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("the daemon refused the request")
                    .to_owned(),
            }),
        }
    }
}

/// An extension's versions (`CFBundleVersion`, `CFBundleShortVersionString`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ExtensionVersions {
    /// `CFBundleVersion`.
    pub version: String,
    /// `CFBundleShortVersionString`.
    pub short_version: String,
}

/// The delegate's answer when an extension would replace another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplacementAction {
    /// Replace the active extension with the new one.
    Replace,
    /// Keep the active extension; the request fails.
    Cancel,
}

/// How the system reports back on a request.
pub trait OSSystemExtensionRequestDelegate {
    /// An extension with this bundle ID is active already: replace it?
    fn action_for_replacing_extension(
        &mut self,
        existing: &ExtensionVersions,
        new: &ExtensionVersions,
    ) -> ReplacementAction;

    /// The extension waits for a person's approval
    /// (`driverkit sysext approve BUNDLE_ID`).
    fn request_needs_user_approval(&mut self) {}
}

/// How a request that did not fail ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestResult {
    /// Done: the extension is in `state` (`[activated enabled]`...).
    Completed {
        /// The extension's state, as `driverkit sysext list` shows it.
        state: String,
    },
    /// This version is active already; nothing changed.
    AlreadyActive {
        /// The extension's state, as `driverkit sysext list` shows it.
        state: String,
    },
}

impl std::fmt::Display for RequestResult {
    /// For a person: `activated, now [activated enabled]`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestResult::Completed { state } => write!(f, "done, now {state}"),
            RequestResult::AlreadyActive { state } => {
                write!(
                    f,
                    "this version is active already ({state}); nothing changed. To run a new build, \
                     raise CFBundleVersion, or uninstall the old one first (`driverkit sysext uninstall ID`), \
                     or turn on developer mode (`driverkit sysext developer on`), in which an equal version replaces the old"
                )
            }
        }
    }
}

/// A failed request: an `OSSystemExtensionError` code, its name, and what
/// was wrong.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct OSSystemExtensionError {
    /// The `OSSystemExtensionError` code.
    pub code: i64,
    /// The code's name (`extensionNotFound`, ...).
    pub reason: String,
    /// What was wrong, in words.
    pub message: String,
}

impl std::fmt::Display for OSSystemExtensionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {}): {}", self.reason, self.code, self.message)
    }
}

impl std::error::Error for OSSystemExtensionError {}

/// `OSSystemExtensionError` codes.
pub use driverkit_wire::sysext_error as error_code;

enum Kind {
    Activation { app: PathBuf },
    Deactivation,
}

/// A request to activate or deactivate a driver.
pub struct OSSystemExtensionRequest {
    kind: Kind,
    bundle_id: String,
}

impl OSSystemExtensionRequest {
    /// Activate the dext `bundle_id` that the app at `app` carries in its
    /// `Contents/Library/SystemExtensions`.
    pub fn activation(app: impl AsRef<Path>, bundle_id: &str) -> OSSystemExtensionRequest {
        // The daemon does not share this process's working directory.
        let app = std::path::absolute(app.as_ref()).unwrap_or_else(|_| app.as_ref().to_owned());
        OSSystemExtensionRequest {
            kind: Kind::Activation { app },
            bundle_id: bundle_id.to_owned(),
        }
    }

    /// Deactivate `bundle_id`.
    pub fn deactivation(bundle_id: &str) -> OSSystemExtensionRequest {
        OSSystemExtensionRequest {
            kind: Kind::Deactivation,
            bundle_id: bundle_id.to_owned(),
        }
    }

    /// Sends the request and reports back through `delegate`.
    pub fn submit(
        &self,
        system: &System,
        delegate: &mut dyn OSSystemExtensionRequestDelegate,
    ) -> Result<RequestResult, OSSystemExtensionError> {
        let mut replacement = "ask";
        loop {
            let request = match &self.kind {
                Kind::Activation { app } => json!({
                    "op": "sysext_activate",
                    "app": app,
                    "bundle_id": self.bundle_id,
                    "replacement": replacement,
                }),
                Kind::Deactivation => json!({
                    "op": "sysext_deactivate",
                    "bundle_id": self.bundle_id,
                }),
            };
            let answer = system.call(request)?;
            if let Some(failure) = answer.get("failure") {
                return Err(parse(failure)?);
            }
            let outcome = answer
                .get("outcome")
                .ok_or_else(|| protocol("no outcome"))?;
            if let Some(q) = outcome.get("replacement_question") {
                let existing: ExtensionVersions = parse(&q["existing"])?;
                let new: ExtensionVersions = parse(&q["new"])?;
                replacement = match delegate.action_for_replacing_extension(&existing, &new) {
                    ReplacementAction::Replace => "replace",
                    ReplacementAction::Cancel => "cancel",
                };
                continue;
            }
            let state = |key: &str| {
                outcome
                    .get(key)
                    .and_then(|o| o.get("state"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            };
            if let Some(state) = state("already_active") {
                return Ok(RequestResult::AlreadyActive { state });
            }
            let state = state("completed").ok_or_else(|| protocol("unknown outcome"))?;
            if state.contains("waiting for user") {
                delegate.request_needs_user_approval();
            }
            return Ok(RequestResult::Completed { state });
        }
    }
}

fn protocol(what: &str) -> OSSystemExtensionError {
    OSSystemExtensionError {
        code: error_code::UNKNOWN,
        reason: "unknown".into(),
        message: format!("the daemon's answer makes no sense here: {what}"),
    }
}

fn parse<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, OSSystemExtensionError> {
    serde_json::from_value(v.clone()).map_err(|e| protocol(&e.to_string()))
}

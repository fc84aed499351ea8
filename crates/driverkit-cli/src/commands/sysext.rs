//! `driverkit sysext`: system extensions, like macOS's
//! `systemextensionsctl`, plus the requests an app makes (activate,
//! deactivate), which go through `driverkit-app` exactly as an app's do.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use driverkit_app::{
    ExtensionVersions, OSSystemExtensionRequest, OSSystemExtensionRequestDelegate,
    ReplacementAction, System,
};
use driverkitd::control::CoreRequest as Request;
use driverkitd::store::Records;

#[derive(Subcommand)]
pub enum SysextCommand {
    /// Activate the dext BUNDLE_ID inside APP_PATH (as the app would).
    Activate {
        app: PathBuf,
        bundle_id: String,
        /// Replace an active extension without asking.
        #[arg(long, conflicts_with = "cancel")]
        replace: bool,
        /// Keep an active extension without asking.
        #[arg(long)]
        cancel: bool,
    },
    /// Deactivate an extension (as its app would).
    Deactivate { bundle_id: String },
    /// Approve an extension waiting for user approval.
    Approve { bundle_id: String },
    /// List extensions, like systemextensionsctl list.
    List {
        /// The store's records as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop and remove an extension now.
    Uninstall { bundle_id: String },
    /// Stop and remove every extension.
    Reset,
    /// Developer mode: accept unsigned bundles and equal or lower versions.
    Developer {
        #[arg(value_parser = ["on", "off"])]
        mode: String,
    },
    /// Trust signatures made with a key (its .pub file from `driverkit key new`).
    Trust { public_key: PathBuf },
}

/// Asks on the terminal, or answers as the flags say.
struct Terminal<'a> {
    bundle_id: &'a str,
    answer: Option<ReplacementAction>,
}

impl OSSystemExtensionRequestDelegate for Terminal<'_> {
    fn action_for_replacing_extension(
        &mut self,
        existing: &ExtensionVersions,
        new: &ExtensionVersions,
    ) -> ReplacementAction {
        eprintln!(
            "replace the active {} ({}) with {} ({})?",
            existing.short_version, existing.version, new.short_version, new.version
        );
        if let Some(a) = self.answer {
            return a;
        }
        eprint!("[r]eplace or [c]ancel: ");
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        if line.trim_start().starts_with('r') {
            ReplacementAction::Replace
        } else {
            ReplacementAction::Cancel
        }
    }

    fn request_needs_user_approval(&mut self) {
        eprintln!(
            "{} waits for approval: driverkit sysext approve {}",
            self.bundle_id, self.bundle_id
        );
    }
}

pub fn sysext(root: &Path, cmd: SysextCommand) -> Result<(), String> {
    let system = System::at(root);
    match cmd {
        SysextCommand::Activate {
            app,
            bundle_id,
            replace,
            cancel,
        } => {
            let app = std::fs::canonicalize(&app).map_err(|e| format!("{}: {e}", app.display()))?;
            let answer = match (replace, cancel) {
                (true, _) => Some(ReplacementAction::Replace),
                (_, true) => Some(ReplacementAction::Cancel),
                _ => None,
            };
            let result = OSSystemExtensionRequest::activation(&app, &bundle_id)
                .submit(
                    &system,
                    &mut Terminal {
                        bundle_id: &bundle_id,
                        answer,
                    },
                )
                .map_err(|e| e.to_string())?;
            println!("{bundle_id}: {result}");
        }
        SysextCommand::Deactivate { bundle_id } => {
            let result = OSSystemExtensionRequest::deactivation(&bundle_id)
                .submit(
                    &system,
                    &mut Terminal {
                        bundle_id: &bundle_id,
                        answer: None,
                    },
                )
                .map_err(|e| e.to_string())?;
            println!("{bundle_id}: {result}");
        }
        SysextCommand::Approve { bundle_id } => {
            let answer = super::client(root)?.request(&Request::SysextApprove {
                bundle_id: bundle_id.clone(),
            })?;
            if let Some(f) = answer.get("failure") {
                // Worded as every sysext refusal is (OSSystemExtensionError).
                let text = |k: &str| f[k].as_str().unwrap_or_default().to_owned();
                return Err(format!(
                    "{} (code {}): {}",
                    text("reason"),
                    f["code"].as_u64().unwrap_or(1),
                    text("message")
                ));
            }
            println!(
                "{bundle_id}: {}",
                answer["outcome"]["completed"]["state"]
                    .as_str()
                    .unwrap_or("approved")
            );
        }
        SysextCommand::List { json } => {
            let answer = super::client(root)?.request(&Request::SysextList)?;
            if json {
                println!("{answer}");
                return Ok(());
            }
            let records: Records = serde_json::from_value(answer).map_err(|e| e.to_string())?;
            println!(
                "{} extension(s){}",
                records.extensions.len(),
                if records.developer_mode {
                    ", developer mode on"
                } else {
                    ""
                }
            );
            println!("{:<40} {:<20} STATE", "BUNDLE ID", "VERSION");
            for e in records.extensions.values() {
                println!(
                    "{:<40} {:<20} {}",
                    e.bundle_id,
                    format!("{}/{}", e.short_version, e.version),
                    e.state.label()
                );
            }
        }
        SysextCommand::Uninstall { bundle_id } => {
            super::client(root)?.request(&Request::SysextUninstall { bundle_id })?;
        }
        SysextCommand::Reset => {
            let answer = super::client(root)?.request(&Request::SysextReset)?;
            println!("removed {} extension(s)", answer["removed"]);
        }
        SysextCommand::Developer { mode } => {
            super::client(root)?.request(&Request::SysextDeveloper { on: mode == "on" })?;
            println!("developer mode {mode}");
        }
        SysextCommand::Trust { public_key } => {
            let key = std::fs::read_to_string(&public_key)
                .map_err(|e| format!("{}: {e}", public_key.display()))?;
            super::client(root)?.request(&Request::SysextTrust {
                key: key.trim().to_owned(),
            })?;
        }
    }
    Ok(())
}

/// `driverkit key new PATH`: a signing key in PATH (owner-only) and its
/// public half in PATH.pub.
pub fn new_key(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let key = driverkit_bundle::signature::SigningKey::generate().map_err(|e| e.to_string())?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    std::io::Write::write_all(&mut file, format!("{}\n", key.to_hex()).as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let public = PathBuf::from(format!("{}.pub", path.display()));
    std::fs::write(&public, format!("{}\n", key.public_hex()))
        .map_err(|e| format!("{}: {e}", public.display()))?;
    println!("{}", key.public_hex());
    Ok(())
}

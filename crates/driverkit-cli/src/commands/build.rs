//! `driverkit build`: builds a driver project (`driverkit new`) with cargo
//! and assembles the app the system installs from:
//!
//! ```text
//! build/NAME.app/Contents/
//!     Info.plist                      the app's
//!     Entitlements.plist              the app's (App/Entitlements.plist)
//!     MacOS/NAME-app                  the app's executable
//!     Library/SystemExtensions/<bundle-id>.dext/
//!         Info.plist  Entitlements.plist  NAME  [_CodeSignature/]
//! ```
//!
//! The dext is validated as the system will (required keys, personalities,
//! entitlements) before anything replaces a previous build, and signed with
//! `--sign KEY`. The app is assembled beside its final place and renamed
//! into it, so a failed build leaves the previous one whole.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use clap::Args;
use driverkit_bundle::{entitlements, location, signature, xcode, Bundle};

#[derive(Args)]
pub struct BuildArgs {
    /// The project directory [default: .].
    #[arg(long, default_value = ".")]
    project: PathBuf,
    /// Sign the dext with this key (from `driverkit key new`).
    #[arg(long, value_name = "KEY")]
    sign: Option<PathBuf>,
    /// A debug build instead of release.
    #[arg(long)]
    debug: bool,
    /// Where the app goes [default: PROJECT/build].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// $(PRODUCT_BUNDLE_IDENTIFIER) for an Info.plist written by Xcode
    /// [default: [package.metadata.driverkit] bundle-identifier].
    #[arg(long, value_name = "ID")]
    bundle_id: Option<String>,
    /// $(PRODUCT_NAME) and $(EXECUTABLE_NAME): the dext's [[bin]]
    /// [default: [package.metadata.driverkit] product-name, or the
    /// Info.plist's CFBundleExecutable, or the package name].
    #[arg(long, value_name = "NAME")]
    product_name: Option<String>,
}

/// What `[package]` and `[package.metadata.driverkit]` of the project's
/// Cargo.toml say.
struct Project {
    name: String,
    version: String,
    metadata: toml::Table,
}

fn read_project(project: &Path) -> Result<Project, String> {
    let path = project.join("Cargo.toml");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let package = table.get("package").and_then(|p| p.as_table());
    let field = |key: &str| {
        package
            .and_then(|p| p.get(key))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    Ok(Project {
        name: field("name").ok_or_else(|| format!("{}: no [package] name", path.display()))?,
        version: field("version").unwrap_or_else(|| "1.0".into()),
        metadata: package
            .and_then(|p| p.get("metadata"))
            .and_then(|m| m.get("driverkit"))
            .and_then(|d| d.as_table())
            .cloned()
            .unwrap_or_default(),
    })
}

/// The project's Info.plist with Xcode's build variables substituted and
/// the keys `GENERATE_INFOPLIST_FILE` adds (see `driverkit_bundle::xcode`).
fn built_info(
    project: &Path,
    info_path: &Path,
    args: &BuildArgs,
) -> Result<plist::Dictionary, String> {
    let bytes = std::fs::read(info_path).map_err(|e| format!("{}: {e}", info_path.display()))?;
    let mut info = driverkit_bundle::parse_info(&bytes)
        .map_err(|e| format!("{}: {e}", info_path.display()))?;
    let cargo = read_project(project)?;
    let meta = |key: &str| {
        cargo
            .metadata
            .get(key)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    let literal = |key: &str| {
        info.get(key)
            .and_then(plist::Value::as_string)
            .filter(|s| !s.contains("$(") && !s.contains("${"))
            .map(str::to_owned)
    };
    let product = args
        .product_name
        .clone()
        .or_else(|| meta("product-name"))
        .or_else(|| literal("CFBundleExecutable"))
        .unwrap_or_else(|| cargo.name.clone());
    let bundle_id = args
        .bundle_id
        .clone()
        .or_else(|| meta("bundle-identifier"))
        .or_else(|| literal("CFBundleIdentifier"));
    let mut settings =
        xcode::Settings::new(bundle_id.as_deref().unwrap_or(""), &product, &cargo.version);
    if bundle_id.is_none() {
        // Named as missing below, if the Info.plist needs it.
        settings.remove("PRODUCT_BUNDLE_IDENTIFIER");
    }
    if let Some(usage) = meta("usage-description") {
        settings.set("INFOPLIST_KEY_OSBundleUsageDescription", &usage);
    }
    settings.apply(&mut info).map_err(|missing| {
        format!(
            "{}: no value for the build variables {}; set them in Cargo.toml's [package.metadata.driverkit] \
             (bundle-identifier, product-name) or with --bundle-id and --product-name",
            info_path.display(),
            missing.iter().map(|m| format!("$({m})")).collect::<Vec<_>>().join(", ")
        )
    })?;
    driverkit_bundle::check_built(&info).map_err(|e| format!("{}: {e}", info_path.display()))?;
    Ok(info)
}

/// The dext's entitlements: `Entitlements.plist`, or the one
/// `NAME.entitlements` an Xcode project keeps.
fn dext_entitlements(project: &Path) -> Result<Option<PathBuf>, String> {
    let plain = project.join(entitlements::FILE);
    if plain.exists() {
        return Ok(Some(plain));
    }
    let found: Vec<PathBuf> = std::fs::read_dir(project)
        .map_err(|e| format!("{}: {e}", project.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "entitlements"))
        .collect();
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one.clone())),
        many => Err(format!(
            "{}: several .entitlements files ({}); keep the dext's as Entitlements.plist",
            project.display(),
            many.iter()
                .filter_map(|p| p.file_name()?.to_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

pub fn build(args: BuildArgs) -> Result<(), String> {
    let project = std::fs::canonicalize(&args.project)
        .map_err(|e| format!("{}: {e}", args.project.display()))?;
    let info_path = project.join("Info.plist");
    let info = built_info(&project, &info_path, &args)?;
    let text = |key: &str| {
        info.get(key)
            .and_then(plist::Value::as_string)
            .map(str::to_owned)
            .ok_or_else(|| format!("{}, key {key}: missing", info_path.display()))
    };
    let (bundle_id, executable) = (text("CFBundleIdentifier")?, text("CFBundleExecutable")?);
    let app_executable = format!("{executable}-app");
    let key = args
        .sign
        .as_deref()
        .map(signature::SigningKey::load)
        .transpose()?;

    let built = cargo_build(&project, args.debug)?;
    let find = |name: &str| {
        built
            .iter()
            .find(|b| b.executable.file_name().is_some_and(|f| f == name))
            .cloned()
            .ok_or_else(|| {
                format!(
                    "cargo built no executable named {name} (the [[bin]] targets of Cargo.toml)"
                )
            })
    };
    let (dext_exe, app_exe) = (find(&executable)?, find(&app_executable)?);
    let (dext_exe, app_exe) = (dext_exe.verified(&project)?, app_exe.verified(&project)?);

    let out = args.out.unwrap_or_else(|| project.join("build"));
    let app = out.join(format!("{executable}.app"));
    let partial = out.join(format!(".{executable}.app.partial"));
    let _ = std::fs::remove_dir_all(&partial);
    let dext = location::dext_in_app(&partial, &bundle_id);
    let contents = partial.join("Contents");
    let copy = |from: &Path, to: &Path| -> Result<(), String> {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::copy(from, to)
            .map(drop)
            .map_err(|e| format!("{} -> {}: {e}", from.display(), to.display()))
    };
    std::fs::create_dir_all(&dext).map_err(|e| format!("{}: {e}", dext.display()))?;
    plist::Value::Dictionary(info.clone())
        .to_file_xml(dext.join("Info.plist"))
        .map_err(|e| format!("{}: {e}", dext.join("Info.plist").display()))?;
    copy(&dext_exe, &dext.join(&executable))?;
    if let Some(dext_entitlements) = dext_entitlements(&project)? {
        copy(&dext_entitlements, &dext.join(entitlements::FILE))?;
    }
    let app_entitlements = project.join("App").join(entitlements::FILE);
    if app_entitlements.exists() {
        copy(&app_entitlements, &contents.join(entitlements::FILE))?;
    }
    copy(&app_exe, &contents.join("MacOS").join(&app_executable))?;
    // Still this project's after the copies: a build of another project
    // in the shared target directory may have replaced them meanwhile.
    for b in [&find(&executable)?, &find(&app_executable)?] {
        if let Err(e) = b.verified(&project) {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(e);
        }
    }
    let mut app_info = plist::Dictionary::new();
    app_info.insert(
        "CFBundleIdentifier".into(),
        format!("{bundle_id}.app").into(),
    );
    app_info.insert("CFBundleExecutable".into(), app_executable.clone().into());
    app_info.insert("CFBundleName".into(), executable.clone().into());
    plist::Value::Dictionary(app_info)
        .to_file_xml(contents.join("Info.plist"))
        .map_err(|e| format!("{}: {e}", contents.join("Info.plist").display()))?;

    // What the system will check, checked now.
    let checked = Bundle::load(&dext)
        .map_err(|e| e.to_string())
        .and_then(|b| {
            b.check_entitlements()
                .map(|()| b)
                .map_err(|e| e.to_string())
        });
    let bundle = match checked {
        Ok(b) => b,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(e.replace(&partial.display().to_string(), &app.display().to_string()));
        }
    };
    if let Some(key) = &key {
        signature::sign(&dext, key)?;
    }
    let _ = std::fs::remove_dir_all(&app);
    std::fs::rename(&partial, &app).map_err(|e| format!("{}: {e}", app.display()))?;
    println!(
        "built {} ({bundle_id} {} ({}){})",
        app.display(),
        bundle.short_version(),
        bundle.version(),
        if key.is_some() { ", signed" } else { "" }
    );
    Ok(())
}

/// An executable cargo says it built.
#[derive(Clone)]
struct Built {
    executable: PathBuf,
}

/// What `dext_main!` writes into a dext's executable before the folder of
/// the project it was built from (`CARGO_MANIFEST_DIR`, then a NUL).
const BUILT_FROM: &[u8] = b"driverkit-built-from:";

impl Built {
    /// The executable, once it says it was built from `project` (a dext
    /// made with `dext_main!` does). Cargo tells packages in a target
    /// directory apart by name and version, not by folder: another project
    /// of the same package name, or a copy of this one, would otherwise
    /// ship its executable as this project's, silently.
    fn verified(&self, project: &Path) -> Result<PathBuf, String> {
        let bytes = std::fs::read(&self.executable)
            .map_err(|e| format!("{}: {e}", self.executable.display()))?;
        let Some(theirs) = built_from(&bytes) else {
            // Not made with dext_main! (or an app): nothing to check.
            return Ok(self.executable.clone());
        };
        let same = std::fs::canonicalize(&theirs).is_ok_and(|t| t == project);
        if same {
            return Ok(self.executable.clone());
        }
        Err(format!(
            "{} was built from {}, not from this project ({}): another driver project with the same \
             package name builds in the same target directory. Give this project a package name of its own \
             (Cargo.toml, [package] name; `driverkit new` adds a hash of the folder) or a target directory of \
             its own (.cargo/config.toml, [build] target-dir), and build again.",
            self.executable.display(),
            theirs.display(),
            project.display()
        ))
    }
}

/// The project folder `dext_main!` wrote into an executable.
fn built_from(bytes: &[u8]) -> Option<PathBuf> {
    let at = bytes
        .windows(BUILT_FROM.len())
        .position(|w| w == BUILT_FROM)?
        + BUILT_FROM.len();
    let rest = &bytes[at..];
    let end = rest.iter().position(|b| *b == 0)?;
    let path = std::str::from_utf8(&rest[..end]).ok()?;
    Some(PathBuf::from(path))
}

/// `cargo build` of the project; the executables it produced.
fn cargo_build(project: &Path, debug: bool) -> Result<Vec<Built>, String> {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(project)
        .args([
            "build",
            "--bins",
            "--message-format=json-render-diagnostics",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if !debug {
        cmd.arg("--release");
    }
    let output = cmd.output().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !output.status.success() {
        return Err(format!("cargo build failed in {}", project.display()));
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|m| {
            Some(Built {
                executable: PathBuf::from(m.get("executable")?.as_str()?),
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    #[test]
    fn the_project_an_executable_was_built_from() {
        let exe = b"\x7fELF...driverkit-built-from:/p/My Driver\0more";
        assert_eq!(super::built_from(exe), Some(PathBuf::from("/p/My Driver")));
        assert_eq!(super::built_from(b"no marker"), None);
        assert_eq!(
            super::built_from(b"driverkit-built-from:/unterminated"),
            None
        );
    }
}

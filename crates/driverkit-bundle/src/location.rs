//! Where a dext may live. The system loads a driver only from inside an
//! app, at `NAME.app/Contents/Library/SystemExtensions/<bundle-id>.dext`,
//! and fails to load it anywhere else: the app is what a person installs,
//! what asks for activation, and what the driver goes away with.

use std::path::{Path, PathBuf};

/// The folder of an app that holds its drivers.
pub const SYSTEM_EXTENSIONS: &str = "Contents/Library/SystemExtensions";

/// Where the dext `bundle_id` sits inside `app`.
pub fn dext_in_app(app: &Path, bundle_id: &str) -> PathBuf {
    app.join(SYSTEM_EXTENSIONS)
        .join(format!("{bundle_id}.dext"))
}

/// The app that contains the dext at `dext`; the error says where the
/// dext is and where it must be.
///
/// ```
/// use std::path::Path;
/// use driverkit_bundle::location::containing_app;
/// let dext = Path::new("/opt/Foo.app/Contents/Library/SystemExtensions/com.foo.dext");
/// assert_eq!(containing_app(dext).unwrap(), Path::new("/opt/Foo.app"));
/// assert!(containing_app(Path::new("/tmp/com.foo.dext")).is_err());
/// ```
pub fn containing_app(dext: &Path) -> Result<PathBuf, String> {
    let refuse = || {
        format!(
            "{} is not inside an app's {SYSTEM_EXTENSIONS} folder: the system loads \
             drivers only from NAME.app/{SYSTEM_EXTENSIONS}/<bundle-id>.dext",
            dext.display()
        )
    };
    let folder = dext.parent().ok_or_else(refuse)?;
    let app = folder
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .ok_or_else(refuse)?;
    let is_app = app.extension().is_some_and(|e| e == "app");
    if !is_app || app.join(SYSTEM_EXTENSIONS) != folder {
        return Err(refuse());
    }
    Ok(app.to_owned())
}

/// The app whose executable `exe` is: `NAME.app/Contents/MacOS/<exe>`.
/// How the system knows which app a process belongs to.
pub fn app_of_executable(exe: &Path) -> Option<PathBuf> {
    let macos = exe.parent()?;
    let contents = macos.parent()?;
    let app = contents.parent()?;
    let ok = macos.file_name()? == "MacOS"
        && contents.file_name()? == "Contents"
        && app.extension()? == "app";
    ok.then(|| app.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_apps_system_extensions_folder_will_do() {
        let ok = Path::new("A.app/Contents/Library/SystemExtensions/x.dext");
        assert_eq!(containing_app(ok).unwrap(), Path::new("A.app"));
        assert_eq!(dext_in_app(Path::new("A.app"), "x"), ok);
        for bad in [
            "x.dext",
            "/x.dext",
            "A.app/x.dext",
            "A.app/Contents/Library/x.dext",
            "A.app/Contents/Library/Extensions/x.dext",
            "A/Contents/Library/SystemExtensions/x.dext",
            "A.app/Contents/Library/SystemExtensions/sub/x.dext",
        ] {
            let e = containing_app(Path::new(bad)).unwrap_err();
            assert!(e.contains(bad) && e.contains(SYSTEM_EXTENSIONS), "{e}");
        }
    }

    #[test]
    fn an_apps_executable_names_its_app() {
        let app = app_of_executable(Path::new("/opt/A.app/Contents/MacOS/a"));
        assert_eq!(app.as_deref(), Some(Path::new("/opt/A.app")));
        for not in [
            "/usr/bin/a",
            "/opt/A.app/MacOS/a",
            "/opt/A/Contents/MacOS/a",
        ] {
            assert_eq!(app_of_executable(Path::new(not)), None, "{not}");
        }
    }
}

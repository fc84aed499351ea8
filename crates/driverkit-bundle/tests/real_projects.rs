//! Info.plists and entitlements of public macOS DriverKit projects (see
//! `real-projects/README.md` for where each comes from): built as
//! `driverkit build` builds them, each validates, or is refused only for a
//! reason macOS would refuse it too, naming the key.

use std::path::{Path, PathBuf};

use driverkit_bundle::{xcode, Bundle};

const PLAIN_ENTITLEMENTS: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<plist version="1.0"><dict><key>com.apple.developer.driverkit</key><true/></dict></plist>"#;

struct Project {
    dir: &'static str,
    bundle_id: &'static str,
    product: &'static str,
    /// What the Xcode project's INFOPLIST_KEY_OSBundleUsageDescription
    /// would add, for files that leave it to the project.
    usage: Option<&'static str>,
    /// `None`: valid; `Some(text)`: refused, with `text` in the reason.
    refused: Option<&'static str>,
}

const PROJECTS: [Project; 5] = [
    Project {
        dir: "NullDriver",
        bundle_id: "com.example.apple-samplecode.DriverKitSampleApp.NullDriver",
        product: "NullDriver",
        usage: None,
        refused: None,
    },
    Project {
        dir: "VirtualControllerDriver",
        bundle_id: "com.sillyutility.VirtualController.VirtualControllerDriver",
        product: "VirtualControllerDriver",
        usage: None,
        refused: None,
    },
    Project {
        dir: "XboxControllerDriver",
        bundle_id: "com.example.XboxControllerDriver",
        product: "XboxControllerDriver",
        usage: Some("Drives Xbox One controllers."),
        refused: None,
    },
    Project {
        dir: "DeliberateMouseDriver",
        bundle_id: "com.example.DeliberateMouseDriver",
        product: "DeliberateMouseDriver",
        usage: Some("Turns off pointer acceleration."),
        refused: None,
    },
    Project {
        dir: "NumarkNS7Driver",
        bundle_id: "com.numark.ns7.driverkit",
        product: "NumarkNS7Driver",
        usage: None,
        refused: Some("key OSBundleUsageDescription: missing"),
    },
];

fn source(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/real-projects")
        .join(dir)
}

/// The project's entitlements: its `.entitlements` file, if it has one.
fn entitlements_of(dir: &Path) -> String {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "entitlements"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .unwrap_or_else(|| PLAIN_ENTITLEMENTS.to_owned())
}

/// A `<id>.dext` as `driverkit build` makes it from the project.
fn build(p: &Project, into: &Path) -> PathBuf {
    let src = source(p.dir);
    let mut info =
        driverkit_bundle::parse_info(&std::fs::read(src.join("Info.plist")).unwrap()).unwrap();
    let mut settings = xcode::Settings::new(p.bundle_id, p.product, "1.0");
    if let Some(usage) = p.usage {
        settings.set("INFOPLIST_KEY_OSBundleUsageDescription", usage);
    }
    settings
        .apply(&mut info)
        .unwrap_or_else(|missing| panic!("{}: {missing:?}", p.dir));
    let dext = into.join(format!("{}.dext", p.bundle_id));
    std::fs::create_dir_all(&dext).unwrap();
    plist::Value::Dictionary(info)
        .to_file_xml(dext.join("Info.plist"))
        .unwrap();
    std::fs::write(dext.join("Entitlements.plist"), entitlements_of(&src)).unwrap();
    let exe = dext.join(p.product);
    std::fs::write(&exe, b"\x7fELF").unwrap();
    std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    dext
}

#[test]
fn public_dext_projects_validate_once_built_or_are_refused_as_macos_would() {
    let dir = tempfile::tempdir().unwrap();
    for p in &PROJECTS {
        let dext = build(p, dir.path());
        let verdict = Bundle::load(&dext)
            .map_err(|e| e.to_string())
            .and_then(|b| {
                b.check_entitlements()
                    .map(|()| b)
                    .map_err(|e| e.to_string())
            });
        match (p.refused, verdict) {
            (None, Ok(bundle)) => {
                assert_eq!(bundle.identifier, p.bundle_id);
                assert!(!bundle.personalities.is_empty(), "{}", p.dir);
            }
            (None, Err(e)) => panic!("{} was refused: {e}", p.dir),
            (Some(key), Ok(_)) => panic!("{} was accepted; macOS refuses it ({key})", p.dir),
            (Some(key), Err(e)) => assert!(e.contains(key), "{}: {e}", p.dir),
        }
    }
}

#[test]
fn an_unbuilt_project_info_plist_names_its_variables() {
    let dir = tempfile::tempdir().unwrap();
    let dext = dir.path().join("com.example.Null.dext");
    std::fs::create_dir_all(&dext).unwrap();
    std::fs::copy(
        source("NullDriver").join("Info.plist"),
        dext.join("Info.plist"),
    )
    .unwrap();
    let e = Bundle::load(&dext).unwrap_err().to_string();
    assert!(
        e.contains("unresolved Xcode build variables")
            && e.contains("$(EXECUTABLE_NAME)")
            && e.contains("$(PRODUCT_BUNDLE_IDENTIFIER)")
            && e.contains("driverkit build"),
        "{e}"
    );
}

//! Every way an Info.plist can be wrong gets a clear error naming the
//! bundle, the personality and the key; none panics.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use driverkit_bundle::{Bundle, BundleError};
use plist::{Dictionary, Value};
use proptest::prelude::*;

const ID: &str = "com.example.Broken";

fn personality() -> Dictionary {
    let mut p = Dictionary::new();
    p.insert("CFBundleIdentifier".into(), ID.into());
    p.insert("IOClass".into(), "IOUserService".into());
    p.insert("IOUserClass".into(), "BrokenDriver".into());
    p.insert("IOUserServerName".into(), ID.into());
    p.insert("IOProviderClass".into(), "IOUserResources".into());
    p.insert("IOResourceMatch".into(), "IOKit".into());
    p
}

fn info() -> Dictionary {
    let mut personalities = Dictionary::new();
    personalities.insert("Broken".into(), Value::Dictionary(personality()));
    let mut d = Dictionary::new();
    d.insert("CFBundleIdentifier".into(), ID.into());
    d.insert("CFBundleExecutable".into(), "BrokenDriver".into());
    d.insert("CFBundleVersion".into(), "3".into());
    d.insert("CFBundleShortVersionString".into(), "1.2".into());
    d.insert(
        "OSBundleUsageDescription".into(),
        "Drives nothing, brokenly.".into(),
    );
    d.insert(
        "IOKitPersonalities".into(),
        Value::Dictionary(personalities),
    );
    d
}

fn xml(d: &Dictionary) -> Vec<u8> {
    let mut out = Vec::new();
    Value::Dictionary(d.clone())
        .to_writer_xml(&mut out)
        .unwrap();
    out
}

/// A bundle directory holding `info_bytes` and an executable.
fn bundle_with(info_bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{ID}.dext"));
    std::fs::create_dir(&path).unwrap();
    std::fs::write(path.join("Info.plist"), info_bytes).unwrap();
    let exe = path.join("BrokenDriver");
    std::fs::write(&exe, b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, path)
}

fn load(info_bytes: &[u8]) -> Result<Bundle, BundleError> {
    let (_dir, path) = bundle_with(info_bytes);
    Bundle::load(&path)
}

fn with_personality(edit: impl FnOnce(&mut Dictionary)) -> Vec<u8> {
    let mut p = personality();
    edit(&mut p);
    let mut d = info();
    let mut ps = Dictionary::new();
    ps.insert("Broken".into(), Value::Dictionary(p));
    d.insert("IOKitPersonalities".into(), Value::Dictionary(ps));
    xml(&d)
}

fn with_info(edit: impl FnOnce(&mut Dictionary)) -> Vec<u8> {
    let mut d = info();
    edit(&mut d);
    xml(&d)
}

#[track_caller]
fn refused(
    result: Result<Bundle, BundleError>,
    personality: Option<&str>,
    key: Option<&str>,
    problem: &str,
) {
    let err = result.expect_err("the bundle must be refused");
    let text = err.to_string();
    assert!(
        text.contains(&format!("{ID}.dext")),
        "names the bundle: {text}"
    );
    assert_eq!(err.personality.as_deref(), personality, "{text}");
    assert_eq!(err.key.as_deref(), key, "{text}");
    assert!(text.contains(problem), "expected {problem:?} in: {text}");
}

#[test]
fn a_valid_bundle_loads_from_xml_and_binary() {
    let b = load(&xml(&info())).unwrap();
    assert_eq!(b.identifier, ID);
    assert_eq!(b.personalities.len(), 1);
    assert_eq!(b.personalities[0].provider_class, "IOUserResources");
    assert_eq!(b.personalities[0].match_category, "IODefaultMatchCategory");
    let mut bin = Vec::new();
    Value::Dictionary(info())
        .to_writer_binary(&mut bin)
        .unwrap();
    assert!(bin.starts_with(b"bplist00"));
    let b = load(&bin).unwrap();
    assert_eq!(b.personalities[0].user_class, "BrokenDriver");
}

#[test]
fn missing_bundle_identifier() {
    refused(
        load(&with_info(|d| drop(d.remove("CFBundleIdentifier")))),
        None,
        Some("CFBundleIdentifier"),
        "missing",
    );
}

#[test]
fn bundle_identifier_of_wrong_type() {
    refused(
        load(&with_info(|d| {
            drop(d.insert("CFBundleIdentifier".into(), Value::Integer(7.into())))
        })),
        None,
        Some("CFBundleIdentifier"),
        "expected a string, found an integer",
    );
}

#[test]
fn missing_executable_key() {
    refused(
        load(&with_info(|d| drop(d.remove("CFBundleExecutable")))),
        None,
        Some("CFBundleExecutable"),
        "missing",
    );
}

#[test]
fn executable_absent_from_bundle() {
    refused(
        load(&with_info(|d| {
            drop(d.insert("CFBundleExecutable".into(), "Elsewhere".into()))
        })),
        None,
        Some("CFBundleExecutable"),
        "Elsewhere is missing",
    );
}

#[test]
fn executable_without_execute_permission() {
    let (_dir, path) = bundle_with(&xml(&info()));
    std::fs::set_permissions(
        path.join("BrokenDriver"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    refused(
        Bundle::load(&path),
        None,
        Some("CFBundleExecutable"),
        "is not executable (mode 644)",
    );
}

#[test]
fn executable_outside_the_bundle() {
    refused(
        load(&with_info(|d| {
            drop(d.insert("CFBundleExecutable".into(), "../../bin/sh".into()))
        })),
        None,
        Some("CFBundleExecutable"),
        "expected a file name inside the bundle",
    );
}

#[test]
fn absent_personalities() {
    refused(
        load(&with_info(|d| drop(d.remove("IOKitPersonalities")))),
        None,
        Some("IOKitPersonalities"),
        "missing",
    );
}

#[test]
fn empty_personalities() {
    refused(
        load(&with_info(|d| {
            drop(d.insert(
                "IOKitPersonalities".into(),
                Value::Dictionary(Dictionary::new()),
            ))
        })),
        None,
        Some("IOKitPersonalities"),
        "empty",
    );
}

#[test]
fn personalities_as_array() {
    refused(
        load(&with_info(|d| {
            drop(d.insert("IOKitPersonalities".into(), Value::Array(vec![])))
        })),
        None,
        Some("IOKitPersonalities"),
        "expected a dictionary, found an array",
    );
}

#[test]
fn personality_that_is_a_string() {
    let bytes = with_info(|d| {
        let mut ps = Dictionary::new();
        ps.insert("Broken".into(), "oops".into());
        d.insert("IOKitPersonalities".into(), Value::Dictionary(ps));
    });
    refused(
        load(&bytes),
        Some("Broken"),
        None,
        "expected a dictionary, found a string",
    );
}

#[test]
fn each_minimum_key_missing() {
    for key in [
        "CFBundleIdentifier",
        "IOClass",
        "IOUserClass",
        "IOUserServerName",
        "IOProviderClass",
    ] {
        refused(
            load(&with_personality(|p| drop(p.remove(key)))),
            Some("Broken"),
            Some(key),
            "missing",
        );
    }
}

#[test]
fn each_minimum_key_mistyped() {
    for key in [
        "CFBundleIdentifier",
        "IOClass",
        "IOUserClass",
        "IOUserServerName",
        "IOProviderClass",
    ] {
        refused(
            load(&with_personality(|p| {
                drop(p.insert(key.into(), Value::Boolean(true)))
            })),
            Some("Broken"),
            Some(key),
            "expected a string, found a boolean",
        );
    }
}

#[test]
fn unknown_provider_class() {
    refused(
        load(&with_personality(|p| {
            drop(p.insert("IOProviderClass".into(), "IOFluxCapacitor".into()))
        })),
        Some("Broken"),
        Some("IOProviderClass"),
        "unknown class \"IOFluxCapacitor\"",
    );
}

#[test]
fn unknown_io_class() {
    refused(
        load(&with_personality(|p| {
            drop(p.insert("IOClass".into(), "NotAClass".into()))
        })),
        Some("Broken"),
        Some("IOClass"),
        "unknown class",
    );
}

#[test]
fn apple_class_names_stand_for_the_system_classes() {
    for (apple, system) in [
        ("AppleUserHIDEventService", "IOUserHIDEventService"),
        ("AppleUserHIDDevice", "IOUserHIDDevice"),
        ("AppleUserUSBHostHIDDevice", "IOUserHIDDevice"),
        ("IOUserUSBSerial", "IOUserSerial"),
    ] {
        let bundle = load(&with_personality(|p| {
            drop(p.insert("IOClass".into(), apple.into()))
        }))
        .unwrap_or_else(|e| panic!("{apple}: {e}"));
        assert_eq!(bundle.personalities[0].io_class, system, "{apple}");
        // The personality's own dictionary keeps the name as written.
        assert_eq!(
            bundle.personalities[0].properties["IOClass"].as_string(),
            Some(apple)
        );
    }
    // A family still to come is named as such, not as an unknown class.
    refused(
        load(&with_personality(|p| {
            drop(p.insert("IOClass".into(), "IOUserAudioDriver".into()))
        })),
        Some("Broken"),
        Some("IOClass"),
        "belongs to DriverKit's audio (AudioDriverKit) family, which this system does not implement yet",
    );
}

#[test]
fn personality_of_another_bundle() {
    refused(
        load(&with_personality(|p| {
            drop(p.insert("CFBundleIdentifier".into(), "com.other".into()))
        })),
        Some("Broken"),
        Some("CFBundleIdentifier"),
        "expected the bundle's identifier",
    );
}

#[test]
fn probe_score_as_string() {
    refused(
        load(&with_personality(|p| {
            drop(p.insert("IOProbeScore".into(), "high".into()))
        })),
        Some("Broken"),
        Some("IOProbeScore"),
        "expected an integer, found a string",
    );
}

#[test]
fn match_category_as_integer() {
    refused(
        load(&with_personality(|p| {
            drop(p.insert("IOMatchCategory".into(), Value::Integer(1.into())))
        })),
        Some("Broken"),
        Some("IOMatchCategory"),
        "expected a string, found an integer",
    );
}

#[test]
fn property_match_as_string() {
    refused(
        load(&with_personality(|p| {
            drop(p.insert("IOPropertyMatch".into(), "x".into()))
        })),
        Some("Broken"),
        Some("IOPropertyMatch"),
        "expected a dictionary or an array of dictionaries",
    );
}

#[test]
fn name_match_with_a_number_inside() {
    refused(
        load(&with_personality(|p| {
            p.insert(
                "IONameMatch".into(),
                Value::Array(vec!["a".into(), Value::Integer(3.into())]),
            );
        })),
        Some("Broken"),
        Some("IONameMatch"),
        "item 1: expected a string, found an integer",
    );
}

#[test]
fn one_process_as_string() {
    refused(
        load(&with_personality(|p| {
            drop(p.insert("IOUserServerOneProcess".into(), "yes".into()))
        })),
        Some("Broken"),
        Some("IOUserServerOneProcess"),
        "expected a boolean",
    );
}

#[test]
fn truncated_xml() {
    let bytes = xml(&info());
    refused(
        load(&bytes[..bytes.len() / 2]),
        None,
        None,
        "not a valid property list",
    );
}

#[test]
fn truncated_binary_plist() {
    let mut bin = Vec::new();
    Value::Dictionary(info())
        .to_writer_binary(&mut bin)
        .unwrap();
    refused(
        load(&bin[..bin.len() - 20]),
        None,
        None,
        "not a valid property list",
    );
}

#[test]
fn garbage_bytes() {
    refused(
        load(b"\x00\xffnot a plist at all\x13\x37"),
        None,
        None,
        "not a valid property list",
    );
}

#[test]
fn empty_info_plist() {
    refused(load(b""), None, None, "empty file");
}

#[test]
fn root_is_not_a_dictionary() {
    let mut out = Vec::new();
    Value::Array(vec!["x".into()])
        .to_writer_xml(&mut out)
        .unwrap();
    refused(
        load(&out),
        None,
        None,
        "the root must be a dictionary, found an array",
    );
}

#[test]
fn no_info_plist_at_all() {
    let (_dir, path) = bundle_with(b"");
    std::fs::remove_file(path.join("Info.plist")).unwrap();
    refused(Bundle::load(&path), None, None, "no Info.plist");
}

#[test]
fn directory_without_dext_suffix() {
    let dir = tempfile::tempdir().unwrap();
    let err = Bundle::load(dir.path()).unwrap_err();
    assert!(err.to_string().contains("must end in `.dext`"), "{err}");
    // Pointed at an app, it says where an app keeps its dexts.
    let app = tempfile::tempdir().unwrap();
    let app = app.path().join("Maker.app");
    std::fs::create_dir_all(&app).unwrap();
    let err = Bundle::load(&app).unwrap_err().to_string();
    assert!(
        err.contains("Contents/Library/SystemExtensions/<bundle-id>.dext"),
        "{err}"
    );
}

#[test]
fn error_names_the_file() {
    let err = load(&with_personality(|p| drop(p.remove("IOClass")))).unwrap_err();
    assert!(
        err.file
            .as_deref()
            .is_some_and(|f: &Path| f.ends_with("Info.plist")),
        "{err:?}"
    );
}

proptest! {
    /// Any bytes as Info.plist: an error or a bundle, never a panic.
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = driverkit_bundle::parse_info(&bytes);
    }

    /// Flipping bytes of a valid XML or binary Info.plist never panics.
    #[test]
    fn corrupted_plists_never_panic(at in any::<prop::sample::Index>(), byte: u8, binary: bool) {
        let mut bytes = if binary {
            let mut b = Vec::new();
            Value::Dictionary(info()).to_writer_binary(&mut b).unwrap();
            b
        } else {
            xml(&info())
        };
        let i = at.index(bytes.len());
        bytes[i] = byte;
        if let Ok(d) = driverkit_bundle::parse_info(&bytes) {
            let _ = Bundle::from_info(Path::new("/x.dext"), d);
        }
    }

    /// Any value in place of any personality key: an error or a bundle.
    #[test]
    fn any_value_for_any_key_never_panics(key in "[A-Za-z]{1,20}|IOClass|IOProviderClass|IOProbeScore|IOPropertyMatch",
                                          v in prop_oneof![any::<i64>().prop_map(|i| Value::Integer(i.into())),
                                                           ".*".prop_map(Value::String),
                                                           any::<bool>().prop_map(Value::Boolean)]) {
        let mut p = personality();
        p.insert(key, v);
        let mut d = info();
        let mut ps = Dictionary::new();
        ps.insert("P".into(), Value::Dictionary(p));
        d.insert("IOKitPersonalities".into(), Value::Dictionary(ps));
        let _ = Bundle::from_info(Path::new("/x.dext"), d);
    }
}

#[test]
fn version_and_description_keys_are_required() {
    for key in [
        "CFBundleVersion",
        "CFBundleShortVersionString",
        "OSBundleUsageDescription",
    ] {
        refused(
            load(&with_info(|d| drop(d.remove(key)))),
            None,
            Some(key),
            "missing",
        );
        refused(
            load(&with_info(|d| drop(d.insert(key.into(), 7.into())))),
            None,
            Some(key),
            "expected a string, found an integer",
        );
    }
    refused(
        load(&with_info(|d| {
            drop(d.insert("CFBundleVersion".into(), "1.0b2".into()))
        })),
        None,
        Some("CFBundleVersion"),
        "expected a version of dot-separated numbers (\"1.2.3\"), found \"1.0b2\"",
    );
    // Empty is what Apple's own samples ship: accepted.
    assert!(load(&with_info(|d| drop(
        d.insert("OSBundleUsageDescription".into(), "".into())
    )))
    .is_ok());
    let bundle = load(&xml(&info())).unwrap();
    assert_eq!(bundle.version().to_string(), "3");
    assert_eq!(bundle.short_version().to_string(), "1.2");
}

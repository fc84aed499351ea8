//! `driverkit new NAME --family F`: a Cargo project holding a driver and the
//! app that carries it, like Xcode's DriverKit Driver template: the
//! service's source, an Info.plist with a personality, the dext's and the
//! app's entitlements, and a test that checks the bundle as the system
//! will. It builds and its test passes as generated; each family's
//! personality matches a built-in virtual device where one exists, so the
//! driver runs at once under `driverkit run`.

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use plist::{Dictionary, Value};

#[derive(Args)]
pub struct NewArgs {
    /// The driver's name: its class and executable (e.g. MyDriver).
    name: String,
    #[arg(long, value_enum, default_value = "generic")]
    family: Family,
    /// The bundle identifier [default: com.example.NAME].
    #[arg(long)]
    bundle_id: Option<String>,
    /// Where to create it [default: ./NAME].
    #[arg(long)]
    path: Option<PathBuf>,
    /// The driverkit source tree the project builds against [default: the
    /// one this driverkit was built from].
    #[arg(long, value_name = "DIR")]
    sdk: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Family {
    Generic,
    Usb,
    Hid,
    Serial,
    Net,
    Pci,
}

/// What differs between families: the personality's keys, the
/// entitlements, the service's source.
struct Flavour {
    io_class: &'static str,
    /// Its personality outranks the default daemon's example for the same
    /// built-in device.
    outranks_examples: bool,
    matching: Vec<(&'static str, Value)>,
    entitlements: Vec<(&'static str, Value)>,
    source: &'static str,
}

/// `transport.usb` for one vendor.
fn usb_vendor(vendor: i64) -> (&'static str, Value) {
    let mut d = Dictionary::new();
    d.insert("idVendor".into(), vendor.into());
    (
        "com.apple.developer.driverkit.transport.usb",
        Value::Array(vec![Value::Dictionary(d)]),
    )
}

fn flavour(family: Family) -> Result<Flavour, String> {
    let yes = |key: &'static str| (key, Value::Boolean(true));
    Ok(match family {
        Family::Generic => Flavour {
            io_class: "IOUserService",
            outranks_examples: false,
            matching: vec![
                ("IOProviderClass", "IOUserResources".into()),
                ("IOResourceMatch", "IOKit".into()),
            ],
            entitlements: vec![],
            source: include_str!("template/generic.rs.in"),
        },
        Family::Usb => Flavour {
            io_class: "IOUserService",
            outranks_examples: true,
            // The built-in `vendor-bulk` virtual device.
            matching: vec![
                ("IOProviderClass", "IOUSBHostDevice".into()),
                ("idVendor", 4617.into()),
                ("idProduct", 3.into()),
            ],
            entitlements: vec![usb_vendor(4617)],
            source: include_str!("template/usb.rs.in"),
        },
        Family::Hid => Flavour {
            io_class: "IOUserHIDEventService",
            outranks_examples: true,
            // The built-in `keyboard` virtual device.
            matching: vec![
                ("IOProviderClass", "IOHIDInterface".into()),
                ("VendorID", 4617.into()),
                ("ProductID", 1.into()),
            ],
            entitlements: vec![
                yes("com.apple.developer.driverkit.transport.hid"),
                yes("com.apple.developer.driverkit.family.hid.eventservice"),
            ],
            source: include_str!("template/hid.rs.in"),
        },
        Family::Serial => Flavour {
            io_class: "IOUserSerial",
            outranks_examples: true,
            // The built-in `uart` virtual device.
            matching: vec![("IOProviderClass", "IOUARTDevice".into())],
            entitlements: vec![yes("com.apple.developer.driverkit.family.serial")],
            source: include_str!("template/serial.rs.in"),
        },
        Family::Net => Flavour {
            io_class: "IOUserNetworkEthernet",
            outranks_examples: true,
            // The built-in `cable` virtual device's ends.
            matching: vec![("IOProviderClass", "IOVirtualNIC".into())],
            entitlements: vec![yes("com.apple.developer.driverkit.family.networking")],
            source: include_str!("template/net.rs.in"),
        },
        Family::Pci => {
            let mut function = Dictionary::new();
            function.insert("IOPCIPrimaryMatch".into(), EDU.into());
            Flavour {
                io_class: "IOUserService",
                outranks_examples: true,
                // The built-in `edu` device (QEMU's edu, modelled).
                matching: vec![
                    ("IOProviderClass", "IOPCIDevice".into()),
                    ("IOPCIPrimaryMatch", EDU.into()),
                ],
                entitlements: vec![(
                    "com.apple.developer.driverkit.transport.pci",
                    Value::Array(vec![Value::Dictionary(function)]),
                )],
                source: include_str!("template/pci.rs.in"),
            }
        }
    })
}

/// QEMU's edu device: device 0x11e8 of vendor 0x1234.
const EDU: &str = "0x11e81234";

/// A property list as a file's text (XML, as Xcode writes them).
fn xml(d: Dictionary) -> Result<String, String> {
    let mut out = Vec::new();
    Value::Dictionary(d)
        .to_writer_xml(&mut out)
        .map_err(|e| e.to_string())?;
    out.push(b'\n');
    String::from_utf8(out).map_err(|e| e.to_string())
}

fn dictionary(pairs: Vec<(&'static str, Value)>) -> Dictionary {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

pub fn new(args: NewArgs) -> Result<(), String> {
    let name = args.name;
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric());
    if !valid {
        return Err(format!(
            "{name:?}: a driver's name is its class name: letters and digits, starting with a letter"
        ));
    }
    let bundle_id = args
        .bundle_id
        .unwrap_or_else(|| format!("com.example.{name}"));
    let dir = args.path.unwrap_or_else(|| PathBuf::from(&name));
    if dir.exists() {
        return Err(format!("{} exists already", dir.display()));
    }
    let sdk = match args.sdk {
        Some(s) => s,
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."),
    };
    let sdk =
        std::fs::canonicalize(&sdk).map_err(|e| format!("the SDK at {}: {e}", sdk.display()))?;
    if !sdk.join("crates/driverkit/Cargo.toml").is_file() {
        return Err(format!(
            "{} is not a driverkit source tree (no crates/driverkit); pass --sdk",
            sdk.display()
        ));
    }
    let f = flavour(args.family)?;
    let snake = snake_case(&name);
    let package = package_name(&snake, &dir)?;
    let fill = |template: &str| {
        template
            .replace("{name}", &name)
            .replace("{package}", &package)
            .replace("{snake}", &snake)
            .replace("{bundle_id}", &bundle_id)
            .replace("{sdk}", &sdk.display().to_string())
            .replace("{{", "{")
            .replace("}}", "}")
    };
    let mut personality = dictionary(vec![
        ("CFBundleIdentifier", bundle_id.clone().into()),
        ("IOClass", f.io_class.into()),
        ("IOUserClass", name.clone().into()),
        ("IOUserServerName", bundle_id.clone().into()),
    ]);
    personality.extend(dictionary(f.matching));
    if f.outranks_examples {
        // The default daemon's example drivers match the same built-in
        // devices at score 0: a new project's driver is the one its author
        // wants to see run.
        personality.insert("IOProbeScore".into(), PROBE_SCORE.into());
    }
    let mut personalities = Dictionary::new();
    personalities.insert(name.clone(), Value::Dictionary(personality));
    let mut info = driverkit_bundle::minimal_info(&bundle_id, &name, personalities);
    info.insert("CFBundleName".into(), name.clone().into());
    info.insert(
        "OSBundleUsageDescription".into(),
        format!("{name} drives its device.").into(),
    );
    let mut dext_entitlements = dictionary(vec![("com.apple.developer.driverkit", true.into())]);
    dext_entitlements.extend(dictionary(f.entitlements));
    let app_entitlements = dictionary(vec![
        ("com.apple.developer.system-extension.install", true.into()),
        (
            "com.apple.developer.driverkit.userclient-access",
            Value::Array(vec![bundle_id.clone().into()]),
        ),
    ]);
    let target = shared_target_dir();
    let files: Vec<(&str, String)> = vec![
        ("Cargo.toml", fill(include_str!("template/Cargo.toml.in"))),
        (
            ".cargo/config.toml",
            format!(
                "# Every driver project shares one target directory, so the SDK and\n\
                 # its dependencies are compiled once, not once per project (the\n\
                 # package's name, unique to this folder, keeps projects apart).\n\
                 [build]\ntarget-dir = {:?}\n",
                target.display().to_string()
            ),
        ),
        ("Info.plist", xml(info)?),
        ("Entitlements.plist", xml(dext_entitlements)?),
        ("App/Entitlements.plist", xml(app_entitlements)?),
        ("src/lib.rs", fill(f.source)),
        ("src/main.rs", fill(include_str!("template/main.rs.in"))),
        ("src/bin/app.rs", fill(include_str!("template/app.rs.in"))),
        (
            "tests/bundle.rs",
            fill(include_str!("template/bundle_test.rs.in")),
        ),
        (".gitignore", "/target\n/build\n".into()),
    ];
    // Written beside, then renamed: no half project if anything fails.
    let partial = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    for (file, text) in &files {
        let path = partial.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    // The SDK's lock file: the same dependency versions it was tested with.
    let _ = std::fs::copy(sdk.join("Cargo.lock"), partial.join("Cargo.lock"));
    std::fs::rename(&partial, &dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    println!("created {} ({bundle_id})", dir.display());
    println!("  cd {} && cargo test && driverkit build", dir.display());
    println!(
        "The first build of any driver project compiles the SDK and its dependencies (a minute or two on a laptop); \
         later ones reuse them from {} (.cargo/config.toml).",
        target.display()
    );
    Ok(())
}

/// The target directory all driver projects share:
/// `$XDG_CACHE_HOME/driverkit/target`, or `~/.cache/driverkit/target`.
fn shared_target_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("driverkit")
        .join("target")
}

/// A new project's `IOProbeScore`, above the example drivers' (0).
const PROBE_SCORE: i64 = 1000;

/// The project's Cargo package name: its crate's name and a hash of where
/// it lives. Every driver project builds in one shared target directory
/// (the SDK compiles once), and cargo tells packages there apart by name
/// and version only: two projects both called `my_driver` would share
/// their build, and one would ship the other's executable.
fn package_name(snake: &str, dir: &Path) -> Result<String, String> {
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let parent = std::fs::canonicalize(&parent)
        .map_err(|e| format!("{}: {e} (the new project's folder)", parent.display()))?;
    let place = parent.join(dir.file_name().unwrap_or_default());
    // FNV-1a: stable across toolchains, which std's hasher is not promised to be.
    let hash = place
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0x811c_9dc5u32, |h, b| {
            (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
        });
    Ok(format!("{}-{hash:08x}", snake.replace('_', "-")))
}

/// `MyDriver` -> `my_driver`.
fn snake_case(name: &str) -> String {
    let mut out = String::new();
    let mut previous: Option<char> = None;
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            if previous.is_some_and(|p| !p.is_ascii_uppercase()) {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
        previous = Some(c);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn snake_case_of_class_names() {
        assert_eq!(super::snake_case("MyDriver"), "my_driver");
        assert_eq!(super::snake_case("HIDKeyboard"), "hidkeyboard");
        assert_eq!(super::snake_case("Usb2Serial"), "usb2_serial");
    }

    #[test]
    fn package_names_differ_by_folder_and_stay_put() {
        let dir = std::env::temp_dir().join(format!("dk-package-names-{}", std::process::id()));
        for sub in ["a", "b"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let name = |p: &std::path::Path| super::package_name("my_driver", p).unwrap();
        let a = name(&dir.join("a/MyDriver"));
        assert!(
            a.starts_with("my-driver-") && a.len() == "my-driver-".len() + 8,
            "{a}"
        );
        assert_ne!(a, name(&dir.join("b/MyDriver")));
        assert_eq!(
            a,
            name(&dir.join("b/../a/MyDriver")),
            "the folder, however named"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

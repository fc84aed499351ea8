//! `driverkit new NAME --family F`: a Cargo project holding a driver and the
//! app that carries it, like Xcode's DriverKit Driver template: the
//! service's source, an Info.plist with a personality, the dext's and the
//! app's entitlements, and a test that checks the bundle as the system
//! will. It builds and its test passes as generated; each family's
//! personality matches a built-in virtual device where one exists, so the
//! driver runs at once under `driverkit run`.

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};

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
    matching: &'static str,
    entitlements: &'static str,
    source: &'static str,
}

fn flavour(family: Family) -> Flavour {
    match family {
        Family::Generic => Flavour {
            io_class: "IOUserService",
            matching: "<key>IOProviderClass</key>\n\t\t\t<string>IOUserResources</string>\n\t\t\t<key>IOResourceMatch</key>\n\t\t\t<string>IOKit</string>",
            entitlements: "",
            source: include_str!("template/generic.rs.in"),
        },
        Family::Usb => Flavour {
            io_class: "IOUserService",
            // The built-in `vendor-bulk` virtual device.
            matching: "<key>IOProviderClass</key>\n\t\t\t<string>IOUSBHostDevice</string>\n\t\t\t<key>idVendor</key>\n\t\t\t<integer>4617</integer>\n\t\t\t<key>idProduct</key>\n\t\t\t<integer>3</integer>",
            entitlements: "\t<key>com.apple.developer.driverkit.transport.usb</key>\n\t<array>\n\t\t<dict>\n\t\t\t<key>idVendor</key>\n\t\t\t<integer>4617</integer>\n\t\t</dict>\n\t</array>\n",
            source: include_str!("template/usb.rs.in"),
        },
        Family::Hid => Flavour {
            io_class: "IOUserHIDEventService",
            // The built-in `keyboard` virtual device.
            matching: "<key>IOProviderClass</key>\n\t\t\t<string>IOHIDInterface</string>\n\t\t\t<key>VendorID</key>\n\t\t\t<integer>4617</integer>\n\t\t\t<key>ProductID</key>\n\t\t\t<integer>1</integer>",
            entitlements: "\t<key>com.apple.developer.driverkit.transport.hid</key>\n\t<true/>\n\t<key>com.apple.developer.driverkit.family.hid.eventservice</key>\n\t<true/>\n",
            source: include_str!("template/hid.rs.in"),
        },
        Family::Serial => Flavour {
            io_class: "IOUserService",
            // An FTDI FT232R's interface.
            matching: "<key>IOProviderClass</key>\n\t\t\t<string>IOUSBHostInterface</string>\n\t\t\t<key>idVendor</key>\n\t\t\t<integer>1027</integer>\n\t\t\t<key>idProduct</key>\n\t\t\t<integer>24577</integer>\n\t\t\t<key>bConfigurationValue</key>\n\t\t\t<integer>1</integer>\n\t\t\t<key>bInterfaceNumber</key>\n\t\t\t<integer>0</integer>",
            entitlements: "\t<key>com.apple.developer.driverkit.transport.usb</key>\n\t<array>\n\t\t<dict>\n\t\t\t<key>idVendor</key>\n\t\t\t<integer>1027</integer>\n\t\t</dict>\n\t</array>\n\t<key>com.apple.developer.driverkit.family.serial</key>\n\t<true/>\n",
            source: include_str!("template/interface.rs.in"),
        },
        Family::Net => Flavour {
            io_class: "IOUserService",
            // A USB Ethernet adapter's interface (ASIX AX88179).
            matching: "<key>IOProviderClass</key>\n\t\t\t<string>IOUSBHostInterface</string>\n\t\t\t<key>idVendor</key>\n\t\t\t<integer>2965</integer>\n\t\t\t<key>idProduct</key>\n\t\t\t<integer>6032</integer>\n\t\t\t<key>bConfigurationValue</key>\n\t\t\t<integer>1</integer>\n\t\t\t<key>bInterfaceNumber</key>\n\t\t\t<integer>0</integer>",
            entitlements: "\t<key>com.apple.developer.driverkit.transport.usb</key>\n\t<array>\n\t\t<dict>\n\t\t\t<key>idVendor</key>\n\t\t\t<integer>2965</integer>\n\t\t</dict>\n\t</array>\n\t<key>com.apple.developer.driverkit.family.networking</key>\n\t<true/>\n",
            source: include_str!("template/interface.rs.in"),
        },
        Family::Pci => Flavour {
            io_class: "IOUserService",
            // QEMU's `edu` device.
            matching: "<key>IOProviderClass</key>\n\t\t\t<string>IOPCIDevice</string>\n\t\t\t<key>IOPCIPrimaryMatch</key>\n\t\t\t<string>0x11e81234</string>",
            entitlements: "\t<key>com.apple.developer.driverkit.transport.pci</key>\n\t<array>\n\t\t<dict>\n\t\t\t<key>IOPCIPrimaryMatch</key>\n\t\t\t<string>0x11e81234</string>\n\t\t</dict>\n\t</array>\n",
            source: include_str!("template/generic.rs.in"),
        },
    }
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
    let snake = snake_case(&name);
    let f = flavour(args.family);
    let fill = |template: &str| {
        template
            .replace("{name}", &name)
            .replace("{snake}", &snake)
            .replace("{bundle_id}", &bundle_id)
            .replace("{sdk}", &sdk.display().to_string())
            .replace("{{", "{")
            .replace("}}", "}")
    };
    let info = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
	<key>CFBundleIdentifier</key>
	<string>{bundle_id}</string>
	<key>CFBundleExecutable</key>
	<string>{name}</string>
	<key>CFBundleName</key>
	<string>{name}</string>
	<key>CFBundleVersion</key>
	<string>1</string>
	<key>CFBundleShortVersionString</key>
	<string>1.0</string>
	<key>OSBundleUsageDescription</key>
	<string>{name} drives its device.</string>
	<key>IOKitPersonalities</key>
	<dict>
		<key>{name}</key>
		<dict>
			<key>CFBundleIdentifier</key>
			<string>{bundle_id}</string>
			<key>IOClass</key>
			<string>{io_class}</string>
			<key>IOUserClass</key>
			<string>{name}</string>
			<key>IOUserServerName</key>
			<string>{bundle_id}</string>
			{matching}
		</dict>
	</dict>
</dict>
</plist>
"#,
        io_class = f.io_class,
        matching = f.matching,
    );
    let entitlements = |body: &str| {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
{body}</dict>
</plist>
"#
        )
    };
    let files: Vec<(&str, String)> = vec![
        ("Cargo.toml", fill(include_str!("template/Cargo.toml.in"))),
        ("Info.plist", info),
        (
            "Entitlements.plist",
            entitlements(&format!(
                "\t<key>com.apple.developer.driverkit</key>\n\t<true/>\n{}",
                f.entitlements
            )),
        ),
        (
            "App/Entitlements.plist",
            entitlements(&format!(
                "\t<key>com.apple.developer.system-extension.install</key>\n\t<true/>\n\t<key>com.apple.developer.driverkit.userclient-access</key>\n\t<array>\n\t\t<string>{bundle_id}</string>\n\t</array>\n"
            )),
        ),
        ("src/lib.rs", fill(f.source)),
        ("src/main.rs", fill(include_str!("template/main.rs.in"))),
        ("src/bin/app.rs", fill(include_str!("template/app.rs.in"))),
        ("tests/bundle.rs", fill(include_str!("template/bundle_test.rs.in"))),
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
    Ok(())
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
}

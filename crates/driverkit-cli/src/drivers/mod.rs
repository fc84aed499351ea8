//! The drivers built into the `driverkit` binary.
//!
//! `driverkit run` must work from a fresh clone with one `cargo run`, so the
//! example drivers are linked into this binary and their bundles are written
//! into the state directory with the executable as a link to this binary.
//! When the daemon starts such a dext, this binary sees its own name
//! (`argv[0]`) is a driver's and runs that driver instead of the CLI, the
//! way busybox picks an applet. The drivers are the same code as the
//! standalone binaries under `examples/`.

pub mod bench;
pub mod pci_bench;
pub mod pci_test;
pub mod test;
pub mod usb_test;

use std::path::{Path, PathBuf};

use driverkit::runtime::{class, ClassEntry};

/// The entitlements of a driver that needs nothing beyond being one.
pub const PLAIN_ENTITLEMENTS: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<plist version="1.0">
<dict>
	<key>com.apple.developer.driverkit</key><true/>
</dict>
</plist>
"#;

/// A driver this binary can become.
pub struct Embedded {
    /// The bundle's executable name, which is also `argv[0]`'s file name.
    pub executable: &'static str,
    pub info_plist: &'static str,
    pub entitlements: &'static str,
    pub classes: fn() -> Vec<ClassEntry>,
}

/// The example drivers `driverkit run` loads by default.
pub const EXAMPLES: &[Embedded] = &[
    Embedded {
        executable: "NullDriver",
        info_plist: null_driver::INFO_PLIST,
        entitlements: null_driver::ENTITLEMENTS,
        classes: || {
            vec![
                class::<null_driver::NullDriver>(),
                class::<null_driver::NullDriverUserClient>(),
            ]
        },
    },
    Embedded {
        executable: "VirtualSensorDriver",
        info_plist: virtual_sensor_driver::INFO_PLIST,
        entitlements: virtual_sensor_driver::ENTITLEMENTS,
        classes: || vec![class::<virtual_sensor_driver::VirtualSensorDriver>()],
    },
    Embedded {
        executable: "PacketQueueDriver",
        info_plist: packet_queue_driver::INFO_PLIST,
        entitlements: packet_queue_driver::ENTITLEMENTS,
        classes: || vec![class::<packet_queue_driver::PacketQueueDriver>()],
    },
    Embedded {
        executable: "HIDKeyboardDriver",
        info_plist: hid_keyboard_driver::INFO_PLIST,
        entitlements: hid_keyboard_driver::ENTITLEMENTS,
        classes: || vec![class::<hid_keyboard_driver::HIDKeyboardDriver>()],
    },
    Embedded {
        executable: "VirtualSerialDriver",
        info_plist: virtual_serial_driver::INFO_PLIST,
        entitlements: virtual_serial_driver::ENTITLEMENTS,
        classes: || vec![class::<virtual_serial_driver::VirtualSerialDriver>()],
    },
    Embedded {
        executable: "VirtualEthernetDriver",
        info_plist: virtual_ethernet_driver::INFO_PLIST,
        entitlements: virtual_ethernet_driver::ENTITLEMENTS,
        classes: || vec![class::<virtual_ethernet_driver::VirtualEthernetDriver>()],
    },
    Embedded {
        executable: "EduDriver",
        info_plist: edu_driver::INFO_PLIST,
        entitlements: edu_driver::ENTITLEMENTS,
        classes: || {
            vec![
                class::<edu_driver::EduDriver>(),
                class::<edu_driver::EduUserClient>(),
            ]
        },
    },
];

/// Drivers loaded only when asked for (`run --with-tool NAME`): the test
/// and benchmark drivers, and the drivers of real adapters that would
/// otherwise take them from Linux's own drivers (FTDISerialDriver every
/// FT232 from ftdi_sio, CDCEthernetDriver NetChip's ECM from cdc_ether).
pub const TOOLS: &[Embedded] = &[
    Embedded {
        executable: "CDCEthernetDriver",
        info_plist: cdc_ethernet_driver::INFO_PLIST,
        entitlements: cdc_ethernet_driver::ENTITLEMENTS,
        classes: || vec![class::<cdc_ethernet_driver::CDCEthernetDriver>()],
    },
    Embedded {
        executable: "FTDISerialDriver",
        info_plist: ftdi_serial_driver::INFO_PLIST,
        entitlements: ftdi_serial_driver::ENTITLEMENTS,
        classes: || vec![class::<ftdi_serial_driver::FTDISerialDriver>()],
    },
    Embedded {
        executable: test::EXECUTABLE,
        info_plist: test::INFO_PLIST,
        entitlements: PLAIN_ENTITLEMENTS,
        classes: test::classes,
    },
    Embedded {
        executable: usb_test::EXECUTABLE,
        info_plist: usb_test::INFO_PLIST,
        entitlements: usb_test::ENTITLEMENTS,
        classes: usb_test::classes,
    },
    Embedded {
        executable: bench::EXECUTABLE,
        info_plist: bench::INFO_PLIST,
        entitlements: bench::ENTITLEMENTS,
        classes: bench::classes,
    },
];

/// The built-in driver whose executable is `executable`.
pub fn find(executable: &str) -> Result<&'static Embedded, String> {
    EXAMPLES
        .iter()
        .chain(TOOLS)
        .find(|e| e.executable == executable)
        .ok_or_else(|| format!("no built-in driver named {executable:?}"))
}

/// The driver named by `argv[0]`, if this process was started as one.
pub fn from_argv0() -> Option<&'static Embedded> {
    let argv0 = std::env::args_os().next()?;
    find(Path::new(&argv0).file_name()?.to_str()?).ok()
}

/// The app the built-in drivers are installed in, under a state directory:
/// like any driver, a built-in one loads only from inside an app.
pub const APP: &str = "DriverKitBuiltins.app";

/// Writes `<dir>/DriverKitBuiltins.app/Contents/Library/SystemExtensions/
/// <bundle-id>.dext/` for `e`: its Info.plist, its Entitlements.plist and a
/// link to this binary named after its executable. Returns the bundle path.
pub fn materialize(e: &Embedded, dir: &Path) -> Result<PathBuf, String> {
    let info = driverkit_bundle::parse_info(e.info_plist.as_bytes())
        .map_err(|err| format!("built-in {}: {err}", e.executable))?;
    let id = info
        .get("CFBundleIdentifier")
        .and_then(plist::Value::as_string)
        .unwrap_or(e.executable);
    let bundle = driverkit_bundle::location::dext_in_app(&dir.join(APP), id);
    std::fs::create_dir_all(&bundle).map_err(|err| format!("{}: {err}", bundle.display()))?;
    let write = |name: &str, text: &str| {
        std::fs::write(bundle.join(name), text)
            .map_err(|err| format!("{}: {err}", bundle.display()))
    };
    write("Info.plist", e.info_plist)?;
    write(driverkit_bundle::entitlements::FILE, e.entitlements)?;
    let exe = std::env::current_exe().map_err(|err| format!("cannot find this program: {err}"))?;
    let link = bundle.join(e.executable);
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&exe, &link).map_err(|err| format!("{}: {err}", link.display()))?;
    Ok(bundle)
}

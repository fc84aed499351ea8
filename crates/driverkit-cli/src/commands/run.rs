//! `driverkit run`: the daemon in the foreground.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use driverkitd::backends::virtual_device;
use driverkitd::Config;

use crate::drivers;

#[derive(Args)]
pub struct RunArgs {
    /// Do not load the built-in example drivers.
    #[arg(long)]
    no_embedded: bool,
    /// Do not plug the built-in virtual devices.
    #[arg(long)]
    no_default_devices: bool,
    /// Load this .dext bundle too (repeatable).
    #[arg(long = "bundle", value_name = "PATH")]
    bundles: Vec<PathBuf>,
    /// Plug this virtual device at start: a file or a built-in name (repeatable).
    #[arg(long = "device", value_name = "FILE|NAME")]
    devices: Vec<String>,
    /// Relaunches of a crashing driver before it is given up.
    #[arg(long, default_value_t = 3)]
    relaunch_limit: u32,
    /// First relaunch delay in milliseconds (doubles on each crash).
    #[arg(long, default_value_t = 250)]
    relaunch_backoff_ms: u64,
    /// A driver that has not crashed for this many seconds starts counting
    /// its crashes afresh.
    #[arg(long, default_value_t = 1800)]
    relaunch_quiet_s: u64,
    /// Load an opt-in built-in driver too, by its executable's name:
    /// FTDISerialDriver and CDCEthernetDriver (they would take devices from
    /// Linux's own drivers), and the test drivers.
    #[arg(long = "with-tool", value_name = "EXECUTABLE")]
    tools: Vec<String>,
    /// How long a dext may take to answer Start, Stop and other calls.
    #[arg(long, default_value_t = 20_000)]
    call_timeout_ms: u64,
    /// Do not forward HID events to Linux applications through /dev/uinput.
    #[arg(long)]
    no_uinput: bool,
    /// Members of this group may administer the daemon besides root
    /// (approve, trust, developer mode, load, plug...); empty: root only.
    #[arg(long, default_value = "driverkit")]
    admin_group: String,
    /// Do not drive the machine's real USB devices (usbfs).
    #[arg(long)]
    no_linux_usb: bool,
    /// Do not drive the machine's real PCI functions (VFIO).
    #[arg(long)]
    no_linux_pci: bool,
    /// How dexts are confined: enforce (their own user, Landlock,
    /// seccomp), log (report by name each system call the sandbox would
    /// refuse, refuse nothing: to learn what a driver needs) or off.
    #[arg(long, default_value = "enforce", value_name = "enforce|log|off")]
    sandbox: driverkit_core::sandbox::Mode,
    /// The same as --sandbox=off: dexts run with the daemon's authority.
    /// For debugging a driver only.
    #[arg(long, conflicts_with = "sandbox")]
    no_sandbox: bool,
    /// The one user every dext runs as when the daemon is root (a name or
    /// a number). By default each dext process gets a user of its own.
    #[arg(long, value_name = "NAME|UID")]
    dext_user: Option<String>,
    /// No cgroup per dext, even where the daemon has a cgroup v2 subtree
    /// (each dext is still one process with bounded memory and threads).
    #[arg(long)]
    no_cgroups: bool,
    /// The most memory a personality may ask for its dext
    /// (IOUserServerMemoryLimitMB; 4096 MiB unless it asks).
    #[arg(long, value_name = "MIB", default_value_t = 16384)]
    dext_memory_max_mb: u64,
    /// The most threads a personality may ask for its dext
    /// (IOUserServerTaskLimit; 512 unless it asks).
    #[arg(long, value_name = "N", default_value_t = 4096)]
    dext_tasks_max: u64,
    /// What a serial port's node is: a CUSE character device
    /// (/dev/ttyDKn: modem lines, breaks, parity, drains) where /dev/cuse
    /// opens, else a pty (auto); or only one kind.
    #[arg(long, value_name = "auto|cuse|pty", default_value = "auto")]
    serial_nodes: driverkitd::families::serial::NodeChoice,
}

pub fn run(root: PathBuf, args: RunArgs) -> Result<(), String> {
    super::init_logging();
    std::fs::create_dir_all(&root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
    // Before anything is written there (the embedded bundles).
    driverkit_core::root::check_owned(&root)?;
    let mut config = Config::new(root.clone());
    config.relaunch_limit = args.relaunch_limit;
    config.relaunch_backoff = Duration::from_millis(args.relaunch_backoff_ms);
    config.relaunch_quiet = Duration::from_secs(args.relaunch_quiet_s);
    config.call_timeout = Duration::from_millis(args.call_timeout_ms);
    config.uinput = !args.no_uinput;
    config.linux_usb = !args.no_linux_usb;
    config.linux_pci = !args.no_linux_pci;
    config.serial_nodes = args.serial_nodes;
    config.admin_group = Some(args.admin_group).filter(|g| !g.is_empty());
    config.sandbox = driverkit_core::sandbox::Policy {
        mode: if args.no_sandbox {
            driverkit_core::sandbox::Mode::Off
        } else {
            args.sandbox
        },
        user: args.dext_user,
        cgroups: !args.no_cgroups,
        max: driverkit_core::sandbox::Limits {
            memory: args.dext_memory_max_mb.saturating_mul(1 << 20),
            tasks: args.dext_tasks_max,
        },
    };
    config.sandbox.check()?;
    if !args.no_embedded {
        let dir = root.join("embedded");
        for e in drivers::EXAMPLES {
            config.bundles.push(drivers::materialize(e, &dir)?);
        }
    }
    for name in &args.tools {
        config.bundles.push(drivers::materialize(
            drivers::find(name)?,
            &root.join("embedded"),
        )?);
    }
    for b in args.bundles {
        let path = std::fs::canonicalize(&b).map_err(|e| format!("{}: {e}", b.display()))?;
        // A bundle asked for by name must load: say why not, before starting.
        driverkit_bundle::location::containing_app(&path)
            .map_err(|e| format!("--bundle {}: {e}", b.display()))?;
        let bundle = driverkit_bundle::Bundle::load(&path)
            .map_err(|e| format!("--bundle {}: {e}", b.display()))?;
        bundle
            .check_entitlements()
            .map_err(|e| format!("--bundle {}: {e}", b.display()))?;
        config.bundles.push(path);
    }
    if !args.no_default_devices {
        config
            .devices
            .extend(virtual_device::builtin_names().filter_map(virtual_device::builtin));
    }
    for d in &args.devices {
        config.devices.push(super::device::resolve(d)?);
    }
    let (stop_tx, stop_rx) = std::sync::mpsc::channel();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .map_err(|e| format!("cannot watch signals: {e}"))?;
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            tracing::info!("signal {sig}: stopping");
            let _ = stop_tx.send(());
        }
    });
    Ok(driverkitd::run(config, stop_rx)?)
}

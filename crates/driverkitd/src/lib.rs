//! The driverkit daemon: the core (`driverkit-core`) with the families and
//! the device backends plugged in.
//!
//! - [`families`]: the system side of USB, HID, serial, Ethernet, PCI and
//!   plain devices, each a `driverkit_core::Family` (USB's `tap` records
//!   any device's traffic);
//! - [`backends`]: where devices come from (virtual devices, the machine's
//!   USB and PCI devices, USB/IP both ways, recordings played back) and
//!   where events go (uinput);
//! - [`control`]: the control socket's vocabulary, the core's requests and
//!   the ones the families and backends add.
//!
//! Nothing here is part of the driver SDK: dexts see the daemon only through
//! the wire protocol.

pub mod backends;
pub mod control;
pub mod error;
pub mod families;

use driverkit_wire::sync::Locked;
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use backends::usbip_server::ExportError;
pub use driverkit_core::{ioreg, matching, registry, root, store, sysext, user_client};
pub use driverkit_core::{Core, DeviceInfo, EntryId, Event};
pub use error::DaemonError;

use backends::virtual_device::{DeviceSpec, VirtualDevices};
use families::hid::HidSubscription;
use families::Families;

/// How the daemon runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The state directory (control socket, lock, embedded bundles).
    pub root: PathBuf,
    /// Driver bundles to load at start.
    pub bundles: Vec<PathBuf>,
    /// Virtual devices to plug at start.
    pub devices: Vec<DeviceSpec>,
    /// Relaunches of a crashing personality before it is given up.
    pub relaunch_limit: u32,
    /// The first relaunch delay; each further crash doubles it.
    pub relaunch_backoff: Duration,
    /// How long a dext may take to answer the system (Start, Stop...).
    pub call_timeout: Duration,
    /// A personality quiet this long starts counting crashes afresh.
    pub relaunch_quiet: Duration,
    /// Members of this group are administrators besides root.
    pub admin_group: Option<String>,
    /// How dexts are confined.
    pub sandbox: driverkit_core::sandbox::Policy,
    /// Forward HID events to Linux applications through uinput, where
    /// `/dev/uinput` opens. Off by default: a test's typing must not reach
    /// the desktop of the machine running it.
    pub uinput: bool,
    /// Drive the machine's real USB devices through usbfs, where it exists.
    /// Off by default, so that a test of virtual devices never touches the
    /// machine's own; `driverkit run` turns it on.
    pub linux_usb: bool,
    /// Drive the machine's real PCI functions through VFIO, where it
    /// exists. Off by default, as `linux_usb`.
    pub linux_pci: bool,
    /// Serial ports as CUSE devices where `/dev/cuse` opens, else ptys.
    pub serial_nodes: families::serial::NodeChoice,
}

impl Config {
    /// Defaults for a state directory.
    pub fn new(root: PathBuf) -> Config {
        let core = driverkit_core::Config::new(root.clone());
        Config {
            root,
            bundles: Vec::new(),
            devices: Vec::new(),
            relaunch_limit: core.relaunch_limit,
            relaunch_backoff: core.relaunch_backoff,
            call_timeout: core.call_timeout,
            relaunch_quiet: core.relaunch_quiet,
            admin_group: core.admin_group.clone(),
            sandbox: core.sandbox.clone(),
            uinput: false,
            linux_usb: false,
            linux_pci: false,
            serial_nodes: Default::default(),
        }
    }

    fn core(&self) -> driverkit_core::Config {
        driverkit_core::Config {
            root: self.root.clone(),
            bundles: self.bundles.clone(),
            relaunch_limit: self.relaunch_limit,
            relaunch_backoff: self.relaunch_backoff,
            call_timeout: self.call_timeout,
            relaunch_quiet: self.relaunch_quiet,
            admin_group: self.admin_group.clone(),
            sandbox: self.sandbox.clone(),
        }
    }
}

/// A running daemon: the core, its families and its backends. It derefs to
/// the [`Core`] (registry, bundles, lifecycle, extensions, user clients).
#[derive(Clone)]
pub struct Daemon {
    core: Core,
    families: Families,
    virtual_devices: Arc<VirtualDevices>,
    /// The real USB devices, where usbfs exists and it was asked for. Only
    /// held: its uevent thread follows hot-plug while it lives.
    _linux_usb: Option<Arc<backends::linux_usb::LinuxUsb>>,
    /// The real PCI functions, where VFIO exists and it was asked for.
    _linux_pci: Option<Arc<backends::linux_pci::LinuxPci>>,
    /// USB/IP servers, by the address asked for.
    usbip_servers: Arc<std::sync::Mutex<Vec<(String, backends::usbip_server::UsbIpServer)>>>,
}

impl std::ops::Deref for Daemon {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.core
    }
}

impl Daemon {
    /// Starts the core with the families, hangs the virtual bus, plugs the
    /// configured devices and, if asked, forwards HID events to uinput.
    pub fn start(config: Config) -> Daemon {
        let families = Families::new(
            Some(config.root.join("dev/serial/by-driverkit")),
            config.serial_nodes,
        );
        let core = Core::start(config.core(), families.all());
        let system = core.system();
        let virtual_devices = Arc::new(VirtualDevices::new(
            system.clone(),
            families.usb.clone(),
            families.plain.clone(),
            families.serial.clone(),
            families.net.clone(),
            families.pci.clone(),
        ));
        let linux_usb = config
            .linux_usb
            .then(|| {
                backends::linux_usb::LinuxUsb::start(
                    system.clone(),
                    families.usb.clone(),
                    &config.root,
                )
                .inspect_err(|e| tracing::info!("usb      real devices off: {e}"))
                .ok()
            })
            .flatten();
        let linux_pci = config
            .linux_pci
            .then(|| {
                backends::linux_pci::LinuxPci::start(system.clone(), families.pci.clone())
                    .inspect_err(|e| tracing::info!("pci      real functions off: {e}"))
                    .ok()
                    .map(Arc::new)
            })
            .flatten();
        let daemon = Daemon {
            core,
            families,
            virtual_devices,
            _linux_usb: linux_usb,
            _linux_pci: linux_pci,
            usbip_servers: Default::default(),
        };
        for spec in config.devices {
            if let Err(e) = daemon.plug(spec) {
                tracing::error!("not plugging: {e}");
            }
        }
        if config.uinput {
            backends::uinput::forward(&system, &daemon.families.hid);
        }
        daemon
    }

    /// The core alone.
    pub fn core(&self) -> &Core {
        &self.core
    }

    /// Plugs a virtual device into the virtual bus and matches it.
    pub fn plug(&self, spec: DeviceSpec) -> Result<EntryId, DaemonError> {
        Ok(self.virtual_devices.plug(spec)?)
    }

    /// Plugs the device a recording shows (pcapng or pcap of usbmon
    /// packets, `backends::replay`), named `name`; `fast` answers without
    /// the recorded pace; `only` picks a device of a whole bus's capture.
    pub fn plug_recording(
        &self,
        name: &str,
        bytes: &[u8],
        fast: bool,
        only: Option<(u16, u8)>,
    ) -> Result<EntryId, DaemonError> {
        let replay_error = |error| DaemonError::Replay {
            name: name.to_owned(),
            error,
        };
        let frames = driverkit_usb::recording::read(bytes)
            .map_err(|e| replay_error(backends::replay::ReplayError::Unreadable(e)))?;
        let replay =
            backends::replay::Replay::new(name, &frames, fast, only).map_err(replay_error)?;
        Ok(self.families.usb.plug(
            &self.core.system(),
            None,
            Arc::new(replay),
            self.virtual_devices.bus()?,
        )?)
    }

    /// Imports a device from a USB/IP server (`usbip://HOST[:PORT]/BUSID`);
    /// it becomes an `IOUSBHostDevice` like any other. A dropped
    /// connection unplugs it.
    pub fn attach_usbip(&self, url: &str) -> Result<EntryId, DaemonError> {
        Ok(backends::usbip::attach(
            &self.core.system(),
            &self.families.usb,
            self.virtual_devices.bus()?,
            url,
        )?)
    }

    /// Exports devices `ids` (all when empty) at `listen`, to the peers in
    /// `allow` (addresses or CIDR ranges; loopback when empty) and, on
    /// loopback, to administrators and `users` (names or IDs).
    pub fn export_usbip(
        &self,
        ids: &[EntryId],
        listen: &str,
        allow: &[String],
        users: &[String],
    ) -> Result<(std::net::SocketAddr, Vec<(EntryId, String)>), DaemonError> {
        let access = backends::usbip_access::Access {
            allow: allow
                .iter()
                .map(|a| backends::usbip_access::Cidr::parse(a))
                .collect::<Result<_, _>>()?,
            users: users
                .iter()
                .map(|u| {
                    driverkit_core::sandbox::user_id(u)
                        .ok_or_else(|| DaemonError::NoSuchUser(u.clone()))
                })
                .collect::<Result<_, _>>()?,
            admin_group: self.core.admin_group().map(str::to_owned),
        };
        let all = self.families.usb.device_ids();
        let ids: Vec<EntryId> = if ids.is_empty() { all } else { ids.to_vec() };
        let mut exported = Vec::new();
        for id in &ids {
            let device = self.families.usb.lendable(&self.core.system(), *id)?;
            exported.push((
                *id,
                backends::usbip_server::bus_id(device.transport.location_id()),
            ));
        }
        let mut servers = self.usbip_servers.locked();
        if !servers.iter().any(|(l, _)| l == listen) {
            let server = backends::usbip_server::UsbIpServer::start(
                self.core.system(),
                self.families.usb.clone(),
                listen,
                access.clone(),
            )?;
            servers.push((listen.to_owned(), server));
        }
        let (_, server) = servers
            .iter()
            .find(|(l, _)| l == listen)
            .ok_or(ExportError::NotStarted)?;
        server.export(&ids, &access)?;
        Ok((server.address, exported))
    }

    /// Makes virtual keyboard `id` type `text`.
    pub fn type_text(&self, id: EntryId, text: &str) -> Result<usize, DaemonError> {
        Ok(self.virtual_devices.type_text(id, text)?)
    }

    /// Queues one input report on virtual USB HID device `id`.
    pub fn queue_report(&self, id: EntryId, report: &[u8]) -> Result<(), DaemonError> {
        Ok(self.virtual_devices.queue_report(id, report)?)
    }

    /// The last output report (SET_REPORT) virtual USB device `id` got.
    pub fn last_output_report(&self, id: EntryId) -> Option<Vec<u8>> {
        self.virtual_devices.last_output_report(id)
    }

    /// Events as event services dispatch them, from now on.
    pub fn subscribe_hid(&self) -> HidSubscription {
        self.families.hid.subscribe()
    }

    /// Records USB device `id`: the packets that describe it, then its
    /// traffic as it happens (`families::usb::tap`).
    pub fn record_usb(
        &self,
        id: EntryId,
    ) -> Result<
        (
            Vec<families::usb::tap::Record>,
            families::usb::tap::Recording,
        ),
        DaemonError,
    > {
        Ok(self.families.usb.record(id)?)
    }

    /// Packets recorders of USB device `id` lost by falling behind.
    pub fn usb_tap_lost(&self, id: EntryId) -> u64 {
        self.families
            .usb
            .device(id)
            .map_or(0, |d| d.tap.lost.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// The control socket's requests beyond the core's.
    pub fn control_extensions(&self) -> driverkit_core::control::Extensions {
        control::extensions(self)
    }
}

/// Runs a daemon in the foreground until `stop` receives (or its sender is
/// dropped) or a client asks it to shut down, then stops every dext.
pub fn run(config: Config, stop: mpsc::Receiver<()>) -> Result<(), DaemonError> {
    let _lock = root::RootLock::acquire(&config.root)?;
    let root = config.root.clone();
    let daemon = Daemon::start(config);
    let (shutdown_tx, shutdown_rx) = mpsc::channel();
    let socket = driverkit_core::control::serve(
        daemon.core().clone(),
        daemon.control_extensions(),
        &root,
        shutdown_tx.clone(),
    )
    .map_err(|source| DaemonError::Listen {
        path: root.join(driverkit_core::control::SOCKET),
        source,
    })?;
    tracing::info!(
        "ready    daemon pid {} at {}",
        std::process::id(),
        root.display()
    );
    std::thread::spawn(move || {
        let _ = stop.recv();
        let _ = shutdown_tx.send(());
    });
    let _ = shutdown_rx.recv();
    daemon.shutdown();
    let _ = std::fs::remove_file(socket);
    tracing::info!("stopped  daemon pid {}", std::process::id());
    Ok(())
}

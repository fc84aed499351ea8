//! The driverkit daemon: it plays the kernel's role.
//!
//! - [`registry`]: every service, its class, properties and links;
//! - [`matching`]: the personality catalogue and how candidates are chosen;
//! - [`daemon`]: the lifecycle that ties matching to processes;
//! - [`user_server`]: the dext processes and their sockets;
//! - [`families`]: the system side of each family (`IOService` so far);
//! - [`backends`]: where devices come from (virtual devices so far);
//! - [`control`]: the socket the `driverkit` CLI talks to;
//! - [`ioreg`]: the registry as ioreg shows it.
//!
//! Nothing here is part of the driver SDK: dexts see the daemon only through
//! the wire protocol.

pub mod backends;
pub mod control;
pub mod daemon;
pub mod families;
pub mod ioreg;
pub mod matching;
pub mod registry;
pub mod root;
pub mod store;
pub mod sysext;
pub mod user_client;
mod user_server;
mod workers;

pub use daemon::{Config, Daemon, DeviceInfo, Event};

/// Runs a daemon in the foreground until `stop` receives (or its sender is
/// dropped) or a client asks it to shut down, then stops every dext.
pub fn run(config: Config, stop: std::sync::mpsc::Receiver<()>) -> Result<(), String> {
    let _lock = root::RootLock::acquire(&config.root)?;
    let root = config.root.clone();
    let daemon = Daemon::start(config);
    let (shutdown_tx, shutdown_rx) = std::sync::mpsc::channel();
    let socket = control::serve(daemon.clone(), &root, shutdown_tx.clone()).map_err(|e| {
        format!(
            "cannot listen at {}: {e}",
            root.join(control::SOCKET).display()
        )
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

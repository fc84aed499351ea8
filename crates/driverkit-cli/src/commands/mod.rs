//! Subcommands. Each one that talks to a daemon finds it through `--root`.

mod bench;
mod build;
mod call;
mod device;
mod events;
mod hid;
mod ioreg;
mod new;
mod record;
mod run;
mod serial;
mod sysext;
mod validate;
mod why;

use std::path::PathBuf;

pub use bench::run_peer_if_asked as run_bench_peer_if_asked;
use clap::{Parser, Subcommand};
use driverkit_core::EntryId;
use driverkitd::control::{Client, ClientError, CoreRequest as Request};

#[derive(Parser)]
#[command(
    name = "driverkit",
    version,
    about = "A user-space driver framework for Linux, modelled on DriverKit"
)]
pub struct Cli {
    /// The daemon's state directory [default: $DRIVERKIT_ROOT, else
    /// $XDG_STATE_HOME/driverkit or ~/.local/state/driverkit; a command
    /// other than run finds the system service's when no daemon of yours
    /// runs there]
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,
    /// The system service's daemon (/var/lib/driverkit, contrib/systemd).
    #[arg(long, global = true, conflicts_with = "root")]
    system: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground (by default with the example drivers and virtual devices).
    Run(run::RunArgs),
    /// Print the I/O Registry of the running daemon, like macOS ioreg.
    Ioreg(ioreg::IoregArgs),
    /// Check a .dext bundle and print its personalities.
    Validate {
        /// The `<bundle-id>.dext` directory.
        path: PathBuf,
    },
    /// Plug, unplug and list virtual devices.
    #[command(subcommand)]
    Device(device::DeviceCommand),
    /// Load a .dext bundle into the running daemon and match it.
    Load {
        /// The `<bundle-id>.dext` directory.
        path: PathBuf,
    },
    /// Show the daemon's PID and its dexts' PIDs.
    Status,
    /// Explain matching for a provider: every personality considered, its
    /// score, and why it runs, lost (to whom) or was refused (which key).
    Why(why::WhyArgs),
    /// Stop the running daemon (every dext stops first).
    Stop,
    /// HID tools.
    #[command(subcommand)]
    Hid(hid::HidCommand),
    /// Serial ports: a port's line and modem status, and what a tty cannot
    /// set (data bits, parity, DTR/RTS, breaks).
    #[command(subcommand)]
    Serial(serial::SerialCommand),
    /// Print HID events (keyboard, pointer, scroll) as event services dispatch them.
    ///
    /// Keyboard events go only to administrators (root, the daemon's user,
    /// the driverkit group) and members of the input group, as Linux's
    /// /dev/input does; anyone else gets pointer and scroll events only.
    Events(events::EventsArgs),
    /// Call a method of a driver's user client, as an app would.
    Call(call::CallArgs),
    /// Create a driver project (a dext and the app that carries it) from a template.
    New(new::NewArgs),
    /// Build a driver project into NAME.app/Contents/Library/SystemExtensions/<bundle-id>.dext.
    Build(build::BuildArgs),
    /// System extensions: activate, approve, list, deactivate, uninstall (like systemextensionsctl).
    #[command(subcommand)]
    Sysext(sysext::SysextCommand),
    /// Signing keys for `driverkit build --sign`.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Run the benchmarks.
    Bench(bench::BenchArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Write man pages for driverkit and each of its commands into DIR/man1,
    /// where `MANPATH=DIR man driverkit` finds them.
    Man {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Make a signing key at PATH (owner-only) and its public half at PATH.pub.
    New { path: PathBuf },
}

impl Cli {
    fn root(&self) -> PathBuf {
        if self.system {
            return PathBuf::from(driverkitd::root::SYSTEM_ROOT);
        }
        if let Some(root) = &self.root {
            return root.clone();
        }
        match self.command {
            // A daemon of one's own: never the system's.
            Command::Run(_) => driverkitd::root::default_root(),
            _ => driverkitd::root::client_root(),
        }
    }
}

pub fn dispatch(cli: Cli) -> Result<(), String> {
    let root = cli.root();
    if !matches!(cli.command, Command::Run(_) | Command::Bench(_)) {
        end_quietly_on_closed_output();
    }
    match cli.command {
        Command::Run(args) => run::run(root, args),
        Command::Ioreg(args) => ioreg::ioreg(&root, args),
        Command::Validate { path } => validate::validate(&path),
        Command::Device(cmd) => device::device(&root, cmd),
        Command::Load { path } => {
            let path =
                std::fs::canonicalize(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let answer = client(&root)?.request(&Request::Load { path })?;
            println!("loaded {}", answer["bundle"].as_str().unwrap_or("?"));
            Ok(())
        }
        Command::Status => {
            let answer = client(&root)?.request(&Request::Status)?;
            println!("daemon pid {} at {}", answer["pid"], root.display());
            println!("dext pids: {}", answer["dexts"]);
            Ok(())
        }
        Command::Stop => match client(&root)?.request(&Request::Shutdown) {
            Ok(_) => Ok(()),
            // The daemon answers a stop before it exits; a connection
            // closed unanswered is still the daemon gone, as asked (an
            // older daemon signalled its exit first).
            Err(ClientError::Closed) => Ok(()),
            Err(e) => Err(e.into()),
        },
        Command::Why(args) => why::why(&root, args),
        Command::Hid(cmd) => hid::hid(cmd),
        Command::Serial(cmd) => serial::serial(&root, cmd),
        Command::Events(args) => events::events(&root, args),
        Command::New(args) => new::new(args),
        Command::Call(args) => call::call(&root, args),
        Command::Build(args) => build::build(args),
        Command::Sysext(cmd) => sysext::sysext(&root, cmd),
        Command::Key(KeyCommand::New { path }) => sysext::new_key(&path),
        Command::Bench(args) => bench::bench(args),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            // Into memory first: a reader that stops early (`| head`) is
            // not an error worth a panic.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "driverkit", &mut script);
            let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
            Ok(())
        }
        Command::Man { dir } => {
            use clap::CommandFactory;
            // Section 1 pages in man1/: man(1) looks for them there under
            // each MANPATH directory.
            let section = dir.join("man1");
            std::fs::create_dir_all(&section).map_err(|e| format!("{}: {e}", section.display()))?;
            clap_mangen::generate_to(Cli::command(), &section)
                .map_err(|e| format!("{}: {e}", section.display()))?;
            println!(
                "man pages written to {} (read them with MANPATH={} man driverkit)",
                section.display(),
                dir.display()
            );
            Ok(())
        }
    }
}

fn client(root: &std::path::Path) -> Result<Client, String> {
    Ok(Client::connect(root)?)
}

/// Logs to stderr with timestamps; `DRIVERKIT_LOG` filters (default info).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DRIVERKIT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal: not in a journal, a file or
    // a pipe, and never when NO_COLOR is set (no-color.org).
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| crate::words::LogWriter)
        .with_ansi(ansi)
        .with_target(false)
        .try_init();
}

/// Parses `0x100000105` or `4294967557`.
fn parse_id(s: &str) -> Result<EntryId, String> {
    s.parse()
        .map_err(|e: driverkit_core::registry::NotAnEntryId| e.to_string())
}

/// A client command whose output pipe closes (`driverkit ioreg | head -n
/// 1`) ends by SIGPIPE, as Unix tools do, instead of panicking in
/// `println!` (Rust ignores the signal). Not for commands that run a
/// daemon: a client of its sockets going away must not end it.
fn end_quietly_on_closed_output() {
    // SAFETY: sets a signal's disposition to the default, before this
    // process starts any thread that could be writing.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

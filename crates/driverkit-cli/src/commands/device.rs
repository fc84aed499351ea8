//! `driverkit device plug|unplug|type|report|output|attach|export|list`.

use std::path::Path;

use clap::Subcommand;
use driverkitd::backends::virtual_device::{self, DeviceSpec};
use driverkitd::control::{CoreRequest, DeviceArg, DeviceRequest as Request};
use driverkitd::DeviceInfo;

#[derive(Subcommand)]
pub enum DeviceCommand {
    /// Plug a virtual device: a device file, a built-in name (sensor, widget, keyboard, mouse, vendor-bulk), or a recording (.pcapng from `device record`, or a usbmon capture) to play back.
    Plug {
        #[arg(value_name = "FILE|NAME")]
        device: String,
        /// A recording (.pcapng, .pcap) answers at once, not at its
        /// recorded pace.
        #[arg(long)]
        fast: bool,
        /// Of a whole bus's capture, the device to play back: BUS.DEVNUM as
        /// usbmon numbers them [default: the device that is not a hub].
        #[arg(long = "device", value_name = "BUS.DEVNUM")]
        only: Option<String>,
    },
    /// Unplug a virtual device by registry entry ID.
    Unplug {
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Import a device from a USB/IP server: usbip://HOST[:PORT]/BUSID.
    Attach {
        #[arg(value_name = "URL")]
        url: String,
    },
    /// Export USB devices over USB/IP (ID, several IDs, or `all`), so that
    /// `usbip attach` on another machine (or `device attach` of another
    /// daemon) imports them. A device a dext drives is refused.
    ///
    /// Who may import: peers whose address --allow names (loopback only
    /// without it; listening beyond loopback needs it), and on loopback only
    /// processes of administrators and of the users --user names.
    Export {
        #[arg(value_name = "ID|all", required = true)]
        ids: Vec<String>,
        /// Where to listen, HOST:PORT.
        #[arg(long, default_value = "127.0.0.1:3240")]
        listen: String,
        /// A peer address or CIDR range that may import (repeatable).
        #[arg(long, value_name = "ADDR|CIDR")]
        allow: Vec<String>,
        /// A local user (name or ID) whose processes may import over
        /// loopback, besides administrators (repeatable).
        #[arg(long, value_name = "USER")]
        user: Vec<String>,
    },
    /// Make a virtual keyboard type TEXT (a press and a release per character).
    Type {
        #[arg(value_name = "ID")]
        id: String,
        text: String,
    },
    /// Queue one input report on a virtual USB HID device, as its
    /// interrupt-IN endpoint would send it (hex: "00 00 04 00 00 00 00 00").
    Report {
        #[arg(value_name = "ID")]
        id: String,
        #[arg(value_name = "HEX")]
        report: String,
    },
    /// Print the last output report (SET_REPORT, e.g. keyboard LEDs) a
    /// virtual USB device got, as hex; nothing if none yet.
    Output {
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Record a USB device's traffic (control, bulk and interrupt
    /// transfers, both ways, with its descriptors first) to a pcapng file
    /// of usbmon packets, as Wireshark and tshark read them. Ctrl-C ends it.
    Record {
        #[arg(value_name = "ID")]
        id: String,
        /// The pcapng file to write.
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: std::path::PathBuf,
        /// End after this many seconds.
        #[arg(long, value_name = "S")]
        duration: Option<f64>,
        /// Stop the device's drivers and match them again once recording
        /// runs, so that the recording holds their start: a replay must
        /// answer the requests a driver sends as it starts.
        #[arg(long)]
        restart_drivers: bool,
    },
    /// Print a USB device's transfers as they happen, one line each, as
    /// Linux's usbmon text interface does.
    Trace {
        #[arg(value_name = "ID")]
        id: String,
        /// End after this many seconds.
        #[arg(long, value_name = "S")]
        duration: Option<f64>,
    },
    /// List plugged devices, or with --usbip the devices a USB/IP server exports.
    List {
        /// One JSON array.
        #[arg(long)]
        json: bool,
        /// A USB/IP server, HOST[:PORT], to ask instead of the daemon.
        #[arg(long, value_name = "HOST[:PORT]")]
        usbip: Option<String>,
    },
}

/// A device argument: an existing file, else a built-in name.
fn argument(arg: &str) -> Result<DeviceArg, String> {
    let path = Path::new(arg);
    if path.exists() {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{arg}: {e}"))?;
        Ok(DeviceArg::File {
            path: arg.to_owned(),
            text,
        })
    } else if virtual_device::builtin(arg).is_some() {
        Ok(DeviceArg::Builtin(arg.to_owned()))
    } else {
        let known: Vec<_> = virtual_device::builtin_names().collect();
        Err(format!(
            "{arg}: no such file, and not a built-in device ({})",
            known.join(", ")
        ))
    }
}

/// A recording to play back (a file that starts as pcapng or pcap does),
/// else [`argument`]'s device.
fn recording_or_argument(arg: &str, fast: bool, only: Option<&str>) -> Result<DeviceArg, String> {
    let only = only
        .map(|d| {
            d.split_once('.')
                .and_then(|(b, n)| Some((b.parse::<u16>().ok()?, n.parse::<u8>().ok()?)))
                .ok_or_else(|| {
                    format!("--device {d}: expected BUS.DEVNUM (1.005), as usbmon numbers devices")
                })
        })
        .transpose()?;
    let path = Path::new(arg);
    if path.is_file() {
        let bytes = std::fs::read(path).map_err(|e| format!("{arg}: {e}"))?;
        let magic = bytes.get(0..4).unwrap_or_default();
        let capture = magic == [0x0a, 0x0d, 0x0d, 0x0a]
            || [[0xd4, 0xc3, 0xb2, 0xa1], [0x4d, 0x3c, 0xb2, 0xa1]]
                .iter()
                .any(|m| magic == m);
        if capture {
            return Ok(DeviceArg::Recording {
                path: arg.to_owned(),
                hex: driverkit_wire::hex::encode(&bytes, ""),
                fast,
                device: only,
            });
        }
    }
    argument(arg)
}

/// Parses a device argument locally (for `driverkit run --device`).
pub fn resolve(arg: &str) -> Result<DeviceSpec, String> {
    match argument(arg)? {
        DeviceArg::Builtin(name) => {
            virtual_device::builtin(&name).ok_or_else(|| format!("{name}: unknown"))
        }
        DeviceArg::File { path, text } => Ok(virtual_device::parse(&text, &path)?),
        DeviceArg::Recording { path, .. } => Err(format!(
            "{path}: a recording is played back with `driverkit device plug {path}` once the daemon runs"
        )),
    }
}

pub fn device(root: &Path, cmd: DeviceCommand) -> Result<(), String> {
    if let DeviceCommand::List {
        json,
        usbip: Some(server),
    } = &cmd
    {
        return list_usbip(server, *json);
    }
    // A recording streams on a connection of its own.
    match cmd {
        DeviceCommand::Record {
            id,
            output,
            duration,
            restart_drivers,
        } => super::record::record(
            root,
            super::parse_id(&id)?,
            &output,
            duration,
            restart_drivers,
        ),
        DeviceCommand::Trace { id, duration } => {
            super::record::trace(root, super::parse_id(&id)?, duration)
        }
        cmd => other(root, cmd),
    }
}

fn other(root: &Path, cmd: DeviceCommand) -> Result<(), String> {
    let mut client = super::client(root)?;
    match cmd {
        DeviceCommand::Plug { device, fast, only } => {
            let answer = client.request(&Request::Plug {
                device: recording_or_argument(&device, fast, only.as_deref())?,
            })?;
            let id = answer["id"].as_u64().ok_or("answer without id")?;
            println!("{id:#x}");
        }
        DeviceCommand::Unplug { id } => {
            client.request(&CoreRequest::Unplug {
                id: super::parse_id(&id)?,
            })?;
        }
        DeviceCommand::Type { id, text } => {
            let answer = client.request(&Request::Type {
                id: super::parse_id(&id)?,
                text,
            })?;
            eprintln!("queued {} reports", answer["reports"]);
        }
        DeviceCommand::Report { id, report } => {
            client.request(&Request::Report {
                id: super::parse_id(&id)?,
                report,
            })?;
        }
        DeviceCommand::Output { id } => {
            let answer = client.request(&Request::Output {
                id: super::parse_id(&id)?,
            })?;
            if let Some(hex) = answer["report"].as_str() {
                println!("{hex}");
            }
        }
        DeviceCommand::Attach { url } => {
            let answer = client.request(&Request::Attach { url })?;
            let id = answer["id"].as_u64().ok_or("answer without id")?;
            println!("{id:#x}");
        }
        DeviceCommand::Export {
            ids,
            listen,
            allow,
            user,
        } => {
            let ids = if ids.iter().any(|i| i == "all") {
                Vec::new()
            } else {
                ids.iter()
                    .map(|i| super::parse_id(i))
                    .collect::<Result<Vec<_>, _>>()?
            };
            let answer = client.request(&Request::Export {
                ids,
                listen,
                allow,
                users: user,
            })?;
            let address = answer["address"].as_str().unwrap_or("?");
            for d in answer["devices"].as_array().into_iter().flatten() {
                println!(
                    "{:#x} exported as usbip://{address}/{}",
                    d["id"].as_u64().unwrap_or(0),
                    d["busid"].as_str().unwrap_or("?")
                );
            }
        }
        DeviceCommand::Record { .. } | DeviceCommand::Trace { .. } => {
            return Err("recordings stream on a connection of their own".into())
        }
        DeviceCommand::List { json, .. } => {
            let answer = client.request(&CoreRequest::Devices)?;
            if json {
                println!("{answer}");
                return Ok(());
            }
            let devices: Vec<DeviceInfo> =
                serde_json::from_value(answer).map_err(|e| e.to_string())?;
            println!(
                "{:<14} {:<18} {:<16} {:<28} CLIENTS",
                "ID", "NAME", "CLASS", "SOURCE"
            );
            for d in devices {
                println!(
                    "{:<14} {:<18} {:<16} {:<28} {}",
                    format!("{:#x}", d.id),
                    d.name,
                    d.class,
                    d.source,
                    d.clients.join(", ")
                );
            }
        }
    }
    Ok(())
}

/// OP_REQ_DEVLIST against a server, straight from the CLI.
fn list_usbip(server: &str, json: bool) -> Result<(), String> {
    use driverkitd::backends::usbip;
    let (host, port) = usbip::split_host(server)?;
    let devices = usbip::list(&host, port)?;
    if json {
        println!(
            "{}",
            serde_json::to_string(&devices).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    println!(
        "{:<12} {:<10} {:<6} INTERFACES (class/subclass/protocol)",
        "BUSID", "VID:PID", "CLASS"
    );
    for d in devices {
        let interfaces: Vec<String> = d
            .interfaces
            .iter()
            .map(|(c, s, p)| format!("{c:02x}/{s:02x}/{p:02x}"))
            .collect();
        println!(
            "{:<12} {:04x}:{:04x}  {:02x}     {}",
            d.busid,
            d.id_vendor,
            d.id_product,
            d.device_class,
            interfaces.join(" ")
        );
    }
    Ok(())
}

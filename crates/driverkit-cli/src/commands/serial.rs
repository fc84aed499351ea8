//! `driverkit serial get|set`: a serial port's line as the driver has it,
//! and what a pty cannot carry (data bits, parity, modem lines, breaks).

use std::path::Path;

use clap::{Args, Subcommand};
use driverkitd::control::{SerialRequest, SerialSettings};

#[derive(Subcommand)]
pub enum SerialCommand {
    /// Print a port's line, modem status and byte counts.
    Get {
        /// The port: its IOTTYDevice, its callout path, or its registry ID.
        port: String,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Change a port through its driver (HwProgramUART, HwProgramMCR,
    /// HwSendBreak...). Only the options given change; a driver that
    /// cannot do something says so.
    Set(SetArgs),
}

#[derive(Args)]
pub struct SetArgs {
    /// The port: its IOTTYDevice, its callout path, or its registry ID.
    port: String,
    #[arg(long)]
    baud: Option<u32>,
    /// 5, 6, 7 or 8.
    #[arg(long)]
    data_bits: Option<u8>,
    #[arg(long, value_parser = ["none", "odd", "even", "mark", "space"])]
    parity: Option<String>,
    #[arg(long, value_parser = ["1", "1.5", "2"])]
    stop_bits: Option<String>,
    #[arg(long, value_parser = ["none", "rtscts", "xonxoff"])]
    flow: Option<String>,
    #[arg(long, value_parser = on_off)]
    dtr: Option<bool>,
    #[arg(long, value_parser = on_off)]
    rts: Option<bool>,
    /// Send a break of this many milliseconds.
    #[arg(long = "break", value_name = "MS")]
    break_ms: Option<u32>,
}

fn on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" | "1" | "true" => Ok(true),
        "off" | "0" | "false" => Ok(false),
        other => Err(format!("expected on or off, found {other:?}")),
    }
}

pub fn serial(root: &Path, cmd: SerialCommand) -> Result<(), String> {
    let mut client = super::client(root)?;
    let (request, json) = match cmd {
        SerialCommand::Get { port, json } => (SerialRequest::SerialGet { port }, json),
        SerialCommand::Set(a) => (
            SerialRequest::SerialSet {
                port: a.port,
                set: SerialSettings {
                    baud: a.baud,
                    data_bits: a.data_bits,
                    parity: a.parity,
                    stop_bits: a.stop_bits,
                    flow: a.flow,
                    dtr: a.dtr,
                    rts: a.rts,
                    break_ms: a.break_ms,
                },
            },
            false,
        ),
    };
    let answer = client.request(&request)?;
    if json {
        println!("{answer}");
        return Ok(());
    }
    let flag = |v: &serde_json::Value| if v == true { "on" } else { "off" };
    println!(
        "{}  ({}, {})",
        answer["callout"].as_str().unwrap_or("?"),
        answer["tty"].as_str().unwrap_or("?"),
        if answer["open"] == true {
            "open"
        } else {
            "closed"
        }
    );
    println!(
        "  line   {} baud, {} data bits, parity {}, {} stop bits, flow {:#x}",
        answer["baud"],
        answer["data_bits"],
        answer["parity"].as_str().unwrap_or("?"),
        answer["stop_bits"],
        answer["flow"].as_u64().unwrap_or(0)
    );
    println!(
        "  out    DTR {}, RTS {}",
        flag(&answer["dtr"]),
        flag(&answer["rts"])
    );
    match answer["modem"].as_object() {
        Some(m) => println!(
            "  in     CTS {}, DSR {}, RI {}, DCD {}",
            flag(&m["cts"]),
            flag(&m["dsr"]),
            flag(&m["ri"]),
            flag(&m["dcd"])
        ),
        None => println!("  in     (the driver does not report its modem status)"),
    }
    println!(
        "  bytes  {} out, {} in, {} dropped while closed",
        answer["tx_bytes"], answer["rx_bytes"], answer["rx_dropped_while_closed"]
    );
    Ok(())
}

//! `driverkit hid decode FILE|HEX`.

use clap::Subcommand;
use driverkit_hid::{ReportDescriptor, ReportType};

#[derive(Subcommand)]
pub enum HidCommand {
    /// Parse a report descriptor: a file of raw bytes (like sysfs's
    /// report_descriptor), or hex bytes ("05 01 09 06 ...").
    Decode {
        #[arg(value_name = "FILE|HEX")]
        descriptor: String,
        /// Print the collections and elements as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn bytes_of(arg: &str) -> Result<Vec<u8>, String> {
    let path = std::path::Path::new(arg);
    if path.is_file() {
        return std::fs::read(path).map_err(|e| format!("{arg}: {e}"));
    }
    match driverkit_wire::hex::decode(arg) {
        Ok(bytes) if !bytes.is_empty() => Ok(bytes),
        _ => Err(format!("{arg:?}: neither a file nor hex bytes")),
    }
}

pub fn hid(cmd: HidCommand) -> Result<(), String> {
    let HidCommand::Decode { descriptor, json } = cmd;
    let bytes = bytes_of(&descriptor)?;
    let d = ReportDescriptor::parse(&bytes).map_err(|e| format!("report descriptor {e}"))?;
    if json {
        let v = serde_json::to_value(&d).map_err(|e| e.to_string())?;
        println!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    println!("DeviceUsagePairs: {:?}", d.device_usage_pairs());
    println!("ReportIDs: {:?}", d.report_ids);
    for kind in [ReportType::Input, ReportType::Output, ReportType::Feature] {
        println!("Max{kind:?}ReportSize: {}", d.max_report_size(kind));
    }
    for c in &d.collections {
        println!(
            "collection {} kind {} usage {:#06x}:{:#06x} parent {:?}",
            c.index, c.kind, c.usage_page, c.usage, c.parent
        );
    }
    for e in &d.elements {
        let usages = match e.usages.as_slice() {
            [] => "-".to_owned(),
            [one] => format!("{one:#010x}"),
            [first, .., last] => format!("{first:#010x}..{last:#010x} ({})", e.usages.len()),
        };
        println!(
            "{:?} id {} bits {}+{}x{} {} {} logical {}..{} usages {usages}",
            e.report_type,
            e.report_id,
            e.bit_offset,
            e.report_count,
            e.report_size,
            if e.is_constant() {
                "const"
            } else if e.is_variable() {
                "var"
            } else {
                "array"
            },
            if e.is_relative() { "rel" } else { "abs" },
            e.logical_minimum,
            e.logical_maximum,
        );
    }
    Ok(())
}

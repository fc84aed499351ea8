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
    // IOHIDDevice's property names, values in words.
    let pairs: Vec<String> = d
        .device_usage_pairs()
        .iter()
        .map(|(page, usage)| format!("{page:#06x}:{usage:#06x}"))
        .collect();
    println!("DeviceUsagePairs: {}", list_or_none(&pairs));
    let ids: Vec<String> = d.report_ids.iter().map(u8::to_string).collect();
    println!("ReportIDs: {}", list_or_none(&ids));
    for (kind, name) in [
        (ReportType::Input, "Input"),
        (ReportType::Output, "Output"),
        (ReportType::Feature, "Feature"),
    ] {
        println!("Max{name}ReportSize: {} bytes", d.max_report_size(kind));
    }
    for c in &d.collections {
        let parent = match c.parent {
            Some(p) => format!("inside collection {p}"),
            None => "top level".to_owned(),
        };
        println!(
            "collection {}: {} ({}), usage {:#06x}:{:#06x}, {parent}",
            c.index,
            collection_kind(c.kind),
            c.kind,
            c.usage_page,
            c.usage
        );
    }
    for e in &d.elements {
        let usages = match e.usages.as_slice() {
            [] => "no usages".to_owned(),
            [one] => format!("usage {one:#010x}"),
            [first, .., last] => format!("usages {first:#010x}..{last:#010x} ({})", e.usages.len()),
        };
        let kind = match e.report_type {
            ReportType::Input => "input",
            ReportType::Output => "output",
            ReportType::Feature => "feature",
        };
        let report = if e.report_id == 0 {
            "the report".to_owned()
        } else {
            format!("report {}", e.report_id)
        };
        println!(
            "{kind} in {report}: bit {} on, {} x {} bits, {}, {}, logical {}..{}, {usages}",
            e.bit_offset,
            e.report_count,
            e.report_size,
            if e.is_constant() {
                "constant"
            } else if e.is_variable() {
                "variable"
            } else {
                "array"
            },
            if e.is_relative() {
                "relative"
            } else {
                "absolute"
            },
            e.logical_minimum,
            e.logical_maximum,
        );
    }
    Ok(())
}

/// Items joined by commas, or "none".
fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

/// The HID specification's name of a collection type (6.2.2.6).
fn collection_kind(kind: u8) -> &'static str {
    match kind {
        0 => "physical",
        1 => "application",
        2 => "logical",
        3 => "report",
        4 => "named array",
        5 => "usage switch",
        6 => "usage modifier",
        0x80..=0xff => "vendor-defined",
        _ => "reserved",
    }
}

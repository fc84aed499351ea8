//! `driverkit events`: the system's HID event stream.

use std::io::Write;
use std::path::Path;

use clap::Args;
use driverkitd::families::hid::{usage_char, HidEvent};

#[derive(Args)]
pub struct EventsArgs {
    /// One JSON object per event and line.
    #[arg(long)]
    json: bool,
    /// Exit after N events.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
}

pub fn events(root: &Path, args: EventsArgs) -> Result<(), String> {
    let (without_keys, stream) = driverkitd::control::events(root)?;
    if let Some(why) = without_keys {
        eprintln!("note: {why}");
    }
    // Scripts and tests wait for this line before making events happen.
    eprintln!("listening for HID events");
    let mut out = std::io::stdout().lock();
    let mut shift = false;
    if args.count == Some(0) {
        return Ok(());
    }
    for (seen, event) in (1u64..).zip(stream) {
        let e = event?;
        let line = if args.json {
            serde_json::json!({
                "kind": e.kind_name(),
                "usage_page": e.usage_page,
                "usage": e.usage,
                "value": e.values.0,
                "values": [e.values.0, e.values.1, e.values.2],
                "timestamp": e.timestamp,
                "service": format!("{:#x}", e.service),
            })
            .to_string()
        } else {
            describe(&e, &mut shift)
        };
        writeln!(out, "{line}").map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
        if args.count.is_some_and(|n| seen >= n) {
            break;
        }
    }
    Ok(())
}

/// One line for a person: the key's character when it types one.
fn describe(e: &HidEvent, shift: &mut bool) -> String {
    let at = e.timestamp as f64 / 1e9;
    let what = match e.kind_name() {
        "keyboard" => {
            if e.usage_page == 7 && (e.usage == 0xe1 || e.usage == 0xe5) {
                *shift = e.values.0 != 0;
            }
            let ch = (e.usage_page == 7)
                .then(|| usage_char(e.usage, *shift))
                .flatten()
                .map(|c| format!(" {c:?}"))
                .unwrap_or_default();
            format!(
                "keyboard page {:#04x} usage {:#04x} {}{ch}",
                e.usage_page,
                e.usage,
                if e.values.0 != 0 { "down" } else { "up" }
            )
        }
        "pointer" => format!(
            "pointer  dx {} dy {} buttons {:#b}",
            e.values.0, e.values.1, e.values.2
        ),
        "scroll" => format!(
            "scroll   dx {} dy {} dz {}",
            e.values.0, e.values.1, e.values.2
        ),
        other => other.to_owned(),
    };
    format!("{at:>14.6} {what}  from {:#x}", e.service)
}

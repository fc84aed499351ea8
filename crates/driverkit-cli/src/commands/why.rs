//! `driverkit why ID`: every personality matching considered for a
//! provider, its score, and why it runs, lost or was refused.

use clap::Args;
use driverkitd::control::CoreRequest;

#[derive(Args)]
pub struct WhyArgs {
    /// The provider's registry ID, as `driverkit ioreg` shows it (0x...).
    id: String,
    /// Print the answer as JSON.
    #[arg(long)]
    json: bool,
}

pub fn why(root: &std::path::Path, args: WhyArgs) -> Result<(), String> {
    let id = super::parse_id(&args.id)?;
    let answer = super::client(root)?.request(&CoreRequest::Why { id })?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&answer).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    println!(
        "{} ({})",
        answer["provider"].as_str().unwrap_or("?"),
        answer["classes"]
            .as_array()
            .map(|c| c
                .iter()
                .filter_map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(" < "))
            .unwrap_or_default()
    );
    let considered = answer["considered"].as_array().cloned().unwrap_or_default();
    if considered.is_empty() {
        println!("  no personality is for this provider's classes");
    }
    for c in &considered {
        let score = c["score"]
            .as_i64()
            .map(|s| format!("score {s}"))
            .unwrap_or_else(|| "no score".into());
        println!(
            "  {:<9} {} ({}, {})\n            {}",
            c["outcome"].as_str().unwrap_or("?"),
            c["personality"].as_str().unwrap_or("?"),
            score,
            c["category"].as_str().unwrap_or("?"),
            c["reason"].as_str().unwrap_or("")
        );
    }
    let others = answer["other_classes"].as_u64().unwrap_or(0);
    if others > 0 {
        println!("  ({others} personalities for other provider classes not shown)");
    }
    Ok(())
}

//! `driverkit why ID`: every personality matching considered for a
//! provider, its score, and why it runs, lost or was refused.

use clap::Args;
use driverkitd::control::CoreRequest;

#[derive(Args)]
pub struct WhyArgs {
    /// The provider: its registry ID as `driverkit ioreg` shows it (0x...),
    /// or its registry name when one entry has it.
    #[arg(value_name = "ID|NAME")]
    id: String,
    /// Print the answer as JSON.
    #[arg(long)]
    json: bool,
}

pub fn why(root: &std::path::Path, args: WhyArgs) -> Result<(), String> {
    let mut client = super::client(root)?;
    let id = match super::parse_id(&args.id) {
        Ok(id) => id,
        Err(_) => by_name(&client.registry()?, &args.id)?,
    };
    let answer = client.request(&CoreRequest::Why { id })?;
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

/// The ID of the one registry entry named `name`; else which entries
/// there are to choose from.
fn by_name(
    tree: &driverkit_core::ioreg::Node,
    name: &str,
) -> Result<driverkit_core::EntryId, String> {
    fn walk<'a>(
        n: &'a driverkit_core::ioreg::Node,
        name: &str,
        out: &mut Vec<&'a driverkit_core::ioreg::Node>,
    ) {
        if n.name == name {
            out.push(n);
        }
        for c in &n.children {
            walk(c, name, out);
        }
    }
    let mut found = Vec::new();
    walk(tree, name, &mut found);
    match found.as_slice() {
        [one] => Ok(one.id),
        [] => Err(format!(
            "no registry entry is named {name:?}: give its ID or its name as `driverkit ioreg` shows them"
        )),
        many => Err(format!(
            "{} registry entries are named {name:?}: give one's ID ({})",
            many.len(),
            many.iter()
                .map(|n| format!("{:#x}, a {}", n.id, n.class))
                .collect::<Vec<_>>()
                .join("; ")
        )),
    }
}

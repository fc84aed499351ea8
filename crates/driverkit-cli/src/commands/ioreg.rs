//! `driverkit ioreg`.

use std::path::Path;

use clap::Args;
use driverkitd::ioreg::{self, Options};

#[derive(Args)]
pub struct IoregArgs {
    /// Show the properties of every object.
    #[arg(short = 'l')]
    all_properties: bool,
    /// Show the properties of objects of this class (or a subclass).
    #[arg(short = 'c', value_name = "CLASS")]
    class: Option<String>,
    /// Show the properties of objects with this name.
    #[arg(short = 'n', value_name = "NAME")]
    name: Option<String>,
    /// Show only the subtrees rooted at the objects -c or -n select.
    #[arg(short = 'r')]
    rooted: bool,
    /// Archive: print the tree as an XML property list.
    #[arg(short = 'a')]
    archive: bool,
    /// Print the tree as JSON.
    #[arg(long)]
    json: bool,
}

pub fn ioreg(root: &Path, args: IoregArgs) -> Result<(), String> {
    let tree = super::client(root)?.registry()?;
    let options = Options {
        all_properties: args.all_properties,
        class: args.class,
        name: args.name,
        rooted: args.rooted,
    };
    let roots = options.roots(&tree);
    // A filter that matches nothing prints nothing and fails, as grep does,
    // so that `ioreg -c X && ...` means "there is an X".
    let selecting = options.class.is_some() || options.name.is_some();
    let matches = Options {
        all_properties: false,
        class: options.class.clone(),
        name: options.name.clone(),
        rooted: true,
    };
    if selecting && matches.roots(&tree).is_empty() {
        std::process::exit(1);
    }
    if args.json {
        let value = if options.rooted {
            serde_json::to_value(&roots)
        } else {
            serde_json::to_value(&tree)
        }
        .map_err(|e| e.to_string())?;
        let value = hex_ids(value);
        println!(
            "{}",
            serde_json::to_string_pretty(&value).map_err(|e| e.to_string())?
        );
    } else if args.archive {
        let mut v = super::client(root)?
            .request(&driverkitd::control::CoreRequest::Registry)?
            .get("plist")
            .and_then(|p| p.as_str())
            .map(str::to_owned)
            .ok_or("answer without plist")?;
        if options.rooted {
            // -r with -a: an array of the selected subtrees.
            let whole = plist::Value::from_reader_xml(v.as_bytes()).map_err(|e| e.to_string())?;
            let ids: Vec<u64> = roots.iter().map(|n| n.id.raw()).collect();
            let mut picked = Vec::new();
            collect(&whole, &ids, &mut picked);
            let mut out = Vec::new();
            plist::Value::Array(picked)
                .to_writer_xml(&mut out)
                .map_err(|e| e.to_string())?;
            v = String::from_utf8_lossy(&out).into_owned();
        }
        println!("{v}");
    } else {
        print!("{}", ioreg::render(&tree, &options));
    }
    Ok(())
}

fn collect(v: &plist::Value, ids: &[u64], out: &mut Vec<plist::Value>) {
    let Some(d) = v.as_dictionary() else { return };
    if d.get("IORegistryEntryID")
        .and_then(plist::Value::as_unsigned_integer)
        .is_some_and(|id| ids.contains(&id))
    {
        out.push(v.clone());
        return;
    }
    if let Some(plist::Value::Array(children)) = d.get("IORegistryEntryChildren") {
        for c in children {
            collect(c, ids, out);
        }
    }
}

/// Registry entry IDs in JSON as the text output shows them (`0x100000104`),
/// so that an ID copied from either works in the other and in `-n`/`why`.
fn hex_ids(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| match (k.as_str(), v.as_u64()) {
                    ("id", Some(id)) => (k, Value::String(format!("{id:#x}"))),
                    _ => (k, hex_ids(v)),
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(hex_ids).collect()),
        other => other,
    }
}

//! The core names no family: a search of its sources for the words of the
//! families it must not know (USB, HID, pipes, reports), in any case, finds
//! them in comments only (where they name the seam). The compiler already
//! keeps the core from depending on the families' crates; this keeps it
//! from knowing their classes and words by heart.

mod common;

use common::sources;
use std::path::Path;

const WORDS: &[&str] = &[
    "usb", "hid", "pipe", "report", "pci", "serial", "uart", "ethernet",
];

/// Words of Rust and Linux that hold a family word without meaning it
/// (serde's traits, a signal, a system call), blanked before the search.
const NOT_FAMILY: &[&str] = &["deserialize", "serialize", "sigpipe", "pipe2"];

/// A line's code, lowercased, with the words of `NOT_FAMILY` blanked.
fn searched(line: &str) -> String {
    let mut code = code_of(line).to_lowercase();
    for word in NOT_FAMILY {
        code = code.replace(word, " ");
    }
    code
}

/// Code of a line: what precedes a `//` comment. The core's sources have
/// no `//` inside string literals (checked: such a line would fail here
/// and would have to be looked at).
fn code_of(line: &str) -> &str {
    match line.find("//") {
        Some(i) => &line[..i],
        None => line,
    }
}

#[test]
fn the_core_sources_name_no_family_outside_comments() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    let mut paths = Vec::new();
    sources(&src, &mut paths);
    let files = paths.len();
    assert!(
        paths
            .iter()
            .any(|p| p.components().any(|c| c.as_os_str() == "sandbox")),
        "the search descends into subfolders"
    );
    for path in paths {
        let text = std::fs::read_to_string(&path).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = searched(line);
            for word in WORDS {
                if code.contains(word) {
                    found.push(format!(
                        "{}:{}: {word}: {}",
                        path.display(),
                        n + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(files >= 10, "the core's sources are where this test looks");
    assert!(
        found.is_empty(),
        "family words in the core:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_search_finds_a_family_word_in_code() {
    // The check itself can fail: a line of code naming a family is caught,
    // the same words in a comment are not.
    assert!(code_of("let x = usb_device();").contains("usb"));
    assert!(searched("let p = PciFunction::new();").contains("pci"));
    assert!(!searched("#[derive(Serialize, serde::Deserialize)]").contains("serial"));
    assert!(!code_of("    // the USB family plugs in here")
        .to_lowercase()
        .contains("usb"));
}

//! The core names no family: a search of its sources for the words of the
//! families it must not know (USB, HID, pipes, reports), in any case, finds
//! them in comments only (where they name the seam). The compiler already
//! keeps the core from depending on the families' crates; this keeps it
//! from knowing their classes and words by heart.

use std::path::Path;

const WORDS: &[&str] = &["usb", "hid", "pipe", "report"];

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
    let mut files = 0;
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        files += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = code_of(line).to_lowercase();
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
    assert!(!code_of("    // the USB family plugs in here")
        .to_lowercase()
        .contains("usb"));
}

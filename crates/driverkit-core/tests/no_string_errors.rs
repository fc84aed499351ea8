//! Errors in the core and the daemon are typed: no function answers
//! `Result<_, String>`, so every caller can match on what failed. Words
//! are made where an error leaves the process (the control socket, the
//! CLI), not before. A search of both crates' sources keeps it so.

mod common;

use common::sources;
use std::path::Path;

/// Whether `code` spells a result whose error is a `String`: `Result<`,
/// then (across nested brackets) `, String>` closing that same result.
fn string_error(code: &str) -> bool {
    let mut rest = code;
    while let Some(at) = rest.find("Result<") {
        let inside = &rest[at + "Result<".len()..];
        let mut depth = 1;
        let mut comma_at_top = None;
        for (i, c) in inside.char_indices() {
            match c {
                '<' | '(' | '[' => depth += 1,
                '>' | ')' | ']' => {
                    depth -= 1;
                    if depth == 0 {
                        if let Some(comma) = comma_at_top {
                            if inside[comma + 1..i].trim() == "String" {
                                return true;
                            }
                        }
                        break;
                    }
                }
                ',' if depth == 1 => comma_at_top = Some(i),
                _ => {}
            }
        }
        rest = inside;
    }
    false
}

#[test]
fn the_search_finds_what_it_looks_for() {
    assert!(string_error("fn f() -> Result<Vec<[u8; 8]>, String> {"));
    assert!(string_error("x: Mutex<Result<Store, String>>,"));
    assert!(!string_error(
        "fn f() -> Result<HashMap<u64, String>, Error> {"
    ));
    assert!(!string_error("fn f() -> IOResult<String> {"));
}

#[test]
fn no_result_in_the_core_or_the_daemon_has_a_string_error() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut paths = Vec::new();
    sources(&root.join("src"), &mut paths);
    sources(&root.join("../driverkitd/src"), &mut paths);
    assert!(paths.len() > 50, "both crates' sources were read");
    let mut found = Vec::new();
    for path in &paths {
        let text = std::fs::read_to_string(path).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if string_error(code) {
                found.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "a typed error (thiserror) instead of String:\n{}",
        found.join("\n")
    );
}

//! What the `.iig` generator refuses at compile time.

#[test]
fn service_declarations_are_checked() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}

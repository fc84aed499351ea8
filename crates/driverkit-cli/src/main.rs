//! `driverkit`: run the system, inspect it, plug devices, validate bundles
//! and benchmark. See `driverkit --help`.

mod commands;
mod drivers;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Started by the daemon as one of the built-in drivers?
    if let Some(driver) = drivers::from_argv0() {
        driverkit::runtime::run((driver.classes)());
    }
    let cli = commands::Cli::parse();
    match commands::dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("driverkit: {}", without_errno(&message));
            ExitCode::FAILURE
        }
    }
}

/// A message without the `(os error N)` std appends to a system error's
/// words: people read the words; the number is for programs.
fn without_errno(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(" (os error ") {
        let tail = &rest[at + " (os error ".len()..];
        let digits = tail.chars().take_while(char::is_ascii_digit).count();
        if digits > 0 && tail[digits..].starts_with(')') {
            out.push_str(&rest[..at]);
            rest = &tail[digits + 1..];
        } else {
            out.push_str(&rest[..at + 1]);
            rest = &rest[at + 1..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn system_errors_keep_their_words_not_their_numbers() {
        assert_eq!(
            super::without_errno(
                "no daemon at /x (No such file or directory (os error 2)); start one"
            ),
            "no daemon at /x (No such file or directory); start one"
        );
        assert_eq!(
            super::without_errno("a (os error x) stays; b (os error 111) goes"),
            "a (os error x) stays; b goes"
        );
    }
}

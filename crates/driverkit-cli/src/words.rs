//! What people read carries words, not Rust's or the kernel's numbers:
//! std's `(os error N)` suffix is dropped from the CLI's errors and from
//! every daemon log line (the words before it already say it).

use std::io::{self, Write};

/// A message without the `(os error N)` std appends to a system error's
/// words: people read the words; the number is for programs.
pub fn without_errno(message: &str) -> String {
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

/// The daemon's log writer: stderr, each formatted line (tracing's fmt
/// layer writes one event in one call) without its `(os error N)`.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let line = String::from_utf8_lossy(buf);
        io::stderr().write_all(without_errno(&line).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
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

//! Hex, as people write it in device files, on the command line and in
//! signature files, and as the tools print it.

/// Bytes from hex digits: whitespace, and `0x` before a group of digits,
/// are ignored (`"05 01"`, `"0x05 0x01"`, `"0501"`). Errors say which byte.
pub fn decode(hex: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = hex
        .split_whitespace()
        .flat_map(|w| w.strip_prefix("0x").unwrap_or(w).bytes())
        .collect();
    if !digits.len().is_multiple_of(2) {
        return Err(format!("odd number of hex digits ({})", digits.len()));
    }
    digits
        .chunks(2)
        .enumerate()
        .map(|(i, pair)| {
            let s = std::str::from_utf8(pair).map_err(|_| format!("byte {i} is not hex"))?;
            u8::from_str_radix(s, 16).map_err(|_| format!("byte {i}: {s:?} is not hex"))
        })
        .collect()
}

/// Lowercase digits, two per byte, with `separator` between bytes
/// (`""` for one word, `" "` for people).
pub fn encode(bytes: &[u8], separator: &str) -> String {
    let mut out = String::with_capacity(bytes.len() * (2 + separator.len()));
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            out.push_str(separator);
        }
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn errors_name_the_byte() {
        assert_eq!(decode("05 0x01 ff").unwrap(), [5, 1, 255]);
        assert!(decode("0").unwrap_err().contains("odd number"));
        assert!(decode("05 zz").unwrap_err().contains("byte 1"));
    }

    proptest! {
        #[test]
        fn encode_then_decode_is_identity(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(decode(&encode(&bytes, "")).unwrap(), bytes.clone());
            prop_assert_eq!(decode(&encode(&bytes, " ")).unwrap(), bytes);
        }

        #[test]
        fn any_text_decodes_or_errs(s in ".{0,40}") {
            let _ = decode(&s);
        }
    }
}

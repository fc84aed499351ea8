//! Items: the bytes of a report descriptor, one typed view at a time.
//!
//! A short item is a prefix byte (`tag:4 | type:2 | size:2`, size 0, 1, 2 or
//! 4 bytes) followed by its data, little-endian. A long item (prefix `0xFE`)
//! carries its own size and tag; no standard tag uses it, so the parser
//! skips it. Reading never panics: a truncated item is an error that names
//! its offset.

use std::fmt;

/// The three item types of HID 1.11 section 6.2.2.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemType {
    Main,
    Global,
    Local,
    Reserved,
}

/// One item of a report descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Item<'a> {
    /// Byte offset of the prefix in the descriptor.
    pub offset: usize,
    pub kind: ItemType,
    /// The tag (4 bits for short items, 8 for long ones).
    pub tag: u8,
    /// The item's data bytes.
    pub data: &'a [u8],
    /// True for a long item.
    pub long: bool,
}

impl Item<'_> {
    /// The data as an unsigned value (zero-extended).
    pub fn unsigned(&self) -> u32 {
        self.data
            .iter()
            .rev()
            .fold(0u32, |acc, b| (acc << 8) | u32::from(*b))
    }

    /// The data as a signed value (sign-extended from its size).
    pub fn signed(&self) -> i32 {
        match self.data.len() {
            0 => 0,
            1 => i32::from(self.data[0] as i8),
            2 => i32::from(i16::from_le_bytes([self.data[0], self.data[1]])),
            _ => self.unsigned() as i32,
        }
    }
}

/// A descriptor that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemError {
    pub offset: usize,
    pub problem: String,
}

impl fmt::Display for ItemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at offset {}: {}", self.offset, self.problem)
    }
}

impl std::error::Error for ItemError {}

/// Iterates over the items of `bytes`.
pub fn items(bytes: &[u8]) -> Items<'_> {
    Items { bytes, offset: 0 }
}

/// The iterator returned by [`items`].
pub struct Items<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Iterator for Items<'a> {
    type Item = Result<Item<'a>, ItemError>;

    fn next(&mut self) -> Option<Self::Item> {
        let at = self.offset;
        let prefix = *self.bytes.get(at)?;
        let truncated = |need: usize, have: usize| ItemError {
            offset: at,
            problem: format!("item needs {need} data bytes, {have} left"),
        };
        if prefix == 0xFE {
            let (Some(&size), Some(&tag)) = (self.bytes.get(at + 1), self.bytes.get(at + 2)) else {
                self.offset = self.bytes.len();
                return Some(Err(ItemError {
                    offset: at,
                    problem: "long item header is truncated".into(),
                }));
            };
            let start = at + 3;
            let end = start + usize::from(size);
            let Some(data) = self.bytes.get(start..end) else {
                self.offset = self.bytes.len();
                return Some(Err(truncated(
                    usize::from(size),
                    self.bytes.len().saturating_sub(start),
                )));
            };
            self.offset = end;
            return Some(Ok(Item {
                offset: at,
                kind: ItemType::Reserved,
                tag,
                data,
                long: true,
            }));
        }
        let size = match prefix & 0x03 {
            3 => 4,
            n => usize::from(n),
        };
        let kind = match (prefix >> 2) & 0x03 {
            0 => ItemType::Main,
            1 => ItemType::Global,
            2 => ItemType::Local,
            _ => ItemType::Reserved,
        };
        let Some(data) = self.bytes.get(at + 1..at + 1 + size) else {
            self.offset = self.bytes.len();
            return Some(Err(truncated(size, self.bytes.len() - at - 1)));
        };
        self.offset = at + 1 + size;
        Some(Ok(Item {
            offset: at,
            kind,
            tag: prefix >> 4,
            data,
            long: false,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_items_and_their_values() {
        // Usage Page (Generic Desktop), Logical Minimum (-127), Report Size (16).
        let bytes = [0x05, 0x01, 0x15, 0x81, 0x76, 0x10, 0x00];
        let all: Vec<_> = items(&bytes).collect::<Result<_, _>>().unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(
            (all[0].kind, all[0].tag, all[0].unsigned()),
            (ItemType::Global, 0, 1)
        );
        assert_eq!(all[1].signed(), -127);
        assert_eq!((all[2].tag, all[2].unsigned(), all[2].offset), (7, 16, 4));
    }

    #[test]
    fn truncation_names_the_offset() {
        let err = items(&[0x05, 0x01, 0x27, 0xff])
            .nth(1)
            .unwrap()
            .unwrap_err();
        assert_eq!(err.offset, 2);
        assert_eq!(err.problem, "item needs 4 data bytes, 1 left");
    }
}

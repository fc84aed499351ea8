//! Argument encoding: how typed method arguments become message payloads.
//!
//! Little-endian fixed-width integers, `u32` length prefixes, and plist
//! values as length-prefixed binary plists (the same value type serves
//! Info.plist, the registry and RPC). Decoding never panics: every failure
//! names the offset, what was expected and what was found.

use std::fmt;

use crate::ObjectId;

/// A decoding failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    /// Byte offset into the payload where decoding failed.
    pub offset: usize,
    /// What the decoder was reading.
    pub expected: &'static str,
    /// What it found instead.
    pub found: String,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "at offset {}: expected {}, found {}",
            self.offset, self.expected, self.found
        )
    }
}

impl std::error::Error for WireError {}

/// Builds a payload. Payloads up to 64 bytes stay on the stack.
#[derive(Default, Debug)]
pub struct Encoder {
    buf: smallvec::SmallVec<[u8; 64]>,
}

impl Encoder {
    /// An empty payload.
    pub fn new() -> Self {
        Self::default()
    }
    /// Appends raw bytes.
    pub fn put(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }
    /// The payload so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }
    /// The finished payload.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf.into_vec()
    }
}

/// Reads a payload front to back.
#[derive(Debug)]
pub struct Decoder<'a> {
    buf: &'a [u8],
    offset: usize,
}

impl<'a> Decoder<'a> {
    /// Starts at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, offset: 0 }
    }
    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.offset)
    }
    /// True when every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.offset == self.buf.len()
    }
    /// Current offset, for error messages.
    pub fn offset(&self) -> usize {
        self.offset
    }
    /// Takes exactly `n` bytes.
    pub fn take(&mut self, n: usize, expected: &'static str) -> Result<&'a [u8], WireError> {
        let rest = &self.buf[self.offset..];
        if rest.len() < n {
            return Err(self.error(expected, format!("{} bytes left of {n} needed", rest.len())));
        }
        self.offset += n;
        Ok(&rest[..n])
    }
    /// Takes a byte string with its `u32` length, borrowed (what
    /// [`Bytes`] decodes, without copying it).
    pub fn bytes(&mut self, expected: &'static str) -> Result<&'a [u8], WireError> {
        let n = self.len(expected)?;
        self.take(n, expected)
    }
    /// An error at the current offset.
    pub fn error(&self, expected: &'static str, found: String) -> WireError {
        WireError {
            offset: self.offset,
            expected,
            found,
        }
    }
    fn array<const N: usize>(&mut self, expected: &'static str) -> Result<[u8; N], WireError> {
        let bytes = self.take(N, expected)?;
        let mut out = [0; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }
    fn len(&mut self, expected: &'static str) -> Result<usize, WireError> {
        let at = self.offset;
        let n = u32::from_le_bytes(self.array(expected)?) as usize;
        // A length can never exceed what is left: reject before allocating.
        if n > self.buf.len() - self.offset {
            return Err(WireError {
                offset: at,
                expected,
                found: format!(
                    "length {n} with {} bytes left",
                    self.buf.len() - self.offset
                ),
            });
        }
        Ok(n)
    }
}

/// A value that can be an RPC argument or result.
pub trait Wire: Sized {
    /// Appends `self` to the payload.
    fn encode(&self, e: &mut Encoder);
    /// Reads one value.
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError>;
}

macro_rules! int {
    ($($t:ty),*) => {$(
        impl Wire for $t {
            fn encode(&self, e: &mut Encoder) { e.put(&self.to_le_bytes()); }
            fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
                Ok(<$t>::from_le_bytes(d.array(stringify!($t))?))
            }
        }
    )*};
}
int!(u8, u16, u32, u64, i8, i16, i32, i64, f64);

impl Wire for () {
    fn encode(&self, _: &mut Encoder) {}
    fn decode(_: &mut Decoder<'_>) -> Result<Self, WireError> {
        Ok(())
    }
}

impl Wire for bool {
    fn encode(&self, e: &mut Encoder) {
        e.put(&[u8::from(*self)]);
    }
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
        match d.take(1, "bool")?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(WireError {
                offset: d.offset - 1,
                expected: "bool (0 or 1)",
                found: format!("{b}"),
            }),
        }
    }
}

impl Wire for ObjectId {
    fn encode(&self, e: &mut Encoder) {
        self.0.encode(e)
    }
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
        u64::decode(d).map(ObjectId)
    }
}

impl Wire for String {
    fn encode(&self, e: &mut Encoder) {
        (self.len() as u32).encode(e);
        e.put(self.as_bytes());
    }
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
        let n = d.len("string length")?;
        let at = d.offset;
        let bytes = d.take(n, "string bytes")?;
        String::from_utf8(bytes.to_vec()).map_err(|e| WireError {
            offset: at,
            expected: "UTF-8 string",
            found: e.to_string(),
        })
    }
}

/// Raw bytes (`OSData`): encoded as one length-prefixed block rather than an
/// array of `u8` values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl Wire for Bytes {
    fn encode(&self, e: &mut Encoder) {
        (self.0.len() as u32).encode(e);
        e.put(&self.0);
    }
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
        Ok(Bytes(d.bytes("data bytes")?.to_vec()))
    }
}

impl<T: Wire> Wire for Vec<T> {
    fn encode(&self, e: &mut Encoder) {
        (self.len() as u32).encode(e);
        for v in self {
            v.encode(e);
        }
    }
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
        // Each element takes at least zero bytes, so the count alone cannot
        // be checked against what is left; cap the preallocation instead.
        let n = u32::decode(d)? as usize;
        let mut out = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            out.push(T::decode(d)?);
        }
        Ok(out)
    }
}

impl<T: Wire> Wire for Option<T> {
    fn encode(&self, e: &mut Encoder) {
        match self {
            None => e.put(&[0]),
            Some(v) => {
                e.put(&[1]);
                v.encode(e);
            }
        }
    }
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
        match d.take(1, "option tag")?[0] {
            0 => Ok(None),
            1 => T::decode(d).map(Some),
            b => Err(WireError {
                offset: d.offset - 1,
                expected: "option tag (0 or 1)",
                found: format!("{b}"),
            }),
        }
    }
}

impl Wire for plist::Value {
    fn encode(&self, e: &mut Encoder) {
        let mut bytes = Vec::new();
        // Writing into a Vec cannot fail for values built in memory.
        if self.to_writer_binary(&mut bytes).is_err() {
            bytes.clear();
        }
        Bytes(bytes).encode(e);
    }
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
        let at = d.offset;
        let Bytes(bytes) = Bytes::decode(d)?;
        plist::Value::from_reader(std::io::Cursor::new(bytes)).map_err(|err| WireError {
            offset: at,
            expected: "binary plist",
            found: err.to_string(),
        })
    }
}

impl Wire for plist::Dictionary {
    fn encode(&self, e: &mut Encoder) {
        plist::Value::Dictionary(self.clone()).encode(e)
    }
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
        let at = d.offset;
        match plist::Value::decode(d)? {
            plist::Value::Dictionary(dict) => Ok(dict),
            other => Err(WireError {
                offset: at,
                expected: "plist dictionary",
                found: format!("{other:?}"),
            }),
        }
    }
}

/// Decodes a whole reply payload as `T`, refusing trailing bytes.
pub fn decode_reply<T: Wire>(payload: &[u8]) -> crate::IOResult<T> {
    let mut d = Decoder::new(payload);
    let value = T::decode(&mut d).map_err(|_| crate::IOReturn::BAD_ARGUMENT)?;
    if !d.is_empty() {
        return Err(crate::IOReturn::BAD_ARGUMENT);
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip<T: Wire + PartialEq + fmt::Debug>(v: T) {
        let mut e = Encoder::new();
        v.encode(&mut e);
        let bytes = e.into_bytes();
        let mut d = Decoder::new(&bytes);
        assert_eq!(T::decode(&mut d).unwrap(), v);
        assert!(d.is_empty());
    }

    #[test]
    fn truncated_string_names_offset_and_shortfall() {
        let mut e = Encoder::new();
        "hello".to_string().encode(&mut e);
        let bytes = &e.as_bytes()[..6];
        let err = String::decode(&mut Decoder::new(bytes)).unwrap_err();
        assert_eq!(err.offset, 0);
        assert_eq!(err.expected, "string length");
        assert!(err.found.contains("length 5 with 2 bytes left"), "{err}");
    }

    #[test]
    fn plist_values_roundtrip() {
        let mut dict = plist::Dictionary::new();
        dict.insert("IOClass".into(), "IOUserService".into());
        dict.insert("IOProbeScore".into(), plist::Value::Integer(1000.into()));
        dict.insert("Data".into(), plist::Value::Data(vec![1, 2, 3]));
        roundtrip(dict);
    }

    proptest! {
        #[test]
        fn scalars_and_strings_roundtrip(a: u64, b: i32, s: String, v: Vec<u16>, o: Option<bool>) {
            roundtrip((a, b, s, v, o));
        }

        /// No input makes a decoder panic, whatever type it is read as.
        #[test]
        fn decoding_garbage_never_panics(bytes: Vec<u8>) {
            let _ = <(u32, String, Vec<Bytes>, Option<plist::Value>)>::decode(&mut Decoder::new(&bytes));
            let _ = plist::Dictionary::decode(&mut Decoder::new(&bytes));
            let _ = decode_reply::<Vec<String>>(&bytes);
        }
    }
}

macro_rules! tuple {
    ($($n:ident),*) => {
        impl<$($n: Wire),*> Wire for ($($n,)*) {
            fn encode(&self, e: &mut Encoder) {
                #[allow(non_snake_case)]
                let ($($n,)*) = self;
                $($n.encode(e);)*
            }
            fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
                Ok(($($n::decode(d)?,)*))
            }
        }
    };
}
tuple!(A, B);
tuple!(A, B, C);
tuple!(A, B, C, D);
tuple!(A, B, C, D, E);

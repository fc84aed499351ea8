//! The user-client protocol: what travels on the direct sockets the daemon
//! brokers between an app and a dext after `IOServiceOpen`.
//!
//! Each connection has two `SOCK_SEQPACKET` sockets. On the *call* socket
//! the app sends a `Request` (header `object` = the user client, `method`
//! = the selector, `call` = a sequence number) whose payload is a
//! [`CallArgs`], and the dext answers a `Reply` with a [`CallResult`] and
//! the method's status. On the *notification* socket the dext sends
//! `Oneway` messages whose `method` is the app's async reference and whose
//! payload is a [`Completion`]. The daemon is on neither path: it decided
//! who may open what, then handed the sockets out.

use crate::codec::{Decoder, Encoder, Wire, WireError};
use crate::Bytes;

/// At most this many scalars travel each way, as in IOKit.
pub const MAX_SCALARS: usize = 16;
/// Structures larger than this go through a memory descriptor (a memfd
/// travelling with the request); smaller ones travel in the message.
pub const MAX_INLINE_STRUCT: usize = 4096;
/// The largest structure input through a memory descriptor: beyond it a
/// call is refused rather than making the driver copy without bound.
pub const MAX_MEMORY_STRUCT: u64 = 64 << 20;
/// A completion carries at most this many values (`IOUserClientAsyncArgumentsCount`).
pub const MAX_ASYNC_VALUES: usize = 16;

/// Header flag: the call is asynchronous; its completion comes on the
/// notification socket under `CallArgs::async_reference`.
pub const FLAG_ASYNC: u8 = 0x02;
/// Header flag: the structure input is in the memfd sent with the request
/// (its length is `CallArgs::structure_input_length`).
pub const FLAG_STRUCT_IN_MEMORY: u8 = 0x04;

/// The selector of `CopyClientMemoryForType` (`IOConnectMapMemory`): the
/// scalar input is `[type, read_only]`, the reply carries the memfd.
pub const SELECTOR_MAP_MEMORY: u64 = u64::MAX - 1;

/// The selector of the call-channel setup: a `ShmChannel`'s memfd travels
/// with it, and calls without descriptors may then go through it (a few
/// hundred nanoseconds when both sides are busy, instead of two
/// cross-process wake-ups).
pub const SELECTOR_CHANNEL: u64 = u64::MAX - 2;

/// Roles of the sockets the daemon hands a dext with `connect`.
pub const ROLE_CALLS: u8 = 0;
pub const ROLE_NOTIFICATIONS: u8 = 1;

/// A call's inputs and the sizes of the outputs the caller accepts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallArgs {
    pub scalar_input: Vec<u64>,
    pub structure_input: Vec<u8>,
    /// With `FLAG_STRUCT_IN_MEMORY`: the bytes of the memfd that count.
    pub structure_input_length: u64,
    pub scalar_output_count: u32,
    pub structure_output_max: u32,
    /// For asynchronous calls: the app's reference for the completion.
    pub async_reference: u64,
}

/// A call's outputs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallResult {
    pub scalar_output: Vec<u64>,
    pub structure_output: Vec<u8>,
}

/// An asynchronous method's completion.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Completion {
    pub status: u32,
    pub values: Vec<u64>,
}

fn too_many(what: &'static str, n: usize, max: usize, d: &Decoder<'_>) -> WireError {
    WireError {
        offset: d.offset(),
        expected: what,
        found: format!("{n} (at most {max})"),
    }
}

impl Wire for CallArgs {
    fn encode(&self, e: &mut Encoder) {
        self.scalar_input.encode(e);
        Bytes(self.structure_input.clone()).encode(e);
        self.structure_input_length.encode(e);
        self.scalar_output_count.encode(e);
        self.structure_output_max.encode(e);
        self.async_reference.encode(e);
    }
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
        let scalar_input = Vec::<u64>::decode(d)?;
        if scalar_input.len() > MAX_SCALARS {
            return Err(too_many(
                "scalar inputs",
                scalar_input.len(),
                MAX_SCALARS,
                d,
            ));
        }
        let structure_input = Bytes::decode(d)?.0;
        if structure_input.len() > MAX_INLINE_STRUCT {
            return Err(too_many(
                "inline structure input bytes",
                structure_input.len(),
                MAX_INLINE_STRUCT,
                d,
            ));
        }
        let args = CallArgs {
            scalar_input,
            structure_input,
            structure_input_length: u64::decode(d)?,
            scalar_output_count: u32::decode(d)?,
            structure_output_max: u32::decode(d)?,
            async_reference: u64::decode(d)?,
        };
        if args.scalar_output_count as usize > MAX_SCALARS {
            return Err(too_many(
                "scalar outputs",
                args.scalar_output_count as usize,
                MAX_SCALARS,
                d,
            ));
        }
        Ok(args)
    }
}

impl Wire for CallResult {
    fn encode(&self, e: &mut Encoder) {
        self.scalar_output.encode(e);
        Bytes(self.structure_output.clone()).encode(e);
    }
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
        let scalar_output = Vec::<u64>::decode(d)?;
        if scalar_output.len() > MAX_SCALARS {
            return Err(too_many(
                "scalar outputs",
                scalar_output.len(),
                MAX_SCALARS,
                d,
            ));
        }
        Ok(CallResult {
            scalar_output,
            structure_output: Bytes::decode(d)?.0,
        })
    }
}

impl Wire for Completion {
    fn encode(&self, e: &mut Encoder) {
        self.status.encode(e);
        self.values.encode(e);
    }
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
        let status = u32::decode(d)?;
        let values = Vec::<u64>::decode(d)?;
        if values.len() > MAX_ASYNC_VALUES {
            return Err(too_many(
                "completion values",
                values.len(),
                MAX_ASYNC_VALUES,
                d,
            ));
        }
        Ok(Completion { status, values })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip<T: Wire + PartialEq + std::fmt::Debug>(v: &T) {
        let mut e = Encoder::new();
        v.encode(&mut e);
        let mut d = Decoder::new(e.as_bytes());
        assert_eq!(&T::decode(&mut d).unwrap(), v);
    }

    #[test]
    fn limits_are_refused_with_what_was_found() {
        let args = CallArgs {
            scalar_input: vec![0; 17],
            ..Default::default()
        };
        let mut e = Encoder::new();
        args.encode(&mut e);
        let err = CallArgs::decode(&mut Decoder::new(e.as_bytes())).unwrap_err();
        assert!(err.to_string().contains("17 (at most 16)"), "{err}");
    }

    proptest! {
        #[test]
        fn calls_round_trip(scalars in proptest::collection::vec(any::<u64>(), 0..=16),
                            bytes in proptest::collection::vec(any::<u8>(), 0..200),
                            outs in 0u32..=16, max in any::<u32>(), r in any::<u64>()) {
            round_trip(&CallArgs {
                scalar_input: scalars.clone(),
                structure_input: bytes.clone(),
                structure_input_length: 0,
                scalar_output_count: outs,
                structure_output_max: max,
                async_reference: r,
            });
            round_trip(&CallResult { scalar_output: scalars.clone(), structure_output: bytes });
            round_trip(&Completion { status: max, values: scalars });
        }

        #[test]
        fn any_bytes_decode_or_fail_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = CallArgs::decode(&mut Decoder::new(&bytes));
            let _ = CallResult::decode(&mut Decoder::new(&bytes));
            let _ = Completion::decode(&mut Decoder::new(&bytes));
        }
    }
}

//! The user-client protocol: what travels on the direct sockets the daemon
//! brokers between an app and a dext after `IOServiceOpen`.
//!
//! Each connection has two `SOCK_SEQPACKET` sockets. On the *call* socket
//! the app sends a `Request` (header `object` = the user client, `method`
//! = the selector, `call` = a sequence number) whose payload is a
//! [`Call`], and the dext answers a `Reply` with a [`CallResult`] and
//! the method's status. On the *notification* socket the dext sends
//! `Oneway` messages whose `method` is the app's async reference and whose
//! payload is a [`Completion`]. The daemon is on neither path: it decided
//! who may open what, then handed the sockets out.
//!
//! An app may also hand the dext a call channel in shared memory
//! (`SELECTOR_CHANNEL`): calls without descriptors then travel on it as
//! the same [`Call`], answered by a [`ChannelAnswer`], without the
//! socket's header.

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

/// The [`CallResult`] of a call as the method left it, borrowed: what a
/// dext encodes without moving its outputs out first.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallOutputs<'a> {
    pub scalar_output: &'a [u64],
    pub structure_output: &'a [u8],
}

impl CallOutputs<'_> {
    /// Encodes these outputs as a [`CallResult`].
    pub fn encode(&self, e: &mut Encoder) {
        encode_scalars(self.scalar_output, e);
        (self.structure_output.len() as u32).encode(e);
        e.put(self.structure_output);
    }
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

/// The [`CallArgs`] of a call as the caller holds them, borrowed: what an
/// app encodes without copying its inputs first.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallInputs<'a> {
    pub scalar_input: &'a [u64],
    pub structure_input: &'a [u8],
    pub structure_input_length: u64,
    pub scalar_output_count: u32,
    pub structure_output_max: u32,
    pub async_reference: u64,
}

impl CallInputs<'_> {
    /// Encodes these inputs as a [`CallArgs`].
    pub fn encode(&self, e: &mut Encoder) {
        encode_scalars(self.scalar_input, e);
        (self.structure_input.len() as u32).encode(e);
        e.put(self.structure_input);
        let mut present = 0;
        if self.structure_input_length != 0 {
            present |= HAS_STRUCT_IN_MEMORY;
        }
        if self.async_reference != 0 {
            present |= HAS_ASYNC_REFERENCE;
        }
        present.encode(e);
        if present & HAS_STRUCT_IN_MEMORY != 0 {
            self.structure_input_length.encode(e);
        }
        if present & HAS_ASYNC_REFERENCE != 0 {
            self.async_reference.encode(e);
        }
        (self.scalar_output_count.min(u8::MAX as u32) as u8).encode(e);
        self.structure_output_max.encode(e);
    }
}

/// `CallArgs` presence bits: which optional fields follow.
const HAS_STRUCT_IN_MEMORY: u8 = 0x01;
const HAS_ASYNC_REFERENCE: u8 = 0x02;

/// Compact on purpose: counts are bytes and the fields most calls leave
/// at zero are present only when set, so that a call with a few scalars,
/// with its selector and flags ([`Call`]), fits the cache line a
/// call channel moves (see `channel`: a request on two lines took about
/// 200 ns longer here).
///
/// ```text
/// count u8 | scalars u64 × count | structure: len u32, bytes |
/// present u8 | [structure_input_length u64] | [async_reference u64] |
/// scalar_output_count u8 | structure_output_max u32
/// ```
impl Wire for CallArgs {
    fn encode(&self, e: &mut Encoder) {
        CallInputs {
            scalar_input: &self.scalar_input,
            structure_input: &self.structure_input,
            structure_input_length: self.structure_input_length,
            scalar_output_count: self.scalar_output_count,
            structure_output_max: self.structure_output_max,
            async_reference: self.async_reference,
        }
        .encode(e);
    }
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
        let mut args = CallArgs::default();
        args.decode_into(d)?;
        Ok(args)
    }
}

impl CallArgs {
    /// Decodes into `self`, reusing its vectors: a dext decodes each call
    /// into the last one's arguments, so that a call allocates nothing.
    /// On an error `self` holds part of the call.
    pub fn decode_into(&mut self, d: &mut Decoder<'_>) -> Result<(), WireError> {
        decode_scalars_into(&mut self.scalar_input, "scalar inputs", d)?;
        let structure_input = d.bytes("inline structure input bytes")?;
        if structure_input.len() > MAX_INLINE_STRUCT {
            return Err(too_many(
                "inline structure input bytes",
                structure_input.len(),
                MAX_INLINE_STRUCT,
                d,
            ));
        }
        self.structure_input.clear();
        self.structure_input.extend_from_slice(structure_input);
        let present = u8::decode(d)?;
        if present & !(HAS_STRUCT_IN_MEMORY | HAS_ASYNC_REFERENCE) != 0 {
            return Err(d.error(
                "call presence bits 0x01 (structure in memory) and 0x02 (async reference)",
                format!("{present:#04x}"),
            ));
        }
        let optional = |bit: u8, d: &mut Decoder<'_>| -> Result<u64, WireError> {
            if present & bit != 0 {
                u64::decode(d)
            } else {
                Ok(0)
            }
        };
        let structure_input_length = optional(HAS_STRUCT_IN_MEMORY, d)?;
        let async_reference = optional(HAS_ASYNC_REFERENCE, d)?;
        let scalar_output_count = u8::decode(d)? as u32;
        if scalar_output_count as usize > MAX_SCALARS {
            return Err(too_many(
                "scalar outputs",
                scalar_output_count as usize,
                MAX_SCALARS,
                d,
            ));
        }
        self.structure_input_length = structure_input_length;
        self.async_reference = async_reference;
        self.scalar_output_count = scalar_output_count;
        self.structure_output_max = u32::decode(d)?;
        Ok(())
    }
}

/// Scalars with a one-byte count (at most [`MAX_SCALARS`], checked by the
/// caller of `encode` and by `decode`).
fn encode_scalars(scalars: &[u64], e: &mut Encoder) {
    (scalars.len().min(u8::MAX as usize) as u8).encode(e);
    for v in scalars.iter().take(u8::MAX as usize) {
        v.encode(e);
    }
}

fn decode_scalars(what: &'static str, d: &mut Decoder<'_>) -> Result<Vec<u64>, WireError> {
    let mut scalars = Vec::new();
    decode_scalars_into(&mut scalars, what, d)?;
    Ok(scalars)
}

fn decode_scalars_into(
    scalars: &mut Vec<u64>,
    what: &'static str,
    d: &mut Decoder<'_>,
) -> Result<(), WireError> {
    let n = u8::decode(d)? as usize;
    if n > MAX_SCALARS {
        return Err(too_many(what, n, MAX_SCALARS, d));
    }
    scalars.clear();
    for _ in 0..n {
        scalars.push(u64::decode(d)?);
    }
    Ok(())
}

impl Wire for CallResult {
    fn encode(&self, e: &mut Encoder) {
        CallOutputs {
            scalar_output: &self.scalar_output,
            structure_output: &self.structure_output,
        }
        .encode(e);
    }
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
        Ok(CallResult {
            scalar_output: decode_scalars("scalar outputs", d)?,
            structure_output: Bytes::decode(d)?.0,
        })
    }
}

/// An app's call: the selector, the `FLAG_*` bits and the arguments. It is
/// the payload of a call on the socket and the whole of a call on a
/// channel (`SELECTOR_CHANNEL`), which needs no header (the channel
/// belongs to one user client and carries one call at a time, so object
/// and call number say nothing). The same bytes are the arguments of the
/// dext's `IOUserClient::ExternalMethod`, so the dext dispatches a call as
/// it found it, from either path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Call {
    pub selector: u64,
    pub flags: u8,
    pub args: CallArgs,
}

impl Call {
    /// Encodes a call from borrowed inputs, as `encode` does from a
    /// `Call`.
    pub fn encode_inputs(selector: u64, flags: u8, inputs: &CallInputs<'_>, e: &mut Encoder) {
        selector.encode(e);
        flags.encode(e);
        inputs.encode(e);
    }
}

impl Wire for Call {
    fn encode(&self, e: &mut Encoder) {
        self.selector.encode(e);
        self.flags.encode(e);
        self.args.encode(e);
    }
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
        let mut call = Call::default();
        call.decode_into(d)?;
        Ok(call)
    }
}

impl Call {
    /// Decodes into `self`, reusing its vectors (see
    /// [`CallArgs::decode_into`]).
    pub fn decode_into(&mut self, d: &mut Decoder<'_>) -> Result<(), WireError> {
        self.selector = u64::decode(d)?;
        self.flags = u8::decode(d)?;
        self.args.decode_into(d)
    }
}

/// The answer to a [`Call`]: the method's status, then on success its
/// [`CallResult`], on a refusal the driver's reason in words (UTF-8, to
/// the end; empty when it gave none), as a socket reply's payload carries
/// it too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelAnswer {
    pub status: u32,
    pub result: CallResult,
    pub refusal: String,
}

impl ChannelAnswer {
    /// Appends the answer to `result` (already encoded, as the dext's
    /// dispatch returns it) to `out`, with `why` after a refusal.
    pub fn emit(result: &Result<Vec<u8>, crate::IOReturn>, why: &str, out: &mut Vec<u8>) {
        match result {
            Ok(encoded) => {
                out.extend_from_slice(&crate::IOReturn::SUCCESS.0.to_le_bytes());
                out.extend_from_slice(encoded);
            }
            Err(status) => {
                out.extend_from_slice(&status.0.to_le_bytes());
                out.extend_from_slice(why.as_bytes());
            }
        }
    }
}

impl Wire for ChannelAnswer {
    fn encode(&self, e: &mut Encoder) {
        self.status.encode(e);
        if self.status == crate::IOReturn::SUCCESS.0 {
            self.result.encode(e);
        } else {
            e.put(self.refusal.as_bytes());
        }
    }
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
        let status = u32::decode(d)?;
        if status == crate::IOReturn::SUCCESS.0 {
            let result = CallResult::decode(d)?;
            return Ok(ChannelAnswer {
                status,
                result,
                refusal: String::new(),
            });
        }
        let rest = d.take(d.remaining(), "the refusal's words")?;
        Ok(ChannelAnswer {
            status,
            result: CallResult::default(),
            refusal: String::from_utf8_lossy(rest).into_owned(),
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

    #[test]
    fn a_call_with_two_scalars_fits_the_line_a_channel_moves() {
        // A channel slot's first cache line holds its doorbell, its length
        // and the first 48 bytes of the message.
        let call = Call {
            selector: 7,
            flags: 0,
            args: CallArgs {
                scalar_input: vec![u64::MAX, 1],
                scalar_output_count: 1,
                ..Default::default()
            },
        };
        let mut e = Encoder::new();
        call.encode(&mut e);
        assert!(e.as_bytes().len() <= 48, "{} bytes", e.as_bytes().len());
        let answer = ChannelAnswer {
            status: 0,
            result: CallResult {
                scalar_output: vec![1, 2, 3, 4],
                ..Default::default()
            },
            ..Default::default()
        };
        let mut e = Encoder::new();
        answer.encode(&mut e);
        assert!(e.as_bytes().len() <= 48, "{} bytes", e.as_bytes().len());
    }

    #[test]
    fn unknown_presence_bits_are_refused_by_name() {
        let mut e = Encoder::new();
        CallArgs::default().encode(&mut e);
        let mut bytes = e.as_bytes().to_vec();
        bytes[5] = 0x80; // count, structure length (4), then the presence bits
        let err = CallArgs::decode(&mut Decoder::new(&bytes)).unwrap_err();
        assert!(err.to_string().contains("presence bits"), "{err}");
        assert!(err.to_string().contains("0x80"), "{err}");
    }

    #[test]
    fn an_answer_that_failed_carries_its_status_and_the_drivers_words() {
        let mut out = Vec::new();
        ChannelAnswer::emit(&Err(crate::IOReturn::NOT_PERMITTED), "", &mut out);
        let answer = ChannelAnswer::decode(&mut Decoder::new(&out)).unwrap();
        assert_eq!(answer.status, crate::IOReturn::NOT_PERMITTED.0);
        assert_eq!(answer.result, CallResult::default());
        assert_eq!(answer.refusal, "");
        out.clear();
        let why = "selector 0 expects 2 scalar in";
        ChannelAnswer::emit(&Err(crate::IOReturn::BAD_ARGUMENT), why, &mut out);
        let answer = ChannelAnswer::decode(&mut Decoder::new(&out)).unwrap();
        assert_eq!(answer.refusal, why);
        let mut e = Encoder::new();
        CallResult {
            scalar_output: vec![9],
            structure_output: b"ok".to_vec(),
        }
        .encode(&mut e);
        out.clear();
        ChannelAnswer::emit(&Ok(e.into_bytes()), "unused", &mut out);
        let answer = ChannelAnswer::decode(&mut Decoder::new(&out)).unwrap();
        assert_eq!((answer.status, answer.result.scalar_output), (0, vec![9]));
    }

    proptest! {
        #[test]
        fn calls_round_trip(scalars in proptest::collection::vec(any::<u64>(), 0..=16),
                            bytes in proptest::collection::vec(any::<u8>(), 0..200),
                            outs in 0u32..=16, max in any::<u32>(), r in any::<u64>()) {
            let args = CallArgs {
                scalar_input: scalars.clone(),
                structure_input: bytes.clone(),
                structure_input_length: r / 2,
                scalar_output_count: outs,
                structure_output_max: max,
                async_reference: r,
            };
            round_trip(&args);
            round_trip(&Call { selector: r, flags: outs as u8, args });
            round_trip(&ChannelAnswer {
                status: 0,
                result: CallResult { scalar_output: scalars.clone(), structure_output: bytes.clone() },
                refusal: String::new(),
            });
            round_trip(&ChannelAnswer {
                status: max | 1,
                result: CallResult::default(),
                refusal: String::from_utf8_lossy(&bytes).into_owned(),
            });
            round_trip(&CallResult { scalar_output: scalars.clone(), structure_output: bytes });
            round_trip(&Completion { status: max, values: scalars });
        }

        /// A dext decodes each call into the last one's (see
        /// `Call::decode_into`): whatever that held, even a call that
        /// failed halfway, the result is the fresh decoding.
        #[test]
        fn a_call_decoded_into_a_used_one_is_the_call(
            first in proptest::collection::vec(any::<u8>(), 0..120),
            scalars in proptest::collection::vec(any::<u64>(), 0..=16),
            bytes in proptest::collection::vec(any::<u8>(), 0..100),
            outs in 0u32..=16, r in any::<u64>(),
        ) {
            let call = Call {
                selector: r,
                flags: outs as u8,
                args: CallArgs {
                    scalar_input: scalars,
                    structure_input: bytes,
                    structure_input_length: r % 3,
                    scalar_output_count: outs,
                    structure_output_max: outs * 7,
                    async_reference: r % 5,
                },
            };
            let mut e = Encoder::new();
            call.encode(&mut e);
            let mut used = Call::decode(&mut Decoder::new(&first)).unwrap_or_else(|_| Call {
                args: CallArgs { scalar_input: vec![9; 16], structure_input: vec![9; 64], ..Default::default() },
                ..Default::default()
            });
            let _ = used.decode_into(&mut Decoder::new(&first));
            used.decode_into(&mut Decoder::new(e.as_bytes())).unwrap();
            prop_assert_eq!(used, call);
        }

        #[test]
        fn any_bytes_decode_or_fail_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = CallArgs::decode(&mut Decoder::new(&bytes));
            let _ = CallResult::decode(&mut Decoder::new(&bytes));
            let _ = Completion::decode(&mut Decoder::new(&bytes));
            let _ = Call::decode(&mut Decoder::new(&bytes));
            let _ = ChannelAnswer::decode(&mut Decoder::new(&bytes));
        }
    }
}

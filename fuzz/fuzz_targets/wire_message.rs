//! A message from a dext: the 32-byte header, then arguments decoded as
//! the daemon decodes them (plist values included); and an app's call on a
//! user client's channel (alone and into the one before it, as the dext
//! reuses a call), and the dext's answer, as each side decodes them.
#![no_main]
use driverkit_wire::{Decoder, Wire};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = driverkit_wire::Header::parse(&driverkit_wire::Packet::new_unchecked(data));
    let mut d = Decoder::new(data);
    let _ = <(u64, String, plist::Dictionary)>::decode(&mut d);
    let mut d = Decoder::new(data);
    let _ = <Vec<(u8, u32, u32, (i64, i64, i64), u64)>>::decode(&mut d);
    let mut d = Decoder::new(data);
    let _ = <(driverkit_wire::Bytes, Option<plist::Value>)>::decode(&mut d);
    let _ = driverkit_wire::user_client::Call::decode(&mut Decoder::new(data));
    // As a dext decodes: into the last call, whatever it held; the two
    // halves of the input are two calls in a row.
    let (first, second) = data.split_at(data.len() / 2);
    let mut call = driverkit_wire::user_client::Call::default();
    let _ = call.decode_into(&mut Decoder::new(first));
    let _ = call.decode_into(&mut Decoder::new(second));
    let _ = driverkit_wire::user_client::ChannelAnswer::decode(&mut Decoder::new(data));
});

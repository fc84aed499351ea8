//! A message from a dext: the 32-byte header, then arguments decoded as
//! the daemon decodes them (plist values included); and an app's call on a
//! user client's channel, and the dext's answer, as each side decodes them.
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
    let _ = driverkit_wire::user_client::ChannelAnswer::decode(&mut Decoder::new(data));
});

//! Linux usbmon's binary packet header (`struct mon_bin_hdr`, 64 bytes,
//! `Documentation/usb/usbmon.rst`): what `LINKTYPE_USB_LINUX_MMAPPED` (220)
//! packets in a pcap or pcapng file start with, as Wireshark, tshark and
//! umockdev read them, followed by the transfer's data.
//!
//! [`Packet`] is a typed view whose accessors never panic; [`PacketRepr`]
//! is the validated value, parsed from and emitted to bytes symmetrically.
//! Fields are in the capturing machine's byte order; this module writes and
//! reads little-endian, the order of every machine this project runs on
//! (and a pcapng section says its order in its header).

use crate::Error;

/// The header's length.
pub const HEADER_LEN: usize = 64;

/// `-EINPROGRESS`: a submission's status.
pub const IN_PROGRESS: i32 = -115;
/// `-EPIPE`: a stall.
pub const STALL: i32 = -32;

/// What the packet records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// `S`: a transfer handed to the device.
    Submit,
    /// `C`: the transfer done.
    Complete,
    /// `E`: a submission that failed.
    Error,
}

impl Event {
    fn byte(self) -> u8 {
        match self {
            Event::Submit => b'S',
            Event::Complete => b'C',
            Event::Error => b'E',
        }
    }
}

/// `xfer_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    Isochronous,
    Interrupt,
    Control,
    Bulk,
}

impl Transfer {
    fn byte(self) -> u8 {
        match self {
            Transfer::Isochronous => 0,
            Transfer::Interrupt => 1,
            Transfer::Control => 2,
            Transfer::Bulk => 3,
        }
    }

    /// The type of an endpoint's descriptor (`bmAttributes & 3`).
    pub fn of_attributes(attributes: u8) -> Transfer {
        match attributes & 3 {
            0 => Transfer::Control,
            1 => Transfer::Isochronous,
            2 => Transfer::Bulk,
            _ => Transfer::Interrupt,
        }
    }
}

/// A usbmon packet's header, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketRepr {
    /// The URB's identity: a submission and its completion share it.
    pub id: u64,
    pub event: Event,
    pub transfer: Transfer,
    /// The endpoint address (bit 7: IN).
    pub endpoint: u8,
    pub device: u8,
    pub bus: u16,
    /// A control submission's setup packet.
    pub setup: Option<[u8; 8]>,
    pub seconds: i64,
    pub microseconds: i32,
    /// 0, `IN_PROGRESS` for a submission, or a negative errno.
    pub status: i32,
    /// The transfer's length: asked for (submission) or done (completion).
    pub urb_length: u32,
    /// How many data bytes follow the header.
    pub captured: u32,
    pub interval: i32,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

/// A typed view over a usbmon packet's bytes.
pub struct Packet<'a>(&'a [u8]);

impl<'a> Packet<'a> {
    /// The view, once the header is whole and the data it announces is
    /// there.
    pub fn new_checked(bytes: &'a [u8]) -> Result<Packet<'a>, Error> {
        if bytes.len() < HEADER_LEN {
            return Err(Error {
                offset: bytes.len(),
                expected: format!("a {HEADER_LEN}-byte usbmon header"),
                found: format!("{} bytes", bytes.len()),
            });
        }
        let p = Packet(bytes);
        let captured = p.captured() as usize;
        if HEADER_LEN + captured > bytes.len() {
            return Err(Error {
                offset: 36,
                expected: format!(
                    "at most {} captured bytes (what follows the header)",
                    bytes.len() - HEADER_LEN
                ),
                found: captured.to_string(),
            });
        }
        Ok(p)
    }

    pub fn id(&self) -> u64 {
        self.0
            .get(0..8)
            .and_then(|s| s.try_into().ok())
            .map_or(0, u64::from_le_bytes)
    }
    pub fn event(&self) -> u8 {
        self.0.get(8).copied().unwrap_or(0)
    }
    pub fn transfer(&self) -> u8 {
        self.0.get(9).copied().unwrap_or(0)
    }
    pub fn endpoint(&self) -> u8 {
        self.0.get(10).copied().unwrap_or(0)
    }
    pub fn device(&self) -> u8 {
        self.0.get(11).copied().unwrap_or(0)
    }
    pub fn bus(&self) -> u16 {
        self.0
            .get(12..14)
            .and_then(|s| s.try_into().ok())
            .map_or(0, u16::from_le_bytes)
    }
    pub fn setup_present(&self) -> bool {
        self.0.get(14) == Some(&0)
    }
    pub fn seconds(&self) -> i64 {
        self.0
            .get(16..24)
            .and_then(|s| s.try_into().ok())
            .map_or(0, i64::from_le_bytes)
    }
    pub fn microseconds(&self) -> i32 {
        u32_at(self.0, 24) as i32
    }
    pub fn status(&self) -> i32 {
        u32_at(self.0, 28) as i32
    }
    pub fn urb_length(&self) -> u32 {
        u32_at(self.0, 32)
    }
    pub fn captured(&self) -> u32 {
        u32_at(self.0, 36)
    }
    pub fn setup(&self) -> [u8; 8] {
        self.0
            .get(40..48)
            .and_then(|s| s.try_into().ok())
            .unwrap_or_default()
    }
    pub fn interval(&self) -> i32 {
        u32_at(self.0, 48) as i32
    }
    /// The captured data.
    pub fn data(&self) -> &'a [u8] {
        let n = self.captured() as usize;
        self.0.get(HEADER_LEN..HEADER_LEN + n).unwrap_or(&[])
    }
}

impl PacketRepr {
    /// The header's values and the data after it; a refusal names the
    /// byte and what was wrong.
    pub fn parse(bytes: &[u8]) -> Result<(PacketRepr, &[u8]), Error> {
        let p = Packet::new_checked(bytes)?;
        let bad = |offset: usize, expected: &str, found: u8| Error {
            offset,
            expected: expected.to_owned(),
            found: format!("{found:#04x}"),
        };
        let event = match p.event() {
            b'S' => Event::Submit,
            b'C' => Event::Complete,
            b'E' => Event::Error,
            other => return Err(bad(8, "an event: 'S', 'C' or 'E'", other)),
        };
        let transfer = match p.transfer() {
            0 => Transfer::Isochronous,
            1 => Transfer::Interrupt,
            2 => Transfer::Control,
            3 => Transfer::Bulk,
            other => return Err(bad(9, "a transfer type 0 to 3", other)),
        };
        let repr = PacketRepr {
            id: p.id(),
            event,
            transfer,
            endpoint: p.endpoint(),
            device: p.device(),
            bus: p.bus(),
            setup: p.setup_present().then(|| p.setup()),
            seconds: p.seconds(),
            microseconds: p.microseconds(),
            status: p.status(),
            urb_length: p.urb_length(),
            captured: p.captured(),
            interval: p.interval(),
        };
        Ok((repr, p.data()))
    }

    /// The header, then `data` (whose length `captured` must be).
    pub fn emit(&self, data: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id.to_le_bytes());
        out.push(self.event.byte());
        out.push(self.transfer.byte());
        out.push(self.endpoint);
        out.push(self.device);
        out.extend_from_slice(&self.bus.to_le_bytes());
        // flag_setup: 0 when a setup packet is there, '-' when not;
        // flag_data: 0 when data follows, '<' (none, IN) or '>' (none, OUT).
        out.push(if self.setup.is_some() { 0 } else { b'-' });
        out.push(if !data.is_empty() {
            0
        } else if self.endpoint & 0x80 != 0 {
            b'<'
        } else {
            b'>'
        });
        out.extend_from_slice(&self.seconds.to_le_bytes());
        out.extend_from_slice(&self.microseconds.to_le_bytes());
        out.extend_from_slice(&self.status.to_le_bytes());
        out.extend_from_slice(&self.urb_length.to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.setup.unwrap_or_default());
        out.extend_from_slice(&self.interval.to_le_bytes());
        out.extend_from_slice(&0i32.to_le_bytes()); // start_frame
        out.extend_from_slice(&0u32.to_le_bytes()); // xfer_flags
        out.extend_from_slice(&0u32.to_le_bytes()); // ndesc
        out.extend_from_slice(data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control_in() -> PacketRepr {
        PacketRepr {
            id: 0xffff_8880_1234_5678,
            event: Event::Submit,
            transfer: Transfer::Control,
            endpoint: 0x80,
            device: 3,
            bus: 1,
            setup: Some([0x80, 6, 0, 1, 0, 0, 18, 0]),
            seconds: 1_765_000_000,
            microseconds: 123_456,
            status: IN_PROGRESS,
            urb_length: 18,
            captured: 0,
            interval: 0,
        }
    }

    #[test]
    fn a_header_parses_as_it_was_emitted() {
        let mut bytes = Vec::new();
        control_in().emit(&[], &mut bytes);
        assert_eq!(bytes.len(), HEADER_LEN);
        assert_eq!(bytes[14], 0, "flag_setup: present");
        assert_eq!(bytes[15], b'<', "flag_data: none, IN");
        let (repr, data) = PacketRepr::parse(&bytes).unwrap();
        assert_eq!(repr, control_in());
        assert!(data.is_empty());

        let done = PacketRepr {
            event: Event::Complete,
            setup: None,
            status: 0,
            captured: 3,
            ..control_in()
        };
        let mut bytes = Vec::new();
        done.emit(&[1, 2, 3], &mut bytes);
        let (repr, data) = PacketRepr::parse(&bytes).unwrap();
        assert_eq!((repr, data), (done, &[1u8, 2, 3][..]));
    }

    #[test]
    fn a_short_or_lying_header_is_refused_by_offset() {
        let e = PacketRepr::parse(&[0u8; 10]).unwrap_err();
        assert_eq!(e.offset, 10);
        let mut bytes = Vec::new();
        control_in().emit(&[], &mut bytes);
        bytes[36] = 200; // captured, more than follows
        let e = PacketRepr::parse(&bytes).unwrap_err();
        assert_eq!(e.offset, 36);
        bytes[36] = 0;
        bytes[8] = b'X';
        let e = PacketRepr::parse(&bytes).unwrap_err();
        assert_eq!((e.offset, e.found.as_str()), (8, "0x58"));
    }
}

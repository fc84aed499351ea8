//! The USB/IP protocol (Linux `Documentation/usb/usbip_protocol.rst`,
//! version 1.1.1): the operations a client sends to list and import a
//! server's devices, and the URB messages that follow on the same TCP
//! connection. Every field is big-endian.
//!
//! Each message is a plain value with `emit` and `parse`; `parse` checks
//! the length first and names the offset, the expectation and what it found,
//! so a hostile server cannot make a client panic (a property test feeds it
//! arbitrary bytes). Bytes only: sockets are the daemon's business.

use crate::Error;

/// The protocol version this client speaks.
pub const VERSION: u16 = 0x0111;

/// Operation codes.
pub mod op {
    pub const REQ_DEVLIST: u16 = 0x8005;
    pub const REP_DEVLIST: u16 = 0x0005;
    pub const REQ_IMPORT: u16 = 0x8003;
    pub const REP_IMPORT: u16 = 0x0003;
}

/// URB commands.
pub mod cmd {
    pub const SUBMIT: u32 = 0x0001;
    pub const UNLINK: u32 = 0x0002;
    pub const RET_SUBMIT: u32 = 0x0003;
    pub const RET_UNLINK: u32 = 0x0004;
}

/// Linux errno values servers put in `status`.
pub mod errno {
    pub const ENOENT: i32 = 2;
    pub const EPIPE: i32 = 32;
    pub const ETIMEDOUT: i32 = 110;
    pub const ECONNRESET: i32 = 104;
    pub const ESHUTDOWN: i32 = 108;
}

/// The 8-byte header of an operation.
pub const OP_HEADER_LEN: usize = 8;
/// A device's description in OP_REP_DEVLIST and OP_REP_IMPORT.
pub const DEVICE_LEN: usize = 312;
/// Every URB message starts with 48 bytes.
pub const URB_HEADER_LEN: usize = 48;

fn need(bytes: &[u8], len: usize, what: &str) -> Result<(), Error> {
    if bytes.len() < len {
        return Err(Error {
            offset: bytes.len(),
            expected: format!("{len} bytes of {what}"),
            found: format!("{} bytes", bytes.len()),
        });
    }
    Ok(())
}

fn be16(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}
fn be32(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// A NUL-padded string field.
fn text(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn put_text(out: &mut Vec<u8>, s: &str, width: usize) {
    let bytes = s.as_bytes();
    let n = bytes.len().min(width - 1);
    out.extend_from_slice(&bytes[..n]);
    out.resize(out.len() + width - n, 0);
}

/// `version, code, status`: the head of every operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpHeader {
    pub version: u16,
    pub code: u16,
    pub status: u32,
}

impl OpHeader {
    pub fn emit(&self) -> [u8; OP_HEADER_LEN] {
        let mut b = [0u8; OP_HEADER_LEN];
        b[0..2].copy_from_slice(&self.version.to_be_bytes());
        b[2..4].copy_from_slice(&self.code.to_be_bytes());
        b[4..8].copy_from_slice(&self.status.to_be_bytes());
        b
    }

    pub fn parse(b: &[u8]) -> Result<OpHeader, Error> {
        need(b, OP_HEADER_LEN, "operation header")?;
        Ok(OpHeader {
            version: be16(b, 0),
            code: be16(b, 2),
            status: be32(b, 4),
        })
    }

    /// Checks the code a reply must carry.
    pub fn expect(&self, code: u16) -> Result<(), Error> {
        if self.code != code {
            return Err(Error {
                offset: 2,
                expected: format!("operation {code:#06x}"),
                found: format!("{:#06x}", self.code),
            });
        }
        Ok(())
    }
}

/// An exported device as the server describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub path: String,
    pub busid: String,
    pub busnum: u32,
    pub devnum: u32,
    pub speed: u32,
    pub id_vendor: u16,
    pub id_product: u16,
    pub bcd_device: u16,
    pub device_class: u8,
    pub device_subclass: u8,
    pub device_protocol: u8,
    pub configuration_value: u8,
    pub num_configurations: u8,
    pub num_interfaces: u8,
}

impl DeviceInfo {
    /// `busnum << 16 | devnum`, the `devid` of every URB.
    pub fn devid(&self) -> u32 {
        self.busnum << 16 | (self.devnum & 0xffff)
    }

    pub fn emit(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(DEVICE_LEN);
        put_text(&mut out, &self.path, 256);
        put_text(&mut out, &self.busid, 32);
        for v in [self.busnum, self.devnum, self.speed] {
            out.extend(v.to_be_bytes());
        }
        for v in [self.id_vendor, self.id_product, self.bcd_device] {
            out.extend(v.to_be_bytes());
        }
        out.extend([
            self.device_class,
            self.device_subclass,
            self.device_protocol,
            self.configuration_value,
            self.num_configurations,
            self.num_interfaces,
        ]);
        out
    }

    pub fn parse(b: &[u8]) -> Result<DeviceInfo, Error> {
        need(b, DEVICE_LEN, "device description")?;
        Ok(DeviceInfo {
            path: text(&b[..256]),
            busid: text(&b[256..288]),
            busnum: be32(b, 288),
            devnum: be32(b, 292),
            speed: be32(b, 296),
            id_vendor: be16(b, 300),
            id_product: be16(b, 302),
            bcd_device: be16(b, 304),
            device_class: b[306],
            device_subclass: b[307],
            device_protocol: b[308],
            configuration_value: b[309],
            num_configurations: b[310],
            num_interfaces: b[311],
        })
    }
}

/// OP_REQ_IMPORT's body: the bus ID, NUL-padded to 32 bytes.
pub fn emit_import(busid: &str) -> Vec<u8> {
    let mut out = OpHeader {
        version: VERSION,
        code: op::REQ_IMPORT,
        status: 0,
    }
    .emit()
    .to_vec();
    put_text(&mut out, busid, 32);
    out
}

/// The bus ID an OP_REQ_IMPORT asks for (the 32 bytes after its header).
pub fn parse_import(b: &[u8]) -> Result<String, Error> {
    need(b, 32, "bus ID")?;
    Ok(text(&b[..32]))
}

/// An exported device and its interfaces' (class, subclass, protocol).
pub type Exported = (DeviceInfo, Vec<(u8, u8, u8)>);

/// The body of OP_REP_DEVLIST after its header (see [`parse_devlist`]).
pub fn emit_devlist(devices: &[Exported]) -> Vec<u8> {
    let mut out = (devices.len() as u32).to_be_bytes().to_vec();
    for (d, interfaces) in devices {
        out.extend(d.emit());
        for (class, subclass, protocol) in interfaces.iter().take(usize::from(d.num_interfaces)) {
            out.extend([*class, *subclass, *protocol, 0]);
        }
    }
    out
}

/// The body of OP_REP_DEVLIST after its header: the device count, then
/// each device with one 4-byte record per interface. Returns the devices
/// and their interfaces' (class, subclass, protocol).
pub fn parse_devlist(b: &[u8]) -> Result<Vec<Exported>, Error> {
    need(b, 4, "device count")?;
    let count = be32(b, 0) as usize;
    let mut out = Vec::new();
    let mut at = 4;
    for i in 0..count {
        let rest = b.get(at..).unwrap_or_default();
        let d = DeviceInfo::parse(rest).map_err(|e| Error {
            offset: at + e.offset,
            expected: format!("{} (device {i} of {count})", e.expected),
            found: e.found,
        })?;
        at += DEVICE_LEN;
        let n = usize::from(d.num_interfaces);
        let rest = b.get(at..).unwrap_or_default();
        need(rest, 4 * n, "interface records").map_err(|e| Error {
            offset: at + e.offset,
            ..e
        })?;
        let interfaces = rest[..4 * n]
            .chunks(4)
            .map(|c| (c[0], c[1], c[2]))
            .collect();
        at += 4 * n;
        out.push((d, interfaces));
    }
    Ok(out)
}

/// A URB message: CMD_SUBMIT, RET_SUBMIT, CMD_UNLINK or RET_UNLINK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Urb {
    Submit {
        seqnum: u32,
        devid: u32,
        /// 1 for IN, 0 for OUT.
        direction: u32,
        endpoint: u32,
        transfer_flags: u32,
        length: u32,
        interval: u32,
        setup: [u8; 8],
        /// OUT data (`length` bytes).
        data: Vec<u8>,
    },
    RetSubmit {
        seqnum: u32,
        /// 0, or a negative Linux errno.
        status: i32,
        actual_length: u32,
        /// IN data (`actual_length` bytes).
        data: Vec<u8>,
    },
    Unlink {
        seqnum: u32,
        devid: u32,
        direction: u32,
        endpoint: u32,
        /// The submission to cancel.
        victim: u32,
    },
    RetUnlink {
        seqnum: u32,
        status: i32,
    },
}

/// What a URB header says about the bytes that follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UrbHead {
    pub command: u32,
    pub seqnum: u32,
    pub direction: u32,
    /// Bytes after the 48-byte header: data, plus iso descriptors.
    pub payload: usize,
}

/// Largest payload accepted from a peer, so that a lying length cannot
/// make a reader allocate without bound.
pub const MAX_PAYLOAD: usize = 16 << 20;

impl UrbHead {
    /// Reads a header, to know how many payload bytes to read next.
    pub fn parse(b: &[u8]) -> Result<UrbHead, Error> {
        Self::parse_as(b, None)
    }

    /// Reads the header of a reply to a submission whose direction the
    /// reader knows (1: IN). Linux's `usbip-host` sends RET_SUBMIT with
    /// `devid`, `direction` and `ep` all zero, as the kernel's USB/IP
    /// document allows: only the CMD_SUBMIT with the same `seqnum` says
    /// whether IN data follows.
    pub fn parse_reply(b: &[u8], direction: u32) -> Result<UrbHead, Error> {
        Self::parse_as(b, Some(direction))
    }

    fn parse_as(b: &[u8], known_direction: Option<u32>) -> Result<UrbHead, Error> {
        need(b, URB_HEADER_LEN, "URB header")?;
        let command = be32(b, 0);
        let direction = match (command, known_direction) {
            (cmd::RET_SUBMIT, Some(d)) => d,
            _ => be32(b, 12),
        };
        let payload = match command {
            cmd::SUBMIT if direction == 0 => be32(b, 24) as usize,
            cmd::RET_SUBMIT if direction == 1 => {
                let iso = be32(b, 32) as usize;
                let iso = if iso == u32::MAX as usize { 0 } else { iso };
                (be32(b, 24) as usize).saturating_add(iso.saturating_mul(16))
            }
            cmd::SUBMIT | cmd::RET_SUBMIT | cmd::UNLINK | cmd::RET_UNLINK => 0,
            other => {
                return Err(Error {
                    offset: 0,
                    expected: "URB command 1 to 4".into(),
                    found: format!("{other:#x}"),
                })
            }
        };
        if payload > MAX_PAYLOAD {
            return Err(Error {
                offset: 24,
                expected: format!("at most {MAX_PAYLOAD} bytes of data"),
                found: format!("{payload}"),
            });
        }
        Ok(UrbHead {
            command,
            seqnum: be32(b, 4),
            direction,
            payload,
        })
    }
}

impl Urb {
    pub fn emit(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(URB_HEADER_LEN);
        let mut put = |v: u32| out.extend(v.to_be_bytes());
        match self {
            Urb::Submit {
                seqnum,
                devid,
                direction,
                endpoint,
                transfer_flags,
                length,
                interval,
                setup,
                data,
            } => {
                for v in [cmd::SUBMIT, *seqnum, *devid, *direction, *endpoint] {
                    put(v);
                }
                for v in [*transfer_flags, *length, 0, 0, *interval] {
                    put(v);
                }
                out.extend(setup);
                out.extend(data);
            }
            Urb::RetSubmit {
                seqnum,
                status,
                actual_length,
                data,
            } => {
                for v in [cmd::RET_SUBMIT, *seqnum, 0, u32::from(!data.is_empty()), 0] {
                    put(v);
                }
                for v in [*status as u32, *actual_length, 0, 0, 0] {
                    put(v);
                }
                out.extend([0u8; 8]);
                out.extend(data);
            }
            Urb::Unlink {
                seqnum,
                devid,
                direction,
                endpoint,
                victim,
            } => {
                for v in [cmd::UNLINK, *seqnum, *devid, *direction, *endpoint, *victim] {
                    put(v);
                }
                out.extend([0u8; 24]);
            }
            Urb::RetUnlink { seqnum, status } => {
                for v in [cmd::RET_UNLINK, *seqnum, 0, 0, 0, *status as u32] {
                    put(v);
                }
                out.extend([0u8; 24]);
            }
        }
        out
    }

    /// One whole message: the header and the payload it announces.
    pub fn parse(b: &[u8]) -> Result<Urb, Error> {
        Self::parse_with(b, UrbHead::parse(b)?)
    }

    /// A reply to a submission of known direction (see
    /// [`UrbHead::parse_reply`]).
    pub fn parse_reply(b: &[u8], direction: u32) -> Result<Urb, Error> {
        Self::parse_with(b, UrbHead::parse_reply(b, direction)?)
    }

    fn parse_with(b: &[u8], head: UrbHead) -> Result<Urb, Error> {
        need(b, URB_HEADER_LEN + head.payload, "URB with its data")?;
        let body = &b[URB_HEADER_LEN..URB_HEADER_LEN + head.payload];
        Ok(match head.command {
            cmd::SUBMIT => Urb::Submit {
                seqnum: head.seqnum,
                devid: be32(b, 8),
                direction: head.direction,
                endpoint: be32(b, 16),
                transfer_flags: be32(b, 20),
                length: be32(b, 24),
                interval: be32(b, 36),
                setup: b[40..48].try_into().unwrap_or_default(),
                data: body.to_vec(),
            },
            cmd::RET_SUBMIT => {
                let actual = be32(b, 24);
                let data_len = (actual as usize).min(body.len());
                Urb::RetSubmit {
                    seqnum: head.seqnum,
                    status: be32(b, 20) as i32,
                    actual_length: actual,
                    data: if head.direction == 1 {
                        body[..data_len].to_vec()
                    } else {
                        Vec::new()
                    },
                }
            }
            cmd::UNLINK => Urb::Unlink {
                seqnum: head.seqnum,
                devid: be32(b, 8),
                direction: head.direction,
                endpoint: be32(b, 16),
                victim: be32(b, 20),
            },
            _ => Urb::RetUnlink {
                seqnum: head.seqnum,
                status: be32(b, 20) as i32,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_device_list_round_trips_and_an_import_names_its_bus_id() {
        let d = device();
        let list = vec![(d, vec![(3, 1, 1)])];
        assert_eq!(parse_devlist(&emit_devlist(&list)).unwrap(), list);
        let import = emit_import("1-1");
        assert_eq!(parse_import(&import[OP_HEADER_LEN..]).unwrap(), "1-1");
        assert!(parse_import(&[0; 5]).is_err());
    }

    #[test]
    fn a_linux_ret_submit_with_zeroed_fields_is_read_by_the_submissions_direction() {
        // usbip-host's RET_SUBMIT: devid, direction and ep zero, 4 IN bytes.
        let mut b = Vec::new();
        for v in [cmd::RET_SUBMIT, 7, 0, 0, 0, 0, 4, 0, 0, 0] {
            b.extend(u32::to_be_bytes(v));
        }
        b.extend([0u8; 8]);
        b.extend([1, 2, 3, 4]);
        let head = UrbHead::parse(&b).unwrap();
        assert_eq!(
            head.payload, 0,
            "read alone, the header says no data follows"
        );
        let head = UrbHead::parse_reply(&b, 1).unwrap();
        assert_eq!(head.payload, 4);
        match Urb::parse_reply(&b, 1).unwrap() {
            Urb::RetSubmit { seqnum, data, .. } => {
                assert_eq!(seqnum, 7);
                assert_eq!(data, [1, 2, 3, 4]);
            }
            other => panic!("{other:?}"),
        }
    }

    use super::*;
    use proptest::prelude::*;

    fn device() -> DeviceInfo {
        DeviceInfo {
            path: "/sys/devices/pci0000:00/usb1/1-1".into(),
            busid: "1-1".into(),
            busnum: 1,
            devnum: 2,
            speed: 3,
            id_vendor: 0x1209,
            id_product: 1,
            bcd_device: 0x100,
            device_class: 0,
            device_subclass: 0,
            device_protocol: 0,
            configuration_value: 1,
            num_configurations: 1,
            num_interfaces: 1,
        }
    }

    #[test]
    fn devlist_parses_devices_and_interfaces() {
        let mut body = 1u32.to_be_bytes().to_vec();
        body.extend(device().emit());
        body.extend([3, 1, 1, 0]);
        let list = parse_devlist(&body).unwrap();
        assert_eq!(list, [(device(), vec![(3, 1, 1)])]);
        assert_eq!(list[0].0.devid(), 0x10002);
        let e = parse_devlist(&body[..body.len() - 2]).unwrap_err();
        assert_eq!(e.offset, 318, "where the bytes ran out");
        assert!(e.expected.contains("interface records"), "{e}");
    }

    #[test]
    fn import_request_is_header_and_padded_busid() {
        let b = emit_import("1-1");
        assert_eq!(b.len(), 40);
        assert_eq!(&b[..4], [0x01, 0x11, 0x80, 0x03]);
        assert_eq!(&b[8..11], b"1-1");
    }

    #[test]
    fn unknown_commands_and_huge_lengths_are_refused() {
        let mut b = [0u8; 48];
        b[3] = 9;
        assert!(UrbHead::parse(&b).unwrap_err().found.contains("0x9"));
        let mut b = Urb::Submit {
            seqnum: 1,
            devid: 2,
            direction: 0,
            endpoint: 1,
            transfer_flags: 0,
            length: 0,
            interval: 0,
            setup: [0; 8],
            data: vec![],
        }
        .emit();
        b[24..28].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(UrbHead::parse(&b).unwrap_err().offset, 24);
    }

    fn urb() -> impl Strategy<Value = Urb> {
        prop_oneof![
            (
                any::<u32>(),
                any::<u32>(),
                0u32..2,
                0u32..16,
                any::<u32>(),
                any::<[u8; 8]>(),
                proptest::collection::vec(any::<u8>(), 0..64)
            )
                .prop_map(
                    |(seqnum, devid, direction, endpoint, interval, setup, data)| Urb::Submit {
                        seqnum,
                        devid,
                        direction,
                        endpoint,
                        transfer_flags: 0,
                        length: data.len() as u32,
                        interval,
                        setup,
                        data: if direction == 0 { data } else { Vec::new() },
                    }
                ),
            (
                any::<u32>(),
                any::<i32>(),
                proptest::collection::vec(any::<u8>(), 1..64)
            )
                .prop_map(|(seqnum, status, data)| Urb::RetSubmit {
                    seqnum,
                    status,
                    actual_length: data.len() as u32,
                    data
                }),
            (any::<u32>(), any::<u32>(), 0u32..2, 0u32..16, any::<u32>()).prop_map(
                |(seqnum, devid, direction, endpoint, victim)| Urb::Unlink {
                    seqnum,
                    devid,
                    direction,
                    endpoint,
                    victim
                }
            ),
            (any::<u32>(), any::<i32>())
                .prop_map(|(seqnum, status)| Urb::RetUnlink { seqnum, status }),
        ]
    }

    proptest! {
        #[test]
        fn urbs_round_trip(u in urb()) {
            prop_assert_eq!(Urb::parse(&u.emit()).unwrap(), u);
        }

        #[test]
        fn devices_round_trip(vendor: u16, product: u16, busnum: u32, devnum: u32, busid in "[0-9-]{1,31}") {
            let d = DeviceInfo { id_vendor: vendor, id_product: product, busnum, devnum, busid, ..device() };
            prop_assert_eq!(DeviceInfo::parse(&d.emit()).unwrap(), d);
        }

        /// No bytes from a server make a parser panic.
        #[test]
        fn garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = OpHeader::parse(&b);
            let _ = DeviceInfo::parse(&b);
            let _ = parse_devlist(&b);
            let _ = UrbHead::parse(&b);
            let _ = Urb::parse(&b);
        }
    }
}

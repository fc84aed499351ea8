//! The FT232's USB protocol: its vendor requests, the baud-rate divisor,
//! and the two status bytes that start every bulk-IN packet. Pure
//! functions, so that they are tested without a chip.

use driverkit::serial::Parity;

/// Vendor requests (host to device, `bmRequestType` 0x40; 0xC0 to read).
/// The chip's full-speed bulk packet: every one from bulk IN starts with
/// the two status bytes.
pub const MAX_PACKET: usize = 64;

pub const RESET: u8 = 0x00;
pub const MODEM_CTRL: u8 = 0x01;
pub const SET_FLOW_CTRL: u8 = 0x02;
pub const SET_BAUD_RATE: u8 = 0x03;
pub const SET_DATA: u8 = 0x04;
pub const GET_MODEM_STATUS: u8 = 0x05;
pub const SET_LATENCY_TIMER: u8 = 0x09;

/// `RESET`'s values: the whole chip, or one FIFO.
pub const RESET_SIO: u16 = 0;
pub const PURGE_RX: u16 = 1;
pub const PURGE_TX: u16 = 2;

/// The chip's clock: 48 MHz, divided by 16 per bit at divisor 1.
const BASE: u32 = 48_000_000;

/// `SET_BAUD_RATE`'s `(wValue, wIndex)` for `baud` on an FT232BM/R: a
/// divisor of `BASE / 16 / baud` in eighths, whose fraction the chip takes
/// as a 3-bit code (not in order), bits 14-16.
pub fn baud_divisor(baud: u32) -> Option<(u16, u16)> {
    if baud == 0 || baud > BASE / 16 {
        return None;
    }
    // Eighths of the divisor, rounded to the nearest.
    let eighths = (BASE / 2 + baud / 2) / baud;
    let whole = eighths >> 3;
    if whole > 0x3fff {
        return None;
    }
    // The chip's codes for 0, 1/8 .. 7/8 (0.5 is 1, 0.25 is 2, 0.125 is 3,
    // 0.375 is 4, 0.625 is 5, 0.75 is 6, 0.875 is 7).
    const FRACTION: [u32; 8] = [0, 3, 2, 4, 1, 5, 6, 7];
    let mut divisor = whole | FRACTION[(eighths & 7) as usize] << 14;
    // The two fastest rates are special divisors of their own.
    if divisor == 1 {
        divisor = 0; // 3 MBd
    } else if divisor == 0x4001 {
        divisor = 1; // 2 MBd
    }
    Some((divisor as u16, (divisor >> 16) as u16))
}

/// The rate a divisor gives (what the chip, or QEMU's model of it, makes
/// of `baud_divisor`'s answer).
pub fn baud_of(value: u16, index: u16) -> u32 {
    const EIGHTHS: [u32; 8] = [0, 4, 2, 1, 3, 5, 6, 7];
    let code = ((value >> 14) as usize) | ((index as usize & 1) << 2);
    let whole = u32::from(value & 0x3fff);
    match (whole, EIGHTHS[code]) {
        (0, 0) => 3_000_000,
        (1, 0) => 2_000_000,
        (w, f) => BASE / 2 / (8 * w + f),
    }
}

/// `SET_DATA`'s `wValue`: data bits, parity, stop bits in halves (2, 3,
/// 4), and the break.
pub fn data_value(data_bits: u8, parity: Parity, half_stop_bits: u8, brk: bool) -> u16 {
    let parity: u16 = match parity {
        Parity::None => 0,
        Parity::Odd => 1,
        Parity::Even => 2,
        Parity::Mark => 3,
        Parity::Space => 4,
    };
    let stop = match half_stop_bits {
        3 => 1,
        4 => 2,
        _ => 0,
    };
    u16::from(data_bits) | parity << 8 | stop << 11 | u16::from(brk) << 14
}

/// `MODEM_CTRL`'s `wValue`: both lines set, with their mask bits.
pub fn modem_ctrl_value(dtr: bool, rts: bool) -> u16 {
    0x0300 | u16::from(dtr) | u16::from(rts) << 1
}

/// `SET_FLOW_CTRL`'s `(wValue, wIndex)`: XON and XOFF, and which flow.
pub fn flow_value(rts_cts: bool, dtr_dsr: bool, xon_xoff: bool, xon: u8, xoff: u8) -> (u16, u16) {
    let flags = u16::from(rts_cts) | u16::from(dtr_dsr) << 1 | u16::from(xon_xoff) << 2;
    (u16::from(xon) | u16::from(xoff) << 8, flags << 8)
}

/// The status at the start of every bulk-IN packet (and of
/// `GET_MODEM_STATUS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Status {
    pub cts: bool,
    pub dsr: bool,
    pub ri: bool,
    pub dcd: bool,
    pub overrun: bool,
    pub parity: bool,
    pub framing: bool,
    pub brk: bool,
}

impl Status {
    /// The modem byte and the line byte; `None` for a packet too short to
    /// be one of the chip's.
    pub fn parse(packet: &[u8]) -> Option<Status> {
        let (&modem, line) = packet.split_first()?;
        let line = line.first().copied().unwrap_or(0);
        Some(Status {
            cts: modem & 0x10 != 0,
            dsr: modem & 0x20 != 0,
            ri: modem & 0x40 != 0,
            dcd: modem & 0x80 != 0,
            overrun: line & 0x02 != 0,
            parity: line & 0x04 != 0,
            framing: line & 0x08 != 0,
            brk: line & 0x10 != 0,
        })
    }

    pub fn has_error(&self) -> bool {
        self.overrun || self.parity || self.framing || self.brk
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_rates_round_trip_through_the_divisor() {
        for baud in [
            300, 1200, 9600, 19200, 38400, 57600, 115_200, 230_400, 460_800, 921_600,
        ] {
            let (v, i) = baud_divisor(baud).unwrap();
            let back = baud_of(v, i);
            let error = (f64::from(back) - f64::from(baud)).abs() / f64::from(baud);
            assert!(error < 0.03, "{baud} -> {v:#x}/{i} -> {back}");
        }
        // The datasheet's examples: 9600 is 312.5 (0x4138), 115200 is 26.
        assert_eq!(baud_divisor(9600), Some((0x4138, 0)));
        assert_eq!(baud_divisor(115_200), Some((26, 0)));
        assert_eq!(baud_divisor(3_000_000), Some((0, 0)));
        assert_eq!(baud_divisor(2_000_000), Some((1, 0)));
        assert_eq!(baud_divisor(0), None);
        assert_eq!(baud_divisor(10), None, "past the 14-bit divisor");
    }

    #[test]
    fn line_format_and_status() {
        assert_eq!(data_value(8, Parity::None, 2, false), 0x0008);
        assert_eq!(data_value(7, Parity::Even, 4, false), 0x1207);
        assert_eq!(data_value(8, Parity::None, 2, true) & 0x4000, 0x4000);
        assert_eq!(modem_ctrl_value(true, false), 0x0301);
        assert_eq!(flow_value(true, false, false, 0x11, 0x13), (0x1311, 0x0100));
        let s = Status::parse(&[0x31, 0x60]).unwrap();
        assert!(s.cts && s.dsr && !s.ri && !s.dcd && !s.has_error());
        assert!(Status::parse(&[0x01, 0x02]).unwrap().overrun);
        assert_eq!(Status::parse(&[]), None);
    }
}

//! A tty's ioctls, as a CUSE node receives them: the command number, its
//! argument (a value, or the caller's address of a structure) and, once
//! asked for, the structure's bytes.
//!
//! [`decode`] turns one into a [`TtyIoctl`], or says which of the caller's
//! memory the kernel must bring first ([`Decoded::Fetch`]: CUSE's
//! unrestricted ioctls arrive bare, and a tty's command numbers do not
//! encode their sizes), or why it is refused: `ENOTTY` for a command a
//! serial port does not have, `EINVAL` for a malformed argument.
//! [`Termios`] is the kernel's `struct termios2` (x86-64 layout), read
//! and written symmetrically; [`Termios::line`] is what reaches the
//! driver's `hw_program_uart`.

use driverkit_wire::serial::{FlowControl, Parity};

/// Command numbers (`asm-generic/ioctls.h`, x86-64).
pub mod cmd {
    pub const TCGETS: u32 = 0x5401;
    pub const TCSETS: u32 = 0x5402;
    pub const TCSETSW: u32 = 0x5403;
    pub const TCSETSF: u32 = 0x5404;
    pub const TCSBRK: u32 = 0x5409;
    pub const TCXONC: u32 = 0x540A;
    pub const TCFLSH: u32 = 0x540B;
    pub const TIOCEXCL: u32 = 0x540C;
    pub const TIOCNXCL: u32 = 0x540D;
    pub const TIOCOUTQ: u32 = 0x5411;
    pub const TIOCGWINSZ: u32 = 0x5413;
    pub const TIOCSWINSZ: u32 = 0x5414;
    pub const TIOCMGET: u32 = 0x5415;
    pub const TIOCMBIS: u32 = 0x5416;
    pub const TIOCMBIC: u32 = 0x5417;
    pub const TIOCMSET: u32 = 0x5418;
    pub const FIONREAD: u32 = 0x541B;
    pub const TIOCGSERIAL: u32 = 0x541E;
    pub const TIOCSSERIAL: u32 = 0x541F;
    pub const TIOCGETD: u32 = 0x5424;
    pub const TIOCSETD: u32 = 0x5423;
    pub const TCSBRKP: u32 = 0x5425;
    pub const TIOCSBRK: u32 = 0x5427;
    pub const TIOCCBRK: u32 = 0x5428;
    pub const TCGETS2: u32 = 0x802C_542A;
    pub const TCSETS2: u32 = 0x402C_542B;
    pub const TCSETSW2: u32 = 0x402C_542C;
    pub const TCSETSF2: u32 = 0x402C_542D;
    pub const TIOCGRS485: u32 = 0x542E;
    pub const TIOCSRS485: u32 = 0x542F;
    pub const TIOCMIWAIT: u32 = 0x545C;
    pub const TIOCGICOUNT: u32 = 0x545D;
}

/// `TIOCM_*` modem line bits.
pub mod tiocm {
    pub const DTR: u32 = 0x002;
    pub const RTS: u32 = 0x004;
    pub const CTS: u32 = 0x020;
    pub const CD: u32 = 0x040;
    pub const RI: u32 = 0x080;
    pub const DSR: u32 = 0x100;
}

/// `TIOCM_*` bits of the modem outputs `(dtr, rts)` and inputs
/// `(cts, dsr, ri, dcd)`.
pub fn modem_bits((dtr, rts): (bool, bool), (cts, dsr, ri, dcd): (bool, bool, bool, bool)) -> u32 {
    [
        (dtr, tiocm::DTR),
        (rts, tiocm::RTS),
        (cts, tiocm::CTS),
        (dsr, tiocm::DSR),
        (ri, tiocm::RI),
        (dcd, tiocm::CD),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .fold(0, |bits, (_, bit)| bits | bit)
}

/// Sizes of the structures the kernel's ioctls carry (x86-64). The libc
/// crate's `termios` is glibc's (60 bytes, not the kernel's 36), and it
/// has no `serial_icounter_struct` or `serial_struct`.
const TERMIOS_LEN: usize = 36;
const TERMIOS2_LEN: usize = std::mem::size_of::<libc::termios2>();
const ICOUNT_LEN: usize = 80;
const SERIAL_LEN: usize = 72;
const WINSIZE_LEN: usize = std::mem::size_of::<libc::winsize>();
const INT_LEN: usize = std::mem::size_of::<libc::c_int>();

/// `c_cflag` and `c_iflag` bits (octal, as the headers write them).
pub mod bits {
    pub const CBAUD: u32 = 0o010017;
    pub const BOTHER: u32 = 0o010000;
    pub const CSIZE: u32 = 0o000060;
    pub const CSTOPB: u32 = 0o000100;
    pub const CREAD: u32 = 0o000200;
    pub const PARENB: u32 = 0o000400;
    pub const PARODD: u32 = 0o001000;
    pub const HUPCL: u32 = 0o002000;
    pub const CLOCAL: u32 = 0o004000;
    pub const CMSPAR: u32 = 0o10000000000;
    pub const CRTSCTS: u32 = 0o20000000000;
    pub const IXON: u32 = 0o002000;
    pub const IXANY: u32 = 0o004000;
    pub const IXOFF: u32 = 0o010000;
    pub const VTIME: usize = 5;
    pub const VMIN: usize = 6;
    pub const VSTART: usize = 8;
    pub const VSTOP: usize = 9;
}

/// The `Bxxx` codes and their rates.
const RATES: [(u32, u32); 31] = [
    (0, 0),
    (1, 50),
    (2, 75),
    (3, 110),
    (4, 134),
    (5, 150),
    (6, 200),
    (7, 300),
    (8, 600),
    (9, 1200),
    (10, 1800),
    (11, 2400),
    (12, 4800),
    (13, 9600),
    (14, 19200),
    (15, 38400),
    (0o010001, 57600),
    (0o010002, 115_200),
    (0o010003, 230_400),
    (0o010004, 460_800),
    (0o010005, 500_000),
    (0o010006, 576_000),
    (0o010007, 921_600),
    (0o010010, 1_000_000),
    (0o010011, 1_152_000),
    (0o010012, 1_500_000),
    (0o010013, 2_000_000),
    (0o010014, 2_500_000),
    (0o010015, 3_000_000),
    (0o010016, 3_500_000),
    (0o010017, 4_000_000),
];

/// The kernel's `struct termios2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Termios {
    pub iflag: u32,
    pub oflag: u32,
    pub cflag: u32,
    pub lflag: u32,
    pub line: u8,
    pub cc: [u8; 19],
    pub ispeed: u32,
    pub ospeed: u32,
}

/// What a termios says about the line, as the driver is told it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineFormat {
    pub baud: u32,
    pub data_bits: u8,
    pub half_stop_bits: u8,
    pub parity: Parity,
}

impl Termios {
    /// A port as it is first opened: raw, 9600 baud 8N1, the receiver on,
    /// modem lines dropped at the last close (`HUPCL`), `VMIN` 1.
    pub fn initial() -> Termios {
        let mut cc = [0u8; 19];
        // VINTR, VQUIT, VERASE, VKILL, VEOF as Linux sets them.
        cc[..5].copy_from_slice(&[3, 0x1c, 0x7f, 0x15, 4]);
        cc[bits::VMIN] = 1;
        cc[bits::VSTART] = 0x11;
        cc[bits::VSTOP] = 0x13;
        Termios {
            iflag: 0,
            oflag: 0,
            cflag: 13 | 0o60 | bits::CREAD | bits::HUPCL | bits::CLOCAL,
            lflag: 0,
            line: 0,
            cc,
            ispeed: 9600,
            ospeed: 9600,
        }
    }

    /// `struct termios` (36 bytes) or `termios2` (44); `was` gives the
    /// rate a plain termios with `BOTHER` cannot carry.
    fn parse(b: &[u8], was: &Termios) -> Option<Termios> {
        if b.len() != TERMIOS_LEN && b.len() != TERMIOS2_LEN {
            return None;
        }
        let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut cc = [0u8; 19];
        cc.copy_from_slice(&b[17..36]);
        let cflag = word(8);
        let code = cflag & bits::CBAUD;
        let ospeed = if code == bits::BOTHER {
            if b.len() == TERMIOS2_LEN {
                word(40)
            } else {
                was.ospeed
            }
        } else {
            // Every CBAUD code is a rate (the mask has no gaps).
            RATES.iter().find(|(c, _)| *c == code)?.1
        };
        Some(Termios {
            iflag: word(0),
            oflag: word(4),
            cflag,
            lflag: word(12),
            line: b[16],
            cc,
            ispeed: ospeed,
            ospeed,
        })
    }

    /// As `TCGETS` (`v2`: `TCGETS2`) writes it.
    pub fn emit(&self, v2: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(TERMIOS2_LEN);
        let mut cflag = self.cflag & !bits::CBAUD;
        cflag |= match RATES.iter().find(|(_, rate)| *rate == self.ospeed) {
            Some((code, _)) => *code,
            None => bits::BOTHER,
        };
        for w in [self.iflag, self.oflag, cflag, self.lflag] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.push(self.line);
        out.extend_from_slice(&self.cc);
        if v2 {
            out.extend_from_slice(&self.ispeed.to_le_bytes());
            out.extend_from_slice(&self.ospeed.to_le_bytes());
        }
        out
    }

    pub fn line_format(&self) -> LineFormat {
        let data_bits = 5 + ((self.cflag & bits::CSIZE) >> 4) as u8;
        let two = self.cflag & bits::CSTOPB != 0;
        LineFormat {
            baud: self.ospeed,
            data_bits,
            // Two stop bits with five data bits are one and a half.
            half_stop_bits: match (two, data_bits) {
                (false, _) => 2,
                (true, 5) => 3,
                (true, _) => 4,
            },
            parity: match (
                self.cflag & bits::PARENB != 0,
                self.cflag & bits::PARODD != 0,
                self.cflag & bits::CMSPAR != 0,
            ) {
                (false, _, _) => Parity::None,
                (true, false, false) => Parity::Even,
                (true, true, false) => Parity::Odd,
                (true, true, true) => Parity::Mark,
                (true, false, true) => Parity::Space,
            },
        }
    }

    /// `(serial::flow bits, xon, xoff)`.
    pub fn flow(&self) -> (FlowControl, u8, u8) {
        let f = FlowControl::from_termios(
            self.iflag & bits::IXON != 0,
            self.iflag & bits::IXANY != 0,
            self.iflag & bits::IXOFF != 0,
            self.cflag & bits::CRTSCTS != 0,
        );
        (f, self.cc[bits::VSTART], self.cc[bits::VSTOP])
    }

    /// `VMIN` and `VTIME` (tenths of a second).
    pub fn vmin_vtime(&self) -> (u8, u8) {
        (self.cc[bits::VMIN], self.cc[bits::VTIME])
    }
}

/// When a new termios takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    Now,
    /// After the output has gone (`TCSADRAIN`).
    Drain,
    /// After the output has gone, the input discarded (`TCSAFLUSH`).
    Flush,
}

/// `TIOCMSET`, `TIOCMBIS`, `TIOCMBIC`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModemSet {
    Set,
    Bis,
    Bic,
}

/// A serial port's ioctl, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TtyIoctl {
    GetTermios {
        v2: bool,
    },
    SetTermios {
        when: When,
        termios: Termios,
    },
    GetModem,
    SetModem {
        how: ModemSet,
        bits: u32,
    },
    /// Until one of the `tiocm` lines in `mask` changes.
    WaitModem {
        mask: u32,
    },
    GetCounters,
    /// Output gone (`tcdrain`).
    Drain,
    /// Drain, then a break of `ms`.
    SendBreak {
        ms: u32,
    },
    Break {
        on: bool,
    },
    /// Discard input and/or output.
    Flush {
        input: bool,
        output: bool,
    },
    /// `TCXONC`: suspend or restart output, or send XOFF or XON.
    FlowControl {
        arg: u32,
    },
    InputWaiting,
    OutputWaiting,
    Exclusive {
        on: bool,
    },
    GetSerial,
    SetSerial {
        flags: u32,
    },
    GetWinsize,
    SetWinsize {
        size: [u8; 8],
    },
    GetLineDiscipline,
    SetLineDiscipline {
        ldisc: u32,
    },
}

/// What to do with an ioctl.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    Ready(TtyIoctl),
    /// Ask the kernel again with `input` bytes of the caller's memory
    /// brought along and room for `output` bytes, both at the argument's
    /// address.
    Fetch {
        input: usize,
        output: usize,
    },
    Refused(i32),
}

/// The caller's memory an ioctl reads and writes: `(input, output)`;
/// `None` for a command a serial port does not have.
fn sizes(cmd: u32) -> Option<(usize, usize)> {
    use cmd::*;
    Some(match cmd {
        TCGETS => (0, TERMIOS_LEN),
        TCSETS | TCSETSW | TCSETSF => (TERMIOS_LEN, 0),
        TCGETS2 => (0, TERMIOS2_LEN),
        TCSETS2 | TCSETSW2 | TCSETSF2 => (TERMIOS2_LEN, 0),
        TIOCMGET | FIONREAD | TIOCOUTQ | TIOCGETD => (0, INT_LEN),
        TIOCMSET | TIOCMBIS | TIOCMBIC | TIOCSETD => (INT_LEN, 0),
        TIOCGICOUNT => (0, ICOUNT_LEN),
        TIOCGSERIAL => (0, SERIAL_LEN),
        TIOCSSERIAL => (SERIAL_LEN, 0),
        TIOCGWINSZ => (0, WINSIZE_LEN),
        TIOCSWINSZ => (WINSIZE_LEN, 0),
        TCSBRK | TCSBRKP | TIOCSBRK | TIOCCBRK | TCFLSH | TCXONC | TIOCEXCL | TIOCNXCL
        | TIOCMIWAIT => (0, 0),
        _ => return None,
    })
}

/// Decodes ioctl `cmd` with argument `arg`, `input` the caller's bytes
/// the kernel brought and `out_room` the room it made for an answer;
/// `termios` the port's current one.
pub fn decode(cmd: u32, arg: u64, input: &[u8], out_room: usize, termios: &Termios) -> Decoded {
    use cmd::*;
    let Some((need_in, need_out)) = sizes(cmd) else {
        return Decoded::Refused(libc::ENOTTY);
    };
    if (need_in > 0 || need_out > 0) && arg == 0 {
        return Decoded::Refused(libc::EFAULT);
    }
    if input.len() < need_in || out_room < need_out {
        return Decoded::Fetch {
            input: need_in,
            output: need_out,
        };
    }
    let input = &input[..need_in];
    let int = || u32::from_le_bytes([input[0], input[1], input[2], input[3]]);
    // A value argument is an int: the upper half of the register is noise.
    let value = arg as u32;
    let io = match cmd {
        TCGETS => TtyIoctl::GetTermios { v2: false },
        TCGETS2 => TtyIoctl::GetTermios { v2: true },
        TCSETS | TCSETSW | TCSETSF | TCSETS2 | TCSETSW2 | TCSETSF2 => {
            let Some(t) = Termios::parse(input, termios) else {
                return Decoded::Refused(libc::EINVAL);
            };
            if t.ospeed == 0 && t.cflag & bits::CBAUD == bits::BOTHER {
                return Decoded::Refused(libc::EINVAL);
            }
            let when = match cmd {
                TCSETS | TCSETS2 => When::Now,
                TCSETSW | TCSETSW2 => When::Drain,
                _ => When::Flush,
            };
            TtyIoctl::SetTermios { when, termios: t }
        }
        TIOCMGET => TtyIoctl::GetModem,
        TIOCMSET => TtyIoctl::SetModem {
            how: ModemSet::Set,
            bits: int(),
        },
        TIOCMBIS => TtyIoctl::SetModem {
            how: ModemSet::Bis,
            bits: int(),
        },
        TIOCMBIC => TtyIoctl::SetModem {
            how: ModemSet::Bic,
            bits: int(),
        },
        TIOCMIWAIT => TtyIoctl::WaitModem { mask: value },
        TIOCGICOUNT => TtyIoctl::GetCounters,
        // tcdrain is TCSBRK with a nonzero argument; tcsendbreak(fd, 0)
        // is TCSBRK 0: a quarter of a second.
        TCSBRK if value != 0 => TtyIoctl::Drain,
        TCSBRK => TtyIoctl::SendBreak { ms: 250 },
        // Tenths of a second; 0 means the usual quarter.
        TCSBRKP => TtyIoctl::SendBreak {
            ms: if value == 0 {
                250
            } else {
                value.min(300) * 100
            },
        },
        TIOCSBRK => TtyIoctl::Break { on: true },
        TIOCCBRK => TtyIoctl::Break { on: false },
        TCFLSH => match value {
            0 => TtyIoctl::Flush {
                input: true,
                output: false,
            },
            1 => TtyIoctl::Flush {
                input: false,
                output: true,
            },
            2 => TtyIoctl::Flush {
                input: true,
                output: true,
            },
            _ => return Decoded::Refused(libc::EINVAL),
        },
        TCXONC if value <= 3 => TtyIoctl::FlowControl { arg: value },
        TCXONC => return Decoded::Refused(libc::EINVAL),
        FIONREAD => TtyIoctl::InputWaiting,
        TIOCOUTQ => TtyIoctl::OutputWaiting,
        TIOCEXCL => TtyIoctl::Exclusive { on: true },
        TIOCNXCL => TtyIoctl::Exclusive { on: false },
        TIOCGSERIAL => TtyIoctl::GetSerial,
        TIOCSSERIAL => TtyIoctl::SetSerial {
            flags: u32::from_le_bytes([input[16], input[17], input[18], input[19]]),
        },
        TIOCGWINSZ => TtyIoctl::GetWinsize,
        TIOCSWINSZ => {
            let mut size = [0u8; 8];
            size.copy_from_slice(input);
            TtyIoctl::SetWinsize { size }
        }
        TIOCGETD => TtyIoctl::GetLineDiscipline,
        TIOCSETD => TtyIoctl::SetLineDiscipline { ldisc: int() },
        _ => return Decoded::Refused(libc::ENOTTY),
    };
    Decoded::Ready(io)
}

/// The counters `TIOCGICOUNT` reports (`struct serial_icounter_struct`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub cts: u32,
    pub dsr: u32,
    pub rng: u32,
    pub dcd: u32,
    pub rx: u32,
    pub tx: u32,
    pub frame: u32,
    pub overrun: u32,
    pub parity: u32,
    pub brk: u32,
    pub buf_overrun: u32,
}

impl Counters {
    pub fn emit(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ICOUNT_LEN);
        for v in [
            self.cts,
            self.dsr,
            self.rng,
            self.dcd,
            self.rx,
            self.tx,
            self.frame,
            self.overrun,
            self.parity,
            self.brk,
            self.buf_overrun,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.resize(ICOUNT_LEN, 0);
        out
    }
}

/// `struct serial_struct` for `TIOCGSERIAL`: an unknown UART type (no
/// I/O port or IRQ of the host's), line `line`, a transmit FIFO of
/// `fifo` bytes, the flags last set.
pub fn serial_struct(line: u32, fifo: u32, flags: u32) -> Vec<u8> {
    let mut out = vec![0u8; SERIAL_LEN];
    out[4..8].copy_from_slice(&line.to_le_bytes());
    out[16..20].copy_from_slice(&flags.to_le_bytes());
    out[20..24].copy_from_slice(&fifo.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(cmd: u32, t: &Termios, v2: bool) -> Decoded {
        decode(cmd, 0x1000, &t.emit(v2), 0, &Termios::initial())
    }

    #[test]
    fn a_bare_ioctl_asks_for_its_memory() {
        let t = Termios::initial();
        assert_eq!(
            decode(cmd::TCSETS, 0x1000, &[], 0, &t),
            Decoded::Fetch {
                input: 36,
                output: 0
            }
        );
        assert_eq!(
            decode(cmd::TCGETS2, 0x1000, &[], 0, &t),
            Decoded::Fetch {
                input: 0,
                output: 44
            }
        );
        assert_eq!(
            decode(cmd::TCGETS, 0x1000, &[], 36, &t),
            Decoded::Ready(TtyIoctl::GetTermios { v2: false })
        );
        // A value argument needs nothing.
        assert_eq!(
            decode(cmd::TCSBRK, 1, &[], 0, &t),
            Decoded::Ready(TtyIoctl::Drain)
        );
        assert_eq!(
            decode(0x5401_0000, 0, &[], 0, &t),
            Decoded::Refused(libc::ENOTTY)
        );
        assert_eq!(
            decode(cmd::TCFLSH, 7, &[], 0, &t),
            Decoded::Refused(libc::EINVAL)
        );
        assert_eq!(
            decode(cmd::TCGETS, 0, &[], 0, &t),
            Decoded::Refused(libc::EFAULT)
        );
    }

    #[test]
    fn cs7_parenb_cstopb_reach_the_line_format() {
        let mut t = Termios::initial();
        t.cflag = (t.cflag & !bits::CSIZE) | 0o40 | bits::PARENB | bits::CSTOPB;
        let Decoded::Ready(TtyIoctl::SetTermios { when, termios }) = set(cmd::TCSETSW, &t, false)
        else {
            panic!()
        };
        assert_eq!(when, When::Drain);
        assert_eq!(
            termios.line_format(),
            LineFormat {
                baud: 9600,
                data_bits: 7,
                half_stop_bits: 4,
                parity: Parity::Even
            }
        );
        // What was set reads back the same: glibc compares.
        assert_eq!(termios.emit(false), t.emit(false));
    }

    #[test]
    fn any_rate_through_termios2_and_back() {
        let mut t = Termios::initial();
        t.cflag = (t.cflag & !bits::CBAUD) | bits::BOTHER;
        t.ospeed = 250_000;
        t.ispeed = 250_000;
        let Decoded::Ready(TtyIoctl::SetTermios { termios, .. }) = set(cmd::TCSETS2, &t, true)
        else {
            panic!()
        };
        assert_eq!(termios.line_format().baud, 250_000);
        assert_eq!(termios.emit(true), t.emit(true));
        // A standard rate is written back as its Bxxx code.
        t.ospeed = 115_200;
        assert_eq!(
            t.emit(false)[8..12],
            (0o10002u32 | 0o60 | 0o200 | 0o2000 | 0o4000).to_le_bytes()
        );
        // BOTHER with no rate is refused.
        t.ospeed = 0;
        let mut bytes = t.emit(true);
        let cflag = (t.cflag & !bits::CBAUD) | bits::BOTHER;
        bytes[8..12].copy_from_slice(&cflag.to_le_bytes());
        assert_eq!(
            decode(cmd::TCSETS2, 0x1000, &bytes, 0, &Termios::initial()),
            Decoded::Refused(libc::EINVAL)
        );
    }

    #[test]
    fn flow_and_modem_bits() {
        let mut t = Termios::initial();
        t.iflag |= bits::IXON | bits::IXOFF;
        t.cflag |= bits::CRTSCTS;
        let (f, xon, xoff) = t.flow();
        assert_eq!(
            f,
            FlowControl {
                tx_xon_xoff: true,
                rx_xon_xoff: true,
                cts: true,
                rts: true,
                ..FlowControl::default()
            }
        );
        assert_eq!((xon, xoff), (0x11, 0x13));
        assert_eq!(
            decode(cmd::TIOCMBIS, 0x1000, &tiocm::RTS.to_le_bytes(), 0, &t),
            Decoded::Ready(TtyIoctl::SetModem {
                how: ModemSet::Bis,
                bits: tiocm::RTS
            })
        );
        assert_eq!(Counters::default().emit().len(), 80);
    }
}

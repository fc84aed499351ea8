//! The shared memory of a serial port (SerialDriverKit's
//! `SerialPortInterface`): an RX ring the driver fills and the system
//! drains into the tty, a TX ring the system fills from the tty and the
//! driver drains into the hardware, their producer and consumer indices,
//! and the doorbells that stand for DriverKit's notification methods.
//!
//! ```text
//!    0  rxPI (u32, the driver's)         320  driver doorbell: TxDataAvailable,
//!   64  rxCI (u32, the system's)              RxFreeSpaceAvailable
//!  128  txPI (u32, the system's)         384  RxDataAvailable doorbell (system waits)
//!  192  txCI (u32, the driver's)         448  TxFreeSpaceAvailable doorbell (system waits)
//!  256  rx offset, tx offset,            512  rx blocked (u32): the driver found RX full
//!       rx log2 size, tx log2 size (u32)      and waits for RxFreeSpaceAvailable
//!                                        576  txSent (u32, the driver's): TX bytes the
//!                                             hardware has sent (`TxSent`)
//!                                        640  sent reported (u32): the driver reports
//!                                             txSent; else txCI counts as sent
//!                                        704  rxDropped (u32, the tty's pump): RX bytes
//!                                             dropped while no program had the tty
//!                                             open (a pty the driver's process pumps)
//! 4096  the RX ring, then the TX ring
//! ```
//!
//! Indices count bytes ever produced or consumed (wrapping `u32`), so
//! `PI - CI` is what a ring holds; a ring's size is a power of two and a
//! byte's place is its index masked. The region's creator writes the
//! geometry before it hands the region over; the receiver reads it once,
//! checks it ([`Geometry::read`]) and never again. Everything else the peer
//! can write at any moment, so every index is checked on every use: a ring
//! whose indices say it holds more than its size is `CORRUPT`, never a
//! panic or an access outside the region.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::Ordering;

use crate::shm::{Doorbell, Laid, Layout, SharedMemory};
use crate::{IOResult, IOReturn};

const RX_PI: usize = 0;
const RX_CI: usize = 64;
const TX_PI: usize = 128;
const TX_CI: usize = 192;
const GEOMETRY: usize = 256;
/// The system rings it when it put TX bytes in or took RX bytes out.
pub const DRIVER_BELL: usize = 320;
/// The driver rings it when it put RX bytes in (`RxDataAvailable`).
pub const RX_DATA_BELL: usize = 384;
/// The driver rings it when it took TX bytes out (`TxFreeSpaceAvailable`).
pub const TX_SPACE_BELL: usize = 448;
const RX_BLOCKED: usize = 512;
const TX_SENT: usize = 576;
const TX_SENT_REPORTED: usize = 640;
const RX_DROPPED: usize = 704;
/// Where the rings may start.
pub const HEADER_LEN: usize = 4096;

/// Ring sizes a port may have: 2^MIN_LOG2 to 2^MAX_LOG2 bytes.
pub const MIN_LOG2: u32 = 6;
pub const MAX_LOG2: u32 = 24;

/// Returned for a region whose indices or geometry do not hold together.
pub const CORRUPT: IOReturn = IOReturn::INTERNAL_ERROR;

/// Where the rings are and how big, as the creator wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub rx_offset: u32,
    pub tx_offset: u32,
    pub rx_log2: u32,
    pub tx_log2: u32,
}

impl Geometry {
    /// The usual layout: the RX ring right after the header, the TX ring
    /// after it.
    pub fn packed(rx_log2: u32, tx_log2: u32) -> IOResult<Geometry> {
        let g = Geometry {
            rx_offset: HEADER_LEN as u32,
            tx_offset: (HEADER_LEN as u32).saturating_add(1u32.checked_shl(rx_log2).unwrap_or(0)),
            rx_log2,
            tx_log2,
        };
        g.check(g.region_len())?;
        Ok(g)
    }

    /// Whether the geometry fits a region of `len` bytes: sizes in range,
    /// rings after the header, inside the region and apart.
    pub fn check(&self, len: usize) -> IOResult<()> {
        let in_range = |log2: u32| (MIN_LOG2..=MAX_LOG2).contains(&log2);
        if !in_range(self.rx_log2) || !in_range(self.tx_log2) {
            return Err(IOReturn::BAD_ARGUMENT);
        }
        let span = |offset: u32, log2: u32| (offset as usize, offset as usize + (1usize << log2));
        let (rx, tx) = (
            span(self.rx_offset, self.rx_log2),
            span(self.tx_offset, self.tx_log2),
        );
        let placed = |(start, end): (usize, usize)| start >= HEADER_LEN && end <= len;
        let apart = rx.1 <= tx.0 || tx.1 <= rx.0;
        if !placed(rx) || !placed(tx) || !apart {
            return Err(IOReturn::BAD_ARGUMENT);
        }
        Ok(())
    }
}

impl Layout for Geometry {
    const AT: usize = GEOMETRY;
    const WORDS: usize = 4;

    /// Bytes a region needs for this geometry.
    fn region_len(&self) -> usize {
        let end = |offset: u32, log2: u32| offset as usize + (1usize << log2.min(MAX_LOG2));
        end(self.rx_offset, self.rx_log2).max(end(self.tx_offset, self.tx_log2))
    }

    fn check(&self, len: usize) -> IOResult<()> {
        Geometry::check(self, len)
    }

    fn to_words(&self) -> Vec<u32> {
        vec![self.rx_offset, self.tx_offset, self.rx_log2, self.tx_log2]
    }

    fn from_words(w: &[u32]) -> Geometry {
        Geometry {
            rx_offset: w[0],
            tx_offset: w[1],
            rx_log2: w[2],
            tx_log2: w[3],
        }
    }
}

/// One ring of a port, seen from either end.
#[derive(Clone, Copy)]
pub struct ByteRing<'a> {
    shm: &'a SharedMemory,
    data: usize,
    size: u32,
    pi: usize,
    ci: usize,
}

impl<'a> ByteRing<'a> {
    /// The producer's index: bytes ever put in.
    pub fn producer_index(&self) -> u32 {
        self.shm.u32_at(self.pi).load(Ordering::Acquire)
    }

    /// The consumer's index: bytes ever taken out.
    pub fn consumer_index(&self) -> u32 {
        self.shm.u32_at(self.ci).load(Ordering::Acquire)
    }

    /// The ring's size in bytes.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Bytes waiting, checked.
    pub fn used(&self) -> IOResult<u32> {
        let used = self.producer_index().wrapping_sub(self.consumer_index());
        if used > self.size {
            return Err(CORRUPT);
        }
        Ok(used)
    }

    /// Room for bytes, checked.
    pub fn free(&self) -> IOResult<u32> {
        Ok(self.size - self.used()?)
    }

    /// The producer's end: copies as much of `data` as fits, publishes it
    /// and returns how much.
    pub fn write(&self, data: &[u8]) -> IOResult<usize> {
        let pi = self.shm.u32_at(self.pi).load(Ordering::Relaxed);
        let ci = self.consumer_index();
        let used = pi.wrapping_sub(ci);
        if used > self.size {
            return Err(CORRUPT);
        }
        let n = data.len().min((self.size - used) as usize);
        self.copy_in(pi, &data[..n]);
        self.shm
            .u32_at(self.pi)
            .store(pi.wrapping_add(n as u32), Ordering::Release);
        Ok(n)
    }

    /// The consumer's end: copies up to `out.len()` bytes without taking
    /// them; returns how many.
    pub fn peek(&self, out: &mut [u8]) -> IOResult<usize> {
        let ci = self.shm.u32_at(self.ci).load(Ordering::Relaxed);
        let used = self.producer_index().wrapping_sub(ci);
        if used > self.size {
            return Err(CORRUPT);
        }
        let n = out.len().min(used as usize);
        self.copy_out(ci, &mut out[..n]);
        Ok(n)
    }

    /// The consumer's end: takes `n` bytes (after a `peek`); at most what
    /// the ring holds.
    pub fn consume(&self, n: usize) -> IOResult<usize> {
        let used = self.used()? as usize;
        let n = n.min(used);
        let ci = self.shm.u32_at(self.ci).load(Ordering::Relaxed);
        self.shm
            .u32_at(self.ci)
            .store(ci.wrapping_add(n as u32), Ordering::Release);
        Ok(n)
    }

    /// The consumer's end: `peek` and `consume` at once.
    pub fn read(&self, out: &mut [u8]) -> IOResult<usize> {
        let n = self.peek(out)?;
        self.consume(n)
    }

    /// The consumer's end: drops everything waiting (a FIFO reset).
    /// Returns how many bytes went.
    pub fn discard(&self) -> u32 {
        let pi = self.producer_index();
        let ci = self.shm.u32_at(self.ci).swap(pi, Ordering::AcqRel);
        pi.wrapping_sub(ci).min(self.size)
    }

    /// The producer's end: one `readv` of `fd` into `head` and then the
    /// ring's free space (at most `max` bytes of it), publishing what
    /// landed in the ring. Returns the bytes read in all, `head`'s
    /// included: a pty master in packet mode puts its status byte there.
    pub fn read_from(&self, fd: BorrowedFd<'_>, head: &mut [u8], max: usize) -> io::Result<usize> {
        let pi = self.shm.u32_at(self.pi).load(Ordering::Relaxed);
        let used = pi.wrapping_sub(self.consumer_index());
        if used > self.size {
            return Err(io::Error::other("the ring's indices are corrupt"));
        }
        let free = ((self.size - used) as usize).min(max);
        let [a, b] = self.spans(pi, free);
        let iov = [
            libc::iovec {
                iov_base: head.as_mut_ptr().cast(),
                iov_len: head.len(),
            },
            self.iovec(a),
            self.iovec(b),
        ];
        // SAFETY: `head` is ours for the call; the other two point into
        // the mapping, inside the ring's free space (geometry checked
        // when the region was opened), which the consumer does not read
        // until we publish it below.
        let n = unsafe { libc::readv(fd.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let in_ring = (n as usize).saturating_sub(head.len());
        self.shm
            .u32_at(self.pi)
            .store(pi.wrapping_add(in_ring as u32), Ordering::Release);
        Ok(n as usize)
    }

    /// The consumer's end: one `writev` of what the ring holds to `fd`,
    /// taking what `fd` took.
    pub fn write_to(&self, fd: BorrowedFd<'_>) -> io::Result<usize> {
        let ci = self.shm.u32_at(self.ci).load(Ordering::Relaxed);
        let used = self.producer_index().wrapping_sub(ci);
        if used > self.size {
            return Err(io::Error::other("the ring's indices are corrupt"));
        }
        if used == 0 {
            return Ok(0);
        }
        let [a, b] = self.spans(ci, used as usize);
        let iov = [self.iovec(a), self.iovec(b)];
        // SAFETY: both point into the mapping, inside what the producer
        // published (acquired above); the kernel only reads them.
        let n = unsafe { libc::writev(fd.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        self.shm
            .u32_at(self.ci)
            .store(ci.wrapping_add(n as u32), Ordering::Release);
        Ok(n as usize)
    }

    /// `len` bytes from `index` as (offset in the region, length) spans:
    /// up to the ring's end, then from its start.
    fn spans(&self, index: u32, len: usize) -> [(usize, usize); 2] {
        let at = (index & (self.size - 1)) as usize;
        let first = len.min(self.size as usize - at);
        [(self.data + at, first), (self.data, len - first)]
    }

    fn iovec(&self, (offset, len): (usize, usize)) -> libc::iovec {
        libc::iovec {
            // SAFETY: `spans` keeps `offset + len` inside the ring, which
            // the checked geometry keeps inside the mapping.
            iov_base: unsafe { self.shm.as_ptr().add(offset) }.cast(),
            iov_len: len,
        }
    }

    fn copy_in(&self, index: u32, data: &[u8]) {
        let at = (index & (self.size - 1)) as usize;
        let first = data.len().min(self.size as usize - at);
        self.shm.write(self.data + at, &data[..first]);
        self.shm.write(self.data, &data[first..]);
    }

    fn copy_out(&self, index: u32, out: &mut [u8]) {
        let at = (index & (self.size - 1)) as usize;
        let first = out.len().min(self.size as usize - at);
        let (a, b) = out.split_at_mut(first);
        self.shm.read(self.data + at, a);
        self.shm.read(self.data, b);
    }
}

/// A port's region with its checked geometry: both rings and the
/// doorbells.
pub struct SerialPortInterface {
    region: Laid<Geometry>,
}

impl SerialPortInterface {
    /// Makes a region for rings of 2^`rx_log2` and 2^`tx_log2` bytes (the
    /// driver's side, before `ConnectQueues`).
    pub fn create(rx_log2: u32, tx_log2: u32) -> IOResult<SerialPortInterface> {
        let geometry = Geometry::packed(rx_log2, tx_log2)?;
        Ok(SerialPortInterface {
            region: Laid::create("SerialPortInterface", geometry)?,
        })
    }

    /// Takes a region a peer made, checking its geometry once.
    pub fn open(shm: SharedMemory) -> IOResult<SerialPortInterface> {
        Ok(SerialPortInterface {
            region: Laid::open(shm)?,
        })
    }

    pub fn memory(&self) -> &SharedMemory {
        self.region.memory()
    }

    pub fn geometry(&self) -> Geometry {
        self.region.layout()
    }

    /// Bytes from the device on their way to the tty.
    pub fn rx(&self) -> ByteRing<'_> {
        let g = self.geometry();
        ByteRing {
            shm: self.memory(),
            data: g.rx_offset as usize,
            size: 1 << g.rx_log2,
            pi: RX_PI,
            ci: RX_CI,
        }
    }

    /// Bytes from the tty on their way to the device.
    pub fn tx(&self) -> ByteRing<'_> {
        let g = self.geometry();
        ByteRing {
            shm: self.memory(),
            data: g.tx_offset as usize,
            size: 1 << g.tx_log2,
            pi: TX_PI,
            ci: TX_CI,
        }
    }

    /// The doorbell at `offset` (`DRIVER_BELL`, `RX_DATA_BELL`,
    /// `TX_SPACE_BELL`).
    pub fn bell(&self, offset: usize) -> Doorbell<'_> {
        Doorbell::at(self.memory(), offset)
    }

    /// The driver found the RX ring full and waits for room.
    pub fn rx_blocked(&self) -> bool {
        self.memory().u32_at(RX_BLOCKED).load(Ordering::Acquire) != 0
    }

    pub fn set_rx_blocked(&self, blocked: bool) {
        self.memory()
            .u32_at(RX_BLOCKED)
            .store(blocked.into(), Ordering::Release);
    }

    /// The driver's promise to report what the hardware has sent
    /// ([`add_sent`](Self::add_sent)); made before the region is handed
    /// over.
    pub fn set_reports_sent(&self) {
        let shm = self.memory();
        shm.u32_at(TX_SENT)
            .store(self.tx().consumer_index(), Ordering::Release);
        shm.u32_at(TX_SENT_REPORTED).store(1, Ordering::Release);
    }

    /// The hardware sent `n` more bytes of those taken from the TX ring
    /// (the driver's side).
    pub fn add_sent(&self, n: u32) {
        self.memory().u32_at(TX_SENT).fetch_add(n, Ordering::AcqRel);
    }

    /// RX bytes the tty's pump dropped while no program had the tty open
    /// (wrapping); kept by whoever pumps the tty.
    pub fn rx_dropped(&self) -> u32 {
        self.memory().u32_at(RX_DROPPED).load(Ordering::Acquire)
    }

    pub fn add_rx_dropped(&self, n: u32) {
        self.memory()
            .u32_at(RX_DROPPED)
            .fetch_add(n, Ordering::AcqRel);
    }

    /// Bytes written to the TX ring the hardware has not yet sent: those
    /// still in the ring and, if the driver reports what it sent, those it
    /// took and holds. A report that does not hold together (more sent
    /// than taken, or more held than a ring and the most a driver may
    /// hold) is `CORRUPT`.
    pub fn tx_unsent(&self) -> IOResult<u32> {
        let tx = self.tx();
        let in_ring = tx.used()?;
        let shm = self.memory();
        if shm.u32_at(TX_SENT_REPORTED).load(Ordering::Acquire) == 0 {
            return Ok(in_ring);
        }
        let sent = shm.u32_at(TX_SENT).load(Ordering::Acquire);
        let unsent = tx.producer_index().wrapping_sub(sent);
        if unsent < in_ring || unsent > 1 << MAX_LOG2 {
            return Err(CORRUPT);
        }
        Ok(unsent)
    }
}

/// The control socket of a tty the driver's process pumps itself: a
/// pty's master, handed over with `connect_queues`'s answer beside one end
/// of a `SOCK_SEQPACKET` pair. The system keeps the tty's lifecycle (it
/// sees opens, and turns status into the driver's `hw_*` calls); the pump
/// moves the bytes. One byte a message.
pub mod tty_control {
    /// System → pump: a program opened the tty. Pump it from now on, from
    /// an empty RX ring (what arrived before is not this program's).
    pub const OPENED: u8 = 0x01;
    /// System → pump: the status the pump forwarded has reached the
    /// driver. The pump reads no more of the master until then, so that
    /// a program's bytes after its `tcsetattr` or `tcflush` meet the line
    /// or the emptied FIFOs they asked for.
    pub const DONE: u8 = 0x02;
    /// Pump → system: the tty's last program closed it (its master hung
    /// up). The pump stops reading it until the next `OPENED`.
    pub const HUNG_UP: u8 = 0x80;
    /// Pump → system, any other byte: a packet-mode status byte as the
    /// master gave it (`TIOCPKT`); these are the bits that matter.
    pub const PKT_FLUSHREAD: u8 = 0x01;
    pub const PKT_FLUSHWRITE: u8 = 0x02;
    pub const PKT_IOCTL: u8 = 0x40;
}

/// The `arg` of `HwProgramFlowControl`: which flow control is on (the
/// bits of IOSerialFamily's `PD_RS232_A_*` auto-flow flags).
pub mod flow {
    /// Output stops on XOFF, resumes on XON (`IXON`).
    pub const TX_XON_XOFF: u32 = 1 << 0;
    /// Any character resumes output (`IXANY`).
    pub const XANY: u32 = 1 << 1;
    /// The port sends XOFF/XON to pace its peer (`IXOFF`).
    pub const RX_XON_XOFF: u32 = 1 << 2;
    /// Output waits for CTS (`CRTSCTS`).
    pub const CTS: u32 = 1 << 3;
    /// RTS drops while the input is full (`CRTSCTS`).
    pub const RTS: u32 = 1 << 4;
    /// Output waits for DSR.
    pub const DSR: u32 = 1 << 5;
    /// DTR drops while the input is full.
    pub const DTR: u32 = 1 << 6;
}

/// A line's parity, with the values `HwProgramUART` carries (DriverKit's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Parity {
    None = 1,
    Odd = 2,
    Even = 3,
    /// The parity bit is always 1.
    Mark = 4,
    /// The parity bit is always 0.
    Space = 5,
}

impl Parity {
    /// Every parity, in wire order.
    pub const ALL: [Parity; 5] = [
        Parity::None,
        Parity::Odd,
        Parity::Even,
        Parity::Mark,
        Parity::Space,
    ];

    /// The parity a wire value stands for; `None` for a value that is no
    /// parity.
    pub fn from_wire(value: u8) -> Option<Parity> {
        Parity::ALL.into_iter().find(|p| p.to_wire() == value)
    }

    /// Its wire value (`HwProgramUART`'s `parity`).
    pub fn to_wire(self) -> u8 {
        self as u8
    }

    /// Its name as `stty`, `ioreg` and `driverkit serial set` write it:
    /// `none`, `odd`, `even`, `mark`, `space`.
    pub fn name(self) -> &'static str {
        match self {
            Parity::None => "none",
            Parity::Odd => "odd",
            Parity::Even => "even",
            Parity::Mark => "mark",
            Parity::Space => "space",
        }
    }

    /// The parity [`name`](Parity::name) gives `name`.
    pub fn from_name(name: &str) -> Option<Parity> {
        Parity::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// Which flow control is on, decoded from [`flow`]'s bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlowControl {
    /// Output stops on XOFF, resumes on XON (`IXON`).
    pub tx_xon_xoff: bool,
    /// Any character resumes output (`IXANY`).
    pub xany: bool,
    /// The port sends XOFF/XON to pace its peer (`IXOFF`).
    pub rx_xon_xoff: bool,
    /// Output waits for CTS.
    pub cts: bool,
    /// RTS drops while the input is full.
    pub rts: bool,
    /// Output waits for DSR.
    pub dsr: bool,
    /// DTR drops while the input is full.
    pub dtr: bool,
}

impl FlowControl {
    /// RTS/CTS handshaking both ways (`CRTSCTS`).
    pub const RTS_CTS: FlowControl = FlowControl::from_termios(false, false, false, true);
    /// XON/XOFF both ways (`IXON` and `IXOFF`).
    pub const XON_XOFF: FlowControl = FlowControl::from_termios(true, false, true, false);

    /// The flow control a termios asks for with `IXON`, `IXANY`, `IXOFF`
    /// and `CRTSCTS` (both halves of RTS/CTS).
    pub const fn from_termios(ixon: bool, ixany: bool, ixoff: bool, crtscts: bool) -> FlowControl {
        FlowControl {
            tx_xon_xoff: ixon,
            xany: ixany,
            rx_xon_xoff: ixoff,
            cts: crtscts,
            rts: crtscts,
            dsr: false,
            dtr: false,
        }
    }

    /// Whether any flow control is on.
    pub fn is_on(self) -> bool {
        self != FlowControl::default()
    }

    /// The flow control `bits` (`flow::*`) ask for; unknown bits are
    /// ignored.
    pub fn from_wire(bits: u32) -> FlowControl {
        let on = |bit: u32| bits & bit != 0;
        FlowControl {
            tx_xon_xoff: on(flow::TX_XON_XOFF),
            xany: on(flow::XANY),
            rx_xon_xoff: on(flow::RX_XON_XOFF),
            cts: on(flow::CTS),
            rts: on(flow::RTS),
            dsr: on(flow::DSR),
            dtr: on(flow::DTR),
        }
    }

    /// Its bits (`HwProgramFlowControl`'s `arg`).
    pub fn to_wire(self) -> u32 {
        [
            (self.tx_xon_xoff, flow::TX_XON_XOFF),
            (self.xany, flow::XANY),
            (self.rx_xon_xoff, flow::RX_XON_XOFF),
            (self.cts, flow::CTS),
            (self.rts, flow::RTS),
            (self.dsr, flow::DSR),
            (self.dtr, flow::DTR),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .fold(0, |bits, (_, bit)| bits | bit)
    }

    /// RTS/CTS handshaking, either half.
    pub fn rts_cts(self) -> bool {
        self.cts || self.rts
    }

    /// DTR/DSR handshaking, either half.
    pub fn dtr_dsr(self) -> bool {
        self.dsr || self.dtr
    }

    /// XON/XOFF, either way.
    pub fn xon_xoff(self) -> bool {
        self.tx_xon_xoff || self.rx_xon_xoff
    }
}

#[cfg(test)]
mod line_values {
    use super::*;

    #[test]
    fn parity_and_flow_decode_and_encode_alike() {
        for value in 0..=255u8 {
            match Parity::from_wire(value) {
                Some(p) => assert_eq!(p.to_wire(), value),
                None => assert!(!(1..=5).contains(&value)),
            }
        }
        assert_eq!(Parity::from_wire(3), Some(Parity::Even));
        for p in Parity::ALL {
            assert_eq!(Parity::from_name(p.name()), Some(p));
        }
        assert_eq!(Parity::from_name("EVEN"), None);
        for bits in 0..128u32 {
            assert_eq!(FlowControl::from_wire(bits).to_wire(), bits);
        }
        let hw = FlowControl::from_wire(flow::CTS | flow::RTS);
        assert!(hw.rts_cts() && !hw.xon_xoff() && !hw.dtr_dsr());
        assert_eq!(FlowControl::from_wire(1 << 20), FlowControl::default());
        // What a termios asks for, in DriverKit's bits.
        assert_eq!(FlowControl::RTS_CTS.to_wire(), flow::CTS | flow::RTS);
        assert_eq!(
            FlowControl::XON_XOFF.to_wire(),
            flow::TX_XON_XOFF | flow::RX_XON_XOFF
        );
        let ixany = FlowControl::from_termios(true, true, false, false);
        assert_eq!(ixany.to_wire(), flow::TX_XON_XOFF | flow::XANY);
        assert!(!FlowControl::default().is_on() && ixany.is_on());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bytes_cross_in_order_and_wrap() {
        let port = SerialPortInterface::create(6, 6).unwrap();
        let other = SerialPortInterface::open(port.memory().try_clone().unwrap()).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 48];
        for round in 0..20u8 {
            let data: Vec<u8> = (0..40)
                .map(|i| round.wrapping_mul(40).wrapping_add(i))
                .collect();
            assert_eq!(port.rx().write(&data).unwrap(), 40);
            let n = other.rx().read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        let want: Vec<u8> = (0..800u32).map(|i| i as u8).collect();
        assert_eq!(got, want);
        assert_eq!(port.rx().write(&[0; 100]).unwrap(), 64, "only what fits");
        assert_eq!(port.rx().free().unwrap(), 0);
        assert_eq!(other.rx().discard(), 64);
        assert_eq!(port.rx().used().unwrap(), 0);
    }

    #[test]
    fn a_ring_reads_from_and_writes_to_a_descriptor_across_its_wrap() {
        use std::os::fd::AsFd;
        let port = SerialPortInterface::create(6, 6).unwrap();
        let (r, w) = rustix::pipe::pipe().unwrap();
        let mut got = Vec::new();
        for round in 0..5u8 {
            // 40 bytes a round through a 64-byte ring: every other round
            // wraps. A one-byte head comes first, as a pty's status does.
            let data: Vec<u8> = (0..41)
                .map(|i| round.wrapping_mul(41).wrapping_add(i))
                .collect();
            rustix::io::write(&w, &data).unwrap();
            let mut head = [0u8; 1];
            let n = port.tx().read_from(r.as_fd(), &mut head, 64).unwrap();
            assert_eq!((n, head[0]), (41, data[0]));
            assert_eq!(port.tx().used().unwrap(), 40);
            let (r2, w2) = rustix::pipe::pipe().unwrap();
            assert_eq!(port.tx().write_to(w2.as_fd()).unwrap(), 40);
            let mut out = [0u8; 64];
            let k = rustix::io::read(&r2, &mut out).unwrap();
            got.extend_from_slice(&out[..k]);
            assert_eq!(&out[..k], &data[1..]);
        }
        assert_eq!(got.len(), 200);
        // `max` bounds what lands in the ring; the rest stays in the pipe.
        rustix::io::write(&w, &[7; 30]).unwrap();
        let mut head = [0u8; 1];
        assert_eq!(port.tx().read_from(r.as_fd(), &mut head, 9).unwrap(), 10);
        assert_eq!(port.tx().used().unwrap(), 9);
        // Indices a peer scribbled on: an error, no access outside.
        port.memory().u32_at(TX_PI).store(1000, Ordering::Relaxed);
        assert!(port.tx().read_from(r.as_fd(), &mut head, 64).is_err());
        assert!(port.tx().write_to(w.as_fd()).is_err());
    }

    #[test]
    fn bad_geometry_and_indices_are_refused() {
        let port = SerialPortInterface::create(6, 6).unwrap();
        let shm = port.memory();
        // The TX ring laid over the header.
        shm.u32_at(GEOMETRY + 4).store(0, Ordering::Relaxed);
        assert_eq!(Geometry::read(shm).unwrap_err(), IOReturn::BAD_ARGUMENT);
        // Rings that overlap, and a size past the region.
        Geometry {
            rx_offset: 4096,
            tx_offset: 4100,
            rx_log2: 6,
            tx_log2: 6,
        }
        .write(shm);
        assert!(Geometry::read(shm).is_err());
        Geometry {
            rx_offset: 4096,
            tx_offset: 4160,
            rx_log2: 6,
            tx_log2: 20,
        }
        .write(shm);
        assert!(Geometry::read(shm).is_err());
        // A producer index that claims more than the ring holds.
        shm.u32_at(RX_PI).store(1000, Ordering::Relaxed);
        assert_eq!(port.rx().used().unwrap_err(), CORRUPT);
        assert_eq!(port.rx().read(&mut [0; 8]).unwrap_err(), CORRUPT);
    }

    proptest! {
        /// Whatever a peer writes into the header, the other side gets a
        /// result or an error, never a panic or a read outside the region.
        #[test]
        fn any_header_is_checked(words in proptest::collection::vec(any::<u32>(), 8)) {
            let port = SerialPortInterface::create(6, 7).unwrap();
            let shm = port.memory();
            for (i, w) in words.iter().take(4).enumerate() {
                shm.u32_at(i * 64).store(*w, Ordering::Relaxed);
            }
            let mut buf = [0u8; 256];
            let _ = port.rx().read(&mut buf);
            let _ = port.tx().write(&buf);
            let _ = port.tx().peek(&mut buf);
            for (i, w) in words.iter().skip(4).enumerate() {
                shm.u32_at(GEOMETRY + 4 * i).store(*w, Ordering::Relaxed);
            }
            if let Ok(g) = Geometry::read(shm) {
                prop_assert!(g.region_len() <= shm.len());
            }
        }
    }
}

//! A virtual UART: the `[uart]` table of a device file, plugged into the
//! serial family as an `IOUARTDevice`.
//!
//! ```toml
//! name = "VirtualUART"
//! [uart]
//! pace = "line"     # "line": a byte takes its time at the baud rate
//!                   # (start, data, parity and stop bits); "none": as
//!                   # fast as memory
//! fifo = 4096       # bytes each FIFO holds
//! loopback = true   # transmitted bytes come back, DTR drives DSR and
//!                   # DCD, RTS drives CTS (a loopback plug)
//!
//! [[uart.modem]]    # scripted changes of the modem status inputs
//! after_ms = 500    # since the device was plugged
//! cts = true        # cts, dsr, ri, dcd: each optional
//! ```
//!
//! Nothing is lost inside it: a transmit takes only what the transmit FIFO
//! has room for, and with loopback a byte leaves the transmit FIFO only
//! when the receive FIFO has room for it (the loopback's own RTS/CTS).
//! Interrupt 0 says received bytes wait, 1 that a transmit that did not
//! fit now would, 2 that the modem status changed.

use driverkit_wire::sync::{Locked, Waited};
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use driverkit_wire::serial::Parity;
use driverkit_wire::shm::SharedMemory;
use driverkit_wire::{IOResult, IOReturn};
use serde::Deserialize;

use super::interrupts::Subscribers;
use crate::families::serial::UartDevice;

/// The `[uart]` table of a device file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UartSpec {
    #[serde(default)]
    pub pace: Pace,
    #[serde(default = "default_fifo")]
    pub fifo: usize,
    #[serde(default = "yes")]
    pub loopback: bool,
    #[serde(default)]
    pub modem: Vec<ModemStep>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pace {
    #[default]
    Line,
    None,
}

/// One scripted change of the modem status inputs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModemStep {
    pub after_ms: u64,
    pub cts: Option<bool>,
    pub dsr: Option<bool>,
    pub ri: Option<bool>,
    pub dcd: Option<bool>,
}

fn default_fifo() -> usize {
    4096
}

fn yes() -> bool {
    true
}

impl UartSpec {
    pub fn validate(&self) -> Result<(), super::description::BadDescription> {
        if !(16..=1 << 20).contains(&self.fifo) {
            return Err(super::description::BadDescription::key(
                "uart.fifo",
                format!("expected 16 to 1048576 bytes, found {}", self.fifo),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Modem {
    cts: bool,
    dsr: bool,
    ri: bool,
    dcd: bool,
}

struct State {
    tx: VecDeque<u8>,
    rx: VecDeque<u8>,
    /// Bits a byte takes on the wire, and the rate.
    bits_per_byte: u32,
    baud: u32,
    modem: Modem,
    /// A transmit did not fit: interrupt 1 when there is room.
    tx_waiting: bool,
    unplugged: bool,
}

/// A virtual UART while it is plugged.
pub struct VirtualUart {
    spec: UartSpec,
    state: Mutex<State>,
    /// The wire thread waits here for bytes, room or the end.
    work: Condvar,
    interrupts: [Subscribers; 3],
}

const RX: usize = 0;
const TX_ROOM: usize = 1;
const MODEM: usize = 2;

impl VirtualUart {
    /// Starts the UART's wire (pacing and the modem script) on its thread.
    pub fn start(name: &str, spec: &UartSpec) -> Arc<VirtualUart> {
        let uart = Arc::new(VirtualUart {
            spec: spec.clone(),
            state: Mutex::new(State {
                tx: VecDeque::new(),
                rx: VecDeque::new(),
                bits_per_byte: 10,
                baud: 9600,
                modem: Modem::default(),
                tx_waiting: false,
                unplugged: false,
            }),
            work: Condvar::new(),
            interrupts: Default::default(),
        });
        let u = uart.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("uart:{name}"))
            .stack_size(128 * 1024)
            .spawn(move || u.wire());
        if let Err(e) = spawned {
            tracing::error!("the virtual UART {name} cannot run: {e}");
        }
        uart
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.locked()
    }

    /// Stops the wire thread (the device left).
    pub fn unplug(&self) {
        self.lock().unplugged = true;
        self.work.notify_all();
    }

    /// Moves bytes from the transmit FIFO onto the wire at the line rate,
    /// and plays the modem script.
    fn wire(&self) {
        let plugged = Instant::now();
        let mut script: VecDeque<ModemStep> = self.spec.modem.iter().cloned().collect();
        let mut st = self.lock();
        let mut last = Instant::now();
        let mut credit = 0.0f64;
        loop {
            if st.unplugged {
                return;
            }
            while script
                .front()
                .is_some_and(|s| plugged.elapsed() >= Duration::from_millis(s.after_ms))
            {
                if let Some(step) = script.pop_front() {
                    let m = &mut st.modem;
                    m.cts = step.cts.unwrap_or(m.cts);
                    m.dsr = step.dsr.unwrap_or(m.dsr);
                    m.ri = step.ri.unwrap_or(m.ri);
                    m.dcd = step.dcd.unwrap_or(m.dcd);
                    self.interrupts[MODEM].raise();
                }
            }
            let now = Instant::now();
            let rate = f64::from(st.baud) / f64::from(st.bits_per_byte);
            credit = (credit + now.duration_since(last).as_secs_f64() * rate).min(rate.max(64.0));
            last = now;
            let movable = st.tx.len().min(self.rx_room(&st));
            let n = movable.min(credit as usize);
            if n > 0 {
                credit -= n as f64;
                self.send(&mut st, n);
                if st.tx.is_empty() {
                    // The transmitter emptied: its driver learns what was
                    // sent (a 16550's THRE interrupt).
                    self.interrupts[TX_ROOM].raise();
                }
            }
            let next_step = script
                .front()
                .map(|s| Duration::from_millis(s.after_ms).saturating_sub(plugged.elapsed()));
            let wait = if movable > n {
                // More to send once the line has had time for it.
                Duration::from_millis(1)
            } else {
                credit = 0.0;
                next_step.unwrap_or(Duration::from_secs(3600))
            };
            st = self
                .work
                .waited_timeout(st, wait.min(next_step.unwrap_or(wait)))
                .0;
            if movable == 0 {
                last = Instant::now();
            }
        }
    }

    /// Room for bytes coming off the wire: without loopback the wire goes
    /// nowhere and never fills.
    fn rx_room(&self, st: &State) -> usize {
        if self.spec.loopback {
            self.spec.fifo - st.rx.len()
        } else {
            usize::MAX
        }
    }

    /// `n` bytes leave the transmit FIFO onto the wire.
    fn send(&self, st: &mut State, n: usize) {
        if self.spec.loopback {
            // Slice by slice: a byte at a time is what a model must not
            // cost at memory speed.
            let State { tx, rx, .. } = &mut *st;
            let (a, b) = tx.as_slices();
            let first = n.min(a.len());
            rx.extend(&a[..first]);
            rx.extend(&b[..n - first]);
            self.interrupts[RX].set_line(true);
            self.interrupts[RX].raise();
        }
        st.tx.drain(..n);
        if st.tx_waiting {
            st.tx_waiting = false;
            self.interrupts[TX_ROOM].raise();
        }
    }
}

impl UartDevice for VirtualUart {
    fn transmit(&self, data: &[u8]) -> usize {
        let mut st = self.lock();
        let n = match self.spec.pace {
            // Straight through the FIFO onto the wire.
            Pace::None => {
                let n = data.len().min(self.rx_room(&st));
                st.tx.extend(&data[..n]);
                if n > 0 {
                    self.send(&mut st, n);
                }
                n
            }
            Pace::Line => {
                let n = data.len().min(self.spec.fifo - st.tx.len());
                st.tx.extend(&data[..n]);
                self.work.notify_all();
                n
            }
        };
        if n < data.len() {
            st.tx_waiting = true;
        }
        n
    }

    fn receive(&self, max: usize) -> Vec<u8> {
        let mut st = self.lock();
        let n = max.min(st.rx.len());
        let mut data = Vec::with_capacity(n);
        let (a, b) = st.rx.as_slices();
        let first = n.min(a.len());
        data.extend_from_slice(&a[..first]);
        data.extend_from_slice(&b[..n - first]);
        st.rx.drain(..n);
        if st.rx.is_empty() {
            // Received data is a level: read, it is no interrupt.
            self.interrupts[RX].set_line(false);
        }
        if n > 0 {
            match self.spec.pace {
                // Room on the far side of the loopback: a transmit that
                // did not fit would now.
                Pace::None => {
                    if st.tx_waiting {
                        st.tx_waiting = false;
                        self.interrupts[TX_ROOM].raise();
                    }
                }
                // The wire may move what waited for room.
                Pace::Line => self.work.notify_all(),
            }
        }
        data
    }

    fn set_line(&self, baud: u32, data_bits: u8, half_stop_bits: u8, parity: Parity) {
        let mut st = self.lock();
        st.baud = baud.max(1);
        let parity_bit = u32::from(parity != Parity::None);
        st.bits_per_byte =
            1 + u32::from(data_bits) + parity_bit + u32::from(half_stop_bits).div_ceil(2);
        tracing::info!(
            "uart     line {baud} baud, {data_bits} data bits, parity {}, {} stop bits",
            parity.name(),
            f64::from(half_stop_bits) / 2.0
        );
    }

    fn set_modem_control(&self, dtr: bool, rts: bool) {
        let word = |on: bool| if on { "on" } else { "off" };
        tracing::info!("uart     DTR {}, RTS {}", word(dtr), word(rts));
        if !self.spec.loopback {
            return;
        }
        let mut st = self.lock();
        st.modem.dsr = dtr;
        st.modem.dcd = dtr;
        st.modem.cts = rts;
        self.interrupts[MODEM].raise();
    }

    fn modem_status(&self) -> (bool, bool, bool, bool) {
        let m = self.lock().modem;
        (m.cts, m.dsr, m.ri, m.dcd)
    }

    /// A break is logged; with the loopback it is not received (a receive
    /// error the model does not make).
    fn transmit_pending(&self) -> usize {
        self.lock().tx.len()
    }

    fn set_break(&self, on: bool) {
        tracing::info!("uart     break {}", if on { "on" } else { "off" });
    }

    fn reset_fifo(&self, tx: bool, rx: bool) {
        let mut st = self.lock();
        if tx {
            st.tx.clear();
        }
        if rx {
            st.rx.clear();
            self.interrupts[RX].set_line(false);
        }
        if st.tx_waiting {
            st.tx_waiting = false;
            self.interrupts[TX_ROOM].raise();
        }
    }

    /// Interrupt 0 (received data) is level-triggered: a driver that
    /// subscribes while bytes wait takes it at once, and one that read
    /// them before it took the interrupt is not called for nothing.
    fn subscribe_interrupt(&self, index: u32, region: &Arc<SharedMemory>) -> IOResult<()> {
        let line = self
            .interrupts
            .get(index as usize)
            .ok_or(IOReturn::NOT_FOUND)?;
        line.add(region)?;
        if index as usize == RX {
            let waiting = !self.lock().rx.is_empty();
            driverkit_wire::interrupt::set_line(region, waiting);
            if waiting {
                driverkit_wire::interrupt::raise(region);
            }
        }
        Ok(())
    }

    fn unplugged(&self) {
        self.unplug();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uart(pace: Pace, fifo: usize) -> Arc<VirtualUart> {
        VirtualUart::start(
            "t",
            &UartSpec {
                pace,
                fifo,
                loopback: true,
                modem: Vec::new(),
            },
        )
    }

    #[test]
    fn loopback_holds_back_instead_of_losing() {
        let u = uart(Pace::None, 16);
        assert_eq!(u.transmit(&[1; 10]), 10);
        assert_eq!(u.transmit(&[2; 10]), 6, "only what the far FIFO holds");
        assert_eq!(u.receive(4), vec![1; 4]);
        assert_eq!(u.transmit(&[3; 10]), 4);
        let mut all = u.receive(100);
        all.extend(u.receive(100));
        assert_eq!(all.len(), 16);
        assert_eq!(&all[..6], &[1; 6]);
        assert_eq!(&all[6..12], &[2; 6]);
        assert_eq!(&all[12..], &[3; 4]);
        u.unplug();
    }

    #[test]
    fn a_paced_line_delivers_everything_in_order() {
        let u = uart(Pace::Line, 64);
        u.set_line(1_000_000, 8, 2, Parity::None);
        let data: Vec<u8> = (0..=255).collect();
        let mut sent = 0;
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.len() < data.len() && Instant::now() < deadline {
            sent += u.transmit(&data[sent..]);
            got.extend(u.receive(1000));
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(got, data);
        u.unplug();
    }

    #[test]
    fn received_data_is_a_level_the_driver_may_read_before_the_interrupt() {
        use driverkit_wire::interrupt;
        let u = uart(Pace::None, 64);
        // Bytes wait before the driver subscribes: it takes the interrupt
        // at once.
        assert_eq!(u.transmit(b"early"), 5);
        let region = Arc::new(SharedMemory::create("t", interrupt::LEN).unwrap());
        u.subscribe_interrupt(RX as u32, &region).unwrap();
        assert_eq!(interrupt::count(&region), 1);
        assert!(!interrupt::let_go(&region));
        // Read before the interrupt is taken: the line is let go.
        assert_eq!(u.receive(100), b"early");
        assert!(interrupt::let_go(&region));
        // New bytes assert it again, with a new interrupt; a partial read
        // keeps it asserted.
        assert_eq!(u.transmit(b"again"), 5);
        assert_eq!(interrupt::count(&region), 2);
        assert!(!interrupt::let_go(&region));
        assert_eq!(u.receive(2), b"ag");
        assert!(!interrupt::let_go(&region));
        u.reset_fifo(false, true);
        assert!(interrupt::let_go(&region));
        u.unplug();
    }

    #[test]
    fn dtr_and_rts_come_back_as_dsr_and_cts() {
        let u = uart(Pace::None, 16);
        u.set_modem_control(true, false);
        assert_eq!(u.modem_status(), (false, true, false, true));
        u.set_modem_control(false, true);
        assert_eq!(u.modem_status(), (true, false, false, false));
        u.unplug();
    }
}

//! The system's HID event stream: what event services dispatch, for
//! `driverkit events`, the uinput backend and benchmarks; and typing text
//! as keyboard reports.

use std::sync::{mpsc, Mutex};
use std::time::Instant;

use driverkit_core::EntryId;
use driverkit_wire::interfaces::hid_event;
use driverkit_wire::shm::SPIN;

/// One event of the system's HID event stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HidEvent {
    /// `hid_event::KEYBOARD`, `RELATIVE_POINTER` or `SCROLL`.
    pub kind: u8,
    pub usage_page: u32,
    pub usage: u32,
    /// Key value; dx, dy, buttons; scroll dx, dy, dz.
    pub values: (i64, i64, i64),
    /// Nanoseconds on the monotonic clock.
    pub timestamp: u64,
    /// The event service that dispatched it.
    pub service: EntryId,
}

impl HidEvent {
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            hid_event::KEYBOARD => "keyboard",
            hid_event::RELATIVE_POINTER => "pointer",
            hid_event::SCROLL => "scroll",
            _ => "other",
        }
    }
}

/// The subscribers of the event stream.
#[derive(Default)]
pub struct HidEvents {
    subscribers: Mutex<Vec<mpsc::Sender<HidEvent>>>,
}

impl HidEvents {
    pub fn subscribe(&self) -> mpsc::Receiver<HidEvent> {
        let (tx, rx) = mpsc::channel();
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tx);
        rx
    }

    pub(crate) fn publish(&self, event: HidEvent) {
        let mut subs = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        if !subs.is_empty() {
            subs.retain(|s| s.send(event).is_ok());
        }
    }
}

/// The next event of a subscription, waited for the way every waiter of
/// the system waits: looking (and yielding the core) for `SPIN` first, as
/// events come in bursts and a parked thread takes tens of microseconds to
/// wake here, then parked until `deadline`. `None` on the deadline or when
/// the daemon is gone.
pub fn next_event(
    events: &mpsc::Receiver<HidEvent>,
    deadline: Option<Instant>,
) -> Option<HidEvent> {
    let spin_until = Instant::now() + SPIN;
    loop {
        match events.try_recv() {
            Ok(event) => return Some(event),
            Err(mpsc::TryRecvError::Disconnected) => return None,
            Err(mpsc::TryRecvError::Empty) if Instant::now() < spin_until => {
                std::thread::yield_now()
            }
            Err(mpsc::TryRecvError::Empty) => break,
        }
    }
    match deadline {
        Some(d) => events
            .recv_timeout(d.saturating_duration_since(Instant::now()))
            .ok(),
        None => events.recv().ok(),
    }
}

/// Monotonic nanoseconds, the clock of report and event timestamps (the
/// same `CLOCK_MONOTONIC` a dext reads).
pub fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// The reports that type `text` on a US keyboard: a press and a release
/// per character, Shift held for capitals and shifted symbols.
pub fn keyboard_reports(text: &str) -> Result<Vec<[u8; 8]>, String> {
    let mut out = Vec::new();
    for (i, c) in text.chars().enumerate() {
        let (shift, usage) = ascii_usage(c)
            .ok_or_else(|| format!("character {i} ({c:?}) has no key on a US keyboard"))?;
        out.push([if shift { 0x02 } else { 0 }, 0, usage, 0, 0, 0, 0, 0]);
        out.push([0; 8]);
    }
    Ok(out)
}

/// `(shift, usage)` of a character on a US keyboard (HID usage page 7).
pub fn ascii_usage(c: char) -> Option<(bool, u8)> {
    const SHIFTED_DIGITS: &str = ")!@#$%^&*(";
    const PUNCT: &[(char, char, u8)] = &[
        ('-', '_', 0x2d),
        ('=', '+', 0x2e),
        ('[', '{', 0x2f),
        (']', '}', 0x30),
        ('\\', '|', 0x31),
        (';', ':', 0x33),
        ('\'', '"', 0x34),
        ('`', '~', 0x35),
        (',', '<', 0x36),
        ('.', '>', 0x37),
        ('/', '?', 0x38),
    ];
    Some(match c {
        'a'..='z' => (false, c as u8 - b'a' + 0x04),
        'A'..='Z' => (true, c as u8 - b'A' + 0x04),
        '1'..='9' => (false, c as u8 - b'1' + 0x1e),
        '0' => (false, 0x27),
        '\n' => (false, 0x28),
        '\t' => (false, 0x2b),
        ' ' => (false, 0x2c),
        _ => {
            if let Some(i) = SHIFTED_DIGITS.find(c) {
                return Some((true, if i == 0 { 0x27 } else { 0x1e + i as u8 - 1 }));
            }
            let (_, shifted, usage) = PUNCT.iter().find(|(p, s, _)| *p == c || *s == c)?;
            (c == *shifted, *usage)
        }
    })
}

/// The character a keyboard usage types, for printing events.
pub fn usage_char(usage: u32, shift: bool) -> Option<char> {
    (32u8..127)
        .map(char::from)
        .chain(['\n', '\t'])
        .find(|c| ascii_usage(*c) == Some((shift, usage as u8)) && usage < 256)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typing_round_trips_through_usages() {
        let text = "Hello, World! 42 ~_+{}|:\"<>?";
        let reports = keyboard_reports(text).unwrap();
        assert_eq!(reports.len(), text.chars().count() * 2);
        let typed: String = reports
            .chunks(2)
            .map(|pair| usage_char(pair[0][2].into(), pair[0][0] & 0x02 != 0).unwrap())
            .collect();
        assert_eq!(typed, text);
        assert!(keyboard_reports("é").unwrap_err().contains("character 0"));
    }
}

//! A recorded USB device, played back (`driverkit device plug FILE.pcapng`):
//! the device a recording (`driverkit device record`, or a capture of
//! Linux's usbmon) shows, as a [`UsbTransport`] the same driver binary
//! drives.
//!
//! The rules:
//! - Descriptors are the ones the recording fetched (device, configurations,
//!   strings, HID report descriptors), answered whenever asked. So are the
//!   standard requests that change state (configuration, interface,
//!   feature) and HID's SET_IDLE and SET_PROTOCOL: they succeed, and
//!   GET_CONFIGURATION says what was set.
//! - Everything else (vendor and class control requests, bulk and
//!   interrupt transfers) is answered in recorded order, per endpoint. An
//!   OUT transfer or control request must carry the recorded bytes; an IN
//!   one gets the recorded data and status, at the recorded pace after the
//!   device was plugged (or at once with `--fast`).
//! - A request the recording does not have next, or OUT bytes that differ,
//!   gets a stall, and the log names the frame, the endpoint, and expected
//!   against got. An IN endpoint whose recording has run out waits, as a
//!   device with nothing to say does (NAK), until the driver aborts it or
//!   its timeout ends it. Nothing hangs the daemon, nothing panics.
//! - A capture of a whole bus holds several devices: the one that is not a
//!   hub (the one with the most traffic, if several), or the one `--device
//!   BUS.DEVNUM` names, is played back, with its packets at address 0
//!   before the SET_ADDRESS that numbered it. Transfers the host ended
//!   (unlinked, timed out, or flushed as a kernel driver let go of the
//!   interface to ours) are not the device's and are left out.
//!   Isochronous transfers are out of scope, as in DriverKit.
//! - The device starts in the configuration the recording left it in (the
//!   last SET_CONFIGURATION), as Linux hands over a device it configured:
//!   a device with several configurations gets the one its drivers used.

use driverkit_wire::sync::Locked;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use driverkit_usb::recording::Frame;
use driverkit_usb::repr::request;
use driverkit_usb::usbmon::{self, Event, PacketRepr};
use driverkit_usb::Setup;
use driverkit_wire::{IOResult, IOReturn};

use crate::families::usb::{Completed, Transfer, UsbTransport};

/// One recorded exchange on an endpoint: what the driver is to send, and
/// what the device answered.
#[derive(Debug, Clone)]
struct Expected {
    /// The completion's frame number (Wireshark's).
    frame: u64,
    setup: Option<[u8; 8]>,
    out: Vec<u8>,
    data: Vec<u8>,
    status: i32,
    /// Seconds after the recording's first packet.
    at: f64,
}

/// What changes as the driver works: what comes next, the aborts (an abort
/// and a waiting transfer meet under the same lock, so no wake-up is
/// lost), and the configuration set.
#[derive(Default)]
struct State {
    /// Per endpoint address (0 for control), what comes next.
    queues: HashMap<u8, VecDeque<Expected>>,
    aborts: HashMap<u8, u64>,
    configuration: u8,
}

/// The recording, as the device it shows.
pub struct Replay {
    name: String,
    /// Descriptors by (wValue, wIndex) of the GET_DESCRIPTOR that fetched
    /// them; HID report descriptors with request type 0x81.
    descriptors: HashMap<(u8, u16, u16), Vec<u8>>,
    device: Vec<u8>,
    /// Per endpoint address (0 for control), what comes next.
    /// What changes as the driver works, under one lock.
    state: Mutex<State>,
    changed: Condvar,
    closed: AtomicBool,
    fast: bool,
    plugged: Instant,
    /// Requests that diverged from the recording (each stalled, logged).
    pub divergences: AtomicU64,
}

fn is_get_descriptor(setup: &[u8; 8]) -> bool {
    setup[1] == request::GET_DESCRIPTOR && (setup[0] == 0x80 || setup[0] == 0x81)
}

/// Requests answered from state, whenever asked: standard ones (type bits
/// 0) and HID's SET_IDLE (0x0a) and SET_PROTOCOL (0x0b).
fn answered_from_state(setup: &[u8; 8]) -> bool {
    let standard = setup[0] & 0x60 == 0;
    let hid_state = setup[0] == 0x21 && (setup[1] == 0x0a || setup[1] == 0x0b);
    standard || hid_state
}

/// Why a recording cannot be replayed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// The file does not read as a pcapng or pcap of usbmon packets.
    #[error("{0}")]
    Unreadable(String),
    #[error("the recording holds no USB device's packets (only hubs, or nothing)")]
    NoDevice,
    #[error("the recording holds no packet of device {bus}.{device:03} (`driverkit device plug FILE --device BUS.DEVNUM` picks one)")]
    NoSuchDevice { bus: u16, device: u8 },
    #[error("the recording never fetched device {bus}.{device:03}'s device descriptor (GET_DESCRIPTOR 0x0100): record from the daemon (`driverkit device record`, which begins with it) or start the capture before the device is plugged")]
    NoDeviceDescriptor { bus: u16, device: u8 },
}

impl Replay {
    /// The device a recording's frames show. `name` names it in the
    /// registry's log lines.
    pub fn new(
        name: &str,
        frames: &[Frame],
        fast: bool,
        only: Option<(u16, u8)>,
    ) -> Result<Replay, ReplayError> {
        let (bus, device) = match only {
            Some(d) => d,
            None => pick_device(frames)?,
        };
        // A capture that began before the device was plugged shows it at
        // address 0 first, until the SET_ADDRESS that gave it its number.
        let addressed = frames
            .iter()
            .position(|f| {
                f.packet.bus == bus
                    && f.packet.device == 0
                    && f.packet.setup.is_some_and(|s| {
                        s[0] == 0
                            && s[1] == 5
                            && u16::from_le_bytes([s[2], s[3]]) == u16::from(device)
                    })
            })
            .unwrap_or(0);
        let ours: Vec<&Frame> = frames
            .iter()
            .enumerate()
            .filter(|(i, f)| {
                f.packet.bus == bus
                    && (f.packet.device == device || (f.packet.device == 0 && *i <= addressed + 1))
            })
            .map(|(_, f)| f)
            .collect();
        if !ours.iter().any(|f| f.packet.device == device) {
            return Err(ReplayError::NoSuchDevice { bus, device });
        }
        let first = ours.first().map_or(0.0, |f| seconds(&f.packet));
        let mut submitted: HashMap<u64, &Frame> = HashMap::new();
        let mut descriptors = HashMap::new();
        let mut queues: HashMap<u8, VecDeque<Expected>> = HashMap::new();
        // The configuration the recorded device was left in: the replay
        // starts in it, as the recorded host had it (for a device with
        // several, the one its drivers used).
        let mut configured = 0;
        for f in &ours {
            let p = &f.packet;
            if p.transfer == usbmon::Transfer::Isochronous {
                continue;
            }
            match p.event {
                Event::Submit => {
                    submitted.insert(p.id, f);
                }
                Event::Error => {
                    submitted.remove(&p.id);
                }
                Event::Complete => {
                    let Some(s) = submitted.remove(&p.id) else {
                        continue; // its submission came before the recording
                    };
                    // Ended by the host, not the device: unlinked (a
                    // driver letting go of its transfers, a timeout) or
                    // flushed as its interface was released (ESHUTDOWN:
                    // the kernel's driver unbound as ours took over).
                    if [libc::ENOENT, libc::ECONNRESET, libc::ESHUTDOWN].contains(&-p.status) {
                        continue;
                    }
                    let setup = s.packet.setup;
                    if let Some(setup) = setup {
                        if is_get_descriptor(&setup) && p.status == 0 {
                            let value = u16::from_le_bytes([setup[2], setup[3]]);
                            let index = u16::from_le_bytes([setup[4], setup[5]]);
                            let d = descriptors
                                .entry((setup[0], value, index))
                                .or_insert_with(Vec::new);
                            // The longest answer (a host reads 9 bytes of
                            // a configuration first, then all of it).
                            if f.data.len() > d.len() {
                                *d = f.data.clone();
                            }
                            continue;
                        }
                        if setup[..2] == [0x00, request::SET_CONFIGURATION] && p.status == 0 {
                            configured = setup[2];
                        }
                        if answered_from_state(&setup) {
                            continue;
                        }
                    }
                    let address = if p.transfer == usbmon::Transfer::Control {
                        0
                    } else {
                        p.endpoint
                    };
                    queues.entry(address).or_default().push_back(Expected {
                        frame: f.number,
                        setup,
                        out: if p.endpoint & 0x80 == 0 || setup.is_some_and(|s| s[0] & 0x80 == 0) {
                            s.data.clone()
                        } else {
                            Vec::new()
                        },
                        data: if p.endpoint & 0x80 != 0 {
                            f.data.clone()
                        } else {
                            Vec::new()
                        },
                        status: p.status,
                        at: seconds(p) - first,
                    });
                }
            }
        }
        let device_descriptor = descriptors
            .get(&(0x80, 0x0100, 0))
            .cloned()
            .ok_or(ReplayError::NoDeviceDescriptor { bus, device })?;
        Ok(Replay {
            name: name.to_owned(),
            descriptors,
            device: device_descriptor,
            state: Mutex::new(State {
                queues,
                configuration: configured,
                ..State::default()
            }),
            changed: Condvar::new(),
            closed: AtomicBool::new(false),
            fast,
            plugged: Instant::now(),
            divergences: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.locked()
    }

    fn stall(&self, why: String) -> IOReturn {
        self.divergences.fetch_add(1, Ordering::Relaxed);
        tracing::warn!("replay   {}: {why}; stalled", self.name);
        IOReturn::USB_PIPE_STALLED
    }

    /// Waits until the recorded moment `at` (after the plug), unless fast.
    fn pace(&self, at: f64) {
        if self.fast {
            return;
        }
        let due = self.plugged + Duration::from_secs_f64(at.max(0.0));
        let now = Instant::now();
        if due > now {
            std::thread::sleep((due - now).min(Duration::from_secs(60)));
        }
    }

    fn answer(&self, e: &Expected) -> IOResult<Vec<u8>> {
        match e.status {
            0 => Ok(e.data.clone()),
            driverkit_usb::usbmon::STALL => Err(IOReturn::USB_PIPE_STALLED),
            s if s == -libc::ETIMEDOUT => Err(IOReturn::TIMEOUT),
            // Transfers the host ended (ENOENT, ECONNRESET, ESHUTDOWN)
            // were left out when the recording was read.
            _ => Err(IOReturn::IO_ERROR),
        }
    }
}

fn seconds(p: &PacketRepr) -> f64 {
    p.seconds as f64 + f64::from(p.microseconds) / 1e6
}

/// The device a recording is of: the only one, else the one that is not a
/// hub with the most packets.
fn pick_device(frames: &[Frame]) -> Result<(u16, u8), ReplayError> {
    let mut counts: HashMap<(u16, u8), usize> = HashMap::new();
    let mut hubs = Vec::new();
    for f in frames {
        let key = (f.packet.bus, f.packet.device);
        *counts.entry(key).or_default() += 1;
        // A device descriptor of class 9 is a hub's.
        let descriptor = f.packet.event == Event::Complete
            && f.data.len() >= 18
            && f.data[1] == driverkit_usb::kind::DEVICE;
        if descriptor && f.data[4] == 9 {
            hubs.push(key);
        }
    }
    counts
        .into_iter()
        .filter(|(k, _)| !hubs.contains(k) && k.1 != 0)
        .max_by_key(|(_, n)| *n)
        .map(|(k, _)| k)
        .ok_or(ReplayError::NoDevice)
}

impl UsbTransport for Replay {
    fn source(&self) -> String {
        format!("recording:{}", self.name)
    }

    /// The recording's device comes configured as it was recorded, as
    /// Linux hands over a device it configured.
    fn active_configuration(&self) -> Option<u8> {
        Some(self.lock().configuration).filter(|c| *c != 0)
    }

    fn location_id(&self) -> u32 {
        0x3000_0000
    }

    fn control(&self, setup: Setup, data: &[u8], _timeout: Option<Duration>) -> IOResult<Vec<u8>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(IOReturn::NO_DEVICE);
        }
        let bytes = setup.emit();
        let length = usize::from(setup.length);
        if is_get_descriptor(&bytes) {
            let key = (bytes[0], setup.value, setup.index);
            return match self.descriptors.get(&key) {
                Some(d) => Ok(d[..d.len().min(length)].to_vec()),
                None if key == (0x80, 0x0100, 0) => {
                    Ok(self.device[..self.device.len().min(length)].to_vec())
                }
                None => Err(self.stall(format!(
                    "GET_DESCRIPTOR {:#06x} (index {:#06x}) was never fetched in the recording",
                    setup.value, setup.index
                ))),
            };
        }
        if answered_from_state(&bytes) {
            use driverkit_usb::repr::request;
            return Ok(match (bytes[0], bytes[1]) {
                (0x00, request::SET_CONFIGURATION) => {
                    self.lock().configuration = setup.value as u8;
                    Vec::new()
                }
                (0x80, 8) => vec![self.lock().configuration],
                (0x80..=0x82, 0) => vec![0, 0][..length.min(2)].to_vec(),
                _ => Vec::new(),
            });
        }
        let next = self.lock().queues.get_mut(&0).and_then(VecDeque::pop_front);
        let Some(e) = next else {
            return Err(self.stall(format!(
                "endpoint 0: the recording has no more control requests; got {}",
                hex(&bytes)
            )));
        };
        if e.setup != Some(bytes) || (bytes[0] & 0x80 == 0 && e.out != data) {
            return Err(self.stall(format!(
                "frame {}: endpoint 0: expected {}, got {}",
                e.frame,
                request_text(&e.setup.unwrap_or_default(), &e.out),
                request_text(&bytes, data)
            )));
        }
        self.pace(e.at);
        self.answer(&e).map(|mut d| {
            d.truncate(length);
            d
        })
    }

    fn transfer_queued(&self, t: Transfer<'_>, queued: &mut dyn FnMut()) -> IOResult<Completed> {
        let (address, data, length) = (t.address, t.data, t.length);
        queued();
        let deadline = t.timeout.map(|t| Instant::now() + t);
        let input = address & 0x80 != 0;
        let mut st = self.lock();
        let e = loop {
            if self.closed.load(Ordering::Acquire) {
                return Err(IOReturn::NO_DEVICE);
            }
            if st.aborts.get(&address).copied().unwrap_or(0) != t.submitted {
                return Err(IOReturn::ABORTED);
            }
            if let Some(e) = st.queues.get_mut(&address).and_then(VecDeque::pop_front) {
                break e;
            }
            if !input {
                drop(st);
                return Err(self.stall(format!(
                    "endpoint {address:#04x}: the recording has no more OUT transfers; got {}",
                    hex(data)
                )));
            }
            // Nothing more recorded: an IN endpoint with nothing to say.
            let wait = deadline
                .map(|d| d.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_secs(1))
                .min(Duration::from_secs(1));
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(IOReturn::TIMEOUT);
            }
            st = self
                .changed
                .wait_timeout(st, wait)
                .map(|(q, _)| q)
                .unwrap_or_else(|e| e.into_inner().0);
        };
        drop(st);
        if !input && e.out != data {
            return Err(self.stall(format!(
                "frame {}: endpoint {address:#04x}: expected {}, got {}",
                e.frame,
                hex(&e.out),
                hex(data)
            )));
        }
        self.pace(e.at);
        let answer = self.answer(&e)?;
        Ok(if input {
            let mut d = answer;
            d.truncate(length);
            Completed {
                actual: d.len(),
                data: d,
            }
        } else {
            Completed {
                data: Vec::new(),
                actual: data.len(),
            }
        })
    }

    fn abort_generation(&self, address: u8) -> u64 {
        self.lock().aborts.get(&address).copied().unwrap_or(0)
    }

    fn abort(&self, address: u8) {
        *self.lock().aborts.entry(address).or_default() += 1;
        self.changed.notify_all();
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.changed.notify_all();
    }
}

fn hex(b: &[u8]) -> String {
    if b.is_empty() {
        return "(no data)".to_owned();
    }
    driverkit_wire::hex::encode(b, " ")
}

/// A control request as the log shows it: its setup packet, and the
/// data it sent if any.
fn request_text(setup: &[u8], data: &[u8]) -> String {
    if data.is_empty() {
        format!("setup {}", hex(setup))
    } else {
        format!("setup {} with data {}", hex(setup), hex(data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use driverkit_usb::usbmon::PacketRepr;

    fn packet(
        id: u64,
        event: Event,
        transfer: usbmon::Transfer,
        endpoint: u8,
        setup: Option<[u8; 8]>,
    ) -> PacketRepr {
        PacketRepr {
            id,
            event,
            transfer,
            endpoint,
            device: 2,
            bus: 1,
            setup,
            seconds: 100,
            microseconds: 0,
            status: if event == Event::Submit {
                usbmon::IN_PROGRESS
            } else {
                0
            },
            urb_length: 0,
            captured: 0,
            interval: 0,
        }
    }

    fn frames() -> Vec<Frame> {
        let device = vec![
            18, 1, 0, 2, 0xff, 0, 0, 64, 0x09, 0x12, 3, 0, 0, 1, 0, 0, 0, 1,
        ];
        let get = [0x80, 6, 0, 1, 0, 0, 18, 0];
        let vendor_out = [0x40, 1, 2, 0, 0, 0, 2, 0];
        let f = |n: u64, p: PacketRepr, data: Vec<u8>| Frame {
            number: n,
            packet: p,
            data,
        };
        vec![
            f(
                1,
                packet(1, Event::Submit, usbmon::Transfer::Control, 0x80, Some(get)),
                vec![],
            ),
            f(
                2,
                packet(1, Event::Complete, usbmon::Transfer::Control, 0x80, None),
                device,
            ),
            f(
                3,
                packet(
                    2,
                    Event::Submit,
                    usbmon::Transfer::Control,
                    0x00,
                    Some(vendor_out),
                ),
                vec![7, 8],
            ),
            f(
                4,
                packet(2, Event::Complete, usbmon::Transfer::Control, 0x00, None),
                vec![],
            ),
            f(
                5,
                packet(3, Event::Submit, usbmon::Transfer::Bulk, 0x81, None),
                vec![],
            ),
            f(
                6,
                packet(3, Event::Complete, usbmon::Transfer::Bulk, 0x81, None),
                vec![1, 2, 3],
            ),
        ]
    }

    #[test]
    fn a_recording_answers_what_it_recorded_and_stalls_what_differs() {
        let r = Replay::new("test", &frames(), true, None).unwrap();
        let get = Setup::get_descriptor(1, 0, 0, 18);
        assert_eq!(
            r.control(get, &[], None).unwrap()[8],
            0x09,
            "its descriptor"
        );
        assert_eq!(
            r.control(get, &[], None).unwrap().len(),
            18,
            "asked again, answered again"
        );
        let vendor = Setup::parse([0x40, 1, 2, 0, 0, 0, 2, 0]);
        // Other bytes than recorded: a stall naming the frame.
        assert_eq!(
            r.control(vendor, &[9, 9], None),
            Err(IOReturn::USB_PIPE_STALLED)
        );
        assert_eq!(r.divergences.load(Ordering::Relaxed), 1);
        // The bulk IN comes as recorded, then the endpoint has nothing more.
        let got = r.transfer(0x81, &[], 64, None, 0).unwrap();
        assert_eq!(got.data, [1, 2, 3]);
        assert_eq!(
            r.transfer(0x81, &[], 64, Some(Duration::from_millis(50)), 0),
            Err(IOReturn::TIMEOUT),
            "an IN endpoint with nothing recorded waits, as a quiet device does"
        );
        // An OUT the recording does not have: stalled, never hung.
        assert_eq!(
            r.transfer(0x02, &[1], 0, None, 0),
            Err(IOReturn::USB_PIPE_STALLED)
        );
        // An abort ends a waiting IN transfer.
        r.abort(0x81);
        assert_eq!(r.transfer(0x81, &[], 64, None, 0), Err(IOReturn::ABORTED));
    }

    #[test]
    fn a_recording_without_its_device_descriptor_is_refused_with_what_to_do() {
        let mut f = frames();
        f.drain(0..2);
        let e = Replay::new("test", &f, true, None).err().unwrap();
        assert!(
            e.to_string()
                .contains("never fetched device 1.002's device descriptor"),
            "{e}"
        );
    }
}

#[cfg(test)]
mod capture_tests {
    use super::*;
    use driverkit_usb::usbmon::{self, PacketRepr};

    fn frame(
        n: u64,
        id: u64,
        device: u8,
        event: Event,
        setup: Option<[u8; 8]>,
        status: i32,
        data: Vec<u8>,
    ) -> Frame {
        Frame {
            number: n,
            packet: PacketRepr {
                id,
                event,
                transfer: if setup.is_some() || event == Event::Complete && id < 10 {
                    usbmon::Transfer::Control
                } else {
                    usbmon::Transfer::Interrupt
                },
                endpoint: if id < 10 { 0x80 } else { 0x81 },
                device,
                bus: 1,
                setup,
                seconds: 0,
                microseconds: 0,
                status,
                urb_length: data.len() as u32,
                captured: data.len() as u32,
                interval: 0,
            },
            data,
        }
    }

    /// A kernel's capture: the device at address 0, SET_ADDRESS 5, then
    /// its descriptors at 5, usbhid's report and its transfer unlinked
    /// when ours took over, and a hub's traffic besides.
    fn capture() -> Vec<Frame> {
        let descriptor = vec![18, 1, 0, 2, 0, 0, 0, 8, 0x09, 0x12, 1, 0, 0, 1, 0, 0, 0, 1];
        let hub = vec![18, 1, 0, 2, 9, 0, 0, 64, 0x6b, 0x1d, 2, 0, 0, 1, 0, 0, 0, 1];
        let get = Some([0x80, 6, 0, 1, 0, 0, 18, 0]);
        let ip = usbmon::IN_PROGRESS;
        vec![
            frame(1, 1, 1, Event::Submit, get, ip, vec![]),
            frame(2, 1, 1, Event::Complete, None, 0, hub),
            frame(3, 2, 0, Event::Submit, get, ip, vec![]),
            frame(4, 2, 0, Event::Complete, None, 0, descriptor[..8].to_vec()),
            frame(
                5,
                3,
                0,
                Event::Submit,
                Some([0, 5, 5, 0, 0, 0, 0, 0]),
                ip,
                vec![],
            ),
            frame(6, 3, 0, Event::Complete, None, 0, vec![]),
            frame(7, 4, 5, Event::Submit, get, ip, vec![]),
            frame(8, 4, 5, Event::Complete, None, 0, descriptor),
            frame(9, 10, 5, Event::Submit, None, ip, vec![]),
            frame(
                10,
                10,
                5,
                Event::Complete,
                None,
                0,
                vec![0, 0, 4, 0, 0, 0, 0, 0],
            ),
            frame(11, 11, 5, Event::Submit, None, ip, vec![]),
            frame(12, 11, 5, Event::Complete, None, -libc::ENOENT, vec![]),
            // Flushed as usbhid released the interface.
            frame(13, 13, 5, Event::Submit, None, ip, vec![]),
            frame(14, 13, 5, Event::Complete, None, -libc::ESHUTDOWN, vec![]),
            frame(
                15,
                14,
                5,
                Event::Submit,
                Some([0, 9, 2, 0, 0, 0, 0, 0]),
                ip,
                vec![],
            ),
            frame(16, 14, 5, Event::Complete, None, 0, vec![]),
            frame(17, 12, 5, Event::Submit, None, ip, vec![]),
            frame(
                18,
                12,
                5,
                Event::Complete,
                None,
                0,
                vec![0, 0, 5, 0, 0, 0, 0, 0],
            ),
        ]
    }

    #[test]
    fn a_bus_capture_plays_back_its_device_across_its_address_change() {
        let r = Replay::new("capture", &capture(), true, None).unwrap();
        let get = Setup::get_descriptor(1, 0, 0, 18);
        assert_eq!(
            r.control(get, &[], None).unwrap()[4],
            0,
            "the keyboard's, not the hub's"
        );
        // usbhid's report, then ours; the unlinked and the flushed
        // transfers are no reports.
        assert_eq!(r.transfer(0x81, &[], 8, None, 0).unwrap().data[2], 4);
        assert_eq!(r.transfer(0x81, &[], 8, None, 0).unwrap().data[2], 5);
        // It comes in the configuration the capture left it in.
        assert_eq!(r.active_configuration(), Some(2));
        // --device names one; a device the capture lacks is refused.
        assert!(Replay::new("capture", &capture(), true, Some((1, 5))).is_ok());
        let e = Replay::new("capture", &capture(), true, Some((1, 9)))
            .err()
            .unwrap();
        assert!(e.to_string().contains("no packet of device 1.009"), "{e}");
    }
}

//! Reading input reports: one value per usage, and the events a change of
//! values means.
//!
//! A descriptor's input fields become [`InputUsage`]s the way IOKit's
//! `IOHIDElement`s expand them: a variable field gives one usage per slot;
//! an array (a keyboard's six key slots) gives one usage per possible
//! value, which reads 1 while the array lists it and 0 otherwise. An
//! [`EventTranslator`] compares each report with the previous one and
//! yields keyboard, pointer and scroll events; the system's default event
//! service and the SDK's `IOUserHIDEventService` both use it.

use crate::descriptor::{ReportDescriptor, ReportType};

/// Usage pages the translator knows.
pub mod page {
    pub const GENERIC_DESKTOP: u16 = 0x01;
    pub const KEYBOARD: u16 = 0x07;
    pub const LED: u16 = 0x08;
    pub const BUTTON: u16 = 0x09;
    pub const CONSUMER: u16 = 0x0c;
}

/// Generic Desktop usages the translator knows.
pub mod usage {
    pub const X: u16 = 0x30;
    pub const Y: u16 = 0x31;
    pub const Z: u16 = 0x32;
    pub const WHEEL: u16 = 0x38;
}

/// The most members one array field is read as (a descriptor lists at
/// most 4096 usages per main item; this leaves room, and a bound).
const MAX_ARRAY_MEMBERS: usize = 1 << 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Location {
    /// One slot of a variable field.
    Slot { bit: u32, size: u32, signed: bool },
    /// One possible value of an array field of `count` slots.
    Member {
        bit: u32,
        size: u32,
        count: u32,
        index: i64,
    },
}

/// One usage of an input report and where its value is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputUsage {
    pub usage_page: u16,
    pub usage: u16,
    /// 0 when the descriptor uses no report IDs.
    pub report_id: u8,
    /// Motion since the last report (a mouse's X), rather than a state.
    pub relative: bool,
    pub logical_minimum: i32,
    pub logical_maximum: i32,
    location: Location,
}

impl ReportDescriptor {
    /// Every input usage, in report order. Usage 0 of an array ("no
    /// event") is left out.
    pub fn input_usages(&self) -> Vec<InputUsage> {
        let mut out = Vec::new();
        for e in &self.elements {
            if e.report_type != ReportType::Input || e.is_constant() || e.report_size == 0 {
                continue;
            }
            let size = e.report_size.min(32);
            if e.is_variable() {
                for slot in 0..e.report_count {
                    let Some(&u) = e.usages.get(slot as usize).or_else(|| e.usages.last()) else {
                        break;
                    };
                    out.push(InputUsage {
                        usage_page: (u >> 16) as u16,
                        usage: u as u16,
                        report_id: e.report_id,
                        relative: e.is_relative(),
                        logical_minimum: e.logical_minimum,
                        logical_maximum: e.logical_maximum,
                        location: Location::Slot {
                            bit: e.bit_offset + slot * e.report_size,
                            size,
                            signed: e.logical_minimum < 0,
                        },
                    });
                }
            } else {
                for (i, &u) in e.usages.iter().enumerate() {
                    if u as u16 == 0 {
                        continue;
                    }
                    out.push(InputUsage {
                        usage_page: (u >> 16) as u16,
                        usage: u as u16,
                        report_id: e.report_id,
                        relative: false,
                        logical_minimum: 0,
                        logical_maximum: 1,
                        location: Location::Member {
                            bit: e.bit_offset,
                            size,
                            count: e.report_count,
                            index: i64::from(e.logical_minimum) + i as i64,
                        },
                    });
                }
            }
        }
        out
    }
}

/// `size` bits at bit `offset` of `data`, little-endian. Bits past the end
/// read as zero: a short report is padded, as Linux's HID core does (some
/// devices send a shorter release report).
fn bits(data: &[u8], offset: u32, size: u32) -> Option<u32> {
    if size == 0 || size > 32 {
        return None;
    }
    let mut v: u64 = 0;
    let first = (offset / 8) as usize;
    let last = (offset + size).div_ceil(8) as usize;
    for (i, at) in (first..last).enumerate() {
        v |= u64::from(data.get(at).copied().unwrap_or(0)) << (8 * i);
    }
    Some(((v >> (offset % 8)) & ((1u64 << size) - 1)) as u32)
}

fn extend(raw: u32, size: u32, signed: bool) -> i64 {
    if signed && size < 32 && raw & (1 << (size - 1)) != 0 {
        i64::from(raw) - (1i64 << size)
    } else if signed && size == 32 {
        i64::from(raw as i32)
    } else {
        i64::from(raw)
    }
}

impl InputUsage {
    /// The usage's value in `report`, which starts with its report ID byte
    /// when `with_ids`. `None` when the report is another report's or
    /// empty.
    pub fn read(&self, report: &[u8], with_ids: bool) -> Option<i64> {
        let data = payload(report, with_ids, self.report_id)?;
        match self.location {
            Location::Slot { bit, size, signed } => {
                Some(extend(bits(data, bit, size)?, size, signed))
            }
            Location::Member {
                bit,
                size,
                count,
                index,
            } => {
                let mut present = false;
                for slot in 0..count {
                    present |= i64::from(bits(data, bit + slot * size, size)?) == index;
                }
                Some(i64::from(present))
            }
        }
    }
}

/// The report's bytes after its ID byte, if it is report `id`'s.
fn payload(report: &[u8], with_ids: bool, id: u8) -> Option<&[u8]> {
    let data = if with_ids {
        let (&first, rest) = report.split_first()?;
        if first != id {
            return None;
        }
        rest
    } else {
        report
    };
    (!data.is_empty()).then_some(data)
}

#[derive(Debug, Clone)]
enum Group {
    /// A variable field's slot: one usage.
    Slot(usize),
    /// An array field: its members by slot value minus `base`, and the
    /// slots of the last report that carried it.
    Array {
        report_id: u8,
        bit: u32,
        size: u32,
        count: u32,
        base: i64,
        members: Vec<Option<usize>>,
        slots: Vec<i64>,
    },
}

/// The values of a descriptor's input usages, kept current report by
/// report. An array costs its slots, not its members: a keyboard report
/// touches its six key slots, not all 101 keys.
#[derive(Debug, Clone)]
pub struct InputState {
    usages: Vec<InputUsage>,
    values: Vec<i64>,
    with_ids: bool,
    groups: Vec<Group>,
    scratch: Vec<usize>,
}

impl InputState {
    pub fn new(descriptor: &ReportDescriptor) -> InputState {
        let usages = descriptor.input_usages();
        let mut groups: Vec<Group> = Vec::new();
        for (i, u) in usages.iter().enumerate() {
            match u.location {
                Location::Slot { .. } => groups.push(Group::Slot(i)),
                Location::Member {
                    bit,
                    size,
                    count,
                    index,
                } => {
                    let same = matches!(groups.last(), Some(Group::Array { report_id, bit: b, .. })
                        if *report_id == u.report_id && *b == bit);
                    if !same {
                        groups.push(Group::Array {
                            report_id: u.report_id,
                            bit,
                            size,
                            count,
                            base: index,
                            members: Vec::new(),
                            slots: Vec::new(),
                        });
                    }
                    if let Some(Group::Array { base, members, .. }) = groups.last_mut() {
                        // Members come in increasing index order in a sane
                        // descriptor; a hostile one may put two fields at one
                        // place with indices below the first's, or far
                        // apart. Those members are left out rather than make
                        // the table wrap or grow without bound.
                        let at = index
                            .checked_sub(*base)
                            .and_then(|d| usize::try_from(d).ok())
                            .filter(|at| *at < MAX_ARRAY_MEMBERS);
                        if let Some(at) = at {
                            if members.len() <= at {
                                members.resize(at + 1, None);
                            }
                            members[at] = Some(i);
                        }
                    }
                }
            }
        }
        InputState {
            values: vec![0; usages.len()],
            usages,
            with_ids: !descriptor.report_ids.is_empty(),
            groups,
            scratch: Vec::new(),
        }
    }

    /// The usages, in report order; `value(i)` is usage `i`'s.
    pub fn usages(&self) -> &[InputUsage] {
        &self.usages
    }

    pub fn value(&self, i: usize) -> i64 {
        self.values.get(i).copied().unwrap_or(0)
    }

    pub fn with_ids(&self) -> bool {
        self.with_ids
    }

    /// Applies `report`, pushing (in report order) the index of every
    /// usage whose value changed, and of every relative usage it carried.
    pub fn apply(&mut self, report: &[u8], changed: &mut Vec<usize>) {
        for g in &mut self.groups {
            match g {
                Group::Slot(i) => {
                    let u = &self.usages[*i];
                    let Some(v) = u.read(report, self.with_ids) else {
                        continue;
                    };
                    if u.relative || self.values[*i] != v {
                        self.values[*i] = v;
                        changed.push(*i);
                    }
                }
                Group::Array {
                    report_id,
                    bit,
                    size,
                    count,
                    base,
                    members,
                    slots,
                } => {
                    let Some(data) = payload(report, self.with_ids, *report_id) else {
                        continue;
                    };
                    let mut now = Vec::with_capacity(*count as usize);
                    for slot in 0..*count {
                        if let Some(v) = bits(data, *bit + slot * *size, *size) {
                            now.push(i64::from(v));
                        }
                    }
                    let member = |v: &i64| {
                        usize::try_from(*v - *base)
                            .ok()
                            .and_then(|at| members.get(at).copied().flatten())
                    };
                    self.scratch.clear();
                    for v in slots.iter().filter(|v| !now.contains(v)) {
                        if let Some(i) = member(v) {
                            self.values[i] = 0;
                            self.scratch.push(i);
                        }
                    }
                    for v in now.iter().filter(|v| !slots.contains(v)) {
                        if let Some(i) = member(v) {
                            if self.values[i] != 1 {
                                self.values[i] = 1;
                                self.scratch.push(i);
                            }
                        }
                    }
                    self.scratch.sort_unstable();
                    self.scratch.dedup();
                    changed.extend_from_slice(&self.scratch);
                    *slots = now;
                }
            }
        }
    }
}

/// What an event service dispatches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A key or consumer control went down (value 1) or up (0).
    Keyboard {
        usage_page: u16,
        usage: u16,
        value: i64,
    },
    /// Relative motion and the state of the buttons (bit 0: button 1).
    RelativePointer { dx: i64, dy: i64, buttons: u32 },
    /// Wheel motion.
    Scroll { dx: i64, dy: i64, dz: i64 },
}

/// Turns reports into events: a keyboard event per key whose state
/// changed, a pointer event when there is motion or a button changed, a
/// scroll event when the wheel moved.
#[derive(Debug, Clone)]
pub struct EventTranslator {
    state: InputState,
    changed: Vec<usize>,
    buttons: u32,
}

impl EventTranslator {
    pub fn new(descriptor: &ReportDescriptor) -> EventTranslator {
        EventTranslator {
            state: InputState::new(descriptor),
            changed: Vec::new(),
            buttons: 0,
        }
    }

    /// The events `report` means, in report order (pointer and scroll
    /// events after the keys): `apply`, then `events`.
    pub fn translate(&mut self, report: &[u8], out: &mut Vec<Event>) {
        self.apply(report);
        self.events(out);
    }

    /// Takes `report`'s values; `state` and `changed` then describe it.
    pub fn apply(&mut self, report: &[u8]) {
        self.changed.clear();
        self.state.apply(report, &mut self.changed);
    }

    /// Every usage's value after the last report.
    pub fn state(&self) -> &InputState {
        &self.state
    }

    /// The usages the last report changed (and the relative ones it
    /// carried), in report order.
    pub fn changed(&self) -> &[usize] {
        &self.changed
    }

    /// The events the last applied report means.
    pub fn events(&mut self, out: &mut Vec<Event>) {
        let (mut dx, mut dy, mut wheel, mut pan) = (0, 0, 0, 0);
        let mut buttons = self.buttons;
        for &i in &self.changed {
            let (u, v) = (&self.state.usages[i], self.state.values[i]);
            if u.relative {
                match (u.usage_page, u.usage) {
                    (page::GENERIC_DESKTOP, usage::X) => dx += v,
                    (page::GENERIC_DESKTOP, usage::Y) => dy += v,
                    (page::GENERIC_DESKTOP, usage::WHEEL) => wheel += v,
                    (page::CONSUMER, 0x238) => pan += v,
                    _ => {}
                }
                continue;
            }
            match u.usage_page {
                page::KEYBOARD | page::CONSUMER => out.push(Event::Keyboard {
                    usage_page: u.usage_page,
                    usage: u.usage,
                    value: v,
                }),
                page::BUTTON if (1..=32).contains(&u.usage) => {
                    let bit = 1u32 << (u.usage - 1);
                    if v != 0 {
                        buttons |= bit;
                    } else {
                        buttons &= !bit;
                    }
                }
                _ => {}
            }
        }
        if dx != 0 || dy != 0 || buttons != self.buttons {
            self.buttons = buttons;
            out.push(Event::RelativePointer { dx, dy, buttons });
        }
        if wheel != 0 || pan != 0 {
            out.push(Event::Scroll {
                dx: pan,
                dy: wheel,
                dz: 0,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fields_at_one_place_with_falling_indices_are_left_out_not_a_wrap() {
        // Found by the hid_report_descriptor fuzz target: array members whose
        // index falls below the first field's at the same bit made the member
        // table's position wrap (and, in release, grow without bound).
        for (descriptor, report) in [
            (
                &[
                    0x76, 0x76, 0x80, 0x81, 0x08, 0x08, 0x09, 0x09, 0x0a, 0x85, 0x80, 0x80, 0x09,
                    0x2d, 0x80, 0x09, 0x64, 0x26, 0x90, 0xf3, 0x09, 0x09, 0x09, 0x87, 0x90,
                ][..],
                &[][..],
            ),
            (
                &[
                    0x75, 0x75, 0x75, 0x75, 0x75, 0x75, 0x75, 0x75, 0x75, 0x75, 0x75, 0x75, 0x75,
                    0x75, 0x75, 0x55, 0x80, 0x09, 0x00, 0x09, 0x09, 0x0a, 0x01, 0x85, 0x80, 0x09,
                    0x09, 0x80, 0x09, 0x09, 0x80, 0x09, 0x00, 0x09, 0x89, 0x0a, 0x01, 0x85, 0x80,
                    0x0a, 0x85, 0x80, 0x80, 0x09, 0x3d, 0x80, 0x09, 0x64, 0x80, 0x0a, 0x85, 0x80,
                    0x09, 0x09, 0x09, 0x09, 0x09, 0x85, 0x80, 0x80, 0x09, 0x64, 0x80, 0x0a, 0x85,
                    0x80, 0x09, 0x09, 0x09, 0x09, 0x09, 0x85, 0x80, 0x80,
                ][..],
                &[][..],
            ),
        ] {
            if let Ok(d) = ReportDescriptor::parse(descriptor) {
                let mut t = EventTranslator::new(&d);
                let mut events = Vec::new();
                t.translate(report, &mut events);
            }
        }
    }

    use super::*;

    const KEYBOARD: &[u8] = &[
        0x05, 0x01, 0x09, 0x06, 0xa1, 0x01, 0x05, 0x07, 0x19, 0xe0, 0x29, 0xe7, 0x15, 0x00, 0x25,
        0x01, 0x75, 0x01, 0x95, 0x08, 0x81, 0x02, 0x95, 0x01, 0x75, 0x08, 0x81, 0x01, 0x95, 0x06,
        0x75, 0x08, 0x15, 0x00, 0x25, 0x65, 0x05, 0x07, 0x19, 0x00, 0x29, 0x65, 0x81, 0x00, 0xc0,
    ];
    const MOUSE: &[u8] = &[
        0x05, 0x01, 0x09, 0x02, 0xa1, 0x01, 0x09, 0x01, 0xa1, 0x00, 0x05, 0x09, 0x19, 0x01, 0x29,
        0x03, 0x15, 0x00, 0x25, 0x01, 0x95, 0x03, 0x75, 0x01, 0x81, 0x02, 0x95, 0x01, 0x75, 0x05,
        0x81, 0x01, 0x05, 0x01, 0x09, 0x30, 0x09, 0x31, 0x09, 0x38, 0x15, 0x81, 0x25, 0x7f, 0x75,
        0x08, 0x95, 0x03, 0x81, 0x06, 0xc0, 0xc0,
    ];

    fn key(usage: u16, value: i64) -> Event {
        Event::Keyboard {
            usage_page: page::KEYBOARD,
            usage,
            value,
        }
    }

    #[test]
    fn keyboard_arrays_become_one_usage_per_key() {
        let d = ReportDescriptor::parse(KEYBOARD).unwrap();
        let usages = d.input_usages();
        // 8 modifiers + keys 1..=0x65.
        assert_eq!(usages.len(), 8 + 0x65);
        let mut t = EventTranslator::new(&d);
        let mut out = Vec::new();
        // Shift + 'a', then 'a' + 'b', then nothing.
        t.translate(&[0x02, 0, 0x04, 0, 0, 0, 0, 0], &mut out);
        t.translate(&[0x00, 0, 0x04, 0x05, 0, 0, 0, 0], &mut out);
        t.translate(&[0; 8], &mut out);
        assert_eq!(
            out,
            [
                key(0xe1, 1),
                key(0x04, 1),
                key(0xe1, 0),
                key(0x05, 1),
                key(0x04, 0),
                key(0x05, 0)
            ]
        );
    }

    #[test]
    fn mouse_reports_become_pointer_and_scroll_events() {
        let d = ReportDescriptor::parse(MOUSE).unwrap();
        let mut t = EventTranslator::new(&d);
        let mut out = Vec::new();
        t.translate(&[0x01, 5, 0xfd, 0], &mut out);
        t.translate(&[0x01, 0, 0, 0xff], &mut out);
        t.translate(&[0x00, 0, 0, 0], &mut out);
        assert_eq!(
            out,
            [
                Event::RelativePointer {
                    dx: 5,
                    dy: -3,
                    buttons: 1
                },
                Event::Scroll {
                    dx: 0,
                    dy: -1,
                    dz: 0
                },
                Event::RelativePointer {
                    dx: 0,
                    dy: 0,
                    buttons: 0
                },
            ]
        );
    }

    #[test]
    fn short_reports_and_other_ids_read_nothing() {
        let d = ReportDescriptor::parse(KEYBOARD).unwrap();
        let u = &d.input_usages()[0];
        assert_eq!(u.read(&[], false), None);
        assert_eq!(u.read(&[1], true), None);
        assert_eq!(bits(&[0xff; 4], 4, 33), None);
        assert_eq!(bits(&[0xff; 4], 4, 32), Some(0x0fff_ffff), "padded");
        assert_eq!(bits(&[0xab, 0xcd], 4, 8), Some(0xda));
        // A 6-byte release report still releases the key.
        let mut t = EventTranslator::new(&d);
        let mut out = Vec::new();
        t.translate(&[0, 0, 0x04, 0, 0, 0, 0, 0], &mut out);
        t.translate(&[0; 6], &mut out);
        assert_eq!(out, [key(0x04, 1), key(0x04, 0)]);
    }

    proptest::proptest! {
        /// The slot-wise state agrees with reading every usage on its own.
        #[test]
        fn input_state_matches_reading_each_usage(reports in proptest::collection::vec(proptest::collection::vec(0u8..0x70, 0..9), 1..8)) {
            let d = ReportDescriptor::parse(KEYBOARD).unwrap();
            let mut state = InputState::new(&d);
            let mut changed = Vec::new();
            for r in &reports {
                state.apply(r, &mut changed);
                for (i, u) in state.usages().iter().enumerate() {
                    if let Some(v) = u.read(r, false) {
                        proptest::prop_assert_eq!(state.value(i), v, "usage {:#x} after {:?}", u.usage, r);
                    }
                }
            }
        }

        #[test]
        fn any_report_translates_without_panic(report: Vec<u8>, desc in proptest::sample::select(vec![KEYBOARD, MOUSE])) {
            let d = ReportDescriptor::parse(desc).unwrap();
            let mut t = EventTranslator::new(&d);
            let mut out = Vec::new();
            t.translate(&report, &mut out);
        }
    }
}

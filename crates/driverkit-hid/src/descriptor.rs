//! The report descriptor parser: items in, collections and elements out
//! (HID 1.11 section 6.2.2).
//!
//! Global items set state that lasts until changed (and can be pushed and
//! popped); local items describe only the next main item. Each Input,
//! Output or Feature item becomes an [`Element`] with its place in its
//! report (bit offset, size, count) and its usages; Collection and End
//! Collection build the collection tree. Everything outside bounds is an
//! error naming the offset: a malformed descriptor from a device never
//! panics the parser, and usage ranges are expanded only up to a limit.

use serde::Serialize;

pub use crate::item::ItemError as Error;
use crate::item::{items, Item, ItemType};

/// Deepest push stack and collection nesting accepted.
const MAX_DEPTH: usize = 32;
/// Most usages one main item may list (ranges included).
const MAX_USAGES: usize = 4096;
/// Largest report accepted, in bits.
const MAX_REPORT_BITS: u64 = 8 * 65536;

/// Input, Output or Feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ReportType {
    Input,
    Output,
    Feature,
}

/// A collection (Physical, Application, Logical, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Collection {
    /// Its index in [`ReportDescriptor::collections`].
    pub index: usize,
    /// The enclosing collection.
    pub parent: Option<usize>,
    /// 0 Physical, 1 Application, 2 Logical, 3 Report, 4 Named Array,
    /// 5 Usage Switch, 6 Usage Modifier, 0x80.. vendor.
    pub kind: u8,
    pub usage_page: u16,
    pub usage: u16,
}

/// One field of a report: what an Input, Output or Feature item declares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Element {
    pub report_type: ReportType,
    /// 0 when the descriptor uses no report IDs.
    pub report_id: u8,
    /// The innermost enclosing collection.
    pub collection: Option<usize>,
    /// Where the field starts in the report, in bits, after the report ID.
    pub bit_offset: u32,
    pub report_size: u32,
    pub report_count: u32,
    /// The main item's flags: bit 0 constant, 1 variable (else array),
    /// 2 relative, 3 wrap, 4 non-linear, 5 no preferred, 6 null state,
    /// 8 buffered bytes.
    pub flags: u32,
    /// Usages as `page << 16 | id`: one per value for variable fields, the
    /// possible values for arrays.
    pub usages: Vec<u32>,
    pub logical_minimum: i32,
    pub logical_maximum: i32,
    pub physical_minimum: i32,
    pub physical_maximum: i32,
    pub unit: u32,
    pub unit_exponent: i32,
}

impl Element {
    /// A constant (padding) field.
    pub fn is_constant(&self) -> bool {
        self.flags & 1 != 0
    }
    /// One value per usage (else an array of usage indices).
    pub fn is_variable(&self) -> bool {
        self.flags & 2 != 0
    }
    /// Values are relative (a mouse's motion) rather than absolute.
    pub fn is_relative(&self) -> bool {
        self.flags & 4 != 0
    }
}

/// A parsed report descriptor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReportDescriptor {
    pub collections: Vec<Collection>,
    pub elements: Vec<Element>,
    /// The report IDs used, in order of appearance; empty when none are.
    pub report_ids: Vec<u8>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Globals {
    usage_page: u16,
    logical_minimum: i32,
    logical_maximum: i32,
    physical_minimum: i32,
    physical_maximum: i32,
    unit_exponent: i32,
    unit: u32,
    report_size: u32,
    report_id: u8,
    report_count: u32,
}

#[derive(Debug, Default)]
struct Locals {
    /// Usages as given: extended (`page << 16 | id`) or bare ids, resolved
    /// against the usage page when the main item comes.
    usages: Vec<(bool, u32)>,
    minimum: Option<(bool, u32)>,
}

fn err(item: &Item<'_>, problem: impl Into<String>) -> Error {
    Error {
        offset: item.offset,
        problem: problem.into(),
    }
}

impl ReportDescriptor {
    /// Parses a report descriptor.
    pub fn parse(bytes: &[u8]) -> Result<ReportDescriptor, Error> {
        let mut out = ReportDescriptor::default();
        let mut g = Globals::default();
        let mut stack: Vec<Globals> = Vec::new();
        let mut locals = Locals::default();
        let mut open: Vec<(usize, usize)> = Vec::new(); // (collection index, offset)
                                                        // Bits used so far per (report type, report id).
        let mut offsets: Vec<((ReportType, u8), u64)> = Vec::new();
        for item in items(bytes) {
            let item = item?;
            if item.long {
                continue;
            }
            match item.kind {
                ItemType::Global => match item.tag {
                    0 => {
                        g.usage_page = u16::try_from(item.unsigned())
                            .map_err(|_| err(&item, "usage page above 0xFFFF"))?
                    }
                    1 => g.logical_minimum = item.signed(),
                    2 => g.logical_maximum = item.signed(),
                    3 => g.physical_minimum = item.signed(),
                    4 => g.physical_maximum = item.signed(),
                    5 => g.unit_exponent = item.signed(),
                    6 => g.unit = item.unsigned(),
                    7 => g.report_size = item.unsigned(),
                    8 => {
                        let id = item.unsigned();
                        if id == 0 || id > 255 {
                            return Err(err(&item, format!("report ID {id}: expected 1 to 255")));
                        }
                        g.report_id = id as u8;
                        if !out.report_ids.contains(&g.report_id) {
                            out.report_ids.push(g.report_id);
                        }
                    }
                    9 => g.report_count = item.unsigned(),
                    10 => {
                        if stack.len() >= MAX_DEPTH {
                            return Err(err(&item, format!("push nested deeper than {MAX_DEPTH}")));
                        }
                        stack.push(g);
                    }
                    11 => {
                        g = stack
                            .pop()
                            .ok_or_else(|| err(&item, "pop without a matching push"))?
                    }
                    t => return Err(err(&item, format!("unknown global item tag {t}"))),
                },
                ItemType::Local => match item.tag {
                    0 => {
                        if locals.usages.len() >= MAX_USAGES {
                            return Err(err(
                                &item,
                                format!("more than {MAX_USAGES} usages before one main item"),
                            ));
                        }
                        locals.usages.push((item.data.len() == 4, item.unsigned()));
                    }
                    1 => locals.minimum = Some((item.data.len() == 4, item.unsigned())),
                    2 => {
                        let (extended, min) = locals
                            .minimum
                            .take()
                            .ok_or_else(|| err(&item, "usage maximum without a usage minimum"))?;
                        let max = item.unsigned();
                        if max < min {
                            return Err(err(
                                &item,
                                format!("usage maximum {max:#x} below minimum {min:#x}"),
                            ));
                        }
                        if (max - min) as usize >= MAX_USAGES - locals.usages.len() {
                            return Err(err(
                                &item,
                                format!("usage range {min:#x}..={max:#x} longer than {MAX_USAGES}"),
                            ));
                        }
                        let extended = extended || item.data.len() == 4;
                        locals.usages.extend((min..=max).map(|u| (extended, u)));
                    }
                    // Designators, strings and delimiters describe nothing
                    // the elements carry.
                    3..=10 => {}
                    t => return Err(err(&item, format!("unknown local item tag {t}"))),
                },
                ItemType::Main => {
                    let resolve = |(extended, u): (bool, u32)| {
                        if extended {
                            u
                        } else {
                            (u32::from(g.usage_page) << 16) | (u & 0xFFFF)
                        }
                    };
                    match item.tag {
                        8 | 9 | 11 => {
                            let report_type = match item.tag {
                                8 => ReportType::Input,
                                9 => ReportType::Output,
                                _ => ReportType::Feature,
                            };
                            let bits = u64::from(g.report_size) * u64::from(g.report_count);
                            let key = (report_type, g.report_id);
                            let used = match offsets.iter_mut().find(|(k, _)| *k == key) {
                                Some((_, used)) => used,
                                None => {
                                    offsets.push((key, 0));
                                    &mut offsets.last_mut().expect("just pushed").1
                                }
                            };
                            if *used + bits > MAX_REPORT_BITS {
                                return Err(err(
                                    &item,
                                    format!(
                                        "report {} grows past {} bytes",
                                        g.report_id,
                                        MAX_REPORT_BITS / 8
                                    ),
                                ));
                            }
                            out.elements.push(Element {
                                report_type,
                                report_id: g.report_id,
                                collection: open.last().map(|(c, _)| *c),
                                bit_offset: *used as u32,
                                report_size: g.report_size,
                                report_count: g.report_count,
                                flags: item.unsigned(),
                                usages: locals.usages.drain(..).map(resolve).collect(),
                                logical_minimum: g.logical_minimum,
                                logical_maximum: g.logical_maximum,
                                physical_minimum: g.physical_minimum,
                                physical_maximum: g.physical_maximum,
                                unit: g.unit,
                                unit_exponent: g.unit_exponent,
                            });
                            *used += bits;
                        }
                        10 => {
                            if open.len() >= MAX_DEPTH {
                                return Err(err(
                                    &item,
                                    format!("collections nested deeper than {MAX_DEPTH}"),
                                ));
                            }
                            let usage = locals.usages.first().copied().map(resolve).unwrap_or(0);
                            let index = out.collections.len();
                            out.collections.push(Collection {
                                index,
                                parent: open.last().map(|(c, _)| *c),
                                kind: item.unsigned() as u8,
                                usage_page: (usage >> 16) as u16,
                                usage: usage as u16,
                            });
                            open.push((index, item.offset));
                        }
                        12 => {
                            open.pop().ok_or_else(|| {
                                err(&item, "end collection without an open collection")
                            })?;
                        }
                        t => return Err(err(&item, format!("unknown main item tag {t}"))),
                    }
                    locals = Locals::default();
                }
                ItemType::Reserved => return Err(err(&item, "reserved item type 3")),
            }
        }
        if let Some((c, at)) = open.last() {
            return Err(Error {
                offset: *at,
                problem: format!("collection {c} opened here is never closed"),
            });
        }
        Ok(out)
    }

    /// The size in bytes of the largest report of `kind`, with its report
    /// ID byte when the descriptor uses report IDs.
    pub fn max_report_size(&self, kind: ReportType) -> usize {
        let id_byte = usize::from(!self.report_ids.is_empty());
        let mut best = 0u64;
        for id in self.report_ids.iter().copied().chain(std::iter::once(0)) {
            let bits: u64 = self
                .elements
                .iter()
                .filter(|e| e.report_type == kind && e.report_id == id)
                .map(|e| u64::from(e.report_size) * u64::from(e.report_count))
                .sum();
            best = best.max(bits);
        }
        if best == 0 {
            return 0;
        }
        best.div_ceil(8) as usize + id_byte
    }

    /// `(usage page, usage)` of each top-level application collection: the
    /// device's DeviceUsagePairs; the first is its primary usage.
    pub fn device_usage_pairs(&self) -> Vec<(u16, u16)> {
        self.collections
            .iter()
            .filter(|c| c.parent.is_none() && c.kind == 1)
            .map(|c| (c.usage_page, c.usage))
            .collect()
    }
}

//! A HID report descriptor, then reports read through it (the first byte
//! splits the input: descriptor, then a report).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let (descriptor, report) = rest.split_at((split as usize).min(rest.len()));
    if let Ok(d) = driverkit_hid::ReportDescriptor::parse(descriptor) {
        let _ = d.device_usage_pairs();
        let mut t = driverkit_hid::EventTranslator::new(&d);
        let mut events = Vec::new();
        t.translate(report, &mut events);
    }
});

//! What a PCI function and sysfs tell the system: a configuration space
//! whose capability lists the device chose (walked for `FindPCICapability`,
//! bounded however they loop or point), and sysfs's `resource` text for
//! the BARs. Answers or `None`, never a panic or an access outside.
#![no_main]
use driverkit_wire::pci::{capability, find_capability, CONFIG_SPACE_EXTENDED};
use driverkitd::backends::linux_pci::sysfs;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let space = |at: u16| -> Option<u32> {
        let at = usize::from(at);
        data.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let id = data.first().copied().unwrap_or(5) as u32;
    let after = data.get(1).copied().unwrap_or(0) as u16 * 4;
    for wanted in [id, id | capability::EXTENDED] {
        if let Some(at) = find_capability(CONFIG_SPACE_EXTENDED, wanted, after, space) {
            assert!(at % 4 == 0 && at < CONFIG_SPACE_EXTENDED);
        }
    }
    let _ = sysfs::bars(&String::from_utf8_lossy(data));
    let _ = sysfs::location(&String::from_utf8_lossy(data));
});

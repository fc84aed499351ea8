//! What the test driver does on an edu function (`TestStartBehavior`
//! `pci-bad-input` and `pci-crash-mid-dma`): the requests a PCI driver
//! must be refused, and a crash while the device is about to write into
//! the driver's memory.

use driverkit::pci::{interrupt_type, reg};
use driverkit::plist::{Dictionary, Value};
use driverkit::prelude::*;

const BAR0: u8 = 0;

fn outcome<T: Into<u64>>(r: IOResult<T>) -> Value {
    match r {
        Ok(v) => Value::Integer(v.into().into()),
        Err(e) => Value::String(e.name().unwrap_or("unknown").into()),
    }
}

/// Asks for what must be refused, and for two things that must work,
/// and returns each outcome by name (a status name, or the value read).
pub fn bad_input(provider: &IOService) -> IOResult<Dictionary> {
    let pci = IOPCIDevice::from_provider(provider);
    let mut out = Dictionary::new();
    let mut put = |k: &str, v: Value| {
        out.insert(k.into(), v);
    };
    put("ReadBeforeOpen", outcome(pci.memory_read32(BAR0, 0)));
    pci.open()?;
    put(
        "ConfigVendor",
        outcome(pci.configuration_read16(reg::VENDOR_ID)),
    );
    put("ConfigPast4KiB", outcome(pci.configuration_read32(0x1000)));
    put("ConfigPastSpace", outcome(pci.configuration_read32(0x100)));
    put("ConfigUnaligned", outcome(pci.configuration_read32(0xfe)));
    put(
        "ConfigWriteTooWide",
        outcome(pci.configuration_write8(0x3c, 0).map(|_| 0u64)),
    );
    put(
        "BarLastWord",
        outcome(pci.memory_read32(BAR0, (1 << 20) - 4)),
    );
    put("BarPastEnd", outcome(pci.memory_read32(BAR0, 1 << 20)));
    put(
        "BarStraddlingEnd",
        outcome(pci.memory_read64(BAR0, (1 << 20) - 4)),
    );
    put("BarUnaligned", outcome(pci.memory_read32(BAR0, 2)));
    put("BarMissing", outcome(pci.memory_read32(3, 0)));
    put(
        "BarInfoMissing",
        outcome(pci.get_bar_info(5).map(|b| b.size)),
    );
    put(
        "MsiX",
        outcome(pci.configure_interrupts(interrupt_type::MSIX, 1, 1)),
    );
    put(
        "MsiCapability",
        outcome(pci.find_pci_capability(driverkit::pci::capability::MSI, 0)),
    );
    put(
        "ExtendedCapability",
        outcome(pci.find_pci_capability(driverkit::pci::capability::EXTENDED | 1, 0)),
    );
    let mapped = pci.map_bar(BAR0)?;
    put("MappedID", outcome(mapped.read32(0)));
    put("MappedPastEnd", outcome(mapped.read32(1 << 20)));
    // A 28-bit device cannot reach 256 MiB, nor a 12-bit one 8 KiB.
    let buffer = IOBufferMemoryDescriptor::create(8192)?;
    let narrow = IODMACommand::create(&pci, 12)?;
    put(
        "DmaBeyondMask",
        outcome(
            narrow
                .prepare_for_dma(&buffer, 0, 8192)
                .map(|s| s.len() as u64),
        ),
    );
    let dma = IODMACommand::create(&pci, 28)?;
    put(
        "DmaPastBuffer",
        outcome(
            dma.prepare_for_dma(&buffer, 4096, 8192)
                .map(|s| s.len() as u64),
        ),
    );
    put(
        "DmaBelowMask",
        outcome(
            dma.prepare_for_dma(&buffer, 100, 5000)
                .map(|s| u64::from(s.len() == 1 && s[0].address + s[0].length <= 1 << 28)),
        ),
    );
    put("DmaComplete", outcome(dma.complete_dma().map(|_| 1u64)));
    put(
        "DmaCompleteTwice",
        outcome(dma.complete_dma().map(|_| 1u64)),
    );
    pci.close()?;
    put("ReadAfterClose", outcome(pci.memory_read32(BAR0, 0)));
    put("MappedAfterClose", outcome(mapped.read32(0)));
    Ok(out)
}

/// The first time: Bus Master on, a DMA transfer from the device into
/// this process's buffer programmed (the device starts it after its
/// delay), then an abort, before the device writes. The relaunch (the
/// provider's `DriverKitCrashes` says it is one) publishes what the device
/// looks like to a new driver.
pub fn crash_mid_dma(provider: &IOService) -> IOResult<Option<Dictionary>> {
    let pci = IOPCIDevice::from_provider(provider);
    let relaunched = provider.copy_property("DriverKitCrashes")?.is_some();
    if relaunched {
        let mut state = Dictionary::new();
        let cmd = pci.configuration_read16(reg::COMMAND)?;
        state.insert("Command".into(), Value::Integer(u64::from(cmd).into()));
        pci.open()?;
        for (name, offset) in [
            ("Liveness", 0x04u64),
            ("IrqStatus", 0x24),
            ("DmaCommand", 0x98),
            ("DmaCount", 0x90),
        ] {
            state.insert(name.into(), outcome(pci.memory_read32(BAR0, offset)));
        }
        return Ok(Some(state));
    }
    pci.open()?;
    pci.set_bus_master_enable(true)?;
    pci.memory_write32(BAR0, 0x04, 0xdead_beef)?;
    let buffer = IOBufferMemoryDescriptor::create(4096)?;
    let dma = IODMACommand::create(&pci, 28)?;
    let segments = dma.prepare_for_dma(&buffer, 0, 4096)?;
    pci.memory_write64(BAR0, 0x80, 0x40000)?;
    pci.memory_write64(BAR0, 0x88, segments[0].address)?;
    pci.memory_write64(BAR0, 0x90, 2048)?;
    pci.memory_write64(BAR0, 0x98, 0x01 | 0x02 | 0x04)?;
    driverkit::info!("DMA programmed; aborting before the device writes");
    std::process::abort();
}

//! VirtualEthernetDriver: an Ethernet interface over one end of the
//! virtual cable.
//!
//! Its personality matches an `IOVirtualNIC` and names
//! `IOUserNetworkEthernet` as its class. In `start` it registers its
//! interface (a MAC address and a pool of 512 buffers of 2 KiB), and the
//! system makes the network interface (`BSD Name` in the registry). Then,
//! on the `Default` queue:
//!
//! - `tx_packets_available`: frames from the kernel go onto the cable, a
//!   batch per call; what the cable has no room for waits in the driver
//!   until the NIC's "room" interrupt;
//! - the NIC's "frames wait" interrupt and `rx_buffers_available`: frames
//!   from the cable go into empty buffers and up to the kernel, a batch per
//!   call.
//!
//! `ip link set down` takes this end of the cable down (the peer's carrier
//! goes too), `ip link set mtu` reaches `set_mtu` (up to what a buffer
//! holds), `ip link set promisc` `set_promiscuous_mode_enable` (a cable
//! delivers everything anyway).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;

use driverkit::net::media;
use driverkit::prelude::*;

/// The bundle's Info.plist, for hosts that assemble the bundle themselves.
pub const INFO_PLIST: &str = include_str!("../Info.plist");

/// What the driver is entitled to: `Entitlements.plist`, installed in its bundle.
pub const ENTITLEMENTS: &str = include_str!("../Entitlements.plist");

const PACKETS: u32 = 512;
const BUFFER: u32 = 2048;
/// Frames per step. A step's frames travel in one call, whose message is
/// at most 256 KiB: 64 frames of at most a buffer (2 KiB) stay well under.
const BATCH: usize = 64;
const _: () = assert!(BATCH * BUFFER as usize <= 256 * 1024 / 2);

#[derive(Default)]
pub struct VirtualEthernetDriverIvars {
    nic: Mutex<Option<IOVirtualNIC>>,
    interrupts: Mutex<Vec<IOInterruptDispatchSource>>,
    /// Taken from the TX queue, not yet on the cable.
    waiting_tx: Mutex<Vec<(IOUserNetworkPacket, Vec<u8>)>>,
    /// Empty RX buffers taken and not used yet.
    spare_rx: Mutex<Vec<IOUserNetworkPacket>>,
    enabled: AtomicBool,
    mtu: AtomicU32,
}

#[driverkit::service(superclass = IOUserNetworkEthernet, ivars = VirtualEthernetDriverIvars)]
pub struct VirtualEthernetDriver;

impl VirtualEthernetDriver {
    fn nic(&self) -> IOResult<IOVirtualNIC> {
        self.ivars()
            .nic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ok_or(IOReturn::NOT_READY)
    }

    /// TX queue → cable, until either is done.
    fn transmit_pending(&self) {
        let Ok(nic) = self.nic() else { return };
        let mut waiting = self
            .ivars()
            .waiting_tx
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        loop {
            if waiting.is_empty() {
                for p in self.tx_take(BATCH) {
                    let mut frame = Vec::new();
                    if self.packet_data(&p, &mut frame).is_ok() {
                        waiting.push((p, frame));
                    } else {
                        let _ = self.tx_complete(&[p]);
                    }
                }
                if waiting.is_empty() {
                    return;
                }
            }
            let frames: Vec<Vec<u8>> = waiting.iter().map(|(_, f)| f.clone()).collect();
            let sent = match nic.transmit(frames) {
                Ok(n) => n.min(waiting.len()),
                // Not "no room" (that is Ok(0)): the frames cannot go, and
                // no room interrupt would come for them. Dropped.
                Err(e) => {
                    driverkit::warn!("transmit: {e}; {} frames dropped", waiting.len());
                    waiting.len()
                }
            };
            let done: Vec<IOUserNetworkPacket> = waiting.drain(..sent).map(|(p, _)| p).collect();
            let _ = self.tx_complete(&done);
            if !waiting.is_empty() {
                return; // the NIC's interrupt 1 says when there is room
            }
        }
    }

    /// Cable → RX queue, until either is done.
    fn receive_pending(&self) {
        let Ok(nic) = self.nic() else { return };
        let mut spare = self
            .ivars()
            .spare_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        loop {
            if spare.is_empty() {
                spare.extend(self.rx_take_empty(BATCH));
                if spare.is_empty() {
                    return; // rx_buffers_available says when there are some
                }
            }
            let frames = nic.receive(spare.len()).unwrap_or_default();
            if frames.is_empty() {
                return;
            }
            let mut up = Vec::with_capacity(frames.len());
            for frame in &frames {
                let Some(empty) = spare.pop() else { break };
                match self.rx_fill(empty, frame) {
                    Ok(p) => up.push(p),
                    // Larger than a buffer: dropped, the buffer kept.
                    Err(_) => spare.push(empty),
                }
            }
            let _ = self.rx_complete(&up);
        }
    }
}

impl IOServiceImpl for VirtualEthernetDriver {
    fn init(&self) -> IOResult<VirtualEthernetDriverIvars> {
        let ivars = VirtualEthernetDriverIvars::default();
        ivars.mtu.store(1500, Ordering::Relaxed);
        Ok(ivars)
    }

    fn start(&self, provider: &IOService) -> IOResult<()> {
        self.super_start(provider)?;
        let nic = IOVirtualNIC::from_provider(provider);
        *self.ivars().nic.lock().unwrap_or_else(|e| e.into_inner()) = Some(nic);
        let queue = self.copy_dispatch_queue("Default")?;
        // The NIC's interrupts 0, 1 and 2, in that order.
        let actions = [
            self.create_action_frames_wait(0)?,
            self.create_action_room(0)?,
            self.create_action_link_changed(0)?,
        ];
        *self
            .ivars()
            .interrupts
            .lock()
            .unwrap_or_else(|e| e.into_inner()) =
            IOInterruptDispatchSource::create_all(provider, &queue, &actions)?;
        // A locally administered address, unique per cable end.
        let id = provider.registry_entry_id().to_be_bytes();
        let mac = [0x02, 0x64, id[4], id[5], id[6], id[7]];
        self.register_ethernet_interface(mac, PACKETS, BUFFER)?;
        self.report_link_status(nic.link_up()?, media::ETHERNET_10G_FULL)?;
        self.register_service()?;
        driverkit::info!("start: an Ethernet interface over the cable");
        Ok(())
    }

    fn stop(&self, provider: &IOService) -> IOResult<()> {
        let sources = std::mem::take(
            &mut *self
                .ivars()
                .interrupts
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        IOInterruptDispatchSource::cancel_all(sources)?;
        driverkit::info!("stop");
        self.super_stop(provider)
    }
}

impl IOUserNetworkEthernetImpl for VirtualEthernetDriver {
    fn tx_packets_available(&self) {
        self.transmit_pending();
    }

    fn rx_buffers_available(&self) {
        self.receive_pending();
    }

    /// Down takes this end of the cable down, and with it the link.
    fn set_interface_enable(&self, enable: bool) -> IOResult<()> {
        driverkit::info!("set_interface_enable({enable})");
        self.ivars().enabled.store(enable, Ordering::Relaxed);
        self.nic()?.set_enable(enable)?;
        self.set_property("InterfaceEnabled", enable)
    }

    fn set_promiscuous_mode_enable(&self, enable: bool) -> IOResult<()> {
        driverkit::info!("set_promiscuous_mode_enable({enable})");
        self.set_property("Promiscuous", enable)
    }

    fn set_all_multicast_mode_enable(&self, enable: bool) -> IOResult<()> {
        driverkit::info!("set_all_multicast_mode_enable({enable})");
        Ok(())
    }

    /// A cable delivers every frame: the list is only shown.
    fn set_multicast_addresses(&self, addresses: &[[u8; 6]]) -> IOResult<()> {
        let shown: Vec<driverkit::plist::Value> = addresses
            .iter()
            .map(|a| {
                a.iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":")
                    .into()
            })
            .collect();
        driverkit::info!("set_multicast_addresses({} addresses)", shown.len());
        self.set_property("MulticastAddresses", driverkit::plist::Value::Array(shown))
    }

    fn set_mtu(&self, mtu: u32) -> IOResult<()> {
        driverkit::info!("set_mtu({mtu})");
        if mtu > self.get_max_transfer_unit() {
            return Err(IOReturn::BAD_ARGUMENT);
        }
        self.ivars().mtu.store(mtu, Ordering::Relaxed);
        self.set_property("MTU", i64::from(mtu))
    }

    /// What a 2 KiB buffer holds, Ethernet header included.
    fn get_max_transfer_unit(&self) -> u32 {
        BUFFER - 14
    }
}

#[driverkit::actions]
impl VirtualEthernetDriver {
    /// NIC interrupt 0: frames wait on the cable.
    #[action(IOInterruptDispatchSource::InterruptOccurred)]
    fn frames_wait(&self, _action: &OSAction, _count: u64, _time: u64) {
        self.receive_pending();
    }

    /// NIC interrupt 1: room on the cable again.
    #[action(IOInterruptDispatchSource::InterruptOccurred)]
    fn room(&self, _action: &OSAction, _count: u64, _time: u64) {
        self.transmit_pending();
    }

    /// NIC interrupt 2: the link went up or down.
    #[action(IOInterruptDispatchSource::InterruptOccurred)]
    fn link_changed(&self, _action: &OSAction, _count: u64, _time: u64) {
        if let Ok(up) = self.nic().and_then(|n| n.link_up()) {
            let _ = self.report_link_status(up, media::ETHERNET_10G_FULL);
        }
    }
}

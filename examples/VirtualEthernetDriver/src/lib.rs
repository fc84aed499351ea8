//! VirtualEthernetDriver: an Ethernet interface over one end of the
//! virtual cable.
//!
//! Its personality matches an `IOVirtualNIC` and names
//! `IOUserNetworkEthernet` as its class. In `start` it takes the cable
//! end's two queues (the cable is memory: what this end enqueues, the far
//! end's driver dequeues), registers its interface (a MAC address and a
//! pool of 512 buffers of 2 KiB), and the system makes the network
//! interface (`BSD Name` in the registry). Then, on the `Default` queue:
//!
//! - `tx_packets_available`: frames from the kernel go into the transmit
//!   queue, a batch per call; what does not fit waits in the driver until
//!   the far end has dequeued (`DataServiced`);
//! - the receive queue's `DataAvailable` and `rx_buffers_available`: frames
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
/// Frames per step.
const BATCH: usize = 64;

#[derive(Default)]
pub struct VirtualEthernetDriverIvars {
    nic: Mutex<Option<Cable>>,
    /// The link interrupt.
    interrupts: Mutex<Vec<IOInterruptDispatchSource>>,
    /// Taken from the TX queue, not yet on the cable (it was full).
    waiting_tx: Mutex<Vec<IOUserNetworkPacket>>,
    /// Empty RX buffers taken and not used yet.
    spare_rx: Mutex<Vec<IOUserNetworkPacket>>,
    enabled: AtomicBool,
    mtu: AtomicU32,
}

/// The cable end and its queues.
struct Cable {
    nic: IOVirtualNIC,
    tx: IODataQueueDispatchSource,
    rx: IODataQueueDispatchSource,
}

#[driverkit::service(superclass = IOUserNetworkEthernet, ivars = VirtualEthernetDriverIvars)]
pub struct VirtualEthernetDriver;

impl VirtualEthernetDriver {
    fn with_cable<T>(&self, f: impl FnOnce(&Cable) -> T) -> Option<T> {
        let cable = self.ivars().nic.locked();
        cable.as_ref().map(f)
    }

    /// TX queue → cable, until either is done.
    fn transmit_pending(&self) {
        let Some(tx) = self.with_cable(|c| c.tx.clone()) else {
            return;
        };
        let mut waiting = self.ivars().waiting_tx.locked();
        let mut frame = Vec::with_capacity(BUFFER as usize);
        loop {
            if waiting.is_empty() {
                waiting.extend(self.tx_take(BATCH));
                if waiting.is_empty() {
                    return;
                }
            }
            let mut sent = 0;
            for p in waiting.iter() {
                frame.clear();
                if self.packet_data(p, &mut frame).is_ok()
                    && tx
                        .enqueue(frame.len(), |slot| slot.copy_from_slice(&frame))
                        .is_err()
                {
                    break; // full: DataServiced says when there is room
                }
                sent += 1;
            }
            let done: Vec<IOUserNetworkPacket> = waiting.drain(..sent).collect();
            let _ = self.tx_complete(&done);
            if !waiting.is_empty() {
                return;
            }
        }
    }

    /// Cable → RX queue, until either is done.
    fn receive_pending(&self) {
        let Some(rx) = self.with_cable(|c| c.rx.clone()) else {
            return;
        };
        let mut spare = self.ivars().spare_rx.locked();
        let mut frame = Vec::with_capacity(BUFFER as usize);
        loop {
            if spare.is_empty() {
                spare.extend(self.rx_take_empty(BATCH));
                if spare.is_empty() {
                    // Frames stay on the cable (the far end waits for room)
                    // until rx_buffers_available says there are buffers.
                    rx.set_enable(false);
                    return;
                }
            }
            let mut up = Vec::with_capacity(spare.len());
            while let Some(empty) = spare.last().copied() {
                frame.clear();
                if rx.dequeue(&mut frame).is_err() {
                    break;
                }
                spare.pop();
                match self.rx_fill(empty, &frame) {
                    Ok(p) => up.push(p),
                    // Larger than a buffer: dropped, the buffer kept.
                    Err(_) => spare.push(empty),
                }
            }
            let more = spare.is_empty();
            let _ = self.rx_complete(&up);
            if !more {
                return; // the cable is empty
            }
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
        let queue = self.copy_dispatch_queue("Default")?;
        let (tx, rx) = nic.copy_queues(&queue)?;
        tx.set_data_serviced_handler(&self.create_action_room(0)?)?;
        rx.set_data_available_handler(&self.create_action_frames_wait(0)?)?;
        *self.ivars().nic.locked() = Some(Cable { nic, tx, rx });
        *self.ivars().interrupts.locked() = IOInterruptDispatchSource::create_all(
            provider,
            &queue,
            &[self.create_action_link_changed(0)?],
        )?;
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
        let sources = std::mem::take(&mut *self.ivars().interrupts.locked());
        IOInterruptDispatchSource::cancel_all(sources)?;
        if let Some(c) = self.ivars().nic.locked().take() {
            c.tx.cancel(|| {})?;
            c.rx.cancel(|| {})?;
        }
        driverkit::info!("stop");
        self.super_stop(provider)
    }
}

impl IOUserNetworkEthernetImpl for VirtualEthernetDriver {
    fn tx_packets_available(&self) {
        self.transmit_pending();
    }

    fn rx_buffers_available(&self) {
        if let Some(rx) = self.with_cable(|c| c.rx.clone()) {
            rx.set_enable(true);
        }
        self.receive_pending();
    }

    /// Down takes this end of the cable down, and with it the link.
    fn set_interface_enable(&self, enable: bool) -> IOResult<()> {
        driverkit::info!("set_interface_enable({enable})");
        self.ivars().enabled.store(enable, Ordering::Relaxed);
        self.with_cable(|c| c.nic.set_enable(enable))
            .ok_or(IOReturn::NOT_READY)??;
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
    /// The receive queue: frames wait on the cable.
    #[action(IODataQueueDispatchSource::DataAvailable)]
    fn frames_wait(&self, _action: &OSAction) {
        self.receive_pending();
    }

    /// The transmit queue: the far end took frames, so there is room.
    #[action(IODataQueueDispatchSource::DataServiced)]
    fn room(&self, _action: &OSAction) {
        let waiting = !self.ivars().waiting_tx.locked().is_empty();
        if waiting {
            self.transmit_pending();
        }
    }

    /// NIC interrupt 0: the link went up or down.
    #[action(IOInterruptDispatchSource::InterruptOccurred)]
    fn link_changed(&self, _action: &OSAction, _count: u64, _time: u64) {
        if let Some(Ok(up)) = self.with_cable(|c| c.nic.link_up()) {
            let _ = self.report_link_status(up, media::ETHERNET_10G_FULL);
        }
    }
}

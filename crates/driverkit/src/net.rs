//! NetworkingDriverKit: an Ethernet interface whose network interface the
//! system holds (a TAP device that `ip`, `ping` and `tcpdump` see).
//!
//! A driver names `IOUserNetworkEthernet` as its superclass and, in its
//! `start`, calls [`IOUserNetworkEthernetApi::register_ethernet_interface`]
//! with its MAC address and the size of its packet buffer pool. The pool
//! and the four queues live in shared memory with the system. Then, on the
//! service's `Default` queue:
//!
//! - frames the kernel sends run [`IOUserNetworkEthernetImpl::tx_packets_available`]:
//!   the driver takes them with `tx_take`, sends them, and gives the
//!   buffers back with `tx_complete`;
//! - the system keeps empty buffers in the RX submission queue: the driver
//!   takes one (`rx_take_empty`), fills it with a received frame
//!   (`rx_fill`) and hands it up with `rx_complete`, many per call;
//! - `ip link set up|down|promisc on|mtu N` run `set_interface_enable`,
//!   `set_promiscuous_mode_enable`, `set_mtu`.
//!
//! Each notification covers every packet that arrived before it: a busy
//! interface moves batches, one wake-up for many frames.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use driverkit_wire::interfaces::{
    io_service_interface, io_user_network_ethernet_interface, IOUserNetworkEthernetInterface,
};
use driverkit_wire::net::{Entry, NetInterface, Queue, DRIVER_BELL, POOL_SPIN, SYSTEM_BELL};
use driverkit_wire::{Bytes, IOResult, IOReturn, MethodId, ObjectId};

use crate::queue::IODispatchQueue;
use crate::runtime::{ClassDispatch, Service, SystemCaller};
use crate::service::{IOService, IOServiceImpl};
use crate::watcher::Watcher;

/// The superclass of Ethernet drivers:
/// `#[driverkit::service(superclass = IOUserNetworkEthernet, ...)]`.
pub struct IOUserNetworkEthernet;

/// One packet of the pool on its way through a queue
/// (`IOUserNetworkPacket`): its buffer and where its frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IOUserNetworkPacket(Entry);

impl IOUserNetworkPacket {
    /// The frame's length (`GetDataLength`).
    pub fn data_length(&self) -> usize {
        self.0.length.into()
    }

    /// Where the frame starts in its buffer (`GetDataOffset`).
    pub fn data_offset(&self) -> usize {
        self.0.offset.into()
    }

    /// The Ethernet header's length (`GetLinkHeaderLength`).
    pub fn link_header_length(&self) -> usize {
        14
    }
}

/// Link media: what `report_link_status` says the link is.
pub mod media {
    /// The link's speed is negotiated (`kIOMediumEthernetAuto`).
    pub const ETHERNET_AUTO: u32 = 0;
    /// 1000 Mbit/s full duplex.
    pub const ETHERNET_1000_FULL: u32 = 1000;
    /// 10 Gbit/s full duplex.
    pub const ETHERNET_10G_FULL: u32 = 10_000;
}

/// What an Ethernet driver overrides.
pub trait IOUserNetworkEthernetImpl: IOServiceImpl {
    /// Frames wait in the TX submission queue: `tx_take` them, send them,
    /// `tx_complete` them.
    fn tx_packets_available(&self);

    /// Empty buffers wait in the RX submission queue (after the driver
    /// found none): received frames can go up again.
    fn rx_buffers_available(&self) {}

    /// `ip link set up` (true) or `down`.
    fn set_interface_enable(&self, enable: bool) -> IOResult<()> {
        let _ = enable;
        Ok(())
    }

    /// Receive every frame on the wire, or only the interface's own.
    fn set_promiscuous_mode_enable(&self, enable: bool) -> IOResult<()> {
        let _ = enable;
        Err(IOReturn::UNSUPPORTED)
    }

    /// Receive every multicast frame, or only the listed groups'.
    fn set_all_multicast_mode_enable(&self, enable: bool) -> IOResult<()> {
        let _ = enable;
        Err(IOReturn::UNSUPPORTED)
    }

    /// The multicast groups to receive (their MAC addresses).
    fn set_multicast_addresses(&self, addresses: &[[u8; 6]]) -> IOResult<()> {
        let _ = addresses;
        Err(IOReturn::UNSUPPORTED)
    }

    /// The interface's MTU changed; refuse one above
    /// `get_max_transfer_unit`.
    fn set_mtu(&self, mtu: u32) -> IOResult<()> {
        if mtu > self.get_max_transfer_unit() {
            return Err(IOReturn::BAD_ARGUMENT);
        }
        Ok(())
    }

    /// The largest MTU the hardware takes.
    fn get_max_transfer_unit(&self) -> u32 {
        1500
    }
}

/// What an Ethernet driver may ask of the system.
pub trait IOUserNetworkEthernetApi: Service {
    /// `RegisterEthernetInterface`: makes the pool (`packets` buffers of
    /// `buffer_size` bytes, half for each direction) and the queues, and
    /// asks the system for the interface.
    fn register_ethernet_interface(
        &self,
        mac: [u8; 6],
        packets: u32,
        buffer_size: u32,
    ) -> IOResult<()>
    where
        Self: IOUserNetworkEthernetImpl,
    {
        register::<Self>(self, mac, packets, buffer_size)
    }

    /// `ReportLinkStatus`: the carrier, and the media.
    fn report_link_status(&self, up: bool, media: u32) -> IOResult<()> {
        proxy(self).report_link_status(up, media)
    }

    /// Takes up to `max` frames to send.
    fn tx_take(&self, max: usize) -> Vec<IOUserNetworkPacket> {
        take(self, Queue::TxSubmission, max)
    }

    /// Copies a packet's frame out.
    fn packet_data(&self, packet: &IOUserNetworkPacket, out: &mut Vec<u8>) -> IOResult<()> {
        nic(self)?.net.read_frame(packet.0, out)
    }

    /// Gives sent packets' buffers back (`TxCompletionQueue`).
    fn tx_complete(&self, packets: &[IOUserNetworkPacket]) -> IOResult<()> {
        complete(self, Queue::TxCompletion, packets)
    }

    /// Takes up to `max` empty buffers to receive into. When there is none,
    /// `rx_buffers_available` runs once there is.
    fn rx_take_empty(&self, max: usize) -> Vec<IOUserNetworkPacket> {
        let packets = take(self, Queue::RxSubmission, max);
        if packets.is_empty() {
            if let Ok(n) = nic(self) {
                n.rx_starved.store(true, Ordering::Release);
            }
        }
        packets
    }

    /// Writes a received frame into an empty buffer; `kIOReturnBadArgument`
    /// for a frame larger than the buffer (it is not truncated).
    fn rx_fill(&self, packet: IOUserNetworkPacket, frame: &[u8]) -> IOResult<IOUserNetworkPacket> {
        nic(self)?
            .net
            .write_frame(packet.0.packet, frame)
            .map(IOUserNetworkPacket)
    }

    /// Hands received frames up (`RxCompletionQueue`); buffers the driver
    /// took but did not fill go back the same way, with no data.
    fn rx_complete(&self, packets: &[IOUserNetworkPacket]) -> IOResult<()> {
        complete(self, Queue::RxCompletion, packets)
    }
}

impl<S: Service<Superclass = IOUserNetworkEthernet>> IOUserNetworkEthernetApi for S {}

fn proxy<S: Service>(s: &S) -> io_user_network_ethernet_interface::Proxy<'static, SystemCaller> {
    io_user_network_ethernet_interface::Proxy {
        caller: &SystemCaller,
        object: ObjectId(s.registry_entry_id()),
        flags: 0,
    }
}

/// The family's state in an Ethernet service.
struct Nic {
    net: Arc<NetInterface>,
    /// The driver found no empty RX buffer.
    rx_starved: AtomicBool,
    watcher: Watcher,
}

fn nic<S: Service>(s: &S) -> IOResult<Arc<Nic>> {
    s.base().family::<Nic>().ok_or(IOReturn::NOT_OPEN)
}

fn take<S: Service>(s: &S, q: Queue, max: usize) -> Vec<IOUserNetworkPacket> {
    let mut entries = Vec::new();
    if let Ok(n) = nic(s) {
        let _ = n.net.pop(q, max, &mut entries);
    }
    entries.into_iter().map(IOUserNetworkPacket).collect()
}

fn complete<S: Service>(s: &S, q: Queue, packets: &[IOUserNetworkPacket]) -> IOResult<()> {
    let n = nic(s)?;
    let entries: Vec<Entry> = packets.iter().map(|p| p.0).collect();
    let pushed = n.net.push(q, &entries)?;
    n.net.bell(SYSTEM_BELL).notify();
    // A queue holds every packet of the pool: anything else is a packet
    // completed twice.
    if pushed < entries.len() {
        return Err(IOReturn::OVERRUN);
    }
    Ok(())
}

fn register<S: IOUserNetworkEthernetImpl>(
    service: &S,
    mac: [u8; 6],
    packets: u32,
    buffer_size: u32,
) -> IOResult<()> {
    let net = Arc::new(NetInterface::create(packets, buffer_size)?);
    let memory = crate::runtime::register_memory(net.memory())?;
    let n = Arc::new(Nic {
        net,
        rx_starved: AtomicBool::new(false),
        watcher: Watcher::default(),
    });
    service.base().set_family(n.clone())?;
    let queue = service.copy_dispatch_queue("Default")?;
    let me = service.base().weak_self().ok_or(IOReturn::NOT_READY)?;
    // The system first: a refused interface leaves no watcher behind (the
    // watcher looks at the queues before it first waits).
    let n2 = n.clone();
    n.watcher.start_after(
        || proxy(service).register_ethernet_interface(Bytes(mac.to_vec()), memory),
        "net-queues",
        move || watch::<S>(&n2, &queue, &me),
    )
}

fn stop_watching<S: Service>(service: &S) {
    let Ok(n) = nic(service) else { return };
    n.watcher.cancel(|| {
        n.net.bell(DRIVER_BELL).ring();
    });
}

/// Waits on the driver's doorbell and runs the notifications on the queue.
fn watch<S: IOUserNetworkEthernetImpl>(
    n: &Arc<Nic>,
    queue: &IODispatchQueue,
    me: &std::sync::Weak<dyn std::any::Any + Send + Sync>,
) {
    let net = &n.net;
    let tx = || net.pending(Queue::TxSubmission).is_ok_and(|p| p > 0);
    let rx = || {
        n.rx_starved.load(Ordering::Acquire)
            && net.pending(Queue::RxSubmission).is_ok_and(|p| p > 0)
    };
    while !n.watcher.is_cancelled() {
        let deadline = Some(Instant::now() + Duration::from_millis(250));
        let ready = || tx() || rx() || n.watcher.is_cancelled();
        if !net.bell(DRIVER_BELL).wait(POOL_SPIN, deadline, ready) || n.watcher.is_cancelled() {
            continue;
        }
        let (send, receive) = (tx(), rx());
        if receive {
            n.rx_starved.store(false, Ordering::Release);
        }
        let me = me.clone();
        let job = move || {
            let Some(s) = me.upgrade().and_then(|s| s.downcast::<S>().ok()) else {
                return;
            };
            if send {
                s.tx_packets_available();
            }
            if receive {
                s.rx_buffers_available();
            }
        };
        if let Err(job) = queue.run_here_if_idle(job) {
            if queue.dispatch_sync(job).is_err() {
                return;
            }
        }
        // What the job left (a driver that took only part) waits for its
        // own next notification: no busy loop here.
        if send && tx() {
            std::thread::yield_now();
        }
    }
}

/// The system's calls, run on the driver.
struct Local<'a, S>(&'a S);

impl<S: IOUserNetworkEthernetImpl> IOUserNetworkEthernetInterface for Local<'_, S> {
    fn set_interface_enable(&self, enable: bool) -> IOResult<()> {
        self.0.set_interface_enable(enable)
    }

    fn set_promiscuous_mode_enable(&self, enable: bool) -> IOResult<()> {
        self.0.set_promiscuous_mode_enable(enable)
    }

    fn set_all_multicast_mode_enable(&self, enable: bool) -> IOResult<()> {
        self.0.set_all_multicast_mode_enable(enable)
    }

    fn set_multicast_addresses(&self, addresses: Vec<Bytes>) -> IOResult<()> {
        let addresses: Vec<[u8; 6]> = addresses
            .iter()
            .map(|a| {
                a.0.as_slice()
                    .try_into()
                    .map_err(|_| IOReturn::BAD_ARGUMENT)
            })
            .collect::<IOResult<_>>()?;
        self.0.set_multicast_addresses(&addresses)
    }

    fn set_mtu(&self, mtu: u32) -> IOResult<()> {
        self.0.set_mtu(mtu)
    }

    fn get_max_transfer_unit(&self) -> IOResult<u32> {
        Ok(self.0.get_max_transfer_unit())
    }
}

impl<S: IOUserNetworkEthernetImpl> ClassDispatch<S> for IOUserNetworkEthernet {
    fn dispatch(service: &S, method: MethodId, args: &[u8]) -> Option<IOResult<Vec<u8>>> {
        match method {
            io_service_interface::START => {
                let started = <IOService as ClassDispatch<S>>::dispatch(service, method, args);
                if !matches!(started, Some(Ok(_))) {
                    // A failed start gets free, not stop: an interface it
                    // registered before failing stops watching here.
                    stop_watching(service);
                }
                started
            }
            io_service_interface::STOP => {
                // The queues stop before the driver's Stop.
                stop_watching(service);
                <IOService as ClassDispatch<S>>::dispatch(service, method, args)
            }
            _ => io_user_network_ethernet_interface::dispatch(&Local(service), method, args)
                .or_else(|| <IOService as ClassDispatch<S>>::dispatch(service, method, args)),
        }
    }
}

/// One end of the virtual cable (`IOVirtualNIC`), as its driver sees its
/// provider: a transmit and a receive queue of frames, which the driver
/// writes and reads directly (the cable is memory, as a NIC's rings are),
/// and interrupt 0 (the link changed) for `IOInterruptDispatchSource::create`.
#[derive(Clone, Copy)]
pub struct IOVirtualNIC {
    id: ObjectId,
}

impl IOVirtualNIC {
    /// The NIC of the provider a virtual NIC's driver matched.
    pub fn from_provider(provider: &IOService) -> IOVirtualNIC {
        IOVirtualNIC {
            id: ObjectId(provider.registry_entry_id()),
        }
    }

    fn proxy(
        &self,
    ) -> driverkit_wire::interfaces::io_virtual_nic_interface::Proxy<'static, SystemCaller> {
        driverkit_wire::interfaces::io_virtual_nic_interface::Proxy {
            caller: &SystemCaller,
            object: self.id,
            flags: 0,
        }
    }

    /// The transmit queue (enqueue a frame per entry; `DataServiced` when
    /// the far end made room) and the receive queue (`DataAvailable` when
    /// frames wait), their callbacks on `queue`.
    pub fn copy_queues(
        &self,
        queue: &IODispatchQueue,
    ) -> IOResult<(
        crate::IODataQueueDispatchSource,
        crate::IODataQueueDispatchSource,
    )> {
        use driverkit_wire::interfaces::IOVirtualNICInterface;
        let (tx, rx) = self.proxy().copy_queues()?;
        let open = |id: u64| {
            crate::IODataQueueDispatchSource::from_memory(
                crate::runtime::take_system_memory(id)?,
                queue,
            )
        };
        Ok((open(tx)?, open(rx)?))
    }

    /// Whether the cable's other end is plugged and enabled.
    pub fn link_up(&self) -> IOResult<bool> {
        use driverkit_wire::interfaces::IOVirtualNICInterface;
        self.proxy().link_up()
    }

    /// Enables or disables this end; interrupt 0 tells both ends.
    pub fn set_enable(&self, enable: bool) -> IOResult<()> {
        use driverkit_wire::interfaces::IOVirtualNICInterface;
        self.proxy().set_enable(enable)
    }
}

//! PacketQueueDriver: the seed's `TxPacketsAvailable` pattern.
//!
//! A timer produces a "packet" at a fixed interval into an
//! `IODataQueueDispatchSource`; the queue's `DataAvailable` action,
//! `tx_packets_available`, dequeues everything waiting. Both callbacks are
//! declared on the `Packets` queue (QUEUENAME), so they never run at the
//! same time as each other, nor on the `Default` queue where Start and Stop
//! run. The counts are published in the registry (`driverkit ioreg -l`).
//!
//! Stop cancels the timer and the data queue, waits until both cancel
//! handlers have run (after that no callback runs again), and only then
//! calls super, as the seed requires.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use driverkit::prelude::*;

/// The bundle's Info.plist, for hosts that assemble the bundle themselves.
pub const INFO_PLIST: &str = include_str!("../Info.plist");

/// What the driver is entitled to: `Entitlements.plist`, installed in its bundle.
pub const ENTITLEMENTS: &str = include_str!("../Entitlements.plist");

/// The driver's state.
#[derive(Default)]
pub struct PacketQueueDriverIvars {
    interval: Mutex<Duration>,
    tx_queue: Mutex<Option<IODataQueueDispatchSource>>,
    timer: Mutex<Option<IOTimerDispatchSource>>,
    sent: AtomicU64,
    received: AtomicU64,
}

#[driverkit::service(superclass = IOService, ivars = PacketQueueDriverIvars)]
pub struct PacketQueueDriver;

impl IOServiceImpl for PacketQueueDriver {
    fn init(&self) -> IOResult<PacketQueueDriverIvars> {
        Ok(PacketQueueDriverIvars::default())
    }

    fn start(&self, provider: &IOService) -> IOResult<()> {
        self.super_start(provider)?;
        let ms = self
            .personality()
            .get("PacketIntervalMs")
            .and_then(|v| v.as_unsigned_integer())
            .unwrap_or(1000);
        *self.ivars().interval.locked() = Duration::from_millis(ms);

        let packets = IODispatchQueue::create("Packets")?;
        self.set_dispatch_queue("Packets", packets.clone());

        let tx_queue = IODataQueueDispatchSource::create(4096, &packets)?;
        tx_queue.set_data_available_handler(&self.create_action_tx_packets_available(0)?)?;
        *self.ivars().tx_queue.locked() = Some(tx_queue);

        let timer = IOTimerDispatchSource::create(&packets)?;
        // The action's reference storage holds the number of the next packet.
        timer.set_handler(&self.create_action_send_packet(8)?)?;
        timer.wake_after(Duration::from_millis(ms))?;
        *self.ivars().timer.locked() = Some(timer);

        self.set_property("PacketsSent", 0i64)?;
        self.set_property("PacketsReceived", 0i64)?;
        self.register_service()?;
        driverkit::info!("start: a packet every {ms} ms");
        Ok(())
    }

    fn stop(&self, provider: &IOService) -> IOResult<()> {
        let (done_tx, done_rx) = mpsc::channel();
        let timer = self.ivars().timer.locked().take();
        let tx_queue = self.ivars().tx_queue.locked().take();
        let mut pending = 0;
        if let Some(t) = timer {
            let done = done_tx.clone();
            t.cancel(move || {
                let _ = done.send("timer");
            })?;
            pending += 1;
        }
        if let Some(q) = tx_queue {
            q.cancel(move || {
                let _ = done_tx.send("data queue");
            })?;
            pending += 1;
        }
        for _ in 0..pending {
            let which = done_rx
                .recv_timeout(Duration::from_secs(5))
                .map_err(|_| IOReturn::TIMEOUT)?;
            driverkit::info!("stop: {which} cancelled");
        }
        driverkit::info!(
            "stop: sent {} packets, received {}",
            self.ivars().sent.load(Ordering::Relaxed),
            self.ivars().received.load(Ordering::Relaxed)
        );
        self.super_stop(provider)
    }
}

#[driverkit::actions]
impl PacketQueueDriver {
    /// The timer fired: produce one packet and re-arm.
    #[action(IOTimerDispatchSource::TimerOccurred, queue = "Packets")]
    fn send_packet(&self, action: &OSAction, time: u64) {
        let number = {
            let mut reference = action.reference();
            let n = u64::from_le_bytes(reference[..8].try_into().unwrap_or([0; 8])) + 1;
            reference[..8].copy_from_slice(&n.to_le_bytes());
            n
        };
        let packet = format!("packet {number} at {time}");
        let queued = self
            .ivars()
            .tx_queue
            .locked()
            .as_ref()
            .map(|q| q.enqueue(packet.len(), |slot| slot.copy_from_slice(packet.as_bytes())));
        match queued {
            Some(Ok(())) => {
                let sent = self.ivars().sent.fetch_add(1, Ordering::Relaxed) + 1;
                let _ = self.set_property("PacketsSent", sent as i64);
            }
            Some(Err(e)) => driverkit::warn!("packet {number} dropped: {e}"),
            None => return,
        }
        let interval = *self.ivars().interval.locked();
        if let Some(timer) = self.ivars().timer.locked().as_ref() {
            let _ = timer.wake_after(interval);
        }
    }

    /// The seed's TxPacketsAvailable: drain the queue.
    #[action(IODataQueueDispatchSource::DataAvailable, queue = "Packets")]
    fn tx_packets_available(&self, _action: &OSAction) {
        let Some(queue) = self.ivars().tx_queue.locked().clone() else {
            return;
        };
        let mut packet = Vec::new();
        while queue.dequeue(&mut packet).is_ok() {
            let received = self.ivars().received.fetch_add(1, Ordering::Relaxed) + 1;
            // Once a second, forever: a debug line, not the daemon's log
            // (`DRIVERKIT_LOG=debug` shows it; ioreg's PacketsReceived counts).
            driverkit::debug!("TxPacketsAvailable: {}", String::from_utf8_lossy(&packet));
            let _ = self.set_property("PacketsReceived", received as i64);
        }
    }
}

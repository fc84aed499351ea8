//! A virtual cable: two virtual NICs (`IOVirtualNIC`) joined back to back,
//! the `[cable]` table of a device file:
//!
//! ```toml
//! name = "VirtualEthernet"   # the ends are VirtualEthernetA and ...B
//! [cable]
//! frames = 256               # frames each direction holds
//! ```
//!
//! The cable is memory: one data queue (a ring of frames, wire's `ring`)
//! each way, made here and handed to both ends' drivers, which write and
//! read it directly, as a NIC's driver works in the NIC's descriptor
//! rings. A full queue takes no more (the sender waits for the receiver to
//! dequeue), so nothing is lost on the cable itself. The system keeps the
//! link: an end whose driver disables it (`ip link set down`) takes the
//! link down for both, and interrupt 0 tells both drivers.
//!
//! The two drivers share the queues as two ends of a wire share it: either
//! can write nonsense into them, which the other's ring checks refuse
//! (wire's `ring` never trusts an index), but neither can reach anything
//! else of the other's.

use driverkit_wire::sync::Locked;
use std::sync::{Arc, Mutex};

use driverkit_wire::ring::Ring;
use driverkit_wire::shm::SharedMemory;
use driverkit_wire::{IOResult, IOReturn};
use serde::Deserialize;

use super::interrupts::Subscribers;
use crate::families::net::NicDevice;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CableSpec {
    #[serde(default = "default_frames")]
    pub frames: usize,
}

fn default_frames() -> usize {
    256
}

impl CableSpec {
    pub fn validate(&self) -> Result<(), super::description::BadDescription> {
        if !(1..=65536).contains(&self.frames) {
            return Err(super::description::BadDescription::key(
                "cable.frames",
                format!("expected 1 to 65536, found {}", self.frames),
            ));
        }
        Ok(())
    }
}

struct Cable {
    /// Frames travelling to end 0 and to end 1.
    queues: [Arc<SharedMemory>; 2],
    /// Each end's interrupt 0: the link changed.
    interrupts: [Subscribers; 2],
    /// Each end's PHY: a disabled end takes the link down.
    enabled: Mutex<[bool; 2]>,
    plugged: Mutex<bool>,
}

/// One end of a cable.
pub struct CableEnd {
    cable: Arc<Cable>,
    side: usize,
}

/// The largest frame a cable carries (a 2 KiB buffer's worth), and a
/// queue's bytes per frame it holds (the frame and the ring's own header).
const FRAME: usize = 2048;
const SLOT: usize = FRAME + 64;

/// Both ends of a new cable.
pub fn cable(
    spec: &CableSpec,
) -> Result<(Arc<CableEnd>, Arc<CableEnd>), super::description::DeviceError> {
    let queue = || {
        Ring::create("virtual-cable", spec.frames * SLOT)
            .and_then(|r| r.memory().try_clone())
            .map(Arc::new)
            .map_err(|source| super::description::DeviceError::Resource {
                what: "the cable's queue".into(),
                source,
            })
    };
    let cable = Arc::new(Cable {
        queues: [queue()?, queue()?],
        interrupts: Default::default(),
        enabled: Mutex::new([true, true]),
        plugged: Mutex::new(true),
    });
    Ok((
        Arc::new(CableEnd {
            cable: cable.clone(),
            side: 0,
        }),
        Arc::new(CableEnd { cable, side: 1 }),
    ))
}

impl NicDevice for CableEnd {
    /// To the far end, and to this one.
    fn queues(&self) -> [Arc<SharedMemory>; 2] {
        let q = &self.cable.queues;
        [q[1 - self.side].clone(), q[self.side].clone()]
    }

    fn link_up(&self) -> bool {
        let c = &self.cable;
        *c.plugged.locked() && c.enabled.locked().iter().all(|e| *e)
    }

    fn set_enable(&self, enable: bool) {
        let c = &self.cable;
        let changed = {
            let mut enabled = c.enabled.locked();
            std::mem::replace(&mut enabled[self.side], enable) != enable
        };
        if changed {
            for end in &c.interrupts {
                end.raise();
            }
        }
    }

    fn subscribe_interrupt(&self, index: u32, region: &Arc<SharedMemory>) -> IOResult<()> {
        if index != 0 {
            return Err(IOReturn::NOT_FOUND);
        }
        self.cable.interrupts[self.side].add(region)
    }

    /// One end gone: the cable is unplugged at both.
    fn unplugged(&self) {
        *self.cable.plugged.locked() = false;
        for end in &self.cable.interrupts {
            end.raise();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_cross_in_order_and_a_full_end_holds_back() {
        let (a, b) = cable(&CableSpec { frames: 2 }).unwrap();
        let open = |shm: &Arc<SharedMemory>| Ring::open(shm.try_clone().unwrap()).unwrap();
        let [a_tx, _] = a.queues();
        let [_, b_rx] = b.queues();
        let (tx, rx) = (open(&a_tx), open(&b_rx));
        let frame = vec![7u8; 1500];
        let mut sent = 0;
        while tx
            .enqueue(frame.len(), |slot| slot.copy_from_slice(&frame))
            .is_ok()
        {
            sent += 1;
        }
        assert!(sent >= 2, "a queue holds its frames ({sent})");
        let mut out = Vec::new();
        for _ in 0..sent {
            out.clear();
            rx.dequeue(&mut out).unwrap();
            assert_eq!(out, frame);
        }
        assert!(rx.dequeue(&mut out).is_err(), "nothing more");
        assert!(a.link_up());
        b.set_enable(false);
        assert!(!a.link_up(), "one end down takes the link down");
        b.set_enable(true);
        assert!(a.link_up());
        b.unplugged();
        assert!(!a.link_up());
    }
}

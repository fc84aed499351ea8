//! A virtual cable: two virtual NICs (`IOVirtualNIC`) joined back to back,
//! the `[cable]` table of a device file:
//!
//! ```toml
//! name = "VirtualEthernet"   # the ends are VirtualEthernetA and ...B
//! [cable]
//! frames = 256               # frames each direction holds
//! ```
//!
//! An end whose driver disables it (`ip link set down`) takes the link
//! down for both, and interrupt 2 tells both drivers.
//!
//! A frame transmitted at one end waits in the other end's receive queue
//! until its driver takes it; a full queue takes no more (the transmit says
//! how many fit, and interrupt 1 comes when there is room), so nothing is
//! lost on the cable itself.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

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
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=65536).contains(&self.frames) {
            return Err(format!(
                "key cable.frames: expected 1 to 65536, found {}",
                self.frames
            ));
        }
        Ok(())
    }
}

struct Cable {
    capacity: usize,
    /// Frames waiting at end 0 and end 1.
    queues: Mutex<[VecDeque<Vec<u8>>; 2]>,
    /// Each end's interrupts: 0 frames wait, 1 room to transmit, 2 the
    /// link changed.
    interrupts: [[Subscribers; 3]; 2],
    /// Each end's PHY: a disabled end takes the link down.
    enabled: Mutex<[bool; 2]>,
    /// An end's transmit did not all fit.
    blocked: Mutex<[bool; 2]>,
    plugged: Mutex<bool>,
}

/// One end of a cable.
pub struct CableEnd {
    cable: Arc<Cable>,
    side: usize,
}

/// Both ends of a new cable.
pub fn cable(spec: &CableSpec) -> (Arc<CableEnd>, Arc<CableEnd>) {
    let cable = Arc::new(Cable {
        capacity: spec.frames,
        queues: Mutex::new([VecDeque::new(), VecDeque::new()]),
        interrupts: Default::default(),
        blocked: Mutex::new([false, false]),
        enabled: Mutex::new([true, true]),
        plugged: Mutex::new(true),
    });
    (
        Arc::new(CableEnd {
            cable: cable.clone(),
            side: 0,
        }),
        Arc::new(CableEnd { cable, side: 1 }),
    )
}

impl NicDevice for CableEnd {
    fn transmit(&self, frames: Vec<Vec<u8>>) -> usize {
        let c = &self.cable;
        let far = 1 - self.side;
        let total = frames.len();
        let n = {
            let mut q = c.queues.lock().unwrap_or_else(|e| e.into_inner());
            let room = c.capacity - q[far].len();
            let n = total.min(room);
            q[far].extend(frames.into_iter().take(n));
            n
        };
        if n < total {
            c.blocked.lock().unwrap_or_else(|e| e.into_inner())[self.side] = true;
        }
        if n > 0 {
            c.interrupts[far][0].raise();
        }
        n
    }

    fn receive(&self, max: usize) -> Vec<Vec<u8>> {
        let c = &self.cable;
        let far = 1 - self.side;
        let frames: Vec<Vec<u8>> = {
            let mut q = c.queues.lock().unwrap_or_else(|e| e.into_inner());
            let n = max.min(q[self.side].len());
            q[self.side].drain(..n).collect()
        };
        if !frames.is_empty() {
            let mut blocked = c.blocked.lock().unwrap_or_else(|e| e.into_inner());
            if blocked[far] {
                blocked[far] = false;
                c.interrupts[far][1].raise();
            }
        }
        frames
    }

    fn link_up(&self) -> bool {
        let c = &self.cable;
        *c.plugged.lock().unwrap_or_else(|e| e.into_inner())
            && c.enabled
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .all(|e| *e)
    }

    fn set_enable(&self, enable: bool) {
        let c = &self.cable;
        let changed = {
            let mut enabled = c.enabled.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::replace(&mut enabled[self.side], enable) != enable
        };
        if changed {
            for end in &c.interrupts {
                end[2].raise();
            }
        }
    }

    fn subscribe_interrupt(&self, index: u32, region: &Arc<SharedMemory>) -> IOResult<()> {
        self.cable.interrupts[self.side]
            .get(index as usize)
            .ok_or(IOReturn::NOT_FOUND)?
            .add(region)
    }

    /// One end gone: the cable is unplugged at both.
    fn unplugged(&self) {
        *self.cable.plugged.lock().unwrap_or_else(|e| e.into_inner()) = false;
        for end in &self.cable.interrupts {
            end[2].raise();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_cross_in_order_and_a_full_end_holds_back() {
        let (a, b) = cable(&CableSpec { frames: 2 });
        assert_eq!(a.transmit(vec![vec![1], vec![2], vec![3]]), 2);
        assert_eq!(b.receive(10), vec![vec![1], vec![2]]);
        assert_eq!(a.transmit(vec![vec![3]]), 1);
        assert_eq!(b.transmit(vec![vec![9]]), 1);
        assert_eq!(a.receive(10), vec![vec![9]]);
        assert_eq!(b.receive(10), vec![vec![3]]);
        assert!(a.link_up());
        b.set_enable(false);
        assert!(!a.link_up(), "one end down takes the link down");
        b.set_enable(true);
        assert!(a.link_up());
        b.unplugged();
        assert!(!a.link_up());
    }
}

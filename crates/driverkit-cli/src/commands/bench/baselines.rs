//! The raw floors the IPC figures are measured against: a socket echo,
//! a spinning shared-memory peer and a futex-waiting one.

use std::os::fd::AsFd;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use driverkit_wire::transport::{self, Endpoint, MessageBuf};
use driverkit_wire::{Header, Kind};

use super::harness::percentiles;
use super::peers::{inherited_fd, spawn_peer, Peer};

/// Starts the echo helper with one end of a socketpair.
pub(super) fn spawn_echo() -> Result<(Child, Endpoint), String> {
    let (ours, theirs) = transport::socketpair().map_err(|e| e.to_string())?;
    let child = spawn_peer(Peer::Echo, theirs.into(), Stdio::inherit())?;
    let mut buf = MessageBuf::default();
    match ours.recv_message(&mut buf) {
        Ok(Some((h, _))) if h.kind == Kind::Hello => Ok((child, ours)),
        _ => Err("the echo helper did not say hello".into()),
    }
}

pub(super) fn stop_echo(mut child: Child, endpoint: Endpoint) {
    drop(endpoint);
    let _ = child.wait();
}

/// Raw SOCK_SEQPACKET round trips to another process, back to back (ns).
/// On this kind of machine the figure is bimodal: both processes end up
/// on one CPU (a few µs, each wake-up a context switch) or on two (tens of
/// µs, each wake-up an inter-processor interrupt to a halted virtual CPU),
/// as the scheduler happens to place them.
pub(super) fn raw_pingpong(n: usize) -> Result<(f64, f64), String> {
    raw_pingpong_after(n, Duration::ZERO)
}

/// As [`raw_pingpong`], each round trip after `gap` asleep, so that it
/// starts with both processes parked (ns).
pub(super) fn raw_pingpong_after(n: usize, gap: Duration) -> Result<(f64, f64), String> {
    let (child, ep) = spawn_echo()?;
    let mut h = Header::new(Kind::Request);
    h.object = driverkit_wire::ObjectId(0x1_0000_0100);
    let payload = 1u32.to_le_bytes();
    let mut buf = MessageBuf::default();
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        if !gap.is_zero() {
            std::thread::sleep(gap);
        }
        let t = Instant::now();
        ep.send(&h, &payload, None).map_err(|e| e.to_string())?;
        ep.recv(&mut buf).map_err(|e| e.to_string())?;
        if i >= n / 10 {
            samples.push(t.elapsed().as_nanos() as f64);
        }
    }
    stop_echo(child, ep);
    Ok(percentiles(samples))
}

/// The floor for a call through shared memory: two processes spinning on
/// two counters in one memfd, never parking.
pub(super) fn raw_spin_pingpong(n: usize) -> Result<(f64, f64), String> {
    let (shm, mut child) = region_with_peer("bench-spin", Peer::Spin)?;
    let (ping, pong) = (shm.u64_at(0), shm.u64_at(64));
    let mut samples = Vec::with_capacity(n);
    for i in 1..=(n + n / 10) as u64 {
        let t = Instant::now();
        ping.store(i, std::sync::atomic::Ordering::Release);
        while pong.load(std::sync::atomic::Ordering::Acquire) != i {
            std::hint::spin_loop();
        }
        if i as usize > n / 10 {
            samples.push(t.elapsed().as_nanos() as f64);
        }
    }
    ping.store(u64::MAX, std::sync::atomic::Ordering::Release);
    let _ = child.wait();
    Ok(percentiles(samples))
}

/// A page of shared memory and the helper process `command` of this binary
/// holding it too.
pub(super) fn region_with_peer(
    name: &str,
    peer: Peer<'_>,
) -> Result<(driverkit_wire::shm::SharedMemory, Child), String> {
    let shm = driverkit_wire::shm::SharedMemory::create(name, 4096).map_err(|e| e.to_string())?;
    let fd = shm
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| e.to_string())?;
    let child = spawn_peer(peer, fd, Stdio::inherit())?;
    Ok((shm, child))
}

/// In a helper: the page `region_with_peer` handed over.
pub(super) fn peer_region() -> Result<driverkit_wire::shm::SharedMemory, String> {
    driverkit_wire::shm::SharedMemory::from_fd(inherited_fd()?, 4096).map_err(|e| e.to_string())
}

/// The idle gap before each cold call: far past any spin window, so both
/// sides have parked in the kernel.
pub(super) const COLD_GAP_US: u64 = 2_000;

/// The raw floor of a cold call: two processes, one futex word each way in
/// shared memory, each side asleep in `FUTEX_WAIT` until woken, with the
/// same idle gap before each round trip.
pub(super) fn raw_futex_pingpong(n: usize) -> Result<(f64, f64), String> {
    use std::sync::atomic::Ordering;
    let (shm, mut child) = region_with_peer("bench-futex", Peer::Futex)?;
    let (ping, pong) = (shm.u32_at(0), shm.u32_at(64));
    let mut samples = Vec::with_capacity(n);
    for i in 1..=n as u32 {
        std::thread::sleep(Duration::from_micros(COLD_GAP_US));
        let t = Instant::now();
        ping.store(i, Ordering::Release);
        let _ = rustix::thread::futex::wake(ping, rustix::thread::futex::Flags::empty(), 1);
        while pong.load(Ordering::Acquire) != i {
            let _ = rustix::thread::futex::wait(
                pong,
                rustix::thread::futex::Flags::empty(),
                i - 1,
                None,
            );
        }
        samples.push(t.elapsed().as_nanos() as f64);
    }
    ping.store(u32::MAX, Ordering::Release);
    let _ = rustix::thread::futex::wake(ping, rustix::thread::futex::Flags::empty(), 1);
    let _ = child.wait();
    Ok(percentiles(samples))
}

/// The helper process: says hello on the inherited socket, then echoes.
pub fn echo_peer() -> Result<(), String> {
    let endpoint = Endpoint::new(inherited_fd()?);
    endpoint
        .send(&Header::new(Kind::Hello), &[], None)
        .map_err(|e| e.to_string())?;
    let mut buf = MessageBuf::default();
    while let Ok(transport::Received::Message { .. }) = endpoint.recv(&mut buf) {
        if endpoint.send_raw(buf.bytes(), None).is_err() {
            break;
        }
    }
    Ok(())
}

/// The spinning peer of `raw_spin_pingpong`.
pub fn spin_peer() -> Result<(), String> {
    let shm = peer_region()?;
    let (ping, pong) = (shm.u64_at(0), shm.u64_at(64));
    let mut last = 0;
    loop {
        let now = ping.load(std::sync::atomic::Ordering::Acquire);
        if now == u64::MAX {
            return Ok(());
        }
        if now != last {
            last = now;
            pong.store(now, std::sync::atomic::Ordering::Release);
        }
        std::hint::spin_loop();
    }
}

/// The peer of `raw_futex_pingpong`: sleeps in `FUTEX_WAIT` until pinged.
pub fn futex_peer() -> Result<(), String> {
    use std::sync::atomic::Ordering;
    let shm = peer_region()?;
    let (ping, pong) = (shm.u32_at(0), shm.u32_at(64));
    let mut last = 0;
    loop {
        let now = ping.load(Ordering::Acquire);
        if now == u32::MAX {
            return Ok(());
        }
        if now == last {
            let _ = rustix::thread::futex::wait(
                ping,
                rustix::thread::futex::Flags::empty(),
                last,
                None,
            );
            continue;
        }
        last = now;
        pong.store(now, Ordering::Release);
        let _ = rustix::thread::futex::wake(pong, rustix::thread::futex::Flags::empty(), 1);
    }
}

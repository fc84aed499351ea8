//! What a user does to an interface with `ip link set` (up, down,
//! promisc, allmulticast, mtu), heard from rtnetlink and handed to the
//! driver; and the link-layer multicast addresses the kernel wants
//! received (groups joined, `ip maddr add`), which rtnetlink does not
//! announce: they are read from the namespace's `dev_mcast` when a link
//! message comes and at least every second.
//!
//! An interface may be moved into another network namespace (the tests
//! do; so do containers), where its link messages are sent. So the
//! watching thread asks the TAP which namespace it lives in
//! (`TUNGETDEVNETNS`), enters it (`setns` affects only that thread), and
//! listens there; when the interface leaves (`RTM_DELLINK`), it asks
//! again, and asks for the link's state as it is there (a change made
//! before it listened would otherwise never be heard). The thread also
//! sets a refused MTU back, from inside the
//! interface's namespace.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use rustix::event::{poll, PollFd, PollFlags, Timespec};

use super::tap::Tap;

/// `TUNGETDEVNETNS`: `_IO('T', 227)`.
const TUNGETDEVNETNS: libc::c_ulong = 0x54e3;
/// `RTNLGRP_LINK`.
const LINK_GROUP: u32 = 1;

/// A change a user made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Enable(bool),
    Promiscuous(bool),
    AllMulticast(bool),
    Mtu(u32),
    /// The multicast addresses to receive now, in the kernel's order.
    Multicast(Vec<[u8; 6]>),
}

/// The link as last heard.
#[derive(Debug, Clone, PartialEq, Eq)]
struct State {
    up: bool,
    promisc: bool,
    allmulti: bool,
    mtu: u32,
    multicast: Vec<[u8; 6]>,
}

/// Shared with the interface: the MTU in force, and the end.
pub struct Watch {
    pub mtu: AtomicU32,
    pub stop: AtomicBool,
}

/// Watches `tap`'s link until `watch.stop`; `apply` hands a change to the
/// driver and says whether the driver took it.
pub fn run(tap: &Arc<Tap>, watch: &Watch, wake: &OwnedFd, apply: &dyn Fn(Change) -> bool) {
    let mut state = State {
        up: false,
        promisc: false,
        allmulti: false,
        mtu: tap.mtu(),
        multicast: Vec::new(),
    };
    watch.mtu.store(state.mtu, Ordering::Release);
    while !watch.stop.load(Ordering::Acquire) {
        // Into the interface's namespace, wherever it is now.
        let entered = namespace_of(tap)
            .and_then(|ns| {
                rustix::thread::move_into_link_name_space(
                    ns.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .map_err(std::io::Error::from)
            })
            .and_then(|()| listen());
        let socket = match entered {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("net      {}: cannot watch its link: {e}", tap.name());
                sleep_or_stop(watch, wake, Duration::from_secs(1));
                continue;
            }
        };
        // What happened to the link before the socket listened here (it
        // was brought up at once after the move, say) would never be
        // heard: ask for the link as it is now; the answer is handled as
        // any link message.
        if let Err(e) = ask_link(&socket, tap.name()) {
            tracing::warn!("net      {}: cannot read its link state: {e}", tap.name());
        }
        follow(tap, watch, wake, &socket, &mut state, apply);
    }
}

/// Sends an RTM_GETLINK for `name`; the kernel answers with an
/// RTM_NEWLINK on `socket`.
fn ask_link(socket: &Socket, name: &str) -> std::io::Result<()> {
    let mut link = LinkMessage::default();
    link.attributes.push(LinkAttribute::IfName(name.to_owned()));
    let mut request = NetlinkMessage::from(RouteNetlinkMessage::GetLink(link));
    request.header.flags = netlink_packet_core::NLM_F_REQUEST;
    request.finalize();
    let mut bytes = vec![0u8; request.buffer_len()];
    request.serialize(&mut bytes);
    socket.send(&bytes, 0).map(drop)
}

/// The namespace `tap` lives in.
fn namespace_of(tap: &Tap) -> std::io::Result<OwnedFd> {
    let fd = tap.as_fd();
    // SAFETY: TUNGETDEVNETNS takes no argument and returns a new
    // descriptor, which we own.
    let ns = unsafe { libc::ioctl(fd.as_raw_fd(), TUNGETDEVNETNS) };
    if ns < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(ns) })
}

fn listen() -> std::io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind(&SocketAddr::new(0, 0))?;
    socket.add_membership(LINK_GROUP)?;
    socket.set_non_blocking(true)?;
    Ok(socket)
}

/// Hears the link's messages in the current namespace until the interface
/// leaves it or the watch stops.
fn follow(
    tap: &Tap,
    watch: &Watch,
    wake: &OwnedFd,
    socket: &Socket,
    state: &mut State,
    apply: &dyn Fn(Change) -> bool,
) {
    let mut buf = vec![0u8; 64 * 1024];
    while !watch.stop.load(Ordering::Acquire) {
        // SAFETY: the socket outlives this borrow (both end in this loop).
        let sfd = unsafe { std::os::fd::BorrowedFd::borrow_raw(socket.as_raw_fd()) };
        let mut fds = [
            PollFd::new(&sfd, PollFlags::IN),
            PollFd::new(wake, PollFlags::IN),
        ];
        let ts = Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        };
        if poll(&mut fds, Some(&ts)).is_err() || fds[1].revents().contains(PollFlags::IN) {
            continue;
        }
        multicast_heard(tap, state, apply);
        if !fds[0].revents().contains(PollFlags::IN) {
            continue;
        }
        let n = match socket.recv(&mut &mut buf[..], 0) {
            Ok(n) => n,
            Err(_) => continue,
        };
        let mut at = 0;
        while at < n {
            let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[at..n]) else {
                break;
            };
            let len = msg.header.length as usize;
            if len == 0 {
                break;
            }
            at += len;
            match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link))
                    if is_ours(tap, &link) =>
                {
                    heard(tap, watch, &link, state, apply);
                }
                // Moved to another namespace, or gone: look again.
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link))
                    if is_ours(tap, &link) =>
                {
                    return;
                }
                _ => {}
            }
        }
    }
}

fn is_ours(tap: &Tap, link: &LinkMessage) -> bool {
    link.attributes
        .iter()
        .any(|a| matches!(a, LinkAttribute::IfName(n) if n == tap.name()))
}

/// One RTM_NEWLINK of our interface: what changed goes to the driver.
fn heard(
    tap: &Tap,
    watch: &Watch,
    link: &LinkMessage,
    state: &mut State,
    apply: &dyn Fn(Change) -> bool,
) {
    let flags = link.header.flags;
    let mtu = link
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        })
        .unwrap_or(state.mtu);
    let now = State {
        up: flags.contains(LinkFlags::Up),
        promisc: flags.contains(LinkFlags::Promisc),
        allmulti: flags.contains(LinkFlags::Allmulti),
        mtu,
        multicast: state.multicast.clone(),
    };
    if now.mtu != state.mtu {
        if apply(Change::Mtu(now.mtu)) {
            watch.mtu.store(now.mtu, Ordering::Release);
        } else if let Err(e) = set_mtu(tap.name(), state.mtu) {
            tracing::warn!(
                "net      {}: cannot set the MTU back to {}: {e}",
                tap.name(),
                state.mtu
            );
        } else {
            tracing::warn!(
                "net      {}: the driver refused MTU {}; set back to {}",
                tap.name(),
                now.mtu,
                state.mtu
            );
            // The next message reports the old MTU again.
            let kept = state.mtu;
            *state = State { mtu: kept, ..now };
            return;
        }
    }
    if now.up != state.up {
        apply(Change::Enable(now.up));
    }
    if now.promisc != state.promisc {
        apply(Change::Promiscuous(now.promisc));
    }
    if now.allmulti != state.allmulti {
        apply(Change::AllMulticast(now.allmulti));
    }
    *state = now;
}

/// The interface's multicast list, when it changed, to the driver.
fn multicast_heard(tap: &Tap, state: &mut State, apply: &dyn Fn(Change) -> bool) {
    // This thread's namespace (it entered the interface's), not the
    // process's: /proc/thread-self.
    let Ok(text) = std::fs::read_to_string("/proc/thread-self/net/dev_mcast") else {
        return;
    };
    let now = multicast_of(&text, tap.name());
    if now != state.multicast {
        apply(Change::Multicast(now.clone()));
        state.multicast = now;
    }
}

/// The addresses `/proc/net/dev_mcast` lists for interface `name`: lines
/// of index, name, users, global use, and the address as 12 hex digits.
/// Lines that do not parse are skipped.
pub fn multicast_of(dev_mcast: &str, name: &str) -> Vec<[u8; 6]> {
    dev_mcast
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(1) != Some(&name) {
                return None;
            }
            let hex = fields.get(4).filter(|h| h.len() == 12)?;
            driverkit_wire::hex::decode(hex).ok()?.try_into().ok()
        })
        .collect()
}

/// `SIOCSIFMTU`, in the current (the interface's) namespace.
fn set_mtu(name: &str, mtu: u32) -> std::io::Result<()> {
    let socket = rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::DGRAM,
        None,
    )?;
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req
        .ifr_name
        .iter_mut()
        .zip(name.bytes().take(libc::IFNAMSIZ - 1))
    {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_mtu = mtu as libc::c_int;
    // SAFETY: SIOCSIFMTU reads the ifreq, which lives across the call.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFMTU, &req) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn sleep_or_stop(watch: &Watch, wake: &OwnedFd, d: Duration) {
    if watch.stop.load(Ordering::Acquire) {
        return;
    }
    let mut fds = [PollFd::new(wake, PollFlags::IN)];
    let ts = Timespec {
        tv_sec: d.as_secs() as i64,
        tv_nsec: d.subsec_nanos() as i64,
    };
    let _ = poll(&mut fds, Some(&ts));
}

#[cfg(test)]
mod tests {
    use super::multicast_of;

    #[test]
    fn dev_mcast_lines_of_the_interface_give_its_addresses() {
        let text = "2    eth0            1     0     333300000001\n\
                    7    dk0             1     0     01005e000001\n\
                    7    dk0             2     0     333300000001\n\
                    7    dk0             1     0     zz005e000001\n\
                    garbage\n";
        assert_eq!(
            multicast_of(text, "dk0"),
            [[0x01, 0x00, 0x5e, 0, 0, 1], [0x33, 0x33, 0, 0, 0, 1]]
        );
        assert!(multicast_of(text, "dk1").is_empty());
    }
}

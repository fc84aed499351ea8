//! What a user does to an interface with `ip link set` (up, down,
//! promisc, allmulticast, mtu), heard from rtnetlink and handed to the
//! driver; and the link-layer multicast addresses the kernel wants
//! received (groups joined, `ip maddr add`), which rtnetlink does not
//! announce: they are read from the namespace's `dev_mcast` when a link
//! message comes and at least every second.
//!
//! An interface may be moved into another network namespace (the tests
//! do; so do containers), where its link messages are sent. The watching
//! thread stays in the daemon's namespace and hears every namespace that
//! has an id here (`NETLINK_LISTEN_ALL_NSID`; moving an interface gives
//! its new namespace one, and the thread asks for one where it lacks it):
//! entering the interface's namespace to listen would hold that namespace
//! alive, and a user's `ip netns del` would then leave the interface in a
//! namespace nobody can reach. What must happen inside the namespace
//! (reading the link as it is after a move, `dev_mcast`, setting a refused
//! MTU back) is done in short visits (`setns` there and back, on this
//! thread only).
//!
//! When the namespace goes after all (deleted, its last process gone), the
//! kernel removes the TAP with it: the driver hears its interface go down,
//! and the family makes a new one in the daemon's namespace (`vanished`).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::nsid::{NsidAttribute, NsidMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use rustix::event::{poll, PollFd, PollFlags, Timespec};

use super::tap::Tap;
use crate::families::threads::Stop;

/// `RTNLGRP_LINK`.
const LINK_GROUP: u32 = 1;
/// `SOL_NETLINK` and its `NETLINK_LISTEN_ALL_NSID` option (also the
/// control message that names a message's namespace).
const SOL_NETLINK: libc::c_int = 270;
const NETLINK_LISTEN_ALL_NSID: libc::c_int = 8;

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

impl std::fmt::Display for Change {
    /// For the log: what the user asked, in `ip link`'s words.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let on = |b: bool| if b { "on" } else { "off" };
        match self {
            Change::Enable(true) => write!(f, "up"),
            Change::Enable(false) => write!(f, "down"),
            Change::Promiscuous(b) => write!(f, "promisc {}", on(*b)),
            Change::AllMulticast(b) => write!(f, "allmulticast {}", on(*b)),
            Change::Mtu(m) => write!(f, "mtu {m}"),
            Change::Multicast(list) if list.is_empty() => write!(f, "no multicast addresses"),
            Change::Multicast(list) => {
                let text: Vec<String> = list
                    .iter()
                    .map(|a| driverkit_wire::hex::encode(a, ":"))
                    .collect();
                write!(f, "multicast {}", text.join(" "))
            }
        }
    }
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

impl State {
    fn fresh(mtu: u32) -> State {
        State {
            up: false,
            promisc: false,
            allmulti: false,
            mtu,
            multicast: Vec::new(),
        }
    }
}

/// Shared with the interface: the MTU in force.
pub struct Watch {
    pub mtu: AtomicU32,
}

/// What the watch does with the interface: `tap` is the TAP in use,
/// `apply` hands a change to the driver and says whether it took it,
/// `vanished` makes a new TAP for one the kernel removed (and says it).
pub struct Hands<'a> {
    pub tap: &'a dyn Fn() -> Arc<Tap>,
    pub apply: &'a dyn Fn(Change) -> bool,
    pub vanished: &'a dyn Fn() -> Option<Arc<Tap>>,
}

/// Watches the interface's link until `stop`.
pub fn run(hands: &Hands<'_>, watch: &Watch, stop: &Stop) {
    let mut state = State::fresh((hands.tap)().mtu());
    watch.mtu.store(state.mtu, Ordering::Release);
    let home = match Home::here() {
        Ok(h) => h,
        Err(e) => {
            tracing::error!("net      cannot watch links: this thread's namespace: {e}");
            return;
        }
    };
    while !stop.is_set() {
        let tap = (hands.tap)();
        let socket = match listen_everywhere() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("net      {}: cannot watch its link: {e}", tap.name());
                stop.sleep(Duration::from_secs(1));
                continue;
            }
        };
        let place = match locate(&tap, &home) {
            Ok(p) => p,
            Err(e) if e.raw_os_error() == Some(libc::EBADFD) => {
                // The kernel removed the interface (its namespace went).
                if state.up {
                    (hands.apply)(Change::Enable(false));
                }
                match (hands.vanished)() {
                    Some(new) => state = State::fresh(new.mtu()),
                    None => stop.sleep(Duration::from_secs(1)),
                }
                continue;
            }
            Err(e) => {
                tracing::warn!("net      {}: cannot find its namespace: {e}", tap.name());
                stop.sleep(Duration::from_secs(1));
                continue;
            }
        };
        // What happened to the link before this socket listened (it was
        // brought up at once after a move, say) would never be heard:
        // read the link as it is now.
        match home.visit(&tap, || read_link(tap.name())) {
            Ok(Ok(link)) => heard(&tap, &home, watch, &link, &mut state, hands.apply),
            Ok(Err(e)) | Err(e) => {
                tracing::warn!("net      {}: cannot read its link state: {e}", tap.name())
            }
        }
        follow(
            &tap,
            place,
            &home,
            watch,
            stop,
            &socket,
            &mut state,
            hands.apply,
        );
    }
}

/// The daemon's own namespace, which the thread returns to after a visit.
struct Home {
    ns: OwnedFd,
    inode: u64,
}

impl Home {
    fn here() -> std::io::Result<Home> {
        let ns = rustix::fs::open(
            "/proc/thread-self/ns/net",
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?;
        let inode = rustix::fs::fstat(&ns)?.st_ino;
        Ok(Home { ns, inode })
    }

    /// Runs `f` inside `tap`'s namespace, then comes back.
    fn visit<T>(&self, tap: &Tap, f: impl FnOnce() -> T) -> std::io::Result<T> {
        let there = namespace_of(tap)?;
        if rustix::fs::fstat(&there)?.st_ino == self.inode {
            return Ok(f());
        }
        enter(&there)?;
        drop(there);
        let r = f();
        if let Err(e) = enter(&self.ns) {
            // Nothing here can go on from the wrong namespace.
            tracing::error!("net      cannot return to the daemon's namespace: {e}");
        }
        Ok(r)
    }
}

fn enter(ns: &OwnedFd) -> std::io::Result<()> {
    rustix::thread::move_into_link_name_space(
        ns.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .map_err(std::io::Error::from)
}

/// Where the interface is: `None` is the daemon's namespace, else the id
/// its namespace has here.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Place(Option<i32>);

/// The interface's namespace, as an id from here (given one if it had
/// none, so that its messages reach the socket). `EBADFD`: the kernel
/// removed the interface.
fn locate(tap: &Tap, home: &Home) -> std::io::Result<Place> {
    let ns = namespace_of(tap)?;
    if rustix::fs::fstat(&ns)?.st_ino == home.inode {
        return Ok(Place(None));
    }
    if let Some(id) = nsid_of(&ns)? {
        return Ok(Place(Some(id)));
    }
    assign_nsid(&ns)?;
    nsid_of(&ns)?
        .map(|id| Place(Some(id)))
        .ok_or_else(|| std::io::Error::other("the kernel gave its namespace no id"))
}

/// The namespace `tap` lives in (a descriptor: close it soon, it holds the
/// namespace alive).
fn namespace_of(tap: &Tap) -> std::io::Result<OwnedFd> {
    super::ioctl::device_namespace(tap.as_fd())
}

/// One request on a socket of its own, and the messages of its answer.
fn ask(request: RouteNetlinkMessage, flags: u16) -> std::io::Result<Vec<RouteNetlinkMessage>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    let mut request = NetlinkMessage::from(request);
    request.header.flags = netlink_packet_core::NLM_F_REQUEST | flags;
    request.header.sequence_number = 1;
    request.finalize();
    let mut bytes = vec![0u8; request.buffer_len()];
    request.serialize(&mut bytes);
    socket.send(&bytes, 0)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut fds = [PollFd::new(&socket, PollFlags::IN)];
    let second = Timespec {
        tv_sec: 1,
        tv_nsec: 0,
    };
    if poll(&mut fds, Some(&second))? == 0 {
        return Err(std::io::Error::from(std::io::ErrorKind::TimedOut));
    }
    let n = socket.recv(&mut &mut buf[..], 0)?;
    let mut out = Vec::new();
    let mut at = 0;
    while at < n {
        let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[at..n]) else {
            break;
        };
        let len = msg.header.length as usize;
        match msg.payload {
            NetlinkPayload::InnerMessage(m) => out.push(m),
            NetlinkPayload::Error(e) if e.code.is_some() => {
                return Err(std::io::Error::from_raw_os_error(
                    e.code.map_or(libc::EIO, |c| -c.get()),
                ))
            }
            _ => {}
        }
        if len == 0 {
            break;
        }
        at += len;
    }
    Ok(out)
}

/// `RTM_GETNSID`: the id namespace `ns` has here, if any.
fn nsid_of(ns: &OwnedFd) -> std::io::Result<Option<i32>> {
    let mut m = NsidMessage::default();
    m.attributes.push(NsidAttribute::Fd(ns.as_raw_fd() as u32));
    let answer = ask(RouteNetlinkMessage::GetNsId(m), 0)?;
    Ok(answer.iter().find_map(|m| match m {
        RouteNetlinkMessage::NewNsId(n) => n.attributes.iter().find_map(|a| match a {
            NsidAttribute::Id(id) if *id >= 0 => Some(*id),
            _ => None,
        }),
        _ => None,
    }))
}

/// `RTM_NEWNSID` with id -1: the kernel picks one.
fn assign_nsid(ns: &OwnedFd) -> std::io::Result<()> {
    let mut m = NsidMessage::default();
    m.attributes.push(NsidAttribute::Fd(ns.as_raw_fd() as u32));
    m.attributes.push(NsidAttribute::Id(-1));
    ask(
        RouteNetlinkMessage::NewNsId(m),
        netlink_packet_core::NLM_F_ACK,
    )
    .map(drop)
}

/// `RTM_GETLINK` of `name` in the current namespace.
fn read_link(name: &str) -> std::io::Result<LinkMessage> {
    let mut link = LinkMessage::default();
    link.attributes.push(LinkAttribute::IfName(name.to_owned()));
    ask(RouteNetlinkMessage::GetLink(link), 0)?
        .into_iter()
        .find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(l),
            _ => None,
        })
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
}

/// A socket in the daemon's namespace that hears link messages of every
/// namespace with an id here.
fn listen_everywhere() -> std::io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind(&SocketAddr::new(0, 0))?;
    socket.add_membership(LINK_GROUP)?;
    let on: libc::c_int = 1;
    // SAFETY: an int option that lives across the call.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            SOL_NETLINK,
            NETLINK_LISTEN_ALL_NSID,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    socket.set_non_blocking(true)?;
    Ok(socket)
}

/// One datagram and the namespace id it came from (`None`: this one).
fn recv_with_nsid(socket: &Socket, buf: &mut [u8]) -> std::io::Result<(usize, Option<i32>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain data; zeroed is valid before it is filled.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: every pointer in `msg` points at live buffers of the sizes
    // given, for the call.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut nsid = None;
    // SAFETY: the CMSG_* walk stays within `msg_controllen` bytes of
    // `control`, as the kernel filled them.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == SOL_NETLINK && (*c).cmsg_type == NETLINK_LISTEN_ALL_NSID {
                nsid = Some(libc::CMSG_DATA(c).cast::<i32>().read_unaligned());
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n as usize, nsid))
}

/// Hears the link's messages until the interface leaves `place` (moved,
/// or removed) or the watch stops.
#[allow(clippy::too_many_arguments)]
fn follow(
    tap: &Tap,
    place: Place,
    home: &Home,
    watch: &Watch,
    stop: &Stop,
    socket: &Socket,
    state: &mut State,
    apply: &dyn Fn(Change) -> bool,
) {
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.is_set() {
        let mut fds = [
            PollFd::new(socket, PollFlags::IN),
            PollFd::new(stop.fd(), PollFlags::IN),
        ];
        let ts = Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        };
        if poll(&mut fds, Some(&ts)).is_err() || fds[1].revents().contains(PollFlags::IN) {
            continue;
        }
        // Still there? (A namespace that went took the interface along;
        // its messages may never come.)
        if !multicast_heard(tap, home, state, apply) {
            return;
        }
        if !fds[0].revents().contains(PollFlags::IN) {
            continue;
        }
        let (n, from) = match recv_with_nsid(socket, &mut buf) {
            Ok(r) => r,
            Err(_) => continue,
        };
        if from != place.0 {
            continue;
        }
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
                    heard(tap, home, watch, &link, state, apply);
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
    home: &Home,
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
        } else if let Err(e) = home
            .visit(tap, || super::ioctl::set_mtu(tap.name(), state.mtu))
            .and_then(|r| r)
        {
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

/// The interface's multicast list, when it changed, to the driver. False
/// when the interface is gone (its TAP detached: `EBADFD`).
fn multicast_heard(
    tap: &Tap,
    home: &Home,
    state: &mut State,
    apply: &dyn Fn(Change) -> bool,
) -> bool {
    // The interface's namespace, visited by this thread only:
    // /proc/thread-self.
    let text = match home.visit(tap, || {
        std::fs::read_to_string("/proc/thread-self/net/dev_mcast")
    }) {
        Ok(Ok(text)) => text,
        Err(e) if e.raw_os_error() == Some(libc::EBADFD) => return false,
        _ => return true,
    };
    let now = multicast_of(&text, tap.name());
    if now != state.multicast {
        apply(Change::Multicast(now.clone()));
        state.multicast = now;
    }
    true
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

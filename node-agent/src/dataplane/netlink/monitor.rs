//! Drift monitor: a netlink socket subscribed to link, address, route and neighbour (ARP, NDP
//! and FDB) notifications, which signals "something trellis owns changed" so that the agent
//! reconciles at once instead of at the next periodic resync.
//!
//! The signal carries no detail: the reconcile reads the whole owned state anyway, and a
//! capacity-1 channel coalesces a burst (a deleted device drops thousands of entries) into
//! one pending signal. The agent's own changes are notified too; given the state the executor
//! is driving the kernel to ([`Expected`]), the monitor drops notifications that agree with it
//! (see `expect`), so a pass that changed something is not followed by a full re-read.
//!
//! WireGuard devices notify nothing when their peers change: while the expected state holds
//! one, the monitor reads them every [`wg_ops::POLL`] and signals when they differ.
//!
//! The socket lives in the network namespace of the thread that calls [`DriftMonitor::start`]
//! (the process's when run under `ip netns exec`). If the kernel drops notifications because
//! the socket's buffer overflowed, the monitor signals: what was lost is unknown. If the socket
//! fails for good, the receiver yields `None`: start a new monitor and reconcile.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc::UnboundedReceiver;
use futures::{StreamExt, TryStreamExt};
use ipnetwork::IpNetwork;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::route::RouteMessage;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::sys::{AsyncSocket, SocketAddr};
use rtnetlink::{MulticastGroup, RouteMessageBuilder};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use trellis_common::netlink::{address_usable, link_name};

use super::expect::{self, Expected};
use super::parse;
use super::wg_ops;
use super::NetlinkError;
use crate::net::is_owned_link_name;

/// Receive buffer for notifications: a deleted device with 5000 peers' entries emits ~10000
/// messages at once (about 1 KiB each counted against the buffer), which the default
/// (~200 KiB) cannot hold.
const RCVBUF: usize = 16 << 20;

/// Running monitor; dropping it stops the monitor and closes the receiver.
#[derive(Debug)]
pub struct DriftMonitor {
    connection: JoinHandle<()>,
    watcher: JoinHandle<()>,
    wg_poller: JoinHandle<()>,
    counters: MonitorCounters,
}

#[derive(Debug, Default)]
struct Counters {
    relevant: AtomicU64,
    overruns: AtomicU64,
    expected: AtomicU64,
}

/// The monitor's counters, readable while it runs: `/metrics` reads them at render time.
#[derive(Debug, Clone, Default)]
pub struct MonitorCounters(Arc<Counters>);

impl MonitorCounters {
    pub fn stats(&self) -> MonitorStats {
        MonitorStats {
            relevant: self.0.relevant.load(Ordering::Relaxed),
            overruns: self.0.overruns.load(Ordering::Relaxed),
            expected: self.0.expected.load(Ordering::Relaxed),
        }
    }
}

/// Counts since start, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonitorStats {
    /// Notifications that concerned trellis's objects (each burst is one signal).
    pub relevant: u64,
    /// Times the kernel dropped notifications because the socket buffer was full.
    pub overruns: u64,
    /// Notifications about trellis's objects that agreed with the expected state (the
    /// agent's own changes, mostly): not signalled.
    pub expected: u64,
}

impl Drop for DriftMonitor {
    fn drop(&mut self) {
        self.watcher.abort();
        self.wg_poller.abort();
        self.connection.abort();
    }
}

/// What the monitor must know to recognise trellis's objects in notifications: owned links by
/// index (entry notifications carry only the index) and the destinations of trellis's routes
/// (a route replaced by another protocol's is notified with that protocol only).
#[derive(Debug, Default, Clone)]
pub struct Owned {
    links: HashSet<u32>,
    /// Every link's name by index: notifications name devices by index only.
    names: HashMap<u32, String>,
    route_dsts: HashSet<IpNetwork>,
    /// The underlay interface, whose address changes the lease follows (not trellis's).
    underlay: Option<u32>,
    /// The underlay's usable addresses seen so far, so that a repeated notification of one
    /// (IPv6 lifetime refreshes, DHCP renewals) does not wake the agent.
    underlay_addrs: HashSet<IpNetwork>,
}

impl Owned {
    pub fn has_link(&self, index: u32) -> bool {
        self.links.contains(&index)
    }

    pub fn name(&self, index: u32) -> Option<&str> {
        self.names.get(&index).map(String::as_str)
    }

    /// Learn from a link message (dump or notification); true if it concerns an owned link,
    /// including one renamed away from a trellis name.
    fn observe_link(&mut self, msg: &LinkMessage, deleted: bool) -> bool {
        let index = msg.header.index;
        let name = link_name(msg);
        if deleted {
            self.names.remove(&index);
        } else if let Some(n) = name.filter(|n| self.name(index) != Some(n)) {
            self.names.insert(index, n.to_string());
        }
        let owned_name = name.is_some_and(is_owned_link_name);
        let was_owned = if deleted || !owned_name {
            self.links.remove(&index)
        } else {
            !self.links.insert(index)
        };
        owned_name || was_owned
    }

    /// Learn from a route message; true if it concerns a trellis route or its destination.
    fn observe_route(&mut self, msg: &RouteMessage, deleted: bool) -> bool {
        let Some(info) = parse::route_info(msg) else {
            return false;
        };
        if parse::is_trellis_route(msg) {
            if deleted {
                self.route_dsts.remove(&info.dst);
            } else {
                self.route_dsts.insert(info.dst);
            }
            return true;
        }
        // Another protocol's route to one of our destinations, in the main table: ours may
        // have been replaced by it. (The destination stays known: if ours is still there,
        // the reconcile finds nothing to do.)
        !deleted && parse::is_main_table(msg) && self.route_dsts.contains(&info.dst)
    }
}

/// For a notification about the underlay interface's addresses, whether the agent should
/// re-read it: a usable address new to it, or one removed. `None` for every other message.
/// Not trellis's state, so never compared with what the executor expects.
pub fn underlay_address_change(msg: &RouteNetlinkMessage, owned: &mut Owned) -> Option<bool> {
    use RouteNetlinkMessage as M;
    let (a, added) = match msg {
        M::NewAddress(a) => (a, true),
        M::DelAddress(a) => (a, false),
        _ => return None,
    };
    if owned.underlay != Some(a.header.index) {
        return None;
    }
    let Some(n) = parse::address(a).filter(|n| !parse::is_ipv6_link_local(n.ip())) else {
        return Some(false);
    };
    if !added {
        owned.underlay_addrs.remove(&n);
        return Some(true);
    }
    // A tentative address becomes usable with a second notification, which counts then.
    Some(address_usable(a) && owned.underlay_addrs.insert(n))
}

/// Whether a notification concerns something trellis owns. Updates `owned` from link and
/// route messages.
pub fn concerns_owned(msg: &RouteNetlinkMessage, owned: &mut Owned) -> bool {
    use RouteNetlinkMessage as M;
    match msg {
        M::NewLink(l) => owned.observe_link(l, false),
        M::DelLink(l) => owned.observe_link(l, true),
        M::NewAddress(a) | M::DelAddress(a) => {
            owned.has_link(a.header.index)
                && !parse::address(a).is_some_and(|n| parse::is_ipv6_link_local(n.ip()))
        }
        M::NewRoute(r) => owned.observe_route(r, false),
        M::DelRoute(r) => owned.observe_route(r, true),
        // FDB: only permanent entries, so that a device with `Learning` on does not signal on
        // every learned MAC. ARP/NDP: any state, since trellis's entries turned dynamic are
        // drift too, and no dynamic entry is expected on a trellis device.
        M::NewNeighbour(n) => {
            owned.has_link(n.header.ifindex)
                && (n.header.family != AddressFamily::Bridge || parse::is_permanent(n.header.state))
        }
        // A deleted entry is reported in the state it was put in on the way out (FAILED for
        // `ip neigh del`), so every deletion on an owned link counts.
        M::DelNeighbour(n) => owned.has_link(n.header.ifindex),
        _ => false,
    }
}

type Messages = UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>;

impl DriftMonitor {
    /// Subscribe, learn the current owned links and routes, and start watching. Must run inside a Tokio
    /// runtime. Once this returns, every later change is signalled.
    pub async fn start() -> Result<(DriftMonitor, mpsc::Receiver<()>), NetlinkError> {
        DriftMonitor::start_expecting(Expected::default(), None).await
    }

    /// [`DriftMonitor::start`], not signalling changes that agree with `expected` (which the
    /// executor keeps up to date: `Dataplane::expected`).
    /// An address added to or removed from `underlay` (its index) is signalled too, so that
    /// the lease follows the interface's addresses at once.
    pub async fn start_expecting(
        expected: Expected,
        underlay: Option<u32>,
    ) -> Result<(DriftMonitor, mpsc::Receiver<()>), NetlinkError> {
        let groups = [
            MulticastGroup::Link,
            MulticastGroup::Ipv4Ifaddr,
            MulticastGroup::Ipv6Ifaddr,
            MulticastGroup::Ipv4Route,
            MulticastGroup::Ipv6Route,
            MulticastGroup::Neigh,
        ];
        let (mut conn, handle, messages) = rtnetlink::new_multicast_connection(&groups)
            .map_err(|e| NetlinkError::socket("open netlink notification socket", e))?;
        // Best effort: without it, a big burst overflows sooner, which is signalled anyway.
        grow_receive_buffer(conn.socket_mut().socket_ref().as_raw_fd());
        let connection = tokio::spawn(conn);

        // Seed after subscribing, so a link created in between is seen by one or the other.
        let owned = match seed(&handle).await {
            Ok(o) => Owned { underlay, ..o },
            Err(e) => {
                connection.abort();
                return Err(e);
            }
        };

        let (tx, rx) = mpsc::channel(1);
        let counters = MonitorCounters::default();
        // The handle stays alive in the task: dropping every handle would let the connection
        // shut down.
        let wg_poller = tokio::spawn(poll_wireguard(
            expected.clone(),
            tx.clone(),
            counters.0.clone(),
        ));
        let watcher = tokio::spawn(watch(
            messages,
            owned,
            expected,
            tx,
            handle,
            counters.0.clone(),
        ));
        Ok((
            DriftMonitor {
                connection,
                watcher,
                wg_poller,
                counters,
            },
            rx,
        ))
    }

    pub fn stats(&self) -> MonitorStats {
        self.counters.stats()
    }

    /// The counters, for `/metrics`.
    pub fn counters(&self) -> MonitorCounters {
        self.counters.clone()
    }
}

async fn seed(handle: &rtnetlink::Handle) -> Result<Owned, NetlinkError> {
    let mut owned = Owned::default();
    let mut links = handle.link().get().execute();
    while let Some(l) = links
        .try_next()
        .await
        .map_err(|e| NetlinkError::new("dump links for the drift monitor", e))?
    {
        owned.observe_link(&l, false);
    }
    for probe in [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ] {
        let family = probe.header.address_family;
        let mut routes = handle.route().get(probe).execute();
        while let Some(r) = routes
            .try_next()
            .await
            .map_err(|e| NetlinkError::new("dump routes for the drift monitor", e))?
        {
            if r.header.address_family == family && parse::is_trellis_route(&r) {
                owned.observe_route(&r, false);
            }
        }
    }
    Ok(owned)
}

/// How long the notification stream must be quiet after an overrun before the owned links and
/// routes are relearned: one dump after a burst, not one per lost batch.
const RESEED_AFTER: Duration = Duration::from_millis(100);

async fn watch(
    mut messages: Messages,
    mut owned: Owned,
    expected: Expected,
    tx: mpsc::Sender<()>,
    handle: rtnetlink::Handle,
    counters: Arc<Counters>,
) {
    let mut reseed = false;
    loop {
        let next = if reseed {
            match tokio::time::timeout(RESEED_AFTER, messages.next()).await {
                Ok(m) => m,
                Err(_) => {
                    // Link and route notifications may have been among the lost ones.
                    if let Ok(fresh) = seed(&handle).await {
                        // The underlay's known addresses start afresh too: a removal lost in
                        // the overrun must not hide the address's return (at most one extra
                        // pass per address).
                        owned = Owned {
                            underlay: owned.underlay,
                            ..fresh
                        };
                        reseed = false;
                    }
                    continue;
                }
            }
        } else {
            messages.next().await
        };
        let Some((msg, _)) = next else {
            return;
        };
        let relevant = match &msg.payload {
            NetlinkPayload::InnerMessage(m) => match underlay_address_change(m, &mut owned) {
                Some(relevant) => relevant,
                None => {
                    concerns_owned(m, &mut owned)
                        && !expected.get().is_some_and(|e| {
                            let agrees = expect::agrees(m, &owned, &e);
                            if agrees {
                                counters.expected.fetch_add(1, Ordering::Relaxed);
                            }
                            agrees
                        })
                }
            },
            NetlinkPayload::Overrun(_) => {
                counters.overruns.fetch_add(1, Ordering::Relaxed);
                reseed = true;
                true
            }
            _ => false,
        };
        if relevant {
            counters.relevant.fetch_add(1, Ordering::Relaxed);
            match tx.try_send(()) {
                Ok(()) | Err(mpsc::error::TrySendError::Full(())) => {}
                Err(mpsc::error::TrySendError::Closed(())) => return,
            }
        }
    }
}

/// Compare the WireGuard devices with the expected state every [`wg_ops::POLL`], while it has
/// any. The socket is opened on first need and again after a failure.
async fn poll_wireguard(expected: Expected, tx: mpsc::Sender<()>, counters: Arc<Counters>) {
    let mut socket = None;
    loop {
        tokio::time::sleep(wg_ops::POLL).await;
        let Some(want) = expected.get() else {
            continue;
        };
        let has_wg = want
            .links
            .values()
            .any(|l| matches!(l.kind, crate::dataplane::desired::LinkKind::Wireguard(_)));
        if !has_wg {
            continue;
        }
        if socket.is_none() {
            socket = super::wireguard::WgSocket::open().ok();
        }
        let Some(s) = socket.as_mut() else { continue };
        let drift = match wg_ops::drifted(s, &want) {
            Ok(d) => d,
            Err(_) => {
                socket = None;
                true
            }
        };
        if drift {
            counters.relevant.fetch_add(1, Ordering::Relaxed);
            if let Err(mpsc::error::TrySendError::Closed(())) = tx.try_send(()) {
                return;
            }
        }
    }
}

/// Grow the socket's receive buffer past `net.core.rmem_max` (`SO_RCVBUFFORCE`, needs
/// CAP_NET_ADMIN, which the agent has), else as far as allowed.
fn grow_receive_buffer(fd: std::os::fd::RawFd) {
    let size = libc::c_int::try_from(RCVBUF).unwrap_or(libc::c_int::MAX);
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live c_int; `fd` is the
        // connection's open socket.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
    use netlink_packet_route::neighbour::{NeighbourMessage, NeighbourState};
    use netlink_packet_route::RouteNetlinkMessage as M;

    use super::*;
    use crate::dataplane::netlink::parse::tests::{link, route};

    fn neigh(family: AddressFamily, index: u32, state: NeighbourState) -> NeighbourMessage {
        let mut m = NeighbourMessage::default();
        m.header.family = family;
        m.header.ifindex = index;
        m.header.state = state;
        m
    }

    fn address(index: u32, cidr: &str, flags: AddressHeaderFlags) -> AddressMessage {
        let n: IpNetwork = cidr.parse().unwrap();
        let mut m = AddressMessage::default();
        m.header.family = match n {
            IpNetwork::V4(_) => AddressFamily::Inet,
            IpNetwork::V6(_) => AddressFamily::Inet6,
        };
        m.header.index = index;
        m.header.prefix_len = n.prefix();
        m.header.flags = flags;
        m.attributes.push(AddressAttribute::Address(n.ip()));
        m.attributes.push(AddressAttribute::Local(n.ip()));
        m
    }

    #[test]
    fn the_underlays_new_and_removed_addresses_are_signalled_once() {
        let mut owned = Owned {
            underlay: Some(2),
            ..Owned::default()
        };
        let none = AddressHeaderFlags::empty();
        let mut sees = |m: M| underlay_address_change(&m, &mut owned);
        assert_eq!(
            sees(M::NewAddress(address(2, "192.168.1.5/24", none))),
            Some(true)
        );
        // The same address notified again (a lifetime refresh, a DHCP renewal): quiet.
        assert_eq!(
            sees(M::NewAddress(address(2, "192.168.1.5/24", none))),
            Some(false)
        );
        // Tentative (DAD under way), then usable: counted when usable.
        let tentative = AddressHeaderFlags::Tentative;
        assert_eq!(
            sees(M::NewAddress(address(2, "fd00::5/64", tentative))),
            Some(false)
        );
        assert_eq!(
            sees(M::NewAddress(address(2, "fd00::5/64", none))),
            Some(true)
        );
        assert_eq!(
            sees(M::NewAddress(address(2, "fe80::5/64", none))),
            Some(false)
        );
        assert_eq!(
            sees(M::DelAddress(address(2, "192.168.1.5/24", none))),
            Some(true)
        );
        // Someone else's interface: not this check's business.
        assert_eq!(sees(M::NewAddress(address(3, "10.0.0.5/24", none))), None);
        assert_eq!(sees(M::NewLink(link("eth0", 2, None))), None);
    }

    #[test]
    fn links_are_learned_and_their_entries_recognised() {
        let mut owned = Owned::default();
        let mut sees = |m: M| concerns_owned(&m, &mut owned);
        assert!(!sees(M::NewLink(link("eth0", 2, None))));
        assert!(sees(M::NewLink(link("flannel.1", 7, None))));
        let on = |i, s| M::NewNeighbour(neigh(AddressFamily::Inet, i, s));
        assert!(sees(on(7, NeighbourState::Permanent)));
        assert!(sees(on(7, NeighbourState::Reachable)));
        assert!(!sees(on(2, NeighbourState::Permanent)));
        let fdb = |s| M::NewNeighbour(neigh(AddressFamily::Bridge, 7, s));
        assert!(sees(fdb(NeighbourState::Other(0xc0))));
        // Learned MACs (Learning on) do not signal; deletions always do.
        assert!(!sees(fdb(NeighbourState::Reachable)));
        assert!(sees(M::DelNeighbour(neigh(
            AddressFamily::Bridge,
            7,
            NeighbourState::Reachable
        ))));
        // Renamed away: signalled once, then forgotten.
        assert!(sees(M::NewLink(link("old", 7, None))));
        assert!(!sees(on(7, NeighbourState::Permanent)));
        assert!(sees(M::NewLink(link("flannel.2", 8, None))));
        assert!(sees(M::DelLink(link("flannel.2", 8, None))));
        assert!(!owned.has_link(8));
    }

    #[test]
    fn our_routes_and_routes_replacing_them_are_recognised() {
        let mut owned = Owned::default();
        let mut sees = |m: M| concerns_owned(&m, &mut owned);
        assert!(!sees(M::NewRoute(route("10.244.2.0/24", 4, None))));
        assert!(sees(M::NewRoute(route("10.244.2.0/24", 116, None))));
        // `ip route replace 10.244.2.0/24 ... proto static`: notified as a static route.
        assert!(sees(M::NewRoute(route("10.244.2.0/24", 4, None))));
        // Same prefix in another table is someone else's business.
        assert!(!sees(M::NewRoute(route("10.244.2.0/24", 4, Some(100)))));
        assert!(sees(M::DelRoute(route("10.244.2.0/24", 116, None))));
        assert!(!sees(M::NewRoute(route("10.244.2.0/24", 4, None))));
    }
}

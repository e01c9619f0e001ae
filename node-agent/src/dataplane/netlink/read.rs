//! Dump what trellis owns from the kernel into a [`KernelState`] (module docs of
//! `dataplane::desired` define "owns").

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use netlink_packet_route::route::{RouteAttribute, RouteType};
use netlink_packet_route::AddressFamily;
use rtnetlink::{Handle, RouteMessageBuilder};
use trellis_common::netlink::{link_is_up, link_name};

use super::parse::{self, NeighInfo};
use super::NetlinkError;
use crate::dataplane::desired::{Fdb, KernelState, Link, Neighbour, Route};
use crate::net::{is_owned_link_name, Mac};

/// The kernel's state plus the names of every link by index, which the executor reuses.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub state: KernelState,
    /// WireGuard peers with a live session (their endpoints may have roamed).
    pub live_wg: super::wg_ops::LivePeers,
    /// Every link of the namespace (routes may leave through the underlay).
    pub names: HashMap<u32, String>,
}

fn read_err(what: &'static str) -> impl Fn(rtnetlink::Error) -> NetlinkError {
    move |e| NetlinkError::new(what, e)
}

/// What trellis owns in the kernel, as the diff compares it.
pub async fn read_actual(handle: &Handle) -> Result<KernelState, NetlinkError> {
    Ok(read_snapshot(handle).await?.state)
}

pub async fn read_snapshot(handle: &Handle) -> Result<Snapshot, NetlinkError> {
    let mut snap = Snapshot::default();
    let mut owned: HashMap<u32, String> = HashMap::new();

    let mut links = handle.link().get().execute();
    while let Some(msg) = links.try_next().await.map_err(read_err("dump links"))? {
        let Some(name) = link_name(&msg) else {
            continue;
        };
        let index = msg.header.index;
        snap.names.insert(index, name.to_string());
        if !is_owned_link_name(name) {
            continue;
        }
        owned.insert(index, name.to_string());
        snap.state.add_link(Link {
            name: name.to_string(),
            kind: parse::link_kind(&msg),
            mtu: parse::link_mtu(&msg),
            mac: parse::link_mac(&msg),
            up: link_is_up(&msg),
        });
    }

    let mut addrs = handle.address().get().execute();
    while let Some(msg) = addrs.try_next().await.map_err(read_err("dump addresses"))? {
        let Some(link) = owned.get(&msg.header.index) else {
            continue;
        };
        if let Some(addr) = parse::address(&msg) {
            if !parse::is_ipv6_link_local(addr.ip()) {
                snap.state.add_address(link, addr);
            }
        }
    }

    // A kernel without WireGuard has no WireGuard device to read.
    super::wg_ops::read_devices(&mut snap.state, &mut snap.live_wg).map_err(|e| {
        NetlinkError::Kernel {
            what: "read WireGuard devices",
            errno: e.errno(),
            detail: e.to_string(),
        }
    })?;
    read_routes(handle, &mut snap).await?;
    // Neighbours and FDB entries are read on trellis's links only: without one, no dump.
    if !owned.is_empty() {
        read_neighbours(handle, &owned, &mut snap.state).await?;
        read_fdb(handle, &owned, &mut snap.state).await?;
    }
    Ok(snap)
}

/// A main-table route as on-link decisions see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MainRoute {
    pub dst: IpNetwork,
    /// The interface, when the route has no gateway (`None`: via a gateway, via an address
    /// of the other family, several next hops, or a reject route).
    pub direct_oif: Option<u32>,
    pub metric: u32,
}

/// The main table's routes other than trellis's (unicast ones, and reject routes, which
/// reach nothing): what an on-link decision looks up, as flannel asks the kernel.
pub async fn read_main_routes(handle: &Handle) -> Result<Vec<MainRoute>, NetlinkError> {
    let mut out = Vec::new();
    for probe in route_dumps() {
        let family = probe.header.address_family;
        let mut routes = handle.route().get(probe).execute();
        while let Some(msg) = routes.try_next().await.map_err(read_err("dump routes"))? {
            let kind = msg.header.kind;
            let reject = matches!(
                kind,
                RouteType::BlackHole | RouteType::Unreachable | RouteType::Prohibit
            );
            if msg.header.address_family != family
                || (kind != RouteType::Unicast && !reject)
                || !parse::is_main_table(&msg)
                || parse::is_trellis_route(&msg)
            {
                continue;
            }
            let Some(info) = parse::route_info(&msg) else {
                continue;
            };
            let mut metric = 0;
            let mut via = false;
            for a in &msg.attributes {
                match a {
                    RouteAttribute::Priority(p) => metric = *p,
                    RouteAttribute::Via(_) => via = true,
                    _ => {}
                }
            }
            let direct = kind == RouteType::Unicast && !via && info.gateway.is_unspecified();
            out.push(MainRoute {
                dst: info.dst,
                direct_oif: info.oif.filter(|_| direct),
                metric,
            });
        }
    }
    Ok(out)
}

/// Requests dumping the IPv4, then the IPv6 routes (without a destination, rtnetlink sends a
/// dump). Without strict checking the kernel may answer a v4 dump with every family: callers
/// keep the messages of the probe's family.
fn route_dumps() -> [netlink_packet_route::route::RouteMessage; 2] {
    [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ]
}

async fn read_routes(handle: &Handle, snap: &mut Snapshot) -> Result<(), NetlinkError> {
    for probe in route_dumps() {
        let family = probe.header.address_family;
        let mut routes = handle.route().get(probe).execute();
        while let Some(msg) = routes.try_next().await.map_err(read_err("dump routes"))? {
            // Without strict checking the kernel may answer a v4 dump with every family.
            if msg.header.address_family != family || !parse::is_trellis_route(&msg) {
                continue;
            }
            let Some(info) = parse::route_info(&msg) else {
                continue;
            };
            // A route whose device we cannot name cannot equal a desired one: the diff
            // replaces it.
            let dev = info
                .oif
                .and_then(|i| snap.names.get(&i).cloned())
                .unwrap_or_default();
            snap.state.add_route(Route {
                dst: info.dst,
                gateway: info.via(),
                dev,
                onlink: info.onlink,
            });
        }
    }
    Ok(())
}

async fn read_neighbours(
    handle: &Handle,
    owned: &HashMap<u32, String>,
    state: &mut KernelState,
) -> Result<(), NetlinkError> {
    // AF_UNSPEC dumps the ARP and the NDP tables in one go.
    let mut neighs = handle.neighbours().get().execute();
    while let Some(msg) = neighs
        .try_next()
        .await
        .map_err(read_err("dump neighbours"))?
    {
        let Some(NeighInfo {
            ifindex,
            ip: Some(ip),
            mac,
        }) = parse::permanent_neighbour(&msg)
        else {
            continue;
        };
        if let Some(link) = owned.get(&ifindex) {
            state.add_neighbour(Neighbour {
                link: link.clone(),
                ip,
                mac,
            });
        }
    }
    Ok(())
}

async fn read_fdb(
    handle: &Handle,
    owned: &HashMap<u32, String>,
    state: &mut KernelState,
) -> Result<(), NetlinkError> {
    let mut seen: BTreeMap<(String, Mac), Vec<Option<IpAddr>>> = BTreeMap::new();
    let mut fdb = handle
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Bridge)
        .execute();
    while let Some(msg) = fdb.try_next().await.map_err(read_err("dump fdb"))? {
        let Some(info) = parse::permanent_fdb(&msg) else {
            continue;
        };
        if let Some(link) = owned.get(&info.ifindex) {
            seen.entry((link.clone(), info.mac))
                .or_default()
                .push(info.ip);
        }
    }
    for ((link, mac), dsts) in seen {
        // A unicast entry has one remote. Only multicast MACs can hold several (never
        // desired, so deleted whole); report those with an unspecified destination rather
        // than pick one.
        let dst = match dsts.as_slice() {
            [Some(ip)] => *ip,
            _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        };
        state.add_fdb(Fdb { link, mac, dst });
    }
    Ok(())
}

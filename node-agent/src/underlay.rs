//! Which interface carries traffic between nodes (flannel's "external
//! interface"), chosen the way flannel does: `--iface` (name or address),
//! `--iface-regex`, `--iface-can-reach`, else the default route's device.
//!
//! Selection is pure ([`select`]); [`discover`] reads the kernel.

use std::net::IpAddr;

use futures::TryStreamExt;
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{LinkAttribute, LinkFlags};
use netlink_packet_route::route::RouteAttribute;

use trellis_common::netlink::address_rank;

use crate::dataplane::netlink::read_main_routes;
use crate::view::{Underlay, UnderlayRoute};

#[derive(Debug, Clone, Default)]
pub struct IfaceOptions {
    /// Interface names or IP addresses, tried in order.
    pub iface: Vec<String>,
    /// Regular expressions matched against names and addresses, tried in order.
    pub iface_regex: Vec<String>,
    /// Use the interface the kernel would route to this address through.
    pub iface_can_reach: Option<IpAddr>,
}

/// One interface as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkFacts {
    pub name: String,
    pub index: u32,
    pub mtu: u32,
    pub up: bool,
    pub loopback: bool,
    pub addrs: Vec<IpNetwork>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnderlayError {
    #[error("--iface {0}: no such interface or address on this node")]
    NoSuchIface(String),
    #[error("--iface-regex {0:?} is not a valid regular expression: {1}")]
    BadRegex(String, String),
    #[error("no interface matches --iface-regex {0:?}")]
    NoRegexMatch(Vec<String>),
    #[error("no route to {0} (--iface-can-reach)")]
    Unreachable(IpAddr),
    #[error("no default route and no --iface given: cannot tell which interface reaches the other nodes")]
    NoDefaultRoute,
    #[error("interface {0} has no usable (global) address")]
    NoAddress(String),
    #[error("cannot read interfaces: {0}")]
    Netlink(String),
}

fn global(addr: &IpNetwork) -> bool {
    match addr.ip() {
        IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local(),
        IpAddr::V6(v6) => !v6.is_loopback() && (v6.segments()[0] & 0xffc0) != 0xfe80,
    }
}

fn to_underlay(l: &LinkFacts) -> Result<Underlay, UnderlayError> {
    let v4 = l.addrs.iter().filter(|a| global(a)).find_map(|a| match a {
        IpNetwork::V4(n) => Some(*n),
        _ => None,
    });
    let v6 = l.addrs.iter().filter(|a| global(a)).find_map(|a| match a {
        IpNetwork::V6(n) => Some(*n),
        _ => None,
    });
    if v4.is_none() && v6.is_none() {
        return Err(UnderlayError::NoAddress(l.name.clone()));
    }
    Ok(Underlay {
        name: l.name.clone(),
        index: l.index,
        mtu: l.mtu,
        addr_v4: v4,
        addr_v6: v6,
        routes: Vec::new(),
    })
}

/// Pick the underlay. `route_oif` answers "which interface index routes to
/// this address" (the default route when asked for 0.0.0.0).
pub fn select(
    links: &[LinkFacts],
    opts: &IfaceOptions,
    route_oif: impl Fn(IpAddr) -> Option<u32>,
) -> Result<Underlay, UnderlayError> {
    let usable = || links.iter().filter(|l| l.up && !l.loopback);
    for want in &opts.iface {
        let hit = match want.parse::<IpAddr>() {
            Ok(ip) => links.iter().find(|l| l.addrs.iter().any(|a| a.ip() == ip)),
            Err(_) => links.iter().find(|l| &l.name == want),
        };
        if let Some(l) = hit {
            return to_underlay(l);
        }
    }
    if !opts.iface.is_empty() {
        return Err(UnderlayError::NoSuchIface(opts.iface.join(",")));
    }
    if !opts.iface_regex.is_empty() {
        for pattern in &opts.iface_regex {
            let re = regex::Regex::new(pattern)
                .map_err(|e| UnderlayError::BadRegex(pattern.clone(), e.to_string()))?;
            // Addresses first, then names, as flannel does.
            for l in usable() {
                if l.addrs.iter().any(|a| re.is_match(&a.ip().to_string())) {
                    return to_underlay(l);
                }
            }
            for l in usable() {
                if re.is_match(&l.name) {
                    return to_underlay(l);
                }
            }
        }
        return Err(UnderlayError::NoRegexMatch(opts.iface_regex.clone()));
    }
    let (target, err) = match opts.iface_can_reach {
        Some(ip) => (ip, UnderlayError::Unreachable(ip)),
        None => (IpAddr::from([0u8; 4]), UnderlayError::NoDefaultRoute),
    };
    let oif = route_oif(target).ok_or(err.clone())?;
    let l = links.iter().find(|l| l.index == oif).ok_or(err)?;
    to_underlay(l)
}

/// Read links, addresses and routes through netlink and select.
pub async fn discover(
    h: &rtnetlink::Handle,
    opts: &IfaceOptions,
) -> Result<Underlay, UnderlayError> {
    let links = read_links(h).await?;
    let oif = match opts.iface_can_reach {
        Some(ip) => route_oif(h, ip).await,
        // The IPv4 default route, else the IPv6 one (an IPv6-only node), as flannel does.
        None => match route_oif(h, IpAddr::from([0u8; 4])).await {
            Some(oif) => Some(oif),
            None => route_oif(h, IpAddr::from([0u16; 8])).await,
        },
    };
    with_routes(h, select(&links, opts, |_| oif)?).await
}

/// The underlay interface (the same index) as it is now: its addresses and the routes
/// on-link decisions look up may have changed.
pub async fn reread(h: &rtnetlink::Handle, current: &Underlay) -> Result<Underlay, UnderlayError> {
    let links = read_links(h).await?;
    let link = links
        .iter()
        .find(|l| l.index == current.index)
        .ok_or_else(|| UnderlayError::NoSuchIface(current.name.clone()))?;
    with_routes(h, keeping(to_underlay(link)?, link, current)).await
}

/// `fresh`, but with `current`'s addresses where the interface still has them: a node whose
/// DHCP client re-adds its address, or which gains a VIP in the same subnet, keeps the
/// address it had (changing it recreates the VXLAN devices and re-points every peer).
fn keeping(mut fresh: Underlay, link: &LinkFacts, current: &Underlay) -> Underlay {
    let has = |n: IpNetwork| link.addrs.contains(&n);
    if let Some(a) = current.addr_v4.filter(|a| has(IpNetwork::V4(*a))) {
        fresh.addr_v4 = Some(a);
    }
    if let Some(a) = current.addr_v6.filter(|a| has(IpNetwork::V6(*a))) {
        fresh.addr_v6 = Some(a);
    }
    fresh
}

/// `underlay` with the main table's routes, for [`Underlay::on_link`].
async fn with_routes(
    h: &rtnetlink::Handle,
    mut underlay: Underlay,
) -> Result<Underlay, UnderlayError> {
    // A table this large (a router's) would make every plan scan it per peer: the interface's
    // prefixes decide then, as they do when the routes cannot be read.
    const MAX_ROUTES: usize = 10_000;
    match read_main_routes(h).await {
        Ok(routes) if routes.len() <= MAX_ROUTES => {
            underlay.routes = routes
                .into_iter()
                .map(|r| UnderlayRoute {
                    dst: r.dst,
                    direct: r.direct_oif == Some(underlay.index),
                    metric: r.metric,
                })
                .collect();
        }
        Ok(routes) => tracing::warn!(
            routes = routes.len(),
            "the main routing table is too large to look peers up in; on-link decisions use \
             the interface's prefixes"
        ),
        Err(e) => tracing::warn!(
            "cannot read the routing table ({e}); on-link decisions use the interface's prefixes"
        ),
    }
    Ok(underlay)
}

/// Every interface of this namespace with its addresses.
pub async fn read_links(h: &rtnetlink::Handle) -> Result<Vec<LinkFacts>, UnderlayError> {
    let nl = |e: rtnetlink::Error| UnderlayError::Netlink(e.to_string());
    let mut links = Vec::new();
    let mut stream = h.link().get().execute();
    while let Some(m) = stream.try_next().await.map_err(nl)? {
        let mut f = LinkFacts {
            name: String::new(),
            index: m.header.index,
            mtu: 1500,
            up: m.header.flags.contains(LinkFlags::Up),
            loopback: m.header.flags.contains(LinkFlags::Loopback),
            addrs: Vec::new(),
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => f.name = n.clone(),
                LinkAttribute::Mtu(v) => f.mtu = *v,
                _ => {}
            }
        }
        links.push(f);
    }
    let mut addrs = h.address().get().execute();
    let mut ranked: Vec<(u8, u32, IpNetwork)> = Vec::new();
    while let Some(m) = addrs.try_next().await.map_err(nl)? {
        let ip = m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        });
        if let Some(n) = ip.and_then(|ip| IpNetwork::new(ip, m.header.prefix_len).ok()) {
            ranked.push((address_rank(&m), m.header.index, n));
        }
    }
    // The underlay's address is its first global one: preferred primaries first, then
    // secondaries, temporaries and deprecated ones, then those still in duplicate detection.
    ranked.sort_by_key(|(rank, _, _)| *rank);
    for (_, index, n) in ranked {
        if let Some(l) = links.iter_mut().find(|l| l.index == index) {
            l.addrs.push(n);
        }
    }
    Ok(links)
}

/// `ip route get` for one address: the output interface index.
async fn route_oif(h: &rtnetlink::Handle, ip: IpAddr) -> Option<u32> {
    if ip.is_unspecified() {
        // The default route itself: dump the family's routes and take the /0 with the lowest
        // metric. The request carries no destination: rtnetlink sends a dump only then (with
        // one, it is `ip route get 0.0.0.0`, which the kernel answers with a local route).
        let req = match ip {
            IpAddr::V4(_) => rtnetlink::RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
            IpAddr::V6(_) => rtnetlink::RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
        };
        let mut best: Option<(u32, u32)> = None;
        let mut s = h.route().get(req).execute();
        while let Ok(Some(m)) = s.try_next().await {
            if m.header.destination_prefix_length != 0 || m.header.table != 254 {
                continue;
            }
            let mut oif = None;
            let mut prio = 0;
            for a in &m.attributes {
                match a {
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Priority(p) => prio = *p,
                    // An ECMP default route names its interfaces per next hop: the first.
                    RouteAttribute::MultiPath(hops) if oif.is_none() => {
                        oif = hops.first().map(|h| h.interface_index)
                    }
                    _ => {}
                }
            }
            if let Some(oif) = oif {
                if best.is_none_or(|(p, _)| prio < p) {
                    best = Some((prio, oif));
                }
            }
        }
        return best.map(|(_, oif)| oif);
    }
    let req = match ip {
        IpAddr::V4(v4) => rtnetlink::RouteMessageBuilder::<std::net::Ipv4Addr>::new()
            .destination_prefix(v4, 32)
            .build(),
        IpAddr::V6(v6) => rtnetlink::RouteMessageBuilder::<std::net::Ipv6Addr>::new()
            .destination_prefix(v6, 128)
            .build(),
    };
    let mut s = h.route().get(req).execute();
    let mut found = None;
    while let Ok(Some(m)) = s.try_next().await {
        let d = m.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        });
        let dst_len = m.header.destination_prefix_length;
        let dst = m.attributes.iter().find_map(|a| match a {
            RouteAttribute::Destination(netlink_packet_route::route::RouteAddress::Inet(v4)) => {
                Ipv4Network::new(*v4, dst_len).ok().map(IpNetwork::V4)
            }
            RouteAttribute::Destination(netlink_packet_route::route::RouteAddress::Inet6(v6)) => {
                Ipv6Network::new(*v6, dst_len).ok().map(IpNetwork::V6)
            }
            _ => None,
        });
        // Longest-prefix match among main-table routes containing the target.
        let covers = match dst {
            Some(n) => n.contains(ip),
            None => dst_len == 0,
        };
        if covers && m.header.table == 254 {
            if let Some(oif) = d {
                if found.is_none_or(|(l, _)| dst_len > l) {
                    found = Some((dst_len, oif));
                }
            }
        }
    }
    found.map(|(_, oif)| oif)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str, index: u32, addrs: &[&str]) -> LinkFacts {
        LinkFacts {
            name: name.into(),
            index,
            mtu: 1500,
            up: true,
            loopback: name == "lo",
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    fn links() -> Vec<LinkFacts> {
        vec![
            link("lo", 1, &["127.0.0.1/8"]),
            link("eth0", 2, &["192.168.10.5/24", "fe80::1/64"]),
            link("eth1", 3, &["10.0.0.5/16", "fd00::5/64"]),
        ]
    }

    #[test]
    fn default_route_device_when_nothing_is_asked() {
        let u = select(&links(), &IfaceOptions::default(), |_| Some(2)).unwrap();
        assert_eq!(u.name, "eth0");
        assert_eq!(u.addr_v4.unwrap().to_string(), "192.168.10.5/24");
        assert!(
            u.addr_v6.is_none(),
            "link-local addresses are not underlay addresses"
        );
        assert_eq!(
            select(&links(), &IfaceOptions::default(), |_| None),
            Err(UnderlayError::NoDefaultRoute)
        );
    }

    #[test]
    fn iface_by_name_or_address_in_order() {
        let o = IfaceOptions {
            iface: vec!["nope".into(), "10.0.0.5".into()],
            ..Default::default()
        };
        assert_eq!(select(&links(), &o, |_| Some(2)).unwrap().name, "eth1");
        let o = IfaceOptions {
            iface: vec!["eth1".into()],
            ..Default::default()
        };
        let u = select(&links(), &o, |_| Some(2)).unwrap();
        assert_eq!(u.addr_v6.unwrap().to_string(), "fd00::5/64");
        let o = IfaceOptions {
            iface: vec!["wlan9".into()],
            ..Default::default()
        };
        assert!(matches!(
            select(&links(), &o, |_| Some(2)),
            Err(UnderlayError::NoSuchIface(_))
        ));
    }

    #[test]
    fn regex_matches_addresses_before_names() {
        let o = IfaceOptions {
            iface_regex: vec![r"^10\.0\.".into()],
            ..Default::default()
        };
        assert_eq!(select(&links(), &o, |_| Some(2)).unwrap().name, "eth1");
        let o = IfaceOptions {
            iface_regex: vec!["^eth0$".into()],
            ..Default::default()
        };
        assert_eq!(select(&links(), &o, |_| Some(3)).unwrap().name, "eth0");
        let o = IfaceOptions {
            iface_regex: vec!["(".into()],
            ..Default::default()
        };
        assert!(matches!(
            select(&links(), &o, |_| None),
            Err(UnderlayError::BadRegex(..))
        ));
        let o = IfaceOptions {
            iface_regex: vec!["^lo$".into()],
            ..Default::default()
        };
        assert!(matches!(
            select(&links(), &o, |_| None),
            Err(UnderlayError::NoRegexMatch(_))
        ));
    }

    #[test]
    fn can_reach_uses_the_route_lookup() {
        let o = IfaceOptions {
            iface_can_reach: Some("10.0.9.9".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(select(&links(), &o, |_| Some(3)).unwrap().name, "eth1");
        assert!(matches!(
            select(&links(), &o, |_| None),
            Err(UnderlayError::Unreachable(_))
        ));
    }

    #[test]
    fn interface_without_address_is_refused() {
        let l = vec![link("eth0", 2, &["fe80::1/64"])];
        assert_eq!(
            select(&l, &IfaceOptions::default(), |_| Some(2)),
            Err(UnderlayError::NoAddress("eth0".into()))
        );
    }
}

//! The desired state of the node as plain data, and the same shape for what the kernel holds.
//!
//! `backend::plan` produces a [`DesiredState`]; the netlink executor dumps what trellis owns into
//! a [`KernelState`] and `dataplane::diff` turns the two into ops. Every collection is keyed by
//! the identity the kernel uses for the object (a route by destination, a neighbour by device and
//! IP, an FDB entry by device and MAC), so a diff is a merge of two sorted maps and two states are
//! equal exactly when the kernel would hold the same things.
//!
//! What trellis owns, so what an executor dumps into the "actual" [`KernelState`]:
//! - links whose name satisfies [`is_owned_link_name`](crate::net::is_owned_link_name);
//! - addresses on those links, except IPv6 link-local ones the kernel adds by itself;
//! - neighbour (ARP/NDP) entries and FDB entries on those links, permanent ones only;
//! - routes in the main table whose protocol is [`ROUTE_PROTOCOL`], whatever their device
//!   (host-gw routes live on the underlay interface).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ipnetwork::IpNetwork;
use trellis_common::subnet_env::SubnetEnv;

use crate::annotations::Advertisement;
use crate::firewall::rules::RuleSet;
use crate::net::{Mac, ROUTE_PROTOCOL};
use crate::wg_key::{WgKey, WgSecret};

/// Attributes of a trellis device that the kernel cannot change in place: when one of them
/// differs the device is deleted and created again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkKind {
    Vxlan(Vxlan),
    Ipip {
        /// Tunnel source address. Set so that the device does not compete with `tunl0` for
        /// packets (the kernel picks the tunnel whose local/remote match most precisely).
        local: Ipv4Addr,
    },
    /// A WireGuard device. Key and port are set through generic netlink after creation; a
    /// change recreates the device (a new key is a new identity to every peer anyway).
    Wireguard(Wireguard),
}

/// A WireGuard device's own settings (`wg set DEV private-key K listen-port P`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wireguard {
    pub private_key: WgSecret,
    pub listen_port: u16,
}

/// A VXLAN device's immutable attributes (`ip link add ... type vxlan`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vxlan {
    pub vni: u32,
    /// UDP destination (and listening) port.
    pub port: u16,
    /// Tunnel source address: the underlay interface's address of the device's family.
    pub local: IpAddr,
    /// ifindex of the underlay interface (`dev` in `ip link add ... type vxlan`).
    pub underlay_index: u32,
    pub learning: bool,
    pub gbp: bool,
}

/// A device trellis creates. Desired links are always up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub kind: LinkKind,
    pub mtu: u32,
    /// `None` in a desired link: any MAC will do (the device is only used to send).
    /// The executor always fills it in the actual state.
    pub mac: Option<Mac>,
    pub up: bool,
}

/// An address trellis puts on one of its devices (the subnet's network address as /32 or
/// /128, used as source for host-to-pod traffic).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Address {
    pub link: String,
    pub addr: IpNetwork,
}

/// A route in the main table with protocol [`ROUTE_PROTOCOL`]. Identified by its destination:
/// trellis never holds two routes to the same prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNetwork,
    /// `None`: a device route (`dev flannel-wg scope link`): WireGuard picks the peer by the
    /// packet's destination among the peers' allowed IPs.
    pub gateway: Option<IpAddr>,
    /// Output device: a trellis device, or the underlay interface for host-gw routes.
    pub dev: String,
    /// `RTNH_F_ONLINK`: the gateway is reachable on `dev` even without a covering route (the
    /// VXLAN/IPIP gateways are the peers' addresses, not on any local subnet).
    pub onlink: bool,
}

/// A permanent neighbour (ARP/NDP) entry: `ip lladdr mac dev link nud permanent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub link: String,
    pub ip: IpAddr,
    pub mac: Mac,
}

/// A permanent FDB entry on a VXLAN device: `bridge fdb add mac dev link dst ip self permanent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fdb {
    pub link: String,
    pub mac: Mac,
    pub dst: IpAddr,
}

/// A peer of a WireGuard device: `wg set LINK peer KEY endpoint E allowed-ips A...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgPeer {
    pub link: String,
    pub public_key: WgKey,
    pub endpoint: SocketAddr,
    /// Sorted, so that two peers compare equal exactly when the kernel holds the same.
    pub allowed_ips: Vec<IpNetwork>,
    /// Seconds; 0 is off.
    pub keepalive: u16,
    pub psk: Option<WgSecret>,
}

/// What trellis owns in the kernel, keyed by identity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelState {
    pub links: BTreeMap<String, Link>,
    pub addresses: BTreeSet<Address>,
    pub routes: BTreeMap<IpNetwork, Route>,
    pub neighbours: BTreeMap<(String, IpAddr), Neighbour>,
    pub fdb: BTreeMap<(String, Mac), Fdb>,
    pub wg_peers: BTreeMap<(String, WgKey), WgPeer>,
}

impl KernelState {
    /// `top`, plus whatever of `self` it has no entry for (by name, address, destination,
    /// neighbour IP or MAC): what the kernel holds after `top` was applied over `self` without
    /// deleting anything.
    pub fn overlaid_with(&self, top: &KernelState) -> KernelState {
        fn keep<K: Ord + Clone, V: Clone>(
            top: &BTreeMap<K, V>,
            base: &BTreeMap<K, V>,
        ) -> BTreeMap<K, V> {
            let mut out = top.clone();
            for (k, v) in base {
                out.entry(k.clone()).or_insert_with(|| v.clone());
            }
            out
        }
        KernelState {
            links: keep(&top.links, &self.links),
            addresses: top.addresses.union(&self.addresses).cloned().collect(),
            routes: keep(&top.routes, &self.routes),
            neighbours: keep(&top.neighbours, &self.neighbours),
            fdb: keep(&top.fdb, &self.fdb),
            wg_peers: keep(&top.wg_peers, &self.wg_peers),
        }
    }

    /// `self` (desired) with every peer entry (route, neighbour, FDB) that `actual` already
    /// holds under the same key taken from `actual`: applied over `actual`, it only adds. While
    /// the first Node list is incomplete, a Node listed early may claim what a Node not listed
    /// yet holds (a VTEP MAC, a public IP); re-pointing the existing entry then would hand an
    /// honest peer's traffic to it until the list completes.
    pub fn without_repointing(&self, actual: &KernelState) -> KernelState {
        fn existing_wins<K: Ord + Clone, V: Clone>(
            desired: &BTreeMap<K, V>,
            actual: &BTreeMap<K, V>,
        ) -> BTreeMap<K, V> {
            desired
                .iter()
                .map(|(k, v)| (k.clone(), actual.get(k).unwrap_or(v).clone()))
                .collect()
        }
        KernelState {
            links: self.links.clone(),
            addresses: self.addresses.clone(),
            routes: existing_wins(&self.routes, &actual.routes),
            neighbours: existing_wins(&self.neighbours, &actual.neighbours),
            fdb: existing_wins(&self.fdb, &actual.fdb),
            wg_peers: existing_wins(&self.wg_peers, &actual.wg_peers),
        }
    }

    pub fn add_link(&mut self, link: Link) {
        self.links.insert(link.name.clone(), link);
    }

    pub fn add_address(&mut self, link: &str, addr: IpNetwork) {
        self.addresses.insert(Address {
            link: link.to_string(),
            addr,
        });
    }

    pub fn add_route(&mut self, route: Route) {
        self.routes.insert(route.dst, route);
    }

    pub fn add_neighbour(&mut self, n: Neighbour) {
        self.neighbours.insert((n.link.clone(), n.ip), n);
    }

    pub fn add_fdb(&mut self, f: Fdb) {
        self.fdb.insert((f.link.clone(), f.mac), f);
    }

    pub fn add_wg_peer(&mut self, mut p: WgPeer) {
        p.allowed_ips.sort();
        p.allowed_ips.dedup();
        self.wg_peers.insert((p.link.clone(), p.public_key), p);
    }

    /// Number of kernel objects, for logs and metrics.
    pub fn len(&self) -> usize {
        self.links.len()
            + self.addresses.len()
            + self.routes.len()
            + self.neighbours.len()
            + self.fdb.len()
            + self.wg_peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Everything the agent must make true on this node, computed by `backend::plan`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredState {
    /// Devices, addresses, routes, neighbours and FDB entries (reconciled by netlink).
    pub kernel: KernelState,
    /// Masquerade and forward rules (resynced whole by the iptables or nftables executor).
    pub firewall: RuleSet,
    /// Content of `/run/flannel/subnet.env`.
    pub subnet_env: SubnetEnv,
    /// The pod MTU: the smallest MTU of the devices the configured backend uses.
    pub mtu: u32,
    /// What this node advertises in its Node annotations.
    pub advertisement: Advertisement,
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            LinkKind::Vxlan(v) => write!(
                f,
                "{} type vxlan id {} dstport {} local {} dev-index {}{}{}",
                self.name,
                v.vni,
                v.port,
                v.local,
                v.underlay_index,
                if v.learning {
                    " learning"
                } else {
                    " nolearning"
                },
                if v.gbp { " gbp" } else { "" },
            )?,
            LinkKind::Ipip { local } => write!(f, "{} type ipip local {local}", self.name)?,
            LinkKind::Wireguard(w) => write!(
                f,
                "{} type wireguard listen-port {}",
                self.name, w.listen_port
            )?,
        }
        write!(f, " mtu {}", self.mtu)?;
        if let Some(mac) = self.mac {
            write!(f, " address {mac}")?;
        }
        if !self.up {
            write!(f, " down")?;
        }
        Ok(())
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} dev {}", self.addr, self.link)
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.gateway {
            Some(gw) => write!(f, "{} via {gw} dev {}", self.dst, self.dev)?,
            None => write!(f, "{} dev {} scope link", self.dst, self.dev)?,
        }
        if self.onlink {
            write!(f, " onlink")?;
        }
        write!(f, " proto {ROUTE_PROTOCOL}")
    }
}

impl fmt::Display for Neighbour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} lladdr {} dev {} permanent",
            self.ip, self.mac, self.link
        )
    }
}

impl fmt::Display for WgPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "peer {} dev {} endpoint {} allowed-ips ",
            self.public_key, self.link, self.endpoint
        )?;
        for (i, a) in self.allowed_ips.iter().enumerate() {
            write!(f, "{}{a}", if i == 0 { "" } else { "," })?;
        }
        if self.keepalive != 0 {
            write!(f, " persistent-keepalive {}", self.keepalive)?;
        }
        if self.psk.is_some() {
            write!(f, " preshared-key (set)")?;
        }
        Ok(())
    }
}

impl fmt::Display for Fdb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} dev {} dst {} self permanent",
            self.mac, self.link, self.dst
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn while_the_list_is_incomplete_existing_peer_entries_are_not_repointed() {
        let fdb = |mac: u8, dst: &str| Fdb {
            link: "flannel.1".into(),
            mac: Mac([0x0e, 0, 0, 0, 0, mac]),
            dst: dst.parse().unwrap(),
        };
        let mut actual = KernelState::default();
        actual.add_fdb(fdb(2, "192.168.50.12"));
        // A thief listed before its victim claims the victim's MAC; a new peer is listed too.
        let mut desired = KernelState::default();
        desired.add_fdb(fdb(2, "192.168.50.99"));
        desired.add_fdb(fdb(3, "192.168.50.13"));
        let safe = desired.without_repointing(&actual);
        let key = |m: u8| ("flannel.1".to_string(), Mac([0x0e, 0, 0, 0, 0, m]));
        assert_eq!(safe.fdb[&key(2)].dst.to_string(), "192.168.50.12", "kept");
        assert_eq!(safe.fdb[&key(3)].dst.to_string(), "192.168.50.13", "added");
        assert_eq!(safe.fdb.len(), 2);
    }

    #[test]
    fn overlay_keeps_what_the_top_lacks_and_takes_the_top_where_both_have_it() {
        let route = |dst: &str, gw: &str| Route {
            dst: dst.parse().unwrap(),
            gateway: Some(gw.parse().unwrap()),
            dev: "flannel.1".into(),
            onlink: true,
        };
        let mut base = KernelState::default();
        base.add_route(route("10.244.4.0/24", "10.244.4.0"));
        base.add_route(route("10.244.3.0/24", "10.244.9.0"));
        base.add_address("flannel.1", "10.244.1.0/32".parse().unwrap());
        let mut top = KernelState::default();
        top.add_route(route("10.244.3.0/24", "10.244.3.0"));
        top.add_address("flannel.1", "10.244.1.0/32".parse().unwrap());
        let o = base.overlaid_with(&top);
        assert_eq!(o.routes.len(), 2);
        assert_eq!(
            o.routes[&"10.244.3.0/24".parse().unwrap()]
                .gateway
                .unwrap()
                .to_string(),
            "10.244.3.0",
            "the top wins"
        );
        assert!(
            o.routes.contains_key(&"10.244.4.0/24".parse().unwrap()),
            "kept"
        );
        assert_eq!(o.addresses.len(), 1);
    }

    #[test]
    fn entries_render_like_ip_commands() {
        let r = Route {
            dst: "10.244.2.0/24".parse().unwrap(),
            gateway: Some("10.244.2.0".parse().unwrap()),
            dev: "flannel.1".into(),
            onlink: true,
        };
        assert_eq!(
            r.to_string(),
            "10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink proto 116"
        );
        let n = Neighbour {
            link: "flannel.1".into(),
            ip: "10.244.2.0".parse().unwrap(),
            mac: Mac([2, 0, 0, 0, 0, 1]),
        };
        assert_eq!(
            n.to_string(),
            "10.244.2.0 lladdr 02:00:00:00:00:01 dev flannel.1 permanent"
        );
    }
}

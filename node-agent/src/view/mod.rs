//! `ClusterView`: this node's lease plus one compact [`Peer`] per remote Node.
//!
//! The Node watcher feeds it [`NodeInfo`]s ([`ClusterView::upsert_node`] says whether anything
//! planning depends on changed, so status heartbeats do not trigger reconciles). Each Node is
//! parsed once when it changes; the checks that involve the config or other Nodes (podCIDR
//! inside the Network, overlaps, duplicate public IPs and VTEP MACs, endpoints that cannot
//! be reached) run in [`ClusterView::resolve`], because removing one Node can make another
//! valid again.
//!
//! Conflicts are settled the same way on every node of the cluster, so all of them program the
//! same winner: the older claim wins, then the lexicographically first name; the local node
//! always wins against a peer. Each claim (a podCIDR, a public IP, a VTEP MAC on a VNI) is
//! dated on its own (see `claims`): as old as its Node's `creationTimestamp`, unless this agent
//! saw the Node start claiming it, and a conflict compares the dates of the contested claim
//! only. Without that, a long-registered Node that starts advertising a younger node's subnet,
//! address or MAC would take it over, and a holder that changed anything else would lose it.

mod claims;
mod endpoint;
mod lease;
mod peer;
mod skip;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

pub use peer::{parse_pod_cidrs, NodeInfo, Peer};
pub use skip::{Missing, SkipLog, SkipReason, Skipped};

use crate::annotations::{AnnotationKeys, PeerBackend, VxlanData};
use crate::config::{BackendConfig, NetConfig};
use crate::net::{Family, Mac};
use crate::wg_key::{WgKey, WgKeyPair};
use claims::{Claim, ClaimDates};

/// How many VXLAN VNIs other than our own are served at once. A VNI change in flight needs
/// one (peers still on the old VNI, or already on the new one); each costs a VXLAN device on
/// every node, so a Node cannot make the cluster create devices without bound.
pub const MAX_FOREIGN_VNIS: usize = 2;

/// The interface that carries trellis's traffic between nodes (flannel's "external interface").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay {
    pub name: String,
    pub index: u32,
    pub mtu: u32,
    /// The interface's IPv4 address and prefix: the tunnel source, and the prefix defines the
    /// L2 segment for host-gw and DirectRouting.
    pub addr_v4: Option<Ipv4Network>,
    pub addr_v6: Option<Ipv6Network>,
    /// The main table's routes as read with the interface (trellis's own left out), for
    /// [`Underlay::on_link`]'s lookup. Empty when not read (the dump failed, or the table is
    /// a router's, over 10 000 routes): the interface's prefixes decide then.
    pub routes: Vec<UnderlayRoute>,
}

/// A route of the main table, as far as on-link decisions need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnderlayRoute {
    pub dst: IpNetwork,
    /// No gateway, out of the underlay interface: its destinations are on the link.
    pub direct: bool,
    pub metric: u32,
}

impl Underlay {
    /// Whether `ip` (not ourselves) is inside our prefix, and whether it is our address.
    fn ours(&self, ip: IpAddr) -> (bool, bool) {
        let check =
            |net: Option<IpNetwork>| net.map_or((false, false), |a| (a.contains(ip), a.ip() == ip));
        match ip {
            IpAddr::V4(_) => check(self.addr_v4.map(IpNetwork::V4)),
            IpAddr::V6(_) => check(self.addr_v6.map(IpNetwork::V6)),
        }
    }

    /// Whether DirectRouting may send to `ip` without encapsulation, as flannel decides it
    /// (`ip.DirectRouting`: a route lookup): the route the kernel would take toward `ip` (the
    /// most specific, then the lowest metric) has no gateway and leaves through the underlay.
    /// So a peer behind a router is encapsulated even inside our prefix, and one reached by a
    /// connected route of another prefix is not. Without routes read, our prefix decides.
    pub fn on_link(&self, ip: IpAddr) -> bool {
        let (inside, own) = self.ours(ip);
        if own {
            return false;
        }
        let best = self
            .routes
            .iter()
            .filter(|r| r.dst.contains(ip))
            .min_by_key(|r| (std::cmp::Reverse(r.dst.prefix()), r.metric));
        best.map_or(inside, |r| r.direct)
    }

    /// Whether a host-gw route `via ip dev <underlay>` can be programmed: what the kernel
    /// itself asks of a gateway (flannel's host-gw checks nothing more): inside our prefix, or
    /// covered by any route without gateway out of the underlay.
    pub fn reachable_as_gateway(&self, ip: IpAddr) -> bool {
        let (inside, own) = self.ours(ip);
        !own && (inside || self.routes.iter().any(|r| r.direct && r.dst.contains(ip)))
    }
}

/// This node's own side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalLease {
    pub node_name: String,
    /// This node's `spec.podCIDRs`.
    pub subnet_v4: Option<Ipv4Network>,
    pub subnet_v6: Option<Ipv6Network>,
    /// The addresses peers use to reach us: [`Self::public_ip_override_v4`] if set, else the
    /// underlay's (kept so by [`LocalLease::set_underlay`] and [`ClusterView::upsert_node`]).
    pub public_ip_v4: Option<Ipv4Addr>,
    pub public_ip_v6: Option<Ipv6Addr>,
    /// The operator's choice on our own Node (`public-ip-overwrite`, else `node-public-ip`).
    pub public_ip_override_v4: Option<Ipv4Addr>,
    pub public_ip_override_v6: Option<Ipv6Addr>,
    pub underlay: Underlay,
    /// MACs of `flannel.<VNI>` and `flannel-v6.<VNI>`; must be stable across restarts (reuse
    /// `annotations::advertised_vtep_macs`, else `Mac::derived`).
    pub vtep_mac_v4: Mac,
    pub vtep_mac_v6: Mac,
    /// This node's WireGuard key pair, from the key file (`None` when it could not be read
    /// or written: WireGuard cannot be used then, everything else can).
    pub wg_key: Option<WgKeyPair>,
    /// Whether the kernel had WireGuard when the agent started (its generic netlink family
    /// answered). Without it WireGuard peers are skipped, not retried on every pass.
    pub wireguard_kernel: bool,
}

/// The peers to program, and the Nodes that are not programmed with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved<'a> {
    /// Sorted by name.
    pub peers: Vec<&'a Peer>,
    /// Sorted by node name.
    pub skipped: Vec<Skipped>,
}

#[derive(Debug, Clone)]
pub struct ClusterView {
    local: LocalLease,
    keys: AnnotationKeys,
    nodes: HashMap<Box<str>, Result<Peer, SkipReason>>,
    /// When each Node took each claim, where this agent saw it happen.
    claimed_at: ClaimDates,
    /// What of our own Node could not be followed, as last logged.
    own_problems: Vec<String>,
}

impl ClusterView {
    pub fn new(local: LocalLease, keys: AnnotationKeys) -> Self {
        ClusterView {
            local,
            keys,
            nodes: HashMap::new(),
            claimed_at: ClaimDates::default(),
            own_problems: Vec::new(),
        }
    }

    pub fn local(&self) -> &LocalLease {
        &self.local
    }

    pub fn keys(&self) -> &AnnotationKeys {
        &self.keys
    }

    /// Add or update a Node. Returns whether the view changed (a replan is needed). The local
    /// node is ignored here: it is described by the lease.
    pub fn upsert_node(&mut self, node: &NodeInfo) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        self.upsert_node_at(node, now)
    }

    /// [`ClusterView::upsert_node`] at a given time (Unix seconds), which dates a claim the
    /// Node changes.
    pub fn upsert_node_at(&mut self, node: &NodeInfo, now_unix: i64) -> bool {
        if node.name == self.local.node_name {
            let (changed, problems) = self.local.follow_node(node, &self.keys);
            self.report_own_problems(problems);
            return changed;
        }
        let entry = Peer::from_node(node, &self.keys);
        let old = self.nodes.get(node.name.as_str());
        if old == Some(&entry) {
            return false;
        }
        self.claimed_at
            .observe(&node.name, old, &entry, node.created_unix, now_unix);
        self.nodes.insert(node.name.as_str().into(), entry);
        true
    }

    /// The underlay interface as read now (its addresses may have changed). Returns whether
    /// the lease changed.
    pub fn set_underlay(&mut self, underlay: Underlay) -> bool {
        self.local.set_underlay(underlay)
    }

    /// Logged once per new set of problems: the own Node is delivered again on every status
    /// update.
    fn report_own_problems(&mut self, problems: Vec<String>) {
        if problems != self.own_problems {
            for p in &problems {
                tracing::warn!("{p}");
            }
            self.own_problems = problems;
        }
    }

    /// Forget a deleted Node. Returns whether it was known.
    pub fn remove_node(&mut self, name: &str) -> bool {
        self.claimed_at.forget(name);
        self.nodes.remove(name).is_some()
    }

    /// Keep only the Nodes for which `keep` is true (after a relist: drop those not listed).
    /// Returns whether any was dropped.
    pub fn retain_nodes(&mut self, mut keep: impl FnMut(&str) -> bool) -> bool {
        let before = self.nodes.len();
        self.nodes.retain(|name, _| keep(name));
        let nodes = &self.nodes;
        self.claimed_at.retain(|name| nodes.contains_key(name));
        before != self.nodes.len()
    }

    /// Number of remote Nodes known (programmed or not).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// A remote Node's entry: the peer, or why it cannot be one on its own.
    pub fn node(&self, name: &str) -> Option<&Result<Peer, SkipReason>> {
        self.nodes.get(name)
    }

    /// Apply the config- and cluster-wide checks. O(n log n) in the number of Nodes.
    ///
    /// Nodes are considered from the one whose newest claim is oldest. A Node that collides
    /// with one accepted before it wins if its own claim to what they share is older (the
    /// accepted one then loses everything: a peer is programmed whole or not at all), else it
    /// is skipped.
    pub fn resolve(&self, config: &NetConfig) -> Resolved<'_> {
        let mut skipped = Vec::new();
        let mut candidates = Vec::with_capacity(self.nodes.len());
        for (name, entry) in &self.nodes {
            match entry {
                Ok(p) => candidates.push((self.claimed_at.newest(p), p)),
                Err(reason) => skipped.push(Skipped {
                    node: name.to_string(),
                    reason: reason.clone(),
                }),
            }
        }
        // Names are unique: an unstable sort gives the same order.
        candidates.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.name.cmp(&b.1.name)));

        let mut taken = Taken::default();
        let mut accepted: HashMap<&str, &Peer> = HashMap::with_capacity(candidates.len());
        for (_, p) in candidates {
            if let Err(reason) = self.check(p, config, &taken) {
                skipped.push(Skipped {
                    node: p.name.to_string(),
                    reason,
                });
                continue;
            }
            let conflicts = taken.conflicts(p, config);
            match conflicts.iter().find(|c| !self.wins(p, c, &accepted)) {
                Some(lost) => skipped.push(Skipped {
                    node: p.name.to_string(),
                    reason: lost.reason_for(p, lost.holder),
                }),
                None => {
                    for c in &conflicts {
                        let Some(q) = accepted.remove(c.holder) else {
                            continue; // beaten on an earlier conflict already
                        };
                        taken.remove(q, config);
                        skipped.push(Skipped {
                            node: q.name.to_string(),
                            reason: c.reason_for(q, &p.name),
                        });
                    }
                    taken.insert(p, config);
                    accepted.insert(&p.name, p);
                }
            }
        }
        let mut peers: Vec<&Peer> = accepted.into_values().collect();
        peers.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        skipped.sort_by(|a, b| a.node.cmp(&b.node));
        Resolved { peers, skipped }
    }

    /// Whether `p` beats the holder in conflict `c`: its claim to what they share is older,
    /// or as old and its name first.
    fn wins(&self, p: &Peer, c: &Conflict<'_>, accepted: &HashMap<&str, &Peer>) -> bool {
        let Some(q) = accepted.get(c.holder) else {
            return true;
        };
        let mine = (self.claimed_at.date(p, &c.mine), &*p.name);
        let theirs = (self.claimed_at.date(q, &c.theirs), &*q.name);
        mine < theirs
    }

    /// One family of the cluster network (`network`): the peer has a subnet in it, off this
    /// node's, and a public IP that is usable and not this node's (`own_ips`).
    fn check_family(
        &self,
        p: &Peer,
        family: Family,
        network: IpNetwork,
        own_ips: &[Option<IpAddr>],
    ) -> Result<(), SkipReason> {
        let local = &self.local;
        let (subnet, ip) = p.address(family)?;
        usable(ip, &local.underlay)?;
        let (within, local_subnet) = match (network, subnet) {
            (IpNetwork::V4(n), IpNetwork::V4(s)) => (
                n.is_supernet_of(s),
                local.subnet_v4.filter(|l| l.overlaps(s)).map(IpNetwork::V4),
            ),
            (IpNetwork::V6(n), IpNetwork::V6(s)) => (
                n.is_supernet_of(s),
                local.subnet_v6.filter(|l| l.overlaps(s)).map(IpNetwork::V6),
            ),
            // Peer::address gives the family asked for.
            _ => (false, None),
        };
        if !within {
            return Err(SkipReason::OutsideNetwork { subnet, network });
        }
        if let Some(l) = local_subnet {
            return Err(SkipReason::OverlapsLocal { subnet, local: l });
        }
        not_ours(ip, own_ips)
    }

    /// Everything but collisions with other peers: what the Node alone, the config and this
    /// node can tell.
    fn check(&self, p: &Peer, config: &NetConfig, taken: &Taken<'_>) -> Result<(), SkipReason> {
        let local = &self.local;
        let own_ips = [
            local.public_ip_v4.map(IpAddr::V4),
            local.public_ip_v6.map(IpAddr::V6),
            local.underlay.addr_v4.map(|a| IpAddr::V4(a.ip())),
            local.underlay.addr_v6.map(|a| IpAddr::V6(a.ip())),
        ];
        if let Some(network) = config.ipv4() {
            self.check_family(p, Family::V4, IpNetwork::V4(network), &own_ips)?;
        }
        for vni in foreign_vnis(p, config) {
            if !taken.foreign_vnis.contains(&vni) && taken.foreign_vnis.len() >= MAX_FOREIGN_VNIS {
                return Err(SkipReason::TooManyVnis {
                    vni,
                    max: MAX_FOREIGN_VNIS,
                });
            }
        }
        if let Some(network) = config.ipv6() {
            self.check_family(p, Family::V6, IpNetwork::V6(network), &own_ips)?;
        }
        let own_wg = local.wg_key.map(|k| k.public);
        if let Some(key) = p.backend.wireguard_keys().find(|k| Some(*k) == own_wg) {
            return Err(SkipReason::WgKeyIsLocal { key });
        }
        for (family, data) in vtep_claims(p, config) {
            let own = match family {
                Family::V4 => local.vtep_mac_v4,
                Family::V6 => local.vtep_mac_v6,
            };
            if data.vtep_mac == own {
                return Err(SkipReason::VtepMacIsLocal { mac: own });
            }
        }
        Ok(())
    }
}

fn usable(ip: IpAddr, underlay: &Underlay) -> Result<(), SkipReason> {
    match endpoint::unusable(ip, underlay) {
        Some(why) => Err(SkipReason::UnusablePublicIp { ip, why }),
        None => Ok(()),
    }
}

/// The VXLAN identities a peer claims for the families the config enables: each programs an
/// FDB entry keyed by its MAC on that family's device for its VNI.
fn vtep_claims(p: &Peer, config: &NetConfig) -> impl Iterator<Item = (Family, VxlanData)> {
    let (v4, v6) = match p.backend {
        PeerBackend::Vxlan { v4, v6 } => (v4, v6),
        _ => (None, None),
    };
    let v4 = v4.filter(|_| config.ipv4().is_some());
    let v6 = v6.filter(|_| config.ipv6().is_some());
    [(Family::V4, v4), (Family::V6, v6)]
        .into_iter()
        .filter_map(|(f, d)| d.map(|d| (f, d)))
}

/// The VXLAN VNIs a peer advertises that differ from our configured one.
fn foreign_vnis(p: &Peer, config: &NetConfig) -> impl Iterator<Item = u32> {
    let own = match &config.backend {
        BackendConfig::Vxlan(v) => Some(v.vni),
        _ => None,
    };
    let vnis = match p.backend {
        PeerBackend::Vxlan { v4, v6 } => [v4.map(|d| d.vni), v6.map(|d| d.vni)],
        _ => [None, None],
    };
    vnis.into_iter().flatten().filter(move |v| Some(*v) != own)
}

fn not_ours(ip: IpAddr, own: &[Option<IpAddr>]) -> Result<(), SkipReason> {
    if own.contains(&Some(ip)) {
        return Err(SkipReason::PublicIpIsLocal { ip });
    }
    Ok(())
}

fn v6_range(n: Ipv6Network) -> (u128, u128) {
    let start = u128::from(n.network());
    let host_bits = 128 - u32::from(n.prefix());
    let span = if host_bits == 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    (start, start | span)
}

/// What accepted peers hold, to find conflicts in O(log n).
#[derive(Default)]
struct Taken<'a> {
    /// VXLAN VNIs of accepted peers other than our own (at most MAX_FOREIGN_VNIS).
    foreign_vnis: Vec<u32>,
    /// Accepted subnets as disjoint ranges: start -> (end, node).
    v4: BTreeMap<u32, (u32, &'a str)>,
    v6: BTreeMap<u128, (u128, &'a str)>,
    ips: HashMap<IpAddr, &'a str>,
    /// VTEP MACs of accepted VXLAN peers, per device (family and VNI).
    macs: HashMap<(Family, u32, Mac), &'a str>,
    /// WireGuard public keys of accepted peers.
    wg_keys: HashMap<WgKey, &'a str>,
    /// Accepted subnets by node, to name them in a skip reason.
    subnets_v4: HashMap<&'a str, Ipv4Network>,
    subnets_v6: HashMap<&'a str, Ipv6Network>,
}

impl<'a> Taken<'a> {
    /// What `p` shares with accepted peers (several, when its subnet spans theirs).
    fn conflicts(&self, p: &Peer, config: &NetConfig) -> Vec<Conflict<'a>> {
        let mut out = Vec::new();
        if config.ipv4().is_some() {
            if let Some(s) = p.subnet_v4 {
                let range = (u32::from(s.network()), u32::from(s.broadcast()));
                let held = (&self.v4, &self.subnets_v4);
                subnet_conflicts(held, range, s, Claim::SubnetV4, &mut out);
            }
            if let Some(ip) = p.public_ip_v4 {
                same_claim(self.ips.get(&IpAddr::V4(ip)), Claim::IpV4(ip), &mut out);
            }
        }
        if config.ipv6().is_some() {
            if let Some(s) = p.subnet_v6 {
                let held = (&self.v6, &self.subnets_v6);
                subnet_conflicts(held, v6_range(s), s, Claim::SubnetV6, &mut out);
            }
            if let Some(ip) = p.public_ip_v6 {
                same_claim(self.ips.get(&IpAddr::V6(ip)), Claim::IpV6(ip), &mut out);
            }
        }
        for key in p.backend.wireguard_keys() {
            same_claim(self.wg_keys.get(&key), Claim::WgKey(key), &mut out);
        }
        for (family, data) in vtep_claims(p, config) {
            let holder = self.macs.get(&(family, data.vni, data.vtep_mac));
            same_claim(
                holder,
                Claim::VtepMac(family, data.vni, data.vtep_mac),
                &mut out,
            );
        }
        out
    }

    /// Undo [`Taken::insert`] for a peer that lost a claim after all (its foreign VNIs stay
    /// counted: the bound only gets stricter).
    fn remove(&mut self, q: &Peer, config: &NetConfig) {
        let mine = |name: &str| name == &*q.name;
        self.v4.retain(|_, (_, n)| !mine(n));
        self.v6.retain(|_, (_, n)| !mine(n));
        self.subnets_v4.remove(&*q.name);
        self.subnets_v6.remove(&*q.name);
        self.ips.retain(|_, n| !mine(n));
        self.wg_keys.retain(|_, n| !mine(n));
        for (family, data) in vtep_claims(q, config) {
            let key = (family, data.vni, data.vtep_mac);
            if self.macs.get(&key).is_some_and(|n| mine(n)) {
                self.macs.remove(&key);
            }
        }
    }

    fn insert(&mut self, p: &'a Peer, config: &NetConfig) {
        for key in p.backend.wireguard_keys() {
            self.wg_keys.insert(key, &p.name);
        }
        for (family, data) in vtep_claims(p, config) {
            self.macs.insert((family, data.vni, data.vtep_mac), &p.name);
        }
        for vni in foreign_vnis(p, config) {
            if !self.foreign_vnis.contains(&vni) {
                self.foreign_vnis.push(vni);
            }
        }
        if config.ipv4().is_some() {
            if let Some(s) = p.subnet_v4 {
                self.v4
                    .insert(u32::from(s.network()), (u32::from(s.broadcast()), &p.name));
                self.subnets_v4.insert(&p.name, s);
            }
            if let Some(ip) = p.public_ip_v4 {
                self.ips.insert(IpAddr::V4(ip), &p.name);
            }
        }
        if config.ipv6().is_some() {
            if let Some(s) = p.subnet_v6 {
                let (start, end) = v6_range(s);
                self.v6.insert(start, (end, &p.name));
                self.subnets_v6.insert(&p.name, s);
            }
            if let Some(ip) = p.public_ip_v6 {
                self.ips.insert(IpAddr::V6(ip), &p.name);
            }
        }
    }
}

/// The accepted ranges overlapping `[start, end]`: accepted ranges are disjoint, so sorted
/// by start they are sorted by end too, and the overlapping ones are the last few starting at
/// or before `end`.
/// Accepted subnets of one family: disjoint ranges (start -> (end, node)) and the subnet of
/// each node.
type HeldSubnets<'t, 'a, T, N> = (&'t BTreeMap<T, (T, &'a str)>, &'t HashMap<&'a str, N>);

/// The conflicts of subnet `mine` (spanning `range`) with the accepted subnets it overlaps.
fn subnet_conflicts<'a, T: Ord + Copy, N: Copy>(
    (ranges, subnets): HeldSubnets<'_, 'a, T, N>,
    (start, end): (T, T),
    mine: N,
    claim: fn(N) -> Claim,
    out: &mut Vec<Conflict<'a>>,
) {
    for holder in overlapping(ranges, start, end) {
        let theirs = subnets.get(holder).copied().map_or(claim(mine), claim);
        out.push(Conflict {
            holder,
            mine: claim(mine),
            theirs,
        });
    }
}

/// A claim only one peer may hold (a public IP, a VTEP MAC): a conflict with its holder.
fn same_claim<'a>(holder: Option<&&'a str>, claim: Claim, out: &mut Vec<Conflict<'a>>) {
    if let Some(&holder) = holder {
        out.push(Conflict {
            holder,
            mine: claim,
            theirs: claim,
        });
    }
}

fn overlapping<'a, T: Ord + Copy>(
    ranges: &BTreeMap<T, (T, &'a str)>,
    start: T,
    end: T,
) -> Vec<&'a str> {
    ranges
        .range(..=end)
        .rev()
        .take_while(|(_, (e, _))| *e >= start)
        .map(|(_, (_, name))| *name)
        .collect()
}

/// A peer colliding with an accepted one: what each claims of what they share.
#[derive(Debug)]
struct Conflict<'a> {
    holder: &'a str,
    mine: Claim,
    theirs: Claim,
}

impl Conflict<'_> {
    /// Why `loser` is skipped, in favour of `winner`.
    fn reason_for(&self, loser: &Peer, winner: &str) -> SkipReason {
        let other = winner.to_string();
        let claim = if *loser.name == *self.holder {
            self.theirs
        } else {
            self.mine
        };
        match claim {
            Claim::SubnetV4(subnet) => SkipReason::OverlapsPeer {
                subnet: subnet.into(),
                other,
            },
            Claim::SubnetV6(subnet) => SkipReason::OverlapsPeer {
                subnet: subnet.into(),
                other,
            },
            Claim::IpV4(ip) => SkipReason::DuplicatePublicIp {
                ip: IpAddr::V4(ip),
                other,
            },
            Claim::IpV6(ip) => SkipReason::DuplicatePublicIp {
                ip: IpAddr::V6(ip),
                other,
            },
            Claim::VtepMac(_, vni, mac) => SkipReason::DuplicateVtepMac { mac, vni, other },
            Claim::WgKey(key) => SkipReason::DuplicateWgKey { key, other },
        }
    }
}

#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
mod tests;

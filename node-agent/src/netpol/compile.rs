//! Policies, pods and namespaces in; the `inet trellis-netpol` table out. Pure.
//!
//! Shape of the table (see docs/NETWORK-POLICY.md):
//! - two base chains on the forward hook: `from-pods` (egress, priority filter) and
//!   `to-pods` (ingress, filter + 1). Each accepts established and related packets, then
//!   looks the pod address up in a verdict map (`from-pods/v4` …) holding only this node's
//!   isolated pods. An `accept` ends only its own base chain, so a new connection between two
//!   pods of this node passes the source's egress and then the destination's ingress;
//! - one chain per distinct combination of policies isolating a pod (`class-in/<hash>`):
//!   a jump to each policy's chain, then a reject. Pods selected by the same policies share
//!   it, so rules grow with pods plus policies, not with their product;
//! - one chain per policy and direction (`pol/<ns>/<name>/in`): one rule per peer family and
//!   port entry, accepting on a match; peers are interval sets of addresses of pods anywhere
//!   in the cluster and of ipBlocks (minus their exceptions).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::inputs::{PodInfo, NAME_LABEL};
use super::policy::{Peer, Policy, PortRef, PortSpec, Rule};
use super::ranges::{normalise, subtract, Range};
use super::ruleset::{AddrSet, Chain, JumpMap, Ruleset};
use super::selector::Labels;

pub const FROM_PODS: &str = "from-pods";
pub const TO_PODS: &str = "to-pods";
const EGRESS_BASE: &str = "type filter hook forward priority filter; policy accept;";
const INGRESS_BASE: &str = "type filter hook forward priority filter + 1; policy accept;";
const ESTABLISHED: &str = "ct state established,related accept";
pub const REJECT: &str = "reject with icmpx admin-prohibited";

pub struct Inputs<'a> {
    /// This node's name: only its pods are policed here.
    pub node: &'a str,
    pub pods: &'a BTreeMap<(String, String), PodInfo>,
    pub namespaces: &'a BTreeMap<String, Labels>,
    /// In the order of their namespace and name (as the store keeps them): names of chains
    /// follow it when hashes collide.
    pub policies: &'a [&'a Policy],
}

/// Which policies isolate one local pod, for `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policed {
    pub pod: String,
    pub ingress: Vec<String>,
    pub egress: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compiled {
    pub ruleset: Ruleset,
    pub policed: Vec<Policed>,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Dir {
    In,
    Out,
}

impl Dir {
    fn tag(self) -> &'static str {
        match self {
            Dir::In => "in",
            Dir::Out => "out",
        }
    }

    /// The address a peer is matched on, and the one a named port's pod is.
    fn peer_field(self) -> &'static str {
        match self {
            Dir::In => "saddr",
            Dir::Out => "daddr",
        }
    }
}

pub fn compile(inp: &Inputs) -> Compiled {
    let ctx = Ctx::new(inp);
    let mut rs = base_ruleset();
    let mut policed = Vec::new();
    let mut used: BTreeSet<(usize, Dir)> = BTreeSet::new();
    for pod in ctx.local_pods() {
        let select = |dir: Dir| -> Vec<usize> {
            ctx.policies
                .iter()
                .enumerate()
                .filter(|(_, p)| {
                    p.namespace == pod.namespace && p.pod_selector.matches(&pod.labels)
                })
                .filter(|(_, p)| if dir == Dir::In { p.ingress } else { p.egress })
                .map(|(i, _)| i)
                .collect()
        };
        let (ins, outs) = (select(Dir::In), select(Dir::Out));
        if ins.is_empty() && outs.is_empty() {
            continue;
        }
        for (dir, pols) in [(Dir::In, &ins), (Dir::Out, &outs)] {
            if pols.is_empty() {
                continue;
            }
            let class = ctx.class_chain(dir, pols, &mut rs);
            used.extend(pols.iter().map(|i| (*i, dir)));
            let map = if dir == Dir::In { TO_PODS } else { FROM_PODS };
            for ip in &pod.ips {
                if let Some(m) = rs.maps.get_mut(&map_name(map, ip.is_ipv6())) {
                    m.elements.insert(*ip, class.clone());
                }
            }
        }
        let keys = |v: &[usize]| v.iter().map(|i| ctx.policies[*i].key()).collect();
        policed.push(Policed {
            pod: format!("{}/{}", pod.namespace, pod.name),
            ingress: keys(&ins),
            egress: keys(&outs),
        });
    }
    for (i, dir) in used {
        ctx.policy_chain(i, dir, &mut rs);
    }
    Compiled {
        ruleset: rs,
        policed,
    }
}

fn map_name(base: &str, v6: bool) -> String {
    format!("{base}/{}", if v6 { "v6" } else { "v4" })
}

/// The fixed part: the two base chains and their (possibly empty) maps.
fn base_ruleset() -> Ruleset {
    let mut rs = Ruleset::default();
    for (name, base) in [(FROM_PODS, EGRESS_BASE), (TO_PODS, INGRESS_BASE)] {
        let field = if name == FROM_PODS { "saddr" } else { "daddr" };
        rs.chains.insert(
            name.to_string(),
            Chain {
                base: Some(base.to_string()),
                rules: vec![
                    ESTABLISHED.to_string(),
                    format!("ip {field} vmap @{}", map_name(name, false)),
                    format!("ip6 {field} vmap @{}", map_name(name, true)),
                ],
            },
        );
        for v6 in [false, true] {
            let m = JumpMap {
                v6,
                ..JumpMap::default()
            };
            rs.maps.insert(map_name(name, v6), m);
        }
    }
    rs
}

struct Ctx<'a> {
    node: &'a str,
    policies: Vec<&'a Policy>,
    pods_by_ns: BTreeMap<&'a str, Vec<&'a PodInfo>>,
    namespaces: &'a BTreeMap<String, Labels>,
    /// Each policy's name prefix in the table ([`policy_bases`]).
    bases: Vec<String>,
}

impl<'a> Ctx<'a> {
    fn new(inp: &Inputs<'a>) -> Ctx<'a> {
        let mut pods_by_ns: BTreeMap<&str, Vec<&PodInfo>> = BTreeMap::new();
        for p in inp.pods.values() {
            pods_by_ns.entry(p.namespace.as_str()).or_default().push(p);
        }
        let policies = inp.policies.to_vec();
        Ctx {
            node: inp.node,
            bases: policy_bases(&policies),
            policies,
            pods_by_ns,
            namespaces: inp.namespaces,
        }
    }

    fn local_pods(&self) -> impl Iterator<Item = &'a PodInfo> + '_ {
        self.pods_by_ns
            .values()
            .flatten()
            .copied()
            .filter(|p| p.node == self.node)
    }

    fn policy_chain_name(&self, i: usize, dir: Dir) -> String {
        format!("{}/{}", self.bases[i], dir.tag())
    }

    /// The chain of the pods isolated by exactly `pols`, named by a hash of their names. Two
    /// combinations whose names hash alike (policy names are anyone's to choose) get chains
    /// apart: the second takes the next free suffix, so no pod is ever judged by another
    /// pod's policies.
    fn class_chain(&self, dir: Dir, pols: &[usize], rs: &mut Ruleset) -> String {
        let keys: Vec<String> = pols.iter().map(|i| self.policies[*i].key()).collect();
        let hashed = format!("class-{}/{:016x}", dir.tag(), fnv(&keys.join("\n")));
        let mut rules: Vec<String> = pols
            .iter()
            .map(|i| format!("jump {}", self.policy_chain_name(*i, dir)))
            .collect();
        rules.push(REJECT.to_string());
        let mut name = hashed.clone();
        for n in 1.. {
            match rs.chains.get(&name) {
                None => break,
                Some(c) if c.rules == rules => return name,
                Some(_) => name = format!("{hashed}-{n}"),
            }
        }
        rs.chains.insert(name.clone(), Chain { base: None, rules });
        name
    }

    /// The namespaces a peer's `namespaceSelector` picks (`None`: the policy's own).
    fn peer_namespaces(
        &self,
        policy: &Policy,
        sel: Option<&super::selector::Selector>,
    ) -> Vec<&'a str> {
        let Some(sel) = sel else {
            return self
                .pods_by_ns
                .get_key_value(policy.namespace.as_str())
                .map(|(k, _)| vec![*k])
                .unwrap_or_default();
        };
        self.pods_by_ns
            .keys()
            .copied()
            .filter(|ns| {
                let fallback;
                let labels = match self.namespaces.get(*ns) {
                    Some(l) => l,
                    // A namespace whose object is not seen yet still has its name label.
                    None => {
                        fallback = Labels::from([(NAME_LABEL.to_string(), ns.to_string())]);
                        &fallback
                    }
                };
                sel.matches(labels)
            })
            .collect()
    }

    /// The addresses of a rule's peers: its pods' and its ipBlocks' (minus their exceptions);
    /// `None` when it has none, which admits every address.
    fn peer_ranges(&self, policy: &Policy, rule: &Rule) -> Option<Vec<Range>> {
        if rule.peers.is_empty() {
            return None;
        }
        let mut ranges = Vec::new();
        for peer in &rule.peers {
            match peer {
                Peer::Pods {
                    namespaces,
                    pods: sel,
                } => {
                    for ns in self.peer_namespaces(policy, namespaces.as_ref()) {
                        let in_ns = self.pods_by_ns.get(ns).into_iter().flatten();
                        for p in in_ns.filter(|p| sel.as_ref().is_none_or(|s| s.matches(&p.labels)))
                        {
                            ranges.extend(p.ips.iter().map(|ip| Range::addr(*ip)));
                        }
                    }
                }
                Peer::Block { cidr, except } => ranges.extend(subtract(*cidr, except)),
            }
        }
        Some(normalise(ranges))
    }

    fn policy_chain(&self, i: usize, dir: Dir, rs: &mut Ruleset) {
        let policy = self.policies[i];
        let chain = self.policy_chain_name(i, dir);
        let rules = if dir == Dir::In {
            &policy.ingress_rules
        } else {
            &policy.egress_rules
        };
        let mut lines = Vec::new();
        for (r, rule) in rules.iter().enumerate() {
            let base = format!("{}/{}{r}", self.bases[i], dir.tag());
            let peers = self.peer_ranges(policy, rule);
            let named_only = !rule.ports.is_empty()
                && rule
                    .ports
                    .iter()
                    .all(|p| matches!(p.port, Some(PortRef::Name(_))));
            let peer = if dir == Dir::Out && named_only {
                Vec::new()
            } else {
                peer_matches(peers.as_deref(), dir, &base, rs)
            };
            for (j, port) in port_list(rule).iter().enumerate() {
                let named = port.and_then(|p| match &p.port {
                    Some(PortRef::Name(n)) => Some((p, n)),
                    _ => None,
                });
                // An egress named port's set holds only peers already: the peer set would be
                // looked up for nothing.
                let any = [Match::any(String::new())];
                let peer: &[Match] = if named.is_some() && dir == Dir::Out {
                    &any
                } else {
                    &peer
                };
                let ports = match named {
                    Some((spec, name)) => self.named_matches(
                        policy,
                        peers.as_deref(),
                        dir,
                        spec,
                        name,
                        &format!("{base}/port{j}"),
                        rs,
                    ),
                    None => vec![Match::any(port.map(numeric_port).unwrap_or_default())],
                };
                for pm in &ports {
                    lines.extend(
                        peer.iter()
                            .filter_map(|m| m.and(pm))
                            .map(|m| format!("{}accept", m.text)),
                    );
                }
            }
        }
        rs.chains.insert(
            chain,
            Chain {
                base: None,
                rules: lines,
            },
        );
    }

    /// A named port: the pods it resolves on, grouped by the number it resolves to. Ingress
    /// resolves on the policy's own pods (the destination), egress on the peer pods.
    #[allow(clippy::too_many_arguments)]
    fn named_matches(
        &self,
        policy: &Policy,
        peers: Option<&[Range]>,
        dir: Dir,
        spec: &PortSpec,
        name: &str,
        base: &str,
        rs: &mut Ruleset,
    ) -> Vec<Match> {
        // The destination addresses the name may resolve on, each with its pod.
        let all = || self.pods_by_ns.values().flatten().copied();
        let pairs = |p: &'a PodInfo| p.ips.iter().map(move |ip| (p, *ip));
        let candidates: Vec<(&PodInfo, IpAddr)> = match dir {
            Dir::In => self
                .local_pods()
                .filter(|p| {
                    p.namespace == policy.namespace && policy.pod_selector.matches(&p.labels)
                })
                .flat_map(pairs)
                .collect(),
            // Pod peers, and pods inside an ipBlock (their ports have names too), each only
            // at the addresses the peers cover: a dual-stack pod inside an IPv4 block is not a
            // peer at its IPv6 address.
            Dir::Out => all()
                .flat_map(pairs)
                .filter(|(_, ip)| peers.is_none_or(|r| covers(r, *ip)))
                .collect(),
        };
        let mut by_port: BTreeMap<u16, Vec<Range>> = BTreeMap::new();
        for (p, ip) in candidates {
            if let Some(n) = p.resolve(name, spec.protocol) {
                by_port.entry(n).or_default().push(Range::addr(ip));
            }
        }
        let proto = spec.protocol.nft();
        by_port
            .into_iter()
            .flat_map(|(n, ranges)| {
                let set_base = format!("{base}-{n}");
                address_matches("daddr", &normalise(ranges), &set_base, rs)
                    .into_iter()
                    .map(move |m| Match {
                        text: format!("{}{proto} dport {n} ", m.text),
                        ..m
                    })
            })
            .collect()
    }
}

/// The rule's peer match per family (one family-less match when it has no peers).
fn peer_matches(peers: Option<&[Range]>, dir: Dir, base: &str, rs: &mut Ruleset) -> Vec<Match> {
    match peers {
        None => vec![Match::any(String::new())],
        Some(ranges) => address_matches(dir.peer_field(), ranges, base, rs),
    }
}

/// A rule's `ports`, or one `None` standing for every port.
fn port_list(rule: &Rule) -> Vec<Option<&PortSpec>> {
    if rule.ports.is_empty() {
        vec![None]
    } else {
        rule.ports.iter().map(Some).collect()
    }
}

fn numeric_port(p: &PortSpec) -> String {
    let proto = p.protocol.nft();
    match (&p.port, p.end_port) {
        (Some(PortRef::Number(a)), Some(b)) if b > *a => format!("{proto} dport {a}-{b} "),
        (Some(PortRef::Number(a)), _) => format!("{proto} dport {a} "),
        _ => format!("meta l4proto {proto} "),
    }
}

/// Whether `ip` is in one of `ranges` (normalised: sorted, without overlaps).
fn covers(ranges: &[Range], ip: IpAddr) -> bool {
    let a = Range::addr(ip);
    // The last range starting at or before the address is the only one that may hold it.
    let i = ranges.partition_point(|r| (r.v6, r.first) <= (a.v6, a.first));
    i > 0 && {
        let r = &ranges[i - 1];
        r.v6 == a.v6 && a.first <= r.last
    }
}

/// `ip saddr @set` per family present in `ranges`, with the sets added to `rs`.
fn address_matches(field: &str, ranges: &[Range], base: &str, rs: &mut Ruleset) -> Vec<Match> {
    let mut out = Vec::new();
    for v6 in [false, true] {
        let elements: Vec<Range> = ranges.iter().filter(|r| r.v6 == v6).copied().collect();
        if elements.is_empty() {
            continue;
        }
        let (fam, tag) = if v6 { ("ip6", "v6") } else { ("ip", "v4") };
        let name = format!("{base}/{tag}");
        out.push(Match {
            v6: Some(v6),
            text: format!("{fam} {field} @{name} "),
        });
        rs.sets.insert(name, AddrSet { v6, elements });
    }
    out
}

/// Part of a rule: its text and the address family it is bound to, if any.
#[derive(Clone)]
struct Match {
    v6: Option<bool>,
    text: String,
}

impl Match {
    fn any(text: String) -> Match {
        Match { v6: None, text }
    }

    /// Both parts in one rule, unless they are bound to different families.
    fn and(&self, other: &Match) -> Option<Match> {
        let v6 = match (self.v6, other.v6) {
            (Some(a), Some(b)) if a != b => return None,
            (a, b) => a.or(b),
        };
        Some(Match {
            v6,
            text: format!("{}{}", self.text, other.text),
        })
    }
}

/// Names of a policy's objects: `pol/<namespace>/<name>`, or a hash for names too long for
/// nft (whose identifiers stop at 256 bytes).
fn policy_base(p: &Policy) -> String {
    let readable = format!("pol/{}/{}", p.namespace, p.name);
    if readable.len() <= 200 {
        readable
    } else {
        format!("pol/{:016x}", fnv(&p.key()))
    }
}

/// Every policy's prefix, [`policy_base`] unless another policy has it already (hashed long
/// names that collide): then the next free suffix.
fn policy_bases(policies: &[&Policy]) -> Vec<String> {
    let mut used = BTreeSet::new();
    policies
        .iter()
        .map(|p| {
            let base = policy_base(p);
            let mut name = base.clone();
            let mut n = 0;
            while !used.insert(name.clone()) {
                n += 1;
                name = format!("{base}-{n}");
            }
            name
        })
        .collect()
}

/// FNV-1a, 64 bits: stable across builds and Rust versions (names in the kernel must not
/// change when the agent is upgraded).
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests;

//! The oracle: a small, literal model of `networking.k8s.io/v1` NetworkPolicy, written from the
//! API reference and nothing else, so the node agent's nftables compiler is judged by something
//! that does not share its code or its mistakes.
//!
//! A [`Cluster`] holds namespaces, pods and policies; policies are the JSON objects exactly as
//! they are sent to the API, validated on entry roughly as the apiserver would (so a test that
//! builds a policy the API would refuse fails here first). [`allowed`] then answers one question:
//! may this connection be made?
//!
//! The rules, as the API reference states them:
//! - a pod is isolated for a direction when some policy in its namespace selects it
//!   (`spec.podSelector`) and that policy's `policyTypes` include the direction; absent
//!   `policyTypes` default to `Ingress`, plus `Egress` when `spec.egress` has rules;
//! - an isolated pod admits a connection when at least one rule of one selecting policy matches
//!   both the peer and the port (policies are additive, never subtractive);
//! - a connection needs the source's egress and the destination's ingress to allow it.
//!
//! Choices where the reference leaves room (each says why):
//! - a pod reaching itself is always allowed: upstream's e2e suite ignores loopback because
//!   plugins differ, and the kernel never sends it through the pod's veth;
//! - host-network pods are never isolated (no policy can apply to the node's namespace), and as
//!   peers they are matched only by `ipBlock`, never by pod or namespace selectors: their traffic
//!   leaves with a node address that identifies no pod;
//! - traffic from a host-network pod to a pod on the same node is the "pod's local node", which
//!   the ingress reference always admits (kubelet probes), when both pods name their node.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The label the apiserver puts on every namespace, carrying its name (immutable).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Labels of a namespace or pod; ordered, so anything derived from them is deterministic.
pub type Labels = BTreeMap<String, String>;

/// Builds [`Labels`] from string pairs: `labels([("pod", "a")])`, or from a slice with
/// `labels(pairs.iter().copied())`.
pub fn labels<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Labels {
    pairs
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect()
}

/// A transport protocol NetworkPolicy can name, and that a probe uses. The one type of the
/// kit: the model, the cases, the generator, the harness and `netpol-probe` all use it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    /// The API spelling: `TCP`, `UDP`, `SCTP` (also [`fmt::Display`] and serde's).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// Lower case, as upstream's container port names (`serve-80-tcp`) and a probe's target
    /// (`tcp:10.244.1.3:80`) use it.
    pub fn lowercase(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    /// Parses the API spelling; the API is case-sensitive, so is this (unlike [`FromStr`],
    /// which is for command lines).
    pub fn from_api(s: &str) -> Option<Protocol> {
        Protocol::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = String;

    /// Either case, `tcp` or `TCP`: for command lines and probe targets, not for policies
    /// (see [`Protocol::from_api`]).
    fn from_str(s: &str) -> Result<Self, String> {
        Protocol::ALL
            .into_iter()
            .find(|p| p.lowercase().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("{s:?}: expected tcp, udp or sctp"))
    }
}

/// A container port as declared in a pod spec; `name` is what named policy ports resolve against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub number: u16,
    pub protocol: Protocol,
}

impl ContainerPort {
    pub fn named(name: &str, number: u16, protocol: Protocol) -> ContainerPort {
        ContainerPort {
            name: Some(name.to_string()),
            number,
            protocol,
        }
    }
}

/// A namespace. Its labels always include `kubernetes.io/metadata.name=<name>`, as a real
/// apiserver imposes, whatever the caller sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    name: String,
    labels: Labels,
}

impl Namespace {
    pub fn new(name: &str, labels: Labels) -> Namespace {
        let mut ns = Namespace {
            name: name.to_string(),
            labels: Labels::new(),
        };
        ns.set_labels(labels);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn labels(&self) -> &Labels {
        &self.labels
    }

    /// Replaces the labels; the name label is put back, as the apiserver does.
    pub fn set_labels(&mut self, labels: Labels) {
        self.labels = labels;
        self.labels
            .insert(NAMESPACE_NAME_LABEL.to_string(), self.name.clone());
    }

    /// Merges labels in (later values win); the name label cannot be changed.
    pub fn add_labels(&mut self, labels: &Labels) {
        let mut merged = self.labels.clone();
        merged.extend(labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        self.set_labels(merged);
    }
}

/// A pod's identity: namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

impl PodRef {
    pub fn new(namespace: &str, name: &str) -> PodRef {
        PodRef {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A pod, reduced to what policy evaluation reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    /// `status.podIPs`; the first is the primary (`status.podIP`). IPv4, IPv6 or both.
    pub ips: Vec<IpAddr>,
    pub ports: Vec<ContainerPort>,
    pub host_network: bool,
    /// `spec.nodeName`, when the test knows it (only the local-node rule reads it).
    pub node: Option<String>,
}

impl Pod {
    /// A pod with no labels, addresses or ports, on the pod network.
    pub fn new(namespace: &str, name: &str) -> Pod {
        Pod {
            namespace: namespace.to_string(),
            name: name.to_string(),
            labels: Labels::new(),
            ips: Vec::new(),
            ports: Vec::new(),
            host_network: false,
            node: None,
        }
    }

    pub fn key(&self) -> PodRef {
        PodRef::new(&self.namespace, &self.name)
    }

    fn is(&self, other: &Pod) -> bool {
        self.namespace == other.namespace && self.name == other.name
    }

    /// The address this pod sends from when talking to `peer`: one of the same family, since a
    /// connection never mixes IPv4 and IPv6. Without a peer address, the primary.
    fn address_towards(&self, peer: Option<IpAddr>) -> Option<IpAddr> {
        match peer {
            Some(peer) => self
                .ips
                .iter()
                .copied()
                .find(|ip| ip.is_ipv4() == peer.is_ipv4()),
            None => self.ips.first().copied(),
        }
    }
}

/// Why the model refused an operation. `Invalid` is what the apiserver would answer 422 to.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("invalid NetworkPolicy: {0}")]
    Invalid(String),
    /// `namespace/name` of the policy.
    #[error("NetworkPolicy {0} already exists")]
    AlreadyExists(String),
    #[error("NetworkPolicy {0} not found")]
    NotFound(String),
    #[error("namespace {0} not found")]
    NoNamespace(String),
    #[error("pod {0} not found")]
    NoPod(PodRef),
}

fn invalid(path: &str, msg: impl fmt::Display) -> ModelError {
    ModelError::Invalid(format!("{path}: {msg}"))
}

/// Namespaces, pods and the policies in force.
#[derive(Clone, Debug, Default)]
pub struct Cluster {
    pub namespaces: Vec<Namespace>,
    pub pods: Vec<Pod>,
    policies: Vec<StoredPolicy>,
}

/// A policy as sent (`object`) and as understood (`parsed`).
#[derive(Clone, Debug)]
struct StoredPolicy {
    key: PodRef,
    object: Value,
    parsed: Policy,
}

impl Cluster {
    pub fn new() -> Cluster {
        Cluster::default()
    }

    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces.iter().find(|ns| ns.name == name)
    }

    pub fn namespace_mut(&mut self, name: &str) -> Option<&mut Namespace> {
        self.namespaces.iter_mut().find(|ns| ns.name == name)
    }

    pub fn pod(&self, key: &PodRef) -> Option<&Pod> {
        self.pods
            .iter()
            .find(|p| p.namespace == key.namespace && p.name == key.name)
    }

    pub fn pod_mut(&mut self, key: &PodRef) -> Option<&mut Pod> {
        self.pods
            .iter_mut()
            .find(|p| p.namespace == key.namespace && p.name == key.name)
    }

    /// The policies in force, as sent: `(namespace/name, object)`.
    pub fn policies(&self) -> impl Iterator<Item = (&PodRef, &Value)> {
        self.policies.iter().map(|p| (&p.key, &p.object))
    }

    /// `POST`: fails if the policy is invalid, its namespace is unknown, or the name is taken.
    pub fn create_policy(&mut self, namespace: &str, object: Value) -> Result<(), ModelError> {
        let stored = self.admit(namespace, object)?;
        if self.position(&stored.key).is_some() {
            return Err(ModelError::AlreadyExists(stored.key.to_string()));
        }
        self.policies.push(stored);
        Ok(())
    }

    /// `PUT`: replaces an existing policy of the same name.
    pub fn update_policy(&mut self, namespace: &str, object: Value) -> Result<(), ModelError> {
        let stored = self.admit(namespace, object)?;
        let index = self
            .position(&stored.key)
            .ok_or_else(|| ModelError::NotFound(stored.key.to_string()))?;
        self.policies[index] = stored;
        Ok(())
    }

    /// Create or replace, whichever applies (`kubectl apply`).
    pub fn apply_policy(&mut self, namespace: &str, object: Value) -> Result<(), ModelError> {
        let stored = self.admit(namespace, object)?;
        match self.position(&stored.key) {
            Some(index) => self.policies[index] = stored,
            None => self.policies.push(stored),
        }
        Ok(())
    }

    pub fn delete_policy(&mut self, namespace: &str, name: &str) -> Result<(), ModelError> {
        let key = PodRef::new(namespace, name);
        let index = self
            .position(&key)
            .ok_or_else(|| ModelError::NotFound(key.to_string()))?;
        self.policies.remove(index);
        Ok(())
    }

    pub fn clear_policies(&mut self) {
        self.policies.clear();
    }

    fn position(&self, key: &PodRef) -> Option<usize> {
        self.policies.iter().position(|p| &p.key == key)
    }

    fn admit(&self, namespace: &str, object: Value) -> Result<StoredPolicy, ModelError> {
        if self.namespace(namespace).is_none() {
            return Err(ModelError::NoNamespace(namespace.to_string()));
        }
        let (name, parsed) = parse_policy(&object, namespace)?;
        Ok(StoredPolicy {
            key: PodRef::new(namespace, &name),
            object,
            parsed,
        })
    }

    /// A namespace's labels; for a namespace the model was not told of, only the name label the
    /// apiserver would have put there (a pod cannot exist without its namespace).
    fn namespace_labels(&self, name: &str) -> Cow<'_, Labels> {
        match self.namespace(name) {
            Some(ns) => Cow::Borrowed(&ns.labels),
            None => Cow::Owned(labels([(NAMESPACE_NAME_LABEL, name)])),
        }
    }

    /// The policies of `pod`'s namespace that select it and govern `direction`.
    fn governing(&self, pod: &Pod, direction: Direction) -> Vec<&Policy> {
        self.policies
            .iter()
            .filter(|p| p.key.namespace == pod.namespace)
            .map(|p| &p.parsed)
            .filter(|p| p.governs(direction) && p.pod_selector.matches(&pod.labels))
            .collect()
    }
}

/// Where a connection comes from.
#[derive(Clone, Copy, Debug)]
pub enum Source<'a> {
    Pod(&'a Pod),
    /// An address that is no pod's (a client outside the cluster, a node).
    External(IpAddr),
}

/// May `from` open a connection to `to`'s primary address on `protocol`/`port`?
pub fn allowed(cluster: &Cluster, from: Source, to: &Pod, protocol: Protocol, port: u16) -> bool {
    connection_allowed(cluster, from, to, to.ips.first().copied(), protocol, port)
}

/// As [`allowed`], to one chosen address of `to` (for dual-stack pods: the source then uses its
/// own address of the same family).
pub fn allowed_at(
    cluster: &Cluster,
    from: Source,
    to: &Pod,
    to_ip: IpAddr,
    protocol: Protocol,
    port: u16,
) -> bool {
    connection_allowed(cluster, from, to, Some(to_ip), protocol, port)
}

/// May pod `from` open a connection to an address outside the cluster? Only `from`'s egress
/// policies have a say; a named port never matches here, having no pod to be resolved on.
pub fn allowed_to_external(
    cluster: &Cluster,
    from: &Pod,
    to: IpAddr,
    protocol: Protocol,
    port: u16,
) -> bool {
    let flow = Flow {
        src: Endpoint {
            pod: Some(from),
            ip: from.address_towards(Some(to)),
        },
        dst: Endpoint {
            pod: None,
            ip: Some(to),
        },
        protocol,
        port,
    };
    egress_permits(cluster, &flow)
}

/// Does some policy isolate `pod` for ingress (so that only what a rule allows gets in)?
pub fn isolated_for_ingress(cluster: &Cluster, pod: &Pod) -> bool {
    !pod.host_network && !cluster.governing(pod, Direction::Ingress).is_empty()
}

/// Does some policy isolate `pod` for egress?
pub fn isolated_for_egress(cluster: &Cluster, pod: &Pod) -> bool {
    !pod.host_network && !cluster.governing(pod, Direction::Egress).is_empty()
}

fn connection_allowed(
    cluster: &Cluster,
    from: Source,
    to: &Pod,
    to_ip: Option<IpAddr>,
    protocol: Protocol,
    port: u16,
) -> bool {
    let src = match from {
        Source::Pod(pod) if pod.is(to) => return true,
        Source::Pod(pod) => Endpoint {
            pod: Some(pod),
            ip: pod.address_towards(to_ip),
        },
        Source::External(ip) => Endpoint {
            pod: None,
            ip: Some(ip),
        },
    };
    let flow = Flow {
        src,
        dst: Endpoint {
            pod: Some(to),
            ip: to_ip,
        },
        protocol,
        port,
    };
    egress_permits(cluster, &flow) && ingress_permits(cluster, &flow)
}

/// One connection attempt: who, to whom, on what.
struct Flow<'a> {
    src: Endpoint<'a>,
    dst: Endpoint<'a>,
    protocol: Protocol,
    port: u16,
}

/// One end of a connection: a pod, or only an address. `ip` is the address this connection
/// uses (`None` when a pod has none of the family in use: no ipBlock can match it then).
#[derive(Clone, Copy)]
struct Endpoint<'a> {
    pod: Option<&'a Pod>,
    ip: Option<IpAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    Ingress,
    Egress,
}

fn ingress_permits(cluster: &Cluster, flow: &Flow) -> bool {
    let Some(dst) = flow.dst.pod else {
        return true;
    };
    if dst.host_network || from_local_node(flow.src.pod, dst) {
        return true;
    }
    let policies = cluster.governing(dst, Direction::Ingress);
    policies.is_empty()
        || policies.iter().any(|policy| {
            policy
                .ingress
                .iter()
                .any(|rule| rule.admits(cluster, &dst.namespace, flow.src, flow))
        })
}

fn egress_permits(cluster: &Cluster, flow: &Flow) -> bool {
    let Some(src) = flow.src.pod else {
        return true;
    };
    if src.host_network {
        return true;
    }
    let policies = cluster.governing(src, Direction::Egress);
    policies.is_empty()
        || policies.iter().any(|policy| {
            policy
                .egress
                .iter()
                .any(|rule| rule.admits(cluster, &src.namespace, flow.dst, flow))
        })
}

/// The ingress reference admits "traffic from the pod's local node": a host-network pod on the
/// same node speaks with the node's address.
fn from_local_node(src: Option<&Pod>, dst: &Pod) -> bool {
    match (src, &dst.node) {
        (Some(src), Some(node)) => src.host_network && src.node.as_ref() == Some(node),
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// The parsed form of a policy, and its evaluation.

#[derive(Clone, Debug)]
struct Policy {
    pod_selector: Selector,
    ingress: Vec<Rule>,
    egress: Vec<Rule>,
    affects_ingress: bool,
    affects_egress: bool,
}

impl Policy {
    fn governs(&self, direction: Direction) -> bool {
        match direction {
            Direction::Ingress => self.affects_ingress,
            Direction::Egress => self.affects_egress,
        }
    }
}

/// One ingress or egress rule: `peers` is `from` or `to` (empty: every peer), `ports` empty:
/// every port.
#[derive(Clone, Debug)]
struct Rule {
    peers: Vec<Peer>,
    ports: Vec<PortMatch>,
}

impl Rule {
    /// Does this rule of a policy in `policy_ns` admit `flow`, whose other end is `peer`?
    fn admits(&self, cluster: &Cluster, policy_ns: &str, peer: Endpoint, flow: &Flow) -> bool {
        let peer_ok = self.peers.is_empty()
            || self
                .peers
                .iter()
                .any(|p| p.matches(cluster, policy_ns, peer));
        // Ports always describe the destination (for ingress, the policy's own pod).
        let port_ok = self.ports.is_empty()
            || self
                .ports
                .iter()
                .any(|p| p.matches(flow.dst.pod, flow.protocol, flow.port));
        peer_ok && port_ok
    }
}

#[derive(Clone, Debug)]
enum Peer {
    /// `podSelector` and/or `namespaceSelector`; `None` is the field absent (or null).
    Selectors {
        pods: Option<Selector>,
        namespaces: Option<Selector>,
    },
    Block(IpBlock),
}

impl Peer {
    fn matches(&self, cluster: &Cluster, policy_ns: &str, end: Endpoint) -> bool {
        match self {
            Peer::Block(block) => end.ip.is_some_and(|ip| block.contains(ip)),
            Peer::Selectors { pods, namespaces } => {
                let Some(pod) = end.pod.filter(|p| !p.host_network) else {
                    return false;
                };
                // No namespaceSelector: the policy's own namespace only.
                let namespace_ok = match namespaces {
                    None => pod.namespace == policy_ns,
                    Some(sel) => sel.matches(&cluster.namespace_labels(&pod.namespace)),
                };
                let pod_ok = pods.as_ref().is_none_or(|sel| sel.matches(&pod.labels));
                namespace_ok && pod_ok
            }
        }
    }
}

#[derive(Clone, Debug)]
struct IpBlock {
    cidr: Cidr,
    except: Vec<Cidr>,
}

impl IpBlock {
    fn contains(&self, ip: IpAddr) -> bool {
        self.cidr.contains(ip) && !self.except.iter().any(|e| e.contains(ip))
    }
}

/// An address prefix. The network address is kept masked, so `10.1.2.3/8` means `10.0.0.0/8`
/// (as Go's `net.ParseCIDR`, which the apiserver used, reads it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `address/prefix`.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (addr, prefix) = s.split_once('/')?;
        let addr: IpAddr = addr.parse().ok()?;
        // Only canonical decimal: "+8" and "08" are not prefix lengths.
        let canonical = prefix == "0" || !prefix.starts_with('0');
        if prefix.is_empty()
            || !canonical
            || !prefix.bytes().all(|b| b.is_ascii_digit())
            || prefix.len() > 3
        {
            return None;
        }
        let prefix: u8 = prefix.parse().ok()?;
        if prefix > width(addr) {
            return None;
        }
        Some(Cidr::new(addr, prefix))
    }

    /// The prefix of length `prefix` containing `addr` (prefix clamped to the family's width).
    pub fn new(addr: IpAddr, prefix: u8) -> Cidr {
        let prefix = prefix.min(width(addr));
        Cidr {
            network: from_bits(addr, bits(addr) & mask(addr, prefix)),
            prefix,
        }
    }

    /// The single-address prefix of `ip` (/32 or /128).
    pub fn host(ip: IpAddr) -> Cidr {
        Cidr::new(ip, width(ip))
    }

    pub fn network(&self) -> IpAddr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        same_family(self.network, ip) && bits(ip) & mask(ip, self.prefix) == bits(self.network)
    }

    /// Within `self` and smaller: what the API requires of each `except` entry.
    pub fn strictly_contains(&self, other: &Cidr) -> bool {
        self.contains(other.network) && other.prefix > self.prefix
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

fn width(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The netmask of a `prefix`-long prefix in `ip`'s family, as bits.
fn mask(ip: IpAddr, prefix: u8) -> u128 {
    let w = u32::from(width(ip));
    let all = if w == 128 {
        u128::MAX
    } else {
        (1u128 << w) - 1
    };
    let host_bits = w - u32::from(prefix.min(width(ip)));
    if host_bits == w {
        0
    } else {
        all & !((1u128 << host_bits) - 1)
    }
}

fn from_bits(like: IpAddr, value: u128) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(u32::try_from(value).unwrap_or(u32::MAX))),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(value)),
    }
}

/// One `ports` entry. Its protocol is always known (the API defaults it to TCP).
#[derive(Clone, Debug)]
struct PortMatch {
    protocol: Protocol,
    port: PortSpec,
}

#[derive(Clone, Debug)]
enum PortSpec {
    /// No `port`: every port of the protocol.
    Any,
    /// `port`, or `port`..=`endPort`.
    Range(u16, u16),
    /// A container port name, resolved on the destination pod.
    Named(String),
}

impl PortMatch {
    fn matches(&self, dst: Option<&Pod>, protocol: Protocol, port: u16) -> bool {
        if self.protocol != protocol {
            return false;
        }
        match &self.port {
            PortSpec::Any => true,
            PortSpec::Range(first, last) => (*first..=*last).contains(&port),
            // The name must be a port the destination declares, on this protocol, and be the
            // port in use. No destination pod (an external address): nothing to resolve on.
            PortSpec::Named(name) => dst.is_some_and(|pod| {
                pod.ports.iter().any(|cp| {
                    cp.name.as_deref() == Some(name.as_str())
                        && cp.protocol == protocol
                        && cp.number == port
                })
            }),
        }
    }
}

/// A label selector: every `matchLabels` pair and every requirement must hold (an empty
/// selector therefore selects everything).
#[derive(Clone, Debug)]
struct Selector {
    labels: Labels,
    requirements: Vec<Requirement>,
}

impl Selector {
    fn matches(&self, labels: &Labels) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.requirements.iter().all(|r| r.matches(labels))
    }
}

#[derive(Clone, Debug)]
struct Requirement {
    key: String,
    operator: Operator,
    values: Vec<String>,
}

#[derive(Clone, Copy, Debug)]
enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl Requirement {
    fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            // A pod without the key is "not in" any set of its values.
            Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing and validation: the JSON as sent, to the parsed form, refusing what the apiserver
// would refuse (the checks of `ValidateNetworkPolicy` that concern semantics; not every name
// length limit).

/// Parses a policy object meant for `namespace`; returns its name and meaning.
fn parse_policy(object: &Value, namespace: &str) -> Result<(String, Policy), ModelError> {
    let Some(fields) = object.as_object() else {
        return Err(invalid("", "not a JSON object"));
    };
    check_type_meta(fields)?;
    let name = parse_metadata(fields.get("metadata"), namespace)?;
    let spec: net::NetworkPolicySpec = match fields.get("spec") {
        // No spec: every field defaults (select every pod, deny all ingress).
        None | Some(Value::Null) => net::NetworkPolicySpec::default(),
        Some(spec) => serde_json::from_value(spec.clone()).map_err(|e| invalid("spec", e))?,
    };
    Ok((name, parse_spec(&spec)?))
}

fn check_type_meta(fields: &serde_json::Map<String, Value>) -> Result<(), ModelError> {
    let expect = [
        ("apiVersion", "networking.k8s.io/v1"),
        ("kind", "NetworkPolicy"),
    ];
    for (field, wanted) in expect {
        match fields.get(field) {
            None => {}
            Some(v) if v.as_str() == Some(wanted) => {}
            Some(v) => return Err(invalid(field, format!("{v} is not {wanted}"))),
        }
    }
    Ok(())
}

fn parse_metadata(metadata: Option<&Value>, namespace: &str) -> Result<String, ModelError> {
    let name = metadata
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("metadata.name", "required"))?;
    if !is_dns_subdomain(name) {
        return Err(invalid(
            "metadata.name",
            format!("{name:?} is not a DNS subdomain"),
        ));
    }
    match metadata.and_then(|m| m.get("namespace")) {
        None | Some(Value::Null) => {}
        Some(v) if v.as_str() == Some(namespace) => {}
        Some(v) => {
            return Err(invalid(
                "metadata.namespace",
                format!("{v} does not match the request's namespace {namespace}"),
            ))
        }
    }
    Ok(name.to_string())
}

fn parse_spec(spec: &net::NetworkPolicySpec) -> Result<Policy, ModelError> {
    let pod_selector = match &spec.pod_selector {
        Some(sel) => parse_selector(sel, "spec.podSelector")?,
        None => Selector {
            labels: Labels::new(),
            requirements: Vec::new(),
        },
    };
    let ingress = spec
        .ingress
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| {
            parse_rule(
                r.from.as_deref(),
                r.ports.as_deref(),
                &format!("spec.ingress[{i}]"),
                "from",
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let egress = spec
        .egress
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| {
            parse_rule(
                r.to.as_deref(),
                r.ports.as_deref(),
                &format!("spec.egress[{i}]"),
                "to",
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (affects_ingress, affects_egress) = policy_types(spec)?;
    Ok(Policy {
        pod_selector,
        ingress,
        egress,
        affects_ingress,
        affects_egress,
    })
}

/// `(ingress, egress)` from `policyTypes`, defaulted when absent or empty as the apiserver does:
/// Ingress always, Egress when there are egress rules.
fn policy_types(spec: &net::NetworkPolicySpec) -> Result<(bool, bool), ModelError> {
    let types = spec.policy_types.as_deref().unwrap_or_default();
    if types.is_empty() {
        let has_egress = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
        return Ok((true, has_egress));
    }
    if types.len() > 2 {
        return Err(invalid("spec.policyTypes", "at most Ingress and Egress"));
    }
    let (mut ingress, mut egress) = (false, false);
    for (i, t) in types.iter().enumerate() {
        match t.as_str() {
            "Ingress" => ingress = true,
            "Egress" => egress = true,
            other => {
                return Err(invalid(
                    &format!("spec.policyTypes[{i}]"),
                    format!("{other:?} is not Ingress or Egress"),
                ))
            }
        }
    }
    Ok((ingress, egress))
}

fn parse_rule(
    peers: Option<&[net::NetworkPolicyPeer]>,
    ports: Option<&[net::NetworkPolicyPort]>,
    path: &str,
    peers_field: &str,
) -> Result<Rule, ModelError> {
    let peers = peers
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, p)| parse_peer(p, &format!("{path}.{peers_field}[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let ports = ports
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, p)| parse_port(p, &format!("{path}.ports[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Rule { peers, ports })
}

fn parse_peer(peer: &net::NetworkPolicyPeer, path: &str) -> Result<Peer, ModelError> {
    let has_selector = peer.pod_selector.is_some() || peer.namespace_selector.is_some();
    match (&peer.ip_block, has_selector) {
        (Some(_), true) => Err(invalid(path, "ipBlock may not be combined with a selector")),
        (None, false) => Err(invalid(path, "must specify a peer")),
        (Some(block), false) => Ok(Peer::Block(parse_ip_block(
            block,
            &format!("{path}.ipBlock"),
        )?)),
        (None, true) => Ok(Peer::Selectors {
            pods: peer
                .pod_selector
                .as_ref()
                .map(|s| parse_selector(s, &format!("{path}.podSelector")))
                .transpose()?,
            namespaces: peer
                .namespace_selector
                .as_ref()
                .map(|s| parse_selector(s, &format!("{path}.namespaceSelector")))
                .transpose()?,
        }),
    }
}

fn parse_ip_block(block: &net::IPBlock, path: &str) -> Result<IpBlock, ModelError> {
    let cidr = Cidr::parse(&block.cidr).ok_or_else(|| {
        invalid(
            &format!("{path}.cidr"),
            format!("{:?} is not a CIDR", block.cidr),
        )
    })?;
    let mut except = Vec::new();
    for (i, e) in block.except.iter().flatten().enumerate() {
        let epath = format!("{path}.except[{i}]");
        let parsed =
            Cidr::parse(e).ok_or_else(|| invalid(&epath, format!("{e:?} is not a CIDR")))?;
        if !cidr.strictly_contains(&parsed) {
            return Err(invalid(
                &epath,
                format!("{e} must be a strict subset of {cidr}"),
            ));
        }
        except.push(parsed);
    }
    Ok(IpBlock { cidr, except })
}

fn parse_port(port: &net::NetworkPolicyPort, path: &str) -> Result<PortMatch, ModelError> {
    let protocol = match &port.protocol {
        None => Protocol::Tcp,
        Some(p) => Protocol::from_api(p).ok_or_else(|| {
            invalid(
                &format!("{path}.protocol"),
                format!("{p:?} is not TCP, UDP or SCTP"),
            )
        })?,
    };
    let spec = match (&port.port, port.end_port) {
        (None, None) => PortSpec::Any,
        (None, Some(_)) => return Err(invalid(&format!("{path}.endPort"), "requires port")),
        (Some(IntOrString::String(name)), None) => {
            if !is_iana_svc_name(name) {
                return Err(invalid(
                    &format!("{path}.port"),
                    format!("{name:?} is not a port name"),
                ));
            }
            PortSpec::Named(name.clone())
        }
        (Some(IntOrString::String(_)), Some(_)) => {
            return Err(invalid(
                &format!("{path}.endPort"),
                "not allowed with a named port",
            ))
        }
        (Some(IntOrString::Int(first)), end) => {
            let first = port_number(*first, &format!("{path}.port"))?;
            let last = match end {
                None => first,
                Some(end) => port_number(end, &format!("{path}.endPort"))?,
            };
            if last < first {
                return Err(invalid(&format!("{path}.endPort"), "must be at least port"));
            }
            PortSpec::Range(first, last)
        }
    };
    Ok(PortMatch {
        protocol,
        port: spec,
    })
}

fn port_number(n: i32, path: &str) -> Result<u16, ModelError> {
    u16::try_from(n)
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| invalid(path, format!("{n} is not in 1-65535")))
}

fn parse_selector(sel: &LabelSelector, path: &str) -> Result<Selector, ModelError> {
    let labels = sel.match_labels.clone().unwrap_or_default();
    for (k, v) in &labels {
        check_label(k, Some(v), &format!("{path}.matchLabels"))?;
    }
    let requirements = sel
        .match_expressions
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| {
            let rpath = format!("{path}.matchExpressions[{i}]");
            let values = r.values.clone().unwrap_or_default();
            let operator = match r.operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => return Err(invalid(&rpath, format!("unknown operator {other:?}"))),
            };
            let needs_values = matches!(operator, Operator::In | Operator::NotIn);
            if needs_values == values.is_empty() {
                let msg = if needs_values {
                    "In and NotIn need values"
                } else {
                    "Exists and DoesNotExist take no values"
                };
                return Err(invalid(&rpath, msg));
            }
            check_label(&r.key, None, &rpath)?;
            for v in &values {
                check_label(&r.key, Some(v), &rpath)?;
            }
            Ok(Requirement {
                key: r.key.clone(),
                operator,
                values,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Selector {
        labels,
        requirements,
    })
}

fn check_label(key: &str, value: Option<&str>, path: &str) -> Result<(), ModelError> {
    if !is_label_key(key) {
        return Err(invalid(path, format!("{key:?} is not a label key")));
    }
    match value {
        Some(v) if !is_label_value(v) => Err(invalid(path, format!("{v:?} is not a label value"))),
        _ => Ok(()),
    }
}

/// `[prefix/]name`: prefix a DNS subdomain, name 1-63 of `[A-Za-z0-9._-]` starting and ending
/// alphanumeric.
fn is_label_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    prefix.is_none_or(is_dns_subdomain) && !name.is_empty() && is_label_value(name)
}

/// Empty, or up to 63 of `[A-Za-z0-9._-]` starting and ending alphanumeric.
fn is_label_value(v: &str) -> bool {
    let ends_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    v.is_empty()
        || (v.len() <= 63
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && ends_ok(v.chars().next())
            && ends_ok(v.chars().last()))
}

/// Lower-case DNS subdomain (RFC 1123), as object names must be.
fn is_dns_subdomain(s: &str) -> bool {
    let ends_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && ends_ok(s.chars().next())
        && ends_ok(s.chars().last())
}

/// A port name (IANA_SVC_NAME): 1-15 of `[a-z0-9-]`, at least one letter, no leading, trailing
/// or doubled hyphen.
fn is_iana_svc_name(s: &str) -> bool {
    (1..=15).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && s.chars().any(|c| c.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const X: &str = "x";
    const Y: &str = "y";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Namespaces x (team=red) and y (team=blue); pods x/a, x/b, y/a, y/c labelled app=<name>,
    /// each serving `http` on TCP 80 and `dns` on UDP 53; addresses 10.0.<ns>.<pod>.
    fn cluster() -> Cluster {
        let mut c = Cluster::new();
        c.namespaces
            .push(Namespace::new(X, labels([("team", "red")])));
        c.namespaces
            .push(Namespace::new(Y, labels([("team", "blue")])));
        for (ns, name, addr) in [
            (X, "a", "10.0.1.1"),
            (X, "b", "10.0.1.2"),
            (Y, "a", "10.0.2.1"),
            (Y, "c", "10.0.2.3"),
        ] {
            let mut pod = Pod::new(ns, name);
            pod.labels = labels([("app", name)]);
            pod.ips = vec![ip(addr)];
            pod.ports = vec![
                ContainerPort::named("http", 80, Protocol::Tcp),
                ContainerPort::named("dns", 53, Protocol::Udp),
            ];
            c.pods.push(pod);
        }
        c
    }

    fn pod<'a>(c: &'a Cluster, ns: &str, name: &str) -> &'a Pod {
        c.pod(&PodRef::new(ns, name)).unwrap()
    }

    fn tcp(c: &Cluster, from: (&str, &str), to: (&str, &str), port: u16) -> bool {
        allowed(
            c,
            Source::Pod(pod(c, from.0, from.1)),
            pod(c, to.0, to.1),
            Protocol::Tcp,
            port,
        )
    }

    fn udp(c: &Cluster, from: (&str, &str), to: (&str, &str), port: u16) -> bool {
        allowed(
            c,
            Source::Pod(pod(c, from.0, from.1)),
            pod(c, to.0, to.1),
            Protocol::Udp,
            port,
        )
    }

    fn external(c: &Cluster, from: &str, to: (&str, &str), port: u16) -> bool {
        allowed(
            c,
            Source::External(ip(from)),
            pod(c, to.0, to.1),
            Protocol::Tcp,
            port,
        )
    }

    fn np(name: &str, spec: Value) -> Value {
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": name}, "spec": spec})
    }

    fn with(ns: &str, spec: Value) -> Cluster {
        let mut c = cluster();
        c.create_policy(ns, np("p", spec)).unwrap();
        c
    }

    fn refused(spec: Value) -> String {
        match cluster().create_policy(X, np("p", spec)) {
            Err(ModelError::Invalid(msg)) => msg,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn without_policies_everything_is_allowed() {
        let c = cluster();
        assert!(tcp(&c, (X, "a"), (Y, "c"), 80));
        assert!(udp(&c, (Y, "a"), (X, "b"), 12345));
        assert!(external(&c, "192.0.2.1", (X, "a"), 1));
        assert!(allowed_to_external(
            &c,
            pod(&c, X, "a"),
            ip("192.0.2.1"),
            Protocol::Tcp,
            443
        ));
    }

    #[test]
    fn default_deny_ingress_isolates_the_selected_pods_of_its_namespace_only() {
        let c = with(X, json!({"podSelector": {}, "policyTypes": ["Ingress"]}));
        assert!(!tcp(&c, (Y, "a"), (X, "a"), 80));
        assert!(!tcp(&c, (X, "b"), (X, "a"), 80));
        assert!(!external(&c, "192.0.2.1", (X, "b"), 80));
        assert!(tcp(&c, (X, "a"), (Y, "a"), 80), "x's egress is untouched");
        assert!(tcp(&c, (Y, "a"), (Y, "c"), 80), "y is not x");
        assert!(isolated_for_ingress(&c, pod(&c, X, "a")));
        assert!(!isolated_for_egress(&c, pod(&c, X, "a")));
    }

    #[test]
    fn pod_selector_of_the_policy_picks_whom_it_isolates() {
        let c = with(
            X,
            json!({"podSelector": {"matchLabels": {"app": "a"}}, "policyTypes": ["Ingress"]}),
        );
        assert!(!tcp(&c, (X, "b"), (X, "a"), 80));
        assert!(tcp(&c, (X, "a"), (X, "b"), 80));
    }

    #[test]
    fn absent_pod_selector_selects_every_pod() {
        let c = with(X, json!({"policyTypes": ["Ingress"]}));
        assert!(!tcp(&c, (Y, "a"), (X, "b"), 80));
    }

    #[test]
    fn policy_types_default_to_ingress_plus_egress_when_there_are_egress_rules() {
        // No policyTypes, no ingress field: still isolates ingress.
        let c = with(X, json!({"podSelector": {}}));
        assert!(!tcp(&c, (Y, "a"), (X, "a"), 80));
        assert!(tcp(&c, (X, "a"), (Y, "a"), 80));
        // Egress rules present: egress isolated too, and ingress (no rules) denied.
        let c = with(
            X,
            json!({"podSelector": {}, "egress": [{"ports": [{"port": 53, "protocol": "UDP"}]}]}),
        );
        assert!(!tcp(&c, (X, "a"), (Y, "a"), 80));
        assert!(udp(&c, (X, "a"), (Y, "a"), 53));
        assert!(!tcp(&c, (Y, "a"), (X, "a"), 80));
        // An empty egress list is no egress section for defaulting.
        let c = with(X, json!({"podSelector": {}, "egress": [], "ingress": [{}]}));
        assert!(tcp(&c, (X, "a"), (Y, "a"), 80));
        assert!(tcp(&c, (Y, "a"), (X, "a"), 80));
        // An empty policyTypes list defaults the same way.
        let c = with(
            X,
            json!({"podSelector": {}, "policyTypes": [], "egress": [{}]}),
        );
        assert!(isolated_for_egress(&c, pod(&c, X, "a")));
        assert!(isolated_for_ingress(&c, pod(&c, X, "a")));
    }

    #[test]
    fn egress_only_policy_leaves_ingress_open() {
        let c = with(
            X,
            json!({"podSelector": {}, "policyTypes": ["Egress"], "ingress": []}),
        );
        assert!(tcp(&c, (Y, "a"), (X, "a"), 80));
        assert!(!tcp(&c, (X, "a"), (Y, "a"), 80));
        assert!(!tcp(&c, (X, "a"), (X, "b"), 80));
        assert!(!allowed_to_external(
            &c,
            pod(&c, X, "a"),
            ip("192.0.2.1"),
            Protocol::Tcp,
            80
        ));
    }

    #[test]
    fn empty_rule_or_absent_from_admits_everyone() {
        for rule in [
            json!({}),
            json!({"from": []}),
            json!({"from": null, "ports": []}),
        ] {
            let c = with(X, json!({"podSelector": {}, "ingress": [rule]}));
            assert!(tcp(&c, (Y, "a"), (X, "a"), 80));
            assert!(external(&c, "198.51.100.7", (X, "a"), 9));
        }
    }

    #[test]
    fn pod_selector_peer_is_the_policys_own_namespace() {
        let c = with(
            X,
            json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "a"}}}]}]}),
        );
        assert!(tcp(&c, (X, "a"), (X, "b"), 80));
        assert!(
            !tcp(&c, (Y, "a"), (X, "b"), 80),
            "y/a has the label but the wrong namespace"
        );
        assert!(
            !external(&c, "10.0.1.1", (X, "b"), 80),
            "an address is not a pod"
        );
        let c = with(
            X,
            json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}),
        );
        assert!(tcp(&c, (X, "b"), (X, "a"), 80));
        assert!(!tcp(&c, (Y, "c"), (X, "a"), 80));
    }

    #[test]
    fn null_namespace_selector_means_the_policys_namespace() {
        let c = with(
            X,
            json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}, "namespaceSelector": null}]}]}),
        );
        assert!(tcp(&c, (X, "b"), (X, "a"), 80));
        assert!(!tcp(&c, (Y, "a"), (X, "a"), 80));
    }

    #[test]
    fn namespace_selector_peer_is_every_pod_of_matching_namespaces() {
        let c = with(
            X,
            json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "blue"}}}]}]}),
        );
        assert!(tcp(&c, (Y, "a"), (X, "a"), 80));
        assert!(tcp(&c, (Y, "c"), (X, "a"), 80));
        assert!(!tcp(&c, (X, "b"), (X, "a"), 80));
        // {} is every namespace, but still only pods.
        let c = with(
            X,
            json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]}),
        );
        assert!(tcp(&c, (Y, "c"), (X, "a"), 80));
        assert!(tcp(&c, (X, "b"), (X, "a"), 80));
        assert!(!external(&c, "192.0.2.1", (X, "a"), 80));
    }

    #[test]
    fn namespace_name_label_is_always_there() {
        let c = with(
            X,
            json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: Y}}}]}]}),
        );
        assert!(tcp(&c, (Y, "a"), (X, "a"), 80));
        assert!(!tcp(&c, (X, "b"), (X, "a"), 80));
        let mut ns = Namespace::new("n", labels([(NAMESPACE_NAME_LABEL, "forged")]));
        assert_eq!(ns.labels()[NAMESPACE_NAME_LABEL], "n");
        ns.set_labels(Labels::new());
        assert_eq!(ns.labels(), &labels([(NAMESPACE_NAME_LABEL, "n")]));
        ns.add_labels(&labels([("k", "v"), (NAMESPACE_NAME_LABEL, "other")]));
        assert_eq!(
            ns.labels(),
            &labels([("k", "v"), (NAMESPACE_NAME_LABEL, "n")])
        );
    }

    #[test]
    fn both_selectors_in_one_peer_must_both_match() {
        let peer = json!({"namespaceSelector": {"matchLabels": {"team": "blue"}}, "podSelector": {"matchLabels": {"app": "a"}}});
        let c = with(X, json!({"podSelector": {}, "ingress": [{"from": [peer]}]}));
        assert!(tcp(&c, (Y, "a"), (X, "b"), 80));
        assert!(!tcp(&c, (Y, "c"), (X, "b"), 80));
        assert!(!tcp(&c, (X, "a"), (X, "b"), 80));
        // The same selectors as two peers: either suffices.
        let peers = json!([{"namespaceSelector": {"matchLabels": {"team": "blue"}}}, {"podSelector": {"matchLabels": {"app": "a"}}}]);
        let c = with(X, json!({"podSelector": {}, "ingress": [{"from": peers}]}));
        assert!(tcp(&c, (Y, "c"), (X, "b"), 80));
        assert!(tcp(&c, (X, "a"), (X, "b"), 80));
    }

    #[test]
    fn selector_operators() {
        let sel = |exprs: Value| {
            parse_selector(
                &serde_json::from_value(json!({"matchExpressions": exprs})).unwrap(),
                "t",
            )
            .unwrap()
        };
        let red = labels([("team", "red"), ("tier", "web")]);
        let bare = Labels::new();
        let in_red = sel(json!([{"key": "team", "operator": "In", "values": ["red", "green"]}]));
        assert!(in_red.matches(&red) && !in_red.matches(&bare));
        let not_red = sel(json!([{"key": "team", "operator": "NotIn", "values": ["red"]}]));
        assert!(
            !not_red.matches(&red) && not_red.matches(&bare),
            "NotIn matches an absent key"
        );
        let exists = sel(json!([{"key": "tier", "operator": "Exists"}]));
        assert!(exists.matches(&red) && !exists.matches(&bare));
        let absent = sel(json!([{"key": "tier", "operator": "DoesNotExist", "values": []}]));
        assert!(!absent.matches(&red) && absent.matches(&bare));
        let both = sel(
            json!([{"key": "team", "operator": "In", "values": ["red"]}, {"key": "tier", "operator": "DoesNotExist"}]),
        );
        assert!(!both.matches(&red), "requirements are ANDed");
        let mixed: LabelSelector = serde_json::from_value(json!({"matchLabels": {"tier": "web"}, "matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["red"]}]})).unwrap();
        let mixed = parse_selector(&mixed, "t").unwrap();
        assert!(!mixed.matches(&red), "matchLabels AND matchExpressions");
        assert!(mixed.matches(&labels([("tier", "web"), ("team", "blue")])));
        assert!(sel(json!([])).matches(&bare), "empty selects all");
    }

    #[test]
    fn ip_block_matches_addresses_pods_included_minus_except() {
        let block = json!({"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.2.0/24"]}});
        let c = with(
            X,
            json!({"podSelector": {}, "ingress": [{"from": [block]}]}),
        );
        assert!(
            tcp(&c, (X, "b"), (X, "a"), 80),
            "x/b's address is in the block"
        );
        assert!(!tcp(&c, (Y, "a"), (X, "a"), 80), "y's pods are excepted");
        assert!(external(&c, "10.0.200.9", (X, "a"), 80));
        assert!(!external(&c, "10.1.0.1", (X, "a"), 80));
        assert!(!external(&c, "10.0.2.77", (X, "a"), 80));
    }

    #[test]
    fn ip_block_ignores_host_bits_and_other_families() {
        let c = with(
            X,
            json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.2.99/24"}}]}]}),
        );
        assert!(tcp(&c, (Y, "a"), (X, "a"), 80));
        assert!(
            !external(&c, "::ffff:10.0.2.1", (X, "a"), 80),
            "a v6 address is not in a v4 block"
        );
        let c = with(
            X,
            json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]}),
        );
        assert!(external(&c, "203.0.113.5", (X, "a"), 80));
        assert!(!external(&c, "2001:db8::1", (X, "a"), 80));
    }

    #[test]
    fn ipv6_and_dual_stack() {
        let mut c = cluster();
        for (p, v6) in [((X, "a"), "fd00::1:1"), ((Y, "a"), "fd00::2:1")] {
            c.pod_mut(&PodRef::new(p.0, p.1)).unwrap().ips.push(ip(v6));
        }
        let block = json!({"ipBlock": {"cidr": "fd00::2:0/112"}});
        c.create_policy(
            X,
            np(
                "p",
                json!({"podSelector": {}, "ingress": [{"from": [block]}]}),
            ),
        )
        .unwrap();
        let (ya, xa) = (pod(&c, Y, "a"), pod(&c, X, "a"));
        assert!(allowed_at(
            &c,
            Source::Pod(ya),
            xa,
            ip("fd00::1:1"),
            Protocol::Tcp,
            80
        ));
        assert!(!allowed_at(
            &c,
            Source::Pod(ya),
            xa,
            ip("10.0.1.1"),
            Protocol::Tcp,
            80
        ));
        assert!(
            !allowed(&c, Source::Pod(ya), xa, Protocol::Tcp, 80),
            "the primary is IPv4"
        );
        // y/c has no IPv6 address: nothing of its can match a v6 block.
        let yc = pod(&c, Y, "c");
        assert!(!allowed_at(
            &c,
            Source::Pod(yc),
            xa,
            ip("fd00::1:1"),
            Protocol::Tcp,
            80
        ));
    }

    #[test]
    fn numbered_ports_default_to_tcp_and_check_the_protocol() {
        let c = with(
            X,
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]}),
        );
        assert!(tcp(&c, (Y, "a"), (X, "a"), 80));
        assert!(!tcp(&c, (Y, "a"), (X, "a"), 81));
        assert!(!udp(&c, (Y, "a"), (X, "a"), 80));
        let c = with(
            X,
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": 80, "protocol": "SCTP"}]}]}),
        );
        assert!(!tcp(&c, (Y, "a"), (X, "a"), 80), "SCTP is not TCP");
        let sctp = allowed(
            &c,
            Source::Pod(pod(&c, Y, "a")),
            pod(&c, X, "a"),
            Protocol::Sctp,
            80,
        );
        assert!(sctp);
    }

    #[test]
    fn protocol_without_port_is_every_port_of_it() {
        let c = with(
            X,
            json!({"podSelector": {}, "ingress": [{"ports": [{"protocol": "UDP"}]}]}),
        );
        assert!(udp(&c, (Y, "a"), (X, "a"), 1));
        assert!(udp(&c, (Y, "a"), (X, "a"), 65535));
        assert!(!tcp(&c, (Y, "a"), (X, "a"), 80));
        let c = with(X, json!({"podSelector": {}, "ingress": [{"ports": [{}]}]}));
        assert!(
            tcp(&c, (Y, "a"), (X, "a"), 4242),
            "an empty port entry is all of TCP"
        );
        assert!(!udp(&c, (Y, "a"), (X, "a"), 4242));
    }

    #[test]
    fn end_port_range_is_inclusive() {
        let c = with(
            X,
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": 80, "endPort": 82, "protocol": "TCP"}]}]}),
        );
        assert!(!tcp(&c, (Y, "a"), (X, "a"), 79));
        assert!(tcp(&c, (Y, "a"), (X, "a"), 80));
        assert!(tcp(&c, (Y, "a"), (X, "a"), 82));
        assert!(!tcp(&c, (Y, "a"), (X, "a"), 83));
        let c = with(
            X,
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": 81, "endPort": 81}]}]}),
        );
        assert!(tcp(&c, (Y, "a"), (X, "a"), 81));
        assert!(!tcp(&c, (Y, "a"), (X, "a"), 80));
    }

    #[test]
    fn named_ports_resolve_on_the_destination_with_the_protocol() {
        let c = with(
            X,
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": "http"}]}]}),
        );
        assert!(tcp(&c, (Y, "a"), (X, "a"), 80));
        assert!(!tcp(&c, (Y, "a"), (X, "a"), 81), "http is 80 on this pod");
        // "dns" is a UDP port: a policy naming it with the default protocol TCP matches nothing.
        let c = with(
            X,
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": "dns"}]}]}),
        );
        assert!(!udp(&c, (Y, "a"), (X, "a"), 53));
        assert!(!tcp(&c, (Y, "a"), (X, "a"), 53));
        let c = with(
            X,
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": "dns", "protocol": "UDP"}]}]}),
        );
        assert!(udp(&c, (Y, "a"), (X, "a"), 53));
        // The same name may mean another number on another pod.
        let mut c = with(
            X,
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": "http"}]}]}),
        );
        c.pod_mut(&PodRef::new(X, "b")).unwrap().ports =
            vec![ContainerPort::named("http", 8080, Protocol::Tcp)];
        assert!(tcp(&c, (Y, "a"), (X, "b"), 8080));
        assert!(!tcp(&c, (Y, "a"), (X, "b"), 80));
        // An unknown name matches nothing.
        let c = with(
            X,
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": "nope"}]}]}),
        );
        assert!(!tcp(&c, (Y, "a"), (X, "a"), 80));
    }

    #[test]
    fn egress_named_ports_resolve_on_the_destination_and_never_on_external_addresses() {
        let c = with(
            X,
            json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"ports": [{"port": "http"}]}]}),
        );
        assert!(tcp(&c, (X, "a"), (Y, "a"), 80));
        assert!(!tcp(&c, (X, "a"), (Y, "a"), 81));
        let xa = pod(&c, X, "a");
        assert!(!allowed_to_external(
            &c,
            xa,
            ip("192.0.2.1"),
            Protocol::Tcp,
            80
        ));
        let c = with(
            X,
            json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"ports": [{"port": 80}]}]}),
        );
        assert!(allowed_to_external(
            &c,
            pod(&c, X, "a"),
            ip("192.0.2.1"),
            Protocol::Tcp,
            80
        ));
    }

    #[test]
    fn egress_peers_select_destinations() {
        let to = json!([{"namespaceSelector": {"matchLabels": {"team": "blue"}}, "podSelector": {"matchLabels": {"app": "c"}}}, {"ipBlock": {"cidr": "192.0.2.0/24"}}]);
        let c = with(
            X,
            json!({"podSelector": {"matchLabels": {"app": "a"}}, "policyTypes": ["Egress"], "egress": [{"to": to}]}),
        );
        assert!(tcp(&c, (X, "a"), (Y, "c"), 80));
        assert!(!tcp(&c, (X, "a"), (Y, "a"), 80));
        assert!(!tcp(&c, (X, "a"), (X, "b"), 80));
        assert!(tcp(&c, (X, "b"), (X, "a"), 80), "x/b is not selected");
        let xa = pod(&c, X, "a");
        assert!(allowed_to_external(
            &c,
            xa,
            ip("192.0.2.200"),
            Protocol::Udp,
            5
        ));
        assert!(!allowed_to_external(
            &c,
            xa,
            ip("198.51.100.1"),
            Protocol::Udp,
            5
        ));
    }

    #[test]
    fn both_directions_must_allow() {
        let mut c = cluster();
        c.create_policy(
            X,
            np(
                "deny-egress",
                json!({"podSelector": {}, "policyTypes": ["Egress"]}),
            ),
        )
        .unwrap();
        c.create_policy(Y, np("open", json!({"podSelector": {}, "ingress": [{}]})))
            .unwrap();
        assert!(
            !tcp(&c, (X, "a"), (Y, "a"), 80),
            "y admits it but x may not send"
        );
        c.create_policy(X, np("allow-to-y", json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"team": "blue"}}}]}]}))).unwrap();
        assert!(tcp(&c, (X, "a"), (Y, "a"), 80));
        c.apply_policy(Y, np("open", json!({"podSelector": {}, "ingress": []})))
            .unwrap();
        assert!(!tcp(&c, (X, "a"), (Y, "a"), 80), "x may send but y refuses");
    }

    #[test]
    fn policies_add_up() {
        let mut c = with(
            X,
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]}),
        );
        assert!(!tcp(&c, (Y, "a"), (X, "a"), 81));
        c.create_policy(X, np("q", json!({"podSelector": {"matchLabels": {"app": "a"}}, "ingress": [{"ports": [{"port": 81}]}]}))).unwrap();
        assert!(tcp(&c, (Y, "a"), (X, "a"), 81));
        assert!(tcp(&c, (Y, "a"), (X, "a"), 80));
        assert!(!tcp(&c, (Y, "a"), (X, "b"), 81), "q does not select x/b");
        // A deny-all next to them takes nothing away.
        c.create_policy(
            X,
            np(
                "deny",
                json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
            ),
        )
        .unwrap();
        assert!(tcp(&c, (Y, "a"), (X, "a"), 80));
        assert!(!tcp(&c, (X, "a"), (Y, "a"), 80));
    }

    #[test]
    fn host_network_pods_are_never_isolated_and_are_peers_by_address_only() {
        let mut c = cluster();
        let mut host = Pod::new(Y, "host");
        host.labels = labels([("app", "a")]);
        host.ips = vec![ip("172.16.0.10")];
        host.host_network = true;
        c.pods.push(host);
        c.create_policy(
            Y,
            np(
                "deny-all",
                json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
            ),
        )
        .unwrap();
        assert!(tcp(&c, (X, "a"), (Y, "host"), 80));
        assert!(tcp(&c, (Y, "host"), (X, "a"), 80));
        assert!(!isolated_for_ingress(&c, pod(&c, Y, "host")));
        let by_label = json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "a"}}}]}]});
        let c2 = {
            let mut c2 = c.clone();
            c2.create_policy(X, np("p", by_label)).unwrap();
            c2
        };
        assert!(
            !tcp(&c2, (Y, "host"), (X, "b"), 80),
            "labels do not make a host-network pod a pod peer"
        );
        assert!(tcp(&c2, (X, "a"), (X, "b"), 80));
        let by_ip = json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "172.16.0.0/24"}}]}]});
        c.create_policy(X, np("p", by_ip)).unwrap();
        assert!(tcp(&c, (Y, "host"), (X, "b"), 80));
    }

    #[test]
    fn the_local_node_may_always_reach_its_pods() {
        let mut c = with(X, json!({"podSelector": {}, "policyTypes": ["Ingress"]}));
        let mut kubelet = Pod::new(Y, "probe");
        kubelet.host_network = true;
        kubelet.ips = vec![ip("172.16.0.1")];
        kubelet.node = Some("n1".into());
        c.pods.push(kubelet);
        assert!(
            !tcp(&c, (Y, "probe"), (X, "a"), 80),
            "x/a's node is unknown"
        );
        c.pod_mut(&PodRef::new(X, "a")).unwrap().node = Some("n1".into());
        c.pod_mut(&PodRef::new(X, "b")).unwrap().node = Some("n2".into());
        assert!(tcp(&c, (Y, "probe"), (X, "a"), 80));
        assert!(!tcp(&c, (Y, "probe"), (X, "b"), 80));
    }

    #[test]
    fn a_pod_may_always_reach_itself() {
        let c = with(
            X,
            json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        );
        assert!(tcp(&c, (X, "a"), (X, "a"), 80));
        assert!(!tcp(&c, (X, "b"), (X, "a"), 80));
    }

    #[test]
    fn create_update_apply_delete() {
        let mut c = cluster();
        let deny = json!({"podSelector": {}, "policyTypes": ["Ingress"]});
        c.create_policy(X, np("p", deny.clone())).unwrap();
        assert_eq!(
            c.create_policy(X, np("p", deny.clone())),
            Err(ModelError::AlreadyExists("x/p".into()))
        );
        c.create_policy(Y, np("p", deny.clone())).unwrap();
        assert!(!tcp(&c, (Y, "a"), (X, "a"), 80));
        c.update_policy(X, np("p", json!({"podSelector": {}, "ingress": [{}]})))
            .unwrap();
        assert!(tcp(&c, (Y, "a"), (X, "a"), 80));
        assert_eq!(
            c.update_policy(X, np("q", deny.clone())),
            Err(ModelError::NotFound("x/q".into()))
        );
        assert_eq!(c.policies().count(), 2);
        c.delete_policy(Y, "p").unwrap();
        assert!(tcp(&c, (X, "a"), (Y, "a"), 80));
        assert_eq!(
            c.delete_policy(Y, "p"),
            Err(ModelError::NotFound("y/p".into()))
        );
        assert_eq!(
            c.create_policy("nowhere", np("p", deny)),
            Err(ModelError::NoNamespace("nowhere".into()))
        );
        c.clear_policies();
        assert_eq!(c.policies().count(), 0);
    }

    #[test]
    fn the_policy_object_is_kept_as_sent() {
        let object = np(
            "p",
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]}),
        );
        let mut c = cluster();
        c.create_policy(X, object.clone()).unwrap();
        let (key, stored) = c.policies().next().unwrap();
        assert_eq!((key, stored), (&PodRef::new(X, "p"), &object));
    }

    #[test]
    fn refuses_what_the_apiserver_refuses() {
        let cases = [
            (
                json!({"ingress": [{"ports": [{"endPort": 90}]}]}),
                "requires port",
            ),
            (
                json!({"ingress": [{"ports": [{"port": "http", "endPort": 90}]}]}),
                "named port",
            ),
            (
                json!({"ingress": [{"ports": [{"port": 90, "endPort": 80}]}]}),
                "at least port",
            ),
            (json!({"ingress": [{"ports": [{"port": 0}]}]}), "1-65535"),
            (
                json!({"ingress": [{"ports": [{"port": 65536}]}]}),
                "1-65535",
            ),
            (
                json!({"ingress": [{"ports": [{"port": "80"}]}]}),
                "port name",
            ),
            (
                json!({"ingress": [{"ports": [{"port": "a-very-long-port-name"}]}]}),
                "port name",
            ),
            (
                json!({"ingress": [{"ports": [{"protocol": "tcp"}]}]}),
                "TCP, UDP or SCTP",
            ),
            (json!({"ingress": [{"from": [{}]}]}), "must specify a peer"),
            (
                json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]}),
                "combined",
            ),
            (
                json!({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]}),
                "not a CIDR",
            ),
            (
                json!({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0"}}]}]}),
                "not a CIDR",
            ),
            (
                json!({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}]}]}),
                "strict subset",
            ),
            (
                json!({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.0.0/8"]}}]}]}),
                "strict subset",
            ),
            (
                json!({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["fd00::/64"]}}]}]}),
                "strict subset",
            ),
            (
                json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Has"}]}}),
                "unknown operator",
            ),
            (
                json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}),
                "need values",
            ),
            (
                json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["b"]}]}}),
                "no values",
            ),
            (
                json!({"podSelector": {"matchLabels": {"a": "b c"}}}),
                "label value",
            ),
            (
                json!({"podSelector": {"matchLabels": {"-a": "b"}}}),
                "label key",
            ),
            (json!({"policyTypes": ["ingress"]}), "Ingress or Egress"),
            (
                json!({"policyTypes": ["Ingress", "Egress", "Ingress"]}),
                "at most",
            ),
            (json!({"ingress": {}}), "spec"),
        ];
        for (spec, why) in cases {
            let msg = refused(spec.clone());
            assert!(msg.contains(why), "{spec}: {msg:?} should say {why:?}");
        }
        let bad_meta = [
            json!({"metadata": {}, "spec": {}}),
            json!({"metadata": {"name": "Upper"}, "spec": {}}),
            json!({"metadata": {"name": "p", "namespace": Y}, "spec": {}}),
            json!({"kind": "Pod", "metadata": {"name": "p"}}),
            json!([]),
        ];
        for object in bad_meta {
            assert!(
                matches!(
                    cluster().create_policy(X, object.clone()),
                    Err(ModelError::Invalid(_))
                ),
                "{object}"
            );
        }
        let fine = json!({"metadata": {"name": "p", "namespace": X}});
        assert!(
            cluster().create_policy(X, fine).is_ok(),
            "no spec: all defaults"
        );
    }

    #[test]
    fn cidr_arithmetic() {
        let c = Cidr::parse("10.244.1.7/4").unwrap();
        assert_eq!(c.to_string(), "0.0.0.0/4");
        assert!(c.contains(ip("15.255.255.255")) && !c.contains(ip("16.0.0.0")));
        assert_eq!(Cidr::host(ip("10.1.2.3")).to_string(), "10.1.2.3/32");
        assert_eq!(Cidr::host(ip("fd00::5")).to_string(), "fd00::5/128");
        assert_eq!(
            Cidr::new(ip("fd00:1:2:3::9"), 48).to_string(),
            "fd00:1:2::/48"
        );
        assert!(Cidr::parse("::/0").unwrap().contains(ip("2001:db8::1")));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains(ip("255.255.255.255")));
        assert!(Cidr::parse("10.0.0.0/08").is_none() && Cidr::parse("10.0.0.0/+8").is_none());
        assert!(Cidr::parse("10.0.0.0/8")
            .unwrap()
            .strictly_contains(&Cidr::parse("10.3.0.0/16").unwrap()));
    }

    #[test]
    fn name_syntax() {
        assert!(
            is_iana_svc_name("serve-80-tcp")
                && !is_iana_svc_name("serve--80")
                && !is_iana_svc_name("80")
        );
        assert!(
            is_label_key("kubernetes.io/metadata.name")
                && !is_label_key("a/")
                && !is_label_key("UP.per/x")
        );
        assert!(is_label_value("") && is_label_value("A.b_c-9") && !is_label_value("x-"));
        assert!(is_dns_subdomain("a.b-c") && !is_dns_subdomain("a_b") && !is_dns_subdomain("-a"));
    }

    #[test]
    fn protocol_spellings() {
        // Policies: the API's spelling, case-sensitive.
        assert_eq!(Protocol::from_api("SCTP"), Some(Protocol::Sctp));
        assert_eq!(Protocol::from_api("tcp"), None);
        assert_eq!(Protocol::Udp.to_string(), "UDP");
        assert_eq!(serde_json::to_value(Protocol::Tcp).unwrap(), json!("TCP"));
        assert_eq!(
            serde_json::from_value::<Protocol>(json!("UDP")).unwrap(),
            Protocol::Udp
        );
        // Command lines and probe targets: either case.
        assert_eq!("tcp".parse::<Protocol>(), Ok(Protocol::Tcp));
        assert_eq!("Sctp".parse::<Protocol>(), Ok(Protocol::Sctp));
        assert!("icmp".parse::<Protocol>().is_err());
        assert_eq!(Protocol::Sctp.lowercase(), "sctp");
        assert_eq!(labels([("a", "1")]), labels([("a", "1")].iter().copied()));
    }
}

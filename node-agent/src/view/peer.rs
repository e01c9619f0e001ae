//! One remote Node reduced to what planning needs.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use crate::annotations::{self, AnnotationKeys, PeerBackend};
use crate::config::parse_cidr;
use crate::net::Family;

use super::skip::{Missing, SkipReason};

/// The fields of a Kubernetes Node the agent reads, so this crate needs no Kubernetes types:
/// the watcher copies them out of each Node it sees.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    /// `spec.podCIDRs` (or `[spec.podCIDR]` when only that is set).
    pub pod_cidrs: Vec<String>,
    pub annotations: BTreeMap<String, String>,
    /// `metadata.creationTimestamp` in Unix seconds; the older node wins a conflict.
    pub created_unix: Option<i64>,
}

/// A remote node as planning sees it: about 150 bytes, so thousands of peers stay small.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: Box<str>,
    pub created_unix: Option<i64>,
    pub subnet_v4: Option<Ipv4Network>,
    pub subnet_v6: Option<Ipv6Network>,
    pub public_ip_v4: Option<Ipv4Addr>,
    pub public_ip_v6: Option<Ipv6Addr>,
    pub backend: PeerBackend,
}

impl Peer {
    /// Read a Node. Checks only what the Node alone can tell (annotations, CIDR syntax); what
    /// depends on the config or on other nodes is checked by `ClusterView::resolve`.
    pub fn from_node(node: &NodeInfo, keys: &AnnotationKeys) -> Result<Peer, SkipReason> {
        if !annotations::is_managed(keys, &node.annotations) {
            return Err(SkipReason::NotManaged);
        }
        let (subnet_v4, subnet_v6) = parse_pod_cidrs(&node.pod_cidrs)?;
        let a =
            annotations::parse_peer(keys, &node.annotations).map_err(SkipReason::BadAnnotation)?;
        Ok(Peer {
            name: node.name.as_str().into(),
            created_unix: node.created_unix,
            subnet_v4,
            subnet_v6,
            public_ip_v4: a.public_ip,
            public_ip_v6: a.public_ipv6,
            backend: a.backend,
        })
    }
}

impl Peer {
    /// The peer's pod subnet and public IP in `family`: what every backend needs to reach it
    /// there, or why it cannot be programmed in that family (the subnet is checked first).
    pub fn address(&self, family: Family) -> Result<(IpNetwork, IpAddr), SkipReason> {
        let (subnet, public_ip) = match family {
            Family::V4 => (
                self.subnet_v4.map(IpNetwork::V4),
                self.public_ip_v4.map(IpAddr::V4),
            ),
            Family::V6 => (
                self.subnet_v6.map(IpNetwork::V6),
                self.public_ip_v6.map(IpAddr::V6),
            ),
        };
        let missing = |missing| SkipReason::MissingForFamily { family, missing };
        Ok((
            subnet.ok_or(missing(Missing::PodCidr))?,
            public_ip.ok_or(missing(Missing::PublicIp))?,
        ))
    }
}

/// Read `spec.podCIDRs`: at most one per family, as Kubernetes allows. Host bits are masked,
/// as Go's `net.ParseCIDR` (and so flannel) does.
pub fn parse_pod_cidrs(
    cidrs: &[String],
) -> Result<(Option<Ipv4Network>, Option<Ipv6Network>), SkipReason> {
    if cidrs.is_empty() {
        return Err(SkipReason::NoPodCidr);
    }
    if cidrs.len() > 2 {
        return Err(SkipReason::BadPodCidr(format!(
            "{} entries; at most one IPv4 and one IPv6",
            cidrs.len()
        )));
    }
    let mut v4 = None;
    let mut v6 = None;
    for c in cidrs {
        // The longest IPv6 CIDR is 43 characters; do not quote megabytes in a log line.
        if c.len() > 64 {
            return Err(SkipReason::BadPodCidr(format!(
                "a {}-byte entry is not a CIDR",
                c.len()
            )));
        }
        let twice = || SkipReason::BadPodCidr(format!("two podCIDRs of {c}'s family"));
        match parse_cidr(c).map_err(SkipReason::BadPodCidr)? {
            IpNetwork::V4(n) => {
                let n = Ipv4Network::new(n.network(), n.prefix())
                    .map_err(|e| SkipReason::BadPodCidr(e.to_string()))?;
                if v4.replace(n).is_some() {
                    return Err(twice());
                }
            }
            IpNetwork::V6(n) => {
                let n = Ipv6Network::new(n.network(), n.prefix())
                    .map_err(|e| SkipReason::BadPodCidr(e.to_string()))?;
                if v6.replace(n).is_some() {
                    return Err(twice());
                }
            }
        }
    }
    Ok((v4, v6))
}

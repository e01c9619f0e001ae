//! Why a Node is not programmed as a peer.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::annotations::AnnotationError;
use crate::config::BackendType;
use crate::net::{Family, Mac};
use crate::wg_key::WgKey;

/// What a peer lacks for an address family the config enables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    PodCidr,
    PublicIp,
    /// A VXLAN or WireGuard node without `backend-data` (or `backend-v6-data`).
    BackendData,
}

/// Why a Node is skipped. Skipping one Node never affects another's entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// No `kube-subnet-manager: "true"`: not (yet) run by trellis or flannel.
    NotManaged,
    /// No `spec.podCIDRs` yet (kube-controller-manager assigns them).
    NoPodCidr,
    BadPodCidr(String),
    BadAnnotation(AnnotationError),
    MissingForFamily {
        family: Family,
        missing: Missing,
    },
    /// The peer's backend cannot carry this family (IPIP and IPv6).
    UnsupportedFamily {
        backend: BackendType,
        family: Family,
    },
    OutsideNetwork {
        subnet: IpNetwork,
        network: IpNetwork,
    },
    OverlapsLocal {
        subnet: IpNetwork,
        local: IpNetwork,
    },
    /// Overlaps a peer that wins the tie-break (older, then lexicographically first name).
    OverlapsPeer {
        subnet: IpNetwork,
        other: String,
    },
    /// Advertises one of this node's own addresses.
    PublicIpIsLocal {
        ip: IpAddr,
    },
    /// Advertises the same public IP as a peer that wins the tie-break.
    DuplicatePublicIp {
        ip: IpAddr,
        other: String,
    },
    /// Advertises an address that can be neither a next hop nor a tunnel endpoint.
    UnusablePublicIp {
        ip: IpAddr,
        why: &'static str,
    },
    /// Advertises this node's own VTEP MAC.
    VtepMacIsLocal {
        mac: Mac,
    },
    /// Advertises the same VTEP MAC on the same VNI as a peer that wins the tie-break: every
    /// node's FDB entry for that MAC would send the other's traffic to this one.
    DuplicateVtepMac {
        mac: Mac,
        vni: u32,
        other: String,
    },
    /// Advertises this node's own WireGuard public key.
    WgKeyIsLocal {
        key: WgKey,
    },
    /// Advertises the same WireGuard public key as a peer that wins the tie-break: WireGuard
    /// knows a peer by its key alone, so the two cannot both be peers.
    DuplicateWgKey {
        key: WgKey,
        other: String,
    },
    /// A WireGuard peer, but this node cannot use WireGuard: no private key (the key file
    /// could not be read or written) or no WireGuard in its kernel.
    WireguardUnavailable,
    /// Needs plain routing (host-gw, or DirectRouting) but is not on our L2 segment.
    NotOnLink {
        backend: BackendType,
        public_ip: IpAddr,
    },
    /// A VXLAN peer on a VNI other than ours, when older claims already use every foreign
    /// VNI allowed: each one costs every node a device of its own.
    TooManyVnis {
        vni: u32,
        max: usize,
    },
}

impl SkipReason {
    /// A short stable label for a metric (`reason="..."`).
    pub fn label(&self) -> &'static str {
        match self {
            SkipReason::NotManaged => "not_managed",
            SkipReason::NoPodCidr => "no_pod_cidr",
            SkipReason::BadPodCidr(_) => "bad_pod_cidr",
            SkipReason::BadAnnotation(_) => "bad_annotation",
            SkipReason::MissingForFamily { .. } => "missing_for_family",
            SkipReason::UnsupportedFamily { .. } => "unsupported_family",
            SkipReason::OutsideNetwork { .. } => "outside_network",
            SkipReason::OverlapsLocal { .. } => "overlaps_local",
            SkipReason::OverlapsPeer { .. } => "overlaps_peer",
            SkipReason::PublicIpIsLocal { .. } => "public_ip_is_local",
            SkipReason::DuplicatePublicIp { .. } => "duplicate_public_ip",
            SkipReason::UnusablePublicIp { .. } => "unusable_public_ip",
            SkipReason::VtepMacIsLocal { .. } => "vtep_mac_is_local",
            SkipReason::DuplicateVtepMac { .. } => "duplicate_vtep_mac",
            SkipReason::WgKeyIsLocal { .. } => "wg_key_is_local",
            SkipReason::DuplicateWgKey { .. } => "duplicate_wg_key",
            SkipReason::WireguardUnavailable => "wireguard_unavailable",
            SkipReason::NotOnLink { .. } => "not_on_link",
            SkipReason::TooManyVnis { .. } => "too_many_vnis",
        }
    }

    /// Normal while a node joins (not annotated or no podCIDR yet): log at debug, not warn.
    pub fn is_benign(&self) -> bool {
        matches!(self, SkipReason::NotManaged | SkipReason::NoPodCidr)
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::NotManaged => write!(f, "not managed by trellis/flannel (no kube-subnet-manager annotation)"),
            SkipReason::NoPodCidr => write!(f, "no spec.podCIDRs assigned yet"),
            SkipReason::BadPodCidr(why) => write!(f, "bad spec.podCIDRs: {why}"),
            SkipReason::BadAnnotation(e) => write!(f, "{e}"),
            SkipReason::MissingForFamily { family, missing } => {
                let what = match missing {
                    Missing::PodCidr => "podCIDR",
                    Missing::PublicIp => "public IP annotation",
                    Missing::BackendData => "backend-data annotation",
                };
                write!(f, "no {family} {what}, but {family} is enabled")
            }
            SkipReason::UnsupportedFamily { backend, family } => {
                write!(f, "backend {backend} cannot carry {family}")
            }
            SkipReason::OutsideNetwork { subnet, network } => {
                write!(f, "podCIDR {subnet} is outside the pod network {network}")
            }
            SkipReason::OverlapsLocal { subnet, local } => {
                write!(f, "podCIDR {subnet} overlaps this node's {local}")
            }
            SkipReason::OverlapsPeer { subnet, other } => {
                write!(f, "podCIDR {subnet} overlaps that of node {other}, which is kept")
            }
            SkipReason::PublicIpIsLocal { ip } => {
                write!(f, "advertises public IP {ip}, which is this node's")
            }
            SkipReason::DuplicatePublicIp { ip, other } => {
                write!(f, "advertises public IP {ip}, already advertised by node {other}, which is kept")
            }
            SkipReason::UnusablePublicIp { ip, why } => {
                write!(f, "advertises public IP {ip}, which is {why}")
            }
            SkipReason::VtepMacIsLocal { mac } => {
                write!(f, "advertises VTEP MAC {mac}, which is this node's")
            }
            SkipReason::DuplicateVtepMac { mac, vni, other } => write!(
                f,
                "advertises VTEP MAC {mac} on VNI {vni}, already advertised by node {other}, which is kept"
            ),
            SkipReason::WgKeyIsLocal { key } => {
                write!(f, "advertises WireGuard public key {key}, which is this node's")
            }
            SkipReason::DuplicateWgKey { key, other } => write!(
                f,
                "advertises WireGuard public key {key}, already advertised by node {other}, which is kept"
            ),
            SkipReason::WireguardUnavailable => write!(
                f,
                "is a WireGuard peer, but this node cannot use WireGuard: no private key or no WireGuard in its kernel (see the agent's log at start)"
            ),
            SkipReason::TooManyVnis { vni, max } => write!(
                f,
                "VXLAN VNI {vni} would be one more than the {max} foreign VNIs served at once (each needs a device of its own)"
            ),
            SkipReason::NotOnLink { backend, public_ip } => write!(
                f,
                "{backend} needs the peer on this node's L2 segment but {public_ip} is not on the underlay's subnet"
            ),
        }
    }
}

/// A Node that is not programmed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub node: String,
    pub reason: SkipReason,
}

/// Which skips are news. A peer skipped for the same reason as in the last pass was reported
/// then; saying it again on every pass would bury everything else in the log of a large
/// cluster (the metric keeps the standing count).
#[derive(Debug, Default)]
pub struct SkipLog {
    last: BTreeSet<(String, String)>,
}

impl SkipLog {
    /// Remembers this pass's skips (benign ones ignored) and returns those that are new or
    /// have a new reason, and the nodes no longer skipped at all.
    pub fn update<'a>(&mut self, now: &'a [Skipped]) -> (Vec<&'a Skipped>, Vec<String>) {
        let mut next = BTreeSet::new();
        let mut fresh = Vec::new();
        for s in now.iter().filter(|s| !s.reason.is_benign()) {
            let key = (s.node.clone(), s.reason.to_string());
            if !self.last.contains(&key) {
                fresh.push(s);
            }
            next.insert(key);
        }
        let still: BTreeSet<&str> = next.iter().map(|(n, _)| n.as_str()).collect();
        let mut cleared: Vec<String> = self
            .last
            .iter()
            .map(|(n, _)| n.clone())
            .filter(|n| !still.contains(n.as_str()))
            .collect();
        cleared.dedup();
        self.last = next;
        (fresh, cleared)
    }
}

#[cfg(test)]
mod skip_log_tests {
    use super::*;

    fn skipped(node: &str, reason: SkipReason) -> Skipped {
        Skipped {
            node: node.into(),
            reason,
        }
    }

    #[test]
    fn reports_a_skip_once_again_when_its_reason_changes_and_when_it_clears() {
        let ip: IpAddr = "10.0.0.9".parse().expect("ip");
        let dup = |other: &str| SkipReason::DuplicatePublicIp {
            ip,
            other: other.into(),
        };
        let mut log = SkipLog::default();
        let first = [skipped("a", dup("b")), skipped("c", SkipReason::NotManaged)];
        let (fresh, cleared) = log.update(&first);
        assert_eq!(fresh, vec![&first[0]], "benign skips are not news");
        assert!(cleared.is_empty());

        let (fresh, cleared) = log.update(&first);
        assert!(
            fresh.is_empty() && cleared.is_empty(),
            "same skip, same reason"
        );

        let changed = [skipped("a", dup("d"))];
        let (fresh, cleared) = log.update(&changed);
        assert_eq!(fresh, vec![&changed[0]], "a new reason is news");
        assert!(cleared.is_empty(), "still skipped");

        let (fresh, cleared) = log.update(&[]);
        assert!(fresh.is_empty());
        assert_eq!(cleared, vec!["a".to_string()]);
    }
}

//! Why a Node is not programmed as a peer.

use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::annotations::AnnotationError;
use crate::config::BackendType;
use crate::dataplane::desired::Family;

/// What a peer lacks for an address family the config enables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    PodCidr,
    PublicIp,
    /// A VXLAN node without `backend-data` (or `backend-v6-data`).
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
                    Missing::BackendData => "VXLAN backend data annotation",
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

//! What a Node claims for itself and can take from others, and since when.
//!
//! Each claim (a podCIDR, a public IP, a VTEP MAC on a VNI) is dated on its own: by its Node's
//! `creationTimestamp` when this agent first saw it, else by when this agent saw the Node
//! start claiming it. A conflict is settled on the date of the contested claim alone, so a
//! holder that changes something else (its address, its backend) keeps what it held, and a
//! long-registered Node that starts copying a younger node's identity does not take it.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::{Ipv4Network, Ipv6Network};

use crate::annotations::PeerBackend;
use crate::net::{Family, Mac};
use crate::wg_key::WgKey;

use super::peer::Peer;
use super::skip::SkipReason;

/// One identity a Node claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Claim {
    SubnetV4(Ipv4Network),
    SubnetV6(Ipv6Network),
    IpV4(Ipv4Addr),
    IpV6(Ipv6Addr),
    VtepMac(Family, u32, Mac),
    WgKey(WgKey),
}

/// Every claim of a valid peer.
pub fn claims_of(p: &Peer) -> Vec<Claim> {
    let mut out = Vec::with_capacity(6);
    out.extend(p.subnet_v4.map(Claim::SubnetV4));
    out.extend(p.subnet_v6.map(Claim::SubnetV6));
    out.extend(p.public_ip_v4.map(Claim::IpV4));
    out.extend(p.public_ip_v6.map(Claim::IpV6));
    if let PeerBackend::Vxlan { v4, v6 } = p.backend {
        out.extend(v4.map(|d| Claim::VtepMac(Family::V4, d.vni, d.vtep_mac)));
        out.extend(v6.map(|d| Claim::VtepMac(Family::V6, d.vni, d.vtep_mac)));
    }
    out.extend(p.backend.wireguard_keys().map(Claim::WgKey));
    out
}

/// Claim dates per Node (Unix seconds): a Node's creation for what it claimed when this agent
/// first saw it, else when this agent saw it start claiming.
#[derive(Debug, Clone, Default)]
pub struct ClaimDates {
    seen: HashMap<Box<str>, HashMap<Claim, i64>>,
}

impl ClaimDates {
    /// Records a Node's entry as it changes from `old` to `new` at `now`. A claim new to the
    /// Node is dated `now` (or its creation, if later); kept claims keep their dates. An
    /// invalid entry in between changes nothing: the Node lost no claim by being broken.
    pub fn observe(
        &mut self,
        name: &str,
        old: Option<&Result<Peer, SkipReason>>,
        new: &Result<Peer, SkipReason>,
        created: Option<i64>,
        now: i64,
    ) {
        let Ok(new) = new else {
            return;
        };
        let current = claims_of(new);
        let before: Vec<Claim> = match old {
            Some(Ok(p)) => claims_of(p),
            _ => Vec::new(),
        };
        let dates = self.seen.entry(name.into()).or_default();
        match old {
            // First sight: what it claims dates from its creation. Recorded, so that a claim
            // it keeps through an invalid spell is still known as old.
            None => {
                if let Some(c0) = created {
                    for c in &current {
                        dates.entry(*c).or_insert(c0);
                    }
                }
            }
            Some(_) => {
                let since = now.max(created.unwrap_or(i64::MIN));
                for c in &current {
                    if !before.contains(c) && !dates.contains_key(c) {
                        dates.insert(*c, since);
                    }
                }
            }
        }
        dates.retain(|c, _| current.contains(c));
        if dates.is_empty() {
            self.seen.remove(name);
        }
    }

    /// Since when `p` claims `c` (`i64::MAX` when nothing dates it: it loses every tie).
    pub fn date(&self, p: &Peer, c: &Claim) -> i64 {
        self.seen
            .get(&p.name)
            .and_then(|d| d.get(c))
            .copied()
            .or(p.created_unix)
            .unwrap_or(i64::MAX)
    }

    /// The date of `p`'s newest claim: the order in which Nodes are considered.
    pub fn newest(&self, p: &Peer) -> i64 {
        let seen = self
            .seen
            .get(&p.name)
            .and_then(|d| d.values().max().copied());
        match (seen, p.created_unix) {
            (Some(d), Some(c)) => d.max(c),
            (Some(d), None) => d,
            (None, Some(c)) => c,
            (None, None) => i64::MAX,
        }
    }

    pub fn forget(&mut self, name: &str) {
        self.seen.remove(name);
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.seen.retain(|name, _| keep(name));
    }
}

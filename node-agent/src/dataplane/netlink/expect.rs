//! Telling the agent's own changes apart from drift.
//!
//! Every op the executor applies is notified back on the drift monitor's socket. Without a way
//! to recognise them, each pass that changed something was followed by a full re-read of every
//! owned kernel object (15000 at 5000 peers) that found nothing to do, and a Node event arriving
//! meanwhile waited behind it. The executor publishes the state it is driving the kernel to
//! ([`Expected`]) before it applies; the monitor then signals only notifications that leave an
//! object different from that state. A notification it cannot judge (no expectation published,
//! a device it cannot name) is drift, as before.

use std::sync::{Arc, RwLock};

use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use trellis_common::netlink::{link_is_up, link_name};

use super::monitor::Owned;
use super::parse;
use crate::dataplane::desired::{Address, KernelState, Link};
use crate::dataplane::diff::needs_set;

/// The state the executor is driving the kernel to, shared with the drift monitor. `None`
/// while unknown (before the first pass, after an op failed): then every change is drift.
#[derive(Debug, Clone, Default)]
pub struct Expected(Arc<RwLock<Option<Arc<KernelState>>>>);

impl Expected {
    pub fn set(&self, state: Option<Arc<KernelState>>) {
        let mut slot = match self.0.write() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        *slot = state;
    }

    pub fn get(&self) -> Option<Arc<KernelState>> {
        match self.0.read() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

/// Whether a notification about something trellis owns leaves that object as `expected` has
/// it (so it needs no repair). Call after [`super::concerns_owned`] has updated `owned`.
pub fn agrees(msg: &RouteNetlinkMessage, owned: &Owned, expected: &KernelState) -> bool {
    use RouteNetlinkMessage as M;
    match msg {
        M::NewLink(l) => {
            let Some(name) = link_name(l) else {
                return false;
            };
            let Some(want) = expected.links.get(name) else {
                return false;
            };
            // A device just registered is announced (all flags changed) before it is
            // brought up, even when created up in one request; a later notification tells
            // whether it came up.
            let just_created = l.header.change_mask.bits() == u32::MAX;
            let got = Link {
                name: name.to_string(),
                kind: parse::link_kind(l),
                mtu: parse::link_mtu(l),
                mac: parse::link_mac(l),
                up: link_is_up(l) || just_created,
            };
            want.kind == got.kind && !needs_set(want, &got)
        }
        M::DelLink(l) => link_name(l).is_some_and(|n| !expected.links.contains_key(n)),
        M::NewAddress(a) | M::DelAddress(a) => {
            let (Some(link), Some(addr)) = (owned.name(a.header.index), parse::address(a)) else {
                return false;
            };
            let present = expected.addresses.contains(&Address {
                link: link.to_string(),
                addr,
            });
            present == matches!(msg, M::NewAddress(_))
        }
        M::NewRoute(r) => {
            let Some(info) = parse::route_info(r) else {
                return false;
            };
            let want = expected.routes.get(&info.dst);
            if !parse::is_trellis_route(r) {
                // Another protocol's route to a destination of ours: harmless unless we want
                // that destination (ours may have been replaced by it).
                return want.is_none();
            }
            let dev = info.oif.and_then(|i| owned.name(i)).unwrap_or("");
            want.is_some_and(|w| w.gateway == info.via() && w.dev == dev && w.onlink == info.onlink)
        }
        M::DelRoute(r) => {
            parse::route_info(r).is_some_and(|i| !expected.routes.contains_key(&i.dst))
        }
        M::NewNeighbour(n) | M::DelNeighbour(n) => {
            let Some(link) = owned.name(n.header.ifindex) else {
                return false;
            };
            let added = matches!(msg, M::NewNeighbour(_));
            if n.header.family == AddressFamily::Bridge {
                let Some(mac) = parse::neigh_mac(n) else {
                    return false;
                };
                let want = expected.fdb.get(&(link.to_string(), mac));
                if !added {
                    return want.is_none();
                }
                match parse::permanent_fdb(n) {
                    Some(got) => want.is_some_and(|w| Some(w.dst) == got.ip),
                    // Learned or device-default entries are not what trellis programs.
                    None => true,
                }
            } else {
                let Some(ip) = parse::neigh_ip(n) else {
                    return false;
                };
                let want = expected.neighbours.get(&(link.to_string(), ip));
                if !added {
                    return want.is_none();
                }
                match parse::permanent_neighbour(n) {
                    Some(got) => want.is_some_and(|w| w.mac == got.mac),
                    // A dynamic entry matters only where it displaced one of ours.
                    None => want.is_none(),
                }
            }
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests;

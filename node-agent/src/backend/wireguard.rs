//! WireGuard, to flannel's contract (`pkg/backend/wireguard`): device `flannel-wg` (and
//! `flannel-wg-v6` in the `separate` mode) with the node's key and listen port, MTU the
//! underlay's − 80, the subnet's network address on it, and one route for the whole pod
//! network through it. Each peer is a WireGuard peer: its public key, endpoint = its public IP
//! and advertised port, allowed IPs = its podCIDR(s).
//!
//! When WireGuard is not the node's own backend, a peer that advertises it is still reached
//! through it ("foreign", as with the other backends during a switch): the device is made with
//! flannel's default ports and the peer gets a route of its own, since there is no pod-network
//! route through the device then.

use std::net::{IpAddr, SocketAddr};

use ipnetwork::IpNetwork;

use super::{check_underlay_mtu, Backend, PlanContext, PlanError};
use crate::annotations::{Advertisement, BackendData, PeerBackend, WireguardData};
use crate::config::{BackendType, WgMode, WireguardConfig};
use crate::dataplane::desired::{self, KernelState, Link, LinkKind, Route, WgPeer};
use crate::net::{Family, WG6_LINK_NAME, WG_LINK_NAME};
use crate::view::{Missing, Peer, SkipReason};
use crate::wg_key::WgKeyPair;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wireguard {
    opts: WireguardConfig,
    /// Whether this is the node's configured backend (its options apply, and the pod
    /// network is routed through the device).
    own: bool,
}

impl Wireguard {
    pub fn new(opts: WireguardConfig, own: bool) -> Self {
        Wireguard { opts, own }
    }

    /// A peer's backend when ours is another: flannel's defaults, no PSK, no keepalive.
    pub fn foreign() -> Self {
        Wireguard::new(WireguardConfig::default(), false)
    }

    /// The device carrying `family` and its listen port.
    fn device(&self, family: Family) -> (&'static str, u16) {
        match (self.opts.mode, family) {
            (WgMode::Separate, Family::V6) => (WG6_LINK_NAME, self.opts.listen_port_v6),
            _ => (WG_LINK_NAME, self.opts.listen_port),
        }
    }

    fn underlay_mtu(&self, ctx: &PlanContext<'_>) -> u32 {
        match self.opts.mtu {
            Some(m) if self.own => m,
            _ => ctx.lease.underlay.mtu,
        }
    }

    fn device_mtu(&self, ctx: &PlanContext<'_>) -> u32 {
        let overhead = BackendType::Wireguard.overhead(Family::V4);
        self.underlay_mtu(ctx).saturating_sub(overhead)
    }

    /// The device of `family` with our key and our subnet's address on it (added only if
    /// absent, so the own backend's settings win); its name.
    fn ensure_device(
        &self,
        ctx: &PlanContext<'_>,
        key: &WgKeyPair,
        family: Family,
        out: &mut KernelState,
    ) -> &'static str {
        let (name, listen_port) = self.device(family);
        if !out.links.contains_key(name) {
            out.add_link(Link {
                name: name.to_string(),
                kind: LinkKind::Wireguard(desired::Wireguard {
                    private_key: key.private,
                    listen_port,
                }),
                mtu: self.device_mtu(ctx),
                mac: None,
                up: true,
            });
        }
        if let Some(addr) = ctx.device_address(family) {
            out.add_address(name, addr);
        }
        name
    }

    /// What one peer needs, decided before anything is added (all or nothing).
    fn peer_entries(
        &self,
        ctx: &PlanContext<'_>,
        peer: &Peer,
    ) -> Result<Vec<(Family, WgPeerPlan)>, SkipReason> {
        let PeerBackend::Wireguard { v4, v6 } = peer.backend else {
            return Ok(Vec::new());
        };
        let data = |family| match family {
            Family::V4 => v4,
            Family::V6 => v6,
        };
        let missing = |family| SkipReason::MissingForFamily {
            family,
            missing: Missing::BackendData,
        };
        let families: Vec<Family> = ctx.families().collect();
        if self.opts.mode == WgMode::Separate || !self.own {
            return families
                .into_iter()
                .map(|family| {
                    let d = data(family).ok_or(missing(family))?;
                    let (subnet, ip) = peer.address(family)?;
                    let port = d.port.unwrap_or(self.device(family).1);
                    Ok((family, WgPeerPlan::new(d, ip, port, vec![subnet])))
                })
                .collect();
        }
        // One device for every family: one peer with all its subnets, over one endpoint.
        let mut subnets = Vec::with_capacity(2);
        for &family in &families {
            subnets.push(peer.address(family)?.0);
        }
        let family = self.endpoint_family(ctx, peer);
        let (_, ip) = peer.address(family)?;
        let d = data(family).or(v4).or(v6).ok_or(missing(family))?;
        let port = data(family)
            .and_then(|d| d.port)
            .unwrap_or(self.opts.listen_port);
        Ok(vec![(family, WgPeerPlan::new(d, ip, port, subnets))])
    }

    /// Which of a peer's addresses is its endpoint in the single-device modes; `auto` as
    /// flannel's `selectMode`: IPv4 unless the peer has only IPv6, or the peer's IPv4 is
    /// private and both its and our IPv6 addresses are not.
    fn endpoint_family(&self, ctx: &PlanContext<'_>, peer: &Peer) -> Family {
        match self.opts.mode {
            WgMode::Ipv6 => Family::V6,
            WgMode::Ipv4 | WgMode::Separate => Family::V4,
            // Only an enabled family's address was checked by the view.
            WgMode::Auto if ctx.v6.is_none() => Family::V4,
            WgMode::Auto if ctx.v4.is_none() => Family::V6,
            WgMode::Auto => match (peer.public_ip_v4, peer.public_ip_v6) {
                (None, Some(_)) => Family::V6,
                (Some(ip4), Some(ip6)) if ip4.is_private() => {
                    let ours = ctx.lease.public_ip_v6;
                    let public6 = |ip: std::net::Ipv6Addr| !ip.is_unique_local();
                    if public6(ip6) && ours.is_some_and(public6) {
                        Family::V6
                    } else {
                        Family::V4
                    }
                }
                _ => Family::V4,
            },
        }
    }
}

/// One WireGuard peer entry before its device is known.
#[derive(Debug, Clone)]
struct WgPeerPlan {
    data: WireguardData,
    endpoint: SocketAddr,
    allowed_ips: Vec<IpNetwork>,
}

impl WgPeerPlan {
    fn new(data: WireguardData, ip: IpAddr, port: u16, allowed_ips: Vec<IpNetwork>) -> Self {
        WgPeerPlan {
            data,
            endpoint: SocketAddr::new(ip, port),
            allowed_ips,
        }
    }
}

impl Backend for Wireguard {
    fn kind(&self) -> BackendType {
        BackendType::Wireguard
    }

    fn check_own(&self, ctx: &PlanContext<'_>) -> Result<(), PlanError> {
        if ctx.lease.wg_key.is_none() || !ctx.lease.wireguard_kernel {
            return Err(PlanError::NoWireguardKey);
        }
        for family in ctx.families() {
            check_underlay_mtu(ctx, self.underlay_mtu(ctx), BackendType::Wireguard, family)?;
        }
        Ok(())
    }

    fn add_own(&self, ctx: &PlanContext<'_>, out: &mut KernelState) {
        let Some(key) = ctx.lease.wg_key else { return };
        let networks = [
            (Family::V4, ctx.v4.map(|l| IpNetwork::V4(l.network))),
            (Family::V6, ctx.v6.map(|l| IpNetwork::V6(l.network))),
        ];
        for (family, network) in networks {
            let Some(network) = network else { continue };
            let dev = self.ensure_device(ctx, &key, family, out);
            out.add_route(Route {
                dst: network,
                gateway: None,
                dev: dev.to_string(),
                onlink: false,
            });
        }
    }

    fn add_peer(
        &self,
        ctx: &PlanContext<'_>,
        peer: &Peer,
        out: &mut KernelState,
    ) -> Result<(), SkipReason> {
        let key = ctx
            .lease
            .wg_key
            .filter(|_| ctx.lease.wireguard_kernel)
            .ok_or(SkipReason::WireguardUnavailable)?;
        let entries = self.peer_entries(ctx, peer)?;
        let (psk, keepalive) = match self.own {
            true => (self.opts.psk, self.opts.keepalive),
            false => (None, 0),
        };
        for (family, plan) in entries {
            let dev = self.ensure_device(ctx, &key, family, out);
            if !self.own {
                // No pod-network route through the device: each subnet needs its own.
                for dst in &plan.allowed_ips {
                    out.add_route(Route {
                        dst: *dst,
                        gateway: None,
                        dev: dev.to_string(),
                        onlink: false,
                    });
                }
            }
            out.add_wg_peer(WgPeer {
                link: dev.to_string(),
                public_key: plan.data.public_key,
                endpoint: plan.endpoint,
                allowed_ips: plan.allowed_ips,
                keepalive,
                psk,
            });
        }
        Ok(())
    }

    fn pod_mtu(&self, ctx: &PlanContext<'_>) -> u32 {
        self.device_mtu(ctx)
    }

    fn advertise(&self, ctx: &PlanContext<'_>) -> Advertisement {
        let data = |family| {
            ctx.lease.wg_key.map(|k| {
                BackendData::Wireguard(WireguardData {
                    public_key: k.public,
                    port: Some(self.device(family).1),
                })
            })
        };
        Advertisement {
            backend_type: BackendType::Wireguard,
            data_v4: ctx.v4.and_then(|_| data(Family::V4)),
            data_v6: ctx.v6.and_then(|_| data(Family::V6)),
            public_ip: ctx.v4.map(|l| l.public_ip),
            public_ipv6: ctx.v6.map(|l| l.public_ip),
        }
    }
}

#[cfg(test)]
mod tests;

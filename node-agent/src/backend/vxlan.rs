//! VXLAN, flannel's way: `flannel.<VNI>` (and `flannel-v6.<VNI>`), no learning, and for each
//! peer a permanent ARP entry (peer subnet's `.0` -> peer VTEP MAC), a permanent FDB entry
//! (peer VTEP MAC -> peer public IP) and an onlink route (peer subnet via `.0`). Nothing is
//! learned or resolved at runtime, so a restart of the agent does not disturb traffic.
//!
//! A peer on another VNI (during a VNI change) gets its own device `flannel.<its VNI>`, as
//! VXLAN devices with different VNIs can share the UDP port; only the device of our own VNI
//! carries the stable advertised MAC.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::{check_underlay_mtu, Backend, PlanContext, PlanError};
use crate::annotations::{Advertisement, BackendData, PeerBackend, VxlanData};
use crate::config::{BackendType, VxlanConfig};
use crate::dataplane::desired::{
    Fdb, KernelState, Link, LinkKind, Neighbour, Route, Vxlan as VxlanDevice,
};
use crate::net::{vxlan6_link_name, vxlan_link_name, Family, DEFAULT_VXLAN_PORT};
use crate::view::{Missing, Peer, SkipReason};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vxlan {
    opts: VxlanConfig,
    /// Whether this is the node's configured backend (its options and VNI are ours).
    own: bool,
}

/// How one family of a peer is reached.
enum Path {
    /// DirectRouting: plain route on the underlay.
    Direct(Route),
    Tunnel {
        data: VxlanData,
        subnet: IpNetwork,
        gateway: IpAddr,
        public_ip: IpAddr,
    },
}

impl Vxlan {
    pub fn own(opts: VxlanConfig) -> Self {
        Vxlan { opts, own: true }
    }

    /// For peers that still (or already) advertise VXLAN while this node runs another
    /// backend: default options, the port the peer advertises.
    pub fn foreign() -> Self {
        Vxlan {
            opts: VxlanConfig::default(),
            own: false,
        }
    }

    /// The underlay MTU to plan `vni`'s devices with: `Backend.MTU` for the configured VNI of
    /// the node's own backend, else the interface's.
    fn underlay_mtu(&self, ctx: &PlanContext<'_>, vni: u32) -> u32 {
        match self.opts.mtu {
            Some(m) if self.own && vni == self.opts.vni => m,
            _ => ctx.lease.underlay.mtu,
        }
    }

    fn device_mtu(&self, ctx: &PlanContext<'_>, family: Family, vni: u32) -> u32 {
        let overhead = BackendType::Vxlan.overhead(family);
        self.underlay_mtu(ctx, vni).saturating_sub(overhead)
    }

    /// Add the device of `family` for `vni` (and its address) unless present; returns its name.
    fn ensure_device(
        &self,
        ctx: &PlanContext<'_>,
        family: Family,
        vni: u32,
        port_hint: Option<u16>,
        out: &mut KernelState,
    ) -> Option<String> {
        let (name, local, addr, mac) = match family {
            Family::V4 => {
                let l = ctx.v4?;
                (
                    vxlan_link_name(vni),
                    IpAddr::V4(l.local),
                    ctx.device_address(family)?,
                    ctx.lease.vtep_mac_v4,
                )
            }
            Family::V6 => {
                let l = ctx.v6?;
                (
                    vxlan6_link_name(vni),
                    IpAddr::V6(l.local),
                    ctx.device_address(family)?,
                    ctx.lease.vtep_mac_v6,
                )
            }
        };
        if out.links.contains_key(&name) {
            return Some(name);
        }
        let ours = self.own && vni == self.opts.vni;
        let port = if self.own {
            self.opts.port
        } else {
            port_hint.unwrap_or(DEFAULT_VXLAN_PORT)
        };
        out.add_link(Link {
            name: name.clone(),
            kind: LinkKind::Vxlan(VxlanDevice {
                vni,
                port,
                local,
                underlay_index: ctx.lease.underlay.index,
                learning: self.opts.learning,
                gbp: self.opts.gbp,
            }),
            mtu: self.device_mtu(ctx, family, vni),
            mac: ours.then_some(mac),
            up: true,
        });
        // The subnet's network address as /32: a source address on the flannel network for
        // host-to-pod traffic, without creating a connected route.
        out.add_address(&name, addr);
        Some(name)
    }

    fn path(
        &self,
        ctx: &PlanContext<'_>,
        peer: &Peer,
        family: Family,
        data: Option<VxlanData>,
    ) -> Result<Path, SkipReason> {
        let (subnet, public_ip) = peer.address(family)?;
        if ctx.direct_routing() && ctx.lease.underlay.on_link(public_ip) {
            return Ok(Path::Direct(ctx.direct_route(subnet, public_ip)));
        }
        let data = data.ok_or(SkipReason::MissingForFamily {
            family,
            missing: Missing::BackendData,
        })?;
        Ok(Path::Tunnel {
            data,
            subnet,
            gateway: subnet.network(),
            public_ip,
        })
    }
}

impl Backend for Vxlan {
    fn kind(&self) -> BackendType {
        BackendType::Vxlan
    }

    fn check_own(&self, ctx: &PlanContext<'_>) -> Result<(), PlanError> {
        let mtu = self.underlay_mtu(ctx, self.opts.vni);
        for family in ctx.families() {
            check_underlay_mtu(ctx, mtu, BackendType::Vxlan, family)?;
        }
        Ok(())
    }

    fn add_own(&self, ctx: &PlanContext<'_>, out: &mut KernelState) {
        self.ensure_device(ctx, Family::V4, self.opts.vni, None, out);
        self.ensure_device(ctx, Family::V6, self.opts.vni, None, out);
    }

    fn add_peer(
        &self,
        ctx: &PlanContext<'_>,
        peer: &Peer,
        out: &mut KernelState,
    ) -> Result<(), SkipReason> {
        let (d4, d6) = match peer.backend {
            PeerBackend::Vxlan { v4, v6 } => (v4, v6),
            _ => (None, None),
        };
        // Decide every family first, so a peer is programmed whole or not at all.
        let p4 = (ctx.v4.map(|_| self.path(ctx, peer, Family::V4, d4))).transpose()?;
        let p6 = (ctx.v6.map(|_| self.path(ctx, peer, Family::V6, d6))).transpose()?;
        for (family, path) in [(Family::V4, p4), (Family::V6, p6)] {
            match path {
                None => {}
                Some(Path::Direct(route)) => out.add_route(route),
                Some(Path::Tunnel {
                    data,
                    subnet,
                    gateway,
                    public_ip,
                }) => {
                    let Some(dev) = self.ensure_device(ctx, family, data.vni, data.port, out)
                    else {
                        continue;
                    };
                    // ARP and FDB before the route, so the kernel never has to resolve.
                    out.add_neighbour(Neighbour {
                        link: dev.clone(),
                        ip: gateway,
                        mac: data.vtep_mac,
                    });
                    out.add_fdb(Fdb {
                        link: dev.clone(),
                        mac: data.vtep_mac,
                        dst: public_ip,
                    });
                    out.add_route(Route {
                        dst: subnet,
                        gateway: Some(gateway),
                        dev,
                        onlink: true,
                    });
                }
            }
        }
        Ok(())
    }

    fn pod_mtu(&self, ctx: &PlanContext<'_>) -> u32 {
        let v4 = ctx
            .v4
            .map(|_| self.device_mtu(ctx, Family::V4, self.opts.vni));
        let v6 = ctx
            .v6
            .map(|_| self.device_mtu(ctx, Family::V6, self.opts.vni));
        match (v4, v6) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => ctx.lease.underlay.mtu,
        }
    }

    fn advertise(&self, ctx: &PlanContext<'_>) -> Advertisement {
        let data = |mac| VxlanData {
            vni: self.opts.vni,
            vtep_mac: mac,
            port: Some(self.opts.port),
        };
        Advertisement {
            backend_type: BackendType::Vxlan,
            data_v4: ctx
                .v4
                .map(|_| BackendData::Vxlan(data(ctx.lease.vtep_mac_v4))),
            data_v6: ctx
                .v6
                .map(|_| BackendData::Vxlan(data(ctx.lease.vtep_mac_v6))),
            public_ip: ctx.v4.map(|l| l.public_ip),
            public_ipv6: ctx.v6.map(|l| l.public_ip),
        }
    }
}

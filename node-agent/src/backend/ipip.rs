//! IPIP: `flannel.ipip` (local = underlay address, MTU underlay − 20) and per peer
//! `subnet via <peer public IP> dev flannel.ipip onlink`. IPv4 only, like flannel's.
//! The kernel's own `tunl0` is never touched: setting `local` makes the kernel deliver
//! IPIP packets for our address to `flannel.ipip` rather than to the catch-all `tunl0`.

use super::{check_underlay_mtu, Backend, PlanContext, PlanError};
use crate::annotations::Advertisement;
use crate::config::BackendType;
use crate::dataplane::desired::{KernelState, Link, LinkKind, Route};
use crate::net::{Family, IPIP_LINK_NAME};
use crate::view::{Peer, SkipReason};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipip {
    mtu: Option<u32>,
    /// Whether this is the node's configured backend (`mtu` applies to the device).
    own: bool,
}

impl Ipip {
    pub fn new(mtu: Option<u32>, own: bool) -> Self {
        Ipip { mtu, own }
    }

    /// `Backend.MTU` for the node's own backend, else the interface's.
    fn underlay_mtu(&self, ctx: &PlanContext<'_>) -> u32 {
        match self.mtu {
            Some(m) if self.own => m,
            _ => ctx.lease.underlay.mtu,
        }
    }

    fn device_mtu(&self, ctx: &PlanContext<'_>) -> u32 {
        let overhead = BackendType::Ipip.overhead(Family::V4);
        self.underlay_mtu(ctx).saturating_sub(overhead)
    }

    fn ensure_device(&self, ctx: &PlanContext<'_>, out: &mut KernelState) {
        let Some(l) = ctx.v4 else { return };
        if out.links.contains_key(IPIP_LINK_NAME) {
            return;
        }
        out.add_link(Link {
            name: IPIP_LINK_NAME.to_string(),
            kind: LinkKind::Ipip { local: l.local },
            mtu: self.device_mtu(ctx),
            // An IPIP device has no MAC.
            mac: None,
            up: true,
        });
        if let Some(addr) = ctx.device_address(Family::V4) {
            out.add_address(IPIP_LINK_NAME, addr);
        }
    }
}

impl Backend for Ipip {
    fn kind(&self) -> BackendType {
        BackendType::Ipip
    }

    fn check_own(&self, ctx: &PlanContext<'_>) -> Result<(), PlanError> {
        if ctx.v4.is_some() {
            check_underlay_mtu(ctx, self.underlay_mtu(ctx), BackendType::Ipip, Family::V4)?;
        }
        Ok(())
    }

    fn add_own(&self, ctx: &PlanContext<'_>, out: &mut KernelState) {
        self.ensure_device(ctx, out);
    }

    fn add_peer(
        &self,
        ctx: &PlanContext<'_>,
        peer: &Peer,
        out: &mut KernelState,
    ) -> Result<(), SkipReason> {
        // An IPv6-only cluster cannot reach an IPIP peer at all; in a dual-stack one the
        // peer's IPv4 is programmed (an IPIP node has no IPv6 pod traffic to offer).
        if ctx.v4.is_none() {
            return Err(SkipReason::UnsupportedFamily {
                backend: BackendType::Ipip,
                family: Family::V6,
            });
        }
        let (subnet, public_ip) = peer.address(Family::V4)?;
        if ctx.direct_routing() && ctx.lease.underlay.on_link(public_ip) {
            out.add_route(ctx.direct_route(subnet, public_ip));
            return Ok(());
        }
        self.ensure_device(ctx, out);
        out.add_route(Route {
            dst: subnet,
            gateway: Some(public_ip),
            dev: IPIP_LINK_NAME.to_string(),
            onlink: true,
        });
        Ok(())
    }

    fn pod_mtu(&self, ctx: &PlanContext<'_>) -> u32 {
        self.device_mtu(ctx)
    }

    fn advertise(&self, ctx: &PlanContext<'_>) -> Advertisement {
        Advertisement {
            backend_type: BackendType::Ipip,
            data_v4: None,
            data_v6: None,
            public_ip: ctx.v4.map(|l| l.public_ip),
            public_ipv6: None,
        }
    }
}

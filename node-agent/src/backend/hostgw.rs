//! host-gw: no device, no encapsulation; each peer's subnet is routed via the peer's public
//! IP on the underlay. Only works between nodes on one L2 segment: a peer elsewhere is
//! skipped with [`SkipReason::NotOnLink`] rather than given a route the kernel would refuse or
//! send to the wrong gateway.

use super::{Backend, PlanContext, PlanError};
use crate::annotations::Advertisement;
use crate::config::BackendType;
use crate::dataplane::desired::KernelState;
use crate::view::{Peer, SkipReason};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostGw {
    mtu: Option<u32>,
}

impl HostGw {
    pub fn new(mtu: Option<u32>) -> Self {
        HostGw { mtu }
    }
}

impl Backend for HostGw {
    fn kind(&self) -> BackendType {
        BackendType::HostGw
    }

    fn check_own(&self, ctx: &PlanContext<'_>) -> Result<(), PlanError> {
        // Peers route to our public IP as a next hop on their segment: it must be ours there.
        if let Some(l) = ctx.v4.filter(|l| l.public_ip != l.local) {
            return Err(PlanError::HostGwBehindNat {
                public_ip: l.public_ip.into(),
                iface_addr: l.local.into(),
            });
        }
        if let Some(l) = ctx.v6.filter(|l| l.public_ip != l.local) {
            return Err(PlanError::HostGwBehindNat {
                public_ip: l.public_ip.into(),
                iface_addr: l.local.into(),
            });
        }
        Ok(())
    }

    fn add_own(&self, _ctx: &PlanContext<'_>, _out: &mut KernelState) {}

    fn add_peer(
        &self,
        ctx: &PlanContext<'_>,
        peer: &Peer,
        out: &mut KernelState,
    ) -> Result<(), SkipReason> {
        let mut routes = Vec::with_capacity(2);
        for family in ctx.families() {
            let (subnet, public_ip) = peer.address(family)?;
            if !ctx.lease.underlay.reachable_as_gateway(public_ip) {
                return Err(SkipReason::NotOnLink {
                    backend: BackendType::HostGw,
                    public_ip,
                });
            }
            routes.push(ctx.direct_route(subnet, public_ip));
        }
        for r in routes {
            out.add_route(r);
        }
        Ok(())
    }

    fn pod_mtu(&self, ctx: &PlanContext<'_>) -> u32 {
        self.mtu.unwrap_or(ctx.lease.underlay.mtu)
    }

    fn advertise(&self, ctx: &PlanContext<'_>) -> Advertisement {
        Advertisement {
            backend_type: BackendType::HostGw,
            data_v4: None,
            data_v6: None,
            public_ip: ctx.v4.map(|l| l.public_ip),
            public_ipv6: ctx.v6.map(|l| l.public_ip),
        }
    }
}

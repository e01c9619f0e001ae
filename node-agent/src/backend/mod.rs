//! `plan(view, config) -> DesiredState`: what the node's kernel must hold, as a pure function.
//!
//! Four implementations of [`Backend`]: [`vxlan::Vxlan`], [`hostgw::HostGw`], [`ipip::Ipip`],
//! [`wireguard::Wireguard`].
//! The configured one is the node's *own* backend: it sets the receive-side devices, the pod
//! MTU and what the node advertises. Each *peer* is programmed by the backend that peer
//! advertises, when this node can do it. During a rolling switch nodes briefly run different
//! backends, and this keeps pods talking: a node that switched to host-gw keeps `flannel.1`
//! and programs its peers still on VXLAN through it, until the last of them has switched.
//! When no peer needs a device any more, it is no longer desired and the diff deletes it.
//!
//! `DirectRouting` (ours, from the config) applies to VXLAN and IPIP peers alike: a peer on
//! the underlay's subnet gets a plain route via its public IP instead of a tunnel.
//!
//! Caveat of mixed backends: paths are asymmetric while nodes disagree (A reaches B the way B
//! advertises, B reaches A the way A advertises). With strict reverse-path filtering
//! (`rp_filter=1`) such packets are dropped until both have switched; loose mode (2) or off
//! (0), the usual Kubernetes node settings, are fine.

pub mod hostgw;
pub mod ipip;
pub mod vxlan;
pub mod wireguard;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use trellis_common::subnet_env::SubnetEnv;

use crate::annotations::Advertisement;
use crate::config::{BackendConfig, BackendType, NetConfig};
use crate::dataplane::desired::{DesiredState, KernelState, Route};
use crate::firewall::rules::{FamilyNets, RuleSet};
use crate::net::Family;
use crate::view::{ClusterView, LocalLease, Peer, SkipReason, Skipped};

/// The agent's command-line choices that shape the plan (not part of net-conf.json).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanOptions {
    /// flannel's `--ip-masq`: masquerade pod traffic leaving the pod network.
    pub ip_masq: bool,
    /// flannel's `--iptables-forward-rules`: accept forwarding to and from the pod network.
    pub forward_rules: bool,
}

impl Default for PlanOptions {
    /// What flannel's standard manifest runs with.
    fn default() -> Self {
        PlanOptions {
            ip_masq: true,
            forward_rules: true,
        }
    }
}

/// This node cannot be programmed at all (as opposed to one peer being skipped).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("this node has no {family} podCIDR but {family} is enabled in net-conf.json: set spec.podCIDRs (kube-controller-manager --allocate-node-cidrs with --cluster-cidr covering both families) or disable {family}")]
    NoSubnet { family: Family },
    #[error("this node's podCIDR {subnet} is outside the pod network {network} of net-conf.json: make kube-controller-manager's --cluster-cidr and Network agree")]
    SubnetOutsideNetwork {
        subnet: IpNetwork,
        network: IpNetwork,
    },
    #[error("this node's podCIDR {subnet} is too small: a node needs at least a /30 (IPv4) or /126 (IPv6)")]
    SubnetTooSmall { subnet: IpNetwork },
    #[error("no {family} public IP for this node: the underlay interface has no {family} address and no public-ip{} overwrite is set", if *family == Family::V6 { "v6" } else { "" })]
    NoPublicIp { family: Family },
    #[error("the underlay interface {iface} has no {family} address, needed as tunnel source")]
    NoUnderlayAddress { family: Family, iface: String },
    #[error("the underlay interface {iface} has MTU {mtu}: too small for {backend} over {family}, which needs at least {min}")]
    UnderlayMtuTooSmall {
        iface: String,
        mtu: u32,
        backend: BackendType,
        family: Family,
        min: u32,
    },
    #[error("this node cannot use WireGuard: no private key or no WireGuard in its kernel (see the agent's log at start; after loading the module, restart the agent)")]
    NoWireguardKey,
    #[error("host-gw cannot work behind NAT: the public IP {public_ip} differs from the underlay address {iface_addr}; remove public-ip-overwrite or use vxlan")]
    HostGwBehindNat {
        public_ip: IpAddr,
        iface_addr: IpAddr,
    },
}

/// This node's side of one address family, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Local4 {
    pub network: Ipv4Network,
    pub subnet: Ipv4Network,
    pub public_ip: Ipv4Addr,
    /// The underlay interface's address: tunnel source.
    pub local: Ipv4Addr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Local6 {
    pub network: Ipv6Network,
    pub subnet: Ipv6Network,
    pub public_ip: Ipv6Addr,
    pub local: Ipv6Addr,
}

/// Everything a backend needs to plan, checked once.
#[derive(Debug, Clone, Copy)]
pub struct PlanContext<'a> {
    pub lease: &'a LocalLease,
    pub config: &'a NetConfig,
    /// `Some` iff the family is enabled.
    pub v4: Option<Local4>,
    pub v6: Option<Local6>,
}

impl PlanContext<'_> {
    pub fn direct_routing(&self) -> bool {
        self.config.backend.direct_routing()
    }

    /// The enabled families, IPv4 first.
    pub fn families(&self) -> impl Iterator<Item = Family> {
        let v4 = self.v4.map(|_| Family::V4);
        let v6 = self.v6.map(|_| Family::V6);
        v4.into_iter().chain(v6)
    }

    /// The address a tunnel device of `family` carries: this node's subnet's network address
    /// as /32 or /128 (the source of host-to-pod traffic). `None` when the family is off.
    pub fn device_address(&self, family: Family) -> Option<IpNetwork> {
        match family {
            Family::V4 => self
                .v4
                .and_then(|l| Ipv4Network::new(l.subnet.network(), 32).ok())
                .map(IpNetwork::V4),
            Family::V6 => self
                .v6
                .and_then(|l| Ipv6Network::new(l.subnet.network(), 128).ok())
                .map(IpNetwork::V6),
        }
    }

    /// The plain route `dst via gateway dev <underlay>` of host-gw and DirectRouting.
    pub fn direct_route(&self, dst: IpNetwork, gateway: IpAddr) -> Route {
        Route {
            dst,
            gateway: Some(gateway),
            dev: self.lease.underlay.name.clone(),
            onlink: false,
        }
    }
}

/// One way of carrying pod traffic between nodes.
pub trait Backend {
    fn kind(&self) -> BackendType;

    /// Checks that this backend can be the node's own (MTU, NAT, ...).
    fn check_own(&self, ctx: &PlanContext<'_>) -> Result<(), PlanError>;

    /// The devices (with their addresses) this node needs when this is its own backend: the
    /// receive side, present even with no peer.
    fn add_own(&self, ctx: &PlanContext<'_>, out: &mut KernelState);

    /// Everything needed to reach `peer`, which advertises this backend, including devices
    /// (added only if absent, so the own backend's attributes win). All or nothing: on error,
    /// `out` is unchanged.
    fn add_peer(
        &self,
        ctx: &PlanContext<'_>,
        peer: &Peer,
        out: &mut KernelState,
    ) -> Result<(), SkipReason>;

    /// The pod MTU when this is the node's own backend: the smallest MTU of its devices.
    fn pod_mtu(&self, ctx: &PlanContext<'_>) -> u32;

    /// What the node advertises when this is its own backend.
    fn advertise(&self, ctx: &PlanContext<'_>) -> Advertisement;
}

/// A plan and the Nodes it leaves out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub state: DesiredState,
    /// Number of peers programmed.
    pub peers: usize,
    /// Nodes not programmed, sorted by name, with why (log them, count them by `label()`).
    pub skipped: Vec<Skipped>,
}

/// The node's own backend as configured.
/// The underlay MTU a backend plans with (`mtu`: the interface's or `Backend.MTU`) must leave
/// room for `family`'s smallest MTU once `backend`'s encapsulation is taken off.
fn check_underlay_mtu(
    ctx: &PlanContext<'_>,
    mtu: u32,
    backend: BackendType,
    family: Family,
) -> Result<(), PlanError> {
    let min = backend.min_underlay_mtu(family);
    if mtu >= min {
        return Ok(());
    }
    Err(PlanError::UnderlayMtuTooSmall {
        iface: ctx.lease.underlay.name.clone(),
        mtu,
        backend,
        family,
        min,
    })
}

pub fn own_backend(config: &BackendConfig) -> Box<dyn Backend> {
    match *config {
        BackendConfig::Vxlan(c) => Box::new(vxlan::Vxlan::own(c)),
        BackendConfig::HostGw(c) => Box::new(hostgw::HostGw::new(c.mtu)),
        BackendConfig::Ipip(c) => Box::new(ipip::Ipip::new(c.mtu, true)),
        BackendConfig::Wireguard(c) => Box::new(wireguard::Wireguard::new(c, true)),
    }
}

fn context<'a>(lease: &'a LocalLease, config: &'a NetConfig) -> Result<PlanContext<'a>, PlanError> {
    let no_underlay_address = |family| PlanError::NoUnderlayAddress {
        family,
        iface: lease.underlay.name.clone(),
    };
    let v4 = match config.ipv4() {
        None => None,
        Some(network) => {
            let subnet = lease
                .subnet_v4
                .ok_or(PlanError::NoSubnet { family: Family::V4 })?;
            check_subnet(network.into(), subnet.into(), 30)?;
            let local = lease
                .underlay
                .addr_v4
                .ok_or_else(|| no_underlay_address(Family::V4))?;
            let public_ip = lease
                .public_ip_v4
                .ok_or(PlanError::NoPublicIp { family: Family::V4 })?;
            Some(Local4 {
                network,
                subnet,
                public_ip,
                local: local.ip(),
            })
        }
    };
    let v6 = match config.ipv6() {
        None => None,
        Some(network) => {
            let subnet = lease
                .subnet_v6
                .ok_or(PlanError::NoSubnet { family: Family::V6 })?;
            check_subnet(network.into(), subnet.into(), 126)?;
            let local = lease
                .underlay
                .addr_v6
                .ok_or_else(|| no_underlay_address(Family::V6))?;
            let public_ip = lease
                .public_ip_v6
                .ok_or(PlanError::NoPublicIp { family: Family::V6 })?;
            Some(Local6 {
                network,
                subnet,
                public_ip,
                local: local.ip(),
            })
        }
    };
    Ok(PlanContext {
        lease,
        config,
        v4,
        v6,
    })
}

/// This node's subnet lies in the cluster network and leaves room for pods (a prefix of at
/// most `max_prefix`).
fn check_subnet(network: IpNetwork, subnet: IpNetwork, max_prefix: u8) -> Result<(), PlanError> {
    let within = match (network, subnet) {
        (IpNetwork::V4(n), IpNetwork::V4(s)) => n.is_supernet_of(s),
        (IpNetwork::V6(n), IpNetwork::V6(s)) => n.is_supernet_of(s),
        _ => false,
    };
    if !within {
        return Err(PlanError::SubnetOutsideNetwork { subnet, network });
    }
    if subnet.prefix() > max_prefix {
        return Err(PlanError::SubnetTooSmall { subnet });
    }
    Ok(())
}

/// The gateway address written to subnet.env: the subnet's first host, with its prefix.
fn first_host_v4(n: Ipv4Network) -> Ipv4Network {
    let ip = Ipv4Addr::from(u32::from(n.network()).wrapping_add(1));
    Ipv4Network::new(ip, n.prefix()).unwrap_or(n)
}

fn first_host_v6(n: Ipv6Network) -> Ipv6Network {
    let ip = Ipv6Addr::from(u128::from(n.network()).wrapping_add(1));
    Ipv6Network::new(ip, n.prefix()).unwrap_or(n)
}

/// The node's firewall rules, exactly as [`plan`] would put them in its [`DesiredState`], and
/// failing exactly when it would. They need only the local lease, the config and the options,
/// not the peers: the agent checks them while the first Node list is still arriving, without
/// planning the whole node.
pub fn firewall_rules(
    lease: &LocalLease,
    config: &NetConfig,
    opts: &PlanOptions,
) -> Result<RuleSet, PlanError> {
    let ctx = context(lease, config)?;
    own_backend(&config.backend).check_own(&ctx)?;
    Ok(rule_set(&ctx, opts))
}

/// flannel's masquerade and forward rules for the enabled families of a checked context.
fn rule_set(ctx: &PlanContext<'_>, opts: &PlanOptions) -> RuleSet {
    RuleSet::build(
        ctx.v4.map(|l| FamilyNets {
            network: l.network.into(),
            subnet: l.subnet.into(),
        }),
        ctx.v6.map(|l| FamilyNets {
            network: l.network.into(),
            subnet: l.subnet.into(),
        }),
        opts.ip_masq,
        opts.forward_rules,
    )
}

/// Plan the whole node: own devices, one set of entries per programmable peer, firewall rules,
/// subnet.env and the advertisement.
pub fn plan(view: &ClusterView, config: &NetConfig, opts: &PlanOptions) -> Result<Plan, PlanError> {
    let ctx = context(view.local(), config)?;
    let own = own_backend(&config.backend);
    own.check_own(&ctx)?;

    let mut kernel = KernelState::default();
    own.add_own(&ctx, &mut kernel);

    // Peers on another backend than ours are programmed the way they advertise, with that
    // backend's default options (ours when it is also our backend).
    let foreign_vxlan = vxlan::Vxlan::foreign();
    let host_gw = hostgw::HostGw::new(None);
    let foreign_ipip = ipip::Ipip::new(None, false);
    let foreign_wireguard = wireguard::Wireguard::foreign();
    let for_peer = |kind: BackendType| -> &dyn Backend {
        if kind == own.kind() {
            own.as_ref()
        } else {
            match kind {
                BackendType::Vxlan => &foreign_vxlan,
                BackendType::HostGw => &host_gw,
                BackendType::Ipip => &foreign_ipip,
                BackendType::Wireguard => &foreign_wireguard,
            }
        }
    };

    let resolved = view.resolve(config);
    let mut skipped = resolved.skipped;
    let mut peers = 0;
    for peer in resolved.peers {
        match for_peer(peer.backend.kind()).add_peer(&ctx, peer, &mut kernel) {
            Ok(()) => peers += 1,
            Err(reason) => skipped.push(Skipped {
                node: peer.name.to_string(),
                reason,
            }),
        }
    }
    skipped.sort_by(|a, b| a.node.cmp(&b.node));

    let mtu = own.pod_mtu(&ctx);
    let subnet_env = SubnetEnv {
        network: ctx.v4.map(|l| l.network),
        subnet: ctx.v4.map(|l| first_host_v4(l.subnet)),
        ipv6_network: ctx.v6.map(|l| l.network),
        ipv6_subnet: ctx.v6.map(|l| first_host_v6(l.subnet)),
        mtu,
        ipmasq: opts.ip_masq,
    };
    let firewall = rule_set(&ctx, opts);
    Ok(Plan {
        state: DesiredState {
            kernel,
            firewall,
            subnet_env,
            mtu,
            advertisement: own.advertise(&ctx),
        },
        peers,
        skipped,
    })
}

#[cfg(test)]
mod tests;

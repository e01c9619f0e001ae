//! ADD: address from IPAM, bridge, veth pair, pod addresses and routes.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde_json::Value;
use trellis_common::netlink;

use crate::ipam::Store;
use crate::link::{self, nl_err, VethSpec};
use crate::names;
use crate::netns::{self, NetNs};
use crate::plan::NetworkPlan;
use crate::spec::error::{CniError, ErrorCode};
use crate::spec::result::{CniResult, Interface, IpConfig};
use crate::spec::{Env, NetConf};

pub async fn run(env: &Env, conf: &NetConf) -> Result<Value, CniError> {
    // Validate everything that can be validated before making anything.
    let netns_path = env
        .netns
        .as_ref()
        .ok_or_else(|| crate::spec::error::invalid_env("CNI_NETNS is not set"))?;
    let netns = NetNs::open(netns_path)?;
    let subnet_env = super::load_subnet_env(conf)?;
    let plan = NetworkPlan::resolve(conf, subnet_env.as_ref())?;

    let addrs = allocate(env, conf, &plan)?;
    match attach(env, conf, &plan, &netns, &addrs).await {
        Ok(result) => Ok(result.render(conf.cni_version)),
        Err(e) => {
            // Leave nothing behind: the runtime may never call DEL.
            undo(env, conf).await;
            Err(e)
        }
    }
}

/// Reserve one address per family, reusing the attachment's existing ones
/// so a repeated ADD returns the same address.
fn allocate(env: &Env, conf: &NetConf, plan: &NetworkPlan) -> Result<Vec<IpNetwork>, CniError> {
    let store = Store::open(&conf.ipam_dir(), conf.ipam_lock_wait)?;
    let existing = store.find(&env.container_id, &env.ifname)?;
    let mut taken = store.taken()?;
    let mut out: Vec<IpNetwork> = Vec::new();
    for (i, fam) in plan.families.iter().enumerate() {
        let reuse = existing.iter().copied().find(|ip| fam.set.contains(*ip));
        let ip = match reuse {
            Some(ip) => ip,
            None => loop {
                let Some(ip) = fam.set.next_free(store.last_reserved(i), &taken) else {
                    for ip in &out {
                        let _ = store.remove(ip.ip());
                    }
                    let ranges: Vec<String> =
                        fam.set.ranges().iter().map(ToString::to_string).collect();
                    return Err(CniError::new(
                        ErrorCode::RangeExhausted,
                        format!("no free address in {}", ranges.join(", ")),
                    )
                    .with_details(format!(
                        "{} addresses are held in {}; if pods were deleted without CNI DEL, run CNI GC or remove stale files",
                        taken.len(),
                        store.dir().display()
                    )));
                };
                if store.reserve(ip, &env.container_id, &env.ifname, i)? {
                    break ip;
                }
                taken.insert(ip);
            },
        };
        let prefix = fam
            .set
            .range_of(ip)
            .map(|r| r.subnet().prefix())
            .unwrap_or(fam.gateway.prefix());
        let net = IpNetwork::new(ip, prefix).map_err(|e| {
            CniError::new(
                ErrorCode::InvalidConfig,
                format!("address {ip}/{prefix}: {e}"),
            )
        })?;
        out.push(net);
    }
    Ok(out)
}

async fn attach(
    env: &Env,
    conf: &NetConf,
    plan: &NetworkPlan,
    netns: &NetNs,
    addrs: &[IpNetwork],
) -> Result<CniResult, CniError> {
    let host = netns::host_netlink()?;
    let gateways: Vec<IpNetwork> = plan.families.iter().map(|f| f.gateway).collect();
    let bridge_mac = names::mac_from_ip(gateways[0].ip());
    let bridge = link::ensure_bridge(&host, &plan.bridge, plan.mtu, bridge_mac, &gateways).await?;
    link::enable_forwarding(
        gateways.iter().any(|g| g.is_ipv4()),
        gateways.iter().any(|g| g.is_ipv6()),
    )?;

    let host_name = names::host_veth_name(&env.container_id, &env.ifname);
    let host_mac = names::host_veth_mac(&env.container_id, &env.ifname);
    let pod_mac = names::mac_from_ip(addrs[0].ip());
    let spec = VethSpec {
        host_name: &host_name,
        host_mac,
        pod_name: &env.ifname,
        pod_mac,
        mtu: plan.mtu,
        bridge_index: bridge.index,
        pod_netns_fd: netns.raw_fd(),
    };
    let pod = netns.netlink()?;
    match link::create_veth(&host, &spec).await {
        Ok(()) => {}
        Err(e) if netlink::errno(&e) == Some(libc::EEXIST) => {
            reuse_or_recreate(&host, &pod, &spec, env, bridge.index).await?;
        }
        Err(e) => return Err(nl_err(format_args!("cannot create veth {host_name}"), e)),
    }

    let host_link = netlink::link_by_name(&host, &host_name)
        .await
        .map_err(|e| nl_err(format_args!("cannot look up {host_name}"), e))?
        .ok_or_else(|| {
            CniError::new(
                ErrorCode::Netlink,
                format!("{host_name} vanished after creation"),
            )
        })?;
    if conf.hairpin_mode {
        link::set_hairpin(&host, host_link.header.index, true)
            .await
            .map_err(|e| nl_err(format_args!("cannot set hairpin on {host_name}"), e))?;
    }

    let pod_link = netlink::link_by_name(&pod, &env.ifname)
        .await
        .map_err(|e| nl_err(format_args!("cannot look up {} in the pod", env.ifname), e))?
        .ok_or_else(|| {
            CniError::new(
                ErrorCode::Netlink,
                format!("{} is missing in {}", env.ifname, netns.path().display()),
            )
        })?;
    let pod_index = pod_link.header.index;
    for a in addrs {
        link::add_address(&pod, pod_index, *a).await.map_err(|e| {
            nl_err(
                format_args!("cannot add {a} to {} in the pod", env.ifname),
                e,
            )
        })?;
    }
    if !netlink::link_is_up(&pod_link) {
        link::set_up(&pod, pod_index)
            .await
            .map_err(|e| nl_err(format_args!("cannot bring {} up", env.ifname), e))?;
    }
    for r in &plan.routes {
        // Only route families we actually have an address in.
        if addrs.iter().any(|a| a.is_ipv4() == r.dst.is_ipv4()) {
            link::add_route(&pod, pod_index, r)
                .await
                .map_err(|e| nl_err(format_args!("cannot add route {} in the pod", r.dst), e))?;
        }
    }

    let ips = addrs
        .iter()
        .map(|a| IpConfig {
            address: *a,
            gateway: gateway_for(plan, a.ip()),
            interface: Some(2),
        })
        .collect();
    Ok(CniResult {
        interfaces: vec![
            Interface {
                name: plan.bridge.clone(),
                mac: names::format_mac(&bridge.mac),
                mtu: Some(plan.mtu),
                sandbox: None,
            },
            Interface {
                name: host_name.clone(),
                mac: names::format_mac(netlink::link_address(&host_link).unwrap_or_default()),
                mtu: Some(plan.mtu),
                sandbox: None,
            },
            Interface {
                name: env.ifname.clone(),
                mac: names::format_mac(netlink::link_address(&pod_link).unwrap_or_default()),
                mtu: netlink::link_mtu(&pod_link).or(Some(plan.mtu)),
                sandbox: Some(netns.path().display().to_string()),
            },
        ],
        ips,
        routes: plan
            .routes
            .iter()
            .filter(|r| addrs.iter().any(|a| a.is_ipv4() == r.dst.is_ipv4()))
            .cloned()
            .collect(),
        dns: conf.dns.clone(),
    })
}

fn gateway_for(plan: &NetworkPlan, ip: IpAddr) -> Option<IpAddr> {
    plan.families
        .iter()
        .find(|f| f.set.contains(ip))
        .map(|f| f.gateway.ip())
}

/// The host veth name is taken. If it is this attachment's pair from an
/// earlier ADD (the pod end is in this netns), keep it; if it is a leftover
/// of a crashed attempt or of a DEL, replace it.
async fn reuse_or_recreate(
    host: &rtnetlink::Handle,
    pod: &rtnetlink::Handle,
    spec: &VethSpec<'_>,
    env: &Env,
    bridge_index: u32,
) -> Result<(), CniError> {
    let host_link = netlink::link_by_name(host, spec.host_name)
        .await
        .map_err(|e| nl_err(format_args!("cannot look up {}", spec.host_name), e))?;
    let pod_link = netlink::link_by_name(pod, spec.pod_name)
        .await
        .map_err(|e| {
            nl_err(
                format_args!("cannot look up {} in the pod", spec.pod_name),
                e,
            )
        })?;
    match (host_link, pod_link) {
        (Some(h), Some(p))
            if matches!(
                netlink::link_kind(&p),
                Some(netlink_packet_route::link::InfoKind::Veth)
            ) && !detached_by_del(&h) =>
        {
            if netlink::link_controller(&h) != Some(bridge_index) {
                link::set_controller(host, h.header.index, bridge_index)
                    .await
                    .map_err(|e| {
                        nl_err(
                            format_args!("cannot attach {} to the bridge", spec.host_name),
                            e,
                        )
                    })?;
            }
            Ok(())
        }
        (None, Some(_)) => Err(CniError::new(
            ErrorCode::HostConflict,
            format!(
                "interface {} already exists in the pod's network namespace",
                env.ifname
            ),
        )
        .with_details(
            "another plugin or an earlier attachment owns it; choose another CNI_IFNAME",
        )),
        (Some(_), _) => {
            link::delete_link(host, spec.host_name)
                .await
                .map_err(|e| nl_err(format_args!("cannot remove stale {}", spec.host_name), e))?;
            link::create_veth(host, spec)
                .await
                .map_err(|e| nl_err(format_args!("cannot create veth {}", spec.host_name), e))
        }
        (None, None) => link::create_veth(host, spec)
            .await
            .map_err(|e| nl_err(format_args!("cannot create veth {}", spec.host_name), e)),
    }
}

/// A pair that a DEL of this attachment took down and off the bridge is
/// its reaper's to destroy, and the reaper may be about to: re-attaching it
/// would race that delete (found by hack/crash-plugin.sh: DEL after a killed
/// ADD, then an immediate retry). ADD replaces such a pair instead; the
/// reaper deletes by ifindex, so it cannot hit the new one.
fn detached_by_del(host_end: &netlink_packet_route::link::LinkMessage) -> bool {
    !netlink::link_is_up(host_end) && netlink::link_controller(host_end).is_none()
}

/// Best-effort rollback of a failed ADD: same as DEL, errors ignored.
async fn undo(env: &Env, conf: &NetConf) {
    if let Ok(host) = netns::host_netlink() {
        let _ = link::delete_link(
            &host,
            &names::host_veth_name(&env.container_id, &env.ifname),
        )
        .await;
    }
    if let Ok(store) = Store::open(&conf.ipam_dir(), conf.ipam_lock_wait) {
        let _ = store.release(&env.container_id, &env.ifname);
    }
}

//! CHECK: is the pod's network still what ADD made? Each mismatch gets its
//! own message, so `kubectl describe` says what broke.

use std::collections::HashSet;

use trellis_common::netlink;

use crate::ipam::Store;
use crate::link::{self, nl_err};
use crate::names;
use crate::netns::{self, NetNs};
use crate::spec::error::{invalid_config, invalid_env, CniError, ErrorCode};
use crate::spec::result::CniResult;
use crate::spec::{CniVersion, Env, NetConf};

fn mismatch(msg: String) -> CniError {
    CniError::new(ErrorCode::CheckMismatch, msg)
}

pub async fn run(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    super::require_version(conf, CniVersion::supports_check, "CHECK", "0.4.0")?;
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| invalid_config("CHECK needs prevResult"))?;
    let prev = CniResult::parse_prev(prev)?;
    let netns_path = env
        .netns
        .as_ref()
        .ok_or_else(|| invalid_env("CNI_NETNS is not set"))?;
    let netns = NetNs::open(netns_path)?;

    let pod_idx = prev
        .interfaces
        .iter()
        .position(|i| i.name == env.ifname && i.sandbox.is_some())
        .ok_or_else(|| {
            invalid_config(format!(
                "prevResult has no interface {} with a sandbox",
                env.ifname
            ))
        })?;
    let expected_ips: Vec<_> = prev
        .ips
        .iter()
        .filter(|ip| ip.interface == Some(pod_idx))
        .map(|ip| ip.address)
        .collect();

    // Host side.
    let host = netns::host_netlink()?;
    let host_name = names::host_veth_name(&env.container_id, &env.ifname);
    let host_link = netlink::link_by_name(&host, &host_name)
        .await
        .map_err(|e| nl_err(format_args!("cannot look up {host_name}"), e))?
        .ok_or_else(|| mismatch(format!("host veth {host_name} is missing")))?;
    let bridge = netlink::link_by_name(&host, &conf.bridge)
        .await
        .map_err(|e| nl_err(format_args!("cannot look up {}", conf.bridge), e))?
        .ok_or_else(|| mismatch(format!("bridge {} is missing", conf.bridge)))?;
    if netlink::link_controller(&host_link) != Some(bridge.header.index) {
        return Err(mismatch(format!(
            "host veth {host_name} is not attached to {}",
            conf.bridge
        )));
    }
    if !netlink::link_is_up(&host_link) {
        return Err(mismatch(format!("host veth {host_name} is down")));
    }

    // Pod side.
    let pod = netns.netlink()?;
    let pod_link = netlink::link_by_name(&pod, &env.ifname)
        .await
        .map_err(|e| nl_err(format_args!("cannot look up {}", env.ifname), e))?
        .ok_or_else(|| {
            mismatch(format!(
                "{} is missing in {}",
                env.ifname,
                netns_path.display()
            ))
        })?;
    if !netlink::link_is_up(&pod_link) {
        return Err(mismatch(format!("{} is down in the pod", env.ifname)));
    }
    let want_mac = &prev.interfaces[pod_idx].mac;
    let have_mac = names::format_mac(netlink::link_address(&pod_link).unwrap_or_default());
    if !want_mac.is_empty() && !want_mac.eq_ignore_ascii_case(&have_mac) {
        return Err(mismatch(format!(
            "{} has MAC {have_mac}, expected {want_mac}",
            env.ifname
        )));
    }
    let have: HashSet<_> = link::addresses(&pod, pod_link.header.index)
        .await
        .map_err(|e| nl_err("cannot list pod addresses", e))?
        .into_iter()
        .collect();
    for ip in &expected_ips {
        if !have.contains(ip) {
            return Err(mismatch(format!("{} lacks address {ip}", env.ifname)));
        }
    }
    for v4 in [true, false] {
        let want: Vec<_> = prev
            .routes
            .iter()
            .filter(|r| r.dst.is_ipv4() == v4)
            .collect();
        if want.is_empty() {
            continue;
        }
        let have = link::routes(&pod, v4)
            .await
            .map_err(|e| nl_err("cannot list pod routes", e))?;
        for r in want {
            let found = have
                .iter()
                .any(|h| h.dst == r.dst && (r.gw.is_none() || h.gw == r.gw));
            if !found {
                let via = r.gw.map(|g| format!(" via {g}")).unwrap_or_default();
                return Err(mismatch(format!(
                    "route {}{via} is missing in the pod",
                    r.dst
                )));
            }
        }
    }

    // IPAM.
    let store = Store::open(&conf.ipam_dir(), conf.ipam_lock_wait)?;
    let held: HashSet<_> = store
        .find(&env.container_id, &env.ifname)?
        .into_iter()
        .collect();
    for ip in &expected_ips {
        if !held.contains(&ip.ip()) {
            return Err(mismatch(format!(
                "IPAM has no record of {} for this container in {}",
                ip.ip(),
                store.dir().display()
            )));
        }
    }
    Ok(())
}

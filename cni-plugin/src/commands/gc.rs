//! GC: release every address and host veth whose attachment the runtime no
//! longer knows (`cni.dev/valid-attachments`).

use std::collections::HashSet;

use futures::TryStreamExt;
use trellis_common::netlink;

use crate::ipam::Store;
use crate::link::{self, nl_err};
use crate::names;
use crate::netns;
use crate::spec::error::{invalid_config, CniError};
use crate::spec::{CniVersion, NetConf};

pub async fn run(conf: &NetConf) -> Result<(), CniError> {
    super::require_version(conf, CniVersion::supports_status_and_gc, "GC", "1.1.0")?;
    // Without the list, "valid" is unknown: collecting everything would cut
    // every running pod off.
    let valid = conf
        .valid_attachments
        .as_ref()
        .ok_or_else(|| invalid_config("GC needs cni.dev/valid-attachments"))?;
    let valid_ids: HashSet<(&str, &str)> = valid
        .iter()
        .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
        .collect();
    let valid_veths: HashSet<String> = valid
        .iter()
        .map(|a| names::host_veth_name(&a.container_id, &a.ifname))
        .collect();

    let host = netns::host_netlink()?;
    let store = Store::open(&conf.ipam_dir(), conf.ipam_lock_wait)?;
    for rec in store.records()? {
        let keep = if rec.ifname.is_empty() {
            valid.iter().any(|a| a.container_id == rec.container_id)
        } else {
            valid_ids.contains(&(rec.container_id.as_str(), rec.ifname.as_str()))
        };
        if keep {
            continue;
        }
        if !rec.ifname.is_empty() {
            let name = names::host_veth_name(&rec.container_id, &rec.ifname);
            link::delete_link(&host, &name)
                .await
                .map_err(|e| nl_err(format_args!("cannot delete {name}"), e))?;
        }
        store.remove(rec.ip)?;
    }
    drop(store);

    // Host veths of ours on this network's bridge with no valid attachment
    // (for example their IPAM record was removed by hand).
    let Some(bridge) = netlink::link_by_name(&host, &conf.bridge)
        .await
        .map_err(|e| nl_err(format_args!("cannot look up {}", conf.bridge), e))?
    else {
        return Ok(());
    };
    let mut stale = Vec::new();
    let mut links = host.link().get().execute();
    while let Some(l) = links
        .try_next()
        .await
        .map_err(|e| nl_err("cannot list links", e))?
    {
        let Some(name) = netlink::link_name(&l) else {
            continue;
        };
        // On our bridge, or detached by a DEL whose reaper did not finish.
        let ours = match netlink::link_controller(&l) {
            Some(c) => c == bridge.header.index,
            None => !netlink::link_is_up(&l),
        };
        if names::is_host_veth_name(name) && ours && !valid_veths.contains(name) {
            stale.push(name.to_string());
        }
    }
    for name in stale {
        link::delete_link(&host, &name)
            .await
            .map_err(|e| nl_err(format_args!("cannot delete {name}"), e))?;
    }
    Ok(())
}

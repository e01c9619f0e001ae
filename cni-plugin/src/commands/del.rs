//! DEL: remove the veth pair and release the addresses. Succeeds whatever
//! is already gone: the runtime retries DEL until it succeeds, so anything
//! but success for "nothing left to delete" would wedge pod teardown.

use crate::ipam::Store;
use crate::link::{self, nl_err};
use crate::names;
use crate::netns::{self, NetNs};
use crate::spec::error::CniError;
use crate::spec::{Env, NetConf};

pub async fn run(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let host = netns::host_netlink()?;
    let host_name = names::host_veth_name(&env.container_id, &env.ifname);
    let deleted = link::delete_link(&host, &host_name)
        .await
        .map_err(|e| nl_err(format_args!("cannot delete {host_name}"), e))?;
    if !deleted {
        // The host end may have been renamed or removed by hand while the pod
        // end survived; removing the pod end removes the pair.
        if let Some(path) = &env.netns {
            if let Ok(ns) = NetNs::open(path) {
                if let Ok(pod) = ns.netlink() {
                    let _ = link::delete_link(&pod, &env.ifname).await;
                }
            }
        }
    }
    // Release after the interface is gone, so the address is never live on
    // two pods at once.
    let store = Store::open(&conf.ipam_dir())?;
    store.release(&env.container_id, &env.ifname)?;
    Ok(())
}

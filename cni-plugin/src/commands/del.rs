//! DEL: cut the pod off the bridge, release its addresses, remove the veth
//! pair. Succeeds whatever is already gone: the runtime retries DEL until it
//! succeeds, so anything but success for "nothing left to delete" would
//! wedge pod teardown.
//!
//! Destroying a net device waits for an RCU grace period in the kernel
//! (~15 ms here, more on a busy node), which would be most of DEL's time.
//! So DEL detaches the host end (down, off the bridge: the pod has no path
//! anywhere from that moment), releases the addresses, and hands the
//! destruction to a detached child process (see [`crate::reaper`]). If the
//! child cannot be started, DEL deletes the link itself.

use trellis_common::netlink;

use crate::ipam::Store;
use crate::link::{self, nl_err};
use crate::names;
use crate::netns::{self, NetNs};
use crate::reaper;
use crate::spec::error::CniError;
use crate::spec::{Env, NetConf};

pub async fn run(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let host = netns::host_netlink()?;
    let host_name = names::host_veth_name(&env.container_id, &env.ifname);
    let mut found = netlink::link_by_name(&host, &host_name)
        .await
        .map_err(|e| nl_err(format_args!("cannot look up {host_name}"), e))?;
    if let Some(l) = &found {
        match link::detach(&host, l.header.index).await {
            Ok(()) => {}
            // The reaper of an earlier DEL of this attachment (containerd
            // sends a second DEL on sandbox removal) removed it meanwhile.
            Err(e) if netlink::errno(&e) == Some(libc::ENODEV) => found = None,
            Err(e) => return Err(nl_err(format_args!("cannot detach {host_name}"), e)),
        }
    }
    if found.is_none() {
        // The host end may have been removed by hand while the pod end
        // survived; removing the pod end removes the pair.
        if let Some(path) = &env.netns {
            if let Ok(ns) = NetNs::open(path) {
                if let Ok(pod) = ns.netlink() {
                    let _ = link::delete_link(&pod, &env.ifname).await;
                }
            }
        }
    }
    // The pod is already isolated, so its address can be reused at once.
    let store = Store::open(&conf.ipam_dir(), conf.ipam_lock_wait)?;
    store.release(&env.container_id, &env.ifname)?;
    drop(store);
    if let Some(l) = found {
        if !reaper::spawn(l.header.index, &host_name) {
            link::delete_link(&host, &host_name)
                .await
                .map_err(|e| nl_err(format_args!("cannot delete {host_name}"), e))?;
        }
    }
    Ok(())
}

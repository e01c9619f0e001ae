//! Destroying a detached host veth in the background, so DEL does not wait
//! for the kernel's RCU grace period.
//!
//! The plugin re-executes itself with `TRELLIS_REAP_LINK=<ifindex>:<name>`,
//! stdio closed (the runtime waits for our stdout to close, not for the
//! child) and in its own process group. The child deletes the link only if
//! it is still the detached veth DEL left behind: same index, same name,
//! down and off any bridge. A link that was re-attached by a newer ADD in
//! the meantime is left alone. Anything left over (the child killed, the
//! node rebooting) is down, off the bridge, and removed by CNI GC or by the
//! next ADD of the same attachment.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use trellis_common::netlink;

pub const ENV: &str = "TRELLIS_REAP_LINK";

/// Start the reaper; false when it could not be started.
pub fn spawn(index: u32, name: &str) -> bool {
    let Ok(exe) = std::env::current_exe() else {
        return false;
    };
    Command::new(exe)
        .env_clear()
        .env(ENV, format!("{index}:{name}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .is_ok()
}

/// The child's side: parse the request and delete if still ours to delete.
pub fn run(request: &str) -> i32 {
    let Some((index, name)) = request.split_once(':') else {
        return 2;
    };
    let Ok(index) = index.parse::<u32>() else {
        return 2;
    };
    if !crate::names::is_host_veth_name(name) {
        return 2;
    }
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    else {
        return 1;
    };
    rt.block_on(async {
        let Ok(h) = crate::netns::host_netlink() else {
            return 1;
        };
        match netlink::link_by_index(&h, index).await {
            Ok(Some(l))
                if netlink::link_name(&l) == Some(name)
                    && !netlink::link_is_up(&l)
                    && netlink::link_controller(&l).is_none() =>
            {
                match h.link().del(index).execute().await {
                    Ok(()) => 0,
                    Err(e) if netlink::errno(&e) == Some(libc::ENODEV) => 0,
                    Err(_) => 1,
                }
            }
            Ok(_) => 0,
            Err(_) => 1,
        }
    })
}

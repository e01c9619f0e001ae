//! The "node" network namespace containerd runs in, so that everything the
//! CNI plugin creates (cni0, host-side veths, iptables rules) lands there and
//! not on the host.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use trellis_testkit::netns::Netns;

/// `ip` could not run, or failed (the message names the command and its stderr).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NetnsError(String);

/// A uniquely named netns, deleted on drop unless adopted (see
/// [`NodeNetns::adopt`]): the kit's guard with errors of this module.
#[derive(Debug)]
pub struct NodeNetns {
    ns: Netns,
}

impl NodeNetns {
    /// Creates `<prefix>-<pid>-<n>` with its loopback up (containerd's CRI
    /// stream server binds 127.0.0.1 in it).
    pub fn create(prefix: &str) -> Result<Self, NetnsError> {
        let ns = Netns::new(prefix).map_err(NetnsError)?;
        Ok(Self { ns })
    }

    /// An existing named netns someone else owns (e.g. a node of the
    /// namespace cluster harness, with its underlay and agent already in
    /// it): containerd runs there, and the netns outlives this handle.
    pub fn adopt(name: &str) -> Result<Self, NetnsError> {
        let ns = Netns::adopt(name).map_err(NetnsError)?;
        Ok(Self { ns })
    }

    pub fn name(&self) -> &str {
        &self.ns.name
    }

    /// The bind mount `ip netns add` made, for `nsenter --net=`.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.ns.name)
    }

    /// `ip netns exec <name> <program>`, to be completed by the caller.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        self.ns.command(program)
    }

    /// `ip -n <name> <args...>`, returning stdout.
    pub fn ip<'a>(&'a self, args: impl IntoIterator<Item = &'a str>) -> Result<String, NetnsError> {
        let args: Vec<&str> = args.into_iter().collect();
        self.ns.ip(&args).map_err(NetnsError)
    }
}

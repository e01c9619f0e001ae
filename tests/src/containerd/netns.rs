//! The "node" network namespace containerd runs in, so that everything the
//! CNI plugin creates (cni0, host-side veths, iptables rules) lands there and
//! not on the host.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot run `ip` (install iproute2): {0}")]
    Spawn(#[source] std::io::Error),
    #[error("`ip {args}` failed: {stderr}")]
    Failed { args: String, stderr: String },
}

/// A uniquely named netns, deleted on drop unless adopted (see
/// [`NodeNetns::adopt`]).
#[derive(Debug)]
pub struct NodeNetns {
    name: String,
    owned: bool,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl NodeNetns {
    /// Creates `<prefix>-<pid>-<n>` with its loopback up (containerd's CRI
    /// stream server binds 127.0.0.1 in it).
    pub fn create(prefix: &str) -> Result<Self, NetnsError> {
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        ip(["netns", "add", name.as_str()])?;
        // From here on, Drop removes it even if the next step fails.
        let ns = Self { name, owned: true };
        ip(["-n", ns.name.as_str(), "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// An existing named netns someone else owns (e.g. a node of the
    /// namespace cluster harness, with its underlay and agent already in
    /// it): containerd runs there, and the netns outlives this handle.
    pub fn adopt(name: &str) -> Result<Self, NetnsError> {
        let ns = Self {
            name: name.to_string(),
            owned: false,
        };
        if !ns.path().exists() {
            return Err(NetnsError::Failed {
                args: format!("netns {name}"),
                stderr: format!("{} does not exist", ns.path().display()),
            });
        }
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind mount `ip netns add` made, for `nsenter --net=`.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// `ip netns exec <name> <program>`, to be completed by the caller.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// `ip -n <name> <args...>`, returning stdout.
    pub fn ip<'a>(&'a self, args: impl IntoIterator<Item = &'a str>) -> Result<String, NetnsError> {
        ip(["-n", self.name.as_str()].into_iter().chain(args))
    }
}

impl Drop for NodeNetns {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        if let Err(e) = ip(["netns", "del", self.name.as_str()]) {
            eprintln!("cleanup: {e}");
        }
    }
}

fn ip<'a>(args: impl IntoIterator<Item = &'a str>) -> Result<String, NetnsError> {
    let args: Vec<&str> = args.into_iter().collect();
    let out: Output = Command::new("ip")
        .args(&args)
        .output()
        .map_err(NetnsError::Spawn)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NetnsError::Failed {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

//! A node for the driver's tests: a network namespace running its own
//! containerd, the pause image and a busybox image imported, and the node's
//! private root. containerd's CNI dirs are that root's `/opt/cni/bin` and
//! `/etc/cni/net.d`, the paths a hostPath volume maps to, so an install-cni
//! init container feeds this node's runtime as on a real node. The CNI
//! there is either the reference bridge + host-local plugins (no trellis
//! build needed) or nothing (a DaemonSet installs it). Everything goes with
//! the value (containerd's guard kills tasks and removes runc state; the
//! temp dir holds the rest).

use std::path::{Path, PathBuf};

use std::time::Duration;

use serde_json::{json, Value};

use super::container::Backoff;
use super::translate::NodeFacts;
use super::volumes::NodeDirs;
use super::RuntimeOptions;
use crate::apiserver::{Emulator, EmulatorConfig, EmulatorHandle};
use crate::containerd::cni::{self, CniSetupError};
use crate::containerd::image::{self, ImageError};
use crate::containerd::netns::NetnsError;
use crate::containerd::{Containerd, ContainerdError, ContainerdOptions, NodeNetns};
use crate::cri::CriClient;

/// The only binary of the test image (Debian's busybox-static).
pub const BUSYBOX: &str = "/bin/busybox";
pub const TEST_IMAGE: &str = "localhost/trellis/busybox:1";

/// What the driver's tests return: a message naming what failed.
pub type TestResult<T = ()> = Result<T, String>;

/// Labels an error for a [`TestResult`]: `.map_err(err("connect"))`.
pub fn err<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// A container command running `script` in the test image's shell (`$B` is busybox).
pub fn sh(script: &str) -> Value {
    json!([BUSYBOX, "sh", "-c", format!("B={BUSYBOX}; {script}")])
}

/// Restart backoff short enough for a test to see several restarts in seconds.
pub fn fast_runtime_options() -> RuntimeOptions {
    RuntimeOptions {
        backoff: Backoff {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(1),
        },
    }
}

/// An API emulator keeping its state in `dir`, a client of it, and the port it listens on
/// (for the nodes' kubeconfigs).
pub async fn start_emulator(dir: &Path) -> TestResult<(EmulatorHandle, kube::Client, u16)> {
    let emu = Emulator::start(EmulatorConfig::new(dir))
        .await
        .map_err(err("emulator"))?;
    let client = emu.client().await.map_err(err("client"))?;
    let port = emu
        .local_addrs()
        .first()
        .map(|a| a.port())
        .ok_or("the emulator listens nowhere")?;
    Ok((emu, client, port))
}

/// Whether the driver's tests can run here; without root they are skipped, loudly. (A missing
/// busybox or containerd fails them instead, with what to install.)
pub fn runs_here() -> bool {
    trellis_testkit::skip_unless_root("needs root (netns, containerd, runc)")
}

/// A node test's turn on this host: `None` where it cannot run ([`runs_here`]), else the
/// host-wide containerd lock, held until dropped (containerd instances share
/// `/run/containerd` and the k8s.io cgroup).
pub fn node_turn() -> TestResult<Option<nix::fcntl::Flock<std::fs::File>>> {
    if !runs_here() {
        return Ok(None);
    }
    crate::containerd::serial_lock()
        .map(Some)
        .map_err(err("lock"))
}

/// A node test against a fresh API emulator: in this host's turn ([`node_turn`]; `Ok` without
/// running where it cannot run), runs `scenario` with the emulator's client and port on a tokio
/// runtime with `workers` threads (`None`: the current thread only).
pub fn with_emulator<F>(
    workers: Option<usize>,
    scenario: impl FnOnce(kube::Client, u16) -> F,
) -> TestResult
where
    F: std::future::Future<Output = TestResult>,
{
    let Some(_serial) = node_turn()? else {
        return Ok(());
    };
    let mut builder = match workers {
        None => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    let rt = builder.enable_all().build().map_err(err("tokio"))?;
    rt.block_on(async {
        let dir = tempfile::tempdir().map_err(err("tempdir"))?;
        let (_emu, client, port) = start_emulator(dir.path()).await?;
        scenario(client, port).await
    })
}

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("{BUSYBOX} missing (apt-get install busybox-static)")]
    NoBusybox,
    #[error("test node I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Cni(#[from] CniSetupError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Containerd(#[from] ContainerdError),
}

pub struct TestNode {
    pub ctd: Containerd,
    pub facts: NodeFacts,
    _tmp: tempfile::TempDir,
}

/// How a test node is set up.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub name: String,
    /// `Some(n)`: the reference plugins with pod subnet `10.244.<n>.0/24`;
    /// `None`: empty CNI dirs (only hostNetwork pods run until something
    /// installs a CNI config).
    pub reference_cni_subnet: Option<u8>,
    /// Run in this existing netns (e.g. a netns_cluster node, its address
    /// in `node_ip`) instead of a fresh one.
    pub adopt_netns: Option<String>,
    /// The node's address: status.hostIP, and hostNetwork pods' podIP.
    pub node_ip: String,
    /// The API server as containers see it (KUBERNETES_SERVICE_HOST/PORT).
    pub api_host: String,
    pub api_port: u16,
    /// Where the node's private root and containerd's files go (default: the system temp dir).
    pub parent_dir: Option<PathBuf>,
    /// Reference plugins the node's distribution ships in `/opt/cni/bin` (kind's node image
    /// has `loopback` and `portmap`, which a pod network's conflist may chain).
    pub node_plugins: Vec<String>,
    /// Paths of the node root that containerd (and so the CNI plugins it runs) sees at the same
    /// path on the host, e.g. `/run/flannel` and `/var/lib/cni`, as on a real node.
    pub host_view: Vec<PathBuf>,
    /// More image archives to import (e.g. the trellis image).
    pub images: Vec<PathBuf>,
}

impl NodeOptions {
    /// A node in a fresh netns, no CNI, reaching the API at `api_host:api_port`.
    pub fn new(name: &str, api_host: &str, api_port: u16) -> Self {
        Self {
            name: name.to_string(),
            reference_cni_subnet: None,
            adopt_netns: None,
            node_ip: "127.0.0.1".into(),
            api_host: api_host.to_string(),
            api_port,
            parent_dir: None,
            node_plugins: Vec::new(),
            host_view: Vec::new(),
            images: Vec::new(),
        }
    }
}

impl TestNode {
    /// A CRI client of this node's containerd.
    pub async fn cri(&self) -> TestResult<CriClient> {
        CriClient::connect(self.ctd.socket())
            .await
            .map_err(err("connect"))
    }

    /// [`TestNode::cri`], once containerd reports its network ready (it loaded a CNI config).
    pub async fn cri_network_ready(&self) -> TestResult<CriClient> {
        let mut cri = self.cri().await?;
        cri.wait_network_ready(Duration::from_secs(10))
            .await
            .map_err(err("network"))?;
        Ok(cri)
    }

    /// Fails naming what is left where the node still has pod sandboxes or live tasks (after
    /// the pods are torn down).
    pub async fn check_nothing_left(&self) -> TestResult {
        let left = self
            .cri()
            .await?
            .list_pod_sandboxes()
            .await
            .map_err(err("list"))?;
        let tasks = self.ctd.live_task_ids();
        if !left.is_empty() || !tasks.is_empty() {
            return Err(format!(
                "{} left behind: sandboxes {left:?}, tasks {tasks:?}",
                self.facts.node_name
            ));
        }
        Ok(())
    }

    /// A fresh netns with the reference CNI on `10.244.<subnet>.0/24`.
    pub fn start(
        name: &str,
        subnet: u8,
        api_host: &str,
        api_port: u16,
    ) -> Result<Self, HarnessError> {
        Self::start_with(&NodeOptions {
            reference_cni_subnet: Some(subnet),
            ..NodeOptions::new(name, api_host, api_port)
        })
    }

    pub fn start_with(opts: &NodeOptions) -> Result<Self, HarnessError> {
        let parent = opts.parent_dir.clone().unwrap_or_else(std::env::temp_dir);
        let tmp = tempfile::Builder::new()
            .prefix("trellis-kubelet-")
            .tempdir_in(&parent)
            .map_err(|source| HarnessError::Io {
                path: parent,
                source,
            })?;
        let t = tmp.path();
        let dirs = NodeDirs {
            root: t.join("root"),
            pods: t.join("pods"),
        };
        let (bin, conf) = (
            dirs.root.join("opt/cni/bin"),
            dirs.root.join("etc/cni/net.d"),
        );
        for dir in [&bin, &conf] {
            std::fs::create_dir_all(dir).map_err(|source| HarnessError::Io {
                path: dir.clone(),
                source,
            })?;
        }
        if let Some(subnet) = opts.reference_cni_subnet {
            reference_cni(&bin, &conf, &t.join("ipam"), subnet)?;
        }
        let shipped: Vec<&str> = opts.node_plugins.iter().map(String::as_str).collect();
        cni::link_reference_plugins(&bin, &shipped)?;
        let pause = image::build_pause_image(t)?;
        let busybox = busybox_image(t)?;
        let netns = match &opts.adopt_netns {
            Some(name) => NodeNetns::adopt(name)?,
            None => NodeNetns::create("tkub")?,
        };
        let mut ctd_opts = ContainerdOptions::new(bin, conf);
        ctd_opts.node_binds = opts
            .host_view
            .iter()
            .map(|host| (dirs.host_path(host), host.clone()))
            .collect();
        let ctd = Containerd::start(netns, &ctd_opts)?;
        for archive in [&pause, &busybox].into_iter().chain(&opts.images) {
            ctd.import_image(archive)?;
        }
        let facts = NodeFacts {
            node_name: opts.name.clone(),
            node_ip: Some(opts.node_ip.clone()),
            dirs,
            api_host: opts.api_host.clone(),
            api_port: opts.api_port,
        };
        Ok(Self {
            ctd,
            facts,
            _tmp: tmp,
        })
    }
}

/// The bridge, host-local and loopback plugins and their conflist.
fn reference_cni(bin: &Path, conf: &Path, ipam: &Path, subnet: u8) -> Result<(), HarnessError> {
    cni::link_reference_plugins(bin, &["bridge", "host-local", "loopback"])?;
    let conflist = json!({"cniVersion": "1.0.0", "name": "kn", "plugins": [{
        "type": "bridge", "bridge": "cni0", "isGateway": true,
        "ipam": {"type": "host-local", "dataDir": ipam,
                 "ranges": [[{"subnet": format!("10.244.{subnet}.0/24")}]]}}]});
    cni::write_conflist(conf, "10-kn.conflist", &conflist)?;
    Ok(())
}

/// An image holding only /bin/busybox; containers call it by full path.
fn busybox_image(dir: &Path) -> Result<PathBuf, HarnessError> {
    let bytes = std::fs::read(BUSYBOX).map_err(|_| HarnessError::NoBusybox)?;
    let tar = image::image_tar(&[("bin/busybox", 0o755, &bytes)], &[BUSYBOX], TEST_IMAGE)?;
    let path = dir.join("busybox.tar");
    std::fs::write(&path, tar).map_err(|source| HarnessError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

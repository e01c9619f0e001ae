//! A node for the driver's tests: a network namespace running its own
//! containerd (reference bridge + host-local CNI plugins, so no trellis
//! build is needed), the pause image and a busybox image imported, and the
//! node's private directories. Everything goes with the value (containerd's
//! guard kills tasks and removes runc state; the temp dir holds the rest).

use std::path::{Path, PathBuf};

use serde_json::json;

use super::translate::NodeFacts;
use super::volumes::NodeDirs;
use crate::containerd::cni::{self, CniSetupError};
use crate::containerd::image::{self, ImageError};
use crate::containerd::netns::NetnsError;
use crate::containerd::{Containerd, ContainerdError, ContainerdOptions, NodeNetns};

/// The only binary of the test image (Debian's busybox-static).
pub const BUSYBOX: &str = "/bin/busybox";
pub const TEST_IMAGE: &str = "localhost/trellis/busybox:1";

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

impl TestNode {
    /// Starts node `name` with pod subnet `10.244.<subnet>.0/24`; the API
    /// server is announced to containers as `api_host:api_port`.
    pub fn start(
        name: &str,
        subnet: u8,
        api_host: &str,
        api_port: u16,
    ) -> Result<Self, HarnessError> {
        let tmp = tempfile::Builder::new()
            .prefix("trellis-kubelet-")
            .tempdir()
            .map_err(|source| HarnessError::Io {
                path: std::env::temp_dir(),
                source,
            })?;
        let t = tmp.path();
        let plugins = ["bridge", "host-local", "loopback"].map(|p| (p, cni::reference_plugin(p)));
        let links: Vec<(&str, &Path)> = plugins.iter().map(|(n, p)| (*n, p.as_path())).collect();
        cni::link_plugins(&t.join("cni/bin"), &links)?;
        let conflist = json!({"cniVersion": "1.0.0", "name": "kn", "plugins": [{
            "type": "bridge", "bridge": "cni0", "isGateway": true,
            "ipam": {"type": "host-local", "dataDir": t.join("ipam"),
                     "ranges": [[{"subnet": format!("10.244.{subnet}.0/24")}]]}}]});
        cni::write_conflist(&t.join("cni/conf"), "10-kn.conflist", &conflist)?;
        let pause = image::build_pause_image(t)?;
        let busybox = busybox_image(t)?;
        let netns = NodeNetns::create("tkub")?;
        let ctd = Containerd::start(
            netns,
            &ContainerdOptions::new(t.join("cni/bin"), t.join("cni/conf")),
        )?;
        ctd.import_image(&pause)?;
        ctd.import_image(&busybox)?;
        let facts = NodeFacts {
            node_name: name.to_string(),
            node_ip: Some("127.0.0.1".into()),
            dirs: NodeDirs {
                root: t.join("root"),
                pods: t.join("pods"),
            },
            api_host: api_host.to_string(),
            api_port,
        };
        Ok(Self {
            ctd,
            facts,
            _tmp: tmp,
        })
    }
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

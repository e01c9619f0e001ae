//! Shared by the cluster_* tests: an emulator per test, Nodes shaped like real ones, waits.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;
use trellis_agent::annotations::{AnnotationKeys, DEFAULT_PREFIX};
use trellis_agent::cluster::SharedView;
use trellis_agent::net::Mac;
use trellis_agent::view::{ClusterView, LocalLease, Underlay};
use trellis_e2e::apiserver::{Emulator, EmulatorConfig, EmulatorHandle};

pub const LOCAL: &str = "local";

pub struct Cluster {
    pub emu: EmulatorHandle,
    pub client: Client,
    pub nodes: Api<Node>,
    _dir: tempfile::TempDir,
}

pub async fn cluster() -> Cluster {
    cluster_with(|_| {}).await
}

/// [`cluster`] with the emulator configured further (a feature gate off, the audit on).
pub async fn cluster_with(configure: impl FnOnce(&mut EmulatorConfig)) -> Cluster {
    trellis_e2e::apiserver::install_crypto_provider();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = EmulatorConfig::new(dir.path());
    // Frequent bookmarks exercise the watcher's resume path.
    cfg.bookmark_interval = Duration::from_millis(500);
    configure(&mut cfg);
    let emu = Emulator::start(cfg).await.expect("emulator starts");
    let client = emu.client().await.expect("client");
    Cluster {
        nodes: Api::all(client.clone()),
        client,
        emu,
        _dir: dir,
    }
}

/// A Node as a kubelet registers it (status with conditions, addresses, images) and, when
/// `managed`, with the annotations a flannel/trellis VXLAN node writes.
pub fn node_json(i: u32, managed: bool) -> serde_json::Value {
    let name = peer_name(i);
    let mut annotations = serde_json::Map::new();
    annotations.insert("node.alpha.kubernetes.io/ttl".into(), json!("0"));
    if managed {
        for (k, v) in peer_annotations(i) {
            annotations.insert(k, json!(v));
        }
    }
    let images: Vec<serde_json::Value> = (0..20)
        .map(|n| json!({"names": [format!("registry.k8s.io/img-{n}:v1.{n}")], "sizeBytes": 1_000_000 + n}))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}, "annotations": annotations},
        "spec": {"podCIDR": subnet(i), "podCIDRs": [subnet(i)]},
        "status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "kubelet is posting ready status",
                "lastHeartbeatTime": "2024-01-01T00:00:00Z", "lastTransitionTime": "2024-01-01T00:00:00Z"}],
            "addresses": [{"type": "InternalIP", "address": public_ip(i)}, {"type": "Hostname", "address": name}],
            "images": images
        }
    })
}

pub fn peer_name(i: u32) -> String {
    format!("node-{i}")
}

pub fn subnet(i: u32) -> String {
    if i < 256 {
        format!("10.244.{i}.0/24")
    } else {
        format!("10.{}.{}.0/24", i / 256, i % 256)
    }
}

pub fn public_ip(i: u32) -> String {
    format!("172.16.{}.{}", i / 256, i % 256)
}

pub fn vtep_mac(i: u32) -> String {
    let b = i.to_be_bytes();
    format!("0a:58:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3])
}

pub fn peer_annotations(i: u32) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        a.insert(format!("{DEFAULT_PREFIX}{k}"), v);
    };
    put("kube-subnet-manager", "true".into());
    put("backend-type", "vxlan".into());
    put(
        "backend-data",
        format!(r#"{{"VNI":1,"VtepMAC":"{}"}}"#, vtep_mac(i)),
    );
    put("public-ip", public_ip(i));
    a
}

pub async fn create_node(nodes: &Api<Node>, i: u32, managed: bool) {
    let n: Node = serde_json::from_value(node_json(i, managed)).expect("node json");
    nodes
        .create(&PostParams::default(), &n)
        .await
        .unwrap_or_else(|e| panic!("create {}: {e}", peer_name(i)));
}

pub async fn create_local_node(nodes: &Api<Node>, pod_cidr: Option<&str>) {
    let mut j = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": LOCAL},
        "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
            "lastHeartbeatTime": "2024-01-01T00:00:00Z", "lastTransitionTime": "2024-01-01T00:00:00Z"}]}});
    if let Some(c) = pod_cidr {
        j["spec"] = json!({"podCIDR": c, "podCIDRs": [c]});
    }
    let n: Node = serde_json::from_value(j).expect("node json");
    nodes
        .create(&PostParams::default(), &n)
        .await
        .expect("create local node");
}

pub async fn delete_node(nodes: &Api<Node>, name: &str) {
    nodes
        .delete(name, &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("delete {name}: {e}"));
}

pub async fn annotate(nodes: &Api<Node>, name: &str, key: &str, value: Option<&str>) {
    let patch = json!({"metadata": {"annotations": {key: value}}});
    nodes
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("annotate {name}: {e}"));
}

/// What a kubelet heartbeat does: bump the Ready condition's heartbeat time.
pub async fn heartbeat(nodes: &Api<Node>, name: &str, at: &str) {
    let patch = json!({"status": {"conditions": [{"type": "Ready", "status": "True",
        "reason": "KubeletReady", "lastHeartbeatTime": at, "lastTransitionTime": "2024-01-01T00:00:00Z"}]}});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .unwrap_or_else(|e| panic!("heartbeat {name}: {e}"));
}

/// The view of node `local` (10.244.1.0/24 on 172.16.0.1) with Network 10.0.0.0/8 in mind.
pub fn local_view() -> SharedView {
    let lease = LocalLease {
        node_name: LOCAL.into(),
        subnet_v4: Some("10.244.1.0/24".parse().unwrap()),
        subnet_v6: None,
        public_ip_v4: Some("172.16.0.1".parse().unwrap()),
        public_ip_v6: None,
        public_ip_override_v4: None,
        public_ip_override_v6: None,
        underlay: Underlay {
            name: "eth0".into(),
            index: 2,
            mtu: 1500,
            addr_v4: Some("172.16.0.1/16".parse().unwrap()),
            addr_v6: None,
            routes: Vec::new(),
        },
        vtep_mac_v4: Mac([0x02, 0, 0, 0, 0, 1]),
        vtep_mac_v6: Mac([0x02, 0, 0, 0, 0, 6]),
        wg_key: None,
        wireguard_kernel: false,
    };
    Arc::new(Mutex::new(ClusterView::new(
        lease,
        AnnotationKeys::default(),
    )))
}

/// Names of the remote Nodes the view knows, sorted.
pub fn view_names(view: &SharedView, candidates: impl IntoIterator<Item = u32>) -> Vec<String> {
    let v = view.lock().unwrap();
    let mut out: Vec<String> = candidates
        .into_iter()
        .map(peer_name)
        .filter(|n| v.node(n).is_some())
        .collect();
    out.sort();
    out
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
pub async fn eventually(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Like [`eventually`] for an async condition.
pub async fn eventually_async<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Captures log lines for assertions on what the agent tells the operator.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl LogCapture {
    /// Installs a subscriber for the current thread until the guard drops.
    pub fn install(&self) -> tracing::subscriber::DefaultGuard {
        let me = self.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || me.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        tracing::subscriber::set_default(sub)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

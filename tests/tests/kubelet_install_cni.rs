//! The node's CNI comes from a DaemonSet, as on a real cluster: the test
//! node starts with empty `/opt/cni/bin` and `/etc/cni/net.d` (in its
//! private root, which is also containerd's CNI dirs), a hostNetwork
//! DaemonSet's init container copies the plugins and writes the conflist
//! there through hostPath volumes, and a plain Pod gets its address from
//! that config (the node has no other). Everything runs in the background
//! `ClusterLoop`.
//!
//! Needs root, containerd, runc, containernetworking-plugins, gcc and
//! busybox-static. About 3 s on 2 cores.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::json;
use trellis_e2e::containerd::cni;
use trellis_e2e::kubelet::background::ClusterLoop;
use trellis_e2e::kubelet::harness::{
    err, fast_runtime_options, with_emulator, NodeOptions, TestNode, TestResult, BUSYBOX,
    TEST_IMAGE,
};
use trellis_e2e::kubelet::node_driver::NodeDriver;

const NODE: &str = "kn-1";
const NS: &str = "kube-system";

/// The installer DaemonSet: its init container copies the staged plugins
/// and writes the conflist (atomically, as install-cni does).
fn installer(conflist: &str) -> TestResult<DaemonSet> {
    let script = format!(
        "B={BUSYBOX}; $B cp /staging/* /opt/cni/bin/ && echo '{conflist}' > /etc/cni/net.d/.kn.tmp && $B mv /etc/cni/net.d/.kn.tmp /etc/cni/net.d/10-kn.conflist"
    );
    let host = |name: &str, path: &str| json!({"name": name, "hostPath": {"path": path, "type": "DirectoryOrCreate"}});
    serde_json::from_value(json!({
        "metadata": {"name": "cni", "namespace": NS},
        "spec": {"selector": {"matchLabels": {"app": "cni"}}, "template": {
            "metadata": {"labels": {"app": "cni"}},
            "spec": {
                "hostNetwork": true, "terminationGracePeriodSeconds": 1,
                "initContainers": [{"name": "install", "image": TEST_IMAGE, "command": [BUSYBOX, "sh", "-c", script],
                    "volumeMounts": [{"name": "bin", "mountPath": "/opt/cni/bin"}, {"name": "conf", "mountPath": "/etc/cni/net.d"},
                                     {"name": "staging", "mountPath": "/staging", "readOnly": true}]}],
                "containers": [{"name": "idle", "image": TEST_IMAGE,
                    "command": [BUSYBOX, "sh", "-c", format!("trap 'exit 0' TERM; {BUSYBOX} sleep 1000 & wait")]}],
                "volumes": [host("bin", "/opt/cni/bin"), host("conf", "/etc/cni/net.d"), host("staging", "/staging")]
            }
        }}
    }))
    .map_err(err("daemonset json"))
}

async fn seed(client: &Client, conflist: &str) -> TestResult {
    let pp = PostParams::default();
    let node: Node =
        serde_json::from_value(json!({"metadata": {"name": NODE}})).map_err(err("node json"))?;
    Api::<Node>::all(client.clone())
        .create(&pp, &node)
        .await
        .map_err(err("Node"))?;
    Api::<DaemonSet>::namespaced(client.clone(), NS)
        .create(&pp, &installer(conflist)?)
        .await
        .map_err(err("DaemonSet"))?;
    let web: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": NS},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "web", "image": TEST_IMAGE,
            "command": [BUSYBOX, "httpd", "-f", "-p", "8080"]}]}
    }))
    .map_err(err("pod json"))?;
    Api::<Pod>::namespaced(client.clone(), NS)
        .create(&pp, &web)
        .await
        .map_err(err("Pod"))?;
    Ok(())
}

/// Copies the reference plugins where the installer finds them (the node
/// root's /staging) and returns the conflist it will install.
fn stage(node: &TestNode) -> TestResult<String> {
    let staging = node.facts.dirs.root.join("staging");
    std::fs::create_dir_all(&staging).map_err(err("staging"))?;
    for plugin in ["bridge", "host-local", "loopback"] {
        std::fs::copy(cni::reference_plugin(plugin), staging.join(plugin)).map_err(err(plugin))?;
    }
    let ipam = node.facts.dirs.root.join("var/lib/cni/networks");
    Ok(json!({"cniVersion": "1.0.0", "name": "kn", "plugins": [{
        "type": "bridge", "bridge": "cni0", "isGateway": true,
        "ipam": {"type": "host-local", "dataDir": ipam, "ranges": [[{"subnet": "10.244.21.0/24"}]]}}]})
    .to_string())
}

#[test]
fn a_daemonset_installs_the_nodes_cni_and_then_pod_network_pods_run() -> TestResult {
    with_emulator(Some(2), |client, port| async move {
        let node = TestNode::start_with(&NodeOptions::new(NODE, "127.0.0.1", port))
            .map_err(err("node"))?;
        let result = scenario(&client, &node).await;
        result.map_err(|e| {
            format!(
                "{e}\n--- containerd log tail ---\n{}",
                node.ctd.log_tail(20)
            )
        })
    })
}

async fn scenario(client: &Client, node: &TestNode) -> TestResult {
    let conflist = stage(node)?;
    seed(client, &conflist).await?;
    let cri = node.cri().await?;
    let opts = fast_runtime_options();
    let driver = NodeDriver::new(client.clone(), cri, node.facts.clone(), opts);
    let cluster = ClusterLoop::spawn(client.clone(), vec![driver], Duration::from_millis(200));
    let result = wait_for_web(client).await;
    let stopped = cluster.stop().await;
    let ip = result?;
    stopped.map_err(err("stop"))?;
    if !ip.starts_with("10.244.21.") {
        return Err(format!(
            "web got {ip:?}, not an address of the installed config"
        ));
    }
    node.check_nothing_left().await
}

/// web's podIP once it runs.
async fn wait_for_web(client: &Client) -> TestResult<String> {
    let pods = Api::<Pod>::namespaced(client.clone(), NS);
    let start = Instant::now();
    loop {
        let web = pods.get("web").await.map_err(err("get web"))?;
        let status = web.status.unwrap_or_default();
        if status.phase.as_deref() == Some("Running") {
            eprintln!("web Running after {:?}", start.elapsed());
            return status
                .pod_ip
                .ok_or_else(|| "Running without podIP".to_string());
        }
        if start.elapsed() > Duration::from_secs(20) {
            return Err(format!("web not Running after 20 s: {status:?}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

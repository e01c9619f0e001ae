//! The node driver against the API emulator: the DaemonSet controller, the
//! scheduler and two nodes' kubelet loops (each a containerd in its own node
//! namespace) run a DaemonSet Pod per node, a plain Pod and a Pod the driver
//! cannot honour; status and Events come back through the API, a deleted
//! DaemonSet Pod is replaced, and a template change rolls the DaemonSet
//! one node at a time.
//!
//! Needs root, containerd, runc, containernetworking-plugins, gcc (pause)
//! and busybox-static. About 6 s on 2 cores (containerd tests are
//! serialised by a host-wide lock).

use std::cell::Cell;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use trellis_e2e::kubelet::controllers::{daemonset_pass, scheduler_pass};
use trellis_e2e::kubelet::harness::{
    err, fast_runtime_options, sh, with_emulator, TestNode, TestResult, BUSYBOX, TEST_IMAGE,
};
use trellis_e2e::kubelet::node_driver::NodeDriver;
use trellis_e2e::kubelet::rollout::HASH_LABEL;

const NODES: [(&str, u8); 2] = [("kn-1", 11), ("kn-2", 12)];
const NODE: &str = NODES[0].0;
const NS: &str = "demo";

fn object<K: DeserializeOwned>(v: Value) -> TestResult<K> {
    serde_json::from_value(v).map_err(err("object json"))
}

fn agent_daemonset() -> TestResult<DaemonSet> {
    object(json!({
        "metadata": {"name": "agent", "namespace": NS},
        "spec": {"selector": {"matchLabels": {"app": "agent"}}, "template": {
            "metadata": {"labels": {"app": "agent"}},
            "spec": {
                "hostNetwork": true, "serviceAccountName": "agent", "automountServiceAccountToken": false,
                "terminationGracePeriodSeconds": 1,
                "nodeSelector": {"kubernetes.io/os": "linux"}, "tolerations": [{"operator": "Exists"}],
                "containers": [{
                    "name": "agent", "image": TEST_IMAGE,
                    "command": sh("$B cp /sa/token /sa/ca.crt /data/ && echo \"$NODE_NAME\" > /data/node; trap 'exit 0' TERM; $B sleep 1000 & wait"),
                    "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
                    "readinessProbe": {"exec": {"command": [BUSYBOX, "test", "-s", "/data/token"]}, "periodSeconds": 1},
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}, {"name": "sa", "mountPath": "/sa", "readOnly": true}]
                }],
                "volumes": [
                    {"name": "data", "hostPath": {"path": "/var/lib/agent", "type": "DirectoryOrCreate"}},
                    {"name": "sa", "projected": {"sources": [
                        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]}}
                ]
            }
        }}
    }))
}

fn web_pod() -> TestResult<Pod> {
    object(json!({
        "metadata": {"name": "web", "namespace": NS},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
            "name": "web", "image": TEST_IMAGE,
            "command": [BUSYBOX, "httpd", "-f", "-p", "8080", "-h", "/"],
            "readinessProbe": {"httpGet": {"path": "/bin/busybox", "port": 8080}, "periodSeconds": 1}}]}
    }))
}

fn pvc_pod() -> TestResult<Pod> {
    object(json!({
        "metadata": {"name": "needs-pvc", "namespace": NS},
        "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": TEST_IMAGE}],
                 "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "claim"}}]}
    }))
}

async fn seed(client: &Client) -> TestResult {
    let pp = PostParams::default();
    for (name, _) in NODES {
        let node: Node =
            object(json!({"metadata": {"name": name, "labels": {"kubernetes.io/os": "linux"}}}))?;
        Api::<Node>::all(client.clone())
            .create(&pp, &node)
            .await
            .map_err(err("Node"))?;
    }
    let sa: ServiceAccount = object(json!({"metadata": {"name": "agent", "namespace": NS}}))?;
    Api::<ServiceAccount>::namespaced(client.clone(), NS)
        .create(&pp, &sa)
        .await
        .map_err(err("ServiceAccount"))?;
    // The apiserver publishes kube-root-ca.crt in every namespace; an
    // emulator that does not gets a stand-in.
    let ca: ConfigMap = object(
        json!({"metadata": {"name": "kube-root-ca.crt", "namespace": NS}, "data": {"ca.crt": "TEST-CA"}}),
    )?;
    match Api::<ConfigMap>::namespaced(client.clone(), NS)
        .create(&pp, &ca)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(e) => return Err(format!("ConfigMap: {e}")),
    }
    Api::<DaemonSet>::namespaced(client.clone(), NS)
        .create(&pp, &agent_daemonset()?)
        .await
        .map_err(err("DaemonSet"))?;
    let pods = Api::<Pod>::namespaced(client.clone(), NS);
    pods.create(&pp, &web_pod()?)
        .await
        .map_err(err("web Pod"))?;
    pods.create(&pp, &pvc_pod()?)
        .await
        .map_err(err("pvc Pod"))?;
    Ok(())
}

/// Runs every controller once per 200 ms until `check` returns Some.
async fn drive_until<T>(
    client: &Client,
    drivers: &mut [NodeDriver],
    timeout: Duration,
    what: &str,
    check: impl AsyncCheck<T>,
) -> TestResult<T> {
    let start = Instant::now();
    loop {
        daemonset_pass(client)
            .await
            .map_err(err("daemonset pass"))?;
        scheduler_pass(client)
            .await
            .map_err(err("scheduler pass"))?;
        for driver in drivers.iter_mut() {
            driver.pass().await.map_err(err("node pass"))?;
        }
        if let Some(found) = check.check(client).await? {
            return Ok(found);
        }
        if start.elapsed() > timeout {
            let pods = Api::<Pod>::all(client.clone())
                .list(&ListParams::default())
                .await
                .map_err(err("list"))?;
            return Err(format!(
                "{what}: not after {timeout:?}; pods: {:#?}",
                pods.items
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A check against the API (async closures without boxing).
trait AsyncCheck<T> {
    async fn check(&self, client: &Client) -> TestResult<Option<T>>;
}

/// The Running, Ready Pods of the namespace.
struct RunningPods;

impl AsyncCheck<Vec<Pod>> for RunningPods {
    async fn check(&self, client: &Client) -> TestResult<Option<Vec<Pod>>> {
        let pods = Api::<Pod>::namespaced(client.clone(), NS)
            .list(&ListParams::default())
            .await
            .map_err(err("list"))?;
        let ready: Vec<Pod> = pods.items.into_iter().filter(is_ready).collect();
        let names = |p: &Pod| {
            p.metadata
                .generate_name
                .clone()
                .or(p.metadata.name.clone())
                .unwrap_or_default()
        };
        let count = |n: &str| ready.iter().filter(|p| names(p) == n).count();
        Ok((count("agent-") == NODES.len() && count("web") == 1).then_some(ready))
    }
}

fn is_ready(p: &Pod) -> bool {
    let st = p.status.as_ref();
    st.and_then(|s| s.phase.as_deref()) == Some("Running")
        && st
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A replacement agent Pod on `NODE` (uid other than the deleted one's)
/// is running and ready.
struct Replaced(String);

impl AsyncCheck<Pod> for Replaced {
    async fn check(&self, client: &Client) -> TestResult<Option<Pod>> {
        let pods = Api::<Pod>::namespaced(client.clone(), NS)
            .list(&ListParams::default())
            .await
            .map_err(err("list"))?;
        Ok(pods.items.into_iter().find(|p| {
            p.metadata.generate_name.as_deref() == Some("agent-")
                && node_of(p) == NODE
                && p.metadata.uid.as_deref() != Some(self.0.as_str())
                && is_ready(p)
        }))
    }
}

#[test]
fn daemonset_per_node_replaced_and_rolled_scheduled_pod_and_refused_pod_via_the_api() -> TestResult
{
    with_emulator(None, |client, port| async move {
        let mut nodes = Vec::new();
        for (name, subnet) in NODES {
            nodes.push(TestNode::start(name, subnet, "127.0.0.1", port).map_err(err("node"))?);
        }
        let result = scenario(&client, &nodes).await;
        result.map_err(|e| {
            let logs: Vec<String> = nodes
                .iter()
                .map(|n| {
                    format!(
                        "--- {} containerd log tail ---\n{}",
                        n.facts.node_name,
                        n.ctd.log_tail(20)
                    )
                })
                .collect();
            format!("{e}\n{}", logs.join("\n"))
        })
    })
}

async fn scenario(client: &Client, nodes: &[TestNode]) -> TestResult {
    let opts = fast_runtime_options();
    let mut drivers = Vec::new();
    for node in nodes {
        let cri = node.cri_network_ready().await?;
        drivers.push(NodeDriver::new(
            client.clone(),
            cri,
            node.facts.clone(),
            opts,
        ));
    }
    seed(client).await?;
    let result = checks(client, nodes, &mut drivers).await;
    let mut errors = Vec::new();
    for driver in &mut drivers {
        errors.extend(driver.shutdown().await);
    }
    result?;
    if !errors.is_empty() {
        return Err(format!("teardown: {errors:?}"));
    }
    for node in nodes {
        node.check_nothing_left().await?;
    }
    Ok(())
}

fn node_of(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or("")
}

async fn checks(client: &Client, nodes: &[TestNode], drivers: &mut [NodeDriver]) -> TestResult {
    let start = Instant::now();
    let ready = drive_until(
        client,
        drivers,
        Duration::from_secs(20),
        "agents and web ready",
        RunningPods,
    )
    .await?;
    eprintln!(
        "agents and web Running and Ready after {:?}",
        start.elapsed()
    );
    let mut agent_nodes: Vec<&str> = ready
        .iter()
        .filter(|p| p.metadata.generate_name.is_some())
        .map(node_of)
        .collect();
    agent_nodes.sort();
    if agent_nodes != NODES.map(|(n, _)| n) {
        return Err(format!(
            "one agent per node expected, they run on {agent_nodes:?}"
        ));
    }
    let web = ready
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("web"))
        .ok_or("web")?;
    let subnet = NODES
        .iter()
        .find(|(n, _)| *n == node_of(web))
        .map(|(_, s)| *s)
        .ok_or("web is not on a test node")?;
    let web_ip = web
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_default();
    if !web_ip.starts_with(&format!("10.244.{subnet}.")) {
        return Err(format!(
            "web on {} has podIP {web_ip:?}, not from that node's CNI range",
            node_of(web)
        ));
    }
    let ca = Api::<ConfigMap>::namespaced(client.clone(), NS)
        .get("kube-root-ca.crt")
        .await
        .map_err(err("get kube-root-ca.crt"))?
        .data
        .and_then(|mut d| d.remove("ca.crt"))
        .ok_or("kube-root-ca.crt has no ca.crt")?;
    for node in nodes {
        check_agent_data(node, &ca)?;
    }
    check_refused(client).await?;
    let agent = ready
        .iter()
        .find(|p| node_of(p) == NODE && p.metadata.generate_name.is_some())
        .ok_or("agent")?;
    let (name, uid) = (
        agent.metadata.name.clone().unwrap_or_default(),
        agent.metadata.uid.clone().unwrap_or_default(),
    );
    Api::<Pod>::namespaced(client.clone(), NS)
        .delete(&name, &DeleteParams::default())
        .await
        .map_err(err("delete agent"))?;
    drive_until(
        client,
        drivers,
        Duration::from_secs(20),
        "agent replaced",
        Replaced(uid),
    )
    .await?;
    check_rollout(client, drivers).await?;
    Ok(())
}

/// A template change rolls both agents to the new template, never leaving
/// both nodes without a ready agent (maxUnavailable 1), and the DaemonSet
/// status says so.
async fn check_rollout(client: &Client, drivers: &mut [NodeDriver]) -> TestResult {
    let start = Instant::now();
    let patch =
        json!({"spec": {"template": {"metadata": {"annotations": {"restartedAt": "now"}}}}});
    let sets = Api::<DaemonSet>::namespaced(client.clone(), NS);
    sets.patch("agent", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map_err(err("patch DaemonSet"))?;
    let rolled = RolledOut {
        min_ready: Cell::new(usize::MAX),
    };
    drive_until(client, drivers, Duration::from_secs(20), "rollout", &rolled).await?;
    if rolled.min_ready.get() < 1 {
        return Err("during the rollout no node had a ready agent".into());
    }
    eprintln!(
        "rollout of 2 agents done in {:?}, at least {} ready throughout",
        start.elapsed(),
        rolled.min_ready.get()
    );
    Ok(())
}

struct RolledOut {
    min_ready: Cell<usize>,
}

impl AsyncCheck<()> for &RolledOut {
    async fn check(&self, client: &Client) -> TestResult<Option<()>> {
        let ds = Api::<DaemonSet>::namespaced(client.clone(), NS)
            .get("agent")
            .await
            .map_err(err("get ds"))?;
        let pods = Api::<Pod>::namespaced(client.clone(), NS)
            .list(&ListParams::default())
            .await
            .map_err(err("list"))?;
        let agents: Vec<&Pod> = pods
            .items
            .iter()
            .filter(|p| p.metadata.generate_name.as_deref() == Some("agent-"))
            .collect();
        let ready = agents.iter().filter(|p| is_ready(p)).count();
        self.min_ready.set(self.min_ready.get().min(ready));
        let st = ds.status.unwrap_or_default();
        let new_template = |p: &&&Pod| {
            let labels = p.metadata.labels.as_ref();
            let annotated = p
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("restartedAt"))
                .is_some();
            annotated && labels.is_some_and(|l| l.contains_key(HASH_LABEL))
        };
        let done = agents.len() == NODES.len()
            && agents
                .iter()
                .filter(new_template)
                .filter(|p| is_ready(p))
                .count()
                == NODES.len()
            && st.updated_number_scheduled == Some(2)
            && st.number_ready == 2;
        Ok(done.then_some(()))
    }
}

/// What the agent on `node` copied into its hostPath, which the driver
/// mapped under that node's own root.
fn check_agent_data(node: &TestNode, ca: &str) -> TestResult {
    let data = node.facts.dirs.root.join("var/lib/agent");
    let read = |f: &str| {
        std::fs::read_to_string(data.join(f))
            .map(|s| s.trim().to_string())
            .map_err(err("agent data"))
    };
    if read("node")? != node.facts.node_name
        || read("ca.crt")? != ca.trim()
        || read("token")?.is_empty()
    {
        return Err(format!(
            "the agent on {} did not get its node name, ca.crt and token",
            node.facts.node_name
        ));
    }
    Ok(())
}

/// The PVC Pod is Pending with the field named, in its status and in a
/// Warning Event.
async fn check_refused(client: &Client) -> TestResult {
    let pod = Api::<Pod>::namespaced(client.clone(), NS)
        .get("needs-pvc")
        .await
        .map_err(err("get"))?;
    let status = pod.status.unwrap_or_default();
    let message = status.message.unwrap_or_default();
    let want = "spec.volumes[0].persistentVolumeClaim: not supported by the test node driver";
    if status.phase.as_deref() != Some("Pending")
        || status.reason.as_deref() != Some("UnsupportedPodSpec")
        || message != want
    {
        return Err(format!(
            "refused pod status: phase {:?} reason {:?} message {message:?}",
            status.phase, status.reason
        ));
    }
    let events = Api::<Event>::namespaced(client.clone(), NS)
        .list(&ListParams::default())
        .await
        .map_err(err("events"))?;
    let found = events.items.iter().any(|e| {
        e.reason.as_deref() == Some("UnsupportedPodSpec")
            && e.note.as_deref() == Some(want)
            && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("needs-pvc")
    });
    if !found {
        return Err(format!(
            "no UnsupportedPodSpec Event for needs-pvc: {:?}",
            events.items
        ));
    }
    Ok(())
}

//! [`NetpolCluster`]: a namespace cluster ([`Cluster`]) with NetworkPolicy enforcement turned
//! on in net-conf.json, Kubernetes Namespaces and Pods in the API emulator whose network is
//! made by the real CNI plugin, a `netpol-probe serve` in every pod, and the probes between
//! them as a [`Matrix`].
//!
//! A pod is: `add_pod(node)` (round-robin over the nodes) for the network namespace and
//! address; `netpol-probe serve --name ns/name` in it, waited for until it printed `ready`;
//! then the Pod object (labels, `spec.nodeName`, named container ports
//! `serve-<port>-<proto>`), and its status (Running, `podIP(s)`) through the status
//! subresource, as kubelet would write it. Dropping the value kills the servers, deletes the
//! pods' namespaces and brings the cluster down (the emulator's state lives in the cluster's
//! temporary directory).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod as KubePod};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams,
};
use serde_json::{json, Value};

use super::cases::{port_name, Step};
use super::matrix::Matrix;
use super::model::{labels, Labels, PodRef, Protocol};
use super::probe::{run_in_netns, ProbeResult, Target};
use crate::netns_cluster::{self, locate_binary, Cluster, Pod, CONFIGMAP_NAME, CONFIGMAP_NS};

/// A Kubernetes Namespace of the test (the API adds `kubernetes.io/metadata.name`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceSpec {
    pub name: String,
    pub labels: Labels,
}

impl NamespaceSpec {
    pub fn new(name: &str, labels_: &[(&str, &str)]) -> NamespaceSpec {
        NamespaceSpec {
            name: name.into(),
            labels: labels(labels_.iter().copied()),
        }
    }
}

/// A Pod of the test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
}

impl PodSpec {
    pub fn new(namespace: &str, name: &str, labels_: &[(&str, &str)]) -> PodSpec {
        PodSpec {
            namespace: namespace.into(),
            name: name.into(),
            labels: labels(labels_.iter().copied()),
        }
    }
}

/// net-conf.json: the cluster's usual one, with `"NetworkPolicy": {"Enabled": true}` when
/// `network_policy`.
pub fn net_conf(backend: &str, network_policy: bool) -> String {
    let mut v: Value =
        serde_json::from_str(&netns_cluster::net_conf(backend)).expect("net_conf is JSON");
    if network_policy {
        v["NetworkPolicy"] = json!({"Enabled": true});
    }
    v.to_string()
}

pub struct Options {
    pub nodes: usize,
    /// The Backend member of net-conf.json.
    pub backend: String,
    /// Add `"NetworkPolicy": {"Enabled": true}` to net-conf.json.
    pub network_policy: bool,
    /// The whole net-conf.json instead ([`Options::backend`] and
    /// [`Options::network_policy`] are then ignored).
    pub net_conf: Option<String>,
    /// Prefix of the network namespaces' names.
    pub tag: String,
    /// Extra arguments for every agent.
    pub agent_args: Vec<String>,
    /// What every pod serves.
    pub ports: Vec<u16>,
    pub protocols: Vec<Protocol>,
    /// `netpol-probe`; by default `$NETPOL_PROBE_BIN` or next to the test binary (an
    /// integration test can pass `env!("CARGO_BIN_EXE_netpol-probe")`).
    pub probe_bin: Option<PathBuf>,
    /// How long one probe waits.
    pub probe_timeout: Duration,
    /// How long the agents have to become ready and route every node.
    pub ready_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            nodes: 3,
            backend: r#"{"Type":"vxlan"}"#.into(),
            network_policy: true,
            net_conf: None,
            tag: "np".into(),
            agent_args: Vec::new(),
            ports: vec![80, 81],
            protocols: Protocol::ALL.to_vec(),
            probe_bin: None,
            probe_timeout: slow_factor() * Duration::from_millis(1000),
            ready_timeout: slow_factor() * Duration::from_secs(60),
        }
    }
}

/// `NETPOL_SLOW` (default 1): how many times longer every probe and wait may take, for a
/// machine much slower than the one the defaults were chosen on (the test VM's software
/// emulation takes over a second for an SCTP association).
pub fn slow_factor() -> u32 {
    std::env::var("NETPOL_SLOW")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|f| *f >= 1)
        .unwrap_or(1)
}

impl Options {
    /// The net-conf.json the agents get.
    pub fn effective_net_conf(&self) -> String {
        self.net_conf
            .clone()
            .unwrap_or_else(|| net_conf(&self.backend, self.network_policy))
    }
}

/// `netpol-probe serve` in a pod: killed on drop; it also exits by itself when its stdin
/// (held here) closes, so it does not outlive a harness that died.
struct ServeProc {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Drop for ServeProc {
    fn drop(&mut self) {
        self.stdin.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A pod of the cluster: its API identity and its network.
pub struct NetpolPod {
    pub namespace: String,
    pub name: String,
    /// The index of its node in [`Cluster::nodes`].
    pub node: usize,
    pub ip: String,
    /// The labels it was created with (kept up to date by [`NetpolCluster::set_pod_labels`]).
    pub labels: Labels,
    /// The network namespace and address the CNI plugin made.
    pub net: Pod,
    server: Option<ServeProc>,
}

impl NetpolPod {
    /// `namespace/name`: the server's identity, and how [`NetpolCluster::pod`] finds it.
    pub fn id(&self) -> String {
        self.key().to_string()
    }

    /// Its identity in the model, and as rows and columns of a [`Matrix`].
    pub fn key(&self) -> PodRef {
        PodRef::new(&self.namespace, &self.name)
    }

    /// The network namespace to run commands in (`ip netns exec`).
    pub fn netns(&self) -> &str {
        &self.net.ns.name
    }
}

pub struct NetpolCluster {
    /// Declared first: dropped (servers killed, namespaces deleted) before the cluster.
    pub pods: Vec<NetpolPod>,
    pub namespaces: Vec<NamespaceSpec>,
    pub cluster: Cluster,
    probe_bin: PathBuf,
    pub probe_timeout: Duration,
    ports: Vec<u16>,
    protocols: Vec<Protocol>,
    /// The Backend member of net-conf.json, for [`NetpolCluster::set_enforcement`].
    backend: String,
}

fn networkpolicy_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("networking.k8s.io", "v1", "NetworkPolicy"),
        "networkpolicies",
    )
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// A merge patch setting `metadata.labels` to exactly `new`: keys of `old` not in `new` null.
fn labels_patch(old: Option<&Labels>, new: &Labels) -> Value {
    let mut m = serde_json::Map::new();
    for k in old.into_iter().flat_map(|o| o.keys()) {
        if !new.contains_key(k) {
            m.insert(k.clone(), Value::Null);
        }
    }
    for (k, v) in new {
        m.insert(k.clone(), Value::String(v.clone()));
    }
    json!({"metadata": {"labels": m}})
}

/// Starts `netpol-probe serve` in `netns`; the receiver says when it printed `ready` (or
/// why not). Its stdout and stderr go to `log`.
fn start_server(
    bin: &Path,
    netns: &str,
    id: &str,
    ports: &[u16],
    protocols: &[Protocol],
    log: &Path,
) -> Result<(ServeProc, mpsc::Receiver<Result<(), String>>), String> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let err_file = file.try_clone().map_err(|e| e.to_string())?;
    let ports = ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let protocols = protocols
        .iter()
        .map(|p| p.lowercase())
        .collect::<Vec<_>>()
        .join(",");
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", netns])
        .arg(bin)
        .args(["serve", "--name", id, "--ports", &ports])
        .args(["--protocols", &protocols, "--until-stdin-eof"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(err_file))
        .spawn()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    let stdin = child.stdin.take();
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    let what = format!("netpol-probe serve in {netns} ({id})");
    std::thread::spawn(move || {
        let mut file = file;
        let mut ready = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = writeln!(file, "{line}");
            if !ready && line.trim() == "ready" {
                ready = true;
                let _ = tx.send(Ok(()));
            }
        }
        if !ready {
            let _ = tx.send(Err(format!("{what} exited before it was ready")));
        }
    });
    Ok((ServeProc { child, stdin }, rx))
}

impl NetpolCluster {
    /// Brings up the cluster ([`Cluster::up`] with `opts`'s net-conf.json), starts the agents
    /// and waits until they are ready and every node routes every other, then creates the
    /// `namespaces` and the `pods` (round-robin over the nodes, in order), each serving.
    pub fn up(
        opts: Options,
        namespaces: &[NamespaceSpec],
        pods: &[PodSpec],
    ) -> Result<NetpolCluster, String> {
        let probe_bin = match &opts.probe_bin {
            Some(p) => p.clone(),
            None => locate_binary("netpol-probe", "NETPOL_PROBE_BIN")?,
        };
        for p in pods {
            if !namespaces.iter().any(|n| n.name == p.namespace) {
                return Err(format!(
                    "pod {}/{}: namespace {} not among the namespaces",
                    p.namespace, p.name, p.namespace
                ));
            }
        }
        let mut cluster = Cluster::up(netns_cluster::Options {
            nodes: opts.nodes,
            backend: opts.backend.clone(),
            tag: opts.tag.clone(),
            agent_args: opts.agent_args.clone(),
            seed_configmap: false,
            ..Default::default()
        })?;
        let conf = opts.effective_net_conf();
        cluster.with_client(move |client| async move {
            let nss: Api<Namespace> = Api::all(client.clone());
            let ns = serde_json::from_value(json!({"metadata": {"name": CONFIGMAP_NS}}))
                .map_err(|e| e.to_string())?;
            match nss.create(&PostParams::default(), &ns).await {
                Err(e) if !is_conflict(&e) => return Err(format!("namespace {CONFIGMAP_NS}: {e}")),
                _ => {}
            }
            let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
                Api::namespaced(client, CONFIGMAP_NS);
            let cm = serde_json::from_value(json!({
                "metadata": {"name": CONFIGMAP_NAME, "namespace": CONFIGMAP_NS},
                "data": {"net-conf.json": conf}
            }))
            .map_err(|e| e.to_string())?;
            cms.create(&PostParams::default(), &cm)
                .await
                .map(drop)
                .map_err(|e| format!("configmap: {e}"))
        })?;
        cluster.start_agents()?;
        cluster.wait_all_ready(opts.ready_timeout)?;
        let deadline = Instant::now() + opts.ready_timeout;
        while !cluster.fully_routed() {
            if Instant::now() > deadline {
                let routes: Vec<String> = (0..cluster.nodes.len())
                    .map(|i| format!("node-{}: {}", i + 1, cluster.routes(i)))
                    .collect();
                return Err(format!(
                    "nodes never routed each other:\n{}",
                    routes.join("\n")
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut nc = NetpolCluster {
            pods: Vec::new(),
            namespaces: namespaces.to_vec(),
            cluster,
            probe_bin,
            probe_timeout: opts.probe_timeout,
            ports: opts.ports.clone(),
            protocols: opts.protocols.clone(),
            backend: opts.backend.clone(),
        };
        nc.create_namespaces()?;
        nc.add_pods(pods)?;
        Ok(nc)
    }

    /// Upstream's layout: namespaces `namespaces` (labelled `ns=<name>`) with pods `pods`
    /// (labelled `pod=<name>`) in each, e.g. x,y,z × a,b,c; on a 3-node vxlan cluster with
    /// NetworkPolicy enabled. Panics (fails the test) without root or when it cannot come up.
    pub fn for_test(tag: &str, namespaces: &[&str], pods: &[&str]) -> NetpolCluster {
        assert!(trellis_testkit::is_root(), "end-to-end tests need root");
        let (nss, ps) = upstream_layout(namespaces, pods);
        NetpolCluster::up(
            Options {
                tag: tag.into(),
                ..Default::default()
            },
            &nss,
            &ps,
        )
        .expect("netpol cluster up")
    }

    fn create_namespaces(&self) -> Result<(), String> {
        let nss = self.namespaces.clone();
        self.cluster.with_client(move |client| async move {
            let api: Api<Namespace> = Api::all(client);
            for n in nss {
                let mut l = n.labels.clone();
                l.insert("kubernetes.io/metadata.name".into(), n.name.clone());
                let obj =
                    serde_json::from_value(json!({"metadata": {"name": n.name, "labels": l}}))
                        .map_err(|e| e.to_string())?;
                match api.create(&PostParams::default(), &obj).await {
                    Ok(_) => {}
                    // A system namespace ("default"): give it the labels.
                    Err(e) if is_conflict(&e) => {
                        let old = api.get(&n.name).await.map_err(|e| e.to_string())?;
                        let patch = labels_patch(old.metadata.labels.as_ref(), &l);
                        api.patch(&n.name, &PatchParams::default(), &Patch::Merge(patch))
                            .await
                            .map_err(|e| format!("namespace {}: {e}", n.name))?;
                    }
                    Err(e) => return Err(format!("namespace {}: {e}", n.name)),
                }
            }
            Ok(())
        })
    }

    /// Adds `pods` (round-robin over the nodes, continuing after the existing ones): network,
    /// server (waited for), then the Pod object and its status.
    pub fn add_pods(&mut self, pods: &[PodSpec]) -> Result<(), String> {
        let mut waits = Vec::new();
        let first = self.pods.len();
        for (k, spec) in pods.iter().enumerate() {
            let node = (first + k) % self.cluster.nodes.len();
            let net = self.cluster.add_pod(node)?;
            let id = format!("{}/{}", spec.namespace, spec.name);
            let log = self
                .cluster
                .dir
                .join(format!("serve-{}-{}.log", spec.namespace, spec.name));
            let (server, ready) = start_server(
                &self.probe_bin,
                &net.ns.name,
                &id,
                &self.ports,
                &self.protocols,
                &log,
            )?;
            waits.push((id, ready, log));
            self.pods.push(NetpolPod {
                namespace: spec.namespace.clone(),
                name: spec.name.clone(),
                node,
                ip: net.ip.clone(),
                labels: spec.labels.clone(),
                net,
                server: Some(server),
            });
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for (id, ready, log) in waits {
            let left = deadline.saturating_duration_since(Instant::now());
            match ready.recv_timeout(left) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(format!("{e}: {}", netns_cluster::tail(&log))),
                Err(_) => {
                    return Err(format!(
                        "{id}: server not ready after 20s: {}",
                        netns_cluster::tail(&log)
                    ))
                }
            }
        }
        let objects: Vec<(Value, Value)> = self.pods[first..]
            .iter()
            .map(|p| (self.pod_object(p), self.pod_status(p)))
            .collect();
        self.cluster.with_client(move |client| async move {
            for (obj, status) in objects {
                let ns = obj["metadata"]["namespace"].as_str().unwrap_or_default();
                let name = obj["metadata"]["name"].as_str().unwrap_or_default();
                let api: Api<KubePod> = Api::namespaced(client.clone(), ns);
                let pod: KubePod =
                    serde_json::from_value(obj.clone()).map_err(|e| e.to_string())?;
                api.create(&PostParams::default(), &pod)
                    .await
                    .map_err(|e| format!("pod {ns}/{name}: {e}"))?;
                api.patch_status(name, &PatchParams::default(), &Patch::Merge(status))
                    .await
                    .map_err(|e| format!("pod {ns}/{name} status: {e}"))?;
            }
            Ok(())
        })
    }

    /// The Pod object as a user (and the scheduler) would have it.
    fn pod_object(&self, p: &NetpolPod) -> Value {
        let mut ports = Vec::new();
        for &port in &self.ports {
            for proto in &self.protocols {
                ports.push(json!({
                    "name": port_name(port, *proto),
                    "containerPort": port,
                    "protocol": proto.as_str(),
                }));
            }
        }
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": p.name, "namespace": p.namespace, "labels": p.labels},
            "spec": {
                "nodeName": self.cluster.nodes[p.node].name,
                "containers": [{
                    "name": "netpol-probe",
                    "image": "trellis/netpol-probe:test",
                    "command": ["netpol-probe", "serve", "--name", p.id()],
                    "ports": ports,
                }],
            },
        })
    }

    /// What kubelet reports once the pod runs.
    fn pod_status(&self, p: &NetpolPod) -> Value {
        let host = self.cluster.nodes[p.node].ip.to_string();
        let conds: Vec<Value> = ["PodScheduled", "Initialized", "ContainersReady", "Ready"]
            .iter()
            .map(|t| json!({"type": t, "status": "True"}))
            .collect();
        json!({"status": {
            "phase": "Running",
            "podIP": p.ip, "podIPs": [{"ip": p.ip}],
            "hostIP": host, "hostIPs": [{"ip": host}],
            "conditions": conds,
        }})
    }

    /// Every pod's `namespace/name`, in creation order.
    pub fn pod_ids(&self) -> Vec<String> {
        self.pods.iter().map(NetpolPod::id).collect()
    }

    /// Every pod's [`PodRef`], in creation order.
    pub fn pod_keys(&self) -> Vec<PodRef> {
        self.pods.iter().map(NetpolPod::key).collect()
    }

    /// The pod `namespace/name`.
    pub fn pod(&self, id: &str) -> Option<&NetpolPod> {
        self.pods.iter().find(|p| p.id() == id)
    }

    fn pod_index(&self, id: &str) -> Result<usize, String> {
        self.pods
            .iter()
            .position(|p| p.id() == id)
            .ok_or_else(|| format!("no pod {id}"))
    }

    /// The `netpol-probe` binary the pods run.
    pub fn probe_bin(&self) -> &Path {
        &self.probe_bin
    }

    /// A matrix of all pods × all pods, every cell `value`.
    pub fn matrix(&self, value: bool) -> Matrix {
        Matrix::square(&self.pod_keys(), value)
    }

    /// Turns enforcement on or off live, through the ConfigMap (the agents follow it).
    pub fn set_enforcement(&self, on: bool) -> Result<(), String> {
        self.cluster.set_net_conf(&net_conf(&self.backend, on))
    }

    /// Creates the NetworkPolicy `policy` (a full object: `metadata.namespace` required), or
    /// replaces the one of that name.
    pub fn apply_policy(&self, policy: &Value) -> Result<(), String> {
        let ns = policy["metadata"]["namespace"]
            .as_str()
            .ok_or("the policy has no metadata.namespace")?
            .to_string();
        let name = policy["metadata"]["name"]
            .as_str()
            .ok_or("the policy has no metadata.name")?
            .to_string();
        let mut policy = policy.clone();
        policy["apiVersion"] = json!("networking.k8s.io/v1");
        policy["kind"] = json!("NetworkPolicy");
        self.cluster.with_client(move |client| async move {
            let ar = networkpolicy_resource();
            let api: Api<DynamicObject> = Api::namespaced_with(client, &ns, &ar);
            let mut obj: DynamicObject =
                serde_json::from_value(policy).map_err(|e| format!("policy: {e}"))?;
            match api.create(&PostParams::default(), &obj).await {
                Ok(_) => return Ok(()),
                Err(e) if is_conflict(&e) => {}
                Err(e) => return Err(format!("networkpolicy {ns}/{name}: {e}")),
            }
            for _ in 0..5 {
                let cur = api
                    .get(&name)
                    .await
                    .map_err(|e| format!("networkpolicy {ns}/{name}: {e}"))?;
                obj.metadata.resource_version = cur.metadata.resource_version;
                match api.replace(&name, &PostParams::default(), &obj).await {
                    Ok(_) => return Ok(()),
                    Err(e) if is_conflict(&e) => continue,
                    Err(e) => return Err(format!("networkpolicy {ns}/{name}: {e}")),
                }
            }
            Err(format!(
                "networkpolicy {ns}/{name}: conflicts on every replace"
            ))
        })
    }

    /// Deletes a NetworkPolicy; one that does not exist is no error.
    pub fn delete_policy(&self, namespace: &str, name: &str) -> Result<(), String> {
        let (ns, name) = (namespace.to_string(), name.to_string());
        self.cluster.with_client(move |client| async move {
            let api: Api<DynamicObject> =
                Api::namespaced_with(client, &ns, &networkpolicy_resource());
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => Ok(()),
                Err(e) if is_not_found(&e) => Ok(()),
                Err(e) => Err(format!("delete networkpolicy {ns}/{name}: {e}")),
            }
        })
    }

    /// Deletes every NetworkPolicy in the test's namespaces.
    pub fn delete_all_policies(&self) -> Result<(), String> {
        let nss: Vec<String> = self.namespaces.iter().map(|n| n.name.clone()).collect();
        self.cluster.with_client(move |client| async move {
            let ar = networkpolicy_resource();
            for ns in nss {
                let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
                let list = api
                    .list(&ListParams::default())
                    .await
                    .map_err(|e| format!("list networkpolicies in {ns}: {e}"))?;
                for p in list.items {
                    let Some(name) = p.metadata.name else {
                        continue;
                    };
                    match api.delete(&name, &DeleteParams::default()).await {
                        Ok(_) => {}
                        Err(e) if is_not_found(&e) => {}
                        Err(e) => return Err(format!("delete networkpolicy {ns}/{name}: {e}")),
                    }
                }
            }
            Ok(())
        })
    }

    /// Sets namespace `name`'s labels to exactly `labels` (plus the API's
    /// `kubernetes.io/metadata.name`).
    pub fn set_namespace_labels(&mut self, name: &str, labels: &Labels) -> Result<(), String> {
        let (n, mut l) = (name.to_string(), labels.clone());
        l.insert("kubernetes.io/metadata.name".into(), n.clone());
        self.cluster.with_client(move |client| async move {
            let api: Api<Namespace> = Api::all(client);
            let old = api
                .get(&n)
                .await
                .map_err(|e| format!("namespace {n}: {e}"))?;
            let patch = labels_patch(old.metadata.labels.as_ref(), &l);
            api.patch(&n, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .map(drop)
                .map_err(|e| format!("namespace {n}: {e}"))
        })?;
        match self.namespaces.iter_mut().find(|n| n.name == name) {
            Some(n) => n.labels = labels.clone(),
            None => self.namespaces.push(NamespaceSpec {
                name: name.into(),
                labels: labels.clone(),
            }),
        }
        Ok(())
    }

    /// Sets pod `id`'s (`namespace/name`) labels to exactly `labels`.
    pub fn set_pod_labels(&mut self, id: &str, labels: &Labels) -> Result<(), String> {
        let i = self.pod_index(id)?;
        let (ns, name) = (self.pods[i].namespace.clone(), self.pods[i].name.clone());
        let l = labels.clone();
        self.cluster.with_client(move |client| async move {
            let api: Api<KubePod> = Api::namespaced(client, &ns);
            let old = api
                .get(&name)
                .await
                .map_err(|e| format!("pod {ns}/{name}: {e}"))?;
            let patch = labels_patch(old.metadata.labels.as_ref(), &l);
            api.patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .map(drop)
                .map_err(|e| format!("pod {ns}/{name}: {e}"))
        })?;
        self.pods[i].labels = labels.clone();
        Ok(())
    }

    /// Does one step of a case ([`super::cases`]) to the cluster; a [`Step::Probe`] changes
    /// nothing (the caller probes).
    pub fn apply_step(&mut self, step: &Step) -> Result<(), String> {
        match step {
            Step::CreatePolicy(p) | Step::UpdatePolicy(p) => self.apply_policy(p),
            Step::DeletePolicy { namespace, name } => self.delete_policy(namespace, name),
            Step::DeleteAllPolicies => self.delete_all_policies(),
            Step::SetNamespaceLabels { namespace, labels } => {
                self.set_namespace_labels(namespace, labels)
            }
            Step::SetPodLabels { pod, labels } => self.set_pod_labels(&pod.to_string(), labels),
            Step::Probe(_) => Ok(()),
        }
    }

    /// The sample `name` of every node's agent's `/metrics`, by node (`None`: unreadable).
    pub fn agent_metric(&self, name: &str) -> Vec<Option<f64>> {
        (0..self.cluster.nodes.len())
            .map(|i| self.cluster.metric(i, name))
            .collect()
    }

    /// Waits until every agent has put in force rules built from exactly `count`
    /// NetworkPolicies (`trellis_netpol_policies`, recorded after the nft transaction
    /// succeeded), so that a probe does not judge the rules of a moment before. An error
    /// after `timeout`, with every agent's counters.
    pub fn wait_policies_applied(&self, count: usize, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.agent_metric("trellis_netpol_policies");
            if seen.iter().all(|v| *v == Some(count as f64)) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let mut s = format!(
                    "the agents did not put {count} NetworkPolicies in force within {timeout:?}:"
                );
                for (i, node) in self.cluster.nodes.iter().enumerate() {
                    let m = |name: &str| {
                        self.cluster
                            .metric(i, name)
                            .map_or("?".to_string(), |v| v.to_string())
                    };
                    s.push_str(&format!(
                        "\n  {}: policies {}, invalid {}, applies {}, apply errors {}",
                        node.name,
                        m("trellis_netpol_policies"),
                        m("trellis_netpol_invalid_policies"),
                        m("trellis_netpol_applies_total"),
                        m("trellis_netpol_apply_errors_total"),
                    ));
                }
                return Err(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs the probes from pod `source` (`namespace/name`) to `targets`.
    pub fn probe_from(&self, source: &str, targets: &[Target]) -> Result<Vec<ProbeResult>, String> {
        let p = &self.pods[self.pod_index(source)?];
        run_in_netns(&self.probe_bin, p.netns(), targets, self.probe_timeout)
    }

    /// Runs `probes`, each source pod's as one `netpol-probe` invocation (its targets all at
    /// once), every source at once; the outcomes in `probes`' order. A probe repeated from
    /// the same source is sent once.
    pub fn probe_pods(&self, probes: &[PodProbe]) -> Result<Vec<ProbeOutcome>, String> {
        // Per source (in first-seen order): its distinct targets.
        let mut sources: Vec<(usize, Vec<Target>)> = Vec::new();
        let mut at = Vec::with_capacity(probes.len());
        for pr in probes {
            let from = self.pod_index(&pr.from.to_string())?;
            let to = &self.pods[self.pod_index(&pr.to.to_string())?];
            let ip = to
                .ip
                .parse()
                .map_err(|e| format!("{}: ip {}: {e}", to.id(), to.ip))?;
            let target = Target::new(pr.protocol, ip, pr.port);
            let s = match sources.iter().position(|(i, _)| *i == from) {
                Some(s) => s,
                None => {
                    sources.push((from, Vec::new()));
                    sources.len() - 1
                }
            };
            let targets = &mut sources[s].1;
            let t = match targets.iter().position(|t| *t == target) {
                Some(t) => t,
                None => {
                    targets.push(target);
                    targets.len() - 1
                }
            };
            at.push((s, t));
        }
        let results: Vec<Result<Vec<ProbeResult>, String>> = std::thread::scope(|scope| {
            let handles: Vec<_> = sources
                .iter()
                .map(|(i, targets)| {
                    let netns = self.pods[*i].netns();
                    scope.spawn(move || {
                        run_in_netns(&self.probe_bin, netns, targets, self.probe_timeout)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err("probe thread panicked".into()))
                })
                .collect()
        });
        let results = results
            .into_iter()
            .zip(&sources)
            .map(|(r, (i, _))| r.map_err(|e| format!("probes from {}: {e}", self.pods[*i].id())))
            .collect::<Result<Vec<_>, String>>()?;
        Ok(probes
            .iter()
            .zip(at)
            .map(|(pr, (s, t))| ProbeOutcome::of(&results[s][t], &pr.to))
            .collect())
    }

    /// Every pod probes every pod (itself included) on `protocol`/`port`, all sources at
    /// once. A cell is true when the destination answered with its own identity; every cell
    /// carries the probe's summary as its note.
    pub fn probe_matrix(&self, protocol: Protocol, port: u16) -> Result<Matrix, String> {
        let keys = self.pod_keys();
        let probes: Vec<PodProbe> = keys
            .iter()
            .flat_map(|from| {
                keys.iter().map(move |to| PodProbe {
                    from: from.clone(),
                    to: to.clone(),
                    protocol,
                    port,
                })
            })
            .collect();
        let outcomes = self.probe_pods(&probes)?;
        let mut m = self.matrix(false);
        let n = keys.len();
        for (i, o) in outcomes.into_iter().enumerate() {
            m.set_at(i / n, i % n, o.reached);
            m.set_note(i / n, i % n, o.note);
        }
        Ok(m)
    }

    /// Probes until the observed matrix agrees with `expected` (a policy takes a moment to be
    /// programmed) or `timeout` passed: the last observation, or the mismatch report. With
    /// `ignore_loopback` (upstream's choice), a pod to itself is not compared.
    pub fn wait_for_matrix(
        &self,
        protocol: Protocol,
        port: u16,
        expected: &Matrix,
        timeout: Duration,
        ignore_loopback: bool,
    ) -> Result<Matrix, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let observed = self.probe_matrix(protocol, port)?;
            if expected.mismatches(&observed, ignore_loopback).is_empty() {
                return Ok(observed);
            }
            if Instant::now() >= deadline {
                return Err(expected.mismatch_report(
                    &observed,
                    &format!("{protocol}/{port} after {timeout:?}"),
                    ignore_loopback,
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// One probe between two pods of a [`NetpolCluster`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodProbe {
    pub from: PodRef,
    pub to: PodRef,
    pub protocol: Protocol,
    pub port: u16,
}

/// How a [`PodProbe`] went.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeOutcome {
    /// The destination answered with its own identity.
    pub reached: bool,
    /// The probe's [`ProbeResult::summary`] (and who answered, if not the destination).
    pub note: String,
}

impl ProbeOutcome {
    fn of(res: &ProbeResult, to: &PodRef) -> ProbeOutcome {
        let want = to.to_string();
        let right_peer = res.peer.as_deref() == Some(want.as_str());
        let mut note = res.summary();
        if res.ok && !right_peer {
            note.push_str(&format!(" (answered by the wrong pod, not {want})"));
        }
        ProbeOutcome {
            reached: res.ok && right_peer,
            note,
        }
    }
}

/// Namespaces labelled `ns=<name>` and, in each, pods labelled `pod=<name>`, in the order
/// x/a, x/b, …, y/a, … (upstream's model).
pub fn upstream_layout(namespaces: &[&str], pods: &[&str]) -> (Vec<NamespaceSpec>, Vec<PodSpec>) {
    let nss = namespaces
        .iter()
        .map(|n| NamespaceSpec::new(n, &[("ns", n)]))
        .collect();
    let ps = namespaces
        .iter()
        .flat_map(|n| pods.iter().map(move |p| PodSpec::new(n, p, &[("pod", p)])))
        .collect();
    (nss, ps)
}

impl Drop for NetpolCluster {
    fn drop(&mut self) {
        // Servers first, so that no process keeps a pod namespace alive; the pods' network
        // namespaces and then the cluster (agents, emulator, nodes) go with the fields.
        for p in &mut self.pods {
            p.server.take();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_conf_enables_network_policy() {
        let v: Value = serde_json::from_str(&net_conf(r#"{"Type":"vxlan"}"#, true)).unwrap();
        assert_eq!(v["NetworkPolicy"]["Enabled"], true);
        assert_eq!(v["Backend"]["Type"], "vxlan");
        let v: Value = serde_json::from_str(&net_conf(r#"{"Type":"host-gw"}"#, false)).unwrap();
        assert!(v.get("NetworkPolicy").is_none());
    }

    #[test]
    fn labels_patch_removes_what_is_gone() {
        let old = labels([("a", "1"), ("b", "2")]);
        let new = labels([("b", "3"), ("c", "4")]);
        assert_eq!(
            labels_patch(Some(&old), &new),
            json!({"metadata": {"labels": {"a": null, "b": "3", "c": "4"}}})
        );
    }

    #[test]
    fn upstream_layout_orders_pods_by_namespace() {
        let (nss, ps) = upstream_layout(&["x", "y"], &["a", "b"]);
        assert_eq!(nss[1].labels["ns"], "y");
        let ids: Vec<String> = ps
            .iter()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect();
        assert_eq!(ids, ["x/a", "x/b", "y/a", "y/b"]);
        assert_eq!(ps[3].labels["pod"], "b");
    }
}

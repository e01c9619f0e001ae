//! Security review, checked rather than asserted in prose:
//! - the agent's RBAC (deploy/manifests/rbac.yaml) is sufficient: agents run a cluster with the
//!   emulator enforcing exactly those grants for their token (startup, watches, a live backend
//!   switch, Events created and folded into a series, the annotations and the condition written
//!   through nodes/status) and are never refused;
//! - and necessary: the set of (verb, group, resource, namespace, resourceName) the agents used
//!   equals the set granted;
//! - and narrow: with those grants a node's token cannot taint or cordon a Node (no write to
//!   `nodes`; a `nodes/status` patch cannot change spec), reads no ConfigMap but trellis-config,
//!   and writes only events.k8s.io Events: in `default` about Nodes, and (for NetworkPolicy
//!   enforcement, whose Events live in each policy's namespace) in any namespace;
//! - the DaemonSet's containers are unprivileged (no privileged, no hostPID/hostIPC, only
//!   NET_ADMIN and NET_RAW added, every other capability dropped).
//!
//! The cluster test needs root and the workspace binaries (hack/test.sh builds them); the
//! others run the emulator in-process.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Event as CoreEvent, Node};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchParams};
use kube::Client;
use serde_json::{json, Value};
use trellis_e2e::apiserver::rbac::Policy;
use trellis_e2e::apiserver::{Emulator, EmulatorConfig, EmulatorHandle};
use trellis_e2e::netns_cluster::{net_conf, Cluster};

const SA_USER: &str = "system:serviceaccount:trellis-system:trellis";
const SA_NS: &str = "trellis-system";
const READY: Duration = Duration::from_secs(60);

fn manifest(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/manifests")
        .join(name)
}

fn docs(name: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(manifest(name)).expect("manifest");
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).expect("YAML");
    docs.into_iter().filter(|v| !v.is_null()).collect()
}

fn eventually(timeout: Duration, f: impl FnMut() -> bool) -> bool {
    trellis_e2e::poll::poll_until(timeout, Duration::from_millis(100), f)
}

/// A random token, so the test proves nothing by guessing the emulator's.
fn token() -> String {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .expect("urandom");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn the_daemonset_is_unprivileged() {
    let ds = docs("daemonset.yaml")
        .into_iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    for host in ["hostPID", "hostIPC"] {
        assert!(
            pod[host].is_null() || pod[host] == false,
            "{host} must be off"
        );
    }
    // The agent programs the host's own network: hostNetwork is what it is for.
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["automountServiceAccountToken"], false);
    let mut containers: Vec<&Value> = Vec::new();
    for list in ["initContainers", "containers"] {
        containers.extend(pod[list].as_array().into_iter().flatten());
    }
    assert_eq!(containers.len(), 2, "install-cni and the agent");
    for c in containers {
        let name = c["name"].as_str().unwrap_or("?");
        let sc = &c["securityContext"];
        assert_eq!(sc["privileged"], false, "{name}: privileged");
        assert_eq!(
            sc["allowPrivilegeEscalation"], false,
            "{name}: allowPrivilegeEscalation"
        );
        assert_eq!(
            sc["readOnlyRootFilesystem"], true,
            "{name}: readOnlyRootFilesystem"
        );
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{name}: drop");
        let added: BTreeSet<&str> = sc["capabilities"]["add"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let allowed: BTreeSet<&str> = ["NET_ADMIN", "NET_RAW"].into();
        assert!(
            added.is_subset(&allowed),
            "{name} adds {added:?}; only NET_ADMIN and NET_RAW are allowed"
        );
        if name == "install-cni" {
            assert!(added.is_empty(), "install-cni needs no capability");
        }
        // No host path mounted at a place that would hand over the node (runtime sockets,
        // the whole root, /proc of the host).
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            let path = m["mountPath"].as_str().unwrap_or_default();
            assert!(
                !matches!(path, "/" | "/host" | "/proc" | "/var/run/docker.sock")
                    && !path.contains("containerd"),
                "{name} mounts {path}"
            );
        }
    }
}

/// (verb, group, resource[/sub], namespace, resourceName) the emulator saw from the agents.
/// The name is the object's, or the one a list/watch selected with `metadata.name=`.
type Grant = (String, String, String, String, String);

fn audited(c: &Cluster) -> (BTreeSet<Grant>, Vec<Value>) {
    let out = c
        .kubectl(&["get", "--raw", "/_emulator/audit"])
        .expect("audit");
    let v: Value = serde_json::from_str(&out).expect("audit JSON");
    let mut used = BTreeSet::new();
    let mut denied = Vec::new();
    for r in v["records"].as_array().expect("records") {
        if r["user"] != SA_USER {
            continue;
        }
        if r["allowed"] != true {
            denied.push(r.clone());
        }
        let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
        let res = if s("subresource").is_empty() {
            s("resource")
        } else {
            format!("{}/{}", s("resource"), s("subresource"))
        };
        used.insert((s("verb"), s("apiGroup"), res, s("namespace"), s("name")));
    }
    (used, denied)
}

/// The grants of rbac.yaml to the agent's ServiceAccount, expanded to single
/// (verb, group, resource, namespace, resourceName) tuples; namespace is empty for ClusterRole
/// grants, resourceName for rules without `resourceNames` (any object).
fn granted() -> BTreeSet<Grant> {
    let all = docs("rbac.yaml");
    let mut out = BTreeSet::new();
    for b in all
        .iter()
        .filter(|d| d["kind"] == "ClusterRoleBinding" || d["kind"] == "RoleBinding")
    {
        let to_sa = b["subjects"].as_array().into_iter().flatten().any(|s| {
            s["kind"] == "ServiceAccount" && s["name"] == "trellis" && s["namespace"] == SA_NS
        });
        if !to_sa {
            continue;
        }
        let ns = b["metadata"]["namespace"]
            .as_str()
            .filter(|_| b["kind"] == "RoleBinding")
            .unwrap_or_default();
        let role = all
            .iter()
            .find(|r| {
                r["kind"] == b["roleRef"]["kind"]
                    && r["metadata"]["name"] == b["roleRef"]["name"]
                    && (r["kind"] == "ClusterRole" || r["metadata"]["namespace"] == ns)
            })
            .expect("bound role exists");
        for rule in role["rules"].as_array().into_iter().flatten() {
            let strs = |k: &str| -> Vec<String> {
                rule[k]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            };
            let mut names = strs("resourceNames");
            if names.is_empty() {
                names.push(String::new());
            }
            for g in strs("apiGroups") {
                for r in strs("resources") {
                    for v in strs("verbs") {
                        assert!(
                            g != "*" && r != "*" && v != "*",
                            "wildcards are never least privilege: {rule}"
                        );
                        for n in &names {
                            out.insert((
                                v.clone(),
                                g.clone(),
                                r.clone(),
                                ns.to_string(),
                                n.clone(),
                            ));
                        }
                    }
                }
            }
        }
    }
    out
}

/// A used call, as the grant that covers it: the narrowest of (its namespace, cluster-wide) ×
/// (its name, any name) that rbac.yaml grants; the call unchanged when none does.
fn normalise(used: &BTreeSet<Grant>, granted: &BTreeSet<Grant>) -> BTreeSet<Grant> {
    used.iter()
        .map(|(v, g, r, ns, name)| {
            let candidates = [
                (ns.as_str(), name.as_str()),
                (ns.as_str(), ""),
                ("", name.as_str()),
                ("", ""),
            ];
            candidates
                .iter()
                .map(|(ns, n)| {
                    (
                        v.clone(),
                        g.clone(),
                        r.clone(),
                        ns.to_string(),
                        n.to_string(),
                    )
                })
                .find(|c| granted.contains(c))
                .unwrap_or_else(|| (v.clone(), g.clone(), r.clone(), ns.clone(), name.clone()))
        })
        .collect()
}

#[test]
fn rbac_yaml_grants_exactly_what_the_agents_use() {
    let mut c = Cluster::for_test(2, r#"{"Type":"vxlan"}"#, "rbac");
    // The ConfigMap where the DaemonSet reads it: the agent's own namespace.
    c.kubectl_stdin(
        &["create", "-f", "-"],
        &json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "trellis-config", "namespace": SA_NS},
            "data": {"net-conf.json": net_conf(r#"{"Type":"vxlan"}"#)}
        })
        .to_string(),
    )
    .expect("configmap");
    let tok = token();
    c.restart_emulator_with(&[
        "--rbac".into(),
        manifest("rbac.yaml").display().to_string(),
        "--user".into(),
        format!("{tok}={SA_USER}"),
        "--audit".into(),
        // A NetworkPolicy field newer than the agent (below) reaches it, as from a newer cluster.
        "--newer-api".into(),
    ])
    .expect("emulator with RBAC");
    let kc = c
        .kubeconfig_with_token(&tok, "agent-kubeconfig")
        .expect("agent kubeconfig");

    // Enforcement is on: the agent's token cannot do what it was not granted.
    let forbidden = c.underlay.exec(&[
        "kubectl",
        "--kubeconfig",
        &kc.display().to_string(),
        "get",
        "configmaps",
        "-n",
        "kube-system",
    ]);
    let err = forbidden.expect_err("listing kube-system ConfigMaps must be refused");
    assert!(
        err.contains("Forbidden") || err.contains("forbidden"),
        "not a 403: {err}"
    );
    c.kubectl(&["delete", "--raw", "/_emulator/audit"])
        .expect("reset audit");

    for i in 0..c.nodes.len() {
        let mut args: Vec<String> = c
            .agent_args(i)
            .into_iter()
            .map(|a| {
                if a.starts_with("--kubeconfig=") {
                    format!("--kubeconfig={}", kc.display())
                } else if a.starts_with("--configmap-namespace=") {
                    format!("--configmap-namespace={SA_NS}")
                } else {
                    a
                }
            })
            .collect();
        // The agents stream their Node list (a watch); the last one pages it, as every agent
        // does against an apiserver that does not stream lists: `list` is used too.
        if i == c.nodes.len() - 1 {
            args.push("--paged-node-list".into());
        }
        c.start_agent_with_args(i, &args).expect("agent");
    }
    c.wait_all_ready(READY).expect("agents ready");
    assert!(
        eventually(READY, || c.fully_routed()),
        "not routed: {}",
        c.agent_log(0)
    );
    // NetworkUnavailable=False is a nodes/status patch.
    assert!(
        eventually(READY, || {
            c.node_json("node-2").is_ok_and(|n| {
                n["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "NetworkUnavailable" && c["status"] == "False")
            })
        }),
        "NetworkUnavailable never cleared"
    );

    // A live switch (ConfigMap watch, a BackendSwitched Event), then two rejected configs:
    // InvalidNetConfig Events, the second folded into a series (an Event patch).
    let patch_cm = |conf: &str| {
        let p = json!({"data": {"net-conf.json": conf}}).to_string();
        c.kubectl(&[
            "-n",
            SA_NS,
            "patch",
            "configmap",
            "trellis-config",
            "--type",
            "merge",
            "-p",
            &p,
        ])
        .expect("patch configmap");
    };
    patch_cm(&net_conf(r#"{"Type":"host-gw"}"#));
    assert!(
        eventually(READY, || {
            c.nodes[0]
                .ns
                .exec(&["ip", "route", "show", "proto", "116"])
                .is_ok_and(|r| r.contains("10.244.2.0/24 via 192.168.50.12 dev eth0"))
        }),
        "switch to host-gw never happened: {}",
        c.agent_log(0)
    );
    patch_cm(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"nope"}}"#);
    std::thread::sleep(Duration::from_secs(1));
    patch_cm(r#"{"Network":"not-a-cidr","Backend":{"Type":"vxlan"}}"#);
    let events = || {
        c.kubectl(&[
            "get",
            "--raw",
            "/apis/events.k8s.io/v1/namespaces/default/events",
        ])
        .unwrap_or_default()
    };
    assert!(
        eventually(Duration::from_secs(20), || {
            let e = events();
            e.contains("BackendSwitched")
                && e.contains("InvalidNetConfig")
                && e.contains("\"series\"")
        }),
        "Events missing: {}",
        events()
    );

    network_policy_in_use(&c, &patch_cm);

    let (used, denied) = audited(&c);
    for i in 0..c.nodes.len() {
        let log = c.agent_log(i);
        assert!(
            !log.contains("forbidden") && !log.contains("Forbidden"),
            "node-{} was refused something:\n{log}",
            i + 1
        );
    }
    assert!(denied.is_empty(), "the agents were refused: {denied:#?}");
    let granted = granted();
    let used = normalise(&used, &granted);
    let unused: Vec<&Grant> = granted.difference(&used).collect();
    let ungranted: Vec<&Grant> = used.difference(&granted).collect();
    println!("granted = used:");
    for g in &granted {
        println!("  {g:?}");
    }
    assert!(
        unused.is_empty() && ungranted.is_empty(),
        "rbac.yaml is not least privilege.\n granted but never used: {unused:#?}\n used but not granted: {ungranted:#?}"
    );

    // And with the token that ran them, kubectl cannot cordon or taint a Node (after the audit
    // above, whose refusals must be the agents' only). The cordon is `kubectl cordon`'s patch,
    // sent with `kubectl patch`: `kubectl cordon` prints a refusal but exits 0.
    let kc = kc.display().to_string();
    for args in [
        &[
            "patch",
            "node",
            "node-1",
            "-p",
            r#"{"spec":{"unschedulable":true}}"#,
        ][..],
        &["taint", "nodes", "node-2", "evil=yes:NoExecute"][..],
    ] {
        let mut full = vec!["kubectl", "--kubeconfig", &kc, "--request-timeout=10s"];
        full.extend_from_slice(args);
        let err = c
            .underlay
            .exec(&full)
            .expect_err("a node token must not write a Node's spec");
        assert!(err.contains("forbidden"), "{args:?}: not a 403: {err}");
    }
    for n in ["node-1", "node-2"] {
        let spec = c.node_json(n).expect("node")["spec"].clone();
        assert!(
            spec["unschedulable"].is_null() && spec["taints"].is_null(),
            "{n} was changed: {spec}"
        );
    }
}

/// NetworkPolicy enforcement turned on: the Pod, Namespace and NetworkPolicy watches, and a
/// Warning Event on a policy the agent cannot enforce as written (a field of a newer API), repeated for its next
/// version (folded into a series: an Event patch in the policy's namespace).
fn network_policy_in_use(c: &Cluster, patch_cm: &dyn Fn(&str)) {
    let conf = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"},"NetworkPolicy":{"Enabled":true}}"#;
    patch_cm(conf);
    let apply = |v: Value| {
        c.kubectl_stdin(&["apply", "-f", "-"], &v.to_string())
            .expect("apply")
    };
    apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "np"}}));
    apply(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": "np", "labels": {"app": "web"}},
        "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "x"}]}}));
    c.kubectl(&[
        "-n",
        "np",
        "patch",
        "pod",
        "web",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Running","podIP":"10.244.1.200","podIPs":[{"ip":"10.244.1.200"}]}}"#,
    ])
    .expect("pod status");
    let policy = |v: &str| {
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "future", "namespace": "np", "labels": {"v": v}},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                     "ingress": [{"from": [{"podSelector": {}}], "action": "Log"}]}})
    };
    apply(policy("1"));
    let events = || {
        c.kubectl(&[
            "get",
            "--raw",
            "/apis/events.k8s.io/v1/namespaces/np/events",
        ])
        .unwrap_or_default()
    };
    assert!(
        eventually(READY, || events().contains("NetworkPolicyInvalid")),
        "no NetworkPolicyInvalid Event: {}\n{}",
        events(),
        c.agent_log(0)
    );
    apply(policy("2"));
    assert!(
        eventually(READY, || events().contains("\"series\"")),
        "the repeat was not folded into a series: {}",
        events()
    );
}

/// An emulator enforcing rbac.yaml for a ServiceAccount token, as the cluster test's; its admin
/// client and the ServiceAccount's.
struct Enforcing {
    _dir: tempfile::TempDir,
    emu: EmulatorHandle,
    admin: Client,
    agent: Client,
}

async fn enforcing_rbac_yaml() -> Enforcing {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = EmulatorConfig::new(dir.path());
    let mut policy = Policy::default();
    policy
        .add_file(&manifest("rbac.yaml"))
        .expect("rbac.yaml loads");
    let tok = token();
    cfg.rbac = Some(policy);
    cfg.users = vec![(tok.clone(), SA_USER.to_string())];
    let emu = Emulator::start(cfg).await.expect("emulator");
    let admin = emu.client().await.expect("admin client");
    let agent = emu.client_with_token(&tok).await.expect("agent client");
    Enforcing {
        _dir: dir,
        emu,
        admin,
        agent,
    }
}

fn code<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> u16 {
    match r {
        Ok(_) => 200,
        Err(kube::Error::Api(s)) => s.code,
        Err(other) => panic!("not an API answer: {other}"),
    }
}

fn node(name: &str) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]}
    }))
    .expect("node")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_token_cannot_taint_or_cordon_a_node() {
    let e = enforcing_rbac_yaml().await;
    let admin: Api<Node> = Api::all(e.admin.clone());
    for n in ["node-1", "node-2"] {
        admin
            .create(&PostParams::default(), &node(n))
            .await
            .expect("create");
    }
    let before = admin.get("node-2").await.expect("get").spec;
    let nodes: Api<Node> = Api::all(e.agent.clone());
    let pp = PatchParams::default();
    let taint = json!({"spec": {"taints": [{"key": "evil", "effect": "NoExecute"}],
                                "unschedulable": true}});
    let taint_ops = json!([
        {"op": "add", "path": "/spec/taints", "value": [{"key": "evil", "effect": "NoExecute"}]},
        {"op": "add", "path": "/spec/unschedulable", "value": true}
    ]);
    // The JSON patch type is kube's dependency's; inferred from the variant, never named.
    let json_taint =
        || Patch::<Value>::Json(serde_json::from_value(taint_ops.clone()).expect("ops"));

    // The Node itself: every write refused.
    assert_eq!(
        code(nodes.patch("node-2", &pp, &Patch::Merge(&taint)).await),
        403
    );
    assert_eq!(
        code(nodes.patch("node-2", &pp, &Patch::Strategic(&taint)).await),
        403
    );
    assert_eq!(code(nodes.patch("node-2", &pp, &json_taint()).await), 403);
    let mut replaced = node("node-2");
    replaced.spec.get_or_insert_default().unschedulable = Some(true);
    assert_eq!(
        code(
            nodes
                .replace("node-2", &PostParams::default(), &replaced)
                .await
        ),
        403
    );
    assert_eq!(
        code(nodes.delete("node-2", &DeleteParams::default()).await),
        403
    );

    // Through nodes/status, in every patch format: accepted, spec unchanged (the apiserver's
    // node status strategy resets it), while the metadata the agent writes there is kept.
    let status_patches = [
        Patch::Merge(taint.clone()),
        Patch::Strategic(taint.clone()),
        json_taint(),
    ];
    for p in &status_patches {
        let n = nodes
            .patch_status("node-2", &pp, p)
            .await
            .expect("status patch");
        assert_eq!(n.spec, before, "a status patch changed spec: {p:?}");
    }
    let ann =
        json!({"metadata": {"annotations": {"flannel.alpha.coreos.com/public-ip": "192.0.2.2"}}});
    let n = nodes
        .patch_status("node-2", &pp, &Patch::Merge(&ann))
        .await
        .expect("annotations through nodes/status");
    assert_eq!(
        n.metadata.annotations.unwrap_or_default()["flannel.alpha.coreos.com/public-ip"],
        "192.0.2.2"
    );
    assert_eq!(admin.get("node-2").await.expect("get").spec, before);
    e.emu.shutdown().await.expect("shutdown");
}

fn configmap(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"k": "v"}}))
        .expect("configmap")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_reads_no_configmap_but_trellis_config() {
    let e = enforcing_rbac_yaml().await;
    for ns in [SA_NS, "kube-system"] {
        let admin: Api<ConfigMap> = Api::namespaced(e.admin.clone(), ns);
        for name in ["trellis-config", "other"] {
            admin
                .create(&PostParams::default(), &configmap(name))
                .await
                .expect("create");
        }
    }
    let cms: Api<ConfigMap> = Api::namespaced(e.agent.clone(), SA_NS);
    let only = ListParams::default().fields("metadata.name=trellis-config");
    // What the agent's ConfigMap watcher sends: a list and a watch selecting it by name.
    let listed = cms.list(&only).await.expect("list by name");
    let names: Vec<_> = listed
        .items
        .iter()
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    assert_eq!(names, ["trellis-config"]);
    let watch = WatchParams::default().fields("metadata.name=trellis-config");
    let rv = listed.metadata.resource_version.unwrap_or_default();
    assert_eq!(code(cms.watch(&watch, &rv).await.map(|_| ())), 200);
    // Anything else is refused: the whole namespace, another name, a get, another namespace.
    assert_eq!(code(cms.list(&ListParams::default()).await), 403);
    let other = ListParams::default().fields("metadata.name=other");
    assert_eq!(code(cms.list(&other).await), 403);
    assert_eq!(code(cms.get("trellis-config").await), 403);
    let elsewhere: Api<ConfigMap> = Api::namespaced(e.agent.clone(), "kube-system");
    assert_eq!(code(elsewhere.list(&only).await), 403);
    e.emu.shutdown().await.expect("shutdown");
}

fn event(name: &str) -> Event {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "eventTime": "2024-01-01T00:00:00.000000Z",
        "reason": "Test", "action": "Test", "type": "Normal",
        "reportingController": "trellis-agent", "reportingInstance": "trellis-agent-node-1",
        "regarding": {"apiVersion": "v1", "kind": "Node", "name": "node-1"}
    }))
    .expect("event")
}

/// Node Events go to `default`; Events on a NetworkPolicy must be in the policy's namespace
/// (the apiserver requires it), so events.k8s.io Events are writable everywhere. Nothing else
/// is: no core/v1 Event, and no other kind of object in those namespaces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_writes_only_events_k8s_io_events() {
    let e = enforcing_rbac_yaml().await;
    let pp = PostParams::default();
    let here: Api<Event> = Api::namespaced(e.agent.clone(), "default");
    here.create(&pp, &event("e1"))
        .await
        .expect("create in default");
    let series = json!({"series": {"count": 2, "lastObservedTime": "2024-01-01T00:00:01.000000Z"}});
    here.patch("e1", &PatchParams::default(), &Patch::Merge(&series))
        .await
        .expect("fold into a series in default");
    for ns in [SA_NS, "kube-system"] {
        let there: Api<Event> = Api::namespaced(e.agent.clone(), ns);
        assert_eq!(code(there.create(&pp, &event("e2")).await), 200, "{ns}");
        let cms: Api<ConfigMap> = Api::namespaced(e.agent.clone(), ns);
        assert_eq!(code(cms.create(&pp, &configmap("x")).await), 403, "{ns}");
    }
    // No core/v1 Event, anywhere.
    let core: Api<CoreEvent> = Api::namespaced(e.agent.clone(), "default");
    let core_event: CoreEvent = serde_json::from_value(json!({
        "metadata": {"name": "c1"},
        "involvedObject": {"kind": "Node", "name": "node-1"},
        "reason": "Test", "message": "m", "type": "Normal"
    }))
    .expect("core event");
    assert_eq!(code(core.create(&pp, &core_event).await), 403);
    e.emu.shutdown().await.expect("shutdown");
}

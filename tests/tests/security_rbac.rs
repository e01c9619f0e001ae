//! Security review, checked rather than asserted in prose:
//! - the agent's RBAC (deploy/manifests/rbac.yaml) is sufficient: agents run a cluster with the
//!   emulator enforcing exactly those grants (startup, watches, a live backend switch, Events
//!   created and folded into a series, the Node status patch) and are never refused;
//! - and necessary: the set of (verb, group, resource) the agents used equals the set granted;
//! - the DaemonSet's containers are unprivileged (no privileged, no hostPID/hostIPC, only
//!   NET_ADMIN and NET_RAW added, every other capability dropped).
//!
//! The cluster test needs root and the workspace binaries (hack/test.sh builds them).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use trellis_e2e::netns_cluster::{net_conf, Cluster, Options};

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

/// (verb, group, resource[/sub], namespace) the emulator saw from the agents.
type Grant = (String, String, String, String);

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
        used.insert((s("verb"), s("apiGroup"), res, s("namespace")));
    }
    (used, denied)
}

/// The grants of rbac.yaml to the agent's ServiceAccount, expanded to single
/// (verb, group, resource, namespace) tuples; namespace is empty for ClusterRole grants.
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
            assert!(
                rule["resourceNames"].is_null(),
                "resourceNames are not expanded here"
            );
            let strs = |k: &str| -> Vec<String> {
                rule[k]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            };
            for g in strs("apiGroups") {
                for r in strs("resources") {
                    for v in strs("verbs") {
                        assert!(
                            g != "*" && r != "*" && v != "*",
                            "wildcards are never least privilege: {rule}"
                        );
                        out.insert((v, g.clone(), r.clone(), ns.to_string()));
                    }
                }
            }
        }
    }
    out
}

/// ClusterRole grants cover every namespace: compare a used namespaced call against the
/// grants by dropping its namespace when the grant is cluster-wide.
fn normalise(used: &BTreeSet<Grant>, granted: &BTreeSet<Grant>) -> BTreeSet<Grant> {
    used.iter()
        .map(|(v, g, r, ns)| {
            let cluster = (v.clone(), g.clone(), r.clone(), String::new());
            if granted.contains(&cluster) {
                cluster
            } else {
                (v.clone(), g.clone(), r.clone(), ns.clone())
            }
        })
        .collect()
}

#[test]
fn rbac_yaml_grants_exactly_what_the_agents_use() {
    assert_eq!(
        nix::unistd::geteuid().as_raw(),
        0,
        "end-to-end tests need root"
    );
    let mut c = Cluster::up(Options {
        nodes: 2,
        backend: r#"{"Type":"vxlan"}"#.into(),
        tag: "rbac".into(),
        agent_args: vec![],
    })
    .expect("cluster up");
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
}

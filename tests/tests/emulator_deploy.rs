//! What a user's `kubectl apply -k deploy` and a node need from the API emulator (issue 11):
//! the shipped kustomization applies (Namespace, ServiceAccount, RBAC, ConfigMap, DaemonSet),
//! re-applies as a no-op, changes through kubectl's strategic merge patch, and deletes; Pods
//! list with `get -o wide`; a TokenRequest's token authenticates as the ServiceAccount and the
//! applied rbac.yaml decides exactly what it may do; what cannot be represented is refused
//! whole, naming the field. Results are read back through the API with kube-rs.

use std::path::PathBuf;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{json, Value};
use trellis_e2e::apiserver::kubectl::Kubectl;
use trellis_e2e::apiserver::{Emulator, EmulatorConfig, EmulatorHandle, NamespacePolicy};

const NS: &str = "trellis-system";

fn deploy_dir() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .display()
        .to_string()
}

/// An emulator that refuses writes into missing namespaces, as the apiserver does.
async fn emulator(dir: &tempfile::TempDir) -> EmulatorHandle {
    let mut cfg = EmulatorConfig::new(dir.path());
    cfg.namespaces = NamespacePolicy::Required;
    Emulator::start(cfg).await.expect("emulator starts")
}

/// Creates the Pod `v` describes.
async fn create_pod(pods: &Api<Pod>, v: Value) {
    let pod: Pod = serde_json::from_value(v).expect("a Pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create the Pod");
}

fn code<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> u16 {
    match r {
        Err(kube::Error::Api(s)) => s.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// The object of `kind` in the kustomization as kubectl renders it.
async fn rendered(k: &Kubectl, kind: &str) -> Value {
    let yaml = k
        .ok(&["kustomize", &deploy_dir()])
        .await
        .expect("kubectl kustomize deploy");
    let docs: Vec<Value> = serde_saphyr::from_multiple(&yaml).expect("rendered YAML");
    docs.into_iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in the rendered kustomization"))
}

fn write_json(dir: &tempfile::TempDir, name: &str, v: &Value) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, serde_json::to_vec_pretty(v).expect("JSON")).expect("write manifest");
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_get_token_rbac_and_delete_of_the_deploy_kustomization() {
    let dir = tempfile::tempdir().expect("temp dir");
    let emu = emulator(&dir).await;
    let k = emu.kubectl();
    let admin = emu.client().await.expect("kube client");
    let deploy = deploy_dir();

    // apply -k: every object created, in kubectl's order (Namespace first).
    let out = k.ok(&["apply", "-k", &deploy]).await.expect("apply -k");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 12, "{out}");
    assert!(lines.iter().all(|l| l.ends_with(" created")), "{out}");
    assert!(Api::<Namespace>::all(admin.clone()).get(NS).await.is_ok());
    Api::<ServiceAccount>::namespaced(admin.clone(), NS)
        .get("trellis")
        .await
        .expect("the ServiceAccount");
    let cr = Api::<ClusterRole>::all(admin.clone())
        .get("trellis")
        .await
        .expect("the ClusterRole");
    assert_eq!(cr.rules.map(|r| r.len()), Some(2));
    Api::<ClusterRoleBinding>::all(admin.clone())
        .get("trellis")
        .await
        .expect("the ClusterRoleBinding");
    Api::<Role>::namespaced(admin.clone(), "default")
        .get("trellis-events")
        .await
        .expect("the events Role");
    Api::<RoleBinding>::namespaced(admin.clone(), NS)
        .get("trellis-config-reader")
        .await
        .expect("the config RoleBinding");
    let cm = Api::<ConfigMap>::namespaced(admin.clone(), NS)
        .get("trellis-config")
        .await
        .expect("the ConfigMap");
    assert!(cm.data.unwrap_or_default().contains_key("net-conf.json"));
    // What the DaemonSet's projected ca.crt reads, published in every new namespace.
    let root_ca = Api::<ConfigMap>::namespaced(admin.clone(), NS)
        .get("kube-root-ca.crt")
        .await
        .expect("kube-root-ca.crt");
    assert_eq!(
        root_ca
            .data
            .unwrap_or_default()
            .get("ca.crt")
            .map(String::as_str),
        Some(emu.ca_pem())
    );
    let dss: Api<DaemonSet> = Api::namespaced(admin.clone(), NS);
    let ds = dss.get("trellis").await.expect("the DaemonSet");
    let pod_spec = ds.spec.template.spec.clone().expect("a pod template");
    assert_eq!(
        pod_spec.containers[0].image.as_deref(),
        Some("trellis:0.1.0")
    );
    assert_eq!(pod_spec.service_account_name.as_deref(), Some("trellis"));
    assert!(ds.status.is_some(), "a new DaemonSet has an (empty) status");

    // A second apply changes nothing.
    let again = k
        .ok(&["apply", "-k", &deploy])
        .await
        .expect("apply -k again");
    assert!(
        again.lines().all(|l| l.ends_with(" unchanged")),
        "second apply:\n{again}"
    );

    // get: the DaemonSet's printed columns, and Pods with -A -o wide.
    let ds_table = k
        .ok(&["-n", NS, "get", "ds", "-o", "wide"])
        .await
        .expect("get ds");
    assert!(ds_table.contains("kubernetes.io/os=linux"), "{ds_table}");
    assert!(ds_table.contains("trellis:0.1.0"), "{ds_table}");
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NS);
    create_pod(&pods, json!({
        "metadata": {"name": "trellis-abcde", "labels": {"app.kubernetes.io/name": "trellis"}},
        "spec": {"nodeName": "node-1", "containers": [{"name": "trellis", "image": "trellis:0.1.0"}]}
    })).await;
    pods.patch_status(
        "trellis-abcde",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running", "podIP": "10.244.1.7",
            "containerStatuses": [{"name": "trellis", "ready": true, "restartCount": 1,
                                   "image": "trellis:0.1.0", "imageID": "", "state": {}}]}})),
    )
    .await
    .expect("the Pod's status");
    let wide = k
        .ok(&["get", "pods", "-A", "-o", "wide"])
        .await
        .expect("get pods -A -o wide");
    let header: Vec<&str> = wide
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAMESPACE",
            "NAME",
            "READY",
            "STATUS",
            "RESTARTS",
            "AGE",
            "IP",
            "NODE",
            "NOMINATED",
            "NODE",
            "READINESS",
            "GATES"
        ]
    );
    let row: Vec<&str> = wide
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        (row[0], row[1], row[2], row[3], row[4], row[6], row[7]),
        (
            NS,
            "trellis-abcde",
            "1/1",
            "Running",
            "1",
            "10.244.1.7",
            "node-1"
        ),
        "{wide}"
    );
    let on_node = pods
        .list(&ListParams::default().fields("spec.nodeName=node-1,status.phase=Running"))
        .await
        .expect("list by node and phase");
    assert_eq!(on_node.items.len(), 1);

    // TokenRequest (as `kubectl create token` sends it) -> a token authenticating as the SA,
    // which rbac.yaml as applied decides for.
    let token = k
        .ok(&["create", "token", "trellis", "-n", NS])
        .await
        .expect("create token")
        .trim()
        .to_string();
    let agent = emu.client_with_token(&token).await.expect("SA client");
    Api::<Node>::all(admin.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "node-1"}})).expect("a Node"),
        )
        .await
        .expect("create a Node");
    let nodes: Api<Node> = Api::all(agent.clone());
    assert_eq!(
        nodes
            .list(&ListParams::default())
            .await
            .map(|l| l.items.len())
            .ok(),
        Some(1)
    );
    let annotate = Patch::Merge(json!({"metadata": {"annotations": {"a": "b"}}}));
    assert_eq!(
        code(
            nodes
                .patch("node-1", &PatchParams::default(), &annotate)
                .await
        ),
        403
    );
    nodes
        .patch_status("node-1", &PatchParams::default(), &annotate)
        .await
        .expect("patch nodes/status is granted");
    let cms: Api<ConfigMap> = Api::namespaced(agent.clone(), NS);
    assert_eq!(
        code(cms.get("trellis-config").await),
        403,
        "get is not granted"
    );
    let only_ours = ListParams::default().fields("metadata.name=trellis-config");
    assert_eq!(
        cms.list(&only_ours).await.map(|l| l.items.len()).ok(),
        Some(1)
    );
    assert_eq!(code(cms.list(&ListParams::default()).await), 403);
    // Pods are listed (NetworkPolicy enforcement's watch, trellis-network-policy) but never
    // read one by one, created or deleted.
    let agent_pods: Api<Pod> = Api::all(agent.clone());
    assert!(agent_pods.list(&ListParams::default()).await.is_ok());
    let in_ns: Api<Pod> = Api::namespaced(agent.clone(), NS);
    assert_eq!(code(in_ns.get("nope").await), 403);
    assert_eq!(code(in_ns.delete("nope", &Default::default()).await), 403);

    // A token bound to a Pod (as a kubelet asks for a projected token) dies with the Pod.
    create_pod(
        &pods,
        json!({"metadata": {"name": "holder"},
               "spec": {"containers": [{"name": "c", "image": "i"}]}}),
    )
    .await;
    let bound = k
        .ok(&[
            "create",
            "token",
            "trellis",
            "-n",
            NS,
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            "holder",
        ])
        .await
        .expect("create a bound token")
        .trim()
        .to_string();
    let held = Api::<Node>::all(emu.client_with_token(&bound).await.expect("client"));
    assert!(held.list(&ListParams::default()).await.is_ok());
    pods.delete("holder", &Default::default())
        .await
        .expect("delete the holder");
    assert_eq!(code(held.list(&ListParams::default()).await), 401);

    // delete -k: everything goes, the Namespace with what is left in it (the Pod).
    let gone = k.ok(&["delete", "-k", &deploy]).await.expect("delete -k");
    assert_eq!(gone.lines().count(), 12, "{gone}");
    assert!(Api::<Namespace>::all(admin.clone())
        .get_opt(NS)
        .await
        .expect("get")
        .is_none());
    assert!(Api::<ClusterRole>::all(admin.clone())
        .get_opt("trellis")
        .await
        .expect("get")
        .is_none());
    assert!(Api::<Role>::namespaced(admin.clone(), "default")
        .get_opt("trellis-events")
        .await
        .expect("get")
        .is_none());
    assert!(Api::<Pod>::all(admin.clone())
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .is_empty());
    // The ServiceAccount is gone, and its token with it.
    assert_eq!(code(nodes.list(&ListParams::default()).await), 401);
    emu.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_changes_the_daemonset_by_strategic_merge_and_refuses_what_it_cannot_represent(
) {
    let dir = tempfile::tempdir().expect("temp dir");
    let emu = emulator(&dir).await;
    let k = emu.kubectl();
    let admin = emu.client().await.expect("kube client");
    k.ok(&["apply", "-k", &deploy_dir()])
        .await
        .expect("apply -k");
    let dss: Api<DaemonSet> = Api::namespaced(admin.clone(), NS);

    // A changed manifest: an arg changed, an env var and a volume (with its mount) removed, a
    // mount added. kubectl sends a strategic merge patch with `$setElementOrder` and
    // `$patch: delete` items, which must merge by name and mountPath.
    let mut ds = rendered(&k, "DaemonSet").await;
    let spec = &mut ds["spec"]["template"]["spec"];
    let c = &mut spec["containers"][0];
    c["args"][3] = json!("--health-addr=127.0.0.1:9403");
    let env = c["env"].as_array_mut().expect("env");
    env.retain(|e| e["name"] != "POD_NAMESPACE");
    let mounts = c["volumeMounts"].as_array_mut().expect("mounts");
    mounts.retain(|m| m["name"] != "tmp");
    mounts.push(json!({"name": "run-flannel", "mountPath": "/run/flannel-copy"}));
    spec["volumes"]
        .as_array_mut()
        .expect("volumes")
        .retain(|v| v["name"] != "tmp");
    let want = spec.clone();
    let file = write_json(&dir, "ds.json", &ds);
    let out = k
        .ok(&["apply", "-f", &file])
        .await
        .expect("apply the change");
    assert!(out.contains("configured"), "{out}");
    let stored = serde_json::to_value(dss.get("trellis").await.expect("get")).expect("JSON");
    assert_eq!(stored["spec"]["template"]["spec"], want);
    assert_eq!(stored["metadata"]["generation"], 2);

    // An NFS volume: no node driver here can mount it. Refused with the field named, and the
    // stored DaemonSet stays as it was (the request is atomic).
    let mut bad = ds.clone();
    bad["spec"]["template"]["spec"]["volumes"]
        .as_array_mut()
        .expect("volumes")
        .push(json!({"name": "nfs", "nfs": {"server": "10.0.0.1", "path": "/x"}}));
    bad["spec"]["template"]["spec"]["containers"][0]["image"] = json!("trellis:0.2.0");
    let file = write_json(&dir, "bad.json", &bad);
    let refused = k.run(&["apply", "-f", &file]).await.expect("kubectl runs");
    assert!(!refused.ok);
    assert!(
        refused
            .stderr
            .contains("spec.template.spec.volumes[6].nfs: Unsupported value"),
        "{}",
        refused.stderr
    );
    let after = serde_json::to_value(dss.get("trellis").await.expect("get")).expect("JSON");
    assert_eq!(
        after["spec"], stored["spec"],
        "nothing of the refused apply was stored"
    );

    // A typo: kubectl asks for strict field validation, so the unknown field is named and
    // nothing is stored (not the object with the field silently dropped).
    let mut typo = ds.clone();
    typo["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = json!("Always");
    typo["spec"]["template"]["spec"]["containers"][0]["image"] = json!("trellis:0.3.0");
    let file = write_json(&dir, "typo.json", &typo);
    let refused = k.run(&["apply", "-f", &file]).await.expect("kubectl runs");
    assert!(
        !refused.ok
            && refused
                .stderr
                .contains("unknown field \"spec.template.spec.containers[0].imagePullPolicyy\""),
        "{}",
        refused.stderr
    );
    let after = serde_json::to_value(dss.get("trellis").await.expect("get")).expect("JSON");
    assert_eq!(after["spec"], stored["spec"]);

    // A multi-document apply: each object is its own request, each all or nothing. The valid
    // ConfigMap is created, the Pod whose mount names no volume is refused by field.
    let multi = dir.path().join("multi.yaml");
    std::fs::write(
        &multi,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: fine, namespace: trellis-system}\n\
         data: {a: b}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: broken, namespace: trellis-system}\n\
         spec:\n  containers:\n  - name: c\n    image: i\n    volumeMounts: [{name: nowhere, mountPath: /x}]\n",
    )
    .expect("write");
    let multi = multi.display().to_string();
    let o = k.run(&["apply", "-f", &multi]).await.expect("kubectl runs");
    assert!(!o.ok);
    assert!(
        o.stderr
            .contains("spec.containers[0].volumeMounts[0].name: Not found: \"nowhere\""),
        "{}",
        o.stderr
    );
    assert!(Api::<ConfigMap>::namespaced(admin.clone(), NS)
        .get_opt("fine")
        .await
        .expect("get")
        .is_some());
    assert!(Api::<Pod>::namespaced(admin.clone(), NS)
        .get_opt("broken")
        .await
        .expect("get")
        .is_none());

    // Deleting the DaemonSet deletes its Pods (ownerReferences, as the garbage collector
    // does); a Pod a node runs is deleted gracefully: marked, left for its kubelet (a node
    // driver) to stop and then delete with grace 0.
    let ds_uid = after["metadata"]["uid"].as_str().expect("uid").to_string();
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NS);
    for (name, node) in [("trellis-on-1", Some("node-1")), ("trellis-unbound", None)] {
        create_pod(
            &pods,
            json!({
                "metadata": {"name": name, "ownerReferences": [{"apiVersion": "apps/v1",
                    "kind": "DaemonSet", "name": "trellis", "uid": ds_uid, "controller": true}]},
                "spec": {"nodeName": node, "terminationGracePeriodSeconds": 30,
                         "containers": [{"name": "c", "image": "i"}]}
            }),
        )
        .await;
    }
    pods.patch_status(
        "trellis-on-1",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running"}})),
    )
    .await
    .expect("running");
    k.ok(&["-n", NS, "delete", "ds", "trellis"])
        .await
        .expect("delete ds");
    assert!(dss.get_opt("trellis").await.expect("get").is_none());
    assert!(
        pods.get_opt("trellis-unbound")
            .await
            .expect("get")
            .is_none(),
        "unbound: at once"
    );
    let terminating = pods
        .get("trellis-on-1")
        .await
        .expect("still there, terminating");
    assert_eq!(terminating.metadata.deletion_grace_period_seconds, Some(30));
    assert!(terminating.metadata.deletion_timestamp.is_some());
    let listed = k.ok(&["-n", NS, "get", "pods"]).await.expect("get pods");
    assert!(listed.contains("Terminating"), "{listed}");
    pods.delete(
        "trellis-on-1",
        &kube::api::DeleteParams::default().grace_period(0),
    )
    .await
    .expect("the kubelet's final delete");
    assert!(pods.get_opt("trellis-on-1").await.expect("get").is_none());

    // A scheduler's binding sets the node once.
    create_pod(
        &pods,
        json!({"metadata": {"name": "to-bind"},
               "spec": {"containers": [{"name": "c", "image": "i"}]}}),
    )
    .await;
    let binding = |node: &str| {
        json!({"apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": "to-bind"}, "target": {"kind": "Node", "name": node}})
    };
    pods.create_subresource::<Value, Value>(
        "binding",
        "to-bind",
        &PostParams::default(),
        &binding("node-2"),
    )
    .await
    .expect("bind");
    let bound = pods.get("to-bind").await.expect("get");
    assert_eq!(
        bound.spec.and_then(|s| s.node_name).as_deref(),
        Some("node-2")
    );
    let again = pods
        .create_subresource::<Value, Value>(
            "binding",
            "to-bind",
            &PostParams::default(),
            &binding("node-3"),
        )
        .await;
    assert_eq!(code(again), 409, "bound once");

    // A namespace that does not exist: 404 as the apiserver's, nothing created.
    let lost = write_json(
        &dir,
        "lost.json",
        &json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "x", "namespace": "nowhere"}, "data": {"a": "b"}}),
    );
    let o = k.run(&["create", "-f", &lost]).await.expect("kubectl runs");
    assert!(
        !o.ok && o.stderr.contains("namespaces \"nowhere\" not found"),
        "{}",
        o.stderr
    );
    // Typed-client creates send protobuf, which the emulator refuses by name (415).
    let o = k
        .run(&["-n", NS, "create", "configmap", "y", "--from-literal=a=b"])
        .await
        .expect("kubectl runs");
    assert!(!o.ok && o.stderr.contains("protobuf"), "{}", o.stderr);
    emu.shutdown().await.expect("shutdown");
}

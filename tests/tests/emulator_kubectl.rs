//! Real `kubectl` against the API emulator (issue 3): get, get -w, annotate, patch (merge and
//! strategic, also on the status subresource), create -f, delete, and `apply -f` / `get netpol`
//! of NetworkPolicies. Results are read back through the API with kube-rs, not from kubectl's
//! own output.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Node};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::Api;
use kube::ResourceExt;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use trellis_e2e::apiserver::kubectl::{Kubectl, Output, KUBECTL};
use trellis_e2e::apiserver::Emulator;

/// The shared kit's kubectl, failing the test when kubectl cannot run at all.
async fn kubectl(kubeconfig: &Path, args: &[&str]) -> Output {
    Kubectl::new(kubeconfig)
        .run(args)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn ok(kubeconfig: &Path, args: &[&str]) -> String {
    Kubectl::new(kubeconfig)
        .ok(args)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// `kubectl patch node kn1 [--subresource SUB] --type TYPE -p PATCH`.
async fn patch_kn1(kubeconfig: &Path, subresource: Option<&str>, patch_type: &str, patch: &str) {
    let mut args = vec!["patch", "node", "kn1"];
    if let Some(sub) = subresource {
        args.extend(["--subresource", sub]);
    }
    args.extend(["--type", patch_type, "-p", patch]);
    ok(kubeconfig, &args).await;
}

const NODE_YAML: &str = r#"apiVersion: v1
kind: Node
metadata:
  name: kn1
  labels:
    kubernetes.io/hostname: kn1
spec:
  podCIDR: 10.244.7.0/24
  podCIDRs: ["10.244.7.0/24"]
status:
  conditions:
  - type: Ready
    status: "True"
    reason: KubeletReady
  nodeInfo:
    kubeletVersion: v1.32.0
"#;

const CM_YAML: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: kube-flannel-cfg
  namespace: kube-system
data:
  net-conf.json: |
    {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}
"#;

fn conditions(n: &Node) -> Vec<(String, String)> {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|c| (c.type_, c.status))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_drives_the_emulator() {
    let (dir, emu) = Emulator::start_in_temp_dir().await;
    let kc = emu.kubeconfig_path().to_path_buf();
    let client = emu.client().await.expect("kube client");
    let nodes: Api<Node> = Api::all(client.clone());
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-system");
    let node_file = dir.path().join("node.yaml");
    let cm_file = dir.path().join("cm.yaml");
    std::fs::write(&node_file, NODE_YAML).expect("write node.yaml");
    std::fs::write(&cm_file, CM_YAML).expect("write cm.yaml");
    let node_path = node_file.to_str().expect("utf-8 path");
    let cm_path = cm_file.to_str().expect("utf-8 path");

    // create -f (kubectl validates server-side; it needs discovery and the OpenAPI index).
    ok(&kc, &["create", "-f", node_path]).await;
    ok(&kc, &["create", "-f", cm_path]).await;
    let n = nodes.get("kn1").await.expect("node created by kubectl");
    assert_eq!(
        n.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()),
        Some("10.244.7.0/24")
    );
    let cm = cms
        .get("kube-flannel-cfg")
        .await
        .expect("configmap created by kubectl");
    assert!(cm.data.unwrap_or_default()["net-conf.json"].contains("vxlan"));
    let again = kubectl(&kc, &["create", "-f", node_path]).await;
    assert!(
        !again.ok && again.stderr.contains("already exists"),
        "{}",
        again.stderr
    );

    // get: server-side printed table.
    let table = ok(&kc, &["get", "nodes"]).await;
    let mut lines = table.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]);
    let row: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        (row[0], row[1], row[4]),
        ("kn1", "Ready", "v1.32.0"),
        "{table}"
    );
    let yaml = ok(&kc, &["get", "node", "kn1", "-o", "yaml"]).await;
    assert!(yaml.contains("podCIDR: 10.244.7.0/24"), "{yaml}");
    let cm_table = ok(&kc, &["get", "configmaps", "-A"]).await;
    assert!(cm_table.contains("kube-flannel-cfg"), "{cm_table}");

    // get -w: initial row, then a row for the change made meanwhile.
    let mut watch = Command::new(KUBECTL)
        .args(["get", "nodes", "-w"])
        .env("KUBECONFIG", &kc)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn kubectl get -w");
    let mut out = BufReader::new(watch.stdout.take().expect("stdout piped")).lines();
    let mut read_line = async || {
        tokio::time::timeout(Duration::from_secs(20), out.next_line())
            .await
            .expect("kubectl get -w printed nothing within 20 s")
            .expect("read kubectl output")
            .expect("kubectl get -w ended early")
    };
    assert!(read_line().await.starts_with("NAME"));
    assert!(read_line().await.starts_with("kn1"));

    // annotate (a merge patch built by kubectl).
    ok(
        &kc,
        &[
            "annotate",
            "node",
            "kn1",
            "flannel.alpha.coreos.com/public-ip=192.168.50.1",
        ],
    )
    .await;
    let watched = read_line().await;
    assert!(watched.starts_with("kn1"), "{watched}");
    watch.kill().await.expect("stop kubectl get -w");
    let n = nodes.get("kn1").await.expect("get");
    assert_eq!(
        n.annotations()
            .get("flannel.alpha.coreos.com/public-ip")
            .map(String::as_str),
        Some("192.168.50.1")
    );

    // patch --type merge on the node: spec changes; status in the patch is ignored.
    patch_kn1(
        &kc,
        None,
        "merge",
        r#"{"spec":{"unschedulable":true},"status":{"conditions":[]}}"#,
    )
    .await;
    let n = nodes.get("kn1").await.expect("get");
    assert_eq!(n.spec.as_ref().and_then(|s| s.unschedulable), Some(true));
    assert_eq!(conditions(&n), [("Ready".to_string(), "True".to_string())]);

    // patch --type strategic on metadata.
    patch_kn1(
        &kc,
        None,
        "strategic",
        r#"{"metadata":{"labels":{"trellis.io/pool":"a"}}}"#,
    )
    .await;
    let n = nodes.get("kn1").await.expect("get");
    assert_eq!(
        n.labels().get("trellis.io/pool").map(String::as_str),
        Some("a")
    );
    assert_eq!(
        n.labels().get("kubernetes.io/hostname").map(String::as_str),
        Some("kn1")
    );

    // patch --subresource status --type strategic: conditions merge by type.
    patch_kn1(&kc, Some("status"), "strategic",
        r#"{"status":{"conditions":[{"type":"NetworkUnavailable","status":"False","reason":"TrellisIsUp"}]}}"#).await;
    let n = nodes.get("kn1").await.expect("get");
    assert_eq!(
        conditions(&n),
        [
            ("Ready".to_string(), "True".to_string()),
            ("NetworkUnavailable".to_string(), "False".to_string())
        ]
    );

    // patch --subresource status --type merge: status changes, spec does not.
    patch_kn1(
        &kc,
        Some("status"),
        "merge",
        r#"{"spec":{"unschedulable":false},"status":{"nodeInfo":{"kubeletVersion":"v1.32.1"}}}"#,
    )
    .await;
    let n = nodes.get("kn1").await.expect("get");
    assert_eq!(n.spec.as_ref().and_then(|s| s.unschedulable), Some(true));
    assert_eq!(
        n.status
            .and_then(|s| s.node_info)
            .map(|i| i.kubelet_version)
            .as_deref(),
        Some("v1.32.1")
    );

    // delete (kubectl waits for the object to vanish with a field-selected list+watch).
    ok(&kc, &["delete", "node", "kn1"]).await;
    ok(&kc, &["delete", "-f", cm_path]).await;
    assert!(nodes.get_opt("kn1").await.expect("get").is_none());
    assert!(cms
        .get_opt("kube-flannel-cfg")
        .await
        .expect("get")
        .is_none());
    let missing = kubectl(&kc, &["get", "node", "kn1"]).await;
    assert!(
        !missing.ok && missing.stderr.contains("not found"),
        "{}",
        missing.stderr
    );
    emu.shutdown().await.expect("shutdown");
}

const NETPOL_YAML: &str = r#"apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-frontend
  namespace: shop
spec:
  podSelector:
    matchLabels:
      app: backend
  ingress:
  - from:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: web
    ports:
    - port: http
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny
  namespace: shop
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_and_lists_network_policies() {
    let (dir, emu) = Emulator::start_in_temp_dir().await;
    let kc = emu.kubeconfig_path().to_path_buf();
    let file = dir.path().join("netpol.yaml");
    std::fs::write(&file, NETPOL_YAML).expect("write netpol.yaml");
    let path = file.to_str().expect("utf-8 path");

    // apply finds the type through discovery (group networking.k8s.io) and creates, then patches.
    ok(&kc, &["apply", "-f", path]).await;
    ok(&kc, &["apply", "-f", path]).await;
    let nps: Api<NetworkPolicy> = Api::namespaced(emu.client().await.expect("client"), "shop");
    let np = nps.get("allow-frontend").await.expect("applied by kubectl");
    let spec = np.spec.expect("spec");
    assert_eq!(spec.policy_types, Some(vec!["Ingress".to_string()]));
    assert_eq!(
        np.metadata.generation,
        Some(1),
        "re-applying changes nothing"
    );

    // get by short name across namespaces: the apiserver's columns.
    let table = ok(&kc, &["get", "netpol", "-A"]).await;
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], ["NAMESPACE", "NAME", "POD-SELECTOR", "AGE"]);
    assert_eq!(rows[1][..3], ["shop", "allow-frontend", "app=backend"]);
    assert_eq!(rows[2][..3], ["shop", "default-deny", "<none>"]);
    let labels = ok(
        &kc,
        &["get", "ns", "shop", "-o", "jsonpath={.metadata.labels}"],
    )
    .await;
    assert!(
        labels.contains(r#""kubernetes.io/metadata.name":"shop""#),
        "{labels}"
    );

    // Malformed policies are refused with the apiserver's field errors.
    let bad = kubectl(
        &kc,
        &[
            "patch",
            "netpol",
            "-n",
            "shop",
            "default-deny",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"ingress":[{"ports":[{"port":99999}]}]}}"#,
        ],
    )
    .await;
    assert!(
        !bad.ok && bad.stderr.contains("spec.ingress[0].ports[0].port"),
        "{}",
        bad.stderr
    );
    ok(&kc, &["delete", "-f", path]).await;
    assert!(nps.get_opt("default-deny").await.expect("get").is_none());
    emu.shutdown().await.expect("shutdown");
}

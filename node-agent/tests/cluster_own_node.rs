//! Own-node handling against the API emulator: waiting for the podCIDR, advertising
//! annotations, setting the NetworkUnavailable condition, and the client from a kubeconfig.

mod cluster_support;

use std::collections::BTreeMap;
use std::time::Duration;

use cluster_support::*;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use trellis_agent::annotations::{
    Advertisement, AnnotationKeys, BackendData, VxlanData, DEFAULT_PREFIX,
};
use trellis_agent::cluster::{
    connect, BackoffPolicy, ClientSource, OwnNode, OwnNodeError, WaitOptions,
};
use trellis_agent::config::BackendType;
use trellis_agent::net::Mac;

const WAIT: Duration = Duration::from_secs(15);

fn k(suffix: &str) -> String {
    format!("{DEFAULT_PREFIX}{suffix}")
}

/// Sets the local Node's annotation `k(suffix)`.
async fn annotate_local(c: &Cluster, suffix: &str, value: &str) {
    annotate(&c.nodes, LOCAL, &k(suffix), Some(value)).await;
}

fn fast_wait() -> WaitOptions {
    WaitOptions {
        remind_every: Duration::from_millis(300),
        backoff: BackoffPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(300),
        },
    }
}

fn advertisement(ip: &str, mac: Mac) -> BTreeMap<String, String> {
    Advertisement {
        backend_type: BackendType::Vxlan,
        data_v4: Some(BackendData::Vxlan(VxlanData {
            vni: 1,
            vtep_mac: mac,
            port: None,
        })),
        data_v6: None,
        public_ip: Some(ip.parse().unwrap()),
        public_ipv6: None,
    }
    .to_annotations(&AnnotationKeys::default())
}

async fn get(c: &Cluster, name: &str) -> Node {
    c.nodes.get(name).await.expect("get node")
}

// Current-thread runtime: the log capture is per thread, and the waiter logs from this one.
#[tokio::test]
async fn waits_for_the_pod_cidr_and_says_what_to_fix() {
    let logs = LogCapture::default();
    let _guard = logs.install();
    let c = cluster().await;
    let own = OwnNode::new(c.client.clone(), LOCAL, AnnotationKeys::default());
    let wait = fast_wait();
    let waiter = own.wait_ready(&wait);
    let mut waiter = std::pin::pin!(waiter);

    // No Node at all yet.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut waiter)
            .await
            .is_err()
    );
    assert!(
        logs.text().contains("node local not found"),
        "{}",
        logs.text()
    );

    // The Node registers without a podCIDR: the log names the fix, and repeats it.
    create_local_node(&c.nodes, None).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(900), &mut waiter)
            .await
            .is_err()
    );
    let text = logs.text();
    let line = "node local has no podCIDR: is the controller-manager running with --allocate-node-cidrs and --cluster-cidr?";
    assert!(text.matches(line).count() >= 2, "{text}");

    // The controller-manager assigns it (with an operator's overwrite and a VTEP MAC left
    // by a previous run on the Node).
    annotate_local(&c, "public-ip-overwrite", "203.0.113.5").await;
    annotate_local(
        &c,
        "backend-data",
        r#"{"VNI":1,"VtepMAC":"0a:58:00:00:00:01"}"#,
    )
    .await;
    let patch =
        json!({"spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fd00:1::/64"]}});
    c.nodes
        .patch(LOCAL, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let state = tokio::time::timeout(WAIT, waiter)
        .await
        .expect("ready in time")
        .expect("valid node");
    assert_eq!(state.subnet_v4, Some("10.244.1.0/24".parse().unwrap()));
    assert_eq!(state.subnet_v6, Some("fd00:1::/64".parse().unwrap()));
    assert_eq!(
        state.public_ip_override_v4,
        Some("203.0.113.5".parse().unwrap())
    );
    assert_eq!(
        state.vtep_mac_v4.map(|m| m.to_string()).as_deref(),
        Some("0a:58:00:00:00:01")
    );
    assert!(state.uid.is_some());
    assert_eq!(own.read().await.unwrap(), Some(state));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_overwrite_is_an_error_naming_the_annotation() {
    let c = cluster().await;
    create_local_node(&c.nodes, Some("10.244.1.0/24")).await;
    annotate_local(&c, "public-ip-overwrite", "not-an-ip").await;
    let own = OwnNode::new(c.client.clone(), LOCAL, AnnotationKeys::default());
    let e = tokio::time::timeout(WAIT, own.wait_ready(&fast_wait()))
        .await
        .expect("answers in time")
        .unwrap_err();
    assert!(matches!(e, OwnNodeError::BadOverwrite { .. }), "{e}");
    assert!(e.to_string().contains("public-ip-overwrite"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advertises_only_our_keys_and_only_when_they_differ() {
    let c = cluster().await;
    create_local_node(&c.nodes, Some("10.244.1.0/24")).await;
    annotate(&c.nodes, LOCAL, "node.alpha.kubernetes.io/ttl", Some("0")).await;
    annotate_local(&c, "public-ip-overwrite", "203.0.113.5").await;
    // A stale IPv6 advertisement from a previous dual-stack run.
    annotate_local(&c, "public-ipv6", "fd00::1").await;
    let own = OwnNode::new(c.client.clone(), LOCAL, AnnotationKeys::default());

    let mac = Mac([0x0a, 0x58, 0, 0, 0, 1]);
    let desired = advertisement("203.0.113.5", mac);
    assert!(own.advertise(&desired).await.unwrap(), "first time patches");
    let rv = get(&c, LOCAL).await.metadata.resource_version;
    let a = get(&c, LOCAL).await.metadata.annotations.unwrap();
    for (key, value) in &desired {
        assert_eq!(a.get(key), Some(value), "{key}");
    }
    assert_eq!(
        a[&k("backend-data")],
        r#"{"VNI":1,"VtepMAC":"0a:58:00:00:00:01"}"#
    );
    assert!(!a.contains_key(&k("public-ipv6")), "stale key removed");
    assert_eq!(a["node.alpha.kubernetes.io/ttl"], "0", "others' keys kept");
    assert_eq!(
        a[&k("public-ip-overwrite")],
        "203.0.113.5",
        "operator's key kept"
    );

    assert!(
        !own.advertise(&desired).await.unwrap(),
        "no change, no patch"
    );
    assert_eq!(get(&c, LOCAL).await.metadata.resource_version, rv);

    // Switching backend rewrites what changed.
    let mut hostgw = desired.clone();
    hostgw.insert(k("backend-type"), "host-gw".into());
    hostgw.insert(k("backend-data"), "null".into());
    assert!(own.advertise(&hostgw).await.unwrap());
    let a = get(&c, LOCAL).await.metadata.annotations.unwrap();
    assert_eq!(a[&k("backend-type")], "host-gw");
    assert_eq!(a[&k("backend-data")], "null");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sets_network_available_once_and_keeps_other_conditions() {
    let c = cluster().await;
    create_local_node(&c.nodes, Some("10.244.1.0/24")).await;
    // What a cloud route controller or kubelet may have set before us.
    let patch = json!({"status": {"conditions": [{"type": "NetworkUnavailable", "status": "True",
        "reason": "NoRouteCreated", "lastTransitionTime": "2024-01-01T00:00:00Z"}]}});
    c.nodes
        .patch_status(LOCAL, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .unwrap();
    let own = OwnNode::new(c.client.clone(), LOCAL, AnnotationKeys::default());
    assert!(own.set_network_available().await.unwrap());

    let node = get(&c, LOCAL).await;
    let conds = node.status.unwrap().conditions.unwrap();
    let ready = conds
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready kept");
    assert_eq!(ready.status, "True");
    let net: Vec<_> = conds
        .iter()
        .filter(|c| c.type_ == "NetworkUnavailable")
        .collect();
    assert_eq!(net.len(), 1, "merged by type: {conds:?}");
    assert_eq!(net[0].status, "False");
    assert_eq!(net[0].reason.as_deref(), Some("TrellisIsUp"));
    assert!(net[0]
        .message
        .as_deref()
        .unwrap_or_default()
        .contains("trellis"));
    let when = net[0]
        .last_transition_time
        .clone()
        .expect("transition time");
    assert!(when.0.as_second() > 1_704_067_200, "set to now, not kept");
    assert!(node.spec.unwrap().pod_cidrs.is_some(), "spec untouched");

    assert!(!own.set_network_available().await.unwrap(), "already ours");
    let node = get(&c, LOCAL).await;
    let conds = node.status.unwrap().conditions.unwrap();
    let net = conds
        .iter()
        .find(|c| c.type_ == "NetworkUnavailable")
        .unwrap();
    assert_eq!(net.last_transition_time.as_ref(), Some(&when));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_a_missing_node_say_so() {
    let c = cluster().await;
    let own = OwnNode::new(c.client.clone(), "ghost", AnnotationKeys::default());
    let e = own.advertise(&BTreeMap::new()).await.unwrap_err();
    assert!(matches!(e, OwnNodeError::NotFound { .. }), "{e}");
    assert!(e.to_string().contains("NODE_NAME"), "{e}");
    let e = own.set_network_available().await.unwrap_err();
    assert!(matches!(e, OwnNodeError::NotFound { .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_from_a_kubeconfig_flag_or_env() {
    let c = cluster().await;
    create_local_node(&c.nodes, Some("10.244.1.0/24")).await;
    let path = c.emu.kubeconfig_path().to_path_buf();
    for source in [
        ClientSource::choose(Some(&path), None, true).unwrap(),
        ClientSource::choose(None, Some(path.clone().into_os_string()), true).unwrap(),
    ] {
        let client = connect(&source)
            .await
            .unwrap_or_else(|e| panic!("{source}: {e}"));
        let own = OwnNode::new(client, LOCAL, AnnotationKeys::default());
        assert!(own.read().await.unwrap().is_some(), "{source}");
    }
}

//! The API emulator driven by the real kube-rs client (the node agent's client): CRUD, the
//! status subresource, watches, the runtime watcher through compaction and dropped watches,
//! fault injection, the events recorder, and NetworkPolicies with the Namespace and Pod fields
//! they select on.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use trellis_e2e::apiserver::{Emulator, EmulatorConfig, EmulatorHandle};

const STEP: Duration = Duration::from_secs(10);

async fn start(bookmarks: Duration) -> (tempfile::TempDir, EmulatorHandle, Client) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = EmulatorConfig::new(dir.path());
    cfg.bookmark_interval = bookmarks;
    let emu = Emulator::start(cfg).await.expect("emulator starts");
    let client = emu
        .client()
        .await
        .expect("kube client from the emulator's kubeconfig");
    (dir, emu, client)
}

fn node(name: &str, labels: &[(&str, &str)]) -> Node {
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]},
        "status": {"conditions": [{"type": "Ready", "status": "True"}],
                   "addresses": [{"type": "InternalIP", "address": "192.168.0.1"}]}
    }))
    .expect("valid node")
}

fn configmap(name: &str, app: &str) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": app}},
        "data": {"k": name}
    }))
    .expect("valid configmap")
}

/// A merge patch of node `name` that must succeed.
async fn merge_patch(nodes: &Api<Node>, name: &str, patch: serde_json::Value) -> Node {
    nodes
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("merge patch of {name}: {e}"))
}

/// How many ConfigMaps a plain list returns.
async fn count(cms: &Api<ConfigMap>) -> usize {
    let list = cms.list(&ListParams::default()).await.expect("list");
    list.items.len()
}

fn api_code(e: kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        other => panic!("expected an API error status, got {other:?}"),
    }
}

async fn next<S, T>(s: &mut S) -> T
where
    S: Stream<Item = T> + Unpin,
{
    tokio::time::timeout(STEP, s.next())
        .await
        .expect("stream produced nothing within 10 s")
        .expect("stream ended")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_errors_and_pagination() {
    let (_dir, emu, client) = start(Duration::from_secs(60)).await;
    let nodes: Api<Node> = Api::all(client.clone());
    let pp = PostParams::default();

    let created = nodes
        .create(&pp, &node("n1", &[]))
        .await
        .expect("create node");
    let rv1: u64 = created
        .resource_version()
        .and_then(|r| r.parse().ok())
        .expect("numeric rv");
    assert!(created.uid().is_some_and(|u| u.len() == 36));
    assert!(created.metadata.creation_timestamp.is_some());
    assert_eq!(created.metadata.generation, Some(1));
    // Nodes keep the status given at creation, as in the apiserver.
    assert!(created.status.is_some());
    assert_eq!(
        api_code(nodes.create(&pp, &node("n1", &[])).await.unwrap_err()),
        409
    );
    assert_eq!(api_code(nodes.get("missing").await.unwrap_err()), 404);
    assert_eq!(
        api_code(nodes.create(&pp, &node("Bad_Name", &[])).await.unwrap_err()),
        422
    );

    // Optimistic concurrency: an update carrying a stale resourceVersion conflicts.
    let mut fresh = nodes.get("n1").await.expect("get");
    let mut stale = fresh.clone();
    fresh.labels_mut().insert("x".into(), "1".into());
    let updated = nodes.replace("n1", &pp, &fresh).await.expect("replace");
    assert!(
        updated
            .resource_version()
            .and_then(|r| r.parse::<u64>().ok())
            .expect("rv")
            > rv1
    );
    stale.labels_mut().insert("x".into(), "2".into());
    assert_eq!(
        api_code(nodes.replace("n1", &pp, &stale).await.unwrap_err()),
        409
    );

    // ConfigMaps: namespaced, selectors, pagination over a consistent snapshot.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-system");
    for i in 0..5 {
        let app = if i % 2 == 0 { "even" } else { "odd" };
        cms.create(&pp, &configmap(&format!("cm{i}"), app))
            .await
            .expect("create cm");
    }
    Api::<ConfigMap>::namespaced(client.clone(), "other")
        .create(&pp, &configmap("elsewhere", "even"))
        .await
        .expect("create cm in another namespace");
    let even = cms
        .list(&ListParams::default().labels("app=even"))
        .await
        .expect("list");
    assert_eq!(
        even.items.iter().map(|c| c.name_any()).collect::<Vec<_>>(),
        ["cm0", "cm2", "cm4"]
    );
    let one = cms
        .list(&ListParams::default().fields("metadata.name=cm3"))
        .await
        .expect("list");
    assert_eq!(one.items.len(), 1);
    assert_eq!(
        api_code(
            cms.list(&ListParams::default().fields("data.k=x"))
                .await
                .unwrap_err()
        ),
        400
    );
    let all: Api<ConfigMap> = Api::all(client.clone());
    // Besides these six, each of the five namespaces has its kube-root-ca.crt.
    assert_eq!(count(&all).await, 11);

    let first = cms
        .list(&ListParams::default().limit(2))
        .await
        .expect("page 1");
    let list_rv = first.metadata.resource_version.clone();
    assert_eq!(first.items.len(), 2);
    assert_eq!(first.metadata.remaining_item_count, Some(4));
    // A change between pages must not show in later pages of the same list.
    cms.delete("cm4", &DeleteParams::default())
        .await
        .expect("delete");
    let mut names: Vec<String> = first.items.iter().map(|c| c.name_any()).collect();
    let mut token = first.metadata.continue_;
    while let Some(t) = token.filter(|t| !t.is_empty()) {
        let page = cms
            .list(&ListParams::default().limit(2).continue_token(&t))
            .await
            .expect("page");
        assert_eq!(
            page.metadata.resource_version, list_rv,
            "pages share the first page's version"
        );
        names.extend(page.items.iter().map(|c| c.name_any()));
        token = page.metadata.continue_;
    }
    assert_eq!(
        names,
        ["cm0", "cm1", "cm2", "cm3", "cm4", "kube-root-ca.crt"]
    );
    assert_eq!(api_code(cms.get("cm4").await.unwrap_err()), 404);
    assert_eq!(count(&cms).await, 5);

    // Deletion returns the object and is visible to the next read.
    let gone = nodes
        .delete("n1", &DeleteParams::default())
        .await
        .expect("delete node");
    assert!(gone.left().is_some_and(|n| n.name_any() == "n1"));
    assert_eq!(api_code(nodes.get("n1").await.unwrap_err()), 404);
    emu.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_subresource_and_patch_types() {
    let (_dir, emu, client) = start(Duration::from_secs(60)).await;
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .create(&PostParams::default(), &node("n1", &[]))
        .await
        .expect("create");
    let pp = PatchParams::default();

    // A merge patch through nodes/status changes status and metadata, never spec.
    let p = json!({
        "metadata": {"annotations": {"flannel.alpha.coreos.com/public-ip": "192.168.0.1"}},
        "spec": {"unschedulable": true},
        "status": {"conditions": [{"type": "Ready", "status": "False"}]}
    });
    let n = nodes
        .patch_status("n1", &pp, &Patch::Merge(&p))
        .await
        .expect("status patch");
    assert_eq!(
        n.spec.as_ref().and_then(|s| s.unschedulable),
        None,
        "spec untouched"
    );
    assert_eq!(
        n.annotations()
            .get("flannel.alpha.coreos.com/public-ip")
            .map(String::as_str),
        Some("192.168.0.1")
    );
    let conds = n
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    assert_eq!(conds.len(), 1, "merge patch replaces lists");
    assert_eq!(conds[0].status, "False");

    // A patch to the node itself changes spec, not status.
    let p = json!({"spec": {"unschedulable": true}, "status": {"conditions": []}});
    let n = nodes
        .patch("n1", &pp, &Patch::Merge(&p))
        .await
        .expect("main patch");
    assert_eq!(n.spec.as_ref().and_then(|s| s.unschedulable), Some(true));
    assert_eq!(
        n.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(
        n.metadata.generation,
        Some(2),
        "spec change bumps generation"
    );

    // Strategic merge: conditions merge by type (how the agent sets NetworkUnavailable).
    let p = json!({"status": {"conditions": [
        {"type": "NetworkUnavailable", "status": "False", "reason": "TrellisIsUp"}
    ]}});
    let n = nodes
        .patch_status("n1", &pp, &Patch::Strategic(&p))
        .await
        .expect("strategic");
    let types: Vec<String> = n
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.type_)
        .collect();
    assert_eq!(types, ["Ready", "NetworkUnavailable"]);

    // A patch that sets a stale resourceVersion is a conflict; a no-op keeps the version.
    let cur = nodes.get("n1").await.expect("get");
    let p = json!({"metadata": {"resourceVersion": "1", "labels": {"a": "b"}}});
    assert_eq!(
        api_code(nodes.patch("n1", &pp, &Patch::Merge(&p)).await.unwrap_err()),
        409
    );
    let same = nodes
        .patch(
            "n1",
            &pp,
            &Patch::Merge(&json!({"spec": {"unschedulable": true}})),
        )
        .await
        .expect("no-op patch");
    assert_eq!(same.resource_version(), cur.resource_version());
    // podCIDRs may not change once set.
    let p = json!({"spec": {"podCIDR": "10.244.9.0/24", "podCIDRs": ["10.244.9.0/24"]}});
    assert_eq!(
        api_code(nodes.patch("n1", &pp, &Patch::Merge(&p)).await.unwrap_err()),
        422
    );
    emu.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_watch_events_bookmarks_selectors_and_410() {
    let (_dir, emu, client) = start(Duration::from_millis(200)).await;
    let nodes: Api<Node> = Api::all(client.clone());
    let pp = PostParams::default();
    // A first object so that the list's version is not "0" (which means "any" to a watch).
    nodes
        .create(&pp, &node("seed", &[]))
        .await
        .expect("create seed");
    let list = nodes.list(&ListParams::default()).await.expect("list");
    let rv0 = list.metadata.resource_version.expect("list rv");

    let wp = WatchParams::default().labels("pool=a").timeout(30);
    let mut w = nodes.watch(&wp, &rv0).await.expect("watch").boxed();
    nodes
        .create(&pp, &node("a1", &[("pool", "a")]))
        .await
        .expect("create a1");
    nodes
        .create(&pp, &node("b1", &[("pool", "b")]))
        .await
        .expect("create b1");
    merge_patch(
        &nodes,
        "a1",
        json!({"metadata": {"annotations": {"x": "1"}}}),
    )
    .await;
    // b1 entering the selector is ADDED, a1 leaving it is DELETED.
    merge_patch(&nodes, "b1", json!({"metadata": {"labels": {"pool": "a"}}})).await;
    merge_patch(&nodes, "a1", json!({"metadata": {"labels": {"pool": "b"}}})).await;
    nodes
        .delete("b1", &DeleteParams::default())
        .await
        .expect("delete b1");
    let mut seen = Vec::new();
    let mut last_rv = 0u64;
    while seen.len() < 5 {
        let ev = next(&mut w).await.expect("watch event");
        let (kind, n) = match ev {
            WatchEvent::Added(n) => ("ADDED", n),
            WatchEvent::Modified(n) => ("MODIFIED", n),
            WatchEvent::Deleted(n) => ("DELETED", n),
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Error(e) => panic!("unexpected watch error {e:?}"),
        };
        let rv: u64 = n
            .resource_version()
            .and_then(|r| r.parse().ok())
            .expect("rv");
        assert!(rv > last_rv, "events arrive in resourceVersion order");
        last_rv = rv;
        seen.push(format!("{kind} {}", n.name_any()));
    }
    assert_eq!(
        seen,
        [
            "ADDED a1",
            "MODIFIED a1",
            "ADDED b1",
            "DELETED a1",
            "DELETED b1"
        ]
    );

    // Bookmarks arrive on a quiet watch that asked for them, at a version not behind the events.
    let mut got_bookmark = false;
    for _ in 0..5 {
        if let WatchEvent::Bookmark(b) = next(&mut w).await.expect("event") {
            assert!(b.metadata.resource_version.parse::<u64>().expect("rv") >= last_rv);
            got_bookmark = true;
            break;
        }
    }
    assert!(got_bookmark, "a bookmark within the interval");

    // timeoutSeconds ends the stream.
    let started = Instant::now();
    let mut short = nodes
        .watch(
            &WatchParams::default().timeout(1).disable_bookmarks(),
            &last_rv.to_string(),
        )
        .await
        .expect("watch")
        .boxed();
    let end = tokio::time::timeout(STEP, short.next())
        .await
        .expect("ended in time");
    assert!(end.is_none(), "no events, then end of stream");
    assert!(started.elapsed() >= Duration::from_millis(900));

    // Resuming from before a compaction: 200 with one ERROR event carrying 410 Expired.
    emu.faults()
        .await
        .expect("admin")
        .compact()
        .await
        .expect("compact");
    let mut old = nodes
        .watch(&WatchParams::default(), &rv0)
        .await
        .expect("watch")
        .boxed();
    match next(&mut old).await.expect("event") {
        WatchEvent::Error(e) => {
            assert_eq!(e.code, 410);
            assert_eq!(e.reason, "Expired");
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    assert!(tokio::time::timeout(STEP, old.next())
        .await
        .expect("closed")
        .is_none());
    emu.shutdown().await.expect("shutdown");
}

/// Waits for the next watcher event naming `name` (skipping others), returning whether an `Init`
/// (a relist) happened before it.
async fn until_applied<S>(s: &mut S, name: &str) -> bool
where
    S: Stream<Item = Result<watcher::Event<Node>, watcher::Error>> + Unpin,
{
    let mut relisted = false;
    loop {
        match next(s).await {
            Ok(watcher::Event::Init) => relisted = true,
            Ok(watcher::Event::Apply(n) | watcher::Event::InitApply(n)) if n.name_any() == name => {
                return relisted
            }
            Ok(_) => {}
            // Transient errors (a dropped watch) are retried by the watcher itself.
            Err(_) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_watcher_resumes_and_relists() {
    let (_dir, emu, client) = start(Duration::from_secs(60)).await;
    let faults = emu.faults().await.expect("admin client");
    let nodes: Api<Node> = Api::all(client.clone());
    let pp = PostParams::default();
    nodes.create(&pp, &node("n1", &[])).await.expect("create");
    let mut w = watcher(nodes.clone(), watcher::Config::default()).boxed();
    assert!(until_applied(&mut w, "n1").await, "starts with a list");
    loop {
        if let Ok(watcher::Event::InitDone) = next(&mut w).await {
            break;
        }
    }
    nodes.create(&pp, &node("n2", &[])).await.expect("create");
    assert!(!until_applied(&mut w, "n2").await, "live event, no relist");

    // Dropped watches: the watcher resumes from its last version without relisting.
    let deadline = Instant::now() + STEP;
    while faults.state().await.expect("state").open_watches == 0 {
        assert!(
            Instant::now() < deadline,
            "watcher never reopened its watch"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(faults.close_watches().await.expect("close") >= 1);
    nodes.create(&pp, &node("n3", &[])).await.expect("create");
    assert!(!until_applied(&mut w, "n3").await, "resumed, not relisted");

    // Compaction past the watcher's version, then a dropped watch: the resume gets 410 and
    // the watcher relists, still seeing every node.
    Api::<ConfigMap>::namespaced(client.clone(), "default")
        .create(&pp, &configmap("bump", "x"))
        .await
        .expect("advance the version elsewhere");
    faults.compact().await.expect("compact");
    faults.close_watches().await.expect("close");
    assert!(until_applied(&mut w, "n1").await, "410 forces a relist");
    nodes.create(&pp, &node("n4", &[])).await.expect("create");
    assert!(!until_applied(&mut w, "n4").await);
    emu.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_and_authentication() {
    let (_dir, emu, client) = start(Duration::from_secs(60)).await;
    let faults = emu.faults().await.expect("admin client");
    let nodes: Api<Node> = Api::all(client.clone());
    nodes.list(&ListParams::default()).await.expect("healthy");

    faults
        .fail_for(Duration::from_millis(800))
        .await
        .expect("fail");
    assert_eq!(
        api_code(nodes.list(&ListParams::default()).await.unwrap_err()),
        500
    );
    assert!(
        faults
            .state()
            .await
            .expect("admin works during faults")
            .failing_for_ms
            > 0
    );
    tokio::time::sleep(Duration::from_millis(900)).await;
    nodes.list(&ListParams::default()).await.expect("recovered");

    faults
        .delay_for(Duration::from_millis(300), Duration::from_secs(5))
        .await
        .expect("delay");
    let t = Instant::now();
    nodes
        .list(&ListParams::default())
        .await
        .expect("slow but fine");
    assert!(t.elapsed() >= Duration::from_millis(300));
    faults.clear().await.expect("clear");
    let t = Instant::now();
    nodes
        .list(&ListParams::default())
        .await
        .expect("fast again");
    assert!(t.elapsed() < Duration::from_millis(300));

    // Without the bearer token: 401.
    let kc = kube::config::Kubeconfig::read_from(emu.kubeconfig_path()).expect("kubeconfig");
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    cfg.auth_info.token = None;
    let anon: Api<Node> = Api::all(Client::try_from(cfg).expect("client"));
    assert_eq!(
        api_code(anon.list(&ListParams::default()).await.unwrap_err()),
        401
    );
    emu.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_recorder_and_core_events() {
    use k8s_openapi::api::core::v1::{Event as CoreEvent, ObjectReference};
    use k8s_openapi::api::events::v1::Event as EventsV1;
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};

    let (_dir, emu, client) = start(Duration::from_secs(60)).await;
    let nodes: Api<Node> = Api::all(client.clone());
    let n = nodes
        .create(&PostParams::default(), &node("n1", &[]))
        .await
        .expect("create");
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "trellis-agent".into(),
            instance: Some("n1".into()),
        },
    );
    let reference = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some("n1".into()),
        uid: n.uid(),
        ..Default::default()
    };
    let ev = Event {
        type_: EventType::Normal,
        reason: "SubnetAcquired".into(),
        note: Some("10.244.1.0/24".into()),
        action: "Advertise".into(),
        secondary: None,
    };
    recorder
        .publish(&ev, &reference)
        .await
        .expect("first publish creates");
    recorder
        .publish(&ev, &reference)
        .await
        .expect("second publish patches the series");
    let events: Api<EventsV1> = Api::namespaced(client.clone(), "default");
    let list = events
        .list(&ListParams::default())
        .await
        .expect("list events");
    assert_eq!(list.items.len(), 1);
    let e = &list.items[0];
    assert_eq!(e.reason.as_deref(), Some("SubnetAcquired"));
    assert_eq!(e.series.as_ref().map(|s| s.count), Some(2));
    assert_eq!(
        e.regarding.as_ref().and_then(|r| r.name.as_deref()),
        Some("n1")
    );

    let core: Api<CoreEvent> = Api::namespaced(client.clone(), "default");
    let ce: CoreEvent = serde_json::from_value(json!({
        "metadata": {"generateName": "n1."},
        "involvedObject": {"kind": "Node", "name": "n1"},
        "reason": "Starting", "type": "Normal", "source": {"component": "trellis-agent"}
    }))
    .expect("valid event");
    let created = core
        .create(&PostParams::default(), &ce)
        .await
        .expect("create core event");
    assert!(created.name_any().starts_with("n1."));
    let by_node = core
        .list(&ListParams::default().fields("involvedObject.name=n1,source=trellis-agent"))
        .await
        .expect("list by field");
    assert_eq!(by_node.items.len(), 1);
    emu.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_list_watcher_gets_initial_events_end_bookmark() {
    let (_dir, emu, client) = start(Duration::from_secs(60)).await;
    let nodes: Api<Node> = Api::all(client.clone());
    for name in ["s1", "s2"] {
        nodes
            .create(&PostParams::default(), &node(name, &[]))
            .await
            .expect("create");
    }
    // sendInitialEvents=true: ADDED for the current state, then a bookmark annotated
    // k8s.io/initial-events-end, which is what ends the watcher's initial phase.
    let cfg = watcher::Config::default().streaming_lists();
    let mut w = watcher(nodes.clone(), cfg).boxed();
    let mut initial = Vec::new();
    loop {
        match next(&mut w).await {
            Ok(watcher::Event::InitApply(n)) => initial.push(n.name_any()),
            Ok(watcher::Event::InitDone) => break,
            Ok(_) => {}
            Err(e) => panic!("streaming list failed: {e}"),
        }
    }
    assert_eq!(initial, ["s1", "s2"]);
    nodes
        .create(&PostParams::default(), &node("s3", &[]))
        .await
        .expect("create");
    assert!(!until_applied(&mut w, "s3").await);
    emu.shutdown().await.expect("shutdown");

    // The WatchList feature gate off (Kubernetes 1.33's default): 422 Invalid for the
    // streaming list, plain watches and lists served as ever.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = EmulatorConfig::new(dir.path());
    cfg.watch_list = trellis_e2e::apiserver::WatchList::Refused;
    let emu = Emulator::start(cfg).await.expect("emulator starts");
    let nodes: Api<Node> = Api::all(emu.client().await.expect("client"));
    let cfg = watcher::Config::default().streaming_lists();
    let mut w = watcher(nodes.clone(), cfg).boxed();
    match next(&mut w).await {
        Err(watcher::Error::WatchStartFailed(kube::Error::Api(s))) => {
            assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"), "{s:?}");
            assert!(s.message.contains("WatchList"), "{}", s.message);
        }
        other => panic!("streaming list not refused: {other:?}"),
    }
    let mut w = watcher(nodes.clone(), watcher::Config::default()).boxed();
    assert!(matches!(next(&mut w).await, Ok(watcher::Event::Init)));
    assert!(matches!(next(&mut w).await, Ok(watcher::Event::InitDone)));
    emu.shutdown().await.expect("shutdown");
}

fn netpol(name: &str, app: &str) -> NetworkPolicy {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"podSelector": {"matchLabels": {"app": app}},
                 "ingress": [{"from": [{"namespaceSelector":
                                          {"matchLabels": {"kubernetes.io/metadata.name": "np-b"}}}],
                              "ports": [{"port": "http"}, {"port": 53, "protocol": "UDP"}]}]}
    }))
    .expect("valid network policy")
}

/// The next event of a NetworkPolicy watcher that is not a transient error.
async fn next_np_event<S>(s: &mut S) -> watcher::Event<NetworkPolicy>
where
    S: Stream<Item = Result<watcher::Event<NetworkPolicy>, watcher::Error>> + Unpin,
{
    loop {
        // The watcher retries errors (a dropped watch) itself.
        if let Ok(ev) = next(s).await {
            return ev;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_policies_crud_watch_and_namespace_labels() {
    let (_dir, emu, client) = start(Duration::from_secs(60)).await;
    let pp = PostParams::default();
    let patch = PatchParams::default();

    // Namespaces carry kubernetes.io/metadata.name (what namespaceSelectors match), and keep it
    // whatever a write says.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns_body = json!({"metadata": {"name": "np-a", "labels": {"team": "a"}}});
    let ns = namespaces
        .create(&pp, &serde_json::from_value(ns_body).expect("namespace"))
        .await
        .expect("create namespace");
    let name_label = |ns: &Namespace| ns.labels().get("kubernetes.io/metadata.name").cloned();
    assert_eq!(name_label(&ns).as_deref(), Some("np-a"));
    let cleared = json!({"metadata": {"labels": null}});
    let ns = namespaces
        .patch("np-a", &patch, &Patch::Merge(&cleared))
        .await
        .expect("clear labels");
    assert_eq!(name_label(&ns).as_deref(), Some("np-a"));
    assert!(!ns.labels().contains_key("team"));

    // Every namespace's policies, through a streaming list as the agent's watcher does it.
    let all: Api<NetworkPolicy> = Api::all(client.clone());
    let cfg = watcher::Config::default().streaming_lists();
    let mut w = watcher(all.clone(), cfg).boxed();
    loop {
        if let watcher::Event::InitDone = next_np_event(&mut w).await {
            break;
        }
    }

    let nps: Api<NetworkPolicy> = Api::namespaced(client.clone(), "np-a");
    let np = nps
        .create(&pp, &netpol("allow-web", "web"))
        .await
        .expect("create");
    assert_eq!(np.metadata.generation, Some(1));
    let spec = np.spec.clone().expect("spec");
    assert_eq!(spec.policy_types, Some(vec!["Ingress".to_string()]));
    let protocols: Vec<Option<String>> = spec.ingress.unwrap_or_default()[0]
        .ports
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|p| p.protocol)
        .collect();
    assert_eq!(
        protocols,
        [Some("TCP".to_string()), Some("UDP".to_string())],
        "an unset protocol is TCP"
    );
    match next_np_event(&mut w).await {
        watcher::Event::Apply(p) => assert_eq!(p.name_any(), "allow-web"),
        other => panic!("expected the new policy, got {other:?}"),
    }

    // Lists across namespaces and by field.
    let np_b = Api::<NetworkPolicy>::namespaced(client.clone(), "np-b");
    np_b.create(&pp, &netpol("other", "db"))
        .await
        .expect("create in np-b");
    let _ = next_np_event(&mut w).await;
    let names = |l: kube::core::ObjectList<NetworkPolicy>| -> Vec<String> {
        l.items.iter().map(ResourceExt::name_any).collect()
    };
    let listed = all.list(&ListParams::default()).await.expect("list all");
    assert_eq!(names(listed), ["allow-web", "other"]);
    let by_ns = ListParams::default().fields("metadata.namespace=np-b");
    assert_eq!(
        names(all.list(&by_ns).await.expect("by namespace")),
        ["other"]
    );
    let by_name = ListParams::default().fields("metadata.name=allow-web");
    assert_eq!(
        names(all.list(&by_name).await.expect("by name")),
        ["allow-web"]
    );

    // A spec patch bumps the generation and reaches the watcher.
    let egress = json!({"spec": {"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}],
                                 "policyTypes": ["Ingress", "Egress"]}});
    let np = nps
        .patch("allow-web", &patch, &Patch::Merge(&egress))
        .await
        .expect("patch");
    assert_eq!(np.metadata.generation, Some(2));
    match next_np_event(&mut w).await {
        watcher::Event::Apply(p) => assert_eq!(p.metadata.generation, Some(2)),
        other => panic!("expected the patched policy, got {other:?}"),
    }
    // Malformed policies are refused whole.
    let bad = json!({"spec": {"ingress": [{"from": [{}]}]}});
    let e = nps
        .patch("allow-web", &patch, &Patch::Merge(&bad))
        .await
        .unwrap_err();
    assert_eq!(api_code(e), 422);

    nps.delete("allow-web", &DeleteParams::default())
        .await
        .expect("delete");
    match next_np_event(&mut w).await {
        watcher::Event::Delete(p) => assert_eq!(p.name_any(), "allow-web"),
        other => panic!("expected the deletion, got {other:?}"),
    }
    // Deleting a Namespace deletes its policies (after its Terminating period).
    namespaces
        .delete("np-b", &DeleteParams::default())
        .await
        .expect("delete namespace");
    match next_np_event(&mut w).await {
        watcher::Event::Delete(p) => assert_eq!(p.namespace().as_deref(), Some("np-b")),
        other => panic!("expected the namespace's policy to go, got {other:?}"),
    }
    emu.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_carry_what_network_policies_select_on() {
    let (_dir, emu, client) = start(Duration::from_secs(60)).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "np-a");
    let patch = PatchParams::default();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web-0", "labels": {"app": "web"}},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i", "ports": [
            {"name": "http", "containerPort": 8080},
            {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]}
    }))
    .expect("valid pod");
    let pod = pods
        .create(&PostParams::default(), &pod)
        .await
        .expect("create");
    let spec = pod.spec.clone().expect("spec");
    assert_eq!(spec.node_name.as_deref(), Some("n1"));
    let ports: Vec<(Option<String>, i32, Option<String>)> = spec.containers[0]
        .ports
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|p| (p.name, p.container_port, p.protocol))
        .collect();
    assert_eq!(
        ports,
        [
            (Some("http".into()), 8080, Some("TCP".into())),
            (Some("dns".into()), 53, Some("UDP".into())),
        ],
        "an unset protocol is TCP"
    );

    // What a kubelet reports, through pods/status.
    let status = json!({"status": {"phase": "Running", "podIP": "10.244.1.5",
                                   "podIPs": [{"ip": "10.244.1.5"}, {"ip": "fd00:10:244:1::5"}]}});
    let pod = pods
        .patch_status("web-0", &patch, &Patch::Merge(&status))
        .await
        .expect("status");
    let st = pod.status.expect("status");
    assert_eq!(st.phase.as_deref(), Some("Running"));
    assert_eq!(st.pod_ip.as_deref(), Some("10.244.1.5"));
    assert_eq!(st.pod_ips.map(|ips| ips.len()), Some(2));

    // A relabelled Pod leaves a watch selecting on its label, and comes back with it.
    let mut w = watcher(pods.clone(), watcher::Config::default().labels("app=web")).boxed();
    let mut initial = Vec::new();
    loop {
        match next(&mut w).await {
            Ok(watcher::Event::InitApply(p)) => initial.push(p.name_any()),
            Ok(watcher::Event::InitDone) => break,
            _ => {}
        }
    }
    assert_eq!(initial, ["web-0"]);
    let relabel = |app: &str| json!({"metadata": {"labels": {"app": app}}});
    pods.patch("web-0", &patch, &Patch::Merge(&relabel("db")))
        .await
        .expect("relabel");
    loop {
        match next(&mut w).await {
            Ok(watcher::Event::Delete(p)) => break assert_eq!(p.name_any(), "web-0"),
            Ok(watcher::Event::Apply(p)) => panic!("still selected: {:?}", p.labels()),
            _ => {}
        }
    }
    pods.patch("web-0", &patch, &Patch::Merge(&relabel("web")))
        .await
        .expect("relabel");
    loop {
        if let Ok(watcher::Event::Apply(p)) = next(&mut w).await {
            break assert_eq!(p.labels().get("app").map(String::as_str), Some("web"));
        }
    }
    emu.shutdown().await.expect("shutdown");
}

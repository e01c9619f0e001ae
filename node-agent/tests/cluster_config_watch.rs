//! The net-conf.json ConfigMap watcher and Node Events against the API emulator.

mod cluster_support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use cluster_support::*;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::watch;
use trellis_agent::cluster::{BackoffPolicy, ConfigSource, ConfigWatcher, NodeEvents};
use trellis_agent::config::{BackendType, NetConfig};

const WAIT: Duration = Duration::from_secs(15);
const NS: &str = "kube-flannel";
const NAME: &str = "kube-flannel-cfg";

fn net_conf(backend: &str) -> String {
    format!(r#"{{"Network": "10.244.0.0/16", "Backend": {{"Type": "{backend}"}}}}"#)
}

async fn put_config(cms: &Api<ConfigMap>, text: &str) {
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": NAME, "namespace": NS},
        "data": {"net-conf.json": text, "cni-conf.json": "{}"}
    }))
    .unwrap();
    if cms.get_opt(NAME).await.unwrap().is_some() {
        let patch = json!({"data": {"net-conf.json": text}});
        cms.patch(NAME, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    } else {
        cms.create(&PostParams::default(), &cm).await.unwrap();
    }
}

/// Puts a host-gw config and waits for the watcher to emit it.
async fn switch_to_host_gw(cms: &Api<ConfigMap>, rx: &mut watch::Receiver<Option<Arc<NetConfig>>>) {
    put_config(cms, &net_conf("host-gw")).await;
    tokio::time::timeout(WAIT, rx.changed())
        .await
        .expect("the new config in time")
        .unwrap();
    assert_eq!(
        rx.borrow_and_update().as_ref().unwrap().backend.kind(),
        BackendType::HostGw
    );
}

async fn node_events(c: &Cluster, reason: &str) -> Vec<Event> {
    let events: Api<Event> = Api::namespaced(c.client.clone(), "default");
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(LOCAL)
                && e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("Node")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_is_not_emitted_and_the_previous_stays() {
    let c = cluster().await;
    create_local_node(&c.nodes, Some("10.244.1.0/24")).await;
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), NS);
    let events = NodeEvents::new(c.client.clone(), LOCAL, None);
    let w = ConfigWatcher::new(c.client.clone(), ConfigSource::new(NS, NAME), Some(events))
        .with_backoff(BackoffPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(500),
        });
    let mut rx = w.subscribe();
    let stats = w.stats();
    let task = tokio::spawn(w.run());

    // Not there yet: the list completes without it, and nothing is emitted.
    eventually(WAIT, "the first list", || {
        stats.lists.load(Ordering::Relaxed) >= 1
    })
    .await;
    assert!(rx.borrow().is_none());

    put_config(&cms, &net_conf("vxlan")).await;
    let first = tokio::time::timeout(WAIT, rx.wait_for(Option::is_some))
        .await
        .expect("first config")
        .unwrap()
        .clone()
        .unwrap();
    assert_eq!(first.backend.kind(), BackendType::Vxlan);
    rx.mark_unchanged();

    // An unknown backend: rejected, counted, reported on the Node, not emitted.
    put_config(&cms, &net_conf("ipsec")).await;
    eventually(WAIT, "rejection counted", || {
        stats.rejected.load(Ordering::Relaxed) == 1
    })
    .await;
    eventually_async(WAIT, "warning Event on the Node", || async {
        node_events(&c, "InvalidNetConfig").await.iter().any(|e| {
            e.type_.as_deref() == Some("Warning")
                && e.note.as_deref().is_some_and(|n| {
                    n.contains("Backend.Type") && n.contains("keeping the running configuration")
                })
        })
    })
    .await;
    // Broken JSON too.
    put_config(&cms, "{\"Network\": ").await;
    eventually(WAIT, "second rejection", || {
        stats.rejected.load(Ordering::Relaxed) == 2
    })
    .await;
    assert!(
        !rx.has_changed().unwrap(),
        "nothing emitted for invalid configs"
    );
    assert_eq!(rx.borrow().as_deref(), Some(&*first));

    // A relist (410 after compaction) re-delivers the bad content: not reported again. A
    // write the watcher does not see moves the version past its own, so that the compaction
    // leaves it behind the history; the relist is confirmed, not slept on.
    let lists = stats.lists.load(Ordering::Relaxed);
    let other: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
    let unrelated: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "relist-probe"}, "data": {"k": "v"}
    }))
    .unwrap();
    other
        .create(&PostParams::default(), &unrelated)
        .await
        .unwrap();
    let faults = c.emu.faults().await.unwrap();
    faults.compact().await.unwrap();
    faults.close_watches().await.unwrap();
    eventually(WAIT, "relisted after the 410", || {
        stats.lists.load(Ordering::Relaxed) > lists
    })
    .await;
    assert_eq!(stats.rejected.load(Ordering::Relaxed), 2);

    // Deleting the ConfigMap keeps the running config (once the watcher saw the delete).
    let seen = stats.events.load(Ordering::Relaxed);
    cms.delete(NAME, &DeleteParams::default()).await.unwrap();
    eventually(WAIT, "the delete seen", || {
        stats.events.load(Ordering::Relaxed) > seen
    })
    .await;
    assert!(!rx.has_changed().unwrap());

    // A valid new config is emitted.
    switch_to_host_gw(&cms, &mut rx).await;
    assert_eq!(stats.applied.load(Ordering::Relaxed), 2);

    // Touching the ConfigMap without changing the config emits nothing (once the watcher saw
    // the change).
    let seen = stats.events.load(Ordering::Relaxed);
    let patch = json!({"metadata": {"labels": {"touched": "yes"}}});
    cms.patch(NAME, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    eventually(WAIT, "the label change seen", || {
        stats.events.load(Ordering::Relaxed) > seen
    })
    .await;
    assert!(!rx.has_changed().unwrap());
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_survives_an_api_outage() {
    let c = cluster().await;
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), NS);
    put_config(&cms, &net_conf("vxlan")).await;
    let w = ConfigWatcher::new(c.client.clone(), ConfigSource::new(NS, NAME), None).with_backoff(
        BackoffPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(300),
        },
    );
    let mut rx = w.subscribe();
    let stats = w.stats();
    let task = tokio::spawn(w.run());
    tokio::time::timeout(WAIT, rx.wait_for(Option::is_some))
        .await
        .unwrap()
        .unwrap();
    rx.mark_unchanged();
    let errors_before = stats.errors.load(Ordering::Relaxed);
    let faults = c.emu.faults().await.unwrap();
    faults.fail_for(Duration::from_secs(2)).await.unwrap();
    faults.close_watches().await.unwrap();
    // The watcher met the outage (its retries failed), and kept the config through it.
    eventually_async(WAIT, "the watcher sees the outage", || async {
        stats.errors.load(Ordering::Relaxed) > errors_before
    })
    .await;
    assert!(!rx.has_changed().unwrap());
    assert!(rx.borrow().is_some(), "config kept during the outage");
    eventually_async(WAIT, "API back", || async { cms.get(NAME).await.is_ok() }).await;
    switch_to_host_gw(&cms, &mut rx).await;
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_land_on_the_node() {
    let c = cluster().await;
    create_local_node(&c.nodes, Some("10.244.1.0/24")).await;
    let uid = c.nodes.get(LOCAL).await.unwrap().metadata.uid;
    let events = NodeEvents::new(c.client.clone(), LOCAL, uid.as_deref());
    let switched = || {
        events.backend_switched(
            BackendType::Vxlan,
            BackendType::HostGw,
            Duration::from_millis(812),
        )
    };
    assert!(switched().await);
    let found = node_events(&c, "BackendSwitched").await;
    assert_eq!(found.len(), 1);
    let e = &found[0];
    assert_eq!(e.type_.as_deref(), Some("Normal"));
    assert_eq!(
        e.note.as_deref(),
        Some("backend switched from vxlan to host-gw in 812 ms")
    );
    assert_eq!(e.regarding.as_ref().unwrap().uid, uid);
    assert_eq!(e.reporting_controller.as_deref(), Some("trellis-agent"));

    // Each switch is its own Event (a series would keep only the first note).
    assert!(switched().await);
    let found = node_events(&c, "BackendSwitched").await;
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found.iter().all(|e| e.series.is_none()), "{found:?}");

    // An API that fails only costs the event, never the caller.
    let faults = c.emu.faults().await.unwrap();
    faults.fail_for(Duration::from_secs(2)).await.unwrap();
    assert!(!events.network_ready(BackendType::Vxlan).await);
}

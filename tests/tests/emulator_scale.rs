//! Scale: 5000 Nodes of ~10 KB (the agent benchmark's shape) with watches open. Checks that
//! list, the runtime watcher's initial sync and event fan-out stay fast, and prints the figures.

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::watcher;
use kube::ResourceExt;
use trellis_e2e::apiserver::Emulator;
use trellis_e2e::fixtures::{big_node_json, proc_status_kib};

const NODES: usize = 5000;

/// A node shaped like a real one: labels, flannel annotations, conditions, addresses, images.
fn big_node(i: usize) -> Node {
    let i = u32::try_from(i).expect("node index");
    let (a, b) = (i / 250, i % 250);
    serde_json::from_value(big_node_json(i, &format!("10.{a}.{b}.1"))).expect("valid node")
}

fn rss_mib() -> u64 {
    proc_status_kib("VmRSS:") / 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_big_nodes() {
    let (_dir, emu) = Emulator::start_in_temp_dir().await;
    let client = emu.client().await.expect("client");
    let nodes: Api<Node> = Api::all(client.clone());
    let size = serde_json::to_vec(&big_node(0)).expect("json").len();
    assert!(
        (8_000..14_000).contains(&size),
        "node is ~10 KB, got {size}"
    );

    // Two raw watches open during the load, to exercise fan-out.
    let mut watches = Vec::new();
    for _ in 0..2 {
        watches.push(
            nodes
                .watch(&WatchParams::default().disable_bookmarks(), "0")
                .await
                .expect("watch")
                .boxed(),
        );
    }
    let t = Instant::now();
    futures::stream::iter(0..NODES)
        .map(|i| {
            let nodes = nodes.clone();
            async move {
                nodes
                    .create(&PostParams::default(), &big_node(i))
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await
        .expect("create all nodes");
    let create = t.elapsed();
    for w in &mut watches {
        let mut n = 0;
        while n < NODES {
            match tokio::time::timeout(Duration::from_secs(30), w.next()).await {
                Ok(Some(Ok(WatchEvent::Added(_)))) => n += 1,
                other => panic!("watch broke after {n} events: {other:?}"),
            }
        }
    }

    let t = Instant::now();
    let all = nodes.list(&ListParams::default()).await.expect("list");
    let list_full = t.elapsed();
    assert_eq!(all.items.len(), NODES);

    let t = Instant::now();
    let mut w = watcher(nodes.clone(), watcher::Config::default()).boxed();
    let mut synced = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(60), w.next()).await {
            Ok(Some(Ok(watcher::Event::InitApply(_)))) => synced += 1,
            Ok(Some(Ok(watcher::Event::InitDone))) => break,
            Ok(Some(Ok(_))) => {}
            other => panic!("watcher failed during its initial list: {other:?}"),
        }
    }
    let watcher_sync = t.elapsed();
    assert_eq!(synced, NODES);

    // One more node while 5000 exist: time until every watch has it.
    let mut lat = Vec::new();
    for i in 0..20 {
        let t = Instant::now();
        nodes
            .create(&PostParams::default(), &big_node(NODES + i))
            .await
            .expect("create");
        for s in &mut watches {
            match tokio::time::timeout(Duration::from_secs(10), s.next()).await {
                Ok(Some(Ok(WatchEvent::Added(n)))) => {
                    assert_eq!(n.name_any(), format!("node-{:05}", NODES + i))
                }
                other => panic!("no event: {other:?}"),
            }
        }
        loop {
            match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
                Ok(Some(Ok(watcher::Event::Apply(n))))
                    if n.name_any() == format!("node-{:05}", NODES + i) =>
                {
                    break
                }
                Ok(Some(Ok(_))) => {}
                other => panic!("watcher: {other:?}"),
            }
        }
        lat.push(t.elapsed());
    }
    lat.sort();
    let p50 = lat[lat.len() / 2];
    eprintln!(
        "scale: {NODES} nodes x {size} B: create {:.1} s ({:.0}/s, 16 in flight), full list {} ms, \
         watcher initial sync {} ms, create->3 watches p50 {} ms max {} ms, process RSS {} MiB",
        create.as_secs_f64(),
        NODES as f64 / create.as_secs_f64(),
        list_full.as_millis(),
        watcher_sync.as_millis(),
        p50.as_millis(),
        lat[lat.len() - 1].as_millis(),
        rss_mib()
    );
    // Generous bounds for an unoptimized build on 2 shared cores; the point is "no cliff".
    assert!(
        list_full < Duration::from_secs(10),
        "list took {list_full:?}"
    );
    assert!(
        watcher_sync < Duration::from_secs(20),
        "watcher sync took {watcher_sync:?}"
    );
    assert!(p50 < Duration::from_millis(500), "fan-out p50 {p50:?}");
    let t = Instant::now();
    emu.shutdown().await.expect("shutdown");
    eprintln!(
        "scale: shutdown with state write {} ms",
        t.elapsed().as_millis()
    );
}

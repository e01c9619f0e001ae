//! The Node watcher against the API emulator, over HTTPS with the real kube client.

mod cluster_support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use cluster_support::*;
use trellis_agent::annotations::DEFAULT_PREFIX;
use trellis_agent::cluster::{BackoffPolicy, NodeWatchOptions, NodeWatcher, SharedView};
use trellis_agent::config::NetConfig;
use trellis_e2e::apiserver::WatchList;

const WAIT: Duration = Duration::from_secs(15);

/// Paged lists, two Nodes a page: every list here takes several pages.
fn fast_options() -> NodeWatchOptions {
    NodeWatchOptions {
        streaming_list: false,
        streamed_list_idle_limit: Duration::from_secs(30),
        page_size: 2,
        watch_timeout_secs: 290,
        backoff: BackoffPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(500),
        },
    }
}

fn config() -> NetConfig {
    NetConfig::parse(r#"{"Network": "10.0.0.0/8", "Backend": {"Type": "vxlan"}}"#)
        .unwrap()
        .config
}

fn programmed(view: &SharedView) -> Vec<String> {
    let v = view.lock().unwrap();
    let cfg = config();
    let r = v.resolve(&cfg);
    r.peers.iter().map(|p| p.name.to_string()).collect()
}

struct Running {
    task: tokio::task::JoinHandle<()>,
    status: tokio::sync::watch::Receiver<trellis_agent::cluster::ViewStatus>,
    own: tokio::sync::watch::Receiver<Option<trellis_agent::view::NodeInfo>>,
    stats: std::sync::Arc<trellis_agent::cluster::NodeWatchStats>,
}

fn start(c: &Cluster, view: &SharedView) -> Running {
    start_with(c, view, fast_options())
}

fn start_with(c: &Cluster, view: &SharedView, opts: NodeWatchOptions) -> Running {
    let w = NodeWatcher::new(c.client.clone(), view.clone(), opts);
    let status = w.status();
    let own = w.own_node();
    let stats = w.stats();
    Running {
        task: tokio::spawn(w.run()),
        status,
        own,
        stats,
    }
}

async fn synced(r: &mut Running) {
    tokio::time::timeout(WAIT, r.status.wait_for(|s| s.synced))
        .await
        .expect("first sync in time")
        .expect("watcher alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_the_view_from_three_nodes_and_follows_changes() {
    let c = cluster().await;
    create_local_node(&c.nodes, Some("10.244.1.0/24")).await;
    for i in 2..=4 {
        create_node(&c.nodes, i, true).await;
    }
    create_node(&c.nodes, 9, false).await; // a kubelet-only node: known, not a peer
    let view = local_view();
    let mut r = start(&c, &view);
    synced(&mut r).await;
    assert_eq!(programmed(&view), ["node-2", "node-3", "node-4"]);
    assert_eq!(
        view.lock().unwrap().node_count(),
        4,
        "local is not in the view"
    );
    let gen = r.status.borrow().generation;
    assert_eq!(gen, 1, "the whole first list is one change");
    {
        let v = view.lock().unwrap();
        let cfg = config();
        let res = v.resolve(&cfg);
        let p = res.peers.iter().find(|p| &*p.name == "node-3").unwrap();
        assert_eq!(p.subnet_v4, Some("10.244.3.0/24".parse().unwrap()));
        assert_eq!(p.public_ip_v4, Some("172.16.0.3".parse().unwrap()));
        assert!(p.backend.to_string().contains(&vtep_mac(3)));
    }
    eventually(WAIT, "own node seen", || {
        r.own
            .borrow()
            .as_ref()
            .is_some_and(|n| n.pod_cidrs == ["10.244.1.0/24"])
    })
    .await;

    // Heartbeats and annotations planning does not read are seen but change nothing.
    let seen = r.stats.events.load(Ordering::Relaxed);
    heartbeat(&c.nodes, "node-2", "2024-01-01T00:00:10Z").await;
    annotate(&c.nodes, "node-3", "example.com/owner", Some("team-a")).await;
    eventually(WAIT, "both events received", || {
        r.stats.events.load(Ordering::Relaxed) >= seen + 2
    })
    .await;
    assert_eq!(r.status.borrow().generation, gen);
    assert!(!r.status.has_changed().unwrap());

    // A relevant change is one signal and shows in the view.
    let key = format!("{DEFAULT_PREFIX}public-ip");
    annotate(&c.nodes, "node-3", &key, Some("172.16.0.33")).await;
    tokio::time::timeout(WAIT, r.status.wait_for(|s| s.generation > gen))
        .await
        .expect("change signalled")
        .unwrap();
    {
        let v = view.lock().unwrap();
        let cfg = config();
        let res = v.resolve(&cfg);
        let p = res.peers.iter().find(|p| &*p.name == "node-3").unwrap();
        assert_eq!(p.public_ip_v4, Some("172.16.0.33".parse().unwrap()));
    }

    // Deleted while watching.
    delete_node(&c.nodes, "node-4").await;
    eventually(WAIT, "node-4 gone", || {
        programmed(&view) == ["node-2", "node-3"]
    })
    .await;
    // Our own Node's annotation changes are forwarded, the view ignores them.
    annotate(
        &c.nodes,
        LOCAL,
        &format!("{DEFAULT_PREFIX}public-ip-overwrite"),
        Some("203.0.113.9"),
    )
    .await;
    eventually(WAIT, "own node update", || {
        r.own.borrow().as_ref().is_some_and(|n| {
            n.annotations
                .get(&format!("{DEFAULT_PREFIX}public-ip-overwrite"))
                == Some(&"203.0.113.9".to_string())
        })
    })
    .await;
    r.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_deleted_while_down_disappears_on_restart() {
    let c = cluster().await;
    for i in 2..=4 {
        create_node(&c.nodes, i, true).await;
    }
    let view = local_view();
    let mut r = start(&c, &view);
    synced(&mut r).await;
    assert_eq!(programmed(&view), ["node-2", "node-3", "node-4"]);
    r.task.abort();
    let _ = r.task.await;

    // While the agent is down: one node leaves, one joins.
    delete_node(&c.nodes, "node-3").await;
    create_node(&c.nodes, 5, true).await;
    assert_eq!(
        programmed(&view),
        ["node-2", "node-3", "node-4"],
        "nothing watches"
    );

    let mut r = start(&c, &view);
    synced(&mut r).await;
    assert_eq!(programmed(&view), ["node-2", "node-4", "node-5"]);
    assert!(r.status.borrow().generation >= 1);
    r.task.abort();
}

/// The same with each list streamed (`sendInitialEvents`).
fn streaming_options() -> NodeWatchOptions {
    NodeWatchOptions {
        streaming_list: true,
        ..fast_options()
    }
}

/// (verb, count) of the Node requests the emulator recorded.
async fn node_requests(c: &Cluster) -> Vec<(String, u64)> {
    let faults = c.emu.faults().await.unwrap();
    let mut out: Vec<(String, u64)> = Vec::new();
    for r in faults.audit().await.unwrap() {
        if r.resource == "nodes" && r.subresource.is_empty() {
            match out.iter_mut().find(|(v, _)| *v == r.verb) {
                Some((_, n)) => *n += r.count,
                None => out.push((r.verb, r.count)),
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_the_list_and_pages_where_the_apiserver_does_not_stream() {
    for watch_list in [WatchList::Served, WatchList::Refused, WatchList::Ignored] {
        let c = cluster_with(|cfg| {
            cfg.audit = true;
            cfg.watch_list = watch_list;
        })
        .await;
        for i in 2..=6 {
            create_node(&c.nodes, i, true).await;
        }
        let view = local_view();
        let opts = NodeWatchOptions {
            streamed_list_idle_limit: Duration::from_millis(700),
            ..streaming_options()
        };
        let mut r = start_with(&c, &view, opts);
        synced(&mut r).await;
        assert_eq!(
            programmed(&view),
            ["node-2", "node-3", "node-4", "node-5", "node-6"]
        );
        assert_eq!(
            r.stats.errors.load(Ordering::Relaxed),
            0,
            "a refusal is no error"
        );
        // Changes after the first list flow on either way.
        create_node(&c.nodes, 7, true).await;
        eventually(WAIT, "node-7", || programmed(&view).len() == 6).await;
        let requests = node_requests(&c).await;
        if watch_list == WatchList::Served {
            // One streamed list, no page.
            assert!(
                !requests.iter().any(|(v, _)| v == "list"),
                "listed although the API streams: {requests:?}"
            );
        } else {
            // Refused (422) or never ended, then 5 Nodes in pages of 2.
            assert!(
                requests.contains(&("list".to_string(), 3)),
                "no paged list after {watch_list:?}: {requests:?}"
            );
        }
        assert!(requests.iter().any(|(v, _)| v == "watch"), "{requests:?}");
        r.task.abort();
    }
}

/// The planner holds the view while it plans; the list goes on meanwhile and the Nodes it
/// brought are in the view once the planner lets go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_planner_does_not_stall_the_list() {
    for opts in [fast_options(), streaming_options()] {
        let c = cluster().await;
        for i in 2..=6 {
            create_node(&c.nodes, i, true).await;
        }
        let view = local_view();
        // `new` locks the view itself: before the planner takes it.
        let w = NodeWatcher::new(c.client.clone(), view.clone(), opts);
        let (status, own, stats) = (w.status(), w.own_node(), w.stats());
        // This thread holds the view as a planner does mid-plan; the watcher runs on the
        // runtime's workers.
        let task = {
            let planner = view.lock().unwrap();
            let task = tokio::spawn(w.run());
            let t0 = std::time::Instant::now();
            while stats.events.load(Ordering::Relaxed) < 5 && t0.elapsed() < WAIT {
                std::thread::sleep(Duration::from_millis(10));
            }
            assert_eq!(
                stats.events.load(Ordering::Relaxed),
                5,
                "the list stalled behind the planner"
            );
            assert_eq!(planner.node_count(), 0, "applied under the planner's lock");
            assert!(!status.borrow().synced);
            task
        };
        let mut r = Running {
            task,
            status,
            own,
            stats,
        };
        synced(&mut r).await;
        assert_eq!(
            programmed(&view),
            ["node-2", "node-3", "node-4", "node-5", "node-6"]
        );
        r.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_never_clear_the_view_and_it_converges_after() {
    faults_scenario(fast_options()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_never_clear_a_streamed_view_and_it_converges_after() {
    faults_scenario(streaming_options()).await;
}

async fn faults_scenario(base: NodeWatchOptions) {
    let c = cluster().await;
    let faults = c.emu.faults().await.unwrap();
    for i in 2..=4 {
        create_node(&c.nodes, i, true).await;
    }
    let view = local_view();
    // A fixed retry delay makes the "deleted while cut off" window below deterministic.
    let opts = NodeWatchOptions {
        backoff: BackoffPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(1),
        },
        ..base
    };
    let mut r = start_with(&c, &view, opts);
    synced(&mut r).await;
    let all = 2..=9;

    // 1. Every watch closed: the watcher resumes from its version, no relist needed.
    let relists = r.stats.relists.load(Ordering::Relaxed);
    // After a paged list the watch opens a moment after the sync.
    eventually_async(WAIT, "the watch open", || async {
        faults.state().await.is_ok_and(|s| s.open_watches >= 1)
    })
    .await;
    assert!(faults.close_watches().await.unwrap() >= 1);
    create_node(&c.nodes, 5, true).await;
    eventually(WAIT, "node-5 after resume", || {
        view_names(&view, all.clone()).contains(&"node-5".to_string())
    })
    .await;
    assert_eq!(
        r.stats.relists.load(Ordering::Relaxed),
        relists,
        "resumed, not relisted"
    );

    // 2. A node deleted while the watcher is cut off, then history compacted: the resume
    //    gets 410 and the watcher relists; with no Delete event ever sent, the relist is
    //    what removes it. The watcher's retry (>= 1 s) comes after the deletion (0.35 s).
    faults.fail_for(Duration::from_millis(200)).await.unwrap();
    faults.close_watches().await.unwrap();
    tokio::time::sleep(Duration::from_millis(350)).await;
    delete_node(&c.nodes, "node-2").await;
    faults.compact().await.unwrap();
    assert!(view_names(&view, all.clone()).contains(&"node-2".to_string()));
    eventually(WAIT, "relist drops node-2", || {
        r.stats.relists.load(Ordering::Relaxed) > relists
            && view_names(&view, all.clone()) == ["node-3", "node-4", "node-5"]
    })
    .await;

    // 3. The API answers 500 and watches are cut: the view stays as it was. The
    //    outage lasts until the watcher has felt it (its retry may be up to one
    //    backoff period away, longer on a loaded machine), then it is lifted.
    let errors = r.stats.errors.load(Ordering::Relaxed);
    let before = view_names(&view, all.clone());
    faults.fail_for(Duration::from_secs(60)).await.unwrap();
    // Admin calls are exempt from faults: cut the open watches so the outage is felt.
    faults.close_watches().await.unwrap();
    let t0 = std::time::Instant::now();
    while t0.elapsed() < Duration::from_secs(2)
        || (r.stats.errors.load(Ordering::Relaxed) == errors
            && t0.elapsed() < Duration::from_secs(30))
    {
        assert_eq!(
            view_names(&view, all.clone()),
            before,
            "view changed during outage"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        r.stats.errors.load(Ordering::Relaxed) > errors,
        "the outage was not noticed"
    );
    faults.clear().await.unwrap();
    // After the outage, changes flow again.
    eventually_async(WAIT, "API back", || async {
        c.nodes.get("node-3").await.is_ok()
    })
    .await;
    create_node(&c.nodes, 6, true).await;
    delete_node(&c.nodes, "node-4").await;
    eventually(WAIT, "converged after outage", || {
        view_names(&view, all.clone()) == ["node-3", "node-5", "node-6"]
    })
    .await;
    assert_eq!(programmed(&view), ["node-3", "node-5", "node-6"]);

    // 4. Slow API (delays) does not clear anything either.
    faults
        .delay_for(Duration::from_millis(300), Duration::from_secs(2))
        .await
        .unwrap();
    faults.close_watches().await.unwrap();
    create_node(&c.nodes, 7, true).await;
    eventually(WAIT, "node-7 through a slow API", || {
        view_names(&view, all.clone()) == ["node-3", "node-5", "node-6", "node-7"]
    })
    .await;
    r.task.abort();
}

//! 5000 Nodes of ~10 KB: the Node watcher's memory and timing, measured in a child process so
//! the emulator's own memory (same test binary) does not count.
//!
//! The parent fills an emulator and re-runs this test binary as the child, which connects,
//! syncs the view, adds one more Node, and prints its figures on a `SCALE` line.

mod cluster_support;

use std::process::Command;
use std::time::{Duration, Instant};

use cluster_support::*;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, PostParams};
use serde_json::{json, Value};
use trellis_agent::cluster::{connect, ClientSource, NodeWatchOptions, NodeWatcher};
use trellis_agent::config::NetConfig;
use trellis_e2e::apiserver::{Emulator, EmulatorConfig, STATE_FILE};
use trellis_e2e::fixtures::{self, proc_status_kib};

const NODES: u32 = 5000;
const CHILD_ENV: &str = "TRELLIS_SCALE_KUBECONFIG";

/// A Node as big as a real one: labels, flannel annotations, four conditions, addresses,
/// nodeInfo and 40 images.
fn big_node(i: u32) -> Node {
    serde_json::from_value(big_node_json(i)).expect("valid node")
}

/// The shared big Node, as a kubelet registers it: with its kind and the kubelet's own
/// annotations.
fn big_node_json(i: u32) -> Value {
    let (a, b) = (i / 250, i % 250);
    let mut n = fixtures::big_node_json(i, &format!("172.17.{a}.{b}"));
    n["apiVersion"] = json!("v1");
    n["kind"] = json!("Node");
    let annotations = &mut n["metadata"]["annotations"];
    annotations["node.alpha.kubernetes.io/ttl"] = json!("0");
    annotations["volumes.kubernetes.io/controller-managed-attach-detach"] = json!("true");
    n
}

/// Writes the Nodes as the emulator's state file, so the emulator starts with them: filling
/// 5000 Nodes through the API would take most of a minute of a debug build.
fn seed_state(dir: &std::path::Path) -> usize {
    let mut objects = Vec::with_capacity(NODES as usize);
    for i in 0..NODES {
        let mut n = big_node_json(i);
        n["metadata"]["resourceVersion"] = json!((i + 1).to_string());
        n["metadata"]["uid"] = json!(format!("00000000-0000-4000-8000-{i:012}"));
        n["metadata"]["creationTimestamp"] = json!("2025-01-01T00:00:00Z");
        objects.push(json!({"resource": "v1/nodes", "object": n}));
    }
    let state = json!({"resourceVersion": NODES.to_string(), "objects": objects});
    std::fs::write(dir.join(STATE_FILE), serde_json::to_vec(&state).unwrap()).unwrap();
    serde_json::to_vec(&big_node_json(0)).unwrap().len()
}

// About 30 s of a debug build (mostly seeding and the emulator loading 50 MB), so it is a
// benchmark run on demand:
//   cargo test -p trellis-agent --test cluster_scale -- --ignored --nocapture
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn five_thousand_nodes_keep_the_watcher_small_and_fast() {
    trellis_e2e::apiserver::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let size = seed_state(dir.path());
    let seeded = t.elapsed();
    assert!(
        (8_000..14_000).contains(&size),
        "~10 KB per Node, got {size}"
    );
    let emu = Emulator::start(EmulatorConfig::new(dir.path()))
        .await
        .expect("emulator starts with the seeded state");
    let kubeconfig = emu.kubeconfig_path().to_path_buf();
    let started = t.elapsed();

    let exe = std::env::current_exe().expect("test binary");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(exe)
            .args([
                "--exact",
                "scale_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, kubeconfig)
            .output()
    })
    .await
    .unwrap()
    .expect("child runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("SCALE ").map(|(_, f)| f))
        .unwrap_or_else(|| panic!("no SCALE line in:\n{stdout}"));
    let f: Value = serde_json::from_str(line).expect("figures");
    println!(
        "scale: {NODES} Nodes x {size} B (seeded {} ms, emulator up {} ms); watcher child: {line}",
        seeded.as_millis(),
        started.as_millis()
    );
    let num = |k: &str| f[k].as_u64().unwrap_or_else(|| panic!("{k} in {line}"));
    assert_eq!(num("peers"), u64::from(NODES));
    // The view's compact peers plus one list page in flight; the 50 MB of Node JSON never
    // stays. Bounds leave room for a debug build and allocator slack (measured: ~6 MiB after
    // sync, ~10 MiB at the peak, 1-2 MiB of live heap).
    let growth_kib = num("rss_synced_kib").saturating_sub(num("rss_before_kib"));
    assert!(growth_kib < 12 * 1024, "RSS grew {growth_kib} KiB: {line}");
    let peak_kib = num("hwm_kib").saturating_sub(num("rss_before_kib"));
    assert!(
        peak_kib < 20 * 1024,
        "RSS peaked {peak_kib} KiB above start: {line}"
    );
    assert!(num("heap_kib") < 8 * 1024, "{line}");
    assert!(num("sync_ms") < 30_000, "{line}");
    assert!(num("one_more_ms") < 2_000, "{line}");
}

/// The child half: runs only when the parent sets the kubeconfig.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of five_thousand_nodes_keep_the_watcher_small_and_fast"]
async fn scale_child() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    trellis_e2e::apiserver::install_crypto_provider();
    let client = connect(&ClientSource::Flag(path.into()))
        .await
        .expect("client");
    let nodes: Api<Node> = Api::all(client.clone());
    // Warm up TLS and the client's pools so they do not count as the view's memory.
    let _ = nodes.get_opt("warm-up").await.expect("API reachable");
    let rss_before = proc_status_kib("VmRSS:");

    let view = local_view();
    let mut opts = NodeWatchOptions::default();
    if let Some(p) = std::env::var("SCALE_PAGE")
        .ok()
        .and_then(|p| p.parse().ok())
    {
        opts.page_size = p;
    }
    let w = NodeWatcher::new(client.clone(), view.clone(), opts);
    let mut status = w.status();
    let task = tokio::spawn(w.run());
    let t = Instant::now();
    tokio::time::timeout(Duration::from_secs(120), status.wait_for(|s| s.synced))
        .await
        .expect("sync in time")
        .expect("watcher alive");
    let sync_ms = t.elapsed().as_millis();
    let rss_synced = proc_status_kib("VmRSS:");
    let hwm = proc_status_kib("VmHWM:");
    // SAFETY: plain glibc queries with no pointers involved.
    let heap = unsafe { libc::mallinfo2() }.uordblks / 1024;
    // What RSS would be if the allocator returned freed list pages to the OS.
    // SAFETY: as above.
    unsafe { libc::malloc_trim(0) };
    let rss_trimmed = proc_status_kib("VmRSS:");
    let cfg = NetConfig::parse(r#"{"Network": "10.0.0.0/8", "Backend": {"Type": "vxlan"}}"#)
        .unwrap()
        .config;
    let (peers, plan_ms) = {
        let t = Instant::now();
        let v = view.lock().unwrap();
        let r = v.resolve(&cfg);
        assert!(
            r.skipped.is_empty(),
            "{:?}",
            &r.skipped[..r.skipped.len().min(3)]
        );
        (r.peers.len(), t.elapsed().as_millis())
    };

    // One more Node with 5000 present: time from the create call to the view's signal.
    let gen = status.borrow_and_update().generation;
    let t = Instant::now();
    nodes
        .create(&PostParams::default(), &big_node(NODES))
        .await
        .expect("create one more");
    tokio::time::timeout(
        Duration::from_secs(10),
        status.wait_for(|s| s.generation > gen),
    )
    .await
    .expect("seen in time")
    .unwrap();
    let one_more_ms = t.elapsed().as_millis();
    task.abort();
    println!(
        "SCALE {}",
        json!({
            "peers": peers,
            "sync_ms": sync_ms,
            "resolve_ms": plan_ms,
            "one_more_ms": one_more_ms,
            "rss_before_kib": rss_before,
            "rss_synced_kib": rss_synced,
            "hwm_kib": hwm,
            "heap_kib": heap,
            "rss_trimmed_kib": rss_trimmed,
        })
    );
}

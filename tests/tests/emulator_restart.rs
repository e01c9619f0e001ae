//! Restarting the emulator with the same directory keeps objects, identities and the
//! resourceVersion sequence, and existing kubeconfigs keep working (same CA and token).

use std::process::Stdio;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use kube::ResourceExt;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use trellis_e2e::apiserver::{Emulator, EmulatorConfig, STATE_FILE};

fn node(name: &str) -> Node {
    serde_json::from_value(
        json!({"metadata": {"name": name}, "spec": {"podCIDR": "10.244.3.0/24"}}),
    )
    .expect("valid node")
}

fn rv_of(n: &Node) -> u64 {
    n.resource_version()
        .and_then(|r| r.parse().ok())
        .expect("numeric resourceVersion")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_restart_keeps_state_and_versions() {
    let (dir, first) = Emulator::start_in_temp_dir().await;
    let addr = first.local_addrs()[0];
    let client = first.client().await.expect("client");
    let nodes: Api<Node> = Api::all(client.clone());
    let a = nodes
        .create(&PostParams::default(), &node("a"))
        .await
        .expect("create a");
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "cfg"}, "data": {"k": "v"}}))
            .expect("valid configmap");
    Api::<ConfigMap>::namespaced(client.clone(), "kube-system")
        .create(&PostParams::default(), &cm)
        .await
        .expect("create cm");
    let rv_before = first.resource_version();
    first.shutdown().await.expect("shutdown writes state");
    assert!(dir.path().join(STATE_FILE).exists());

    // Same directory, same port: the client built before the restart works unchanged.
    let mut cfg = EmulatorConfig::new(dir.path());
    cfg.listen = vec![addr];
    let second = Emulator::start(cfg).await.expect("restart");
    assert_eq!(second.resource_version(), rv_before);
    let a2 = nodes.get("a").await.expect("node survives the restart");
    assert_eq!(a2.uid(), a.uid());
    assert_eq!(a2.resource_version(), a.resource_version());
    let cm2 = Api::<ConfigMap>::namespaced(client.clone(), "kube-system")
        .get("cfg")
        .await
        .expect("configmap survives");
    assert_eq!(cm2.data.unwrap_or_default()["k"], "v");
    let b = nodes
        .create(&PostParams::default(), &node("b"))
        .await
        .expect("create b");
    assert_eq!(rv_of(&b), rv_before + 1, "versions continue, never restart");

    // A watch resuming at the pre-restart head works; older versions get 410 (no history kept).
    let mut w = nodes
        .watch(
            &WatchParams::default().disable_bookmarks(),
            &rv_before.to_string(),
        )
        .await
        .expect("watch")
        .boxed();
    match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
        Ok(Some(Ok(WatchEvent::Added(n)))) => assert_eq!(n.name_any(), "b"),
        other => panic!("expected ADDED b, got {other:?}"),
    }
    let mut old = nodes
        .watch(&WatchParams::default(), &(rv_before - 1).to_string())
        .await
        .expect("watch")
        .boxed();
    match tokio::time::timeout(Duration::from_secs(10), old.next()).await {
        Ok(Some(Ok(WatchEvent::Error(e)))) => assert_eq!(e.code, 410),
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    second.shutdown().await.expect("shutdown");
}

/// Starts the binary and waits for its "serving" line on stderr.
async fn spawn_binary(dir: &std::path::Path, port: u16) -> tokio::process::Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kube-emulator"))
        .args(["--dir", dir.to_str().expect("utf-8 dir")])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn kube-emulator");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr piped")).lines();
    let ready = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(l)) = lines.next_line().await {
            if l.contains("kube-emulator: serving") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(ready, Ok(true), "kube-emulator did not report readiness");
    // Keep draining stderr so the emulator never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

async fn terminate(mut child: tokio::process::Child) {
    let pid = child.id().expect("running").to_string();
    let st = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .expect("run kill");
    assert!(st.success());
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("exits after SIGTERM")
        .expect("wait");
    assert!(status.success(), "clean exit on SIGTERM, got {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_restart_keeps_state() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let child = spawn_binary(dir.path(), port).await;
    let kubeconfig = dir.path().join("kubeconfig");
    let client = trellis_e2e::apiserver::Faults::from_kubeconfig(&kubeconfig)
        .await
        .expect("admin client");
    let kube = {
        trellis_e2e::apiserver::install_crypto_provider();
        let kc = kube::config::Kubeconfig::read_from(&kubeconfig).expect("kubeconfig");
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .expect("config");
        kube::Client::try_from(cfg).expect("client")
    };
    let nodes: Api<Node> = Api::all(kube.clone());
    let created = nodes
        .create(&PostParams::default(), &node("bin"))
        .await
        .expect("create");
    let rv = client.state().await.expect("state").resource_version;
    terminate(child).await;

    let child = spawn_binary(dir.path(), port).await;
    let list = nodes
        .list(&ListParams::default())
        .await
        .expect("list after restart");
    assert_eq!(list.metadata.resource_version.as_deref(), Some(rv.as_str()));
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.items[0].uid(), created.uid());
    let next = nodes
        .create(&PostParams::default(), &node("bin2"))
        .await
        .expect("create");
    assert!(rv_of(&next) > rv.parse::<u64>().expect("numeric"));
    terminate(child).await;
}

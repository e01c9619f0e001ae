//! The node driver's pod runtime against a real containerd in a node
//! namespace, without the API: hand-written Pods run through CRI like
//! kubelet runs them, and what the containers saw is checked from files
//! they write into a hostPath (which the driver maps under the node's
//! private root).
//!
//! Needs root, containerd, runc, containernetworking-plugins (bridge,
//! host-local, loopback), gcc + libc6-dev (pause) and busybox-static (the
//! test containers' only binary). About 4-6 s per test on 2 cores; tests
//! holding a containerd are serialised by a host-wide lock.

use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use serde_json::{json, Value};
use trellis_e2e::cri::CriClient;
use trellis_e2e::kubelet::harness::{
    err, fast_runtime_options, node_turn, sh, TestNode as Node, TestResult, BUSYBOX, TEST_IMAGE,
};
use trellis_e2e::kubelet::volumes::VolumeData;
use trellis_e2e::kubelet::{PodRuntime, RuntimeError};

const NODE: &str = "kn-1";
const TOKEN: &str = "test-token-123";

struct Data;

impl VolumeData for Data {
    fn service_account_token(&self, _: Option<i64>) -> Result<String, String> {
        Ok(TOKEN.into())
    }
    fn config_map_key(&self, name: &str, key: &str) -> Result<String, String> {
        Err(format!("no ConfigMap {name} key {key} in this test"))
    }
}

fn pod(value: Value) -> TestResult<Pod> {
    serde_json::from_value(value).map_err(err("pod json"))
}

/// Syncs every 100 ms until `done` holds for the status, or `timeout`.
async fn sync_until(
    cri: &mut CriClient,
    rt: &mut PodRuntime,
    timeout: Duration,
    done: impl Fn(&PodStatus) -> bool,
) -> TestResult<PodStatus> {
    let start = Instant::now();
    loop {
        rt.sync(cri).await.map_err(err("sync"))?;
        let status = rt.status();
        if done(&status) {
            return Ok(status);
        }
        if start.elapsed() > timeout {
            return Err(format!(
                "condition not met after {timeout:?}; status: {status:#?}; events: {:#?}",
                rt.take_events()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn condition(s: &PodStatus, kind: &str) -> Option<String> {
    s.conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| c.status.clone())
}

/// Runs `f` on a fresh node; a failure carries containerd's log tail.
fn run<F: std::future::Future<Output = TestResult>>(f: impl FnOnce(Rc<Node>) -> F) -> TestResult {
    let Some(_serial) = node_turn()? else {
        return Ok(());
    };
    let node = Rc::new(Node::start(NODE, 9, "10.96.0.1", 443).map_err(err("node"))?);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(err("tokio"))?;
    let result = rt.block_on(f(Rc::clone(&node)));
    result.map_err(|e| {
        format!(
            "{e}\n--- containerd log tail ---\n{}",
            node.ctd.log_tail(30)
        )
    })
}

fn web_pod() -> TestResult<Pod> {
    let inspect = concat!(
        "echo \"$NODE_NAME $POD_NAME $POD_NAMESPACE $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT\" > /data/env;",
        " $B id -u > /data/uid;",
        " $B grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status > /data/status;",
        " $B cat /var/run/secrets/kubernetes.io/serviceaccount/token > /data/token;",
        " $B cat /var/run/secrets/kubernetes.io/serviceaccount/namespace > /data/namespace;",
        " ($B touch /rootfs-write 2>/dev/null && echo writable || echo readonly) > /data/rootfs;",
        " $B cat /sys/fs/cgroup/memory/memory.limit_in_bytes > /data/memlimit;",
        " exec $B sleep 1000"
    );
    pod(json!({
        "metadata": {"name": "web", "namespace": "demo", "uid": "uid-web"},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
            "volumes": [
                {"name": "work", "emptyDir": {}},
                {"name": "data", "hostPath": {"path": "/var/lib/kn-data", "type": "Directory"}},
                {"name": "api", "projected": {"sources": [
                    {"serviceAccountToken": {"path": "token"}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}}]}}
            ],
            "initContainers": [
                {"name": "init-1", "image": TEST_IMAGE, "command": sh("echo 1 > /work/order"),
                 "volumeMounts": [{"name": "work", "mountPath": "/work"}]},
                {"name": "init-2", "image": TEST_IMAGE, "command": sh("$B test -f /work/order && echo 2 >> /work/order"),
                 "volumeMounts": [{"name": "work", "mountPath": "/work"}]}
            ],
            "containers": [
                {"name": "web", "image": TEST_IMAGE,
                 "command": sh("$B mkdir -p /work/www && $B cp /work/order /work/www/order && exec $B httpd -f -p 8080 -h /work/www"),
                 "ports": [{"name": "http", "containerPort": 8080}],
                 "readinessProbe": {"httpGet": {"path": "/order", "port": "http"}, "periodSeconds": 1},
                 "volumeMounts": [{"name": "work", "mountPath": "/work"}]},
                {"name": "inspect", "image": TEST_IMAGE, "command": sh(inspect),
                 "env": [
                    {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}],
                 "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "readOnlyRootFilesystem": true,
                    "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
                 "resources": {"limits": {"memory": "64Mi", "cpu": "250m"}},
                 "volumeMounts": [{"name": "data", "mountPath": "/data"},
                    {"name": "api", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]}
            ]
        }
    }))
}

/// Waits for the files `inspect` writes, then reads them by name.
async fn read_data(dir: &Path) -> TestResult<BTreeMap<&'static str, String>> {
    let names = [
        "env",
        "uid",
        "status",
        "token",
        "namespace",
        "rootfs",
        "memlimit",
    ];
    let start = Instant::now();
    while !dir.join("memlimit").exists() && start.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    names
        .iter()
        .map(|n| {
            Ok((
                *n,
                std::fs::read_to_string(dir.join(n))
                    .map_err(err(n))?
                    .trim()
                    .to_string(),
            ))
        })
        .collect()
}

#[test]
fn pod_network_pod_runs_inits_in_order_then_containers_as_specified() -> TestResult {
    run(|node| async move {
        let data_dir = node.facts.dirs.root.join("var/lib/kn-data");
        std::fs::create_dir_all(&data_dir).map_err(err("data dir"))?;
        // The container runs as uid 1000 and must be able to write its report.
        std::fs::set_permissions(
            &data_dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .map_err(err("chmod"))?;
        let mut cri = node.cri_network_ready().await?;
        let pod = web_pod()?;
        let start = Instant::now();
        let mut rt = PodRuntime::start(&mut cri, &pod, &node.facts, &Data, fast_runtime_options())
            .await
            .map_err(err("start"))?;
        let pod_dir = node.facts.dirs.pods.join("uid-web");
        let work_dir = pod_dir.join("volumes/work");
        let result = web_checks(&mut cri, &mut rt, &data_dir, &work_dir).await;
        let torn = rt.teardown(&mut cri).await;
        result?;
        torn.map_err(err("teardown"))?;
        node.check_nothing_left().await?;
        if pod_dir.exists() {
            return Err(format!("left behind: pod dir {}", pod_dir.display()));
        }
        eprintln!("web pod: start to teardown {:?}", start.elapsed());
        Ok(())
    })
}

async fn web_checks(
    cri: &mut CriClient,
    rt: &mut PodRuntime,
    data_dir: &Path,
    work_dir: &Path,
) -> TestResult {
    let status = sync_until(cri, rt, Duration::from_secs(15), |s| {
        condition(s, "Ready").as_deref() == Some("True")
    })
    .await?;
    if status.phase.as_deref() != Some("Running") {
        return Err(format!("phase {:?}", status.phase));
    }
    let ip = status.pod_ip.clone().unwrap_or_default();
    if !ip.starts_with("10.244.9.") {
        return Err(format!("podIP {ip:?} is not from the node's CNI range"));
    }
    let inits = status.init_container_statuses.clone().unwrap_or_default();
    let codes: Vec<_> = inits
        .iter()
        .map(|c| {
            c.state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .map(|t| t.exit_code)
        })
        .collect();
    // In order: init-2 fails unless init-1 already wrote the file, and
    // neither was ever restarted.
    let restarts: Vec<_> = inits.iter().map(|c| c.restart_count).collect();
    if codes != [Some(0), Some(0)] || restarts != [0, 0] {
        return Err(format!(
            "init containers should each have exited 0 once: {inits:?}"
        ));
    }
    let order = std::fs::read_to_string(work_dir.join("order")).map_err(err("order"))?;
    if order != "1\n2\n" {
        return Err(format!("init containers ran out of order: {order:?}"));
    }
    let files = read_data(data_dir).await?;
    let want = [
        ("env", "kn-1 web demo 10.96.0.1:443".to_string()),
        ("uid", "1000".into()),
        ("token", TOKEN.into()),
        ("namespace", "demo".into()),
        ("rootfs", "readonly".into()),
        ("memlimit", (64u64 << 20).to_string()),
    ];
    for (name, value) in want {
        if files[name] != value {
            return Err(format!(
                "{name}: container saw {:?}, expected {value:?}",
                files[name]
            ));
        }
    }
    let st = &files["status"];
    let ok = st.contains("CapEff:\t0000000000000000")
        && st.contains("NoNewPrivs:\t1")
        && st.contains("Seccomp:\t2");
    if !ok {
        return Err(format!("security context not applied as written: {st}"));
    }
    Ok(())
}

fn host_network_pod() -> TestResult<Pod> {
    pod(json!({
        "metadata": {"name": "flaky", "namespace": "demo", "uid": "uid-flaky"},
        "spec": {
            "hostNetwork": true,
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {"name": "crasher", "image": TEST_IMAGE, "command": sh("exit 3")},
                {"name": "unhealthy", "image": TEST_IMAGE,
                 "command": sh("$B touch /healthy; $B sleep 1; $B rm /healthy; exec $B sleep 1000"),
                 "livenessProbe": {"exec": {"command": [BUSYBOX, "test", "-f", "/healthy"]},
                                   "periodSeconds": 1, "failureThreshold": 1}},
                {"name": "server", "image": TEST_IMAGE,
                 "command": [BUSYBOX, "httpd", "-f", "-p", "127.0.0.1:18081", "-h", "/"],
                 "livenessProbe": {"httpGet": {"host": "127.0.0.1", "port": 18081, "path": "/bin/busybox"}, "periodSeconds": 1},
                 "readinessProbe": {"tcpSocket": {"host": "127.0.0.1", "port": 18081}, "periodSeconds": 1}}
            ]
        }
    }))
}

fn container<'a>(
    s: &'a PodStatus,
    name: &str,
) -> Option<&'a k8s_openapi::api::core::v1::ContainerStatus> {
    s.container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == name)
}

#[test]
fn host_network_pod_restarts_crashed_and_unhealthy_containers_and_probes_in_the_node() -> TestResult
{
    run(|node| async move {
        let mut cri = node.cri_network_ready().await?;
        let mut rt = PodRuntime::start(
            &mut cri,
            &host_network_pod()?,
            &node.facts,
            &Data,
            fast_runtime_options(),
        )
        .await
        .map_err(err("start"))?;
        let result = flaky_checks(&mut cri, &mut rt).await;
        let torn = rt.teardown(&mut cri).await;
        result?;
        torn.map_err(err("teardown"))?;
        node.check_nothing_left().await
    })
}

async fn flaky_checks(cri: &mut CriClient, rt: &mut PodRuntime) -> TestResult {
    let status = sync_until(cri, rt, Duration::from_secs(15), |s| {
        let restarts = |n| container(s, n).map_or(0, |c| c.restart_count);
        restarts("crasher") >= 2
            && restarts("unhealthy") >= 1
            && container(s, "server").is_some_and(|c| c.ready)
    })
    .await?;
    if status.pod_ip.as_deref() != Some("127.0.0.1") {
        return Err(format!(
            "a hostNetwork pod has the node's IP, got {:?}",
            status.pod_ip
        ));
    }
    let crasher = container(&status, "crasher").ok_or("no crasher status")?;
    let last = crasher
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .ok_or("crasher has no last terminated state")?;
    if last.exit_code != 3 || last.reason.as_deref() != Some("Error") {
        return Err(format!(
            "crasher's last state should be exit 3 / Error: {last:?}"
        ));
    }
    if container(&status, "server").map(|c| c.restart_count) != Some(0) {
        return Err(format!("the healthy server was restarted: {status:?}"));
    }
    let events = rt.take_events();
    if !events
        .iter()
        .any(|e| e.reason == "Unhealthy" && e.message.starts_with("Liveness probe failed"))
    {
        return Err(format!("no liveness event: {events:?}"));
    }
    Ok(())
}

#[test]
fn unhonourable_pod_is_refused_naming_the_field_before_anything_runs() -> TestResult {
    run(|node| async move {
        let mut cri = node.cri().await?;
        let bad = pod(json!({
            "metadata": {"name": "bad", "namespace": "demo", "uid": "uid-bad"},
            "spec": {"containers": [{"name": "c", "image": TEST_IMAGE}],
                     "volumes": [{"name": "v", "nfs": {"server": "s", "path": "/"}}]}
        }))?;
        match PodRuntime::start(&mut cri, &bad, &node.facts, &Data, fast_runtime_options()).await {
            Err(RuntimeError::Unsupported(e))
                if e.to_string()
                    == "spec.volumes[0].nfs: not supported by the test node driver" => {}
            Err(e) => return Err(format!("wrong error: {e}")),
            Ok(_) => return Err("an nfs volume was accepted".into()),
        }
        let left = cri.list_pod_sandboxes().await.map_err(err("list"))?;
        if !left.is_empty() || node.facts.dirs.pods.join("uid-bad").exists() {
            return Err(format!("a refused pod left {left:?} or its directory"));
        }
        Ok(())
    })
}

#[test]
fn failed_init_container_fails_a_never_restart_pod_without_starting_its_containers() -> TestResult {
    run(|node| async move {
        let mut cri = node.cri_network_ready().await?;
        let failing = pod(json!({
            "metadata": {"name": "init-fails", "namespace": "demo", "uid": "uid-init-fails"},
            "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                "initContainers": [{"name": "init", "image": TEST_IMAGE, "command": sh("exit 7")}],
                "containers": [{"name": "app", "image": TEST_IMAGE, "command": sh("exec $B sleep 1000")}]}
        }))?;
        let mut rt = PodRuntime::start(
            &mut cri,
            &failing,
            &node.facts,
            &Data,
            fast_runtime_options(),
        )
        .await
        .map_err(err("start"))?;
        let result = sync_until(&mut cri, &mut rt, Duration::from_secs(10), |s| {
            s.phase.as_deref() == Some("Failed")
        })
        .await;
        let torn = rt.teardown(&mut cri).await;
        let status = result?;
        torn.map_err(err("teardown"))?;
        let init = &status.init_container_statuses.clone().unwrap_or_default()[0];
        let code = init
            .state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .map(|t| t.exit_code);
        let app = &status.container_statuses.clone().unwrap_or_default()[0];
        if code != Some(7)
            || init.restart_count != 0
            || app.restart_count != 0
            || app.container_id.is_some()
        {
            return Err(format!(
                "init should have failed once with 7 and app never started: {status:#?}"
            ));
        }
        Ok(())
    })
}

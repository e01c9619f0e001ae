//! Benchmark (not a test) of NetworkPolicy enforcement (issue 15), on a 3-node namespace
//! cluster; `hack/bench-netpol.sh` runs it and docs/BENCH-NETPOL.md has the figures.
//!
//! - `scale`: Pod objects (API only: the agent polices by the API's view, no interface needed)
//!   and policies grow in steps (a quarter, half, all of `--pods`/`--policies`); at each step
//!   the rules and set elements each node's kernel holds are counted (`nft -j list table`),
//!   and each agent's RSS read. At full size, policies are created and updated one at a time
//!   and the time from the API write to the change in every node's kernel is taken from
//!   `nft monitor` (an event each node prints as its transaction commits; no polling).
//! - `traffic`: two real pods on two nodes, one serving; TCP connect latency (sequential
//!   connects) and iperf3 throughput between them with enforcement on (the server isolated by
//!   a policy that allows the client, on top of the `scale` load) and off, in alternating
//!   rounds.
//!
//! Output: one JSON object per line (the script summarises).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{json, Value};
use trellis_e2e::bench::{iperf, median, percentile};
use trellis_e2e::netpol::harness::{NamespaceSpec, NetpolCluster, Options, PodSpec};

/// The cluster grows as real ones do, by namespaces: each holds `PER_NS` pods, `APPS` apps of
/// `PER_NS / APPS` pods, and `APPS` policies; five namespaces make a team. So each policy
/// selects and admits a constant number of pods however large the cluster: what grows is the
/// number of namespaces. (Were every policy's peers a fixed share of all pods instead, its set
/// would have to list a share of all addresses, pods x policies by definition.)
const PER_NS: usize = 50;
const APPS: usize = 10;
const TEAM: usize = 5;

fn ns_of_pod(j: usize) -> usize {
    j / PER_NS
}

fn app_of_pod(j: usize) -> usize {
    (j % PER_NS) / (PER_NS / APPS)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |flag: &str, default: usize| -> usize {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (pods, policies, changes) = (
        num("--pods", 1000),
        num("--policies", 200),
        num("--changes", 40),
    );
    let (rounds, secs, conns) = (num("--rounds", 3), num("--secs", 5), num("--conns", 300));
    let result = match args.first().map(String::as_str) {
        Some("all") => run(pods, policies, changes, Some((rounds, secs as u32, conns))),
        Some("scale") => run(pods, policies, changes, None),
        _ => Err("usage: bench-netpol all|scale [--pods N] [--policies N] [--changes N] [--rounds N] [--secs N] [--conns N]".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-netpol: {e}");
            ExitCode::FAILURE
        }
    }
}

fn emit(v: Value) {
    println!("{v}");
}

fn run(
    pods: usize,
    policies: usize,
    changes: usize,
    traffic: Option<(usize, u32, usize)>,
) -> Result<(), String> {
    let opts = Options {
        tag: "bnp".into(),
        ports: vec![80],
        ..Options::default()
    };
    let spaces = [NamespaceSpec::new("bench-real", &[("team", "real")])];
    let real = [
        PodSpec::new("bench-real", "server", &[("app", "server")]),
        PodSpec::new("bench-real", "client", &[("app", "client")]),
    ];
    let c = NetpolCluster::up(opts, &spaces, &real)?;
    let mut made = (0usize, 0usize);
    for step in [4usize, 2, 1] {
        let want = (pods / step, policies / step);
        grow(&c, &mut made, want)?;
        // Recorded after the apply: the kernels hold them.
        c.wait_policies_applied(want.1, Duration::from_secs(120))?;
        for (i, node) in c.cluster.nodes.iter().enumerate() {
            let (rules, elements) = count(&node.ns)?;
            let rss = node.agent_pid().and_then(rss_kib);
            emit(
                json!({"what": "size", "pods": want.0, "policies": want.1, "node": i, "rules": rules, "elements": elements, "agent_rss_kib": rss}),
            );
        }
    }
    latency(&c, changes, pods)?;
    if let Some((rounds, secs, conns)) = traffic {
        traffic_rounds(&c, rounds, secs, conns)?;
    }
    Ok(())
}

/// Creates the Pod objects and policies missing to reach `want` (pods, policies).
fn grow(c: &NetpolCluster, made: &mut (usize, usize), want: (usize, usize)) -> Result<(), String> {
    let (from_pod, from_pol) = *made;
    let nodes: Vec<String> = c.cluster.nodes.iter().map(|n| n.name.clone()).collect();
    c.cluster.with_client(move |client| async move {
        use kube::api::{Api, Patch, PatchParams, PostParams};
        let pp = PostParams::default();
        let nss: Api<Namespace> = Api::all(client.clone());
        for n in from_pod.div_ceil(PER_NS)..want.0.div_ceil(PER_NS) {
            let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": format!("bench-{n}"), "labels": {"team": format!("t{}", n / TEAM)}}});
            nss.create(&pp, &typed(ns)?).await.map_err(|e| e.to_string())?;
        }
        for j in from_pod..want.0 {
            let ns = format!("bench-{}", ns_of_pod(j));
            let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
            let name = format!("p-{j}");
            let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": {"app": format!("app-{}", app_of_pod(j))}},
                "spec": {"nodeName": nodes[j % nodes.len()], "containers": [{"name": "c", "image": "x", "ports": [{"name": "http", "containerPort": 8080}]}]}});
            pods.create(&pp, &typed(pod)?).await.map_err(|e| e.to_string())?;
            // Addresses outside the pod network: nothing routes them, the rules do not care.
            let ip = format!("10.{}.{}.{}", 100 + j / 65536, (j / 256) % 256, j % 256);
            let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}});
            pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await.map_err(|e| e.to_string())?;
        }
        for i in from_pol..want.1 {
            let pol = policy(&format!("pol-{i}"), i / APPS, i % APPS, i % 4 == 0, 80);
            let ns = pol["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
            let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
            api.create(&pp, &typed(pol)?).await.map_err(|e| e.to_string())?;
        }
        Ok(())
    })?;
    *made = want;
    Ok(())
}

fn typed<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, String> {
    serde_json::from_value(v).map_err(|e| e.to_string())
}

/// A policy in namespace `ns`: selects app `app` (pods on every node), admits the next app of
/// the namespaces of its team on a port, a named port and a range; with `egress`, also limits
/// egress to a block minus a /24.
fn policy(name: &str, ns: usize, app: usize, egress: bool, port: u16) -> Value {
    let mut spec = json!({
        "podSelector": {"matchLabels": {"app": format!("app-{app}")}},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": format!("t{}", ns / TEAM)}},
                               "podSelector": {"matchLabels": {"app": format!("app-{}", (app + 1) % APPS)}}}],
                     "ports": [{"port": port}, {"port": "http"}, {"port": 9000, "endPort": 9100}]}]
    });
    if egress {
        spec["egress"] =
            json!([{"to": [{"ipBlock": {"cidr": "10.96.0.0/12", "except": ["10.100.0.0/24"]}}]}]);
    }
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": name, "namespace": format!("bench-{ns}")}, "spec": spec})
}

/// Rules and set/map elements in the node's table, as the kernel lists them.
fn count(ns: &trellis_e2e::netns_cluster::Netns) -> Result<(usize, usize), String> {
    let out = ns.exec(&["nft", "-j", "list", "table", "inet", "trellis-netpol"])?;
    let v: Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
    let items = v["nftables"].as_array().cloned().unwrap_or_default();
    let rules = items.iter().filter(|o| o.get("rule").is_some()).count();
    let elements = items
        .iter()
        .filter_map(|o| o.get("set").or_else(|| o.get("map")))
        .map(|s| s["elem"].as_array().map_or(0, Vec::len))
        .sum();
    Ok((rules, elements))
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `nft monitor` on every node: (node, when, line) as each transaction commits.
struct Monitors {
    children: Vec<Child>,
    rx: mpsc::Receiver<(usize, Instant, String)>,
}

impl Drop for Monitors {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn monitors(c: &NetpolCluster) -> Result<Monitors, String> {
    let (tx, rx) = mpsc::channel();
    let mut children = Vec::new();
    for (i, node) in c.cluster.nodes.iter().enumerate() {
        let mut child = node
            .ns
            .command("nft")
            .args(["monitor", "rules"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let out = child.stdout.take().ok_or("no stdout")?;
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send((i, Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        children.push(child);
    }
    Ok(Monitors { children, rx })
}

/// Policy creates and updates, one at a time: API write to every node's commit.
fn latency(c: &NetpolCluster, changes: usize, pods: usize) -> Result<(), String> {
    let mon = monitors(c)?;
    // An `nft monitor` prints nothing it was not yet listening for: updates of a warm-up policy
    // until every node has printed one, so that no measured change can be missed.
    let warm = (0..20).find(|t| {
        let port = 83 + (*t % 2) as u16;
        change(
            c,
            &mon,
            "lat-warm",
            0,
            0,
            port,
            pods,
            Duration::from_secs(3),
        )
        .is_ok()
    });
    warm.ok_or("nft monitor never reported the warm-up policy on every node")?;
    let mut all = Vec::new();
    for k in 0..changes {
        // Creates and updates of policy lat-N, in the namespaces in turn.
        let (n, port) = (k / 2, if k % 2 == 0 { 81 } else { 82 });
        let (ns, app) = (n % pods.div_ceil(PER_NS).max(1), n % APPS);
        let name = format!("lat-{n}");
        let seen = change(c, &mon, &name, ns, app, port, pods, Duration::from_secs(30))
            .map_err(|e| format!("change {k}: {e}"))?;
        let Some(worst) = seen.values().copied().reduce(f64::max) else {
            continue;
        };
        all.push(worst);
        emit(
            json!({"what": "change", "k": k, "kind": if k % 2 == 0 { "create" } else { "update" }, "per_node_ms": seen.values().collect::<Vec<_>>(), "all_nodes_ms": worst}),
        );
    }
    emit(
        json!({"what": "change_summary", "n": all.len(), "p50_ms": median(&all), "p90_ms": percentile(&all, 90.0)}),
    );
    Ok(())
}

/// Creates (or updates) policy `name` selecting app `app` of namespace `ns`, admitting `port`,
/// and waits for every node holding such pods to commit it: ms from the write, per node.
#[allow(clippy::too_many_arguments)]
fn change(
    c: &NetpolCluster,
    mon: &Monitors,
    name: &str,
    ns: usize,
    app: usize,
    port: u16,
    pods: usize,
    timeout: Duration,
) -> Result<BTreeMap<usize, f64>, String> {
    let pol = policy(name, ns, app, false, port);
    let namespace = format!("bench-{ns}");
    let chain = format!("pol/{namespace}/{name}/in ");
    let want = format!("tcp dport {port} accept");
    while mon.rx.try_recv().is_ok() {}
    let t0 = Instant::now();
    let name = name.to_string();
    c.cluster.with_client(move |client| async move {
        use kube::api::{Api, PostParams};
        let api: Api<NetworkPolicy> = Api::namespaced(client, &namespace);
        let want: NetworkPolicy = typed(pol)?;
        match api.create(&PostParams::default(), &want).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => {
                let mut cur = api.get(&name).await.map_err(|e| e.to_string())?;
                cur.spec = want.spec;
                api.replace(&name, &PostParams::default(), &cur)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        }
    })?;
    let mut seen: BTreeMap<usize, f64> = BTreeMap::new();
    let deadline = t0 + timeout;
    let expect = nodes_of(ns, app, pods, c.cluster.nodes.len());
    while seen.len() < expect.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let (node, at, line) = mon
            .rx
            .recv_timeout(left)
            .map_err(|_| format!("only nodes {:?} of {expect:?} committed", seen.keys()))?;
        if expect.contains(&node) && line.contains(&chain) && line.contains(&want) {
            seen.entry(node).or_insert((at - t0).as_secs_f64() * 1000.0);
        }
    }
    Ok(seen)
}

/// The nodes holding pods of app `app` in namespace `ns` (as [`grow`] placed them): the nodes
/// whose kernels change with a policy selecting them.
fn nodes_of(ns: usize, app: usize, pods: usize, nodes: usize) -> std::collections::BTreeSet<usize> {
    (0..pods)
        .filter(|j| ns_of_pod(*j) == ns && app_of_pod(*j) == app)
        .map(|j| j % nodes)
        .collect()
}

/// Enforcement on and off in alternating rounds: connect latency and throughput.
fn traffic_rounds(c: &NetpolCluster, rounds: usize, secs: u32, conns: usize) -> Result<(), String> {
    let server = c.pod("bench-real/server").ok_or("no server pod")?;
    let client = c.pod("bench-real/client").ok_or("no client pod")?;
    c.apply_policy(&json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "server", "namespace": "bench-real"},
        "spec": {"podSelector": {"matchLabels": {"app": "server"}},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}], "ports": [{"port": 80}, {"port": 5201}]}]}}))?;
    let addr: SocketAddr = format!("{}:80", server.ip)
        .parse()
        .map_err(|e| format!("{e}"))?;
    // Warm-up, not recorded: the first connects after start-up pay for caches and the
    // neighbour entries on both ends, whichever mode goes first.
    set_enforcement(c, true)?;
    connects(&client.net.ns, addr, conns)?;
    for r in 0..rounds {
        let order = if r % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for on in order {
            set_enforcement(c, on)?;
            let ms = connects(&client.net.ns, addr, conns)?;
            let bps = iperf(&server.net.ns, &client.net.ns, &server.ip, secs)?;
            emit(
                json!({"what": "traffic", "round": r, "policies": on, "connect_median_ms": median(&ms), "connect_p90_ms": percentile(&ms, 90.0), "bits_per_second": bps}),
            );
        }
    }
    set_enforcement(c, true)
}

/// Turns enforcement on or off through the ConfigMap and waits until every node's table is
/// there (with the server isolated) or gone.
fn set_enforcement(c: &NetpolCluster, on: bool) -> Result<(), String> {
    c.set_enforcement(on)?;
    let server_ip = c
        .pod("bench-real/server")
        .map(|p| p.ip.clone())
        .unwrap_or_default();
    let server_node = c.pod("bench-real/server").map_or(0, |p| p.node);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = c.cluster.nodes.iter().enumerate().all(|(i, n)| {
            let t =
                n.ns.exec(&["nft", "list", "map", "inet", "trellis-netpol", "to-pods/v4"]);
            match (on, t) {
                (true, Ok(t)) => i != server_node || t.contains(&format!("{server_ip} :")),
                (false, Err(_)) => true,
                _ => false,
            }
        });
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("enforcement never became {on}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `n` sequential TCP connects from inside `ns`, each timed to the completed handshake.
fn connects(
    ns: &trellis_e2e::netns_cluster::Netns,
    addr: SocketAddr,
    n: usize,
) -> Result<Vec<f64>, String> {
    ns.enter(move || {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                .map_err(|e| format!("connect {addr}: {e}"))?;
            out.push(t.elapsed().as_secs_f64() * 1000.0);
            drop(s);
        }
        Ok(out)
    })?
}

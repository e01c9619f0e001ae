//! `kube-cluster up|down`: a Kubernetes cluster without kind, Docker or a
//! kubelet binary, for the user's path (`kubectl apply -k deploy`).
//!
//! `up` builds the netns cluster's underlay, outside host and N node
//! namespaces with the API emulator (namespaces required, RBAC enforced
//! for service-account tokens), registers the Nodes (podCIDRs as the
//! controller-manager assigns them), and then plays each node's kubelet:
//! a containerd per node namespace with the node's CNI dirs, the given
//! image archives imported, the node driver (tests/src/kubelet) running
//! its Pods through CRI, plus the DaemonSet controller and scheduler. The
//! API is forwarded to `127.0.0.1:PORT` and `DIR/kubeconfig` points there,
//! so `kubectl` on the host works. No CNI is installed: a node has only
//! what kind's node image ships (`loopback`, `portmap`) until a DaemonSet
//! installs one. It stays up until SIGTERM/SIGINT, then removes every pod
//! (CNI DEL included), containerd, the namespaces and the API.
//!
//! `down` stops a running `up` (by `DIR/state.json`) and removes what a
//! killed one left.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use trellis_e2e::containerd;
use trellis_e2e::cri::CriClient;
use trellis_e2e::kubelet::background::ClusterLoop;
use trellis_e2e::kubelet::container::Backoff;
use trellis_e2e::kubelet::harness::{NodeOptions, TestNode};
use trellis_e2e::kubelet::node_driver::NodeDriver;
use trellis_e2e::kubelet::RuntimeOptions;
use trellis_e2e::netns_cluster::forward::forward;
use trellis_e2e::netns_cluster::{Cluster, Options, API_IP, EXT_IP};

const USAGE: &str = "usage: kube-cluster up --dir DIR --image ARCHIVE [--image ARCHIVE ...] [--nodes N] [--port PORT]\n       kube-cluster down --dir DIR";
const API_PORT: u16 = 6443;
/// Host paths a CNI plugin run by containerd reads (the trellis conflist's defaults): each
/// node's own copy, as on separate machines.
const HOST_VIEW: [&str; 2] = ["/run/flannel", "/var/lib/cni"];
/// What kind's node image ships in /opt/cni/bin besides the pod network's plugin.
const NODE_PLUGINS: [&str; 2] = ["loopback", "portmap"];

/// What `down` and the scripts need to find, written once `up` serves.
#[derive(Debug, Serialize, Deserialize)]
struct State {
    pid: u32,
    kubeconfig: PathBuf,
    ext_netns: String,
    ext_ip: String,
    netns: Vec<String>,
    /// Host mount points `up` had to create (removed by teardown when still empty).
    created_dirs: Vec<PathBuf>,
    nodes: Vec<NodeState>,
}

#[derive(Debug, Serialize, Deserialize)]
struct NodeState {
    name: String,
    netns: String,
    ip: String,
    /// containerd's socket (`ctr -a SOCKET -n k8s.io ...`).
    socket: PathBuf,
    /// The node's private root: its /opt/cni/bin, /etc/cni/net.d, /run/flannel, /var/lib/cni.
    root: PathBuf,
    /// Per-pod directories (`<uid>/logs/<container>/<attempt>.log`).
    pods: PathBuf,
}

struct Args {
    dir: PathBuf,
    nodes: usize,
    port: u16,
    images: Vec<PathBuf>,
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse(argv.get(1..).unwrap_or_default()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("kube-cluster: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match argv.first().map(String::as_str) {
        Some("up") => up(&args),
        Some("down") => {
            down(&args.dir);
            Ok(())
        }
        _ => Err(USAGE.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kube-cluster: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse(argv: &[String]) -> Result<Args, String> {
    let mut a = Args {
        dir: PathBuf::new(),
        nodes: 3,
        port: 16443,
        images: Vec::new(),
    };
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--dir" => a.dir = PathBuf::from(value),
            "--image" => a.images.push(PathBuf::from(value)),
            "--nodes" => {
                a.nodes = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=9).contains(n))
                    .ok_or_else(|| format!("--nodes {value}: expected 1 to 9"))?
            }
            "--port" => {
                a.port = value
                    .parse()
                    .map_err(|_| format!("--port {value}: not a port"))?
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if a.dir.as_os_str().is_empty() || !a.dir.is_absolute() {
        return Err("--dir must be an absolute path".into());
    }
    Ok(a)
}

/// Marks a directory as one `up` made, so `down` never sweeps or deletes anything else.
const MARKER: &str = ".kube-cluster";

fn up(a: &Args) -> Result<(), String> {
    if a.dir.join("state.json").exists() {
        return Err(format!(
            "a cluster is already up in {0} (kube-cluster down --dir {0})",
            a.dir.display()
        ));
    }
    for image in &a.images {
        if !image.is_file() {
            return Err(format!("--image {}: no such file", image.display()));
        }
    }
    init_logging();
    // The port first: a busy one fails in a millisecond, not after three containerds.
    let listener = std::net::TcpListener::bind(("127.0.0.1", a.port))
        .map_err(|e| format!("127.0.0.1:{} (--port): {e}", a.port))?;
    // Private: the kubeconfig inside holds the cluster admin's token.
    std::fs::create_dir_all(&a.dir).map_err(|e| format!("{}: {e}", a.dir.display()))?;
    std::fs::set_permissions(&a.dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .map_err(|e| format!("{}: {e}", a.dir.display()))?;
    std::fs::write(a.dir.join(MARKER), "").map_err(|e| e.to_string())?;
    // Every temp dir (containerd's, the nodes') under DIR, so `down` finds all of it.
    let tmp = a.dir.join("tmp");
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::env::set_var("TMPDIR", &tmp);
    // Signals are taken from here on (not only once serving): a SIGTERM during start-up ends in
    // the same teardown instead of killing the process with everything left running.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let stop = rt.block_on(async { Stop::install() })?;
    let created_dirs: Vec<PathBuf> = HOST_VIEW
        .iter()
        .map(PathBuf::from)
        .filter(|p| !p.exists())
        .collect();
    let result = up_and_serve(a, &rt, listener, stop, &created_dirs);
    drop(rt);
    remove_empty(&created_dirs);
    result
}

fn up_and_serve(
    a: &Args,
    rt: &tokio::runtime::Runtime,
    listener: std::net::TcpListener,
    mut stop: Stop,
    created_dirs: &[PathBuf],
) -> Result<(), String> {
    let _serial = containerd::serial_lock().map_err(|e| e.to_string())?;
    let started = Instant::now();
    let cluster = Cluster::up_in(
        Options {
            nodes: a.nodes,
            tag: "kc".into(),
            seed_configmap: false,
            emulator_args: vec!["--namespaces".into(), "required".into()],
            ..Default::default()
        },
        a.dir.clone(),
        None,
    )?;
    let mut state = State {
        pid: std::process::id(),
        kubeconfig: a.dir.join("kubeconfig"),
        ext_netns: cluster.ext.name.clone(),
        ext_ip: EXT_IP.into(),
        netns: [&cluster.underlay, &cluster.ext]
            .into_iter()
            .chain(cluster.nodes.iter().map(|n| &n.ns))
            .map(|ns| ns.name.clone())
            .collect(),
        created_dirs: created_dirs.to_vec(),
        nodes: Vec::new(),
    };
    // Written now, nodes added once they run: `down` can find a cluster that is still starting.
    write_json(&a.dir.join("state.json"), &state)?;
    let nodes = start_nodes(&cluster, a)?;
    if rt.block_on(async { stop.requested() }) {
        return Ok(());
    }
    let kubeconfig = host_kubeconfig(&cluster, a.port)?;
    state.nodes = cluster
        .nodes
        .iter()
        .zip(&nodes)
        .map(|(n, t)| NodeState {
            name: n.name.clone(),
            netns: n.ns.name.clone(),
            ip: n.ip.to_string(),
            socket: t.ctd.socket().to_path_buf(),
            root: t.facts.dirs.root.clone(),
            pods: t.facts.dirs.pods.clone(),
        })
        .collect();
    write_json(&a.dir.join("state.json"), &state)?;
    rt.block_on(serve(
        &cluster,
        &nodes,
        a,
        listener,
        stop,
        &kubeconfig,
        started,
    ))
}

/// SIGTERM and SIGINT, registered once (the handlers replace the default action, death).
struct Stop {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Stop {
    fn install() -> Result<Self, String> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate()).map_err(|e| e.to_string())?,
            int: signal(SignalKind::interrupt()).map_err(|e| e.to_string())?,
        })
    }

    /// Whether a signal came meanwhile (without waiting).
    fn requested(&mut self) -> bool {
        use futures::FutureExt;
        self.term.recv().now_or_never().is_some() || self.int.recv().now_or_never().is_some()
    }

    async fn wait(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// The driver's, controllers' and forwarder's warnings go to stderr (the script's log).
fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

fn start_nodes(cluster: &Cluster, a: &Args) -> Result<Vec<TestNode>, String> {
    cluster
        .nodes
        .iter()
        .map(|n| {
            TestNode::start_with(&NodeOptions {
                adopt_netns: Some(n.ns.name.clone()),
                node_ip: n.ip.to_string(),
                parent_dir: Some(a.dir.join("tmp")),
                node_plugins: NODE_PLUGINS.map(String::from).to_vec(),
                host_view: HOST_VIEW.map(PathBuf::from).to_vec(),
                images: a.images.clone(),
                ..NodeOptions::new(&n.name, API_IP, API_PORT)
            })
            .map_err(|e| format!("node {}: {e}", n.name))
        })
        .collect()
}

/// The admin kubeconfig with the server at the host's forwarded port.
fn host_kubeconfig(cluster: &Cluster, port: u16) -> Result<PathBuf, String> {
    let text = std::fs::read_to_string(&cluster.kubeconfig).map_err(|e| e.to_string())?;
    let inside = format!("https://{API_IP}:{API_PORT}");
    if !text.contains(&inside) {
        return Err(format!("the emulator's kubeconfig does not name {inside}"));
    }
    let path = cluster.dir.join("kubeconfig");
    std::fs::write(
        &path,
        text.replace(&inside, &format!("https://127.0.0.1:{port}")),
    )
    .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

async fn serve(
    cluster: &Cluster,
    nodes: &[TestNode],
    a: &Args,
    listener: std::net::TcpListener,
    mut stop: Stop,
    kubeconfig: &Path,
    started: Instant,
) -> Result<(), String> {
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(|e| e.to_string())?;
    let target = SocketAddr::from((
        API_IP
            .parse::<std::net::Ipv4Addr>()
            .map_err(|e| e.to_string())?,
        API_PORT,
    ));
    let forwarder = tokio::spawn(forward(listener, cluster.underlay.path(), target));
    let client = admin_client(kubeconfig).await?;
    let mut drivers = Vec::new();
    for node in nodes {
        let cri = CriClient::connect(node.ctd.socket())
            .await
            .map_err(|e| format!("CRI of {}: {e}", node.facts.node_name))?;
        drivers.push(NodeDriver::new(
            client.clone(),
            cri,
            node.facts.clone(),
            runtime_options(),
        ));
    }
    let loop_ = ClusterLoop::spawn(client, drivers, Duration::from_millis(500));
    let ready = a.dir.join("ready");
    std::fs::write(&ready, "").map_err(|e| format!("{}: {e}", ready.display()))?;
    eprintln!(
        "kube-cluster: {} nodes up in {:.1} s; export KUBECONFIG={}",
        nodes.len(),
        started.elapsed().as_secs_f64(),
        kubeconfig.display()
    );
    stop.wait().await;
    eprintln!("kube-cluster: stopping (every pod torn down, then the nodes)");
    let stopped = loop_.stop().await.map_err(|e| e.to_string());
    forwarder.abort();
    stopped
}

/// Restarts back off from 2 s to 20 s: kubelet's 10 s to 5 min would make a crash loop (the
/// negative proofs) take minutes to show.
fn runtime_options() -> RuntimeOptions {
    RuntimeOptions {
        backoff: Backoff {
            initial: Duration::from_secs(2),
            max: Duration::from_secs(20),
        },
    }
}

async fn admin_client(kubeconfig: &Path) -> Result<kube::Client, String> {
    trellis_e2e::apiserver::install_crypto_provider();
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).map_err(|e| e.to_string())?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .map_err(|e| e.to_string())?;
    kube::Client::try_from(cfg).map_err(|e| e.to_string())
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

fn remove_empty(dirs: &[PathBuf]) {
    for d in dirs {
        let _ = std::fs::remove_dir(d);
    }
}

/// Stops the `up` of `dir` (SIGTERM, then its own teardown) and sweeps what a killed one left:
/// every process whose command line names `dir` (containerd, shims), the namespaces, the
/// mount points it created, `dir` itself.
fn down(dir: &Path) {
    if !dir.join(MARKER).exists() {
        if dir.exists() {
            eprintln!(
                "kube-cluster: {} was not made by kube-cluster up ({MARKER} missing): left alone",
                dir.display()
            );
        }
        return;
    }
    // No state (killed before writing it) or an unreadable one: the sweep below still finds
    // every process and container under `dir`; only the namespaces and mount points need it.
    let state = std::fs::read_to_string(dir.join("state.json"))
        .ok()
        .and_then(|text| match serde_json::from_str::<State>(&text) {
            Ok(state) => Some(state),
            Err(e) => {
                eprintln!("kube-cluster: {}/state.json unreadable: {e}", dir.display());
                None
            }
        });
    if let Some(state) = &state {
        stop(state.pid);
    }
    for pid in processes_naming(dir) {
        signal(pid, nix::sys::signal::Signal::SIGKILL);
    }
    sweep_containers(&dir.join("tmp"));
    if let Some(state) = &state {
        for ns in &state.netns {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", ns])
                .output();
        }
        remove_empty(&state.created_dirs);
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// The runc containers (pause and app processes, which name no path of ours) and cgroups of
/// every containerd that ran under `tmp`, and the socket each shim left.
fn sweep_containers(tmp: &Path) {
    use trellis_e2e::containerd::{cleanup, Layout, CRI_NAMESPACE};
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for dir in entries.flatten().map(|e| e.path()) {
        let is_containerd = dir
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("trellis-containerd-"));
        if !is_containerd {
            continue;
        }
        let layout = Layout::under(&dir);
        let ids = cleanup::task_ids(&layout.task_bundles(CRI_NAMESPACE));
        for id in &ids {
            cleanup::force_delete_runc_container(CRI_NAMESPACE, id);
            let _ =
                std::fs::remove_file(cleanup::shim_socket_path(&layout.socket, CRI_NAMESPACE, id));
        }
        cleanup::remove_cgroups(CRI_NAMESPACE, &ids);
    }
    cleanup::remove_empty_run_dirs(CRI_NAMESPACE);
}

/// SIGTERM to a running `up` (its own teardown), SIGKILL after 90 s.
fn stop(pid: u32) {
    if !is_ours(pid) {
        return;
    }
    signal(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(90);
    while is_ours(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    if is_ours(pid) {
        eprintln!("kube-cluster: pid {pid} did not stop in 90 s; killing");
        signal(pid, nix::sys::signal::Signal::SIGKILL);
    }
}

fn is_ours(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("kube-cluster"))
        .unwrap_or(false)
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    if let Ok(raw) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), sig);
    }
}

fn processes_naming(dir: &Path) -> Vec<u32> {
    // With the separator: /var/tmp/x must not match /var/tmp/x2 or a `tail -f /var/tmp/x.log`.
    let needle = format!("{}/", dir.display());
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                .unwrap_or(false)
        })
        .collect()
}

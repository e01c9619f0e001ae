//! A real container runtime calling the CNI plugin: a private containerd,
//! running in a "node" network namespace, is driven over CRI like kubelet
//! drives it. Five pod sandboxes must each get a distinct address of the
//! node subnet, reach each other, and give every address back when stopped
//! and removed.
//!
//! Needs root, containerd, runc, containernetworking-plugins (portmap,
//! loopback), gcc + libc6-dev (static pause binary), iptables, nsenter and
//! ping. The trellis binary comes from `$TRELLIS_BIN`, or is built with
//! `cargo build -p trellis-cni --bin trellis`.
//!
//! The same scenario also runs with the reference bridge + host-local
//! plugins: it proves the harness on its own and gives the baseline for the
//! RunPodSandbox latency.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::Flock;
use serde_json::{json, Value};
use tempfile::TempDir;
use trellis_e2e::containerd::{
    self, cleanup, cni, image, Containerd, ContainerdOptions, NodeNetns,
};
use trellis_e2e::cri::{checks, CriClient, HostPort, PodRef, SandboxState, SandboxStatus};
use trellis_testkit::failure::{Failure, TestResult};
use trellis_testkit::{ensure, ipam};

const PODS: usize = 5;
const NETWORK_NAME: &str = "cbr0";
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 7, 1);
const SUBNET_PREFIX: [u8; 3] = [10, 244, 7];
const MTU: u32 = 1450;
const HOST_PORT: HostPort = HostPort {
    host_port: 18080,
    container_port: 80,
};

/// Which plugin chain the conf dir holds.
struct Chain {
    label: &'static str,
    plugins: Vec<(&'static str, PathBuf)>,
    conflist: Value,
}

impl Chain {
    /// `plugins` then portmap and loopback in the bin dir; `main` then portmap in the conflist.
    fn new(label: &'static str, mut plugins: Vec<(&'static str, PathBuf)>, main: Value) -> Self {
        plugins.extend([
            ("portmap", cni::reference_plugin("portmap")),
            // containerd sets up the pod's lo itself, through this plugin.
            ("loopback", cni::reference_plugin("loopback")),
        ]);
        Chain {
            label,
            plugins,
            conflist: json!({
                "cniVersion": "1.0.0",
                "name": NETWORK_NAME,
                "plugins": [
                    main,
                    { "type": "portmap", "capabilities": { "portMappings": true } },
                ],
            }),
        }
    }
}

fn trellis_chain(tmp: &Path) -> TestResult<Chain> {
    let trellis = cni::locate_trellis_binary()?;
    Ok(Chain::new(
        "trellis",
        vec![("trellis", trellis)],
        json!({
            "type": "trellis",
            "subnetFile": tmp.join("subnet.env"),
            "dataDir": tmp.join("ipam"),
        }),
    ))
}

/// The reference plugins configured like trellis: same bridge, subnet,
/// gateway, MTU, hairpin and IPAM directory.
fn reference_chain(tmp: &Path) -> Chain {
    Chain::new(
        "bridge+host-local",
        vec![
            ("bridge", cni::reference_plugin("bridge")),
            ("host-local", cni::reference_plugin("host-local")),
        ],
        json!({
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": true,
            "isDefaultGateway": true,
            "hairpinMode": true,
            "ipMasq": false,
            "mtu": MTU,
            "ipam": {
                "type": "host-local",
                "dataDir": tmp.join("ipam"),
                "ranges": [[{ "subnet": "10.244.7.0/24", "gateway": GATEWAY.to_string() }]],
            },
        }),
    )
}

/// A test's turn on this host: `None` (skipped, loudly) without root; else the host-wide
/// containerd lock, held until dropped, and a temp dir named `<prefix>…`.
fn node_turn(prefix: &str) -> TestResult<Option<(Flock<File>, TempDir)>> {
    if !trellis_testkit::skip_unless_root(
        "the containerd CRI test needs root (network namespaces, containerd, runc). \
         Run it as root: hack/test.sh does.",
    ) {
        return Ok(None);
    }
    let serial = containerd::serial_lock()?;
    let tmp = tempfile::Builder::new().prefix(prefix).tempdir()?;
    Ok(Some((serial, tmp)))
}

#[test]
fn trellis_via_containerd_cri() -> TestResult {
    let Some((_serial, tmp)) = node_turn("trellis-cri-")? else {
        return Ok(());
    };
    let chain = trellis_chain(tmp.path())?;
    run_scenario(tmp.path(), chain)
}

#[test]
fn reference_plugins_via_containerd_cri() -> TestResult {
    let Some((_serial, tmp)) = node_turn("trellis-cri-ref-")? else {
        return Ok(());
    };
    let chain = reference_chain(tmp.path());
    run_scenario(tmp.path(), chain)
}

/// subnet.env, CNI bin and conf dirs, pause image; then a node netns with
/// containerd running in it and the image imported. Returns containerd and
/// the import time.
fn start_node(tmp: &Path, chain: &Chain) -> TestResult<(Containerd, Duration)> {
    std::fs::write(
        tmp.join("subnet.env"),
        format!(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={GATEWAY}/24\nFLANNEL_MTU={MTU}\nFLANNEL_IPMASQ=false\n"
        ),
    )?;
    let bin_dir = tmp.join("cni/bin");
    let conf_dir = tmp.join("cni/conf");
    let links: Vec<(&str, &Path)> = chain
        .plugins
        .iter()
        .map(|(name, path)| (*name, path.as_path()))
        .collect();
    cni::link_plugins(&bin_dir, &links)?;
    cni::write_conflist(&conf_dir, "10-cbr0.conflist", &chain.conflist)?;
    let image_tar = image::build_pause_image(tmp)?;

    let node = NodeNetns::create("tcri")?;
    let ctd = Containerd::start(node, &ContainerdOptions::new(bin_dir, conf_dir))?;
    let import_start = Instant::now();
    ctd.import_image(&image_tar)?;
    Ok((ctd, import_start.elapsed()))
}

fn run_scenario(tmp: &Path, chain: Chain) -> TestResult {
    let (ctd, import_time) = start_node(tmp, &chain)?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(pods_lifecycle(&ctd, tmp, chain.label));
    match result {
        Ok(latencies) => {
            let mut sorted = latencies.clone();
            sorted.sort();
            eprintln!(
                "[{}] containerd start {:?}, pause image import {:?}, RunPodSandbox each {:?} (median {:?}), {PODS} pods",
                chain.label,
                ctd.started_in(),
                import_time,
                latencies,
                sorted[sorted.len() / 2],
            );
            Ok(())
        }
        Err(Failure(msg)) => Err(Failure(format!(
            "[{}] {msg}\n--- containerd log tail ---\n{}",
            chain.label,
            ctd.log_tail(40)
        ))),
    }
}

/// Runs, checks, stops and removes the pods; returns the RunPodSandbox
/// latencies.
async fn pods_lifecycle(ctd: &Containerd, tmp: &Path, label: &str) -> TestResult<Vec<Duration>> {
    let mut cri = CriClient::connect(ctd.socket()).await?;
    let (runtime_name, runtime_version) = cri.version().await?;
    ensure!(
        runtime_name == "containerd",
        "expected containerd behind the CRI socket, got {runtime_name} {runtime_version}"
    );
    cri.wait_network_ready(Duration::from_secs(10)).await?;

    // One pod with a hostPort: the runtime then hands portMappings to
    // the chained portmap plugin, which needs the first plugin's result.
    let (ids, latencies) = checks::run_sandboxes(
        &mut cri,
        PODS,
        ("pod", "trellis-cri"),
        |i| if i == 0 { &[HOST_PORT] } else { &[] },
        Some(label),
    )
    .await?;

    let statuses = checks::statuses(&mut cri, &ids).await?;
    let pod_ips = checks::pod_addresses(&statuses, SUBNET_PREFIX, GATEWAY, "10.244.7.0/24")?;
    ipam::check_records(&ipam_dir(tmp), &ids, &pod_ips)?;
    check_node(ctd.node(), PODS)?;
    for status in &statuses {
        check_pod_interfaces(status)?;
    }
    check_pings(&statuses, &pod_ips)?;
    check_hostport_rule(ctd.node(), pod_ips[0], true)?;

    let listed = cri.list_pod_sandboxes().await?;
    for id in &ids {
        ensure!(
            listed
                .iter()
                .any(|s| &s.id == id && s.state == SandboxState::Ready),
            "sandbox {id} missing or not ready in ListPodSandbox: {listed:?}"
        );
    }

    checks::stop_and_remove(&mut cri, &ids).await?;
    ipam::check_all_released(&ipam_dir(tmp))?;
    check_node(ctd.node(), 0)?;
    check_hostport_rule(ctd.node(), pod_ips[0], false)?;
    let tasks = ctd.live_task_ids();
    ensure!(tasks.is_empty(), "shim tasks left after removal: {tasks:?}");
    Ok(latencies)
}

/// host-local layout: `<dataDir>/<network>/<ip>` holds the container id
/// containerd passed (the sandbox id) on its first line.
fn ipam_dir(tmp: &Path) -> PathBuf {
    tmp.join("ipam").join(NETWORK_NAME)
}

/// The bridge with the gateway address, and `veths` host-side veths, all in
/// the node namespace.
fn check_node(node: &NodeNetns, veths: usize) -> TestResult {
    let links = node.ip(["-o", "link", "show", "type", "veth"])?;
    let count = links.lines().filter(|l| !l.trim().is_empty()).count();
    ensure!(
        count == veths,
        "node {} has {count} host veths, expected {veths}:\n{links}",
        node.name()
    );
    let addrs = node.ip(["-o", "-4", "addr", "show", "dev", "cni0"])?;
    ensure!(
        addrs.contains(&format!("inet {GATEWAY}/24")),
        "cni0 in node {} lacks {GATEWAY}/24:\n{addrs}",
        node.name()
    );
    Ok(())
}

/// Runs `program args` inside the sandbox's netns. The netns is entered by
/// the pause pid: its bind mount lives in containerd's private mount
/// namespace and is not visible from here.
fn in_pod(status: &SandboxStatus, program: &str, args: &[&str]) -> TestResult<String> {
    let (ok, stdout, stderr) = checks::in_sandbox(status, program, args)?;
    ensure!(
        ok,
        "`{program} {}` in sandbox {} failed: {stdout}{stderr}",
        args.join(" "),
        status.id,
    );
    Ok(stdout)
}

fn check_pod_interfaces(status: &SandboxStatus) -> TestResult {
    let eth0 = in_pod(status, "ip", &["-o", "link", "show", "eth0"])?;
    ensure!(
        eth0.contains(&format!("mtu {MTU} ")),
        "eth0 of sandbox {} should have MTU {MTU}: {eth0}",
        status.id
    );
    let lo = in_pod(status, "ip", &["-o", "link", "show", "lo"])?;
    ensure!(
        lo.contains("UP"),
        "lo of sandbox {} is not up (loopback plugin): {lo}",
        status.id
    );
    let routes = in_pod(status, "ip", &["-4", "route", "show", "default"])?;
    ensure!(
        routes.contains(&format!("via {GATEWAY}")),
        "sandbox {} has no default route via {GATEWAY}: {routes}",
        status.id
    );
    Ok(())
}

/// Every pod pings every other pod (through cni0 in the node namespace).
fn check_pings(statuses: &[SandboxStatus], ips: &[Ipv4Addr]) -> TestResult {
    for (from, status) in statuses.iter().enumerate() {
        for (to, ip) in ips.iter().enumerate() {
            if from == to {
                continue;
            }
            let target = ip.to_string();
            in_pod(status, "ping", &["-c", "1", "-W", "2", "-q", &target])
                .map_err(|Failure(m)| Failure(format!("pod-{from} -> pod-{to} ({ip}): {m}")))?;
        }
    }
    Ok(())
}

/// portmap's DNAT rule for the hostPort, present while the pod runs and
/// gone after CNI DEL.
fn check_hostport_rule(node: &NodeNetns, pod_ip: Ipv4Addr, present: bool) -> TestResult {
    let out = node.command("iptables-save").args(["-t", "nat"]).output()?;
    ensure!(
        out.status.success(),
        "iptables-save in node {}: {}",
        node.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    let rules = String::from_utf8_lossy(&out.stdout);
    let dnat = format!("--to-destination {pod_ip}:{}", HOST_PORT.container_port);
    let found = rules
        .lines()
        .any(|l| l.contains(&dnat) && l.contains(&format!("--dport {}", HOST_PORT.host_port)));
    ensure!(
        found == present,
        "hostPort DNAT {}:{} -> {pod_ip}:{} in node {} should be {}:\n{rules}",
        "node",
        HOST_PORT.host_port,
        HOST_PORT.container_port,
        node.name(),
        if present { "present" } else { "gone" }
    );
    Ok(())
}

/// The Drop guard on its own: sandboxes left running (as after a failed
/// assertion or a panic) must not outlive it. No pause or shim process, no
/// runc state, no netns, no private directory may remain.
#[test]
fn guard_cleans_up_abandoned_sandboxes() -> TestResult {
    let Some((_serial, tmp)) = node_turn("trellis-cri-guard-")? else {
        return Ok(());
    };
    let (ctd, _) = start_node(tmp.path(), &reference_chain(tmp.path()))?;
    let node_name = ctd.node().name().to_string();
    let socket = ctd.socket().to_path_buf();
    let private_dir = ctd.dir().to_path_buf();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut pauses = Vec::new();
    let mut ids = Vec::new();
    runtime.block_on(async {
        let mut cri = CriClient::connect(&socket).await?;
        cri.wait_network_ready(Duration::from_secs(10)).await?;
        for i in 0..2 {
            let pod = PodRef {
                name: format!("abandoned-{i}"),
                namespace: "trellis-cri".into(),
                uid: format!("abandoned-{i}"),
            };
            let id = cri.run_pod_sandbox(&pod, &[]).await?;
            let status = cri.pod_sandbox_status(&id).await?;
            let pid = status
                .info
                .pid
                .ok_or_else(|| Failure(format!("sandbox {id} has no pause pid")))?;
            pauses.push(pid);
            ids.push(id);
        }
        TestResult::Ok(())
    })?;
    ensure!(
        !cleanup::shim_pids(&socket).is_empty(),
        "expected running shims before the guard drops"
    );

    drop(ctd);

    for pid in &pauses {
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        // A reused pid would have another command line than our pause.
        let alive = std::fs::read(proc_dir.join("cmdline")).is_ok_and(|c| c.starts_with(b"/pause"));
        ensure!(!alive, "pause process {pid} survived the guard");
    }
    let shims = cleanup::shim_pids(&socket);
    ensure!(shims.is_empty(), "shims survived the guard: {shims:?}");
    for id in &ids {
        let state = Path::new(cleanup::RUNC_ROOT).join("k8s.io").join(id);
        ensure!(!state.exists(), "runc state {} left", state.display());
        let shim_socket = cleanup::shim_socket_path(&socket, "k8s.io", id);
        ensure!(
            !shim_socket.exists(),
            "shim socket {} left",
            shim_socket.display()
        );
    }
    ensure!(
        !Path::new("/run/netns").join(&node_name).exists(),
        "node netns {node_name} left"
    );
    ensure!(
        !private_dir.exists(),
        "containerd dir {} left",
        private_dir.display()
    );
    Ok(())
}

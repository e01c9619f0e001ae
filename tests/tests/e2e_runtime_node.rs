//! A node driven by a real container runtime, the path kubelet takes in a
//! kind cluster: in a two-node namespace cluster (VXLAN, API emulator,
//! agents), node-1 gets host-like CNI directories filled by
//! `trellis-agent install-cni` with the conflist shipped in the deploy
//! ConfigMap, its agent writes the subnet file that conflist names, and a
//! private containerd running in node-1's namespace creates pod sandboxes
//! through CRI. The sandboxes must get addresses of node-1's podCIDR, reach
//! each other and a pod on node-2 across VXLAN, and give their addresses
//! back when stopped and removed.
//!
//! Needs root, containerd, runc, containernetworking-plugins (portmap,
//! loopback), gcc + libc6-dev (static pause binary), kubectl, nsenter, ping,
//! and the workspace binaries (`trellis`, `trellis-agent`, `kube-emulator`;
//! hack/test.sh builds them).

use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use trellis_e2e::containerd::{self, cni, image, Containerd, ContainerdOptions, NodeNetns};
use trellis_e2e::cri::{checks, CriClient, SandboxStatus};
use trellis_e2e::netns_cluster::{Cluster, Options};
use trellis_e2e::poll::eventually;
use trellis_testkit::failure::{Failure, TestResult};
use trellis_testkit::{ensure, ipam};

const READY: Duration = Duration::from_secs(60);
const CRI_PODS: usize = 2;
/// node-1's podCIDR as the harness registers it.
const NODE1_PREFIX: [u8; 3] = [10, 244, 1];
const NODE1_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
/// The shipped ConfigMap, as an operator applies it.
const DEPLOY_CONFIGMAP: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/manifests/configmap.yaml"
);
const DEPLOY_NAMESPACE: &str = "trellis-system";
const DEPLOY_CONFIGMAP_NAME: &str = "trellis-config";
const CONFLIST_NAME: &str = "10-trellis.conflist";

/// node-1's host paths, as a kubelet node has them, under its temp dir.
struct HostDirs {
    bin_dir: PathBuf,
    conf_dir: PathBuf,
    subnet_file: PathBuf,
    data_dir: PathBuf,
}

impl HostDirs {
    fn under(root: &Path) -> Self {
        Self {
            bin_dir: root.join("opt/cni/bin"),
            conf_dir: root.join("etc/cni/net.d"),
            subnet_file: root.join("run/flannel/subnet.env"),
            data_dir: root.join("var/lib/cni/networks"),
        }
    }
}

#[test]
fn runtime_driven_node_gets_pod_cidr_addresses_and_reaches_other_node() -> TestResult {
    ensure!(
        trellis_testkit::is_root(),
        "the runtime-driven node test needs root (network namespaces, containerd, runc)"
    );
    let t0 = Instant::now();
    // containerd instances share /run/containerd and the k8s.io cgroup
    // parent: one test with a private containerd at a time.
    let _serial = containerd::serial_lock()?;

    // Declared before containerd, so dropped after it: containerd's guard
    // kills the sandboxes while node-1's netns still exists.
    let mut cluster = Cluster::up(Options {
        nodes: 2,
        backend: r#"{"Type":"vxlan"}"#.into(),
        tag: "rtn".into(),
        agent_args: vec![],
        ..Default::default()
    })?;
    let host = HostDirs::under(&cluster.nodes[0].dir.join("host"));

    // The node image ships the reference plugins (kind's does); the chain
    // needs portmap, and containerd sets up the pod's lo with loopback.
    cni::link_plugins(
        &host.bin_dir,
        &[
            ("portmap", &cni::reference_plugin("portmap")),
            ("loopback", &cni::reference_plugin("loopback")),
        ],
    )?;
    let conflist_file = cluster.dir.join("cni-conf.json");
    let conflist = deploy_conflist(&cluster, &host)?;
    std::fs::write(&conflist_file, serde_json::to_vec_pretty(&conflist)?)?;
    install_cni_twice(&cluster, &host, &conflist_file, &conflist)?;

    start_agents(&mut cluster, &host)?;
    let t_ready = t0.elapsed();

    let build = tempfile::Builder::new()
        .prefix("trellis-rtn-img-")
        .tempdir()?;
    let image_tar = image::build_pause_image(build.path())?;
    let node = NodeNetns::adopt(&cluster.nodes[0].ns.name)?;
    let ctd = Containerd::start(
        node,
        &ContainerdOptions::new(host.bin_dir.clone(), host.conf_dir.clone()),
    )?;
    ctd.import_image(&image_tar)?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(scenario(&mut cluster, &ctd, &host));
    match result {
        Ok(latencies) => {
            eprintln!(
                "runtime node: cluster + install-cni + agents ready {t_ready:?}, containerd start {:?}, \
                 RunPodSandbox {latencies:?}, total {:?}",
                ctd.started_in(),
                t0.elapsed()
            );
            Ok(())
        }
        Err(Failure(msg)) => Err(Failure(format!(
            "{msg}\n--- containerd log tail ---\n{}\n--- node-1 agent log tail ---\n{}",
            ctd.log_tail(30),
            cluster.agent_log(0)
        ))),
    }
}

/// The `cni-conf.json` of the shipped ConfigMap, read back from the API
/// (what the DaemonSet mounts), with `subnetFile` and `dataDir` of the
/// trellis plugin moved from the host defaults into node-1's temp dirs.
fn deploy_conflist(cluster: &Cluster, host: &HostDirs) -> TestResult<Value> {
    // The emulator serves no Namespace objects; a ConfigMap's namespace
    // needs none there.
    cluster.kubectl(&["create", "-f", DEPLOY_CONFIGMAP])?;
    let cm: Value = serde_json::from_str(&cluster.kubectl(&[
        "-n",
        DEPLOY_NAMESPACE,
        "get",
        "configmap",
        DEPLOY_CONFIGMAP_NAME,
        "-o",
        "json",
    ])?)?;
    let text = cm["data"]["cni-conf.json"].as_str().ok_or_else(|| {
        Failure(format!(
            "{DEPLOY_CONFIGMAP} has no data.cni-conf.json string: {cm}"
        ))
    })?;
    let mut conflist: Value = serde_json::from_str(text)
        .map_err(|e| Failure(format!("cni-conf.json of {DEPLOY_CONFIGMAP}: {e}")))?;
    let plugin = conflist["plugins"]
        .as_array_mut()
        .and_then(|ps| ps.iter_mut().find(|p| p["type"] == "trellis"))
        .and_then(Value::as_object_mut)
        .ok_or_else(|| Failure(format!("no trellis plugin in cni-conf.json: {text}")))?;
    // The shipped conflist relies on the defaults (/run/flannel/subnet.env,
    // /var/lib/cni/networks); pointing them here must be all a node needs.
    ensure!(
        !plugin.contains_key("subnetFile") && !plugin.contains_key("dataDir"),
        "the shipped conflist now sets subnetFile/dataDir itself: {text}"
    );
    plugin.insert(
        "subnetFile".into(),
        host.subnet_file.display().to_string().into(),
    );
    plugin.insert("dataDir".into(), host.data_dir.display().to_string().into());
    Ok(conflist)
}

/// (inode, mtime in ns) of a file: a rewrite, even with the same bytes,
/// changes one of them.
fn identity(path: &Path) -> TestResult<(u64, i128)> {
    let m = std::fs::metadata(path).map_err(|e| Failure(format!("{}: {e}", path.display())))?;
    Ok((
        m.ino(),
        i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
    ))
}

fn install_cni(cluster: &Cluster, host: &HostDirs, conflist_file: &Path) -> TestResult<String> {
    let out = Command::new(cluster.agent_bin())
        .arg("install-cni")
        .arg(format!(
            "--plugin-source={}",
            cluster.plugin_bin().display()
        ))
        .arg(format!("--bin-dir={}", host.bin_dir.display()))
        .arg(format!("--conflist={}", conflist_file.display()))
        .arg(format!("--conf-dir={}", host.conf_dir.display()))
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "install-cni failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

/// First run installs the plugin and the conflist; the second finds both in
/// place and leaves them alone (not even rewritten), and no temp file of
/// the atomic write stays behind in either directory.
fn install_cni_twice(
    cluster: &Cluster,
    host: &HostDirs,
    conflist_file: &Path,
    conflist: &Value,
) -> TestResult {
    let plugin = host.bin_dir.join("trellis");
    let installed = host.conf_dir.join(CONFLIST_NAME);

    let first = install_cni(cluster, host, conflist_file)?;
    for line in [
        format!("plugin {}: created", plugin.display()),
        format!("conflist {}: created", installed.display()),
    ] {
        ensure!(
            first.contains(&line),
            "install-cni did not report `{line}`:\n{first}"
        );
    }
    ensure!(
        !first.contains("warning"),
        "install-cni warned on an empty conf dir:\n{first}"
    );
    ensure!(
        std::fs::read(&plugin)? == std::fs::read(cluster.plugin_bin())?,
        "{} differs from the plugin source",
        plugin.display()
    );
    let mode = std::fs::metadata(&plugin)?.mode() & 0o777;
    ensure!(mode == 0o755, "plugin mode {mode:o}, expected 755");
    let back: Value = serde_json::from_slice(&std::fs::read(&installed)?)?;
    ensure!(&back == conflist, "installed conflist differs: {back}");
    let before = (identity(&plugin)?, identity(&installed)?);

    let second = install_cni(cluster, host, conflist_file)?;
    ensure!(
        second.contains("already installed, nothing changed"),
        "second install-cni run should change nothing:\n{second}"
    );
    let after = (identity(&plugin)?, identity(&installed)?);
    ensure!(
        before == after,
        "second install-cni run rewrote files (inode, mtime): {before:?} -> {after:?}"
    );
    for dir in [&host.bin_dir, &host.conf_dir] {
        let mut names: Vec<String> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        names.sort();
        ensure!(
            names
                .iter()
                .all(|n| !n.starts_with('.') && !n.ends_with(".tmp")),
            "temp files left in {}: {names:?}",
            dir.display()
        );
    }
    let confs: Vec<String> = std::fs::read_dir(&host.conf_dir)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    ensure!(
        confs == [CONFLIST_NAME],
        "conf dir should hold only {CONFLIST_NAME}: {confs:?}"
    );
    Ok(())
}

/// node-1's agent writes the subnet file the installed conflist names;
/// node-2's runs as the harness configures it. Both ready, and each routes
/// the other's podCIDR.
fn start_agents(cluster: &mut Cluster, host: &HostDirs) -> TestResult {
    let mut args: Vec<String> = cluster
        .agent_args(0)
        .into_iter()
        .filter(|a| !a.starts_with("--subnet-file="))
        .collect();
    args.push(format!("--subnet-file={}", host.subnet_file.display()));
    cluster.start_agent_with_args(0, &args)?;
    cluster.start_agent(1)?;

    let ready = eventually(READY, || {
        matches!(cluster.agent_http(0, "/readyz"), Some((200, _))) && host.subnet_file.exists()
    });
    ensure!(
        ready,
        "node-1 agent not ready (or no {}) after {READY:?}:\n{}",
        host.subnet_file.display(),
        cluster.agent_log(0)
    );
    cluster.wait_ready(1, READY)?;

    let env = std::fs::read_to_string(&host.subnet_file)?;
    ensure!(
        env.lines()
            .any(|l| l == format!("FLANNEL_SUBNET={NODE1_GATEWAY}/24")),
        "{} does not carry node-1's podCIDR:\n{env}",
        host.subnet_file.display()
    );
    for (node, peer) in [(0, "10.244.2.0/24"), (1, "10.244.1.0/24")] {
        let routed = eventually(READY, || cluster.routes(node).contains(peer));
        ensure!(
            routed,
            "node-{} never routed {peer}: {}\n{}",
            node + 1,
            cluster.routes(node),
            cluster.agent_log(node)
        );
    }
    Ok(())
}

/// Runs the sandboxes, checks addresses and reachability, then stops and
/// removes them and checks that everything is given back. Returns the
/// RunPodSandbox latencies.
async fn scenario(
    cluster: &mut Cluster,
    ctd: &Containerd,
    host: &HostDirs,
) -> TestResult<Vec<Duration>> {
    let mut cri = CriClient::connect(ctd.socket()).await?;
    // containerd reports NetworkReady only once it loaded the conflist
    // install-cni put in its conf dir.
    cri.wait_network_ready(Duration::from_secs(10)).await?;

    let (ids, latencies) =
        checks::run_sandboxes(&mut cri, CRI_PODS, ("web", "default"), |_| &[], None).await?;
    let statuses = checks::statuses(&mut cri, &ids).await?;
    let ips = checks::pod_addresses(
        &statuses,
        NODE1_PREFIX,
        NODE1_GATEWAY,
        "node-1's podCIDR 10.244.1.0/24",
    )?;
    ipam::check_records(&ipam_dir(host), &ids, &ips)?;
    ensure!(
        bridge_ports(ctd.node())? == CRI_PODS,
        "cni0 in node-1 should have {CRI_PODS} pod veths"
    );

    let remote = cluster.add_pod(1)?;
    ensure!(
        remote.ip.starts_with("10.244.2."),
        "node-2 pod got {}, not an address of 10.244.2.0/24",
        remote.ip
    );
    for (from, status) in statuses.iter().enumerate() {
        for (to, ip) in ips.iter().enumerate() {
            if from != to {
                ping_from_sandbox(status, &ip.to_string())
                    .map_err(|Failure(m)| Failure(format!("web-{from} -> web-{to}: {m}")))?;
            }
        }
        ping_from_sandbox(status, &remote.ip)
            .map_err(|Failure(m)| Failure(format!("web-{from} -> node-2 pod across VXLAN: {m}")))?;
    }
    for ip in &ips {
        ensure!(
            remote.ping(&ip.to_string()),
            "node-2 pod {} cannot ping sandbox {ip} on node-1 across VXLAN",
            remote.ip
        );
    }

    checks::stop_and_remove(&mut cri, &ids).await?;
    ipam::check_addresses_released(&ipam_dir(host))?;
    ensure!(
        bridge_ports(ctd.node())? == 0,
        "pod veths left on cni0 after removal"
    );
    let tasks = ctd.live_task_ids();
    ensure!(tasks.is_empty(), "shim tasks left after removal: {tasks:?}");
    cluster.del_pod(&remote)?;
    Ok(latencies)
}

/// host-local's layout under the dataDir the conflist names:
/// `<dataDir>/<network>/<ip>` holds the sandbox id containerd passed.
fn ipam_dir(host: &HostDirs) -> PathBuf {
    host.data_dir.join("cbr0")
}

/// Host-side pod veths attached to cni0 in node-1 (the node's own eth0 is a
/// veth too, so counting all veths would not do).
fn bridge_ports(node: &NodeNetns) -> TestResult<usize> {
    let out = node.ip(["-o", "link", "show", "master", "cni0"])?;
    Ok(out.lines().filter(|l| !l.trim().is_empty()).count())
}

/// Pings `ip` from inside the sandbox's netns, entered through its pause
/// pid: the netns bind mount lives in containerd's private mount namespace.
fn ping_from_sandbox(status: &SandboxStatus, ip: &str) -> TestResult {
    let (ok, stdout, stderr) =
        checks::in_sandbox(status, "ping", &["-c", "1", "-W", "2", "-q", ip])?;
    ensure!(
        ok,
        "sandbox {} cannot ping {ip}: {stdout}{stderr}",
        status.id
    );
    Ok(())
}

//! A Kubernetes cluster in network namespaces, for end-to-end tests and the
//! demo: an underlay bridge joining N node namespaces, an "outside" host
//! routed through the underlay, the API emulator on the underlay, one
//! `trellis-agent` per node, and pods made by the `trellis` CNI plugin.
//!
//! ```text
//!   ext (192.168.60.1) ── underlay ns: br0 192.168.50.254/24, api :6443
//!                                  │        │        │
//!                        node-1 .11   node-2 .12   node-3 .13   (eth0, default via .254)
//!                          cni0 10.244.1.1   ...
//! ```
//! Everything is torn down on drop, also when a test panics.

pub mod forward;
mod netns;
mod procs;

pub use netns::{in_netns, Netns};
pub use procs::{locate_binary, Proc};

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const UNDERLAY_PREFIX: &str = "192.168.50";
pub const API_IP: &str = "192.168.50.254";
pub const EXT_IP: &str = "192.168.60.1";
pub const CONFIGMAP_NS: &str = "kube-flannel";
pub const CONFIGMAP_NAME: &str = "trellis-config";

pub fn net_conf(backend: &str) -> String {
    format!(r#"{{"Network":"10.244.0.0/16","Backend":{backend}}}"#)
}

pub struct Node {
    pub name: String,
    pub ns: Netns,
    pub ip: Ipv4Addr,
    pub pod_cidr: String,
    pub gateway: String,
    pub dir: PathBuf,
    agent: Option<Proc>,
}

impl Node {
    pub fn subnet_file(&self) -> PathBuf {
        self.dir.join("subnet.env")
    }
    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.join("ipam")
    }
    pub fn agent_running(&self) -> bool {
        self.agent.is_some()
    }
    /// The running agent's pid (`ip netns exec` execs it in place), for benchmarks' RSS.
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(Proc::pid)
    }
}

pub struct Pod {
    pub name: String,
    pub node: usize,
    pub ns: Netns,
    pub ip: String,
}

impl Pod {
    pub fn ping(&self, ip: &str) -> bool {
        self.ns.exec_ok(&["ping", "-c", "1", "-W", "2", ip])
    }
}

impl Cluster {
    /// trellis's routes on node `i` (`ip route show proto 116`); empty if unreadable.
    pub fn routes(&self, i: usize) -> String {
        trellis_testkit::kernel::routes(&self.nodes[i].ns)
    }

    /// Whether every node routes every other node's podCIDR (all advertised and programmed).
    pub fn fully_routed(&self) -> bool {
        (0..self.nodes.len()).all(|n| {
            let r = self.routes(n);
            self.nodes
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != n)
                .all(|(_, o)| r.contains(&o.pod_cidr))
        })
    }
}

pub struct Options {
    pub nodes: usize,
    /// The Backend member of net-conf.json.
    pub backend: String,
    pub tag: String,
    /// Extra arguments for every agent.
    pub agent_args: Vec<String>,
    /// Extra arguments for the API emulator (e.g. `--namespaces required`).
    pub emulator_args: Vec<String>,
    /// Create the agents' ConfigMap (net-conf.json with `backend`) in [`CONFIGMAP_NS`]; off
    /// when the cluster's user brings it (`kubectl apply -k deploy`).
    pub seed_configmap: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            nodes: 3,
            backend: r#"{"Type":"vxlan"}"#.into(),
            tag: "e2e".into(),
            agent_args: Vec::new(),
            emulator_args: Vec::new(),
            seed_configmap: true,
        }
    }
}

pub struct Cluster {
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub underlay: Netns,
    pub ext: Netns,
    pub nodes: Vec<Node>,
    pub kubeconfig: PathBuf,
    emulator: Option<Proc>,
    agent_bin: PathBuf,
    plugin_bin: PathBuf,
    emulator_bin: PathBuf,
    emulator_args: Vec<String>,
    agent_args: Vec<String>,
    pods: usize,
}

impl Cluster {
    /// Build the namespaces, start the emulator, register the Nodes and the
    /// ConfigMap. Agents are started separately ([`Cluster::start_agents`]).
    pub fn up(opts: Options) -> Result<Cluster, String> {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("trellis-{}-", opts.tag))
            .tempdir()
            .map_err(|e| e.to_string())?;
        Self::up_in(opts, tmp.path().to_path_buf(), Some(tmp))
    }

    /// Like [`Cluster::up`] but in a fixed directory (the demo keeps it).
    pub fn up_in(
        opts: Options,
        dir: PathBuf,
        tmp: Option<tempfile::TempDir>,
    ) -> Result<Cluster, String> {
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let underlay = netns::create(&format!("{}-u", opts.tag))?;
        let ext = netns::create(&format!("{}-x", opts.tag))?;
        let mut cluster = Cluster {
            dir: dir.clone(),
            _tmp: tmp,
            underlay,
            ext,
            nodes: Vec::new(),
            kubeconfig: dir.join("api/kubeconfig"),
            emulator: None,
            agent_bin: locate_binary("trellis-agent", "TRELLIS_AGENT_BIN")?,
            plugin_bin: locate_binary("trellis", "TRELLIS_BIN")?,
            emulator_bin: locate_binary("kube-emulator", "KUBE_EMULATOR_BIN")?,
            emulator_args: opts.emulator_args.clone(),
            agent_args: opts.agent_args.clone(),
            pods: 0,
        };
        let x = cluster.ext.name.clone();
        // Underlay: a bridge with the API address; routes the outside host.
        cluster.underlay.ip_batch(&format!(
            "link add br0 type bridge\nlink set br0 up\naddr add {API_IP}/24 dev br0\n\
             link add tox type veth peer name eth0 netns {x}\nlink set tox up\naddr add 192.168.60.254/24 dev tox\n"
        ))?;
        cluster.underlay.sysctl("net.ipv4.ip_forward", "1")?;
        cluster.ext.ip_batch(&format!(
            "link set eth0 up\naddr add {EXT_IP}/24 dev eth0\nroute add {UNDERLAY_PREFIX}.0/24 via 192.168.60.254\n"
        ))?;
        for i in 1..=opts.nodes {
            let ns = netns::create(&format!("{}-n{i}", opts.tag))?;
            let ip: Ipv4Addr = format!("{UNDERLAY_PREFIX}.{}", 10 + i)
                .parse()
                .map_err(|e| format!("{e}"))?;
            cluster.underlay.ip_batch(&format!(
                "link add p{i} type veth peer name eth0 netns {}\nlink set p{i} master br0 up\n",
                ns.name
            ))?;
            ns.ip_batch(&format!(
                "link set eth0 up\naddr add {ip}/24 dev eth0\nroute add default via {API_IP}\n"
            ))?;
            let dir = dir.join(format!("node-{i}"));
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            cluster.nodes.push(Node {
                name: format!("node-{i}"),
                ns,
                ip,
                pod_cidr: format!("10.244.{i}.0/24"),
                gateway: format!("10.244.{i}.1"),
                dir,
                agent: None,
            });
        }
        cluster.start_emulator()?;
        for i in 0..cluster.nodes.len() {
            cluster.create_node_object(i)?;
        }
        if opts.seed_configmap {
            cluster.seed_configmap(&opts.backend)?;
        }
        Ok(cluster)
    }

    fn seed_configmap(&self, backend: &str) -> Result<(), String> {
        self.kubectl_stdin(
            &["apply", "-f", "-"],
            &json!({
                "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": CONFIGMAP_NS}
            })
            .to_string(),
        )
        .ok();
        self.kubectl_stdin(
            &["create", "-f", "-"],
            &json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": CONFIGMAP_NAME, "namespace": CONFIGMAP_NS},
                "data": {"net-conf.json": net_conf(backend)}
            })
            .to_string(),
        )
        .map(|_| ())
    }

    pub fn start_emulator(&mut self) -> Result<(), String> {
        let api_dir = self.dir.join("api");
        let log = self.dir.join("api.log");
        let p = Proc::spawn_in(
            &self.underlay,
            &self.emulator_bin,
            &[
                "--listen".into(),
                format!("{API_IP}:6443"),
                "--dir".into(),
                api_dir.display().to_string(),
                "--bookmark-interval-ms".into(),
                "2000".into(),
            ]
            .into_iter()
            .chain(self.emulator_args.iter().cloned())
            .collect::<Vec<_>>(),
            &log,
        )?;
        self.emulator = Some(p);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.kubeconfig.exists() && self.kubectl(&["get", "--raw", "/version"]).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!("API emulator did not come up; log: {}", tail(&log)))
    }

    /// Stop the emulator (SIGTERM: it persists its state): an API outage until
    /// [`Cluster::start_emulator`].
    pub fn stop_emulator(&mut self) {
        if let Some(p) = self.emulator.take() {
            p.terminate(Duration::from_secs(10));
        }
    }

    /// Stop the emulator (SIGTERM: it persists its state) and start it again.
    pub fn restart_emulator(&mut self) -> Result<(), String> {
        if let Some(p) = self.emulator.take() {
            p.terminate(Duration::from_secs(10));
        }
        self.start_emulator()
    }

    fn create_node_object(&self, i: usize) -> Result<(), String> {
        let n = &self.nodes[i];
        // What kubelet registers and the controller-manager completes.
        let node = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": n.name, "labels": {"kubernetes.io/os": "linux", "kubernetes.io/hostname": n.name}},
            "spec": {"podCIDR": n.pod_cidr, "podCIDRs": [n.pod_cidr]},
            "status": {"addresses": [{"type": "InternalIP", "address": n.ip.to_string()}, {"type": "Hostname", "address": n.name}]}
        });
        self.kubectl_stdin(&["create", "-f", "-"], &node.to_string())
            .map(|_| ())
    }

    pub fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        self.kubectl_stdin(args, "")
    }

    /// kubectl (a real client) against the emulator, from the underlay namespace.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Result<String, String> {
        let kc = self.kubeconfig.display().to_string();
        let mut full = vec!["--kubeconfig", kc.as_str(), "--request-timeout=10s"];
        full.extend_from_slice(args);
        self.underlay.exec_with_stdin("kubectl", &full, stdin)
    }

    pub fn node_json(&self, name: &str) -> Result<Value, String> {
        let out = self.kubectl(&["get", "node", name, "-o", "json"])?;
        serde_json::from_str(&out).map_err(|e| e.to_string())
    }

    pub fn set_backend(&self, backend: &str) -> Result<(), String> {
        self.set_net_conf(&net_conf(backend))
    }

    /// Writes `conf` as the ConfigMap's net-conf.json (the agents follow it live).
    pub fn set_net_conf(&self, conf: &str) -> Result<(), String> {
        let patch = json!({"data": {"net-conf.json": conf}}).to_string();
        self.kubectl(&[
            "-n",
            CONFIGMAP_NS,
            "patch",
            "configmap",
            CONFIGMAP_NAME,
            "--type",
            "merge",
            "-p",
            &patch,
        ])
        .map(|_| ())
    }

    pub fn agent_args(&self, i: usize) -> Vec<String> {
        let n = &self.nodes[i];
        let mut a = vec![
            "run".into(),
            format!("--kubeconfig={}", self.kubeconfig.display()),
            format!("--node-name={}", n.name),
            format!("--configmap-namespace={CONFIGMAP_NS}"),
            format!("--configmap-name={CONFIGMAP_NAME}"),
            format!("--subnet-file={}", n.subnet_file().display()),
            // Each node its own WireGuard key, not the host's /run/flannel/wgkey.
            format!("--wireguard-key-file={}", n.dir.join("wgkey").display()),
            "--health-addr=127.0.0.1:9402".into(),
            "--iface=eth0".into(),
        ];
        a.extend(self.agent_args.iter().cloned());
        a
    }

    pub fn start_agent(&mut self, i: usize) -> Result<(), String> {
        let args = self.agent_args(i);
        let log = self.nodes[i].dir.join("agent.log");
        let p = Proc::spawn_in(&self.nodes[i].ns, &self.agent_bin, &args, &log)?;
        self.nodes[i].agent = Some(p);
        Ok(())
    }

    /// Start node `i`'s agent with `args` instead of [`Cluster::agent_args`]
    /// (e.g. those with another `--subnet-file`); stopped like the others.
    pub fn start_agent_with_args(&mut self, i: usize, args: &[String]) -> Result<(), String> {
        let log = self.nodes[i].dir.join("agent.log");
        let p = Proc::spawn_in(&self.nodes[i].ns, &self.agent_bin, args, &log)?;
        self.nodes[i].agent = Some(p);
        Ok(())
    }

    /// The `trellis-agent` binary the agents run (also has `install-cni`).
    pub fn agent_bin(&self) -> &Path {
        &self.agent_bin
    }

    /// The `trellis` CNI plugin binary.
    pub fn plugin_bin(&self) -> &Path {
        &self.plugin_bin
    }

    pub fn start_agents(&mut self) -> Result<(), String> {
        for i in 0..self.nodes.len() {
            self.start_agent(i)?;
        }
        Ok(())
    }

    /// SIGTERM (or SIGKILL when `kill`) the agent of node `i`.
    pub fn stop_agent(&mut self, i: usize, kill: bool) {
        if let Some(p) = self.nodes[i].agent.take() {
            if kill {
                p.kill();
            } else {
                p.terminate(Duration::from_secs(10));
            }
        }
    }

    pub fn agent_log(&self, i: usize) -> String {
        tail(&self.nodes[i].dir.join("agent.log"))
    }

    /// GET a path on node `i`'s agent health port.
    pub fn agent_http(&self, i: usize, path: &str) -> Option<(u16, String)> {
        let path = path.to_string();
        in_netns(&self.nodes[i].ns, move || http_get("127.0.0.1:9402", &path))
            .ok()
            .flatten()
    }

    /// The sample `name` (labels included, if any) of node `i`'s agent's `/metrics`.
    pub fn metric(&self, i: usize, name: &str) -> Option<f64> {
        let (_, body) = self.agent_http(i, "/metrics")?;
        trellis_testkit::metrics::value(&body, name)
    }

    /// Wait until node `i`'s agent says ready and subnet.env exists.
    pub fn wait_ready(&self, i: usize, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if matches!(self.agent_http(i, "/readyz"), Some((200, _)))
                && self.nodes[i].subnet_file().exists()
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "node-{} not ready after {timeout:?}; agent log:\n{}",
            i + 1,
            self.agent_log(i)
        ))
    }

    pub fn wait_all_ready(&self, timeout: Duration) -> Result<(), String> {
        for i in 0..self.nodes.len() {
            self.wait_ready(i, timeout)?;
        }
        Ok(())
    }

    /// Create a pod on node `i` through the CNI plugin, as the runtime would.
    pub fn add_pod(&mut self, i: usize) -> Result<Pod, String> {
        let (plugin, conf) = (self.plugin_bin.clone(), self.trellis_conf(i));
        self.add_pod_with(i, &plugin, &conf)
    }

    /// A pod on node `i` made by another CNI plugin (`plugin` with network config `conf`),
    /// e.g. flannel's delegate, for a takeover.
    pub fn add_pod_with(&mut self, i: usize, plugin: &Path, conf: &str) -> Result<Pod, String> {
        self.pods += 1;
        let name = format!("pod{}", self.pods);
        let ns = netns::create(&format!(
            "{}-{name}",
            self.underlay.name.trim_end_matches("-u")
        ))?;
        let out = self.cni(i, plugin, conf, "ADD", &name, &ns)?;
        let v: Value = serde_json::from_str(&out).map_err(|e| format!("ADD result: {e}: {out}"))?;
        let ip = v["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .ok_or_else(|| format!("ADD returned no address: {out}"))?
            .to_string();
        Ok(Pod {
            name,
            node: i,
            ns,
            ip,
        })
    }

    /// DEL through trellis's plugin, whoever made the pod.
    pub fn del_pod(&self, pod: &Pod) -> Result<(), String> {
        let conf = self.trellis_conf(pod.node);
        self.cni(pod.node, &self.plugin_bin, &conf, "DEL", &pod.name, &pod.ns)
            .map(|_| ())
    }

    /// The network config the runtime hands trellis's plugin on node `i`.
    pub fn trellis_conf(&self, i: usize) -> String {
        let n = &self.nodes[i];
        json!({
            "cniVersion": "1.0.0", "name": "cbr0", "type": "trellis",
            "subnetFile": n.subnet_file(), "dataDir": n.ipam_dir(),
        })
        .to_string()
    }

    fn cni(
        &self,
        i: usize,
        plugin: &Path,
        conf: &str,
        cmd: &str,
        id: &str,
        pod_ns: &Netns,
    ) -> Result<String, String> {
        let n = &self.nodes[i];
        let netns = pod_ns.path().display().to_string();
        let env = [
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", id),
            ("CNI_NETNS", netns.as_str()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/usr/lib/cni"),
        ];
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &n.ns.name]).arg(plugin).envs(env);
        procs::run_with_stdin(c, conf)
    }

    /// Remove the Node object (as `kubectl delete node` does).
    pub fn delete_node_object(&self, name: &str) -> Result<(), String> {
        self.kubectl(&["delete", "node", name]).map(|_| ())
    }
}

/// What a detached cluster left running, for [`Cluster::detach`] and `down`.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Detached {
    pub netns: Vec<String>,
    pub pids: Vec<u32>,
}

impl Cluster {
    /// Keep everything running after this process exits (the demo): returns
    /// what [`teardown`] needs to remove it later.
    pub fn detach(mut self, pods: &[Pod]) -> Detached {
        let mut d = Detached::default();
        for n in &mut self.nodes {
            if let Some(p) = n.agent.take() {
                d.pids.push(p.detach());
            }
            n.ns.keep();
            d.netns.push(n.ns.name.clone());
        }
        if let Some(p) = self.emulator.take() {
            d.pids.push(p.detach());
        }
        for ns in [&self.underlay, &self.ext] {
            ns.keep();
            d.netns.push(ns.name.clone());
        }
        for p in pods {
            p.ns.keep();
            d.netns.push(p.ns.name.clone());
        }
        if let Some(t) = self._tmp.take() {
            let _ = t.keep();
        }
        d
    }
}

/// Stop what [`Cluster::detach`] left running and remove its namespaces.
pub fn teardown(d: &Detached) {
    for pid in &d.pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    for pid in &d.pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    for ns in &d.netns {
        let _ = Command::new("ip").args(["netns", "del", ns]).status();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(p) = n.agent.take() {
                p.kill();
            }
        }
        if let Some(p) = self.emulator.take() {
            p.kill();
        }
        // Netns guards drop after this, removing every namespace.
    }
}

pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// A tiny HTTP/1.0 GET (status, body) without any client library.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

impl Cluster {
    /// Restart the emulator (its state persists) with `extra` arguments, e.g. `--rbac FILE
    /// --user TOKEN=NAME --audit` for the security tests.
    pub fn restart_emulator_with(&mut self, extra: &[String]) -> Result<(), String> {
        if let Some(p) = self.emulator.take() {
            p.terminate(Duration::from_secs(10));
        }
        let api_dir = self.dir.join("api");
        let mut args = vec![
            "--listen".into(),
            format!("{API_IP}:6443"),
            "--dir".into(),
            api_dir.display().to_string(),
        ];
        args.extend_from_slice(extra);
        let log = self.dir.join("api.log");
        self.emulator = Some(Proc::spawn_in(
            &self.underlay,
            &self.emulator_bin,
            &args,
            &log,
        )?);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.kubectl(&["get", "--raw", "/version"]).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!("API emulator did not come up; log: {}", tail(&log)))
    }

    /// A kubeconfig like the admin's but authenticating with `token` (a `--user` of the
    /// emulator), written next to it.
    pub fn kubeconfig_with_token(&self, token: &str, file: &str) -> Result<PathBuf, String> {
        let admin = std::fs::read_to_string(self.dir.join("api/token"))
            .map_err(|e| format!("emulator token: {e}"))?;
        let text = std::fs::read_to_string(&self.kubeconfig).map_err(|e| e.to_string())?;
        let admin = admin.trim();
        if admin.is_empty() || !text.contains(admin) {
            return Err("the admin token is not in the kubeconfig".into());
        }
        let path = self.dir.join("api").join(file);
        std::fs::write(&path, text.replace(admin, token)).map_err(|e| e.to_string())?;
        Ok(path)
    }
}

impl Cluster {
    /// Runs `f` with the emulator's fault controls (`/_emulator/*`), from a thread inside the
    /// underlay namespace, the only place that reaches the API.
    pub fn with_faults<R, F, Fut>(&self, f: F) -> Result<R, String>
    where
        R: Send + 'static,
        F: FnOnce(crate::apiserver::Faults) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<R, crate::apiserver::EmulatorError>>,
    {
        self.in_underlay(move |kc| async move {
            let faults = crate::apiserver::Faults::from_kubeconfig(&kc)
                .await
                .map_err(|e| e.to_string())?;
            f(faults).await.map_err(|e| e.to_string())
        })
    }

    /// Runs `f` with a fresh admin kube client (reads time out after 15 s: a test must not
    /// hang on an emulator under fault), from a thread inside the underlay namespace.
    pub fn with_client<R, F, Fut>(&self, f: F) -> Result<R, String>
    where
        R: Send + 'static,
        F: FnOnce(kube::Client) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<R, String>>,
    {
        self.in_underlay(move |kc| async move {
            crate::apiserver::install_crypto_provider();
            let kubeconfig = kube::config::Kubeconfig::read_from(&kc).map_err(|e| e.to_string())?;
            let mut cfg = kube::Config::from_custom_kubeconfig(
                kubeconfig,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .map_err(|e| e.to_string())?;
            cfg.read_timeout = Some(Duration::from_secs(15));
            let client = kube::Client::try_from(cfg).map_err(|e| e.to_string())?;
            f(client).await
        })
    }

    /// Runs `f(kubeconfig)` on a current-thread runtime on a thread in the underlay namespace.
    fn in_underlay<R, F, Fut>(&self, f: F) -> Result<R, String>
    where
        R: Send + 'static,
        F: FnOnce(PathBuf) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<R, String>>,
    {
        let kc = self.kubeconfig.clone();
        in_netns(&self.underlay, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(f(kc))
        })?
    }
}

impl Cluster {
    /// An end-to-end test's cluster: `nodes` node namespaces on `backend` (net-conf.json's
    /// `Backend`), agents not started yet. Fails the test without root or when the cluster
    /// cannot come up.
    pub fn for_test(nodes: usize, backend: &str, tag: &str) -> Cluster {
        assert!(trellis_testkit::is_root(), "end-to-end tests need root");
        Cluster::up(Options {
            nodes,
            backend: backend.into(),
            tag: tag.into(),
            agent_args: vec![],
            ..Default::default()
        })
        .expect("cluster up")
    }
}

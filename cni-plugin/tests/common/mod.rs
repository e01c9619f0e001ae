//! Shared fixtures for the privileged plugin tests: throwaway network
//! namespaces (removed on drop, also when a test panics) and a way to run
//! the plugin binary exactly as a runtime does.

#![allow(dead_code, unused_imports)]

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

pub const PLUGIN: &str = env!("CARGO_BIN_EXE_trellis");

/// A plugin run still going after this long is hung, not slow: a run takes milliseconds and
/// its longest wait, the store lock, is bounded (10 s by default). It is killed so the test
/// fails with a message instead of stalling the suite. This bounds liveness only; no test
/// asserts how long anything took.
pub const HUNG_AFTER: Duration = Duration::from_secs(60);

pub use trellis_testkit::require_root;
/// Runs a command; panics with its output unless it succeeds. Returns stdout.
pub use trellis_testkit::run as sh;

pub use trellis_testkit::Netns;

/// A network namespace `trl-<tag>-…`, deleted on drop.
pub fn netns(tag: &str) -> Netns {
    require_root();
    Netns::new(&format!("trl-{tag}")).unwrap_or_else(|e| panic!("{e}"))
}

/// What the plugin tests read from a namespace.
pub trait NetnsExt {
    fn links(&self) -> Vec<String>;
    fn trellis_veths(&self) -> Vec<String>;
    fn settled_trellis_veths(&self) -> Vec<String>;
    fn settled_links_contain(&self, name: &str) -> bool;
    fn ping(&self, ip: &str) -> bool;
}

impl NetnsExt for Netns {
    fn links(&self) -> Vec<String> {
        let (_, out) = self.output(&["ip", "-o", "link", "show"]);
        out.lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
            .collect()
    }

    fn trellis_veths(&self) -> Vec<String> {
        self.links()
            .into_iter()
            .filter(|l| l.starts_with("trl"))
            .collect()
    }

    /// DEL leaves the destruction of the host veth to a background reaper:
    /// wait (bounded) until no trellis veth is left.
    fn settled_trellis_veths(&self) -> Vec<String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        loop {
            let left = self.trellis_veths();
            if left.is_empty() || std::time::Instant::now() > deadline {
                return left;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Whether `name` is still present after waiting (bounded) for it to go.
    fn settled_links_contain(&self, name: &str) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while self.links().iter().any(|l| l == name) {
            if std::time::Instant::now() > deadline {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        false
    }

    fn ping(&self, ip: &str) -> bool {
        self.output(&["ping", "-c", "1", "-W", "2", ip]).0
    }
}

/// What a plugin run printed and how it exited.
#[derive(Debug)]
pub struct Outcome {
    pub ok: bool,
    pub stdout: String,
}

impl Outcome {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", self.stdout))
    }

    pub fn error_code(&self) -> u64 {
        assert!(!self.ok, "expected failure, got success: {}", self.stdout);
        let v = self.json();
        assert!(
            v["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "error without msg: {v}"
        );
        v["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("error without code: {v}"))
    }
}

/// Run `binary` inside `node` (or the test's own namespace when None) with
/// the given CNI environment and stdin, as containerd would.
pub fn run_in(node: Option<&Netns>, binary: &str, env: &[(&str, &str)], stdin: &str) -> Outcome {
    let mut cmd = match node {
        Some(n) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &n.name, binary]);
            c
        }
        None => Command::new(binary),
    };
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn plugin");
    // A plugin may stop reading early (oversized input): that is its answer, not a test failure.
    let _ = child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes());
    // `ip netns exec` execs the plugin in place, so this pid is the plugin's.
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(HUNG_AFTER) {
        Ok(out) => out.expect("wait plugin"),
        Err(_) => {
            // SAFETY: kill has no memory effects; the pid is our unreaped child.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            let _ = waiter.join();
            panic!("plugin {binary} with {env:?} still running after {HUNG_AFTER:?}: hung, killed");
        }
    };
    Outcome {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).trim().to_string(),
    }
}

/// A node: its namespace, a subnet.env and an IPAM dir under a temp dir.
pub struct Node {
    pub ns: Netns,
    pub dir: tempfile::TempDir,
}

impl Node {
    pub fn new(tag: &str, subnet_env: &str) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("subnet.env"), subnet_env).expect("write subnet.env");
        Node {
            ns: netns(tag),
            dir,
        }
    }

    /// Most tests' start: a node on [`SUBNET_ENV`], one pod namespace and the 1.0.0 config.
    pub fn with_pod(tag: &str) -> (Node, Netns, String) {
        let node = Node::new(tag, SUBNET_ENV);
        let pod = netns("pod");
        let conf = node.conf("1.0.0", "");
        (node, pod, conf)
    }

    pub fn subnet_file(&self) -> PathBuf {
        self.dir.path().join("subnet.env")
    }

    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    /// The standard config for this node, with `extra` JSON members spliced in.
    pub fn conf(&self, version: &str, extra: &str) -> String {
        format!(
            r#"{{"cniVersion":"{version}","name":"cbr0","type":"trellis","subnetFile":"{}","dataDir":"{}"{extra}}}"#,
            self.subnet_file().display(),
            self.ipam_dir().display()
        )
    }

    pub fn cni(
        &self,
        cmd: &str,
        container: &str,
        netns: Option<&Path>,
        ifname: &str,
        conf: &str,
    ) -> Outcome {
        let ns = netns.map(|p| p.display().to_string()).unwrap_or_default();
        run_in(
            Some(&self.ns),
            PLUGIN,
            &[
                ("CNI_COMMAND", cmd),
                ("CNI_CONTAINERID", container),
                ("CNI_NETNS", &ns),
                ("CNI_IFNAME", ifname),
                ("CNI_PATH", "/usr/lib/cni"),
                (
                    "CNI_ARGS",
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=test",
                ),
            ],
            conf,
        )
    }

    /// Another plugin (`binary`, e.g. a reference plugin from `/usr/lib/cni`) run in this node
    /// for `container` in `pod` as eth0, the way libcni runs it.
    pub fn run_plugin(
        &self,
        binary: &str,
        cmd: &str,
        container: &str,
        pod: &Netns,
        conf: &str,
    ) -> Outcome {
        let netns = pod.path().display().to_string();
        run_in(
            Some(&self.ns),
            binary,
            &[
                ("CNI_COMMAND", cmd),
                ("CNI_CONTAINERID", container),
                ("CNI_NETNS", &netns),
                ("CNI_IFNAME", "eth0"),
                ("CNI_PATH", "/usr/lib/cni"),
            ],
            conf,
        )
    }

    /// ADD of `container` in `pod` as eth0, which must succeed.
    pub fn add(&self, container: &str, pod: &Netns, conf: &str) -> Outcome {
        let r = self.cni("ADD", container, Some(&pod.path()), "eth0", conf);
        assert!(r.ok, "ADD {container}: {}", r.stdout);
        r
    }

    /// Two pods `a` and `b` (netns `pa`, `pb`) ADDed with `conf` (each must succeed).
    pub fn add_two_pods(&self, conf: &str) -> [(Netns, Outcome); 2] {
        ["a", "b"].map(|id| {
            let ns = netns(&format!("p{id}"));
            let r = self.add(id, &ns, conf);
            (ns, r)
        })
    }

    /// Take this network's store lock the way another plugin run would (the plugin's own
    /// modes, so the plugin accepts the directory); held until the file is dropped.
    pub fn hold_ipam_lock(&self) -> std::fs::File {
        let dir = self.ipam_dir().join("cbr0");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)
            .expect("create the store dir");
        let lock = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(dir.join("lock"))
            .expect("open the lock file");
        // SAFETY: flock on a descriptor we own.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(rc, 0, "the store lock is already held");
        lock
    }

    /// IP records in the store (files named like an address).
    pub fn ipam_records(&self) -> Vec<String> {
        trellis_testkit::ipam::addresses(&self.ipam_dir().join("cbr0"))
    }
}

pub const SUBNET_ENV: &str =
    "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

/// The pod's IPv4 address (without prefix) from an ADD result.
pub fn pod_ip(result: &Value) -> String {
    result["ips"]
        .as_array()
        .and_then(|ips| {
            ips.iter()
                .find(|ip| !ip["address"].as_str().unwrap_or("").contains(':'))
        })
        .and_then(|ip| ip["address"].as_str())
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("no IPv4 address in {result}"))
        .to_string()
}

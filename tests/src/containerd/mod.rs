//! A private containerd, the real CNI caller kubelet uses, started for one
//! test inside a "node" network namespace and torn down by a Drop guard.
//!
//! Its root, state, sockets and config live in a temp dir; its CRI plugin
//! points at the caller's CNI bin and conf dirs and at a pause image built
//! and imported locally (no registry here). containerd runs in the node
//! netns the way `ip netns exec NODE` would run it (see `node_command`), so
//! cni0, host-side veths and iptables rules the plugin makes all live in the
//! node namespace, and /sys shows the node's interfaces. It also has a
//! private mount namespace, so sandbox netns bind mounts and rootfs overlays
//! are invisible from outside (and vanish with its processes): enter a
//! sandbox netns through `/proc/<pause pid>/ns/net`.

pub mod cleanup;
pub mod cni;
pub mod config;
pub mod image;
pub mod netns;

use std::fs::File;
use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub use config::{CriSettings, Layout};
pub use image::PAUSE_IMAGE;
pub use netns::NodeNetns;

/// The containerd namespace the CRI plugin works in.
pub const CRI_NAMESPACE: &str = "k8s.io";

#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    #[error("{program} not found in PATH (apt-get install -y containerd runc util-linux)")]
    Missing { program: &'static str },
    #[error("containerd I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot spawn containerd: {0}")]
    Spawn(#[source] io::Error),
    #[error("containerd exited during startup ({status}); log tail:\n{log}")]
    EarlyExit {
        status: std::process::ExitStatus,
        log: String,
    },
    #[error("containerd socket {socket} not serving after {waited:?}; log tail:\n{log}")]
    StartTimeout {
        socket: PathBuf,
        waited: Duration,
        log: String,
    },
    #[error("`ctr {args}` failed: {stderr}")]
    Ctr { args: String, stderr: String },
}

#[derive(Debug, Clone)]
pub struct ContainerdOptions {
    pub cni_bin_dir: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub sandbox_image: String,
    pub start_timeout: Duration,
    /// `(node path, host path)`: bound over the host path in containerd's mount namespace, so
    /// what containerd runs (the CNI plugins) finds the node's files where a real node has them
    /// (e.g. the node root's `run/flannel` at `/run/flannel`). A missing host path is created
    /// (empty) as the mount point.
    pub node_binds: Vec<(PathBuf, PathBuf)>,
}

impl ContainerdOptions {
    pub fn new(cni_bin_dir: PathBuf, cni_conf_dir: PathBuf) -> Self {
        Self {
            cni_bin_dir,
            cni_conf_dir,
            sandbox_image: PAUSE_IMAGE.to_string(),
            start_timeout: Duration::from_secs(10),
            node_binds: Vec::new(),
        }
    }
}

/// A running private containerd. Dropping it kills every task it started,
/// stops it, removes its runc state and shim sockets, deletes the node netns
/// and then its directory, also when the test failed or panicked.
pub struct Containerd {
    layout: Layout,
    child: Option<Child>,
    started_in: Duration,
    // Drop order matters: the netns goes after containerd is stopped, and
    // the directory last, once nothing runs from it.
    node: NodeNetns,
    dir: tempfile::TempDir,
}

impl Containerd {
    /// Starts containerd in `node` and waits until its socket accepts
    /// connections. The CNI conflist should already be in the conf dir, so
    /// the CRI plugin loads it at startup.
    pub fn start(node: NodeNetns, opts: &ContainerdOptions) -> Result<Self, ContainerdError> {
        for program in [
            "containerd",
            "containerd-shim-runc-v2",
            "runc",
            "ctr",
            "nsenter",
            "unshare",
        ] {
            if find_in_path(program).is_none() {
                return Err(ContainerdError::Missing { program });
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("trellis-containerd-")
            .tempdir()
            .map_err(|source| ContainerdError::Io {
                path: std::env::temp_dir(),
                source,
            })?;
        let layout = Layout::under(dir.path());
        let text = config::render(
            &layout,
            &CriSettings {
                sandbox_image: opts.sandbox_image.clone(),
                cni_bin_dir: opts.cni_bin_dir.clone(),
                cni_conf_dir: opts.cni_conf_dir.clone(),
            },
        );
        std::fs::write(&layout.config, text).map_err(io_err(&layout.config))?;
        let log = File::create(&layout.log).map_err(io_err(&layout.log))?;
        let log_err = log.try_clone().map_err(io_err(&layout.log))?;

        let stage = dir.path().join("cgroup-stage");
        std::fs::create_dir(&stage).map_err(io_err(&stage))?;

        for (from, to) in &opts.node_binds {
            for dir in [from, to] {
                std::fs::create_dir_all(dir).map_err(io_err(dir))?;
            }
        }
        let start = Instant::now();
        let child = node_command(&node, &layout.config, &stage, &opts.node_binds)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(ContainerdError::Spawn)?;
        let mut ctd = Self {
            layout,
            child: Some(child),
            started_in: Duration::ZERO,
            node,
            dir,
        };
        ctd.wait_serving(start, opts.start_timeout)?;
        ctd.started_in = start.elapsed();
        Ok(ctd)
    }

    fn wait_serving(&mut self, start: Instant, timeout: Duration) -> Result<(), ContainerdError> {
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(ContainerdError::EarlyExit {
                        status,
                        log: self.log_tail(30),
                    });
                }
            }
            if UnixStream::connect(&self.layout.socket).is_ok() {
                return Ok(());
            }
            if start.elapsed() >= timeout {
                return Err(ContainerdError::StartTimeout {
                    socket: self.layout.socket.clone(),
                    waited: start.elapsed(),
                    log: self.log_tail(30),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn socket(&self) -> &Path {
        &self.layout.socket
    }

    pub fn node(&self) -> &NodeNetns {
        &self.node
    }

    /// The private directory (config, root, state, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// From spawn to the socket accepting connections.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// Imports an image tarball into the CRI namespace.
    pub fn import_image(&self, tarball: &Path) -> Result<(), ContainerdError> {
        let mut args = vec!["images".to_string(), "import".to_string()];
        args.push(tarball.to_string_lossy().into_owned());
        self.ctr(&args).map(drop)
    }

    /// Runs `ctr -a <socket> -n k8s.io <args>` and returns its stdout.
    pub fn ctr(&self, args: &[String]) -> Result<String, ContainerdError> {
        let out = Command::new("ctr")
            .arg("-a")
            .arg(&self.layout.socket)
            .args(["-n", CRI_NAMESPACE])
            .args(args)
            .output()
            .map_err(|source| ContainerdError::Io {
                path: PathBuf::from("ctr"),
                source,
            })?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(ContainerdError::Ctr {
                args: args.join(" "),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }

    /// The last `lines` lines of containerd's log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.layout.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Tasks the shims still hold bundles for (sandboxes not yet removed).
    pub fn live_task_ids(&self) -> Vec<String> {
        cleanup::task_ids(&self.layout.task_bundles(CRI_NAMESPACE))
    }

    fn teardown(&mut self) {
        let ids = self.live_task_ids();
        // Kill the tasks first: containerd is still up to notice the exits,
        // and no pause process outlives the test whatever happens next.
        for id in &ids {
            cleanup::force_delete_runc_container(CRI_NAMESPACE, id);
        }
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, Duration::from_secs(5));
        }
        cleanup::kill_shims(&self.layout.socket);
        for id in &ids {
            cleanup::force_delete_runc_container(CRI_NAMESPACE, id);
            let socket = cleanup::shim_socket_path(&self.layout.socket, CRI_NAMESPACE, id);
            let _ = std::fs::remove_file(socket);
        }
        cleanup::remove_cgroups(CRI_NAMESPACE, &ids);
        cleanup::remove_empty_run_dirs(CRI_NAMESPACE);
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// What `ip netns exec NODE containerd` does (enter the netns, a private
/// slave mount namespace, a sysfs that shows the node's interfaces), except
/// that the host's cgroup tree stays mounted at /sys/fs/cgroup: `ip netns
/// exec` drops it with the old /sys, and runc then fails with "no cgroup
/// mount found in mountinfo". The tree is moved aside, sysfs mounted over
/// /sys, and the tree bound back. Every step execs the next (nsenter,
/// unshare, sh `exec`), so the child's pid is containerd's own and signals
/// reach it directly. The node binds follow, as pairs of arguments.
fn node_command(
    node: &NodeNetns,
    config: &Path,
    stage: &Path,
    binds: &[(PathBuf, PathBuf)],
) -> Command {
    const SCRIPT: &str = r#"
mount --rbind /sys/fs/cgroup "$2"
mount -t sysfs sysfs /sys
mount --rbind "$2" /sys/fs/cgroup
umount -l "$2"
config=$1
shift 2
while [ "$#" -ge 2 ]; do mount --bind "$1" "$2"; shift 2; done
exec containerd --config "$config"
"#;
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", node.path().display()))
        .args(["unshare", "--mount", "--propagation", "slave"])
        .args(["sh", "-ec", SCRIPT, "containerd-in-node"])
        .arg(config)
        .arg(stage);
    for (from, to) in binds {
        cmd.arg(from).arg(to);
    }
    cmd
}

/// Host-wide lock file serialising the tests that run a private containerd.
pub const SERIAL_LOCK: &str = "/run/trellis-containerd-tests.lock";

/// Takes the host-wide lock (blocking) that tests starting a containerd hold
/// for their whole run. Instances would not collide (unique names and dirs),
/// but they share /run/containerd and the `k8s.io` cgroup parent that
/// teardown removes, and on 2 cores one instance's load would skew the
/// latencies another measures. A file lock rather than a mutex, because
/// nextest runs each test in its own process.
pub fn serial_lock() -> Result<Flock<File>, ContainerdError> {
    let path = Path::new(SERIAL_LOCK);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| ContainerdError::Io {
        path: path.to_path_buf(),
        source: io::Error::from(errno),
    })
}

/// SIGTERM, then SIGKILL after `grace`; always reaps.
fn stop_child(child: &mut Child, grace: Duration) {
    let Ok(raw) = i32::try_from(child.id()) else {
        let _ = child.kill();
        let _ = child.wait();
        return;
    };
    let _ = kill(Pid::from_raw(raw), Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ContainerdError + '_ {
    move |source| ContainerdError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

//! Network namespaces owned by a test: unique names, removed on drop.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub struct Netns {
    pub name: String,
    /// Set by [`Netns::keep`]: the namespace outlives this value (the demo).
    kept: AtomicBool,
}

impl Netns {
    pub fn new(tag: &str) -> Result<Netns, String> {
        let name = format!(
            "{tag}-{}-{}",
            std::process::id() % 100_000,
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "ip netns add {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let ns = Netns {
            name,
            kept: AtomicBool::new(false),
        };
        ns.ip_batch("link set lo up\n")?;
        Ok(ns)
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.name))
    }

    /// `ip -n NS -batch -`: many changes for one process start.
    pub fn ip_batch(&self, batch: &str) -> Result<(), String> {
        let mut c = Command::new("ip");
        c.args(["-n", &self.name, "-batch", "-"]);
        super::procs::run_with_stdin(c, batch).map(|_| ())
    }

    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), String> {
        self.exec(&["sysctl", "-qw", &format!("{key}={value}")])
            .map(|_| ())
    }

    pub fn exec(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{args:?} in {}: {}{}",
                self.name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    pub fn exec_ok(&self, args: &[&str]) -> bool {
        self.exec(args).is_ok()
    }

    pub fn exec_with_stdin(
        &self,
        prog: &str,
        args: &[&str],
        stdin: &str,
    ) -> Result<String, String> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, prog])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        if let Some(mut si) = child.stdin.take() {
            let _ = si.write_all(stdin.as_bytes());
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{prog} {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

impl Netns {
    /// Leave the namespace in place when this value is dropped.
    pub fn keep(&self) {
        self.kept.store(true, Ordering::SeqCst);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.kept.load(Ordering::SeqCst) {
            return;
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Run `f` on a thread that has entered `ns` (network namespaces are per
/// thread), e.g. to connect to an address only reachable there.
pub fn in_netns<R: Send + 'static>(
    ns: &Netns,
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R, String> {
    let path = ns.path();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("setns: {e}"))?;
        Ok(f())
    })
    .join()
    .map_err(|_| "netns thread panicked".to_string())?
}

//! Network namespaces owned by a test: unique names, removed on drop (also when the test
//! panics), unless kept or adopted.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::cmd;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// `<prefix>-<pid>-<n>`: unique among the namespaces of this machine's live test processes.
pub fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// A named network namespace (`ip netns add`), deleted on drop unless [`Netns::keep`] was
/// called or it was [adopted](Netns::adopt).
#[derive(Debug)]
pub struct Netns {
    pub name: String,
    kept: AtomicBool,
}

impl Netns {
    /// Creates [`unique_name`]`(prefix)` with its loopback up.
    pub fn new(prefix: &str) -> Result<Netns, String> {
        Netns::with_name(unique_name(prefix))
    }

    /// Creates the namespace `name` with its loopback up.
    pub fn with_name(name: String) -> Result<Netns, String> {
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .map_err(|e| format!("cannot run `ip` (install iproute2): {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "ip netns add {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        // From here on, Drop removes it even if the next step fails.
        let ns = Netns {
            name,
            kept: AtomicBool::new(false),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// An existing namespace someone else owns: it outlives this handle.
    pub fn adopt(name: &str) -> Result<Netns, String> {
        let ns = Netns {
            name: name.to_string(),
            kept: AtomicBool::new(true),
        };
        if !ns.path().exists() {
            return Err(format!("{} does not exist", ns.path().display()));
        }
        Ok(ns)
    }

    /// Leave the namespace in place when this value is dropped.
    pub fn keep(&self) {
        self.kept.store(true, Ordering::SeqCst);
    }

    /// The bind mount `ip netns add` made, for `setns` and `nsenter --net=`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.name))
    }

    /// `ip netns exec <name> <program>`, to be completed by the caller.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs a command inside: stdout if it succeeds, else an error naming the command and
    /// the namespace with its stdout and stderr.
    pub fn exec(&self, args: &[&str]) -> Result<String, String> {
        let (ok, out, err) =
            cmd::capture(self.command(args[0]).args(&args[1..])).map_err(|e| e.to_string())?;
        if ok {
            Ok(out)
        } else {
            Err(format!("{args:?} in {}: {out}{err}", self.name))
        }
    }

    pub fn exec_ok(&self, args: &[&str]) -> bool {
        self.exec(args).is_ok()
    }

    /// Runs a command inside; returns (success, stdout followed by stderr).
    pub fn output(&self, args: &[&str]) -> (bool, String) {
        let (ok, out, err) =
            cmd::capture(self.command(args[0]).args(&args[1..])).expect("spawn ip netns exec");
        (ok, out + &err)
    }

    /// Runs a command inside; panics with its output if it fails. Returns stdout.
    pub fn sh(&self, args: &[&str]) -> String {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(args);
        cmd::run(&all)
    }

    /// Runs `prog args` inside with `stdin` written to it.
    pub fn exec_with_stdin(
        &self,
        prog: &str,
        args: &[&str],
        stdin: &str,
    ) -> Result<String, String> {
        let mut c = self.command(prog);
        c.args(args);
        cmd::run_with_stdin(c, stdin).map_err(|e| format!("{prog} {args:?}: {}", e.trim()))
    }

    /// `ip -n <name> <args>`: stdout, or an error naming the command with its stderr.
    pub fn ip(&self, args: &[&str]) -> Result<String, String> {
        let (ok, out, err) = cmd::capture(Command::new("ip").args(["-n", &self.name]).args(args))
            .map_err(|e| format!("cannot run `ip` (install iproute2): {e}"))?;
        if ok {
            Ok(out)
        } else {
            Err(format!(
                "`ip -n {} {}` failed: {}",
                self.name,
                args.join(" "),
                err.trim()
            ))
        }
    }

    /// `ip -n <name> -batch -`: many changes for one process start.
    pub fn ip_batch(&self, batch: &str) -> Result<(), String> {
        let mut c = Command::new("ip");
        c.args(["-n", &self.name, "-batch", "-"]);
        cmd::run_with_stdin(c, batch).map(|_| ())
    }

    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), String> {
        self.exec(&["sysctl", "-qw", &format!("{key}={value}")])
            .map(|_| ())
    }

    /// Runs `f` on a thread that has entered this namespace (network namespaces are per
    /// thread), e.g. to connect to an address only reachable there. A panic in `f` is an
    /// error.
    pub fn enter<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, String> {
        let path = self.path();
        std::thread::spawn(move || {
            enter_path(&path)?;
            Ok(f())
        })
        .join()
        .map_err(|_| "netns thread panicked".to_string())?
    }
}

/// Moves the calling thread into the network namespace bound at `path`.
pub fn enter_path(path: &std::path::Path) -> Result<(), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("setns: {e}"))
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

//! Child processes of the harness (the emulator, agents): logs to files,
//! stopped on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::Netns;

pub struct Proc {
    child: Child,
}

impl Proc {
    /// Start `bin args` inside `ns`, stdout+stderr appended to `log`.
    pub fn spawn_in(ns: &Netns, bin: &Path, args: &[String], log: &Path) -> Result<Proc, String> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let f2 = f.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(bin)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(f)
            .stderr(f2)
            .spawn()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        Ok(Proc { child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Let the process run on after this value is gone; returns its pid.
    pub fn detach(self) -> u32 {
        let pid = self.child.id();
        std::mem::forget(self);
        pid
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn terminate(mut self, grace: Duration) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub use trellis_testkit::cmd::run_with_stdin;

/// A workspace binary: `$ENV`, else next to the running test/binary
/// (target/<profile>/), else target/debug of the workspace.
pub fn locate_binary(name: &str, env: &str) -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var(env) {
        return Ok(PathBuf::from(p));
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(3) {
            let cand = dir.join(name);
            if cand.is_file() {
                return Ok(cand);
            }
        }
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target").to_string());
    let cand = PathBuf::from(target).join("debug").join(name);
    if cand.is_file() {
        Ok(cand)
    } else {
        Err(format!(
            "{name} not found: build the workspace (cargo build --workspace) or set {env}"
        ))
    }
}

//! Teardown of what a private containerd leaves outside its own directory
//! when it is killed rather than asked to clean up: runc containers and their
//! state under /run/containerd/runc/<namespace> (runc's root is fixed there
//! whatever containerd's `state` says), shim processes, and shim sockets
//! under /run/containerd/s.
//!
//! Everything here is scoped by container id or by our socket address, so
//! a system containerd or another test's instance is never touched.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};

/// runc's root for the runc v2 shim is `<this>/<namespace>`.
pub const RUNC_ROOT: &str = "/run/containerd/runc";
/// containerd 1.6 shims listen under this directory whatever `state` says.
pub const SHIM_SOCKET_DIR: &str = "/run/containerd/s";

/// Ids of the tasks (sandboxes and containers) the shims still have
/// bundles for: one directory each under the task bundle dir.
pub fn task_ids(bundles: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(bundles) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|id| is_container_id(id))
        .collect()
}

/// containerd ids are 64 hex digits for CRI; anything with a path separator
/// or dot-dot must never be joined onto /run paths.
pub fn is_container_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// containerd namespaces are DNS-label-like ("k8s.io"): dots allowed, but
/// not leading, so "." and ".." are out.
pub fn is_namespace(ns: &str) -> bool {
    !ns.is_empty()
        && !ns.starts_with('.')
        && ns
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Kills and deletes one runc container (and with it its cgroups), then
/// removes its runc state if runc could not.
pub fn force_delete_runc_container(namespace: &str, id: &str) {
    if !is_container_id(id) || !is_namespace(namespace) {
        return;
    }
    let root = Path::new(RUNC_ROOT).join(namespace);
    let state = root.join(id);
    if !state.exists() {
        return;
    }
    let _ = Command::new("runc")
        .arg("--root")
        .arg(&root)
        .args(["delete", "--force", id])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if state.exists() {
        let _ = std::fs::remove_dir_all(&state);
    }
}

/// Where cgroup v1 hierarchies (and the v2 one, if mounted alongside) live.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Removes the task's cgroups and then the `/<namespace>` parent containerd
/// puts them under when the sandbox has no cgroup parent. rmdir only: a
/// cgroup still in use (another instance's task) is left alone.
pub fn remove_cgroups(namespace: &str, ids: &[String]) {
    if !is_namespace(namespace) {
        return;
    }
    let Ok(hierarchies) = std::fs::read_dir(CGROUP_ROOT) else {
        return;
    };
    for hierarchy in hierarchies.filter_map(Result::ok) {
        let parent = hierarchy.path().join(namespace);
        for id in ids.iter().filter(|id| is_container_id(id)) {
            let _ = std::fs::remove_dir(parent.join(id));
        }
        let _ = std::fs::remove_dir(&parent);
    }
}

/// Removes /run/containerd's directories if nothing is left in them (a
/// system containerd's files keep them in place).
pub fn remove_empty_run_dirs(namespace: &str) {
    if !is_namespace(namespace) {
        return;
    }
    let runc_ns = Path::new(RUNC_ROOT).join(namespace);
    for dir in [
        runc_ns.as_path(),
        Path::new(RUNC_ROOT),
        Path::new(SHIM_SOCKET_DIR),
        Path::new("/run/containerd"),
    ] {
        let _ = std::fs::remove_dir(dir);
    }
}

/// The shim socket containerd 1.6 derives for a task: the sha256 of
/// `<grpc address>/<namespace>/<id>` under /run/containerd/s.
pub fn shim_socket_path(address: &Path, namespace: &str, id: &str) -> PathBuf {
    let key = address.join(namespace).join(id);
    let digest = Sha256::digest(key.as_os_str().as_encoded_bytes());
    Path::new(SHIM_SOCKET_DIR).join(format!("{digest:x}"))
}

/// Whether a /proc/<pid>/cmdline belongs to a containerd shim serving the
/// containerd at `address`.
pub fn is_shim_of(cmdline: &[u8], address: &Path) -> bool {
    let mut args = cmdline.split(|b| *b == 0);
    let Some(argv0) = args.next() else {
        return false;
    };
    if !argv0
        .rsplit(|b| *b == b'/')
        .next()
        .is_some_and(|name| name.starts_with(b"containerd-shim"))
    {
        return false;
    }
    let want = address.as_os_str().as_encoded_bytes();
    let mut prev: &[u8] = b"";
    for arg in args {
        if prev == b"-address" && arg == want {
            return true;
        }
        prev = arg;
    }
    false
}

/// Pids of the shims serving the containerd at `address`.
pub fn shim_pids(address: &Path) -> Vec<Pid> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| is_shim_of(&cmdline, address))
        })
        .map(Pid::from_raw)
        .collect()
}

pub fn kill_shims(address: &Path) {
    for pid in shim_pids(address) {
        let _ = kill(pid, Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_only_shims_of_our_address() {
        let ours = Path::new("/tmp/ctd-1/containerd.sock");
        let cmd = b"/usr/bin/containerd-shim-runc-v2\0-namespace\0k8s.io\0-id\0abc\0-address\0/tmp/ctd-1/containerd.sock\0";
        assert!(is_shim_of(cmd, ours));
        assert!(!is_shim_of(
            cmd,
            Path::new("/run/containerd/containerd.sock")
        ));
        let other = b"/usr/bin/containerd\0-address\0/tmp/ctd-1/containerd.sock\0";
        assert!(!is_shim_of(other, ours), "containerd itself is not a shim");
        let value_elsewhere = b"containerd-shim-runc-v2\0-id\0/tmp/ctd-1/containerd.sock\0";
        assert!(!is_shim_of(value_elsewhere, ours));
        assert!(!is_shim_of(b"", ours));
    }

    #[test]
    fn container_ids_cannot_escape_paths() {
        assert!(is_container_id(
            "0b7c4e1f9a2d3c4b5a6978877665544332211000ffeeddccbbaa998877665544"
        ));
        for bad in ["", "..", "../x", "a/b", "a b", "x.y"] {
            assert!(!is_container_id(bad), "{bad:?}");
        }
        assert!(is_namespace("k8s.io"));
        for bad in ["", ".", "..", "a/b", ".hidden"] {
            assert!(!is_namespace(bad), "{bad:?}");
        }
    }

    #[test]
    fn shim_socket_is_sha256_of_address_namespace_id() {
        let path = shim_socket_path(Path::new("/a.sock"), "k8s.io", "id1");
        let expected = format!("{:x}", Sha256::digest(b"/a.sock/k8s.io/id1"));
        assert_eq!(path, Path::new(SHIM_SOCKET_DIR).join(expected));
    }

    #[test]
    fn task_ids_lists_only_valid_directories() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("abc123")).expect("mkdir");
        std::fs::create_dir(dir.path().join("not.valid")).expect("mkdir");
        std::fs::write(dir.path().join("file"), b"").expect("write");
        assert_eq!(task_ids(dir.path()), vec!["abc123".to_string()]);
        assert!(task_ids(&dir.path().join("missing")).is_empty());
    }
}

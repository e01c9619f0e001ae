//! Privileged: the plugin runs as root, so whatever someone plants in its
//! IPAM store (symlinks or hard links pointing outside, a directory others
//! may write) must never turn into a write outside the store. Each case
//! plants one thing, runs ADD for real, and checks the CNI error, the
//! untouched target, and that nothing was left half made.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

const VICTIM_TEXT: &str = "not the plugin's to touch\n";

/// A node, a pod, and a file outside the store that must stay as it is.
struct Scene {
    node: Node,
    pod: Netns,
    outside: tempfile::TempDir,
    conf: String,
}

impl Scene {
    fn new(tag: &str) -> Scene {
        let node = Node::new(tag, SUBNET_ENV);
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::write(outside.path().join("victim"), VICTIM_TEXT).expect("victim");
        let conf = node.conf("1.0.0", "");
        Scene {
            pod: netns("pod"),
            node,
            outside,
            conf,
        }
    }

    fn store(&self) -> std::path::PathBuf {
        self.node.ipam_dir().join("cbr0")
    }

    fn victim(&self) -> std::path::PathBuf {
        self.outside.path().join("victim")
    }

    /// The store as the plugin would make it, then `plant` replaces one name.
    fn plant(&self, name: &str, plant: impl FnOnce(&Path)) {
        std::fs::create_dir_all(self.store()).expect("store");
        let p = self.store().join(name);
        let _ = std::fs::remove_file(&p);
        plant(&p);
    }

    /// `plant` with a symbolic link to the victim.
    fn plant_victim_link(&self, name: &str) {
        self.plant(name, |p| {
            std::os::unix::fs::symlink(self.victim(), p).expect("symlink to the victim")
        });
    }

    fn add(&self) -> Outcome {
        self.node
            .cni("ADD", "c1", Some(&self.pod.path()), "eth0", &self.conf)
    }

    fn assert_refused(&self, out: &Outcome, what: &str) {
        assert_eq!(out.error_code(), 5, "{}", out.stdout);
        let msg = out.json()["msg"].as_str().unwrap_or("").to_string();
        assert!(
            msg.contains("refusing") && msg.contains(what),
            "message should name the problem ({what}): {msg}"
        );
        self.assert_untouched();
        assert_eq!(self.node.ipam_records(), Vec::<String>::new());
        assert_eq!(self.node.ns.settled_trellis_veths(), Vec::<String>::new());
    }

    fn assert_untouched(&self) {
        assert_eq!(
            std::fs::read_to_string(self.victim()).expect("victim"),
            VICTIM_TEXT
        );
        let outside: Vec<_> = std::fs::read_dir(self.outside.path())
            .expect("outside")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        assert_eq!(outside.len(), 1, "files appeared outside: {outside:?}");
    }
}

#[test]
fn symlinked_network_dir_is_refused() {
    let s = Scene::new("fsdir");
    std::fs::create_dir_all(s.node.ipam_dir()).unwrap();
    std::os::unix::fs::symlink(s.outside.path(), s.store()).unwrap();
    s.assert_refused(&s.add(), "symbolic link");
    // DEL cannot release safely either, and says why rather than writing.
    let del = s
        .node
        .cni("DEL", "c1", Some(&s.pod.path()), "eth0", &s.conf);
    assert_eq!(del.error_code(), 5, "{}", del.stdout);
    s.assert_untouched();
}

#[test]
fn symlinked_lock_is_refused() {
    let s = Scene::new("fslock");
    s.plant_victim_link("lock");
    s.assert_refused(&s.add(), "lock");
}

#[test]
fn symlinked_last_reserved_ip_is_refused_and_not_truncated() {
    let s = Scene::new("fslast");
    s.plant_victim_link("last_reserved_ip.0");
    s.assert_refused(&s.add(), "last_reserved_ip.0");
}

#[test]
fn hard_linked_last_reserved_ip_is_refused_and_not_truncated() {
    let s = Scene::new("fshard");
    // A hard link needs the same filesystem: the victim lives beside the store.
    let victim = s.node.dir.path().join("victim");
    std::fs::write(&victim, VICTIM_TEXT).unwrap();
    s.plant("last_reserved_ip.0", |p| {
        std::fs::hard_link(&victim, p).unwrap()
    });
    let out = s.add();
    assert_eq!(out.error_code(), 5, "{}", out.stdout);
    assert!(out.stdout.contains("hard links"), "{}", out.stdout);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), VICTIM_TEXT);
    assert_eq!(s.node.ipam_records(), Vec::<String>::new());
}

#[test]
fn symlinked_address_record_is_skipped_never_written_or_removed_through() {
    let s = Scene::new("fsip");
    // 10.244.1.2 is the first address the allocator would hand out.
    s.plant_victim_link("10.244.1.2");
    let out = s.add();
    assert!(out.ok, "{}", out.stdout);
    assert_eq!(pod_ip(&out.json()), "10.244.1.3");
    let del = s
        .node
        .cni("DEL", "c1", Some(&s.pod.path()), "eth0", &s.conf);
    assert!(del.ok, "{}", del.stdout);
    s.assert_untouched();
    // The planted link still occupies its name; the victim is intact.
    assert!(s.store().join("10.244.1.2").is_symlink());
}

#[test]
fn network_dir_writable_by_others_is_refused() {
    let s = Scene::new("fsmode");
    std::fs::create_dir_all(s.store()).unwrap();
    std::fs::set_permissions(s.store(), std::fs::Permissions::from_mode(0o777)).unwrap();
    s.assert_refused(&s.add(), "777");
}

#[test]
fn network_dir_owned_by_another_user_is_refused() {
    let s = Scene::new("fsowner");
    std::fs::create_dir_all(s.store()).unwrap();
    std::os::unix::fs::chown(s.store(), Some(65534), Some(65534)).unwrap();
    s.assert_refused(&s.add(), "owned by uid 65534");
}

/// Even with umask 000 the plugin's files and directories are writable by
/// root only: the modes are explicit, not left to the caller's umask.
#[test]
fn files_and_dirs_are_created_with_safe_modes_whatever_the_umask() {
    let (node, pod, conf) = Node::with_pod("fsumask");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &node.ns.name, PLUGIN])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "c1")
        .env("CNI_NETNS", pod.path())
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    // SAFETY: umask is async-signal-safe and touches no memory.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn");
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let ip = pod_ip(&serde_json::from_slice(&out.stdout).unwrap());
    let store = node.ipam_dir().join("cbr0");
    for (path, want) in [
        (node.ipam_dir(), 0o755),
        (store.clone(), 0o755),
        (store.join("lock"), 0o644),
        (store.join("last_reserved_ip.0"), 0o644),
        (store.join(&ip), 0o644),
    ] {
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, want, "{}: {mode:o}", path.display());
    }
    assert!(node.cni("DEL", "c1", Some(&pod.path()), "eth0", &conf).ok);
}

//! containerd's version-2 config for a private, throwaway instance. Pure:
//! paths in, TOML text out.

use std::path::{Path, PathBuf};

/// Everything a private containerd keeps on disk, all under one directory so
/// that removing it leaves nothing behind (runc's own state is the exception,
/// see `cleanup`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub root: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    pub ttrpc_socket: PathBuf,
    /// The `opt` plugin installs into /opt/containerd unless told otherwise.
    pub opt: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
}

impl Layout {
    pub fn under(dir: &Path) -> Self {
        Self {
            root: dir.join("root"),
            state: dir.join("state"),
            socket: dir.join("containerd.sock"),
            ttrpc_socket: dir.join("containerd-ttrpc.sock"),
            opt: dir.join("opt"),
            config: dir.join("config.toml"),
            log: dir.join("containerd.log"),
        }
    }

    /// Where the runc v2 shim keeps its bundles: one directory per task id.
    pub fn task_bundles(&self, namespace: &str) -> PathBuf {
        self.state
            .join("io.containerd.runtime.v2.task")
            .join(namespace)
    }
}

/// The CRI settings that matter for driving CNI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CriSettings {
    pub sandbox_image: String,
    pub cni_bin_dir: PathBuf,
    pub cni_conf_dir: PathBuf,
}

/// Renders the config. Choices, and why:
/// - `restrict_oom_score_adj`: this root may not lower oom_score_adj, and
///   RunPodSandbox fails without it.
/// - `netns_mounts_under_state_dir`: sandbox netns bind mounts go under our
///   state dir rather than the host's /var/run/netns.
/// - `SystemdCgroup = false`: no systemd here, runc drives cgroupfs.
/// - snapshotters and services that cannot work here are disabled so the
///   start is quick and the log free of noise.
pub fn render(layout: &Layout, cri: &CriSettings) -> String {
    let q = |p: &Path| toml_string(&p.to_string_lossy());
    format!(
        r#"version = 2
root = {root}
state = {state}
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = {socket}

[ttrpc]
  address = {ttrpc}

[plugins."io.containerd.internal.v1.opt"]
  path = {opt}

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = {image}
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = {bin_dir}
    conf_dir = {conf_dir}
    max_conf_num = 1

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
"#,
        root = q(&layout.root),
        state = q(&layout.state),
        socket = q(&layout.socket),
        ttrpc = q(&layout.ttrpc_socket),
        opt = q(&layout.opt),
        image = toml_string(&cri.sandbox_image),
        bin_dir = q(&cri.cni_bin_dir),
        conf_dir = q(&cri.cni_conf_dir),
    )
}

/// A TOML basic string. Temp paths are plain, but a quote or backslash in
/// one must not turn into broken or different config.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Layout, CriSettings) {
        (
            Layout::under(Path::new("/tmp/ctd-x")),
            CriSettings {
                sandbox_image: "localhost/trellis/pause:1".into(),
                cni_bin_dir: "/tmp/ctd-x/cni/bin".into(),
                cni_conf_dir: "/tmp/ctd-x/cni/conf".into(),
            },
        )
    }

    #[test]
    fn everything_lives_under_the_private_dir() {
        let (layout, cri) = sample();
        let text = render(&layout, &cri);
        for line in [
            r#"root = "/tmp/ctd-x/root""#,
            r#"state = "/tmp/ctd-x/state""#,
            r#"address = "/tmp/ctd-x/containerd.sock""#,
            r#"address = "/tmp/ctd-x/containerd-ttrpc.sock""#,
            r#"path = "/tmp/ctd-x/opt""#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn cri_settings_needed_on_this_machine_are_set() {
        let (layout, cri) = sample();
        let text = render(&layout, &cri);
        for line in [
            "version = 2",
            r#"sandbox_image = "localhost/trellis/pause:1""#,
            "restrict_oom_score_adj = true",
            r#"bin_dir = "/tmp/ctd-x/cni/bin""#,
            r#"conf_dir = "/tmp/ctd-x/cni/conf""#,
            "max_conf_num = 1",
            r#"runtime_type = "io.containerd.runc.v2""#,
            "SystemdCgroup = false",
            r#"snapshotter = "overlayfs""#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn strings_are_escaped() {
        assert_eq!(toml_string(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(toml_string("x\ny"), r#""x\u000Ay""#);
        assert_eq!(toml_string("/plain/path"), r#""/plain/path""#);
    }

    #[test]
    fn task_bundles_are_per_namespace_under_state() {
        let (layout, _) = sample();
        assert_eq!(
            layout.task_bundles("k8s.io"),
            PathBuf::from("/tmp/ctd-x/state/io.containerd.runtime.v2.task/k8s.io")
        );
    }
}

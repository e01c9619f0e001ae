//! Pod volumes as host directories the runtime can bind-mount: hostPath
//! mapped under the node's private root (`<root>/<path>`, so a node never
//! writes the real host's /opt/cni/bin), emptyDir and file-backed volumes
//! (configMap, projected service-account token, ca.crt, namespace) under
//! the pod's directory. Planning is pure; [`materialize`] writes them.

use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{
    HostPathVolumeSource, Pod, ProjectedVolumeSource, Volume, VolumeProjection,
};

use super::fields::only_known;
use super::TranslateError;

/// What a volume becomes on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumePlan {
    /// A node path, checked or created according to the hostPath type.
    HostPath { host: PathBuf, kind: HostPathKind },
    /// A fresh directory of the pod (on disk whatever the medium, see
    /// `empty_dir_note`).
    EmptyDir { dir: PathBuf },
    /// A directory of files written before the containers start.
    Files { dir: PathBuf, files: Vec<FileSpec> },
}

impl VolumePlan {
    /// The host path containers mount.
    pub fn host_path(&self) -> &Path {
        match self {
            Self::HostPath { host, .. } => host,
            Self::EmptyDir { dir } | Self::Files { dir, .. } => dir,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostPathKind {
    /// Type unset: the runtime creates a directory if nothing is there.
    Unchecked,
    DirectoryOrCreate,
    Directory,
    FileOrCreate,
    File,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSpec {
    /// Relative to the volume directory, no `..`.
    pub path: String,
    pub content: FileContent,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileContent {
    /// A bound token for the pod's service account (TokenRequest).
    ServiceAccountToken {
        expiration_seconds: Option<i64>,
    },
    ConfigMapKey {
        name: String,
        key: String,
    },
    /// Already resolved (downward API).
    Literal(String),
}

/// Where the node keeps things: its private root and its pods' directories.
#[derive(Debug, Clone)]
pub struct NodeDirs {
    pub root: PathBuf,
    pub pods: PathBuf,
}

impl NodeDirs {
    /// `<pods>/<uid>/volumes/<name>`.
    pub fn volume_dir(&self, uid: &str, name: &str) -> PathBuf {
        self.pods.join(uid).join("volumes").join(name)
    }

    /// Where the node keeps what a real node has at the absolute `host` path (its root joined
    /// with the path, as hostPath volumes map it).
    pub fn host_path(&self, host: &Path) -> PathBuf {
        self.root.join(host.strip_prefix("/").unwrap_or(host))
    }
}

/// Plans every volume of the pod, in order, with its name. What the driver
/// runs but does not fully enforce goes to `warnings` (reported as Events).
pub fn plan_volumes(
    pod: &Pod,
    uid: &str,
    dirs: &NodeDirs,
    warnings: &mut Vec<String>,
) -> Result<Vec<(String, VolumePlan)>, TranslateError> {
    let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
    let mut plans = Vec::new();
    for (i, v) in volumes.into_iter().flatten().enumerate() {
        let path = format!("spec.volumes[{i}]");
        if let Some(note) = empty_dir_note(v, &path)? {
            warnings.push(note);
        }
        plans.push(plan_one(pod, v, uid, dirs, &path)?);
    }
    Ok(plans)
}

/// A memory-backed or size-limited emptyDir runs as a plain directory: a
/// tmpfs would have to be mounted inside the node's containerd mount
/// namespace. Said out loud rather than dropped.
fn empty_dir_note(v: &Volume, path: &str) -> Result<Option<String>, TranslateError> {
    let Some(ed) = &v.empty_dir else {
        return Ok(None);
    };
    let medium = ed.medium.as_deref().unwrap_or("");
    if !matches!(medium, "" | "Memory") {
        return Err(TranslateError::Unsupported {
            field: format!("{path}.emptyDir.medium={medium}"),
        });
    }
    let limit = ed.size_limit.as_ref().map_or("none", |q| q.0.as_str());
    Ok((medium == "Memory" || ed.size_limit.is_some()).then(|| {
        format!(
            "{path}.emptyDir: medium {medium:?} and sizeLimit {limit} not enforced by the test node driver (a plain directory)"
        )
    }))
}

fn plan_one(
    pod: &Pod,
    v: &Volume,
    uid: &str,
    dirs: &NodeDirs,
    path: &str,
) -> Result<(String, VolumePlan), TranslateError> {
    only_known(
        v,
        path,
        &["name", "hostPath", "emptyDir", "configMap", "projected"],
    )?;
    let dir = dirs.volume_dir(uid, &v.name);
    let plan = if let Some(hp) = &v.host_path {
        host_path(hp, &dirs.root, path)?
    } else if let Some(ed) = &v.empty_dir {
        only_known(ed, &format!("{path}.emptyDir"), &["medium", "sizeLimit"])?;
        VolumePlan::EmptyDir { dir }
    } else if let Some(cm) = &v.config_map {
        only_known(
            cm,
            &format!("{path}.configMap"),
            &["name", "items", "defaultMode"],
        )?;
        let files = config_map_files(&cm.name, cm.items.as_deref(), &format!("{path}.configMap"))?;
        VolumePlan::Files { dir, files }
    } else if let Some(p) = &v.projected {
        let files = projected_files(pod, p, &format!("{path}.projected"))?;
        VolumePlan::Files { dir, files }
    } else {
        return Err(TranslateError::Invalid {
            field: path.to_string(),
            reason: "volume has no source".into(),
        });
    };
    Ok((v.name.clone(), plan))
}

fn host_path(
    hp: &HostPathVolumeSource,
    root: &Path,
    path: &str,
) -> Result<VolumePlan, TranslateError> {
    let kind = match hp.type_.as_deref().unwrap_or("") {
        "" => HostPathKind::Unchecked,
        "DirectoryOrCreate" => HostPathKind::DirectoryOrCreate,
        "Directory" => HostPathKind::Directory,
        "FileOrCreate" => HostPathKind::FileOrCreate,
        "File" => HostPathKind::File,
        other => {
            return Err(TranslateError::Unsupported {
                field: format!("{path}.hostPath.type={other}"),
            })
        }
    };
    let relative = Path::new(&hp.path)
        .strip_prefix("/")
        .ok()
        .filter(|r| r.components().all(|c| matches!(c, Component::Normal(_))))
        .ok_or_else(|| TranslateError::Invalid {
            field: format!("{path}.hostPath.path"),
            reason: format!("{:?} is not an absolute path without `..`", hp.path),
        })?;
    Ok(VolumePlan::HostPath {
        host: root.join(relative),
        kind,
    })
}

fn config_map_files(
    name: &str,
    items: Option<&[k8s_openapi::api::core::v1::KeyToPath]>,
    path: &str,
) -> Result<Vec<FileSpec>, TranslateError> {
    // Without items every key of the map would be a file: the driver would
    // have to list the map, so it asks for explicit items instead.
    let items = items
        .filter(|i| !i.is_empty())
        .ok_or_else(|| TranslateError::Unsupported {
            field: format!("{path}.items (absent: every key as a file)"),
        })?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            only_known(item, &format!("{path}.items[{i}]"), &["key", "path"])?;
            Ok(FileSpec {
                path: relative_file(&item.path, &format!("{path}.items[{i}].path"))?,
                content: FileContent::ConfigMapKey {
                    name: name.to_string(),
                    key: item.key.clone(),
                },
            })
        })
        .collect()
}

fn projected_files(
    pod: &Pod,
    p: &ProjectedVolumeSource,
    path: &str,
) -> Result<Vec<FileSpec>, TranslateError> {
    only_known(p, path, &["sources", "defaultMode"])?;
    let mut files = Vec::new();
    for (i, source) in p.sources.iter().flatten().enumerate() {
        files.extend(projection(pod, source, &format!("{path}.sources[{i}]"))?);
    }
    Ok(files)
}

fn projection(
    pod: &Pod,
    s: &VolumeProjection,
    path: &str,
) -> Result<Vec<FileSpec>, TranslateError> {
    only_known(
        s,
        path,
        &["serviceAccountToken", "configMap", "downwardAPI"],
    )?;
    if let Some(t) = &s.service_account_token {
        let field = format!("{path}.serviceAccountToken");
        only_known(t, &field, &["path", "expirationSeconds"])?;
        return Ok(vec![FileSpec {
            path: relative_file(&t.path, &format!("{field}.path"))?,
            content: FileContent::ServiceAccountToken {
                expiration_seconds: t.expiration_seconds,
            },
        }]);
    }
    if let Some(cm) = &s.config_map {
        let field = format!("{path}.configMap");
        only_known(cm, &field, &["name", "items"])?;
        return config_map_files(cm.name.as_str(), cm.items.as_deref(), &field);
    }
    let Some(d) = &s.downward_api else {
        return Ok(Vec::new());
    };
    let facts = super::env::EnvFacts::default();
    d.items
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, item)| {
            let field = format!("{path}.downwardAPI.items[{i}]");
            only_known(item, &field, &["path", "fieldRef"])?;
            let fp = item
                .field_ref
                .as_ref()
                .map(|f| f.field_path.as_str())
                .unwrap_or("");
            // Only pod metadata: node-dependent paths would need facts here.
            let value = fp
                .starts_with("metadata.")
                .then(|| super::env::field_path(pod, fp, &facts))
                .flatten()
                .ok_or_else(|| TranslateError::Unsupported {
                    field: format!("{field}.fieldRef.fieldPath={fp}"),
                })?;
            Ok(FileSpec {
                path: relative_file(&item.path, &format!("{field}.path"))?,
                content: FileContent::Literal(value),
            })
        })
        .collect()
}

fn relative_file(p: &str, field: &str) -> Result<String, TranslateError> {
    let ok = !p.is_empty()
        && Path::new(p)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(p.to_string())
    } else {
        Err(TranslateError::Invalid {
            field: field.to_string(),
            reason: format!("{p:?} is not a relative path without `..`"),
        })
    }
}

/// Where file contents come from at run time (the API, or a test).
pub trait VolumeData {
    fn service_account_token(&self, expiration_seconds: Option<i64>) -> Result<String, String>;
    fn config_map_key(&self, name: &str, key: &str) -> Result<String, String>;
}

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("volume {volume}: {path}: {source}")]
    Io {
        volume: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("volume {volume}: hostPath {path} must already exist as a {kind:?}")]
    HostPathMissing {
        volume: String,
        path: PathBuf,
        kind: HostPathKind,
    },
    #[error("volume {volume}: file {file}: {reason}")]
    Data {
        volume: String,
        file: String,
        reason: String,
    },
}

/// Creates or checks every planned volume on the node.
pub fn materialize(
    plans: &[(String, VolumePlan)],
    data: &dyn VolumeData,
) -> Result<(), VolumeError> {
    for (name, plan) in plans {
        match plan {
            VolumePlan::HostPath { host, kind } => prepare_host_path(name, host, *kind)?,
            VolumePlan::EmptyDir { dir } => create_dir(name, dir)?,
            VolumePlan::Files { dir, files } => write_files(name, dir, files, data)?,
        }
    }
    Ok(())
}

fn create_dir(volume: &str, dir: &Path) -> Result<(), VolumeError> {
    std::fs::create_dir_all(dir).map_err(|source| VolumeError::Io {
        volume: volume.to_string(),
        path: dir.to_path_buf(),
        source,
    })
}

fn prepare_host_path(volume: &str, host: &Path, kind: HostPathKind) -> Result<(), VolumeError> {
    let missing = || VolumeError::HostPathMissing {
        volume: volume.to_string(),
        path: host.to_path_buf(),
        kind,
    };
    match kind {
        HostPathKind::Unchecked | HostPathKind::DirectoryOrCreate => {
            if host.exists() {
                Ok(())
            } else {
                create_dir(volume, host)
            }
        }
        HostPathKind::Directory => host.is_dir().then_some(()).ok_or_else(missing),
        HostPathKind::File => host.is_file().then_some(()).ok_or_else(missing),
        HostPathKind::FileOrCreate => {
            if let Some(parent) = host.parent() {
                create_dir(volume, parent)?;
            }
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(host)
                .map(drop)
                .map_err(|source| VolumeError::Io {
                    volume: volume.to_string(),
                    path: host.to_path_buf(),
                    source,
                })
        }
    }
}

fn write_files(
    volume: &str,
    dir: &Path,
    files: &[FileSpec],
    data: &dyn VolumeData,
) -> Result<(), VolumeError> {
    for file in files {
        let text = match &file.content {
            FileContent::ServiceAccountToken { expiration_seconds } => {
                data.service_account_token(*expiration_seconds)
            }
            FileContent::ConfigMapKey { name, key } => data.config_map_key(name, key),
            FileContent::Literal(text) => Ok(text.clone()),
        }
        .map_err(|reason| VolumeError::Data {
            volume: volume.to_string(),
            file: file.path.clone(),
            reason,
        })?;
        write_atomically(volume, &dir.join(&file.path), &text)?;
    }
    Ok(())
}

/// Temp file + rename in the same directory: a container reading the file
/// (e.g. a rotated token) sees the old or the new content, never half.
fn write_atomically(volume: &str, path: &Path, text: &str) -> Result<(), VolumeError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| VolumeError::Io {
            volume: volume.to_string(),
            path,
            source,
        }
    };
    let parent = path.parent().unwrap_or(Path::new("/"));
    create_dir(volume, parent)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!("..{name}.tmp"));
    std::fs::write(&tmp, text).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// kubelet rotates a projected token once it is older than 80% of its
/// lifetime (default one hour), or a day.
pub fn token_refresh_due(expiration_seconds: Option<i64>, age: std::time::Duration) -> bool {
    let ttl = expiration_seconds.filter(|s| *s > 0).unwrap_or(3600);
    let limit = u64::try_from(ttl).unwrap_or(3600).saturating_mul(8) / 10;
    age.as_secs() >= limit.min(24 * 3600)
}

/// Rewrites only the service-account token files (rotation).
pub fn rewrite_tokens(
    plans: &[(String, VolumePlan)],
    data: &dyn VolumeData,
) -> Result<(), VolumeError> {
    for (name, plan) in plans {
        if let VolumePlan::Files { dir, files } = plan {
            let tokens: Vec<FileSpec> = files
                .iter()
                .filter(|f| matches!(f.content, FileContent::ServiceAccountToken { .. }))
                .cloned()
                .collect();
            write_files(name, dir, &tokens, data)?;
        }
    }
    Ok(())
}

/// The shortest token lifetime the plans ask for (`None`: no token).
pub fn shortest_token_ttl(plans: &[(String, VolumePlan)]) -> Option<Option<i64>> {
    plans
        .iter()
        .flat_map(|(_, plan)| match plan {
            VolumePlan::Files { files, .. } => files.as_slice(),
            _ => &[],
        })
        .filter_map(|f| match f.content {
            FileContent::ServiceAccountToken { expiration_seconds } => Some(expiration_seconds),
            _ => None,
        })
        .min_by_key(|e| e.unwrap_or(3600))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Fixed;

    impl VolumeData for Fixed {
        fn service_account_token(&self, _: Option<i64>) -> Result<String, String> {
            Ok("tok".into())
        }
        fn config_map_key(&self, name: &str, key: &str) -> Result<String, String> {
            (name == "cfg" && key == "k")
                .then(|| "v".to_string())
                .ok_or_else(|| format!("no {name}/{key}"))
        }
    }

    /// A node's root and pods directories inside a fresh temp dir (kept while the guard lives).
    fn temp_dirs() -> (tempfile::TempDir, NodeDirs) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dirs = NodeDirs {
            root: tmp.path().join("root"),
            pods: tmp.path().join("pods"),
        };
        (tmp, dirs)
    }

    fn plans(dirs: &NodeDirs, volumes: serde_json::Value) -> Vec<(String, VolumePlan)> {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": {"containers": [], "volumes": volumes}
        }))
        .expect("pod");
        plan_volumes(&pod, "u", dirs, &mut Vec::new()).expect("plannable")
    }

    #[test]
    fn materialize_creates_host_paths_under_the_root_and_writes_files() {
        let (_tmp, dirs) = temp_dirs();
        let p = plans(
            &dirs,
            json!([
                {"name": "d", "hostPath": {"path": "/run/flannel", "type": "DirectoryOrCreate"}},
                {"name": "f", "hostPath": {"path": "/run/xtables.lock", "type": "FileOrCreate"}},
                {"name": "c", "configMap": {"name": "cfg", "items": [{"key": "k", "path": "sub/k.txt"}]}},
                {"name": "s", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}},
                    {"downwardAPI": {"items": [{"path": "ns", "fieldRef": {"fieldPath": "metadata.namespace"}}]}}]}}
            ]),
        );
        materialize(&p, &Fixed).expect("materialized");
        assert!(dirs.root.join("run/flannel").is_dir());
        assert!(dirs.root.join("run/xtables.lock").is_file());
        let read =
            |v: &str, f: &str| std::fs::read_to_string(dirs.volume_dir("u", v).join(f)).expect(f);
        assert_eq!(read("c", "sub/k.txt"), "v");
        assert_eq!(
            (read("s", "token"), read("s", "ns")),
            ("tok".into(), "ns".into())
        );
    }

    #[test]
    fn tokens_rotate_at_eighty_percent_of_their_lifetime() {
        use std::time::Duration;
        assert!(!token_refresh_due(Some(3607), Duration::from_secs(2800)));
        assert!(token_refresh_due(Some(3607), Duration::from_secs(2886)));
        assert!(token_refresh_due(None, Duration::from_secs(2880)));
        assert!(token_refresh_due(
            Some(10 * 24 * 3600),
            Duration::from_secs(24 * 3600)
        ));
    }

    #[test]
    fn rewrite_tokens_touches_only_token_files() {
        let (_tmp, dirs) = temp_dirs();
        let p = plans(
            &dirs,
            json!([{"name": "s", "projected": {"sources": [{"serviceAccountToken": {"path": "token", "expirationSeconds": 600}},
            {"downwardAPI": {"items": [{"path": "ns", "fieldRef": {"fieldPath": "metadata.namespace"}}]}}]}}]),
        );
        materialize(&p, &Fixed).expect("materialized");
        let dir = dirs.volume_dir("u", "s");
        std::fs::write(dir.join("token"), "old").expect("write");
        std::fs::write(dir.join("ns"), "edited").expect("write");
        rewrite_tokens(&p, &Fixed).expect("rewritten");
        assert_eq!(
            std::fs::read_to_string(dir.join("token")).expect("token"),
            "tok"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("ns")).expect("ns"),
            "edited"
        );
        assert_eq!(shortest_token_ttl(&p), Some(Some(600)));
        let names: Vec<_> = std::fs::read_dir(&dir)
            .expect("dir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }

    #[test]
    fn missing_must_exist_paths_and_data_are_named() {
        let (_tmp, dirs) = temp_dirs();
        let p = plans(
            &dirs,
            json!([{"name": "d", "hostPath": {"path": "/etc/x", "type": "Directory"}}]),
        );
        let e = materialize(&p, &Fixed).expect_err("missing").to_string();
        assert!(
            e.starts_with("volume d: hostPath ")
                && e.ends_with("/root/etc/x must already exist as a Directory"),
            "{e}"
        );
        let p = plans(
            &dirs,
            json!([{"name": "c", "configMap": {"name": "other", "items": [{"key": "k", "path": "k"}]}}]),
        );
        let e = materialize(&p, &Fixed).expect_err("no data").to_string();
        assert_eq!(e, "volume c: file k: no other/k");
    }

    #[test]
    fn unsupported_sources_and_escapes_are_refused() {
        let dirs = NodeDirs {
            root: "/r".into(),
            pods: "/p".into(),
        };
        let pod = |v: serde_json::Value| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": "p", "uid": "u"}, "spec": {"containers": [], "volumes": [v]}})).expect("pod")
        };
        let cases = [
            (json!({"name": "x", "secret": {"secretName": "s"}}), "spec.volumes[0].secret: not supported by the test node driver"),
            (json!({"name": "x", "configMap": {"name": "c"}}), "spec.volumes[0].configMap.items (absent: every key as a file): not supported by the test node driver"),
            (json!({"name": "x", "configMap": {"name": "c", "items": [{"key": "k", "path": "../k"}]}}), "spec.volumes[0].configMap.items[0].path: \"../k\" is not a relative path without `..`"),
            (json!({"name": "x", "hostPath": {"path": "/dev/sda", "type": "BlockDevice"}}), "spec.volumes[0].hostPath.type=BlockDevice: not supported by the test node driver"),
        ];
        for (v, want) in cases {
            let e = plan_volumes(&pod(v), "u", &dirs, &mut Vec::new()).expect_err(want);
            assert_eq!(e.to_string(), want);
        }
    }
}

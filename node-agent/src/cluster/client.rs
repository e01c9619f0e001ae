//! A `kube::Client` from a kubeconfig (flag, then `KUBECONFIG`) or the in-cluster config.
//!
//! The order is flannel's: an explicit `--kubeconfig-file` wins; in a pod (the DaemonSet) the
//! service account is used. `KUBECONFIG` sits in between so the demo and tests can point an
//! agent at the emulator without flags. `~/.kube/config` is deliberately not a fallback: an
//! agent on a node silently using an admin's personal config would be a surprise.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use kube::config::{Config, KubeConfigOptions, Kubeconfig};
use kube::Client;

/// Where a pod's service account token, CA and namespace are read from (kube's in-cluster
/// config, the same path every client uses). deploy/manifests/daemonset.yaml mounts its
/// projected token volume here; hack/validate-deploy.sh checks the two agree.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Where the API credentials come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientSource {
    /// `--kubeconfig PATH`.
    Flag(PathBuf),
    /// `KUBECONFIG`, possibly a `:`-separated list merged like kubectl does.
    Env(OsString),
    /// The pod's service account (`KUBERNETES_SERVICE_HOST`, token and CA under
    /// `/var/run/secrets/kubernetes.io/serviceaccount`).
    InCluster,
}

impl std::fmt::Display for ClientSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientSource::Flag(p) => write!(f, "kubeconfig {}", p.display()),
            ClientSource::Env(v) => write!(f, "KUBECONFIG={}", v.to_string_lossy()),
            ClientSource::InCluster => f.write_str("in-cluster service account"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no API credentials: pass --kubeconfig or set KUBECONFIG, or run in a pod \
         (KUBERNETES_SERVICE_HOST is unset, so this is not a pod with a service account)"
    )]
    NoSource,
    #[error("reading {source_desc}: {message}")]
    Kubeconfig {
        source_desc: String,
        message: String,
    },
    /// The in-cluster config could not be loaded. The shipped DaemonSet sets
    /// `automountServiceAccountToken: false` and projects the token into the agent container
    /// only, so the message names what must be there, not how the pod spec gets it.
    #[error(
        "in-cluster config: {0} (the agent needs KUBERNETES_SERVICE_HOST and _PORT, which the \
         kubelet sets, and its service account token and CA at \
         {SERVICE_ACCOUNT_DIR}/token and ca.crt: the shipped DaemonSet mounts them with its \
         projected volume kube-api-access; a pod spec of your own needs that volume, or \
         automountServiceAccountToken: true)"
    )]
    InCluster(String),
    #[error("building the API client from {source_desc}: {message}")]
    Build {
        source_desc: String,
        message: String,
    },
}

impl ClientSource {
    /// Pure choice from the flag and the environment, for `connect` and for tests.
    pub fn choose(
        flag: Option<&Path>,
        kubeconfig_env: Option<OsString>,
        in_cluster_env: bool,
    ) -> Result<ClientSource, ClientError> {
        if let Some(p) = flag.filter(|p| !p.as_os_str().is_empty()) {
            return Ok(ClientSource::Flag(p.to_path_buf()));
        }
        if let Some(v) = kubeconfig_env.filter(|v| !v.is_empty()) {
            return Ok(ClientSource::Env(v));
        }
        if in_cluster_env {
            return Ok(ClientSource::InCluster);
        }
        Err(ClientError::NoSource)
    }

    /// [`ClientSource::choose`] with this process's environment.
    pub fn from_env(flag: Option<&Path>) -> Result<ClientSource, ClientError> {
        Self::choose(
            flag,
            std::env::var_os("KUBECONFIG"),
            std::env::var_os("KUBERNETES_SERVICE_HOST").is_some_and(|v| !v.is_empty()),
        )
    }

    async fn config(&self) -> Result<Config, ClientError> {
        let kube_err = |e: &dyn std::fmt::Display| ClientError::Kubeconfig {
            source_desc: self.to_string(),
            message: e.to_string(),
        };
        let kubeconfig = match self {
            ClientSource::InCluster => {
                return Config::incluster().map_err(|e| ClientError::InCluster(e.to_string()));
            }
            ClientSource::Flag(p) => Kubeconfig::read_from(p).map_err(|e| kube_err(&e))?,
            ClientSource::Env(v) => {
                let mut merged: Option<Kubeconfig> = None;
                for p in std::env::split_paths(v).filter(|p| !p.as_os_str().is_empty()) {
                    let k = Kubeconfig::read_from(&p).map_err(|e| kube_err(&e))?;
                    merged = Some(match merged {
                        None => k,
                        Some(m) => m.merge(k).map_err(|e| kube_err(&e))?,
                    });
                }
                merged.ok_or_else(|| kube_err(&"no file named"))?
            }
        };
        Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|e| kube_err(&e))
    }
}

/// Builds the client. No request is made: an unreachable API shows up in the first call,
/// which every caller retries.
pub async fn connect(source: &ClientSource) -> Result<Client, ClientError> {
    let config = source.config().await?;
    Client::try_from(config).map_err(|e| ClientError::Build {
        source_desc: source.to_string(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_then_env_then_in_cluster() {
        let flag = Path::new("/etc/kube/agent.conf");
        assert_eq!(
            ClientSource::choose(Some(flag), Some("/x".into()), true).unwrap(),
            ClientSource::Flag(flag.into())
        );
        assert_eq!(
            ClientSource::choose(Some(Path::new("")), Some("/x".into()), true).unwrap(),
            ClientSource::Env("/x".into())
        );
        assert_eq!(
            ClientSource::choose(None, Some("".into()), true).unwrap(),
            ClientSource::InCluster
        );
        let e = ClientSource::choose(None, None, false).unwrap_err();
        assert!(e.to_string().contains("--kubeconfig"), "{e}");
    }

    #[test]
    fn in_cluster_error_names_the_token_path_and_the_manifest_volume() {
        let msg =
            ClientError::InCluster("failed to read the default token file".into()).to_string();
        for want in [
            "failed to read the default token file",
            "/var/run/secrets/kubernetes.io/serviceaccount/token",
            "ca.crt",
            "projected volume kube-api-access",
            "automountServiceAccountToken: true",
        ] {
            assert!(msg.contains(want), "{want:?} missing from {msg:?}");
        }
        // The shipped manifest sets it to false on purpose; the message must not contradict it.
        assert!(!msg.contains("must not be false"), "{msg}");
    }

    #[tokio::test]
    async fn unreadable_kubeconfig_names_the_file() {
        let src = ClientSource::Flag("/nonexistent/trellis-kubeconfig".into());
        let e = connect(&src).await.err().expect("must fail");
        assert!(
            e.to_string().contains("/nonexistent/trellis-kubeconfig"),
            "{e}"
        );
        let src = ClientSource::Env("/nonexistent/a:/nonexistent/b".into());
        let e = connect(&src).await.err().expect("must fail");
        assert!(e.to_string().contains("/nonexistent/a"), "{e}");
    }

    #[tokio::test]
    async fn kubeconfig_list_is_merged_and_first_context_wins() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, server: &str| {
            let p = dir.path().join(name);
            std::fs::write(
                &p,
                format!(
                    "apiVersion: v1\nkind: Config\ncurrent-context: c-{name}\n\
                     clusters:\n- name: k-{name}\n  cluster:\n    server: {server}\n\
                     contexts:\n- name: c-{name}\n  context:\n    cluster: k-{name}\n    user: u\n\
                     users:\n- name: u\n  user:\n    token: t\n"
                ),
            )
            .unwrap();
            p
        };
        let a = write("a", "https://127.0.0.1:6443");
        let b = write("b", "https://127.0.0.2:6443");
        let list = std::env::join_paths([&a, &b]).unwrap();
        let cfg = ClientSource::Env(list).config().await.unwrap();
        assert_eq!(cfg.cluster_url.to_string(), "https://127.0.0.1:6443/");
    }
}

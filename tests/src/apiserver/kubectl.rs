//! Test kit: the real `kubectl` (/usr/bin/kubectl) run against an emulator's kubeconfig, for
//! tests that check what a user's commands do (`kubectl apply -k`, `get -o wide`, ...).

use std::path::{Path, PathBuf};

use tokio::process::Command;

/// Where this machine has kubectl.
pub const KUBECTL: &str = "/usr/bin/kubectl";

/// What one kubectl run printed and whether it succeeded.
#[derive(Debug, Clone)]
pub struct Output {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

#[derive(Debug, thiserror::Error)]
pub enum KubectlError {
    #[error("cannot run {KUBECTL} (it is expected on this machine): {0}")]
    Spawn(std::io::Error),
    #[error("kubectl {args:?} failed:\n{stdout}\n{stderr}")]
    Failed {
        args: Vec<String>,
        stdout: String,
        stderr: String,
    },
}

/// kubectl bound to one kubeconfig (and so to one emulator and one user).
#[derive(Debug, Clone)]
pub struct Kubectl {
    kubeconfig: PathBuf,
}

impl Kubectl {
    pub fn new(kubeconfig: impl Into<PathBuf>) -> Self {
        Kubectl {
            kubeconfig: kubeconfig.into(),
        }
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Runs kubectl with `args`; a failing kubectl is an `Output` with `ok == false`.
    pub async fn run(&self, args: &[&str]) -> Result<Output, KubectlError> {
        let out = Command::new(KUBECTL)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            // In-cluster settings would override the kubeconfig.
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output()
            .await
            .map_err(KubectlError::Spawn)?;
        Ok(Output {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Runs kubectl and returns its stdout, or the failure with everything it printed.
    pub async fn ok(&self, args: &[&str]) -> Result<String, KubectlError> {
        let o = self.run(args).await?;
        if o.ok {
            Ok(o.stdout)
        } else {
            Err(KubectlError::Failed {
                args: args.iter().map(|a| a.to_string()).collect(),
                stdout: o.stdout,
                stderr: o.stderr,
            })
        }
    }
}

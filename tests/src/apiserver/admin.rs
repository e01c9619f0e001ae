//! Client side of the fault controls (`/_emulator/*`), for Rust tests; shell scripts can call the
//! same endpoints with curl and the kubeconfig's token.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::{install_crypto_provider, EmulatorError};

/// Builds a kube client from a kubeconfig file (current context).
pub async fn client_from_kubeconfig(path: &Path) -> Result<kube::Client, EmulatorError> {
    let cfg = config_from_kubeconfig(path).await?;
    kube::Client::try_from(cfg).map_err(|e| EmulatorError::Client(e.to_string()))
}

/// The same, authenticating with `token` instead of the kubeconfig's: a client acting as one of
/// the extra users (`EmulatorConfig::users`), whose requests RBAC decides.
pub async fn client_with_token(path: &Path, token: &str) -> Result<kube::Client, EmulatorError> {
    let mut cfg = config_from_kubeconfig(path).await?;
    cfg.auth_info.token = Some(token.to_string().into());
    kube::Client::try_from(cfg).map_err(|e| EmulatorError::Client(e.to_string()))
}

async fn config_from_kubeconfig(path: &Path) -> Result<kube::Config, EmulatorError> {
    install_crypto_provider();
    let kc = kube::config::Kubeconfig::read_from(path)
        .map_err(|e| EmulatorError::Client(format!("reading {}: {e}", path.display())))?;
    kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|e| EmulatorError::Client(format!("{}: {e}", path.display())))
}

/// What `GET /_emulator/state` reports.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EmulatorState {
    pub resource_version: String,
    pub history_start: String,
    pub objects: u64,
    pub open_watches: u64,
    pub failing_for_ms: u64,
    pub delaying_for_ms: u64,
}

/// Fault controls of a running emulator.
#[derive(Clone)]
pub struct Faults {
    client: kube::Client,
}

impl Faults {
    pub fn new(client: kube::Client) -> Self {
        Faults { client }
    }

    pub async fn from_kubeconfig(path: &Path) -> Result<Self, EmulatorError> {
        Ok(Faults::new(client_from_kubeconfig(path).await?))
    }

    async fn call(&self, method: &str, op: &str) -> Result<Value, EmulatorError> {
        let fail = |reason: String| EmulatorError::Admin {
            op: op.to_string(),
            reason,
        };
        let req = http::Request::builder()
            .method(method)
            .uri(format!("/_emulator/{op}"))
            .body(Vec::new())
            .map_err(|e| fail(e.to_string()))?;
        let text = self
            .client
            .request_text(req)
            .await
            .map_err(|e| fail(e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| fail(format!("bad response {text:?}: {e}")))
    }

    /// Ends every open watch (clients see their stream close and must resume).
    pub async fn close_watches(&self) -> Result<u64, EmulatorError> {
        let v = self.call("POST", "close-watches").await?;
        Ok(v["closed"].as_u64().unwrap_or(0))
    }

    /// Answers every API request with a 500 for `span`.
    pub async fn fail_for(&self, span: Duration) -> Result<(), EmulatorError> {
        self.fail_with(500, span).await
    }

    /// Answers every API request with `code` (5xx) for `span`.
    pub async fn fail_with(&self, code: u16, span: Duration) -> Result<(), EmulatorError> {
        self.call(
            "POST",
            &format!("fail?code={code}&forMs={}", span.as_millis()),
        )
        .await
        .map(|_| ())
    }

    /// Delays every API request by `delay` for `span`.
    pub async fn delay_for(&self, delay: Duration, span: Duration) -> Result<(), EmulatorError> {
        self.call(
            "POST",
            &format!("delay?ms={}&forMs={}", delay.as_millis(), span.as_millis()),
        )
        .await
        .map(|_| ())
    }

    /// Reads every new API request for `span` and never answers it (the connection stays
    /// open): a hung apiserver. Open watches are left as they are.
    pub async fn hang_for(&self, span: Duration) -> Result<(), EmulatorError> {
        self.call("POST", &format!("hang?forMs={}", span.as_millis()))
            .await
            .map(|_| ())
    }

    /// Cancels failures, delays and hangs (requests already hung stay so).
    pub async fn clear(&self) -> Result<(), EmulatorError> {
        self.call("POST", "clear").await.map(|_| ())
    }

    /// Drops the watch history: resuming any older resourceVersion now gets 410 Gone.
    /// Returns the version history now starts at.
    pub async fn compact(&self) -> Result<u64, EmulatorError> {
        let v = self.call("POST", "compact").await?;
        Ok(v["compactedAt"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0))
    }

    /// Writes the state file now.
    pub async fn persist(&self) -> Result<(), EmulatorError> {
        self.call("POST", "persist").await.map(|_| ())
    }

    /// Every distinct request recorded since the start (emulator started with the audit on).
    pub async fn audit(&self) -> Result<Vec<super::rbac::AuditRecord>, EmulatorError> {
        let v = self.call("GET", "audit").await?;
        serde_json::from_value(v["records"].clone()).map_err(|e| EmulatorError::Admin {
            op: "audit".into(),
            reason: e.to_string(),
        })
    }

    pub async fn state(&self) -> Result<EmulatorState, EmulatorError> {
        let v = self.call("GET", "state").await?;
        serde_json::from_value(v).map_err(|e| EmulatorError::Admin {
            op: "state".into(),
            reason: e.to_string(),
        })
    }
}

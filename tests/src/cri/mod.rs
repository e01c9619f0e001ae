//! A small CRI client: the calls kubelet makes to a container runtime to run
//! pod sandboxes, which is what makes the runtime invoke the CNI plugin
//! (RunPodSandbox -> CNI ADD, StopPodSandbox/RemovePodSandbox -> CNI DEL).
//!
//! Speaks CRI v1 over the runtime's unix socket with the generated `k8s-cri`
//! stubs. The network tests need only the sandbox calls (the pause process
//! of a sandbox holds the netns); the container calls in `containers.rs`
//! serve the kubelet-like node driver (tests/src/kubelet).

pub mod checks;
mod containers;
mod info;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ListPodSandboxRequest, PodSandboxConfig, PodSandboxMetadata, PodSandboxState,
    PodSandboxStatusRequest, PortMapping, Protocol, RemovePodSandboxRequest, StatusRequest,
    StopPodSandboxRequest, VersionRequest,
};
use tonic::transport::{Channel, Endpoint};

pub use containers::{ContainerInfo, ContainerRunState, ExecOutput};
pub use info::{parse_sandbox_info, SandboxInfo};

/// CRI runtime condition that containerd sets once a CNI config is loaded.
const NETWORK_READY: &str = "NetworkReady";

#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("cannot connect to the CRI socket {socket}: {source} (is the runtime running and serving CRI v1?)")]
    Connect {
        socket: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("CRI {call} failed: {status}")]
    Call {
        call: &'static str,
        #[source]
        status: tonic::Status,
    },
    #[error("CRI {call} answered without the {field} field")]
    MissingField {
        call: &'static str,
        field: &'static str,
    },
    #[error("pod sandbox {id} reports IP {value:?}, which is not an IP address")]
    BadIp { id: String, value: String },
    #[error("pod sandbox {id}: verbose info is not the JSON containerd writes: {reason}")]
    BadInfo { id: String, reason: String },
    #[error("runtime network not ready after {waited:?}: {message} (is a CNI config in the runtime's conf_dir and its plugins in bin_dir?)")]
    NetworkNotReady { waited: Duration, message: String },
}

/// Identity of a pod as kubelet hands it to the runtime; containerd forwards
/// these to the plugin in `CNI_ARGS` (K8S_POD_NAME, K8S_POD_NAMESPACE, K8S_POD_UID).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

/// A hostPort mapping, which the runtime passes to chained plugins through
/// the `portMappings` capability (the reference `portmap` plugin acts on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPort {
    pub host_port: u16,
    pub container_port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxState {
    Ready,
    NotReady,
}

/// What a sandbox's status says about its network, plus where its netns is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxStatus {
    pub id: String,
    pub state: SandboxState,
    /// Primary IP first, then the additional ones (dual-stack).
    pub ips: Vec<IpAddr>,
    pub info: SandboxInfo,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSummary {
    pub id: String,
    pub name: String,
    pub namespace: String,
    pub state: SandboxState,
}

pub struct CriClient {
    runtime: RuntimeServiceClient<Channel>,
}

impl CriClient {
    /// Connects to a runtime's CRI socket (e.g. containerd's grpc address).
    pub async fn connect(socket: &Path) -> Result<Self, CriError> {
        let connect_err = |source| CriError::Connect {
            socket: socket.to_path_buf(),
            source,
        };
        let endpoint = Endpoint::from_shared(format!("unix://{}", socket.display()))
            .map_err(connect_err)?
            .connect_timeout(Duration::from_secs(5));
        let channel = endpoint.connect().await.map_err(connect_err)?;
        Ok(Self {
            runtime: RuntimeServiceClient::new(channel),
        })
    }

    /// Runtime name and version, e.g. ("containerd", "1.6.20~ds1").
    pub async fn version(&mut self) -> Result<(String, String), CriError> {
        let resp = self
            .runtime
            .version(VersionRequest {
                version: "v1".into(),
            })
            .await
            .map_err(call_err("Version"))?
            .into_inner();
        Ok((resp.runtime_name, resp.runtime_version))
    }

    /// Waits until the runtime reports `NetworkReady`, which containerd only
    /// does once it has loaded a CNI config: RunPodSandbox before that fails.
    pub async fn wait_network_ready(&mut self, timeout: Duration) -> Result<(), CriError> {
        let start = Instant::now();
        loop {
            let status = self
                .runtime
                .status(StatusRequest { verbose: false })
                .await
                .map_err(call_err("Status"))?
                .into_inner()
                .status
                .ok_or(CriError::MissingField {
                    call: "Status",
                    field: "status",
                })?;
            let network = status.conditions.iter().find(|c| c.r#type == NETWORK_READY);
            if network.is_some_and(|c| c.status) {
                return Ok(());
            }
            if start.elapsed() >= timeout {
                let message = network.map_or_else(
                    || format!("no {NETWORK_READY} condition reported"),
                    |c| format!("{}: {}", c.reason, c.message),
                );
                return Err(CriError::NetworkNotReady {
                    waited: start.elapsed(),
                    message,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs a pod sandbox (the runtime starts the pause container and calls
    /// CNI ADD for it) and returns its id.
    pub async fn run_pod_sandbox(
        &mut self,
        pod: &PodRef,
        host_ports: &[HostPort],
    ) -> Result<String, CriError> {
        self.run_pod_sandbox_config(sandbox_config(pod, host_ports))
            .await
    }

    /// Status of one sandbox, with its IPs and (from the verbose info) the
    /// pid of its pause process and its netns path.
    pub async fn pod_sandbox_status(&mut self, id: &str) -> Result<SandboxStatus, CriError> {
        let resp = self
            .runtime
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id.to_string(),
                verbose: true,
            })
            .await
            .map_err(call_err("PodSandboxStatus"))?
            .into_inner();
        let status = resp.status.ok_or(CriError::MissingField {
            call: "PodSandboxStatus",
            field: "status",
        })?;
        let mut raw_ips = Vec::new();
        if let Some(net) = &status.network {
            if !net.ip.is_empty() {
                raw_ips.push(net.ip.clone());
            }
            raw_ips.extend(net.additional_ips.iter().map(|p| p.ip.clone()));
        }
        let ips = raw_ips
            .into_iter()
            .map(|value| {
                value.parse().map_err(|_| CriError::BadIp {
                    id: id.to_string(),
                    value,
                })
            })
            .collect::<Result<Vec<IpAddr>, _>>()?;
        let info = sandbox_info(id, &resp.info)?;
        Ok(SandboxStatus {
            id: status.id,
            state: state_of(status.state),
            ips,
            info,
        })
    }

    /// Stops the sandbox: the runtime calls CNI DEL and kills the pause process.
    pub async fn stop_pod_sandbox(&mut self, id: &str) -> Result<(), CriError> {
        self.runtime
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.to_string(),
            })
            .await
            .map_err(call_err("StopPodSandbox"))?;
        Ok(())
    }

    /// Removes a stopped sandbox and its metadata (containerd calls CNI DEL
    /// again here if the network was not torn down yet).
    pub async fn remove_pod_sandbox(&mut self, id: &str) -> Result<(), CriError> {
        self.runtime
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: id.to_string(),
            })
            .await
            .map_err(call_err("RemovePodSandbox"))?;
        Ok(())
    }

    pub async fn list_pod_sandboxes(&mut self) -> Result<Vec<SandboxSummary>, CriError> {
        let resp = self
            .runtime
            .list_pod_sandbox(ListPodSandboxRequest { filter: None })
            .await
            .map_err(call_err("ListPodSandbox"))?
            .into_inner();
        Ok(resp
            .items
            .into_iter()
            .map(|sb| {
                let (name, namespace) = sb
                    .metadata
                    .map(|m| (m.name, m.namespace))
                    .unwrap_or_default();
                SandboxSummary {
                    id: sb.id,
                    name,
                    namespace,
                    state: state_of(sb.state),
                }
            })
            .collect())
    }
}

fn call_err(call: &'static str) -> impl Fn(tonic::Status) -> CriError {
    move |status| CriError::Call { call, status }
}

fn state_of(raw: i32) -> SandboxState {
    if raw == PodSandboxState::SandboxReady as i32 {
        SandboxState::Ready
    } else {
        SandboxState::NotReady
    }
}

fn sandbox_info(id: &str, info: &HashMap<String, String>) -> Result<SandboxInfo, CriError> {
    // containerd puts everything under the single key "info"; a runtime that
    // gives no verbose info still has usable IPs, so absence is not an error.
    match info.get("info") {
        Some(json) => parse_sandbox_info(json).map_err(|reason| CriError::BadInfo {
            id: id.to_string(),
            reason,
        }),
        None => Ok(SandboxInfo::default()),
    }
}

/// The sandbox config kubelet would send for a plain pod: pod-level network,
/// PID and IPC namespaces (the zero values), no cgroup parent, no log dir.
fn sandbox_config(pod: &PodRef, host_ports: &[HostPort]) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: pod.name.clone(),
            uid: pod.uid.clone(),
            namespace: pod.namespace.clone(),
            attempt: 0,
        }),
        hostname: pod.name.clone(),
        port_mappings: host_ports
            .iter()
            .map(|p| PortMapping {
                protocol: Protocol::Tcp as i32,
                container_port: i32::from(p.container_port),
                host_port: i32::from(p.host_port),
                host_ip: String::new(),
            })
            .collect(),
        labels: HashMap::from([("app".to_string(), "trellis-cri-test".to_string())]),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_config_carries_pod_identity_and_ports() {
        let pod = PodRef {
            name: "web-0".into(),
            namespace: "default".into(),
            uid: "uid-1".into(),
        };
        let cfg = sandbox_config(
            &pod,
            &[HostPort {
                host_port: 18080,
                container_port: 80,
            }],
        );
        let meta = cfg.metadata.expect("metadata set");
        assert_eq!(
            (
                meta.name.as_str(),
                meta.namespace.as_str(),
                meta.uid.as_str()
            ),
            ("web-0", "default", "uid-1")
        );
        assert_eq!(cfg.hostname, "web-0");
        assert_eq!(cfg.port_mappings.len(), 1);
        assert_eq!(cfg.port_mappings[0].host_port, 18080);
        assert_eq!(cfg.port_mappings[0].container_port, 80);
        assert_eq!(cfg.port_mappings[0].protocol, Protocol::Tcp as i32);
    }

    #[test]
    fn state_maps_only_ready_to_ready() {
        for (raw, want) in [
            (PodSandboxState::SandboxReady as i32, SandboxState::Ready),
            (
                PodSandboxState::SandboxNotready as i32,
                SandboxState::NotReady,
            ),
            (42, SandboxState::NotReady),
        ] {
            assert_eq!(state_of(raw), want, "{raw}");
        }
    }

    #[test]
    fn missing_verbose_info_is_empty_not_an_error() {
        let info = sandbox_info("x", &HashMap::new()).expect("no info is fine");
        assert_eq!(info, SandboxInfo::default());
    }

    #[test]
    fn malformed_verbose_info_is_an_error_naming_the_sandbox() {
        let map = HashMap::from([("info".to_string(), "{not json".to_string())]);
        let err = sandbox_info("abc", &map).expect_err("must fail");
        assert!(err.to_string().contains("abc"), "{err}");
    }
}

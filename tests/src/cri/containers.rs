//! The container calls of CRI (create, start, status, stop, remove, exec),
//! plus RunPodSandbox with a caller-built config: what a kubelet-like
//! driver needs beyond the sandbox-only calls the network tests use.

use k8s_cri::v1::{
    ContainerConfig, ContainerFilter, ContainerState, ContainerStatusRequest,
    CreateContainerRequest, ExecSyncRequest, ListContainersRequest, PodSandboxConfig,
    RemoveContainerRequest, RunPodSandboxRequest, StartContainerRequest, StopContainerRequest,
};

use super::{call_err, CriClient, CriError};

/// What ContainerStatus says, in the terms kubelet puts into a Pod status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    pub state: ContainerRunState,
    /// Unix nanoseconds (0: not yet).
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    /// e.g. "Completed", "Error", "OOMKilled".
    pub reason: String,
    pub message: String,
    pub image_ref: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerRunState {
    Created,
    Running,
    Exited,
    Unknown,
}

/// Output of a command run in a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl CriClient {
    /// RunPodSandbox with a full config (namespaces, security context, log
    /// directory...), as kubelet builds it.
    pub async fn run_pod_sandbox_config(
        &mut self,
        config: PodSandboxConfig,
    ) -> Result<String, CriError> {
        let resp = self
            .runtime
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await
            .map_err(call_err("RunPodSandbox"))?;
        Ok(resp.into_inner().pod_sandbox_id)
    }

    pub async fn create_container(
        &mut self,
        sandbox_id: &str,
        config: ContainerConfig,
        sandbox_config: &PodSandboxConfig,
    ) -> Result<String, CriError> {
        let resp = self
            .runtime
            .create_container(CreateContainerRequest {
                pod_sandbox_id: sandbox_id.to_string(),
                config: Some(config),
                sandbox_config: Some(sandbox_config.clone()),
            })
            .await
            .map_err(call_err("CreateContainer"))?;
        Ok(resp.into_inner().container_id)
    }

    pub async fn start_container(&mut self, id: &str) -> Result<(), CriError> {
        self.runtime
            .start_container(StartContainerRequest {
                container_id: id.to_string(),
            })
            .await
            .map_err(call_err("StartContainer"))?;
        Ok(())
    }

    /// SIGTERM, then SIGKILL after `timeout_secs`.
    pub async fn stop_container(&mut self, id: &str, timeout_secs: i64) -> Result<(), CriError> {
        self.runtime
            .stop_container(StopContainerRequest {
                container_id: id.to_string(),
                timeout: timeout_secs,
            })
            .await
            .map_err(call_err("StopContainer"))?;
        Ok(())
    }

    pub async fn remove_container(&mut self, id: &str) -> Result<(), CriError> {
        self.runtime
            .remove_container(RemoveContainerRequest {
                container_id: id.to_string(),
            })
            .await
            .map_err(call_err("RemoveContainer"))?;
        Ok(())
    }

    pub async fn container_status(&mut self, id: &str) -> Result<ContainerInfo, CriError> {
        let resp = self
            .runtime
            .container_status(ContainerStatusRequest {
                container_id: id.to_string(),
                verbose: false,
            })
            .await
            .map_err(call_err("ContainerStatus"))?
            .into_inner();
        let s = resp.status.ok_or(CriError::MissingField {
            call: "ContainerStatus",
            field: "status",
        })?;
        Ok(ContainerInfo {
            id: s.id,
            state: run_state(s.state),
            started_at: s.started_at,
            finished_at: s.finished_at,
            exit_code: s.exit_code,
            reason: s.reason,
            message: s.message,
            image_ref: s.image_ref,
        })
    }

    /// Ids of the containers of one sandbox (all states).
    pub async fn list_container_ids(&mut self, sandbox_id: &str) -> Result<Vec<String>, CriError> {
        let resp = self
            .runtime
            .list_containers(ListContainersRequest {
                filter: Some(ContainerFilter {
                    pod_sandbox_id: sandbox_id.to_string(),
                    ..Default::default()
                }),
            })
            .await
            .map_err(call_err("ListContainers"))?;
        Ok(resp
            .into_inner()
            .containers
            .into_iter()
            .map(|c| c.id)
            .collect())
    }

    /// Runs `cmd` in the container and waits up to `timeout_secs`.
    pub async fn exec_sync(
        &mut self,
        id: &str,
        cmd: &[String],
        timeout_secs: i64,
    ) -> Result<ExecOutput, CriError> {
        let resp = self
            .runtime
            .exec_sync(ExecSyncRequest {
                container_id: id.to_string(),
                cmd: cmd.to_vec(),
                timeout: timeout_secs,
            })
            .await
            .map_err(call_err("ExecSync"))?
            .into_inner();
        Ok(ExecOutput {
            exit_code: resp.exit_code,
            stdout: resp.stdout,
            stderr: resp.stderr,
        })
    }
}

fn run_state(raw: i32) -> ContainerRunState {
    match ContainerState::try_from(raw) {
        Ok(ContainerState::ContainerCreated) => ContainerRunState::Created,
        Ok(ContainerState::ContainerRunning) => ContainerRunState::Running,
        Ok(ContainerState::ContainerExited) => ContainerRunState::Exited,
        _ => ContainerRunState::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_states_map_and_unknown_values_are_unknown() {
        for (raw, want) in [
            (
                ContainerState::ContainerRunning as i32,
                ContainerRunState::Running,
            ),
            (
                ContainerState::ContainerExited as i32,
                ContainerRunState::Exited,
            ),
            (
                ContainerState::ContainerCreated as i32,
                ContainerRunState::Created,
            ),
            (99, ContainerRunState::Unknown),
        ] {
            assert_eq!(run_state(raw), want, "{raw}");
        }
    }
}

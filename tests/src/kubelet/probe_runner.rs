//! Executes one probe of a running container: exec through CRI ExecSync,
//! HTTP and TCP from inside the sandbox's network namespace (see
//! `probes::run_network_probe`). Ok(()) passes; Err says why it failed, in
//! the words kubelet puts into its Unhealthy events.

use std::path::Path;

use super::probes::{run_network_probe, ProbeAction, ProbePlan};
use crate::cri::CriClient;

pub async fn run_probe(
    cri: &mut CriClient,
    plan: &ProbePlan,
    container_id: &str,
    netns: Option<&Path>,
    default_host: &str,
) -> Result<(), String> {
    if let ProbeAction::Exec { command } = &plan.action {
        let timeout = i64::try_from(plan.timeout.as_secs().max(1)).unwrap_or(1);
        let out = cri
            .exec_sync(container_id, command, timeout)
            .await
            .map_err(|e| e.to_string())?;
        return if out.exit_code == 0 {
            Ok(())
        } else {
            Err(format!(
                "command {command:?} exited with {}: {}",
                out.exit_code,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        };
    }
    let netns = netns
        .ok_or("the sandbox's network namespace is unknown")?
        .to_path_buf();
    let (action, host, timeout) = (plan.action.clone(), default_host.to_string(), plan.timeout);
    tokio::task::spawn_blocking(move || run_network_probe(&action, &netns, &host, timeout))
        .await
        .map_err(|e| format!("probe task: {e}"))?
}

//! Assertions shared by the tests that drive pod sandboxes over CRI.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use trellis_testkit::ensure;
use trellis_testkit::failure::{Failure, TestResult};

use super::{CriClient, HostPort, PodRef, SandboxState, SandboxStatus};

/// One IPv4 per ready sandbox, a pod address of the /24 `prefix` (never network, `gateway`
/// or broadcast), all distinct; `subnet` names that /24 in messages. Returns them in
/// sandbox order.
pub fn pod_addresses(
    statuses: &[SandboxStatus],
    prefix: [u8; 3],
    gateway: Ipv4Addr,
    subnet: &str,
) -> TestResult<Vec<Ipv4Addr>> {
    let mut ips = Vec::with_capacity(statuses.len());
    for s in statuses {
        ensure!(
            s.state == SandboxState::Ready,
            "sandbox {} not ready: {s:?}",
            s.id
        );
        let [IpAddr::V4(ip)] = s.ips.as_slice() else {
            return Err(Failure(format!(
                "sandbox {} should have exactly one IPv4 address, has {:?}",
                s.id, s.ips
            )));
        };
        let o = ip.octets();
        ensure!(
            o[..3] == prefix && o[3] != 0 && o[3] != 255 && *ip != gateway,
            "sandbox {} got {ip}, not a pod address of {subnet}",
            s.id
        );
        ips.push(*ip);
    }
    let distinct: BTreeSet<_> = ips.iter().collect();
    ensure!(
        distinct.len() == ips.len(),
        "duplicate pod addresses: {ips:?}"
    );
    Ok(ips)
}

/// The status of every sandbox of `ids`, in that order.
pub async fn statuses(cri: &mut CriClient, ids: &[String]) -> TestResult<Vec<SandboxStatus>> {
    let mut statuses = Vec::with_capacity(ids.len());
    for id in ids {
        statuses.push(cri.pod_sandbox_status(id).await?);
    }
    Ok(statuses)
}

/// Stops, then removes every sandbox of `ids` as kubelet does; none may be listed after.
pub async fn stop_and_remove(cri: &mut CriClient, ids: &[String]) -> TestResult {
    for id in ids {
        cri.stop_pod_sandbox(id).await?;
    }
    for id in ids {
        cri.remove_pod_sandbox(id).await?;
    }
    let left = cri.list_pod_sandboxes().await?;
    ensure!(left.is_empty(), "sandboxes left after removal: {left:?}");
    Ok(())
}

/// Runs `count` sandboxes `<name>-<i>` in `namespace`, one after the other, sandbox `i` with
/// the host ports `ports(i)`; `via` (e.g. the CNI chain) is named in errors. Returns their
/// ids and how long each RunPodSandbox took.
pub async fn run_sandboxes(
    cri: &mut CriClient,
    count: usize,
    (name, namespace): (&str, &str),
    ports: impl Fn(usize) -> &'static [HostPort],
    via: Option<&str>,
) -> TestResult<(Vec<String>, Vec<Duration>)> {
    let mut ids = Vec::with_capacity(count);
    let mut latencies = Vec::with_capacity(count);
    for i in 0..count {
        let pod = PodRef {
            name: format!("{name}-{i}"),
            namespace: namespace.into(),
            uid: format!("{:08x}-0000-4000-8000-{i:012}", std::process::id()),
        };
        let start = Instant::now();
        let id = cri.run_pod_sandbox(&pod, ports(i)).await.map_err(|e| {
            let via = via.map(|v| format!(" via {v}")).unwrap_or_default();
            Failure(format!("RunPodSandbox {}{via}: {e}", pod.name))
        })?;
        latencies.push(start.elapsed());
        ids.push(id);
    }
    Ok((ids, latencies))
}

/// Runs `program args` inside the sandbox's netns, entered through its pause pid (the netns
/// bind mount lives in containerd's private mount namespace): (success, stdout, stderr).
pub fn in_sandbox(
    status: &SandboxStatus,
    program: &str,
    args: &[&str],
) -> TestResult<(bool, String, String)> {
    let netns = status.info.netns_via_proc().ok_or_else(|| {
        Failure(format!(
            "sandbox {} reports no pause pid in its verbose info",
            status.id
        ))
    })?;
    Ok(trellis_testkit::cmd::capture(
        std::process::Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .arg(program)
            .args(args),
    )?)
}

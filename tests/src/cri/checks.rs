//! Assertions shared by the tests that drive pod sandboxes over CRI.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use trellis_testkit::ensure;
use trellis_testkit::failure::{Failure, TestResult};

use super::{SandboxState, SandboxStatus};

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

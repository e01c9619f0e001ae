//! Whether the agent holds the capability it cannot work without, checked by `run`.
//!
//! Without CAP_NET_ADMIN no route, device, neighbour or firewall rule can be changed. A node
//! whose kernel state is already complete (an agent restart, or a DaemonSet re-applied with a
//! capability removed) would otherwise look healthy until the first change, and iptables'
//! own message for it ("Permission denied (you must be root)") points the operator at the
//! wrong thing. So the effective set is read at every full pass (one small file): a missing
//! capability is an error in the log, a Warning Event and a readiness reason naming the
//! securityContext to fix.

use std::path::Path;

/// Bit numbers from linux/capability.h.
pub const CAP_NET_ADMIN: u32 = 12;

/// The effective capability set of this process (`CapEff` of `/proc/self/status`), or `None`
/// when it cannot be read (not Linux, /proc hidden): then nothing is claimed either way.
pub fn effective() -> Option<u64> {
    effective_from(Path::new("/proc/self/status"))
}

fn effective_from(status: &Path) -> Option<u64> {
    parse_cap_eff(&std::fs::read_to_string(status).ok()?)
}

/// Whether the effective uid is 0 (`Uid:` of `/proc/self/status`: real, effective, ...);
/// unknown counts as root, so the advice is the usual one.
pub fn runs_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| parse_euid(&s))
        .is_none_or(|uid| uid == 0)
}

fn parse_euid(status: &str) -> Option<u32> {
    let ids = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    ids.split_whitespace().nth(1)?.parse().ok()
}

/// `CapEff:\t0000000000003000` -> 0x3000.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

/// `Err(what to fix)` when CAP_NET_ADMIN is known to be missing. `root`: whether the process
/// runs as uid 0 (Kubernetes gives added capabilities to uid 0 only).
pub fn check(effective: Option<u64>, root: bool) -> Result<(), String> {
    let fix = if root {
        "Add NET_ADMIN to the container's securityContext.capabilities.add, as \
         deploy/manifests/daemonset.yaml does"
    } else {
        "It runs as a non-root user, which gets no added capabilities: set \
         securityContext.runAsUser: 0 and add NET_ADMIN, as deploy/manifests/daemonset.yaml does"
    };
    match effective {
        Some(set) if set & (1 << CAP_NET_ADMIN) == 0 => Err(format!(
            "trellis-agent runs without CAP_NET_ADMIN (effective capabilities {set:#x}): it \
             cannot change routes, devices, neighbours or firewall rules. {fix}"
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_effective_set() {
        let status = "Name:\ttrellis-agent\nCapInh:\t0000000000000000\nCapPrm:\t0000000000003000\nCapEff:\t0000000000003000\nCapBnd:\t0000000000003000\n";
        assert_eq!(parse_cap_eff(status), Some(0x3000));
        assert_eq!(parse_cap_eff("CapEff:\tzz\n"), None);
        assert_eq!(parse_cap_eff("Name:\tx\n"), None);
        assert_eq!(parse_euid("Uid:\t1000\t0\t0\t0\n"), Some(0));
        assert_eq!(parse_euid("Uid:\t0\t1000\t1000\t1000\n"), Some(1000));
        assert_eq!(parse_euid("Uid:\t0\n"), None);
    }

    #[test]
    fn net_admin_is_required_and_enough() {
        assert!(check(Some(1 << CAP_NET_ADMIN), true).is_ok());
        assert!(check(Some(0x3000), true).is_ok()); // NET_ADMIN + NET_RAW, as deployed
        let err = check(Some(1 << 13), true).expect_err("NET_RAW alone");
        assert!(
            err.contains("CAP_NET_ADMIN") && err.contains("capabilities.add"),
            "{err}"
        );
        let err = check(Some(0), false).expect_err("non-root");
        assert!(err.contains("runAsUser: 0"), "{err}");
        assert!(check(None, true).is_ok(), "unknown is not claimed missing");
    }

    #[test]
    fn this_process_has_a_readable_set() {
        assert!(effective_from(Path::new("/proc/self/status")).is_some());
        assert_eq!(effective_from(Path::new("/nonexistent/status")), None);
    }
}

//! Whether bridged pod traffic passes through iptables (`br_netfilter`), checked by `run`.
//!
//! A pod that reaches a Service backed by a pod on the same node has its request DNATed by
//! kube-proxy; the reply goes straight back over `cni0`. Unless bridged frames go through
//! netfilter (the `br_netfilter` module, with `net.bridge.bridge-nf-call-iptables=1`), that
//! reply is never un-NATed and the connection fails: DNS to a CoreDNS on the same node
//! included. The agent cannot load modules or write `/proc/sys` (it has neither
//! CAP_SYS_MODULE nor a writable /proc), so it reports the problem, loudly, and says what to
//! run on the host. The sysctls are per network namespace: read in the node's own.

use std::path::Path;

const SYSCTL_DIR: &str = "/proc/sys/net/bridge";

/// What the host has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BridgeNf {
    /// `None` when the module is not loaded (the sysctl does not exist).
    pub call_iptables: Option<bool>,
    pub call_ip6tables: Option<bool>,
}

impl BridgeNf {
    /// Reads the node's sysctls.
    pub fn read() -> BridgeNf {
        Self::read_from(Path::new(SYSCTL_DIR))
    }

    fn read_from(dir: &Path) -> BridgeNf {
        // Absent: the module is not loaded. Present but unreadable: this cannot tell, and
        // does not block readiness on a guess.
        let flag = |name: &str| match std::fs::read_to_string(dir.join(name)) {
            Ok(v) => Some(v.trim() != "0"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(_) => Some(true),
        };
        BridgeNf {
            call_iptables: flag("bridge-nf-call-iptables"),
            call_ip6tables: flag("bridge-nf-call-ip6tables"),
        }
    }

    /// `Err(what to fix)` when pods of the enabled families cannot reach Services backed by
    /// pods on the same node.
    pub fn check(&self, ipv4: bool, ipv6: bool) -> Result<(), String> {
        let wanted = [
            (ipv4, self.call_iptables, "bridge-nf-call-iptables"),
            (ipv6, self.call_ip6tables, "bridge-nf-call-ip6tables"),
        ];
        for (enabled, value, name) in wanted {
            if !enabled {
                continue;
            }
            match value {
                None => {
                    return Err(
                        "br_netfilter is not loaded on this node: pods cannot reach \
                         Services backed by pods on the same node (DNS included). On the host: \
                         `modprobe br_netfilter`, and persist it with \
                         `echo br_netfilter > /etc/modules-load.d/br_netfilter.conf`"
                            .into(),
                    )
                }
                Some(false) => {
                    return Err(format!(
                        "net.bridge.{name}=0 on this node: pods cannot reach Services backed by \
                         pods on the same node (DNS included). On the host: \
                         `sysctl -w net.bridge.{name}=1`, and persist it in /etc/sysctl.d"
                    ))
                }
                Some(true) => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_missing_piece_is_named_with_its_fix() {
        let ok = BridgeNf {
            call_iptables: Some(true),
            call_ip6tables: Some(true),
        };
        assert_eq!(ok.check(true, true), Ok(()));
        let unloaded = BridgeNf {
            call_iptables: None,
            call_ip6tables: None,
        };
        let e = unloaded.check(true, false).unwrap_err();
        assert!(e.contains("modprobe br_netfilter"), "{e}");
        let v4_off = BridgeNf {
            call_iptables: Some(false),
            ..ok
        };
        let e = v4_off.check(true, false).unwrap_err();
        assert!(e.contains("bridge-nf-call-iptables=1"), "{e}");
        assert_eq!(v4_off.check(false, true), Ok(()), "IPv4 off: not needed");
        let v6_off = BridgeNf {
            call_ip6tables: Some(false),
            ..ok
        };
        assert!(v6_off.check(true, true).unwrap_err().contains("ip6tables"));
        assert_eq!(v6_off.check(true, false), Ok(()), "IPv6 off: not needed");
    }

    #[test]
    fn reads_the_sysctl_files() {
        let dir = tempfile::tempdir().expect("tmp");
        assert_eq!(
            BridgeNf::read_from(dir.path()),
            BridgeNf {
                call_iptables: None,
                call_ip6tables: None
            }
        );
        std::fs::write(dir.path().join("bridge-nf-call-iptables"), "1\n").expect("write");
        std::fs::write(dir.path().join("bridge-nf-call-ip6tables"), "0\n").expect("write");
        let got = BridgeNf::read_from(dir.path());
        assert_eq!(got.call_iptables, Some(true));
        assert_eq!(got.call_ip6tables, Some(false));
    }
}

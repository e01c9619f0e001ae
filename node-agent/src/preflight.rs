//! `trellis-agent preflight`: the classic reasons a flannel-style network
//! fails on a node, checked before they bite. Each check is a pure function
//! of facts gathered separately, so the verdicts are unit-tested.

use std::net::IpAddr;
use std::path::Path;

use ipnetwork::IpNetwork;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub level: Level,
    pub check: &'static str,
    pub message: String,
}

fn f(level: Level, check: &'static str, message: impl Into<String>) -> Finding {
    Finding {
        level,
        check,
        message: message.into(),
    }
}

/// Facts read from the node.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// `/proc/sys/net/bridge/bridge-nf-call-iptables`: None when br_netfilter is not loaded.
    pub bridge_nf_call_iptables: Option<bool>,
    pub ip_forward: Option<bool>,
    /// Policy of the filter FORWARD chain, if iptables answered.
    pub forward_policy: Option<String>,
    /// File names in the CNI conf dir.
    pub cni_confs: Vec<String>,
    pub our_conflist: String,
    pub pod_network: Option<IpNetwork>,
    pub service_cidr: Option<IpNetwork>,
    pub node_addrs: Vec<IpNetwork>,
    /// Local UDP ports bound by user-space sockets.
    pub udp_ports_in_use: Vec<u16>,
    pub vxlan_port: Option<u16>,
}

pub fn evaluate(x: &Facts) -> Vec<Finding> {
    let mut out = Vec::new();
    out.push(match x.bridge_nf_call_iptables {
        None => f(Level::Warn, "br_netfilter", "br_netfilter is not loaded: kube-proxy's rules do not see pod-to-pod traffic on cni0 (modprobe br_netfilter)"),
        Some(false) => f(Level::Warn, "br_netfilter", "net.bridge.bridge-nf-call-iptables=0: Services may not work between pods on one node (sysctl -w net.bridge.bridge-nf-call-iptables=1)"),
        Some(true) => f(Level::Ok, "br_netfilter", "br_netfilter loaded, bridge-nf-call-iptables=1"),
    });
    out.push(match x.ip_forward {
        Some(true) => f(Level::Ok, "ip_forward", "net.ipv4.ip_forward=1"),
        Some(false) => f(
            Level::Fail,
            "ip_forward",
            "net.ipv4.ip_forward=0: traffic cannot leave cni0 (sysctl -w net.ipv4.ip_forward=1)",
        ),
        None => f(Level::Warn, "ip_forward", "cannot read net.ipv4.ip_forward"),
    });
    out.push(match x.forward_policy.as_deref() {
        Some("DROP") => f(Level::Warn, "forward_policy", "iptables FORWARD policy is DROP (Docker sets it): trellis's FLANNEL-FWD accepts the pod network, keep --iptables-forward-rules on"),
        Some(p) => f(Level::Ok, "forward_policy", format!("iptables FORWARD policy is {p}")),
        None => f(Level::Warn, "forward_policy", "cannot read the iptables FORWARD policy"),
    });
    let mut confs: Vec<&String> = x
        .cni_confs
        .iter()
        .filter(|n| n.ends_with(".conf") || n.ends_with(".conflist") || n.ends_with(".json"))
        .collect();
    confs.sort();
    match confs.first() {
        Some(first) if **first != x.our_conflist => out.push(f(
            Level::Fail,
            "cni_conf",
            format!("{first} sorts before {} in the CNI conf dir: the runtime uses it and pods get addresses from it (the \"10.88.x\" trap); remove it", x.our_conflist),
        )),
        Some(_) => out.push(f(Level::Ok, "cni_conf", format!("{} is the first CNI config", x.our_conflist))),
        None => out.push(f(Level::Warn, "cni_conf", "no CNI config installed yet (install-cni runs as the DaemonSet's init container)")),
    }
    if let Some(pod) = x.pod_network {
        if let Some(svc) = x.service_cidr {
            if overlaps(pod, svc) {
                out.push(f(
                    Level::Fail,
                    "cidr_overlap",
                    format!("pod network {pod} overlaps the service CIDR {svc}"),
                ));
            }
        }
        for a in &x.node_addrs {
            let net = IpNetwork::new(a.network(), a.prefix()).unwrap_or(*a);
            if a.is_ipv4() == pod.is_ipv4() && !is_host_local(a.ip()) && overlaps(pod, net) {
                out.push(f(
                    Level::Fail,
                    "cidr_overlap",
                    format!("pod network {pod} overlaps node address {a}"),
                ));
            }
        }
        if !out.iter().any(|x| x.check == "cidr_overlap") {
            out.push(f(
                Level::Ok,
                "cidr_overlap",
                format!("pod network {pod} overlaps neither node addresses nor the service CIDR"),
            ));
        }
    }
    if let Some(port) = x.vxlan_port {
        if x.udp_ports_in_use.contains(&port) {
            out.push(f(Level::Fail, "udp_port", format!("UDP port {port} (VXLAN) is bound by a user-space process: another overlay is running?")));
        } else {
            out.push(f(Level::Ok, "udp_port", format!("UDP port {port} is free")));
        }
    }
    out
}

fn is_host_local(ip: IpAddr) -> bool {
    ip.is_loopback() || matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

pub fn overlaps(a: IpNetwork, b: IpNetwork) -> bool {
    a.is_ipv4() == b.is_ipv4() && (a.contains(b.network()) || b.contains(a.network()))
}

fn read_bool(path: &str) -> Option<bool> {
    std::fs::read_to_string(path).ok().map(|s| s.trim() == "1")
}

/// Bound UDP ports from /proc/net/udp{,6}: kernel sockets (VXLAN's own)
/// have inode 0 and are not counted.
pub fn udp_ports_in_use() -> Vec<u16> {
    let mut ports = Vec::new();
    for file in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(inode)) = (cols.get(1), cols.get(9)) else {
                continue;
            };
            if *inode == "0" {
                continue;
            }
            if let Some(port) = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok())
            {
                ports.push(port);
            }
        }
    }
    ports
}

pub fn gather_sysctls(facts: &mut Facts) {
    facts.bridge_nf_call_iptables = read_bool("/proc/sys/net/bridge/bridge-nf-call-iptables");
    facts.ip_forward = read_bool("/proc/sys/net/ipv4/ip_forward");
    facts.forward_policy = std::process::Command::new("iptables")
        .args(["-w", "-S", "FORWARD", "1"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find_map(|l| l.strip_prefix("-P FORWARD ").map(|p| p.trim().to_string()))
        });
}

/// The node's addresses, for the overlap check (empty when netlink cannot be read).
pub fn node_addresses() -> Vec<IpNetwork> {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    else {
        return Vec::new();
    };
    rt.block_on(async {
        let Ok((conn, h, _)) = rtnetlink::new_connection() else {
            return Vec::new();
        };
        tokio::spawn(conn);
        crate::underlay::read_links(&h)
            .await
            .map(|links| links.into_iter().flat_map(|l| l.addrs).collect())
            .unwrap_or_default()
    })
}

pub fn list_dir(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> Facts {
        Facts {
            bridge_nf_call_iptables: Some(true),
            ip_forward: Some(true),
            forward_policy: Some("ACCEPT".into()),
            cni_confs: vec!["10-trellis.conflist".into(), "99-loopback.conf".into()],
            our_conflist: "10-trellis.conflist".into(),
            pod_network: Some("10.244.0.0/16".parse().unwrap()),
            service_cidr: Some("10.96.0.0/12".parse().unwrap()),
            node_addrs: vec![
                "192.168.1.5/24".parse().unwrap(),
                "127.0.0.1/8".parse().unwrap(),
            ],
            udp_ports_in_use: vec![53],
            vxlan_port: Some(8472),
        }
    }

    fn worst(fs: &[Finding]) -> Level {
        fs.iter().map(|f| f.level).max().unwrap_or(Level::Ok)
    }

    #[test]
    fn a_healthy_node_passes() {
        let fs = evaluate(&healthy());
        assert_eq!(worst(&fs), Level::Ok, "{fs:#?}");
    }

    #[test]
    fn each_classic_failure_is_named() {
        type Mutate = Box<dyn Fn(&mut Facts)>;
        let cases: Vec<(&str, Mutate, Level)> = vec![
            (
                "br_netfilter",
                Box::new(|x| x.bridge_nf_call_iptables = None),
                Level::Warn,
            ),
            (
                "ip_forward",
                Box::new(|x| x.ip_forward = Some(false)),
                Level::Fail,
            ),
            (
                "forward_policy",
                Box::new(|x| x.forward_policy = Some("DROP".into())),
                Level::Warn,
            ),
            (
                "cni_conf",
                Box::new(|x| x.cni_confs.push("10-containerd-net.conflist".into())),
                Level::Fail,
            ),
            (
                "cidr_overlap",
                Box::new(|x| x.service_cidr = Some("10.244.128.0/20".parse().unwrap())),
                Level::Fail,
            ),
            (
                "cidr_overlap",
                Box::new(|x| x.node_addrs.push("10.244.3.7/24".parse().unwrap())),
                Level::Fail,
            ),
            (
                "udp_port",
                Box::new(|x| x.udp_ports_in_use.push(8472)),
                Level::Fail,
            ),
        ];
        for (check, mutate, level) in cases {
            let mut x = healthy();
            mutate(&mut x);
            let fs = evaluate(&x);
            assert!(
                fs.iter().any(|f| f.check == check && f.level == level),
                "{check}: {fs:#?}"
            );
        }
    }
}

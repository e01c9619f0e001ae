//! `trellis-agent preflight`: the classic reasons a flannel-style network
//! fails on a node, checked before they bite. Each check is a pure function
//! of facts gathered separately, so the verdicts are unit-tested.

use std::net::IpAddr;
use std::path::Path;

use ipnetwork::IpNetwork;

use crate::bridge_nf::BridgeNf;

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
    /// br_netfilter and its sysctls, as `run` reads them.
    pub bridge_nf: BridgeNf,
    pub ip_forward: Option<bool>,
    /// Policy of the filter FORWARD chain, or why iptables could not tell it.
    pub forward_policy: ForwardPolicy,
    /// File names in the CNI conf dir.
    pub cni_confs: Vec<String>,
    pub our_conflist: String,
    pub pod_network: Option<IpNetwork>,
    pub service_cidr: Option<IpNetwork>,
    pub node_addrs: Vec<IpNetwork>,
    /// Local UDP ports bound by user-space sockets.
    pub udp_ports_in_use: Vec<u16>,
    pub vxlan_port: Option<u16>,
    /// Whether the kernel has WireGuard (`Err(why not)`); `None` when not asked.
    pub wireguard: Option<Result<(), String>>,
    /// The WireGuard listen ports, when net-conf.json chooses the wireguard backend.
    pub wireguard_ports: Vec<u16>,
}

/// The filter FORWARD chain's policy as read from iptables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ForwardPolicy {
    /// Not gathered (the facts were built without asking iptables).
    #[default]
    NotRead,
    /// `ACCEPT` or `DROP`, as `-P FORWARD` said.
    Is(String),
    /// iptables did not answer with a policy; the reason, for the finding.
    Unreadable(String),
}

/// Why `iptables -S FORWARD` gave no policy.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot run `{command}`: {source} (is iptables installed and on PATH?)")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("`{command}` printed no `-P FORWARD` line (output: {stdout:?})")]
    NoPolicy { command: String, stdout: String },
}

pub fn evaluate(x: &Facts) -> Vec<Finding> {
    let mut out = Vec::new();
    // The same check and fix as `run` reports (IPv4; the agent adds IPv6 when enabled).
    out.push(match x.bridge_nf.check(true, false) {
        Err(why) => f(Level::Warn, "br_netfilter", why),
        Ok(()) => f(
            Level::Ok,
            "br_netfilter",
            "br_netfilter loaded, bridge-nf-call-iptables=1",
        ),
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
    out.push(forward_policy_finding(&x.forward_policy));
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
    out.extend(wireguard_findings(x));
    if let Some(port) = x.vxlan_port {
        if x.udp_ports_in_use.contains(&port) {
            out.push(f(Level::Fail, "udp_port", format!("UDP port {port} (VXLAN) is bound by a user-space process: another overlay is running?")));
        } else {
            out.push(f(Level::Ok, "udp_port", format!("UDP port {port} is free")));
        }
    }
    out
}

/// WireGuard in the kernel: a failure when net-conf.json chooses it, else a note (a switch
/// to it would be refused); its listen ports must be free of user-space sockets.
fn wireguard_findings(x: &Facts) -> Vec<Finding> {
    let wanted = !x.wireguard_ports.is_empty();
    let mut out = Vec::new();
    match (&x.wireguard, wanted) {
        (None, _) => {}
        (Some(Ok(())), _) => out.push(f(Level::Ok, "wireguard", "the kernel has WireGuard")),
        (Some(Err(why)), true) => out.push(f(
            Level::Fail,
            "wireguard",
            format!("net-conf.json chooses the wireguard backend, but {why}"),
        )),
        (Some(Err(why)), false) => out.push(f(
            Level::Warn,
            "wireguard",
            format!("{why}: a switch to the wireguard backend would be refused (the running backend stays)"),
        )),
    }
    for port in &x.wireguard_ports {
        if x.udp_ports_in_use.contains(port) {
            out.push(f(
                Level::Fail,
                "udp_port",
                format!(
                    "UDP port {port} (WireGuard's ListenPort) is bound by a user-space process"
                ),
            ));
        }
    }
    out
}

fn forward_policy_finding(policy: &ForwardPolicy) -> Finding {
    match policy {
        ForwardPolicy::Is(p) if p == "DROP" => f(Level::Warn, "forward_policy", "iptables FORWARD policy is DROP (Docker sets it): trellis's FLANNEL-FWD accepts the pod network, keep --iptables-forward-rules on"),
        ForwardPolicy::Is(p) => f(Level::Ok, "forward_policy", format!("iptables FORWARD policy is {p}")),
        ForwardPolicy::Unreadable(why) => f(Level::Warn, "forward_policy", format!("cannot read the iptables FORWARD policy: {why}")),
        ForwardPolicy::NotRead => f(Level::Warn, "forward_policy", "the iptables FORWARD policy was not read"),
    }
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
    facts.bridge_nf = BridgeNf::read();
    facts.ip_forward = read_bool("/proc/sys/net/ipv4/ip_forward");
    facts.forward_policy = match read_forward_policy(&["iptables"]) {
        Ok(p) => ForwardPolicy::Is(p),
        Err(e) => ForwardPolicy::Unreadable(e.to_string()),
    };
}

/// Asks iptables for the filter FORWARD policy. `iptables` is the command that runs it
/// (`["iptables"]` on a node; tests put `ip netns exec NS iptables-legacy` in front).
///
/// `-S FORWARD` prints the policy line first (`-P FORWARD DROP`) in both flavours. A rule
/// number (`-S FORWARD 1`) prints only that rule and never the policy. `-w 5`: legacy
/// iptables takes the xtables lock even to list, and kube-proxy may hold it.
pub fn read_forward_policy(iptables: &[&str]) -> Result<String, PolicyError> {
    let Some((program, prefix_args)) = iptables.split_first() else {
        return Err(PolicyError::Spawn {
            command: String::new(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "no command given"),
        });
    };
    let args = ["-w", "5", "-S", "FORWARD"];
    let command = iptables
        .iter()
        .chain(&args)
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    let out = std::process::Command::new(program)
        .args(prefix_args)
        .args(args)
        .env("LC_ALL", "C")
        .output()
        .map_err(|source| PolicyError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(PolicyError::Failed {
            command,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    parse_forward_policy(&stdout)
        .map(str::to_string)
        .ok_or_else(|| PolicyError::NoPolicy {
            command,
            stdout: stdout.into_owned(),
        })
}

/// The policy from `iptables -S FORWARD` output: the word after `-P FORWARD`.
pub fn parse_forward_policy(listing: &str) -> Option<&str> {
    listing
        .lines()
        .find_map(|l| l.strip_prefix("-P FORWARD "))
        .map(str::trim)
        .filter(|p| !p.is_empty() && !p.contains(char::is_whitespace))
}

/// The node's addresses, for the overlap check (empty when netlink cannot be read).
pub fn node_addresses() -> Vec<IpNetwork> {
    crate::oneshot::block_on(async {
        let Ok((conn, h, _)) = rtnetlink::new_connection() else {
            return Vec::new();
        };
        tokio::spawn(conn);
        crate::underlay::read_links(&h)
            .await
            .map(|links| links.into_iter().flat_map(|l| l.addrs).collect())
            .unwrap_or_default()
    })
    .unwrap_or_default()
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
            bridge_nf: BridgeNf {
                call_iptables: Some(true),
                call_ip6tables: Some(true),
            },
            ip_forward: Some(true),
            forward_policy: ForwardPolicy::Is("ACCEPT".into()),
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
            wireguard: None,
            wireguard_ports: Vec::new(),
        }
    }

    fn worst(fs: &[Finding]) -> Level {
        fs.iter().map(|f| f.level).max().unwrap_or(Level::Ok)
    }

    #[test]
    fn the_policy_is_the_p_forward_line_whatever_the_rules() {
        let listing = "-P FORWARD DROP\n-A FORWARD -j DOCKER-USER\n-A FORWARD -j KUBE-FORWARD\n";
        assert_eq!(parse_forward_policy(listing), Some("DROP"));
        assert_eq!(parse_forward_policy("-P FORWARD ACCEPT\n"), Some("ACCEPT"));
        // What `iptables -S FORWARD 1` prints: the first rule, no policy.
        assert_eq!(parse_forward_policy("-A FORWARD -j DOCKER-USER\n"), None);
        assert_eq!(parse_forward_policy(""), None);
    }

    #[test]
    fn an_unreadable_policy_says_why() {
        let mut x = healthy();
        x.forward_policy = ForwardPolicy::Unreadable("`iptables -w 5 -S FORWARD` failed".into());
        let fs = evaluate(&x);
        let finding = fs.iter().find(|f| f.check == "forward_policy").unwrap();
        assert_eq!(finding.level, Level::Warn);
        assert!(
            finding.message.contains("iptables -w 5 -S FORWARD"),
            "{finding:?}"
        );
    }

    #[test]
    fn a_missing_tool_is_a_spawn_error_naming_the_command() {
        let e = read_forward_policy(&["trellis-no-such-iptables"]).unwrap_err();
        assert!(matches!(e, PolicyError::Spawn { .. }), "{e:?}");
        assert!(
            e.to_string()
                .contains("trellis-no-such-iptables -w 5 -S FORWARD"),
            "{e}"
        );
    }

    #[test]
    fn wireguard_missing_fails_only_when_chosen() {
        let no = "this kernel has no WireGuard".to_string();
        let mut x = Facts {
            wireguard: Some(Err(no.clone())),
            ..healthy()
        };
        let find = |x: &Facts| {
            evaluate(x)
                .into_iter()
                .find(|f| f.check == "wireguard")
                .unwrap()
        };
        let w = find(&x);
        assert_eq!(w.level, Level::Warn);
        assert!(w.message.contains("would be refused"), "{}", w.message);
        x.wireguard_ports = vec![51820, 51821];
        let w = find(&x);
        assert_eq!(w.level, Level::Fail);
        assert!(w.message.contains(&no), "{}", w.message);
        x.wireguard = Some(Ok(()));
        x.udp_ports_in_use = vec![51820];
        assert_eq!(find(&x).level, Level::Ok);
        assert_eq!(worst(&evaluate(&x)), Level::Fail, "the port is taken");
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
                Box::new(|x| x.bridge_nf.call_iptables = None),
                Level::Warn,
            ),
            (
                "ip_forward",
                Box::new(|x| x.ip_forward = Some(false)),
                Level::Fail,
            ),
            (
                "forward_policy",
                Box::new(|x| x.forward_policy = ForwardPolicy::Is("DROP".into())),
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

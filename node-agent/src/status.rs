//! `trellis-agent status`: what this node should have (from the running
//! agent) next to what the kernel has (read now), entry by entry, with
//! anything missing or foreign-but-ours flagged.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use crate::dataplane::desired::KernelState;
use crate::state_doc::{self, StateDoc};

/// One line per kernel object, in `ip`-like words: equal lines mean equal objects.
pub fn describe(k: &KernelState) -> Vec<String> {
    let mut out = Vec::new();
    out.extend(k.links.values().map(|l| format!("link  {l}")));
    out.extend(k.addresses.iter().map(|a| format!("addr  {a}")));
    out.extend(k.neighbours.values().map(|n| format!("neigh {n}")));
    out.extend(k.fdb.values().map(|f| format!("fdb   {f}")));
    out.extend(k.wg_peers.values().map(|p| format!("wg    {p}")));
    out.extend(k.routes.values().map(|r| format!("route {r}")));
    out
}

/// Compare desired lines with actual lines: (present, missing, unexpected).
pub fn compare(desired: &[String], actual: &[String]) -> (Vec<String>, Vec<String>, Vec<String>) {
    let a: BTreeSet<&String> = actual.iter().collect();
    let d: BTreeSet<&String> = desired.iter().collect();
    let present = desired.iter().filter(|l| a.contains(l)).cloned().collect();
    let missing = desired.iter().filter(|l| !a.contains(l)).cloned().collect();
    let extra = actual.iter().filter(|l| !d.contains(l)).cloned().collect();
    (present, missing, extra)
}

fn fetch(addr: SocketAddr, path: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| {
            format!(
                "cannot reach the agent at {addr}: {e} (is trellis-agent running on this node?)"
            )
        })?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: trellis\r\n\r\n").map_err(|e| e.to_string())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).map_err(|e| e.to_string())?;
    buf.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .ok_or_else(|| "malformed answer from the agent".into())
}

pub fn main(addr: SocketAddr) -> ExitCode {
    let doc = match fetch(addr, "/debug/state").and_then(|b| state_doc::decode(&b)) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("status: {e}");
            return ExitCode::FAILURE;
        }
    };
    let actual = crate::oneshot::block_on(async {
        let dp = crate::dataplane::netlink::Dataplane::new().map_err(|e| e.to_string())?;
        dp.read_actual().await.map_err(|e| e.to_string())
    });
    let (actual, wireguard) = match actual {
        Ok(Ok(k)) => (describe(&k), wireguard_report(&k)),
        Err(e) => {
            eprintln!("status: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
        Ok(Err(e)) => {
            eprintln!("status: cannot read the kernel: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (text, in_sync) = report(doc.as_ref(), &actual);
    // The NetworkPolicy section: which policies isolate each pod, and the set sizes.
    let netpol = fetch(addr, "/debug/netpol")
        .map(|t| format!("\n{t}"))
        .unwrap_or_default();
    print!("{text}{wireguard}{netpol}");
    if in_sync {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Each WireGuard device as the kernel has it: its public key and port, and per peer its
/// endpoint, allowed IPs, latest handshake and traffic (what `wg show` tells).
fn wireguard_report(k: &KernelState) -> String {
    use crate::dataplane::desired::LinkKind;
    use crate::dataplane::netlink::wireguard::WgSocket;
    use std::fmt::Write;
    let names: Vec<&str> = k
        .links
        .values()
        .filter(|l| matches!(l.kind, LinkKind::Wireguard(_)))
        .map(|l| l.name.as_str())
        .collect();
    if names.is_empty() {
        return String::new();
    }
    let mut out = String::new();
    let mut socket = match WgSocket::open() {
        Ok(s) => s,
        Err(e) => {
            return format!(
                "
wireguard: {e}
"
            )
        }
    };
    for name in names {
        let dev = match socket.device(name) {
            Ok(Some(d)) => d,
            Ok(None) => continue,
            Err(e) => {
                let _ = writeln!(
                    out,
                    "
wireguard {name}: {e}"
                );
                continue;
            }
        };
        let key = dev.public_key.map(|k| crate::wg_key::WgKey(k).to_string());
        let _ = writeln!(
            out,
            "
wireguard {name} (public key {}, listen port {}, {} peers)",
            key.as_deref().unwrap_or("none"),
            dev.listen_port,
            dev.peers.len()
        );
        for p in &dev.peers {
            let _ = writeln!(out, "  {}", peer_line(p, std::time::SystemTime::now()));
        }
    }
    out
}

/// `peer KEY endpoint E allowed-ips A handshake 12s ago rx N tx N`.
fn peer_line(
    p: &crate::dataplane::netlink::wireguard::WgPeerState,
    now: std::time::SystemTime,
) -> String {
    let endpoint = p.endpoint.map_or("(none)".to_string(), |e| e.to_string());
    let ips: Vec<String> = p.allowed_ips.iter().map(|a| a.to_string()).collect();
    let handshake = match p.last_handshake {
        None => "no handshake yet".to_string(),
        Some(t) => match now.duration_since(t) {
            Ok(ago) => format!("handshake {}s ago", ago.as_secs()),
            Err(_) => "handshake just now".to_string(),
        },
    };
    format!(
        "peer {} endpoint {endpoint} allowed-ips {} {handshake} rx {} tx {}",
        crate::wg_key::WgKey(p.public_key),
        ips.join(","),
        p.rx_bytes,
        p.tx_bytes
    )
}

/// The status text of the agent's document (`None` before its first pass) against the
/// kernel's `actual` lines, and whether the node is in sync: converged, nothing missing,
/// nothing stale.
fn report(doc: Option<&StateDoc>, actual: &[String]) -> (String, bool) {
    use std::fmt::Write;
    let mut out = String::new();
    // Before the first pass: blank words, `null` values (what a field-less document shows).
    let text = |f: fn(&StateDoc) -> &str| doc.map_or("", f);
    let value = |v: Option<String>| v.unwrap_or_else(|| "null".into());
    let _ = writeln!(out, "node      {}", text(|d| &d.node));
    let _ = writeln!(out, "backend   {}", text(|d| &d.backend));
    let _ = writeln!(out, "lease     {}", text(|d| &d.lease));
    let _ = writeln!(out, "underlay  {}", text(|d| &d.underlay));
    let _ = writeln!(out, "mtu       {}", value(doc.map(|d| d.mtu.to_string())));
    let _ = writeln!(
        out,
        "converged {}",
        value(doc.map(|d| d.converged.to_string()))
    );
    let _ = writeln!(out, "peers     {}", value(doc.map(|d| d.peers.to_string())));
    for sk in doc.iter().flat_map(|d| &d.skipped) {
        let _ = writeln!(out, "  skipped {}: {}", sk.node, sk.reason);
    }
    for e in doc.iter().flat_map(|d| &d.peer_errors) {
        let _ = writeln!(out, "  REFUSED {}: {}", e.entry, e.error);
    }
    let _ = writeln!(out, "\nsubnet.env\n{}", text(|d| &d.subnet_env).trim_end());
    let desired = doc.map_or(&[][..], |d| &d.kernel);
    let (present, missing, extra) = compare(desired, actual);
    let _ = writeln!(
        out,
        "\nkernel ({} desired, {} present, {} missing, {} not desired)",
        desired.len(),
        present.len(),
        missing.len(),
        extra.len()
    );
    for l in &present {
        let _ = writeln!(out, "  ok      {l}");
    }
    for l in &missing {
        let _ = writeln!(out, "  MISSING {l}");
    }
    for l in &extra {
        let _ = writeln!(out, "  STALE   {l}");
    }
    let _ = writeln!(out, "\nfirewall ({})", text(|d| &d.firewall_backend));
    for l in text(|d| &d.firewall).lines() {
        let _ = writeln!(out, "  {l}");
    }
    let drift = text(|d| &d.firewall_drift);
    if !drift.is_empty() {
        let _ = writeln!(out, "  DRIFT   {drift}");
    }
    let converged = doc.is_some_and(|d| d.converged);
    (out, missing.is_empty() && extra.is_empty() && converged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_flags_missing_and_stale() {
        let d = vec!["route a".to_string(), "route b".to_string()];
        let a = vec!["route b".to_string(), "route c".to_string()];
        let (p, m, e) = compare(&d, &a);
        assert_eq!(p, vec!["route b"]);
        assert_eq!(m, vec!["route a"]);
        assert_eq!(e, vec!["route c"]);
    }

    /// The kernel read back for the sample: one entry missing (the fdb), one stale route.
    fn sample_actual() -> Vec<String> {
        [
            "link  flannel.1 type vxlan id 1 dstport 8472 local 192.168.1.1 dev-index 2 nolearning mtu 1450 address 02:aa:00:00:00:01",
            "addr  10.244.1.0/32 dev flannel.1",
            "neigh 10.244.2.0 lladdr 0a:58:00:00:00:02 dev flannel.1 permanent",
            "route 10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink proto 116",
            "route 10.244.7.0/24 via 10.244.7.0 dev flannel.1 onlink proto 116",
        ]
        .map(String::from)
        .to_vec()
    }

    /// The text `status` printed for the pinned wire document, when it read it by string key.
    #[test]
    fn status_reads_the_wire_document_as_before() {
        let doc = state_doc::decode(state_doc::SAMPLE_JSON).unwrap();
        let (text, in_sync) = report(doc.as_ref(), &sample_actual());
        assert_eq!(
            text,
            r#"node      node-1
backend   vxlan
lease     10.244.1.0/24 public 192.168.1.1
underlay  eth0 (index 2, mtu 1500)
mtu       1450
converged false
peers     1
  skipped node-3: no IPv4 backend-data annotation, but IPv4 is enabled
  REFUSED route 10.244.9.0/24: Invalid argument (os error 22)

subnet.env
FLANNEL_NETWORK=10.244.0.0/16
FLANNEL_SUBNET=10.244.1.1/24
FLANNEL_MTU=1450
FLANNEL_IPMASQ=true

kernel (5 desired, 4 present, 1 missing, 1 not desired)
  ok      link  flannel.1 type vxlan id 1 dstport 8472 local 192.168.1.1 dev-index 2 nolearning mtu 1450 address 02:aa:00:00:00:01
  ok      addr  10.244.1.0/32 dev flannel.1
  ok      neigh 10.244.2.0 lladdr 0a:58:00:00:00:02 dev flannel.1 permanent
  ok      route 10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink proto 116
  MISSING fdb   0a:58:00:00:00:02 dev flannel.1 dst 192.168.1.2 self permanent
  STALE   route 10.244.7.0/24 via 10.244.7.0 dev flannel.1 onlink proto 116

firewall (iptables)
  -A TRELLIS-FWD -s 10.244.0.0/16 -j ACCEPT
  -A TRELLIS-FWD -d 10.244.0.0/16 -j ACCEPT
  DRIFT   chain TRELLIS-FWD changed "x"
"#
        );
        assert!(!in_sync);
    }

    /// Before the agent's first pass (`{}`): blank words and `null` values, as before.
    #[test]
    fn status_before_the_first_pass_shows_blanks() {
        let doc = state_doc::decode("{}").unwrap();
        let (text, in_sync) = report(doc.as_ref(), &sample_actual()[..1]);
        assert_eq!(
            text,
            "node      \nbackend   \nlease     \nunderlay  \nmtu       null\nconverged null\n\
             peers     null\n\nsubnet.env\n\n\nkernel (0 desired, 0 present, 0 missing, 1 not desired)\n  \
             STALE   link  flannel.1 type vxlan id 1 dstport 8472 local 192.168.1.1 dev-index 2 \
             nolearning mtu 1450 address 02:aa:00:00:00:01\n\nfirewall ()\n"
        );
        assert!(!in_sync);
    }

    #[test]
    fn in_sync_needs_converged_and_no_difference() {
        let mut doc = state_doc::decode(state_doc::SAMPLE_JSON).unwrap().unwrap();
        let kernel = doc.kernel.clone();
        assert!(!report(Some(&doc), &kernel).1);
        doc.converged = true;
        assert!(report(Some(&doc), &kernel).1);
        assert!(!report(Some(&doc), &sample_actual()).1);
    }
}

//! Privileged: real packets through the rules. A "node" namespace routes for its pods (on a
//! bridge, 10.244.1.0/24) to an "outside" host and to a pod of another node (10.244.2.0/24,
//! routed, as over a tunnel). TCP servers answer each connection with the source address they
//! saw. Outside sees the node's address only while the rules are installed; pods never see
//! each other masqueraded.

mod firewall_common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use firewall_common::*;

const PORT: &str = "18080";
const NODE_UNDERLAY: &str = "198.18.0.1";
const OUTSIDE: &str = "198.18.0.2";
const POD1: &str = "10.244.1.2";
const POD2: &str = "10.244.1.3";
const REMOTE_POD: &str = "10.244.2.2";
const NODE_TO_REMOTE: &str = "10.244.2.1";

/// The system's Python: a version manager's shim in front of it costs half a second a start.
fn python() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// A TCP server in a namespace that writes the peer's address to every connection.
struct Server(Child);

impl Server {
    fn start(ns: &Netns) -> Server {
        let script = format!(
            "import socket\n\
             s=socket.socket()\n\
             s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
             s.bind(('0.0.0.0',{PORT}))\n\
             s.listen(16)\n\
             print('ready',flush=True)\n\
             while True:\n\
             \x20   c,a=s.accept()\n\
             \x20   c.sendall(a[0].encode())\n\
             \x20   c.close()\n"
        );
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.name,
                python(),
                "-I",
                "-S",
                "-c",
                &script,
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start server");
        // Owned from here, so a failed start still kills it.
        let mut server = Server(child);
        let out = server.0.stdout.take().expect("server stdout");
        let mut line = String::new();
        BufReader::new(out)
            .read_line(&mut line)
            .expect("read server");
        assert_eq!(line.trim(), "ready", "server in {} did not start", ns.name);
        server
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The source address `server` saw for a connection from `from` (bound to `source`).
/// Each connection (from, to the server at, sent from this source address or the default one)
/// must be seen by its server from `want`; `what` names the case in a failure.
fn assert_seen(cases: &[(&Netns, &str, Option<&str>, &str, &str)]) {
    for &(from, server, source, want, what) in cases {
        assert_eq!(seen_by(from, server, source), want, "{what}");
    }
}

fn seen_by(from: &Netns, server: &str, source: Option<&str>) -> String {
    let bind = source.map_or(String::new(), |a| format!(",source_address=('{a}',0)"));
    let script = format!(
        "import socket\ns=socket.create_connection(('{server}',{PORT}),timeout=3{bind})\nprint(s.recv(100).decode())\n"
    );
    let (ok, out) = from.output(&[python(), "-I", "-S", "-c", &script]);
    assert!(ok, "connect from {} to {server}: {out}", from.name);
    out.trim().to_string()
}

struct Topology {
    node: Netns,
    pod1: Netns,
    pod2: Netns,
    remote: Netns,
    outside: Netns,
}

fn veth(host: &Netns, host_if: &str, peer: &Netns) {
    host.sh(&[
        "ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", &peer.name,
    ]);
    peer.sh(&["ip", "link", "set", "eth0", "up"]);
}

fn topology() -> Topology {
    let t = Topology {
        node: netns("node"),
        pod1: netns("pod1"),
        pod2: netns("pod2"),
        remote: netns("rpod"),
        outside: netns("out"),
    };
    let n = &t.node;
    n.sh(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    n.sh(&["ip", "link", "add", "cni0", "type", "bridge"]);
    n.sh(&["ip", "addr", "add", "10.244.1.1/24", "dev", "cni0"]);
    n.sh(&["ip", "link", "set", "cni0", "up"]);
    for (pod, ip, host_if) in [(&t.pod1, POD1, "veth1"), (&t.pod2, POD2, "veth2")] {
        veth(n, host_if, pod);
        n.sh(&["ip", "link", "set", host_if, "master", "cni0", "up"]);
        pod.sh(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        pod.sh(&["ip", "route", "add", "default", "via", "10.244.1.1"]);
    }
    veth(n, "toremote", &t.remote);
    n.sh(&[
        "ip",
        "addr",
        "add",
        &format!("{NODE_TO_REMOTE}/24"),
        "dev",
        "toremote",
    ]);
    n.sh(&["ip", "link", "set", "toremote", "up"]);
    t.remote.sh(&[
        "ip",
        "addr",
        "add",
        &format!("{REMOTE_POD}/24"),
        "dev",
        "eth0",
    ]);
    t.remote
        .sh(&["ip", "route", "add", "default", "via", NODE_TO_REMOTE]);
    veth(n, "eth0", &t.outside);
    n.sh(&[
        "ip",
        "addr",
        "add",
        &format!("{NODE_UNDERLAY}/24"),
        "dev",
        "eth0",
    ]);
    n.sh(&["ip", "link", "set", "eth0", "up"]);
    t.outside
        .sh(&["ip", "addr", "add", &format!("{OUTSIDE}/24"), "dev", "eth0"]);
    // Outside can route back to the pods, so a connection works without masquerading too:
    // the source address alone tells whether the rules did their job.
    t.outside
        .sh(&["ip", "route", "add", "10.244.0.0/16", "via", NODE_UNDERLAY]);
    t
}

async fn masquerade(kind: Kind) {
    let started = Instant::now();
    let t = topology();
    let _out = Server::start(&t.outside);
    let _remote = Server::start(&t.remote);
    let _pod1 = Server::start(&t.pod1);
    let _pod2 = Server::start(&t.pod2);

    // Without rules, nothing is masqueraded: the control that shows the test can fail.
    assert_seen(&[
        (&t.pod1, OUTSIDE, None, POD1, "no rules: pod to outside"),
        (
            &t.node,
            REMOTE_POD,
            Some(NODE_UNDERLAY),
            NODE_UNDERLAY,
            "no rules: host to a remote pod",
        ),
    ]);

    if kind != Kind::Nftables {
        // With FORWARD dropping by default, only FLANNEL-FWD lets pod traffic through.
        t.node.sh(&[&kind.iptables(false), "-P", "FORWARD", "DROP"]);
    }
    let fw = kind.firewall(&t.node).await;
    fw.apply(&full_rules()).await.expect("apply");

    assert_seen(&[
        (
            &t.pod1,
            OUTSIDE,
            None,
            NODE_UNDERLAY,
            "pod to outside: masqueraded",
        ),
        (
            &t.pod1,
            REMOTE_POD,
            None,
            POD1,
            "pod to a pod of another node: not masqueraded",
        ),
        (
            &t.remote,
            POD1,
            None,
            REMOTE_POD,
            "a remote pod to a local pod: not masqueraded",
        ),
        // Bridged: crosses netfilter only where br_netfilter is loaded; never masqueraded.
        (
            &t.pod1,
            POD2,
            None,
            POD1,
            "pod to pod on the bridge: not masqueraded",
        ),
        // The host reaching a remote pod from its underlay address is masqueraded to its
        // address on the pod network's path, so the replies come back through the tunnel.
        (
            &t.node,
            REMOTE_POD,
            Some(NODE_UNDERLAY),
            NODE_TO_REMOTE,
            "host to a remote pod from its underlay address",
        ),
    ]);

    // kube-proxy's mark means "kube-proxy masquerades this one": trellis leaves it alone.
    if kind == Kind::Nftables {
        t.node.sh(&["nft", "add", "table", "ip", "kp"]);
        t.node.sh(&[
            "nft",
            "add",
            "chain",
            "ip",
            "kp",
            "pre",
            "{ type filter hook prerouting priority -150; }",
        ]);
        t.node.sh(&[
            "nft", "add", "rule", "ip", "kp", "pre", "ip", "saddr", POD1, "meta", "mark", "set",
            "0x4000",
        ]);
    } else {
        let ipt = kind.iptables(false);
        t.node.sh(&[
            &ipt,
            "-t",
            "mangle",
            "-A",
            "PREROUTING",
            "-s",
            POD1,
            "-j",
            "MARK",
            "--set-xmark",
            "0x4000/0x4000",
        ]);
    }
    assert_seen(&[
        (
            &t.pod1,
            OUTSIDE,
            None,
            POD1,
            "kube-proxy-marked packets are not masqueraded by trellis",
        ),
        (
            &t.pod2,
            OUTSIDE,
            None,
            NODE_UNDERLAY,
            "unmarked packets still are",
        ),
    ]);

    fw.cleanup().await.expect("cleanup");
    if kind != Kind::Nftables {
        // With FLANNEL-FWD gone, the DROP policy applies again.
        let (ok, _) = t.pod2.output(&[
            python(),
            "-I",
            "-S",
            "-c",
            &format!("import socket\nsocket.create_connection(('{OUTSIDE}',{PORT}),timeout=0.5)\n"),
        ]);
        assert!(!ok, "forwarding still accepted after cleanup");
        t.node
            .sh(&[&kind.iptables(false), "-P", "FORWARD", "ACCEPT"]);
    }
    assert_eq!(
        seen_by(&t.pod2, OUTSIDE, None),
        POD2,
        "after cleanup nothing is masqueraded"
    );
    eprintln!("{kind:?} masquerade test: {:?}", started.elapsed());
}

per_kind!(masquerade {
    iptables_masquerades_pod_traffic_leaving_the_pod_network: Kind::Iptables,
    iptables_legacy_masquerades_pod_traffic_leaving_the_pod_network: Kind::IptablesLegacy,
    nftables_masquerades_pod_traffic_leaving_the_pod_network: Kind::Nftables,
});

//! What a real host may lack, reproduced in node namespaces:
//! - a Node without a podCIDR yet: the agent waits, says why on `/readyz`, and its loop keeps
//!   beating (`/healthz` must not get it restarted), then programs the node once it has one;
//! - `net.bridge.bridge-nf-call-iptables=0` (the sysctl is per network namespace): a pod
//!   cannot reach a same-node pod through a Service's DNAT, the agent says so (log, Warning
//!   Event, `/readyz` 503 with the fix) and becomes ready once the host is fixed, and then
//!   the same Service works.
//!
//! Needs root and the workspace binaries (hack/test.sh builds them).

use std::time::Duration;

use serde_json::{json, Value};
use trellis_e2e::netns_cluster::Cluster;
use trellis_e2e::poll::eventually;

const READY: Duration = Duration::from_secs(60);
/// A full pass (every resync, 10 s by default) checks the host again.
const RECHECK: Duration = Duration::from_secs(25);
/// A Service's cluster IP: kube-proxy DNATs it to a backend pod.
const SERVICE_IP: &str = "10.96.0.10";

fn readyz(c: &Cluster, i: usize) -> Option<(u16, String)> {
    c.agent_http(i, "/readyz")
}

/// Node `i`'s agent soon answers /readyz with 503 and a reason naming `why`.
fn assert_not_ready_because(c: &Cluster, i: usize, why: &str) {
    assert!(
        eventually(READY, || readyz(c, i)
            .is_some_and(|(code, body)| code == 503 && body.contains(why))),
        "node-{}'s /readyz does not say {why:?}: {:?}\n{}",
        i + 1,
        readyz(c, i),
        c.agent_log(i)
    );
}

fn host_events(c: &Cluster, node: &str) -> Vec<Value> {
    let Ok(out) = c.kubectl(&["get", "events.v1.events.k8s.io", "-A", "-o", "json"]) else {
        return Vec::new();
    };
    let list: Value = serde_json::from_str(&out).unwrap_or_default();
    list["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["reason"] == "HostNotReady" && e["regarding"]["name"] == node)
        .collect()
}

/// A one-byte echo server on port 7070 in a pod's namespace, stopped on drop.
struct TcpServer(std::process::Child);

impl TcpServer {
    fn start(netns: &str) -> TcpServer {
        let code = "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('0.0.0.0',7070))\ns.listen(8)\nprint('ready',flush=True)\nwhile True:\n    c,_=s.accept()\n    c.sendall(c.recv(1))\n    c.close()\n";
        let mut child = std::process::Command::new("ip")
            .args(["netns", "exec", netns, "python3", "-c", code])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("server");
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line);
        }
        assert_eq!(line.trim(), "ready", "the TCP server did not start");
        TcpServer(child)
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_agent_waits_alive_for_a_pod_cidr_and_reports_a_host_without_bridge_netfilter() {
    let mut c = Cluster::for_test(2, r#"{"Type":"vxlan"}"#, "hst");
    // node-1 registered without a podCIDR (the controller-manager has not assigned one yet).
    let n1 = c.nodes[0].name.clone();
    c.delete_node_object(&n1).expect("re-register node-1");
    let bare = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n1}});
    c.kubectl_stdin(&["create", "-f", "-"], &bare.to_string())
        .expect("node-1 without podCIDR");
    // node-2's host has bridged traffic bypass iptables.
    c.nodes[1]
        .ns
        .sysctl("net.bridge.bridge-nf-call-iptables", "0")
        .expect("sysctl");
    c.start_agents().expect("agents");

    // 1. Waiting for the podCIDR: not ready, saying why, and the loop beats meanwhile.
    assert_not_ready_because(&c, 0, "podCIDRs");
    let first = c
        .metric(0, "trellis_heartbeat_timestamp_seconds")
        .unwrap_or(0.0);
    assert!(
        eventually(Duration::from_secs(15), || c
            .metric(0, "trellis_heartbeat_timestamp_seconds")
            .is_some_and(|t| t > first)),
        "the heartbeat did not move from {first} while the agent waited:\n{:?}\n{}",
        c.agent_http(0, "/metrics"),
        c.agent_log(0)
    );
    assert!(matches!(c.agent_http(0, "/healthz"), Some((200, _))));
    let cidr = c.nodes[0].pod_cidr.clone();
    c.kubectl(&[
        "patch",
        "node",
        &n1,
        "--type",
        "merge",
        "-p",
        &json!({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}}).to_string(),
    ])
    .expect("assign node-1's podCIDR");
    c.wait_ready(0, READY)
        .expect("node-1 ready once it has a podCIDR");

    // 2. node-2 without bridge netfilter: said loudly, and not ready.
    assert_not_ready_because(&c, 1, "bridge-nf-call-iptables=0");
    assert!(c
        .agent_log(1)
        .contains("sysctl -w net.bridge.bridge-nf-call-iptables=1"));
    let n2 = c.nodes[1].name.clone();
    assert!(
        eventually(READY, || !host_events(&c, &n2).is_empty()),
        "no HostNotReady Warning Event on {n2}"
    );
    // What it breaks: two pods on node-2, one reaching the other through a Service's DNAT.
    let a = c.add_pod(1).expect("pod a");
    let b = c.add_pod(1).expect("pod b");
    assert!(a.ping(&b.ip), "same-node pods reach each other directly");
    c.nodes[1]
        .ns
        .exec(&[
            "iptables",
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-d",
            SERVICE_IP,
            "-p",
            "tcp",
            "--dport",
            "80",
            "-j",
            "DNAT",
            "--to-destination",
            &format!("{}:7070", b.ip),
        ])
        .expect("a DNAT rule standing in for a Service");
    let server = TcpServer::start(&b.ns.name);
    let connects = |from: &trellis_e2e::netns_cluster::Pod, ip: &str, port: u16| {
        let code = format!(
            "import socket\ns=socket.create_connection(('{ip}',{port}),timeout=2)\ns.sendall(b'x')\nassert s.recv(1)==b'x'"
        );
        from.ns.exec_ok(&["python3", "-c", &code])
    };
    assert!(connects(&a, &b.ip, 7070), "the server answers directly");
    // The reply comes straight back over cni0 from b's own address, never un-NATed: the
    // connection fails.
    assert!(
        !connects(&a, SERVICE_IP, 80),
        "without bridge netfilter the Service should fail (the test would prove nothing)"
    );

    // 3. The host fixed: the agent notices at its next full pass, and the Service works.
    c.nodes[1]
        .ns
        .sysctl("net.bridge.bridge-nf-call-iptables", "1")
        .expect("sysctl");
    c.wait_ready(1, RECHECK)
        .expect("node-2 ready once bridge netfilter is on");
    assert!(
        eventually(Duration::from_secs(10), || connects(&a, SERVICE_IP, 80)),
        "pod -> Service -> same-node pod fails with bridge netfilter on"
    );
    drop(server);
    for i in 0..2 {
        c.stop_agent(i, false);
    }
}

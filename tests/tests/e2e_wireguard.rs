//! WireGuard end to end, in the test VM (this host's kernel has no WireGuard; `hack/test-vm.sh`
//! runs it): two node namespaces, the API emulator, the agents on `{"Type":"wireguard"}`, pods
//! made by the plugin. What a user of flannel's wireguard backend counts on:
//! - pod traffic crosses the underlay as WireGuard only: UDP to the listen port, no packet with
//!   a pod address in its IP header (captured on node-1's eth0);
//! - `trellis-agent status` lists each peer with its endpoint and latest handshake;
//! - an agent restart keeps the key (the same `backend-data`, the same device), and pods keep
//!   talking through it;
//! - a Node copying another's public key is skipped and reported, and disturbs nothing;
//! - a peer's new public IP (`public-ip-overwrite`) becomes its endpoint.

use std::time::{Duration, Instant};

use serde_json::Value;
use trellis_e2e::netns_cluster::Cluster;
use trellis_testkit::ping::{unix_now, PingLoop};

const WAIT: Duration = Duration::from_secs(120);
const BACKEND_DATA: &str = "flannel.alpha.coreos.com/backend-data";

fn eventually(timeout: Duration, f: impl FnMut() -> bool) -> bool {
    trellis_e2e::poll::poll_until(timeout, Duration::from_millis(300), f)
}

fn annotation(c: &Cluster, node: &str, key: &str) -> String {
    let n: Value = c.node_json(node).unwrap_or(Value::Null);
    n["metadata"]["annotations"][key]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// What crossed node-1's eth0 during `secs`: (WireGuard UDP packets to or from port 51820,
/// packets whose IPv4 header names a pod address), captured with a packet socket. The socket
/// is opened for no protocol and bound to eth0 with ETH_P_ALL: opened with ETH_P_ALL it would
/// take frames of every interface (the pods' own, on cni0) until bound, and an early version
/// of this test counted those as leaks. Each frame's interface is checked as well.
const CAPTURE: &str = r#"
import socket, struct, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
s.bind(("eth0", 0x0003))  # ETH_P_ALL; Python converts to network order
s.settimeout(0.2)
end = time.time() + float(sys.argv[1])
wg = clear = 0
seen = []
while time.time() < end:
    try:
        f, addr = s.recvfrom(65535)
    except socket.timeout:
        continue
    if addr[0] != "eth0":
        continue
    if len(f) < 34 or f[12:14] != b"\x08\x00":
        continue
    ip = f[14:]
    src, dst = ip[12:16], ip[16:20]
    if src[:2] == bytes([10, 244]) or dst[:2] == bytes([10, 244]):
        clear += 1
        if len(seen) < 5:
            seen.append("%s>%s/%d,ttl=%d,mac=%s>%s" % (socket.inet_ntoa(src), socket.inet_ntoa(dst), ip[9], ip[8], f[6:12].hex(), f[0:6].hex()))
    if ip[9] == 17:
        ihl = (ip[0] & 15) * 4
        sport, dport = struct.unpack("!HH", ip[ihl:ihl + 4])
        if 51820 in (sport, dport):
            wg += 1
print(wg, clear, *seen)
"#;

/// (WireGuard packets, pod packets in the clear, the first few of those).
fn capture(c: &Cluster, secs: u32) -> (u64, u64, String) {
    let out = c.nodes[0]
        .ns
        .exec(&["python3", "-c", CAPTURE, &secs.to_string()])
        .expect("capture on eth0");
    let words: Vec<&str> = out.split_whitespace().collect();
    let num = |i: usize| {
        words
            .get(i)
            .and_then(|w| w.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (
        num(0),
        num(1),
        words.iter().skip(2).copied().collect::<Vec<_>>().join(" "),
    )
}

fn status(c: &Cluster, node: usize) -> String {
    let bin = c.agent_bin().display().to_string();
    c.nodes[node].ns.output(&[&bin, "status"]).1
}

fn device_index(c: &Cluster, node: usize) -> String {
    let out = c.nodes[node]
        .ns
        .ip(&["-o", "link", "show", "dev", "flannel-wg"]);
    out.unwrap_or_default()
        .split(':')
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
#[ignore = "needs the wireguard kernel module: run in the VM with hack/test-vm.sh"]
fn vm_wireguard_encrypts_keeps_its_key_and_follows_peers() {
    let mut c = Cluster::for_test(2, r#"{"Type":"wireguard"}"#, "wg");
    c.start_agents().expect("agents");
    c.wait_all_ready(WAIT).expect("agents ready");
    let t0 = Instant::now();
    assert!(
        eventually(WAIT, || (0..2)
            .all(|n| c.routes(n).contains("10.244.0.0/16 dev flannel-wg"))),
        "no route through flannel-wg\n{}",
        c.agent_log(0)
    );
    let a = c.add_pod(0).expect("pod on node-1");
    let b = c.add_pod(1).expect("pod on node-2");
    assert!(
        eventually(WAIT, || a.ping(&b.ip)),
        "pods cannot talk over WireGuard\n{}",
        c.agent_log(0)
    );
    println!(
        "FIGURE wireguard: agents ready to first pod-to-pod reply in {} ms",
        t0.elapsed().as_millis()
    );

    // On the wire: WireGuard, never a pod address in the clear.
    let ping = PingLoop::start(&a.ns.name, &b.ip, "");
    let (wg, clear, seen) = capture(&c, 3);
    println!("FIGURE wireguard on eth0 in 3 s of a 20 ms ping: {wg} WireGuard UDP packets, {clear} with a pod address in the clear");
    assert!(wg >= 50, "only {wg} WireGuard packets on eth0");
    assert_eq!(
        clear,
        0,
        "pod addresses in the clear on the underlay: {seen}\nnode-1:\n{}\nnode-2:\n{}",
        c.agent_log(0),
        c.agent_log(1)
    );

    // status: each peer with its endpoint and handshake.
    let node2_key = annotation(&c, &c.nodes[1].name, BACKEND_DATA);
    let key2: Value = serde_json::from_str(&node2_key).expect("backend-data JSON");
    let key2 = key2["PublicKey"].as_str().expect("PublicKey").to_string();
    let st = status(&c, 0);
    let line = st
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("peer {key2} endpoint")))
        .unwrap_or_else(|| panic!("status lists no peer {key2}:\n{st}"));
    assert!(
        line.contains("endpoint 192.168.50.12:51820") && line.contains("handshake "),
        "{line}"
    );
    assert!(!line.contains("no handshake"), "{line}");

    // An agent restart keeps the key and the device; traffic does not notice.
    let before = annotation(&c, &c.nodes[0].name, BACKEND_DATA);
    let index = device_index(&c, 0);
    let u0 = unix_now();
    c.stop_agent(0, false);
    c.start_agent(0).expect("restart");
    c.wait_ready(0, WAIT).expect("ready again");
    std::thread::sleep(Duration::from_secs(2));
    let (gap, lost) = ping.gap(u0, unix_now());
    println!(
        "FIGURE wireguard agent restart: longest ping gap {} ms, {lost} lost",
        gap.as_millis()
    );
    assert_eq!(annotation(&c, &c.nodes[0].name, BACKEND_DATA), before);
    assert_eq!(device_index(&c, 0), index, "flannel-wg was recreated");
    assert_eq!(lost, 0, "pings lost across an agent restart");

    // A Node copying node-2's public key (younger: it loses the claim) is refused and
    // reported; node-2 stays node-1's peer at its own address, and traffic flows on.
    let thief = serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "zz-thief", "annotations": {
            "flannel.alpha.coreos.com/kube-subnet-manager": "true",
            "flannel.alpha.coreos.com/backend-type": "wireguard",
            "flannel.alpha.coreos.com/backend-data": node2_key,
            "flannel.alpha.coreos.com/public-ip": "192.168.50.99",
        }},
        "spec": {"podCIDR": "10.244.9.0/24", "podCIDRs": ["10.244.9.0/24"]},
    });
    let u0 = unix_now();
    c.kubectl_stdin(&["create", "-f", "-"], &thief.to_string())
        .expect("create the thief");
    let reported = eventually(WAIT, || {
        c.metric(0, "trellis_peers_skipped{reason=\"duplicate_wg_key\"}") == Some(1.0)
    });
    assert!(
        reported,
        "the copied key is not reported\n{}",
        c.agent_log(0)
    );
    std::thread::sleep(Duration::from_secs(1));
    let st = status(&c, 0);
    assert!(
        st.contains(&format!("peer {key2} endpoint 192.168.50.12:51820")),
        "node-2's peer was disturbed:\n{st}"
    );
    assert!(
        !st.contains("192.168.50.99"),
        "the thief was programmed:\n{st}"
    );
    let (gap, lost) = ping.gap(u0, unix_now());
    println!(
        "FIGURE wireguard copied key: refused and reported; longest ping gap {} ms, {lost} lost",
        gap.as_millis()
    );
    assert_eq!(lost, 0, "pings lost to a copied key");

    // node-2 moves to another address: node-1's peer follows.
    c.nodes[1]
        .ns
        .ip(&["addr", "add", "192.168.50.112/24", "dev", "eth0"])
        .expect("second address");
    c.kubectl(&[
        "annotate",
        "node",
        &c.nodes[1].name,
        "flannel.alpha.coreos.com/public-ip-overwrite=192.168.50.112",
    ])
    .expect("annotate");
    let moved = eventually(WAIT, || {
        status(&c, 0)
            .lines()
            .any(|l| l.contains(&format!("peer {key2} endpoint 192.168.50.112:51820")))
    });
    assert!(moved, "the endpoint did not follow:\n{}", status(&c, 0));
    assert!(eventually(WAIT, || a.ping(&b.ip)), "pods lost each other");
    drop(ping);
}

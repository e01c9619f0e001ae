//! End to end, issue 13: a cluster flannel ran, taken over by trellis under traffic. Three
//! node namespaces carry what flannel leaves (written as flannel writes it: for vxlan,
//! `flannel.1` with the MAC its Node's `backend-data` advertises, per peer a permanent
//! neighbour, a permanent FDB entry and an onlink route with protocol boot; for host-gw, a
//! route per peer via its address; the `FLANNEL-*` chains; `subnet.env`; the Node
//! annotations) and pods made by flannel's delegate (reference `bridge` + `host-local`). Then
//! the trellis agents start while a pod pings a pod on another node every 20 ms:
//! - not one ping is lost, and each node ends up routing every peer with trellis's routes
//!   only (protocol 116, none of flannel's left), `flannel.1` kept with its MAC, one jump
//!   into each `FLANNEL-*` chain;
//! - a pod flannel's plugin made is deleted through trellis (its address released, its veth
//!   gone), and a pod trellis adds never gets an address a flannel pod still holds, and
//!   reaches the pods flannel made on other nodes.
//!
//! Needs root and the workspace binaries (hack/test.sh builds them).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use trellis_e2e::netns_cluster::{Cluster, Pod};
use trellis_e2e::poll::eventually;
use trellis_testkit::ping::{unix_now, PingLoop};

const READY: Duration = Duration::from_secs(60);
const BRIDGE: &str = "/usr/lib/cni/bridge";
const ANN: &str = "flannel.alpha.coreos.com";

/// flannel's VTEP MAC for node `i` (locally administered, unicast).
fn vtep_mac(i: usize) -> String {
    format!("12:f1:00:00:00:{:02x}", i + 1)
}

/// The pod subnet's network address (flannel.1's own address, the peers' gateway).
fn subnet_base(cidr: &str) -> String {
    cidr.split('/').next().unwrap_or_default().to_string()
}

/// What flanneld leaves on node `i`, and on its Node object.
fn flannel_node(c: &Cluster, i: usize, vxlan: bool) {
    let n = &c.nodes[i];
    let run = |line: String| {
        let args: Vec<&str> = line.split_whitespace().collect();
        n.ns.exec(&args)
            .unwrap_or_else(|e| panic!("{}: {line}: {e}", n.name));
    };
    if vxlan {
        // As flannel asks netlink: VNI 1, the underlay as its device, no learning, no port
        // (the kernel's default, 8472), MTU underlay - 50, the MAC it advertises.
        let (local, mac) = (n.ip, vtep_mac(i));
        run(format!(
            "ip link add flannel.1 type vxlan id 1 local {local} dev eth0 nolearning"
        ));
        run(format!("ip link set flannel.1 address {mac} mtu 1450 up"));
        run(format!(
            "ip addr add {}/32 dev flannel.1",
            subnet_base(&n.pod_cidr)
        ));
    }
    for (j, peer) in c.nodes.iter().enumerate().filter(|(j, _)| *j != i) {
        let (gw, cidr, ip) = (subnet_base(&peer.pod_cidr), &peer.pod_cidr, peer.ip);
        if vxlan {
            let mac = vtep_mac(j);
            run(format!(
                "ip neigh replace {gw} lladdr {mac} dev flannel.1 nud permanent"
            ));
            run(format!(
                "bridge fdb replace {mac} dev flannel.1 dst {ip} self permanent"
            ));
            run(format!(
                "ip route replace {cidr} via {gw} dev flannel.1 onlink"
            ));
        } else {
            run(format!("ip route replace {cidr} via {ip} dev eth0"));
        }
    }
    let mtu = if vxlan { 1450 } else { 1500 };
    let gateway = n.pod_cidr.replacen(".0/", ".1/", 1);
    let env = format!(
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={gateway}\nFLANNEL_MTU={mtu}\nFLANNEL_IPMASQ=true\n"
    );
    std::fs::write(n.subnet_file(), env).expect("subnet.env");
    flannel_chains(&n.ns, &n.pod_cidr);
    let (backend, data) = if vxlan {
        (
            "vxlan",
            format!(r#"{{"VNI":1,"VtepMAC":"{}"}}"#, vtep_mac(i)),
        )
    } else {
        ("host-gw", "null".to_string())
    };
    let annotations = [
        format!("{ANN}/backend-type={backend}"),
        format!("{ANN}/backend-data={data}"),
        format!("{ANN}/public-ip={}", n.ip),
        format!("{ANN}/kube-subnet-manager=true"),
    ];
    let mut args = vec!["annotate", "--overwrite", "node", n.name.as_str()];
    args.extend(annotations.iter().map(String::as_str));
    c.kubectl(&args).expect("flannel's annotations");
}

/// flanneld's iptables rules (its iptables traffic manager, --ip-masq).
fn flannel_chains(ns: &trellis_testkit::Netns, subnet: &str) {
    let rules = format!(
        "*nat
:FLANNEL-POSTRTG - [0:0]
-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment \"flanneld masq\" -j RETURN
-A FLANNEL-POSTRTG -s {subnet} -d 10.244.0.0/16 -m comment --comment \"flanneld masq\" -j RETURN
-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d {subnet} -m comment --comment \"flanneld masq\" -j RETURN
-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d {subnet} -m comment --comment \"flanneld masq\" -j RETURN
-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully
-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully
COMMIT
*filter
:FLANNEL-FWD - [0:0]
-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD
-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT
-A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT
COMMIT
"
    );
    ns.exec_with_stdin("iptables-restore", &["--noflush"], &rules)
        .expect("flannel's chains");
}

/// The delegate flannel's plugin renders from node `i`'s subnet.env.
fn flannel_delegate(c: &Cluster, i: usize, mtu: u32) -> String {
    let n = &c.nodes[i];
    json!({
        "cniVersion": "1.0.0", "name": "cbr0", "type": "bridge",
        "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true, "mtu": mtu,
        "ipam": {
            "type": "host-local", "dataDir": n.ipam_dir(),
            "ranges": [[{"subnet": n.pod_cidr}]], "routes": [{"dst": "10.244.0.0/16"}],
        },
    })
    .to_string()
}

/// Node `i`'s routes of protocol `proto` into the pod network (the node's own default route,
/// made by the harness with protocol boot too, is not flannel's).
fn routes_by(c: &Cluster, i: usize, proto: &str) -> String {
    c.nodes[i]
        .ns
        .exec(&["ip", "route", "show", "proto", proto])
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("10.244."))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn takeover(backend: &str, vxlan: bool, tag: &str) {
    assert!(trellis_testkit::is_root(), "end-to-end tests need root");
    let mut c = Cluster::for_test(3, backend, tag);
    for i in 0..c.nodes.len() {
        flannel_node(&c, i, vxlan);
    }
    let mtu = if vxlan { 1450 } else { 1500 };
    let bridge = Path::new(BRIDGE);
    let mut pods: Vec<Pod> = Vec::new();
    for i in [0, 0, 1, 2] {
        let conf = flannel_delegate(&c, i, mtu);
        pods.push(c.add_pod_with(i, bridge, &conf).expect("flannel's pod"));
    }
    assert!(pods[0].ping(&pods[2].ip), "flannel's network does not work");
    let index_before = c.nodes[0]
        .ns
        .exec(&["ip", "-o", "link", "show", "flannel.1"]);

    let ping = PingLoop::start(&pods[0].ns.name, &pods[2].ip, "node-1->node-2");
    assert!(
        eventually(Duration::from_secs(5), || ping.snapshot().len() >= 5),
        "the ping loop never got replies"
    );
    let from = unix_now();
    let started = Instant::now();
    c.start_agents().expect("agents");
    c.wait_all_ready(READY).expect("agents ready");
    let taken = eventually(READY, || {
        (0..c.nodes.len()).all(|i| routes_by(&c, i, "boot").trim().is_empty()) && c.fully_routed()
    });
    assert!(
        taken,
        "flannel's routes never all replaced: {}",
        routes_by(&c, 0, "all")
    );
    let took = started.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let (replies, lost, gap) = ping.window(from, unix_now());
    eprintln!(
        "{backend}: taken over in {took:?}; {replies} replies, {lost} lost, longest gap {gap:?}"
    );
    assert_eq!(
        lost, 0,
        "pings lost during the takeover ({replies} replies)"
    );
    assert!(replies > 10, "too few replies to judge: {replies}");

    for i in 0..c.nodes.len() {
        let name = &c.nodes[i].name;
        let ours = routes_by(&c, i, "116");
        assert_eq!(ours.lines().count(), 2, "{name}: {ours}");
        let jumps = |table: &str, chain: &str| {
            c.nodes[i]
                .ns
                .exec(&["iptables", "-t", table, "-S"])
                .unwrap_or_default()
                .lines()
                .filter(|l| l.ends_with(&format!("-j {chain}")) && !l.starts_with("-N"))
                .count()
        };
        assert_eq!(
            jumps("nat", "FLANNEL-POSTRTG"),
            1,
            "{name}: masquerade jumps"
        );
        assert_eq!(jumps("filter", "FLANNEL-FWD"), 1, "{name}: forward jumps");
    }
    if vxlan {
        let after = c.nodes[0]
            .ns
            .exec(&["ip", "-o", "link", "show", "flannel.1"]);
        assert_eq!(after, index_before, "flannel.1 was recreated");
        let node = c.node_json("node-1").expect("node");
        let data = node["metadata"]["annotations"][format!("{ANN}/backend-data")]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            data.contains(&vtep_mac(0)),
            "the VTEP MAC peers know changed: {data}"
        );
    }

    // flannel's pod deleted through trellis, then a trellis pod beside the other one.
    let gone = pods.remove(0);
    let records =
        |c: &Cluster| trellis_testkit::ipam::addresses(&c.nodes[0].ipam_dir().join("cbr0"));
    c.del_pod(&gone).expect("trellis DEL of flannel's pod");
    assert_eq!(records(&c), [pods[0].ip.clone()], "its address released");
    let veths = c.nodes[0]
        .ns
        .sh(&["ip", "-o", "link", "show", "master", "cni0"]);
    assert_eq!(veths.lines().count(), 1, "its veth gone: {veths}");
    // The held address made the round robin's next candidate (host-local's
    // last_reserved_ip.0, which trellis reads too): only the records can keep it.
    let held: std::net::Ipv4Addr = pods[0].ip.parse().expect("IPv4");
    let before = std::net::Ipv4Addr::from(u32::from(held) - 1).to_string();
    let store = c.nodes[0].ipam_dir().join("cbr0");
    std::fs::write(store.join("last_reserved_ip.0"), before).expect("last reserved");
    let new = c.add_pod(0).expect("trellis pod");
    assert_ne!(
        new.ip, pods[0].ip,
        "handed out an address flannel's pod holds"
    );
    for p in &pods {
        assert!(
            new.ping(&p.ip),
            "trellis's pod cannot reach flannel's {}",
            p.ip
        );
    }
    for p in pods.iter().chain([&new]) {
        c.del_pod(p).expect("del pod");
    }
    drop(ping);
}

#[test]
fn a_vxlan_cluster_flannel_ran_is_taken_over_without_a_lost_ping() {
    takeover(r#"{"Type":"vxlan"}"#, true, "tov");
}

#[test]
fn a_host_gw_cluster_flannel_ran_is_taken_over_without_a_lost_ping() {
    takeover(r#"{"Type":"host-gw"}"#, false, "toh");
}

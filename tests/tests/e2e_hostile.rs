//! Hostile peers, end to end: honest pods on three nodes talk (a 50 ms ping ring and a TCP
//! connect loop) while Nodes that lie are added through the API one at a time. Each must be
//! ignored and reported (a `peer skipped` warning naming it, `trellis_peers_skipped{reason}`
//! on /metrics), get no kernel entry, and leave the honest traffic and kernel entries alone:
//! no ping lost, no TCP connect failed, no honest route/neighbour/FDB entry ever deleted
//! (`ip monitor` / `bridge monitor` run throughout).
//!
//! Two Nodes registered before the honest ones play long-registered nodes that turn hostile
//! (they start unmanaged, later claim an honest node's public IP or podCIDR), which the age
//! tie-break alone would let win.
//!
//! Needs root and the workspace binaries (hack/test.sh builds them).

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use trellis_e2e::netns_cluster::{Cluster, Netns, Pod};
use trellis_testkit::poll::assert_ring_reaches;

const READY: Duration = Duration::from_secs(60);
const SETTLE: Duration = Duration::from_secs(15);
/// The traffic loops run at least this long (a 50 ms ping: 240 packets per pair).
const LOOPS_MIN: Duration = Duration::from_secs(12);
const P: &str = "flannel.alpha.coreos.com/";
/// The honest nodes (indices into `Cluster::nodes`): node-1, node-2, node-3.
const HONEST: [usize; 3] = [0, 1, 2];
/// Public IPs no peer can be reached at: the underlay's broadcast address, unspecified,
/// loopback, multicast.
const UNUSABLE_IPS: [&str; 4] = ["192.168.50.255", "0.0.0.0", "127.0.0.1", "224.0.0.1"];

fn eventually(timeout: Duration, f: impl FnMut() -> bool) -> bool {
    trellis_e2e::poll::poll_until(timeout, Duration::from_millis(100), f)
}

/// What trellis owns in a node's kernel: routes, neighbours and FDB entries.
fn kernel(c: &Cluster, i: usize) -> String {
    let ns = &c.nodes[i].ns;
    let mut out = String::new();
    for args in [
        &["ip", "route", "show", "proto", "116"][..],
        &["ip", "neigh", "show", "dev", "flannel.1"][..],
        &["bridge", "fdb", "show", "dev", "flannel.1"][..],
        &["ip", "-br", "link", "show", "type", "vxlan"][..],
    ] {
        out.push_str(&ns.exec(args).unwrap_or_default());
    }
    out
}

fn metrics(c: &Cluster, i: usize) -> String {
    c.agent_http(i, "/metrics")
        .map(|(_, b)| b)
        .unwrap_or_default()
}

/// The `trellis_peers_skipped` gauge by reason.
fn skipped(c: &Cluster, i: usize) -> BTreeMap<String, u64> {
    metrics(c, i)
        .lines()
        .filter_map(|l| l.strip_prefix("trellis_peers_skipped{reason=\""))
        .filter_map(|l| {
            let (reason, rest) = l.split_once("\"}")?;
            Some((reason.to_string(), rest.trim().parse().ok()?))
        })
        .collect()
}

fn full_log(c: &Cluster, i: usize) -> String {
    std::fs::read_to_string(c.nodes[i].dir.join("agent.log")).unwrap_or_default()
}

/// A Node as an attacker with Node-write credentials would register it.
fn node_json(name: &str, cidrs: &[&str], ann: &[(String, String)]) -> String {
    let mut a = serde_json::Map::new();
    let spec = match cidrs.first() {
        Some(first) => json!({"podCIDRs": cidrs, "podCIDR": first}),
        None => json!({}),
    };
    for (k, v) in ann {
        a.insert(k.clone(), json!(v));
    }
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "annotations": a},
        "spec": spec,
    })
    .to_string()
}

/// The annotations of a well-formed VXLAN node.
fn vxlan_ann(ip: &str, mac: &str) -> Vec<(String, String)> {
    vec![
        (format!("{P}kube-subnet-manager"), "true".into()),
        (format!("{P}backend-type"), "vxlan".into()),
        (
            format!("{P}backend-data"),
            format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#),
        ),
        (format!("{P}public-ip"), ip.into()),
    ]
}

fn with(mut ann: Vec<(String, String)>, key: &str, value: String) -> Vec<(String, String)> {
    let key = format!("{P}{key}");
    ann.retain(|(k, _)| *k != key);
    ann.push((key, value));
    ann
}

struct Loops {
    pings: Vec<(String, Child)>,
    tcp_server: Option<Child>,
    tcp_client: Option<Child>,
    monitors: Vec<(usize, Child)>,
    stop_file: std::path::PathBuf,
}

/// A failed assertion must not leave endless pings and monitors behind.
impl Drop for Loops {
    fn drop(&mut self) {
        let pings = self.pings.drain(..).map(|(_, c)| c);
        let mons = self.monitors.drain(..).map(|(_, c)| c);
        let tcp = self
            .tcp_server
            .take()
            .into_iter()
            .chain(self.tcp_client.take());
        for mut c in pings.chain(mons).chain(tcp) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn_in(ns: &Netns, args: &[&str]) -> Child {
    Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn")
}

fn start_loops(c: &Cluster, pods: &[Pod]) -> Loops {
    let mut pings = Vec::new();
    for k in 0..pods.len() {
        let (a, b) = (&pods[k], &pods[(k + 1) % pods.len()]);
        pings.push((
            format!("{} -> {}", a.name, b.name),
            spawn_in(&a.ns, &["ping", "-i", "0.05", "-W", "1", &b.ip]),
        ));
    }
    let server = "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('0.0.0.0',7070))\ns.listen(64)\nprint('ready',flush=True)\nwhile True:\n    c,_=s.accept()\n    c.sendall(c.recv(16))\n    c.close()\n";
    let mut tcp_server = spawn_in(&pods[1].ns, &["python3", "-c", server]);
    let mut ready = String::new();
    if let Some(out) = tcp_server.stdout.take() {
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut ready);
    }
    assert_eq!(ready.trim(), "ready", "the TCP server did not start");
    let stop_file = c.dir.join("stop-tcp");
    // One short connection every 50 ms; each failure is printed with its time and error.
    let client = format!(
        "import socket,time,os\nok=fail=0\nwhile not os.path.exists('{}'):\n    try:\n        s=socket.create_connection(('{}',7070),timeout=2)\n        s.sendall(b'x')\n        if s.recv(16)!=b'x': raise OSError('short answer')\n        ok+=1\n        s.close()\n    except OSError as e:\n        fail+=1\n        print('fail',time.time(),repr(e),flush=True)\n    time.sleep(0.05)\nprint(ok,fail,flush=True)\n",
        stop_file.display(),
        pods[1].ip
    );
    let tcp_client = spawn_in(&pods[0].ns, &["python3", "-c", &client]);
    let mut monitors = Vec::new();
    for &i in &HONEST {
        monitors.push((
            i,
            spawn_in(&c.nodes[i].ns, &["ip", "monitor", "route", "neigh"]),
        ));
        monitors.push((i, spawn_in(&c.nodes[i].ns, &["bridge", "monitor", "fdb"])));
    }
    Loops {
        pings,
        tcp_server: Some(tcp_server),
        tcp_client: Some(tcp_client),
        monitors,
        stop_file,
    }
}

fn interrupt(child: &Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
}

/// Stop the loops; returns the ping (sent, received) per pair, TCP (ok, failed) and the
/// monitors' output per node.
type LoopResults = (Vec<(String, u64, u64)>, (u64, u64), Vec<(usize, String)>);

fn stop_loops(mut l: Loops) -> LoopResults {
    let mut pings = Vec::new();
    for (name, child) in std::mem::take(&mut l.pings) {
        interrupt(&child);
        let out = child.wait_with_output().expect("ping");
        let (sent, received) =
            trellis_testkit::ping::summary(&String::from_utf8_lossy(&out.stdout));
        pings.push((name, sent, received));
    }
    let _ = std::fs::write(&l.stop_file, "");
    let out = l
        .tcp_client
        .take()
        .expect("tcp client")
        .wait_with_output()
        .expect("tcp client");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    for l in text.lines().filter(|l| l.starts_with("fail")) {
        println!("tcp {l}");
    }
    let last = text.lines().last().unwrap_or_default();
    let mut it = last.split_whitespace().filter_map(|s| s.parse().ok());
    let tcp = (it.next().unwrap_or(0), it.next().unwrap_or(u64::MAX));
    if let Some(mut server) = l.tcp_server.take() {
        let _ = server.kill();
        let _ = server.wait();
    }
    let mut mons = Vec::new();
    for (i, child) in std::mem::take(&mut l.monitors) {
        interrupt(&child);
        let out = child.wait_with_output().expect("monitor");
        mons.push((i, String::from_utf8_lossy(&out.stdout).to_string()));
    }
    (pings, tcp, mons)
}

/// One hostile step: run `act` (create or change Node `name`), then each honest node must
/// report it with `reasons[k]` (the gauge for that reason goes up, and a `peer skipped`
/// warning names it) and keep exactly the kernel entries it had `before`.
fn hostile_step(
    c: &Cluster,
    name: &str,
    reasons: &[&str; 3],
    before: &[String],
    act: impl FnOnce(),
) {
    let counts: Vec<BTreeMap<String, u64>> = HONEST.iter().map(|&i| skipped(c, i)).collect();
    let logged: Vec<usize> = HONEST.iter().map(|&i| full_log(c, i).len()).collect();
    act();
    for (k, &i) in HONEST.iter().enumerate() {
        let reason = reasons[k];
        let was = counts[k].get(reason).copied().unwrap_or(0);
        assert!(
            eventually(SETTLE, || {
                skipped(c, i).get(reason).copied().unwrap_or(0) > was
                    && full_log(c, i)
                        .get(logged[k]..)
                        .unwrap_or_default()
                        .lines()
                        .any(|l| l.contains("peer skipped") && l.contains(name))
            }),
            "node-{} did not report {name} as {reason}: {:?}\n{}",
            i + 1,
            skipped(c, i),
            c.agent_log(i)
        );
        assert_eq!(
            kernel(c, i),
            before[k],
            "node-{}'s kernel entries changed after {name}",
            i + 1
        );
    }
}

/// PeerSkipped Warning Events (a series counts its repeats), by the Node they regard.
fn skip_events(c: &Cluster) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(text) = c.kubectl(&["get", "events.v1.events.k8s.io", "-A", "-o", "json"]) else {
        return out;
    };
    let list: Value = serde_json::from_str(&text).unwrap_or_default();
    for e in list["items"].as_array().into_iter().flatten() {
        if e["reason"] == "PeerSkipped" && e["type"] == "Warning" {
            let node = e["regarding"]["name"].as_str().unwrap_or("?").to_string();
            *out.entry(node).or_default() += e["series"]["count"].as_u64().unwrap_or(1);
        }
    }
    out
}

/// The first hostile Nodes get a PeerSkipped Event on their own Node object; a burst of them
/// gets no more Events than the agents' rate limit allows (10 at once per agent process, here
/// two each since every agent restarts once, then one every 2 s).
fn check_skip_events(c: &Cluster, first: &[&str], agents_started: Instant) {
    for name in first {
        assert!(
            eventually(SETTLE, || skip_events(c).contains_key(*name)),
            "no PeerSkipped Warning Event on {name}: {:?}",
            skip_events(c)
        );
    }
    let total: u64 = skip_events(c).values().sum();
    let bound = HONEST.len() as u64 * (2 * 10 + agents_started.elapsed().as_secs() / 2 + 1);
    println!("PeerSkipped Events: {total} (rate limit allows {bound})");
    assert!(
        total <= bound,
        "{total} PeerSkipped Events, more than {bound}"
    );
}

/// A Node that lies about nothing: every honest node programs its subnet, and removes every
/// entry of it when the Node is deleted.
fn accepted_then_deleted(c: &Cluster, name: &str, subnet: &str, before: &[String]) {
    for &i in &HONEST {
        assert!(
            eventually(SETTLE, || kernel(c, i).contains(subnet)),
            "node-{} did not program {name}:\n{}",
            i + 1,
            c.agent_log(i)
        );
    }
    c.delete_node_object(name).expect("delete Node");
    for (k, &i) in HONEST.iter().enumerate() {
        assert!(
            eventually(SETTLE, || kernel(c, i) == before[k]),
            "node-{} kept {name}'s entries:\n{}",
            i + 1,
            kernel(c, i)
        );
    }
}

fn create(c: &Cluster, body: &str) {
    c.kubectl_stdin(&["create", "-f", "-"], body)
        .expect("create Node");
}

fn merge_patch(c: &Cluster, name: &str, patch: Value) {
    c.kubectl(&[
        "patch",
        "node",
        name,
        "--type",
        "merge",
        "-p",
        &patch.to_string(),
    ])
    .expect("patch Node");
}

/// Three honest nodes on `backend`, each routing the others, one pod each pinging the next.
/// `register_first` creates Nodes that must be older than the honest ones.
fn honest_cluster(
    backend: &str,
    tag: &str,
    register_first: impl FnOnce(&Cluster),
) -> (Cluster, Vec<Pod>) {
    let mut c = Cluster::for_test(3, backend, tag);
    for &i in &HONEST {
        c.delete_node_object(&c.nodes[i].name.clone())
            .expect("re-register");
    }
    register_first(&c);
    for &i in &HONEST {
        let n = &c.nodes[i];
        create(
            &c,
            &json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": n.name},
                "spec": {"podCIDR": n.pod_cidr, "podCIDRs": [n.pod_cidr]},
                "status": {"addresses": [{"type": "InternalIP", "address": n.ip.to_string()}]}
            })
            .to_string(),
        );
    }
    for &i in &HONEST {
        c.start_agent(i).expect("agent");
    }
    for &i in &HONEST {
        c.wait_ready(i, READY).expect("ready");
    }
    for &i in &HONEST {
        let others: Vec<String> = HONEST
            .iter()
            .filter(|&&o| o != i)
            .map(|&o| c.nodes[o].pod_cidr.clone())
            .collect();
        assert!(
            eventually(READY, || {
                let k = kernel(&c, i);
                others.iter().all(|o| k.contains(o.as_str()))
            }),
            "node-{} never routed its peers:\n{}",
            i + 1,
            c.agent_log(i)
        );
    }
    let pods: Vec<Pod> = HONEST.iter().map(|&i| c.add_pod(i).expect("pod")).collect();
    let reaches = |a: &Pod, b: &Pod| a.ping(&b.ip);
    assert_ring_reaches(&pods, Duration::from_secs(10), reaches, |p| &p.name, "");
    (c, pods)
}

/// Kill every honest agent and start it again with the hostile Nodes in place: each must get
/// ready again (one bad Node must not stall a rollout) and keep the honest entries.
fn restart_honest_agents(c: &mut Cluster, honest_entries: &[Vec<String>]) {
    for &i in &HONEST {
        c.stop_agent(i, true);
        c.start_agent(i).expect("agent");
    }
    for (k, &i) in HONEST.iter().enumerate() {
        c.wait_ready(i, READY)
            .unwrap_or_else(|e| panic!("after a restart among hostile Nodes: {e}"));
        let now = kernel(c, i);
        let lost: Vec<&String> = honest_entries[k]
            .iter()
            .filter(|l| !now.contains(l.as_str()))
            .collect();
        assert!(
            lost.is_empty(),
            "node-{} lost {lost:?} across the restart:\n{now}\n{}",
            i + 1,
            c.agent_log(i)
        );
    }
}

/// The kernel entries of `kernel()` as lines.
fn lines(k: &str) -> Vec<String> {
    k.lines().map(str::to_string).collect()
}

/// The VTEP MAC node `i` advertises (none on host-gw).
fn advertised_vtep_mac(c: &Cluster, i: usize) -> Option<String> {
    let node = c.node_json(&c.nodes[i].name).ok()?;
    let data = node["metadata"]["annotations"][format!("{P}backend-data")].as_str()?;
    let v: Value = serde_json::from_str(data).ok()?;
    v["VtepMAC"].as_str().map(str::to_string)
}

fn vtep_mac(c: &Cluster, i: usize) -> String {
    advertised_vtep_mac(c, i).expect("node advertises a VTEP MAC")
}

#[test]
fn hostile_nodes_are_ignored_reported_and_disturb_nothing() {
    // Two Nodes registered long before the honest ones (creationTimestamp has one-second
    // resolution), not yet run by trellis: they turn hostile at the end.
    let agents_started = Instant::now();
    let (mut c, pods) = honest_cluster(r#"{"Type":"vxlan"}"#, "hos", |c| {
        create(c, &node_json("old-ip", &["10.244.150.0/24"], &[]));
        create(c, &node_json("old-cidr", &[], &[]));
        std::thread::sleep(Duration::from_millis(1100));
    });
    let before: Vec<String> = HONEST.iter().map(|&i| kernel(&c, i)).collect();
    let loops = start_loops(&c, &pods);
    let loops_started = Instant::now();
    std::thread::sleep(Duration::from_secs(1));

    let mac = |n: u8| format!("0e:00:00:00:01:{n:02x}");
    let ips: Vec<String> = c.nodes.iter().map(|n| n.ip.to_string()).collect();
    let ip = |i: usize| ips[i].clone();

    // 1. Another node's podCIDR (node-2's; the hostile Node is younger: it loses).
    hostile_step(
        &c,
        "h-cidr",
        &["overlaps_peer", "overlaps_local", "overlaps_peer"],
        &before,
        || {
            create(
                &c,
                &node_json(
                    "h-cidr",
                    &["10.244.2.0/24"],
                    &vxlan_ann("192.168.50.201", &mac(1)),
                ),
            )
        },
    );

    // 2. Another node's public IP (node-2's: its own address from node-2's point of view).
    hostile_step(
        &c,
        "h-ip",
        &[
            "duplicate_public_ip",
            "public_ip_is_local",
            "duplicate_public_ip",
        ],
        &before,
        || {
            create(
                &c,
                &node_json("h-ip", &["10.244.202.0/24"], &vxlan_ann(&ip(1), &mac(2))),
            )
        },
    );

    // 3. A podCIDR outside the Network.
    hostile_step(&c, "h-outside", &["outside_network"; 3], &before, || {
        create(
            &c,
            &node_json(
                "h-outside",
                &["10.99.0.0/24"],
                &vxlan_ann("192.168.50.203", &mac(3)),
            ),
        )
    });

    // 4. An annotation over the size limit: parsed by nobody, quoted by nobody.
    let huge = format!(
        r#"{{"VNI":1,"VtepMAC":"{}","x":"{}"}}"#,
        mac(4),
        "A".repeat(8000)
    );
    hostile_step(&c, "h-huge", &["bad_annotation"; 3], &before, || {
        create(
            &c,
            &node_json(
                "h-huge",
                &["10.244.204.0/24"],
                &with(vxlan_ann("192.168.50.204", &mac(4)), "backend-data", huge),
            ),
        )
    });
    for &i in &HONEST {
        let log = full_log(&c, i);
        assert!(
            !log.contains(&"A".repeat(100)),
            "node-{} logged the huge value",
            i + 1
        );
    }

    // 5. Malformed JSON, a multicast VtepMAC, an unparsable public IP, a VNI out of range.
    let bad = [
        (
            "h-json",
            r#"{"VNI":1,"VtepMAC":"#.to_string(),
            "backend-data",
        ),
        (
            "h-mac",
            r#"{"VNI":1,"VtepMAC":"01:00:5e:00:00:01"}"#.to_string(),
            "backend-data",
        ),
        ("h-badip", "192.168.50.300".to_string(), "public-ip"),
        (
            "h-bigvni",
            format!(r#"{{"VNI":16777216,"VtepMAC":"{}"}}"#, mac(9)),
            "backend-data",
        ),
    ];
    for (k, (name, value, key)) in bad.into_iter().enumerate() {
        let cidr = format!("10.244.{}.0/24", 205 + k);
        let ann = with(
            vxlan_ann(&format!("192.168.50.{}", 205 + k), &mac(5 + k as u8)),
            key,
            value,
        );
        hostile_step(&c, name, &["bad_annotation"; 3], &before, || {
            create(&c, &node_json(name, &[&cidr], &ann))
        });
    }

    // 6. Huge but within limits: 200 KiB of junk annotations and a 4000-byte backend-data
    // with unknown keys. Nothing in it lies, so it is a valid peer (flannel ignores unknown
    // keys too): programmed, and removed again with its Node.
    let mut ann = with(
        vxlan_ann("192.168.50.210", &mac(10)),
        "backend-data",
        format!(
            r#"{{"VNI":1,"VtepMAC":"{}","junk":"{}"}}"#,
            mac(10),
            "j".repeat(3900)
        ),
    );
    ann.extend((0..50).map(|k| (format!("junk.example.com/k{k}"), "z".repeat(4000))));
    create(&c, &node_json("h-junk", &["10.244.210.0/24"], &ann));
    accepted_then_deleted(&c, "h-junk", "10.244.210.0/24", &before);

    // 7. Other VNIs: a peer in the middle of a VNI change is programmed through a device of
    // its own (flannel.<VNI>), so VNIs 77 and 78 are accepted; a third foreign VNI would be
    // one device too many on every node and is refused. The devices go with their Nodes.
    let vni_node = |name: &str, vni: u32, k: u8| {
        let ann = with(
            vxlan_ann(&format!("192.168.50.{}", 200 + u32::from(k)), &mac(k)),
            "backend-data",
            format!(r#"{{"VNI":{vni},"VtepMAC":"{}"}}"#, mac(k)),
        );
        let cidr = format!("10.244.{}.0/24", 200 + u32::from(k));
        create(&c, &node_json(name, &[&cidr], &ann));
    };
    vni_node("h-vni", 77, 17);
    vni_node("h-vni2", 78, 18);
    for &i in &HONEST {
        assert!(
            eventually(SETTLE, || {
                let k = kernel(&c, i);
                k.contains("flannel.77")
                    && k.contains("flannel.78")
                    && k.contains("10.244.218.0/24")
            }),
            "node-{}: VNI 77 and 78 peers not programmed:\n{}",
            i + 1,
            kernel(&c, i)
        );
    }
    let with_vnis: Vec<String> = HONEST.iter().map(|&i| kernel(&c, i)).collect();
    hostile_step(&c, "h-vni3", &["too_many_vnis"; 3], &with_vnis, || {
        vni_node("h-vni3", 79, 19)
    });
    for name in ["h-vni", "h-vni2", "h-vni3"] {
        c.delete_node_object(name).expect("delete Node");
    }
    for (k, &i) in HONEST.iter().enumerate() {
        assert!(
            eventually(SETTLE, || kernel(&c, i) == before[k]),
            "node-{} kept the VNI peers' entries:\n{}\nbefore:\n{}",
            i + 1,
            kernel(&c, i),
            before[k]
        );
    }

    // 8. A Node that joins honestly (programmed), then changes its public IP to node-3's:
    // younger, so it loses, and its own entries go.
    create(
        &c,
        &node_json(
            "h-turn",
            &["10.244.211.0/24"],
            &vxlan_ann("192.168.50.211", &mac(11)),
        ),
    );
    for &i in &HONEST {
        assert!(
            eventually(SETTLE, || kernel(&c, i).contains("10.244.211.0/24")),
            "node-{} did not program h-turn",
            i + 1
        );
    }
    hostile_step(
        &c,
        "h-turn",
        &[
            "duplicate_public_ip",
            "duplicate_public_ip",
            "public_ip_is_local",
        ],
        &before,
        || {
            merge_patch(
                &c,
                "h-turn",
                json!({"metadata": {"annotations": {format!("{P}public-ip"): ip(2)}}}),
            )
        },
    );
    // A Node without a podCIDR may be given one once ("" -> CIDR is the only change the API
    // allows): it takes node-3's.
    create(
        &c,
        &node_json("h-late", &[], &vxlan_ann("192.168.50.213", &mac(14))),
    );
    hostile_step(
        &c,
        "h-late",
        &["overlaps_peer", "overlaps_peer", "overlaps_local"],
        &before,
        || {
            merge_patch(
                &c,
                "h-late",
                json!({"spec": {"podCIDR": "10.244.3.0/24", "podCIDRs": ["10.244.3.0/24"]}}),
            )
        },
    );

    // 9a. A copy of node-2's VTEP MAC from a Node with a subnet and address of its own, whose
    // name sorts after node-2's: every node's FDB entry for that MAC would point at it.
    let victim_mac = vtep_mac(&c, 1);
    hostile_step(
        &c,
        "zz-thief",
        &[
            "duplicate_vtep_mac",
            "vtep_mac_is_local",
            "duplicate_vtep_mac",
        ],
        &before,
        || {
            create(
                &c,
                &node_json(
                    "zz-thief",
                    &["10.244.220.0/24"],
                    &vxlan_ann("192.168.50.220", &victim_mac),
                ),
            )
        },
    );

    // 9b. Public IPs that can be no tunnel endpoint: the underlay's broadcast address,
    // unspecified, loopback, multicast.
    for (k, bad_ip) in UNUSABLE_IPS.iter().enumerate() {
        let name = format!("h-endpoint-{k}");
        let cidr = format!("10.244.{}.0/24", 221 + k);
        let ann = vxlan_ann(bad_ip, &mac(21 + k as u8));
        hostile_step(&c, &name, &["unusable_public_ip"; 3], &before, || {
            create(&c, &node_json(&name, &[&cidr], &ann))
        });
    }

    // 9c. Every honest agent restarted with all of them in place. (Before step 9d: a restarted
    // agent has not seen the old Nodes change their claims, so it can only go by age; see
    // docs/RELIABILITY.md.)
    let honest_entries: Vec<Vec<String>> = before.iter().map(|k| lines(k)).collect();
    restart_honest_agents(&mut c, &honest_entries);

    // 9d. The Nodes registered before every honest node turn hostile: old-ip starts
    // advertising node-1's public IP, old-cidr gets node-2's podCIDR. By age alone they would
    // win; a claim made while an honest node holds the address or subnet must not.
    let managed = |ip: &str, m: u8| {
        let mut a = serde_json::Map::new();
        for (k, v) in vxlan_ann(ip, &mac(m)) {
            a.insert(k, json!(v));
        }
        Value::Object(a)
    };
    hostile_step(
        &c,
        "old-ip",
        &[
            "public_ip_is_local",
            "duplicate_public_ip",
            "duplicate_public_ip",
        ],
        &before,
        || {
            merge_patch(
                &c,
                "old-ip",
                json!({"metadata": {"annotations": managed(&ip(0), 15)}}),
            )
        },
    );
    hostile_step(
        &c,
        "old-cidr",
        &["overlaps_peer", "overlaps_local", "overlaps_peer"],
        &before,
        || {
            merge_patch(
                &c,
                "old-cidr",
                json!({"metadata": {"annotations": managed("192.168.50.216", 16)},
                       "spec": {"podCIDR": "10.244.2.0/24", "podCIDRs": ["10.244.2.0/24"]}}),
            )
        },
    );

    // Let the loops run on with every hostile Node in place, then check the honest traffic.
    // (and at least LOOPS_MIN in all, so that the sample means something on a fast machine)
    check_skip_events(&c, &["h-cidr", "h-ip", "h-outside"], agents_started);
    finish(&c, loops, loops_started, &before, &pods);
}

/// Let the loops run on (at least LOOPS_MIN in all, so that the sample means something on a
/// fast machine), then check that every honest node's kernel is as `before` and that no ping
/// was lost, no TCP connect failed and no honest entry was ever deleted.
/// Every path between the honest nodes and their pods: each pod to each other pod and to
/// each node's address, each node to each pod (3 nodes, one pod each: 24 paths). Returns the
/// paths that failed.
fn ping_matrix(c: &Cluster, pods: &[Pod]) -> (usize, Vec<String>) {
    let mut tried = 0;
    let mut failed = Vec::new();
    let mut check = |what: String, ok: bool| {
        tried += 1;
        if !ok {
            failed.push(what);
        }
    };
    for a in pods {
        for b in pods.iter().filter(|b| b.ip != a.ip) {
            check(format!("{} -> {}", a.name, b.name), a.ping(&b.ip));
        }
        for &i in &HONEST {
            let ip = c.nodes[i].ip.to_string();
            check(format!("{} -> node-{}", a.name, i + 1), a.ping(&ip));
        }
    }
    for &i in &HONEST {
        for b in pods {
            let ok = c.nodes[i]
                .ns
                .exec_ok(&["ping", "-c", "1", "-W", "2", &b.ip]);
            check(format!("node-{} -> {}", i + 1, b.name), ok);
        }
    }
    (tried, failed)
}

fn finish(c: &Cluster, loops: Loops, loops_started: Instant, before: &[String], pods: &[Pod]) {
    let (tried, failed) = ping_matrix(c, pods);
    println!(
        "ping matrix: {} of {tried} paths work",
        tried - failed.len()
    );
    assert!(failed.is_empty(), "paths broken: {failed:?}");
    std::thread::sleep(
        Duration::from_secs(2).max(LOOPS_MIN.saturating_sub(loops_started.elapsed())),
    );
    for (k, &i) in HONEST.iter().enumerate() {
        assert_eq!(kernel(c, i), before[k], "node-{} changed", i + 1);
    }
    let (pings, tcp, mons) = stop_loops(loops);
    for (pair, sent, got) in &pings {
        println!("ping {pair}: {got}/{sent}");
        assert!(
            *sent >= 200 && got == sent,
            "ping {pair} lost packets: {got}/{sent}"
        );
    }
    println!("tcp connects: {} ok, {} failed", tcp.0, tcp.1);
    assert!(tcp.0 >= 100 && tcp.1 == 0, "TCP loop failed: {tcp:?}");
    let honest_marks: Vec<String> = HONEST
        .iter()
        .flat_map(|&i| {
            let n = &c.nodes[i];
            // Routes and neighbours by the honest subnet, FDB entries by the honest VTEP MAC
            // (a hostile Node may point an FDB entry of its own MAC at an honest address).
            [
                Some(n.pod_cidr.trim_end_matches("/24").to_string() + " "),
                Some(n.pod_cidr.clone()),
                advertised_vtep_mac(c, i).map(|m| format!("Deleted {m} ")),
            ]
            .into_iter()
            .flatten()
        })
        .collect();
    for (i, out) in &mons {
        let deleted: Vec<&str> = out
            .lines()
            // The VNI peers' devices had local routes of their own: gone with them.
            .filter(|l| l.starts_with("Deleted") && !l.contains("dev flannel.7"))
            .filter(|l| honest_marks.iter().any(|m| l.contains(m.as_str())))
            .collect();
        assert!(
            deleted.is_empty(),
            "node-{} removed honest entries: {deleted:#?}",
            i + 1
        );
    }
    for &i in &HONEST {
        let warnings = full_log(c, i)
            .lines()
            .filter(|l| l.contains("peer skipped"))
            .count();
        println!(
            "node-{} skipped: {:?}; 'peer skipped' warnings logged: {warnings}",
            i + 1,
            skipped(c, i)
        );
    }
}

fn hostgw_ann(ip: &str) -> Vec<(String, String)> {
    vec![
        (format!("{P}kube-subnet-manager"), "true".into()),
        (format!("{P}backend-type"), "host-gw".into()),
        (format!("{P}backend-data"), "null".into()),
        (format!("{P}public-ip"), ip.into()),
    ]
}

/// The `trellis_peer_entries_failing` gauge.
fn failing_entries(c: &Cluster, i: usize) -> Option<u64> {
    metrics(c, i)
        .lines()
        .find_map(|l| l.strip_prefix("trellis_peer_entries_failing "))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn host_gw_peers_the_kernel_refuses_are_isolated_and_honest_agents_stay_ready() {
    let (mut c, pods) = honest_cluster(r#"{"Type":"host-gw"}"#, "hgw", |_| {});
    let before: Vec<String> = HONEST.iter().map(|&i| kernel(&c, i)).collect();
    let loops = start_loops(&c, &pods);
    let loops_started = Instant::now();
    let ip = |i: usize| c.nodes[i].ip.to_string();

    // Impossible next hops (a route via the underlay's broadcast address is refused by the
    // kernel), a stolen podCIDR and public IP, a podCIDR outside the Network.
    for (k, bad_ip) in UNUSABLE_IPS.iter().enumerate() {
        let name = format!("g-endpoint-{k}");
        let cidr = format!("10.244.{}.0/24", 221 + k);
        hostile_step(&c, &name, &["unusable_public_ip"; 3], &before, || {
            create(&c, &node_json(&name, &[&cidr], &hostgw_ann(bad_ip)))
        });
    }
    hostile_step(
        &c,
        "g-cidr",
        &["overlaps_peer", "overlaps_local", "overlaps_peer"],
        &before,
        || {
            create(
                &c,
                &node_json("g-cidr", &["10.244.2.0/24"], &hostgw_ann("192.168.50.231")),
            )
        },
    );
    hostile_step(
        &c,
        "g-ip",
        &[
            "duplicate_public_ip",
            "duplicate_public_ip",
            "public_ip_is_local",
        ],
        &before,
        || {
            create(
                &c,
                &node_json("g-ip", &["10.244.232.0/24"], &hostgw_ann(&ip(2))),
            )
        },
    );
    hostile_step(&c, "g-outside", &["outside_network"; 3], &before, || {
        create(
            &c,
            &node_json(
                "g-outside",
                &["10.99.0.0/24"],
                &hostgw_ann("192.168.50.233"),
            ),
        )
    });

    // A peer only node-1's kernel refuses: there 192.168.50.240 is a broadcast address (a
    // local-table route the agent cannot foresee), so its route fails with EINVAL. The other
    // nodes program it; node-1 counts it, shows it, retries it, and stays ready.
    let local_broadcast = |c: &Cluster, op: &str| {
        c.nodes[0]
            .ns
            .exec(&[
                "ip",
                "route",
                op,
                "broadcast",
                "192.168.50.240",
                "dev",
                "eth0",
                "table",
                "local",
            ])
            .unwrap_or_else(|e| panic!("ip route {op} broadcast 192.168.50.240: {e}"));
    };
    local_broadcast(&c, "add");
    create(
        &c,
        &node_json(
            "g-refused",
            &["10.244.240.0/24"],
            &hostgw_ann("192.168.50.240"),
        ),
    );
    for i in [1, 2] {
        assert!(
            eventually(SETTLE, || kernel(&c, i).contains("10.244.240.0/24")),
            "node-{} did not program g-refused:\n{}",
            i + 1,
            c.agent_log(i)
        );
    }
    let refused_seen = |c: &Cluster| {
        failing_entries(c, 0) == Some(1)
            && metrics(c, 0).contains("trellis_peer_errors_total{reason=\"einval\"}")
            && c.agent_http(0, "/debug/state")
                .is_some_and(|(_, b)| b.contains("peer_errors") && b.contains("10.244.240.0/24"))
    };
    assert!(
        eventually(SETTLE, || refused_seen(&c)),
        "node-1 did not report the refused route:\n{}\n{}",
        metrics(&c, 0),
        c.agent_log(0)
    );
    assert!(matches!(c.agent_http(0, "/readyz"), Some((200, _))));

    // Every honest agent restarted among them: all ready again, node-1 still reporting.
    let honest_entries: Vec<Vec<String>> = before.iter().map(|k| lines(k)).collect();
    let log_before_restart = full_log(&c, 0).len();
    restart_honest_agents(&mut c, &honest_entries);
    assert!(
        eventually(SETTLE, || refused_seen(&c)),
        "node-1 did not report the refused route after its restart:\n{}",
        c.agent_log(0)
    );
    assert!(
        full_log(&c, 0)
            .get(log_before_restart..)
            .unwrap_or_default()
            .contains("peer entry refused by the kernel"),
        "the restarted node-1 did not log the refused entry"
    );

    // Once the cause is gone, the next retry (at most a resync period away) programs it.
    local_broadcast(&c, "del");
    assert!(
        eventually(SETTLE, || kernel(&c, 0).contains("10.244.240.0/24")
            && failing_entries(&c, 0) == Some(0)),
        "node-1 did not retry the refused route:\n{}",
        c.agent_log(0)
    );
    c.delete_node_object("g-refused").expect("delete Node");
    for (k, &i) in HONEST.iter().enumerate() {
        assert!(
            eventually(SETTLE, || kernel(&c, i) == before[k]),
            "node-{} kept g-refused's route:\n{}",
            i + 1,
            kernel(&c, i)
        );
    }
    finish(&c, loops, loops_started, &before, &pods);
}

//! Shared by the dataplane_* tests: throwaway network namespaces, running async code inside
//! one, reading the kernel back with iproute2, and desired states built by the real planner.
#![allow(dead_code)]

use std::future::Future;
use std::process::Command;

use serde_json::Value;
use trellis_agent::annotations::{
    Advertisement, AnnotationKeys, BackendData, VxlanData, WireguardData,
};
use trellis_agent::backend::{plan, PlanOptions};
use trellis_agent::config::{BackendType, NetConfig};
use trellis_agent::dataplane::desired::KernelState;
use trellis_agent::dataplane::netlink::{Dataplane, ReconcileReport};
use trellis_agent::net::Mac;
use trellis_agent::view::{ClusterView, LocalLease, NodeInfo, Underlay};
use trellis_agent::wg_key::{WgKey, WgKeyPair, WgSecret};

/// A network namespace that exists for the life of the value (deleted on drop, also when the
/// test panics), driven with whitespace-split argument strings.
pub struct Netns(trellis_testkit::Netns);

impl std::ops::Deref for Netns {
    type Target = trellis_testkit::Netns;
    fn deref(&self) -> &trellis_testkit::Netns {
        &self.0
    }
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        Netns(
            trellis_testkit::Netns::new(&format!("trl-dp-{tag}")).unwrap_or_else(|e| panic!("{e}")),
        )
    }

    /// `ip -n NS ARGS`, which must succeed; returns stdout.
    pub fn ip(&self, args: &str) -> String {
        match self.try_ip(args) {
            Ok(s) => s,
            Err(e) => panic!("ip -n {} {args}: {e}", self.name),
        }
    }

    pub fn try_ip(&self, args: &str) -> Result<String, String> {
        self.cmd("ip", &["-n", &self.name], args)
    }

    /// `bridge -n NS ARGS`.
    pub fn bridge(&self, args: &str) -> String {
        match self.cmd("bridge", &["-n", &self.name], args) {
            Ok(s) => s,
            Err(e) => panic!("bridge -n {} {args}: {e}", self.name),
        }
    }

    /// `ip netns exec NS PROG ARGS`.
    pub fn exec(&self, prog: &str, args: &str) -> Result<String, String> {
        self.cmd("ip", &["netns", "exec", &self.name, prog], args)
    }

    fn cmd(&self, prog: &str, pre: &[&str], args: &str) -> Result<String, String> {
        let (ok, out, err) = trellis_testkit::cmd::capture(
            Command::new(prog).args(pre).args(args.split_whitespace()),
        )
        .map_err(|e| format!("cannot run {prog}: {e}"))?;
        if ok {
            Ok(out)
        } else {
            Err(format!("{err}{out}"))
        }
    }

    /// `ip -j ...` parsed.
    pub fn ip_json(&self, args: &str) -> Vec<Value> {
        let out = self.ip(&format!("-j {args}"));
        if out.trim().is_empty() {
            return Vec::new();
        }
        match serde_json::from_str::<Value>(&out) {
            Ok(Value::Array(v)) => v,
            other => panic!("ip -j {args}: unexpected output {other:?}"),
        }
    }

    pub fn ifindex(&self, dev: &str) -> u32 {
        let links = self.ip_json(&format!("link show dev {dev}"));
        links
            .first()
            .and_then(|l| l["ifindex"].as_u64())
            .and_then(|i| u32::try_from(i).ok())
            .unwrap_or_else(|| panic!("no ifindex for {dev}"))
    }

    /// Run `f` on a fresh thread that has entered this namespace, in a current-thread Tokio
    /// runtime: every socket it opens (netlink included) belongs to the namespace.
    pub fn run<F, Fut, T>(&self, f: F) -> T
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        let path = self.path();
        let joined = std::thread::spawn(move || {
            trellis_testkit::netns::enter_path(&path).expect("enter the netns");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(f())
        })
        .join();
        match joined {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

/// Packets `dev` on `node` has sent (its tx counter).
pub fn tx_packets(node: &Node, dev: &str) -> u64 {
    node.ns.ip_json(&format!("-s link show dev {dev}"))[0]["stats64"]["tx"]["packets"]
        .as_u64()
        .unwrap_or(0)
}

/// A "node": its namespace with `eth0` (underlay) carrying `addr`/24 (and `addr6`/64).
pub struct Node {
    pub ns: Netns,
    pub addr: String,
    pub subnet: String,
    pub mac: Mac,
    /// IPv6 underlay address and pod subnet, for dual-stack nodes.
    pub v6: Option<(String, String)>,
    /// Its WireGuard key pair, when given one ([`Node::with_wg_key`]).
    pub wg_key: Option<WgKeyPair>,
}

impl Node {
    /// A node whose `eth0` is one end of a veth pair whose other end stays in the same
    /// namespace (this kernel has no `dummy`), so nothing real is behind it.
    pub fn standalone(tag: &str, addr: &str, subnet: &str, mac: Mac) -> Node {
        let ns = Netns::new(tag);
        ns.ip("link add eth0 type veth peer name eth0-stub");
        ns.ip(&format!("addr add {addr}/24 dev eth0"));
        ns.ip("link set eth0-stub up");
        ns.ip("link set eth0 up");
        Node {
            ns,
            addr: addr.into(),
            subnet: subnet.into(),
            mac,
            v6: None,
            wg_key: None,
        }
    }

    /// Reconcile the node's kernel to `want`, twice: the second must find nothing to do.
    pub fn program(&self, want: KernelState) -> ReconcileReport {
        let r = self.ns.run(move || async move {
            let mut dp = Dataplane::new().expect("dataplane");
            let r = dp.reconcile(&want).await.expect("reconcile");
            let again = dp.reconcile(&want).await.expect("reconcile again");
            assert_eq!(again.ops_planned, 0, "not idempotent: {again:?}");
            r
        });
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        r
    }

    /// A bridge standing in for `cni0`, with the pod subnet's first address `v4`.
    pub fn pod_gateway(&self, v4: &str) {
        self.ns.ip("link add cni0 type bridge");
        self.ns.ip(&format!("addr add {v4} dev cni0"));
        self.ns.ip("link set cni0 up");
    }

    /// Two pings from `src` (a local address) to `dst`, which must be answered.
    pub fn ping_from(&self, src: &str, dst: &str) {
        let args = format!("-n -q -c 2 -i 0.2 -W 2 -I {src} {dst}");
        if let Err(e) = self.ns.exec("ping", &args) {
            panic!("ping {src} -> {dst} from {}: {e}", self.ns.name);
        }
    }

    /// Give the node a fresh WireGuard key pair.
    pub fn with_wg_key(mut self) -> Node {
        let key = WgSecret::generate().expect("random key");
        self.wg_key = Some(WgKeyPair::new(key));
        self
    }

    /// Make the node dual-stack: `addr6`/64 on eth0 and an IPv6 pod subnet.
    pub fn with_v6(mut self, addr6: &str, subnet6: &str) -> Node {
        self.ns.ip(&format!("addr add {addr6}/64 dev eth0 nodad"));
        self.v6 = Some((addr6.into(), subnet6.into()));
        self
    }

    /// The usual pair on the underlay `{net}.0/24`: node i (1 or 2) at `{net}.i`, with pod
    /// subnet 10.244.i.0/24 and VTEP MAC 02:aa:00:00:00:0i.
    pub fn pair_on(net: &str) -> (Node, Node) {
        let [a, b] = [1u8, 2].map(|i| {
            (
                format!("{net}.{i}"),
                format!("10.244.{i}.0/24"),
                Mac([0x02, 0xaa, 0, 0, 0, i]),
            )
        });
        Node::pair((&a.0, &a.1, a.2), (&b.0, &b.1, b.2))
    }

    /// Two nodes whose `eth0`s are the two ends of one veth pair: a real underlay.
    pub fn pair(a: (&str, &str, Mac), b: (&str, &str, Mac)) -> (Node, Node) {
        let na = Netns::new("a");
        let nb = Netns::new("b");
        na.ip(&format!(
            "link add eth0 type veth peer name eth0 netns {}",
            nb.name
        ));
        let mut nodes = Vec::new();
        for (ns, (addr, subnet, mac)) in [(na, a), (nb, b)] {
            ns.ip(&format!("addr add {addr}/24 dev eth0"));
            ns.ip("link set eth0 up");
            nodes.push(Node {
                ns,
                addr: addr.into(),
                subnet: subnet.into(),
                mac,
                v6: None,
                wg_key: None,
            });
        }
        let b = nodes.pop().expect("node b");
        let a = nodes.pop().expect("node a");
        (a, b)
    }

    pub fn lease(&self) -> LocalLease {
        let index = self.ns.ifindex("eth0");
        let addr: std::net::Ipv4Addr = self.addr.parse().expect("node address");
        let v6 = self.v6.as_ref().map(|(a, s)| {
            let a: std::net::Ipv6Addr = a.parse().expect("node address v6");
            (a, s.parse().expect("subnet v6"))
        });
        LocalLease {
            node_name: self.ns.name.clone(),
            subnet_v4: Some(self.subnet.parse().expect("subnet")),
            subnet_v6: v6.map(|(_, s)| s),
            public_ip_v4: Some(addr),
            public_ip_v6: v6.map(|(a, _)| a),
            public_ip_override_v4: None,
            public_ip_override_v6: None,
            underlay: Underlay {
                name: "eth0".into(),
                index,
                mtu: 1500,
                addr_v4: Some(ipnetwork::Ipv4Network::new(addr, 24).expect("prefix")),
                addr_v6: v6.map(|(a, _)| ipnetwork::Ipv6Network::new(a, 64).expect("prefix")),
                routes: Vec::new(),
            },
            vtep_mac_v4: self.mac,
            vtep_mac_v6: v6_mac(self.mac),
            wg_key: self.wg_key,
            wireguard_kernel: true,
        }
    }
}

/// A peer Node as the API would show it.
#[derive(Debug, Clone)]
pub struct PeerNode {
    pub name: String,
    pub subnet: String,
    pub public_ip: String,
    pub mac: Mac,
    pub vni: u32,
    /// IPv6 public IP and pod subnet, for dual-stack peers (VTEP MAC: [`v6_mac`]).
    pub v6: Option<(String, String)>,
    /// The backend the peer advertises: `vxlan`, `host-gw`, `ipip` or `wireguard`.
    pub backend: &'static str,
    /// The WireGuard public key it advertises (with `wireguard`).
    pub wg_key: Option<WgKey>,
}

/// The MAC of a node's IPv6 VXLAN device, derived from its IPv4 one.
pub fn v6_mac(m: Mac) -> Mac {
    Mac([m.0[0], 0x66, m.0[2], m.0[3], m.0[4], m.0[5]])
}

impl PeerNode {
    pub fn new(i: u8, public_ip: &str) -> PeerNode {
        PeerNode {
            name: format!("peer-{i}"),
            subnet: format!("10.244.{i}.0/24"),
            public_ip: public_ip.into(),
            mac: Mac([0x0a, 0x58, 0, 0, 0, i]),
            vni: 1,
            v6: None,
            backend: "vxlan",
            wg_key: None,
        }
    }

    /// Peer number `i` of many (up to 65535): subnet 10.<i/256>.<i%256>.0/24 (needs Network
    /// 10.0.0.0/8), public IP 172.16.<i/256>.<i%256>.
    pub fn numbered(i: u32) -> PeerNode {
        let (hi, lo) = (i / 256, i % 256);
        let b = i.to_be_bytes();
        PeerNode {
            name: format!("peer-{i}"),
            subnet: format!("10.{hi}.{lo}.0/24"),
            public_ip: format!("172.16.{hi}.{lo}"),
            mac: Mac([0x0a, 0x58, 0, b[1], b[2], b[3]]),
            vni: 1,
            v6: None,
            backend: "vxlan",
            wg_key: None,
        }
    }

    /// The peer as seen by the other side of a [`Node::pair`].
    pub fn of(node: &Node) -> PeerNode {
        PeerNode {
            name: node.ns.name.clone(),
            subnet: node.subnet.clone(),
            public_ip: node.addr.clone(),
            mac: node.mac,
            vni: 1,
            v6: node.v6.clone(),
            backend: "vxlan",
            wg_key: node.wg_key.map(|k| k.public),
        }
    }

    pub fn with_backend(mut self, backend: &'static str) -> PeerNode {
        self.backend = backend;
        self
    }

    pub fn with_v6(mut self, public_ip6: &str, subnet6: &str) -> PeerNode {
        self.v6 = Some((public_ip6.into(), subnet6.into()));
        self
    }

    /// The Node with the annotations flannel writes for such a peer.
    pub fn info(&self) -> NodeInfo {
        let vxlan = |vtep_mac| VxlanData {
            vni: self.vni,
            vtep_mac,
            port: None,
        };
        let mut pod_cidrs = vec![self.subnet.clone()];
        let mut public_ipv6 = None;
        if let Some((ip6, subnet6)) = &self.v6 {
            public_ipv6 = Some(ip6.parse().expect("an IPv6 address"));
            pod_cidrs.push(subnet6.clone());
        }
        let backend_type: BackendType = self.backend.parse().expect("a known backend");
        let wg = self.wg_key.map(|public_key| {
            BackendData::Wireguard(WireguardData {
                public_key,
                port: Some(51820),
            })
        });
        let data = |d| match backend_type {
            BackendType::Vxlan => Some(BackendData::Vxlan(d)),
            BackendType::Wireguard => wg,
            _ => None,
        };
        let a = Advertisement {
            backend_type,
            data_v4: data(vxlan(self.mac)),
            data_v6: data(vxlan(v6_mac(self.mac))),
            public_ip: Some(self.public_ip.parse().expect("an IPv4 address")),
            public_ipv6,
        }
        .to_annotations(&AnnotationKeys::default());
        NodeInfo {
            name: self.name.clone(),
            pod_cidrs,
            annotations: a,
            created_unix: None,
        }
    }

    /// The peer's gateway (`.0` of its subnet), as ARP entries and routes name it.
    pub fn gateway(&self) -> String {
        self.subnet.trim_end_matches("/24").to_string()
    }
}

/// IPv4-only pod network 10.244.0.0/16 with this backend (`vxlan`, `host-gw`, `ipip`).
pub fn backend_config(backend: &str) -> NetConfig {
    let json = format!(r#"{{"Network": "10.244.0.0/16", "Backend": {{"Type": "{backend}"}}}}"#);
    match NetConfig::parse(&json) {
        Ok(p) => p.config,
        Err(e) => panic!("{json}: {e}"),
    }
}

pub fn dual_vxlan_config() -> NetConfig {
    let json = r#"{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:10:244::/56", "Backend": {"Type": "vxlan"}}"#;
    match NetConfig::parse(json) {
        Ok(p) => p.config,
        Err(e) => panic!("{json}: {e}"),
    }
}

/// VXLAN on the pod network 10.0.0.0/8, room for [`PeerNode::numbered`] peers.
pub fn wide_vxlan_config() -> NetConfig {
    let json = r#"{"Network": "10.0.0.0/8", "Backend": {"Type": "vxlan"}}"#;
    match NetConfig::parse(json) {
        Ok(p) => p.config,
        Err(e) => panic!("{json}: {e}"),
    }
}

pub fn vxlan_config(vni: u32, port: u16) -> NetConfig {
    let json = format!(
        r#"{{"Network": "10.244.0.0/16", "Backend": {{"Type": "vxlan", "VNI": {vni}, "Port": {port}}}}}"#
    );
    match NetConfig::parse(&json) {
        Ok(p) => p.config,
        Err(e) => panic!("{json}: {e}"),
    }
}

/// The kernel part of what the real planner wants for this node and peers.
pub fn desired(lease: LocalLease, config: &NetConfig, peers: &[PeerNode]) -> KernelState {
    let mut view = ClusterView::new(lease, AnnotationKeys::default());
    for p in peers {
        view.upsert_node(&p.info());
    }
    let plan = plan(&view, config, &PlanOptions::default()).expect("plan");
    assert!(plan.skipped.is_empty(), "peers skipped: {:?}", plan.skipped);
    assert_eq!(plan.peers, peers.len());
    plan.state.kernel
}

/// `ip route show proto 116` as "dst via gw dev d [onlink]" lines, sorted.
pub fn trellis_routes(ns: &Netns) -> Vec<String> {
    routes_of(ns, "-4")
}

/// Same for IPv6.
pub fn trellis_routes6(ns: &Netns) -> Vec<String> {
    routes_of(ns, "-6")
}

fn routes_of(ns: &Netns, family: &str) -> Vec<String> {
    sorted_lines(
        &ns.ip_json(&format!("{family} route show proto 116")),
        |r| {
            let onlink = strs(&r["flags"]).contains(&"onlink");
            format!(
                "{} via {} dev {}{}",
                str_or(&r["dst"]),
                str_or(&r["gateway"]),
                str_or(&r["dev"]),
                if onlink { " onlink" } else { "" }
            )
        },
    )
}

/// `ip neigh show dev D` as "ip lladdr mac state", sorted.
pub fn neighbours(ns: &Netns, dev: &str) -> Vec<String> {
    sorted_lines(&ns.ip_json(&format!("neigh show dev {dev}")), |n| {
        format!(
            "{} lladdr {} {}",
            str_or(&n["dst"]),
            str_or(&n["lladdr"]),
            strs(&n["state"]).join(",")
        )
    })
}

/// `bridge fdb show dev D` as "mac dst ip [permanent]" for entries with a destination, sorted.
pub fn fdb(ns: &Netns, dev: &str) -> Vec<String> {
    let out = ns.bridge(&format!("-j fdb show dev {dev}"));
    let entries: Vec<Value> = match serde_json::from_str(&out) {
        Ok(Value::Array(v)) => v,
        _ => Vec::new(),
    };
    let with_dst: Vec<Value> = entries
        .into_iter()
        .filter(|e| e["dst"].is_string())
        .collect();
    sorted_lines(&with_dst, |e| {
        let permanent = e["state"].as_str() == Some("permanent");
        format!(
            "{} dst {}{}",
            str_or(&e["mac"]),
            str_or(&e["dst"]),
            if permanent { " permanent" } else { "" }
        )
    })
}

/// One line per JSON entry, sorted.
fn sorted_lines(entries: &[Value], line: impl Fn(&Value) -> String) -> Vec<String> {
    let mut out: Vec<String> = entries.iter().map(line).collect();
    out.sort();
    out
}

/// A JSON string, or "?".
fn str_or(v: &Value) -> &str {
    v.as_str().unwrap_or("?")
}

/// The strings of a JSON array (none for anything else).
fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
        .unwrap_or_default()
}

/// What the kernel must show for these peers on `dev`, in the three formats above.
pub fn expected_entries(peers: &[PeerNode], dev: &str) -> (Vec<String>, Vec<String>, Vec<String>) {
    let mut routes: Vec<String> = peers
        .iter()
        .map(|p| format!("{} via {} dev {dev} onlink", p.subnet, p.gateway()))
        .collect();
    let mut neigh: Vec<String> = peers
        .iter()
        .map(|p| format!("{} lladdr {} PERMANENT", p.gateway(), p.mac))
        .collect();
    let mut fdb: Vec<String> = peers
        .iter()
        .map(|p| format!("{} dst {} permanent", p.mac, p.public_ip))
        .collect();
    routes.sort();
    neigh.sort();
    fdb.sort();
    (routes, neigh, fdb)
}

/// Asserts that `ns` shows exactly [`expected_entries`] for `peers` on `dev`.
pub fn assert_entries(ns: &Netns, peers: &[PeerNode], dev: &str) {
    let (routes, neigh, fdb_want) = expected_entries(peers, dev);
    assert_eq!(trellis_routes(ns), routes);
    assert_eq!(neighbours(ns, dev), neigh);
    assert_eq!(fdb(ns, dev), fdb_want);
}

/// Asserts that `ns` shows exactly [`expected_entries6`] for `peers` on `dev`.
pub fn assert_entries6(ns: &Netns, peers: &[PeerNode], dev: &str) {
    let (routes, neigh, fdb_want) = expected_entries6(peers, dev);
    assert_eq!(trellis_routes6(ns), routes);
    assert_eq!(neighbours(ns, dev), neigh);
    assert_eq!(fdb(ns, dev), fdb_want);
}

/// `ip -n NS ARGS` by namespace name, for code already running inside the namespace's thread.
pub fn ip_n(ns: &str, args: &str) {
    tool_n("ip", ns, args)
}

/// `bridge -n NS ARGS` by namespace name.
pub fn bridge_n(ns: &str, args: &str) {
    tool_n("bridge", ns, args)
}

fn tool_n(tool: &str, ns: &str, args: &str) {
    let out = Command::new(tool)
        .args(["-n", ns])
        .args(args.split_whitespace())
        .output()
        .unwrap_or_else(|e| panic!("run {tool}: {e}"));
    assert!(
        out.status.success(),
        "{tool} -n {ns} {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// [`expected_entries`] for the peers' IPv6 side on `dev`.
pub fn expected_entries6(peers: &[PeerNode], dev: &str) -> (Vec<String>, Vec<String>, Vec<String>) {
    let mut routes = Vec::new();
    let mut neigh = Vec::new();
    let mut fdb = Vec::new();
    for p in peers {
        let Some((ip6, subnet6)) = &p.v6 else {
            continue;
        };
        let gw = subnet6.split('/').next().unwrap_or_default();
        routes.push(format!("{subnet6} via {gw} dev {dev} onlink"));
        neigh.push(format!("{gw} lladdr {} PERMANENT", v6_mac(p.mac)));
        fdb.push(format!("{} dst {ip6} permanent", v6_mac(p.mac)));
    }
    routes.sort();
    neigh.sort();
    fdb.sort();
    (routes, neigh, fdb)
}

//! The WireGuard generic netlink layer (`dataplane::netlink::wireguard`) against a kernel.
//! This host's kernel has no WireGuard, so the tests that need it are ignored here and run in
//! the test VM (hack/vm), whose kernel has it:
//!
//! ```sh
//! hack/vm/test-wireguard.sh   # builds this test binary, boots the VM, runs the ignored tests
//! ```

use std::collections::HashMap;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::{Duration, Instant, SystemTime};

use ipnetwork::IpNetwork;
use trellis_agent::dataplane::netlink::wireguard::{
    WgDeviceState, WgError, WgKey, WgPeerConfig, WgPeerState, WgSocket,
};
use trellis_testkit::Netns;

/// A Curve25519 private key: 32 random bytes, clamped as `wg genkey` clamps them.
fn random_key() -> WgKey {
    let mut k = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut k))
        .expect("read /dev/urandom");
    k[0] &= 248;
    k[31] = (k[31] & 127) | 64;
    k
}

fn netns(prefix: &str) -> Netns {
    Netns::new(prefix).unwrap_or_else(|e| panic!("{e}"))
}

fn batch(ns: &Netns, lines: &str) {
    ns.ip_batch(lines)
        .unwrap_or_else(|e| panic!("ip -n {} -batch: {e}\n{lines}", ns.name));
}

/// Runs `f` with a socket opened inside `ns`.
fn in_ns<R: Send + 'static>(ns: &Netns, f: impl FnOnce(&mut WgSocket) -> R + Send + 'static) -> R {
    ns.enter(move || {
        let mut wg = WgSocket::open().unwrap_or_else(|e| panic!("{e}"));
        f(&mut wg)
    })
    .unwrap_or_else(|e| panic!("in {}: {e}", ns.name))
}

fn device(ns: &Netns, ifname: &'static str) -> WgDeviceState {
    in_ns(ns, move |wg| wg.device(ifname))
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("no {ifname} in {}", ns.name))
}

/// Sets the device's key and port; its public key, which the kernel derives.
fn configure(ns: &Netns, ifname: &'static str, key: WgKey, port: u16) -> WgKey {
    let state = in_ns(ns, move |wg| {
        wg.set_device(ifname, &key, port)?;
        wg.device(ifname)
    })
    .unwrap_or_else(|e| panic!("{e}"))
    .expect("the device");
    assert_eq!(state.private_key, Some(key));
    assert_eq!(state.listen_port, port);
    state
        .public_key
        .expect("a public key once the private key is set")
}

fn set_peers(ns: &Netns, ifname: &'static str, peers: Vec<WgPeerConfig>) {
    in_ns(ns, move |wg| wg.set_peers(ifname, &peers)).unwrap_or_else(|e| panic!("{e}"));
}

fn nets(list: &[&str]) -> Vec<IpNetwork> {
    let mut v: Vec<IpNetwork> = list.iter().map(|s| s.parse().expect("a prefix")).collect();
    v.sort();
    v
}

fn sorted(mut v: Vec<IpNetwork>) -> Vec<IpNetwork> {
    v.sort();
    v
}

/// Two namespaces joined by a veth (`va` in the first, `vb` in the second), each given
/// `setup(veth, n)` as an `ip -batch` (n = 1, 2).
fn pair(prefix: &str, setup: impl Fn(&str, u8) -> String) -> (Netns, Netns) {
    let (a, b) = (netns(&format!("{prefix}-a")), netns(&format!("{prefix}-b")));
    a.ip(&[
        "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", &b.name,
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    batch(&a, &setup("va", 1));
    batch(&b, &setup("vb", 2));
    (a, b)
}

fn ping(ns: &Netns, args: &[&str]) {
    let mut all = vec!["ping", "-n", "-c", "3", "-i", "0.2", "-W", "2"];
    all.extend_from_slice(args);
    if let Err(e) = ns.exec(&all) {
        panic!("ping {args:?} from {}: {e}", ns.name);
    }
}

#[test]
fn without_wireguard_open_says_so() {
    match WgSocket::open() {
        Err(e @ WgError::Unsupported) => {
            let text = e.to_string();
            assert!(text.contains("modprobe wireguard"), "{text}");
        }
        Ok(_) => eprintln!("skipped: this kernel has WireGuard (the VM tests cover it)"),
        Err(e) => panic!("expected Unsupported or a socket, got: {e}"),
    }
}

/// Two namespaces joined by a veth, a `wg0` in each, configured only through `WgSocket`: a
/// ping through the tunnel proves the configuration, then everything is read back.
#[test]
#[ignore = "needs a kernel with WireGuard: run in hack/vm (hack/vm/test-wireguard.sh)"]
fn two_namespaces_talk_through_the_tunnel_and_read_it_back() {
    trellis_testkit::require_root();
    let (a, b) = pair("trl-wg", |veth, n| {
        format!(
            "addr add 192.168.77.{n}/24 dev {veth}\nlink set {veth} up\n\
             link add wg0 type wireguard\naddr add 10.77.0.{n}/24 dev wg0\n\
             addr add fd77::{n}/64 dev wg0 nodad\n"
        )
    });

    let ifindex = fresh_device_is_empty(&a, "wg0");

    let (ka, kb, psk) = (random_key(), random_key(), random_key());
    let pa = configure(&a, "wg0", ka, 51820);
    let pb = configure(&b, "wg0", kb, 51821);
    let to_b = WgPeerConfig {
        public_key: pb,
        preshared_key: Some(psk),
        endpoint: "192.168.77.2:51821".parse().expect("addr"),
        persistent_keepalive: 0,
        allowed_ips: nets(&["10.77.0.2/32", "fd77::2/128"]),
    };
    let to_a = WgPeerConfig {
        public_key: pa,
        preshared_key: Some(psk),
        endpoint: "192.168.77.1:51820".parse().expect("addr"),
        persistent_keepalive: 25,
        allowed_ips: nets(&["10.77.0.1/32", "fd77::1/128"]),
    };
    set_peers(&a, "wg0", vec![to_b.clone()]);
    set_peers(&b, "wg0", vec![to_a.clone()]);
    for ns in [&a, &b] {
        batch(ns, "link set wg0 up\n");
    }
    let before = SystemTime::now();
    ping(&a, &["10.77.0.2"]);
    ping(&b, &["-6", "fd77::1"]);

    let got = device(&a, "wg0");
    println!("after the pings, a: {got:?}");
    assert_eq!(got.ifindex, ifindex);
    assert_eq!(got.private_key, Some(ka));
    assert_eq!(got.public_key, Some(pa));
    assert_eq!(got.listen_port, 51820);
    assert_eq!(got.peers.len(), 1);
    check_peer_after_ping(&got.peers[0], &to_b, before);
    let on_b = device(&b, "wg0");
    assert_eq!(on_b.peers.len(), 1);
    check_peer_after_ping(&on_b.peers[0], &to_a, before);

    update_replaces_allowed_ips(&a, to_b);
    refusals(&a);
    own_key_is_ignored(&a, pa);

    // Removal, twice: the second finds nothing to remove and is no error.
    for _ in 0..2 {
        in_ns(&a, move |wg| wg.remove_peers("wg0", &[pb])).unwrap_or_else(|e| panic!("{e}"));
        let left = device(&a, "wg0");
        assert!(left.peers.is_empty(), "{left:?}");
        assert_eq!(left.public_key, Some(pa));
    }
}

/// A device fresh from `ip link add` reads as no key, no port, no peers; its ifindex.
fn fresh_device_is_empty(ns: &Netns, ifname: &'static str) -> u32 {
    let fresh = device(ns, ifname);
    println!("fresh device: {fresh:?}");
    assert_eq!(fresh.ifindex, device_index(ns, ifname));
    assert_eq!((fresh.private_key, fresh.public_key), (None, None));
    assert_eq!(fresh.listen_port, 0);
    assert!(fresh.peers.is_empty());
    fresh.ifindex
}

/// A peer read back after a ping through it: as configured, and a handshake just now.
fn check_peer_after_ping(got: &WgPeerState, want: &WgPeerConfig, before: SystemTime) {
    assert_eq!(got.public_key, want.public_key);
    assert_eq!(got.preshared_key, want.preshared_key);
    assert_eq!(got.endpoint, Some(want.endpoint));
    assert_eq!(got.persistent_keepalive, want.persistent_keepalive);
    assert_eq!(
        sorted(got.allowed_ips.clone()),
        sorted(want.allowed_ips.clone())
    );
    let shaken = got.last_handshake.expect("a handshake after the ping");
    let since = shaken.duration_since(before - Duration::from_secs(5));
    assert!(
        since.is_ok_and(|d| d < Duration::from_secs(60)),
        "{shaken:?}"
    );
    assert!(got.rx_bytes > 0 && got.tx_bytes > 0, "{got:?}");
}

/// An update replaces the allowed IPs (host bits cleared by the kernel) and drops the
/// preshared key.
fn update_replaces_allowed_ips(a: &Netns, to_b: WgPeerConfig) {
    let update = WgPeerConfig {
        preshared_key: None,
        allowed_ips: nets(&["10.77.0.2/32", "10.77.9.7/24"]),
        ..to_b
    };
    set_peers(a, "wg0", vec![update]);
    let peer = device(a, "wg0").peers.remove(0);
    assert_eq!(peer.preshared_key, None);
    assert_eq!(
        sorted(peer.allowed_ips),
        nets(&["10.77.0.2/32", "10.77.9.0/24"])
    );
}

/// What the kernel refuses or ignores, and how it reads.
fn refusals(a: &Netns) {
    let r = in_ns(a, |wg| {
        let peer = WgPeerConfig {
            public_key: random_key(),
            preshared_key: None,
            endpoint: "192.0.2.1:1".parse().expect("addr"),
            persistent_keepalive: 0,
            allowed_ips: Vec::new(),
        };
        (
            wg.device("nope0").map(|d| d.is_none()),
            wg.device("va").map_err(|e| (e.errno(), e.to_string())),
            wg.set_peers("nope0", std::slice::from_ref(&peer))
                .map_err(|e| (e.errno(), e.to_string())),
            wg.set_device("va", &random_key(), 1)
                .map_err(|e| (e.errno(), e.to_string())),
        )
    });
    println!("refusals: {r:?}");
    assert!(matches!(r.0, Ok(true)), "{:?}", r.0);
    assert!(
        matches!(&r.1, Err((Some(libc::EOPNOTSUPP), _))),
        "{:?}",
        r.1
    );
    let Err((Some(libc::ENODEV), text)) = &r.2 else {
        panic!("{:?}", r.2)
    };
    assert!(text.contains("ip link add NAME type wireguard"), "{text}");
    assert!(
        matches!(&r.3, Err((Some(libc::EOPNOTSUPP), _))),
        "{:?}",
        r.3
    );
}

/// A peer with the device's own public key is dropped without an error.
fn own_key_is_ignored(a: &Netns, own: WgKey) {
    let me = WgPeerConfig {
        public_key: own,
        preshared_key: None,
        endpoint: "192.0.2.1:1".parse().expect("addr"),
        persistent_keepalive: 0,
        allowed_ips: nets(&["10.77.8.0/24"]),
    };
    set_peers(a, "wg0", vec![me]);
    let keys: Vec<_> = device(a, "wg0")
        .peers
        .iter()
        .map(|p| p.public_key)
        .collect();
    assert!(!keys.contains(&own));
}

/// Endpoints over IPv6: a link-local one needs its scope id (the link), a global one not.
#[test]
#[ignore = "needs a kernel with WireGuard: run in hack/vm (hack/vm/test-wireguard.sh)"]
fn ipv6_endpoints_link_local_with_scope_and_global() {
    trellis_testkit::require_root();
    let (a, b) = pair("trl-wg6", |veth, n| {
        format!(
            "addr add fe80::77:{n}/64 dev {veth} nodad\naddr add fd00:77::{n}/64 dev {veth} nodad\n\
             link set {veth} up\nlink add wg1 type wireguard\naddr add 10.78.0.{n}/24 dev wg1\n"
        )
    });
    let va = device_index(&a, "va");
    let pa = configure(&a, "wg1", random_key(), 51830);
    let pb = configure(&b, "wg1", random_key(), 51831);
    let fe80_77_2 = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0x77, 2);
    let link_local = SocketAddr::V6(SocketAddrV6::new(fe80_77_2, 51831, 0, va));
    let peer = |key, endpoint, ip: &str| WgPeerConfig {
        public_key: key,
        preshared_key: None,
        endpoint,
        persistent_keepalive: 0,
        allowed_ips: nets(&[ip]),
    };
    set_peers(&a, "wg1", vec![peer(pb, link_local, "10.78.0.2/32")]);
    let global = SocketAddr::new(IpAddr::V6("fd00:77::1".parse().expect("ip")), 51830);
    set_peers(&b, "wg1", vec![peer(pa, global, "10.78.0.1/32")]);
    // The scope id is kept as given.
    assert_eq!(device(&a, "wg1").peers[0].endpoint, Some(link_local));
    assert_eq!(device(&b, "wg1").peers[0].endpoint, Some(global));
    for ns in [&a, &b] {
        batch(ns, "link set wg1 up\n");
    }
    ping(&a, &["10.78.0.2"]);
    let got = device(&a, "wg1");
    println!("a after the ping: {got:?}");
    assert!(got.peers[0].last_handshake.is_some());

    // Without the scope id the kernel would take the endpoint and send on whichever link's
    // fe80::/64 route comes first: refused before anything is sent.
    let unscoped = SocketAddr::V6(SocketAddrV6::new(fe80_77_2, 51831, 0, 0));
    let bad = peer(pb, unscoped, "10.78.0.2/32");
    let r = in_ns(&a, move |wg| wg.set_peers("wg1", &[bad]));
    assert!(matches!(r, Err(WgError::Unscoped(_))), "{r:?}");
    assert_eq!(device(&a, "wg1").peers[0].endpoint, Some(link_local));
}

fn device_index(ns: &Netns, ifname: &str) -> u32 {
    let out = ns
        .ip(&["-j", "link", "show", "dev", ifname])
        .unwrap_or_else(|e| panic!("{e}"));
    let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j output");
    v[0]["ifindex"]
        .as_u64()
        .and_then(|i| u32::try_from(i).ok())
        .expect("an ifindex")
}

/// Peer `n` of many: a /24 and a /64 of its own, an endpoint, every third with a keepalive,
/// every other with a preshared key.
fn many(n: u32) -> WgPeerConfig {
    let v4 = Ipv4Addr::from(0x0a00_0000 | (n << 8));
    let v6 = Ipv6Addr::new(0xfd00, 0, 0, n as u16, 0, 0, 0, 0);
    WgPeerConfig {
        public_key: random_key(),
        preshared_key: n.is_multiple_of(2).then(random_key),
        endpoint: SocketAddr::from(([192, 0, 2, (n % 250 + 1) as u8], 10000 + n as u16)),
        persistent_keepalive: if n.is_multiple_of(3) { 25 } else { 0 },
        allowed_ips: vec![
            IpNetwork::new(IpAddr::V4(v4), 24).expect("a /24"),
            IpNetwork::new(IpAddr::V6(v6), 64).expect("a /64"),
        ],
    }
}

/// One peer with more allowed IPs than a message holds, either way.
fn crowded() -> WgPeerConfig {
    WgPeerConfig {
        allowed_ips: (0..3000u32)
            .map(|i| IpNetwork::new(IpAddr::V4(Ipv4Addr::from(0xac10_0000 | i)), 32))
            .collect::<Result<_, _>>()
            .expect("/32s"),
        ..many(100_000)
    }
}

fn check_round_trip(want: &[WgPeerConfig], got: &WgDeviceState) {
    assert_eq!(got.peers.len(), want.len());
    // The kernel keeps the order peers were added in.
    let by_key: HashMap<WgKey, &WgPeerConfig> = want.iter().map(|p| (p.public_key, p)).collect();
    for (i, p) in got.peers.iter().enumerate() {
        let w = by_key.get(&p.public_key).expect("a peer we set");
        assert_eq!(p.public_key, want[i].public_key, "peer {i} out of order");
        assert_eq!(p.preshared_key, w.preshared_key);
        assert_eq!(p.endpoint, Some(w.endpoint));
        assert_eq!(p.persistent_keepalive, w.persistent_keepalive);
        assert_eq!(
            sorted(p.allowed_ips.clone()),
            sorted(w.allowed_ips.clone()),
            "peer {i}"
        );
    }
}

/// 2000 peers and one with 3000 allowed IPs: split into messages on the way in, merged from
/// the kernel's dump on the way out.
#[test]
#[ignore = "needs a kernel with WireGuard: run in hack/vm (hack/vm/test-wireguard.sh)"]
fn thousands_of_peers_round_trip() {
    trellis_testkit::require_root();
    let ns = netns("trl-wg-many");
    batch(&ns, "link add wg0 type wireguard\n");
    configure(&ns, "wg0", random_key(), 51820);
    let mut want: Vec<WgPeerConfig> = (0..2000).map(many).collect();
    want.insert(1000, crowded());

    let peers = want.clone();
    let (set, read, got) = in_ns(&ns, move |wg| {
        let t = Instant::now();
        wg.set_peers("wg0", &peers)
            .unwrap_or_else(|e| panic!("{e}"));
        let set = t.elapsed();
        let t = Instant::now();
        let got = wg.device("wg0").unwrap_or_else(|e| panic!("{e}"));
        (set, t.elapsed(), got.expect("wg0"))
    });
    println!("2001 peers, 7000 allowed IPs: set in {set:?}, read in {read:?}");
    check_round_trip(&want, &got);

    // Every other peer removed, then all set again: the removed come back (at the end), the
    // others are updated in place without doubling their allowed IPs.
    let gone: Vec<WgKey> = want.iter().step_by(2).map(|p| p.public_key).collect();
    let peers = want.clone();
    let (after_remove, after_set) = in_ns(&ns, move |wg| {
        wg.remove_peers("wg0", &gone)
            .unwrap_or_else(|e| panic!("{e}"));
        let after_remove = wg.device("wg0").unwrap_or_else(|e| panic!("{e}"));
        wg.set_peers("wg0", &peers)
            .unwrap_or_else(|e| panic!("{e}"));
        let after_set = wg.device("wg0").unwrap_or_else(|e| panic!("{e}"));
        (after_remove.expect("wg0"), after_set.expect("wg0"))
    });
    let kept: Vec<WgPeerConfig> = want.iter().skip(1).step_by(2).cloned().collect();
    check_round_trip(&kept, &after_remove);
    let readded: Vec<WgPeerConfig> = kept
        .into_iter()
        .chain(want.iter().step_by(2).cloned())
        .collect();
    check_round_trip(&readded, &after_set);
}

/// The largest message budget (64 KiB, an attribute's length) is one the kernel takes: no
/// other limit (the socket's 208 KiB send buffer) comes first.
#[test]
#[ignore = "needs a kernel with WireGuard: run in hack/vm (hack/vm/test-wireguard.sh)"]
fn messages_of_the_largest_budget_are_accepted() {
    trellis_testkit::require_root();
    let ns = netns("trl-wg-big");
    batch(&ns, "link add wg0 type wireguard\n");
    let peers: Vec<WgPeerConfig> = (0..2000).map(many).collect();
    let want = peers.clone();
    let got = in_ns(&ns, move |wg| {
        // Clamped to MAX_MESSAGE_BUDGET: 2000 peers of 184 bytes in 6 messages.
        wg.set_message_budget(usize::MAX);
        wg.set_peers("wg0", &peers)?;
        wg.device("wg0")
    });
    let got = got.unwrap_or_else(|e| panic!("{e}")).expect("wg0");
    check_round_trip(&want, &got);
}

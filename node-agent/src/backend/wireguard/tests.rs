use ipnetwork::IpNetwork;

use crate::backend::{plan, Plan, PlanError, PlanOptions};
use crate::config::NetConfig;
use crate::dataplane::desired::{KernelState, LinkKind, Route, WgPeer};
use crate::dataplane::diff::{diff, Op};
use crate::view::fixtures::*;
use crate::view::{ClusterView, SkipReason};
use crate::wg_key::{WgKey, WgKeyPair, WgSecret};

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

fn local_key() -> WgKeyPair {
    WgKeyPair::new(WgSecret([0x42; 32]))
}

/// The fixture view, with our WireGuard key, and these peers.
fn view_with(specs: impl IntoIterator<Item = PeerSpec>) -> ClusterView {
    let mut lease = lease();
    lease.wg_key = Some(local_key());
    let mut v = ClusterView::new(lease, Default::default());
    for s in specs {
        v.upsert_node(&s.node());
    }
    v
}

fn wg_config(backend: &str) -> NetConfig {
    config(&format!(
        r#"{{"Network": "10.244.0.0/16", "Backend": {backend}}}"#
    ))
}

fn plan_of(view: &ClusterView, cfg: &NetConfig) -> Plan {
    plan(view, cfg, &PlanOptions::default()).unwrap_or_else(|e| panic!("{e}"))
}

fn peer<'a>(k: &'a KernelState, link: &str, i: u32) -> &'a WgPeer {
    &k.wg_peers[&(link.to_string(), peer_wg_key(i))]
}

fn device_route(dst: &str, dev: &str) -> Route {
    Route {
        dst: net(dst),
        gateway: None,
        dev: dev.into(),
        onlink: false,
    }
}

#[test]
fn own_wireguard_is_flannels_device_route_and_peers() {
    let cfg = wg_config(r#"{"Type": "wireguard"}"#);
    let p = plan_of(&view_with([PeerSpec::new(2, "wireguard")]), &cfg);
    let k = &p.state.kernel;
    let dev = &k.links["flannel-wg"];
    let LinkKind::Wireguard(w) = dev.kind else {
        panic!("{dev}")
    };
    assert_eq!((w.private_key, w.listen_port), (local_key().private, 51820));
    // flannel: MTU = underlay − 80, the subnet's .0/32 on the device, the whole network
    // routed through it, pods told the device's MTU.
    assert_eq!(dev.mtu, 1420);
    assert_eq!(p.state.mtu, 1420);
    assert_eq!(p.state.subnet_env.mtu, 1420);
    assert!(k
        .addresses
        .iter()
        .any(|a| a.link == "flannel-wg" && a.addr == net("10.244.1.0/32")));
    assert_eq!(
        k.routes[&net("10.244.0.0/16")],
        device_route("10.244.0.0/16", "flannel-wg")
    );
    assert_eq!(k.routes.len(), 1, "no route per peer: {:?}", k.routes);
    let p2 = peer(k, "flannel-wg", 2);
    assert_eq!(p2.endpoint, "192.168.1.2:51820".parse().unwrap());
    assert_eq!(p2.allowed_ips, vec![net("10.244.2.0/24")]);
    assert_eq!((p2.keepalive, p2.psk), (0, None));
    let adv = p.state.advertisement.to_annotations(&Default::default());
    assert_eq!(
        adv["flannel.alpha.coreos.com/backend-data"],
        format!(r#"{{"PublicKey":"{}","Port":51820}}"#, local_key().public)
    );
    assert_eq!(adv["flannel.alpha.coreos.com/backend-type"], "wireguard");
}

#[test]
fn options_reach_the_device_and_every_peer() {
    let psk = "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=";
    let cfg = wg_config(&format!(
        r#"{{"Type": "wireguard", "ListenPort": 4000, "PSK": "{psk}",
             "PersistentKeepaliveInterval": 25, "MTU": 1400}}"#
    ));
    let p = plan_of(&view_with([PeerSpec::new(2, "wireguard")]), &cfg);
    let k = &p.state.kernel;
    assert_eq!(k.links["flannel-wg"].mtu, 1320);
    let p2 = peer(k, "flannel-wg", 2);
    assert_eq!(p2.keepalive, 25);
    assert_eq!(p2.psk, Some(WgSecret::parse(psk).unwrap()));
    // The peer advertises 51820; our own port does not change where we send.
    assert_eq!(p2.endpoint.port(), 51820);
    assert!(p
        .state
        .advertisement
        .to_annotations(&Default::default())
        .values()
        .any(|v| v.contains(r#""Port":4000"#)));
}

#[test]
fn a_peer_without_a_port_is_reached_on_our_listen_port() {
    let cfg = wg_config(r#"{"Type": "wireguard", "ListenPort": 4000}"#);
    let mut node = PeerSpec::new(2, "wireguard").node();
    let data = format!(r#"{{"PublicKey":"{}"}}"#, peer_wg_key(2));
    node.annotations
        .insert("flannel.alpha.coreos.com/backend-data".into(), data);
    let mut v = view_with([]);
    v.upsert_node(&node);
    let p = plan_of(&v, &cfg);
    assert_eq!(peer(&p.state.kernel, "flannel-wg", 2).endpoint.port(), 4000);
}

#[test]
fn separate_mode_gives_each_family_its_device_port_and_peer() {
    let cfg = dual_config(r#"{"Type": "wireguard"}"#);
    let p = plan_of(&view_with([PeerSpec::new(2, "wireguard").dual()]), &cfg);
    let k = &p.state.kernel;
    let LinkKind::Wireguard(w6) = k.links["flannel-wg-v6"].kind else {
        panic!()
    };
    assert_eq!(w6.listen_port, 51821);
    assert_eq!(
        k.routes[&net("fd00:10:244::/56")],
        device_route("fd00:10:244::/56", "flannel-wg-v6")
    );
    let v6 = peer(k, "flannel-wg-v6", 2);
    assert_eq!(v6.endpoint, "[fd00:192::2]:51820".parse().unwrap());
    assert_eq!(v6.allowed_ips, vec![net("fd00:10:244:2::/64")]);
    assert_eq!(
        peer(k, "flannel-wg", 2).allowed_ips,
        vec![net("10.244.2.0/24")]
    );
    let adv = p.state.advertisement.to_annotations(&Default::default());
    assert!(adv["flannel.alpha.coreos.com/backend-v6-data"].ends_with(r#""Port":51821}"#));
}

#[test]
fn single_device_modes_carry_both_families_to_one_endpoint() {
    for (mode, endpoint) in [
        ("ipv4", "192.168.1.2:51820"),
        ("ipv6", "[fd00:192::2]:51820"),
        // Both of the peer's addresses are private: auto keeps IPv4, as flannel does.
        ("auto", "192.168.1.2:51820"),
    ] {
        let cfg = dual_config(&format!(r#"{{"Type": "wireguard", "Mode": "{mode}"}}"#));
        let p = plan_of(&view_with([PeerSpec::new(2, "wireguard").dual()]), &cfg);
        let k = &p.state.kernel;
        assert!(!k.links.contains_key("flannel-wg-v6"), "{mode}");
        let both = peer(k, "flannel-wg", 2);
        assert_eq!(both.endpoint, endpoint.parse().unwrap(), "{mode}");
        assert_eq!(
            both.allowed_ips,
            vec![net("10.244.2.0/24"), net("fd00:10:244:2::/64")]
        );
        assert_eq!(k.wg_peers.len(), 1);
        assert_eq!(
            k.routes[&net("fd00:10:244::/56")].dev,
            "flannel-wg",
            "{mode}"
        );
    }
}

#[test]
fn a_vxlan_node_reaches_a_wireguard_peer_through_a_device_of_its_own() {
    let cfg = wg_config(r#"{"Type": "vxlan"}"#);
    let p = plan_of(
        &view_with([PeerSpec::new(2, "vxlan"), PeerSpec::new(3, "wireguard")]),
        &cfg,
    );
    let k = &p.state.kernel;
    assert!(k.links.contains_key("flannel.1"));
    let LinkKind::Wireguard(w) = k.links["flannel-wg"].kind else {
        panic!()
    };
    assert_eq!(w.listen_port, 51820, "flannel's default port");
    // No pod-network route through it: the peer's subnet only.
    assert_eq!(
        k.routes[&net("10.244.3.0/24")],
        device_route("10.244.3.0/24", "flannel-wg")
    );
    assert!(!k.routes.contains_key(&net("10.244.0.0/16")));
    assert_eq!(k.routes[&net("10.244.2.0/24")].dev, "flannel.1");
    assert_eq!(p.state.mtu, 1450, "pods keep the own backend's MTU");
}

#[test]
fn a_copied_public_key_is_refused_and_the_first_claimant_keeps_it() {
    let cfg = wg_config(r#"{"Type": "wireguard"}"#);
    let honest = PeerSpec {
        created: Some(100),
        ..PeerSpec::new(2, "wireguard")
    };
    let mut thief = PeerSpec {
        created: Some(200),
        ..PeerSpec::new(3, "wireguard")
    }
    .node();
    let copied = format!(r#"{{"PublicKey":"{}","Port":51820}}"#, peer_wg_key(2));
    thief
        .annotations
        .insert("flannel.alpha.coreos.com/backend-data".into(), copied);
    let mut v = view_with([honest]);
    v.upsert_node(&thief);
    let p = plan_of(&v, &cfg);
    assert_eq!(p.peers, 1);
    assert_eq!(
        peer(&p.state.kernel, "flannel-wg", 2).endpoint,
        "192.168.1.2:51820".parse().unwrap()
    );
    assert!(matches!(
        &p.skipped[..],
        [s] if s.node == "node-3"
            && matches!(&s.reason, SkipReason::DuplicateWgKey { other, .. } if other == "node-2")
    ));

    // Our own key is not a peer's to claim.
    let mut mirror = PeerSpec::new(4, "wireguard").node();
    let ours = format!(r#"{{"PublicKey":"{}","Port":51820}}"#, local_key().public);
    mirror
        .annotations
        .insert("flannel.alpha.coreos.com/backend-data".into(), ours);
    v.upsert_node(&mirror);
    let p = plan_of(&v, &cfg);
    assert!(p
        .skipped
        .iter()
        .any(|s| s.node == "node-4" && matches!(s.reason, SkipReason::WgKeyIsLocal { .. })));
}

#[test]
fn without_a_key_wireguard_is_refused_and_the_rest_runs() {
    let mut v = ClusterView::new(lease(), Default::default());
    v.upsert_node(&PeerSpec::new(2, "vxlan").node());
    v.upsert_node(&PeerSpec::new(3, "wireguard").node());
    let own = plan(
        &v,
        &wg_config(r#"{"Type": "wireguard"}"#),
        &Default::default(),
    );
    assert_eq!(own.unwrap_err(), PlanError::NoWireguardKey);
    let p = plan_of(&v, &wg_config(r#"{"Type": "vxlan"}"#));
    assert_eq!(p.peers, 1);
    assert!(p
        .skipped
        .iter()
        .any(|s| s.node == "node-3" && s.reason == SkipReason::WireguardUnavailable));
    assert!(!p.state.kernel.links.contains_key("flannel-wg"));
}

#[test]
fn without_wireguard_in_the_kernel_its_peers_are_skipped_not_retried() {
    let mut lease = lease();
    lease.wg_key = Some(local_key());
    lease.wireguard_kernel = false;
    let mut v = ClusterView::new(lease, Default::default());
    v.upsert_node(&PeerSpec::new(3, "wireguard").node());
    let p = plan_of(&v, &wg_config(r#"{"Type": "vxlan"}"#));
    assert!(matches!(&p.skipped[..], [s] if s.reason == SkipReason::WireguardUnavailable));
    assert!(!p.state.kernel.links.contains_key("flannel-wg"));
    let own = plan(
        &v,
        &wg_config(r#"{"Type": "wireguard"}"#),
        &Default::default(),
    );
    assert_eq!(own.unwrap_err(), PlanError::NoWireguardKey);
}

#[test]
fn diff_replaces_a_moved_peer_and_recreates_a_device_with_another_key() {
    let cfg = wg_config(r#"{"Type": "wireguard"}"#);
    let desired = plan_of(&view_with([PeerSpec::new(2, "wireguard")]), &cfg)
        .state
        .kernel;
    let mut actual = desired.clone();
    let key = ("flannel-wg".to_string(), peer_wg_key(2));
    actual.wg_peers.get_mut(&key).unwrap().endpoint = "10.9.9.9:1".parse().unwrap();
    let ops = diff(&desired, &actual);
    assert!(matches!(&ops[..], [Op::ReplaceWgPeer(p)] if p.public_key == peer_wg_key(2)));

    let mut stale = desired.clone();
    let old = WgKey([7; 32]);
    let mut gone = stale.wg_peers[&key].clone();
    gone.public_key = old;
    stale.add_wg_peer(gone);
    let ops = diff(&desired, &stale);
    assert!(matches!(&ops[..], [Op::DeleteWgPeer(p)] if p.public_key == old));

    let mut other_key = desired.clone();
    if let Some(l) = other_key.links.get_mut("flannel-wg") {
        l.kind = LinkKind::Wireguard(crate::dataplane::desired::Wireguard {
            private_key: WgSecret([9; 32]),
            listen_port: 51820,
        });
    }
    let ops = diff(&desired, &other_key);
    assert!(matches!(&ops[..2], [Op::DeleteLink(n), Op::AddLink(_)] if n == "flannel-wg"));
    assert!(
        ops.iter().any(|o| matches!(o, Op::AddWgPeer(_))),
        "peers are set again on the new device: {ops:?}"
    );
}

#[test]
fn peers_are_rendered_without_secrets() {
    let psk = "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=";
    let cfg = wg_config(&format!(r#"{{"Type": "wireguard", "PSK": "{psk}"}}"#));
    let p = plan_of(&view_with([PeerSpec::new(2, "wireguard")]), &cfg);
    let text = format!("{:?} {}", p.state, peer(&p.state.kernel, "flannel-wg", 2));
    assert!(!text.contains(psk));
    assert!(!text.contains(&local_key().private.to_base64()));
}

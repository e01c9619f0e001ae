use std::net::IpAddr;

use super::*;
use crate::annotations::{AnnotationKeys, BackendData, VxlanData};
use crate::dataplane::desired::{Address, Fdb, Link, LinkKind, Neighbour, Vxlan};
use crate::dataplane::diff::{diff, Op};
use crate::dataplane::fixtures::vxlan_link;
use crate::net::Mac;
use crate::view::fixtures::*;
use crate::view::Missing;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

fn plan_of(view: &ClusterView, cfg: &NetConfig) -> Plan {
    match plan(view, cfg, &PlanOptions::default()) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

fn with_peers(specs: impl IntoIterator<Item = PeerSpec>) -> ClusterView {
    let mut v = view();
    for s in specs {
        v.upsert_node(&s.node());
    }
    v
}

fn flannel1(port: u16, mtu: u32, mac: Option<Mac>, vni: u32) -> Link {
    vxlan_link(&format!("flannel.{vni}"), vni, port, mtu, mac)
}

fn vxlan_entries(i: u32, dev: &str) -> (Neighbour, Fdb, Route) {
    let gw = ip(&format!("10.244.{i}.0"));
    (
        Neighbour {
            link: dev.into(),
            ip: gw,
            mac: peer_mac(i),
        },
        Fdb {
            link: dev.into(),
            mac: peer_mac(i),
            dst: ip(&format!("192.168.1.{i}")),
        },
        Route {
            dst: net(&format!("10.244.{i}.0/24")),
            gateway: Some(gw),
            dev: dev.into(),
            onlink: true,
        },
    )
}

fn vxlan_data(d: Option<BackendData>) -> VxlanData {
    match d {
        Some(BackendData::Vxlan(d)) => d,
        other => panic!("not VXLAN data: {other:?}"),
    }
}

fn has_vxlan_peer(k: &KernelState, i: u32, dev: &str) -> bool {
    let (n, f, r) = vxlan_entries(i, dev);
    k.neighbours.get(&(n.link.clone(), n.ip)) == Some(&n)
        && k.fdb.get(&(f.link.clone(), f.mac)) == Some(&f)
        && k.routes.get(&r.dst) == Some(&r)
}

fn host_route(i: u32) -> Route {
    Route {
        dst: net(&format!("10.244.{i}.0/24")),
        gateway: Some(ip(&format!("192.168.1.{i}"))),
        dev: "eth0".into(),
        onlink: false,
    }
}

#[test]
fn vxlan_without_peers_has_its_device_and_nothing_else() {
    let p = plan_of(&view(), &vxlan_config());
    let k = &p.state.kernel;
    assert_eq!(
        k.links.values().cloned().collect::<Vec<_>>(),
        vec![flannel1(8472, 1450, Some(LOCAL_MAC), 1)]
    );
    assert_eq!(
        k.addresses.iter().cloned().collect::<Vec<_>>(),
        vec![Address {
            link: "flannel.1".into(),
            addr: net("10.244.1.0/32")
        }]
    );
    assert!(k.routes.is_empty() && k.neighbours.is_empty() && k.fdb.is_empty());
    assert_eq!(p.peers, 0);
    assert_eq!(p.state.mtu, 1450);
    let env = &p.state.subnet_env;
    assert_eq!(
        env.render(),
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
    );
    assert_eq!(
        p.state.advertisement,
        Advertisement {
            backend_type: BackendType::Vxlan,
            data_v4: Some(BackendData::Vxlan(VxlanData {
                vni: 1,
                vtep_mac: LOCAL_MAC,
                port: Some(8472)
            })),
            data_v6: None,
            public_ip: Some("192.168.1.1".parse().unwrap()),
            public_ipv6: None,
        }
    );
    assert!(p.state.firewall.v4.len() == 8 && p.state.firewall.v6.is_empty());
}

#[test]
fn vxlan_one_peer_gets_arp_fdb_and_onlink_route() {
    let p = plan_of(&with_peers([PeerSpec::new(2, "vxlan")]), &vxlan_config());
    let k = &p.state.kernel;
    assert_eq!(p.peers, 1);
    assert!(has_vxlan_peer(k, 2, "flannel.1"));
    assert_eq!((k.routes.len(), k.neighbours.len(), k.fdb.len()), (1, 1, 1));
    assert_eq!(
        k.routes.values().next().unwrap().to_string(),
        "10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink proto 116"
    );
}

#[test]
fn vxlan_many_peers() {
    let p = plan_of(
        &with_peers((2..=200).map(|i| PeerSpec::new(i, "vxlan"))),
        &vxlan_config(),
    );
    let k = &p.state.kernel;
    assert_eq!(p.peers, 199);
    assert_eq!(
        (
            k.links.len(),
            k.routes.len(),
            k.neighbours.len(),
            k.fdb.len()
        ),
        (1, 199, 199, 199)
    );
    for i in 2..=200 {
        assert!(has_vxlan_peer(k, i, "flannel.1"), "peer {i}");
    }
}

#[test]
fn vxlan_options_reach_the_device() {
    let cfg = config(
        r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 4096, "Port": 4789, "GBP": true, "Learning": true, "MTU": 1400}}"#,
    );
    let p = plan_of(&with_peers([PeerSpec::new(2, "vxlan").vni(4096)]), &cfg);
    let link = &p.state.kernel.links["flannel.4096"];
    assert_eq!(
        link.kind,
        LinkKind::Vxlan(Vxlan {
            vni: 4096,
            port: 4789,
            local: ip("192.168.1.1"),
            underlay_index: 2,
            learning: true,
            gbp: true
        })
    );
    // Backend.MTU is the underlay's (flannel's meaning): the device takes 50 of it.
    assert_eq!(link.mtu, 1350);
    assert_eq!(p.state.mtu, 1350);
    assert!(has_vxlan_peer(&p.state.kernel, 2, "flannel.4096"));
    assert_eq!(p.state.kernel.links.len(), 1);
    assert_eq!(vxlan_data(p.state.advertisement.data_v4).port, Some(4789));
}

#[test]
fn vxlan_direct_routing_for_peers_on_our_segment_only() {
    let cfg = config(
        r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "DirectRouting": true}}"#,
    );
    let p = plan_of(
        &with_peers([
            PeerSpec::new(2, "vxlan"),
            PeerSpec::new(3, "vxlan").remote(),
        ]),
        &cfg,
    );
    let k = &p.state.kernel;
    assert_eq!(k.routes[&net("10.244.2.0/24")], host_route(2));
    // The remote one goes through the tunnel to its public IP.
    let r3 = &k.routes[&net("10.244.3.0/24")];
    assert_eq!((r3.dev.as_str(), r3.onlink), ("flannel.1", true));
    assert_eq!(k.fdb.len(), 1);
    assert_eq!(k.fdb.values().next().unwrap().dst, ip("172.16.0.3"));
    assert_eq!(k.neighbours.len(), 1);
    assert_eq!(p.peers, 2);
}

#[test]
fn vxlan_peer_on_another_vni_gets_its_own_device() {
    let p = plan_of(
        &with_peers([PeerSpec::new(2, "vxlan"), PeerSpec::new(3, "vxlan").vni(2)]),
        &vxlan_config(),
    );
    let k = &p.state.kernel;
    assert_eq!(
        k.links["flannel.1"],
        flannel1(8472, 1450, Some(LOCAL_MAC), 1)
    );
    // Not our VNI: same options, any MAC (it only sends; peers reach us on flannel.1).
    assert_eq!(k.links["flannel.2"], flannel1(8472, 1450, None, 2));
    assert!(has_vxlan_peer(k, 2, "flannel.1"));
    assert!(has_vxlan_peer(k, 3, "flannel.2"));
    assert!(k.addresses.contains(&Address {
        link: "flannel.2".into(),
        addr: net("10.244.1.0/32")
    }));
}

#[test]
fn dual_stack_vxlan() {
    let cfg = dual_config(r#"{"Type": "vxlan"}"#);
    let p = plan_of(&with_peers([PeerSpec::new(2, "vxlan").dual()]), &cfg);
    let k = &p.state.kernel;
    let v6 = &k.links["flannel-v6.1"];
    assert_eq!(v6.mtu, 1430);
    assert_eq!(v6.mac, Some(LOCAL_MAC6));
    assert!(matches!(v6.kind, LinkKind::Vxlan(Vxlan { local, .. }) if local == ip("fd00:192::1")));
    // Pods get the smaller of the two MTUs.
    assert_eq!(p.state.mtu, 1430);
    assert!(k.addresses.contains(&Address {
        link: "flannel-v6.1".into(),
        addr: net("fd00:10:244:1::/128")
    }));
    let r6 = &k.routes[&net("fd00:10:244:2::/64")];
    assert_eq!(
        (r6.gateway, r6.dev.as_str(), r6.onlink),
        (Some(ip("fd00:10:244:2::")), "flannel-v6.1", true)
    );
    let f6 = k.fdb.values().find(|f| f.link == "flannel-v6.1").unwrap();
    assert_eq!(f6.dst, ip("fd00:192::2"));
    assert_eq!(f6.mac.0[1], 0x66);
    assert!(has_vxlan_peer(k, 2, "flannel.1"));
    assert_eq!(
        p.state.subnet_env.render(),
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n"
    );
    assert_eq!(
        vxlan_data(p.state.advertisement.data_v6).vtep_mac,
        LOCAL_MAC6
    );
    assert_eq!(p.state.firewall.v6.len(), 8);
}

#[test]
fn dual_stack_vxlan_peer_without_v6_data_is_skipped_whole() {
    let cfg = dual_config(r#"{"Type": "vxlan"}"#);
    let mut n = PeerSpec::new(2, "vxlan").dual().node();
    n.annotations
        .remove("flannel.alpha.coreos.com/backend-v6-data");
    let mut v = view();
    v.upsert_node(&n);
    v.upsert_node(&PeerSpec::new(3, "vxlan").dual().node());
    let p = plan_of(&v, &cfg);
    assert_eq!(p.peers, 1);
    assert_eq!(
        p.skipped,
        vec![crate::view::Skipped {
            node: "node-2".into(),
            reason: SkipReason::MissingForFamily {
                family: Family::V6,
                missing: Missing::BackendData
            }
        }]
    );
    // Nothing of node-2, not even its IPv4 half.
    assert!(!p.state.kernel.routes.contains_key(&net("10.244.2.0/24")));
    assert!(has_vxlan_peer(&p.state.kernel, 3, "flannel.1"));
}

#[test]
fn host_gw_zero_one_many_and_off_segment() {
    let cfg = config(r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}"#);
    let p = plan_of(&view(), &cfg);
    assert!(p.state.kernel.is_empty());
    assert_eq!(p.state.mtu, 1500);
    assert_eq!(p.state.advertisement.backend_type, BackendType::HostGw);
    assert_eq!(p.state.advertisement.data_v4, None);

    let p = plan_of(&with_peers([PeerSpec::new(2, "host-gw")]), &cfg);
    assert_eq!(
        p.state.kernel.routes.values().cloned().collect::<Vec<_>>(),
        vec![host_route(2)]
    );
    assert!(p.state.kernel.links.is_empty());

    let mut specs: Vec<PeerSpec> = (2..=50).map(|i| PeerSpec::new(i, "host-gw")).collect();
    specs.push(PeerSpec::new(51, "host-gw").remote());
    let p = plan_of(&with_peers(specs), &cfg);
    assert_eq!(p.peers, 49);
    assert_eq!(p.state.kernel.routes.len(), 49);
    assert_eq!(
        p.skipped,
        vec![crate::view::Skipped {
            node: "node-51".into(),
            reason: SkipReason::NotOnLink {
                backend: BackendType::HostGw,
                public_ip: ip("172.16.0.51")
            }
        }]
    );
}

/// flannel's `Backend.MTU` is the underlay's MTU, as its docs show it
/// (`"Backend": {"Type": "vxlan", "MTU": 1500}`): each device gets it minus its encapsulation
/// (flannel: vxlan 50, ipip 20, host-gw 0; trellis takes the 70 an IPv6 outer header needs for
/// `flannel-v6.<VNI>`), and pods the smallest, even where the interface's own MTU is larger.
#[test]
fn backend_mtu_is_the_underlay_mtu_as_in_flannel() {
    let cases = [
        (
            config(r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "MTU": 1500}}"#),
            1450,
        ),
        (dual_config(r#"{"Type": "vxlan", "MTU": 1500}"#), 1430),
        (
            config(r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "ipip", "MTU": 1500}}"#),
            1480,
        ),
        (
            config(r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw", "MTU": 1500}}"#),
            1500,
        ),
    ];
    let mut big = lease();
    big.underlay.mtu = 9000;
    for (cfg, pods) in cases {
        let p = plan_of(&ClusterView::new(big.clone(), Default::default()), &cfg);
        assert_eq!(p.state.mtu, pods, "{:?}", cfg.backend);
        assert_eq!(p.state.subnet_env.mtu, pods, "{:?}", cfg.backend);
        let devices: Vec<(&str, u32)> = p
            .state
            .kernel
            .links
            .values()
            .map(|l| (l.name.as_str(), l.mtu))
            .collect();
        let want: &[(&str, u32)] = match cfg.backend.kind() {
            BackendType::Vxlan if cfg.enable_ipv6 => &[("flannel-v6.1", 1430), ("flannel.1", 1450)],
            BackendType::Vxlan => &[("flannel.1", 1450)],
            BackendType::Ipip => &[("flannel.ipip", 1480)],
            BackendType::HostGw => &[],
            BackendType::Wireguard => &[("flannel-wg", 1420)],
        };
        assert_eq!(devices, want, "{:?}", cfg.backend);
    }
}

#[test]
fn host_gw_dual_stack_and_mtu_override() {
    let cfg = dual_config(r#"{"Type": "host-gw", "MTU": 1400}"#);
    let p = plan_of(&with_peers([PeerSpec::new(2, "host-gw").dual()]), &cfg);
    let r6 = &p.state.kernel.routes[&net("fd00:10:244:2::/64")];
    assert_eq!(
        (r6.gateway, r6.dev.as_str(), r6.onlink),
        (Some(ip("fd00:192::2")), "eth0", false)
    );
    assert_eq!(p.state.mtu, 1400);
}

#[test]
fn host_gw_refuses_nat() {
    let cfg = config(r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}"#);
    let mut l = lease();
    l.public_ip_v4 = Some("203.0.113.9".parse().unwrap());
    let v = ClusterView::new(l, Default::default());
    assert!(matches!(
        plan(&v, &cfg, &PlanOptions::default()),
        Err(PlanError::HostGwBehindNat { .. })
    ));
}

#[test]
fn ipip_device_routes_and_direct_routing() {
    let cfg = config(r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "ipip"}}"#);
    let p = plan_of(&view(), &cfg);
    let dev = &p.state.kernel.links["flannel.ipip"];
    assert_eq!(
        dev.kind,
        LinkKind::Ipip {
            local: "192.168.1.1".parse().unwrap()
        }
    );
    assert_eq!((dev.mtu, dev.mac, dev.up), (1480, None, true));
    assert_eq!(p.state.mtu, 1480);
    assert!(p.state.kernel.addresses.contains(&Address {
        link: "flannel.ipip".into(),
        addr: net("10.244.1.0/32")
    }));
    assert_eq!(p.state.advertisement.backend_type, BackendType::Ipip);

    let peers = || with_peers([PeerSpec::new(2, "ipip"), PeerSpec::new(3, "ipip").remote()]);
    let p = plan_of(&peers(), &cfg);
    assert_eq!(
        p.state.kernel.routes[&net("10.244.2.0/24")],
        Route {
            dst: net("10.244.2.0/24"),
            gateway: Some(ip("192.168.1.2")),
            dev: "flannel.ipip".into(),
            onlink: true
        }
    );
    assert_eq!(
        p.state.kernel.routes[&net("10.244.3.0/24")].gateway,
        Some(ip("172.16.0.3"))
    );

    let dr = config(
        r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "ipip", "DirectRouting": true}}"#,
    );
    let p = plan_of(&peers(), &dr);
    assert_eq!(p.state.kernel.routes[&net("10.244.2.0/24")], host_route(2));
    assert_eq!(
        p.state.kernel.routes[&net("10.244.3.0/24")].dev,
        "flannel.ipip"
    );
}

#[test]
fn own_host_gw_keeps_vxlan_and_ipip_for_peers_that_still_use_them() {
    let cfg = config(r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}"#);
    let mut vx_on_4789 = PeerSpec::new(4, "vxlan").node();
    vx_on_4789.annotations.insert(
        "flannel.alpha.coreos.com/backend-data".into(),
        format!(r#"{{"VNI":1,"VtepMAC":"{}","Port":4789}}"#, peer_mac(4)),
    );
    let mut v = with_peers([PeerSpec::new(2, "host-gw"), PeerSpec::new(3, "ipip")]);
    v.upsert_node(&vx_on_4789);
    v.upsert_node(&PeerSpec::new(5, "vxlan").node());
    let p = plan_of(&v, &cfg);
    let k = &p.state.kernel;
    assert_eq!(p.peers, 4);
    assert_eq!(k.routes[&net("10.244.2.0/24")], host_route(2));
    assert_eq!(k.routes[&net("10.244.3.0/24")].dev, "flannel.ipip");
    // The VXLAN device is kept (first VXLAN peer's port) to reach the peers still on VXLAN.
    assert_eq!(k.links["flannel.1"], flannel1(4789, 1450, None, 1));
    assert!(has_vxlan_peer(k, 4, "flannel.1"));
    assert!(has_vxlan_peer(k, 5, "flannel.1"));
    assert_eq!(k.links.len(), 2);
    // But what we advertise and give pods is host-gw's.
    assert_eq!(p.state.advertisement.backend_type, BackendType::HostGw);
    assert_eq!(p.state.mtu, 1500);
}

#[test]
fn own_vxlan_programs_host_gw_and_ipip_peers_their_way() {
    let p = plan_of(
        &with_peers([
            PeerSpec::new(2, "vxlan"),
            PeerSpec::new(3, "host-gw"),
            PeerSpec::new(4, "ipip"),
            PeerSpec::new(5, "host-gw").remote(),
        ]),
        &vxlan_config(),
    );
    let k = &p.state.kernel;
    assert!(has_vxlan_peer(k, 2, "flannel.1"));
    assert_eq!(k.routes[&net("10.244.3.0/24")], host_route(3));
    assert_eq!(k.routes[&net("10.244.4.0/24")].dev, "flannel.ipip");
    assert_eq!(k.links["flannel.ipip"].mtu, 1480);
    assert_eq!(p.peers, 3);
    assert!(matches!(p.skipped[0].reason, SkipReason::NotOnLink { .. }));
    assert_eq!(p.state.mtu, 1450);
}

#[test]
fn invalid_peers_do_not_disturb_valid_ones() {
    // The good nodes are older, so they win conflicts whatever the names.
    let good = || {
        (2..=20).map(|i| {
            let mut s = PeerSpec::new(i, "vxlan");
            s.created = Some(1);
            s
        })
    };
    let baseline = plan_of(&with_peers(good()), &vxlan_config());

    let mut v = with_peers(good());
    let mut bad_mac = PeerSpec::new(30, "vxlan").node();
    bad_mac.annotations.insert(
        "flannel.alpha.coreos.com/backend-data".into(),
        r#"{"VNI":1,"VtepMAC":"nope"}"#.into(),
    );
    let mut overlap = PeerSpec::new(31, "vxlan").node();
    overlap.pod_cidrs = vec!["10.244.5.0/24".into()];
    let mut outside = PeerSpec::new(32, "vxlan").node();
    outside.pod_cidrs = vec!["172.30.0.0/24".into()];
    let mut no_data = PeerSpec::new(33, "vxlan").node();
    no_data
        .annotations
        .remove("flannel.alpha.coreos.com/backend-data");
    for n in [&bad_mac, &overlap, &outside, &no_data] {
        assert!(v.upsert_node(n));
    }
    let p = plan_of(&v, &vxlan_config());
    assert_eq!(p.state, baseline.state);
    assert_eq!(p.peers, 19);
    let labels: Vec<&str> = p.skipped.iter().map(|s| s.reason.label()).collect();
    assert_eq!(
        labels,
        [
            "bad_annotation",
            "overlaps_peer",
            "outside_network",
            "missing_for_family"
        ]
    );
}

#[test]
fn local_problems_are_plan_errors() {
    let cfg = vxlan_config();
    type Tweak = fn(&mut LocalLease);
    type Check = fn(&PlanError) -> bool;
    let cases: Vec<(Tweak, Check)> = vec![
        (
            |l| l.subnet_v4 = None,
            |e| matches!(e, PlanError::NoSubnet { family: Family::V4 }),
        ),
        (
            |l| l.subnet_v4 = Some("10.99.0.0/24".parse().unwrap()),
            |e| matches!(e, PlanError::SubnetOutsideNetwork { .. }),
        ),
        (
            |l| l.subnet_v4 = Some("10.244.1.0/31".parse().unwrap()),
            |e| matches!(e, PlanError::SubnetTooSmall { .. }),
        ),
        (
            |l| l.public_ip_v4 = None,
            |e| matches!(e, PlanError::NoPublicIp { family: Family::V4 }),
        ),
        (
            |l| l.underlay.addr_v4 = None,
            |e| matches!(e, PlanError::NoUnderlayAddress { .. }),
        ),
        (
            |l| l.underlay.mtu = 100,
            |e| matches!(e, PlanError::UnderlayMtuTooSmall { .. }),
        ),
    ];
    for (tweak, check) in cases {
        let mut l = lease();
        tweak(&mut l);
        let v = ClusterView::new(l, Default::default());
        match plan(&v, &cfg, &PlanOptions::default()) {
            Ok(_) => panic!("planned with a broken lease"),
            Err(e) => {
                assert!(check(&e), "unexpected {e:?}");
                assert!(!e.to_string().is_empty());
            }
        }
    }
    // IPv6 enabled, lease without IPv6.
    let mut l = lease();
    l.subnet_v6 = None;
    let v = ClusterView::new(l, Default::default());
    assert_eq!(
        plan(
            &v,
            &dual_config(r#"{"Type": "vxlan"}"#),
            &PlanOptions::default()
        )
        .unwrap_err(),
        PlanError::NoSubnet { family: Family::V6 }
    );
    // The IPv6 tunnel needs a larger underlay than the IPv4 one.
    let mut l = lease();
    l.underlay.mtu = 1300;
    let v = ClusterView::new(l, Default::default());
    assert!(plan(&v, &vxlan_config(), &PlanOptions::default()).is_ok());
    assert!(matches!(
        plan(
            &v,
            &dual_config(r#"{"Type": "vxlan"}"#),
            &PlanOptions::default()
        ),
        Err(PlanError::UnderlayMtuTooSmall {
            family: Family::V6,
            ..
        })
    ));
}

#[test]
fn options_shape_firewall_and_subnet_env() {
    let opts = PlanOptions {
        ip_masq: false,
        forward_rules: true,
    };
    let p = plan(&view(), &vxlan_config(), &opts).unwrap();
    assert!(!p.state.subnet_env.ipmasq);
    assert_eq!(p.state.firewall.v4.len(), 2);
    let none = PlanOptions {
        ip_masq: false,
        forward_rules: false,
    };
    assert!(plan(&view(), &vxlan_config(), &none)
        .unwrap()
        .state
        .firewall
        .is_empty());
}

#[test]
fn firewall_rules_are_the_plans_without_planning_the_peers() {
    let no_masq = PlanOptions {
        ip_masq: false,
        forward_rules: true,
    };
    let mut tiny_mtu = lease();
    tiny_mtu.underlay.mtu = 100;
    let mut no_subnet = lease();
    no_subnet.subnet_v4 = None;
    let (mut planned, mut refused) = (0, 0);
    for cfg in [vxlan_config(), dual_config(r#"{"Type": "vxlan"}"#)] {
        for opts in [PlanOptions::default(), no_masq] {
            for l in [lease(), tiny_mtu.clone(), no_subnet.clone()] {
                let mut view = ClusterView::new(l.clone(), AnnotationKeys::default());
                for i in 2..=5 {
                    view.upsert_node(&PeerSpec::new(i, "vxlan").node());
                }
                let rules = firewall_rules(&l, &cfg, &opts);
                assert_eq!(rules, plan(&view, &cfg, &opts).map(|p| p.state.firewall));
                if rules.is_ok() {
                    planned += 1;
                } else {
                    refused += 1;
                }
            }
        }
    }
    // Both sides were compared: rules that exist, and leases the planner refuses.
    assert!(
        planned >= 4 && refused >= 4,
        "{planned} planned, {refused} refused"
    );
}

#[test]
fn plans_are_deterministic_and_reconcile_to_nothing() {
    let v = with_peers(
        (2..=30).map(|i| PeerSpec::new(i, if i % 3 == 0 { "host-gw" } else { "vxlan" })),
    );
    let a = plan_of(&v, &vxlan_config());
    let b = plan_of(&v.clone(), &vxlan_config());
    assert_eq!(a, b);
    assert!(diff(&a.state.kernel, &b.state.kernel).is_empty());
    // From an empty kernel, applying the ops in order yields exactly the plan.
    let ops = diff(&a.state.kernel, &KernelState::default());
    assert_eq!(ops.len(), a.state.kernel.len());
    assert!(matches!(ops[0], Op::AddLink(_)));
}

#[test]
fn switching_vxlan_to_host_gw_replaces_routes_then_drops_the_device() {
    let v = with_peers((2..=10).map(|i| PeerSpec::new(i, "host-gw")));
    let before = plan_of(
        &with_peers((2..=10).map(|i| PeerSpec::new(i, "vxlan"))),
        &vxlan_config(),
    );
    let hg = config(r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}"#);
    let after = plan_of(&v, &hg);
    let ops = diff(&after.state.kernel, &before.state.kernel);
    // 9 route replacements, then one link deletion; ARP/FDB/address go with the device.
    assert_eq!(ops.len(), 10, "{ops:#?}");
    for (i, op) in ops[..9].iter().enumerate() {
        match op {
            Op::ReplaceRoute(r) => assert_eq!(*r, host_route(i as u32 + 2)),
            other => panic!("expected a route replacement, got {other}"),
        }
    }
    assert_eq!(ops[9], Op::DeleteLink("flannel.1".into()));
}

#[test]
fn scales_to_five_thousand_peers() {
    let cfg = config(r#"{"Network": "10.0.0.0/8", "Backend": {"Type": "vxlan"}}"#);
    let mut l = lease();
    l.subnet_v4 = Some("10.244.1.0/24".parse().unwrap());
    let mut v = ClusterView::new(l, Default::default());
    for i in 256..5256 {
        v.upsert_node(&PeerSpec::new(i, "vxlan").node());
    }
    let p = plan_of(&v, &cfg);
    assert_eq!(p.peers, 5000);
    assert_eq!(p.state.kernel.len(), 1 + 1 + 3 * 5000);
    assert!(diff(&p.state.kernel, &p.state.kernel.clone()).is_empty());
}

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::*;
use crate::dataplane::desired::{LinkKind, Vxlan};
use crate::dataplane::fixtures::vxlan_link;
use crate::net::Mac;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

fn vxlan(name: &str, vni: u32, port: u16, mtu: u32) -> Link {
    vxlan_link(name, vni, port, mtu, Some(Mac([2, 0, 0, 0, 0, 1])))
}

fn mac(i: u8) -> Mac {
    Mac([0x0a, 0x58, 0, 0, 0, i])
}

/// A VXLAN node with peers `peers` (their subnet 10.244.<i>.0/24) on `dev`.
fn state(dev: &Link, peers: &[u8]) -> KernelState {
    let mut k = KernelState::default();
    k.add_link(dev.clone());
    k.add_address(&dev.name, net("10.244.1.0/32"));
    for &i in peers {
        let gw = ip(&format!("10.244.{i}.0"));
        k.add_neighbour(Neighbour {
            link: dev.name.clone(),
            ip: gw,
            mac: mac(i),
        });
        k.add_fdb(Fdb {
            link: dev.name.clone(),
            mac: mac(i),
            dst: ip(&format!("192.168.1.{i}")),
        });
        k.add_route(Route {
            dst: net(&format!("10.244.{i}.0/24")),
            gateway: Some(gw),
            dev: dev.name.clone(),
            onlink: true,
        });
    }
    k
}

/// Phase of an op in the documented order; deletes of recreated links are phase 0.
fn phase(op: &Op) -> u8 {
    match op {
        Op::AddLink(_) | Op::SetLink(_) => 1,
        Op::AddAddress(_) => 2,
        Op::AddNeighbour(_)
        | Op::ReplaceNeighbour(_)
        | Op::AddFdb(_)
        | Op::ReplaceFdb(_)
        | Op::AddWgPeer(_)
        | Op::ReplaceWgPeer(_) => 3,
        Op::AddRoute(_) | Op::ReplaceRoute(_) => 4,
        Op::DeleteRoute(_) => 5,
        Op::DeleteNeighbour(_) | Op::DeleteFdb(_) | Op::DeleteWgPeer(_) => 6,
        Op::DeleteAddress(_) => 7,
        Op::DeleteLink(_) => 8,
    }
}

fn assert_ordered(ops: &[Op]) {
    // Leading link deletes are recreations; after them, phases never go backwards.
    let rest = ops
        .iter()
        .skip_while(|o| matches!(o, Op::DeleteLink(_)))
        .collect::<Vec<_>>();
    for w in rest.windows(2) {
        assert!(phase(w[0]) <= phase(w[1]), "{} before {}", w[0], w[1]);
    }
}

/// Apply ops to a model of the kernel (including what the kernel drops with a link), to
/// check that the ops really produce the desired state.
fn apply(actual: &KernelState, ops: &[Op]) -> KernelState {
    let mut k = actual.clone();
    for op in ops {
        let has_link =
            |k: &KernelState, link: &str| assert!(k.links.contains_key(link), "{op}: no link");
        let removed = |found: bool| assert!(found, "{op}: missing");
        match op {
            Op::AddLink(l) => {
                assert!(!k.links.contains_key(&l.name), "{op}: exists");
                k.add_link(l.clone());
            }
            Op::SetLink(l) => {
                let cur = k.links.get_mut(&l.name).expect("set of a missing link");
                assert_eq!(cur.kind, l.kind, "SetLink cannot change the kind");
                cur.mtu = l.mtu;
                cur.up = l.up;
                if l.mac.is_some() {
                    cur.mac = l.mac;
                }
            }
            Op::DeleteLink(name) => {
                removed(k.links.remove(name).is_some());
                k.addresses.retain(|a| &a.link != name);
                k.neighbours.retain(|(l, _), _| l != name);
                k.fdb.retain(|(l, _), _| l != name);
                k.wg_peers.retain(|(l, _), _| l != name);
                k.routes.retain(|_, r| &r.dev != name);
            }
            Op::AddAddress(a) => {
                has_link(&k, &a.link);
                k.addresses.insert(a.clone());
            }
            Op::DeleteAddress(a) => removed(k.addresses.remove(a)),
            Op::AddNeighbour(n) | Op::ReplaceNeighbour(n) => {
                has_link(&k, &n.link);
                k.add_neighbour(n.clone());
            }
            Op::DeleteNeighbour(n) => {
                removed(k.neighbours.remove(&(n.link.clone(), n.ip)).is_some())
            }
            Op::AddFdb(f) | Op::ReplaceFdb(f) => {
                has_link(&k, &f.link);
                k.add_fdb(f.clone());
            }
            Op::DeleteFdb(f) => removed(k.fdb.remove(&(f.link.clone(), f.mac)).is_some()),
            Op::AddWgPeer(p) | Op::ReplaceWgPeer(p) => {
                has_link(&k, &p.link);
                k.add_wg_peer(p.clone());
            }
            Op::DeleteWgPeer(p) => {
                let key = (p.link.clone(), p.public_key);
                removed(k.wg_peers.remove(&key).is_some())
            }
            Op::AddRoute(r) | Op::ReplaceRoute(r) => {
                assert!(
                    k.links.contains_key(&r.dev) || r.dev == "eth0",
                    "{op}: no device"
                );
                if r.onlink && k.links.contains_key(&r.dev) {
                    // Entries needed by a VXLAN route are in place before it.
                    let has_arp = k
                        .neighbours
                        .contains_key(&(r.dev.clone(), r.gateway.unwrap()));
                    let is_ipip = matches!(k.links[&r.dev].kind, LinkKind::Ipip { .. });
                    assert!(has_arp || is_ipip, "{op}: route before its neighbour");
                }
                k.add_route(r.clone());
            }
            Op::DeleteRoute(r) => {
                assert_eq!(k.routes.remove(&r.dst).as_ref(), Some(r), "{op}: missing")
            }
        }
    }
    k
}

fn check(desired: &KernelState, actual: &KernelState) -> Vec<Op> {
    let ops = diff(desired, actual);
    assert_ordered(&ops);
    assert_eq!(&apply(actual, &ops), desired, "ops: {ops:#?}");
    assert!(diff(desired, &apply(actual, &ops)).is_empty());
    ops
}

#[test]
fn identical_states_need_no_op() {
    let s = state(&vxlan("flannel.1", 1, 8472, 1450), &[2, 3, 4]);
    assert!(diff(&s, &s.clone()).is_empty());
    assert!(diff(&KernelState::default(), &KernelState::default()).is_empty());
}

#[test]
fn missing_things_are_added_in_dependency_order() {
    let s = state(&vxlan("flannel.1", 1, 8472, 1450), &[2, 3]);
    let ops = check(&s, &KernelState::default());
    let labels: Vec<&str> = ops.iter().map(Op::label).collect();
    assert_eq!(
        labels,
        [
            "add_link",
            "add_address",
            "add_neighbour",
            "add_neighbour",
            "add_fdb",
            "add_fdb",
            "add_route",
            "add_route"
        ]
    );
}

#[test]
fn one_missing_entry_is_one_op() {
    let dev = vxlan("flannel.1", 1, 8472, 1450);
    let desired = state(&dev, &[2, 3, 4]);
    let mut actual = desired.clone();
    actual.fdb.remove(&("flannel.1".to_string(), mac(3)));
    let ops = check(&desired, &actual);
    assert_eq!(
        ops,
        vec![Op::AddFdb(
            desired.fdb[&("flannel.1".to_string(), mac(3))].clone()
        )]
    );
}

#[test]
fn departed_peers_are_deleted_route_first() {
    let dev = vxlan("flannel.1", 1, 8472, 1450);
    let ops = check(&state(&dev, &[2]), &state(&dev, &[2, 3]));
    let labels: Vec<&str> = ops.iter().map(Op::label).collect();
    assert_eq!(labels, ["delete_route", "delete_neighbour", "delete_fdb"]);
}

#[test]
fn changed_entries_are_replaced() {
    let dev = vxlan("flannel.1", 1, 8472, 1450);
    let actual = state(&dev, &[2, 3, 4]);
    let mut desired = actual.clone();
    // Peer 2 moved to another public IP; peer 3 changed its VTEP MAC; peer 4 got a new
    // gateway (host-gw now).
    desired.add_fdb(Fdb {
        link: "flannel.1".into(),
        mac: mac(2),
        dst: ip("192.168.1.102"),
    });
    desired.add_neighbour(Neighbour {
        link: "flannel.1".into(),
        ip: ip("10.244.3.0"),
        mac: mac(33),
    });
    desired.fdb.remove(&("flannel.1".to_string(), mac(3)));
    desired.add_fdb(Fdb {
        link: "flannel.1".into(),
        mac: mac(33),
        dst: ip("192.168.1.3"),
    });
    desired
        .neighbours
        .remove(&("flannel.1".to_string(), ip("10.244.4.0")));
    desired.fdb.remove(&("flannel.1".to_string(), mac(4)));
    desired.add_route(Route {
        dst: net("10.244.4.0/24"),
        gateway: Some(ip("192.168.1.4")),
        dev: "eth0".into(),
        onlink: false,
    });
    let ops = check(&desired, &actual);
    let labels: Vec<&str> = ops.iter().map(Op::label).collect();
    assert_eq!(
        labels,
        [
            "replace_neighbour", // 10.244.3.0 -> new MAC
            "replace_fdb",       // mac(2) -> new dst
            "add_fdb",           // mac(33)
            "replace_route",     // 10.244.4.0/24 via eth0
            "delete_neighbour",  // 10.244.4.0
            "delete_fdb",        // mac(3)
            "delete_fdb",        // mac(4)
        ]
    );
}

#[test]
fn mutable_link_attributes_are_set_in_place() {
    let dev = vxlan("flannel.1", 1, 8472, 1450);
    let actual = state(&dev, &[2]);
    let mut desired = actual.clone();
    desired.links.get_mut("flannel.1").unwrap().mtu = 1400;
    let ops = check(&desired, &actual);
    assert_eq!(ops.len(), 1);
    assert!(matches!(&ops[0], Op::SetLink(l) if l.mtu == 1400));

    // A link set down by hand is brought up again.
    let mut down = desired.clone();
    down.links.get_mut("flannel.1").unwrap().up = false;
    assert!(matches!(check(&desired, &down)[..], [Op::SetLink(_)]));

    // A desired link without a MAC accepts whatever MAC the kernel gave it.
    let mut any_mac = desired.clone();
    any_mac.links.get_mut("flannel.1").unwrap().mac = None;
    let mut kernel_mac = desired.clone();
    kernel_mac.links.get_mut("flannel.1").unwrap().mac = Some(Mac([2, 9, 9, 9, 9, 9]));
    assert!(diff(&any_mac, &kernel_mac).is_empty());
    // But a desired MAC is enforced.
    assert!(matches!(diff(&desired, &kernel_mac)[..], [Op::SetLink(_)]));
}

#[test]
fn immutable_link_attributes_recreate_the_link_and_what_lives_on_it() {
    let actual = state(&vxlan("flannel.1", 1, 8472, 1450), &[2, 3]);
    let desired = state(&vxlan("flannel.1", 1, 4789, 1450), &[2, 3]);
    let ops = check(&desired, &actual);
    assert_eq!(ops[0], Op::DeleteLink("flannel.1".into()));
    assert!(
        matches!(&ops[1], Op::AddLink(l) if matches!(l.kind, LinkKind::Vxlan(Vxlan { port: 4789, .. })))
    );
    // Everything is re-added, nothing deleted individually.
    assert_eq!(ops.len(), 2 + 1 + 2 + 2 + 2, "{ops:#?}");
    assert!(ops[2..].iter().all(|o| o.label().starts_with("add_")));
}

#[test]
fn stale_links_go_last_and_take_their_entries_with_them() {
    let vx = vxlan("flannel.1", 1, 8472, 1450);
    let actual = state(&vx, &[2, 3, 4]);
    // Switched to host-gw: no device, plain routes.
    let mut desired = KernelState::default();
    for i in [2, 3] {
        desired.add_route(Route {
            dst: net(&format!("10.244.{i}.0/24")),
            gateway: Some(ip(&format!("192.168.1.{i}"))),
            dev: "eth0".into(),
            onlink: false,
        });
    }
    let ops = check(&desired, &actual);
    let labels: Vec<&str> = ops.iter().map(Op::label).collect();
    // Peer 4 is gone too: its route leaves with flannel.1, no explicit delete.
    assert_eq!(labels, ["replace_route", "replace_route", "delete_link"]);
}

#[test]
fn vni_change_moves_peers_to_the_new_device() {
    let actual = state(&vxlan("flannel.1", 1, 8472, 1450), &[2, 3]);
    let desired = state(&vxlan("flannel.2", 2, 8472, 1450), &[2, 3]);
    let ops = check(&desired, &actual);
    assert!(matches!(&ops[0], Op::AddLink(l) if l.name == "flannel.2"));
    assert_eq!(ops.last(), Some(&Op::DeleteLink("flannel.1".into())));
    // Routes are replaced (moved), never deleted: no gap for traffic.
    assert!(ops.iter().all(|o| !matches!(o, Op::DeleteRoute(_))));
    assert_eq!(
        ops.iter()
            .filter(|o| matches!(o, Op::ReplaceRoute(_)))
            .count(),
        2
    );
}

#[test]
fn kernel_link_local_addresses_are_left_alone() {
    let dev = vxlan("flannel-v6.1", 1, 8472, 1430);
    let desired = state(&dev, &[]);
    let mut actual = desired.clone();
    actual.add_address("flannel-v6.1", net("fe80::1/64"));
    assert!(diff(&desired, &actual).is_empty());
    // An address trellis put there earlier (old subnet) is removed.
    actual.add_address("flannel-v6.1", net("10.244.9.0/32"));
    let ops = diff(&desired, &actual);
    assert_eq!(
        ops,
        vec![Op::DeleteAddress(Address {
            link: "flannel-v6.1".into(),
            addr: net("10.244.9.0/32")
        })]
    );
}

#[test]
fn ipip_links_and_mixed_devices() {
    let mut desired = KernelState::default();
    desired.add_link(Link {
        name: "flannel.ipip".into(),
        kind: LinkKind::Ipip {
            local: "192.168.1.1".parse().unwrap(),
        },
        mtu: 1480,
        mac: None,
        up: true,
    });
    desired.add_address("flannel.ipip", net("10.244.1.0/32"));
    desired.add_route(Route {
        dst: net("10.244.2.0/24"),
        gateway: Some(ip("192.168.1.2")),
        dev: "flannel.ipip".into(),
        onlink: true,
    });
    let actual = state(&vxlan("flannel.1", 1, 8472, 1450), &[2]);
    let ops = check(&desired, &actual);
    let labels: Vec<&str> = ops.iter().map(Op::label).collect();
    assert_eq!(
        labels,
        ["add_link", "add_address", "replace_route", "delete_link"]
    );
    // Display is for logs.
    assert!(ops[0]
        .to_string()
        .starts_with("add link flannel.ipip type ipip local 192.168.1.1 mtu 1480"));
}

#[test]
fn large_states_diff_fast_and_minimal() {
    let dev = vxlan("flannel.1", 1, 8472, 1450);
    let mut actual = KernelState::default();
    let mut desired = KernelState::default();
    actual.add_link(dev.clone());
    desired.add_link(dev.clone());
    for i in 0..5000u32 {
        let b = i.to_be_bytes();
        let dst = net(&format!("10.{}.{}.0/24", b[2], b[3]));
        let r = Route {
            dst,
            gateway: Some(dst.network()),
            dev: "flannel.1".into(),
            onlink: true,
        };
        desired.add_route(r.clone());
        if i != 1234 {
            actual.add_route(r);
        }
    }
    let ops = diff(&desired, &actual);
    assert_eq!(ops.len(), 1);
    assert!(matches!(&ops[0], Op::AddRoute(r) if r.dst == net("10.4.210.0/24")));
}

//! The netlink executor against the real kernel, each test in its own network namespace:
//! programming VXLAN peers, idempotence, removing departed peers, recreating a device whose
//! VNI or port changed, in-place MTU/state repair, per-op failures, and never touching what
//! is not trellis's.

mod dataplane_support;

use std::net::IpAddr;
use std::sync::Arc;

use dataplane_support::{
    assert_entries, assert_entries6, desired, dual_vxlan_config, expected_entries, fdb, neighbours,
    trellis_routes, vxlan_config, Netns, Node, PeerNode,
};
use trellis_agent::dataplane::desired::{
    Fdb, KernelState, Link, LinkKind, Neighbour, Route, Vxlan,
};
use trellis_agent::dataplane::diff::{diff, Op};
use trellis_agent::dataplane::netlink::{apply, read_actual, Dataplane, ReconcileReport};
use trellis_agent::net::Mac;

const LOCAL_MAC: Mac = Mac([0x02, 0xaa, 0, 0, 0, 0x01]);

fn peers() -> Vec<PeerNode> {
    vec![
        PeerNode::new(2, "192.168.1.2"),
        PeerNode::new(3, "192.168.1.3"),
        PeerNode::new(4, "172.16.0.4"),
    ]
}

async fn reconcile(dp: &mut Dataplane, desired: &KernelState) -> ReconcileReport {
    let r = dp.reconcile(desired).await.expect("reconcile");
    assert!(r.errors.is_empty(), "errors: {:?}", r.errors);
    r
}

fn route(dst: &str, gateway: &str, dev: &str, onlink: bool) -> Route {
    Route {
        dst: dst.parse().expect("net"),
        gateway: Some(gateway.parse().expect("ip")),
        dev: dev.into(),
        onlink,
    }
}

/// One pass of a fresh Dataplane over `want` in `ns`.
fn reconcile_fresh(ns: &Netns, want: &KernelState) -> ReconcileReport {
    let want = want.clone();
    ns.run(move || async move {
        let mut dp = Dataplane::new().expect("dataplane");
        reconcile(&mut dp, &want).await
    })
}

/// [`reconcile_fresh`], after which a second pass must find nothing to do.
fn reconcile_settled(ns: &Netns, want: &KernelState) -> ReconcileReport {
    let want = want.clone();
    ns.run(move || async move {
        let mut dp = Dataplane::new().expect("dataplane");
        let r = reconcile(&mut dp, &want).await;
        assert_eq!(dp.reconcile(&want).await.expect("again").ops_planned, 0);
        r
    })
}

fn node(tag: &str) -> Node {
    Node::standalone(tag, "192.168.1.1", "10.244.1.0/24", LOCAL_MAC)
}

#[test]
fn vxlan_peers_programmed_idempotent_and_departed_removed() {
    let node = node("prog");
    let ns = &node.ns;
    // What is not trellis's: a static route, a look-alike link, a permanent ARP entry.
    ns.ip("route add 10.99.0.0/16 via 192.168.1.254 dev eth0 proto static");
    ns.ip("link add flannel-test type bridge");
    ns.ip("link add flannel.x type bridge");
    ns.ip("neigh add 192.168.1.77 lladdr 02:00:00:00:00:77 dev eth0 nud permanent");

    let all = peers();
    let want = desired(node.lease(), &vxlan_config(1, 8472), &all);
    let fewer = desired(node.lease(), &vxlan_config(1, 8472), &all[..2]);
    let (first, second, third, actual_after) = ns.run(move || async move {
        let mut dp = Dataplane::new().expect("dataplane");
        let first = reconcile(&mut dp, &want).await;
        let second = reconcile(&mut dp, &want).await;
        let actual = dp.read_actual().await.expect("read");
        assert!(diff(&want, &actual).is_empty(), "read back differs");
        let third = reconcile(&mut dp, &fewer).await;
        let actual_after = dp.read_actual().await.expect("read");
        (first, second, third, actual_after)
    });

    // 1 link + 1 address + 3 x (neighbour, fdb, route).
    assert_eq!(first.ops_planned, 11, "{first:?}");
    assert_eq!(first.ops_applied, 11);
    assert_eq!(
        second.ops_planned, 0,
        "second reconcile must be a no-op: {second:?}"
    );
    assert_eq!(third.ops_planned, 3, "{third:?}");
    assert_eq!(third.applied_by_label.get("delete_route"), Some(&1));
    assert_eq!(third.applied_by_label.get("delete_neighbour"), Some(&1));
    assert_eq!(third.applied_by_label.get("delete_fdb"), Some(&1));
    assert_eq!(actual_after.routes.len(), 2);

    let link = &ns.ip_json("-d link show dev flannel.1")[0];
    let vx = &link["linkinfo"]["info_data"];
    assert_eq!(link["linkinfo"]["info_kind"], "vxlan");
    assert_eq!(vx["id"], 1);
    assert_eq!(vx["port"], 8472);
    assert_eq!(vx["local"], "192.168.1.1");
    assert_eq!(vx["link"], "eth0");
    assert_eq!(vx["learning"], false);
    assert_eq!(link["mtu"], 1450);
    assert_eq!(link["address"], LOCAL_MAC.to_string());
    assert!(link["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == "UP")));
    let addrs = ns.ip("-4 addr show dev flannel.1");
    assert!(addrs.contains("inet 10.244.1.0/32"), "{addrs}");

    assert_entries(ns, &all[..2], "flannel.1");

    // Untouched.
    assert!(ns
        .ip("route show proto static")
        .contains("10.99.0.0/16 via 192.168.1.254"));
    ns.ip("link show dev flannel-test");
    ns.ip("link show dev flannel.x");
    assert!(ns.ip("neigh show dev eth0").contains("192.168.1.77"));
}

#[test]
fn vni_and_port_changes_recreate_the_device() {
    let node = node("vni");
    let ns = &node.ns;
    let all = peers();
    let vni1 = desired(node.lease(), &vxlan_config(1, 8472), &all);
    let port2 = desired(node.lease(), &vxlan_config(1, 4789), &all);
    let mut all2 = all.clone();
    for p in &mut all2 {
        p.vni = 2;
    }
    let vni2 = desired(node.lease(), &vxlan_config(2, 4789), &all2);

    reconcile_fresh(ns, &vni1);
    let index_before = ns.ifindex("flannel.1");

    let r = reconcile_fresh(ns, &port2);
    // delete + add link, address, 3 x 3 entries.
    assert_eq!(r.ops_planned, 12, "{r:?}");
    let index_port = ns.ifindex("flannel.1");
    assert_ne!(
        index_before, index_port,
        "port change must recreate flannel.1"
    );
    assert_eq!(
        ns.ip_json("-d link show dev flannel.1")[0]["linkinfo"]["info_data"]["port"],
        4789
    );
    assert_entries(ns, &all, "flannel.1");

    let r = reconcile_settled(ns, &vni2);
    assert!(r.ops_planned > 0);
    assert!(
        ns.try_ip("link show dev flannel.1").is_err(),
        "flannel.1 left behind"
    );
    assert_eq!(
        ns.ip_json("-d link show dev flannel.2")[0]["linkinfo"]["info_data"]["id"],
        2
    );
    assert_entries(ns, &all2, "flannel.2");
}

#[test]
fn mutable_attributes_and_changed_entries_are_fixed_in_place() {
    let node = node("set");
    let ns = &node.ns;
    let all = peers();
    let want = desired(node.lease(), &vxlan_config(1, 8472), &all);
    reconcile_fresh(ns, &want);
    let index = ns.ifindex("flannel.1");
    let (routes, neigh, fdb_want) = expected_entries(&all, "flannel.1");

    // Hand changes to the device: MTU, MAC, down (which also flushes what lives on it).
    ns.ip("link set dev flannel.1 mtu 1300 address 02:bb:00:00:00:09 down");
    let r = reconcile_settled(ns, &want);
    assert_eq!(
        ns.ifindex("flannel.1"),
        index,
        "set in place, not recreated"
    );
    assert_eq!(r.applied_by_label.get("set_link"), Some(&1), "{r:?}");
    assert_eq!(r.applied_by_label.get("delete_link"), None, "{r:?}");
    let link = &ns.ip_json("link show dev flannel.1")[0];
    assert_eq!(link["mtu"], 1450);
    assert_eq!(link["address"], LOCAL_MAC.to_string());
    assert!(link["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == "UP")));
    assert_eq!(trellis_routes(ns), routes);
    assert_eq!(neighbours(ns, "flannel.1"), neigh);
    assert_eq!(fdb(ns, "flannel.1"), fdb_want);

    // Hand changes to entries: a neighbour and an FDB entry pointed elsewhere, another FDB
    // entry made dynamic (not ours any more: created again as permanent).
    let p = &all[0];
    ns.ip(&format!(
        "neigh replace {} lladdr 02:00:00:00:00:99 dev flannel.1 nud permanent",
        p.gateway()
    ));
    ns.bridge(&format!(
        "fdb replace {} dev flannel.1 dst 192.168.1.99 self permanent",
        p.mac
    ));
    ns.bridge(&format!(
        "fdb replace {} dev flannel.1 dst {} self dynamic",
        all[1].mac, all[1].public_ip
    ));
    let r = reconcile_settled(ns, &want);
    assert_eq!(r.ops_planned, 3, "{r:?}");
    assert_eq!(
        r.applied_by_label.get("replace_neighbour"),
        Some(&1),
        "{r:?}"
    );
    assert_eq!(r.applied_by_label.get("replace_fdb"), Some(&1), "{r:?}");
    assert_eq!(r.applied_by_label.get("add_fdb"), Some(&1), "{r:?}");
    assert_eq!(neighbours(ns, "flannel.1"), neigh);
    assert_eq!(fdb(ns, "flannel.1"), fdb_want);
    assert_eq!(trellis_routes(ns), routes);
}

#[test]
fn failures_are_reported_per_op_and_the_rest_applied() {
    let node = node("fail");
    let ns = &node.ns;
    let eth0 = ns.ifindex("eth0");
    let good = Link {
        name: "flannel.1".into(),
        kind: LinkKind::Vxlan(Vxlan {
            vni: 1,
            port: 8472,
            local: "192.168.1.1".parse().expect("ip"),
            underlay_index: eth0,
            learning: false,
            gbp: false,
        }),
        mtu: 1450,
        mac: None,
        up: true,
    };
    // Underlay index that does not exist: the kernel refuses the device.
    let mut bad = good.clone();
    bad.name = "flannel.7".into();
    if let LinkKind::Vxlan(v) = &mut bad.kind {
        v.vni = 7;
        v.underlay_index = 999_999;
    }
    let gw: IpAddr = "10.244.2.0".parse().expect("ip");
    let ops = vec![
        Op::AddLink(good.clone()),
        Op::AddLink(bad.clone()),
        Op::AddNeighbour(Neighbour {
            link: "flannel.1".into(),
            ip: gw,
            mac: Mac([2, 0, 0, 0, 0, 2]),
        }),
        Op::AddNeighbour(Neighbour {
            link: "flannel.7".into(),
            ip: gw,
            mac: Mac([2, 0, 0, 0, 0, 2]),
        }),
        Op::AddFdb(Fdb {
            link: "flannel.1".into(),
            mac: Mac([2, 0, 0, 0, 0, 2]),
            dst: "192.168.1.2".parse().expect("ip"),
        }),
        Op::AddRoute(route("10.244.2.0/24", "10.244.2.0", "flannel.1", true)),
        Op::AddRoute(route("10.244.3.0/24", "10.244.3.0", "nosuch0", true)),
        // Refused by the kernel in the middle of a bulk send (a gateway not on-link with no
        // route to it): only this op fails, the one after it still applies.
        Op::AddRoute(route("10.244.4.0/24", "10.244.4.0", "flannel.1", false)),
        Op::AddRoute(route("10.244.5.0/24", "10.244.2.0", "flannel.1", true)),
        // Deleting what is not there is success.
        Op::DeleteRoute(route("10.244.9.0/24", "10.244.9.0", "flannel.1", true)),
        Op::DeleteNeighbour(Neighbour {
            link: "flannel.1".into(),
            ip: "10.244.9.0".parse().expect("ip"),
            mac: Mac([2, 0, 0, 0, 0, 9]),
        }),
        Op::DeleteFdb(Fdb {
            link: "flannel.1".into(),
            mac: Mac([2, 0, 0, 0, 0, 9]),
            dst: "192.168.1.9".parse().expect("ip"),
        }),
        Op::DeleteLink("flannel.42".into()),
        Op::DeleteNeighbour(Neighbour {
            link: "flannel.43".into(),
            ip: "10.244.9.0".parse().expect("ip"),
            mac: Mac([2, 0, 0, 0, 0, 9]),
        }),
    ];
    let n = ops.len();
    let (report, actual) = ns.run(move || async move {
        let (conn, handle, _) = rtnetlink::new_connection().expect("netlink");
        tokio::spawn(conn);
        let report = apply(&handle, &ops).await;
        (report, read_actual(&handle).await.expect("read"))
    });
    let failed: Vec<String> = report.errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(report.errors.len(), 4, "{failed:#?}");
    assert_eq!(report.applied, n - 4);
    assert!(matches!(&report.errors[0].op, Op::AddLink(l) if l.name == "flannel.7"));
    assert_eq!(report.errors[0].errno, Some(libc::ENODEV), "{failed:#?}");
    assert!(
        failed[1].contains("not attempted: creating link flannel.7 failed"),
        "{failed:#?}"
    );
    assert!(
        failed[2].contains("link nosuch0 does not exist"),
        "{failed:#?}"
    );
    assert!(
        failed[2].starts_with("add route 10.244.3.0/24"),
        "{failed:#?}"
    );
    assert!(
        matches!(&report.errors[3].op, Op::AddRoute(r) if r.dst.to_string() == "10.244.4.0/24"),
        "{failed:#?}"
    );
    assert_eq!(
        report.errors[3].errno,
        Some(libc::ENETUNREACH),
        "{failed:#?}"
    );
    assert_eq!(actual.links.len(), 1);
    assert_eq!(actual.neighbours.len(), 1);
    assert_eq!(actual.fdb.len(), 1);
    assert_eq!(actual.routes.len(), 2, "10.244.2.0/24 and 10.244.5.0/24");
}

#[test]
fn dual_stack_programs_both_devices_and_is_idempotent() {
    let node = node("dual").with_v6("fd00:192::1", "fd00:10:244:1::/64");
    let ns = &node.ns;
    let all: Vec<PeerNode> = peers()
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            p.with_v6(
                &format!("fd00:192::{}", i + 2),
                &format!("fd00:10:244:{}::/64", i + 2),
            )
        })
        .collect();
    let want = desired(node.lease(), &dual_vxlan_config(), &all);
    let (first, second) = ns.run(move || async move {
        let mut dp = Dataplane::new().expect("dataplane");
        (
            reconcile(&mut dp, &want).await,
            reconcile(&mut dp, &want).await,
        )
    });
    // 2 links + 2 addresses + 2 x 3 x (neighbour, fdb, route).
    assert_eq!(first.ops_applied, 22, "{first:?}");
    assert_eq!(second.ops_planned, 0, "{second:?}");
    let link = &ns.ip_json("-d link show dev flannel-v6.1")[0];
    assert_eq!(link["linkinfo"]["info_data"]["local6"], "fd00:192::1");
    assert_eq!(link["mtu"], 1430);
    assert!(ns
        .ip("-6 addr show dev flannel-v6.1")
        .contains("inet6 fd00:10:244:1::/128"));
    assert_entries(ns, &all, "flannel.1");
    assert_entries6(ns, &all, "flannel-v6.1");
}

/// A restart while the first Node list arrives: entries of peers not listed yet survive the
/// additions-only passes, and the first light pass after them removes exactly the stale peer,
/// known from the prefill's read without a second one.
#[test]
fn additions_only_passes_keep_unlisted_peers_until_the_full_pass() {
    let node = node("prefill");
    let ns = &node.ns;
    let all = peers();
    let config = vxlan_config(1, 8472);
    // Before the restart: peers 2 and 4 programmed (4 has left the cluster since).
    let before = desired(node.lease(), &config, &[all[0].clone(), all[2].clone()]);
    // Listed so far: peer 3 only; then the complete list: peers 2 and 3.
    let listed = desired(node.lease(), &config, &all[1..2]);
    let complete = desired(node.lease(), &config, &all[..2]);
    let (prefill, prefill_again, full, routes_between) = ns.run(move || async move {
        let mut dp = Dataplane::new().expect("dataplane");
        reconcile(&mut dp, &before).await;
        let mut dp = Dataplane::new().expect("restarted dataplane");
        let prefill = dp
            .reconcile_additions(Arc::new(listed.clone()))
            .await
            .expect("prefill");
        let again = dp
            .reconcile_additions(Arc::new(listed.clone()))
            .await
            .expect("prefill again");
        let between = dp.read_actual().await.expect("read").routes.len();
        let full = dp
            .reconcile_known(Arc::new(complete))
            .await
            .expect("first full pass");
        (prefill, again, full, between)
    });
    assert!(
        prefill.read_kernel && prefill.errors.is_empty(),
        "{prefill:?}"
    );
    assert_eq!(prefill.ops_applied, 3, "only peer 3's entries: {prefill:?}");
    assert_eq!(prefill_again.ops_planned, 0, "{prefill_again:?}");
    assert_eq!(
        routes_between, 3,
        "nothing deleted while the list is incomplete"
    );
    assert!(
        !full.read_kernel,
        "the prefill read the kernel, the pass after it needs no second read: {full:?}"
    );
    assert_eq!(
        full.ops_applied, 3,
        "peer 4's three entries removed: {full:?}"
    );
    assert_eq!(trellis_routes(ns).len(), 2);
}

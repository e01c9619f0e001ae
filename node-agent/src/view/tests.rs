use super::fixtures::*;
use super::*;
use crate::annotations::{AnnotationError, PeerBackend};

fn reason<'a>(r: &'a Resolved<'_>, node: &str) -> Option<&'a SkipReason> {
    r.skipped.iter().find(|s| s.node == node).map(|s| &s.reason)
}

fn names(r: &Resolved<'_>) -> Vec<String> {
    r.peers.iter().map(|p| p.name.to_string()).collect()
}

/// Asserts that `node` was skipped for a reason matching the pattern (and guard).
macro_rules! assert_skipped {
    ($r:expr, $node:expr, $reason:pat $(if $guard:expr)?) => {{
        let got = reason(&$r, $node);
        assert!(matches!(got, Some($reason) $(if $guard)?), "{}: {got:?}", $node);
    }};
}

/// Resolving `v` with the vxlan config programs exactly `peers` and skips `node` for a reason
/// matching the pattern (and guard).
macro_rules! assert_resolved {
    ($v:expr, $peers:expr, $node:expr => $reason:pat $(if $guard:expr)?) => {{
        let r = $v.resolve(&vxlan_config());
        assert_eq!(names(&r), $peers);
        assert_skipped!(r, $node, $reason $(if $guard)?);
    }};
}

/// node-`i` (vxlan), created at `created` (unix seconds).
fn born(i: u32, created: i64) -> NodeInfo {
    let mut n = PeerSpec::new(i, "vxlan").node();
    n.created_unix = Some(created);
    n
}

fn set(n: &mut NodeInfo, key: &str, value: &str) {
    n.annotations
        .insert(format!("flannel.alpha.coreos.com/{key}"), value.into());
}

/// A view that has seen `nodes`, each upserted at `at` (unix seconds) if given.
fn view_of(nodes: &[&NodeInfo], at: Option<i64>) -> ClusterView {
    let mut v = view();
    for n in nodes {
        match at {
            Some(at) => v.upsert_node_at(n, at),
            None => v.upsert_node(n),
        };
    }
    v
}

/// Advertises node-`of`'s VTEP MAC (on VNI 1) as its own.
fn copy_mac(n: &mut NodeInfo, of: u32) {
    set(
        n,
        "backend-data",
        &format!(r#"{{"VNI":1,"VtepMAC":"{}"}}"#, peer_mac(of)),
    );
}

#[test]
fn a_valid_node_becomes_a_compact_peer() {
    let mut v = view();
    assert!(v.upsert_node(&PeerSpec::new(2, "vxlan").node()));
    let r = v.resolve(&vxlan_config());
    assert_eq!(names(&r), ["node-2"]);
    assert!(r.skipped.is_empty());
    let p = r.peers[0];
    assert_eq!(p.subnet_v4, Some("10.244.2.0/24".parse().unwrap()));
    assert_eq!(p.public_ip_v4, Some("192.168.1.2".parse().unwrap()));
    assert!(
        matches!(p.backend, PeerBackend::Vxlan { v4: Some(d), v6: None } if d.vtep_mac == peer_mac(2))
    );
}

#[test]
fn peers_stay_small() {
    // Thousands of peers: keep the per-peer footprint in check.
    assert!(
        std::mem::size_of::<Peer>() <= 160,
        "{}",
        std::mem::size_of::<Peer>()
    );
}

#[test]
fn upsert_reports_only_relevant_changes() {
    let mut v = view();
    let mut n = PeerSpec::new(2, "vxlan").node();
    assert!(v.upsert_node(&n));
    assert!(!v.upsert_node(&n), "same node again is no change");
    // An annotation planning does not read (e.g. kubelet's) is no change either.
    n.annotations
        .insert("node.alpha.kubernetes.io/ttl".into(), "0".into());
    assert!(!v.upsert_node(&n));
    set(&mut n, "public-ip", "192.168.1.99");
    assert!(v.upsert_node(&n));
    assert_eq!(v.node_count(), 1);
    assert!(v.remove_node("node-2"));
    assert!(!v.remove_node("node-2"));
    assert_eq!(v.node_count(), 0);
}

#[test]
fn the_local_node_is_not_a_peer() {
    let mut v = view();
    let mut n = PeerSpec::new(2, "vxlan").node();
    n.name = "local".into();
    // Our own Node moves the lease (here to node-2's podCIDR), never the peers.
    assert!(v.upsert_node(&n));
    assert_eq!(v.local().subnet_v4, Some("10.244.2.0/24".parse().unwrap()));
    assert!(!v.upsert_node(&n));
    assert_eq!(v.node_count(), 0);
}

#[test]
fn retain_drops_unlisted_nodes() {
    let mut v = view();
    for i in 2..6 {
        v.upsert_node(&PeerSpec::new(i, "vxlan").node());
    }
    assert!(v.retain_nodes(|n| n == "node-3" || n == "node-5"));
    assert!(!v.retain_nodes(|_| true));
    assert_eq!(names(&v.resolve(&vxlan_config())), ["node-3", "node-5"]);
}

/// How a test breaks a valid Node: an annotation (suffix of flannel's prefix) removed or set,
/// or its podCIDRs replaced.
enum Edit {
    Remove(&'static str),
    Set(&'static str, &'static str),
    Cidrs(&'static [&'static str]),
}

/// Whether a skip reason is the one a case expects.
type IsReason = fn(&SkipReason) -> bool;

#[test]
fn bad_nodes_are_skipped_with_typed_reasons_and_others_survive() {
    let mut v = view();
    let good = PeerSpec::new(2, "vxlan").node();
    v.upsert_node(&good);
    // node-3, node-4, ... each broken one way, and the reason it is skipped for.
    let cases: [(Edit, IsReason); 10] = [
        (Edit::Remove("kube-subnet-manager"), |r| {
            *r == SkipReason::NotManaged
        }),
        (Edit::Cidrs(&[]), |r| *r == SkipReason::NoPodCidr),
        (Edit::Set("backend-data", "{oops"), |r| {
            matches!(
                r,
                SkipReason::BadAnnotation(AnnotationError::BadBackendData { .. })
            )
        }),
        (Edit::Set("public-ip", "not-an-ip"), |r| {
            matches!(r, SkipReason::BadAnnotation(AnnotationError::BadIp { .. }))
        }),
        (Edit::Cidrs(&["10.244.7.0"]), |r| {
            matches!(r, SkipReason::BadPodCidr(_))
        }),
        (Edit::Set("backend-type", "ipsec"), |r| {
            matches!(
                r,
                SkipReason::BadAnnotation(AnnotationError::UnsupportedBackend { .. })
            )
        }),
        (Edit::Cidrs(&["10.99.9.0/24"]), |r| {
            matches!(r, SkipReason::OutsideNetwork { .. })
        }),
        (Edit::Cidrs(&["10.244.1.128/25"]), |r| {
            matches!(r, SkipReason::OverlapsLocal { .. })
        }),
        (Edit::Set("public-ip", "192.168.1.1"), |r| {
            matches!(r, SkipReason::PublicIpIsLocal { .. })
        }),
        (Edit::Remove("public-ip"), |r| {
            *r == SkipReason::MissingForFamily {
                family: Family::V4,
                missing: Missing::PublicIp,
            }
        }),
    ];
    let key = |suffix: &str| format!("flannel.alpha.coreos.com/{suffix}");
    for (i, (edit, _)) in (3..).zip(&cases) {
        let mut node = PeerSpec::new(i, "vxlan").node();
        match edit {
            Edit::Remove(k) => {
                node.annotations.remove(&key(k));
            }
            Edit::Set(k, value) => {
                node.annotations.insert(key(k), value.to_string());
            }
            Edit::Cidrs(cidrs) => node.pod_cidrs = cidrs.iter().map(|c| c.to_string()).collect(),
        }
        v.upsert_node(&node);
    }

    let r = v.resolve(&vxlan_config());
    assert_eq!(names(&r), ["node-2"]);
    for (i, (_, expected)) in (3..).zip(&cases) {
        let node = format!("node-{i}");
        let got = reason(&r, &node);
        assert!(got.is_some_and(*expected), "{node}: {got:?}");
    }
    assert_eq!(r.skipped.len(), cases.len());
    // Sorted by name, labelled for metrics, readable for logs.
    let mut sorted = r.skipped.clone();
    sorted.sort_by(|a, b| a.node.cmp(&b.node));
    assert_eq!(sorted, r.skipped);
    for s in &r.skipped {
        assert!(!s.reason.label().is_empty());
        assert!(!s.reason.to_string().is_empty());
    }
    assert!(SkipReason::NotManaged.is_benign() && SkipReason::NoPodCidr.is_benign());
    assert!(!reason(&r, "node-9").unwrap().is_benign());
}

#[test]
fn overlapping_peers_keep_the_older_then_the_first_name() {
    let mut a = PeerSpec::new(2, "vxlan").node();
    let mut b = PeerSpec::new(3, "vxlan").node();
    b.pod_cidrs = a.pod_cidrs.clone();
    // Without timestamps: the first name wins.
    let mut v = view_of(&[&a, &b], None);
    let r = v.resolve(&vxlan_config());
    assert_eq!(names(&r), ["node-2"]);
    assert_eq!(
        reason(&r, "node-3"),
        Some(&SkipReason::OverlapsPeer {
            subnet: "10.244.2.0/24".parse().unwrap(),
            other: "node-2".into()
        })
    );
    // The older node wins whatever its name.
    a.created_unix = Some(2_000);
    b.created_unix = Some(1_000);
    v.upsert_node(&a);
    v.upsert_node(&b);
    assert_resolved!(v, ["node-3"], "node-2" => SkipReason::OverlapsPeer { other, .. } if other == "node-3");
    // When the winner leaves, the other one is programmed.
    v.remove_node("node-3");
    assert_eq!(names(&v.resolve(&vxlan_config())), ["node-2"]);
}

#[test]
fn partial_overlaps_are_found_both_ways() {
    // node-2..=6, older first: wide, inside it, before it, after it, spanning all of them.
    let cidrs = [
        "10.244.8.0/22",
        "10.244.10.0/24",
        "10.244.7.0/24",
        "10.244.12.0/24",
        "10.244.0.0/20",
    ];
    let mut v = view();
    for (i, cidr) in (2..).zip(cidrs) {
        let mut n = born(i, i64::from(i) - 1);
        n.pod_cidrs = vec![cidr.into()];
        v.upsert_node(&n);
    }
    let r = v.resolve(&vxlan_config());
    assert_eq!(names(&r), ["node-2", "node-4", "node-5"]);
    assert_skipped!(r, "node-3", SkipReason::OverlapsPeer { other, .. } if other == "node-2");
    // 10.244.0.0/20 overlaps the local 10.244.1.0/24 first.
    assert_skipped!(r, "node-6", SkipReason::OverlapsLocal { .. });
}

#[test]
fn duplicate_public_ips_keep_one() {
    let a = PeerSpec::new(2, "vxlan").node();
    let mut b = PeerSpec::new(3, "vxlan").node();
    set(&mut b, "public-ip", "192.168.1.2");
    let v = view_of(&[&a, &b], None);
    assert_resolved!(v, ["node-2"], "node-3" => SkipReason::DuplicatePublicIp { other, .. } if other == "node-2");
}

#[test]
fn a_skipped_peer_does_not_block_others() {
    // node-3 overlaps node-2 (older) and is skipped; node-4 shares node-3's public IP but
    // must not be blocked by a peer that was itself skipped.
    let mut v = view();
    let a = born(2, 1);
    let mut b = PeerSpec::new(3, "vxlan").node();
    b.pod_cidrs = a.pod_cidrs.clone();
    b.created_unix = Some(2);
    let mut c = PeerSpec::new(4, "vxlan").node();
    set(&mut c, "public-ip", "192.168.1.3");
    c.created_unix = Some(3);
    for n in [&a, &b, &c] {
        v.upsert_node(n);
    }
    assert_eq!(names(&v.resolve(&vxlan_config())), ["node-2", "node-4"]);
}

#[test]
fn enabled_families_are_required_and_checked() {
    let dual = dual_config(r#"{"Type": "vxlan"}"#);
    let mut v = view();
    v.upsert_node(&PeerSpec::new(2, "vxlan").dual().node());
    v.upsert_node(&PeerSpec::new(3, "vxlan").node()); // IPv4 only
    let mut bad6 = PeerSpec::new(4, "vxlan").dual().node();
    bad6.pod_cidrs[1] = "fd00:99::/64".into();
    v.upsert_node(&bad6);
    let mut dup6 = PeerSpec::new(5, "vxlan").dual().node();
    set(&mut dup6, "public-ipv6", "fd00:192::2");
    v.upsert_node(&dup6);
    let r = v.resolve(&dual);
    assert_eq!(names(&r), ["node-2"]);
    assert_eq!(
        reason(&r, "node-3"),
        Some(&SkipReason::MissingForFamily {
            family: Family::V6,
            missing: Missing::PodCidr
        })
    );
    assert_skipped!(r, "node-4", SkipReason::OutsideNetwork { .. });
    assert_skipped!(r, "node-5", SkipReason::DuplicatePublicIp { .. });
    // The same nodes with IPv4 only: the IPv6 side is not looked at.
    let r = v.resolve(&vxlan_config());
    assert_eq!(names(&r), ["node-2", "node-3", "node-4", "node-5"]);
}

#[test]
fn pod_cidrs_table() {
    let ok = |c: &[&str]| parse_pod_cidrs(&c.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    let (v4, v6) = ok(&["10.244.3.0/24", "fd00::/64"]).unwrap();
    assert_eq!(v4, Some("10.244.3.0/24".parse().unwrap()));
    assert_eq!(v6, Some("fd00::/64".parse().unwrap()));
    let (v4, v6) = ok(&["fd00::/64"]).unwrap();
    assert!(v4.is_none() && v6.is_some());
    // Host bits are masked, like Go's ParseCIDR.
    assert_eq!(
        ok(&["10.244.3.7/24"]).unwrap().0,
        Some("10.244.3.0/24".parse().unwrap())
    );
    assert_eq!(ok(&[]), Err(SkipReason::NoPodCidr));
    let long = "1".repeat(100);
    for bad in [
        vec!["10.244.3.0/24", "10.244.4.0/24"],
        vec!["fd00::/64", "fd01::/64"],
        vec!["10.244.3.0/24", "fd00::/64", "fd01::/64"],
        vec!["10.244.3.0"],
        vec!["garbage"],
        vec!["10.244.3.0/33"],
        vec![long.as_str()],
    ] {
        assert!(
            matches!(ok(&bad), Err(SkipReason::BadPodCidr(_))),
            "{bad:?}"
        );
    }
}

/// As flannel's route lookup: the most specific route toward the peer decides.
#[test]
fn on_link_follows_the_most_specific_route() {
    let mut u = lease().underlay;
    let route = |dst: &str, direct| crate::view::UnderlayRoute {
        dst: dst.parse().unwrap(),
        direct,
        metric: 0,
    };
    u.routes = vec![
        route("0.0.0.0/0", false),
        route("192.168.1.0/24", true),
        route("192.168.1.128/25", false),
        route("10.9.0.0/16", true),
        route("fd00:192::/64", true),
    ];
    let on = |ip: &str| u.on_link(ip.parse().unwrap());
    assert!(on("192.168.1.77"), "connected");
    assert!(
        !on("192.168.1.200"),
        "inside our prefix, but routed via a gateway"
    );
    assert!(
        on("10.9.3.4"),
        "another connected prefix out of the underlay"
    );
    assert!(!on("172.16.0.1"), "only the default route");
    assert!(!on("192.168.1.1"), "ourselves");
    assert!(on("fd00:192::5"));
    assert!(!on("fd00:193::5"), "no IPv6 route covers it");
    // host-gw asks what the kernel asks of a gateway: any direct route out of the underlay.
    let gw = |ip: &str| u.reachable_as_gateway(ip.parse().unwrap());
    assert!(
        gw("192.168.1.200"),
        "inside a connected prefix, whatever else routes it"
    );
    assert!(gw("10.9.3.4") && !gw("172.16.0.1") && !gw("192.168.1.1"));

    // Two routes of one prefix: the kernel takes the lower metric, and so does the lookup.
    let mut two = lease().underlay;
    let metric = |direct, metric| crate::view::UnderlayRoute {
        dst: "192.168.1.0/24".parse().unwrap(),
        direct,
        metric,
    };
    two.routes = vec![metric(true, 100), metric(false, 101)];
    assert!(two.on_link("192.168.1.77".parse().unwrap()));
    two.routes = vec![metric(false, 100), metric(true, 101)];
    assert!(!two.on_link("192.168.1.77".parse().unwrap()));
}

#[test]
fn on_link_means_same_subnet_not_ourselves() {
    let u = lease().underlay;
    assert!(u.on_link("192.168.1.77".parse().unwrap()));
    assert!(!u.on_link("192.168.1.1".parse().unwrap()));
    assert!(!u.on_link("192.168.2.77".parse().unwrap()));
    assert!(u.on_link("fd00:192::5".parse().unwrap()));
    assert!(!u.on_link("fd00:193::5".parse().unwrap()));
    let mut bare = u.clone();
    bare.addr_v6 = None;
    assert!(!bare.on_link("fd00:192::5".parse().unwrap()));
}

#[test]
fn resolves_five_thousand_nodes() {
    let cfg = config(r#"{"Network": "10.0.0.0/8", "Backend": {"Type": "vxlan"}}"#);
    let mut v = view();
    for i in 256..5256 {
        assert!(v.upsert_node(&PeerSpec::new(i, "vxlan").node()));
    }
    let r = v.resolve(&cfg);
    assert_eq!(r.peers.len(), 5000);
    assert!(
        r.skipped.is_empty(),
        "{:?}",
        &r.skipped[..r.skipped.len().min(3)]
    );
}

#[test]
fn an_older_node_that_changes_its_claims_does_not_displace_a_holder() {
    let mut v = view();
    let mut old = born(2, 1_000);
    let holder = born(3, 5_000);
    assert!(v.upsert_node_at(&old, 6_000));
    assert!(v.upsert_node_at(&holder, 6_000));
    assert_eq!(names(&v.resolve(&vxlan_config())), ["node-2", "node-3"]);

    // At 7000 the old node starts advertising the holder's public IP: its claim dates from
    // then, so the holder (created at 5000) keeps it.
    old.annotations.insert(
        "flannel.alpha.coreos.com/public-ip".into(),
        holder.annotations["flannel.alpha.coreos.com/public-ip"].clone(),
    );
    assert!(v.upsert_node_at(&old, 7_000));
    assert_resolved!(v, ["node-3"], "node-2" => SkipReason::DuplicatePublicIp { other, .. } if other == "node-3");
    // Then the holder's subnet too.
    old.pod_cidrs = holder.pod_cidrs.clone();
    assert!(v.upsert_node_at(&old, 8_000));
    assert_resolved!(v, ["node-3"], "node-2" => SkipReason::OverlapsPeer { other, .. } if other == "node-3");
    // A status heartbeat (no claim change) does not re-date anything.
    old.annotations
        .insert("node.alpha.kubernetes.io/ttl".into(), "0".into());
    assert!(!v.upsert_node_at(&old, 9_000));

    // A view that never saw the change (an agent started afterwards) can only go by age.
    let mut fresh = view();
    fresh.upsert_node_at(&old, 9_000);
    fresh.upsert_node_at(&holder, 9_000);
    assert_eq!(names(&fresh.resolve(&vxlan_config())), ["node-2"]);

    // Once the holder leaves, the claim is free and the old node is programmed.
    assert!(v.remove_node("node-3"));
    assert_eq!(names(&v.resolve(&vxlan_config())), ["node-2"]);
}

#[test]
fn a_node_claiming_a_free_subnet_is_programmed_at_once() {
    let mut v = view();
    let mut n = born(2, 1_000);
    v.upsert_node_at(&n, 1_000);
    n.pod_cidrs = vec!["10.244.9.0/24".into()];
    assert!(v.upsert_node_at(&n, 2_000));
    let r = v.resolve(&vxlan_config());
    assert_eq!(names(&r), ["node-2"]);
    assert_eq!(r.peers[0].subnet_v4, Some("10.244.9.0/24".parse().unwrap()));
}

#[test]
fn foreign_vnis_are_bounded_and_the_older_claims_keep_theirs() {
    let mut v = view();
    // node-2 on our VNI, node-3..=6 each on a VNI of its own, older first.
    for (i, vni) in [(2u32, 1u32), (3, 7), (4, 8), (5, 9), (6, 7)] {
        let mut n = PeerSpec::new(i, "vxlan").vni(vni).node();
        n.created_unix = Some(i64::from(i));
        v.upsert_node(&n);
    }
    let r = v.resolve(&vxlan_config());
    // VNIs 7 and 8 take the two foreign slots; node-6 shares VNI 7 and costs nothing more.
    assert_eq!(names(&r), ["node-2", "node-3", "node-4", "node-6"]);
    assert_eq!(
        reason(&r, "node-5"),
        Some(&SkipReason::TooManyVnis {
            vni: 9,
            max: MAX_FOREIGN_VNIS
        })
    );
    assert_eq!(reason(&r, "node-5").unwrap().label(), "too_many_vnis");
    // A slot freed is taken by the next claim.
    v.remove_node("node-4");
    assert_eq!(
        names(&v.resolve(&vxlan_config())),
        ["node-2", "node-3", "node-5", "node-6"]
    );
}

#[test]
fn a_copied_vtep_mac_is_kept_by_the_first_claim_whatever_the_names() {
    // The thief copies node-2's MAC with a subnet and public IP of its own. Whether its name
    // sorts after the victim's or before, the older claim keeps the MAC.
    for (thief_name, created) in [("zz-thief", Some(2)), ("aa-thief", Some(2)), ("zz", None)] {
        let mut v = view();
        let victim = born(2, 1);
        let mut thief = PeerSpec::new(9, "vxlan").node();
        thief.name = thief_name.into();
        thief.created_unix = created;
        copy_mac(&mut thief, 2);
        v.upsert_node(&victim);
        v.upsert_node(&thief);
        let r = v.resolve(&vxlan_config());
        assert_eq!(names(&r), ["node-2"], "{thief_name}");
        assert_skipped!(r, thief_name, SkipReason::DuplicateVtepMac { other, vni: 1, .. } if other == "node-2");
    }
}

#[test]
fn a_vtep_mac_on_another_vni_or_family_is_no_conflict() {
    let mut v = view();
    v.upsert_node(&PeerSpec::new(2, "vxlan").node());
    let mut other_vni = PeerSpec::new(3, "vxlan").vni(2).node();
    set(
        &mut other_vni,
        "backend-data",
        &format!(r#"{{"VNI":2,"VtepMAC":"{}"}}"#, peer_mac(2)),
    );
    v.upsert_node(&other_vni);
    assert_eq!(names(&v.resolve(&vxlan_config())), ["node-2", "node-3"]);
}

#[test]
fn our_own_vtep_mac_is_refused() {
    let mut v = view();
    let mut n = PeerSpec::new(2, "vxlan").dual().node();
    set(
        &mut n,
        "backend-v6-data",
        &format!(r#"{{"VNI":1,"VtepMAC":"{LOCAL_MAC6}"}}"#),
    );
    v.upsert_node(&n);
    let r = v.resolve(&dual_config(r#"{"Type": "vxlan"}"#));
    assert!(r.peers.is_empty());
    assert_skipped!(r, "node-2", SkipReason::VtepMacIsLocal { mac } if *mac == LOCAL_MAC6);
    // IPv6 off: its v6 data is not programmed, so it claims nothing.
    assert_eq!(names(&v.resolve(&vxlan_config())), ["node-2"]);
}

#[test]
fn a_node_that_starts_copying_a_mac_does_not_take_it_from_a_younger_holder() {
    let mut old = born(2, 1_000);
    let holder = born(3, 5_000);
    let mut v = view_of(&[&old, &holder], Some(6_000));
    copy_mac(&mut old, 3);
    assert!(v.upsert_node_at(&old, 7_000));
    assert_resolved!(v, ["node-3"], "node-2" => SkipReason::DuplicateVtepMac { other, .. } if other == "node-3");
}

#[test]
fn public_ips_that_cannot_be_endpoints_are_refused_for_every_backend() {
    for backend in ["vxlan", "host-gw"] {
        let config = config(&format!(
            r#"{{"Network": "10.244.0.0/16", "Backend": {{"Type": "{backend}"}}}}"#
        ));
        let mut v = view();
        let bad = [
            (3, "192.168.1.255"),
            (4, "0.0.0.0"),
            (5, "127.0.0.1"),
            (6, "224.0.0.5"),
            (7, "255.255.255.255"),
            (8, "192.168.1.0"),
        ];
        for (i, ip) in bad {
            let mut n = PeerSpec::new(i, backend).node();
            set(&mut n, "public-ip", ip);
            v.upsert_node(&n);
        }
        v.upsert_node(&PeerSpec::new(2, backend).node());
        let r = v.resolve(&config);
        assert_eq!(names(&r), ["node-2"], "{backend}");
        for (i, ip) in bad {
            assert!(
                matches!(
                    reason(&r, &format!("node-{i}")),
                    Some(SkipReason::UnusablePublicIp { ip: got, .. }) if got.to_string() == ip
                ),
                "{backend} {ip}: {:?}",
                reason(&r, &format!("node-{i}"))
            );
        }
    }
}

#[test]
fn a_holder_that_changes_something_else_keeps_what_it_held() {
    // H (old) copies V's MAC at 7000 and loses it; V then changes only its public IP: V's
    // claim to the MAC still dates from its creation, so V keeps it.
    let mut thief = born(2, 1_000);
    let mut holder = born(3, 5_000);
    let mut v = view_of(&[&thief, &holder], Some(6_000));
    copy_mac(&mut thief, 3);
    v.upsert_node_at(&thief, 7_000);
    assert_eq!(names(&v.resolve(&vxlan_config())), ["node-3"]);
    set(&mut holder, "public-ip", "192.168.1.33");
    assert!(v.upsert_node_at(&holder, 8_000));
    assert_resolved!(v, ["node-3"], "node-2" => SkipReason::DuplicateVtepMac { other, .. } if other == "node-3");
    // A brief invalid state of the holder does not re-date its claims either.
    let mut broken = holder.clone();
    set(&mut broken, "backend-data", "{");
    assert!(v.upsert_node_at(&broken, 9_000));
    assert!(v.upsert_node_at(&holder, 9_500));
    assert_eq!(names(&v.resolve(&vxlan_config())), ["node-3"]);
}

#[test]
fn a_peer_considered_first_loses_everything_to_an_older_claim_it_collides_with() {
    // node-2's newest claim (a subnet taken at 9000) sorts it after node-3, whose public IP
    // it copied at 9000 too, but node-3 ... is newer overall: its subnet was taken at 9500.
    // node-2's claim to node-3's old address is newer than node-3's: node-3 keeps it.
    let mut a = born(2, 1_000);
    let mut b = born(3, 2_000);
    let mut v = view_of(&[&a, &b], Some(3_000));
    set(&mut a, "public-ip", "192.168.1.3"); // b's address, claimed at 9000
    v.upsert_node_at(&a, 9_000);
    b.pod_cidrs = vec!["10.244.30.0/24".into()]; // b moves its subnet at 9500
    v.upsert_node_at(&b, 9_500);
    // a (newest claim 9000) is considered before b (9500) and accepted; then b collides on
    // the address, which b has held since 2000: b wins, a is skipped.
    assert_resolved!(v, ["node-3"], "node-2" => SkipReason::DuplicatePublicIp { other, .. } if other == "node-3");
}

#[test]
fn a_subnet_spanning_several_accepted_ones_loses_to_each_older_holder() {
    let mut v = view();
    for i in [2, 3] {
        let n = born(i, 1_000);
        v.upsert_node_at(&n, 1_000);
    }
    let mut wide = born(9, 2_000);
    wide.pod_cidrs = vec!["10.244.0.0/22".into()]; // spans node-2's and node-3's /24s
    v.upsert_node_at(&wide, 2_000);
    let r = v.resolve(&config(
        r#"{"Network": "10.0.0.0/8", "Backend": {"Type": "vxlan"}}"#,
    ));
    assert_skipped!(
        r,
        "node-9",
        SkipReason::OverlapsLocal { .. } | SkipReason::OverlapsPeer { .. }
    );
    assert_eq!(names(&r), ["node-2", "node-3"]);
}

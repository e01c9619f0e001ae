//! Privileged: the plugin for real, in throwaway network namespaces.

mod common;

use common::*;
use serde_json::Value;

fn with_prev(conf: &str, prev: &Value) -> String {
    let mut c: Value = serde_json::from_str(conf).unwrap();
    c["prevResult"] = prev.clone();
    c.to_string()
}

#[test]
fn add_check_del_round_trip_in_every_version() {
    let node = Node::new("life", SUBNET_ENV);
    for (i, version) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
        .iter()
        .enumerate()
    {
        let pod = netns("pod");
        let id = format!("ctr{i}");
        let conf = node.conf(version, "");
        let add = node.cni("ADD", &id, Some(&pod.path()), "eth0", &conf);
        assert!(add.ok, "{version}: {}", add.stdout);
        let res = add.json();
        assert_eq!(res["cniVersion"], *version);
        let ip = pod_ip(&res);
        assert!(ip.starts_with("10.244.1."), "{ip}");
        assert_eq!(res["interfaces"][2]["name"], "eth0");
        assert_eq!(
            res["interfaces"][2]["sandbox"],
            pod.path().display().to_string()
        );
        assert_eq!(res["ips"][0]["interface"], 2);
        assert_eq!(res["ips"][0]["gateway"], "10.244.1.1");
        assert_eq!(
            res["ips"][0].get("version").is_some(),
            version.starts_with("0.")
        );
        assert_eq!(res["routes"][0]["dst"], "0.0.0.0/0");

        // The kernel agrees with the result.
        let (_, addr) = pod.output(&["ip", "-o", "addr", "show", "dev", "eth0"]);
        assert!(addr.contains(&format!("{ip}/24")), "{addr}");
        let (_, mtu) = pod.output(&["cat", "/sys/class/net/eth0/mtu"]);
        assert_eq!(mtu.trim(), "1450");
        let (_, route) = pod.output(&["ip", "route", "show", "default"]);
        assert!(route.contains("via 10.244.1.1"), "{route}");
        let host_veth = res["interfaces"][1]["name"].as_str().unwrap().to_string();
        let (_, d) = node.ns.output(&["ip", "-d", "link", "show", &host_veth]);
        assert!(d.contains("master cni0") && d.contains("hairpin on"), "{d}");
        let (_, br) = node.ns.output(&["ip", "-o", "addr", "show", "dev", "cni0"]);
        assert!(br.contains("10.244.1.1/24"), "{br}");
        assert_eq!(
            std::fs::read_to_string(node.ipam_dir().join("cbr0").join(&ip)).unwrap(),
            format!("{id}\r\neth0")
        );

        // A repeated ADD answers the same address.
        let again = node.add(&id, &pod, &conf);
        assert_eq!(pod_ip(&again.json()), ip);

        if *version != "0.3.0" && *version != "0.3.1" {
            let check = node.cni(
                "CHECK",
                &id,
                Some(&pod.path()),
                "eth0",
                &with_prev(&conf, &res),
            );
            assert!(check.ok, "{version} CHECK: {}", check.stdout);
        }
        let del = node.cni("DEL", &id, Some(&pod.path()), "eth0", &conf);
        assert!(del.ok, "{}", del.stdout);
        assert!(!node.ipam_records().contains(&ip));
        assert!(!node.ns.settled_trellis_veths().contains(&host_veth));
    }
}

#[test]
fn check_reports_each_kind_of_drift() {
    let (node, pod, conf) = Node::with_pod("check");
    let add = node.add("c1", &pod, &conf);
    let res = add.json();
    let check = |expect: &str| {
        let out = node.cni(
            "CHECK",
            "c1",
            Some(&pod.path()),
            "eth0",
            &with_prev(&conf, &res),
        );
        assert_eq!(out.error_code(), 103, "{}", out.stdout);
        assert!(
            out.json()["msg"].as_str().unwrap().contains(expect),
            "{}",
            out.stdout
        );
    };
    pod.output(&["ip", "route", "del", "default"]);
    check("route 0.0.0.0/0");
    let ip = pod_ip(&res);
    pod.output(&["ip", "addr", "del", &format!("{ip}/24"), "dev", "eth0"]);
    check(&format!("lacks address {ip}"));
    std::fs::remove_file(node.ipam_dir().join("cbr0").join(&ip)).unwrap();
    pod.output(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
    pod.output(&["ip", "route", "add", "default", "via", "10.244.1.1"]);
    check("IPAM has no record");
    let host_veth = res["interfaces"][1]["name"].as_str().unwrap();
    node.ns
        .output(&["ip", "link", "set", host_veth, "nomaster"]);
    check("not attached to cni0");
    // CHECK without prevResult is a config error, and CHECK is unknown before 0.4.0.
    assert_eq!(
        node.cni("CHECK", "c1", Some(&pod.path()), "eth0", &conf)
            .error_code(),
        7
    );
    assert_eq!(
        node.cni(
            "CHECK",
            "c1",
            Some(&pod.path()),
            "eth0",
            &with_prev(&node.conf("0.3.1", ""), &res)
        )
        .error_code(),
        1
    );
}

#[test]
fn pods_reach_each_other_and_the_node() {
    let node = Node::new("ping", SUBNET_ENV);
    let conf = node.conf("1.0.0", "");
    let [(a, ra), (b, rb)] = node.add_two_pods(&conf);
    let (ipa, ipb) = (pod_ip(&ra.json()), pod_ip(&rb.json()));
    assert_ne!(ipa, ipb);
    assert!(a.ping(&ipb), "pod a cannot reach pod b");
    assert!(b.ping(&ipa), "pod b cannot reach pod a");
    assert!(a.ping("10.244.1.1"), "pod cannot reach its gateway");
    assert!(node.ns.ping(&ipa), "node cannot reach the pod");
}

#[test]
fn del_is_idempotent_and_survives_a_vanished_netns() {
    let (node, pod, conf) = Node::with_pod("del");
    assert!(node.cni("ADD", "c1", Some(&pod.path()), "eth0", &conf).ok);
    let path = pod.path();
    drop(pod); // the runtime removed the namespace before DEL
    let first = node.cni("DEL", "c1", Some(&path), "eth0", &conf);
    assert!(first.ok, "{}", first.stdout);
    let second = node.cni("DEL", "c1", None, "eth0", &conf);
    assert!(second.ok, "{}", second.stdout);
    assert!(node.ipam_records().is_empty());
    assert!(node.ns.settled_trellis_veths().is_empty());
    // DEL of something never added, and with no subnet.env at all.
    std::fs::remove_file(node.subnet_file()).unwrap();
    assert!(node.cni("DEL", "never", None, "eth0", &conf).ok);
}

#[test]
fn del_after_host_veth_was_removed_by_hand() {
    let (node, pod, conf) = Node::with_pod("delv");
    let add = node.cni("ADD", "c1", Some(&pod.path()), "eth0", &conf);
    assert!(add.ok);
    let veth = add.json()["interfaces"][1]["name"]
        .as_str()
        .unwrap()
        .to_string();
    node.ns.output(&["ip", "link", "del", &veth]);
    assert!(node.cni("DEL", "c1", Some(&pod.path()), "eth0", &conf).ok);
    assert!(node.ipam_records().is_empty());
    assert!(!pod.links().contains(&"eth0".to_string()));
}

#[test]
fn status_reports_a_missing_subnet_file_with_code_50() {
    let node = Node::new("status", SUBNET_ENV);
    let conf = node.conf("1.1.0", "");
    let env = [("CNI_COMMAND", "STATUS")];
    assert!(run_in(None, PLUGIN, &env, &conf).ok);
    std::fs::remove_file(node.subnet_file()).unwrap();
    let out = run_in(None, PLUGIN, &env, &conf);
    assert_eq!(out.error_code(), 50);
    assert!(out.json()["msg"]
        .as_str()
        .unwrap()
        .contains(&node.subnet_file().display().to_string()));
    assert_eq!(
        run_in(None, PLUGIN, &env, &node.conf("1.0.0", "")).error_code(),
        1
    );
}

#[test]
fn gc_releases_what_the_runtime_no_longer_knows() {
    let node = Node::new("gc", SUBNET_ENV);
    let conf = node.conf("1.1.0", "");
    let pods: Vec<Netns> = (0..3).map(|_| netns("pod")).collect();
    let mut ips = Vec::new();
    for (i, p) in pods.iter().enumerate() {
        let out = node.add(&format!("c{i}"), p, &conf);
        ips.push(pod_ip(&out.json()));
    }
    // A stray veth of ours with no record (its record deleted by hand).
    std::fs::remove_file(node.ipam_dir().join("cbr0").join(&ips[2])).unwrap();
    let gc_conf = node.conf(
        "1.1.0",
        r#","cni.dev/valid-attachments":[{"containerID":"c0","ifname":"eth0"}]"#,
    );
    let out = run_in(
        Some(&node.ns),
        PLUGIN,
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/usr/lib/cni")],
        &gc_conf,
    );
    assert!(out.ok, "{}", out.stdout);
    assert_eq!(node.ipam_records(), vec![ips[0].clone()]);
    assert_eq!(node.ns.trellis_veths().len(), 1, "{:?}", node.ns.links());
    assert!(pods[0].ping("10.244.1.1"), "the valid pod keeps working");
    // GC without the list refuses rather than collecting everything.
    let bad = run_in(Some(&node.ns), PLUGIN, &[("CNI_COMMAND", "GC")], &conf);
    assert_eq!(bad.error_code(), 7);
    assert_eq!(node.ipam_records().len(), 1);
}

#[test]
fn dual_stack_gets_both_families() {
    let env = format!(
        "{SUBNET_ENV}FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\n"
    );
    let node = Node::new("dual", &env);
    let conf = node.conf("1.0.0", "");
    let [(a, ra), (b, rb)] = node.add_two_pods(&conf);
    let v6 = |r: &Value| -> String {
        r["ips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["address"].as_str().unwrap().to_string())
            .find(|a| a.contains(':'))
            .expect("an IPv6 address")
    };
    let b6 = v6(&rb.json());
    assert!(b6.starts_with("fd00:10:244:1::"), "{b6}");
    assert_eq!(ra.json()["routes"][1]["dst"], "::/0");
    let (ok, out) = a.output(&[
        "ping",
        "-6",
        "-c",
        "1",
        "-W",
        "3",
        b6.split('/').next().unwrap(),
    ]);
    assert!(ok, "IPv6 ping failed: {out}");
    assert!(node.cni("DEL", "a", Some(&a.path()), "eth0", &conf).ok);
    assert!(node.cni("DEL", "b", Some(&b.path()), "eth0", &conf).ok);
    assert!(node.ipam_records().is_empty());
}

#[test]
fn hundred_parallel_adds_never_share_an_address() {
    let node = Node::new("par", SUBNET_ENV);
    let conf = node.conf("1.0.0", "");
    let pods: Vec<Netns> = (0..100).map(|_| netns("p")).collect();
    let results: Vec<Outcome> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (node, conf) = (&node, &conf);
                s.spawn(move || node.cni("ADD", &format!("par{i}"), Some(&p.path()), "eth0", conf))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let mut ips: Vec<String> = results
        .iter()
        .map(|r| {
            assert!(r.ok, "{}", r.stdout);
            pod_ip(&r.json())
        })
        .collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 100, "duplicate addresses handed out");
    assert_eq!(node.ipam_records().len(), 100);
    assert_eq!(node.ns.trellis_veths().len(), 100);
    std::thread::scope(|s| {
        for (i, p) in pods.iter().enumerate() {
            let (node, conf) = (&node, &conf);
            s.spawn(move || {
                let out = node.cni("DEL", &format!("par{i}"), Some(&p.path()), "eth0", conf);
                assert!(out.ok, "{}", out.stdout);
            });
        }
    });
    assert!(node.ipam_records().is_empty(), "{:?}", node.ipam_records());
    assert!(node.ns.settled_trellis_veths().is_empty());
    let mut left: Vec<String> = std::fs::read_dir(node.ipam_dir().join("cbr0"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, vec!["last_reserved_ip.0", "lock"]);
}

#[test]
fn del_isolates_the_pod_at_once_and_the_reaper_removes_the_pair() {
    let node = Node::new("reap", SUBNET_ENV);
    let conf = node.conf("1.0.0", "");
    let a = netns("pa");
    let b = netns("pb");
    let ra = node.cni("ADD", "a", Some(&a.path()), "eth0", &conf);
    assert!(ra.ok && node.cni("ADD", "b", Some(&b.path()), "eth0", &conf).ok);
    let ip_a = pod_ip(&ra.json());
    assert!(b.ping(&ip_a));
    assert!(node.cni("DEL", "a", Some(&a.path()), "eth0", &conf).ok);
    // Whether or not the reaper already ran, the deleted pod is unreachable.
    assert!(
        !b.ping(&ip_a),
        "a deleted pod must be cut off when DEL returns"
    );
    assert!(
        !a.settled_links_contain("eth0"),
        "the pair is destroyed in the background"
    );
    assert_eq!(node.ns.settled_trellis_veths().len(), 1);
    // A detached veth the reaper never got to is collected by GC.
    let rb = node.add("c", &a, &conf);
    let veth_c = rb.json()["interfaces"][1]["name"]
        .as_str()
        .unwrap()
        .to_string();
    node.ns
        .output(&["ip", "link", "set", &veth_c, "down", "nomaster"]);
    std::fs::remove_file(node.ipam_dir().join("cbr0").join(pod_ip(&rb.json()))).unwrap();
    let gc_conf = node.conf(
        "1.1.0",
        r#","cni.dev/valid-attachments":[{"containerID":"b","ifname":"eth0"}]"#,
    );
    assert!(run_in(Some(&node.ns), PLUGIN, &[("CNI_COMMAND", "GC")], &gc_conf).ok);
    assert!(!node.ns.links().contains(&veth_c));
}

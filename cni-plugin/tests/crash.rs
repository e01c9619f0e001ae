//! Privileged: SIGKILL the plugin at points spread over an ADD, then do what
//! a runtime does after a failed ADD (DEL, ADD again with the same container
//! id, ifname and netns, DEL). Nothing may leak and the retry must work.
//! The long campaign is hack/crash-plugin.sh; this is its short regression.

mod common;

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use common::*;

const KILLS: usize = 30;
const GATEWAY: &str = "10.244.1.1";

/// Start an ADD directly inside the node namespace (setns before exec, so
/// the pid we kill is the plugin itself from its first instruction).
fn start_add(node: &Node, container: &str, pod: &Netns, conf: &str) -> Child {
    use std::io::Write;
    let ns = std::fs::File::open(node.ns.path()).expect("open node netns");
    let fd = ns.as_raw_fd();
    let mut cmd = Command::new(PLUGIN);
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", pod.path())
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .env(
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=crash;K8S_POD_NAME=victim",
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only the setns syscall runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn plugin");
    drop(ns);
    let _ = child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf.as_bytes());
    child
}

fn lock_is_free(node: &Node) -> bool {
    let Ok(f) = std::fs::File::open(node.ipam_dir().join("cbr0/lock")) else {
        return true;
    };
    // SAFETY: flock on a descriptor we own.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    rc == 0
}

fn record(node: &Node, ip: &str) -> String {
    std::fs::read_to_string(node.ipam_dir().join("cbr0").join(ip)).unwrap_or_default()
}

/// What the killed ADD had done, judged from what it left.
fn stage(node: &Node, pod: &Netns, container: &str) -> &'static str {
    let (_, route) = pod.output(&["ip", "route", "show", "default"]);
    let (_, addr) = pod.output(&["ip", "-o", "-4", "addr", "show"]);
    let records = node.ipam_records();
    if route.contains("via") {
        "complete"
    } else if addr.contains("10.244.1.") {
        "pod address set"
    } else if pod.links().iter().any(|l| l == "eth0") || !node.ns.trellis_veths().is_empty() {
        "veth created"
    } else if records
        .iter()
        .any(|ip| record(node, ip).starts_with(container))
    {
        "address reserved"
    } else if !records.is_empty() {
        "record created, not written"
    } else {
        "nothing written"
    }
}

#[test]
fn sigkill_during_add_leaks_nothing_and_the_retry_works() {
    let node = Node::new("crash", SUBNET_ENV);
    let conf = node.conf("1.0.0", "");

    // How long an ADD runs once exec'd, here and now (the first one also
    // creates the bridge, so it is not counted).
    let mut times = Vec::new();
    for i in 0..4 {
        let pod = netns("cal");
        let t = Instant::now();
        let status = start_add(&node, &format!("cal{i}"), &pod, &conf)
            .wait()
            .expect("wait");
        times.push(t.elapsed());
        assert!(status.success(), "calibration ADD failed");
        assert!(
            node.cni("DEL", &format!("cal{i}"), Some(&pod.path()), "eth0", &conf)
                .ok
        );
    }
    times.remove(0);
    times.sort();
    let add_time = times[times.len() / 2];
    assert!(node.ns.settled_trellis_veths().is_empty());

    let mut stages: BTreeMap<&str, usize> = BTreeMap::new();
    for k in 0..KILLS {
        let pod = netns("victim");
        let id = format!("kill{k}");
        // Evenly over 0..1.2x the ADD's duration.
        let delay = add_time.mul_f64(1.2 * k as f64 / (KILLS - 1) as f64);
        let mut child = start_add(&node, &id, &pod, &conf);
        std::thread::sleep(delay);
        let exited = child.try_wait().expect("try_wait").is_some();
        let _ = child.kill();
        let _ = child.wait();
        let reached = if exited {
            "exited before the kill"
        } else {
            stage(&node, &pod, &id)
        };
        *stages.entry(reached).or_default() += 1;
        assert!(lock_is_free(&node), "kill {k} ({reached}): lock still held");
        let hint = std::fs::read_to_string(node.ipam_dir().join("cbr0/last_reserved_ip.0"))
            .unwrap_or_default();
        assert!(
            hint.is_empty() || hint.parse::<std::net::Ipv4Addr>().is_ok(),
            "kill {k} ({reached}): last_reserved_ip.0 is {hint:?}"
        );

        let del = node.cni("DEL", &id, Some(&pod.path()), "eth0", &conf);
        assert!(del.ok, "kill {k} ({reached}): DEL: {}", del.stdout);
        let add = node.cni("ADD", &id, Some(&pod.path()), "eth0", &conf);
        assert!(add.ok, "kill {k} ({reached}): retried ADD: {}", add.stdout);
        let ip = pod_ip(&add.json());
        let (_, addr) = pod.output(&["ip", "-o", "-4", "addr", "show", "dev", "eth0"]);
        assert!(addr.contains(&format!("{ip}/24")), "kill {k}: {addr}");
        assert_eq!(record(&node, &ip), format!("{id}\r\neth0"), "kill {k}");
        assert_eq!(
            node.ipam_records(),
            vec![ip.clone()],
            "kill {k} ({reached})"
        );
        assert!(
            pod.ping(GATEWAY),
            "kill {k}: pod {ip} cannot reach its gateway"
        );

        let del = node.cni("DEL", &id, Some(&pod.path()), "eth0", &conf);
        assert!(del.ok, "kill {k}: final DEL: {}", del.stdout);
        assert_eq!(node.ipam_records(), Vec::<String>::new(), "kill {k}");
        assert_eq!(
            node.ns.settled_trellis_veths(),
            Vec::<String>::new(),
            "kill {k}"
        );
        assert!(
            !pod.settled_links_contain("eth0"),
            "kill {k}: pod eth0 left"
        );
        assert!(lock_is_free(&node), "kill {k}: lock held after DEL");
    }
    // The store holds nothing but the lock and the allocation hint.
    let mut left: Vec<String> = std::fs::read_dir(node.ipam_dir().join("cbr0"))
        .expect("store")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, vec!["last_reserved_ip.0", "lock"]);
    eprintln!("ADD takes {add_time:?}; kills by stage reached: {stages:?}");
    let mid_add = KILLS
        - stages.get("nothing written").unwrap_or(&0)
        - stages.get("exited before the kill").unwrap_or(&0);
    assert!(
        mid_add >= 3,
        "kills should land inside the ADD, got {stages:?} (ADD {add_time:?})"
    );
}

fn ifindex(ns: &Netns, name: &str) -> Option<u32> {
    let (ok, out) = ns.output(&["ip", "-o", "link", "show", "dev", name]);
    if !ok {
        return None;
    }
    out.split(':').next().and_then(|i| i.trim().parse().ok())
}

/// The state a DEL leaves for its reaper (host end down and off the bridge),
/// then an immediate ADD of the same attachment, as after a killed ADD. The
/// ADD must not adopt that pair: the reaper may delete it at any moment (the
/// crash campaign caught exactly that: "vanished after creation").
#[test]
fn add_replaces_a_pair_left_for_the_reaper_and_the_reaper_spares_the_new_one() {
    let (node, pod, conf) = Node::with_pod("reap");
    let add = node.add("r1", &pod, &conf);
    let veth = add.json()["interfaces"][1]["name"]
        .as_str()
        .expect("host veth in result")
        .to_string();
    let old = ifindex(&node.ns, &veth).expect("host veth exists");
    for args in [["nomaster", ""], ["down", ""]] {
        let (ok, out) = node.ns.output(&["ip", "link", "set", &veth, args[0]]);
        assert!(ok, "{out}");
    }

    node.add("r1", &pod, &conf);
    let new = ifindex(&node.ns, &veth).expect("host veth after retry");
    assert_ne!(
        new, old,
        "ADD adopted the pair its DEL handed to the reaper"
    );
    let (_, d) = node.ns.output(&["ip", "-d", "link", "show", &veth]);
    assert!(d.contains("master cni0") && d.contains("state UP"), "{d}");

    // The late reaper of the old pair leaves the new one alone.
    let reap = run_in(
        Some(&node.ns),
        PLUGIN,
        &[("TRELLIS_REAP_LINK", &format!("{old}:{veth}"))],
        "",
    );
    assert!(reap.ok);
    assert_eq!(ifindex(&node.ns, &veth), Some(new));
    assert!(pod.ping(GATEWAY), "pod lost its network");
    assert!(node.cni("DEL", "r1", Some(&pod.path()), "eth0", &conf).ok);
    assert_eq!(node.ns.settled_trellis_veths(), Vec::<String>::new());
}

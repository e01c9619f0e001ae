//! Privileged: a plugin run waits for the node's IPAM store lock no longer than the config
//! says (`ipamLockTimeoutMs`); then it answers code 11 ("try again later") naming the lock
//! file, having made nothing, and the same run works once the lock is free.

mod common;

use common::*;

#[test]
fn add_del_and_gc_give_up_on_a_held_store_lock_with_code_11_naming_it() {
    let node = Node::new("lock", SUBNET_ENV);
    let pod = netns("pod");
    let conf = node.conf("1.1.0", r#","ipamLockTimeoutMs":200"#);
    let gc_conf = node.conf(
        "1.1.0",
        r#","ipamLockTimeoutMs":200,"cni.dev/valid-attachments":[]"#,
    );
    let lock_path = node.ipam_dir().join("cbr0/lock").display().to_string();
    let pod_links_before = pod.links();
    let holder = node.hold_ipam_lock();

    let gc = |c: &str| {
        run_in(
            Some(&node.ns),
            PLUGIN,
            &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/usr/lib/cni")],
            c,
        )
    };
    for (verb, out) in [
        (
            "ADD",
            node.cni("ADD", "lk0", Some(&pod.path()), "eth0", &conf),
        ),
        (
            "DEL",
            node.cni("DEL", "lk0", Some(&pod.path()), "eth0", &conf),
        ),
        ("GC", gc(&gc_conf)),
    ] {
        assert_eq!(out.error_code(), 11, "{verb}: {}", out.stdout);
        let msg = out.json()["msg"].as_str().unwrap_or_default().to_string();
        assert!(
            msg.contains(&lock_path),
            "{verb}: msg {msg:?} lacks {lock_path}"
        );
    }
    assert!(
        node.ns.trellis_veths().is_empty(),
        "the refused ADD left a veth"
    );
    assert!(
        node.ipam_records().is_empty(),
        "the refused ADD left a record"
    );
    assert_eq!(
        pod.links(),
        pod_links_before,
        "the refused ADD changed the pod"
    );

    drop(holder);
    let add = node.cni("ADD", "lk0", Some(&pod.path()), "eth0", &conf);
    assert!(add.ok, "ADD once the lock is free: {}", add.stdout);
    let del = node.cni("DEL", "lk0", Some(&pod.path()), "eth0", &conf);
    assert!(del.ok, "DEL once the lock is free: {}", del.stdout);
    assert!(gc(&gc_conf).ok, "GC once the lock is free");
}

//! A hung API server (connections accepted, answers never sent) must not stop kernel repair:
//! with the emulator hanging every new request, a route deleted by hand is put back within
//! 1 s, again and again (a pass that waited on the API would repair once and then stall);
//! the node stays ready; and once the API answers again the agent catches up with a Node
//! added meanwhile.
//!
//! Needs root and the workspace binaries (hack/test.sh builds them).

use std::time::{Duration, Instant};

use trellis_e2e::netns_cluster::Cluster;

const READY: Duration = Duration::from_secs(60);
const REPAIR_BOUND: Duration = Duration::from_secs(1);

fn has_route(c: &Cluster, i: usize, dst: &str) -> bool {
    c.nodes[i]
        .ns
        .exec(&["ip", "route", "show", dst, "proto", "116"])
        .is_ok_and(|o| o.contains(dst.trim_end_matches("/24")))
}

#[test]
fn kernel_repair_goes_on_while_the_api_hangs_and_the_agent_catches_up_after() {
    let mut c = Cluster::for_test(2, r#"{"Type":"vxlan"}"#, "hng");
    c.start_agents().expect("agents");
    c.wait_all_ready(READY).expect("ready");
    let peer = c.nodes[1].pod_cidr.clone();
    assert!(
        trellis_e2e::poll::poll_until(READY, Duration::from_millis(50), || has_route(&c, 0, &peer)),
        "node-1 never routed node-2"
    );

    c.with_faults(|f| async move { f.hang_for(Duration::from_secs(120)).await })
        .expect("hang the API");
    // Each round: delete the route, and the drift monitor's pass puts it back. Rounds span
    // a resync (10 s). The agent before 2026-12-04 read its own Node on every pass: the
    // first repair's pass hung on that read, and no second repair came.
    let mut worst = Duration::ZERO;
    let started = Instant::now();
    let mut rounds = 0;
    while started.elapsed() < Duration::from_secs(12) || rounds < 5 {
        c.nodes[0]
            .ns
            .exec(&["ip", "route", "del", &peer, "proto", "116"])
            .expect("delete the route");
        let t0 = Instant::now();
        let back = trellis_e2e::poll::poll_until(REPAIR_BOUND, Duration::from_millis(10), || {
            has_route(&c, 0, &peer)
        });
        let took = t0.elapsed();
        assert!(
            back,
            "round {rounds}: route not repaired within {REPAIR_BOUND:?} while the API hangs:\n{}",
            c.agent_log(0)
        );
        worst = worst.max(took);
        rounds += 1;
        std::thread::sleep(Duration::from_millis(700));
    }
    println!("{rounds} repairs with the API hung, slowest {worst:?}");
    assert!(
        matches!(c.agent_http(0, "/readyz"), Some((200, _))),
        "a hung API (for less than the watch limit) made the node not ready"
    );
    // The API answers again: a Node added now is programmed (the watch resumes or relists).
    c.with_faults(|f| async move { f.clear().await })
        .expect("clear the faults");
    let body = serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "late", "annotations": {
            "flannel.alpha.coreos.com/kube-subnet-manager": "true",
            "flannel.alpha.coreos.com/backend-type": "vxlan",
            "flannel.alpha.coreos.com/backend-data": r#"{"VNI":1,"VtepMAC":"0e:00:00:00:09:01"}"#,
            "flannel.alpha.coreos.com/public-ip": "192.168.50.99"}},
        "spec": {"podCIDR": "10.244.99.0/24", "podCIDRs": ["10.244.99.0/24"]}
    });
    c.kubectl_stdin(&["create", "-f", "-"], &body.to_string())
        .expect("create Node");
    assert!(
        trellis_e2e::poll::poll_until(READY, Duration::from_millis(100), || has_route(
            &c,
            0,
            "10.244.99.0/24"
        )),
        "node-1 did not catch up after the API came back:\n{}",
        c.agent_log(0)
    );
    c.stop_agent(0, false);
    c.stop_agent(1, false);
}

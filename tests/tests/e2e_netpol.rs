//! NetworkPolicy enforcement's life cycle on a 3-node cluster with real pods (the conformance
//! of the rules themselves is netpol_conformance.rs):
//! - off by default: a policy exists and nothing is isolated, no table on any node;
//! - turned on live from the ConfigMap, and off again (the table removed everywhere);
//! - an agent SIGKILLed and restarted: the denied connection stays denied while it is away
//!   (confirmed by the reject each probe gets, not by a timeout), the allowed one allowed, and
//!   the restarted agent finds the kernel as it wants it and sends no transaction;
//! - an API outage: the rules stay;
//! - a chain flushed by hand, and a verdict the agent cannot read back (a plain accept for an
//!   isolated pod): repaired by the next resync, the second by replacing the table whole;
//! - a policy with a field the agent does not know (a newer cluster): deny-all for its pods, a
//!   Warning Event on it, and `trellis_netpol_invalid_policies`.
//!
//! Needs root and the workspace binaries (hack/test.sh builds them).

use std::net::IpAddr;
use std::time::Duration;

use serde_json::{json, Value};
use trellis_e2e::netpol::harness::{NamespaceSpec, NetpolCluster, Options, PodSpec};
use trellis_e2e::netpol::model::Protocol;
use trellis_e2e::netpol::probe::{Kind, Target};
use trellis_testkit::poll::eventually;

const WAIT: Duration = Duration::from_secs(30);

/// One TCP probe on port 80: `Some(true)` answered, `Some(false)` rejected (the policy's ICMP
/// error: an event, not a timeout), `None` anything else (a timeout, an error).
fn reach(c: &NetpolCluster, from: &str, to: &str) -> Option<bool> {
    let ip: IpAddr = c.pod(to)?.ip.parse().ok()?;
    let target = Target::new(Protocol::Tcp, ip, 80);
    let r = c.probe_from(from, &[target]).ok()?.pop()?;
    match (r.ok, r.kind) {
        (true, _) => Some(true),
        (false, Kind::Unreachable) => Some(false),
        _ => None,
    }
}

fn policy(name: &str, pod: &str, extra_rule: Value) -> Value {
    let mut rule = json!({"from": [{"podSelector": {"matchLabels": {"pod": "nobody"}}}]});
    if let (Some(r), Some(e)) = (rule.as_object_mut(), extra_rule.as_object()) {
        r.extend(e.clone());
    }
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": name, "namespace": "x"},
           "spec": {"podSelector": {"matchLabels": {"pod": pod}}, "ingress": [rule]}})
}

fn set_enabled(c: &NetpolCluster, on: bool) {
    c.set_enforcement(on).expect("patch the ConfigMap");
}

fn has_table(c: &NetpolCluster, node: usize) -> bool {
    c.cluster.nodes[node]
        .ns
        .exec(&["nft", "list", "tables"])
        .is_ok_and(|t| t.contains("trellis-netpol"))
}

fn metric(c: &NetpolCluster, node: usize, name: &str) -> f64 {
    c.cluster.metric(node, name).unwrap_or(-1.0)
}

#[test]
fn enforcement_is_switched_live_and_survives_restarts_outages_and_hand_edits() {
    trellis_testkit::require_root();
    let opts = Options {
        tag: "enp".into(),
        network_policy: false,
        // The periodic read-back (drift repair) every 2 s instead of 10.
        agent_args: vec!["--resync-seconds=2".into()],
        ports: vec![80],
        ..Options::default()
    };
    let spaces = [NamespaceSpec::new("x", &[("ns", "x")])];
    // Round-robin: x/a on node 0, x/b on node 1, x/c on node 2.
    let pods: Vec<PodSpec> = ["a", "b", "c"]
        .iter()
        .map(|p| PodSpec::new("x", p, &[("pod", p)]))
        .collect();
    let mut c = NetpolCluster::up(opts, &spaces, &pods).expect("cluster");
    let (a, b, cc) = ("x/a", "x/b", "x/c");

    // Off by default: a deny-all for x/a isolates nothing.
    c.apply_policy(&policy("deny-a", "a", json!({})))
        .expect("policy");
    assert_eq!(reach(&c, b, a), Some(true));
    assert!(
        (0..3).all(|n| !has_table(&c, n)),
        "a table while enforcement is off"
    );

    // On, live.
    set_enabled(&c, true);
    assert!(
        eventually(WAIT, || reach(&c, b, a) == Some(false)),
        "x/a never isolated: {}",
        c.cluster.agent_log(0)
    );
    assert_eq!(reach(&c, a, b), Some(true), "x/b is not isolated");
    assert_eq!(reach(&c, cc, a), Some(false), "from the third node too");
    assert_eq!(metric(&c, 0, "trellis_netpol_pods_policed"), 1.0);

    // The agent of x/a's node SIGKILLed: the kernel keeps judging.
    c.cluster.stop_agent(0, true);
    assert_eq!(
        reach(&c, b, a),
        Some(false),
        "denied while the agent is away"
    );
    assert_eq!(
        reach(&c, a, b),
        Some(true),
        "allowed while the agent is away"
    );
    c.cluster.start_agent(0).expect("restart");
    c.cluster.wait_ready(0, WAIT).expect("ready again");
    assert!(
        eventually(WAIT, || metric(&c, 0, "trellis_netpol_pods_policed") == 1.0),
        "the restarted agent never enforced: {}",
        c.cluster.agent_log(0)
    );
    assert_eq!(
        metric(&c, 0, "trellis_netpol_applies_total"),
        0.0,
        "the restarted agent rewrote a table that was already right"
    );
    assert_eq!(reach(&c, b, a), Some(false));

    // An API outage: the rules stay, and a hand edit meanwhile is still repaired (the kernel
    // and the last state are all the agent needs).
    c.cluster.stop_emulator();
    assert_eq!(reach(&c, b, a), Some(false), "denied during the outage");
    c.cluster.nodes[0]
        .ns
        .exec(&["nft", "flush", "chain", "inet", "trellis-netpol", "to-pods"])
        .expect("flush by hand");
    assert!(
        eventually(WAIT, || reach(&c, b, a) == Some(false)
            && metric(&c, 0, "trellis_netpol_applies_total") >= 1.0),
        "the flushed chain was not repaired: {}",
        c.cluster.agent_log(0)
    );
    // A hand edit the agent cannot read back (x/a's verdict turned into a plain accept):
    // the table is replaced whole, x/a isolated again.
    let a_ip = c.pod(a).expect("x/a").ip.clone();
    let node0 = &c.cluster.nodes[0].ns;
    node0
        .exec(&[
            "nft",
            "delete",
            "element",
            "inet",
            "trellis-netpol",
            "to-pods/v4",
            &format!("{{ {a_ip} }}"),
        ])
        .expect("delete x/a's element by hand");
    node0
        .exec(&[
            "nft",
            "add",
            "element",
            "inet",
            "trellis-netpol",
            "to-pods/v4",
            &format!("{{ {a_ip} : accept }}"),
        ])
        .expect("an accept verdict by hand");
    assert_eq!(reach(&c, b, a), Some(true), "the hand edit opened x/a");
    assert!(
        eventually(WAIT, || reach(&c, b, a) == Some(false)),
        "the unreadable table was not replaced: {}",
        c.cluster.agent_log(0)
    );
    c.cluster
        .restart_emulator_with(&["--newer-api".into()])
        .expect("the API back, as a newer apiserver");

    // A field from a newer API: x/b's policy cannot be read, so x/b accepts nothing.
    c.apply_policy(&policy(
        "future-b",
        "b",
        json!({"from": [], "action": "Log"}),
    ))
    .expect("policy with a newer field");
    assert!(
        eventually(WAIT, || reach(&c, a, b) == Some(false)),
        "a policy the agent cannot read opened or kept open x/b: {}",
        c.cluster.agent_log(1)
    );
    assert!(eventually(WAIT, || metric(
        &c,
        1,
        "trellis_netpol_invalid_policies"
    ) == 1.0));
    let events = || {
        c.cluster
            .kubectl(&["get", "--raw", "/apis/events.k8s.io/v1/namespaces/x/events"])
            .unwrap_or_default()
    };
    assert!(
        eventually(WAIT, || events().contains("NetworkPolicyInvalid")
            && events().contains("future-b")),
        "no Event on the policy: {}",
        events()
    );

    // Off, live: every table goes, everything is reachable again.
    set_enabled(&c, false);
    assert!(
        eventually(WAIT, || (0..3).all(|n| !has_table(&c, n))),
        "a table stayed"
    );
    assert_eq!(reach(&c, b, a), Some(true));
    assert_eq!(reach(&c, a, b), Some(true));
    assert_eq!(metric(&c, 0, "trellis_netpol_enabled"), 0.0);
}

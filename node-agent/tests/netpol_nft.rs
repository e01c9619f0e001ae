//! Privileged: the NetworkPolicy table against the real `nft`, in a namespace of its own. What
//! the compiler writes must read back equal (the restarted agent's diff depends on it), every
//! incremental update must load, and removal must leave nothing.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::{json, Value};
use trellis_agent::netpol::compile::{compile, Inputs};
use trellis_agent::netpol::inputs::{NamedPort, PodInfo, NAME_LABEL};
use trellis_agent::netpol::policy::{Policy, Protocol};
use trellis_agent::netpol::ruleset::{self, parse_listing, Ruleset, TABLE};
use trellis_agent::netpol::selector::Labels;
use trellis_testkit::netns::Netns;

#[derive(Default)]
struct World {
    pods: BTreeMap<(String, String), PodInfo>,
    namespaces: BTreeMap<String, Labels>,
    policies: BTreeMap<(String, String), Policy>,
}

impl World {
    fn pod(&mut self, ns: &str, name: &str, node: &str, ips: &[&str]) {
        self.namespaces.entry(ns.into()).or_insert_with(|| {
            Labels::from([(NAME_LABEL.into(), ns.into()), ("ns".into(), ns.into())])
        });
        let p = PodInfo {
            namespace: ns.into(),
            name: name.into(),
            node: node.into(),
            labels: Labels::from([("pod".into(), name.into())]),
            ips: ips.iter().map(|s| s.parse::<IpAddr>().unwrap()).collect(),
            ports: vec![
                NamedPort {
                    name: "serve-80-tcp".into(),
                    protocol: Protocol::Tcp,
                    port: 80,
                },
                NamedPort {
                    name: "serve-81-udp".into(),
                    protocol: Protocol::Udp,
                    port: 81,
                },
            ],
        };
        self.pods.insert(p.key(), p);
    }

    fn policy(&mut self, ns: &str, name: &str, spec: Value) {
        self.policies.insert(
            (ns.into(), name.into()),
            Policy::parse(ns, name, &spec).unwrap(),
        );
    }

    fn ruleset(&self) -> Ruleset {
        let policies: Vec<&Policy> = self.policies.values().collect();
        let inp = Inputs {
            node: "n1",
            pods: &self.pods,
            namespaces: &self.namespaces,
            policies: &policies,
        };
        compile(&inp).ruleset
    }
}

fn nft(ns: &Netns, script: &str) {
    ns.exec_with_stdin("nft", &["-f", "-"], script)
        .unwrap_or_else(|e| panic!("nft refused:\n{script}\n{e}"));
}

fn read(ns: &Netns) -> Ruleset {
    let text = ns
        .exec(&["nft", "list", "table", "inet", TABLE])
        .expect("list");
    parse_listing(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// Applies the step from `old` and checks the kernel then holds exactly `new`.
fn step(ns: &Netns, old: Option<&Ruleset>, new: &Ruleset) {
    nft(ns, &ruleset::script(old, new));
    let back = read(ns);
    assert_eq!(
        &back,
        new,
        "read back differs; listing:\n{}",
        ns.exec(&["nft", "list", "table", "inet", TABLE]).unwrap()
    );
}

#[test]
fn the_table_reads_back_as_written_through_every_kind_of_change() {
    trellis_testkit::require_root();
    let ns = Netns::new("netpol-nft").expect("netns");
    let mut w = World::default();
    for (name, ip) in [("a", "10.244.1.2"), ("b", "10.244.1.3")] {
        w.pod(
            "x",
            name,
            "n1",
            &[ip, &format!("fd00:1::{}", &ip[ip.len() - 1..])],
        );
    }
    w.pod("y", "a", "n2", &["10.244.2.2"]);
    let base = w.ruleset();
    step(&ns, None, &base);

    w.policy("x", "allow-y", json!({"podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}, {"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.1.0/24"]}}],
                     "ports": [{"port": 80}, {"port": "serve-81-udp", "protocol": "UDP"}, {"port": 1000, "endPort": 2000}, {"protocol": "SCTP"}]}]}));
    w.policy("x", "deny-egress", json!({"podSelector": {}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"podSelector": {}}], "ports": [{"port": "serve-80-tcp"}]}, {"to": [{"ipBlock": {"cidr": "fd00::/8"}}]}]}));
    let two = w.ruleset();
    step(&ns, Some(&base), &two);

    // A pod comes, one changes address, a label change moves x/b out of allow-y's reach.
    w.pod("y", "b", "n2", &["10.244.2.3"]);
    w.pod("x", "b", "n1", &["10.244.1.9"]);
    let three = w.ruleset();
    step(&ns, Some(&two), &three);

    // A restarted agent: diffs against the listing, not its memory.
    let listed = read(&ns);
    w.policies.remove(&("x".into(), "allow-y".into()));
    let four = w.ruleset();
    step(&ns, Some(&listed), &four);
    assert!(!four.chains.keys().any(|c| c.contains("allow-y")));

    // Nothing to do is an empty transaction.
    assert_eq!(ruleset::script(Some(&four), &four).trim(), "");

    // A table someone edited by hand is replaced whole, atomically.
    nft(
        &ns,
        &format!("add chain inet {TABLE} junk\nadd rule inet {TABLE} junk counter accept\n"),
    );
    nft(&ns, &ruleset::replace_script(&three));
    assert_eq!(read(&ns), three);

    nft(&ns, &ruleset::delete_script());
    let tables = ns.exec(&["nft", "list", "tables"]).unwrap();
    assert!(!tables.contains(TABLE), "{tables}");
    // Removing an absent table is not an error either.
    nft(&ns, &ruleset::delete_script());
}

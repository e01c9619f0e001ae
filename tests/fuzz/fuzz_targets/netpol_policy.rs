//! A NetworkPolicy's spec (`Policy::parse`), as the API serves it to every agent: any namespace
//! owner writes one. Whatever it holds, parsing never panics; a refused policy becomes the
//! deny-all stand-in, which never allows more than nothing; an accepted one keeps the API's
//! invariants (an `endPort` after its port, exceptions inside their block), and compiling it
//! against a small cluster never panics and yields a table whose every set referenced by a rule
//! exists and every jump reaches a chain.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use trellis_agent::netpol::compile::{compile, Inputs};
use trellis_agent::netpol::inputs::{NamedPort, PodInfo, NAME_LABEL};
use trellis_agent::netpol::policy::{Peer, Policy, PortRef, Protocol};
use trellis_agent::netpol::selector::Labels;

fn cluster() -> BTreeMap<(String, String), PodInfo> {
    let mut pods = BTreeMap::new();
    for (i, (ns, name, node)) in [("x", "a", "n1"), ("x", "b", "n2"), ("y", "a", "n1")]
        .iter()
        .enumerate()
    {
        let p = PodInfo {
            namespace: ns.to_string(),
            name: name.to_string(),
            node: node.to_string(),
            labels: Labels::from([("pod".into(), name.to_string())]),
            ips: vec![
                format!("10.0.0.{}", i + 1).parse().unwrap(),
                format!("fd00::{}", i + 1).parse().unwrap(),
            ],
            ports: vec![NamedPort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
            }],
        };
        pods.insert(p.key(), p);
    }
    pods
}

fn check(p: &Policy) {
    for rule in p.ingress_rules.iter().chain(&p.egress_rules) {
        for port in &rule.ports {
            if let (Some(PortRef::Number(a)), Some(b)) = (&port.port, port.end_port) {
                assert!(*a <= b, "{p:?}");
            }
        }
        for peer in &rule.peers {
            if let Peer::Block { cidr, except } = peer {
                assert!(except.iter().all(|e| cidr.contains(e.network())), "{p:?}");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let policy = match Policy::parse("x", "p", &spec) {
        Ok(p) => {
            check(&p);
            p
        }
        Err(e) => {
            let _ = e.to_string();
            let p = Policy::deny_all_fallback("x", "p", Some(&spec));
            assert!(p.ingress_rules.is_empty() && p.egress_rules.is_empty());
            p
        }
    };
    let pods = cluster();
    let namespaces: BTreeMap<String, Labels> = ["x", "y"]
        .iter()
        .map(|n| {
            (
                n.to_string(),
                Labels::from([(NAME_LABEL.into(), n.to_string())]),
            )
        })
        .collect();
    let policies = [&policy];
    let out = compile(&Inputs {
        node: "n1",
        pods: &pods,
        namespaces: &namespaces,
        policies: &policies,
    });
    let rs = &out.ruleset;
    for chain in rs.chains.values() {
        for rule in &chain.rules {
            for word in rule.split_whitespace() {
                if let Some(set) = word.strip_prefix('@') {
                    assert!(
                        rs.sets.contains_key(set) || rs.maps.contains_key(set),
                        "{rule}"
                    );
                }
            }
            if let Some(target) = rule.strip_prefix("jump ") {
                assert!(rs.chains.contains_key(target), "{rule}");
            }
        }
    }
    for m in rs.maps.values() {
        assert!(m.elements.values().all(|c| rs.chains.contains_key(c)));
    }
    let _ = trellis_agent::netpol::ruleset::script(None, rs);
});

use super::*;
use serde_json::json;

fn parse(spec: Value) -> Result<Policy, PolicyError> {
    Policy::parse("x", "p", &spec)
}

#[test]
fn a_full_policy() {
    let p = parse(json!({
        "podSelector": {"matchLabels": {"app": "db"}},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [{"from": [
            {"podSelector": {"matchLabels": {"role": "api"}}},
            {"namespaceSelector": {"matchLabels": {"team": "a"}}, "podSelector": {}},
            {"ipBlock": {"cidr": "172.17.0.0/16", "except": ["172.17.1.0/24"]}}
        ], "ports": [{"protocol": "TCP", "port": 5432}, {"port": "metrics"}, {"port": 8000, "endPort": 8080, "protocol": "UDP"}]}],
        "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}]
    }))
    .unwrap();
    assert!(p.ingress && p.egress);
    assert_eq!(p.ingress_rules[0].peers.len(), 3);
    assert!(matches!(
        p.ingress_rules[0].peers[1],
        Peer::Pods {
            namespaces: Some(_),
            pods: Some(_)
        }
    ));
    assert_eq!(
        p.ingress_rules[0].ports[1].port,
        Some(PortRef::Name("metrics".into()))
    );
    assert_eq!(p.ingress_rules[0].ports[2].end_port, Some(8080));
    assert_eq!(p.ingress_rules[0].ports[2].protocol, Protocol::Udp);
}

#[test]
fn policy_types_default_as_the_apiserver_does() {
    let types = |spec: Value| parse(spec).map(|p| (p.ingress, p.egress)).unwrap();
    assert_eq!(types(json!({"podSelector": {}})), (true, false));
    assert_eq!(
        types(json!({"podSelector": {}, "egress": [{}]})),
        (true, true)
    );
    assert_eq!(
        types(json!({"podSelector": {}, "egress": []})),
        (true, false)
    );
    assert_eq!(
        types(json!({"podSelector": {}, "policyTypes": []})),
        (true, false)
    );
    assert_eq!(
        types(json!({"podSelector": {}, "policyTypes": ["Egress"]})),
        (false, true)
    );
}

#[test]
fn empty_and_null_mean_everything() {
    let p =
        parse(json!({"podSelector": {}, "ingress": [{"from": null, "ports": null}, {}]})).unwrap();
    assert!(p
        .ingress_rules
        .iter()
        .all(|r| r.peers.is_empty() && r.ports.is_empty()));
    assert_eq!(p.ingress_rules.len(), 2);
}

#[test]
fn what_cannot_be_enforced_exactly_is_refused() {
    for (spec, want) in [
        (
            json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]}),
            "prefix length",
        ),
        (
            json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/24"]}}]}]}),
            "not inside",
        ),
        (
            json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["::/64"]}}]}]}),
            "not inside",
        ),
        (
            json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]}),
            "cannot be combined",
        ),
        (
            json!({"podSelector": {}, "ingress": [{"from": [{}]}]}),
            "needs podSelector",
        ),
        (
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": 0}]}]}),
            "1-65535",
        ),
        (
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": 70000}]}]}),
            "1-65535",
        ),
        (
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": 90, "endPort": 80}]}]}),
            "below port",
        ),
        (
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": "http", "endPort": 80}]}]}),
            "numeric port",
        ),
        (
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": "8080"}]}]}),
            "letter",
        ),
        (
            json!({"podSelector": {}, "ingress": [{"ports": [{"protocol": "ICMP"}]}]}),
            "SCTP",
        ),
        (
            json!({"podSelector": {}, "ingress": [{"from": [], "priority": 1}]}),
            "unknown field \"priority\"",
        ),
        (
            json!({"podSelector": {}, "action": "Deny"}),
            "unknown field \"action\"",
        ),
        (
            json!({"podSelector": {}, "policyTypes": ["Both"]}),
            "unknown policy type",
        ),
        (json!({"ingress": []}), "podSelector: is required"),
        (json!([]), "expected an object"),
    ] {
        let e = parse(spec.clone()).unwrap_err().to_string();
        assert!(e.contains(want), "{spec}: {e}");
    }
}

#[test]
fn the_fallback_is_never_more_open_than_the_policy() {
    // Rules it cannot read: the pods it selects get nothing allowed, for the types it names.
    let spec = json!({"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"], "ingress": [{"bogus": 1}]});
    let p = Policy::deny_all_fallback("x", "p", Some(&spec));
    assert!(p.ingress && !p.egress);
    assert!(p.ingress_rules.is_empty());
    assert_eq!(p.pod_selector.requirements.len(), 1);
    // A selector or types it cannot read either: every pod of the namespace, both ways.
    let spec = json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}, "policyTypes": 7});
    let p = Policy::deny_all_fallback("x", "p", Some(&spec));
    assert!(p.ingress && p.egress);
    assert!(p.pod_selector.requirements.is_empty());
    let p = Policy::deny_all_fallback("x", "p", None);
    assert!(p.ingress && p.egress);
}

#[test]
fn host_bits_are_masked() {
    let p = parse(
        json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.1.2.3/16"}}]}]}),
    )
    .unwrap();
    let Peer::Block { cidr, .. } = &p.ingress_rules[0].peers[0] else {
        panic!()
    };
    assert_eq!(cidr.to_string(), "10.1.0.0/16");
}

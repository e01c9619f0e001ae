use super::*;
use crate::netpol::inputs::NamedPort;
use crate::netpol::policy::{Policy, Protocol};
use serde_json::{json, Value};

pub(crate) struct Fixture {
    pub pods: BTreeMap<(String, String), PodInfo>,
    pub namespaces: BTreeMap<String, Labels>,
    pub policies: BTreeMap<(String, String), Policy>,
}

/// Namespaces x and y, pods a (node n1, 10.0.1.x) and b (node n2, 10.0.2.x) in each; every
/// pod names port 80/TCP "http", and x/a also names 8080/TCP "alt".
pub(crate) fn fixture() -> Fixture {
    let mut pods = BTreeMap::new();
    let mut namespaces = BTreeMap::new();
    for (n, ns) in ["x", "y"].iter().enumerate() {
        namespaces.insert(
            ns.to_string(),
            Labels::from([
                (NAME_LABEL.into(), ns.to_string()),
                ("ns".into(), ns.to_string()),
            ]),
        );
        for (m, pod) in ["a", "b"].iter().enumerate() {
            let mut ports = vec![NamedPort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
            }];
            if *ns == "x" && *pod == "a" {
                ports.push(NamedPort {
                    name: "alt".into(),
                    protocol: Protocol::Tcp,
                    port: 8080,
                });
            }
            let info = PodInfo {
                namespace: ns.to_string(),
                name: pod.to_string(),
                node: format!("n{}", m + 1),
                labels: Labels::from([("pod".into(), pod.to_string())]),
                ips: vec![format!("10.0.{}.{}", m + 1, n + 10).parse().unwrap()],
                ports,
            };
            pods.insert(info.key(), info);
        }
    }
    Fixture {
        pods,
        namespaces,
        policies: BTreeMap::new(),
    }
}

impl Fixture {
    pub(crate) fn policy(&mut self, ns: &str, name: &str, spec: Value) -> &mut Self {
        let p = Policy::parse(ns, name, &spec).unwrap();
        self.policies.insert((ns.into(), name.into()), p);
        self
    }

    pub(crate) fn compile(&self, node: &str) -> Compiled {
        let policies: Vec<&Policy> = self.policies.values().collect();
        compile(&Inputs {
            node,
            pods: &self.pods,
            namespaces: &self.namespaces,
            policies: &policies,
        })
    }
}

fn chain<'a>(c: &'a Compiled, name: &str) -> &'a [String] {
    &c.ruleset
        .chains
        .get(name)
        .unwrap_or_else(|| panic!("no chain {name}: {:?}", c.ruleset.chains.keys()))
        .rules
}

fn set(c: &Compiled, name: &str) -> Vec<String> {
    c.ruleset
        .sets
        .get(name)
        .unwrap_or_else(|| panic!("no set {name}: {:?}", c.ruleset.sets.keys()))
        .elements
        .iter()
        .map(|r| r.to_string())
        .collect()
}

#[test]
fn no_policies_leave_only_the_base_chains() {
    let c = fixture().compile("n1");
    assert!(c.policed.is_empty());
    assert_eq!(c.ruleset.chains.len(), 2);
    assert_eq!(c.ruleset.element_count(), 0);
    assert_eq!(chain(&c, TO_PODS)[0], ESTABLISHED);
}

#[test]
fn ingress_from_a_namespace_on_a_port() {
    let mut f = fixture();
    f.policy("x", "web", json!({"podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}], "ports": [{"port": 80}]}]}));
    let c = f.compile("n1");
    assert_eq!(
        c.policed,
        vec![Policed {
            pod: "x/a".into(),
            ingress: vec!["x/web".into()],
            egress: vec![]
        }]
    );
    let class =
        c.ruleset.maps["to-pods/v4"].elements[&"10.0.1.10".parse::<IpAddr>().unwrap()].clone();
    assert!(class.starts_with("class-in/"), "{class}");
    assert_eq!(chain(&c, &class), ["jump pol/x/web/in", REJECT]);
    assert_eq!(
        chain(&c, "pol/x/web/in"),
        ["ip saddr @pol/x/web/in0/v4 tcp dport 80 accept"]
    );
    assert_eq!(set(&c, "pol/x/web/in0/v4"), ["10.0.1.11", "10.0.2.11"]);
    assert!(
        c.ruleset.maps["from-pods/v4"].elements.is_empty(),
        "ingress only"
    );
    // Node n2 polices none of x/a's traffic: not its pod.
    assert!(f.compile("n2").policed.is_empty());
}

#[test]
fn deny_all_egress_and_policy_types_default() {
    let mut f = fixture();
    f.policy(
        "x",
        "deny",
        json!({"podSelector": {}, "policyTypes": ["Egress"]}),
    );
    let c = f.compile("n1");
    assert_eq!(c.policed[0].egress, ["x/deny"]);
    assert!(c.policed[0].ingress.is_empty());
    assert_eq!(chain(&c, "pol/x/deny/out"), Vec::<String>::new());
    // Without policyTypes an egress section makes it an egress policy as well.
    f.policy("y", "both", json!({"podSelector": {}, "egress": [{}]}));
    let c = f.compile("n1");
    let y = c.policed.iter().find(|p| p.pod == "y/a").unwrap();
    assert_eq!((y.ingress.len(), y.egress.len()), (1, 1));
    assert_eq!(chain(&c, "pol/y/both/out"), ["accept"]);
}

#[test]
fn ip_block_except_and_port_ranges() {
    let mut f = fixture();
    f.policy("x", "ext", json!({"podSelector": {}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.2.0/24"]}}],
                    "ports": [{"protocol": "UDP", "port": 5000, "endPort": 5010}, {"protocol": "SCTP"}]}]}));
    let c = f.compile("n1");
    assert_eq!(
        set(&c, "pol/x/ext/out0/v4"),
        ["10.0.0.0-10.0.1.255", "10.0.3.0-10.0.255.255"]
    );
    assert_eq!(
        chain(&c, "pol/x/ext/out"),
        [
            "ip daddr @pol/x/ext/out0/v4 udp dport 5000-5010 accept",
            "ip daddr @pol/x/ext/out0/v4 meta l4proto sctp accept"
        ]
    );
}

#[test]
fn named_ports_resolve_on_the_destination() {
    let mut f = fixture();
    // Ingress: "alt" resolves on x/a (the policy's pod), to 8080.
    f.policy(
        "x",
        "alt",
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": "alt"}]}]}),
    );
    let c = f.compile("n1");
    assert_eq!(
        chain(&c, "pol/x/alt/in"),
        ["ip daddr @pol/x/alt/in0/port0-8080/v4 tcp dport 8080 accept"]
    );
    assert_eq!(set(&c, "pol/x/alt/in0/port0-8080/v4"), ["10.0.1.10"]);
    // Egress to pods of y by name "http": resolved on y's pods.
    f.policy("x", "out", json!({"podSelector": {}, "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}], "ports": [{"port": "http"}]}]}));
    let c = f.compile("n1");
    assert_eq!(
        chain(&c, "pol/x/out/out"),
        ["ip daddr @pol/x/out/out0/port0-80/v4 tcp dport 80 accept"]
    );
    assert_eq!(
        set(&c, "pol/x/out/out0/port0-80/v4"),
        ["10.0.1.11", "10.0.2.11"]
    );
}

#[test]
fn pods_with_the_same_policies_share_a_chain() {
    let mut f = fixture();
    f.pods.get_mut(&("x".into(), "b".into())).unwrap().node = "n1".into();
    f.policy("x", "all", json!({"podSelector": {}}));
    let c = f.compile("n1");
    let m = &c.ruleset.maps["to-pods/v4"].elements;
    assert_eq!(m.len(), 2);
    let classes: BTreeSet<&String> = m.values().collect();
    assert_eq!(classes.len(), 1);
}

#[test]
fn rules_grow_with_pods_plus_policies() {
    // n pods on one node in one namespace, n policies each selecting one pod by name, each
    // allowing from every pod: rules are linear in n, not n².
    let counts: Vec<(usize, usize)> = [10usize, 20, 40]
        .iter()
        .map(|&n| {
            let mut f = Fixture {
                pods: BTreeMap::new(),
                namespaces: BTreeMap::new(),
                policies: BTreeMap::new(),
            };
            for i in 0..n {
                let p = PodInfo {
                    namespace: "x".into(),
                    name: format!("p{i}"),
                    node: "n1".into(),
                    labels: Labels::from([("i".into(), i.to_string()), ("app".into(), "a".into())]),
                    ips: vec![IpAddr::from([10, 0, (i / 250) as u8, (i % 250) as u8 + 1])],
                    ports: vec![],
                };
                f.pods.insert(p.key(), p);
                f.policy(
                    "x",
                    &format!("p{i}"),
                    json!({"podSelector": {"matchLabels": {"i": i.to_string()}},
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "a"}}}]}]}),
                );
            }
            let c = f.compile("n1");
            (c.ruleset.rule_count(), c.ruleset.element_count())
        })
        .collect();
    // Every doubling of n doubles the rules (give or take the fixed base rules).
    for w in counts.windows(2) {
        assert!(w[1].0 <= 2 * w[0].0, "{counts:?}");
    }
}

#[test]
fn a_class_chain_whose_hash_is_taken_gets_a_chain_of_its_own() {
    let mut f = fixture();
    f.policy("x", "web", json!({"podSelector": {}}));
    let policies: Vec<&Policy> = f.policies.values().collect();
    let inp = Inputs {
        node: "n1",
        pods: &f.pods,
        namespaces: &f.namespaces,
        policies: &policies,
    };
    let ctx = Ctx::new(&inp);
    let mut rs = Ruleset::default();
    let keys = "x/web";
    let hashed = format!("class-in/{:016x}", fnv(keys));
    // Another combination's chain under the same name, as a crafted collision would leave it.
    let other = Chain {
        base: None,
        rules: vec!["jump pol/x/other/in".into(), REJECT.into()],
    };
    rs.chains.insert(hashed.clone(), other.clone());
    let name = ctx.class_chain(Dir::In, &[0], &mut rs);
    assert_eq!(name, format!("{hashed}-1"));
    assert_eq!(rs.chains[&name].rules, ["jump pol/x/web/in", REJECT]);
    assert_eq!(
        rs.chains[&hashed], other,
        "the first holder keeps its chain"
    );
    // Asked again, the same chain.
    assert_eq!(ctx.class_chain(Dir::In, &[0], &mut rs), name);
}

#[test]
fn long_policy_names_that_hash_alike_stay_apart() {
    let long = |n: &str| Policy::deny_all_fallback("x", &format!("{}{n}", "p".repeat(240)), None);
    let (a, b) = (long("a"), long("b"));
    let bases = policy_bases(&[&a, &b, &a]);
    assert!(
        bases[0].starts_with("pol/") && bases[0].len() < 40,
        "{bases:?}"
    );
    assert_ne!(bases[0], bases[1]);
    // The same hash twice (a collision, here the same policy listed twice): suffixed.
    assert_eq!(bases[2], format!("{}-1", bases[0]));
}

#[test]
fn a_dual_stack_pod_inside_an_ipv4_block_is_a_named_port_peer_at_its_ipv4_address_only() {
    let mut f = fixture();
    f.pods
        .get_mut(&("y".into(), "a".into()))
        .unwrap()
        .ips
        .push("fd00::11".parse().unwrap());
    f.policy(
        "x",
        "out",
        json!({"podSelector": {}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}], "ports": [{"port": "http"}]}]}),
    );
    let c = f.compile("n1");
    assert!(
        c.ruleset.sets.keys().all(|s| !s.ends_with("/v6")),
        "{:?}",
        c.ruleset.sets.keys()
    );
    assert!(set(&c, "pol/x/out/out0/port0-80/v4").contains(&"10.0.1.11".to_string()));
}

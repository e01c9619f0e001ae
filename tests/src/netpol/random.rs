//! Random scenarios: from a seed, extra labels for a cluster's namespaces and pods, a handful of
//! NetworkPolicies over them, and probes whose expected outcome the model ([`super::model`])
//! computes. Same cluster and seed, same scenario, so a failure is replayed by its seed.
//!
//! What gets drawn, from a small vocabulary so that selectors both hit and miss:
//! - labels: `env` and `team` on namespaces, `app` and `tier` on pods, each sometimes absent,
//!   added to what the cluster already has (`ns=…`, `pod=…`);
//! - selectors: `{}`, `matchLabels`, `matchExpressions` with every operator (keys and values
//!   from the cluster's labels, plus ones nobody has), or both;
//! - policies: `policyTypes` absent (defaulted), Ingress, Egress or both; 0-2 rules a
//!   direction; peers absent, empty, or 1-2 of pod selector, namespace selector, both, or an
//!   ipBlock around a pod's address (sometimes with an except, sometimes covering no pod);
//!   ports absent, or 1-2 of protocol only, number, named (the pods' names, or one no pod has),
//!   or a range with endPort; protocols TCP and UDP, or left to the default;
//! - probes: a source pod, another destination pod, a protocol and a port.
//!
//! Every policy is checked by the model's validation, which refuses what the apiserver refuses.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde_json::{json, Map, Value};

use super::model::{
    self, Cidr, Cluster, Labels, ModelError, PodRef, Protocol, Source, NAMESPACE_NAME_LABEL,
};

/// SplitMix64: tiny, seedable, and good enough to pick test inputs (no `rand` dependency).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0). The modulo bias is irrelevant at these sizes.
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            return None;
        }
        let i = self.below(items.len());
        items.get(i)
    }
}

/// How big a scenario is and what its probes use.
#[derive(Clone, Debug)]
pub struct Config {
    /// 1 to this many policies.
    pub max_policies: usize,
    pub probes: usize,
    /// Protocols of probes and of the policies' ports.
    pub protocols: Vec<Protocol>,
    /// Ports the pods serve: probes use these; policies these and their neighbours.
    pub ports: Vec<u16>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_policies: 4,
            probes: 24,
            protocols: vec![Protocol::Tcp, Protocol::Udp],
            ports: vec![80, 81],
        }
    }
}

/// What to do to the cluster, and what must then happen.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    pub seed: u64,
    /// Each namespace's labels, to be set exactly (the apiserver adds its name label).
    pub namespace_labels: Vec<(String, Labels)>,
    /// Each pod's labels, to be set exactly.
    pub pod_labels: Vec<(PodRef, Labels)>,
    /// NetworkPolicy objects to create (`metadata.namespace` says where), names unique.
    pub policies: Vec<Value>,
    pub probes: Vec<RandomProbe>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RandomProbe {
    pub from: PodRef,
    pub to: PodRef,
    pub protocol: Protocol,
    pub port: u16,
    /// What the model says.
    pub expected: bool,
}

impl Scenario {
    /// Does to the model what the scenario does to the cluster: labels, then policies.
    pub fn apply(&self, cluster: &mut Cluster) -> Result<(), ModelError> {
        for (name, labels) in &self.namespace_labels {
            let ns = cluster
                .namespace_mut(name)
                .ok_or_else(|| ModelError::NoNamespace(name.clone()))?;
            ns.set_labels(labels.clone());
        }
        for (key, labels) in &self.pod_labels {
            let pod = cluster
                .pod_mut(key)
                .ok_or_else(|| ModelError::NoPod(key.clone()))?;
            pod.labels = labels.clone();
        }
        for policy in &self.policies {
            let ns = policy["metadata"]["namespace"].as_str().unwrap_or_default();
            cluster.create_policy(ns, policy.clone())?;
        }
        Ok(())
    }
}

/// Draws the scenario of `seed` for `cluster` (its namespaces, pods, addresses and ports; its
/// policies are left out). Fails only if it drew a policy the model refuses: a bug here.
pub fn generate(cluster: &Cluster, seed: u64, config: &Config) -> Result<Scenario, ModelError> {
    let mut rng = Rng::new(seed);
    let mut world = cluster.clone();
    world.clear_policies();
    let namespace_labels = label_namespaces(&mut rng, &mut world);
    let pod_labels = label_pods(&mut rng, &mut world);
    let vocab = Vocabulary::of(&world);
    let count = 1 + rng.below(config.max_policies.max(1));
    let mut policies = Vec::new();
    for i in 0..count {
        let (namespace, policy) = random_policy(&mut rng, &vocab, config, &format!("random-{i}"));
        world.create_policy(&namespace, policy.clone())?;
        policies.push(policy);
    }
    let probes = random_probes(&mut rng, &world, config);
    Ok(Scenario {
        seed,
        namespace_labels,
        pod_labels,
        policies,
        probes,
    })
}

// ---------------------------------------------------------------------------------------------
// Labels.

/// `key` = one of `values`, with probability `percent`.
fn maybe_label(rng: &mut Rng, labels: &mut Labels, percent: u64, key: &str, values: &[&str]) {
    if rng.chance(percent) {
        let value = rng.pick(values).copied().unwrap_or_default();
        labels.insert(key.to_string(), value.to_string());
    }
}

fn label_namespaces(rng: &mut Rng, world: &mut Cluster) -> Vec<(String, Labels)> {
    let mut out = Vec::new();
    for ns in &mut world.namespaces {
        let mut labels = ns.labels().clone();
        labels.remove(NAMESPACE_NAME_LABEL);
        maybe_label(rng, &mut labels, 70, "env", &["prod", "dev"]);
        maybe_label(rng, &mut labels, 50, "team", &["red", "blue"]);
        ns.set_labels(labels.clone());
        out.push((ns.name().to_string(), labels));
    }
    out
}

fn label_pods(rng: &mut Rng, world: &mut Cluster) -> Vec<(PodRef, Labels)> {
    let mut out = Vec::new();
    for pod in &mut world.pods {
        maybe_label(rng, &mut pod.labels, 70, "app", &["web", "db"]);
        maybe_label(rng, &mut pod.labels, 50, "tier", &["front", "back"]);
        out.push((pod.key(), pod.labels.clone()));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Policies.

/// What selectors and peers are drawn from: the labels, addresses and port names the cluster
/// has, plus a label value, a label key and a port name nobody has (so that some never match).
struct Vocabulary {
    pod_labels: BTreeMap<String, BTreeSet<String>>,
    namespace_labels: BTreeMap<String, BTreeSet<String>>,
    namespaces: Vec<String>,
    addresses: Vec<IpAddr>,
    port_names: Vec<String>,
}

const NOBODYS_VALUE: &str = "none";
const NOBODYS_KEY: &str = "absent";
const NOBODYS_PORT: &str = "no-such-port";

impl Vocabulary {
    fn of(world: &Cluster) -> Vocabulary {
        let collect = |sets: &mut BTreeMap<String, BTreeSet<String>>, labels: &Labels| {
            for (k, v) in labels {
                sets.entry(k.clone()).or_default().insert(v.clone());
            }
        };
        let mut pod_labels = BTreeMap::new();
        world
            .pods
            .iter()
            .for_each(|p| collect(&mut pod_labels, &p.labels));
        let mut namespace_labels = BTreeMap::new();
        world
            .namespaces
            .iter()
            .for_each(|n| collect(&mut namespace_labels, n.labels()));
        let mut port_names: BTreeSet<String> = world
            .pods
            .iter()
            .flat_map(|p| p.ports.iter().filter_map(|cp| cp.name.clone()))
            .collect();
        port_names.insert(NOBODYS_PORT.to_string());
        Vocabulary {
            pod_labels,
            namespace_labels,
            namespaces: world
                .namespaces
                .iter()
                .map(|n| n.name().to_string())
                .collect(),
            addresses: world
                .pods
                .iter()
                .flat_map(|p| p.ips.iter().copied())
                .collect(),
            port_names: port_names.into_iter().collect(),
        }
    }
}

fn random_policy(
    rng: &mut Rng,
    vocab: &Vocabulary,
    config: &Config,
    name: &str,
) -> (String, Value) {
    let namespace = rng.pick(&vocab.namespaces).cloned().unwrap_or_default();
    let mut spec = Map::new();
    spec.insert("podSelector".into(), selector(rng, &vocab.pod_labels));
    let (types, ingress, egress) = match rng.below(4) {
        // No policyTypes: the apiserver's defaulting decides; either section may be there.
        0 => (None, rng.chance(70), rng.chance(50)),
        1 => (Some(vec!["Ingress"]), true, false),
        2 => (Some(vec!["Egress"]), false, true),
        _ => (Some(vec!["Ingress", "Egress"]), true, true),
    };
    if ingress {
        spec.insert("ingress".into(), rules(rng, vocab, config, "from"));
    }
    if egress {
        spec.insert("egress".into(), rules(rng, vocab, config, "to"));
    }
    if let Some(types) = types {
        spec.insert("policyTypes".into(), json!(types));
    }
    let object = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    });
    (namespace, object)
}

/// 0-2 rules (an empty list isolates without allowing anything).
fn rules(rng: &mut Rng, vocab: &Vocabulary, config: &Config, peers_field: &str) -> Value {
    let n = rng.below(3);
    Value::Array(
        (0..n)
            .map(|_| rule(rng, vocab, config, peers_field))
            .collect(),
    )
}

fn rule(rng: &mut Rng, vocab: &Vocabulary, config: &Config, peers_field: &str) -> Value {
    let mut r = Map::new();
    match rng.below(10) {
        0..=2 => {} // absent: every peer
        3 => {
            r.insert(peers_field.into(), json!([]));
        }
        _ => {
            let n = 1 + rng.below(2);
            let peers = (0..n).map(|_| peer(rng, vocab)).collect();
            r.insert(peers_field.into(), Value::Array(peers));
        }
    }
    if !rng.chance(35) {
        let n = 1 + rng.below(2);
        let ports = (0..n).map(|_| port(rng, vocab, config)).collect();
        r.insert("ports".into(), Value::Array(ports));
    }
    Value::Object(r)
}

fn peer(rng: &mut Rng, vocab: &Vocabulary) -> Value {
    match rng.below(4) {
        0 => json!({"podSelector": selector(rng, &vocab.pod_labels)}),
        1 => json!({"namespaceSelector": selector(rng, &vocab.namespace_labels)}),
        2 => json!({
            "namespaceSelector": selector(rng, &vocab.namespace_labels),
            "podSelector": selector(rng, &vocab.pod_labels),
        }),
        _ => ip_block(rng, &vocab.addresses),
    }
}

/// A block around a pod's address, sometimes minus a smaller block around another pod's (or
/// the same) address inside it; one time in ten, a documentation range no pod is in.
fn ip_block(rng: &mut Rng, addresses: &[IpAddr]) -> Value {
    let Some(&ip) = rng.pick(addresses).filter(|_| !rng.chance(10)) else {
        return json!({"ipBlock": {"cidr": "192.0.2.0/24"}});
    };
    let prefixes: &[u8] = if ip.is_ipv4() {
        &[8, 16, 24, 28, 32]
    } else {
        &[64, 112, 120, 128]
    };
    let prefix = rng.pick(prefixes).copied().unwrap_or(32);
    let cidr = Cidr::new(ip, prefix);
    let width = if ip.is_ipv4() { 32 } else { 128 };
    let inside: Vec<IpAddr> = addresses
        .iter()
        .copied()
        .filter(|a| cidr.contains(*a))
        .collect();
    match rng.pick(&inside) {
        Some(&other) if prefix < width && rng.chance(40) => {
            let longer: Vec<u8> = prefixes.iter().copied().filter(|p| *p > prefix).collect();
            let except_prefix = rng.pick(&longer).copied().unwrap_or(width);
            let except = Cidr::new(other, except_prefix);
            json!({"ipBlock": {"cidr": cidr.to_string(), "except": [except.to_string()]}})
        }
        _ => json!({"ipBlock": {"cidr": cidr.to_string()}}),
    }
}

/// One `ports` entry: protocol only, a number, a name, or a range.
fn port(rng: &mut Rng, vocab: &Vocabulary, config: &Config) -> Value {
    let protocol = if rng.chance(30) {
        None // the API's default, TCP
    } else {
        rng.pick(&config.protocols).map(|p| p.as_str())
    };
    let mut entry = Map::new();
    if let Some(p) = protocol {
        entry.insert("protocol".into(), json!(p));
    }
    match rng.below(4) {
        0 if protocol.is_some() => {} // every port of the protocol
        0 | 1 => {
            entry.insert("port".into(), json!(port_number(rng, config)));
        }
        2 => {
            let name = rng.pick(&vocab.port_names).cloned().unwrap_or_default();
            entry.insert("port".into(), json!(name));
        }
        _ => {
            let first = port_number(rng, config)
                .saturating_sub(rng.below(3) as u16)
                .max(1);
            let last = first.saturating_add(rng.below(4) as u16);
            entry.insert("port".into(), json!(first));
            entry.insert("endPort".into(), json!(last));
        }
    }
    Value::Object(entry)
}

/// A served port or, one time in five, its neighbour (served by nobody).
fn port_number(rng: &mut Rng, config: &Config) -> u16 {
    let served = rng.pick(&config.ports).copied().unwrap_or(80);
    if rng.chance(20) {
        served.saturating_add(1)
    } else {
        served
    }
}

/// `{}`, `matchLabels`, `matchExpressions`, or both, over `vocab`.
fn selector(rng: &mut Rng, vocab: &BTreeMap<String, BTreeSet<String>>) -> Value {
    let kind = rng.below(6);
    let mut sel = Map::new();
    if matches!(kind, 1 | 2 | 5) {
        let (key, value) = label_pair(rng, vocab);
        sel.insert("matchLabels".into(), json!({ key: value }));
    }
    if matches!(kind, 3..=5) {
        let n = 1 + rng.below(2);
        let reqs = (0..n).map(|_| requirement(rng, vocab)).collect();
        sel.insert("matchExpressions".into(), Value::Array(reqs));
    }
    Value::Object(sel)
}

/// A key the cluster has (rarely one it has not) and one of its values (sometimes `none`).
fn label_pair(rng: &mut Rng, vocab: &BTreeMap<String, BTreeSet<String>>) -> (String, String) {
    let key = random_key(rng, vocab);
    (key.clone(), random_value(rng, vocab, &key))
}

fn random_key(rng: &mut Rng, vocab: &BTreeMap<String, BTreeSet<String>>) -> String {
    let keys: Vec<&String> = vocab.keys().collect();
    match rng.pick(&keys) {
        Some(key) if !rng.chance(10) => key.to_string(),
        _ => NOBODYS_KEY.to_string(),
    }
}

fn random_value(rng: &mut Rng, vocab: &BTreeMap<String, BTreeSet<String>>, key: &str) -> String {
    let values: Vec<&String> = vocab.get(key).into_iter().flatten().collect();
    match rng.pick(&values) {
        Some(value) if !rng.chance(15) => value.to_string(),
        _ => NOBODYS_VALUE.to_string(),
    }
}

fn requirement(rng: &mut Rng, vocab: &BTreeMap<String, BTreeSet<String>>) -> Value {
    let key = random_key(rng, vocab);
    match rng.below(4) {
        0 | 1 => {
            let operator = if rng.chance(50) { "In" } else { "NotIn" };
            let n = 1 + rng.below(2);
            let values: BTreeSet<String> = (0..n).map(|_| random_value(rng, vocab, &key)).collect();
            json!({"key": key, "operator": operator, "values": values})
        }
        2 => json!({"key": key, "operator": "Exists"}),
        _ => json!({"key": key, "operator": "DoesNotExist"}),
    }
}

// ---------------------------------------------------------------------------------------------
// Probes.

/// `config.probes` probes between two different pods (a pod to itself is always allowed and
/// upstream does not judge it), each with the model's answer.
fn random_probes(rng: &mut Rng, world: &Cluster, config: &Config) -> Vec<RandomProbe> {
    if world.pods.len() < 2 || config.protocols.is_empty() || config.ports.is_empty() {
        return Vec::new();
    }
    (0..config.probes)
        .filter_map(|_| {
            let from = rng.pick(&world.pods)?;
            let others: Vec<_> = world
                .pods
                .iter()
                .filter(|p| p.key() != from.key())
                .collect();
            let to = *rng.pick(&others)?;
            let protocol = *rng.pick(&config.protocols)?;
            let port = *rng.pick(&config.ports)?;
            Some(RandomProbe {
                from: from.key(),
                to: to.key(),
                protocol,
                port,
                expected: model::allowed(world, Source::Pod(from), to, protocol, port),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netpol::cases::{base_cluster, Context};

    fn cluster() -> Cluster {
        base_cluster(&Context::with_fake_ips("r-"))
    }

    fn scenario(seed: u64) -> Scenario {
        generate(&cluster(), seed, &Config::default()).unwrap()
    }

    #[test]
    fn splitmix64_is_the_reference_sequence() {
        let mut rng = Rng::new(0);
        assert_eq!(rng.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(rng.next_u64(), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(rng.below(0), 0);
        assert!(rng.pick::<u8>(&[]).is_none());
        assert!((0..1000).all(|_| rng.below(7) < 7));
    }

    #[test]
    fn the_same_seed_draws_the_same_scenario() {
        for seed in [0, 1, 42, u64::MAX] {
            assert_eq!(scenario(seed), scenario(seed));
        }
        let distinct: BTreeSet<String> = (0..20)
            .map(|s| format!("{:?}", scenario(s).policies))
            .collect();
        assert!(
            distinct.len() >= 18,
            "seeds should differ: {}",
            distinct.len()
        );
    }

    #[test]
    fn policies_are_objects_the_api_would_take() {
        for seed in 0..300 {
            let s = scenario(seed);
            assert!(!s.policies.is_empty());
            let mut names = BTreeSet::new();
            for p in &s.policies {
                let typed: k8s_openapi::api::networking::v1::NetworkPolicy =
                    serde_json::from_value(p.clone())
                        .unwrap_or_else(|e| panic!("seed {seed}: {e}: {p}"));
                let meta = typed.metadata;
                assert!(names.insert((meta.namespace.clone().unwrap(), meta.name.clone().unwrap())));
                // The model's validation (the apiserver's rules) took each on its own, too.
                let mut fresh = cluster();
                let ns = meta.namespace.unwrap();
                fresh
                    .create_policy(&ns, p.clone())
                    .unwrap_or_else(|e| panic!("seed {seed}: {e}: {p}"));
            }
        }
    }

    #[test]
    fn expectations_are_the_models_after_applying_the_scenario() {
        for seed in 0..50 {
            let s = scenario(seed);
            let mut world = cluster();
            s.apply(&mut world).unwrap();
            for probe in &s.probes {
                assert_ne!(probe.from, probe.to);
                let (from, to) = (
                    world.pod(&probe.from).unwrap(),
                    world.pod(&probe.to).unwrap(),
                );
                let now = model::allowed(&world, Source::Pod(from), to, probe.protocol, probe.port);
                assert_eq!(now, probe.expected, "seed {seed}: {probe:?}");
            }
            // Labels only add to what the pods and namespaces had.
            for (key, labels) in &s.pod_labels {
                assert_eq!(labels.get("pod"), Some(&key.name));
            }
            for (name, labels) in &s.namespace_labels {
                assert_eq!(labels.get("ns"), Some(name));
            }
        }
    }

    #[test]
    fn both_outcomes_occur_and_neither_dominates() {
        let (mut allowed, mut denied) = (0, 0);
        for seed in 0..200 {
            for probe in scenario(seed).probes {
                if probe.expected {
                    allowed += 1;
                } else {
                    denied += 1;
                }
            }
        }
        let total = allowed + denied;
        assert_eq!(total, 200 * Config::default().probes);
        assert!(
            allowed * 10 > total && denied * 10 > total,
            "allowed {allowed}, denied {denied}"
        );
    }

    /// Every shape the generator promises turns up within a few hundred seeds.
    #[test]
    fn every_kind_of_peer_port_and_selector_turns_up() {
        let mut seen = BTreeSet::new();
        for seed in 0..300 {
            for p in scenario(seed).policies {
                collect_shapes(&p, &mut seen);
            }
        }
        let wanted = [
            "policyTypes:absent",
            "policyTypes:Ingress",
            "policyTypes:Egress",
            "policyTypes:Ingress,Egress",
            "peers:absent",
            "peers:empty",
            "peer:pods",
            "peer:namespaces",
            "peer:both",
            "peer:ipBlock",
            "ipBlock:except",
            "ports:absent",
            "port:protocol-only",
            "port:number",
            "port:named",
            "port:range",
            "port:default-protocol",
            "port:UDP",
            "op:In",
            "op:NotIn",
            "op:Exists",
            "op:DoesNotExist",
            "selector:empty",
            "selector:matchLabels",
        ];
        for w in wanted {
            assert!(seen.contains(w), "{w} never drawn; saw {seen:?}");
        }
    }

    fn collect_shapes(policy: &Value, seen: &mut BTreeSet<String>) {
        let spec = &policy["spec"];
        match spec["policyTypes"].as_array() {
            None => seen.insert("policyTypes:absent".into()),
            Some(t) => seen.insert(format!(
                "policyTypes:{}",
                t.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            )),
        };
        let mut selectors = vec![&spec["podSelector"]];
        for (section, field) in [("ingress", "from"), ("egress", "to")] {
            for rule in spec[section].as_array().into_iter().flatten() {
                match rule[field].as_array() {
                    None => seen.insert("peers:absent".into()),
                    Some(p) if p.is_empty() => seen.insert("peers:empty".into()),
                    Some(_) => false,
                };
                for peer in rule[field].as_array().into_iter().flatten() {
                    let kind = match (peer.get("podSelector"), peer.get("namespaceSelector")) {
                        (Some(_), Some(_)) => "both",
                        (Some(_), None) => "pods",
                        (None, Some(_)) => "namespaces",
                        (None, None) => "ipBlock",
                    };
                    seen.insert(format!("peer:{kind}"));
                    if peer["ipBlock"].get("except").is_some() {
                        seen.insert("ipBlock:except".into());
                    }
                    selectors.extend(
                        ["podSelector", "namespaceSelector"]
                            .iter()
                            .filter_map(|k| peer.get(*k)),
                    );
                }
                if rule.get("ports").is_none() {
                    seen.insert("ports:absent".into());
                }
                for port in rule["ports"].as_array().into_iter().flatten() {
                    let kind = match (&port["port"], port.get("endPort")) {
                        (Value::Null, _) => "protocol-only",
                        (Value::String(_), _) => "named",
                        (_, Some(_)) => "range",
                        _ => "number",
                    };
                    seen.insert(format!("port:{kind}"));
                    match port["protocol"].as_str() {
                        None => seen.insert("port:default-protocol".into()),
                        Some(p) => seen.insert(format!("port:{p}")),
                    };
                }
            }
        }
        for sel in selectors {
            if sel.as_object().is_some_and(Map::is_empty) {
                seen.insert("selector:empty".into());
            }
            if sel.get("matchLabels").is_some() {
                seen.insert("selector:matchLabels".into());
            }
            for req in sel["matchExpressions"].as_array().into_iter().flatten() {
                seen.insert(format!(
                    "op:{}",
                    req["operator"].as_str().unwrap_or_default()
                ));
            }
        }
    }

    #[test]
    fn a_cluster_without_pods_or_ports_draws_no_probes() {
        let mut empty = cluster();
        empty.pods.clear();
        let s = generate(&empty, 3, &Config::default()).unwrap();
        assert!(s.probes.is_empty() && s.pod_labels.is_empty());
        let no_ports = Config {
            ports: vec![],
            ..Config::default()
        };
        assert!(generate(&cluster(), 3, &no_ports)
            .unwrap()
            .probes
            .is_empty());
    }

    #[test]
    fn existing_policies_of_the_cluster_are_not_part_of_the_scenario() {
        let mut c = cluster();
        c.create_policy("r-x", json!({"metadata": {"name": "random-0"}, "spec": {}}))
            .unwrap();
        let s = generate(&c, 5, &Config::default()).unwrap();
        assert_eq!(s, generate(&cluster(), 5, &Config::default()).unwrap());
    }
}

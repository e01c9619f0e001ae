//! The truth-table cases of Kubernetes' NetworkPolicy e2e suite
//! (`test/e2e/network/netpol/network_policy.go` in kubernetes/kubernetes), ported as data: each
//! [`Case`] is the `It` text and its [`Step`]s (policies created, updated, deleted; labels
//! changed; probes with the expected reachability [`Matrix`]).
//!
//! The port follows the version that probes all 9 pods (x, y, z × a, b, c) for every case
//! (upstream commit 9db638c0807a720aa050ebcef69c32e4d4cce280; later versions create only the
//! pods each case looks at, with the same expectations on those). Expectations are written the
//! way upstream writes them: start from all-true (every upstream case does), then apply the
//! explicit `Expect*` calls in order. They are NOT computed from the model; the unit test below
//! checks that the model agrees with them.
//!
//! The layout, as upstream's: namespaces `<prefix>x`, `<prefix>y`, `<prefix>z` labelled
//! `ns=<name>` (the apiserver adds `kubernetes.io/metadata.name=<name>`), pods `a`, `b`, `c` in
//! each labelled `pod=<name>`, each serving 80 and 81 on TCP, UDP and SCTP with container ports
//! named `serve-<port>-<proto>` ([`container_ports`]). Every case starts from that state with
//! no policies; [`Case::cleanup`] gives the steps that bring it back.
//!
//! Upstream ignores loopback (a pod probing itself: `ignoreLoopback = true`), so the
//! comparison does too ([`Matrix::mismatches`]); some upstream expectations set loopback cells to
//! false (e.g. "should enforce policy based on PodSelector or NamespaceSelector" expects
//! x/a → x/a false) where the model, and the kernel, allow it.
//!
//! [`extra_cases`] are trellis's own, in the same form, for what upstream's suite does not
//! probe (endPort ranges, ingress ipBlocks from pods, named UDP ports, NotIn across namespaces).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde_json::{json, Map, Value};

use super::matrix::{Matrix, PeerMatch};
use super::model::{
    self, labels, Cidr, Cluster, ContainerPort, Labels, ModelError, Namespace, Pod, PodRef,
    Protocol, Source, NAMESPACE_NAME_LABEL,
};

/// Upstream's namespaces, before the prefix.
pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
/// Upstream's pods, in every namespace.
pub const PODS: [&str; 3] = ["a", "b", "c"];
/// The ports every pod serves, on every protocol of [`Protocol::ALL`].
pub const PORTS: [u16; 2] = [80, 81];

/// Upstream's container port name: `serve-80-tcp`.
pub fn port_name(port: u16, protocol: Protocol) -> String {
    format!("serve-{port}-{}", protocol.lowercase())
}

/// What every pod declares: 80 and 81 on TCP, UDP and SCTP, named as upstream names them.
pub fn container_ports() -> Vec<ContainerPort> {
    PORTS
        .iter()
        .flat_map(|&port| {
            Protocol::ALL
                .into_iter()
                .map(move |p| ContainerPort::named(&port_name(port, p), port, p))
        })
        .collect()
}

/// A namespace's labels at the start of every case (the apiserver adds the name label).
pub fn base_namespace_labels(namespace: &str) -> Labels {
    labels([("ns", namespace)])
}

/// A pod's labels at the start of every case.
pub fn base_pod_labels(pod: &str) -> Labels {
    labels([("pod", pod)])
}

/// What a run knows at runtime: the namespace prefix and the pods' addresses.
#[derive(Clone, Debug)]
pub struct Context {
    prefix: String,
    /// By upstream (unprefixed) namespace and pod name.
    ips: BTreeMap<(String, String), IpAddr>,
}

/// An IP-dependent case was asked for without the address it is built from.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no IP address known for pod {0} (upstream name)")]
pub struct MissingIp(pub String);

impl Context {
    /// No addresses yet: only the cases that need none can be built.
    pub fn new(prefix: &str) -> Context {
        Context {
            prefix: prefix.to_string(),
            ips: BTreeMap::new(),
        }
    }

    /// Made-up addresses, 10.244.<1+namespace>.<10+pod>: for dry runs and unit tests.
    pub fn with_fake_ips(prefix: &str) -> Context {
        let mut ctx = Context::new(prefix);
        for (i, ns) in NAMESPACES.iter().enumerate() {
            for (j, pod) in PODS.iter().enumerate() {
                let ip = IpAddr::from([10, 244, 1 + i as u8, 10 + j as u8]);
                ctx.set_pod_ip(ns, pod, ip);
            }
        }
        ctx
    }

    /// Records pod `pod` of upstream namespace `ns` (`"x"`, not the prefixed name) at `ip`.
    pub fn set_pod_ip(&mut self, ns: &str, pod: &str, ip: IpAddr) {
        self.ips.insert((ns.to_string(), pod.to_string()), ip);
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The real name of upstream namespace `ns`: `<prefix><ns>`.
    pub fn namespace(&self, ns: &str) -> String {
        format!("{}{ns}", self.prefix)
    }

    /// The real identity of upstream pod `ns/pod`.
    pub fn pod(&self, ns: &str, pod: &str) -> PodRef {
        PodRef::new(&self.namespace(ns), pod)
    }

    pub fn pod_ip(&self, ns: &str, pod: &str) -> Result<IpAddr, MissingIp> {
        self.ips
            .get(&(ns.to_string(), pod.to_string()))
            .copied()
            .ok_or_else(|| MissingIp(format!("{ns}/{pod}")))
    }

    /// All 9 pods, in upstream's order: x/a, x/b, x/c, y/a, …, z/c.
    pub fn all_pods(&self) -> Vec<PodRef> {
        NAMESPACES
            .iter()
            .flat_map(|ns| PODS.iter().map(move |p| self.pod(ns, p)))
            .collect()
    }
}

/// The starting state as a model: 3 namespaces, 9 pods with [`container_ports`] and the
/// context's addresses (a pod without one has none), no policies.
pub fn base_cluster(ctx: &Context) -> Cluster {
    let mut cluster = Cluster::new();
    for ns in NAMESPACES {
        let name = ctx.namespace(ns);
        cluster
            .namespaces
            .push(Namespace::new(&name, base_namespace_labels(&name)));
        for pod in PODS {
            let mut p = Pod::new(&name, pod);
            p.labels = base_pod_labels(pod);
            p.ips = ctx.pod_ip(ns, pod).into_iter().collect();
            p.ports = container_ports();
            cluster.pods.push(p);
        }
    }
    cluster
}

// ---------------------------------------------------------------------------------------------
// Reachability matrices.

/// What the model says for every pair of `pods`.
pub fn model_matrix(
    cluster: &Cluster,
    pods: &[PodRef],
    protocol: Protocol,
    port: u16,
) -> Result<Matrix, ModelError> {
    let mut m = Matrix::square(pods, false);
    for from in pods {
        let src = cluster
            .pod(from)
            .ok_or_else(|| ModelError::NoPod(from.clone()))?;
        for to in pods {
            let dst = cluster
                .pod(to)
                .ok_or_else(|| ModelError::NoPod(to.clone()))?;
            m.set(
                from,
                to,
                model::allowed(cluster, Source::Pod(src), dst, protocol, port),
            );
        }
    }
    Ok(m)
}

// ---------------------------------------------------------------------------------------------
// Cases and steps.

/// Where a case comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Upstream's suite, ported.
    Upstream,
    /// Trellis's own, for what upstream does not probe.
    Trellis,
}

/// One case: upstream's `It` text, in its `Context`, and what it does.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: &'static str,
    pub context: &'static str,
    pub origin: Origin,
    pub steps: Vec<Step>,
}

/// Upstream's three `Context`s.
pub const CONTEXT_TCP: &str = "NetworkPolicy between server and client";
pub const CONTEXT_UDP: &str = "NetworkPolicy between server and client using UDP";
pub const CONTEXT_SCTP: &str = "NetworkPolicy between server and client using SCTP";
/// Where [`extra_cases`] live.
pub const CONTEXT_TRELLIS: &str = "trellis NetworkPolicy between server and client";

/// One thing a case does, in order.
#[derive(Clone, Debug)]
pub enum Step {
    /// Create this NetworkPolicy (a full object; `metadata.namespace` says where).
    CreatePolicy(Value),
    /// Replace the NetworkPolicy of this object's namespace and name.
    UpdatePolicy(Value),
    DeletePolicy {
        namespace: String,
        name: String,
    },
    /// Delete every NetworkPolicy of the case's namespaces (upstream's `cleanNetworkPolicies`).
    DeleteAllPolicies,
    /// Set the namespace's labels to exactly these (the apiserver keeps its name label).
    /// Upstream adds a label; the step carries the resulting set.
    SetNamespaceLabels {
        namespace: String,
        labels: Labels,
    },
    /// Set the pod's labels to exactly these (as above: upstream's additions, merged).
    SetPodLabels {
        pod: PodRef,
        labels: Labels,
    },
    /// Probe every pod from every pod; `expected` is upstream's reachability.
    Probe(Probe),
}

#[derive(Clone, Debug)]
pub struct Probe {
    pub protocol: Protocol,
    pub port: u16,
    pub expected: Matrix,
}

impl Case {
    /// `context` and `name`, as ginkgo would print them (names repeat across contexts).
    pub fn full_name(&self) -> String {
        format!("{} {}", self.context, self.name)
    }

    pub fn probes(&self) -> impl Iterator<Item = &Probe> {
        self.steps.iter().filter_map(|s| match s {
            Step::Probe(p) => Some(p),
            _ => None,
        })
    }

    /// The steps that bring the cluster back to the starting state after this case: every
    /// policy deleted, every label it changed reset (upstream's `DeferCleanup`s).
    pub fn cleanup(&self) -> Vec<Step> {
        let mut steps = vec![Step::DeleteAllPolicies];
        for step in &self.steps {
            match step {
                Step::SetNamespaceLabels { namespace, .. } => {
                    steps.push(Step::SetNamespaceLabels {
                        namespace: namespace.clone(),
                        labels: base_namespace_labels(namespace),
                    })
                }
                Step::SetPodLabels { pod, .. } => steps.push(Step::SetPodLabels {
                    pod: pod.clone(),
                    labels: base_pod_labels(&pod.name),
                }),
                _ => {}
            }
        }
        steps
    }
}

impl Step {
    /// Does to the model what the step does to the cluster (a probe does nothing).
    pub fn apply(&self, cluster: &mut Cluster) -> Result<(), ModelError> {
        match self {
            Step::CreatePolicy(p) => cluster.create_policy(&policy_namespace(p)?, p.clone()),
            Step::UpdatePolicy(p) => cluster.update_policy(&policy_namespace(p)?, p.clone()),
            Step::DeletePolicy { namespace, name } => cluster.delete_policy(namespace, name),
            Step::DeleteAllPolicies => {
                cluster.clear_policies();
                Ok(())
            }
            Step::SetNamespaceLabels { namespace, labels } => {
                let ns = cluster
                    .namespace_mut(namespace)
                    .ok_or_else(|| ModelError::NoNamespace(namespace.clone()))?;
                ns.set_labels(labels.clone());
                Ok(())
            }
            Step::SetPodLabels { pod, labels } => {
                let p = cluster
                    .pod_mut(pod)
                    .ok_or_else(|| ModelError::NoPod(pod.clone()))?;
                p.labels = labels.clone();
                Ok(())
            }
            Step::Probe(_) => Ok(()),
        }
    }
}

/// `create NetworkPolicy np-x/deny-ingress`, `probe TCP/80`, …: a step in a report.
impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let policy = |p: &Value| {
            format!(
                "{}/{}",
                p["metadata"]["namespace"].as_str().unwrap_or("?"),
                p["metadata"]["name"].as_str().unwrap_or("?")
            )
        };
        let labels = |l: &Labels| {
            l.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        match self {
            Step::CreatePolicy(p) => write!(f, "create NetworkPolicy {}", policy(p)),
            Step::UpdatePolicy(p) => write!(f, "update NetworkPolicy {}", policy(p)),
            Step::DeletePolicy { namespace, name } => {
                write!(f, "delete NetworkPolicy {namespace}/{name}")
            }
            Step::DeleteAllPolicies => f.write_str("delete every NetworkPolicy"),
            Step::SetNamespaceLabels {
                namespace,
                labels: l,
            } => {
                write!(f, "label namespace {namespace} {}", labels(l))
            }
            Step::SetPodLabels { pod, labels: l } => write!(f, "label pod {pod} {}", labels(l)),
            Step::Probe(p) => write!(f, "probe {}/{}", p.protocol, p.port),
        }
    }
}

fn policy_namespace(policy: &Value) -> Result<String, ModelError> {
    policy["metadata"]["namespace"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| ModelError::Invalid("metadata.namespace: required in a case".into()))
}

/// Upstream's 48 cases, in its order.
pub fn upstream_cases(ctx: &Context) -> Result<Vec<Case>, MissingIp> {
    let t = CONTEXT_TCP;
    let mut cases = vec![
        default_deny_ingress(ctx, t, Protocol::Tcp, "deny-ingress"),
        default_deny_all(ctx),
        allow_from_pods_in_namespace_by_pod_selector(ctx),
        allow_ingress_for_a_target(ctx),
        allow_from_all_namespaces(ctx),
        allow_only_from_other_namespace(ctx),
        pod_selector_match_expressions(ctx),
        namespace_selector_match_expressions(ctx),
        pod_selector_or_namespace_selector(ctx),
        pod_selector_and_namespace_selector(ctx),
        multiple_pod_and_namespace_selectors(ctx),
        any_pod_selectors(ctx),
        only_from_pod_in_other_namespace(ctx, t, Protocol::Tcp),
        ports(ctx, t, Protocol::Tcp, "allow-client-a-via-ns-selector"),
        stacked_policies(ctx),
        allow_all(ctx),
        ingress_named_port(ctx),
        ingress_named_port_from_namespace(ctx),
        egress_named_port(ctx),
        updated_policy(ctx),
        updated_namespace(ctx),
        updated_pod(ctx),
        deny_from_other_namespaces(ctx),
        deny_to_updated_pod(ctx),
        deny_egress_by_pod_selector(ctx),
        deny_egress_from_namespace(ctx),
        ingress_and_egress_together(ctx),
        deny_egress_on_client_side(ctx),
        egress_to_other_namespace(ctx),
        ingress_by_protocol(ctx),
        ingress_allow_all_precedence(ctx),
        egress_allow_all_precedence(ctx),
        stop_after_delete(ctx),
        egress_to_cidr(ctx)?,
        egress_cidr_except(ctx)?,
        egress_cidr_overlapping_except(ctx)?,
        ingress_and_egress_independent(ctx),
        sctp_is_not_tcp(ctx),
        sctp_policy_isolates(ctx),
        udp_policy_not_tcp(ctx),
        default_namespace_label_match_labels(ctx),
        default_namespace_label_match_expressions(ctx),
    ];
    for (context, protocol) in [(CONTEXT_UDP, Protocol::Udp), (CONTEXT_SCTP, Protocol::Sctp)] {
        cases.push(default_deny_ingress(ctx, context, protocol, "deny-all"));
        cases.push(ports(
            ctx,
            context,
            protocol,
            "allow-ingress-on-port-81-ns-x",
        ));
        cases.push(only_from_pod_in_other_namespace(ctx, context, protocol));
    }
    Ok(cases)
}

/// Trellis's cases, in upstream's form.
pub fn extra_cases(ctx: &Context) -> Result<Vec<Case>, MissingIp> {
    Ok(vec![
        ingress_port_range(ctx),
        egress_port_range(ctx),
        ingress_cidr_except(ctx)?,
        ingress_named_udp_port(ctx),
        egress_not_in_across_namespaces(ctx),
    ])
}

/// [`upstream_cases`] then [`extra_cases`].
pub fn all_cases(ctx: &Context) -> Result<Vec<Case>, MissingIp> {
    let mut cases = upstream_cases(ctx)?;
    cases.extend(extra_cases(ctx)?);
    Ok(cases)
}

// ---------------------------------------------------------------------------------------------
// Building policies the way upstream's policies.go does.

/// Upstream's `GenNetworkPolicy…`: `SetSpecIngressRules`/`SetSpecEgressRules` each add their
/// policy type the first time they are called, even with no rules.
struct Np {
    name: &'static str,
    pod_selector: Value,
    ingress: Option<Vec<Value>>,
    egress: Option<Vec<Value>>,
    types: Vec<&'static str>,
}

impl Np {
    /// `GenNetworkPolicyWithNameAndPodSelector` / `…AndPodMatchLabel`.
    fn new(name: &'static str, pod_selector: Value) -> Np {
        Np {
            name,
            pod_selector,
            ingress: None,
            egress: None,
            types: Vec::new(),
        }
    }

    /// `SetSpecIngressRules(rules...)`.
    fn ingress(mut self, rules: Vec<Value>) -> Np {
        if self.ingress.is_none() {
            self.types.push("Ingress");
        }
        self.ingress.get_or_insert_with(Vec::new).extend(rules);
        self
    }

    /// `SetSpecEgressRules(rules...)`.
    fn egress(mut self, rules: Vec<Value>) -> Np {
        if self.egress.is_none() {
            self.types.push("Egress");
        }
        self.egress.get_or_insert_with(Vec::new).extend(rules);
        self
    }

    /// `policy.Spec.PolicyTypes = …` set by hand.
    fn types(mut self, types: &[&'static str]) -> Np {
        self.types = types.to_vec();
        self
    }

    /// The object, in the real namespace `namespace`.
    fn object(&self, namespace: &str) -> Value {
        let mut spec = Map::new();
        spec.insert("podSelector".into(), self.pod_selector.clone());
        if let Some(rules) = &self.ingress {
            spec.insert("ingress".into(), Value::Array(rules.clone()));
        }
        if let Some(rules) = &self.egress {
            spec.insert("egress".into(), Value::Array(rules.clone()));
        }
        spec.insert("policyTypes".into(), json!(self.types));
        json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": self.name, "namespace": namespace},
            "spec": spec,
        })
    }
}

/// `{matchLabels: …}`; no pairs is `{}`, as Go's `omitempty` sends an empty map.
fn match_labels(pairs: &[(&str, &str)]) -> Value {
    if pairs.is_empty() {
        return json!({});
    }
    let m: Map<String, Value> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    json!({"matchLabels": m})
}

/// `{matchExpressions: [{key, operator, values}]}`.
fn match_expression(key: &str, operator: &str, values: &[&str]) -> Value {
    json!({"matchExpressions": [{"key": key, "operator": operator, "values": values}]})
}

/// Namespaces by name, through the label the apiserver sets (upstream's `namespaceLabelKey`).
fn namespace_named(name: &str) -> Value {
    match_labels(&[(NAMESPACE_NAME_LABEL, name)])
}

fn pods_peer(selector: Value) -> Value {
    json!({"podSelector": selector})
}

fn namespaces_peer(selector: Value) -> Value {
    json!({"namespaceSelector": selector})
}

fn both_peer(namespaces: Value, pods: Value) -> Value {
    json!({"namespaceSelector": namespaces, "podSelector": pods})
}

fn block_peer(cidr: Cidr, except: &[Cidr]) -> Value {
    let except: Vec<String> = except.iter().map(Cidr::to_string).collect();
    if except.is_empty() {
        json!({"ipBlock": {"cidr": cidr.to_string()}})
    } else {
        json!({"ipBlock": {"cidr": cidr.to_string(), "except": except}})
    }
}

/// A rule with `from`/`to` = `peers` and `ports`, empty lists left out (as Go sends them).
fn rule(peers_field: &str, peers: Vec<Value>, ports: Vec<Value>) -> Value {
    let mut r = Map::new();
    if !peers.is_empty() {
        r.insert(peers_field.into(), Value::Array(peers));
    }
    if !ports.is_empty() {
        r.insert("ports".into(), Value::Array(ports));
    }
    Value::Object(r)
}

fn from(peers: Vec<Value>, ports: Vec<Value>) -> Value {
    rule("from", peers, ports)
}

fn to(peers: Vec<Value>, ports: Vec<Value>) -> Value {
    rule("to", peers, ports)
}

/// A numbered port; no protocol leaves the API's default (TCP).
fn port(number: u16, protocol: Option<Protocol>) -> Value {
    match protocol {
        Some(p) => json!({"port": number, "protocol": p.as_str()}),
        None => json!({"port": number}),
    }
}

fn port_range(first: u16, last: u16, protocol: Protocol) -> Value {
    json!({"port": first, "endPort": last, "protocol": protocol.as_str()})
}

fn named_port(name: &str, protocol: Option<Protocol>) -> Value {
    match protocol {
        Some(p) => json!({"port": name, "protocol": p.as_str()}),
        None => json!({"port": name}),
    }
}

/// Upstream's `makeLargeCIDRForIP`: the /4 holding `ip`.
fn large_cidr(ip: IpAddr) -> Cidr {
    Cidr::new(ip, 4)
}

// ---------------------------------------------------------------------------------------------
// Writing a case.

/// A place in upstream's `Peer` terms, by upstream names: any pod, a namespace, one pod.
#[derive(Clone, Copy)]
enum At {
    Any,
    Ns(&'static str),
    Pod(&'static str, &'static str),
}

/// Steps of one case, in upstream names (`"x"`, `("x", "a")`); real names come from `ctx`.
struct Script<'a> {
    ctx: &'a Context,
    steps: Vec<Step>,
}

impl<'a> Script<'a> {
    fn new(ctx: &'a Context) -> Script<'a> {
        Script {
            ctx,
            steps: Vec::new(),
        }
    }

    /// `CreatePolicy(ctx, k8s, policy, ns)`.
    fn create(mut self, ns: &str, np: Np) -> Self {
        let object = np.object(&self.ctx.namespace(ns));
        self.steps.push(Step::CreatePolicy(object));
        self
    }

    /// `UpdatePolicy(ctx, k8s, policy, ns)`.
    fn update(mut self, ns: &str, np: Np) -> Self {
        let object = np.object(&self.ctx.namespace(ns));
        self.steps.push(Step::UpdatePolicy(object));
        self
    }

    fn delete_all(mut self) -> Self {
        self.steps.push(Step::DeleteAllPolicies);
        self
    }

    /// `AddNamespaceLabel(…, ns, key, value)`, merged into the starting labels.
    fn add_namespace_label(mut self, ns: &str, key: &str, value: &str) -> Self {
        let namespace = self.ctx.namespace(ns);
        let mut labels = base_namespace_labels(&namespace);
        labels.insert(key.into(), value.into());
        self.steps
            .push(Step::SetNamespaceLabels { namespace, labels });
        self
    }

    /// `AddPodLabels(…, ns, pod, labels)`, merged into the starting labels.
    fn add_pod_labels(mut self, ns: &str, pod: &str, add: &[(&str, &str)]) -> Self {
        let mut labels = base_pod_labels(pod);
        labels.extend(add.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let pod = self.ctx.pod(ns, pod);
        self.steps.push(Step::SetPodLabels { pod, labels });
        self
    }

    /// `ValidateOrFail(…, &TestCase{ToPort: port, Protocol: protocol, Reachability: r})` with
    /// `r` = `NewReachability(all pods, true)` and then `expect`'s calls.
    fn probe(mut self, protocol: Protocol, port: u16, expect: &[Expect]) -> Self {
        let mut m = Matrix::square(&self.ctx.all_pods(), true);
        for e in expect {
            self.apply_expectation(&mut m, *e);
        }
        self.steps.push(Step::Probe(Probe {
            protocol,
            port,
            expected: m,
        }));
        self
    }

    fn apply_expectation(&self, m: &mut Matrix, e: Expect) {
        match e {
            Expect::Peer(from, to, v) => m.expect_peer(&self.peer(from), &self.peer(to), v),
            Expect::AllIngress(ns, pod, v) => m.expect_all_ingress(&self.ctx.pod(ns, pod), v),
            Expect::AllEgress(ns, pod, v) => m.expect_all_egress(&self.ctx.pod(ns, pod), v),
            Expect::One((fns, fpod), (tns, tpod), v) => {
                m.expect(&self.ctx.pod(fns, fpod), &self.ctx.pod(tns, tpod), v)
            }
        }
    }

    fn peer(&self, at: At) -> PeerMatch {
        match at {
            At::Any => PeerMatch::any(),
            At::Ns(ns) => PeerMatch::namespace(&self.ctx.namespace(ns)),
            At::Pod(ns, pod) => PeerMatch::pod(&self.ctx.pod(ns, pod)),
        }
    }

    fn case(self, context: &'static str, name: &'static str) -> Case {
        Case {
            name,
            context,
            origin: if context == CONTEXT_TRELLIS {
                Origin::Trellis
            } else {
                Origin::Upstream
            },
            steps: self.steps,
        }
    }
}

/// Upstream's `reachability.Expect*` calls.
#[derive(Clone, Copy)]
enum Expect {
    /// `ExpectPeer(from, to, v)`.
    Peer(At, At, bool),
    /// `ExpectAllIngress(NewPodString(ns, pod), v)`.
    AllIngress(&'static str, &'static str, bool),
    /// `ExpectAllEgress(NewPodString(ns, pod), v)`.
    AllEgress(&'static str, &'static str, bool),
    /// `Expect(from, to, v)`.
    One(
        (&'static str, &'static str),
        (&'static str, &'static str),
        bool,
    ),
}

use At::{Any, Ns, Pod as P};
use Expect::{AllEgress, AllIngress, One, Peer};

const TCP: Protocol = Protocol::Tcp;
const UDP: Protocol = Protocol::Udp;
const SCTP: Protocol = Protocol::Sctp;

fn pod_a() -> Value {
    match_labels(&[("pod", "a")])
}

/// `metav1.LabelSelector{}` and `MatchLabels: map[string]string{}` alike.
fn everything() -> Value {
    json!({})
}

// ---------------------------------------------------------------------------------------------
// Upstream's cases, one function each, in its order. Policy names, selectors and expectations
// are upstream's; comments say where the port had to choose.

fn default_deny_ingress(
    ctx: &Context,
    context: &'static str,
    proto: Protocol,
    name: &'static str,
) -> Case {
    Script::new(ctx)
        .create("x", Np::new(name, everything()).ingress(vec![]))
        .probe(proto, 80, &[Peer(Any, Ns("x"), false)])
        .case(context, "should support a 'default-deny-ingress' policy")
}

fn default_deny_all(ctx: &Context) -> Case {
    Script::new(ctx)
        .create(
            "x",
            Np::new("deny-all", everything())
                .ingress(vec![])
                .egress(vec![]),
        )
        .probe(
            TCP,
            80,
            &[Peer(Any, Ns("x"), false), Peer(Ns("x"), Any, false)],
        )
        .case(CONTEXT_TCP, "should support a 'default-deny-all' policy")
}

fn allow_from_pods_in_namespace_by_pod_selector(ctx: &Context) -> Case {
    let rule = from(vec![pods_peer(match_labels(&[("pod", "b")]))], vec![]);
    Script::new(ctx)
        .create("x", Np::new("x-a-allows-x-b", pod_a()).ingress(vec![rule]))
        .probe(TCP, 80, &[AllIngress("x", "a", false), One(("x", "b"), ("x", "a"), true)])
        .case(
            CONTEXT_TCP,
            "should enforce policy to allow traffic from pods within server namespace based on PodSelector",
        )
}

fn allow_ingress_for_a_target(ctx: &Context) -> Case {
    let rule = from(vec![both_peer(everything(), everything())], vec![]);
    Script::new(ctx)
        .create("x", Np::new("deny-all", everything()).ingress(vec![]))
        .create("x", Np::new("allow-all-to-a", pod_a()).ingress(vec![rule]))
        .probe(
            TCP,
            80,
            &[
                AllIngress("x", "a", true),
                AllIngress("x", "b", false),
                AllIngress("x", "c", false),
            ],
        )
        .case(
            CONTEXT_TCP,
            "should enforce policy to allow ingress traffic for a target",
        )
}

fn allow_from_all_namespaces(ctx: &Context) -> Case {
    let rule = from(vec![namespaces_peer(everything())], vec![]);
    Script::new(ctx)
        .create(
            "x",
            Np::new("allow-from-another-ns", pod_a()).ingress(vec![rule]),
        )
        .probe(TCP, 80, &[])
        .case(
            CONTEXT_TCP,
            "should enforce policy to allow ingress traffic from pods in all namespaces",
        )
}

fn allow_only_from_other_namespace(ctx: &Context) -> Case {
    let rule = from(
        vec![namespaces_peer(namespace_named(&ctx.namespace("y")))],
        vec![],
    );
    Script::new(ctx)
        .create("x", Np::new("allow-client-a-via-ns-selector", pod_a()).ingress(vec![rule]))
        .probe(TCP, 80, &[Peer(Ns("x"), P("x", "a"), false), Peer(Ns("z"), P("x", "a"), false)])
        .case(
            CONTEXT_TCP,
            "should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector",
        )
}

fn pod_selector_match_expressions(ctx: &Context) -> Case {
    let rule = from(
        vec![pods_peer(match_expression("pod", "In", &["b"]))],
        vec![],
    );
    Script::new(ctx)
        .create("x", Np::new("x-a-allows-x-b", pod_a()).ingress(vec![rule]))
        .probe(
            TCP,
            80,
            &[
                AllIngress("x", "a", false),
                One(("x", "b"), ("x", "a"), true),
            ],
        )
        .case(
            CONTEXT_TCP,
            "should enforce policy based on PodSelector with MatchExpressions",
        )
}

fn namespace_selector_match_expressions(ctx: &Context) -> Case {
    let y = ctx.namespace("y");
    let rule = from(
        vec![namespaces_peer(match_expression(
            NAMESPACE_NAME_LABEL,
            "In",
            &[&y],
        ))],
        vec![],
    );
    Script::new(ctx)
        .create(
            "x",
            Np::new("allow-ns-y-match-selector", pod_a()).ingress(vec![rule]),
        )
        .probe(
            TCP,
            80,
            &[
                Peer(Ns("x"), P("x", "a"), false),
                Peer(Ns("z"), P("x", "a"), false),
            ],
        )
        .case(
            CONTEXT_TCP,
            "should enforce policy based on NamespaceSelector with MatchExpressions",
        )
}

fn pod_selector_or_namespace_selector(ctx: &Context) -> Case {
    let x = ctx.namespace("x");
    let rule = from(
        vec![
            namespaces_peer(match_expression(NAMESPACE_NAME_LABEL, "NotIn", &[&x])),
            pods_peer(match_labels(&[("pod", "b")])),
        ],
        vec![],
    );
    // Upstream expects x/a -> x/a false: a loopback cell, ignored (the model allows it).
    Script::new(ctx)
        .create(
            "x",
            Np::new("allow-ns-y-match-selector", pod_a()).ingress(vec![rule]),
        )
        .probe(
            TCP,
            80,
            &[
                One(("x", "a"), ("x", "a"), false),
                One(("x", "c"), ("x", "a"), false),
            ],
        )
        .case(
            CONTEXT_TCP,
            "should enforce policy based on PodSelector or NamespaceSelector",
        )
}

fn pod_selector_and_namespace_selector(ctx: &Context) -> Case {
    let x = ctx.namespace("x");
    let peer = both_peer(
        match_expression(NAMESPACE_NAME_LABEL, "NotIn", &[&x]),
        match_labels(&[("pod", "b")]),
    );
    Script::new(ctx)
        .create(
            "x",
            Np::new("allow-ns-y-podselector-and-nsselector", pod_a())
                .ingress(vec![from(vec![peer], vec![])]),
        )
        .probe(
            TCP,
            80,
            &[
                AllIngress("x", "a", false),
                One(("y", "b"), ("x", "a"), true),
                One(("z", "b"), ("x", "a"), true),
            ],
        )
        .case(
            CONTEXT_TCP,
            "should enforce policy based on PodSelector and NamespaceSelector",
        )
}

fn multiple_pod_and_namespace_selectors(ctx: &Context) -> Case {
    let x = ctx.namespace("x");
    let peer = both_peer(
        match_expression(NAMESPACE_NAME_LABEL, "NotIn", &[&x]),
        match_expression("pod", "In", &["b", "c"]),
    );
    Script::new(ctx)
        .create(
            "x",
            Np::new("allow-ns-y-z-pod-b-c", pod_a()).ingress(vec![from(vec![peer], vec![])]),
        )
        .probe(
            TCP,
            80,
            &[
                Peer(Ns("x"), P("x", "a"), false),
                One(("y", "a"), ("x", "a"), false),
                One(("z", "a"), ("x", "a"), false),
            ],
        )
        .case(
            CONTEXT_TCP,
            "should enforce policy based on Multiple PodSelectors and NamespaceSelectors",
        )
}

fn any_pod_selectors(ctx: &Context) -> Case {
    let rule = from(
        vec![
            pods_peer(match_labels(&[("pod", "b")])),
            pods_peer(match_labels(&[("pod", "c")])),
        ],
        vec![],
    );
    Script::new(ctx)
        .create(
            "x",
            Np::new("allow-ns-x-pod-b-c", pod_a()).ingress(vec![rule]),
        )
        .probe(
            TCP,
            80,
            &[
                AllIngress("x", "a", false),
                One(("x", "b"), ("x", "a"), true),
                One(("x", "c"), ("x", "a"), true),
            ],
        )
        .case(
            CONTEXT_TCP,
            "should enforce policy based on any PodSelectors",
        )
}

/// Also upstream's UDP and SCTP cases of the same name (port 80 of their protocol).
fn only_from_pod_in_other_namespace(ctx: &Context, context: &'static str, proto: Protocol) -> Case {
    let peer = both_peer(namespace_named(&ctx.namespace("y")), pod_a());
    Script::new(ctx)
        .create(
            "x",
            Np::new("allow-ns-y-pod-a-via-namespace-pod-selector", pod_a()).ingress(vec![from(vec![peer], vec![])]),
        )
        .probe(proto, 80, &[AllIngress("x", "a", false), One(("y", "a"), ("x", "a"), true)])
        .case(
            context,
            "should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector",
        )
}

/// Upstream's TCP, UDP and SCTP "based on Ports"; the TCP one also expects y -> x/a true,
/// which changes nothing from the all-true start.
fn ports(ctx: &Context, context: &'static str, proto: Protocol, name: &'static str) -> Case {
    let rule = from(
        vec![namespaces_peer(namespace_named(&ctx.namespace("y")))],
        vec![port(81, Some(proto))],
    );
    let mut expect = vec![Peer(Ns("x"), P("x", "a"), false)];
    if proto == TCP {
        expect.push(Peer(Ns("y"), P("x", "a"), true));
    }
    expect.push(Peer(Ns("z"), P("x", "a"), false));
    Script::new(ctx)
        .create("x", Np::new(name, pod_a()).ingress(vec![rule]))
        .probe(proto, 81, &expect)
        .case(context, "should enforce policy based on Ports")
}

fn stacked_policies(ctx: &Context) -> Case {
    let y = namespace_named(&ctx.namespace("y"));
    let rule81 = from(vec![namespaces_peer(y.clone())], vec![port(81, Some(TCP))]);
    let rule80 = from(vec![namespaces_peer(y)], vec![port(80, Some(TCP))]);
    let allow = [
        Peer(Ns("x"), P("x", "a"), false),
        Peer(Ns("y"), P("x", "a"), true),
        Peer(Ns("z"), P("x", "a"), false),
    ];
    Script::new(ctx)
        .create(
            "x",
            Np::new("allow-client-a-via-ns-selector", pod_a()).ingress(vec![rule81]),
        )
        .probe(TCP, 81, &allow)
        .probe(TCP, 80, &[AllIngress("x", "a", false)])
        .create(
            "x",
            Np::new("allow-client-a-via-ns-selector-80", pod_a()).ingress(vec![rule80]),
        )
        .probe(TCP, 80, &allow)
        .case(
            CONTEXT_TCP,
            "should enforce multiple, stacked policies with overlapping podSelectors",
        )
}

fn allow_all(ctx: &Context) -> Case {
    Script::new(ctx)
        .create(
            "x",
            Np::new("allow-all", everything()).ingress(vec![json!({})]),
        )
        .probe(TCP, 80, &[])
        .probe(TCP, 81, &[])
        .case(CONTEXT_TCP, "should support allow-all policy")
}

fn ingress_named_port(ctx: &Context) -> Case {
    let rule = from(vec![], vec![named_port("serve-81-tcp", None)]);
    Script::new(ctx)
        .create("x", Np::new("allow-all", everything()).ingress(vec![rule]))
        .probe(TCP, 81, &[])
        .probe(TCP, 80, &[Peer(Any, Ns("x"), false)])
        .case(CONTEXT_TCP, "should allow ingress access on one named port")
}

fn ingress_named_port_from_namespace(ctx: &Context) -> Case {
    let rule = from(
        vec![namespaces_peer(namespace_named(&ctx.namespace("y")))],
        vec![named_port("serve-80-tcp", Some(TCP))],
    );
    Script::new(ctx)
        .create(
            "x",
            Np::new("allow-client-a-via-ns-selector-80", pod_a()).ingress(vec![rule]),
        )
        .probe(
            TCP,
            80,
            &[
                Peer(Ns("x"), P("x", "a"), false),
                Peer(Ns("z"), P("x", "a"), false),
            ],
        )
        .probe(TCP, 81, &[AllIngress("x", "a", false)])
        .case(
            CONTEXT_TCP,
            "should allow ingress access from namespace on one named port",
        )
}

fn egress_named_port(ctx: &Context) -> Case {
    let rule = to(vec![], vec![named_port("serve-80-tcp", None)]);
    Script::new(ctx)
        .create(
            "x",
            Np::new("allow-egress", everything()).egress(vec![rule]),
        )
        .probe(TCP, 80, &[])
        .probe(TCP, 81, &[Peer(Ns("x"), Any, false)])
        .case(CONTEXT_TCP, "should allow egress access on one named port")
}

fn updated_policy(ctx: &Context) -> Case {
    let name = "allow-all-mutate-to-deny-all";
    // Part 2 sets `Spec.Ingress` to an empty list; policyTypes stay [Ingress].
    Script::new(ctx)
        .create("x", Np::new(name, everything()).ingress(vec![json!({})]))
        .probe(TCP, 81, &[])
        .update("x", Np::new(name, everything()).ingress(vec![]))
        .probe(TCP, 81, &[Peer(Any, Ns("x"), false)])
        .case(CONTEXT_TCP, "should enforce updated policy")
}

fn updated_namespace(ctx: &Context) -> Case {
    let rule = from(
        vec![namespaces_peer(match_labels(&[("ns2", "updated")]))],
        vec![],
    );
    Script::new(ctx)
        .create(
            "x",
            Np::new("allow-client-a-via-ns-selector", pod_a()).ingress(vec![rule]),
        )
        .probe(TCP, 80, &[AllIngress("x", "a", false)])
        .add_namespace_label("y", "ns2", "updated")
        .probe(
            TCP,
            80,
            &[AllIngress("x", "a", false), Peer(Ns("y"), Any, true)],
        )
        .case(
            CONTEXT_TCP,
            "should allow ingress access from updated namespace",
        )
}

fn updated_pod(ctx: &Context) -> Case {
    let wanted = [("pod", "b"), ("pod2", "updated")];
    let rule = from(vec![pods_peer(match_labels(&wanted))], vec![]);
    Script::new(ctx)
        .create(
            "x",
            Np::new("allow-client-a-via-pod-selector", pod_a()).ingress(vec![rule]),
        )
        .probe(TCP, 80, &[AllIngress("x", "a", false)])
        .add_pod_labels("x", "b", &wanted)
        .probe(
            TCP,
            80,
            &[
                AllIngress("x", "a", false),
                One(("x", "b"), ("x", "a"), true),
            ],
        )
        .case(CONTEXT_TCP, "should allow ingress access from updated pod")
}

fn deny_from_other_namespaces(ctx: &Context) -> Case {
    let rule = from(vec![pods_peer(everything())], vec![]);
    Script::new(ctx)
        .create(
            "x",
            Np::new("deny-empty-policy", everything()).ingress(vec![rule]),
        )
        .probe(
            TCP,
            80,
            &[Peer(Ns("y"), Ns("x"), false), Peer(Ns("z"), Ns("x"), false)],
        )
        .case(
            CONTEXT_TCP,
            "should deny ingress from pods on other namespaces",
        )
}

fn deny_to_updated_pod(ctx: &Context) -> Case {
    let target = match_labels(&[("target", "isolated")]);
    Script::new(ctx)
        .create(
            "x",
            Np::new("deny-ingress-via-label-selector", target).ingress(vec![]),
        )
        .probe(TCP, 80, &[])
        .add_pod_labels("x", "a", &[("target", "isolated")])
        .probe(TCP, 80, &[AllIngress("x", "a", false)])
        .case(CONTEXT_TCP, "should deny ingress access to updated pod")
}

fn deny_egress_by_pod_selector(ctx: &Context) -> Case {
    Script::new(ctx)
        .create("x", Np::new("deny-egress-pod-a", pod_a()).egress(vec![]))
        .probe(TCP, 80, &[AllEgress("x", "a", false)])
        .case(
            CONTEXT_TCP,
            "should deny egress from pods based on PodSelector",
        )
}

fn deny_egress_from_namespace(ctx: &Context) -> Case {
    Script::new(ctx)
        .create(
            "x",
            Np::new("deny-egress-ns-x", everything()).egress(vec![]),
        )
        .probe(TCP, 80, &[Peer(Ns("x"), Any, false)])
        .case(
            CONTEXT_TCP,
            "should deny egress from all pods in a namespace",
        )
}

fn ingress_and_egress_together(ctx: &Context) -> Case {
    let ingress = from(vec![pods_peer(match_labels(&[("pod", "b")]))], vec![]);
    // Upstream sets Spec.Egress and PolicyTypes by hand after SetSpecIngressRules.
    let np = Np::new("allow-client-a-via-pod-selector", pod_a())
        .ingress(vec![ingress])
        .egress(vec![to(vec![], vec![port(80, None)])])
        .types(&["Egress", "Ingress"]);
    Script::new(ctx)
        .create("x", np)
        .probe(
            TCP,
            80,
            &[
                AllIngress("x", "a", false),
                One(("x", "b"), ("x", "a"), true),
            ],
        )
        .probe(
            TCP,
            81,
            &[
                AllIngress("x", "a", false),
                AllEgress("x", "a", false),
                One(("x", "b"), ("x", "a"), true),
            ],
        )
        .case(
            CONTEXT_TCP,
            "should work with Ingress, Egress specified together",
        )
}

fn deny_egress_on_client_side(ctx: &Context) -> Case {
    let to_ya = both_peer(namespace_named(&ctx.namespace("y")), pod_a());
    let from_xa = both_peer(namespace_named(&ctx.namespace("x")), pod_a());
    let ingress = from(vec![from_xa], vec![]);
    Script::new(ctx)
        .create("x", Np::new("allow-to-ns-y-pod-a", pod_a()).egress(vec![to(vec![to_ya], vec![])]))
        .create("y", Np::new("allow-from-xa-on-ya-match-selector", pod_a()).ingress(vec![ingress.clone()]))
        .create(
            "y",
            Np::new("allow-from-xa-on-yb-match-selector", match_labels(&[("pod", "b")])).ingress(vec![ingress]),
        )
        .probe(
            TCP,
            80,
            &[
                Peer(P("x", "a"), Any, false),
                Peer(Any, P("y", "a"), false),
                Peer(P("x", "a"), P("y", "a"), true),
                Peer(Any, P("y", "b"), false),
            ],
        )
        .case(
            CONTEXT_TCP,
            "should support denying of egress traffic on the client side (even if the server explicitly allows this traffic)",
        )
}

fn egress_to_other_namespace(ctx: &Context) -> Case {
    let peer = both_peer(namespace_named(&ctx.namespace("y")), pod_a());
    Script::new(ctx)
        .create("x", Np::new("allow-to-ns-y-pod-a", pod_a()).egress(vec![to(vec![peer], vec![])]))
        .probe(TCP, 80, &[AllEgress("x", "a", false), One(("x", "a"), ("y", "a"), true)])
        .case(
            CONTEXT_TCP,
            "should enforce egress policy allowing traffic to a server in a different namespace based on PodSelector and NamespaceSelector",
        )
}

fn ingress_by_protocol(ctx: &Context) -> Case {
    let rule = from(vec![], vec![json!({"protocol": "TCP"})]);
    Script::new(ctx)
        .create("x", Np::new("allow-ingress-by-proto", pod_a()).ingress(vec![rule]))
        .probe(TCP, 80, &[])
        .probe(UDP, 80, &[Peer(Any, P("x", "a"), false)])
        .case(
            CONTEXT_TCP,
            "should enforce ingress policy allowing any port traffic to a server on a specific protocol",
        )
}

fn ingress_allow_all_precedence(ctx: &Context) -> Case {
    let rule = from(vec![], vec![port(80, None)]);
    Script::new(ctx)
        .create("x", Np::new("allow-ingress-port-80", everything()).ingress(vec![rule]))
        .probe(TCP, 81, &[Peer(Any, Ns("x"), false)])
        .create("x", Np::new("allow-ingress", everything()).ingress(vec![json!({})]))
        .probe(TCP, 81, &[])
        .case(
            CONTEXT_TCP,
            "should enforce multiple ingress policies with ingress allow-all policy taking precedence",
        )
}

fn egress_allow_all_precedence(ctx: &Context) -> Case {
    let rule = to(vec![], vec![port(80, None)]);
    Script::new(ctx)
        .create("x", Np::new("allow-egress-port-80", everything()).egress(vec![rule]))
        .probe(TCP, 81, &[Peer(Ns("x"), Any, false)])
        .create("x", Np::new("allow-egress", everything()).egress(vec![json!({})]))
        .probe(TCP, 81, &[])
        .case(
            CONTEXT_TCP,
            "should enforce multiple egress policies with egress allow-all policy taking precedence",
        )
}

fn stop_after_delete(ctx: &Context) -> Case {
    Script::new(ctx)
        .create(
            "x",
            Np::new("deny-all", everything())
                .ingress(vec![])
                .egress(vec![]),
        )
        .probe(
            TCP,
            80,
            &[Peer(Ns("x"), Any, false), Peer(Any, Ns("x"), false)],
        )
        .delete_all()
        .probe(TCP, 80, &[])
        .case(
            CONTEXT_TCP,
            "should stop enforcing policies after they are deleted",
        )
}

fn egress_to_cidr(ctx: &Context) -> Result<Case, MissingIp> {
    let yb = Cidr::host(ctx.pod_ip("y", "b")?);
    let rule = to(vec![block_peer(yb, &[])], vec![]);
    Ok(Script::new(ctx)
        .create(
            "x",
            Np::new("allow-client-a-via-cidr-egress-rule", pod_a()).egress(vec![rule]),
        )
        .probe(
            TCP,
            80,
            &[
                AllEgress("x", "a", false),
                One(("x", "a"), ("y", "b"), true),
            ],
        )
        .case(
            CONTEXT_TCP,
            "should allow egress access to server in CIDR block",
        ))
}

/// The block around x/b minus x/b. The 9-pod version wrote `<x/a's IP>/4` (host bits set, and
/// possibly not holding x/b); the port takes upstream's later `makeLargeCIDRForIP(x/b)`, the
/// canonical /4 holding x/b, so that the except is always a strict subset.
fn cidr_except_rule(ctx: &Context) -> Result<Value, MissingIp> {
    let xb = ctx.pod_ip("x", "b")?;
    Ok(to(
        vec![block_peer(large_cidr(xb), &[Cidr::host(xb)])],
        vec![],
    ))
}

fn egress_cidr_except(ctx: &Context) -> Result<Case, MissingIp> {
    let rule = cidr_except_rule(ctx)?;
    Ok(Script::new(ctx)
        .create(
            "x",
            Np::new("allow-client-a-via-cidr-egress-rule", pod_a()).egress(vec![rule]),
        )
        .probe(TCP, 80, &[One(("x", "a"), ("x", "b"), false)])
        .case(
            CONTEXT_TCP,
            "should enforce except clause while egress access to server in CIDR block",
        ))
}

fn egress_cidr_overlapping_except(ctx: &Context) -> Result<Case, MissingIp> {
    let name = "allow-client-a-via-cidr-egress-rule";
    let except_rule = cidr_except_rule(ctx)?;
    let xb_only = to(
        vec![block_peer(Cidr::host(ctx.pod_ip("x", "b")?), &[])],
        vec![],
    );
    Ok(Script::new(ctx)
        .create("x", Np::new(name, pod_a()).egress(vec![except_rule]))
        .probe(TCP, 80, &[One(("x", "a"), ("x", "b"), false)])
        .update("x", Np::new(name, pod_a()).egress(vec![xb_only]))
        .probe(
            TCP,
            80,
            &[
                AllEgress("x", "a", false),
                One(("x", "a"), ("x", "b"), true),
            ],
        )
        .case(
            CONTEXT_TCP,
            "should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed",
        ))
}

fn ingress_and_egress_independent(ctx: &Context) -> Case {
    Script::new(ctx)
        .create("x", Np::new("allow-egress-for-target", pod_a()).egress(vec![json!({})]))
        .probe(TCP, 80, &[])
        .create("x", Np::new("deny-ingress-via-label-selector", pod_a()).ingress(vec![]))
        .probe(TCP, 80, &[AllIngress("x", "a", false)])
        .case(
            CONTEXT_TCP,
            "should enforce policies to check ingress and egress policies can be controlled independently based on PodSelector",
        )
}

fn sctp_is_not_tcp(ctx: &Context) -> Case {
    let rule = from(vec![], vec![port(81, Some(SCTP))]);
    Script::new(ctx)
        .create("x", Np::new("deny-ingress", everything()).ingress(vec![]))
        .create("x", Np::new("allow-only-sctp-ingress-on-port-81", pod_a()).ingress(vec![rule]))
        .probe(TCP, 81, &[Peer(Any, Ns("x"), false)])
        .case(
            CONTEXT_TCP,
            "should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP', even if the plugin doesn't support SCTP",
        )
}

fn sctp_policy_isolates(ctx: &Context) -> Case {
    let rule = from(vec![], vec![port(80, Some(SCTP))]);
    Script::new(ctx)
        .create("x", Np::new("allow-only-sctp-ingress-on-port-80", pod_a()).ingress(vec![rule]))
        .probe(TCP, 81, &[AllIngress("x", "a", false)])
        .case(
            CONTEXT_TCP,
            "should properly isolate pods that are selected by a policy allowing SCTP, even if the plugin doesn't support SCTP",
        )
}

fn udp_policy_not_tcp(ctx: &Context) -> Case {
    let rule = from(vec![], vec![port(81, Some(UDP))]);
    Script::new(ctx)
        .create(
            "x",
            Np::new("allow-only-udp-ingress-on-port-81", pod_a()).ingress(vec![rule]),
        )
        .probe(TCP, 81, &[AllIngress("x", "a", false)])
        .case(
            CONTEXT_TCP,
            "should not allow access by TCP when a policy specifies only UDP",
        )
}

fn default_namespace_label_match_labels(ctx: &Context) -> Case {
    let rule = from(
        vec![namespaces_peer(namespace_named(&ctx.namespace("y")))],
        vec![],
    );
    Script::new(ctx)
        .create(
            "x",
            Np::new("allow-client-a-via-ns-selector-for-immutable-ns-label", pod_a()).ingress(vec![rule]),
        )
        .probe(TCP, 80, &[Peer(Ns("x"), P("x", "a"), false), Peer(Ns("z"), P("x", "a"), false)])
        .case(
            CONTEXT_TCP,
            "should enforce policy to allow traffic based on NamespaceSelector with MatchLabels using default ns label",
        )
}

fn default_namespace_label_match_expressions(ctx: &Context) -> Case {
    let y = ctx.namespace("y");
    let rule = to(
        vec![namespaces_peer(match_expression(
            NAMESPACE_NAME_LABEL,
            "NotIn",
            &[&y],
        ))],
        vec![],
    );
    Script::new(ctx)
        .create(
            "x",
            Np::new("allow-ns-y-match-selector-for-immutable-ns-label", pod_a()).egress(vec![rule]),
        )
        .probe(TCP, 80, &[Peer(P("x", "a"), Ns("y"), false)])
        .case(
            CONTEXT_TCP,
            "should enforce policy based on NamespaceSelector with MatchExpressions using default ns label",
        )
}

// ---------------------------------------------------------------------------------------------
// Trellis's cases: expectations written out as upstream would have, not computed.

fn ingress_port_range(ctx: &Context) -> Case {
    let rule = from(vec![], vec![port_range(81, 90, TCP)]);
    Script::new(ctx)
        .create(
            "x",
            Np::new("allow-ingress-81-to-90", everything()).ingress(vec![rule]),
        )
        .probe(TCP, 81, &[])
        .probe(TCP, 80, &[Peer(Any, Ns("x"), false)])
        .probe(UDP, 81, &[Peer(Any, Ns("x"), false)])
        .case(
            CONTEXT_TRELLIS,
            "should allow ingress on a port range given by endPort",
        )
}

fn egress_port_range(ctx: &Context) -> Case {
    let rule = to(vec![], vec![port_range(70, 80, TCP)]);
    Script::new(ctx)
        .create(
            "x",
            Np::new("allow-egress-70-to-80", pod_a()).egress(vec![rule]),
        )
        .probe(TCP, 80, &[])
        .probe(TCP, 81, &[AllEgress("x", "a", false)])
        .case(
            CONTEXT_TRELLIS,
            "should allow egress on a port range given by endPort",
        )
}

/// Ingress from the block around y/a minus y/a: every pod but y/a reaches x/a (assuming, as
/// upstream's CIDR cases do, that all pods share the /4).
fn ingress_cidr_except(ctx: &Context) -> Result<Case, MissingIp> {
    let ya = ctx.pod_ip("y", "a")?;
    let rule = from(vec![block_peer(large_cidr(ya), &[Cidr::host(ya)])], vec![]);
    Ok(Script::new(ctx)
        .create(
            "x",
            Np::new("allow-cidr-except-y-a", pod_a()).ingress(vec![rule]),
        )
        .probe(TCP, 80, &[One(("y", "a"), ("x", "a"), false)])
        .case(
            CONTEXT_TRELLIS,
            "should enforce except clause while ingress access from pods in CIDR block",
        ))
}

/// A named port resolves with its protocol: `serve-81-udp` admits UDP 81 and nothing on TCP.
fn ingress_named_udp_port(ctx: &Context) -> Case {
    let rule = from(vec![], vec![named_port("serve-81-udp", Some(UDP))]);
    Script::new(ctx)
        .create(
            "x",
            Np::new("allow-serve-81-udp", everything()).ingress(vec![rule]),
        )
        .probe(UDP, 81, &[])
        .probe(UDP, 80, &[Peer(Any, Ns("x"), false)])
        .probe(TCP, 81, &[Peer(Any, Ns("x"), false)])
        .case(
            CONTEXT_TRELLIS,
            "should allow ingress access on one named UDP port",
        )
}

/// Egress to every namespace's pods except those labelled pod=a.
fn egress_not_in_across_namespaces(ctx: &Context) -> Case {
    let peer = both_peer(everything(), match_expression("pod", "NotIn", &["a"]));
    Script::new(ctx)
        .create(
            "x",
            Np::new("allow-egress-to-non-a", pod_a()).egress(vec![to(vec![peer], vec![])]),
        )
        .probe(
            TCP,
            80,
            &[
                Peer(P("x", "a"), P("x", "a"), false),
                Peer(P("x", "a"), P("y", "a"), false),
                Peer(P("x", "a"), P("z", "a"), false),
            ],
        )
        .case(
            CONTEXT_TRELLIS,
            "should enforce egress to pods of every namespace selected with NotIn",
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn ctx() -> Context {
        Context::with_fake_ips("np-")
    }

    /// The heart of it: for every case and probe, the model computes the matrix upstream wrote.
    #[test]
    fn the_model_agrees_with_every_ported_expectation() {
        let ctx = ctx();
        let pods = ctx.all_pods();
        let mut probes = 0;
        for case in all_cases(&ctx).unwrap() {
            let mut cluster = base_cluster(&ctx);
            for (i, step) in case.steps.iter().enumerate() {
                step.apply(&mut cluster)
                    .unwrap_or_else(|e| panic!("{}: step {i}: {e}", case.full_name()));
                let Step::Probe(probe) = step else {
                    continue;
                };
                probes += 1;
                let model = model_matrix(&cluster, &pods, probe.protocol, probe.port).unwrap();
                let wrong = probe.expected.mismatches(&model, true);
                assert!(
                    wrong.is_empty(),
                    "{}: step {i} ({} {}): the model disagrees:\n{}\nexpected:\n{}\nmodel:\n{}",
                    case.full_name(),
                    probe.protocol,
                    probe.port,
                    wrong.iter().map(|m| format!("  {m}\n")).collect::<String>(),
                    probe.expected,
                    model
                );
            }
        }
        assert_eq!(probes, 75);
    }

    #[test]
    fn all_48_upstream_cases_with_distinct_names() {
        let ctx = ctx();
        let upstream = upstream_cases(&ctx).unwrap();
        assert_eq!(upstream.len(), 48);
        assert!(upstream.iter().all(|c| c.origin == Origin::Upstream));
        let extra = extra_cases(&ctx).unwrap();
        assert!(extra.iter().all(|c| c.origin == Origin::Trellis));
        let names: BTreeSet<String> = all_cases(&ctx)
            .unwrap()
            .iter()
            .map(Case::full_name)
            .collect();
        assert_eq!(names.len(), upstream.len() + extra.len());
        assert_eq!(
            upstream.iter().filter(|c| c.context == CONTEXT_UDP).count(),
            3
        );
        assert_eq!(
            upstream
                .iter()
                .filter(|c| c.context == CONTEXT_SCTP)
                .count(),
            3
        );
    }

    #[test]
    fn every_case_starts_with_a_policy_and_probes() {
        for case in all_cases(&ctx()).unwrap() {
            assert!(case.probes().count() > 0, "{}", case.full_name());
            assert!(
                matches!(case.steps[0], Step::CreatePolicy(_)),
                "{}",
                case.full_name()
            );
        }
    }

    #[test]
    fn policies_are_complete_objects_in_prefixed_namespaces() {
        let ctx = ctx();
        for case in all_cases(&ctx).unwrap() {
            for step in &case.steps {
                let (Step::CreatePolicy(p) | Step::UpdatePolicy(p)) = step else {
                    continue;
                };
                assert_eq!(p["apiVersion"], "networking.k8s.io/v1");
                assert_eq!(p["kind"], "NetworkPolicy");
                let ns = p["metadata"]["namespace"].as_str().unwrap();
                assert!(NAMESPACES.iter().any(|n| ctx.namespace(n) == ns), "{p}");
                assert!(
                    p["spec"]["policyTypes"]
                        .as_array()
                        .is_some_and(|t| !t.is_empty()),
                    "{p}"
                );
            }
        }
    }

    #[test]
    fn ip_cases_need_the_addresses_they_are_built_from() {
        let ctx = Context::new("p-");
        assert_eq!(upstream_cases(&ctx).unwrap_err(), MissingIp("y/b".into()));
        let mut ctx = ctx;
        ctx.set_pod_ip("y", "b", "10.9.0.2".parse().unwrap());
        assert_eq!(upstream_cases(&ctx).unwrap_err(), MissingIp("x/b".into()));
        ctx.set_pod_ip("x", "b", "10.9.0.1".parse().unwrap());
        assert_eq!(upstream_cases(&ctx).unwrap().len(), 48);
        assert_eq!(extra_cases(&ctx).unwrap_err(), MissingIp("y/a".into()));
    }

    #[test]
    fn cidr_cases_use_the_runtime_addresses() {
        let mut ctx = ctx();
        ctx.set_pod_ip("x", "b", "172.20.3.4".parse().unwrap());
        let cases = upstream_cases(&ctx).unwrap();
        let case = cases
            .iter()
            .find(|c| {
                c.name == "should enforce except clause while egress access to server in CIDR block"
            })
            .unwrap();
        let Step::CreatePolicy(p) = &case.steps[0] else {
            panic!("{case:?}");
        };
        let block = &p["spec"]["egress"][0]["to"][0]["ipBlock"];
        assert_eq!(
            block,
            &json!({"cidr": "160.0.0.0/4", "except": ["172.20.3.4/32"]})
        );
    }

    #[test]
    fn ipv6_addresses_make_ipv6_blocks() {
        let mut ctx = ctx();
        ctx.set_pod_ip("y", "b", "fd00:10:244::5".parse().unwrap());
        let cases = upstream_cases(&ctx).unwrap();
        let case = cases
            .iter()
            .find(|c| c.name == "should allow egress access to server in CIDR block")
            .unwrap();
        let Step::CreatePolicy(p) = &case.steps[0] else {
            panic!("{case:?}");
        };
        assert_eq!(
            p["spec"]["egress"][0]["to"][0]["ipBlock"]["cidr"],
            "fd00:10:244::5/128"
        );
    }

    #[test]
    fn cleanup_restores_the_starting_state() {
        let ctx = ctx();
        let base = base_cluster(&ctx);
        for case in all_cases(&ctx).unwrap() {
            let mut cluster = base.clone();
            for step in case.steps.iter().chain(case.cleanup().iter()) {
                step.apply(&mut cluster).unwrap();
            }
            assert_eq!(cluster.policies().count(), 0, "{}", case.full_name());
            assert_eq!(cluster.namespaces, base.namespaces, "{}", case.full_name());
            assert_eq!(cluster.pods, base.pods, "{}", case.full_name());
        }
    }

    #[test]
    fn label_steps_carry_upstreams_additions_merged() {
        let ctx = ctx();
        let cases = upstream_cases(&ctx).unwrap();
        let find = |name: &str| cases.iter().find(|c| c.name == name).unwrap();
        let ns_step = find("should allow ingress access from updated namespace")
            .steps
            .iter()
            .find_map(|s| match s {
                Step::SetNamespaceLabels { namespace, labels } => {
                    Some((namespace.clone(), labels.clone()))
                }
                _ => None,
            })
            .unwrap();
        assert_eq!(
            ns_step,
            ("np-y".into(), labels([("ns", "np-y"), ("ns2", "updated")]))
        );
        let pod_step = find("should allow ingress access from updated pod")
            .steps
            .iter()
            .find_map(|s| match s {
                Step::SetPodLabels { pod, labels } => Some((pod.clone(), labels.clone())),
                _ => None,
            })
            .unwrap();
        assert_eq!(
            pod_step,
            (
                PodRef::new("np-x", "b"),
                labels([("pod", "b"), ("pod2", "updated")])
            )
        );
    }

    #[test]
    fn matrix_expectations_follow_upstreams_helpers() {
        let ctx = ctx();
        let mut m = Matrix::square(&ctx.all_pods(), true);
        let (xa, xb, ya) = (ctx.pod("x", "a"), ctx.pod("x", "b"), ctx.pod("y", "a"));
        m.expect_all_ingress(&xa, false);
        assert_eq!(m.get(&ya, &xa), Some(false));
        assert_eq!(m.get(&xa, &ya), Some(true));
        m.expect_all_egress(&xa, false);
        assert_eq!(m.get(&xa, &ya), Some(false));
        m.expect(&xb, &xa, true);
        assert_eq!(m.get(&xb, &xa), Some(true));
        m.expect_peer(&PeerMatch::namespace("np-y"), &PeerMatch::any(), false);
        assert_eq!(m.get(&ya, &xb), Some(false));
        // Column x/a (9), row x/a (8 more), minus x/b -> x/a, plus y's rows (24 more).
        assert_eq!(m.iter().filter(|(_, _, v)| !v).count(), 40);
        assert!(m.truth_table().starts_with("-      np-x/a np-x/b"), "{m}");
        assert!(m.truth_table().contains("\nnp-x/a X      X"), "{m}");
    }

    #[test]
    fn mismatches_ignore_loopback_when_asked_and_count_missing_cells() {
        let ctx = ctx();
        let xa = ctx.pod("x", "a");
        let expected = Matrix::square(&ctx.all_pods(), true);
        let mut observed = expected.clone();
        observed.set(&xa, &xa, false);
        assert!(expected.mismatches(&observed, true).is_empty());
        assert_eq!(expected.mismatches(&observed, false).len(), 1);
        let smaller = Matrix::square(std::slice::from_ref(&xa), true);
        assert_eq!(expected.mismatches(&smaller, true).len(), 72);
        assert!(!observed.set(&xa, &PodRef::new("nope", "a"), true));
    }

    #[test]
    fn steps_print_for_reports() {
        let ctx = ctx();
        let case = &upstream_cases(&ctx).unwrap()[0];
        let printed: Vec<String> = case.steps.iter().map(ToString::to_string).collect();
        assert_eq!(
            printed,
            ["create NetworkPolicy np-x/deny-ingress", "probe TCP/80"]
        );
        let step = Step::SetPodLabels {
            pod: ctx.pod("x", "b"),
            labels: labels([("pod", "b"), ("pod2", "updated")]),
        };
        assert_eq!(step.to_string(), "label pod np-x/b pod=b,pod2=updated");
    }

    #[test]
    fn container_ports_are_named_as_upstream_names_them() {
        let ports = container_ports();
        assert_eq!(ports.len(), 6);
        assert!(ports.contains(&ContainerPort::named("serve-81-sctp", 81, Protocol::Sctp)));
        assert_eq!(port_name(80, Protocol::Udp), "serve-80-udp");
    }
}

//! Running the kit on real pods. A [`Suite`] is a [`NetpolCluster`] in upstream's layout
//! (namespaces `<prefix>x`, `<prefix>y`, `<prefix>z`, pods `a`, `b`, `c` in each, labelled as
//! [`base_cluster`] has them, on 3 nodes), its [`Context`] (the pods' real addresses) and the
//! model of its starting state. [`Suite::run_case`] runs one of [`super::cases`]'s cases and
//! [`Suite::run_scenario`] one of [`super::random`]'s scenarios; both wait for the agents to
//! converge before judging a probe, and put the cluster back as they found it.
//!
//! Convergence: before a probe the agents must have put in force rules built from the number
//! of policies the model holds ([`NetpolCluster::wait_policies_applied`]); then the probes are
//! repeated until they agree with the expectation or [`Suite::timeout`] passed (a label
//! change has no counter to wait for).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::cases::{base_cluster, model_matrix, Case, Context, Step, NAMESPACES, PODS};
use super::harness::{upstream_layout, NetpolCluster, Options, PodProbe};
use super::matrix::Matrix;
use super::model::{self, Protocol};
use super::probe::kernel_supports;
use super::random::Scenario;

/// The cluster, its context, and the model of its starting state.
pub struct Suite {
    pub cluster: NetpolCluster,
    pub ctx: Context,
    /// No policies, every namespace and pod with its starting labels, the real addresses.
    pub base: model::Cluster,
    /// How long the agents may take to converge on a change.
    pub timeout: Duration,
}

/// How one case went.
#[derive(Clone, Debug, Default)]
pub struct CaseOutcome {
    /// [`Case::full_name`].
    pub name: String,
    /// Probe steps compared on the cluster.
    pub probes: usize,
    /// Matrix cells compared (loopback left out).
    pub cells: usize,
    /// Probe steps not run, each with why (a protocol the kernel lacks).
    pub skipped: Vec<String>,
    /// Denied cells observed by how the probe failed (`unreachable`, `timeout`, …).
    pub denials: Vec<(String, usize)>,
    /// The first thing that went wrong, with the case, the step and the truth tables.
    pub failure: Option<String>,
    /// Putting the cluster back failed: what follows cannot be trusted.
    pub cleanup_error: Option<String>,
    pub elapsed: Duration,
}

/// How one random scenario went.
#[derive(Clone, Debug, Default)]
pub struct ScenarioOutcome {
    pub probes: usize,
    /// Of those, how many the model allows.
    pub allowed: usize,
    /// Rounds of probes until they agreed (or the last round).
    pub rounds: usize,
    /// The seed, the policies, the labels and the differing probes.
    pub failure: Option<String>,
    pub elapsed: Duration,
}

impl Suite {
    /// Brings up a 3-node cluster with NetworkPolicy on, in upstream's layout with namespaces
    /// `<prefix>x`…; `tag` prefixes its network namespaces. `probe_bin` as in [`Options`].
    pub fn up(tag: &str, prefix: &str, probe_bin: Option<PathBuf>) -> Result<Suite, String> {
        let names: Vec<String> = NAMESPACES.iter().map(|n| format!("{prefix}{n}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let (nss, pods) = upstream_layout(&names, &PODS);
        let cluster = NetpolCluster::up(
            Options {
                tag: tag.into(),
                network_policy: true,
                probe_bin,
                ..Default::default()
            },
            &nss,
            &pods,
        )?;
        let mut ctx = Context::new(prefix);
        for p in &cluster.pods {
            let ns = p
                .namespace
                .strip_prefix(prefix)
                .ok_or_else(|| format!("{}: not in a namespace of the prefix", p.id()))?;
            let ip =
                p.ip.parse()
                    .map_err(|e| format!("{}: {}: {e}", p.id(), p.ip))?;
            ctx.set_pod_ip(ns, &p.name, ip);
        }
        let base = base_cluster(&ctx);
        // The model's starting state must be the cluster's.
        for n in &cluster.namespaces {
            let mut want = base
                .namespace(&n.name)
                .ok_or_else(|| format!("namespace {} not in the model", n.name))?
                .labels()
                .clone();
            want.remove(model::NAMESPACE_NAME_LABEL);
            if want != n.labels {
                return Err(format!(
                    "namespace {}: labels {:?}, the model has {want:?}",
                    n.name, n.labels
                ));
            }
        }
        for p in &cluster.pods {
            let m = base
                .pod(&p.key())
                .ok_or_else(|| format!("pod {} not in the model", p.id()))?;
            if m.labels != p.labels {
                return Err(format!(
                    "pod {}: labels {:?}, the model has {:?}",
                    p.id(),
                    p.labels,
                    m.labels
                ));
            }
        }
        Ok(Suite {
            cluster,
            ctx,
            base,
            timeout: super::harness::slow_factor() * Duration::from_secs(10),
        })
    }

    /// Runs `case` step by step. Every probe step's expectation is first checked against the
    /// model (a disagreement is the kit's fault); a probe on a protocol the kernel lacks is
    /// skipped, loudly; otherwise the matrix is probed until it equals the expectation
    /// (loopback not compared, as upstream). Stops at the first failure, then cleans up
    /// ([`Suite::cleanup`]).
    pub fn run_case(&mut self, case: &Case) -> CaseOutcome {
        let t0 = Instant::now();
        let name = case.full_name();
        let mut out = CaseOutcome {
            name: name.clone(),
            ..Default::default()
        };
        let mut model = self.base.clone();
        let pods = self.ctx.all_pods();
        let n = case.steps.len();
        for (i, step) in case.steps.iter().enumerate() {
            let at = format!("{name}\n  step {}/{n}: {step}", i + 1);
            if let Err(e) = step.apply(&mut model) {
                out.failure = Some(format!("{at}: the model refused the step (a kit bug): {e}"));
                break;
            }
            let Step::Probe(probe) = step else {
                if let Err(e) = self.cluster.apply_step(step) {
                    out.failure = Some(format!("{at}: {e}"));
                    break;
                }
                continue;
            };
            // Keep the expectation honest: the model, with the real addresses, agrees.
            let want = match model_matrix(&model, &pods, probe.protocol, probe.port) {
                Ok(m) => m,
                Err(e) => {
                    out.failure = Some(format!("{at}: the model: {e}"));
                    break;
                }
            };
            let disagree = probe.expected.mismatch_report(&want, "the model", true);
            if !disagree.is_empty() {
                out.failure = Some(format!(
                    "{at}: the case's expectation disagrees with the model (a kit bug, not the agent's; \
                     'observed' below is the model's matrix):\n{disagree}"
                ));
                break;
            }
            // Even when the probe is skipped: the agents took the policies.
            let count = model.policies().count();
            if let Err(e) = self.cluster.wait_policies_applied(count, self.timeout) {
                out.failure = Some(format!("{at}: {e}\n{}", policies_in_force(&model)));
                break;
            }
            if !kernel_supports(probe.protocol) {
                let why = format!(
                    "step {}/{n}: {step}: SKIPPED, this kernel has no {} (its policies were applied and in force)",
                    i + 1,
                    probe.protocol
                );
                println!("    {why}");
                out.skipped.push(why);
                continue;
            }
            match self.cluster.wait_for_matrix(
                probe.protocol,
                probe.port,
                &probe.expected,
                self.timeout,
                true,
            ) {
                Ok(observed) => {
                    out.probes += 1;
                    out.cells += probe.expected.compared_cells(true);
                    count_denials(&observed, &mut out.denials);
                }
                Err(report) => {
                    out.failure = Some(format!(
                        "{at}: the observed matrix never matched the expected one\n{report}\n{}",
                        policies_in_force(&model)
                    ));
                    break;
                }
            }
        }
        if let Err(e) = self.cleanup(&case.cleanup()) {
            out.cleanup_error = Some(format!("{name}: cleanup: {e}"));
        }
        out.elapsed = t0.elapsed();
        out
    }

    /// Does `steps` (a case's [`Case::cleanup`]), waits until no agent enforces a policy, and
    /// checks that every pod reaches every pod again on TCP/80.
    pub fn cleanup(&mut self, steps: &[Step]) -> Result<(), String> {
        for step in steps {
            self.cluster
                .apply_step(step)
                .map_err(|e| format!("{step}: {e}"))?;
        }
        self.cluster.wait_policies_applied(0, self.timeout)?;
        let all = self.cluster.matrix(true);
        self.cluster
            .wait_for_matrix(Protocol::Tcp, 80, &all, self.timeout, true)
            .map(drop)
            .map_err(|report| format!("without policies:\n{report}"))
    }

    /// Applies `scenario`'s labels and policies, waits for the agents to put them in force,
    /// and probes its probes (each source pod's in one `netpol-probe`) until they all agree
    /// with the model or [`Suite::timeout`] passed. Does not clean up ([`Suite::reset`]).
    pub fn run_scenario(&mut self, scenario: &Scenario) -> ScenarioOutcome {
        let t0 = Instant::now();
        let mut out = ScenarioOutcome {
            probes: scenario.probes.len(),
            allowed: scenario.probes.iter().filter(|p| p.expected).count(),
            ..Default::default()
        };
        if let Err(e) = self.apply_scenario(scenario) {
            out.failure = Some(scenario_report(scenario, &e));
            out.elapsed = t0.elapsed();
            return out;
        }
        let probes: Vec<PodProbe> = scenario
            .probes
            .iter()
            .map(|p| PodProbe {
                from: p.from.clone(),
                to: p.to.clone(),
                protocol: p.protocol,
                port: p.port,
            })
            .collect();
        let deadline = Instant::now() + self.timeout;
        loop {
            out.rounds += 1;
            let outcomes = match self.cluster.probe_pods(&probes) {
                Ok(o) => o,
                Err(e) => {
                    out.failure = Some(scenario_report(scenario, &e));
                    break;
                }
            };
            let differ: Vec<String> = scenario
                .probes
                .iter()
                .zip(&outcomes)
                .filter(|(p, o)| p.expected != o.reached)
                .map(|(p, o)| {
                    let word = |b: bool| if b { "allowed" } else { "denied" };
                    format!(
                        "{} -> {} {}/{}: expected {}, observed {} [{}]",
                        p.from,
                        p.to,
                        p.protocol,
                        p.port,
                        word(p.expected),
                        word(o.reached),
                        o.note
                    )
                })
                .collect();
            if differ.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                let what = format!(
                    "{} of {} probes still differ from the model after {:?}:\n  {}",
                    differ.len(),
                    probes.len(),
                    self.timeout,
                    differ.join("\n  ")
                );
                out.failure = Some(scenario_report(scenario, &what));
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        out.elapsed = t0.elapsed();
        out
    }

    fn apply_scenario(&mut self, scenario: &Scenario) -> Result<(), String> {
        for (ns, labels) in &scenario.namespace_labels {
            self.cluster.set_namespace_labels(ns, labels)?;
        }
        for (pod, labels) in &scenario.pod_labels {
            self.cluster.set_pod_labels(&pod.to_string(), labels)?;
        }
        for p in &scenario.policies {
            self.cluster.apply_policy(p)?;
        }
        self.cluster
            .wait_policies_applied(scenario.policies.len(), self.timeout)
    }

    /// Back to the starting state: no policies (and no agent enforcing one), every namespace
    /// and pod with its starting labels.
    pub fn reset(&mut self) -> Result<(), String> {
        self.cluster.delete_all_policies()?;
        for ns in &self.base.namespaces {
            let mut labels = ns.labels().clone();
            labels.remove(model::NAMESPACE_NAME_LABEL);
            self.cluster.set_namespace_labels(ns.name(), &labels)?;
        }
        for pod in &self.base.pods {
            self.cluster
                .set_pod_labels(&pod.key().to_string(), &pod.labels)?;
        }
        self.cluster.wait_policies_applied(0, self.timeout)
    }
}

/// The policies the model holds, as JSON, for a failure report.
fn policies_in_force(model: &model::Cluster) -> String {
    let mut s = String::from("policies in force:\n");
    let policies: Vec<&Value> = model.policies().map(|(_, p)| p).collect();
    if policies.is_empty() {
        s.push_str("  (none)\n");
    }
    for p in policies {
        let _ = writeln!(s, "{}", serde_json::to_string_pretty(p).unwrap_or_default());
    }
    s
}

/// Everything needed to replay and understand a scenario's failure.
fn scenario_report(s: &Scenario, what: &str) -> String {
    let mut out = format!(
        "seed {} (replay: NETPOL_SEED={} NETPOL_SEEDS=1): {what}\n",
        s.seed, s.seed
    );
    out.push_str("namespace labels:\n");
    for (ns, labels) in &s.namespace_labels {
        let _ = writeln!(out, "  {ns}: {labels:?}");
    }
    out.push_str("pod labels:\n");
    for (pod, labels) in &s.pod_labels {
        let _ = writeln!(out, "  {pod}: {labels:?}");
    }
    let _ = writeln!(
        out,
        "policies:\n{}",
        serde_json::to_string_pretty(&s.policies).unwrap_or_default()
    );
    out
}

/// Adds the observed denied cells (loopback left out) by the first word of their note.
fn count_denials(observed: &Matrix, into: &mut Vec<(String, usize)>) {
    for (r, from) in observed.rows().iter().enumerate() {
        for (c, to) in observed.cols().iter().enumerate() {
            if from == to || observed.get_at(r, c) {
                continue;
            }
            let kind = observed
                .note(from, to)
                .and_then(|n| n.split_whitespace().next())
                .unwrap_or("?")
                .to_string();
            match into.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, n)) => *n += 1,
                None => into.push((kind, 1)),
            }
        }
    }
}

//! NetworkPolicy conformance on real pods: Kubernetes' upstream e2e truth-table cases
//! (`test/e2e/network/netpol/network_policy.go`, ported in `trellis_e2e::netpol::cases`, plus
//! trellis's extras) and randomized policies judged by the model, on a 3-node namespace cluster
//! whose pods the CNI plugin made and whose agents enforce NetworkPolicy. Every pod runs
//! `netpol-probe serve` on 80 and 81 (TCP, UDP, and SCTP where the kernel has it).
//!
//! One cluster per test: namespaces `x`, `y`, `z` with a per-run prefix, pods `a`, `b`, `c` in
//! each (round-robin over the nodes). Cases and seeds run one after the other, the cluster put
//! back to its starting state between them. Needs root and the workspace binaries
//! (`cargo build --workspace --bins`), like the other end-to-end tests.
//!
//! Knobs: `NETPOL_SEED` (first seed, default [`DEFAULT_SEED`]) and `NETPOL_SEEDS` (how many,
//! default [`DEFAULT_SEEDS`]) for the random test; `NETPOL_CASES` (a substring of the case
//! names) to run some cases only.

use std::time::{Duration, Instant};

use trellis_e2e::netpol::cases::{all_cases, Origin};
use trellis_e2e::netpol::conformance::{CaseOutcome, Suite};
use trellis_e2e::netpol::random::{generate, Config};

const DEFAULT_SEED: u64 = 20_240_601;
const DEFAULT_SEEDS: u64 = 25;

fn suite(tag: &str, kind: char) -> Suite {
    assert!(trellis_testkit::is_root(), "end-to-end tests need root");
    // Unique to this run, so that names from another run never match.
    let prefix = format!("{kind}{:x}-", std::process::id());
    let t0 = Instant::now();
    let suite = Suite::up(
        tag,
        &prefix,
        Some(env!("CARGO_BIN_EXE_netpol-probe").into()),
    )
    .unwrap_or_else(|e| panic!("netpol cluster up: {e}"));
    println!(
        "cluster up in {:.1?}: namespaces {prefix}x, {prefix}y, {prefix}z; pods on nodes {:?}",
        t0.elapsed(),
        suite
            .cluster
            .pods
            .iter()
            .map(|p| format!("{}@{}", p.id(), p.node + 1))
            .collect::<Vec<_>>()
    );
    suite
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|e| panic!("{name}={v:?}: not a number: {e}")),
        Err(_) => default,
    }
}

/// nft transactions that failed on any agent: none may.
fn assert_no_apply_errors(suite: &Suite) {
    let errors = suite
        .cluster
        .agent_metric("trellis_netpol_apply_errors_total");
    assert!(
        errors.iter().all(|e| *e == Some(0.0)),
        "nft transactions failed on the agents (by node): {errors:?}"
    );
}

fn summary(outcomes: &[CaseOutcome], total: usize, elapsed: Duration) -> String {
    let failed: Vec<&CaseOutcome> = outcomes.iter().filter(|o| o.failure.is_some()).collect();
    let probes: usize = outcomes.iter().map(|o| o.probes).sum();
    let cells: usize = outcomes.iter().map(|o| o.cells).sum();
    let skipped: Vec<String> = outcomes
        .iter()
        .flat_map(|o| o.skipped.iter().map(move |s| format!("{}: {s}", o.name)))
        .collect();
    let mut denials: Vec<(String, usize)> = Vec::new();
    for (kind, n) in outcomes.iter().flat_map(|o| &o.denials) {
        match denials.iter_mut().find(|(k, _)| k == kind) {
            Some((_, m)) => *m += n,
            None => denials.push((kind.clone(), *n)),
        }
    }
    let mut s = format!(
        "\n==== NetworkPolicy conformance: {} of {total} cases run, {} passed, {} failed; \
         {probes} probe steps ({cells} cells) compared; {} probe steps SKIPPED; {:.1?}\n",
        outcomes.len(),
        outcomes.len() - failed.len(),
        failed.len(),
        skipped.len(),
        elapsed
    );
    s.push_str(&format!(
        "denied cells observed, by how the probe failed: {denials:?}\n"
    ));
    for sk in &skipped {
        s.push_str(&format!("SKIPPED {sk}\n"));
    }
    for o in outcomes {
        s.push_str(&format!(
            "  {:<6} {:>6.1?} {:>2} probes {:>4} cells{}  {}\n",
            if o.failure.is_some() { "FAIL" } else { "pass" },
            o.elapsed,
            o.probes,
            o.cells,
            if o.skipped.is_empty() {
                String::new()
            } else {
                format!(" ({} skipped)", o.skipped.len())
            },
            o.name
        ));
    }
    s
}

/// Every upstream case (and trellis's extras), in order, on one cluster: every probe step's
/// full matrix must match the expected one (loopback not compared, as upstream).
#[test]
fn upstream_cases_on_real_pods() {
    let filter = std::env::var("NETPOL_CASES").unwrap_or_default();
    run_cases("npc", 'c', &filter, false);
}

/// The SCTP cases, in the test VM (hack/test-vm.sh): this host's kernel has no SCTP, the VM's
/// has, and there no probe step may be skipped.
#[test]
#[ignore = "needs SCTP in the kernel: runs in the test VM (hack/test-vm.sh)"]
fn vm_sctp_cases_on_real_pods() {
    assert!(
        trellis_e2e::netpol::probe::kernel_supports(trellis_e2e::netpol::model::Protocol::Sctp),
        "this kernel has no SCTP"
    );
    run_cases("nps", 's', "using SCTP", true);
}

/// Runs the cases whose full name contains `filter` (all when empty); with `all_probed`, a
/// skipped probe step fails the test.
fn run_cases(tag: &str, kind: char, filter: &str, all_probed: bool) {
    let t0 = Instant::now();
    let mut suite = suite(tag, kind);
    let cases: Vec<_> = all_cases(&suite.ctx)
        .expect("every pod's address is known")
        .into_iter()
        .filter(|c| c.full_name().contains(filter))
        .collect();
    let total = cases.len();
    if filter.is_empty() {
        let upstream = cases
            .iter()
            .filter(|c| c.origin == Origin::Upstream)
            .count();
        assert_eq!(
            (upstream, total - upstream),
            (48, 5),
            "upstream's and trellis's"
        );
    } else {
        println!("NETPOL_CASES={filter:?}: {total} cases");
    }
    let mut outcomes = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        println!("[{}/{total}] {}", i + 1, case.full_name());
        let o = suite.run_case(case);
        match &o.failure {
            None => println!(
                "    ok: {} probe steps, {} cells, {:.1?}",
                o.probes, o.cells, o.elapsed
            ),
            Some(f) => println!("    FAILED after {:.1?}:\n{f}", o.elapsed),
        }
        let abort = o.cleanup_error.clone();
        outcomes.push(o);
        if let Some(e) = abort {
            println!("{}", summary(&outcomes, total, t0.elapsed()));
            panic!("the cluster could not be put back, the next cases cannot be trusted: {e}");
        }
    }
    println!("{}", summary(&outcomes, total, t0.elapsed()));
    assert_no_apply_errors(&suite);
    let failures: Vec<&str> = outcomes
        .iter()
        .filter_map(|o| o.failure.as_deref())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {total} cases failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    if all_probed {
        let skipped: usize = outcomes.iter().map(|o| o.skipped.len()).sum();
        assert_eq!(skipped, 0, "probe steps skipped where every one must run");
        assert!(total > 0, "no case matched {filter:?}");
    }
}

/// Random labels and policies from consecutive seeds, each scenario's probes compared with
/// the model's answers once the agents converged.
#[test]
fn random_policies_on_real_pods() {
    let t0 = Instant::now();
    let first = env_u64("NETPOL_SEED", DEFAULT_SEED);
    let count = env_u64("NETPOL_SEEDS", DEFAULT_SEEDS);
    println!(
        "random scenarios: seeds {first}..{} (replay one with NETPOL_SEED=<seed> NETPOL_SEEDS=1)",
        first.wrapping_add(count)
    );
    let mut suite = suite("npr", 'r');
    let config = Config {
        probes: 48,
        ..Config::default()
    };
    let (mut probes, mut allowed, mut failures) = (0, 0, Vec::new());
    for k in 0..count {
        let seed = first.wrapping_add(k);
        let scenario = generate(&suite.base, seed, &config).unwrap_or_else(|e| {
            panic!("seed {seed}: the generator drew what the model refuses: {e}")
        });
        let o = suite.run_scenario(&scenario);
        probes += o.probes;
        allowed += o.allowed;
        println!(
            "seed {seed}: {} policies, {} probes ({} allowed), {} rounds, {:.1?}: {}",
            scenario.policies.len(),
            o.probes,
            o.allowed,
            o.rounds,
            o.elapsed,
            if o.failure.is_some() { "FAILED" } else { "ok" }
        );
        if let Some(f) = o.failure {
            println!("{f}");
            failures.push(f);
        }
        suite
            .reset()
            .unwrap_or_else(|e| panic!("seed {seed}: putting the cluster back: {e}"));
    }
    println!(
        "\n==== random NetworkPolicy: {count} seeds from {first}, {} failed; {probes} probes \
         compared ({allowed} allowed, {} denied); {:.1?}",
        failures.len(),
        probes - allowed,
        t0.elapsed()
    );
    assert_no_apply_errors(&suite);
    assert!(
        failures.is_empty(),
        "{} of {count} seeds failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

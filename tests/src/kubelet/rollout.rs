//! DaemonSet template revisions, the RollingUpdate strategy and the
//! DaemonSet status, as the DaemonSet controller keeps them: each Pod is
//! labelled with a hash of the template it was made from; Pods of an older
//! template are deleted (and so recreated from the new one) while no more
//! than `maxUnavailable` nodes lack a ready Pod; `OnDelete` waits for the
//! user to delete them. The status counts what `kubectl rollout status`
//! reads.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sha2::{Digest, Sha256};

/// The label the real controller uses for the same purpose.
pub const HASH_LABEL: &str = "controller-revision-hash";

pub fn template_hash(ds: &DaemonSet) -> String {
    let bytes = serde_json::to_vec(&ds.spec.template).unwrap_or_default();
    format!("{:x}", Sha256::digest(bytes))[..10].to_string()
}

pub fn is_ready(pod: &Pod) -> bool {
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions.is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn is_current(pod: &Pod, hash: &str) -> bool {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(HASH_LABEL))
        .map(String::as_str)
        == Some(hash)
}

/// maxUnavailable as a count of nodes (default 1; a percentage of the
/// desired nodes rounds up, like the controller; at least 1).
pub fn max_unavailable(ds: &DaemonSet, desired: usize) -> usize {
    let strategy = ds.spec.update_strategy.as_ref();
    let value = strategy
        .and_then(|s| s.rolling_update.as_ref())
        .and_then(|r| r.max_unavailable.as_ref());
    let n = match value {
        None => 1,
        Some(IntOrString::Int(n)) => usize::try_from(*n).unwrap_or(0),
        Some(IntOrString::String(pct)) => {
            let p: usize = pct.trim_end_matches('%').parse().unwrap_or(0);
            (desired * p).div_ceil(100)
        }
    };
    n.max(1)
}

/// Outdated Pods to delete this pass: none under OnDelete; otherwise the
/// not-ready ones first, then ready ones while the budget allows.
pub fn outdated_to_delete(
    ds: &DaemonSet,
    eligible: &[&str],
    by_node: &BTreeMap<&str, Vec<&Pod>>,
    already: &[String],
) -> Vec<String> {
    let on_delete = ds
        .spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        == Some("OnDelete");
    if on_delete {
        return Vec::new();
    }
    let hash = template_hash(ds);
    let live = |node: &str| -> Vec<&Pod> {
        let pods = by_node.get(node).map(Vec::as_slice).unwrap_or_default();
        pods.iter()
            .copied()
            .filter(|p| {
                !p.metadata
                    .name
                    .as_ref()
                    .is_some_and(|n| already.contains(n))
            })
            .collect()
    };
    let unavailable = eligible
        .iter()
        .filter(|n| !live(n).iter().any(|p| is_ready(p)))
        .count();
    let mut budget = max_unavailable(ds, eligible.len()).saturating_sub(unavailable);
    let mut out = Vec::new();
    let outdated: Vec<&Pod> = eligible
        .iter()
        .flat_map(|n| live(n))
        .filter(|p| !is_current(p, &hash))
        .collect();
    // A not-ready outdated Pod costs no availability to replace.
    out.extend(
        outdated
            .iter()
            .filter(|p| !is_ready(p))
            .filter_map(|p| p.metadata.name.clone()),
    );
    for p in outdated.iter().filter(|p| is_ready(p)) {
        if budget == 0 {
            break;
        }
        budget -= 1;
        out.extend(p.metadata.name.clone());
    }
    out
}

/// The status from the eligible nodes and the owned, live Pods on them.
pub fn status(
    ds: &DaemonSet,
    eligible: &[&str],
    by_node: &BTreeMap<&str, Vec<&Pod>>,
) -> DaemonSetStatus {
    let hash = template_hash(ds);
    let on = |n: &&str| {
        by_node
            .get(*n)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .to_vec()
    };
    let count = |f: &dyn Fn(&Pod) -> bool| {
        eligible
            .iter()
            .filter(|n| on(n).iter().any(|p| f(p)))
            .count()
    };
    let misscheduled = by_node.keys().filter(|n| !eligible.contains(n)).count();
    let to_i32 = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    let ready = count(&is_ready);
    DaemonSetStatus {
        desired_number_scheduled: to_i32(eligible.len()),
        current_number_scheduled: to_i32(count(&|_| true)),
        number_misscheduled: to_i32(misscheduled),
        number_ready: to_i32(ready),
        number_available: Some(to_i32(ready)),
        number_unavailable: Some(to_i32(eligible.len() - ready)),
        updated_number_scheduled: Some(to_i32(count(&|p| is_current(p, &hash)))),
        observed_generation: ds.metadata.generation,
        ..Default::default()
    }
}

//! The DaemonSet controller's decision, pure: given a DaemonSet, the Nodes
//! and the Pods, which Pods to create (one per eligible node that has none
//! running) and which to delete (on nodes no longer eligible, extra copies,
//! and finished ones, which the next pass recreates).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::placement::{fits, PlacementError};
use super::rollout::{self, template_hash, HASH_LABEL};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct DaemonSetActions {
    pub create: Vec<Pod>,
    /// Names of Pods to delete (in the DaemonSet's namespace).
    pub delete: Vec<String>,
}

/// Pods owned by `ds` (by ownerReference uid).
pub fn owned<'a>(ds: &DaemonSet, pods: &'a [Pod]) -> Vec<&'a Pod> {
    let uid = ds.metadata.uid.as_deref();
    pods.iter()
        .filter(|p| {
            p.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| Some(o.uid.as_str()) == uid && o.controller == Some(true))
        })
        .collect()
}

/// The owned, live (not finished) Pods by node, and every owned Pod.
type ByNode<'a> = BTreeMap<&'a str, Vec<&'a Pod>>;

fn group<'a>(ds: &DaemonSet, pods: &'a [Pod], live_only: bool) -> ByNode<'a> {
    let mut by_node: ByNode = BTreeMap::new();
    for pod in owned(ds, pods)
        .into_iter()
        .filter(|p| !live_only || !is_finished(p))
    {
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .unwrap_or("");
        by_node.entry(node).or_default().push(pod);
    }
    by_node
}

fn eligible<'a>(ds: &DaemonSet, nodes: &'a [Node]) -> Result<Vec<&'a str>, PlacementError> {
    let template_spec = ds.spec.template.spec.clone().unwrap_or_default();
    let mut out = Vec::new();
    for node in nodes {
        if fits(&template_spec, node)? {
            out.push(node.metadata.name.as_deref().unwrap_or(""));
        }
    }
    Ok(out)
}

/// The DaemonSet's status (see [`rollout::status`]).
pub fn status(
    ds: &DaemonSet,
    nodes: &[Node],
    pods: &[Pod],
) -> Result<k8s_openapi::api::apps::v1::DaemonSetStatus, PlacementError> {
    Ok(rollout::status(
        ds,
        &eligible(ds, nodes)?,
        &group(ds, pods, true),
    ))
}

pub fn reconcile(
    ds: &DaemonSet,
    nodes: &[Node],
    pods: &[Pod],
) -> Result<DaemonSetActions, PlacementError> {
    let template_spec = ds.spec.template.spec.clone().unwrap_or_default();
    let by_node = group(ds, pods, false);
    let mut actions = DaemonSetActions::default();
    let eligible = eligible(ds, nodes)?;
    for (node, pods) in &by_node {
        let keep = usize::from(eligible.contains(node));
        let (live, finished): (Vec<&&Pod>, Vec<&&Pod>) = pods.iter().partition(|p| !is_finished(p));
        actions.delete.extend(
            finished
                .iter()
                .chain(live.iter().skip(keep))
                .filter_map(|p| p.metadata.name.clone()),
        );
    }
    for &node in &eligible {
        let has_live = by_node
            .get(node)
            .is_some_and(|ps| ps.iter().any(|p| !is_finished(p)));
        if !has_live {
            actions
                .create
                .push(pod_for(ds, node, template_spec.clone()));
        }
    }
    let live = group(ds, pods, true);
    let outdated = rollout::outdated_to_delete(ds, &eligible, &live, &actions.delete);
    actions.delete.extend(outdated);
    Ok(actions)
}

fn is_finished(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    matches!(phase, Some("Succeeded" | "Failed")) || pod.metadata.deletion_timestamp.is_some()
}

/// The Pod for one node: the template, bound to the node (the controller
/// of old; today's uses node affinity and the scheduler), owned by the
/// DaemonSet so it is found, replaced and garbage-collected with it.
fn pod_for(ds: &DaemonSet, node: &str, mut spec: k8s_openapi::api::core::v1::PodSpec) -> Pod {
    let ds_name = ds.metadata.name.clone().unwrap_or_default();
    let template_meta = ds.spec.template.metadata.clone().unwrap_or_default();
    let mut labels = template_meta.labels.unwrap_or_default();
    labels.insert(HASH_LABEL.to_string(), template_hash(ds));
    spec.node_name = Some(node.to_string());
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{ds_name}-")),
            namespace: ds.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: template_meta.annotations,
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "DaemonSet".into(),
                name: ds_name,
                uid: ds.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ds() -> DaemonSet {
        serde_json::from_value(json!({
            "metadata": {"name": "trellis", "namespace": "trellis-system", "uid": "ds-uid"},
            "spec": {"selector": {"matchLabels": {"app": "t"}}, "template": {
                "metadata": {"labels": {"app": "t"}},
                "spec": {"nodeSelector": {"kubernetes.io/os": "linux"}, "containers": [{"name": "c", "image": "i"}]}}}
        }))
        .expect("ds")
    }

    fn node(name: &str, os: &str) -> Node {
        serde_json::from_value(
            json!({"metadata": {"name": name, "labels": {"kubernetes.io/os": os}}}),
        )
        .expect("node")
    }

    /// An owned-or-not Pod of the current template, Ready when Running.
    fn pod(name: &str, node: &str, owner: &str, phase: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "trellis-system",
                "labels": {HASH_LABEL: template_hash(&ds())},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "trellis", "uid": owner, "controller": true}]},
            "spec": {"nodeName": node, "containers": []},
            "status": {"phase": phase, "conditions": [
                {"type": "Ready", "status": if phase == "Running" { "True" } else { "False" }}]}
        }))
        .expect("pod")
    }

    #[test]
    fn one_pod_per_eligible_node_bound_and_owned() {
        let nodes = [node("a", "linux"), node("b", "linux"), node("w", "windows")];
        let existing = [
            pod("trellis-1", "a", "ds-uid", "Running"),
            pod("other", "b", "not-ours", "Running"),
        ];
        let actions = reconcile(&ds(), &nodes, &existing).expect("fits");
        assert!(actions.delete.is_empty(), "{actions:?}");
        assert_eq!(actions.create.len(), 1);
        let created = &actions.create[0];
        assert_eq!(
            created.spec.as_ref().and_then(|s| s.node_name.as_deref()),
            Some("b")
        );
        assert_eq!(created.metadata.generate_name.as_deref(), Some("trellis-"));
        assert_eq!(
            created
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("app"))
                .map(String::as_str),
            Some("t")
        );
        let owner = &created.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(
            (owner.uid.as_str(), owner.controller),
            ("ds-uid", Some(true))
        );
    }

    #[test]
    fn finished_extra_and_misplaced_pods_go_and_a_failed_one_is_replaced() {
        let nodes = [node("a", "linux"), node("b", "linux")];
        let existing = [
            pod("p1", "a", "ds-uid", "Running"),
            pod("p2", "a", "ds-uid", "Running"),
            pod("p3", "b", "ds-uid", "Failed"),
            pod("p4", "gone", "ds-uid", "Running"),
        ];
        let actions = reconcile(&ds(), &nodes, &existing).expect("fits");
        let mut deleted = actions.delete.clone();
        deleted.sort();
        assert_eq!(deleted, ["p2", "p3", "p4"]);
        let targets: Vec<_> = actions
            .create
            .iter()
            .filter_map(|p| p.spec.as_ref()?.node_name.clone())
            .collect();
        assert_eq!(targets, ["b"]);
    }

    fn changed_template(max_unavailable: Option<serde_json::Value>, strategy: &str) -> DaemonSet {
        let mut d = ds();
        d.spec
            .template
            .metadata
            .get_or_insert_with(Default::default)
            .annotations = Some([("restartedAt".to_string(), "now".to_string())].into());
        d.spec.update_strategy = Some(
            serde_json::from_value(json!({"type": strategy, "rollingUpdate": max_unavailable.map(|m| json!({"maxUnavailable": m}))}))
                .expect("strategy"),
        );
        d
    }

    #[test]
    fn a_new_template_rolls_within_max_unavailable_and_not_on_delete() {
        let nodes = [node("a", "linux"), node("b", "linux"), node("c", "linux")];
        let old = [
            pod("p1", "a", "ds-uid", "Running"),
            pod("p2", "b", "ds-uid", "Running"),
            pod("p3", "c", "ds-uid", "Running"),
        ];
        let rolling =
            reconcile(&changed_template(None, "RollingUpdate"), &nodes, &old).expect("fits");
        assert_eq!(rolling.delete.len(), 1, "maxUnavailable 1: {rolling:?}");
        let two = reconcile(
            &changed_template(Some(json!(2)), "RollingUpdate"),
            &nodes,
            &old,
        )
        .expect("fits");
        assert_eq!(two.delete.len(), 2);
        let on_delete = reconcile(&changed_template(None, "OnDelete"), &nodes, &old).expect("fits");
        assert!(on_delete.delete.is_empty() && on_delete.create.is_empty());
        let mut one_down = old.clone();
        one_down[0] = pod("p1", "a", "ds-uid", "Pending");
        let waiting =
            reconcile(&changed_template(None, "RollingUpdate"), &nodes, &one_down).expect("fits");
        assert_eq!(
            waiting.delete,
            ["p1"],
            "only the not-ready outdated Pod while one node is down"
        );
    }

    #[test]
    fn status_counts_scheduled_ready_and_updated() {
        let nodes = [node("a", "linux"), node("b", "linux"), node("w", "windows")];
        let pods = [
            pod("p1", "a", "ds-uid", "Running"),
            pod("p2", "b", "ds-uid", "Pending"),
        ];
        let st = status(&ds(), &nodes, &pods).expect("fits");
        assert_eq!(
            (
                st.desired_number_scheduled,
                st.current_number_scheduled,
                st.number_ready
            ),
            (2, 2, 1)
        );
        assert_eq!(
            (st.updated_number_scheduled, st.number_unavailable),
            (Some(2), Some(1))
        );
        let st = status(&changed_template(None, "RollingUpdate"), &nodes, &pods).expect("fits");
        assert_eq!(st.updated_number_scheduled, Some(0));
    }
}

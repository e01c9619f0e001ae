//! The DaemonSet controller's decision, pure: given a DaemonSet, the Nodes
//! and the Pods, which Pods to create (one per eligible node that has none
//! running) and which to delete (on nodes no longer eligible, extra copies,
//! and finished ones, which the next pass recreates).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::placement::{fits, PlacementError};

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

pub fn reconcile(
    ds: &DaemonSet,
    nodes: &[Node],
    pods: &[Pod],
) -> Result<DaemonSetActions, PlacementError> {
    let template_spec = ds.spec.template.spec.clone().unwrap_or_default();
    let mut by_node: BTreeMap<&str, Vec<&Pod>> = BTreeMap::new();
    for pod in owned(ds, pods) {
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .unwrap_or("");
        by_node.entry(node).or_default().push(pod);
    }
    let mut actions = DaemonSetActions::default();
    let mut eligible = Vec::new();
    for node in nodes {
        let name = node.metadata.name.as_deref().unwrap_or("");
        if fits(&template_spec, node)? {
            eligible.push(name);
        }
    }
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
    for node in eligible {
        let has_live = by_node
            .get(node)
            .is_some_and(|ps| ps.iter().any(|p| !is_finished(p)));
        if !has_live {
            actions
                .create
                .push(pod_for(ds, node, template_spec.clone()));
        }
    }
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
    spec.node_name = Some(node.to_string());
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{ds_name}-")),
            namespace: ds.metadata.namespace.clone(),
            labels: template_meta.labels,
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

    fn pod(name: &str, node: &str, owner: &str, phase: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "trellis-system",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "trellis", "uid": owner, "controller": true}]},
            "spec": {"nodeName": node, "containers": []},
            "status": {"phase": phase}
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
}

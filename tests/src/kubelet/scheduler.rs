//! A trivial scheduler: a Pod without `spec.nodeName` goes to the eligible,
//! uncordoned node running the fewest pods (ties: by name, so tests are
//! deterministic). Pure; the controller loop binds by setting nodeName.

use k8s_openapi::api::core::v1::{Node, Pod};

use super::placement::{cordoned, fits, PlacementError};

/// The node for `pod`, `Ok(None)` when none fits (it stays Pending).
pub fn pick_node(
    pod: &Pod,
    nodes: &[Node],
    pods: &[Pod],
) -> Result<Option<String>, PlacementError> {
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(None);
    };
    let mut best: Option<(usize, &str)> = None;
    for node in nodes.iter().filter(|n| !cordoned(n)) {
        let Some(name) = node.metadata.name.as_deref() else {
            continue;
        };
        if !fits(spec, node)? {
            continue;
        }
        let load = pods
            .iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name))
            .count();
        if best.is_none_or(|(l, n)| (load, name) < (l, n)) {
            best = Some((load, name));
        }
    }
    Ok(best.map(|(_, name)| name.to_string()))
}

/// Pods still waiting for a node.
pub fn unscheduled(pods: &[Pod]) -> impl Iterator<Item = &Pod> {
    pods.iter().filter(|p| is_unscheduled(p))
}

/// No node yet, and not being deleted.
fn is_unscheduled(p: &Pod) -> bool {
    let spec = p.spec.as_ref();
    spec.and_then(|s| s.node_name.as_deref())
        .is_none_or(str::is_empty)
        && p.metadata.deletion_timestamp.is_none()
}

/// What [`assign`] decided: nodes for pods (`(index into pods, node)`), and the pods whose
/// spec cannot be placed (they stay Pending; the others are placed all the same).
#[derive(Debug, Default, PartialEq)]
pub struct Assignment {
    pub bind: Vec<(usize, String)>,
    pub refused: Vec<(usize, PlacementError)>,
}

/// A node for each unscheduled pod of `pods`, in order; each choice counts as load for the
/// next, so a batch created at once spreads out.
pub fn assign(pods: &[Pod], nodes: &[Node]) -> Assignment {
    let mut placed = pods.to_vec();
    let mut out = Assignment::default();
    for (i, pod) in pods.iter().enumerate() {
        if !is_unscheduled(pod) {
            continue;
        }
        match pick_node(pod, nodes, &placed) {
            Ok(Some(node)) => {
                if let Some(spec) = placed[i].spec.as_mut() {
                    spec.node_name = Some(node.clone());
                }
                out.bind.push((i, node));
            }
            Ok(None) => {}
            Err(e) => out.refused.push((i, e)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, cordon: bool) -> Node {
        serde_json::from_value(
            json!({"metadata": {"name": name}, "spec": {"unschedulable": cordon}}),
        )
        .expect("node")
    }

    fn pod(name: &str, node: Option<&str>) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": name}, "spec": {"nodeName": node, "containers": []}}),
        )
        .expect("pod")
    }

    #[test]
    fn least_loaded_uncordoned_node_wins() {
        let nodes = [node("a", false), node("b", false), node("c", true)];
        let pods = [pod("x", Some("a")), pod("new", None)];
        assert_eq!(pick_node(&pods[1], &nodes, &pods), Ok(Some("b".into())));
        let names: Vec<_> = unscheduled(&pods)
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        assert_eq!(names, ["new"]);
        assert_eq!(pick_node(&pods[1], &[node("c", true)], &pods), Ok(None));
    }

    #[test]
    fn a_batch_spreads_over_the_nodes() {
        let nodes = [node("a", false), node("b", false), node("c", false)];
        let pods: Vec<Pod> = (0..6).map(|i| pod(&format!("p{i}"), None)).collect();
        let plan = assign(&pods, &nodes);
        let on = |n: &str| plan.bind.iter().filter(|(_, x)| x == n).count();
        assert_eq!((on("a"), on("b"), on("c")), (2, 2, 2), "{plan:?}");
        assert!(plan.refused.is_empty());
        assert_eq!(assign(&pods, &[node("c", true)]), Assignment::default());
    }
}

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
    pods.iter().filter(|p| {
        let spec = p.spec.as_ref();
        spec.and_then(|s| s.node_name.as_deref())
            .is_none_or(str::is_empty)
            && p.metadata.deletion_timestamp.is_none()
    })
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
}

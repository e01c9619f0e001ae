//! Which nodes a pod may run on, as both the DaemonSet controller and the
//! scheduler decide it: nodeSelector labels, taints the pod tolerates, and
//! (for the scheduler only) cordoned nodes. Node affinity is not evaluated;
//! a pod that asks for it is refused rather than placed anywhere.

use k8s_openapi::api::core::v1::{Node, PodSpec, Taint, Toleration};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("spec.affinity: not supported by the test scheduler")]
    Affinity,
}

/// Whether `spec` may run on `node`, ignoring cordoning (DaemonSets run
/// on cordoned nodes too).
pub fn fits(spec: &PodSpec, node: &Node) -> Result<bool, PlacementError> {
    if spec
        .affinity
        .as_ref()
        .is_some_and(|a| a.node_affinity.is_some())
    {
        return Err(PlacementError::Affinity);
    }
    let labels = node.metadata.labels.as_ref();
    let selected = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v));
    let tolerations = spec.tolerations.as_deref().unwrap_or_default();
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default();
    let tolerated = taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .all(|t| tolerations.iter().any(|tol| tolerates(tol, t)));
    Ok(selected && tolerated)
}

pub fn cordoned(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
}

fn tolerates(tol: &Toleration, taint: &Taint) -> bool {
    let effect_ok = tol
        .effect
        .as_deref()
        .is_none_or(|e| e.is_empty() || e == taint.effect);
    let key_ok = match tol.key.as_deref() {
        None | Some("") => tol.operator.as_deref() == Some("Exists"),
        Some(k) => k == taint.key,
    };
    let value_ok = match tol.operator.as_deref() {
        Some("Exists") => true,
        _ => tol.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
    };
    effect_ok && key_ok && value_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(v: serde_json::Value) -> Node {
        serde_json::from_value(v).expect("node")
    }

    fn spec(v: serde_json::Value) -> PodSpec {
        serde_json::from_value(v).expect("spec")
    }

    #[test]
    fn node_selector_and_taints_decide() {
        let linux =
            node(json!({"metadata": {"name": "a", "labels": {"kubernetes.io/os": "linux"}}}));
        let tainted = node(
            json!({"metadata": {"name": "b", "labels": {"kubernetes.io/os": "linux"}},
            "spec": {"taints": [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]}}),
        );
        let plain = spec(json!({"containers": [], "nodeSelector": {"kubernetes.io/os": "linux"}}));
        let tolerant = spec(json!({"containers": [], "tolerations": [{"operator": "Exists"}]}));
        assert_eq!(fits(&plain, &linux), Ok(true));
        assert_eq!(fits(&plain, &tainted), Ok(false));
        assert_eq!(fits(&tolerant, &tainted), Ok(true));
        let windows =
            spec(json!({"containers": [], "nodeSelector": {"kubernetes.io/os": "windows"}}));
        assert_eq!(fits(&windows, &linux), Ok(false));
        let keyed = spec(json!({"containers": [], "tolerations": [
            {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}]}));
        assert_eq!(fits(&keyed, &tainted), Ok(true));
    }

    #[test]
    fn node_affinity_is_refused_not_ignored() {
        let s = spec(json!({"containers": [], "affinity": {"nodeAffinity": {}}}));
        assert_eq!(
            fits(&s, &node(json!({"metadata": {"name": "a"}}))),
            Err(PlacementError::Affinity)
        );
    }
}

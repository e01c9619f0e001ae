//! Server-side printing: `meta.k8s.io/v1 Table` responses, which `kubectl get` asks for, with the
//! columns the apiserver prints for each type.

use serde_json::{json, Value};

use super::resources::ResourceType;
use super::util;

fn col(name: &str, ty: &str, format: &str, description: &str) -> Value {
    json!({"name": name, "type": ty, "format": format, "description": description, "priority": 0})
}

/// A column `kubectl get` shows only with `-o wide` (priority 1).
fn wide(name: &str, description: &str) -> Value {
    json!({"name": name, "type": "string", "format": "", "description": description, "priority": 1})
}

pub fn columns(rt: &ResourceType) -> Vec<Value> {
    let name = col(
        "Name",
        "string",
        "name",
        "Name must be unique within a namespace.",
    );
    let age = col("Age", "string", "", "CreationTimestamp of the object.");
    match rt.kind {
        "Node" => vec![
            name,
            col("Status", "string", "", "The status of the node"),
            col("Roles", "string", "", "The roles of the node"),
            age,
            col(
                "Version",
                "string",
                "",
                "Kubelet Version reported by the node.",
            ),
        ],
        "ConfigMap" => vec![
            name,
            col(
                "Data",
                "integer",
                "",
                "Number of entries in the data and binaryData fields.",
            ),
            age,
        ],
        "Pod" => vec![
            name,
            col("Ready", "string", "", "The aggregate readiness state of this pod for accepting traffic."),
            col("Status", "string", "", "The aggregate status of the containers in this pod."),
            col("Restarts", "string", "", "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."),
            age,
            wide("IP", "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated."),
            wide("Node", "Name of the Node this pod is bound to."),
            wide("Nominated Node", "Name of the node nominated by the scheduler."),
            wide("Readiness Gates", "Pod readiness gates and their status."),
        ],
        "DaemonSet" => vec![
            name,
            col("Desired", "integer", "", "The total number of nodes that should be running the daemon pod."),
            col("Current", "integer", "", "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod."),
            col("Ready", "integer", "", "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and ready."),
            col("Up-to-date", "integer", "", "The total number of nodes that are running updated daemon pod."),
            col("Available", "integer", "", "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available."),
            col("Node Selector", "string", "", "NodeSelector is a selector which must be true for the pod to fit on a node."),
            age,
            wide("Containers", "Names of each container in the template."),
            wide("Images", "Images referenced by each container in the template."),
            wide("Selector", "A label query over pods that are managed by the daemon set."),
        ],
        "Namespace" => vec![
            name,
            col("Status", "string", "", "The status of the namespace"),
            age,
        ],
        "ServiceAccount" => vec![
            name,
            col("Secrets", "string", "", "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use."),
            age,
        ],
        "NetworkPolicy" => vec![
            name,
            col("Pod-Selector", "string", "", "podSelector selects the pods to which this NetworkPolicy object applies. An empty selector matches all pods in this namespace."),
            age,
        ],
        _ => vec![name, age],
    }
}

/// kubectl's READY/STATUS/RESTARTS for a Pod (printPod, simplified: no init-container detail).
fn pod_cells(obj: &Value) -> (String, String, i64) {
    let total = obj["spec"]["containers"].as_array().map_or(0, Vec::len);
    let statuses = obj["status"]["containerStatuses"].as_array();
    let ready = statuses.map_or(0, |s| s.iter().filter(|c| c["ready"] == true).count());
    let restarts = statuses.map_or(0, |s| {
        s.iter().filter_map(|c| c["restartCount"].as_i64()).sum()
    });
    let status = if obj["metadata"]["deletionTimestamp"].is_string() {
        "Terminating".to_string()
    } else {
        obj["status"]["reason"]
            .as_str()
            .or(obj["status"]["phase"].as_str())
            .unwrap_or("Unknown")
            .to_string()
    };
    (format!("{ready}/{total}"), status, restarts)
}

fn or_none(v: &Value) -> String {
    v.as_str()
        .filter(|s| !s.is_empty())
        .unwrap_or("<none>")
        .to_string()
}

fn selector_text(sel: &Value) -> String {
    let parts: Vec<String> = sel
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    if parts.is_empty() {
        "<none>".into()
    } else {
        parts.join(",")
    }
}

/// A metav1.LabelSelector as kubectl prints one (metav1.FormatLabelSelector): requirements
/// sorted by key, `<none>` for the empty selector, which selects everything.
fn label_selector_text(sel: &Value) -> String {
    let mut reqs: Vec<(String, String)> = Vec::new();
    if let Some(m) = sel["matchLabels"].as_object() {
        for (k, v) in m {
            reqs.push((k.clone(), format!("{k}={}", v.as_str().unwrap_or_default())));
        }
    }
    for e in sel["matchExpressions"].as_array().into_iter().flatten() {
        let key = e["key"].as_str().unwrap_or_default();
        let mut values: Vec<&str> = e["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        values.sort_unstable();
        let text = match e["operator"].as_str() {
            Some("In") => format!("{key} in ({})", values.join(",")),
            Some("NotIn") => format!("{key} notin ({})", values.join(",")),
            Some("Exists") => key.to_string(),
            Some("DoesNotExist") => format!("!{key}"),
            // Validation refuses other operators; Go prints "<error>" for them.
            _ => return "<error>".into(),
        };
        reqs.push((key.to_string(), text));
    }
    reqs.sort_by(|a, b| a.0.cmp(&b.0));
    if reqs.is_empty() {
        return "<none>".into();
    }
    let texts: Vec<String> = reqs.into_iter().map(|(_, t)| t).collect();
    texts.join(",")
}

fn daemon_set_cells(obj: &Value, now: i64) -> Value {
    let st = &obj["status"];
    let n = |f: &str| st[f].as_i64().unwrap_or(0);
    let containers = obj["spec"]["template"]["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let join = |f: &str| {
        containers
            .iter()
            .filter_map(|c| c[f].as_str())
            .collect::<Vec<_>>()
            .join(",")
    };
    json!([
        obj["metadata"]["name"],
        n("desiredNumberScheduled"),
        n("currentNumberScheduled"),
        n("numberReady"),
        n("updatedNumberScheduled"),
        n("numberAvailable"),
        selector_text(&obj["spec"]["template"]["spec"]["nodeSelector"]),
        age(obj, now),
        join("name"),
        join("image"),
        selector_text(&obj["spec"]["selector"]["matchLabels"]),
    ])
}

fn node_status(obj: &Value) -> String {
    let ready = obj["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["status"].as_str());
    let mut s = match ready {
        Some("True") => "Ready".to_string(),
        Some("False") => "NotReady".to_string(),
        _ => "Unknown".to_string(),
    };
    if obj["spec"]["unschedulable"] == true {
        s.push_str(",SchedulingDisabled");
    }
    s
}

fn node_roles(obj: &Value) -> String {
    let mut roles: Vec<&str> = obj["metadata"]["labels"]
        .as_object()
        .map(|m| {
            m.keys()
                .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                .filter(|r| !r.is_empty())
                .collect()
        })
        .unwrap_or_default();
    roles.sort_unstable();
    if roles.is_empty() {
        "<none>".into()
    } else {
        roles.join(",")
    }
}

fn age(obj: &Value, now: i64) -> String {
    obj["metadata"]["creationTimestamp"]
        .as_str()
        .and_then(util::parse_rfc3339)
        .map(|t| util::human_age(now - t))
        .unwrap_or_else(|| "<unknown>".into())
}

/// One row: the cells plus the object's metadata (`includeObject=Metadata`, the default).
pub fn row(rt: &ResourceType, obj: &Value, now: i64) -> Value {
    let name = obj["metadata"]["name"].clone();
    let cells = match rt.kind {
        "Node" => json!([
            name,
            node_status(obj),
            node_roles(obj),
            age(obj, now),
            obj["status"]["nodeInfo"]["kubeletVersion"]
                .as_str()
                .unwrap_or("")
        ]),
        "ConfigMap" => {
            let n = |f: &str| obj[f].as_object().map(|m| m.len()).unwrap_or(0);
            json!([name, n("data") + n("binaryData"), age(obj, now)])
        }
        "Pod" => {
            let (ready, status, restarts) = pod_cells(obj);
            json!([
                name,
                ready,
                status,
                restarts.to_string(),
                age(obj, now),
                or_none(&obj["status"]["podIP"]),
                or_none(&obj["spec"]["nodeName"]),
                or_none(&obj["status"]["nominatedNodeName"]),
                "<none>"
            ])
        }
        "DaemonSet" => daemon_set_cells(obj, now),
        "Namespace" => json!([name, or_none(&obj["status"]["phase"]), age(obj, now)]),
        "ServiceAccount" => {
            let secrets = obj["secrets"].as_array().map_or(0, Vec::len);
            json!([name, secrets.to_string(), age(obj, now)])
        }
        "NetworkPolicy" => json!([
            name,
            label_selector_text(&obj["spec"]["podSelector"]),
            age(obj, now)
        ]),
        _ => json!([name, age(obj, now)]),
    };
    json!({
        "cells": cells,
        "object": {
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj["metadata"].clone(),
        }
    })
}

pub fn table(rt: &ResourceType, rows: Vec<Value>, rv: u64, cont: Option<&str>) -> Value {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if let Some(c) = cont {
        meta["continue"] = json!(c);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": columns(rt),
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::{CONFIGMAPS, NODES};

    #[test]
    fn node_row() {
        let n = json!({
            "metadata": {"name": "n1", "creationTimestamp": "2023-11-14T22:13:20Z",
                         "labels": {"node-role.kubernetes.io/control-plane": ""}},
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                       "nodeInfo": {"kubeletVersion": "v1.32.0"}}
        });
        let r = row(&NODES, &n, 1_700_000_000 + 65);
        assert_eq!(
            r["cells"],
            json!([
                "n1",
                "Ready,SchedulingDisabled",
                "control-plane",
                "65s",
                "v1.32.0"
            ])
        );
        assert_eq!(r["object"]["metadata"]["name"], "n1");
    }

    #[test]
    fn pod_row_has_the_wide_columns() {
        use crate::apiserver::resources::PODS;
        let p = json!({"metadata": {"name": "p", "creationTimestamp": "2023-11-14T22:13:20Z"},
            "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
            "status": {"phase": "Running", "podIP": "10.244.1.5",
                       "containerStatuses": [{"ready": true, "restartCount": 2}]}});
        let r = row(&PODS, &p, 1_700_000_000 + 5);
        assert_eq!(
            r["cells"],
            json!([
                "p",
                "1/1",
                "Running",
                "2",
                "5s",
                "10.244.1.5",
                "n1",
                "<none>",
                "<none>"
            ])
        );
        assert_eq!(columns(&PODS).len(), 9);
    }

    #[test]
    fn network_policy_row_prints_the_pod_selector() {
        use crate::apiserver::resources::NETWORK_POLICIES;
        let np = |sel: Value| {
            let p = json!({"metadata": {"name": "deny", "creationTimestamp": "2023-11-14T22:13:20Z"},
                           "spec": {"podSelector": sel}});
            row(&NETWORK_POLICIES, &p, 1_700_000_000 + 120)["cells"].clone()
        };
        assert_eq!(np(json!({})), json!(["deny", "<none>", "2m"]));
        let sel = json!({"matchLabels": {"tier": "db", "app": "web"},
            "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "dev"]},
                                 {"key": "canary", "operator": "DoesNotExist"},
                                 {"key": "zone", "operator": "Exists"}]});
        assert_eq!(np(sel)[1], "app=web,!canary,env in (dev,prod),tier=db,zone");
        let cols = columns(&NETWORK_POLICIES);
        let names: Vec<&str> = cols.iter().filter_map(|c| c["name"].as_str()).collect();
        assert_eq!(names, ["Name", "Pod-Selector", "Age"]);
    }

    #[test]
    fn configmap_counts_data() {
        let c = json!({"metadata": {"name": "c"}, "data": {"a": "1", "b": "2"}, "binaryData": {"c": ""}});
        assert_eq!(row(&CONFIGMAPS, &c, 0)["cells"][1], 3);
    }
}

//! Server-side printing: `meta.k8s.io/v1 Table` responses, which `kubectl get` asks for, with the
//! columns the apiserver prints for each type.

use serde_json::{json, Value};

use super::resources::ResourceType;
use super::util;

fn col(name: &str, ty: &str, format: &str, description: &str) -> Value {
    json!({"name": name, "type": ty, "format": format, "description": description, "priority": 0})
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
        _ => vec![name, age],
    }
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
    fn configmap_counts_data() {
        let c = json!({"metadata": {"name": "c"}, "data": {"a": "1", "b": "2"}, "binaryData": {"c": ""}});
        assert_eq!(row(&CONFIGMAPS, &c, 0)["cells"][1], 3);
    }
}

//! A Node as the watcher decodes it: only what [`NodeInfo`] needs.
//!
//! A real Node is about 10 KB of JSON (status conditions, addresses, images, managedFields).
//! Decoding it into `k8s_openapi`'s `Node` allocates all of that for every event only to drop
//! it; [`SlimNode`] keeps name, uid, resourceVersion, creationTimestamp, annotations and the
//! podCIDRs, and serde skips the rest without allocating. At 5000 Nodes this is what keeps the
//! initial list cheap; nothing of it is kept after the conversion to [`NodeInfo`].

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::{Deserialize, Deserializer};

use crate::view::NodeInfo;

/// `core/v1` Node, reduced.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SlimNode {
    #[serde(deserialize_with = "slim_meta", default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<SlimNodeSpec>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct SlimNodeSpec {
    #[serde(rename = "podCIDRs", default)]
    pub pod_cidrs: Option<Vec<String>>,
    /// Set alone by clusters older than dual-stack support.
    #[serde(rename = "podCIDR", default)]
    pub pod_cidr: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SlimMeta {
    name: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    creation_timestamp: Option<Time>,
    annotations: Option<BTreeMap<String, String>>,
}

fn slim_meta<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    let m = SlimMeta::deserialize(d)?;
    Ok(ObjectMeta {
        name: m.name,
        uid: m.uid,
        resource_version: m.resource_version,
        creation_timestamp: m.creation_timestamp,
        annotations: m.annotations,
        ..ObjectMeta::default()
    })
}

impl kube::Resource for SlimNode {
    type DynamicType = ();
    type Scope = k8s_openapi::ClusterResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("Node")
    }

    fn group(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("")
    }

    fn version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("v1")
    }

    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("nodes")
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl SlimNode {
    /// The planning-relevant fields; `None` for a Node without a name (the API never sends
    /// one, but the bytes come from outside).
    pub fn into_node_info(self) -> Option<NodeInfo> {
        let SlimNode { metadata, spec } = self;
        let name = metadata.name.filter(|n| !n.is_empty())?;
        let pod_cidrs = match spec {
            Some(SlimNodeSpec {
                pod_cidrs: Some(c), ..
            }) if !c.is_empty() => c,
            Some(SlimNodeSpec {
                pod_cidr: Some(c), ..
            }) if !c.is_empty() => vec![c],
            _ => Vec::new(),
        };
        Some(NodeInfo {
            name,
            pod_cidrs,
            annotations: metadata.annotations.unwrap_or_default(),
            created_unix: metadata.creation_timestamp.map(|t| t.0.as_second()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Node shaped like a real kubelet-registered one.
    pub(crate) fn real_node_json(name: &str, cidrs: &[&str]) -> serde_json::Value {
        let images: Vec<serde_json::Value> = (0..40)
            .map(|i| {
                serde_json::json!({
                    "names": [format!("registry.k8s.io/image-{i}@sha256:{:064x}", i), format!("registry.k8s.io/image-{i}:v1.{i}")],
                    "sizeBytes": 12_345_678 + i
                })
            })
            .collect();
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "uid": "0b6c9b4e-6f0a-4c1e-9d6c-2f1a3b4c5d6e",
                "resourceVersion": "4242",
                "creationTimestamp": "2024-05-06T07:08:09Z",
                "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"},
                "annotations": {
                    "flannel.alpha.coreos.com/public-ip": "192.168.1.2",
                    "node.alpha.kubernetes.io/ttl": "0"
                },
                "managedFields": [{"manager": "kubelet", "operation": "Update", "apiVersion": "v1",
                    "time": "2024-05-06T07:08:09Z", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:status": {"f:conditions": {}}}}]
            },
            "spec": {"podCIDR": cidrs.first(), "podCIDRs": cidrs, "providerID": "kind://x"},
            "status": {
                "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": "2024-05-06T07:08:09Z",
                    "lastTransitionTime": "2024-05-06T07:08:09Z", "reason": "KubeletReady", "message": "ok"}],
                "addresses": [{"type": "InternalIP", "address": "192.168.1.2"}],
                "images": images,
                "nodeInfo": {"kubeletVersion": "v1.31.0"}
            }
        })
    }

    #[test]
    fn keeps_only_what_planning_reads() {
        let j = real_node_json("node-2", &["10.244.2.0/24", "fd00::/64"]);
        assert!(j.to_string().len() > 5000, "fixture should be realistic");
        let n: SlimNode = serde_json::from_value(j).unwrap();
        assert_eq!(n.metadata.resource_version.as_deref(), Some("4242"));
        assert!(n.metadata.labels.is_none() && n.metadata.managed_fields.is_none());
        let info = n.into_node_info().unwrap();
        assert_eq!(info.name, "node-2");
        assert_eq!(info.pod_cidrs, ["10.244.2.0/24", "fd00::/64"]);
        assert_eq!(info.annotations.len(), 2);
        assert_eq!(info.created_unix, Some(1_714_979_289));
    }

    #[test]
    fn pod_cidr_alone_and_missing_spec() {
        let n: SlimNode = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "old"}, "spec": {"podCIDR": "10.244.9.0/24"}
        }))
        .unwrap();
        assert_eq!(n.into_node_info().unwrap().pod_cidrs, ["10.244.9.0/24"]);
        let n: SlimNode = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "bare", "annotations": null}
        }))
        .unwrap();
        let info = n.into_node_info().unwrap();
        assert!(info.pod_cidrs.is_empty() && info.annotations.is_empty());
        assert_eq!(info.created_unix, None);
        let n: SlimNode = serde_json::from_value(serde_json::json!({"metadata": {}})).unwrap();
        assert!(n.into_node_info().is_none());
    }

    #[test]
    fn rejects_wrong_types_instead_of_guessing() {
        let bad = serde_json::json!({"metadata": {"name": "x", "annotations": {"a": 1}}});
        assert!(serde_json::from_value::<SlimNode>(bad).is_err());
    }
}

//! The resource types the emulator serves, and the discovery documents describing them.

use serde_json::{json, Value};

/// Static description of one served resource type.
#[derive(Debug)]
pub struct ResourceType {
    /// Index into [`RESOURCES`]; also part of the store key.
    pub id: u8,
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    /// Whether a `status` subresource splits writes: main-resource writes keep the old status,
    /// status writes keep the old spec.
    pub has_status: bool,
    /// Field labels usable in `fieldSelector` (values are precomputed per stored object).
    pub field_labels: &'static [&'static str],
    /// Whether `POST <name>/token` answers a TokenRequest (ServiceAccounts only).
    pub has_token: bool,
}

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Stable name used in the persisted state file.
    pub fn storage_name(&self) -> String {
        format!("{}/{}", self.api_version(), self.plural)
    }
}

pub static NODES: ResourceType = ResourceType {
    id: 0,
    group: "",
    version: "v1",
    plural: "nodes",
    singular: "node",
    kind: "Node",
    namespaced: false,
    short_names: &["no"],
    has_status: true,
    field_labels: &["metadata.name", "spec.unschedulable"],
    has_token: false,
};

pub static CONFIGMAPS: ResourceType = ResourceType {
    id: 1,
    group: "",
    version: "v1",
    plural: "configmaps",
    singular: "configmap",
    kind: "ConfigMap",
    namespaced: true,
    short_names: &["cm"],
    has_status: false,
    field_labels: &["metadata.name", "metadata.namespace"],
    has_token: false,
};

pub static CORE_EVENTS: ResourceType = ResourceType {
    id: 2,
    group: "",
    version: "v1",
    plural: "events",
    singular: "event",
    kind: "Event",
    namespaced: true,
    short_names: &["ev"],
    has_status: false,
    field_labels: &[
        "metadata.name",
        "metadata.namespace",
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    ],
    has_token: false,
};

pub static EVENTS_V1: ResourceType = ResourceType {
    id: 3,
    group: "events.k8s.io",
    version: "v1",
    plural: "events",
    singular: "event",
    kind: "Event",
    namespaced: true,
    short_names: &["ev"],
    has_status: false,
    field_labels: &[
        "metadata.name",
        "metadata.namespace",
        "regarding.kind",
        "regarding.namespace",
        "regarding.name",
        "regarding.uid",
        "regarding.apiVersion",
        "reason",
        "reportingController",
        "type",
    ],
    has_token: false,
};

pub static NAMESPACES: ResourceType = ResourceType {
    id: 4,
    group: "",
    version: "v1",
    plural: "namespaces",
    singular: "namespace",
    kind: "Namespace",
    namespaced: false,
    short_names: &["ns"],
    has_status: true,
    field_labels: &["metadata.name", "status.phase"],
    has_token: false,
};

pub static SERVICE_ACCOUNTS: ResourceType = ResourceType {
    id: 5,
    group: "",
    version: "v1",
    plural: "serviceaccounts",
    singular: "serviceaccount",
    kind: "ServiceAccount",
    namespaced: true,
    short_names: &["sa"],
    has_status: false,
    field_labels: &["metadata.name", "metadata.namespace"],
    has_token: true,
};

pub static PODS: ResourceType = ResourceType {
    id: 6,
    group: "",
    version: "v1",
    plural: "pods",
    singular: "pod",
    kind: "Pod",
    namespaced: true,
    short_names: &["po"],
    has_status: true,
    field_labels: &[
        "metadata.name",
        "metadata.namespace",
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    ],
    has_token: false,
};

pub static DAEMON_SETS: ResourceType = ResourceType {
    id: 7,
    group: "apps",
    version: "v1",
    plural: "daemonsets",
    singular: "daemonset",
    kind: "DaemonSet",
    namespaced: true,
    short_names: &["ds"],
    has_status: true,
    field_labels: &["metadata.name", "metadata.namespace"],
    has_token: false,
};

/// The four RBAC kinds share one shape: no status, name and namespace field labels.
const fn rbac_type(
    id: u8,
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    namespaced: bool,
) -> ResourceType {
    ResourceType {
        id,
        group: "rbac.authorization.k8s.io",
        version: "v1",
        plural,
        singular,
        kind,
        namespaced,
        short_names: &[],
        has_status: false,
        field_labels: if namespaced {
            &["metadata.name", "metadata.namespace"]
        } else {
            &["metadata.name"]
        },
        has_token: false,
    }
}

pub static CLUSTER_ROLES: ResourceType =
    rbac_type(8, "clusterroles", "clusterrole", "ClusterRole", false);
pub static CLUSTER_ROLE_BINDINGS: ResourceType = rbac_type(
    9,
    "clusterrolebindings",
    "clusterrolebinding",
    "ClusterRoleBinding",
    false,
);
pub static ROLES: ResourceType = rbac_type(10, "roles", "role", "Role", true);
pub static ROLE_BINDINGS: ResourceType =
    rbac_type(11, "rolebindings", "rolebinding", "RoleBinding", true);

/// What a pod network enforces; no status (the v1 type has none since Kubernetes 1.27).
pub static NETWORK_POLICIES: ResourceType = ResourceType {
    id: 12,
    group: "networking.k8s.io",
    version: "v1",
    plural: "networkpolicies",
    singular: "networkpolicy",
    kind: "NetworkPolicy",
    namespaced: true,
    short_names: &["netpol"],
    has_status: false,
    field_labels: &["metadata.name", "metadata.namespace"],
    has_token: false,
};

/// Every served type; a type's `id` is its index here and part of the store key, so new types
/// are appended.
pub static RESOURCES: [&ResourceType; 13] = [
    &NODES,
    &CONFIGMAPS,
    &CORE_EVENTS,
    &EVENTS_V1,
    &NAMESPACES,
    &SERVICE_ACCOUNTS,
    &PODS,
    &DAEMON_SETS,
    &CLUSTER_ROLES,
    &CLUSTER_ROLE_BINDINGS,
    &ROLES,
    &ROLE_BINDINGS,
    &NETWORK_POLICIES,
];

pub fn by_id(id: u8) -> &'static ResourceType {
    RESOURCES[id as usize % RESOURCES.len()]
}

/// Looks up the resource served at `/api/v1/<plural>` (group "") or `/apis/<group>/<version>/<plural>`.
pub fn lookup(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    RESOURCES
        .iter()
        .copied()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

pub fn lookup_storage_name(name: &str) -> Option<&'static ResourceType> {
    RESOURCES.iter().copied().find(|r| r.storage_name() == name)
}

/// The groups served under `/apis` (the core group lives under `/api`).
fn named_groups() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

pub fn group_served(group: &str, version: Option<&str>) -> bool {
    named_groups()
        .iter()
        .any(|(g, v)| *g == group && version.is_none_or(|ver| ver == *v))
}

pub fn version_info() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": "v1.32.0-trellis-emulator",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.23.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// `GET /api`.
pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group_doc(group: &str, version: &str) -> Value {
    let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
    json!({"name": group, "versions": [gv.clone()], "preferredVersion": gv})
}

/// `GET /apis`.
pub fn group_list() -> Value {
    let groups: Vec<Value> = named_groups()
        .into_iter()
        .map(|(g, v)| group_doc(g, v))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /apis/<group>`.
pub fn group(group: &str) -> Option<Value> {
    let (g, v) = named_groups().into_iter().find(|(g, _)| *g == group)?;
    let mut doc = group_doc(g, v);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Some(doc)
}

/// `GET /api/v1` or `GET /apis/<group>/<version>`.
pub fn resource_list(group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        resources.push(json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
            "shortNames": r.short_names,
        }));
        if r.has_status {
            resources.push(json!({
                "name": format!("{}/status", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        if r.id == PODS.id {
            resources.push(json!({
                "name": "pods/binding",
                "singularName": "",
                "namespaced": true,
                "kind": "Binding",
                "verbs": ["create"],
            }));
        }
        if r.has_token {
            resources.push(json!({
                "name": format!("{}/token", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "group": "authentication.k8s.io",
                "version": "v1",
                "kind": "TokenRequest",
                "verbs": ["create"],
            }));
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

/// The value of a field label in an object, as the apiserver's field-selector conversion renders
/// it: strings as-is, booleans and numbers in their JSON text, missing fields per type default.
pub fn field_value(rt: &ResourceType, obj: &Value, label: &str) -> String {
    let mut cur = obj;
    for part in label.split('.') {
        match cur.get(part) {
            Some(v) => cur = v,
            None => {
                // Go renders an unset bool as "false".
                let is_bool = matches!(
                    (rt.plural, label),
                    ("nodes", "spec.unschedulable") | ("pods", "spec.hostNetwork")
                );
                return if is_bool {
                    "false".to_string()
                } else {
                    String::new()
                };
            }
        }
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        // core/v1 Event `source` selects on the component name.
        Value::Object(m) if label == "source" => m
            .get("component")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        other => other.to_string(),
    }
}

/// Fingerprint of the OpenAPI documents; they only change with the emulator's code.
const OPENAPI_HASH: &str = "trellis-emulator-1";

/// `GET /openapi/v3`: where each group-version's document lives.
pub fn openapi_root() -> Value {
    let mut paths = serde_json::Map::new();
    for r in RESOURCES.iter() {
        let gv = if r.group.is_empty() {
            format!("api/{}", r.version)
        } else {
            format!("apis/{}/{}", r.group, r.version)
        };
        paths.insert(
            gv.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{gv}?hash={OPENAPI_HASH}")}),
        );
    }
    json!({"paths": paths})
}

/// `GET /openapi/v3/<gv>`: a minimal document. It describes no schemas; it exists so that
/// kubectl sees the PATCH operations accept `fieldValidation`, and therefore delegates
/// validation to the server instead of downloading schemas to validate client-side.
pub fn openapi_group_version(gv_path: &str) -> Option<Value> {
    let (group, version) = match gv_path.split('/').collect::<Vec<_>>().as_slice() {
        ["api", v] => ("", *v),
        ["apis", g, v] => (*g, *v),
        _ => return None,
    };
    let mut paths = serde_json::Map::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let prefix = if group.is_empty() {
            format!("/api/{version}")
        } else {
            format!("/apis/{group}/{version}")
        };
        let item = if r.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("{prefix}/{}/{{name}}", r.plural)
        };
        let gvk = json!({"group": group, "version": version, "kind": r.kind});
        let params = json!([
            {"name": "dryRun", "in": "query", "schema": {"type": "string"}},
            {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
            {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}
        ]);
        let op = |verb: &str| {
            json!({
                "operationId": format!("{verb}{}", r.kind),
                "x-kubernetes-action": verb,
                "x-kubernetes-group-version-kind": gvk,
                "parameters": params,
                "responses": {"200": {"description": "OK"}},
            })
        };
        paths.insert(item, json!({"patch": op("patch"), "put": op("put")}));
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_by_group_version_plural() {
        assert_eq!(lookup("", "v1", "nodes").map(|r| r.kind), Some("Node"));
        assert_eq!(
            lookup("events.k8s.io", "v1", "events").map(|r| r.id),
            Some(EVENTS_V1.id)
        );
        assert!(lookup("apps", "v1", "deployments").is_none());
        assert_eq!(
            lookup("apps", "v1", "daemonsets").map(|r| r.kind),
            Some("DaemonSet")
        );
        for (i, r) in RESOURCES.iter().enumerate() {
            assert_eq!(r.id as usize, i, "ids index RESOURCES");
        }
    }

    #[test]
    fn discovery_lists_status_subresource() {
        let doc = resource_list("", "v1");
        let names: Vec<&str> = doc["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["name"].as_str())
            .collect();
        assert_eq!(
            names,
            [
                "nodes",
                "nodes/status",
                "configmaps",
                "events",
                "namespaces",
                "namespaces/status",
                "serviceaccounts",
                "serviceaccounts/token",
                "pods",
                "pods/status",
                "pods/binding"
            ]
        );
    }

    #[test]
    fn network_policies_are_discovered_in_their_group() {
        let np = lookup("networking.k8s.io", "v1", "networkpolicies");
        assert_eq!(np.map(|r| r.id), Some(NETWORK_POLICIES.id));
        assert_eq!(
            NETWORK_POLICIES.storage_name(),
            "networking.k8s.io/v1/networkpolicies"
        );
        assert_eq!(
            lookup_storage_name("networking.k8s.io/v1/networkpolicies").map(|r| r.kind),
            Some("NetworkPolicy")
        );
        let groups = group_list();
        let names: Vec<&str> = groups["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|g| g["name"].as_str())
            .collect();
        assert_eq!(
            names,
            [
                "events.k8s.io",
                "apps",
                "rbac.authorization.k8s.io",
                "networking.k8s.io"
            ]
        );
        assert!(group_served("networking.k8s.io", Some("v1")));
        assert_eq!(
            group("networking.k8s.io").map(|g| g["preferredVersion"]["groupVersion"].clone()),
            Some(json!("networking.k8s.io/v1"))
        );
        // No status subresource: the list holds the one resource.
        let doc = resource_list("networking.k8s.io", "v1");
        assert_eq!(doc["groupVersion"], "networking.k8s.io/v1");
        assert_eq!(
            doc["resources"],
            json!([{
                "name": "networkpolicies",
                "singularName": "networkpolicy",
                "namespaced": true,
                "kind": "NetworkPolicy",
                "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
                "shortNames": ["netpol"],
            }])
        );
        let openapi = openapi_group_version("apis/networking.k8s.io/v1");
        let item = "/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies/{name}";
        assert!(openapi.is_some_and(|d| d["paths"][item]["patch"].is_object()));
        assert!(openapi_root()["paths"]["apis/networking.k8s.io/v1"].is_object());
    }

    #[test]
    fn field_values() {
        let node = json!({"metadata": {"name": "a"}, "spec": {}});
        assert_eq!(field_value(&NODES, &node, "metadata.name"), "a");
        assert_eq!(field_value(&NODES, &node, "spec.unschedulable"), "false");
        let ev = json!({"source": {"component": "kubelet"}});
        assert_eq!(field_value(&CORE_EVENTS, &ev, "source"), "kubelet");
    }
}

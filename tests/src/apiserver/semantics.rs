//! What the apiserver does to an object on create and update, and the validation it applies:
//! pure functions from request body (and current object) to the object to store.

use serde_json::{json, Map, Value};

use super::resources::ResourceType;
use super::status::ApiError;
use super::util;
use super::{namespaces, network_policy, workloads};

/// Which endpoint a write came through; it decides which parts of the object may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Main,
    Status,
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

pub(super) fn is_label_value(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= 63
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

pub(super) fn is_qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    prefix.is_none_or(is_dns_subdomain) && !name.is_empty() && is_label_value(name)
}

fn is_cidr(s: &str) -> bool {
    let Some((ip, len)) = s.split_once('/') else {
        return false;
    };
    let Ok(len) = len.parse::<u8>() else {
        return false;
    };
    match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => len <= 32,
        Ok(std::net::IpAddr::V6(_)) => len <= 128,
        Err(_) => false,
    }
}

/// Shape errors a Go decoder would reject with 400 before validation even runs.
fn check_shape(obj: &Value) -> Result<(), ApiError> {
    if !obj.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    let meta = &obj["metadata"];
    if !(meta.is_object() || meta.is_null()) {
        return Err(ApiError::bad_request("metadata must be an object"));
    }
    for field in ["labels", "annotations"] {
        match &meta[field] {
            Value::Null => {}
            Value::Object(m) => {
                if let Some((k, _)) = m.iter().find(|(_, v)| !v.is_string()) {
                    return Err(ApiError::bad_request(format!(
                        "json: cannot unmarshal non-string into Go struct field ObjectMeta.metadata.{field} of type string (key {k:?})"
                    )));
                }
            }
            _ => {
                return Err(ApiError::bad_request(format!(
                    "metadata.{field} must be a map of strings"
                )))
            }
        }
    }
    Ok(())
}

fn check_type(rt: &ResourceType, obj: &Value) -> Result<(), ApiError> {
    let want = rt.api_version();
    if let Some(av) = obj.get("apiVersion").and_then(Value::as_str) {
        if av != want {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({want})"
            )));
        }
    }
    if let Some(k) = obj.get("kind").and_then(Value::as_str) {
        if k != rt.kind {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                rt.kind
            )));
        }
    }
    Ok(())
}

/// Field validation (422 causes), for create (`old` = None) and update.
pub fn validate(rt: &ResourceType, obj: &Value, old: Option<&Value>) -> Result<(), ApiError> {
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let mut causes: Vec<(String, String)> = Vec::new();
    if !is_dns_subdomain(name) {
        causes.push((
            "metadata.name".into(),
            format!("Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"),
        ));
    }
    if let Some(labels) = obj["metadata"]["labels"].as_object() {
        for (k, v) in labels {
            if !is_qualified_name(k) {
                causes.push(("metadata.labels".to_string(), format!("Invalid value: {k:?}: name part must consist of alphanumeric characters, '-', '_' or '.'")));
            }
            let v = v.as_str().unwrap_or_default();
            if !is_label_value(v) {
                causes.push((
                    "metadata.labels".into(),
                    format!("Invalid value: {v:?}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"),
                ));
            }
        }
    }
    if let Some(ann) = obj["metadata"]["annotations"].as_object() {
        let total: usize = ann
            .iter()
            .map(|(k, v)| k.len() + v.as_str().map(str::len).unwrap_or(0))
            .sum();
        if total > 256 * 1024 {
            causes.push((
                "metadata.annotations".into(),
                "Too long: must have at most 262144 bytes".into(),
            ));
        }
        for k in ann.keys().filter(|k| !is_qualified_name(&k.to_lowercase())) {
            causes.push((
                "metadata.annotations".into(),
                format!("Invalid value: {k:?}: name part must consist of alphanumeric characters, '-', '_' or '.'"),
            ));
        }
    }
    match rt.kind {
        "Node" => validate_node(obj, old, &mut causes),
        "ConfigMap" => validate_configmap(obj, &mut causes),
        "Namespace" => workloads::namespace(&mut causes, obj),
        "Pod" => workloads::pod(&mut causes, obj, old),
        "DaemonSet" => workloads::daemon_set(&mut causes, obj, old),
        "ClusterRole" | "Role" | "ClusterRoleBinding" | "RoleBinding" => {
            workloads::rbac(rt.kind, &mut causes, obj)
        }
        "NetworkPolicy" => network_policy::validate(&mut causes, obj),
        _ => {}
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(rt, name, causes))
    }
}

fn validate_node(obj: &Value, old: Option<&Value>, causes: &mut Vec<(String, String)>) {
    let spec = &obj["spec"];
    let cidrs: Vec<&str> = spec["podCIDRs"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for c in &cidrs {
        if !is_cidr(c) {
            causes.push((
                "spec.podCIDRs".into(),
                format!("Invalid value: {c:?}: must be a valid CIDR"),
            ));
        }
    }
    if let Some(c) = spec["podCIDR"].as_str() {
        if !c.is_empty() && !is_cidr(c) {
            causes.push((
                "spec.podCIDR".into(),
                format!("Invalid value: {c:?}: must be a valid CIDR"),
            ));
        }
        if !cidrs.is_empty() && cidrs[0] != c {
            causes.push((
                "spec.podCIDRs".into(),
                "Invalid value: the first entry must equal spec.podCIDR".into(),
            ));
        }
    }
    if let Some(old) = old {
        let old_cidrs = &old["spec"]["podCIDRs"];
        let was_set = old_cidrs.as_array().is_some_and(|a| !a.is_empty());
        if was_set && *old_cidrs != spec["podCIDRs"] {
            causes.push((
                "spec.podCIDRs".into(),
                "Forbidden: node updates may not change podCIDR except from \"\" to valid".into(),
            ));
        }
    }
}

fn validate_configmap(obj: &Value, causes: &mut Vec<(String, String)>) {
    for field in ["data", "binaryData"] {
        match &obj[field] {
            Value::Null => {}
            Value::Object(m) => {
                for (k, v) in m {
                    let key_ok = !k.is_empty()
                        && k.len() <= 253
                        && k.chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
                    if !key_ok {
                        causes.push((
                            format!("{field}[{k}]"),
                            format!("Invalid value: {k:?}: a valid config key must consist of alphanumeric characters, '-', '_' or '.'"),
                        ));
                    }
                    if !v.is_string() {
                        causes.push((
                            format!("{field}[{k}]"),
                            "Invalid value: must be a string".into(),
                        ));
                    }
                }
            }
            _ => causes.push((
                field.into(),
                "Invalid value: must be a map of strings".into(),
            )),
        }
    }
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    match obj.get_mut("metadata") {
        Some(Value::Object(m)) => m,
        // Unreachable: the line above made it an object.
        _ => unreachable!("metadata was just set to an object"),
    }
}

/// The object a create stores: identity, timestamps and defaults filled in as the apiserver does.
pub fn prepare_create(
    rt: &ResourceType,
    url_ns: Option<&str>,
    mut obj: Value,
    now: i64,
) -> Result<Value, ApiError> {
    check_shape(&obj)?;
    check_type(rt, &obj)?;
    obj["apiVersion"] = json!(rt.api_version());
    obj["kind"] = json!(rt.kind);
    let meta = meta_mut(&mut obj);
    if meta
        .get("resourceVersion")
        .and_then(Value::as_str)
        .is_some_and(|s| !s.is_empty())
    {
        return Err(ApiError::bad_request(
            "resourceVersion should not be set on objects to be created",
        ));
    }
    if rt.namespaced {
        let url_ns = url_ns.unwrap_or("default");
        match meta.get("namespace").and_then(Value::as_str) {
            Some(ns) if !ns.is_empty() && ns != url_ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ))
            }
            _ => {
                meta.insert("namespace".into(), json!(url_ns));
            }
        }
    } else {
        meta.remove("namespace");
    }
    let has_name = meta
        .get("name")
        .and_then(Value::as_str)
        .is_some_and(|s| !s.is_empty());
    if !has_name {
        match meta.get("generateName").and_then(Value::as_str) {
            Some(prefix) if !prefix.is_empty() => {
                let name = format!("{prefix}{}", util::name_suffix());
                meta.insert("name".into(), json!(name));
            }
            _ => {
                return Err(ApiError::invalid(
                    rt,
                    "",
                    vec![(
                        "metadata.name".into(),
                        "Required value: name or generateName is required".into(),
                    )],
                ))
            }
        }
    }
    meta.insert("uid".into(), json!(util::new_uid()));
    meta.insert("creationTimestamp".into(), json!(util::rfc3339(now)));
    for gone in [
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "selfLink",
    ] {
        meta.remove(gone);
    }
    if tracks_generation(rt) {
        meta.insert("generation".into(), json!(1));
    } else {
        meta.remove("generation");
    }
    kind_defaults(rt, &mut obj, None);
    validate(rt, &obj, None)?;
    Ok(obj)
}

/// The object an update (PUT, or a patch already applied to `old`) stores. Enforces the
/// optimistic-concurrency check, keeps immutable metadata, and splits spec and status between the
/// main resource and the `status` subresource.
pub fn prepare_update(
    rt: &ResourceType,
    target: Target,
    old: &Value,
    mut new: Value,
    url_name: &str,
) -> Result<Value, ApiError> {
    check_shape(&new)?;
    check_type(rt, &new)?;
    let old_rv = old["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default();
    let new_rv = new["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default();
    if !new_rv.is_empty() && new_rv != old_rv {
        return Err(ApiError::conflict(rt, url_name));
    }
    let body_name = new["metadata"]["name"].as_str().unwrap_or_default();
    if !body_name.is_empty() && body_name != url_name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({url_name})"
        )));
    }
    let old_ns = old["metadata"]["namespace"].as_str().unwrap_or_default();
    let body_ns = new["metadata"]["namespace"].as_str().unwrap_or_default();
    if rt.namespaced && !body_ns.is_empty() && body_ns != old_ns {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    new["apiVersion"] = json!(rt.api_version());
    new["kind"] = json!(rt.kind);
    {
        let meta = meta_mut(&mut new);
        for keep in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "generation",
            "resourceVersion",
            "deletionTimestamp",
        ] {
            match old["metadata"].get(keep) {
                Some(v) => {
                    meta.insert(keep.into(), v.clone());
                }
                None => {
                    meta.remove(keep);
                }
            }
        }
    }
    if rt.has_status {
        // As the apiserver's strategies do, silently rather than with an error: a write to the
        // main resource keeps the stored status, and a write through `status` keeps the stored
        // spec but takes status and metadata (nodeStatusStrategy.PrepareForUpdate sets
        // `newNode.Spec = oldNode.Spec`). So a status patch carrying taints or `unschedulable`
        // succeeds and changes neither, which is what makes `patch` on `nodes/status` a safe
        // grant where `patch` on `nodes` is not.
        let (keep, from_old) = match target {
            Target::Main => ("status", &old["status"]),
            Target::Status => ("spec", &old["spec"]),
        };
        if let Some(m) = new.as_object_mut() {
            if from_old.is_null() {
                m.remove(keep);
            } else {
                m.insert(keep.into(), from_old.clone());
            }
        }
    }
    // Defaults first: the apiserver's decoder applies them before the strategy compares specs,
    // so a body that omits a defaulted field is no spec change.
    kind_defaults(rt, &mut new, Some(old));
    if tracks_generation(rt) && target == Target::Main && new["spec"] != old["spec"] {
        let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
        new["metadata"]["generation"] = json!(g + 1);
    }
    validate(rt, &new, Some(old))?;
    Ok(new)
}

/// Whether `metadata.generation` counts spec changes: the kinds with a status (whose
/// controllers report `observedGeneration`) and NetworkPolicy, whose strategy bumps it too.
fn tracks_generation(rt: &ResourceType) -> bool {
    rt.has_status || rt.kind == "NetworkPolicy"
}

/// What the apiserver's per-kind strategies fill in on create (`old` = None) and update.
fn kind_defaults(rt: &ResourceType, obj: &mut Value, old: Option<&Value>) {
    match rt.kind {
        "Namespace" => namespaces::defaults(obj),
        "Pod" => {
            // A new Pod starts Pending (podStrategy.PrepareForCreate); its QoS class and
            // conditions are the kubelet's, i.e. a node driver's, to report.
            if old.is_none() {
                obj["status"] = json!({"phase": "Pending"});
            }
            if let Some(spec) = obj.pointer_mut("/spec") {
                workloads::pod_spec_defaults(spec);
            }
        }
        "DaemonSet" => {
            // A new DaemonSet has an empty status, which its controller fills.
            if old.is_none() {
                obj["status"] = json!({"currentNumberScheduled": 0, "numberMisscheduled": 0,
                                       "desiredNumberScheduled": 0, "numberReady": 0});
            }
            if let Some(spec) = obj.pointer_mut("/spec/template/spec") {
                workloads::pod_spec_defaults(spec);
            }
        }
        "NetworkPolicy" => network_policy::defaults(obj),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::{CONFIGMAPS, NAMESPACES, NETWORK_POLICIES, NODES, PODS};

    /// The object as stored after `prepare_create` (the store adds the resourceVersion).
    fn created(rt: &ResourceType, ns: Option<&str>, body: Value) -> Value {
        let mut o = prepare_create(rt, ns, body, 0).unwrap();
        o["metadata"]["resourceVersion"] = json!("1");
        o
    }

    #[test]
    fn namespaces_are_labelled_with_their_name_whatever_a_write_says() {
        let ns = created(
            &NAMESPACES,
            None,
            json!({"metadata": {"name": "team-a", "labels": {"kubernetes.io/metadata.name": "x"}}}),
        );
        assert_eq!(
            ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
            "team-a"
        );
        let mut relabelled = ns.clone();
        relabelled["metadata"]["labels"] = json!({"env": "prod"});
        let out = prepare_update(&NAMESPACES, Target::Main, &ns, relabelled, "team-a").unwrap();
        assert_eq!(
            out["metadata"]["labels"],
            json!({"env": "prod", "kubernetes.io/metadata.name": "team-a"})
        );
        let mut cleared = ns.clone();
        cleared["metadata"]["labels"] = Value::Null;
        let out = prepare_update(&NAMESPACES, Target::Status, &ns, cleared, "team-a").unwrap();
        assert_eq!(
            out["metadata"]["labels"],
            json!({"kubernetes.io/metadata.name": "team-a"})
        );
    }

    #[test]
    fn network_policies_are_defaulted_and_count_spec_generations() {
        let body = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "allow-web"},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                     "ingress": [{"ports": [{"port": 80}]}]}});
        let np = created(&NETWORK_POLICIES, Some("team-a"), body.clone());
        assert_eq!(np["metadata"]["namespace"], "team-a");
        assert_eq!(np["metadata"]["generation"], 1);
        assert_eq!(np["spec"]["policyTypes"], json!(["Ingress"]));
        assert_eq!(np["spec"]["ingress"][0]["ports"][0]["protocol"], "TCP");
        // The same manifest again (kubectl replace) is no spec change.
        let mut same = body.clone();
        same["metadata"]["labels"] = json!({"a": "b"});
        let out = prepare_update(&NETWORK_POLICIES, Target::Main, &np, same, "allow-web").unwrap();
        assert_eq!(out["metadata"]["generation"], 1);
        let mut changed = np.clone();
        changed["spec"]["egress"] = json!([{}]);
        changed["spec"]["policyTypes"] = Value::Null;
        let out =
            prepare_update(&NETWORK_POLICIES, Target::Main, &np, changed, "allow-web").unwrap();
        assert_eq!(out["metadata"]["generation"], 2);
        assert_eq!(out["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
        assert!(
            crate::apiserver::handlers::target(&NETWORK_POLICIES, Some("status")).is_err(),
            "a NetworkPolicy has no status subresource"
        );
        let mut bad = body;
        bad["spec"]["ingress"][0]["from"] = json!([{}]);
        let e = prepare_create(&NETWORK_POLICIES, Some("team-a"), bad, 0).unwrap_err();
        assert_eq!(e.code, 422);
        assert!(e.message.contains("must specify a peer"), "{}", e.message);
    }

    #[test]
    fn pods_carry_labels_node_and_named_ports_and_take_status_through_status() {
        let pod = created(
            &PODS,
            Some("team-a"),
            json!({"metadata": {"name": "web-0", "labels": {"app": "web"}},
                   "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i",
                            "ports": [{"name": "http", "containerPort": 8080},
                                      {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]},
                   "status": {"phase": "Running", "podIP": "10.0.0.9"}}),
        );
        assert_eq!(
            pod["status"],
            json!({"phase": "Pending"}),
            "status is reset"
        );
        assert_eq!(pod["spec"]["nodeName"], "n1");
        assert_eq!(
            pod["spec"]["containers"][0]["ports"],
            json!([{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                   {"name": "dns", "containerPort": 53, "protocol": "UDP"}])
        );
        let mut status = pod.clone();
        status["status"] = json!({"phase": "Running", "podIP": "10.0.0.9",
                                  "podIPs": [{"ip": "10.0.0.9"}, {"ip": "fd00::9"}]});
        let out = prepare_update(&PODS, Target::Status, &pod, status.clone(), "web-0").unwrap();
        assert_eq!(out["status"], status["status"]);
        // A Pod stored without the protocol default still takes status writes.
        let mut legacy = pod.clone();
        legacy["spec"]["containers"][0]["ports"][0]
            .as_object_mut()
            .map(|p| p.remove("protocol"));
        assert!(prepare_update(&PODS, Target::Status, &legacy, status, "web-0").is_ok());
        let mut relabelled = pod.clone();
        relabelled["metadata"]["labels"]["app"] = json!("db");
        let out = prepare_update(&PODS, Target::Main, &pod, relabelled, "web-0").unwrap();
        assert_eq!(out["metadata"]["labels"]["app"], "db");
        assert_eq!(
            out["metadata"]["generation"], 1,
            "labels are no spec change"
        );
    }

    #[test]
    fn pod_ports_are_validated() {
        let e = prepare_create(
            &PODS,
            Some("a"),
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i",
                "ports": [{"name": "http", "containerPort": 80}, {"name": "http", "containerPort": 81},
                          {"name": "Bad_Name", "containerPort": 82}, {"containerPort": 0},
                          {"containerPort": 83, "protocol": "ICMP"}]}]}}),
            0,
        )
        .unwrap_err();
        let fields: Vec<&str> = e.details.as_ref().unwrap()["causes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["field"].as_str())
            .collect();
        let p = "spec.containers[0].ports";
        assert_eq!(
            fields,
            [
                format!("{p}[1].name"),
                format!("{p}[2].name"),
                format!("{p}[3].containerPort"),
                format!("{p}[4].protocol"),
            ]
        );
    }

    #[test]
    fn create_fills_identity() {
        let o = prepare_create(
            &NODES,
            None,
            json!({"metadata": {"name": "n1", "namespace": "x"}}),
            0,
        )
        .unwrap();
        assert_eq!(o["kind"], "Node");
        assert_eq!(o["apiVersion"], "v1");
        assert_eq!(o["metadata"]["creationTimestamp"], "1970-01-01T00:00:00Z");
        assert_eq!(o["metadata"]["generation"], 1);
        assert!(o["metadata"].get("namespace").is_none(), "cluster-scoped");
        assert_eq!(o["metadata"]["uid"].as_str().map(str::len), Some(36));
        let c = prepare_create(
            &CONFIGMAPS,
            Some("kube-system"),
            json!({"metadata": {"generateName": "cfg-"}}),
            0,
        )
        .unwrap();
        assert_eq!(c["metadata"]["namespace"], "kube-system");
        assert!(c["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("cfg-") && n.len() == 9));
    }

    #[test]
    fn create_rejects_bad_input() {
        let e = |v: Value| {
            prepare_create(&CONFIGMAPS, Some("a"), v, 0)
                .unwrap_err()
                .code
        };
        assert_eq!(e(json!({"metadata": {"name": "Bad_Name"}})), 422);
        assert_eq!(e(json!({"metadata": {}})), 422);
        assert_eq!(e(json!({"metadata": {"name": "x", "namespace": "b"}})), 400);
        assert_eq!(e(json!({"kind": "Node", "metadata": {"name": "x"}})), 400);
        assert_eq!(
            e(json!({"metadata": {"name": "x", "labels": {"a": 1}}})),
            400
        );
        assert_eq!(e(json!({"metadata": {"name": "x"}, "data": {"k": 1}})), 422);
        assert_eq!(
            e(json!({"metadata": {"name": "x", "resourceVersion": "5"}})),
            400
        );
        assert_eq!(e(json!([1])), 400);
    }

    fn stored_node() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "n1", "uid": "u", "resourceVersion": "7", "generation": 1,
                         "creationTimestamp": "1970-01-01T00:00:00Z"},
            "spec": {"podCIDR": "10.0.1.0/24", "podCIDRs": ["10.0.1.0/24"]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        })
    }

    #[test]
    fn main_resource_write_keeps_status() {
        let old = stored_node();
        let mut new = old.clone();
        new["status"] = json!({"conditions": []});
        new["spec"]["unschedulable"] = json!(true);
        new["metadata"]["uid"] = json!("forged");
        let out = prepare_update(&NODES, Target::Main, &old, new, "n1").unwrap();
        assert_eq!(out["status"], old["status"]);
        assert_eq!(out["spec"]["unschedulable"], true);
        assert_eq!(out["metadata"]["uid"], "u");
        assert_eq!(out["metadata"]["generation"], 2);
    }

    #[test]
    fn status_write_keeps_spec_but_takes_metadata() {
        let old = stored_node();
        let mut new = old.clone();
        new["spec"]["unschedulable"] = json!(true);
        new["status"]["conditions"][0]["status"] = json!("False");
        new["metadata"]["annotations"] = json!({"a": "b"});
        let out = prepare_update(&NODES, Target::Status, &old, new, "n1").unwrap();
        assert_eq!(out["spec"], old["spec"]);
        assert_eq!(out["status"]["conditions"][0]["status"], "False");
        assert_eq!(out["metadata"]["annotations"]["a"], "b");
        assert_eq!(out["metadata"]["generation"], 1);
    }

    #[test]
    fn status_write_cannot_taint_cordon_or_clear_the_spec() {
        let old = stored_node();
        let taint = json!([{"key": "evil", "effect": "NoExecute"}]);
        let mut tainted = old.clone();
        tainted["spec"]["taints"] = taint.clone();
        tainted["spec"]["unschedulable"] = json!(true);
        let out = prepare_update(&NODES, Target::Status, &old, tainted.clone(), "n1").unwrap();
        assert_eq!(out["spec"], old["spec"]);
        let mut cleared = old.clone();
        if let Some(m) = cleared.as_object_mut() {
            m.remove("spec");
        }
        let out = prepare_update(&NODES, Target::Status, &old, cleared, "n1").unwrap();
        assert_eq!(out["spec"], old["spec"]);
        // The same body through the main resource does taint and cordon.
        let out = prepare_update(&NODES, Target::Main, &old, tainted, "n1").unwrap();
        assert_eq!(out["spec"]["taints"], taint);
        assert_eq!(out["spec"]["unschedulable"], true);
    }

    #[test]
    fn update_conflicts_and_forbidden_changes() {
        let old = stored_node();
        let refused = |new: Value| {
            prepare_update(&NODES, Target::Main, &old, new, "n1")
                .unwrap_err()
                .code
        };
        let mut stale = old.clone();
        stale["metadata"]["resourceVersion"] = json!("6");
        assert_eq!(refused(stale), 409);
        let mut renamed = old.clone();
        renamed["metadata"]["name"] = json!("n2");
        assert_eq!(refused(renamed), 400);
        let mut cidr = old.clone();
        cidr["spec"]["podCIDR"] = json!("10.0.2.0/24");
        cidr["spec"]["podCIDRs"] = json!(["10.0.2.0/24"]);
        assert_eq!(refused(cidr), 422);
        // Without a resourceVersion the update is unconditional.
        let mut free = old.clone();
        free["metadata"]
            .as_object_mut()
            .map(|m| m.remove("resourceVersion"));
        assert!(prepare_update(&NODES, Target::Main, &old, free, "n1").is_ok());
    }
}

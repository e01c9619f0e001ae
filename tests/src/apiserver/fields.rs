//! Unknown fields, as the apiserver's decoder treats them for built-in types: with
//! `fieldValidation=Strict` (what `kubectl apply` and `create` send by default) a field the
//! type does not have is a 400 naming it (`strict decoding error: unknown field
//! "spec.template.spec.containers[0].imagePullPolicyy"`); otherwise it is dropped, never
//! stored. So a typo in a manifest fails loudly instead of being half-applied.
//!
//! The known fields are listed for the objects `kubectl apply -k deploy` sends and a node
//! driver reads (Namespace, ServiceAccount, ConfigMap, RBAC, DaemonSet, Pod) down to the
//! structures a driver interprets (pod spec, containers, ports, env, mounts, volumes); deeper
//! structures (probes, security contexts, volume sources) are taken as they are. A
//! NetworkPolicy is listed whole: a dropped typo there (`matchLabel`) would silently widen
//! what the policy selects.

use serde_json::Value;

use super::resources::ResourceType;
use super::status::ApiError;

/// How a known field's value is checked: not at all, as one object of a named type, as a
/// list of them.
#[derive(Clone, Copy)]
enum Shape {
    Any,
    Object(&'static str),
    List(&'static str),
}

use Shape::{Any, List, Object};

const OBJECT_META: &[(&str, Shape)] = &[
    ("name", Any),
    ("generateName", Any),
    ("namespace", Any),
    ("selfLink", Any),
    ("uid", Any),
    ("resourceVersion", Any),
    ("generation", Any),
    ("creationTimestamp", Any),
    ("deletionTimestamp", Any),
    ("deletionGracePeriodSeconds", Any),
    ("labels", Any),
    ("annotations", Any),
    ("ownerReferences", Any),
    ("finalizers", Any),
    ("managedFields", Any),
];

const POD_SPEC: &[(&str, Shape)] = &[
    ("volumes", List("Volume")),
    ("initContainers", List("Container")),
    ("containers", List("Container")),
    ("ephemeralContainers", Any),
    ("restartPolicy", Any),
    ("terminationGracePeriodSeconds", Any),
    ("activeDeadlineSeconds", Any),
    ("dnsPolicy", Any),
    ("nodeSelector", Any),
    ("serviceAccountName", Any),
    ("serviceAccount", Any),
    ("automountServiceAccountToken", Any),
    ("nodeName", Any),
    ("hostNetwork", Any),
    ("hostPID", Any),
    ("hostIPC", Any),
    ("shareProcessNamespace", Any),
    ("securityContext", Any),
    ("imagePullSecrets", Any),
    ("hostname", Any),
    ("subdomain", Any),
    ("affinity", Any),
    ("schedulerName", Any),
    ("tolerations", Any),
    ("hostAliases", Any),
    ("priorityClassName", Any),
    ("priority", Any),
    ("dnsConfig", Any),
    ("readinessGates", Any),
    ("runtimeClassName", Any),
    ("enableServiceLinks", Any),
    ("preemptionPolicy", Any),
    ("overhead", Any),
    ("topologySpreadConstraints", Any),
    ("setHostnameAsFQDN", Any),
    ("os", Any),
    ("hostUsers", Any),
    ("schedulingGates", Any),
    ("resourceClaims", Any),
    ("resources", Any),
];

const CONTAINER: &[(&str, Shape)] = &[
    ("name", Any),
    ("image", Any),
    ("command", Any),
    ("args", Any),
    ("workingDir", Any),
    ("ports", List("ContainerPort")),
    ("envFrom", Any),
    ("env", List("EnvVar")),
    ("resources", Any),
    ("resizePolicy", Any),
    ("restartPolicy", Any),
    ("volumeMounts", List("VolumeMount")),
    ("volumeDevices", Any),
    ("livenessProbe", Any),
    ("readinessProbe", Any),
    ("startupProbe", Any),
    ("lifecycle", Any),
    ("terminationMessagePath", Any),
    ("terminationMessagePolicy", Any),
    ("imagePullPolicy", Any),
    ("securityContext", Any),
    ("stdin", Any),
    ("stdinOnce", Any),
    ("tty", Any),
];

const VOLUME: &[(&str, Shape)] = &[
    ("name", Any),
    ("hostPath", Any),
    ("emptyDir", Any),
    ("gcePersistentDisk", Any),
    ("awsElasticBlockStore", Any),
    ("gitRepo", Any),
    ("secret", Any),
    ("nfs", Any),
    ("iscsi", Any),
    ("glusterfs", Any),
    ("persistentVolumeClaim", Any),
    ("rbd", Any),
    ("flexVolume", Any),
    ("cinder", Any),
    ("cephfs", Any),
    ("flocker", Any),
    ("downwardAPI", Any),
    ("fc", Any),
    ("azureFile", Any),
    ("configMap", Any),
    ("vsphereVolume", Any),
    ("quobyte", Any),
    ("azureDisk", Any),
    ("photonPersistentDisk", Any),
    ("projected", Any),
    ("portworxVolume", Any),
    ("scaleIO", Any),
    ("storageos", Any),
    ("csi", Any),
    ("ephemeral", Any),
    ("image", Any),
];

const TYPES: &[(&str, &[(&str, Shape)])] = &[
    ("ObjectMeta", OBJECT_META),
    ("PodSpec", POD_SPEC),
    ("Container", CONTAINER),
    ("Volume", VOLUME),
    (
        "EnvVar",
        &[("name", Any), ("value", Any), ("valueFrom", Any)],
    ),
    (
        "VolumeMount",
        &[
            ("name", Any),
            ("readOnly", Any),
            ("recursiveReadOnly", Any),
            ("mountPath", Any),
            ("subPath", Any),
            ("mountPropagation", Any),
            ("subPathExpr", Any),
        ],
    ),
    (
        "ContainerPort",
        &[
            ("name", Any),
            ("hostPort", Any),
            ("containerPort", Any),
            ("protocol", Any),
            ("hostIP", Any),
        ],
    ),
    (
        "PodTemplateSpec",
        &[
            ("metadata", Object("ObjectMeta")),
            ("spec", Object("PodSpec")),
        ],
    ),
    (
        "DaemonSetSpec",
        &[
            ("selector", Any),
            ("template", Object("PodTemplateSpec")),
            ("updateStrategy", Any),
            ("minReadySeconds", Any),
            ("revisionHistoryLimit", Any),
        ],
    ),
    (
        "LabelSelector",
        &[
            ("matchLabels", Any),
            ("matchExpressions", List("LabelSelectorRequirement")),
        ],
    ),
    (
        "LabelSelectorRequirement",
        &[("key", Any), ("operator", Any), ("values", Any)],
    ),
    (
        "NetworkPolicySpec",
        &[
            ("podSelector", Object("LabelSelector")),
            ("ingress", List("NetworkPolicyIngressRule")),
            ("egress", List("NetworkPolicyEgressRule")),
            ("policyTypes", Any),
        ],
    ),
    (
        "NetworkPolicyIngressRule",
        &[
            ("ports", List("NetworkPolicyPort")),
            ("from", List("NetworkPolicyPeer")),
        ],
    ),
    (
        "NetworkPolicyEgressRule",
        &[
            ("ports", List("NetworkPolicyPort")),
            ("to", List("NetworkPolicyPeer")),
        ],
    ),
    (
        "NetworkPolicyPort",
        &[("protocol", Any), ("port", Any), ("endPort", Any)],
    ),
    (
        "NetworkPolicyPeer",
        &[
            ("podSelector", Object("LabelSelector")),
            ("namespaceSelector", Object("LabelSelector")),
            ("ipBlock", Object("IPBlock")),
        ],
    ),
    ("IPBlock", &[("cidr", Any), ("except", Any)]),
];

/// The top-level fields of each kind with a schema here (besides apiVersion, kind, metadata).
fn top_level(kind: &str) -> Option<&'static [(&'static str, Shape)]> {
    Some(match kind {
        "Pod" => &[("spec", Object("PodSpec")), ("status", Any)],
        "DaemonSet" => &[("spec", Object("DaemonSetSpec")), ("status", Any)],
        "Namespace" => &[("spec", Any), ("status", Any)],
        "ServiceAccount" => &[
            ("secrets", Any),
            ("imagePullSecrets", Any),
            ("automountServiceAccountToken", Any),
        ],
        "ConfigMap" => &[("data", Any), ("binaryData", Any), ("immutable", Any)],
        "ClusterRole" => &[("rules", Any), ("aggregationRule", Any)],
        "Role" => &[("rules", Any)],
        "ClusterRoleBinding" | "RoleBinding" => &[("subjects", Any), ("roleRef", Any)],
        "NetworkPolicy" => &[("spec", Object("NetworkPolicySpec"))],
        _ => return None,
    })
}

fn fields_of(ty: &str) -> &'static [(&'static str, Shape)] {
    TYPES
        .iter()
        .find(|(n, _)| *n == ty)
        .map(|(_, f)| *f)
        .unwrap_or(&[])
}

/// Removes the unknown fields of `v` (an object of `known`), collecting their paths.
fn walk(v: &mut Value, known: &[(&str, Shape)], path: &str, unknown: &mut Vec<String>) {
    let Value::Object(m) = v else { return };
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    m.retain(|k, _| {
        let ok = known.iter().any(|(f, _)| f == k);
        if !ok {
            unknown.push(join(k));
        }
        ok
    });
    for (field, shape) in known {
        let Some(child) = m.get_mut(*field) else {
            continue;
        };
        match shape {
            Any => {}
            Object(ty) => walk(child, fields_of(ty), &join(field), unknown),
            List(ty) => {
                if let Value::Array(items) = child {
                    for (i, item) in items.iter_mut().enumerate() {
                        walk(
                            item,
                            fields_of(ty),
                            &format!("{}[{i}]", join(field)),
                            unknown,
                        );
                    }
                }
            }
        }
    }
}

/// Applies the request's `fieldValidation` to `obj`: Strict refuses unknown fields (400, every
/// one named), anything else drops them, as the apiserver's decoder does.
pub fn check(
    rt: &ResourceType,
    obj: &mut Value,
    field_validation: Option<&str>,
) -> Result<(), ApiError> {
    let Some(top) = top_level(rt.kind) else {
        return Ok(());
    };
    let mut known: Vec<(&str, Shape)> = vec![
        ("apiVersion", Any),
        ("kind", Any),
        ("metadata", Object("ObjectMeta")),
    ];
    known.extend_from_slice(top);
    let mut unknown = Vec::new();
    walk(obj, &known, "", &mut unknown);
    if unknown.is_empty() || field_validation != Some("Strict") {
        if !unknown.is_empty() {
            tracing::debug!(kind = rt.kind, ?unknown, "dropped unknown fields");
        }
        return Ok(());
    }
    let list: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect();
    Err(ApiError::bad_request(format!(
        "{kind} in version \"{version}\" cannot be handled as a {kind}: strict decoding error: {}",
        list.join(", "),
        kind = rt.kind,
        version = rt.version,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::{DAEMON_SETS, NETWORK_POLICIES, NODES};
    use serde_json::json;

    #[test]
    fn strict_names_unknown_fields_and_otherwise_drops_them() {
        let ds = json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "d", "labelz": {}},
            "spec": {"template": {"spec": {
                "containers": [{"name": "c", "image": "i", "imagePullPolicyy": "Always",
                                "env": [{"name": "A", "valu": "1"}],
                                "securityContext": {"anything": true}}]}}}});
        let mut strict = ds.clone();
        let e = check(&DAEMON_SETS, &mut strict, Some("Strict")).unwrap_err();
        assert_eq!(e.code, 400);
        assert!(
            e.message.contains("unknown field \"metadata.labelz\""),
            "{}",
            e.message
        );
        assert!(
            e.message
                .contains("unknown field \"spec.template.spec.containers[0].imagePullPolicyy\""),
            "{}",
            e.message
        );
        assert!(
            e.message.contains("containers[0].env[0].valu"),
            "{}",
            e.message
        );
        let mut lax = ds.clone();
        check(&DAEMON_SETS, &mut lax, Some("Warn")).unwrap();
        let c = &lax["spec"]["template"]["spec"]["containers"][0];
        assert!(c.get("imagePullPolicyy").is_none());
        assert_eq!(
            c["securityContext"]["anything"], true,
            "deeper structures are kept"
        );
        // A NetworkPolicy is checked down to its selectors and peers.
        let np = json!({"spec": {"podSelector": {"matchLabel": {"app": "x"}},
            "ingress": [{"from": [{"namespaceSelector": {}, "ipBlok": {}}],
                         "ports": [{"port": 80, "protocl": "TCP"}]}],
            "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "excpt": []}}]}]},
            "status": {}});
        let e = check(&NETWORK_POLICIES, &mut np.clone(), Some("Strict")).unwrap_err();
        for f in [
            "status",
            "spec.podSelector.matchLabel",
            "spec.ingress[0].ports[0].protocl",
            "spec.ingress[0].from[0].ipBlok",
            "spec.egress[0].to[0].ipBlock.excpt",
        ] {
            assert!(
                e.message.contains(&format!("unknown field \"{f}\"")),
                "{f}: {}",
                e.message
            );
        }
        // Kinds without a schema here are left alone.
        let mut node = json!({"metadata": {"name": "n"}, "whatever": 1});
        check(&NODES, &mut node, Some("Strict")).unwrap();
        assert_eq!(node["whatever"], 1);
    }
}

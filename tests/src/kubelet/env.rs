//! Container environment as kubelet builds it: the API server's address
//! (what in-cluster config reads), then the container's `env` with
//! `fieldRef` resolved, and `$(VAR)` expanded in values, command and args.

use k8s_cri::v1::KeyValue;
use k8s_openapi::api::core::v1::{EnvVar, Pod};

use super::fields::only_known;
use super::TranslateError;

/// What `fieldRef`s can resolve to, besides the Pod object itself.
#[derive(Debug, Clone, Default)]
pub struct EnvFacts {
    pub node_name: String,
    pub host_ip: Option<String>,
    pub pod_ip: Option<String>,
    pub api_host: String,
    pub api_port: u16,
}

/// The container's environment, in order, names unique (the container's own
/// entries override the service variables, like kubelet).
pub fn container_env(
    pod: &Pod,
    env: Option<&Vec<EnvVar>>,
    facts: &EnvFacts,
    path: &str,
) -> Result<Vec<KeyValue>, TranslateError> {
    let mut out = vec![
        kv("KUBERNETES_SERVICE_HOST", &facts.api_host),
        kv("KUBERNETES_SERVICE_PORT", &facts.api_port.to_string()),
        kv("KUBERNETES_SERVICE_PORT_HTTPS", &facts.api_port.to_string()),
    ];
    for (i, var) in env.into_iter().flatten().enumerate() {
        let field = format!("{path}.env[{i}]");
        let value = env_value(pod, var, facts, &field)?;
        let value = expand(&value, &out);
        out.retain(|e| e.key != var.name);
        out.push(kv(&var.name, &value));
    }
    Ok(out)
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: value.to_string(),
    }
}

fn env_value(
    pod: &Pod,
    var: &EnvVar,
    facts: &EnvFacts,
    field: &str,
) -> Result<String, TranslateError> {
    let Some(from) = &var.value_from else {
        return Ok(var.value.clone().unwrap_or_default());
    };
    only_known(from, &format!("{field}.valueFrom"), &["fieldRef"])?;
    let Some(field_ref) = &from.field_ref else {
        return Err(TranslateError::Invalid {
            field: format!("{field}.valueFrom"),
            reason: "empty valueFrom".into(),
        });
    };
    field_path(pod, &field_ref.field_path, facts).ok_or_else(|| TranslateError::Unsupported {
        field: format!(
            "{field}.valueFrom.fieldRef.fieldPath={}",
            field_ref.field_path
        ),
    })
}

/// The downward-API paths the driver resolves; `None` for any other.
pub fn field_path(pod: &Pod, path: &str, facts: &EnvFacts) -> Option<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => Some(meta.namespace.clone().unwrap_or_else(|| "default".into())),
        "metadata.uid" => meta.uid.clone(),
        "spec.nodeName" => Some(facts.node_name.clone()),
        "spec.serviceAccountName" => Some(
            spec.and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".into()),
        ),
        "status.hostIP" => facts.host_ip.clone(),
        "status.podIP" => facts.pod_ip.clone(),
        _ => None,
    }
}

/// kubelet's `$(VAR)` expansion: a defined variable is replaced, `$$`
/// becomes `$`, anything else is left as written.
pub fn expand(text: &str, env: &[KeyValue]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos + 1..];
        if let Some(after) = tail.strip_prefix('$') {
            out.push('$');
            rest = after;
        } else if let Some((name, after)) = tail.strip_prefix('(').and_then(|t| t.split_once(')')) {
            match env.iter().rev().find(|e| e.key == name) {
                Some(e) => out.push_str(&e.value),
                None => out.push_str(&rest[pos..pos + name.len() + 3]),
            }
            rest = after;
        } else {
            out.push('$');
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{EnvVarSource, ObjectFieldSelector};

    fn field_env(name: &str, path: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: path.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn pod() -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some("trellis-abc".into());
        pod.metadata.namespace = Some("trellis-system".into());
        pod
    }

    fn facts() -> EnvFacts {
        EnvFacts {
            node_name: "node-1".into(),
            api_host: "10.0.0.1".into(),
            api_port: 6443,
            ..Default::default()
        }
    }

    #[test]
    fn field_refs_and_service_address_are_resolved() {
        let env = vec![
            field_env("NODE_NAME", "spec.nodeName"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
            field_env("POD_NAME", "metadata.name"),
            EnvVar {
                name: "WHERE".into(),
                value: Some("$(NODE_NAME)/$(MISSING)/$$(NODE_NAME)".into()),
                ..Default::default()
            },
        ];
        let out = container_env(&pod(), Some(&env), &facts(), "c").expect("valid");
        let get = |k: &str| out.iter().find(|e| e.key == k).map(|e| e.value.as_str());
        assert_eq!(get("KUBERNETES_SERVICE_HOST"), Some("10.0.0.1"));
        assert_eq!(get("KUBERNETES_SERVICE_PORT"), Some("6443"));
        assert_eq!(get("NODE_NAME"), Some("node-1"));
        assert_eq!(get("POD_NAMESPACE"), Some("trellis-system"));
        assert_eq!(get("POD_NAME"), Some("trellis-abc"));
        assert_eq!(get("WHERE"), Some("node-1/$(MISSING)/$(NODE_NAME)"));
    }

    #[test]
    fn unknown_sources_and_paths_are_named() {
        let env = vec![field_env("X", "metadata.labels['a']")];
        let err = container_env(&pod(), Some(&env), &facts(), "spec.containers[0]")
            .expect_err("unsupported");
        assert_eq!(
            err.to_string(),
            "spec.containers[0].env[0].valueFrom.fieldRef.fieldPath=metadata.labels['a']: not supported by the test node driver"
        );
        let secret = EnvVar {
            name: "S".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(Default::default()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let err = container_env(&pod(), Some(&vec![secret]), &facts(), "c").expect_err("secret");
        assert_eq!(
            err.to_string(),
            "c.env[0].valueFrom.secretKeyRef: not supported by the test node driver"
        );
    }
}

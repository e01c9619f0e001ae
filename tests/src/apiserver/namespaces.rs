//! Namespace lifecycle, as the apiserver's NamespaceLifecycle admission plugin and namespace
//! controller behave: the system namespaces always exist, a create into a namespace that does
//! not exist is refused with 404 (`namespaces "x" not found`) and into one being deleted with
//! 403, and deleting a Namespace marks it Terminating, then (after [`FINALIZE_AFTER`], as the
//! controller does asynchronously) deletes everything in it and finally the Namespace itself.
//!
//! The delay matters to clients: `kubectl delete -k` deletes the Namespace first and its
//! contents next, which works against a real cluster only because the contents outlive the
//! Namespace's DELETE for a while.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::resources::{self, ResourceType, CONFIGMAPS, NAMESPACES};
use super::server::ServerState;
use super::status::ApiError;
use super::store::{Change, Store};
use super::util;

/// Created at start when missing, as the apiserver's system-namespaces controller does.
pub const SYSTEM_NAMESPACES: [&str; 4] =
    ["default", "kube-system", "kube-public", "kube-node-lease"];

/// These may not be deleted (the apiserver answers 403).
const UNDELETABLE: [&str; 3] = ["default", "kube-system", "kube-public"];

/// How long a deleted Namespace stays Terminating before its contents go.
pub const FINALIZE_AFTER: Duration = Duration::from_secs(1);

/// What a create into a missing namespace does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamespacePolicy {
    /// Refused with 404, as the apiserver does.
    Required,
    /// The Namespace is created first: for tests written before the emulator served
    /// Namespaces, which create ConfigMaps in namespaces they never made.
    Implicit,
}

impl std::str::FromStr for NamespacePolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "required" => Ok(NamespacePolicy::Required),
            "implicit" => Ok(NamespacePolicy::Implicit),
            other => Err(format!("{other:?}: expected required or implicit")),
        }
    }
}

fn key(name: &str) -> (u8, String, String) {
    (NAMESPACES.id, String::new(), name.to_string())
}

/// A Namespace as the apiserver stores a new one.
pub fn new_namespace(name: &str, now: i64) -> Value {
    let mut ns = json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "uid": util::new_uid(),
                     "creationTimestamp": util::rfc3339(now)},
    });
    defaults(&mut ns);
    ns
}

/// What the apiserver fills into every Namespace: the immutable `kubernetes.io/metadata.name`
/// label, the `kubernetes` finalizer and phase Active.
pub fn defaults(ns: &mut Value) {
    let name = ns["metadata"]["name"].clone();
    if !ns["metadata"]["labels"].is_object() {
        ns["metadata"]["labels"] = json!({});
    }
    ns["metadata"]["labels"]["kubernetes.io/metadata.name"] = name;
    if !ns["spec"]["finalizers"].is_array() {
        ns["spec"]["finalizers"] = json!(["kubernetes"]);
    }
    if ns["status"]["phase"].as_str().is_none_or(str::is_empty) {
        ns["status"]["phase"] = json!("Active");
    }
}

/// The ConfigMap kube-controller-manager's root-ca-cert-publisher keeps in every namespace:
/// what a Pod's projected `ca.crt` comes from.
pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";

/// Creates the system namespaces that are missing, and their `kube-root-ca.crt` (at start,
/// after restoring state).
pub fn seed(store: &Store, ca_pem: &str) -> Result<(), ApiError> {
    let now = util::unix_now();
    for name in SYSTEM_NAMESPACES {
        if store.get(&key(name)).is_none() {
            store.mutate(key(name), |cur| match cur {
                Some(v) => Ok(Change::Put(v.clone())),
                None => Ok(Change::Put(new_namespace(name, now))),
            })?;
        }
        publish_root_ca(store, name, ca_pem)?;
    }
    Ok(())
}

/// Creates `kube-root-ca.crt` with the emulator's CA in namespace `ns` when missing, as the
/// root-ca-cert-publisher does for every new namespace.
pub fn publish_root_ca(store: &Store, ns: &str, ca_pem: &str) -> Result<(), ApiError> {
    let key = (CONFIGMAPS.id, ns.to_string(), ROOT_CA_CONFIGMAP.to_string());
    if store.get(&key).is_some() {
        return Ok(());
    }
    let cm = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": ROOT_CA_CONFIGMAP,
            "namespace": ns,
            "uid": util::new_uid(),
            "creationTimestamp": util::rfc3339(util::unix_now()),
            "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."},
        },
        "data": {"ca.crt": ca_pem},
    });
    store.mutate(key, |cur| match cur {
        Some(v) => Ok(Change::Put(v.clone())),
        None => Ok(Change::Put(cm)),
    })?;
    Ok(())
}

/// Admission of a create of a `rt` object into namespace `ns`.
pub fn admit_create(
    store: &Store,
    policy: NamespacePolicy,
    ca_pem: &str,
    rt: &ResourceType,
    ns: &str,
) -> Result<(), ApiError> {
    if !rt.namespaced {
        return Ok(());
    }
    match store.get(&key(ns)) {
        Some(o) if o.value()["metadata"]["deletionTimestamp"].is_string() => {
            Err(ApiError::namespace_terminating(ns))
        }
        Some(_) => Ok(()),
        None if policy == NamespacePolicy::Implicit => {
            let now = util::unix_now();
            store.mutate(key(ns), |cur| match cur {
                Some(v) => Ok(Change::Put(v.clone())),
                None => Ok(Change::Put(new_namespace(ns, now))),
            })?;
            tracing::debug!(namespace = ns, "created a namespace implicitly");
            publish_root_ca(store, ns, ca_pem)
        }
        None => Err(ApiError::namespace_not_found(ns)),
    }
}

/// `DELETE /api/v1/namespaces/NAME`: marks it Terminating and schedules its finalization.
/// Answers the Namespace as now stored (200), as the apiserver does for a graceful delete.
pub fn delete(
    state: &Arc<ServerState>,
    name: &str,
) -> Result<Arc<super::store::StoredObject>, ApiError> {
    if UNDELETABLE.contains(&name) {
        return Err(ApiError {
            code: 403,
            reason: "Forbidden",
            message: format!(
                "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
            ),
            details: Some(json!({"name": name, "kind": "namespaces"})),
        });
    }
    let now = util::unix_now();
    let stored = state.store.mutate(key(name), |cur| {
        let mut ns = cur
            .cloned()
            .ok_or_else(|| ApiError::not_found(&NAMESPACES, name))?;
        if !ns["metadata"]["deletionTimestamp"].is_string() {
            ns["metadata"]["deletionTimestamp"] = json!(util::rfc3339(now));
            ns["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        }
        ns["status"]["phase"] = json!("Terminating");
        Ok(Change::Put(ns))
    })?;
    schedule_finalize(state.clone(), name.to_string());
    Ok(stored)
}

/// Resumes the finalization of namespaces left Terminating by a previous run.
pub fn resume_terminating(state: &Arc<ServerState>) {
    let (_, objects) = state.store.snapshot();
    for o in super::store::range(&objects, NAMESPACES.id, None, None) {
        if o.value()["metadata"]["deletionTimestamp"].is_string() {
            schedule_finalize(state.clone(), o.name.clone());
        }
    }
}

fn schedule_finalize(state: Arc<ServerState>, name: String) {
    tokio::spawn(async move {
        tokio::time::sleep(FINALIZE_AFTER).await;
        finalize(&state.store, &name);
    });
}

/// Deletes every object in namespace `name`, then the Namespace. Synchronous: no object in it
/// runs finalizers of its own in the emulator.
pub fn finalize(store: &Store, name: &str) {
    let (_, objects) = store.snapshot();
    let keys: Vec<_> = resources::RESOURCES
        .iter()
        .filter(|rt| rt.namespaced)
        .flat_map(|rt| super::store::range(&objects, rt.id, Some(name), None))
        .map(|o| o.key())
        .collect();
    for k in keys {
        // Already gone (deleted meanwhile) is fine.
        let _ = store.mutate(k, |_| Ok(Change::Delete));
    }
    match store.mutate(key(name), |_| Ok(Change::Delete)) {
        Ok(_) => tracing::info!(namespace = name, "namespace deleted with its contents"),
        Err(e) => tracing::debug!(namespace = name, error = %e, "namespace already gone"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::store::StoreLimits;

    #[test]
    fn creates_need_an_existing_active_namespace() {
        let s = Store::new(StoreLimits::default());
        seed(&s, "PEM").unwrap();
        let ca = s.get(&(
            CONFIGMAPS.id,
            "kube-public".into(),
            ROOT_CA_CONFIGMAP.into(),
        ));
        assert_eq!(
            ca.map(|c| c.value()["data"]["ca.crt"].clone()),
            Some(json!("PEM"))
        );
        let req = NamespacePolicy::Required;
        assert!(admit_create(&s, req, "PEM", &CONFIGMAPS, "kube-system").is_ok());
        let e = admit_create(&s, req, "PEM", &CONFIGMAPS, "nope").unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (404, "namespaces \"nope\" not found")
        );
        assert!(admit_create(&s, NamespacePolicy::Implicit, "PEM", &CONFIGMAPS, "nope").is_ok());
        assert!(
            admit_create(&s, req, "PEM", &CONFIGMAPS, "nope").is_ok(),
            "created implicitly"
        );
        let cm = json!({"metadata": {"name": "c", "namespace": "nope", "resourceVersion": "1"}});
        s.mutate((CONFIGMAPS.id, "nope".into(), "c".into()), |_| {
            Ok(Change::Put(cm))
        })
        .unwrap();
        finalize(&s, "nope");
        assert!(s.get(&key("nope")).is_none());
        assert!(s.get(&(CONFIGMAPS.id, "nope".into(), "c".into())).is_none());
    }

    #[test]
    fn finalizing_deletes_every_namespaced_kind_and_only_in_that_namespace() {
        use crate::apiserver::resources::{NETWORK_POLICIES, PODS};
        let s = Store::new(StoreLimits::default());
        seed(&s, "PEM").unwrap();
        let put = |rt: &ResourceType, ns: &str, name: &str| {
            let o = json!({"metadata": {"name": name, "namespace": ns}});
            s.mutate((rt.id, ns.into(), name.into()), |_| Ok(Change::Put(o)))
                .unwrap();
        };
        admit_create(&s, NamespacePolicy::Implicit, "PEM", &PODS, "doomed").unwrap();
        for rt in [&NETWORK_POLICIES, &PODS] {
            put(rt, "doomed", "x");
            put(rt, "default", "x");
        }
        finalize(&s, "doomed");
        for rt in [&NETWORK_POLICIES, &PODS] {
            assert!(s.get(&(rt.id, "doomed".into(), "x".into())).is_none());
            assert!(s.get(&(rt.id, "default".into(), "x".into())).is_some());
        }
    }

    #[test]
    fn new_namespaces_carry_the_apiservers_defaults() {
        let ns = new_namespace("a", 0);
        assert_eq!(ns["metadata"]["labels"]["kubernetes.io/metadata.name"], "a");
        assert_eq!(ns["spec"]["finalizers"], json!(["kubernetes"]));
        assert_eq!(ns["status"]["phase"], "Active");
    }
}

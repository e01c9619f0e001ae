//! Deleting an object as the apiserver and the garbage collector do: Pods bound to a node and
//! still running are deleted gracefully (marked with `deletionTimestamp` and
//! `deletionGracePeriodSeconds`, left for the node's kubelet, or a node driver, to stop and then
//! delete with grace 0), everything else at once; and the dependents of a deleted object (whose
//! `ownerReferences` name it: a DaemonSet's Pods) are deleted with it unless the request asked
//! `propagationPolicy: Orphan`, in which case the reference is removed instead. The cascade is
//! synchronous: the emulator runs no controllers that would need to see the owner first.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{json, Value};

use super::resources::{self, ResourceType};
use super::server::ServerState;
use super::status::ApiError;
use super::store::{self, Change, StoredObject};
use super::util;

/// The DeleteOptions that matter here, from the body and the query (the body wins, as in the
/// apiserver, when both are given).
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub grace_seconds: Option<i64>,
    pub orphan: bool,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

impl Options {
    pub fn parse(body: &Value, q: &HashMap<String, String>) -> Result<Self, ApiError> {
        let grace =
            match (&body["gracePeriodSeconds"], q.get("gracePeriodSeconds")) {
                (Value::Null, None) => None,
                (Value::Null, Some(s)) => Some(s.parse::<i64>().map_err(|_| {
                    ApiError::bad_request(format!("gracePeriodSeconds {s:?} is not an integer"))
                })?),
                (v, _) => Some(v.as_i64().ok_or_else(|| {
                    ApiError::bad_request("gracePeriodSeconds must be an integer")
                })?),
            };
        let policy = body["propagationPolicy"]
            .as_str()
            .or(q.get("propagationPolicy").map(String::as_str));
        let orphan_flag = body["orphanDependents"].as_bool() == Some(true);
        Ok(Options {
            grace_seconds: grace.map(|g| g.max(0)),
            orphan: policy == Some("Orphan") || (policy.is_none() && orphan_flag),
            uid: body["preconditions"]["uid"].as_str().map(str::to_string),
            resource_version: body["preconditions"]["resourceVersion"]
                .as_str()
                .map(str::to_string),
        })
    }
}

/// The grace a delete of `old` gets (podStrategy.CheckGracefulDelete): none for anything but a
/// Pod, none for a Pod no node runs (unbound, or finished).
fn grace_for(rt: &ResourceType, old: &Value, asked: Option<i64>) -> i64 {
    if rt.kind != "Pod" {
        return 0;
    }
    let unbound = old["spec"]["nodeName"].as_str().is_none_or(str::is_empty);
    let finished = matches!(
        old["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    );
    if unbound || finished {
        return 0;
    }
    asked
        .or(old["spec"]["terminationGracePeriodSeconds"].as_i64())
        .unwrap_or(30)
        .max(0)
}

fn preconditions(rt: &ResourceType, name: &str, old: &Value, o: &Options) -> Result<(), ApiError> {
    let meta = &old["metadata"];
    let checks = [
        ("UID", "uid", &o.uid),
        ("ResourceVersion", "resourceVersion", &o.resource_version),
    ];
    for (label, field, wanted) in checks {
        let Some(wanted) = wanted else { continue };
        let actual = meta[field].as_str();
        if actual != Some(wanted.as_str()) {
            return Err(ApiError::precondition_failed(
                rt,
                name,
                &format!(
                    "{label} in precondition: {wanted}, {label} in object meta: {}",
                    actual.unwrap_or("")
                ),
            ));
        }
    }
    Ok(())
}

/// Deletes (or starts the graceful deletion of) one object, then its dependents. Returns the
/// object as last stored: the deleted one, or the one now carrying `deletionTimestamp`.
pub fn delete(
    state: &Arc<ServerState>,
    rt: &'static ResourceType,
    ns: Option<&str>,
    name: &str,
    o: &Options,
) -> Result<Arc<StoredObject>, ApiError> {
    let now = util::unix_now();
    let mut gone = false;
    let key = (rt.id, ns.unwrap_or("").to_string(), name.to_string());
    let stored = state.store.mutate(key, |cur| {
        let old = cur.ok_or_else(|| ApiError::not_found(rt, name))?;
        preconditions(rt, name, old, o)?;
        let grace = grace_for(rt, old, o.grace_seconds);
        // A graceful deletion already under way only ever gets shorter.
        let current = old["metadata"]["deletionGracePeriodSeconds"].as_i64();
        if grace == 0 {
            gone = true;
            return Ok(Change::Delete);
        }
        let mut v = old.clone();
        if current.is_none_or(|c| grace < c) {
            v["metadata"]["deletionTimestamp"] = json!(util::rfc3339(now + grace));
            v["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
        }
        Ok(Change::Put(v))
    })?;
    if gone {
        let uid = stored.value()["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        cascade(state, &uid, &stored.namespace, o.orphan);
    }
    Ok(stored)
}

/// The dependents of the deleted object `uid` (in its namespace, or anywhere when it was
/// cluster-scoped): deleted when it was their last owner, else (and when orphaning) the
/// reference to it is removed.
fn cascade(state: &Arc<ServerState>, uid: &str, namespace: &str, orphan: bool) {
    if uid.is_empty() {
        return;
    }
    let (_, objects) = state.store.snapshot();
    let dependents: Vec<Arc<StoredObject>> = resources::RESOURCES
        .iter()
        .flat_map(|rt| {
            let ns = (rt.namespaced && !namespace.is_empty()).then_some(namespace);
            store::range(&objects, rt.id, ns, None)
        })
        .filter(|o| owners(&o.value()).iter().any(|u| u == uid))
        .cloned()
        .collect();
    for d in dependents {
        let v = d.value();
        let last_owner = owners(&v).iter().all(|u| u == uid);
        let ns = (!d.namespace.is_empty()).then_some(d.namespace.as_str());
        let result = if last_owner && !orphan {
            delete(state, d.resource(), ns, &d.name, &Options::default()).map(|_| ())
        } else {
            state
                .store
                .mutate(d.key(), |cur| {
                    let mut v = cur
                        .cloned()
                        .ok_or_else(|| ApiError::not_found(d.resource(), &d.name))?;
                    if let Some(refs) = v["metadata"]["ownerReferences"].as_array_mut() {
                        refs.retain(|r| r["uid"].as_str() != Some(uid));
                    }
                    if v["metadata"]["ownerReferences"]
                        .as_array()
                        .is_some_and(Vec::is_empty)
                    {
                        if let Some(m) = v["metadata"].as_object_mut() {
                            m.remove("ownerReferences");
                        }
                    }
                    Ok(Change::Put(v))
                })
                .map(|_| ())
        };
        if let Err(e) = result {
            tracing::debug!(name = d.name, error = %e, "dependent already gone");
        }
    }
}

fn owners(v: &Value) -> Vec<String> {
    v["metadata"]["ownerReferences"]
        .as_array()
        .map(|refs| {
            refs.iter()
                .filter_map(|r| r["uid"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::{CONFIGMAPS, PODS};

    #[test]
    fn only_running_bound_pods_get_a_grace_period() {
        let bound = json!({"spec": {"nodeName": "n1", "terminationGracePeriodSeconds": 10},
                           "status": {"phase": "Running"}});
        assert_eq!(grace_for(&PODS, &bound, None), 10);
        assert_eq!(grace_for(&PODS, &bound, Some(0)), 0);
        assert_eq!(grace_for(&PODS, &bound, Some(3)), 3);
        let unbound = json!({"spec": {}, "status": {"phase": "Pending"}});
        assert_eq!(grace_for(&PODS, &unbound, None), 0);
        let done = json!({"spec": {"nodeName": "n1"}, "status": {"phase": "Succeeded"}});
        assert_eq!(grace_for(&PODS, &done, None), 0);
        assert_eq!(grace_for(&CONFIGMAPS, &bound, None), 0);
    }

    #[test]
    fn options_from_body_and_query() {
        let q: HashMap<String, String> =
            [("gracePeriodSeconds".to_string(), "5".to_string())].into();
        let o = Options::parse(&Value::Null, &q).unwrap();
        assert_eq!(o.grace_seconds, Some(5));
        let o = Options::parse(
            &json!({"gracePeriodSeconds": 0, "propagationPolicy": "Orphan"}),
            &q,
        )
        .unwrap();
        assert_eq!((o.grace_seconds, o.orphan), (Some(0), true));
        assert!(Options::parse(
            &Value::Null,
            &[("gracePeriodSeconds".into(), "x".into())].into()
        )
        .is_err());
    }
}

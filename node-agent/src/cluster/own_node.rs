//! Our own Node: wait for its podCIDRs, read what the operator and our previous run left on it,
//! advertise our annotations, and clear `NetworkUnavailable`.
//!
//! Writes are minimal and idempotent: a JSON merge patch touching only trellis's annotation
//! keys, sent only when a value differs; the condition is patched only when it is not already
//! ours, so restarts do not bump `lastTransitionTime` or wake every peer's watcher.
//!
//! Both writes go to `nodes/NAME/status`, as flannel's do: the apiserver keeps the metadata of a
//! Node status write and resets its spec, so the agent's RBAC needs no `patch` on `nodes`, a
//! grant with which any one node's token could taint or cordon every Node.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use futures::StreamExt;
use ipnetwork::{Ipv4Network, Ipv6Network};
use k8s_openapi::api::core::v1::{Node, NodeCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{json, Map, Value};

use super::backoff::{Backoff, BackoffPolicy};
use super::events::reason::NETWORK_READY;
use super::MANAGER;
use crate::annotations::{self, AnnotationError, AnnotationKeys};
use crate::net::Mac;
use crate::view::{parse_pod_cidrs, NodeInfo, SkipReason};

pub const NETWORK_UNAVAILABLE: &str = "NetworkUnavailable";
pub const NETWORK_READY_MESSAGE: &str = "trellis is running on this node";

#[derive(Debug, thiserror::Error)]
pub enum OwnNodeError {
    #[error("{op} Node {node}: {source}")]
    Api {
        op: &'static str,
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "Node {node} not found: NODE_NAME must be the name the kubelet registered \
         (see kubectl get nodes)"
    )]
    NotFound { node: String },
    #[error("Node {node} has an unusable spec.podCIDRs: {reason}")]
    BadPodCidr { node: String, reason: String },
    #[error("Node {node}: {source}; fix or remove the annotation")]
    BadOverwrite {
        node: String,
        #[source]
        source: AnnotationError,
    },
    #[error(
        "{op} Node {node}: refused (403 Forbidden): {message}; the agent's ServiceAccount \
         needs the grants of deploy/manifests/rbac.yaml (kubectl apply -k deploy)"
    )]
    Forbidden {
        op: &'static str,
        node: String,
        message: String,
    },
    #[error("the watch on Node {node} ended")]
    WatchEnded { node: String },
}

/// What the agent needs from its own Node to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnNodeState {
    pub name: String,
    pub uid: Option<String>,
    pub subnet_v4: Option<Ipv4Network>,
    pub subnet_v6: Option<Ipv6Network>,
    /// The operator's choice of public IPs ([`annotations::public_ip_override`]).
    pub public_ip_override_v4: Option<Ipv4Addr>,
    pub public_ip_override_v6: Option<Ipv6Addr>,
    /// The VTEP MACs a previous run advertised, to reuse so peers' entries stay valid.
    pub vtep_mac_v4: Option<Mac>,
    pub vtep_mac_v6: Option<Mac>,
}

impl OwnNodeState {
    /// `Ok(None)` while no podCIDR is assigned.
    pub fn from_parts(
        name: &str,
        uid: Option<&str>,
        pod_cidrs: &[String],
        annotations: &BTreeMap<String, String>,
        keys: &AnnotationKeys,
    ) -> Result<Option<OwnNodeState>, OwnNodeError> {
        let (subnet_v4, subnet_v6) = match parse_pod_cidrs(pod_cidrs) {
            Ok(s) => s,
            Err(SkipReason::NoPodCidr) => return Ok(None),
            Err(SkipReason::BadPodCidr(reason)) => {
                return Err(OwnNodeError::BadPodCidr {
                    node: name.to_string(),
                    reason,
                })
            }
            Err(other) => {
                return Err(OwnNodeError::BadPodCidr {
                    node: name.to_string(),
                    reason: other.to_string(),
                })
            }
        };
        let (public_ip_override_v4, public_ip_override_v6) =
            public_ip_override(name, keys, annotations)?;
        let (vtep_mac_v4, vtep_mac_v6) = annotations::advertised_vtep_macs(keys, annotations);
        Ok(Some(OwnNodeState {
            name: name.to_string(),
            uid: uid.map(str::to_string),
            subnet_v4,
            subnet_v6,
            public_ip_override_v4,
            public_ip_override_v6,
            vtep_mac_v4,
            vtep_mac_v6,
        }))
    }

    pub fn from_node(
        node: &Node,
        keys: &AnnotationKeys,
    ) -> Result<Option<OwnNodeState>, OwnNodeError> {
        let spec = node.spec.as_ref();
        let mut cidrs = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
        if cidrs.is_empty() {
            cidrs.extend(spec.and_then(|s| s.pod_cidr.clone()));
        }
        let empty = BTreeMap::new();
        Self::from_parts(
            node.metadata.name.as_deref().unwrap_or_default(),
            node.metadata.uid.as_deref(),
            &cidrs,
            node.metadata.annotations.as_ref().unwrap_or(&empty),
            keys,
        )
    }

    /// From what the Node watcher saw (it does not keep the uid).
    pub fn from_info(
        node: &NodeInfo,
        uid: Option<&str>,
        keys: &AnnotationKeys,
    ) -> Result<Option<OwnNodeState>, OwnNodeError> {
        Self::from_parts(&node.name, uid, &node.pod_cidrs, &node.annotations, keys)
    }
}

/// The operator's public IPs at start. An unreadable `*-overwrite` stops the start (the
/// operator asked for it explicitly; the message names it); an unreadable `node-public-ip`,
/// which flannel only reads as a default, is logged and ignored.
fn public_ip_override(
    name: &str,
    keys: &AnnotationKeys,
    annotations: &BTreeMap<String, String>,
) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>), OwnNodeError> {
    let (ips, problems) =
        annotations::public_ip_override_lenient(keys, annotations).map_err(|source| {
            OwnNodeError::BadOverwrite {
                node: name.to_string(),
                source,
            }
        })?;
    for p in problems {
        tracing::warn!(node = name, "{p}");
    }
    Ok(ips)
}

/// The merge patch that makes our keys on the Node equal `desired`, or `None` when they
/// already are. Our keys absent from `desired` are removed (e.g. `backend-v6-data` after IPv6
/// was turned off); keys of others are never touched.
pub fn annotation_patch(
    keys: &AnnotationKeys,
    current: &BTreeMap<String, String>,
    desired: &BTreeMap<String, String>,
) -> Option<Value> {
    let mut changes = Map::new();
    for key in keys.advertised() {
        match (current.get(key), desired.get(key)) {
            (Some(c), Some(d)) if c == d => {}
            (_, Some(d)) => {
                changes.insert(key.to_string(), Value::String(d.clone()));
            }
            (Some(_), None) => {
                changes.insert(key.to_string(), Value::Null);
            }
            (None, None) => {}
        }
    }
    for (key, d) in desired {
        if !keys.advertised().contains(&key.as_str()) && current.get(key) != Some(d) {
            changes.insert(key.clone(), Value::String(d.clone()));
        }
    }
    (!changes.is_empty()).then(|| json!({"metadata": {"annotations": changes}}))
}

/// The status patch setting `NetworkUnavailable=False` as flannel does (a strategic merge
/// patch: conditions merge by `type`), or `None` when the Node already says so for trellis.
pub fn network_available_patch(conditions: &[NodeCondition], now: Time) -> Option<Value> {
    let already = conditions.iter().any(|c| {
        c.type_ == NETWORK_UNAVAILABLE
            && c.status == "False"
            && c.reason.as_deref() == Some(NETWORK_READY)
    });
    if already {
        return None;
    }
    let condition = NodeCondition {
        type_: NETWORK_UNAVAILABLE.to_string(),
        status: "False".to_string(),
        reason: Some(NETWORK_READY.to_string()),
        message: Some(NETWORK_READY_MESSAGE.to_string()),
        last_transition_time: Some(now.clone()),
        last_heartbeat_time: Some(now),
    };
    Some(json!({"status": {"conditions": [condition]}}))
}

/// How [`OwnNode::wait_ready`] waits.
#[derive(Debug, Clone)]
pub struct WaitOptions {
    /// How often to repeat what the agent is waiting for.
    pub remind_every: Duration,
    pub backoff: BackoffPolicy,
}

impl Default for WaitOptions {
    fn default() -> Self {
        WaitOptions {
            remind_every: Duration::from_secs(30),
            backoff: BackoffPolicy::default(),
        }
    }
}

/// What is missing while waiting, for the log line.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Waiting {
    NoPodCidr,
    NotFound,
    Api(String),
}

pub struct OwnNode {
    api: Api<Node>,
    name: String,
    keys: AnnotationKeys,
}

impl OwnNode {
    pub fn new(client: Client, name: &str, keys: AnnotationKeys) -> Self {
        OwnNode {
            api: Api::all(client),
            name: name.to_string(),
            keys,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn api_err(&self, op: &'static str) -> impl FnOnce(kube::Error) -> OwnNodeError + '_ {
        move |source| match &source {
            kube::Error::Api(s) if s.code == 404 => OwnNodeError::NotFound {
                node: self.name.clone(),
            },
            kube::Error::Api(s) if s.code == 403 => OwnNodeError::Forbidden {
                op,
                node: self.name.clone(),
                message: s.message.clone(),
            },
            _ => OwnNodeError::Api {
                op,
                node: self.name.clone(),
                source,
            },
        }
    }

    /// Our Node, or `None` while it has no podCIDR.
    pub async fn read(&self) -> Result<Option<OwnNodeState>, OwnNodeError> {
        let node = self
            .api
            .get(&self.name)
            .await
            .map_err(self.api_err("get"))?;
        OwnNodeState::from_node(&node, &self.keys)
    }

    /// Waits until our Node exists and has `spec.podCIDRs`, saying what to fix meanwhile.
    /// API errors are retried; a malformed podCIDR or overwrite annotation is returned.
    pub async fn wait_ready(&self, opts: &WaitOptions) -> Result<OwnNodeState, OwnNodeError> {
        let stream = kube::runtime::watcher::watch_object(self.api.clone(), &self.name);
        let mut stream = std::pin::pin!(stream);
        let mut backoff = Backoff::new(opts.backoff);
        let mut waiting: Option<Waiting> = None;
        let mut logged: Option<Waiting> = None;
        let mut remind = tokio::time::Instant::now() + opts.remind_every;
        loop {
            tokio::select! {
                item = stream.next() => {
                    let mut retry_after = None;
                    waiting = Some(match item {
                        None => return Err(OwnNodeError::WatchEnded { node: self.name.clone() }),
                        Some(Ok(Some(node))) => {
                            backoff.reset();
                            match OwnNodeState::from_node(&node, &self.keys)? {
                                Some(state) => {
                                    tracing::info!(
                                        node = %self.name,
                                        v4 = ?state.subnet_v4,
                                        v6 = ?state.subnet_v6,
                                        "own Node has its podCIDRs"
                                    );
                                    return Ok(state);
                                }
                                None => Waiting::NoPodCidr,
                            }
                        }
                        Some(Ok(None)) => {
                            backoff.reset();
                            Waiting::NotFound
                        }
                        Some(Err(e)) => {
                            retry_after = Some(backoff.next_delay());
                            Waiting::Api(e.to_string())
                        }
                    });
                    if waiting != logged {
                        self.log_waiting(waiting.as_ref());
                        logged.clone_from(&waiting);
                        remind = tokio::time::Instant::now() + opts.remind_every;
                    }
                    if let Some(d) = retry_after {
                        tokio::time::sleep(d).await;
                    }
                }
                _ = tokio::time::sleep_until(remind) => {
                    self.log_waiting(waiting.as_ref());
                    remind = tokio::time::Instant::now() + opts.remind_every;
                }
            }
        }
    }

    fn log_waiting(&self, waiting: Option<&Waiting>) {
        let node = &self.name;
        match waiting {
            Some(Waiting::NoPodCidr) => tracing::warn!(
                "node {node} has no podCIDR: is the controller-manager running with \
                 --allocate-node-cidrs and --cluster-cidr? (waiting for spec.podCIDRs)"
            ),
            Some(Waiting::NotFound) => tracing::warn!(
                "node {node} not found: is NODE_NAME the name the kubelet registered \
                 (kubectl get nodes)? waiting for it to appear"
            ),
            Some(Waiting::Api(e)) => {
                tracing::warn!("cannot read node {node} from the API, retrying: {e}")
            }
            None => tracing::info!("waiting for node {node}"),
        }
    }

    /// Makes our annotations equal `desired` (from `Advertisement::to_annotations`), with a
    /// merge patch of `nodes/NAME/status` carrying only `metadata.annotations` (flannel's
    /// `PatchStatus`). Returns whether a patch was sent.
    pub async fn advertise(
        &self,
        desired: &BTreeMap<String, String>,
    ) -> Result<bool, OwnNodeError> {
        let node = self
            .api
            .get(&self.name)
            .await
            .map_err(self.api_err("get"))?;
        let empty = BTreeMap::new();
        let current = node.metadata.annotations.as_ref().unwrap_or(&empty);
        self.advertise_over(current, desired).await
    }

    /// [`OwnNode::advertise`] against annotations already known (the Node watcher's copy of
    /// our Node): no read, and no write at all when they already say what `desired` says.
    pub async fn advertise_over(
        &self,
        current: &BTreeMap<String, String>,
        desired: &BTreeMap<String, String>,
    ) -> Result<bool, OwnNodeError> {
        let Some(patch) = annotation_patch(&self.keys, current, desired) else {
            return Ok(false);
        };
        // Through the status subresource: the grant it needs cannot touch the Node's spec.
        self.api
            .patch_status(&self.name, &patch_params(), &Patch::Merge(&patch))
            .await
            .map_err(self.api_err("annotate (via nodes/status)"))?;
        tracing::info!(node = %self.name, patch = %patch, "advertised annotations");
        Ok(true)
    }

    /// Sets `NetworkUnavailable=False` (reason `TrellisIsUp`) on `nodes/NAME/status`, as
    /// `kubectl patch --subresource status --type strategic` would. Returns whether a patch
    /// was sent.
    pub async fn set_network_available(&self) -> Result<bool, OwnNodeError> {
        let node = self
            .api
            .get(&self.name)
            .await
            .map_err(self.api_err("get"))?;
        let conditions = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_deref())
            .unwrap_or_default();
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let Some(patch) = network_available_patch(conditions, now) else {
            return Ok(false);
        };
        self.api
            .patch_status(&self.name, &patch_params(), &Patch::Strategic(&patch))
            .await
            .map_err(self.api_err("patch status of"))?;
        tracing::info!(node = %self.name, "set NetworkUnavailable=False");
        Ok(true)
    }
}

fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(MANAGER.to_string()),
        ..PatchParams::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::annotations::DEFAULT_PREFIX;

    fn keys() -> AnnotationKeys {
        AnnotationKeys::default()
    }

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn k(suffix: &str) -> String {
        format!("{DEFAULT_PREFIX}{suffix}")
    }

    #[test]
    fn state_from_parts() {
        let a = ann(&[
            (&k("public-ip-overwrite"), "203.0.113.7"),
            (
                &k("backend-data"),
                r#"{"VNI":1,"VtepMAC":"0a:58:0a:f4:01:02"}"#,
            ),
        ]);
        let s = OwnNodeState::from_parts(
            "n1",
            Some("u"),
            &["10.244.1.0/24".into(), "fd00::/64".into()],
            &a,
            &keys(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.subnet_v4, Some("10.244.1.0/24".parse().unwrap()));
        assert_eq!(s.subnet_v6, Some("fd00::/64".parse().unwrap()));
        assert_eq!(
            s.public_ip_override_v4,
            Some("203.0.113.7".parse().unwrap())
        );
        assert_eq!(
            s.vtep_mac_v4.map(|m| m.to_string()).as_deref(),
            Some("0a:58:0a:f4:01:02")
        );
        assert_eq!(s.vtep_mac_v6, None);
        // No podCIDR yet: keep waiting.
        assert_eq!(
            OwnNodeState::from_parts("n1", None, &[], &a, &keys()).unwrap(),
            None
        );
        // Broken inputs are errors naming what to fix.
        let e =
            OwnNodeState::from_parts("n1", None, &["10.244.1.0".into()], &a, &keys()).unwrap_err();
        assert!(matches!(e, OwnNodeError::BadPodCidr { .. }), "{e}");
        let bad = ann(&[(&k("public-ip-overwrite"), "nope")]);
        let e = OwnNodeState::from_parts("n1", None, &["10.244.1.0/24".into()], &bad, &keys())
            .unwrap_err();
        assert!(e.to_string().contains("public-ip-overwrite"), "{e}");
        // node-public-ip is only a default (flannel's --public-ip): unreadable, it is ignored,
        // and the overwrite still counts.
        let cidrs = ["10.244.1.0/24".to_string()];
        let soft = ann(&[
            (&k("node-public-ip"), "nope"),
            (&k("public-ipv6-overwrite"), "2001:db8::9"),
        ]);
        let s = OwnNodeState::from_parts("n1", None, &cidrs, &soft, &keys())
            .unwrap()
            .unwrap();
        assert_eq!(s.public_ip_override_v4, None);
        assert_eq!(
            s.public_ip_override_v6,
            Some("2001:db8::9".parse().unwrap())
        );
    }

    #[test]
    fn state_from_a_node_with_only_the_old_pod_cidr() {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "n1", "uid": "u1"},
            "spec": {"podCIDR": "10.244.3.0/24"}
        }))
        .unwrap();
        let s = OwnNodeState::from_node(&node, &keys()).unwrap().unwrap();
        assert_eq!(s.subnet_v4, Some("10.244.3.0/24".parse().unwrap()));
        assert_eq!(s.uid.as_deref(), Some("u1"));
    }

    #[test]
    fn annotation_patch_touches_only_what_differs() {
        let desired = ann(&[
            (&k("backend-type"), "vxlan"),
            (&k("kube-subnet-manager"), "true"),
            (&k("public-ip"), "192.168.1.1"),
            (
                &k("backend-data"),
                r#"{"VNI":1,"VtepMAC":"0a:58:0a:f4:01:02"}"#,
            ),
        ]);
        let mut current = desired.clone();
        current.insert("node.alpha.kubernetes.io/ttl".into(), "0".into());
        current.insert(k("public-ip-overwrite"), "203.0.113.7".into());
        assert_eq!(annotation_patch(&keys(), &current, &desired), None);

        current.insert(k("backend-type"), "host-gw".into());
        current.insert(k("backend-v6-data"), "null".into());
        current.insert(k("public-ipv6"), "fd00::1".into());
        current.remove(&k("public-ip"));
        let p = annotation_patch(&keys(), &current, &desired).unwrap();
        assert_eq!(
            p,
            json!({"metadata": {"annotations": {
                k("backend-type"): "vxlan",
                k("public-ip"): "192.168.1.1",
                k("backend-v6-data"): null,
                k("public-ipv6"): null,
            }}})
        );
    }

    #[test]
    fn condition_patch_only_when_not_already_ours() {
        let now = Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).unwrap());
        let p = network_available_patch(&[], now.clone()).unwrap();
        let c = &p["status"]["conditions"][0];
        assert_eq!(c["type"], "NetworkUnavailable");
        assert_eq!(c["status"], "False");
        assert_eq!(c["reason"], "TrellisIsUp");
        assert_eq!(c["lastTransitionTime"], "2023-11-14T22:13:20Z");
        // Set by someone else (flannel, or the cloud route controller) or True: take over.
        let flannel = NodeCondition {
            type_: NETWORK_UNAVAILABLE.into(),
            status: "False".into(),
            reason: Some("FlannelIsUp".into()),
            ..NodeCondition::default()
        };
        assert!(network_available_patch(std::slice::from_ref(&flannel), now.clone()).is_some());
        let ours = NodeCondition {
            reason: Some(NETWORK_READY.into()),
            ..flannel
        };
        assert!(network_available_patch(&[ours], now).is_none());
    }
}

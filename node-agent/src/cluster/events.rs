//! Events on our own Node, so `kubectl describe node` shows what trellis did and what it
//! refused.
//!
//! Events are best-effort: publishing never fails the caller, and is bounded in time so an
//! unreachable API cannot stall a watcher or the reconcile loop. kube's recorder writes
//! `events.k8s.io/v1` Events (in `default`, as the kubelet does for Nodes) and folds repeats
//! within a few minutes into a series instead of new objects.

use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Client;

use crate::config::BackendType;

use super::MANAGER;

/// Where Events about our (cluster-scoped) Node live: where kube's recorder puts them and the
/// kubelet writes its own. deploy/manifests/rbac.yaml grants Event writes in this namespace only.
pub const EVENT_NAMESPACE: &str = "default";

/// How long one publish may take before it is given up.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// Reasons, stable for alerting on them.
pub mod reason {
    pub const BACKEND_SWITCHED: &str = "BackendSwitched";
    pub const INVALID_CONFIG: &str = "InvalidNetConfig";
    /// A valid net-conf.json whose backend this node's kernel lacks (its own reason: the
    /// recorder folds repeats of one reason into a series that keeps the first note).
    pub const BACKEND_UNSUPPORTED: &str = "BackendUnsupported";
    pub const NETWORK_READY: &str = "TrellisIsUp";
    pub const HOST_NOT_READY: &str = "HostNotReady";
    pub const PEER_SKIPPED: &str = "PeerSkipped";
    /// On a NetworkPolicy: it cannot be enforced as written, so its pods get deny-all.
    pub const POLICY_INVALID: &str = "NetworkPolicyInvalid";
}

#[derive(Clone)]
pub struct NodeEvents {
    recorder: Recorder,
    client: Client,
    node_name: String,
    node: ObjectReference,
    timeout: Duration,
}

impl NodeEvents {
    /// Events regarding Node `node_name`. `uid` is the Node's `metadata.uid` when known; the
    /// kubelet uses the node name there, which is what `kubectl describe` falls back to.
    pub fn new(client: Client, node_name: &str, uid: Option<&str>) -> Self {
        let reporter = Reporter {
            controller: MANAGER.to_string(),
            instance: Some(format!("{MANAGER}-{node_name}")),
        };
        NodeEvents {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            node_name: node_name.to_string(),
            node: node_reference(node_name, uid),
            timeout: PUBLISH_TIMEOUT,
        }
    }

    /// Publishes; returns whether the API accepted it. Failures are logged, not returned:
    /// no caller should behave differently because an Event was lost.
    pub async fn emit(&self, type_: EventType, reason: &str, action: &str, note: String) -> bool {
        self.emit_about(&self.node, type_, reason, action, note)
            .await
    }

    /// Tells the operator of another Node (e.g. a skipped peer's) why this node ignores it,
    /// where `kubectl describe node THAT-NODE` shows it.
    pub async fn peer_skipped(&self, peer: &str, why: &str) -> bool {
        let note = format!(
            "trellis on node {} does not program this Node: {why}",
            self.node_name
        );
        self.emit_about(
            &node_reference(peer, None),
            EventType::Warning,
            reason::PEER_SKIPPED,
            "ProgramPeer",
            note,
        )
        .await
    }

    /// On the NetworkPolicy itself (`kubectl describe networkpolicy` shows it): why every
    /// node enforces it as deny-all (one node reports it for all).
    pub async fn policy_invalid(
        &self,
        namespace: &str,
        name: &str,
        uid: Option<&str>,
        why: &str,
    ) -> bool {
        let regarding = ObjectReference {
            api_version: Some("networking.k8s.io/v1".to_string()),
            kind: Some("NetworkPolicy".to_string()),
            namespace: Some(namespace.to_string()),
            name: Some(name.to_string()),
            uid: uid.map(str::to_string),
            ..ObjectReference::default()
        };
        let note = format!(
            "trellis cannot enforce this policy as written: {why}. Until it is fixed, the pods \
             it selects get none of the traffic it governs (deny-all). Reported by node {}.",
            self.node_name
        );
        self.emit_about(
            &regarding,
            EventType::Warning,
            reason::POLICY_INVALID,
            "EnforcePolicy",
            note,
        )
        .await
    }

    async fn emit_about(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) -> bool {
        let ev = Event {
            type_,
            reason: reason.to_string(),
            note: Some(truncate_note(note)),
            action: action.to_string(),
            secondary: None,
        };
        match tokio::time::timeout(self.timeout, self.recorder.publish(&ev, regarding)).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::warn!(reason, error = %e, "could not publish Event");
                false
            }
            Err(_) => {
                tracing::warn!(
                    reason,
                    timeout_s = self.timeout.as_secs(),
                    "publishing Event timed out"
                );
                false
            }
        }
    }

    /// "backend switched from vxlan to host-gw in 812 ms". Written as its own
    /// Event every time, not through the recorder: the recorder folds repeats
    /// of a reason into one series and would keep only the first switch's note.
    pub async fn backend_switched(
        &self,
        from: BackendType,
        to: BackendType,
        took: Duration,
    ) -> bool {
        use k8s_openapi::api::events::v1::Event as ApiEvent;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
        let now = std::time::SystemTime::now();
        let nanos = now
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let ev = ApiEvent {
            metadata: ObjectMeta {
                name: Some(format!("{}.{nanos:x}", self.node_name)),
                namespace: Some(EVENT_NAMESPACE.into()),
                ..ObjectMeta::default()
            },
            action: Some("SwitchBackend".into()),
            reason: Some(reason::BACKEND_SWITCHED.into()),
            note: Some(truncate_note(format!(
                "backend switched from {from} to {to} in {} ms",
                took.as_millis()
            ))),
            type_: Some("Normal".into()),
            regarding: Some(self.node.clone()),
            event_time: k8s_openapi::jiff::Timestamp::try_from(now)
                .ok()
                .map(MicroTime),
            reporting_controller: Some(MANAGER.into()),
            reporting_instance: Some(format!("{MANAGER}-{}", self.node_name)),
            ..ApiEvent::default()
        };
        let api: kube::Api<ApiEvent> = kube::Api::namespaced(self.client.clone(), EVENT_NAMESPACE);
        match tokio::time::timeout(
            self.timeout,
            api.create(&kube::api::PostParams::default(), &ev),
        )
        .await
        {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not publish BackendSwitched Event");
                false
            }
            Err(_) => {
                tracing::warn!("publishing BackendSwitched Event timed out");
                false
            }
        }
    }

    /// A net-conf.json was rejected; the running config stays.
    pub async fn invalid_config(&self, what: &str, why: &str) -> bool {
        self.emit(
            EventType::Warning,
            reason::INVALID_CONFIG,
            "LoadConfig",
            format!("{what} rejected, keeping the running configuration: {why}"),
        )
        .await
    }

    /// A valid net-conf.json this node cannot run (a backend its kernel lacks).
    pub async fn backend_unsupported(&self, what: &str, why: &str) -> bool {
        self.emit(
            EventType::Warning,
            reason::BACKEND_UNSUPPORTED,
            "LoadConfig",
            format!("{what} refused, keeping the running configuration: {why}"),
        )
        .await
    }

    /// The host lacks something the agent cannot fix itself (e.g. br_netfilter).
    pub async fn host_not_ready(&self, why: &str) -> bool {
        self.emit(
            EventType::Warning,
            reason::HOST_NOT_READY,
            "CheckHost",
            why.to_string(),
        )
        .await
    }

    /// The node's network is programmed.
    pub async fn network_ready(&self, backend: BackendType) -> bool {
        self.emit(
            EventType::Normal,
            reason::NETWORK_READY,
            "Program",
            format!("trellis programmed this node with backend {backend}"),
        )
        .await
    }
}

fn node_reference(name: &str, uid: Option<&str>) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some(name.into()),
        uid: Some(uid.unwrap_or(name).into()),
        ..ObjectReference::default()
    }
}

/// The API rejects notes over 1 KiB; cut on a character boundary.
fn truncate_note(mut note: String) -> String {
    const MAX: usize = 1024;
    if note.len() > MAX {
        let mut cut = MAX - 3;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push_str("...");
    }
    note
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_fit_the_api_limit() {
        assert_eq!(truncate_note("short".into()), "short");
        let long = "é".repeat(1000);
        let t = truncate_note(long);
        assert!(t.len() <= 1024 && t.ends_with("..."));
    }

    #[test]
    fn reference_names_the_node() {
        let r = node_reference("n1", None);
        assert_eq!(r.kind.as_deref(), Some("Node"));
        assert_eq!(r.uid.as_deref(), Some("n1"));
        assert!(r.namespace.is_none());
        assert_eq!(
            node_reference("n1", Some("u-1")).uid.as_deref(),
            Some("u-1")
        );
    }
}

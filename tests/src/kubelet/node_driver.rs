//! The kubelet-shaped loop of one node: each `pass` lists the Pods bound to
//! the node (`spec.nodeName=<node>` field selector), starts new ones
//! through [`PodRuntime`], syncs the running ones, writes their status back
//! when it changed, posts their events, and tears down Pods that are gone
//! or being deleted (then finishes the deletion, as kubelet does).
//! A Pod the driver cannot honour gets a Pending status and a Warning
//! Event naming the field, and is never retried.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{ObjectReference, Pod, PodStatus};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource};
use serde_json::json;

use super::api_data::prefetch;
use super::runtime::{PodEvent, PodRuntime, RuntimeError, RuntimeOptions};
use super::status::rejected_status;
use super::translate::{plan_pod, NodeFacts};
use crate::cri::CriClient;

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("node {node}: API: {source}")]
    Api {
        node: String,
        #[source]
        source: kube::Error,
    },
}

enum Managed {
    Running {
        rt: Box<PodRuntime>,
        written: String,
    },
    /// Refused for good (unsupported spec); kept so it is not retried.
    Rejected,
}

pub struct NodeDriver {
    client: Client,
    cri: CriClient,
    facts: NodeFacts,
    opts: RuntimeOptions,
    recorder: Recorder,
    pods: HashMap<String, Managed>,
}

impl NodeDriver {
    pub fn new(client: Client, cri: CriClient, facts: NodeFacts, opts: RuntimeOptions) -> Self {
        let reporter = Reporter {
            controller: "kubelet".into(),
            instance: Some(facts.node_name.clone()),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            cri,
            facts,
            opts,
            pods: HashMap::new(),
        }
    }

    /// One reconciliation of this node's Pods.
    pub async fn pass(&mut self) -> Result<(), DriverError> {
        let selector = format!("spec.nodeName={}", self.facts.node_name);
        let listed = Api::<Pod>::all(self.client.clone())
            .list(&ListParams::default().fields(&selector))
            .await
            .map_err(|source| self.api_err(source))?;
        let live: Vec<&Pod> = listed
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        self.remove_gone(&live).await;
        for pod in &listed.items {
            if pod.metadata.deletion_timestamp.is_some() {
                self.finish_deletion(pod).await;
            }
        }
        for pod in live {
            self.sync_pod(pod).await?;
        }
        Ok(())
    }

    /// Tears down everything this node runs (end of a test).
    pub async fn shutdown(&mut self) -> Vec<RuntimeError> {
        let mut errors = Vec::new();
        for (_, managed) in self.pods.drain() {
            if let Managed::Running { rt, .. } = managed {
                if let Err(e) = rt.teardown(&mut self.cri).await {
                    errors.push(e);
                }
            }
        }
        errors
    }

    fn api_err(&self, source: kube::Error) -> DriverError {
        DriverError::Api {
            node: self.facts.node_name.clone(),
            source,
        }
    }

    async fn remove_gone(&mut self, live: &[&Pod]) {
        let gone: Vec<String> = self
            .pods
            .keys()
            .filter(|uid| {
                !live
                    .iter()
                    .any(|p| p.metadata.uid.as_deref() == Some(uid.as_str()))
            })
            .cloned()
            .collect();
        for uid in gone {
            if let Some(Managed::Running { rt, .. }) = self.pods.remove(&uid) {
                if let Err(e) = rt.teardown(&mut self.cri).await {
                    tracing::warn!(%uid, error = %e, "teardown of a removed pod");
                }
            }
        }
    }

    /// The containers are gone (remove_gone ran): the object may go too.
    async fn finish_deletion(&self, pod: &Pod) {
        let (Some(name), Some(ns)) = (
            pod.metadata.name.as_deref(),
            pod.metadata.namespace.as_deref(),
        ) else {
            return;
        };
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        if let Err(e) = Api::<Pod>::namespaced(self.client.clone(), ns)
            .delete(name, &params)
            .await
        {
            tracing::debug!(%name, error = %e, "finishing a deletion");
        }
    }
}

impl NodeDriver {
    async fn sync_pod(&mut self, pod: &Pod) -> Result<(), DriverError> {
        let Some(uid) = pod.metadata.uid.clone() else {
            return Ok(());
        };
        if !self.pods.contains_key(&uid) {
            match self.admit(pod).await {
                Some(managed) => self.pods.insert(uid.clone(), managed),
                // A passing failure (API, runtime): the next pass retries.
                None => return Ok(()),
            };
        }
        let Some(Managed::Running { rt, written }) = self.pods.get_mut(&uid) else {
            return Ok(());
        };
        // kubelet rotates projected tokens before they expire.
        if rt.token_refresh_due(std::time::Instant::now()) {
            let fresh = prefetch(&self.client, pod, &rt.plan.volumes).await;
            if let Err(e) =
                fresh.and_then(|data| rt.rewrite_tokens(&data).map_err(|e| e.to_string()))
            {
                tracing::warn!(%uid, error = %e, "token rotation");
            }
        }
        if let Err(e) = rt.sync(&mut self.cri).await {
            tracing::warn!(%uid, error = %e, "pod sync");
        }
        let events = rt.take_events();
        let status = rt.status();
        let print = fingerprint(&status);
        let changed = *written != print;
        if changed {
            *written = print;
        }
        if changed {
            self.write_status(pod, &status).await?;
        }
        for e in events {
            self.publish(pod, e).await;
        }
        Ok(())
    }

    /// Validates, fetches volume data and starts the pod. `None` means try
    /// again on the next pass; a refused spec is `Some(Rejected)`.
    async fn admit(&mut self, pod: &Pod) -> Option<Managed> {
        let plan = match plan_pod(pod, &self.facts, None) {
            Ok(plan) => plan,
            Err(e) => return Some(self.reject(pod, &e.to_string()).await),
        };
        let data = match prefetch(&self.client, pod, &plan.volumes).await {
            Ok(data) => data,
            Err(message) => {
                self.wait_on(pod, "CreateContainerConfigError", &message)
                    .await;
                return None;
            }
        };
        match PodRuntime::start(&mut self.cri, pod, &self.facts, &data, self.opts).await {
            Ok(rt) => Some(Managed::Running {
                rt: Box::new(rt),
                written: String::new(),
            }),
            Err(RuntimeError::Unsupported(e)) => Some(self.reject(pod, &e.to_string()).await),
            Err(e) => {
                self.wait_on(pod, "FailedCreatePodSandBox", &e.to_string())
                    .await;
                None
            }
        }
    }

    async fn reject(&self, pod: &Pod, message: &str) -> Managed {
        self.wait_on(pod, "UnsupportedPodSpec", message).await;
        Managed::Rejected
    }

    /// Pending status with every container waiting on `reason`, and a
    /// Warning Event saying the same.
    async fn wait_on(&self, pod: &Pod, reason: &'static str, message: &str) {
        let names: Vec<String> = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter().map(|c| c.name.clone()))
            .collect();
        if let Err(e) = self
            .write_status(pod, &rejected_status(&names, reason, message))
            .await
        {
            tracing::warn!(error = %e, "writing a waiting status");
        }
        let event = PodEvent {
            type_: "Warning",
            reason,
            message: message.to_string(),
        };
        self.publish(pod, event).await;
    }

    async fn write_status(&self, pod: &Pod, status: &PodStatus) -> Result<(), DriverError> {
        let (Some(name), Some(ns)) = (
            pod.metadata.name.as_deref(),
            pod.metadata.namespace.as_deref(),
        ) else {
            return Ok(());
        };
        let patch = Patch::Merge(json!({ "status": status }));
        Api::<Pod>::namespaced(self.client.clone(), ns)
            .patch_status(name, &PatchParams::default(), &patch)
            .await
            .map(drop)
            .map_err(|source| self.api_err(source))
    }

    /// Events are best effort, like kubelet's: a lost one is logged.
    async fn publish(&self, pod: &Pod, e: PodEvent) {
        let event = Event {
            type_: if e.type_ == "Warning" {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: e.reason.to_string(),
            note: Some(e.message),
            action: "Sync".into(),
            secondary: None,
        };
        let reference: ObjectReference = pod.object_ref(&());
        if let Err(err) = self.recorder.publish(&event, &reference).await {
            tracing::warn!(error = %err, "could not publish a pod Event");
        }
    }
}

/// The status without condition timestamps, to tell a real change from
/// the clock moving.
fn fingerprint(status: &PodStatus) -> String {
    let mut s = status.clone();
    for c in s.conditions.iter_mut().flatten() {
        c.last_transition_time = None;
    }
    serde_json::to_string(&s).unwrap_or_default()
}

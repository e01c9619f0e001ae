//! Runs one Pod through CRI the way kubelet's pod workers do: sandbox,
//! init containers one at a time (each must exit 0), then the containers;
//! every `sync` observes them, restarts exited ones per restartPolicy with
//! backoff, and runs due probes. `teardown` removes everything it made,
//! also after a failed start.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, PodStatus};

use super::container::{should_restart, Backoff, ContainerRecord, Observed};
use super::probe_runner::run_probe;
use super::status::{pod_status, StatusInput};
use super::translate::{plan_pod, ContainerPlan, NodeFacts, PodPlan, TranslateError};
use super::volumes::{self, materialize, VolumeData, VolumeError};
use crate::cri::{ContainerRunState, CriClient, CriError};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Unsupported(#[from] TranslateError),
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error(transparent)]
    Cri(#[from] CriError),
    #[error("pod directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Something kubelet would post as an Event on the Pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEvent {
    /// "Normal" or "Warning".
    pub type_: &'static str,
    pub reason: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, Copy)]
pub struct RuntimeOptions {
    pub backoff: Backoff,
}

pub struct PodRuntime {
    pub plan: PodPlan,
    sandbox_id: String,
    pod_ip: Option<String>,
    host_ip: Option<String>,
    /// The sandbox's network namespace, where network probes run.
    probe_netns: Option<PathBuf>,
    pod_dir: PathBuf,
    init: Vec<ContainerRecord>,
    containers: Vec<ContainerRecord>,
    init_failed: bool,
    events: Vec<PodEvent>,
    opts: RuntimeOptions,
    /// When the projected tokens were last written (for rotation).
    tokens_written: Instant,
}

impl PodRuntime {
    /// Validates the pod (a spec the driver cannot honour fails here, before
    /// anything runs), prepares its volumes and runs its sandbox. Containers
    /// start on the following `sync` calls.
    pub async fn start(
        cri: &mut CriClient,
        pod: &Pod,
        node: &NodeFacts,
        data: &(dyn VolumeData + Sync),
        opts: RuntimeOptions,
    ) -> Result<Self, RuntimeError> {
        let plan = plan_pod(pod, node, None)?;
        let pod_dir = node.dirs.pods.join(&plan.uid);
        let mut events: Vec<PodEvent> = plan
            .warnings
            .iter()
            .map(|w| warning("NotEnforced", w))
            .collect();
        let logs = PathBuf::from(&plan.sandbox.log_directory);
        std::fs::create_dir_all(&logs).map_err(|source| RuntimeError::Io { path: logs, source })?;
        if let Err(e) = materialize(&plan.volumes, data) {
            let _ = std::fs::remove_dir_all(&pod_dir);
            return Err(e.into());
        }
        let sandbox_id = match cri.run_pod_sandbox_config(plan.sandbox.clone()).await {
            Ok(id) => id,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&pod_dir);
                return Err(e.into());
            }
        };
        events.push(normal("SandboxReady", format!("sandbox {sandbox_id}")));
        let mut rt = Self::new(plan, sandbox_id, pod_dir, node, events, opts);
        if let Err(e) = rt.learn_sandbox(cri, pod, node).await {
            // The start error is the one to report; teardown is best effort.
            let _ = rt.teardown(cri).await;
            return Err(e);
        }
        Ok(rt)
    }

    fn new(
        plan: PodPlan,
        sandbox_id: String,
        pod_dir: PathBuf,
        node: &NodeFacts,
        events: Vec<PodEvent>,
        opts: RuntimeOptions,
    ) -> Self {
        let records = |list: &[ContainerPlan]| {
            list.iter()
                .map(|c| ContainerRecord::new(&c.name, image_of(c)))
                .collect()
        };
        Self {
            init: records(&plan.init_containers),
            containers: records(&plan.containers),
            plan,
            sandbox_id,
            pod_ip: None,
            host_ip: node.node_ip.clone(),
            probe_netns: None,
            pod_dir,
            init_failed: false,
            events,
            opts,
            tokens_written: Instant::now(),
        }
    }

    /// Reads the pod IP (hostNetwork: the node's) and the netns path, then
    /// re-plans with the IP so `status.podIP` env vars resolve.
    async fn learn_sandbox(
        &mut self,
        cri: &mut CriClient,
        pod: &Pod,
        node: &NodeFacts,
    ) -> Result<(), RuntimeError> {
        let status = cri.pod_sandbox_status(&self.sandbox_id).await?;
        self.probe_netns = status.info.netns_via_proc();
        self.pod_ip = match status.ips.first() {
            Some(ip) if !self.plan.host_network => Some(ip.to_string()),
            _ => node.node_ip.clone(),
        };
        let sandbox = self.plan.sandbox.clone();
        self.plan = plan_pod(pod, node, self.pod_ip.as_deref())?;
        // The sandbox already runs with the first plan's config; keep it so
        // CreateContainer gets exactly what RunPodSandbox got.
        self.plan.sandbox = sandbox;
        Ok(())
    }

    pub fn sandbox_id(&self) -> &str {
        &self.sandbox_id
    }

    pub fn pod_ip(&self) -> Option<&str> {
        self.pod_ip.as_deref()
    }

    /// Whether the projected tokens are old enough to be rotated.
    pub fn token_refresh_due(&self, now: Instant) -> bool {
        let age = now.saturating_duration_since(self.tokens_written);
        volumes::shortest_token_ttl(&self.plan.volumes)
            .is_some_and(|ttl| volumes::token_refresh_due(ttl, age))
    }

    /// Writes fresh tokens into the pod's projected volumes.
    pub fn rewrite_tokens(&mut self, data: &dyn VolumeData) -> Result<(), VolumeError> {
        volumes::rewrite_tokens(&self.plan.volumes, data)?;
        self.tokens_written = Instant::now();
        Ok(())
    }

    /// Events since the last call.
    pub fn take_events(&mut self) -> Vec<PodEvent> {
        std::mem::take(&mut self.events)
    }

    pub fn status(&self) -> PodStatus {
        pod_status(&StatusInput {
            init: &self.init,
            containers: &self.containers,
            pod_ip: self.pod_ip.as_deref(),
            host_ip: self.host_ip.as_deref(),
            init_failed: self.init_failed,
        })
    }

    /// One pass: the first unfinished init container, or (all done) every
    /// container, observed, restarted and probed as due.
    pub async fn sync(&mut self, cri: &mut CriClient) -> Result<(), RuntimeError> {
        if self.init_failed {
            return Ok(());
        }
        if let Some(i) = self.init.iter().position(|c| !c.finished) {
            return self.sync_one(cri, Kind::Init, i).await;
        }
        for i in 0..self.containers.len() {
            self.sync_one(cri, Kind::Regular, i).await?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Init,
    Regular,
}

fn image_of(c: &ContainerPlan) -> &str {
    c.config.image.as_ref().map_or("", |i| i.image.as_str())
}

fn warning(reason: &'static str, message: impl Into<String>) -> PodEvent {
    PodEvent {
        type_: "Warning",
        reason,
        message: message.into(),
    }
}

fn normal(reason: &'static str, message: impl Into<String>) -> PodEvent {
    PodEvent {
        type_: "Normal",
        reason,
        message: message.into(),
    }
}

impl PodRuntime {
    fn record(&mut self, kind: Kind, i: usize) -> &mut ContainerRecord {
        match kind {
            Kind::Init => &mut self.init[i],
            Kind::Regular => &mut self.containers[i],
        }
    }

    fn plan_of(&self, kind: Kind, i: usize) -> &ContainerPlan {
        match kind {
            Kind::Init => &self.plan.init_containers[i],
            Kind::Regular => &self.plan.containers[i],
        }
    }

    async fn sync_one(
        &mut self,
        cri: &mut CriClient,
        kind: Kind,
        i: usize,
    ) -> Result<(), RuntimeError> {
        let rec = self.record(kind, i);
        if rec.finished || rec.retry_at.is_some_and(|t| Instant::now() < t) {
            return Ok(());
        }
        match rec.id.clone() {
            None => self.create_instance(cri, kind, i).await,
            Some(id) => self.observe(cri, kind, i, &id).await,
        }
    }

    /// Creates and starts the next instance. A failure is the container's
    /// state (CreateContainerError / RunContainerError, retried after the
    /// backoff), not the driver's error.
    async fn create_instance(
        &mut self,
        cri: &mut CriClient,
        kind: Kind,
        i: usize,
    ) -> Result<(), RuntimeError> {
        let plan = self.plan_of(kind, i).clone();
        let attempt = self.record(kind, i).attempts;
        let config = plan.config_for_attempt(attempt);
        let outcome = match cri
            .create_container(&self.sandbox_id, config, &self.plan.sandbox)
            .await
        {
            Err(e) => Err(("CreateContainerError", e.to_string())),
            Ok(id) => match cri.start_container(&id).await {
                Ok(()) => Ok(id),
                Err(e) => {
                    let _ = cri.remove_container(&id).await;
                    Err(("RunContainerError", e.to_string()))
                }
            },
        };
        let (backoff, now) = (self.opts.backoff, Instant::now());
        let rec = self.record(kind, i);
        rec.attempts += 1;
        match outcome {
            Ok(id) => {
                rec.id = Some(id);
                rec.state = Observed::Running { started_at: 0 };
                rec.probes.next_liveness = plan.liveness.as_ref().map(|p| now + p.initial_delay);
                rec.probes.next_readiness = plan.readiness.as_ref().map(|p| now + p.initial_delay);
                let message = format!("Started container {}", plan.name);
                self.events.push(normal("Started", message));
            }
            Err((reason, message)) => {
                rec.retry_at = Some(now + backoff.delay(attempt));
                rec.state = Observed::waiting(reason, message.clone());
                self.events.push(warning(
                    "Failed",
                    format!("{}: {reason}: {message}", plan.name),
                ));
            }
        }
        Ok(())
    }

    async fn observe(
        &mut self,
        cri: &mut CriClient,
        kind: Kind,
        i: usize,
        id: &str,
    ) -> Result<(), RuntimeError> {
        let info = cri.container_status(id).await?;
        match info.state {
            ContainerRunState::Running => {
                let rec = self.record(kind, i);
                rec.state = Observed::Running {
                    started_at: info.started_at,
                };
                rec.image_ref = info.image_ref;
                if kind == Kind::Regular {
                    self.probe(cri, i, id).await?;
                }
            }
            ContainerRunState::Exited => {
                let restart =
                    should_restart(self.plan.restart_policy, info.exit_code, kind == Kind::Init);
                let term = Observed::Terminated {
                    exit_code: info.exit_code,
                    reason: info.reason,
                    message: info.message,
                    started_at: info.started_at,
                    finished_at: info.finished_at,
                };
                // The instance is gone once recorded: nothing is left behind
                // for teardown to miss (kubelet keeps one for logs).
                cri.remove_container(id).await?;
                let backoff = self.opts.backoff;
                let rec = self.record(kind, i);
                let name = rec.name.clone();
                rec.exited(term, restart, &backoff, Instant::now());
                if kind == Kind::Init && !restart && info.exit_code != 0 {
                    self.init_failed = true;
                }
                let message = format!("container {name} exited with {}", info.exit_code);
                self.events.push(if info.exit_code == 0 {
                    normal("Completed", message)
                } else {
                    warning("BackOff", message)
                });
            }
            ContainerRunState::Created | ContainerRunState::Unknown => {}
        }
        Ok(())
    }

    /// Runs the container's due probes. Liveness failing `failureThreshold`
    /// times kills the instance (the next sync restarts it per policy);
    /// readiness flips `ready`. Without a readiness probe, running is ready.
    async fn probe(&mut self, cri: &mut CriClient, i: usize, id: &str) -> Result<(), RuntimeError> {
        let now = Instant::now();
        if self.liveness(cri, i, id, now).await? {
            return Ok(());
        }
        let plan = self.plan.containers[i].clone();
        let Some(p) = &plan.readiness else {
            self.containers[i].ready = true;
            return Ok(());
        };
        if self.containers[i]
            .probes
            .next_readiness
            .is_some_and(|t| now >= t)
        {
            let result =
                run_probe(cri, p, id, self.probe_netns.as_deref(), &self.probe_host()).await;
            let rec = &mut self.containers[i];
            rec.probes.next_readiness = Some(now + p.period);
            let was_ready = rec.ready;
            rec.ready = rec.probes.readiness(
                result.is_ok(),
                was_ready,
                p.success_threshold,
                p.failure_threshold,
            );
            if let (true, false, Err(reason)) = (was_ready, rec.ready, result) {
                self.events.push(warning(
                    "Unhealthy",
                    format!("Readiness probe failed: {reason}"),
                ));
            }
        }
        Ok(())
    }

    /// Where network probes without a host go: the pod IP.
    fn probe_host(&self) -> String {
        self.pod_ip.clone().unwrap_or_else(|| "127.0.0.1".into())
    }

    /// Runs a due liveness probe; true when it killed the container.
    async fn liveness(
        &mut self,
        cri: &mut CriClient,
        i: usize,
        id: &str,
        now: Instant,
    ) -> Result<bool, RuntimeError> {
        let plan = self.plan.containers[i].clone();
        let Some(p) = &plan.liveness else {
            return Ok(false);
        };
        let due = self.containers[i].probes.next_liveness;
        if due.is_none_or(|t| now < t) {
            return Ok(false);
        }
        let result = run_probe(cri, p, id, self.probe_netns.as_deref(), &self.probe_host()).await;
        let rec = &mut self.containers[i];
        rec.probes.next_liveness = Some(now + p.period);
        if !rec
            .probes
            .liveness(result.as_ref().err(), p.failure_threshold)
        {
            return Ok(false);
        }
        let reason = result.err().unwrap_or_default();
        self.events.push(warning(
            "Unhealthy",
            format!("Liveness probe failed: {reason}"),
        ));
        let note = format!(
            "Container {} failed liveness probe, will be restarted",
            plan.name
        );
        self.events.push(normal("Killing", note));
        cri.stop_container(id, grace_secs(self.plan.grace_period))
            .await?;
        Ok(true)
    }

    /// Stops and removes every container and the sandbox, then the pod's
    /// directory (volumes, logs). Every step runs even when one fails; the
    /// first error is returned. hostPath data stays: it belongs to the node.
    pub async fn teardown(self, cri: &mut CriClient) -> Result<(), RuntimeError> {
        let mut first: Option<RuntimeError> = None;
        let mut keep = |r: Result<(), CriError>| {
            if let Err(e) = r {
                first.get_or_insert(e.into());
            }
        };
        let grace = grace_secs(self.plan.grace_period);
        let ids = cri
            .list_container_ids(&self.sandbox_id)
            .await
            .unwrap_or_default();
        for id in &ids {
            keep(cri.stop_container(id, grace).await);
            keep(cri.remove_container(id).await);
        }
        keep(cri.stop_pod_sandbox(&self.sandbox_id).await);
        keep(cri.remove_pod_sandbox(&self.sandbox_id).await);
        if let Err(source) = std::fs::remove_dir_all(&self.pod_dir) {
            if source.kind() != std::io::ErrorKind::NotFound {
                first.get_or_insert(RuntimeError::Io {
                    path: self.pod_dir.clone(),
                    source,
                });
            }
        }
        first.map_or(Ok(()), Err)
    }
}

fn grace_secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

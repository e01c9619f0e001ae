//! The controllers and every node's kubelet loop, run in the background
//! for tests that want Pods to "just run" (e.g. the deploy DaemonSet on a
//! netns_cluster) rather than stepping each pass themselves. A pass that
//! fails or hangs (fault-injection tests stop the API) is logged and the
//! next one is tried; stopping tears every pod down.

use std::time::Duration;

use kube::Client;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::controllers::{daemonset_pass, scheduler_pass};
use super::node_driver::NodeDriver;

/// No single pass may hold the loop longer than this.
const PASS_TIMEOUT: Duration = Duration::from_secs(10);

pub struct ClusterLoop {
    stop: watch::Sender<bool>,
    task: JoinHandle<Vec<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StopError {
    #[error("the cluster loop task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("teardown left errors: {0:?}")]
    Teardown(Vec<String>),
}

impl ClusterLoop {
    /// Starts passing every `period` (DaemonSets, scheduler, then each node).
    pub fn spawn(client: Client, drivers: Vec<NodeDriver>, period: Duration) -> Self {
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(run(client, drivers, period, rx));
        Self { stop, task }
    }

    /// Stops after the current pass and tears down every node's pods.
    pub async fn stop(self) -> Result<(), StopError> {
        let _ = self.stop.send(true);
        let errors = self.task.await?;
        if errors.is_empty() {
            Ok(())
        } else {
            Err(StopError::Teardown(errors))
        }
    }
}

async fn run(
    client: Client,
    mut drivers: Vec<NodeDriver>,
    period: Duration,
    mut rx: watch::Receiver<bool>,
) -> Vec<String> {
    while !*rx.borrow() {
        round(&client, &mut drivers).await;
        tokio::select! {
            _ = rx.changed() => {}
            _ = tokio::time::sleep(period) => {}
        }
    }
    let mut errors = Vec::new();
    for driver in &mut drivers {
        errors.extend(driver.shutdown().await.iter().map(ToString::to_string));
    }
    errors
}

async fn round(client: &Client, drivers: &mut [NodeDriver]) {
    if let Err(e) = bounded(daemonset_pass(client)).await {
        tracing::warn!(error = %e, "DaemonSet pass");
    }
    if let Err(e) = bounded(scheduler_pass(client)).await {
        tracing::warn!(error = %e, "scheduler pass");
    }
    for driver in drivers.iter_mut() {
        if let Err(e) = bounded(driver.pass()).await {
            tracing::warn!(error = %e, "node pass");
        }
    }
}

async fn bounded<T, E: ToString>(
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(PASS_TIMEOUT, f).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {PASS_TIMEOUT:?}")),
    }
}

//! `trellis-agent run`: wire the watchers, the planner and the executors
//! into one loop. Every trigger (a Node or ConfigMap change, kernel drift,
//! the periodic resync) leads to the same pass: plan from the current view
//! and config, reconcile the kernel, resync the firewall, write subnet.env,
//! advertise. Bursts coalesce into one pass.
//!
//! Passes come in two weights. A *full* pass (the first, every resync, kernel
//! drift, after a failure) reads everything trellis owns from the kernel and
//! checks the firewall. A pass for a Node or ConfigMap change diffs against
//! the state the last clean pass left (kept true by the drift monitor) and
//! touches the firewall only if its rules changed: one more Node costs its
//! three kernel entries, not a re-read of 15000.
//!
//! Nothing is torn down on exit: the kernel keeps forwarding while the
//! agent restarts, and the next start reconciles from whatever it finds.
//!
//! Where things are:
//! - this file: the CLI arguments, the errors, and the loop ([`run`]), which waits for a
//!   trigger and runs a pass;
//! - [`startup`]: everything before the first pass (health endpoint, this node's lease, the
//!   config source, the watchers) and what happens while the first Node list arrives;
//! - [`pass`]: one pass, from the plan to readiness;
//! - [`firewall_sync`]: the firewall driver and the rules it holds ([`FirewallSync`]);
//! - [`report`]: what a pass tells the outside: readiness, host checks, refused peer
//!   entries, the backend switch, `/debug/state`;
//! - [`skips`]: the `PeerSkipped` Events, from a few agents and rate-limited.

mod firewall_sync;
mod pass;
mod report;
mod skips;
mod startup;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tracing::{error, info};

use crate::advertiser::Advertiser;
use crate::backend::PlanOptions;
use crate::cluster::{self, NodeEvents, SharedView, ViewStatus};
use crate::config::NetConfig;
use crate::dataplane::netlink::{Dataplane, DriftMonitor};
use crate::debug_state::DebugState;
use crate::metrics::Metrics;
use crate::underlay;

use firewall_sync::FirewallSync;
use pass::PassState;
use startup::FirstList;

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// This node's name (the DaemonSet passes spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// kubeconfig to use; in-cluster config when unset.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Namespace of the ConfigMap holding net-conf.json.
    #[arg(long, env = "POD_NAMESPACE", default_value = "kube-flannel")]
    pub configmap_namespace: String,
    #[arg(long, default_value = "trellis-config")]
    pub configmap_name: String,
    /// Read net-conf.json from this file instead of the ConfigMap (no live switch).
    #[arg(long)]
    pub net_conf_file: Option<PathBuf>,
    /// Interface (name or address) that reaches the other nodes; repeatable.
    #[arg(long)]
    pub iface: Vec<String>,
    /// Regular expression for the interface name or address; repeatable.
    #[arg(long)]
    pub iface_regex: Vec<String>,
    /// Use the interface that routes to this address.
    #[arg(long)]
    pub iface_can_reach: Option<std::net::IpAddr>,
    #[arg(long, default_value = trellis_common::subnet_env::DEFAULT_PATH)]
    pub subnet_file: PathBuf,
    /// The WireGuard private key (flannel's path and variable), made on first use.
    #[arg(long, env = "WIREGUARD_KEY_FILE", default_value = crate::wg_keyfile::DEFAULT_PATH)]
    pub wireguard_key_file: PathBuf,
    /// Prefix of the Node annotations (flannel's, so trellis can replace flannel in place).
    #[arg(long, default_value = "flannel.alpha.coreos.com")]
    pub annotation_prefix: String,
    #[arg(long, default_value = "127.0.0.1:9402")]
    pub health_addr: SocketAddr,
    /// Masquerade pod traffic leaving the pod network.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub ip_masq: bool,
    /// Accept forwarding to and from the pod network (FORWARD policy DROP hosts).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub iptables_forward_rules: bool,
    /// Full resync period, seconds (drift is repaired sooner, via netlink events).
    #[arg(long, default_value_t = 10)]
    pub resync_seconds: u64,
    /// Get the Node list in pages instead of as one watch stream (sendInitialEvents). The
    /// agent falls back to pages by itself where the apiserver does not stream lists.
    #[arg(long, env = "TRELLIS_PAGED_NODE_LIST", value_parser = clap::builder::BoolishValueParser::new())]
    pub paged_node_list: bool,
    /// Enforce NetworkPolicies (true) or not (false), whatever net-conf.json's
    /// `NetworkPolicy.Enabled` says; unset, net-conf.json decides (live).
    #[arg(long, env = "TRELLIS_NETWORK_POLICY", value_parser = clap::builder::BoolishValueParser::new())]
    pub network_policy: Option<bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Client(#[from] cluster::ClientError),
    #[error("{0}")]
    OwnNode(#[from] cluster::OwnNodeError),
    #[error("{0}")]
    Underlay(#[from] underlay::UnderlayError),
    #[error("{0}")]
    Netlink(#[from] crate::dataplane::netlink::NetlinkError),
    #[error("net-conf.json {path}: {why}")]
    ConfigFile { path: PathBuf, why: String },
    #[error("cannot serve health on {addr}: {source}")]
    Health {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}

pub fn main(args: RunArgs) -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: in a container the log is a file that `kubectl logs`
        // and log collectors show as text, where escape codes are noise.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("{}", AgentError::Runtime(e));
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// What a pass works with, made by [`startup`] and kept from pass to pass.
struct Agent {
    subnet_file: PathBuf,
    plan_opts: PlanOptions,
    view: SharedView,
    dataplane: Dataplane,
    firewall: FirewallSync,
    advertiser: Advertiser,
    events: NodeEvents,
    metrics: Arc<Metrics>,
    debug_tx: watch::Sender<Arc<DebugState>>,
    beat_tx: watch::Sender<Instant>,
    state: PassState,
    first_list: FirstList,
}

/// What wakes the loop.
struct Triggers {
    view_status: watch::Receiver<ViewStatus>,
    config: watch::Receiver<Option<Arc<NetConfig>>>,
    drift: mpsc::Receiver<()>,
    resync: tokio::time::Interval,
    sigterm: tokio::signal::unix::Signal,
    /// Sends `drift` while it lives.
    _monitor: DriftMonitor,
}

/// Why the loop woke up after a pass.
enum Wake {
    /// The view, the config or the advertisement changed.
    Change,
    Drift,
    Resync,
    /// A failed part's retry is due.
    Retry,
    Stop,
}

async fn run(args: RunArgs) -> Result<(), AgentError> {
    let (mut agent, mut triggers) = startup::start(args).await?;
    loop {
        // Wait for the first complete Node list: planning from a partial
        // view would delete the entries of peers not listed yet.
        let status = *triggers.view_status.borrow();
        if !status.synced {
            let config = triggers.config.borrow().clone();
            agent.while_listing(status, config).await;
            match triggers.listing().await {
                Some(true) => agent.beat(),
                Some(false) => {}
                None => break,
            }
            continue;
        }
        agent.first_list_done(triggers.drift.is_empty());
        let config = triggers.config.borrow().clone();
        if let Some(config) = config {
            agent.pass(&config).await;
        }
        let last_pass = Instant::now();
        agent.beat();
        match triggers
            .next(&mut agent.advertiser, agent.state.retry_at)
            .await
        {
            Wake::Change => {}
            Wake::Drift => {
                agent
                    .metrics
                    .drift_events
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                info!(
                    "kernel state changed outside trellis (its own entries, or the external \
                     interface's addresses): full pass"
                );
                agent.state.full = true;
            }
            Wake::Resync => agent.state.full = true,
            Wake::Retry => {
                agent.state.retry_at = None;
                agent.state.full = true;
            }
            Wake::Stop => break,
        }
        if triggers.coalesce(last_pass).await {
            agent.state.full = true;
        }
    }
    info!("stopping; kernel state left in place for the next start");
    Ok(())
}

impl Triggers {
    /// While the first Node list arrives: `Some(false)` on its progress, `Some(true)` after a
    /// quiet [`WAITING_BEAT`] (time to beat), `None` to stop.
    async fn listing(&mut self) -> Option<bool> {
        tokio::select! {
            _ = self.view_status.changed() => Some(false),
            _ = tokio::time::sleep(WAITING_BEAT) => Some(true),
            _ = self.sigterm.recv() => None,
            _ = tokio::signal::ctrl_c() => None,
        }
    }

    /// The next trigger after a pass. The advertiser wakes the loop too: readiness waits for
    /// the first advertisement.
    async fn next(
        &mut self,
        advertiser: &mut Advertiser,
        retry_at: Option<tokio::time::Instant>,
    ) -> Wake {
        tokio::select! {
            _ = self.view_status.changed() => Wake::Change,
            _ = self.config.changed() => Wake::Change,
            _ = advertiser.changed() => Wake::Change,
            Some(()) = self.drift.recv() => Wake::Drift,
            _ = self.resync.tick() => Wake::Resync,
            _ = sleep_until(retry_at), if retry_at.is_some() => Wake::Retry,
            _ = self.sigterm.recv() => Wake::Stop,
            _ = tokio::signal::ctrl_c() => Wake::Stop,
        }
    }

    /// Coalesce a burst (a flurry of Node events or netlink notifications) into one pass. A
    /// lone change after a quiet spell goes at once, after letting the watcher take in
    /// whatever arrived with it: any wait would be all of its latency. Returns whether the
    /// kernel drifted meanwhile.
    async fn coalesce(&mut self, last_pass: Instant) -> bool {
        if last_pass.elapsed() < Duration::from_millis(100) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        } else {
            tokio::task::yield_now().await;
        }
        let mut drifted = false;
        while self.drift.try_recv().is_ok() {
            drifted = true;
        }
        drifted
    }
}

/// How often the loop says it is alive while it waits (for a podCIDR, a valid config, the
/// first Node list): waiting is the loop turning, which `/readyz` and the log explain; only
/// a loop that stopped turning should fail `/healthz` and get the agent restarted.
const WAITING_BEAT: Duration = Duration::from_secs(5);

impl Agent {
    /// Bumps the liveness heartbeat (and its metric).
    fn beat(&self) {
        beat(&self.beat_tx, &self.metrics);
    }
}

fn beat(tx: &watch::Sender<Instant>, metrics: &Metrics) {
    let _ = tx.send(Instant::now());
    metrics.beat();
}

/// Awaits `fut`, beating the heartbeat every [`WAITING_BEAT`] meanwhile.
async fn beating<T>(
    fut: impl std::future::Future<Output = T>,
    tx: &watch::Sender<Instant>,
    metrics: &Metrics,
) -> T {
    let mut fut = std::pin::pin!(fut);
    let mut tick = tokio::time::interval(WAITING_BEAT);
    loop {
        tokio::select! {
            out = &mut fut => return out,
            _ = tick.tick() => beat(tx, metrics),
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

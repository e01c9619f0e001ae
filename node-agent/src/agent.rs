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

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::advertiser::Advertiser;
use crate::annotations::AnnotationKeys;
use crate::backend::{self, PlanOptions};
use crate::bridge_nf::BridgeNf;
use crate::cluster::{
    self, lock_view, Backoff, BackoffPolicy, ClientSource, ConfigSource, ConfigWatcher, NodeEvents,
    NodeWatchOptions, NodeWatcher, OwnNode, WaitOptions,
};
use crate::config::{BackendType, NetConfig};
use crate::dataplane::netlink::{Dataplane, DriftMonitor};
use crate::debug_state::{DebugState, PassContext};
use crate::firewall::exec::Exec;
use crate::firewall::executor::{self as fw, Backend as FwBackend, Firewall};
use crate::firewall::rules::RuleSet;
use crate::health::{self, HealthState};
use crate::metrics::Metrics;
use crate::net::{fnv1a, Mac};
use crate::readiness::{self, PeerFailures};
use crate::underlay::{self, IfaceOptions};
use crate::view::{ClusterView, LocalLease, SkipLog};

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
    #[arg(long, default_value = trellis_cni::subnet_env::DEFAULT_PATH)]
    pub subnet_file: PathBuf,
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

/// What the loop keeps between passes.
struct LoopState {
    applied_backend: Option<BackendType>,
    switch_started: Option<(BackendType, BackendType, Instant)>,
    last_config: Option<Arc<NetConfig>>,
    /// The firewall backend being replaced: removed once the new one holds the rules.
    old_firewall: Option<Firewall>,
    /// Rules the firewall was last found or made to hold, `None` until then and after a
    /// failure; a light pass skips the firewall while the plan's rules equal these.
    firewall_synced: Option<RuleSet>,
    /// The firewall's installed rules as last read, for /debug/state.
    firewall_installed: String,
    /// The next pass must be a full one (see module docs).
    full: bool,
    skip_log: SkipLog,
    /// The firewall check made while the first Node list arrives.
    firewall_early: EarlyCheck,
    /// The devices were programmed before the first Node arrived.
    prefilled_devices: bool,
    /// The next full pass may diff against what the executor knows instead of reading the
    /// kernel: set for the pass right after the first list, when the prefill passes have read
    /// the kernel and nothing has drifted since.
    kernel_known: bool,
    /// No pass has run yet.
    first_pass: bool,
    /// Peer entries the kernel refused, retried by a full pass after a backoff.
    peer_failures: PeerFailures,
    peer_backoff: Backoff,
    /// When the next full pass retries what failed (peer entries, or this node's own side).
    retry_at: Option<tokio::time::Instant>,
    /// What the host lacks that the agent cannot fix (br_netfilter), as last checked.
    host: Result<(), String>,
    /// Passes in a row whose own side failed.
    failing_passes: u32,
    skip_events: RateLimit,
}

/// The firewall rules do not depend on peers, so they are checked while the first Node list
/// arrives, off the path to ready; a successful check spares the first full pass its own.
enum EarlyCheck {
    NotStarted,
    /// Joined by the first full pass, which skips its own check if this one succeeded and
    /// the rules are the same.
    Running(tokio::task::JoinHandle<EarlyFirewall>),
    /// Not possible (no rules yet), or already joined.
    Spent,
}

async fn run(args: RunArgs) -> Result<(), AgentError> {
    info!(node = %args.node_name, "trellis-agent starting");
    let metrics = Arc::new(Metrics::default());
    let (debug_tx, debug_rx) = watch::channel(Arc::new(DebugState::default()));
    let (beat_tx, beat_rx) = watch::channel(Instant::now());
    let listener = tokio::net::TcpListener::bind(args.health_addr)
        .await
        .map_err(|source| AgentError::Health {
            addr: args.health_addr,
            source,
        })?;
    tokio::spawn(health::serve(
        listener,
        Arc::new(HealthState {
            metrics: metrics.clone(),
            debug: debug_rx,
            heartbeat: beat_rx,
            stall_after: Duration::from_secs(args.resync_seconds * 6 + 60),
        }),
    ));

    let client = cluster::connect(&ClientSource::from_env(args.kubeconfig.as_deref())?).await?;
    let keys =
        AnnotationKeys::new(&args.annotation_prefix).map_err(|e| AgentError::ConfigFile {
            path: PathBuf::from("--annotation-prefix"),
            why: e.to_string(),
        })?;
    let own = OwnNode::new(client.clone(), &args.node_name, keys.clone());
    metrics.set_programmed(Err(format!(
        "waiting for Node {} to exist with spec.podCIDRs (see the log)",
        args.node_name
    )));
    let own_state = beating(own.wait_ready(&WaitOptions::default()), &beat_tx, &metrics).await?;
    let events = NodeEvents::new(client.clone(), &args.node_name, own_state.uid.as_deref());

    // Config: a file (static) or the ConfigMap (live).
    let mut config_rx = match &args.net_conf_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| AgentError::ConfigFile {
                path: path.clone(),
                why: e.to_string(),
            })?;
            let parsed = NetConfig::parse(&text).map_err(|e| AgentError::ConfigFile {
                path: path.clone(),
                why: e.to_string(),
            })?;
            for w in &parsed.warnings {
                warn!("net-conf.json: {w}");
            }
            let (tx, rx) = watch::channel(Some(Arc::new(parsed.config)));
            std::mem::forget(tx);
            rx
        }
        None => {
            let w = ConfigWatcher::new(
                client.clone(),
                ConfigSource::new(&args.configmap_namespace, &args.configmap_name),
                Some(events.clone()),
            );
            let rx = w.subscribe();
            metrics.attach_config_watch(w.stats());
            tokio::spawn(w.run());
            rx
        }
    };
    if config_rx.borrow().is_none() {
        info!(
            "waiting for a valid net-conf.json in ConfigMap {}/{}",
            args.configmap_namespace, args.configmap_name
        );
    }
    metrics.set_programmed(Err(format!(
        "waiting for a valid net-conf.json in ConfigMap {}/{}",
        args.configmap_namespace, args.configmap_name
    )));
    let _ = beating(config_rx.wait_for(Option::is_some), &beat_tx, &metrics).await;
    metrics.set_programmed(Err("waiting for the first complete Node list".into()));

    let mut dataplane = Dataplane::new()?;
    let opts = IfaceOptions {
        iface: args.iface.clone(),
        iface_regex: args.iface_regex.clone(),
        iface_can_reach: args.iface_can_reach,
    };
    let underlay = underlay::discover(dataplane.handle(), &opts).await?;
    info!(iface = %underlay.name, addr = ?underlay.addr_v4, mtu = underlay.mtu, "external interface");
    let lease = LocalLease {
        node_name: args.node_name.clone(),
        subnet_v4: own_state.subnet_v4,
        subnet_v6: own_state.subnet_v6,
        public_ip_v4: own_state
            .public_ip_overwrite_v4
            .or(underlay.addr_v4.map(|a| a.ip())),
        public_ip_v6: own_state
            .public_ip_overwrite_v6
            .or(underlay.addr_v6.map(|a| a.ip())),
        vtep_mac_v4: own_state
            .vtep_mac_v4
            .unwrap_or_else(|| Mac::derived(&format!("{}/vtep4", args.node_name))),
        vtep_mac_v6: own_state
            .vtep_mac_v6
            .unwrap_or_else(|| Mac::derived(&format!("{}/vtep6", args.node_name))),
        underlay,
    };
    let view = Arc::new(Mutex::new(ClusterView::new(lease, keys.clone())));
    let watch_options = NodeWatchOptions {
        streaming_list: !args.paged_node_list,
        ..NodeWatchOptions::default()
    };
    let watcher = NodeWatcher::new(client.clone(), view.clone(), watch_options);
    let mut view_status = watcher.status();
    let mut advertiser = Advertiser::start(own, events.clone(), watcher.own_node());
    metrics.attach_node_watch(watcher.stats());
    tokio::spawn(watcher.run());
    let (_monitor, mut drift_rx) = DriftMonitor::start_expecting(dataplane.expected()).await?;
    let mut firewall: Option<Firewall> = None;

    let plan_opts = PlanOptions {
        ip_masq: args.ip_masq,
        forward_rules: args.iptables_forward_rules,
    };
    let mut st = LoopState {
        applied_backend: None,
        switch_started: None,
        last_config: None,
        old_firewall: None,
        firewall_synced: None,
        firewall_installed: String::new(),
        full: true,
        skip_log: SkipLog::default(),
        firewall_early: EarlyCheck::NotStarted,
        prefilled_devices: false,
        kernel_known: false,
        first_pass: true,
        peer_failures: PeerFailures::default(),
        peer_backoff: Backoff::new(BackoffPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(args.resync_seconds.max(1)),
        }),
        retry_at: None,
        host: Ok(()),
        failing_passes: 0,
        skip_events: RateLimit::new(),
    };
    let mut resync = tokio::time::interval(Duration::from_secs(args.resync_seconds.max(1)));
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(AgentError::Runtime)?;
    loop {
        // Wait for the first complete Node list: planning from a partial
        // view would delete the entries of peers not listed yet.
        let status = *view_status.borrow();
        if !status.synced {
            let config = config_rx.borrow().clone();
            if let Some(config) = config {
                if matches!(st.firewall_early, EarlyCheck::NotStarted) {
                    st.firewall_early = match firewall_rules(&view, &config, &plan_opts) {
                        Some(rules) => EarlyCheck::Running(tokio::spawn(early_firewall(
                            firewall.clone(),
                            config.clone(),
                            rules,
                        ))),
                        None => EarlyCheck::Spent,
                    };
                }
                // Also before any Node is listed: the devices and their addresses need no
                // peer, and making them is the slowest part of the first prefill.
                if status.listed > 0 || !st.prefilled_devices {
                    st.prefilled_devices = true;
                    prefill(&view, &config, &plan_opts, &mut dataplane).await;
                }
            }
            tokio::select! {
                _ = view_status.changed() => continue,
                _ = tokio::time::sleep(WAITING_BEAT) => {
                    beat(&beat_tx, &metrics);
                    continue;
                }
                _ = sigterm.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        if std::mem::take(&mut st.first_pass) && st.prefilled_devices {
            // The first pass after the list: the prefill passes read the kernel, and the drift
            // monitor has watched it since.
            st.kernel_known = drift_rx.is_empty();
        }
        let config = config_rx.borrow().clone();
        if let Some(config) = config {
            pass(
                &args,
                &view,
                &config,
                &plan_opts,
                &mut dataplane,
                &mut firewall,
                &advertiser,
                &events,
                &metrics,
                &mut st,
                &debug_tx,
            )
            .await;
            st.last_config = Some(config);
        }
        let last_pass = Instant::now();
        beat(&beat_tx, &metrics);
        tokio::select! {
            _ = view_status.changed() => {}
            _ = config_rx.changed() => {}
            // Readiness waits for the first advertisement.
            _ = advertiser.changed() => {}
            Some(()) = drift_rx.recv() => {
                metrics.drift_events.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                info!("kernel state owned by trellis changed outside trellis: repairing");
                st.full = true;
            }
            _ = resync.tick() => st.full = true,
            _ = sleep_until(st.retry_at), if st.retry_at.is_some() => {
                st.retry_at = None;
                st.full = true;
            }
            _ = sigterm.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
        // Coalesce a burst (a flurry of Node events or netlink notifications)
        // into one pass. A lone change after a quiet spell goes at once, after
        // letting the watcher take in whatever arrived with it: any wait would
        // be all of its latency.
        if last_pass.elapsed() < Duration::from_millis(100) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        } else {
            tokio::task::yield_now().await;
        }
        while drift_rx.try_recv().is_ok() {
            st.full = true;
        }
    }
    info!("stopping; kernel state left in place for the next start");
    Ok(())
}

/// How soon a pass whose own side failed is retried.
const OWN_RETRY: Duration = Duration::from_secs(1);

/// `PeerSkipped` Events of one agent: a burst of at most 10, then one every 2 s (each new
/// skip is logged regardless). Each skipped Node is reported by a few agents of the cluster
/// only (see `reports_skip`), so this bounds what one flapping Node can cost the API.
const SKIP_EVENTS_BURST: f64 = 10.0;
const SKIP_EVENTS_EVERY: Duration = Duration::from_secs(2);

/// The agents that may report a skip: this node and the peers it programs, sorted (the first
/// is this node).
fn skip_reporters(view: &Arc<Mutex<ClusterView>>, config: &NetConfig) -> Vec<String> {
    let v = lock_view(view);
    let mut names = vec![v.local().node_name.clone()];
    // Planning read the same view: resolving again costs what a plan does, only on passes
    // with news to report.
    names.extend(v.resolve(config).peers.iter().map(|p| p.name.to_string()));
    names
}

/// How many agents report each skipped Node. More than one: a reporter may be a Node that
/// runs no trellis agent (flannel's, during a migration, or a valid peer nobody runs).
const SKIP_REPORTERS: usize = 3;

/// Whether this node (`reporters[0]`) is among the [`SKIP_REPORTERS`] agents that report
/// `skipped`: those whose hash with the skipped Node's name is highest (rendezvous hashing),
/// which every agent with the same view picks alike.
fn reports_skip(reporters: &[String], skipped: &str) -> bool {
    let score = |r: &str| fnv1a(&[r.as_bytes(), b"/", skipped.as_bytes()]);
    let Some(me) = reporters.first() else {
        return false;
    };
    let mine = (score(me), me.as_str());
    let above = reporters
        .iter()
        .filter(|r| (score(r), r.as_str()) > mine)
        .count();
    above < SKIP_REPORTERS
}

/// A token bucket.
struct RateLimit {
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    fn new() -> Self {
        RateLimit {
            tokens: SKIP_EVENTS_BURST,
            last: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let refill = self.last.elapsed().as_secs_f64() / SKIP_EVENTS_EVERY.as_secs_f64();
        self.last = Instant::now();
        self.tokens = (self.tokens + refill).min(SKIP_EVENTS_BURST);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// How often the loop says it is alive while it waits (for a podCIDR, a valid config, the
/// first Node list): waiting is the loop turning, which `/readyz` and the log explain; only
/// a loop that stopped turning should fail `/healthz` and get the agent restarted.
const WAITING_BEAT: Duration = Duration::from_secs(5);

/// Bumps the liveness heartbeat (and its metric).
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

/// Program the peers listed so far while the first Node list is still arriving, adding only
/// (see `Dataplane::reconcile_additions`). Failures are left to the first full pass.
async fn prefill(
    view: &Arc<Mutex<ClusterView>>,
    config: &NetConfig,
    plan_opts: &PlanOptions,
    dataplane: &mut Dataplane,
) {
    let plan = {
        let v = lock_view(view);
        backend::plan(&v, config, plan_opts)
    };
    let Ok(plan) = plan else {
        return;
    };
    let kernel = Arc::new(plan.state.kernel);
    match dataplane.reconcile_additions(kernel).await {
        Ok(r) => tracing::debug!(
            peers = plan.peers,
            ops = r.ops_applied,
            errors = r.errors.len(),
            took = ?r.duration,
            "programmed the peers listed so far"
        ),
        Err(e) => tracing::debug!("cannot program the peers listed so far: {e}"),
    }
}

/// The firewall as the check made during the first Node list left it.
struct EarlyFirewall {
    firewall: Option<Firewall>,
    synced: Option<RuleSet>,
    installed: String,
    checked: bool,
}

/// The firewall rules for the view as it is: they need only the local lease and the config.
fn firewall_rules(
    view: &Arc<Mutex<ClusterView>>,
    config: &NetConfig,
    plan_opts: &PlanOptions,
) -> Option<RuleSet> {
    let v = lock_view(view);
    backend::firewall_rules(v.local(), config, plan_opts).ok()
}

/// Detect the firewall and check its rules once, in a task of its own while the first Node
/// list arrives, so neither the list's prefill passes nor readiness wait for iptables.
async fn early_firewall(
    current: Option<Firewall>,
    config: Arc<NetConfig>,
    rules: RuleSet,
) -> EarlyFirewall {
    let mut old = None;
    let firewall = ensure_firewall(current, &config, &mut old).await;
    let mut synced = None;
    let mut installed = String::new();
    let (checked, _) = sync_firewall(
        firewall.as_ref(),
        &mut old,
        &mut synced,
        &mut installed,
        &rules,
        true,
    )
    .await;
    EarlyFirewall {
        firewall,
        synced,
        installed,
        checked,
    }
}

#[allow(clippy::too_many_arguments)]
async fn pass(
    args: &RunArgs,
    view: &Arc<Mutex<ClusterView>>,
    config: &Arc<NetConfig>,
    plan_opts: &PlanOptions,
    dataplane: &mut Dataplane,
    firewall: &mut Option<Firewall>,
    advertiser: &Advertiser,
    events: &NodeEvents,
    metrics: &Metrics,
    st: &mut LoopState,
    debug_tx: &watch::Sender<Arc<DebugState>>,
) {
    let started = Instant::now();
    let (plan, keys) = {
        let v = lock_view(view);
        metrics
            .nodes_seen
            .store(v.node_count() as u64, std::sync::atomic::Ordering::Relaxed);
        (backend::plan(&v, config, plan_opts), v.keys().clone())
    };
    let planned = started.elapsed();
    let mut plan = match plan {
        Ok(p) => p,
        Err(e) => {
            error!("cannot program this node: {e}");
            metrics.set_programmed(Err(format!("cannot program this node: {e}")));
            metrics.record_reconcile(started.elapsed(), false);
            return;
        }
    };
    let (fresh, cleared) = st.skip_log.update(&plan.skipped);
    let reporters = if fresh.is_empty() {
        Vec::new()
    } else {
        skip_reporters(view, config)
    };
    for s in fresh {
        warn!(node = %s.node, reason = %s.reason, "peer skipped");
        // A Warning Event on the skipped Node too, off the loop: from a few agents of the
        // cluster, rate-limited, since every agent sees the same skip and a burst of hostile
        // Nodes (or one flapping its annotations) would flood the API. The log has every one.
        if reports_skip(&reporters, &s.node) && st.skip_events.take() {
            let (events, node, why) = (events.clone(), s.node.clone(), s.reason.to_string());
            tokio::spawn(async move { events.peer_skipped(&node, &why).await });
        }
    }
    for node in cleared {
        info!(%node, "peer no longer skipped (fixed or deleted)");
    }
    metrics.set_skipped(
        plan.skipped
            .iter()
            .filter(|s| !s.reason.is_benign())
            .map(|s| s.reason.label()),
    );
    metrics
        .peers
        .store(plan.peers as u64, std::sync::atomic::Ordering::Relaxed);

    let backend_now = config.backend.kind();
    if let Some(prev) = st.applied_backend {
        if prev != backend_now && st.switch_started.is_none() {
            info!(
                from = prev.as_str(),
                to = backend_now.as_str(),
                "switching backend"
            );
            st.switch_started = Some((prev, backend_now, started));
        }
    }

    let mut ok = true;
    let full = std::mem::take(&mut st.full);
    let kernel_known = std::mem::take(&mut st.kernel_known);
    // Shared with the executor, which keeps it as what the kernel holds: no copy.
    let desired_kernel = Arc::new(std::mem::take(&mut plan.state.kernel));
    let kernel = async {
        if full && !kernel_known {
            dataplane.reconcile_shared(desired_kernel.clone()).await
        } else {
            dataplane.reconcile_known(desired_kernel.clone()).await
        }
    };
    // The rules do not depend on the kernel entries: check them meanwhile. At start the
    // check made during the first list may still be running; the kernel does not wait for it.
    let early = std::mem::replace(&mut st.firewall_early, EarlyCheck::Spent);
    let (old_firewall, synced, installed) = (
        &mut st.old_firewall,
        &mut st.firewall_synced,
        &mut st.firewall_installed,
    );
    let rules = async {
        let mut checked_early = false;
        if let EarlyCheck::Running(task) = early {
            match task.await {
                Ok(e) => {
                    *firewall = e.firewall;
                    *synced = e.synced;
                    *installed = e.installed;
                    checked_early = e.checked;
                }
                Err(e) => warn!("firewall check at start failed to run: {e}"),
            }
        }
        *firewall = ensure_firewall(firewall.take(), config, old_firewall).await;
        // Checked during the first list already: this pass needs the check only if the
        // rules changed since (sync_firewall compares them).
        sync_firewall(
            firewall.as_ref(),
            old_firewall,
            synced,
            installed,
            &plan.state.firewall,
            full && !checked_early,
        )
        .await
    };
    // Peers read the annotations, not our kernel: published by a task of its own, so that
    // kernel repair never waits on the API server. It compares them with the Node watch's copy
    // of our Node (a full pass makes it read the Node while that copy is not there yet).
    advertiser.advertise(plan.state.advertisement.to_annotations(&keys), full);
    let (reconciled, (firewall_ok, firewall_drift)) = tokio::join!(kernel, rules);
    ok &= firewall_ok;
    // This node's own side: what readiness means. Peer entries are reported apart.
    let mut not_programmed: Vec<String> = Vec::new();
    if !firewall_ok {
        not_programmed.push("the firewall rules are not in place (see the log)".into());
    }
    match reconciled {
        Ok(report) => {
            for (label, n) in &report.applied_by_label {
                metrics.record_ops(label, *n as u64);
            }
            if report.ops_applied > 0 {
                info!(ops = report.ops_applied, peers = plan.peers, read_kernel = report.read_kernel, planned = ?planned, took = ?report.duration, "kernel reconciled");
            }
            let own = own_devices(config);
            for e in report.own_errors(&own) {
                warn!("{e}");
            }
            if let Some(e) = report.own_errors(&own).next() {
                not_programmed.push(format!("this node's devices are not programmed: {e}"));
                ok = false;
            }
            // Refused peer entries are retried on their own backoff, not by making every
            // pass a full one.
            note_peer_failures(st, metrics, &report, &own);
        }
        Err(e) => {
            warn!("cannot read kernel state: {e}");
            not_programmed.push(format!("cannot read kernel state: {e}"));
            ok = false;
        }
    }
    match trellis_cni::subnet_env::write_atomic(&args.subnet_file, &plan.state.subnet_env) {
        Ok(true) => {
            info!(path = %args.subnet_file.display(), mtu = plan.state.mtu, "subnet.env written")
        }
        Ok(false) => {}
        Err(e) => {
            warn!("{e}");
            not_programmed.push(e.to_string());
            ok = false;
        }
    }
    if !advertiser.published().annotations_once {
        not_programmed.push("annotations not advertised yet".into());
    }
    // Programmed: the network works for this node's pods, so the Node may take them
    // (NetworkUnavailable=False). What the host lacks is reported by readiness only.
    let programmed = not_programmed.is_empty();
    if full {
        check_host(config, events, st);
    }
    let mut reasons = not_programmed;
    if let Err(why) = &st.host {
        reasons.push(why.clone());
    }
    report_readiness(st, metrics, reasons);
    if programmed {
        advertiser.network_available(backend_now);
        if let Some((from, to, t0)) = st.switch_started.take() {
            let took = t0.elapsed();
            metrics
                .backend_switches
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            info!(from = from.as_str(), to = to.as_str(), took = ?took, "backend switched");
            // Off the loop: the Event waits on the API server, kernel repair must not.
            let events = events.clone();
            tokio::spawn(async move { events.backend_switched(from, to, took).await });
        }
        st.applied_backend = Some(backend_now);
    }
    if !ok {
        // Whatever failed is retried by a full pass, not assumed done.
        st.full = true;
    }
    metrics.set_backend(backend_now.as_str());
    metrics.record_reconcile(started.elapsed(), ok);
    // Gather what needs awaiting before taking the view lock: a std Mutex
    // must not be held across an await.
    let firewall_backend = match firewall.as_ref().map(Firewall::backend) {
        Some(FwBackend::Iptables) => "iptables",
        Some(FwBackend::Nftables) => "nftables",
        None => "unavailable",
    };
    let ctx = {
        let v = lock_view(view);
        let l = v.local();
        PassContext {
            node: l.node_name.clone(),
            backend: backend_now.as_str().to_string(),
            lease: format!(
                "{} public {}",
                l.subnet_v4
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "-".into()),
                l.public_ip_v4
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "-".into())
            ),
            underlay: format!(
                "{} (index {}, mtu {})",
                l.underlay.name, l.underlay.index, l.underlay.mtu
            ),
            firewall_backend: firewall_backend.to_string(),
            firewall: st.firewall_installed.clone(),
            firewall_drift,
            converged: ok,
            peer_errors: st
                .peer_failures
                .current()
                .map(|(entry, error)| (entry.clone(), error.clone()))
                .collect(),
        }
    };
    let _ = debug_tx.send(Arc::new(DebugState::new(plan, desired_kernel, ctx)));
}

/// Check what the host must provide and the agent cannot set itself (CAP_NET_ADMIN,
/// br_netfilter); say so loudly (error log, Warning Event) when it changes. Readiness reports
/// it meanwhile.
fn check_host(config: &NetConfig, events: &NodeEvents, st: &mut LoopState) {
    // Every problem at once, so fixing one does not reveal the next only then.
    let problems: Vec<String> = [
        crate::capabilities::check(
            crate::capabilities::effective(),
            crate::capabilities::runs_as_root(),
        ),
        BridgeNf::read().check(config.ipv4().is_some(), config.ipv6().is_some()),
    ]
    .into_iter()
    .filter_map(Result::err)
    .collect();
    let now = if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    };
    if now == st.host {
        return;
    }
    match &now {
        Err(why) => {
            error!("{why}");
            let (events, why) = (events.clone(), why.clone());
            tokio::spawn(async move { events.host_not_ready(&why).await });
        }
        Ok(()) => info!(
            "the host provides what trellis needs: CAP_NET_ADMIN, and br_netfilter for \
             Services between pods on this node"
        ),
    }
    st.host = now;
}

/// Readiness from this pass's reasons (none: ready). Not sticky, but one failing pass of a
/// node that was ready is taken for a hiccup (the xtables lock held, a netlink dump
/// interrupted): it is retried within a second, and only a second failure in a row makes the
/// node not ready.
fn report_readiness(st: &mut LoopState, metrics: &Metrics, reasons: Vec<String>) {
    if reasons.is_empty() {
        st.failing_passes = 0;
        metrics.set_programmed(Ok(()));
        return;
    }
    st.failing_passes += 1;
    let soon = tokio::time::Instant::now() + OWN_RETRY;
    st.retry_at = Some(st.retry_at.map_or(soon, |t| t.min(soon)));
    if st.failing_passes >= 2 || !metrics.is_programmed() {
        metrics.set_programmed(Err(reasons.join("; ")));
    }
}

/// The devices this node needs whatever its peers do: the configured backend's. Devices made
/// only for peers (another VNI during a change, the old backend's during a switch) are not.
fn own_devices(config: &NetConfig) -> Vec<String> {
    use crate::config::BackendConfig;
    use crate::net::{vxlan6_link_name, vxlan_link_name, IPIP_LINK_NAME};
    match &config.backend {
        BackendConfig::Vxlan(v) => {
            let mut own = vec![vxlan_link_name(v.vni)];
            if config.ipv6().is_some() {
                own.push(vxlan6_link_name(v.vni));
            }
            own
        }
        BackendConfig::Ipip(_) => vec![IPIP_LINK_NAME.to_string()],
        BackendConfig::HostGw(_) => Vec::new(),
    }
}

/// Report the peer entries the kernel refused (each once when it starts, changes or ends),
/// count them, and schedule their retry: a full pass after a backoff, reset once none fails.
fn note_peer_failures(
    st: &mut LoopState,
    metrics: &Metrics,
    report: &crate::dataplane::netlink::ReconcileReport,
    own: &[String],
) {
    let (fresh, cleared) = st.peer_failures.update(report.peer_errors(own));
    for e in fresh {
        warn!(
            "peer entry refused by the kernel (other peers unaffected; retrying with backoff): {e}"
        );
    }
    for entry in cleared {
        info!(%entry, "peer entry no longer failing");
    }
    metrics.record_peer_errors(
        report
            .peer_errors(own)
            .map(|e| readiness::errno_label(e.errno)),
        st.peer_failures.len(),
    );
    if st.peer_failures.is_empty() {
        st.peer_backoff.reset();
        st.retry_at = None;
    } else {
        st.retry_at = Some(tokio::time::Instant::now() + st.peer_backoff.next_delay());
    }
}

/// Bring the firewall to `rules`: finish a backend switch, then check (and repair) the rules
/// on a full pass or when they changed. Returns whether it holds them and the drift repaired.
async fn sync_firewall(
    firewall: Option<&Firewall>,
    old: &mut Option<Firewall>,
    synced: &mut Option<RuleSet>,
    installed: &mut String,
    rules: &RuleSet,
    full: bool,
) -> (bool, String) {
    let Some(current) = firewall else {
        return (false, String::new());
    };
    if let Some(prev) = old.as_ref() {
        *synced = None;
        match fw::switch(prev, current, rules).await {
            Ok(()) => *old = None,
            Err(e) => warn!("firewall switch (will retry): {e}"),
        }
    }
    if !full && synced.as_ref() == Some(rules) {
        return (true, String::new());
    }
    *synced = None;
    let result = match current.resync(rules).await {
        Ok(d) => {
            *synced = Some(rules.clone());
            let mut drift = String::new();
            if !d.is_clean() {
                info!("firewall rules resynced:\n{d}");
                drift = d.to_string();
            }
            (true, drift)
        }
        Err(e) => {
            warn!("firewall: {e}");
            (false, String::new())
        }
    };
    *installed = current.installed().await.to_string();
    result
}

/// The firewall executor for `config`, switching backends without a gap
/// when `EnableNFTables` changed, and retrying detection when the tools were
/// missing last time.
async fn ensure_firewall(
    current: Option<Firewall>,
    config: &NetConfig,
    old: &mut Option<Firewall>,
) -> Option<Firewall> {
    let want = FwBackend::from_enable_nftables(config.enable_nftables);
    if current.as_ref().is_some_and(|f| f.backend() == want) {
        return current;
    }
    let next = match Firewall::detect(want, Exec::new()).await {
        Ok(f) => f,
        Err(e) => {
            error!("firewall backend unavailable: {e}");
            return current;
        }
    };
    if let Some(prev) = current {
        // The pass right after installs the rules in `next`, then removes `prev`'s.
        info!(from = ?prev.backend(), to = ?want, "switching firewall backend");
        *old = Some(prev);
    } else {
        // Leftovers of the other backend from before a restart with a changed config.
        if let Ok(other) = Firewall::detect(want.other(), Exec::new()).await {
            if !other.same_rules_as(&next) {
                let _ = other.cleanup().await;
            }
        }
    }
    Some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_agents_report_each_skipped_node() {
        let nodes: Vec<String> = (1..=7).map(|i| format!("node-{i}")).collect();
        for skipped in ["zz-thief", "h-ip", "old-cidr", "a"] {
            let reporting = nodes
                .iter()
                .filter(|me| {
                    // Each agent lists itself first, then the others.
                    let mut view = vec![me.to_string()];
                    view.extend(nodes.iter().filter(|n| n != me).cloned());
                    reports_skip(&view, skipped)
                })
                .count();
            assert_eq!(reporting, SKIP_REPORTERS, "{skipped}");
        }
    }

    #[test]
    fn skip_events_come_in_a_bounded_burst() {
        let mut limit = RateLimit::new();
        let sent = (0..100).filter(|_| limit.take()).count();
        assert_eq!(sent, SKIP_EVENTS_BURST as usize);
    }
}

//! Everything before the first pass, in the order it happens:
//!
//! 1. The health endpoint, first, so that `/healthz` answers while the agent waits (the
//!    waits below keep beating the heartbeat: waiting is not hanging).
//! 2. This node's lease: the Node must exist with `spec.podCIDRs`; the public IP and VTEP
//!    MACs come from its annotations (overrides, or the ones it advertised before) or are
//!    derived from the underlay interface and the node name.
//! 3. The config source: a file (static, read once) or the ConfigMap (live: a change
//!    switches backends). Nothing is planned before a valid net-conf.json.
//! 4. The Node watcher, the advertiser and the kernel drift monitor.
//!
//! Then, until the first Node list is complete, the loop runs no pass (planning from a
//! partial view would delete the entries of peers not listed yet), but it gets ahead of the
//! first pass, so that it is short and readiness comes soon:
//! - the firewall rules need no peer: they are checked in a task of their own
//!   ([`FirewallSync::start_early`]), whose result the first pass takes over;
//! - the devices and the peers listed so far are *added* to the kernel (prefill), never
//!   removed from it;
//! - having read the kernel there, the first pass may trust what the executor knows instead
//!   of reading the kernel again, if the drift monitor saw nothing since
//!   ([`Agent::first_list_done`]).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{error, info, warn};

use super::{beating, Agent, AgentError, FirewallSync, PassState, RunArgs, Triggers};
use crate::advertiser::Advertiser;
use crate::annotations::AnnotationKeys;
use crate::backend::{self, PlanOptions};
use crate::cluster::{
    self, lock_view, ClientSource, ConfigSource, ConfigWatcher, NodeEvents, NodeWatchOptions,
    NodeWatcher, OwnNode, OwnNodeState, SharedView, ViewStatus, WaitOptions,
};
use crate::config::NetConfig;
use crate::dataplane::netlink::{Dataplane, DriftMonitor};
use crate::debug_state::DebugState;
use crate::health::{self, HealthState};
use crate::metrics::Metrics;
use crate::net::Mac;
use crate::underlay::{self, IfaceOptions};
use crate::view::{ClusterView, LocalLease, Underlay};

/// Start-up's part in the passes while the first Node list arrives.
#[derive(Default)]
pub(super) struct FirstList {
    /// The devices were programmed before the first Node arrived.
    prefilled_devices: bool,
    /// The first pass after the list has run.
    done: bool,
}

/// Serve health, wait for this node's lease and a valid config, start the watchers: see the
/// module docs.
pub(super) async fn start(args: RunArgs) -> Result<(Agent, Triggers), AgentError> {
    info!(node = %args.node_name, "trellis-agent starting");
    let metrics = Arc::new(Metrics::default());
    let (debug_tx, beat_tx) = serve_health(&args, &metrics).await?;

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

    let mut config = config_source(&args, &client, &events, &metrics)?;
    if config.borrow().is_none() {
        info!(
            "waiting for a valid net-conf.json in ConfigMap {}/{}",
            args.configmap_namespace, args.configmap_name
        );
    }
    metrics.set_programmed(Err(format!(
        "waiting for a valid net-conf.json in ConfigMap {}/{}",
        args.configmap_namespace, args.configmap_name
    )));
    let _ = beating(config.wait_for(Option::is_some), &beat_tx, &metrics).await;
    metrics.set_programmed(Err("waiting for the first complete Node list".into()));
    start_network_policy(&args, &client, &events, &metrics, &config);

    let dataplane = Dataplane::new()?;
    let opts = IfaceOptions {
        iface: args.iface.clone(),
        iface_regex: args.iface_regex.clone(),
        iface_can_reach: args.iface_can_reach,
    };
    let underlay = underlay::discover(dataplane.handle(), &opts).await?;
    info!(iface = %underlay.name, addr = ?underlay.addr_v4, mtu = underlay.mtu, "external interface");
    let mut lease = local_lease(&args.node_name, &own_state, underlay);
    lease.wireguard_kernel = wireguard_kernel();
    lease.wg_key = wireguard_key(&args.wireguard_key_file);
    let view = Arc::new(Mutex::new(ClusterView::new(lease, keys)));
    let watch_options = NodeWatchOptions {
        streaming_list: !args.paged_node_list,
        ..NodeWatchOptions::default()
    };
    let watcher = NodeWatcher::new(client.clone(), view.clone(), watch_options);
    let view_status = watcher.status();
    let advertiser = Advertiser::start(own, events.clone(), watcher.own_node());
    metrics.attach_node_watch(watcher.stats());
    tokio::spawn(watcher.run());
    let underlay_index = lock_view(&view).local().underlay.index;
    let (monitor, drift) =
        DriftMonitor::start_expecting(dataplane.expected(), Some(underlay_index)).await?;
    metrics.attach_drift_monitor(monitor.counters());

    let resync = Duration::from_secs(args.resync_seconds.max(1));
    let agent = Agent {
        subnet_file: args.subnet_file,
        plan_opts: PlanOptions {
            ip_masq: args.ip_masq,
            forward_rules: args.iptables_forward_rules,
        },
        view,
        dataplane,
        firewall: FirewallSync::new(),
        advertiser,
        events,
        metrics,
        debug_tx,
        beat_tx,
        state: PassState::new(resync),
        first_list: FirstList::default(),
    };
    let triggers = Triggers {
        view_status,
        config,
        drift,
        resync: tokio::time::interval(resync),
        sigterm: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(AgentError::Runtime)?,
        _monitor: monitor,
    };
    Ok((agent, triggers))
}

/// The NetworkPolicy controller, in a task of its own: on and off as `--network-policy`
/// says, or else as net-conf.json's `NetworkPolicy.Enabled` does, live.
fn start_network_policy(
    args: &RunArgs,
    client: &kube::Client,
    events: &NodeEvents,
    metrics: &Arc<Metrics>,
    config: &watch::Receiver<Option<Arc<NetConfig>>>,
) {
    let stats = Arc::new(crate::netpol::stats::NetpolStats::default());
    metrics.attach_netpol(stats.clone());
    let wanted = |c: &Option<Arc<NetConfig>>, flag: Option<bool>| {
        flag.unwrap_or_else(|| c.as_ref().is_some_and(|c| c.network_policy))
    };
    let flag = args.network_policy;
    let mut config = config.clone();
    let (tx, rx) = watch::channel(wanted(&config.borrow_and_update(), flag));
    tokio::spawn(async move {
        while config.changed().await.is_ok() {
            let on = wanted(&config.borrow_and_update(), flag);
            tx.send_if_modified(|v| std::mem::replace(v, on) != on);
        }
    });
    let controller = crate::netpol::controller::Controller {
        client: client.clone(),
        node: args.node_name.clone(),
        exec: crate::firewall::tool::Exec::new(),
        stats,
        events: Some(events.clone()),
        resync: Duration::from_secs(args.resync_seconds.max(1)),
    };
    tokio::spawn(controller.run(rx));
}

type DebugTx = watch::Sender<Arc<DebugState>>;

/// Serve `/healthz`, `/readyz`, `/metrics` and `/debug/state`; returns where the loop hands
/// over the last pass and its heartbeat.
async fn serve_health(
    args: &RunArgs,
    metrics: &Arc<Metrics>,
) -> Result<(DebugTx, watch::Sender<Instant>), AgentError> {
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
    Ok((debug_tx, beat_tx))
}

/// The config: a file (static) or the ConfigMap (live).
fn config_source(
    args: &RunArgs,
    client: &kube::Client,
    events: &NodeEvents,
    metrics: &Metrics,
) -> Result<watch::Receiver<Option<Arc<NetConfig>>>, AgentError> {
    let Some(path) = &args.net_conf_file else {
        let w = ConfigWatcher::new(
            client.clone(),
            ConfigSource::new(&args.configmap_namespace, &args.configmap_name),
            Some(events.clone()),
        );
        let rx = w.subscribe();
        metrics.attach_config_watch(w.stats());
        tokio::spawn(w.run());
        return Ok(rx);
    };
    let config_error = |why: String| AgentError::ConfigFile {
        path: path.clone(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|e| config_error(e.to_string()))?;
    let parsed = NetConfig::parse(&text).map_err(|e| config_error(e.to_string()))?;
    crate::cluster::config_watch::host_support(&parsed.config).map_err(config_error)?;
    for w in &parsed.warnings {
        warn!("net-conf.json: {w}");
    }
    let (tx, rx) = watch::channel(Some(Arc::new(parsed.config)));
    // Never changes: the receiver must not see the sender gone.
    std::mem::forget(tx);
    Ok(rx)
}

/// Whether the kernel has WireGuard, asked once (the lookup loads the module where it
/// exists; asking on every pass would run modprobe every 10 s where it does not).
fn wireguard_kernel() -> bool {
    use crate::dataplane::netlink::wireguard::{WgError, WgSocket};
    match WgSocket::open() {
        Err(e @ WgError::Unsupported) => {
            warn!(
                "{e}; WireGuard peers are skipped (reason wireguard_unavailable); load the \
                 module, then restart the agent to use WireGuard"
            );
            false
        }
        _ => true,
    }
}

/// The node's WireGuard key pair. Without one the node runs every other backend; WireGuard
/// (its own, or a peer's) is refused with the reason logged here.
fn wireguard_key(path: &std::path::Path) -> Option<crate::wg_key::WgKeyPair> {
    use crate::wg_keyfile::{load_or_create, Origin};
    match load_or_create(path) {
        Ok((key, origin, warning)) => {
            if let Some(w) = warning {
                warn!("{w}");
            }
            let how = match origin {
                Origin::Existing => "read",
                Origin::Created => "made",
            };
            info!(path = %path.display(), public_key = %key.public, "WireGuard key {how}");
            Some(key)
        }
        Err(e) => {
            error!("{e}; WireGuard cannot be used on this node");
            None
        }
    }
}

/// This node's lease: the Node's podCIDRs, its annotated public IPs and VTEP MACs where set,
/// else the underlay's addresses and MACs derived from the node name (stable across
/// restarts, so peers need not reprogram).
fn local_lease(node_name: &str, own: &OwnNodeState, underlay: Underlay) -> LocalLease {
    let mut lease = LocalLease {
        node_name: node_name.to_string(),
        subnet_v4: own.subnet_v4,
        subnet_v6: own.subnet_v6,
        public_ip_v4: None,
        public_ip_v6: None,
        public_ip_override_v4: own.public_ip_override_v4,
        public_ip_override_v6: own.public_ip_override_v6,
        vtep_mac_v4: own
            .vtep_mac_v4
            .unwrap_or_else(|| Mac::derived(&format!("{node_name}/vtep4"))),
        vtep_mac_v6: own
            .vtep_mac_v6
            .unwrap_or_else(|| Mac::derived(&format!("{node_name}/vtep6"))),
        underlay,
        wg_key: None,
        wireguard_kernel: false,
    };
    lease.refresh_public_ips();
    lease
}

impl Agent {
    /// While the first Node list arrives: start the firewall check (once) and prefill the
    /// kernel with what the view holds so far.
    pub(super) async fn while_listing(
        &mut self,
        status: ViewStatus,
        config: Option<Arc<NetConfig>>,
    ) {
        let Some(config) = config else {
            return;
        };
        let (view, plan_opts) = (&self.view, &self.plan_opts);
        self.firewall.start_early(&config, || {
            let v = lock_view(view);
            backend::firewall_rules(v.local(), &config, plan_opts).ok()
        });
        // Also before any Node is listed: the devices and their addresses need no
        // peer, and making them is the slowest part of the first prefill.
        if status.listed > 0 || !self.first_list.prefilled_devices {
            self.first_list.prefilled_devices = true;
            prefill(&self.view, &config, &self.plan_opts, &mut self.dataplane).await;
        }
    }

    /// Called before every pass once the list is complete. The first pass after the list may
    /// diff against what the executor knows: the prefill passes read the kernel, and the
    /// drift monitor has watched it since (`drift_idle`: it has reported nothing).
    pub(super) fn first_list_done(&mut self, drift_idle: bool) {
        if !std::mem::replace(&mut self.first_list.done, true) && self.first_list.prefilled_devices
        {
            self.state.kernel_known = drift_idle;
        }
    }
}

/// Program the peers listed so far while the first Node list is still arriving, adding only
/// (see `Dataplane::reconcile_additions`). Failures are left to the first full pass.
async fn prefill(
    view: &SharedView,
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

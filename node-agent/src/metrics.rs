//! The agent's Prometheus metrics: plain atomics and a small text renderer
//! (no registry crate: the set is fixed and small).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::cluster::{ConfigStats, NodeWatchStats};
use crate::dataplane::netlink::MonitorCounters;
use crate::readiness;

#[derive(Default)]
pub struct Metrics {
    pub peers: AtomicU64,
    pub nodes_seen: AtomicU64,
    pub reconciles: AtomicU64,
    pub reconcile_errors: AtomicU64,
    reconcile_micros_sum: AtomicU64,
    reconcile_micros_last: AtomicU64,
    pub last_success_unix: AtomicU64,
    pub backend_switches: AtomicU64,
    pub drift_events: AtomicU64,
    /// 1 when the last pass programmed this node's own side (see `readiness`).
    ready: AtomicU64,
    /// Why not, when `ready` is 0 after a pass said so.
    not_ready_reason: Mutex<String>,
    /// Peer entries the kernel refused, by `readiness::errno_label`, and how many fail now.
    peer_errors: Mutex<BTreeMap<&'static str, u64>>,
    pub peer_entries_failing: AtomicU64,
    /// When the loop last said it was alive (ms since the Unix epoch).
    heartbeat_unix_ms: AtomicU64,
    ops: Mutex<BTreeMap<String, u64>>,
    skipped: Mutex<BTreeMap<String, u64>>,
    backend: Mutex<String>,
    /// The Node watcher's own counters, read at render time.
    node_watch: OnceLock<Arc<NodeWatchStats>>,
    /// The ConfigMap watcher's, likewise (none with --net-conf-file).
    config_watch: OnceLock<Arc<ConfigStats>>,
    /// The kernel drift monitor's, likewise.
    drift_monitor: OnceLock<MonitorCounters>,
    /// The NetworkPolicy controller's, likewise.
    netpol: OnceLock<Arc<crate::netpol::stats::NetpolStats>>,
}

impl Metrics {
    pub fn record_reconcile(&self, took: Duration, ok: bool) {
        self.reconciles.fetch_add(1, Ordering::Relaxed);
        let us = took.as_micros().min(u64::MAX as u128) as u64;
        self.reconcile_micros_sum.fetch_add(us, Ordering::Relaxed);
        self.reconcile_micros_last.store(us, Ordering::Relaxed);
        if ok {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            self.last_success_unix
                .store(now.as_secs(), Ordering::Relaxed);
        } else {
            self.reconcile_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn record_ops(&self, label: &str, n: u64) {
        if let Ok(mut m) = self.ops.lock() {
            *m.entry(label.to_string()).or_default() += n;
        }
    }

    /// Replace the skipped-peer gauge with the latest plan's reasons.
    pub fn set_skipped<'a>(&self, reasons: impl Iterator<Item = &'a str>) {
        if let Ok(mut m) = self.skipped.lock() {
            for v in m.values_mut() {
                *v = 0;
            }
            for r in reasons {
                *m.entry(r.to_string()).or_default() += 1;
            }
        }
    }

    pub fn set_backend(&self, name: &str) {
        if let Ok(mut b) = self.backend.lock() {
            *b = name.to_string();
        }
    }

    /// Exports the Node watcher's counters, so an operator sees API trouble (errors,
    /// relists after 410) while the kernel keeps running on the last good view.
    pub fn attach_netpol(&self, stats: Arc<crate::netpol::stats::NetpolStats>) {
        let _ = self.netpol.set(stats);
    }

    /// `/debug/netpol`: what the NetworkPolicy controller enforces on this node.
    pub fn netpol_status(&self) -> String {
        match self.netpol.get() {
            Some(s) => s.status(),
            None => "NetworkPolicy enforcement is off\n".to_string(),
        }
    }

    pub fn attach_node_watch(&self, stats: Arc<NodeWatchStats>) {
        let _ = self.node_watch.set(stats);
    }

    /// Exports the ConfigMap watcher's counters: invalid configs, configs taken, API errors.
    pub fn attach_config_watch(&self, stats: Arc<ConfigStats>) {
        let _ = self.config_watch.set(stats);
    }

    /// Exports the drift monitor's counters: drift signalled, the agent's own changes
    /// recognised, notifications the kernel dropped.
    pub fn attach_drift_monitor(&self, counters: MonitorCounters) {
        let _ = self.drift_monitor.set(counters);
    }

    /// What the last pass found of this node's own side: `Err(why)` when not programmed.
    pub fn set_programmed(&self, programmed: Result<(), String>) {
        let why = programmed.err();
        if let Ok(mut r) = self.not_ready_reason.lock() {
            *r = why.clone().unwrap_or_default();
        }
        self.ready
            .store(u64::from(why.is_none()), Ordering::Relaxed);
    }

    /// Whether the last pass found this node's own side programmed (host checks included).
    pub fn is_programmed(&self) -> bool {
        self.ready.load(Ordering::Relaxed) == 1
    }

    /// Whether `/readyz` answers ready (see `crate::readiness`), and if not, why.
    pub fn readiness(&self) -> Result<(), String> {
        if self.ready.load(Ordering::Relaxed) != 1 {
            let why = self
                .not_ready_reason
                .lock()
                .map(|r| r.clone())
                .unwrap_or_default();
            return Err(if why.is_empty() {
                "node not programmed yet".into()
            } else {
                why
            });
        }
        if let Some(w) = self.node_watch.get() {
            let now = readiness::unix_ms();
            let down = readiness::watch_down_for(
                w.outage_since_ms.load(Ordering::Relaxed),
                w.last_error_ms.load(Ordering::Relaxed),
                now,
            );
            if let Some(d) = down.filter(|d| *d > readiness::WATCH_DOWN_LIMIT) {
                return Err(format!(
                    "the Node watch has failed for {}s (limit {}s): peers are not followed",
                    d.as_secs(),
                    readiness::WATCH_DOWN_LIMIT.as_secs()
                ));
            }
        }
        Ok(())
    }

    pub fn is_ready(&self) -> bool {
        self.readiness().is_ok()
    }

    /// The loop is alive (a pass ran, or it waits and says so).
    pub fn beat(&self) {
        self.heartbeat_unix_ms
            .store(readiness::unix_ms(), Ordering::Relaxed);
    }

    /// Counts this pass's refused peer entries, and how many fail now.
    pub fn record_peer_errors(&self, labels: impl Iterator<Item = &'static str>, failing: usize) {
        if let Ok(mut m) = self.peer_errors.lock() {
            for l in labels {
                *m.entry(l).or_default() += 1;
            }
        }
        self.peer_entries_failing
            .store(failing as u64, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut o = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, lines: Vec<(String, f64)>| {
            let _ = writeln!(o, "# HELP {name} {help}");
            let _ = writeln!(o, "# TYPE {name} {kind}");
            for (labels, v) in lines {
                let _ = writeln!(o, "{name}{labels} {v}");
            }
        };
        metric(
            "trellis_peers",
            "gauge",
            "Remote nodes programmed into the kernel.",
            vec![(String::new(), g(&self.peers) as f64)],
        );
        metric(
            "trellis_nodes_seen",
            "gauge",
            "Nodes in the agent's cluster view.",
            vec![(String::new(), g(&self.nodes_seen) as f64)],
        );
        let skipped = self.skipped.lock().map(|m| m.clone()).unwrap_or_default();
        metric(
            "trellis_peers_skipped",
            "gauge",
            "Nodes not programmed, by reason (malformed annotations, overlapping podCIDR, ...).",
            skipped
                .into_iter()
                .map(|(r, n)| (format!("{{reason=\"{r}\"}}"), n as f64))
                .collect(),
        );
        metric(
            "trellis_reconcile_total",
            "counter",
            "Reconcile passes.",
            vec![(String::new(), g(&self.reconciles) as f64)],
        );
        metric(
            "trellis_reconcile_errors_total",
            "counter",
            "Reconcile passes that did not fully succeed.",
            vec![(String::new(), g(&self.reconcile_errors) as f64)],
        );
        metric(
            "trellis_reconcile_duration_seconds_sum",
            "counter",
            "Total time spent reconciling.",
            vec![(String::new(), g(&self.reconcile_micros_sum) as f64 / 1e6)],
        );
        metric(
            "trellis_reconcile_last_duration_seconds",
            "gauge",
            "Duration of the last reconcile.",
            vec![(String::new(), g(&self.reconcile_micros_last) as f64 / 1e6)],
        );
        let ops = self.ops.lock().map(|m| m.clone()).unwrap_or_default();
        metric(
            "trellis_ops_applied_total",
            "counter",
            "Kernel operations applied, by kind.",
            ops.into_iter()
                .map(|(k, n)| (format!("{{op=\"{k}\"}}"), n as f64))
                .collect(),
        );
        metric(
            "trellis_last_successful_sync_timestamp_seconds",
            "gauge",
            "Unix time of the last reconcile that left the kernel as desired.",
            vec![(String::new(), g(&self.last_success_unix) as f64)],
        );
        metric(
            "trellis_backend_switches_total",
            "counter",
            "Live backend switches.",
            vec![(String::new(), g(&self.backend_switches) as f64)],
        );
        if let Some(w) = self.config_watch.get() {
            metric(
                "trellis_config_errors_total",
                "counter",
                "Invalid net-conf.json contents seen, each counted once (the last good one stays).",
                vec![(String::new(), g(&w.rejected) as f64)],
            );
            metric(
                "trellis_config_applied_total",
                "counter",
                "Valid net-conf.json contents taken (the first one included).",
                vec![(String::new(), g(&w.applied) as f64)],
            );
            metric(
                "trellis_config_watch_errors_total",
                "counter",
                "Failed ConfigMap list/watch calls and watch errors (retried with backoff).",
                vec![(String::new(), g(&w.errors) as f64)],
            );
            metric(
                "trellis_config_watch_events_total",
                "counter",
                "ConfigMap list items and watch events received from the API (changed or deleted).",
                vec![(String::new(), g(&w.events) as f64)],
            );
            metric(
                "trellis_config_watch_lists_total",
                "counter",
                "Complete ConfigMap lists (the first, then one per relist).",
                vec![(String::new(), g(&w.lists) as f64)],
            );
        }
        metric(
            "trellis_drift_events_total",
            "counter",
            "Kernel changes not made by trellis that woke a full pass: to trellis-owned state, or to the external interface's addresses.",
            vec![(String::new(), g(&self.drift_events) as f64)],
        );
        if let Some(d) = self.drift_monitor.get().map(MonitorCounters::stats) {
            metric(
                "trellis_drift_monitor_signals_total",
                "counter",
                "Kernel notifications about trellis-owned state that woke the loop for a repair \
                 (changes not made by trellis, and overruns).",
                vec![(String::new(), d.relevant as f64)],
            );
            metric(
                "trellis_drift_monitor_expected_total",
                "counter",
                "Kernel notifications about trellis-owned state that matched the agent's own changes.",
                vec![(String::new(), d.expected as f64)],
            );
            metric(
                "trellis_drift_monitor_overruns_total",
                "counter",
                "Times the kernel dropped netlink notifications (socket buffer full): a full pass follows.",
                vec![(String::new(), d.overruns as f64)],
            );
        }
        metric(
            "trellis_ready",
            "gauge",
            "1 when /readyz answers ready: own devices, addresses, subnet.env and firewall programmed, Node watch live.",
            vec![(String::new(), if self.is_ready() { 1.0 } else { 0.0 })],
        );
        metric(
            "trellis_heartbeat_timestamp_seconds",
            "gauge",
            "When the agent's loop last turned (a pass, or a wait it reports); /healthz fails when it stalls.",
            vec![(String::new(), g(&self.heartbeat_unix_ms) as f64 / 1000.0)],
        );
        let peer_errors = self
            .peer_errors
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default();
        metric(
            "trellis_peer_errors_total",
            "counter",
            "Peer entries (routes, neighbours, FDB) the kernel refused, by errno; retried with backoff.",
            peer_errors
                .into_iter()
                .map(|(r, n)| (format!("{{reason=\"{r}\"}}"), n as f64))
                .collect(),
        );
        metric(
            "trellis_peer_entries_failing",
            "gauge",
            "Peer entries that failed in the last pass.",
            vec![(String::new(), g(&self.peer_entries_failing) as f64)],
        );
        if let Some(w) = self.node_watch.get() {
            metric(
                "trellis_node_watch_events_total",
                "counter",
                "Node list items and watch events received from the API.",
                vec![(String::new(), g(&w.events) as f64)],
            );
            metric(
                "trellis_node_watch_relists_total",
                "counter",
                "Complete Node lists (the first, then one per 410 Gone or failed resume).",
                vec![(String::new(), g(&w.relists) as f64)],
            );
            metric(
                "trellis_node_watch_errors_total",
                "counter",
                "Failed Node list/watch calls and watch stream errors (retried with backoff).",
                vec![(String::new(), g(&w.errors) as f64)],
            );
            metric(
                "trellis_node_watch_idle_restarts_total",
                "counter",
                "Node watches restarted after no answer for longer than their timeout.",
                vec![(String::new(), g(&w.idle_restarts) as f64)],
            );
        }
        let backend = self.backend.lock().map(|b| b.clone()).unwrap_or_default();
        metric(
            "trellis_backend_info",
            "gauge",
            "The backend this node runs.",
            vec![(format!("{{backend=\"{backend}\"}}"), 1.0)],
        );
        if let Some(n) = self.netpol.get() {
            n.render(&mut o);
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.peers.store(3, Ordering::Relaxed);
        m.record_reconcile(Duration::from_millis(5), true);
        m.record_reconcile(Duration::from_millis(5), false);
        m.record_ops("add_route", 1);
        m.set_skipped(["overlap", "overlap", "bad_annotation"].into_iter());
        m.set_backend("vxlan");
        let t = m.render();
        assert!(t.contains("trellis_peers 3"));
        assert!(!t.contains("trellis_node_watch"), "no watcher attached yet");
        assert!(t.contains("trellis_reconcile_total 2"));
        assert!(t.contains("trellis_reconcile_errors_total 1"));
        assert!(t.contains("trellis_ops_applied_total{op=\"add_route\"} 1"));
        assert!(t.contains("trellis_peers_skipped{reason=\"overlap\"} 2"));
        assert!(t.contains("trellis_backend_info{backend=\"vxlan\"} 1"));
        assert!(t.contains("# TYPE trellis_reconcile_total counter"));
    }

    #[test]
    fn renders_the_node_watchers_counters_once_attached() {
        let m = Metrics::default();
        let w = Arc::new(NodeWatchStats::default());
        m.attach_node_watch(w.clone());
        w.errors.fetch_add(3, Ordering::Relaxed);
        w.relists.fetch_add(2, Ordering::Relaxed);
        let c = Arc::new(ConfigStats::default());
        m.attach_config_watch(c.clone());
        c.rejected.fetch_add(2, Ordering::Relaxed);
        c.lists.fetch_add(1, Ordering::Relaxed);
        assert!(
            !m.render().contains("trellis_drift_monitor"),
            "no monitor attached yet"
        );
        m.attach_drift_monitor(MonitorCounters::default());
        let t = m.render();
        assert!(t.contains("trellis_config_errors_total 2"), "{t}");
        assert!(t.contains("trellis_config_watch_lists_total 1"), "{t}");
        assert!(t.contains("trellis_config_watch_events_total 0"), "{t}");
        assert!(t.contains("trellis_drift_monitor_overruns_total 0"), "{t}");
        assert!(
            t.contains("# TYPE trellis_drift_monitor_signals_total counter"),
            "{t}"
        );
        assert!(t.contains("trellis_node_watch_errors_total 3"), "{t}");
        assert!(t.contains("trellis_node_watch_relists_total 2"), "{t}");
        assert!(t.contains("trellis_node_watch_events_total 0"), "{t}");
    }
}

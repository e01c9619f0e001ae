//! One pass: plan from the view and the config, then reconcile the kernel and the firewall
//! side by side (neither depends on the other), advertise, write subnet.env, and say whether
//! this node is programmed. See the module docs of [`super`] for full and light passes.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::skips::RateLimit;
use super::Agent;
use crate::backend::{self, Plan};
use crate::cluster::{lock_view, Backoff, BackoffPolicy};
use crate::config::{BackendType, NetConfig};
use crate::dataplane::netlink::{NetlinkError, ReconcileReport};
use crate::readiness::PeerFailures;
use crate::underlay;
use crate::view::SkipLog;

/// What a pass leaves to the next ones.
pub(super) struct PassState {
    /// The backend of the last pass that programmed this node.
    pub(super) applied_backend: Option<BackendType>,
    /// A backend switch under way (from, to, when it started), until a pass programs it.
    pub(super) switch_started: Option<(BackendType, BackendType, Instant)>,
    /// The next pass must be a full one (see module docs of [`super`]).
    pub(super) full: bool,
    /// The next full pass may diff against what the executor knows instead of reading the
    /// kernel: set by start-up for the first pass after the list (see `startup`).
    pub(super) kernel_known: bool,
    pub(super) skip_log: SkipLog,
    pub(super) skip_events: RateLimit,
    /// Peer entries the kernel refused, retried by a full pass after a backoff.
    pub(super) peer_failures: PeerFailures,
    pub(super) peer_backoff: Backoff,
    /// When the next full pass retries what failed (peer entries, or this node's own side).
    pub(super) retry_at: Option<tokio::time::Instant>,
    /// What the host lacks that the agent cannot fix (br_netfilter), as last checked.
    pub(super) host: Result<(), String>,
    /// Passes in a row whose own side failed.
    pub(super) failing_passes: u32,
    /// Why the underlay interface could not be re-read, as last logged.
    pub(super) underlay_error: Option<String>,
}

impl PassState {
    /// The first pass is a full one; refused peer entries are retried at least every
    /// `resync`.
    pub(super) fn new(resync: Duration) -> Self {
        PassState {
            applied_backend: None,
            switch_started: None,
            full: true,
            kernel_known: false,
            skip_log: SkipLog::default(),
            skip_events: RateLimit::new(),
            peer_failures: PeerFailures::default(),
            peer_backoff: Backoff::new(BackoffPolicy {
                initial: Duration::from_secs(1),
                max: resync,
            }),
            retry_at: None,
            host: Ok(()),
            failing_passes: 0,
            underlay_error: None,
        }
    }
}

impl Agent {
    /// On a full pass (the drift monitor asks for one when the underlay's addresses change):
    /// the underlay interface as it is now, so that a new address moves the lease (tunnel
    /// source, advertised public IP, and so every peer's route to us) without a restart. A
    /// failed read keeps the lease as it was.
    async fn follow_underlay(&mut self) {
        let current = lock_view(&self.view).local().underlay.clone();
        match underlay::reread(self.dataplane.handle(), &current).await {
            Ok(now) => {
                self.state.underlay_error = None;
                let moved = (now.addr_v4, now.addr_v6, now.mtu)
                    != (current.addr_v4, current.addr_v6, current.mtu);
                if moved {
                    info!(
                        iface = %now.name,
                        from = ?(current.addr_v4, current.addr_v6, current.mtu),
                        to = ?(now.addr_v4, now.addr_v6, now.mtu),
                        "the underlay interface changed: following it"
                    );
                }
                if now != current {
                    // Also when only the routes on-link decisions look up changed.
                    lock_view(&self.view).set_underlay(now);
                }
            }
            Err(e) => {
                let why = e.to_string();
                if self.state.underlay_error.as_ref() != Some(&why) {
                    warn!(iface = %current.name, "cannot re-read the underlay interface, keeping what was read before: {why}");
                    self.state.underlay_error = Some(why);
                }
            }
        }
    }

    pub(super) async fn pass(&mut self, config: &Arc<NetConfig>) {
        let started = Instant::now();
        if self.state.full {
            self.follow_underlay().await;
        }
        let (plan, keys) = {
            let v = lock_view(&self.view);
            self.metrics
                .nodes_seen
                .store(v.node_count() as u64, Ordering::Relaxed);
            (backend::plan(&v, config, &self.plan_opts), v.keys().clone())
        };
        let planned = started.elapsed();
        let mut plan = match plan {
            Ok(p) => p,
            Err(e) => {
                error!("cannot program this node: {e}");
                self.metrics
                    .set_programmed(Err(format!("cannot program this node: {e}")));
                self.metrics.record_reconcile(started.elapsed(), false);
                return;
            }
        };
        self.report_skips(&plan, config);
        self.metrics
            .peers
            .store(plan.peers as u64, Ordering::Relaxed);
        let backend_now = config.backend.kind();
        self.note_switch_start(backend_now, started);

        let full = std::mem::take(&mut self.state.full);
        let kernel_known = std::mem::take(&mut self.state.kernel_known);
        // Shared with the executor, which keeps it as what the kernel holds: no copy.
        let desired_kernel = Arc::new(std::mem::take(&mut plan.state.kernel));
        // Peers read the annotations, not our kernel: published by a task of its own, so that
        // kernel repair never waits on the API server. It compares them with the Node watch's
        // copy of our Node (a full pass makes it read the Node while that copy is not there
        // yet).
        self.advertiser
            .advertise(plan.state.advertisement.to_annotations(&keys), full);
        let dataplane = &mut self.dataplane;
        let kernel = async {
            if full && !kernel_known {
                dataplane.reconcile_shared(desired_kernel.clone()).await
            } else {
                dataplane.reconcile_known(desired_kernel.clone()).await
            }
        };
        // The rules do not depend on the kernel entries: check them meanwhile. At start the
        // check made during the first list may still be running; the kernel does not wait
        // for it.
        let rules = self.firewall.sync(config, &plan.state.firewall, full);
        let (reconciled, (firewall_ok, firewall_drift)) = tokio::join!(kernel, rules);

        // This node's own side: what readiness means. Peer entries are reported apart.
        let mut not_programmed: Vec<String> = Vec::new();
        if !firewall_ok {
            not_programmed.push("the firewall rules are not in place (see the log)".into());
        }
        let kernel_ok =
            self.note_reconciled(reconciled, config, &plan, planned, &mut not_programmed);
        let subnet_env_ok = self.write_subnet_env(&plan, &mut not_programmed);
        let ok = firewall_ok && kernel_ok && subnet_env_ok;
        if !self.advertiser.published().annotations_once {
            not_programmed.push("annotations not advertised yet".into());
        }
        // Programmed: the network works for this node's pods, so the Node may take them
        // (NetworkUnavailable=False). What the host lacks is reported by readiness only.
        let programmed = not_programmed.is_empty();
        if full {
            self.check_host(config);
        }
        let mut reasons = not_programmed;
        if let Err(why) = &self.state.host {
            reasons.push(why.clone());
        }
        self.report_readiness(reasons);
        if programmed {
            self.programmed(backend_now);
        }
        if !ok {
            // Whatever failed is retried by a full pass, not assumed done.
            self.state.full = true;
        }
        self.metrics.set_backend(backend_now.as_str());
        self.metrics.record_reconcile(started.elapsed(), ok);
        self.publish_debug(plan, desired_kernel, backend_now, firewall_drift, ok);
    }

    /// Log and count what the kernel reconciliation did; its failures on this node's own
    /// devices go to `not_programmed`, refused peer entries to their own retry. Returns
    /// whether this node's side is in place.
    fn note_reconciled(
        &mut self,
        reconciled: Result<ReconcileReport, NetlinkError>,
        config: &NetConfig,
        plan: &Plan,
        planned: Duration,
        not_programmed: &mut Vec<String>,
    ) -> bool {
        let report = match reconciled {
            Ok(report) => report,
            Err(e) => {
                warn!("cannot read kernel state: {e}");
                not_programmed.push(format!("cannot read kernel state: {e}"));
                return false;
            }
        };
        for (label, n) in &report.applied_by_label {
            self.metrics.record_ops(label, *n as u64);
        }
        if report.ops_applied > 0 {
            info!(ops = report.ops_applied, peers = plan.peers, read_kernel = report.read_kernel, planned = ?planned, took = ?report.duration, "kernel reconciled");
        }
        let own = super::report::own_devices(config);
        for e in report.own_errors(&own) {
            warn!("{e}");
        }
        let mut ok = true;
        if let Some(e) = report.own_errors(&own).next() {
            not_programmed.push(format!("this node's devices are not programmed: {e}"));
            ok = false;
        }
        // Refused peer entries are retried on their own backoff, not by making every
        // pass a full one.
        self.note_peer_failures(&report, &own);
        ok
    }

    /// Write subnet.env for the CNI plugin if it changed. Returns whether it is in place.
    fn write_subnet_env(&self, plan: &Plan, not_programmed: &mut Vec<String>) -> bool {
        match trellis_common::subnet_env::write_atomic(&self.subnet_file, &plan.state.subnet_env) {
            Ok(true) => {
                info!(path = %self.subnet_file.display(), mtu = plan.state.mtu, "subnet.env written");
                true
            }
            Ok(false) => true,
            Err(e) => {
                warn!("{e}");
                not_programmed.push(e.to_string());
                false
            }
        }
    }
}

//! The NetworkPolicy controller: a task of its own beside the reconcile loop. While
//! enforcement is on it watches Pods, Namespaces and NetworkPolicies, compiles them into the
//! `inet trellis-netpol` table on every change and applies the difference as one `nft`
//! transaction ([`Kernel`]); turned off, it stops the watches and removes the table.
//!
//! Restart-safe: the table stays in the kernel while the agent is away; the first apply after
//! a start reads it back and changes only what differs, and so does every resync. A failed
//! transaction leaves the previous rules in force (nft applies all of a file or nothing) and
//! is retried, the table then replaced whole.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::Client;
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use super::compile::Compiled;
use super::kernel::{Found, Kernel};
use super::report::{self, Invalid, Reported};
use super::ruleset::TABLE;
use super::stats::NetpolStats;
use super::watch::{self as watches, Shared};
use crate::cluster::NodeEvents;
use crate::firewall::tool::Exec;

/// How long after a failed transaction the next try is.
const RETRY: Duration = Duration::from_secs(2);

pub struct Controller {
    pub client: Client,
    pub node: String,
    pub exec: Exec,
    pub stats: Arc<NetpolStats>,
    pub events: Option<NodeEvents>,
    /// How often the kernel's table is read back and repaired if someone changed it (the
    /// agent's `--resync-seconds`).
    pub resync: Duration,
}

/// How [`Controller::enforce`] ended.
enum End {
    TurnedOff,
    AgentStopping,
}

impl Controller {
    fn kernel(&self) -> Kernel {
        Kernel {
            exec: self.exec.clone(),
            stats: self.stats.clone(),
        }
    }

    /// Runs until `enabled`'s sender is gone (the agent stopping: the rules stay).
    pub async fn run(self, mut enabled: watch::Receiver<bool>) {
        loop {
            // Off (also at a start after it was turned off while the agent was away): no
            // table may keep isolating pods.
            if !*enabled.borrow_and_update() && !self.remove_until_gone(&mut enabled).await {
                return;
            }
            while !*enabled.borrow_and_update() {
                if enabled.changed().await.is_err() {
                    return;
                }
            }
            info!("NetworkPolicy enforcement on: watching Pods, Namespaces and NetworkPolicies");
            self.stats.enabled.store(1, Relaxed);
            self.check_bridge();
            match self.enforce(&mut enabled).await {
                End::AgentStopping => return,
                End::TurnedOff => {
                    info!("NetworkPolicy enforcement off: removing table inet {TABLE}")
                }
            }
        }
    }

    /// Removes the table, retrying while it fails and enforcement stays off (after the first
    /// failure, which is logged, every resync and quietly: a host whose kernel has no
    /// nf_tables at all would otherwise log it every 2 s forever); `false` when the agent is
    /// stopping.
    async fn remove_until_gone(&self, enabled: &mut watch::Receiver<bool>) -> bool {
        for attempt in 0u32.. {
            match self.kernel().remove().await {
                Ok(()) => {
                    self.stats.disabled();
                    return true;
                }
                Err(e) if attempt == 0 => {
                    warn!(error = %e, "could not remove table inet {TABLE}; retrying");
                    self.stats.failed(&e.to_string());
                }
                Err(e) => tracing::debug!(error = %e, "could not remove table inet {TABLE}"),
            }
            let wait = if attempt == 0 { RETRY } else { self.resync };
            tokio::select! {
                r = enabled.changed() => match r {
                    Err(_) => return false,
                    // Back on: enforcement takes the table over as it is.
                    Ok(()) if *enabled.borrow() => return true,
                    Ok(()) => {}
                },
                _ = tokio::time::sleep(wait) => {}
            }
        }
        true
    }

    /// Until enforcement is turned off or the agent stops.
    async fn enforce(&self, enabled: &mut watch::Receiver<bool>) -> End {
        let store: Shared = Default::default();
        let notify = Arc::new(Notify::new());
        let _watches = watches::start(&self.client, &store, &notify);
        let kernel = self.kernel();
        // What the kernel holds when known (the last successful apply); `None`: read it.
        let mut applied: Option<Found> = None;
        let mut reported = Reported::default();
        let mut resync = tokio::time::interval(self.resync);
        let mut retry_at: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = notify.notified() => {}
                r = enabled.changed() => match r {
                    Err(_) => return End::AgentStopping,
                    Ok(()) if !*enabled.borrow_and_update() => return End::TurnedOff,
                    Ok(()) => continue,
                },
                _ = resync.tick() => applied = None,
                _ = sleep_until(retry_at), if retry_at.is_some() => retry_at = None,
            }
            let Some(snap) = snapshot(&store, &self.node) else {
                continue;
            };
            reported.report(snap.invalid, self.events.as_ref());
            let have = match applied.take() {
                Some(found) => Ok(found),
                None => kernel.read().await,
            };
            let result = match have {
                Ok(have) => kernel.apply(&have, &snap.compiled.ruleset).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => {
                    if let Some(t) = snap.dirty {
                        self.stats.synced_after(t.elapsed());
                    }
                    self.stats
                        .record(&snap.compiled, snap.policies, snap.invalid_count);
                    applied = Some(Found::Table(snap.compiled.ruleset));
                }
                Err(e) => {
                    warn!(error = %e, "could not apply the NetworkPolicy rules; the previous ones stay in force, retrying");
                    self.stats.apply_errors.fetch_add(1, Relaxed);
                    self.stats.failed(&e.to_string());
                    // Still to do, and since when it was asked for.
                    let mut s = store.lock().unwrap_or_else(|e| e.into_inner());
                    s.restore_dirty(snap.dirty);
                    retry_at = Some(tokio::time::Instant::now() + RETRY);
                }
            }
        }
    }

    /// Pods of one node talk over `cni0` without being routed: their packets reach the
    /// forward hook only through br_netfilter (`bridge-nf-call-iptables` for IPv4,
    /// `-ip6tables` for IPv6). Without it, policies still hold between nodes but not between
    /// pods of this node; said loudly, and in `status`.
    fn check_bridge(&self) {
        let bnf = crate::bridge_nf::BridgeNf::read();
        let mut missing = Vec::new();
        if bnf.call_iptables != Some(true) {
            missing.push("net.bridge.bridge-nf-call-iptables (IPv4)");
        }
        if bnf.call_ip6tables != Some(true) {
            missing.push("net.bridge.bridge-nf-call-ip6tables (IPv6)");
        }
        let note = if missing.is_empty() {
            String::new()
        } else {
            let note = format!(
                "br_netfilter is not loaded or {} is 0: traffic between pods of this node is \
                 NOT policed for that family (run `modprobe br_netfilter` and set it to 1 on \
                 the host)",
                missing.join(" and ")
            );
            warn!("{note}");
            note
        };
        self.stats.set_bridge_note(note);
    }
}

/// One compilation of the store.
struct Snapshot {
    compiled: Compiled,
    policies: usize,
    invalid_count: usize,
    dirty: Option<Instant>,
    invalid: Vec<Invalid>,
}

/// Compiles the store, once all three lists are in.
fn snapshot(store: &Shared, node: &str) -> Option<Snapshot> {
    let mut s = store.lock().unwrap_or_else(|e| e.into_inner());
    if !s.synced() {
        return None;
    }
    let dirty = s.take_dirty();
    Some(Snapshot {
        compiled: s.compile(node),
        policies: s.policies.len(),
        invalid_count: s.invalid().count(),
        dirty,
        invalid: report::to_report(&s, node),
    })
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

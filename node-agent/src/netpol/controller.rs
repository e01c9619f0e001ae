//! The NetworkPolicy controller: a task of its own beside the reconcile loop. While
//! enforcement is on it watches Pods, Namespaces and NetworkPolicies, compiles them into the
//! `inet trellis-netpol` table on every change and applies the difference as one `nft`
//! transaction; turned off, it stops the watches and removes the table.
//!
//! Restart-safe: the table stays in the kernel while the agent is away; the first apply after
//! a start reads it back and changes only what differs. A failed transaction leaves the
//! previous rules in force (nft applies all of a file or nothing) and is retried with the
//! table replaced whole.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::Client;
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use super::ruleset::{self, Ruleset, TABLE};
use super::stats::NetpolStats;
use super::store::{Key, Store};
use super::watch::{self as watches, Shared};
use crate::cluster::NodeEvents;
use crate::firewall::tool::{Exec, FirewallError};

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

impl Controller {
    /// Runs until `enabled`'s sender is gone.
    pub async fn run(self, mut enabled: watch::Receiver<bool>) {
        if !*enabled.borrow() {
            // Turned off while the agent was away: the table it left must not keep isolating
            // pods (a no-op when there is none).
            self.remove_table().await;
        }
        loop {
            while !*enabled.borrow_and_update() {
                if enabled.changed().await.is_err() {
                    return;
                }
            }
            info!("NetworkPolicy enforcement on: watching Pods, Namespaces and NetworkPolicies");
            self.stats.enabled.store(1, Relaxed);
            self.check_bridge();
            let stopping = self.enforce(&mut enabled).await;
            if stopping {
                // The agent is stopping: the rules stay for the next start.
                return;
            }
            self.remove_table().await;
            self.stats.disabled();
        }
    }

    /// Until enforcement is turned off (`false`) or the agent stops (`true`).
    async fn enforce(&self, enabled: &mut watch::Receiver<bool>) -> bool {
        let store: Shared = Default::default();
        let notify = Arc::new(Notify::new());
        let _watches = watches::start(&self.client, &store, &notify);
        let mut applied: Option<Option<Ruleset>> = None;
        let mut reported: BTreeSet<(Key, String)> = BTreeSet::new();
        let mut resync = tokio::time::interval(self.resync);
        let mut retry_at: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = notify.notified() => {}
                r = enabled.changed() => match r {
                    Err(_) => return true,
                    Ok(()) if !*enabled.borrow_and_update() => {
                        info!("NetworkPolicy enforcement off: removing table inet {TABLE}");
                        return false;
                    }
                    Ok(()) => continue,
                },
                _ = resync.tick() => applied = None,
                _ = sleep_until(retry_at), if retry_at.is_some() => retry_at = None,
            }
            let Some((compiled, counts, dirty, invalid)) = snapshot(&store, &self.node) else {
                continue;
            };
            self.report_invalid(invalid, &mut reported).await;
            let have = match applied.take() {
                Some(h) => h,
                None => self.read().await,
            };
            match self.apply(have.as_ref(), &compiled.ruleset).await {
                Ok(()) => {
                    if let Some(t) = dirty {
                        self.stats.synced_after(t.elapsed());
                    }
                    self.stats.record(&compiled, counts.0, counts.1);
                    applied = Some(Some(compiled.ruleset));
                }
                Err(e) => {
                    warn!(error = %e, "could not apply the NetworkPolicy rules; the previous ones stay in force, retrying");
                    self.stats.apply_errors.fetch_add(1, Relaxed);
                    store.lock().unwrap_or_else(|e| e.into_inner()).touch();
                    retry_at = Some(tokio::time::Instant::now() + RETRY);
                }
            }
        }
    }

    /// Applies the difference; on failure replaces the table whole once before giving up.
    async fn apply(&self, have: Option<&Ruleset>, want: &Ruleset) -> Result<(), FirewallError> {
        if have == Some(want) {
            return Ok(());
        }
        let diff = ruleset::script(have, want);
        match self.nft(&diff).await {
            Ok(()) => Ok(()),
            Err(e) if have.is_some() => {
                warn!(error = %e, "incremental NetworkPolicy update failed; replacing the table in one transaction");
                self.nft(&ruleset::replace_script(want)).await
            }
            Err(e) => Err(e),
        }
    }

    async fn nft(&self, script: &str) -> Result<(), FirewallError> {
        self.stats.applies.fetch_add(1, Relaxed);
        self.exec
            .run("nft", &["-f", "-"], Some(script))
            .await
            .map(drop)
    }

    /// The table as the kernel holds it; `None` when absent or unreadable (then it is
    /// replaced whole).
    async fn read(&self) -> Option<Ruleset> {
        match self
            .exec
            .run("nft", &["list", "table", "inet", TABLE], None)
            .await
        {
            Ok(text) => match ruleset::parse_listing(&text) {
                Ok(rs) => Some(rs),
                Err(why) => {
                    warn!(%why, "cannot read table inet {TABLE} back; it will be replaced whole");
                    None
                }
            },
            Err(_) => None,
        }
    }

    /// Pods of one node talk over `cni0` without being routed: their packets reach the
    /// forward hook only through br_netfilter. Without it, policies still hold between
    /// nodes but not between pods of this node; said loudly, and in `status`.
    fn check_bridge(&self) {
        let bnf = crate::bridge_nf::BridgeNf::read();
        let policed = bnf.call_iptables == Some(true);
        self.stats.bridge_policed.store(u64::from(policed), Relaxed);
        if !policed {
            warn!(
                "br_netfilter is not loaded or net.bridge.bridge-nf-call-iptables is 0: traffic \
                 between pods of this node is NOT policed (run `modprobe br_netfilter` and \
                 `sysctl -w net.bridge.bridge-nf-call-iptables=1` on the host)"
            );
        }
    }

    async fn remove_table(&self) {
        match self.nft(&ruleset::delete_script()).await {
            Ok(()) => {}
            // No nft on this host: it never held the table either.
            Err(e) if e.is_tool_missing() => {}
            Err(e) => warn!(error = %e, "could not remove table inet {TABLE}"),
        }
    }

    /// A Warning Event on each invalid policy that isolates a pod of this node, once per
    /// version of the policy (only the nodes it matters to speak up, not every node).
    async fn report_invalid(&self, invalid: Vec<Invalid>, reported: &mut BTreeSet<(Key, String)>) {
        for inv in invalid {
            let id = (inv.key.clone(), inv.version.clone());
            if !reported.insert(id) {
                continue;
            }
            warn!(policy = %format!("{}/{}", inv.key.0, inv.key.1), why = %inv.why, "NetworkPolicy cannot be enforced as written; its pods get deny-all");
            if let Some(ev) = &self.events {
                ev.policy_invalid(&inv.key.0, &inv.key.1, inv.uid.as_deref(), &inv.why)
                    .await;
            }
        }
    }
}

struct Invalid {
    key: Key,
    version: String,
    uid: Option<String>,
    why: String,
}

type Snapshot = (
    super::compile::Compiled,
    (usize, usize),
    Option<Instant>,
    Vec<Invalid>,
);

/// Compiles the store, once all three lists are in.
fn snapshot(store: &Shared, node: &str) -> Option<Snapshot> {
    let mut s = store.lock().unwrap_or_else(|e| e.into_inner());
    if !s.synced() {
        return None;
    }
    let dirty = s.take_dirty();
    let compiled = s.compile(node);
    let invalid = invalid_here(&s, &compiled);
    let counts = (s.policies.len(), s.invalid().count());
    Some((compiled, counts, dirty, invalid))
}

fn invalid_here(s: &Store, c: &super::compile::Compiled) -> Vec<Invalid> {
    let here: BTreeSet<&String> = c
        .policed
        .iter()
        .flat_map(|p| p.ingress.iter().chain(&p.egress))
        .collect();
    s.invalid()
        .filter(|(k, _)| here.contains(&format!("{}/{}", k.0, k.1)))
        .map(|(k, p)| Invalid {
            key: k.clone(),
            version: p.version.clone(),
            uid: p.uid.clone(),
            why: p.error.as_ref().map(|e| e.to_string()).unwrap_or_default(),
        })
        .collect()
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

//! The firewall's side of the passes: which driver holds the rules (iptables or nftables, per
//! `EnableNFTables`), a switch between them without a gap, the rules last found in place (so
//! that a light pass can leave the firewall alone), and the check made while the first Node
//! list arrives.

use std::sync::Arc;

use tracing::{error, info, warn};

use crate::config::NetConfig;
use crate::firewall::nftables::NftablesDriver;
use crate::firewall::rules::RuleSet;
use crate::firewall::tool::Exec;
use crate::firewall::{self as fw, Driver as FwDriver, Firewall};

/// Owns the firewall's state from pass to pass.
pub(super) struct FirewallSync {
    state: FirewallState,
    early: EarlyCheck,
}

#[derive(Default)]
struct FirewallState {
    /// The driver for the config; `None` until one was detected.
    current: Option<Firewall>,
    /// The driver being replaced: its rules are removed once `current` holds them.
    old: Option<Firewall>,
    /// Rules the firewall was last found or made to hold, `None` until then and after a
    /// failure; a light pass skips the firewall while the plan's rules equal these.
    synced: Option<RuleSet>,
    /// The installed rules as last read, for /debug/state.
    installed: String,
    /// flannel's nftables tables were looked for (once, after the first successful sync).
    flannel_checked: bool,
}

/// The firewall rules do not depend on peers, so they are checked while the first Node list
/// arrives, off the path to ready; a successful check spares the first full pass its own.
enum EarlyCheck {
    NotStarted,
    /// Joined by the first pass, which skips its own check if this one succeeded and the
    /// rules are the same. The flag says whether the check succeeded.
    Running(tokio::task::JoinHandle<(FirewallState, bool)>),
    /// Not possible (no rules yet), or already joined.
    Spent,
}

impl FirewallSync {
    pub(super) fn new() -> Self {
        FirewallSync {
            state: FirewallState::default(),
            early: EarlyCheck::NotStarted,
        }
    }

    /// Start the check made while the first Node list arrives, in a task of its own so that
    /// neither the list's prefill passes nor readiness wait for iptables. Only once: `rules`
    /// is asked for only then.
    pub(super) fn start_early(
        &mut self,
        config: &Arc<NetConfig>,
        rules: impl FnOnce() -> Option<RuleSet>,
    ) {
        if !matches!(self.early, EarlyCheck::NotStarted) {
            return;
        }
        self.early = match rules() {
            Some(rules) => {
                let mut early = FirewallState {
                    current: self.state.current.clone(),
                    ..FirewallState::default()
                };
                let config = config.clone();
                EarlyCheck::Running(tokio::spawn(async move {
                    early.ensure(&config).await;
                    let (checked, _) = early.sync(&rules, true).await;
                    (early, checked)
                }))
            }
            None => EarlyCheck::Spent,
        };
    }

    /// Bring the firewall to `rules` for this pass: take over the early check if it is still
    /// pending, pick the driver for `config`, then check (and repair) the rules on a full
    /// pass or when they changed. Returns whether the firewall holds them, and the drift
    /// repaired.
    pub(super) async fn sync(
        &mut self,
        config: &NetConfig,
        rules: &RuleSet,
        full: bool,
    ) -> (bool, String) {
        let mut checked_early = false;
        if let EarlyCheck::Running(task) = std::mem::replace(&mut self.early, EarlyCheck::Spent) {
            match task.await {
                Ok((early, checked)) => {
                    self.state.current = early.current;
                    self.state.synced = early.synced;
                    self.state.installed = early.installed;
                    self.state.flannel_checked = early.flannel_checked;
                    checked_early = checked;
                }
                Err(e) => warn!("firewall check at start failed to run: {e}"),
            }
        }
        self.state.ensure(config).await;
        // Checked during the first list already: this pass needs the check only if the
        // rules changed since (`FirewallState::sync` compares them).
        self.state.sync(rules, full && !checked_early).await
    }

    /// The driver in use, for /debug/state.
    pub(super) fn backend_label(&self) -> &'static str {
        match self.state.current.as_ref().map(Firewall::driver) {
            Some(FwDriver::Iptables) => "iptables",
            Some(FwDriver::Nftables) => "nftables",
            None => "unavailable",
        }
    }

    /// The installed rules as last read.
    pub(super) fn installed(&self) -> &str {
        &self.state.installed
    }
}

impl FirewallState {
    /// The driver for `config`, switching drivers without a gap when `EnableNFTables`
    /// changed, and retrying detection when the tools were missing last time.
    async fn ensure(&mut self, config: &NetConfig) {
        let want = FwDriver::from_enable_nftables(config.enable_nftables);
        if self.current.as_ref().is_some_and(|f| f.driver() == want) {
            return;
        }
        let next = match Firewall::detect(want, Exec::new()).await {
            Ok(f) => f,
            Err(e) => {
                error!("firewall backend unavailable: {e}");
                return;
            }
        };
        if let Some(prev) = self.current.take() {
            // The pass right after installs the rules in `next`, then removes `prev`'s.
            info!(from = ?prev.driver(), to = ?want, "switching firewall backend");
            self.old = Some(prev);
        } else {
            // Leftovers of the other backend from before a restart with a changed config.
            if let Ok(other) = Firewall::detect(want.other(), Exec::new()).await {
                if !other.same_rules_as(&next) {
                    let _ = other.cleanup().await;
                }
            }
        }
        self.current = Some(next);
    }

    /// Bring the firewall to `rules`: finish a driver switch, then check (and repair) the
    /// rules if `full` or they changed. Returns whether it holds them and the drift repaired.
    async fn sync(&mut self, rules: &RuleSet, full: bool) -> (bool, String) {
        let Some(current) = self.current.as_ref() else {
            return (false, String::new());
        };
        if let Some(prev) = self.old.as_ref() {
            self.synced = None;
            match fw::switch(prev, current, rules).await {
                Ok(()) => self.old = None,
                Err(e) => warn!("firewall switch (will retry): {e}"),
            }
        }
        if !full && self.synced.as_ref() == Some(rules) {
            return (true, String::new());
        }
        self.synced = None;
        let result = match current.resync(rules).await {
            Ok(d) => {
                self.synced = Some(rules.clone());
                if !self.flannel_checked {
                    self.flannel_checked = remove_flannel_nft_tables().await;
                }
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
        self.installed = current.installed().await.to_string();
        result
    }
}

/// flannel's nftables tables, once trellis's rules are in place: left, they would masquerade
/// and accept beside trellis's after a takeover (nothing to do where flannel never ran with
/// nftables, or where there is no `nft`). Returns whether that is settled; a failure is
/// retried by the next full sync.
async fn remove_flannel_nft_tables() -> bool {
    let Ok(nft) = NftablesDriver::detect(Exec::new()).await else {
        return true;
    };
    match nft.remove_flannel_tables().await {
        Ok(removed) => {
            if !removed.is_empty() {
                info!(tables = ?removed, "removed flannel's nftables tables: trellis's rules replace them");
            }
            true
        }
        Err(e) => {
            warn!("cannot remove flannel's nftables tables (will retry): {e}");
            false
        }
    }
}

//! Masquerade and forward rules: one model ([`rules`]), installed by one of two drivers picked
//! by net-conf.json's `EnableNFTables`: [`iptables`] or [`nftables`], each a folder holding
//! the driver (`mod.rs`, which runs the tools) and its pure half (`state.rs`: reading what the
//! kernel holds, comparing it with the model). [`tool`] runs the external tools for both,
//! [`drift`] is what a check finds and what `status` shows. This module is their one face,
//! [`Firewall`], and the switch between them.
//!
//! The drivers sit behind an enum rather than a trait: there are exactly two, chosen by the
//! config, and the enum needs no boxed futures (async trait methods cannot be called through
//! `dyn`), compares two drivers directly ([`Firewall::same_rules_as`], which a trait object
//! could only do by downcasting), and a third driver would not build until each method that
//! dispatches handles it.
//!
//! Switching at runtime is safe in either order. The two drivers never share state: the
//! iptables one touches only `FLANNEL-*` chains and the jumps to them (in iptables-nft's
//! `ip`/`ip6` tables or legacy xtables), the nftables one only the `inet trellis` table. While
//! both are installed a packet is masqueraded once: a connection's source NAT is decided by
//! the first nat chain that sets it and later ones are not consulted. So [`switch`] installs
//! the new rules before removing the old ones and there is no moment without rules.

pub mod drift;
pub mod iptables;
pub mod nftables;
pub mod rules;
pub mod tool;

use self::drift::{Drift, Installed};
use self::iptables::{IptablesDriver, Variant};
use self::nftables::NftablesDriver;
use self::rules::RuleSet;
use self::tool::{Exec, FirewallError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    Iptables,
    Nftables,
}

impl Driver {
    /// net-conf.json's `EnableNFTables`.
    pub fn from_enable_nftables(enable: bool) -> Driver {
        if enable {
            Driver::Nftables
        } else {
            Driver::Iptables
        }
    }

    /// The one not in use, whose leftovers (from before a restart with a changed config)
    /// should be cleaned up.
    pub fn other(self) -> Driver {
        match self {
            Driver::Iptables => Driver::Nftables,
            Driver::Nftables => Driver::Iptables,
        }
    }
}

#[derive(Debug, Clone)]
pub enum Firewall {
    Iptables(IptablesDriver),
    Nftables(NftablesDriver),
}

impl Firewall {
    /// The driver for `driver`, with the tool's features detected (`--random-fully`).
    /// iptables is whatever `iptables` on PATH is.
    pub async fn detect(driver: Driver, exec: Exec) -> Result<Firewall, FirewallError> {
        Ok(match driver {
            Driver::Iptables => {
                Firewall::Iptables(IptablesDriver::detect(exec, Variant::Path).await?)
            }
            Driver::Nftables => Firewall::Nftables(NftablesDriver::detect(exec).await?),
        })
    }

    pub fn driver(&self) -> Driver {
        match self {
            Firewall::Iptables(_) => Driver::Iptables,
            Firewall::Nftables(_) => Driver::Nftables,
        }
    }

    /// Installs `rules` exactly; idempotent, and undoes any edit of trellis's chains/table.
    pub async fn apply(&self, rules: &RuleSet) -> Result<(), FirewallError> {
        match self {
            Firewall::Iptables(x) => x.apply(rules).await,
            Firewall::Nftables(x) => x.apply(rules).await,
        }
    }

    /// Whether the kernel holds exactly `rules` (for the periodic resync and `status`).
    pub async fn check(&self, rules: &RuleSet) -> Result<Drift, FirewallError> {
        match self {
            Firewall::Iptables(x) => x.check(rules).await,
            Firewall::Nftables(x) => x.check(rules).await,
        }
    }

    /// Removes everything of trellis's this driver installed.
    pub async fn cleanup(&self) -> Result<(), FirewallError> {
        match self {
            Firewall::Iptables(x) => x.cleanup().await,
            Firewall::Nftables(x) => x.cleanup().await,
        }
    }

    /// What is installed, for `status` (read errors are shown inside, not returned).
    pub async fn installed(&self) -> Installed {
        match self {
            Firewall::Iptables(x) => x.installed().await,
            Firewall::Nftables(x) => x.installed().await,
        }
    }

    /// Whether both manage the very same rules (then cleaning one up removes the other's).
    pub fn same_rules_as(&self, other: &Firewall) -> bool {
        match (self, other) {
            (Firewall::Iptables(a), Firewall::Iptables(b)) => {
                a.variant() == b.variant() && a.exec().same_target(b.exec())
            }
            (Firewall::Nftables(a), Firewall::Nftables(b)) => a.exec().same_target(b.exec()),
            _ => false,
        }
    }

    /// Re-applies when the kernel differs from `rules`; returns what differed (empty when
    /// nothing was done). The agent's periodic resync.
    pub async fn resync(&self, rules: &RuleSet) -> Result<Drift, FirewallError> {
        let drift = self.check(rules).await?;
        if !drift.is_clean() {
            self.apply(rules).await?;
        }
        Ok(drift)
    }
}

/// Moves the rules from one backend to the other without a gap: `to` is applied first, then
/// `from` cleaned up. If the cleanup fails, the new rules are in place and the error says
/// what is left of the old ones.
pub async fn switch(from: &Firewall, to: &Firewall, rules: &RuleSet) -> Result<(), FirewallError> {
    to.apply(rules).await?;
    if !from.same_rules_as(to) {
        from.cleanup().await?;
    }
    Ok(())
}

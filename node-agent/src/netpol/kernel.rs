//! The table in the kernel: read back, changed by one `nft -f` transaction, replaced whole
//! when it cannot be read or changed, removed. Only the table `inet trellis-netpol`.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tracing::warn;

use super::ruleset::{self, Ruleset, TABLE};
use super::stats::NetpolStats;
use crate::firewall::tool::{Exec, FirewallError};

/// What the kernel was found to hold.
#[derive(Debug, Clone, PartialEq)]
pub enum Found {
    Absent,
    /// Something the listing parser does not understand (a hand edit: a map element that
    /// is not a jump, a set of another type): only replacing the table is safe.
    Unreadable,
    Table(Ruleset),
}

pub struct Kernel {
    pub exec: Exec,
    pub stats: Arc<NetpolStats>,
}

impl Kernel {
    pub async fn read(&self) -> Result<Found, FirewallError> {
        let listed = self
            .exec
            .run("nft", &["list", "table", "inet", TABLE], None)
            .await;
        match listed {
            Ok(text) => Ok(match ruleset::parse_listing(&text) {
                Ok(rs) => Found::Table(rs),
                Err(why) => {
                    warn!(%why, "cannot read table inet {TABLE} back; replacing it whole");
                    Found::Unreadable
                }
            }),
            Err(FirewallError::Failed { stderr, .. })
                if crate::firewall::nftables::is_missing_table(&stderr) =>
            {
                Ok(Found::Absent)
            }
            Err(e) => Err(e),
        }
    }

    /// Makes the kernel hold `want`: the difference from `have` as one transaction, else (the
    /// table unreadable, a base chain or a set's type changed by hand, or the difference
    /// refused) the table replaced whole, also as one transaction.
    pub async fn apply(&self, have: &Found, want: &Ruleset) -> Result<(), FirewallError> {
        let script = match have {
            Found::Table(h) if h == want => return Ok(()),
            Found::Table(h) if !ruleset::needs_replace(h, want) => ruleset::script(Some(h), want),
            Found::Absent => ruleset::script(None, want),
            Found::Table(_) | Found::Unreadable => ruleset::replace_script(want),
        };
        match self.nft(&script).await {
            Ok(()) => Ok(()),
            Err(e) if *have != Found::Absent => {
                warn!(error = %e, "NetworkPolicy update refused; replacing the table in one transaction");
                self.nft(&ruleset::replace_script(want)).await
            }
            Err(e) => Err(e),
        }
    }

    /// Removes the table ([`remove_table`]), counting the transaction when nft ran it.
    pub async fn remove(&self) -> Result<(), FirewallError> {
        if remove_table(&self.exec).await? {
            self.stats.applies.fetch_add(1, Relaxed);
        }
        Ok(())
    }

    /// One transaction; counted when it went through.
    async fn nft(&self, script: &str) -> Result<(), FirewallError> {
        self.exec.run("nft", &["-f", "-"], Some(script)).await?;
        self.stats.applies.fetch_add(1, Relaxed);
        Ok(())
    }
}

/// Removes the table `inet trellis-netpol`; `Ok` also when there is none. `Ok(false)`: no nft
/// at all on this host, which then never held the table either (the agent turned off, and
/// `uninstall-cni --kernel-state`).
pub async fn remove_table(exec: &Exec) -> Result<bool, FirewallError> {
    match exec
        .run("nft", &["-f", "-"], Some(&ruleset::delete_script()))
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if e.is_tool_missing() => Ok(false),
        Err(e) => Err(e),
    }
}

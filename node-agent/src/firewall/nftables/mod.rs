//! The nftables driver: trellis's own table `inet trellis`, rewritten whole in one
//! transaction by `nft -f -` and read back with `nft -j list table`. Nothing outside that
//! table is ever touched, so other users of nftables (kube-proxy, firewalld, iptables-nft's
//! own tables) are unaffected. It runs nft; `state.rs` reads nft's JSON back into the rule
//! model and compares, without running anything.

mod state;

/// Whether nft's error says the table listed does not exist (the NetworkPolicy table too).
pub(crate) use self::state::is_missing_table;

use self::state::TableState;
use super::drift::{Drift, Installed, Section};
use super::rules::{nft_cleanup_script, RuleSet, FLANNEL_NFT_TABLES, NFT_TABLE};
use super::tool::{parse_version, Exec, FirewallError};

/// `masquerade fully-random` is accepted by nft since 0.9.0.
const FULLY_RANDOM_SINCE: (u32, u32, u32) = (0, 9, 0);

#[derive(Debug, Clone)]
pub struct NftablesDriver {
    exec: Exec,
    binary: String,
    random_fully: bool,
    version: String,
}

impl NftablesDriver {
    pub fn new(exec: Exec, random_fully: bool) -> NftablesDriver {
        NftablesDriver {
            exec,
            binary: "nft".to_string(),
            random_fully,
            version: "nft".to_string(),
        }
    }

    /// Asks `nft --version` for the version and enables `fully-random` when it is supported.
    pub async fn detect(exec: Exec) -> Result<NftablesDriver, FirewallError> {
        let out = exec.run("nft", &["--version"], None).await?;
        let version = out.trim().to_string();
        let Some(v) = parse_version(&version) else {
            return Err(FirewallError::Output {
                command: "nft --version".to_string(),
                reason: format!("no version number in {version:?}"),
            });
        };
        let mut ex = NftablesDriver::new(exec, v >= FULLY_RANDOM_SINCE);
        ex.version = version;
        Ok(ex)
    }

    pub(crate) fn exec(&self) -> &Exec {
        &self.exec
    }

    pub fn random_fully(&self) -> bool {
        self.random_fully
    }

    /// `nft --version` output, e.g. `nftables v1.0.6 (Lester Gooch #5)`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Replaces the table with exactly `rules` (an empty rule set removes it). Atomic:
    /// packets see the old table or the new one, never none.
    pub async fn apply(&self, rules: &RuleSet) -> Result<(), FirewallError> {
        self.load(&rules.nft_script(self.random_fully)).await
    }

    pub async fn check(&self, rules: &RuleSet) -> Result<Drift, FirewallError> {
        let have = self.read().await?;
        let mut drift = Drift::default();
        state::check(
            &state::desired(rules, self.random_fully),
            have.as_ref(),
            &mut drift,
        );
        Ok(drift)
    }

    /// Deletes the table if it exists.
    pub async fn cleanup(&self) -> Result<(), FirewallError> {
        self.load(&nft_cleanup_script()).await
    }

    /// Removes the tables flannel's nftables mode leaves (`ip flannel-ipv4`, `ip6
    /// flannel-ipv6`: its masquerade and forward rules), which would otherwise act beside
    /// trellis's after a takeover. Call once trellis's rules are in place. Returns the tables
    /// removed (none when flannel never ran with nftables here).
    pub async fn remove_flannel_tables(&self) -> Result<Vec<String>, FirewallError> {
        let listed = self.list(&["list", "tables"]).await?;
        let present: Vec<String> = FLANNEL_NFT_TABLES
            .iter()
            .map(|(family, name)| format!("table {family} {name}"))
            .filter(|t| listed.lines().any(|l| l.trim() == t))
            .collect();
        if !present.is_empty() {
            let script: String = present.iter().map(|t| format!("delete {t}\n")).collect();
            self.load(&script).await?;
        }
        Ok(present)
    }

    /// The table as nft lists it.
    pub async fn installed(&self) -> Installed {
        let title = format!("nft table inet {NFT_TABLE}");
        let lines = match self.list(&["list", "table", "inet", NFT_TABLE]).await {
            Ok(text) => Ok(text.lines().map(|l| l.replace('\t', "  ")).collect()),
            Err(FirewallError::Failed { stderr, .. }) if state::is_missing_table(&stderr) => {
                Ok(Vec::new())
            }
            Err(e) => Err(e),
        };
        Installed {
            backend: self.version.clone(),
            sections: vec![Section::read(title, lines)],
        }
    }

    /// The table, or `None` when there is none.
    async fn read(&self) -> Result<Option<TableState>, FirewallError> {
        let args = ["-j", "list", "table", "inet", NFT_TABLE];
        match self.list(&args).await {
            Ok(json) => {
                state::parse_table(&json)
                    .map(Some)
                    .map_err(|reason| FirewallError::Output {
                        command: format!("{} {}", self.binary, args.join(" ")),
                        reason,
                    })
            }
            // Told by its message: listing the tables would read the whole ruleset.
            Err(FirewallError::Failed { stderr, .. }) if state::is_missing_table(&stderr) => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    async fn list(&self, args: &[&str]) -> Result<String, FirewallError> {
        self.exec.run(&self.binary, args, None).await
    }

    async fn load(&self, script: &str) -> Result<(), FirewallError> {
        self.exec
            .run(&self.binary, &["-f", "-"], Some(script))
            .await
            .map(drop)
    }
}

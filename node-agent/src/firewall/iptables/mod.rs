//! The iptables driver: trellis's chains through `iptables-restore --noflush`, one
//! transaction per table, and reads of only what trellis owns (see [`ReadMode`]). It runs the
//! tools; `state.rs` parses what they print and plans what to restore, without running anything.
//!
//! Which iptables (legacy or nft) runs is whatever `iptables` on PATH is: on a node, the
//! DaemonSet image's wrapper picks the flavour kube-proxy uses. [`Variant`] can force one.

use std::time::Duration;

mod state;

use self::state::Saved;
use super::drift::{Drift, Installed, Section};
use super::rules::RuleSet;
use super::tool::{parse_version, Exec, FirewallError};
use crate::net::Family;

/// How long iptables-restore waits for the xtables lock (kube-proxy may hold it for seconds
/// on a large cluster). Must stay below the [`Exec`] timeout.
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(10);

/// `--random-fully` arrived in iptables 1.6.2 (the same test flannel's go-iptables makes).
const RANDOM_FULLY_SINCE: (u32, u32, u32) = (1, 6, 2);

/// Which iptables binaries to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// `iptables`, `iptables-save`, `iptables-restore` (and `ip6…`) as found on PATH.
    Path,
    /// `iptables-legacy…`.
    Legacy,
    /// `iptables-nft…`.
    Nft,
}

impl Variant {
    fn binary(self, family: Family, suffix: &str) -> String {
        let base = match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        let flavour = match self {
            Variant::Path => "",
            Variant::Legacy => "-legacy",
            Variant::Nft => "-nft",
        };
        format!("{base}{flavour}{suffix}")
    }
}

fn tool_name(family: Family) -> &'static str {
    match family {
        Family::V4 => "iptables",
        Family::V6 => "ip6tables",
    }
}

/// How the kernel's rules are read for check, apply and status. Either way the same drift
/// is found: a missing, duplicated or foreign jump in the built-in chain, and any edit of
/// trellis's chains.
///
/// A node with kube-proxy holds tens of thousands of rules (measured in docs/BENCH-AGENT.md,
/// "Firewall check"): a whole `iptables-save` of both families every resync is heavy, and its
/// child process counts against the agent's memory limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// `iptables -t TABLE -S CHAIN` for each of trellis's chains and, when it exists, the
    /// built-in chain that jumps to it (4 small reads per family in use, 2 for a family
    /// without rules). iptables-nft fetches only the chain it is asked for, so none of
    /// kube-proxy's rules cross the pipe. Cleanup, which must find every rule jumping to a
    /// chain before deleting it, reads the whole family, and only when one of trellis's
    /// chains exists.
    OwnChains,
    /// One `iptables-save` per family, filtered to trellis's lines before parsing. Legacy
    /// iptables has no per-chain read: every command copies whole tables out of the kernel,
    /// so one save (nat read once) costs less than a listing per chain (nat read twice).
    Dump,
}

impl ReadMode {
    /// The cheaper read for a flavour, from `iptables --version` (`… (nf_tables)` or
    /// `… (legacy)`; before 1.8 there was no nft flavour and no suffix).
    fn for_version(version: &str) -> ReadMode {
        if version.contains("(nf_tables)") {
            ReadMode::OwnChains
        } else {
            ReadMode::Dump
        }
    }
}

#[derive(Debug, Clone)]
pub struct IptablesDriver {
    exec: Exec,
    variant: Variant,
    random_fully: bool,
    lock_wait: Duration,
    version: String,
    read_mode: ReadMode,
}

impl IptablesDriver {
    /// A driver for the given binaries; `random_fully` as given (see [`Self::detect`]).
    /// The read mode follows the variant; for [`Variant::Path`], whose flavour only
    /// [`Self::detect`] learns, it is [`ReadMode::Dump`], which suits both.
    pub fn new(exec: Exec, variant: Variant, random_fully: bool) -> IptablesDriver {
        IptablesDriver {
            exec,
            variant,
            random_fully,
            lock_wait: DEFAULT_LOCK_WAIT,
            version: variant.binary(Family::V4, ""),
            read_mode: match variant {
                Variant::Nft => ReadMode::OwnChains,
                Variant::Legacy | Variant::Path => ReadMode::Dump,
            },
        }
    }

    /// Asks `iptables --version` which version and flavour this is, and enables
    /// `--random-fully` when the version supports it.
    pub async fn detect(exec: Exec, variant: Variant) -> Result<IptablesDriver, FirewallError> {
        let bin = variant.binary(Family::V4, "");
        let out = exec.run(&bin, &["--version"], None).await?;
        let version = out.trim().to_string();
        let Some(v) = parse_version(&version) else {
            return Err(FirewallError::Output {
                command: format!("{bin} --version"),
                reason: format!("no version number in {version:?}"),
            });
        };
        let mut ex = IptablesDriver::new(exec, variant, v >= RANDOM_FULLY_SINCE);
        ex.read_mode = ReadMode::for_version(&version);
        ex.version = version;
        Ok(ex)
    }

    pub fn with_lock_wait(mut self, wait: Duration) -> IptablesDriver {
        self.lock_wait = wait;
        self
    }

    /// Forces a read mode (tests of both against one kernel state, and the benchmark).
    pub fn with_read_mode(mut self, mode: ReadMode) -> IptablesDriver {
        self.read_mode = mode;
        self
    }

    pub fn read_mode(&self) -> ReadMode {
        self.read_mode
    }

    pub fn random_fully(&self) -> bool {
        self.random_fully
    }

    /// `iptables --version` output, e.g. `iptables v1.8.9 (nf_tables)`.
    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn variant(&self) -> Variant {
        self.variant
    }

    pub(crate) fn exec(&self) -> &Exec {
        &self.exec
    }

    /// Installs `rules`: trellis's chains hold exactly these rules and each wanted jump
    /// exists exactly once (others' rules untouched). Idempotent; undoes any edit of ours.
    pub async fn apply(&self, rules: &RuleSet) -> Result<(), FirewallError> {
        for family in [Family::V4, Family::V6] {
            if rules.family(family).is_empty() {
                self.remove_family(family).await?;
                continue;
            }
            let desired = rules.iptables_restore(family, self.random_fully);
            let jumps = rules.iptables_jumps(family);
            // The plan depends on the jump count read just before; a concurrent edit between
            // read and write fails the transaction (a -D without a match), so read again once.
            let mut attempt = 0;
            loop {
                let kernel = self.read(family).await?;
                let script = state::apply_script(&desired, &jumps, &kernel);
                match self.restore(family, &script).await {
                    Err(e) if attempt == 0 && matches!(e, FirewallError::Failed { .. }) => {
                        attempt += 1
                    }
                    other => break other?,
                }
            }
        }
        Ok(())
    }

    /// Compares the kernel with `rules`; an empty [`Drift`] means in sync.
    pub async fn check(&self, rules: &RuleSet) -> Result<Drift, FirewallError> {
        let mut drift = Drift::default();
        for family in [Family::V4, Family::V6] {
            if rules.family(family).is_empty() {
                if let Some(kernel) = self.read_unwanted(family).await? {
                    state::check(tool_name(family), None, &kernel, &mut drift);
                }
                continue;
            }
            let kernel = self.read(family).await?;
            let text = rules.iptables_restore(family, self.random_fully);
            let desired = state::parse(&text).map_err(|reason| FirewallError::Output {
                command: "the rendered iptables-restore input".to_string(),
                reason,
            })?;
            let jumps = rules.iptables_jumps(family);
            state::check(
                tool_name(family),
                Some((&desired, &jumps)),
                &kernel,
                &mut drift,
            );
        }
        Ok(drift)
    }

    /// Removes trellis's chains and every rule jumping to them, in both families.
    pub async fn cleanup(&self) -> Result<(), FirewallError> {
        for family in [Family::V4, Family::V6] {
            self.remove_family(family).await?;
        }
        Ok(())
    }

    /// What is installed, per family, in iptables-save syntax.
    pub async fn installed(&self) -> Installed {
        let mut sections = Vec::new();
        for family in [Family::V4, Family::V6] {
            let title = format!("{} ({family})", tool_name(family));
            let lines = self.read(family).await.map(|k| state::installed_lines(&k));
            sections.push(Section::read(title, lines));
        }
        Installed {
            backend: self.version.clone(),
            sections,
        }
    }

    async fn remove_family(&self, family: Family) -> Result<(), FirewallError> {
        let Some(mut kernel) = self.read_unwanted(family).await? else {
            return Ok(());
        };
        // -X refuses a chain anything still jumps to, and a per-chain read sees the jumps
        // from the built-in chains only: before deleting, read every rule. Only when there
        // is a chain to delete, so a family that holds nothing of ours stays a small read.
        if self.read_mode == ReadMode::OwnChains && kernel.has_own_chain() {
            kernel = self.read_dump(family).await?;
        }
        match state::cleanup_script(&kernel) {
            Some(script) => self.restore(family, &script).await,
            None => Ok(()),
        }
    }

    /// Reads a family that should hold nothing of trellis's. IPv6 may be disabled in the
    /// kernel (`ipv6.disable=1`), and then ip6tables cannot even list: nothing can be there
    /// to remove, so that is `None` rather than an error. IPv4 netfilter is always there.
    async fn read_unwanted(&self, family: Family) -> Result<Option<Saved>, FirewallError> {
        match (self.read(family).await, family) {
            (Ok(k), _) => Ok(Some(k)),
            (Err(_), Family::V6) => Ok(None),
            (Err(e), Family::V4) => Err(e),
        }
    }

    async fn read(&self, family: Family) -> Result<Saved, FirewallError> {
        match self.read_mode {
            ReadMode::OwnChains => self.read_own_chains(family).await,
            ReadMode::Dump => self.read_dump(family).await,
        }
    }

    /// The whole family through `iptables-save`, parsed after dropping what is not trellis's.
    async fn read_dump(&self, family: Family) -> Result<Saved, FirewallError> {
        let bin = self.variant.binary(family, "-save");
        let out = self.exec.run(&bin, &[], None).await?;
        state::parse(&state::owned_lines(&out)).map_err(|reason| FirewallError::Output {
            command: bin,
            reason,
        })
    }

    /// Each of trellis's chains and the built-in chain that jumps to it, one table each.
    async fn read_own_chains(&self, family: Family) -> Result<Saved, FirewallError> {
        let mut saved = Saved::default();
        for (table, chain) in state::OURS {
            let Some(hook) = state::hook_of(table) else {
                continue;
            };
            let listing = match self.list_chain(family, table, chain).await {
                Ok(own) => self.list_chain(family, table, hook).await? + &own,
                // Not there: check reports it missing (or nothing, when none is wanted). A
                // jump needs its target, so there is none in the hook to count either, and
                // the hook is not read (a family trellis does not use costs one read a table).
                Err(FirewallError::Failed { stderr, .. })
                    if state::is_missing_chain(&stderr, chain) =>
                {
                    String::new()
                }
                Err(e) => return Err(e),
            };
            let parsed =
                state::parse_listing(table, &listing).map_err(|reason| FirewallError::Output {
                    command: format!("{} -t {table} -S", self.variant.binary(family, "")),
                    reason,
                })?;
            saved.tables.push(parsed);
        }
        Ok(saved)
    }

    /// `iptables -t TABLE -S CHAIN`. `-w`: legacy iptables takes the xtables lock even to
    /// list (iptables-nft accepts and ignores it).
    async fn list_chain(
        &self,
        family: Family,
        table: &str,
        chain: &str,
    ) -> Result<String, FirewallError> {
        let bin = self.variant.binary(family, "");
        let wait = self.lock_wait.as_secs().max(1).to_string();
        self.exec
            .run(&bin, &["-w", &wait, "-t", table, "-S", chain], None)
            .await
    }

    async fn restore(&self, family: Family, script: &str) -> Result<(), FirewallError> {
        let bin = self.variant.binary(family, "-restore");
        let wait = format!("--wait={}", self.lock_wait.as_secs().max(1));
        self.exec
            .run(&bin, &["--noflush", &wait], Some(script))
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_fully_needs_1_6_2() {
        assert!(parse_version("iptables v1.6.1").unwrap() < RANDOM_FULLY_SINCE);
        assert!(parse_version("iptables v1.6.2").unwrap() >= RANDOM_FULLY_SINCE);
    }

    #[test]
    fn the_read_mode_follows_the_flavour() {
        assert_eq!(
            ReadMode::for_version("iptables v1.8.9 (nf_tables)"),
            ReadMode::OwnChains
        );
        assert_eq!(
            ReadMode::for_version("iptables v1.8.9 (legacy)"),
            ReadMode::Dump
        );
        assert_eq!(ReadMode::for_version("iptables v1.6.1"), ReadMode::Dump);
        let ex = |v| IptablesDriver::new(Exec::new(), v, true).read_mode();
        assert_eq!(ex(Variant::Nft), ReadMode::OwnChains);
        assert_eq!(ex(Variant::Legacy), ReadMode::Dump);
        assert_eq!(ex(Variant::Path), ReadMode::Dump);
    }

    #[test]
    fn binaries_follow_variant_and_family() {
        assert_eq!(Variant::Path.binary(Family::V4, "-save"), "iptables-save");
        assert_eq!(
            Variant::Legacy.binary(Family::V6, "-restore"),
            "ip6tables-legacy-restore"
        );
        assert_eq!(Variant::Nft.binary(Family::V4, ""), "iptables-nft");
    }
}

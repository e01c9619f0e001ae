//! Fixtures for the privileged firewall tests: throwaway network namespaces (deleted on drop,
//! also when a test panics), the executors pointed into them, and kernel-state snapshots.

#![allow(dead_code)]

use trellis_agent::firewall::iptables::{IptablesDriver, ReadMode, Variant};
use trellis_agent::firewall::nftables::NftablesDriver;
use trellis_agent::firewall::rules::{FamilyNets, RuleSet};
use trellis_agent::firewall::tool::Exec;
use trellis_agent::firewall::Firewall;

pub use trellis_testkit::{require_root, Netns};

/// A network namespace `trl-fw<tag>-…`, deleted on drop.
pub fn netns(tag: &str) -> Netns {
    require_root();
    Netns::new(&format!("trl-fw{tag}")).unwrap_or_else(|e| panic!("{e}"))
}

/// The agent's command executor, pointed into `ns`.
pub fn exec_in(ns: &Netns) -> Exec {
    Exec::in_netns(&ns.name)
}

pub fn nets(network: &str, subnet: &str) -> FamilyNets {
    FamilyNets {
        network: network.parse().expect("network"),
        subnet: subnet.parse().expect("subnet"),
    }
}

pub fn v4() -> FamilyNets {
    nets("10.244.0.0/16", "10.244.1.0/24")
}

pub fn v6() -> FamilyNets {
    nets("fd00:10:244::/56", "fd00:10:244:1::/64")
}

/// Dual stack, masquerade and forward rules.
pub fn full_rules() -> RuleSet {
    RuleSet::build(Some(v4()), Some(v6()), true, true)
}

/// The executors under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `iptables` on PATH (iptables-nft on this machine), reading trellis's chains one by one.
    Iptables,
    /// `iptables-legacy…`, reading whole `iptables-save` dumps.
    IptablesLegacy,
    /// As [`Kind::Iptables`], but forced to read whole dumps (the other read mode on nft).
    IptablesDump,
    /// As [`Kind::IptablesLegacy`], but forced to read chain by chain.
    IptablesLegacyOwnChains,
    Nftables,
}

impl Kind {
    pub fn variant(self) -> Option<Variant> {
        match self {
            Kind::Iptables | Kind::IptablesDump => Some(Variant::Path),
            Kind::IptablesLegacy | Kind::IptablesLegacyOwnChains => Some(Variant::Legacy),
            Kind::Nftables => None,
        }
    }

    /// The read mode forced on the executor, if any (otherwise the flavour's own).
    fn forced_read_mode(self) -> Option<ReadMode> {
        match self {
            Kind::IptablesDump => Some(ReadMode::Dump),
            Kind::IptablesLegacyOwnChains => Some(ReadMode::OwnChains),
            _ => None,
        }
    }

    /// The iptables binary of this kind (for hand edits), e.g. `ip6tables-legacy`.
    pub fn iptables(self, v6: bool) -> String {
        let base = if v6 { "ip6tables" } else { "iptables" };
        match self.variant() {
            Some(Variant::Legacy) => format!("{base}-legacy"),
            _ => base.to_string(),
        }
    }

    pub async fn firewall(self, ns: &Netns) -> Firewall {
        match self.variant() {
            Some(v) => {
                let ex = IptablesDriver::detect(exec_in(ns), v)
                    .await
                    .expect("detect iptables");
                Firewall::Iptables(match self.forced_read_mode() {
                    Some(mode) => ex.with_read_mode(mode),
                    None => ex,
                })
            }
            None => Firewall::Nftables(
                NftablesDriver::detect(exec_in(ns))
                    .await
                    .expect("detect nft"),
            ),
        }
    }
}

/// iptables-save of this kind for both families, without comments and counters: what a
/// person would compare by eye.
pub fn iptables_snapshot(ns: &Netns, kind: Kind) -> String {
    let mut out = String::new();
    for v6 in [false, true] {
        let save = format!("{}-save", kind.iptables(v6));
        for line in ns.sh(&[&save]).lines() {
            if line.starts_with('#') {
                continue;
            }
            let line = match line.rfind(" [") {
                Some(i) if line.starts_with(':') => &line[..i],
                _ => line,
            };
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The whole nftables ruleset of the namespace (which includes iptables-nft's tables).
pub fn nft_snapshot(ns: &Netns) -> String {
    ns.sh(&["nft", "list", "ruleset"])
}

/// Everything a firewall test may change: both iptables flavours and nftables.
pub fn full_snapshot(ns: &Netns) -> String {
    format!(
        "{}\n{}\n{}",
        iptables_snapshot(ns, Kind::Iptables),
        iptables_snapshot(ns, Kind::IptablesLegacy),
        nft_snapshot(ns)
    )
}

/// Rules of others, in every place trellis writes to: POSTROUTING and FORWARD (both
/// families, the given iptables flavour), a chain of their own, and an nftables table.
pub fn add_foreign_rules(ns: &Netns, kind: Kind) {
    let ipt = kind.iptables(false);
    let ip6t = kind.iptables(true);
    ns.sh(&[
        &ipt,
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-s",
        "10.99.0.0/16",
        "-j",
        "MASQUERADE",
    ]);
    ns.sh(&[&ipt, "-t", "filter", "-N", "FOREIGN"]);
    ns.sh(&[
        &ipt, "-t", "filter", "-A", "FOREIGN", "-i", "eth9", "-j", "DROP",
    ]);
    ns.sh(&[&ipt, "-t", "filter", "-A", "FORWARD", "-j", "FOREIGN"]);
    ns.sh(&[
        &ip6t,
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-s",
        "fd99::/64",
        "-j",
        "MASQUERADE",
    ]);
    ns.sh(&[
        &ip6t, "-t", "filter", "-A", "FORWARD", "-o", "eth9", "-j", "ACCEPT",
    ]);
    ns.sh(&["nft", "add", "table", "inet", "foreign"]);
    ns.sh(&[
        "nft",
        "add",
        "chain",
        "inet",
        "foreign",
        "post",
        "{ type nat hook postrouting priority 50; policy accept; }",
    ]);
    ns.sh(&[
        "nft",
        "add",
        "rule",
        "inet",
        "foreign",
        "post",
        "ip",
        "saddr",
        "10.98.0.0/16",
        "masquerade",
    ]);
}

/// How many times a line occurs in a snapshot.
pub fn count(snapshot: &str, line: &str) -> usize {
    snapshot.lines().filter(|l| l.trim() == line).count()
}

/// One `#[tokio::test]` per firewall kind, each running the same scenario `async fn(Kind)` (so
/// each kind keeps its own test: its own process and namespace under nextest, its name in a
/// failure): `per_kind!(scenario { test_name: Kind::Iptables, other_name: Kind::Nftables });`
#[allow(unused_macros)]
macro_rules! per_kind {
    ($scenario:ident { $($name:ident: $kind:expr),+ $(,)? }) => {
        $(
            #[tokio::test]
            async fn $name() {
                $scenario($kind).await;
            }
        )+
    };
}
#[allow(unused_imports)]
pub(crate) use per_kind;

/// The commands an executor runs, one line each, logged to a temp file as they start.
pub struct CommandLog {
    file: tempfile::NamedTempFile,
}

impl CommandLog {
    pub fn new() -> CommandLog {
        CommandLog {
            file: tempfile::NamedTempFile::new().expect("command log"),
        }
    }

    /// An executor into `ns` that logs each command before running it.
    pub fn exec_in(&self, ns: &Netns) -> Exec {
        let path = self.file.path().to_str().expect("utf-8 temp path");
        Exec::new().with_prefix([
            "sh",
            "-c",
            "printf '%s\\n' \"$*\" >>\"$0\"; exec \"$@\"",
            path,
            "ip",
            "netns",
            "exec",
            &ns.name,
        ])
    }

    /// Forgets what was logged so far.
    pub fn clear(&self) {
        std::fs::write(self.file.path(), "").expect("clear the command log");
    }

    pub fn read(&self) -> String {
        std::fs::read_to_string(self.file.path()).expect("read the command log")
    }
}

//! Privileged: the iptables (nft and legacy flavours) and nftables executors against the real
//! tools, each test in its own network namespace: idempotent apply, drift found and repaired,
//! others' rules untouched, cleanup complete, backend switches.

mod firewall_common;

use firewall_common::*;
use trellis_agent::firewall::drift::DriftKind;
use trellis_agent::firewall::rules::RuleSet;
use trellis_agent::firewall::{switch, Firewall};

const MASQ_JUMP: &str = "-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG";
const FWD_JUMP: &str = "-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD";

fn snapshot(ns: &Netns, kind: Kind) -> String {
    match kind {
        Kind::Nftables => nft_snapshot(ns),
        _ => iptables_snapshot(ns, kind),
    }
}

async fn assert_in_sync(fw: &Firewall, rules: &RuleSet) {
    let drift = fw.check(rules).await.expect("check");
    assert!(drift.is_clean(), "{:?} drifted:\n{drift}", fw.driver());
}

async fn idempotent(kind: Kind) {
    let ns = netns("idem");
    let fw = kind.firewall(&ns).await;
    let rules = full_rules();
    assert!(
        !fw.check(&rules).await.unwrap().is_clean(),
        "nothing installed yet"
    );
    fw.apply(&rules).await.expect("first apply");
    let first = snapshot(&ns, kind);
    assert_in_sync(&fw, &rules).await;
    fw.apply(&rules).await.expect("second apply");
    let second = snapshot(&ns, kind);
    assert_eq!(first, second, "a second apply changed the ruleset");
    assert_in_sync(&fw, &rules).await;
    if kind == Kind::Nftables {
        assert_eq!(second.matches("table inet trellis").count(), 1);
        assert!(
            second.contains("masquerade fully-random comment \"flanneld masq\""),
            "{second}"
        );
    } else {
        // Each family: one jump of each kind, and the chains hold flannel's rules.
        assert_eq!(count(&second, MASQ_JUMP), 2, "{second}");
        assert_eq!(count(&second, FWD_JUMP), 2, "{second}");
        assert_eq!(
            count(&second, "-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully"),
            1,
            "{second}"
        );
        assert_eq!(
            count(&second, "-A FLANNEL-FWD -d fd00:10:244::/56 -m comment --comment \"flanneld forward\" -j ACCEPT"),
            1
        );
    }
    let shown = fw.installed().await.to_string();
    assert!(shown.contains("10.244.1.0/24"), "{shown}");
    assert!(!shown.contains("cannot read"), "{shown}");
}

per_kind!(idempotent {
    iptables_apply_twice_is_identical: Kind::Iptables,
    iptables_legacy_apply_twice_is_identical: Kind::IptablesLegacy,
    nftables_apply_twice_is_identical: Kind::Nftables,
});

/// Each hand edit in turn (a shell command line run in `ns`): check() must name it (`expect` in
/// its report) and apply() must restore the exact ruleset.
async fn edits_are_found_and_repaired(
    ns: &Netns,
    fw: &Firewall,
    kind: Kind,
    rules: &RuleSet,
    edits: &[(impl AsRef<str>, &str)],
) {
    for (edit, expect) in edits {
        let edit = edit.as_ref();
        let good = snapshot(ns, kind);
        ns.sh(&["sh", "-c", edit]);
        let drift = fw.check(rules).await.expect("check");
        assert!(!drift.is_clean(), "{edit:?} was not noticed");
        let text = drift.to_string();
        assert!(
            text.contains(expect),
            "after {edit:?}, want {expect:?} in:\n{text}"
        );
        fw.apply(rules).await.expect("repair");
        assert_in_sync(fw, rules).await;
        assert_eq!(
            snapshot(ns, kind),
            good,
            "apply after {edit:?} did not restore the ruleset"
        );
    }
}

async fn iptables_drift(kind: Kind) {
    let ns = netns("drift");
    let fw = kind.firewall(&ns).await;
    let rules = full_rules();
    fw.apply(&rules).await.expect("apply");
    let (ipt, ip6t) = (kind.iptables(false), kind.iptables(true));
    let edits = [
        (
            format!("{ipt} -t nat -F FLANNEL-POSTRTG"),
            "iptables nat FLANNEL-POSTRTG: missing: -A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000",
        ),
        (
            format!("{ip6t} -t filter -I FLANNEL-FWD -j DROP"),
            "ip6tables filter FLANNEL-FWD: unexpected: -A FLANNEL-FWD -j DROP",
        ),
        (
            format!("{ipt} -t nat -D POSTROUTING -m comment --comment 'flanneld masq' -j FLANNEL-POSTRTG"),
            "iptables nat POSTROUTING: missing:",
        ),
        (
            format!("{ipt} -t filter -A FORWARD -m comment --comment 'flanneld forward' -j FLANNEL-FWD"),
            "iptables filter FORWARD: 2 copies of",
        ),
        // A whole chain deleted (its jump and rules first, or the kernel refuses).
        (
            format!("{ip6t} -t nat -D POSTROUTING -m comment --comment 'flanneld masq' -j FLANNEL-POSTRTG && {ip6t} -t nat -F FLANNEL-POSTRTG && {ip6t} -t nat -X FLANNEL-POSTRTG"),
            "ip6tables nat FLANNEL-POSTRTG: missing: chain FLANNEL-POSTRTG with 6 rules",
        ),
    ];
    edits_are_found_and_repaired(&ns, &fw, kind, &rules, &edits).await;
}

per_kind!(iptables_drift {
    iptables_drift_is_found_and_repaired: Kind::Iptables,
    iptables_legacy_drift_is_found_and_repaired: Kind::IptablesLegacy,
    iptables_drift_is_found_and_repaired_reading_whole_dumps: Kind::IptablesDump,
    iptables_legacy_drift_is_found_and_repaired_reading_chain_by_chain:
        Kind::IptablesLegacyOwnChains,
});

#[tokio::test]
async fn nftables_drift_is_found_and_repaired() {
    let ns = netns("nftdrift");
    let kind = Kind::Nftables;
    let fw = kind.firewall(&ns).await;
    let rules = full_rules();
    fw.apply(&rules).await.expect("apply");
    let edits = [
        (
            "nft flush chain inet trellis postrouting",
            "nft inet trellis postrouting: missing: meta nfproto ipv4 meta mark & 0x4000 == 0x4000 return",
        ),
        (
            "nft insert rule inet trellis forward counter drop",
            "nft inet trellis forward: unexpected: (not trellis's)",
        ),
        (
            "nft delete table inet trellis",
            "nft inet trellis: missing: chain postrouting with 12 rules",
        ),
        (
            "nft add chain inet trellis sneaky",
            "nft inet trellis: unexpected: chain sneaky",
        ),
        (
            "nft add set inet trellis blocked '{ type ipv4_addr; }'",
            "nft inet trellis: unexpected: set blocked",
        ),
    ];
    edits_are_found_and_repaired(&ns, &fw, kind, &rules, &edits).await;
    // A rule replaced by an almost identical one: the address differs.
    let listing = ns.sh(&["nft", "-a", "list", "chain", "inet", "trellis", "forward"]);
    let handle = listing
        .lines()
        .find(|l| l.contains("ip saddr 10.244.0.0/16 accept"))
        .and_then(|l| l.rsplit("handle ").next())
        .expect("rule handle")
        .trim()
        .to_string();
    let replace = format!(
        "nft replace rule inet trellis forward handle {handle} ip saddr 10.245.0.0/16 accept"
    );
    edits_are_found_and_repaired(
        &ns,
        &fw,
        kind,
        &rules,
        &[(replace, "unexpected: ip saddr 10.245.0.0/16 accept")],
    )
    .await;
}

/// Others' rules survive apply and cleanup; cleanup leaves nothing of trellis's.
async fn foreign_survive(kind: Kind) {
    let ns = netns("foreign");
    add_foreign_rules(&ns, kind);
    let before = full_snapshot(&ns);
    let fw = kind.firewall(&ns).await;
    let rules = full_rules();
    fw.apply(&rules).await.expect("apply");
    fw.apply(&rules).await.expect("apply again");
    let during = full_snapshot(&ns);
    for foreign in before.lines().filter(|l| {
        l.contains("10.99.0.0")
            || l.contains("eth9")
            || l.contains("10.98.0.0")
            || l.contains("fd99::")
    }) {
        assert!(
            during.lines().any(|l| l == foreign),
            "{foreign:?} lost by apply:\n{during}"
        );
    }
    fw.cleanup().await.expect("cleanup");
    assert_eq!(
        full_snapshot(&ns),
        before,
        "cleanup did not restore the exact ruleset of others"
    );
    assert!(fw.check(&RuleSet::default()).await.unwrap().is_clean());
    fw.cleanup().await.expect("second cleanup is a no-op");
    assert_eq!(full_snapshot(&ns), before);
    let shown = fw.installed().await.to_string();
    assert!(
        !shown.contains("FLANNEL") && !shown.contains("flanneld"),
        "{shown}"
    );
}

per_kind!(foreign_survive {
    iptables_leaves_foreign_rules_alone: Kind::Iptables,
    iptables_legacy_leaves_foreign_rules_alone: Kind::IptablesLegacy,
    nftables_leaves_foreign_rules_alone: Kind::Nftables,
    iptables_leaves_foreign_rules_alone_reading_whole_dumps: Kind::IptablesDump,
    iptables_legacy_leaves_foreign_rules_alone_reading_chain_by_chain:
        Kind::IptablesLegacyOwnChains,
});

/// Someone else's chain jumping into ours (not from a built-in chain, so a per-chain read
/// does not see it): cleanup still deletes that jump first, or -X would be refused.
async fn stranger_jump_cleanup(kind: Kind) {
    let ns = netns("stranger");
    let fw = kind.firewall(&ns).await;
    fw.apply(&full_rules()).await.expect("apply");
    let ipt = kind.iptables(false);
    ns.sh(&[&ipt, "-t", "filter", "-N", "STRANGER"]);
    ns.sh(&[
        &ipt,
        "-t",
        "filter",
        "-A",
        "STRANGER",
        "-s",
        "10.77.0.0/16",
        "-j",
        "FLANNEL-FWD",
    ]);
    fw.cleanup().await.expect("cleanup");
    let after = iptables_snapshot(&ns, kind);
    assert!(!after.contains("FLANNEL"), "{after}");
    assert!(
        after.contains(":STRANGER"),
        "the stranger's chain must stay:\n{after}"
    );
    assert!(fw.check(&RuleSet::default()).await.unwrap().is_clean());
}

per_kind!(stranger_jump_cleanup {
    iptables_cleanup_deletes_a_strangers_jump_into_our_chain: Kind::Iptables,
    iptables_legacy_cleanup_deletes_a_strangers_jump_into_our_chain: Kind::IptablesLegacy,
    iptables_legacy_cleanup_deletes_a_strangers_jump_into_our_chain_reading_chain_by_chain:
        Kind::IptablesLegacyOwnChains,
});

/// kube-proxy-like rules around trellis's: on iptables-nft, check, apply and status run only
/// `iptables -S` of trellis's chains and their built-in hooks, never a save; and the check
/// still tells an edit of our chain.
#[tokio::test]
async fn on_nft_a_check_lists_only_trellis_chains_and_their_hooks() {
    use trellis_agent::firewall::iptables::{IptablesDriver, ReadMode, Variant};

    let ns = netns("ownread");
    let mut restore = String::from("*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-POSTROUTING - [0:0]\n");
    for i in 0..200 {
        restore.push_str(&format!(":KUBE-SVC-{i:04} - [0:0]\n"));
    }
    restore.push_str(
        "-A PREROUTING -j KUBE-SERVICES\n-A OUTPUT -j KUBE-SERVICES\n\
         -A POSTROUTING -j KUBE-POSTROUTING\n\
         -A KUBE-POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE\n",
    );
    for i in 0..200 {
        restore.push_str(&format!(
            "-A KUBE-SERVICES -d 10.96.{}.{}/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-{i:04}\n\
             -A KUBE-SVC-{i:04} -p tcp -m tcp -j DNAT --to-destination 10.244.9.{}:8080\n",
            i / 250,
            i % 250 + 1,
            i % 250 + 1
        ));
    }
    restore.push_str("COMMIT\n");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &restore).unwrap();
    ns.sh(&[
        "sh",
        "-c",
        &format!("iptables-nft-restore < {}", file.path().display()),
    ]);

    let log = CommandLog::new();
    let ex = IptablesDriver::detect(log.exec_in(&ns), Variant::Nft)
        .await
        .expect("detect");
    assert_eq!(ex.read_mode(), ReadMode::OwnChains);
    let fw = Firewall::Iptables(ex);
    let rules = full_rules();
    fw.apply(&rules).await.expect("apply");
    log.clear();
    assert_in_sync(&fw, &rules).await;
    let shown = fw.installed().await.to_string();
    assert!(
        shown.contains("FLANNEL-POSTRTG") && !shown.contains("KUBE-"),
        "{shown}"
    );
    let commands = log.read();
    let mut listed = Vec::new();
    for c in commands.lines() {
        let words: Vec<&str> = c.split_whitespace().collect();
        assert!(!c.contains("-save"), "a check or status ran a save: {c}");
        let chain = match words.as_slice() {
            [.., "-t", _, "-S", chain] => *chain,
            _ => panic!("not a per-chain listing: {c}"),
        };
        assert!(
            ["POSTROUTING", "FLANNEL-POSTRTG", "FORWARD", "FLANNEL-FWD"].contains(&chain),
            "{c}"
        );
        listed.push(chain);
    }
    // Both families, each chain, for the check and again for status.
    assert_eq!(listed.len(), 16, "{commands}");

    ns.sh(&["iptables-nft", "-t", "nat", "-D", "FLANNEL-POSTRTG", "1"]);
    let drift = fw.check(&rules).await.expect("check");
    assert!(
        drift
            .to_string()
            .contains("iptables nat FLANNEL-POSTRTG: missing:"),
        "{drift}"
    );

    // Nothing of ours left: each family costs one listing a table (no chain, so no jump to
    // look for in the hook).
    fw.apply(&RuleSet::default()).await.expect("remove");
    log.clear();
    assert_in_sync(&fw, &RuleSet::default()).await;
    let commands = log.read();
    assert_eq!(commands.lines().count(), 4, "{commands}");
    assert!(
        commands
            .lines()
            .all(|c| c.ends_with("-S FLANNEL-POSTRTG") || c.ends_with("-S FLANNEL-FWD")),
        "{commands}"
    );
}

/// Fewer rules: a disabled part loses its jump (iptables) or chain (nft); an empty rule set
/// means nothing installed, as after cleanup.
async fn shrink(kind: Kind) {
    let ns = netns("shrink");
    let fw = kind.firewall(&ns).await;
    let empty = full_snapshot(&ns);
    fw.apply(&full_rules()).await.expect("apply");
    let fwd_v4_only = RuleSet::build(Some(v4()), None, false, true);
    let drift = fw.check(&fwd_v4_only).await.unwrap();
    assert!(
        drift
            .items
            .iter()
            .any(|i| matches!(i.kind, DriftKind::Unexpected(_))),
        "{drift}"
    );
    fw.apply(&fwd_v4_only).await.expect("apply forward only");
    assert_in_sync(&fw, &fwd_v4_only).await;
    let snap = full_snapshot(&ns);
    assert!(!snap.contains("flanneld masq"), "{snap}");
    assert!(!snap.contains("fd00:10:244"), "{snap}");
    assert!(snap.contains("flanneld forward"), "{snap}");
    fw.apply(&RuleSet::default()).await.expect("apply nothing");
    assert_in_sync(&fw, &RuleSet::default()).await;
    let after = full_snapshot(&ns);
    assert!(
        !after.contains("FLANNEL") && !after.contains("trellis"),
        "{after}"
    );
    if kind == Kind::Nftables {
        assert_eq!(after, empty);
    }
}

per_kind!(shrink {
    iptables_follows_a_shrinking_rule_set: Kind::Iptables,
    nftables_follows_a_shrinking_rule_set: Kind::Nftables,
});

#[tokio::test]
async fn switching_backends_moves_the_rules() {
    let ns = netns("switch");
    add_foreign_rules(&ns, Kind::Iptables);
    let before = full_snapshot(&ns);
    let ipt = Kind::Iptables.firewall(&ns).await;
    let nft = Kind::Nftables.firewall(&ns).await;
    assert!(!ipt.same_rules_as(&nft));
    assert!(ipt.same_rules_as(&Kind::Iptables.firewall(&ns).await));
    let rules = full_rules();

    ipt.apply(&rules).await.expect("iptables");
    switch(&ipt, &nft, &rules).await.expect("iptables -> nft");
    assert_in_sync(&nft, &rules).await;
    assert_in_sync(&ipt, &RuleSet::default()).await;
    let snap = full_snapshot(&ns);
    assert!(
        !snap.contains("FLANNEL"),
        "iptables chains left after the switch:\n{snap}"
    );

    switch(&nft, &ipt, &rules).await.expect("nft -> iptables");
    assert_in_sync(&ipt, &rules).await;
    assert_in_sync(&nft, &RuleSet::default()).await;

    // The order the agent may use as well: old cleanup first, then the new apply.
    ipt.cleanup().await.expect("cleanup iptables");
    nft.apply(&rules).await.expect("apply nft");
    assert_in_sync(&nft, &rules).await;
    assert_in_sync(&ipt, &RuleSet::default()).await;

    // Switching to the same backend must not clean up what it just applied.
    switch(&nft, &nft, &rules).await.expect("nft -> nft");
    assert_in_sync(&nft, &rules).await;

    nft.cleanup().await.expect("cleanup nft");
    assert_eq!(full_snapshot(&ns), before);
}

#[tokio::test]
async fn resync_repairs_only_when_drifted() {
    let ns = netns("resync");
    let fw = Kind::Iptables.firewall(&ns).await;
    let rules = full_rules();
    let drift = fw.resync(&rules).await.expect("first resync installs");
    assert!(!drift.is_clean());
    assert!(fw.resync(&rules).await.expect("resync").is_clean());
    ns.sh(&["iptables", "-t", "filter", "-F", "FLANNEL-FWD"]);
    let drift = fw.resync(&rules).await.expect("resync after flush");
    assert_eq!(drift.items.len(), 2, "{drift}");
    assert_in_sync(&fw, &rules).await;
}

/// A lock held by someone else: with a short lock wait, iptables-restore gives up and the
/// error carries its words; with a process deadline shorter than the lock wait, the child is
/// killed. The lock file is private to the test (XTABLES_LOCKFILE), not the host's.
#[tokio::test]
async fn a_held_xtables_lock_is_a_clear_error() {
    use std::time::{Duration, Instant};
    use trellis_agent::firewall::iptables::{IptablesDriver, Variant};
    use trellis_agent::firewall::tool::FirewallError;

    let ns = netns("lock");
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("xtables.lock");
    let lock = lock.to_str().unwrap();
    let env = format!("XTABLES_LOCKFILE={lock}");
    let prefix = ["env", env.as_str(), "ip", "netns", "exec", ns.name.as_str()];
    let mut holder = std::process::Command::new("flock")
        .args([lock, "sleep", "20"])
        .spawn()
        .expect("flock");
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _holder = Kill(&mut holder);
    // flock creates and takes the lock asynchronously.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::path::Path::new(lock).exists() {
        assert!(Instant::now() < deadline, "flock did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(100));

    let exec = trellis_agent::firewall::tool::Exec::new().with_prefix(prefix);
    let fw = IptablesDriver::new(exec.clone(), Variant::Legacy, true)
        .with_lock_wait(Duration::from_secs(1));
    let err = fw.apply(&full_rules()).await.expect_err("the lock is held");
    let msg = err.to_string();
    assert!(matches!(err, FirewallError::Failed { .. }), "{err:?}");
    assert!(msg.contains("xtables lock"), "{msg}");
    assert!(
        msg.contains("iptables-legacy-restore --noflush --wait=1"),
        "{msg}"
    );
    assert!(
        msg.contains("-A FLANNEL-POSTRTG"),
        "the input is shown: {msg}"
    );

    let started = Instant::now();
    let fw = IptablesDriver::new(
        exec.with_timeout(Duration::from_millis(700)),
        Variant::Legacy,
        true,
    )
    .with_lock_wait(Duration::from_secs(15));
    let err = fw
        .apply(&full_rules())
        .await
        .expect_err("the deadline passes");
    assert!(matches!(err, FirewallError::Timeout { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // A namespace that does not exist: ip's own complaint comes through.
    let err = trellis_agent::firewall::nftables::NftablesDriver::new(
        trellis_agent::firewall::tool::Exec::in_netns("trellis-no-such-netns"),
        true,
    )
    .apply(&full_rules())
    .await
    .expect_err("no such netns");
    assert!(
        err.to_string().contains("Cannot open network namespace"),
        "{err}"
    );
}

/// Without its table, an nftables check and status ask nft for that table only: a missing
/// table is told by nft's answer, not by listing every table (which makes nft fetch the
/// whole ruleset, kube-proxy's included).
#[tokio::test]
async fn nftables_check_without_the_table_lists_only_that_table() {
    use trellis_agent::firewall::nftables::NftablesDriver;

    let ns = netns("nftmissing");
    let log = CommandLog::new();
    let fw = Firewall::Nftables(
        NftablesDriver::detect(log.exec_in(&ns))
            .await
            .expect("detect nft"),
    );
    log.clear();
    let drift = fw.check(&full_rules()).await.expect("check");
    assert!(
        drift.to_string().contains("missing: chain postrouting"),
        "{drift}"
    );
    assert!(fw.check(&RuleSet::default()).await.unwrap().is_clean());
    let shown = fw.installed().await.to_string();
    assert!(
        shown.contains("(nothing installed)") && !shown.contains("cannot read"),
        "{shown}"
    );
    let commands = log.read();
    assert_eq!(commands.lines().count(), 3, "{commands}");
    for c in commands.lines() {
        assert!(c.ends_with("list table inet trellis"), "{c}");
    }
}

/// Issue 13: flannel's nftables mode leaves `ip flannel-ipv4` / `ip6 flannel-ipv6` (its
/// masquerade and forward rules, as flannel's trafficmngr writes them). Once trellis's rules
/// are in place they are removed, trellis's table stays, and a second call finds nothing.
#[tokio::test]
async fn flannels_nftables_tables_are_removed_after_trellis_took_over() {
    use trellis_agent::firewall::nftables::NftablesDriver;

    let ns = netns("nftflannel");
    let flannel = "table ip flannel-ipv4 {
  chain postrtg {
    type nat hook postrouting priority srcnat; policy accept;
    meta mark and 0x4000 == 0x4000 return
    ip saddr 10.244.1.0/24 ip daddr 10.244.0.0/16 return
    ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random
  }
  chain forward {
    type filter hook forward priority filter; policy accept;
    ip saddr 10.244.0.0/16 accept
    ip daddr 10.244.0.0/16 accept
  }
}
table ip6 flannel-ipv6 {
  chain postrtg {
    type nat hook postrouting priority srcnat; policy accept;
    ip6 saddr fd00:10:244::/56 ip6 daddr != ff00::/8 masquerade fully-random
  }
}
";
    ns.exec_with_stdin("nft", &["-f", "-"], flannel)
        .expect("flannel's tables");
    let nft = NftablesDriver::detect(exec_in(&ns))
        .await
        .expect("detect nft");
    let fw = Firewall::Nftables(nft.clone());
    fw.apply(&full_rules()).await.expect("trellis's rules");
    let removed = nft.remove_flannel_tables().await.expect("remove");
    assert_eq!(removed, ["table ip flannel-ipv4", "table ip6 flannel-ipv6"]);
    let tables = ns.exec(&["nft", "list", "tables"]).expect("list");
    assert_eq!(tables.trim(), "table inet trellis", "{tables}");
    assert!(fw.check(&full_rules()).await.expect("check").is_clean());
    assert!(nft.remove_flannel_tables().await.expect("again").is_empty());
}

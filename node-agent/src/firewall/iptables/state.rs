//! Reading `iptables-save` output, comparing it with the rule set, and planning the
//! `iptables-restore --noflush` input that fixes it. Pure: the driver in [`super`] runs the tools.
//!
//! The restore input does everything for one family in one transaction per table: it
//! redeclares trellis's chains (which flushes and refills them) and adds or removes the jump
//! rules in the built-in chains according to how many the kernel held when it was read.

use std::fmt;

use crate::firewall::drift::{Drift, DriftKind};
use crate::firewall::rules::{JumpRule, FORWARD_CHAIN, MASQ_CHAIN};

/// trellis's chains and the tables they live in.
pub(crate) const OURS: [(&str, &str); 2] = [("nat", MASQ_CHAIN), ("filter", FORWARD_CHAIN)];

/// The tables of one `iptables-save` (or restore input) text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Saved {
    pub tables: Vec<Table>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Table {
    pub name: String,
    /// Every chain declared (`:NAME POLICY [p:b]`), built-in or not.
    pub chains: Vec<String>,
    /// `-A` lines in file order, which is evaluation order within a chain.
    pub rules: Vec<SavedRule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SavedRule {
    pub chain: String,
    /// The words after `-A CHAIN`, unquoted.
    pub args: Vec<String>,
}

impl fmt::Display for SavedRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "-A {}", self.chain)?;
        for a in &self.args {
            write!(f, " {}", quote(a))?;
        }
        Ok(())
    }
}

/// Splits a line the way iptables-restore does: whitespace separates words, double quotes
/// group, a backslash escapes the next character.
pub(crate) fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(n) => {
                    cur.push(n);
                    in_word = true;
                }
                None => return Err(format!("trailing backslash in {line:?}")),
            },
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quoted {
        return Err(format!("unbalanced quote in {line:?}"));
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// Quotes a word for iptables-restore input, as iptables-save does.
pub(crate) fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && !word
            .chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '\\' || c == '\'');
    if plain {
        return word.to_string();
    }
    let mut out = String::from("\"");
    for c in word.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Parses `iptables-save` output (or restore input in the same format).
pub(crate) fn parse(text: &str) -> Result<Saved, String> {
    let mut saved = Saved::default();
    let mut current: Option<Table> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = |msg: &str| format!("line {}: {msg}: {raw:?}", n + 1);
        if let Some(name) = line.strip_prefix('*') {
            if current.is_some() {
                return Err(at("table starts before the previous COMMIT"));
            }
            current = Some(Table {
                name: name.to_string(),
                ..Table::default()
            });
            continue;
        }
        let Some(table) = current.as_mut() else {
            return Err(at("outside of a table"));
        };
        if line == "COMMIT" {
            saved.tables.extend(current.take());
        } else if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or_default();
            if name.is_empty() {
                return Err(at("chain declaration without a name"));
            }
            table.chains.push(name.to_string());
        } else if line.starts_with("-A ") {
            let mut words = split_words(line).map_err(|e| at(&e))?.into_iter().skip(1);
            let Some(chain) = words.next() else {
                return Err(at("-A without a chain"));
            };
            table.rules.push(SavedRule {
                chain,
                args: words.collect(),
            });
        } else {
            return Err(at("not a chain declaration, rule or COMMIT"));
        }
    }
    if current.is_some() {
        return Err("input ends inside a table (no COMMIT)".to_string());
    }
    Ok(saved)
}

/// The built-in chain of `table` that jumps to trellis's chain there (`POSTROUTING` in nat,
/// `FORWARD` in filter).
pub(crate) fn hook_of(table: &str) -> Option<&'static str> {
    JumpRule::all()
        .into_iter()
        .find(|j| j.table == table)
        .map(|j| j.chain)
}

/// Parses `iptables -t TABLE -S CHAIN` output (one or more listings of that table, appended):
/// `-P CHAIN POLICY` and `-N CHAIN` declare, `-A` lines are rules in the same syntax as
/// iptables-save's. `#` lines are iptables-nft's notes (e.g. legacy tables also present).
pub(crate) fn parse_listing(table: &str, text: &str) -> Result<Table, String> {
    let mut out = Table {
        name: table.to_string(),
        ..Table::default()
    };
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = |msg: &str| format!("line {}: {msg}: {raw:?}", n + 1);
        let mut words = split_words(line).map_err(|e| at(&e))?.into_iter();
        let (Some(op), Some(chain)) = (words.next(), words.next()) else {
            return Err(at("not a -P, -N or -A line"));
        };
        match op.as_str() {
            "-P" | "-N" => out.chains.push(chain),
            "-A" => out.rules.push(SavedRule {
                chain,
                args: words.collect(),
            }),
            _ => return Err(at("not a -P, -N or -A line")),
        }
    }
    Ok(out)
}

/// Whether `iptables -S CHAIN` failed because the chain is not there. legacy (and nft from
/// 1.8.11) say "No chain/target/match by that name"; iptables-nft 1.8.7 to 1.8.10 call a chain
/// that does not exist "incompatible" (the same words as for a chain holding nft-only
/// expressions, which an apply replaces anyway).
pub(crate) fn is_missing_chain(stderr: &str, chain: &str) -> bool {
    stderr.contains("No chain/target/match by that name")
        || (stderr.contains(&format!("chain `{chain}' in table"))
            && stderr.contains("is incompatible"))
}

/// The lines of an `iptables-save` dump that can matter to trellis: table headers, COMMITs,
/// the declarations of its chains and their hooks, rules in those chains, and any rule that
/// names one of its chains (a reference that must go before the chain can be deleted). On a
/// node with kube-proxy this drops tens of thousands of lines before they are parsed.
pub(crate) fn owned_lines(save: &str) -> String {
    let ours = |name: &str| OURS.iter().any(|(_, c)| *c == name);
    let hook = |name: &str| JumpRule::all().iter().any(|j| j.chain == name);
    let mut out = String::new();
    for line in save.lines() {
        let t = line.trim_start();
        let keep = if let Some(decl) = t.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or_default();
            ours(name) || hook(name)
        } else if let Some(rule) = t.strip_prefix("-A ") {
            let chain = rule.split_whitespace().next().unwrap_or_default();
            ours(chain) || hook(chain) || OURS.iter().any(|(_, c)| rule.contains(c))
        } else {
            // Table headers, COMMIT, comments and anything parse() should see and refuse.
            true
        };
        if keep {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

impl Saved {
    /// Whether any of trellis's chains exists.
    pub(crate) fn has_own_chain(&self) -> bool {
        OURS.iter().any(|(t, c)| self.has_chain(t, c))
    }

    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables.iter().find(|t| t.name == name)
    }

    fn has_chain(&self, table: &str, chain: &str) -> bool {
        self.table(table)
            .is_some_and(|t| t.chains.iter().any(|c| c == chain))
    }

    fn rules_in<'a>(&'a self, table: &str, chain: &'a str) -> impl Iterator<Item = &'a SavedRule> {
        self.table(table)
            .into_iter()
            .flat_map(|t| t.rules.iter())
            .filter(move |r| r.chain == chain)
    }

    fn jump_count(&self, j: &JumpRule) -> usize {
        self.rules_in(j.table, j.chain)
            .filter(|r| r.args == j.spec)
            .count()
    }

    /// Rules outside trellis's chains that jump or go to `target` (ours, or anyone's jump
    /// to our chain, which would keep the chain from being deleted).
    fn references<'a>(
        &'a self,
        table: &str,
        target: &'a str,
    ) -> impl Iterator<Item = &'a SavedRule> {
        self.table(table)
            .into_iter()
            .flat_map(|t| t.rules.iter())
            .filter(move |r| {
                r.chain != target
                    && r.args
                        .windows(2)
                        .any(|w| (w[0] == "-j" || w[0] == "-g") && w[1] == target)
            })
    }
}

fn jump_line(j: &JumpRule) -> SavedRule {
    SavedRule {
        chain: j.chain.to_string(),
        args: j.spec.clone(),
    }
}

fn delete_line(r: &SavedRule) -> String {
    let mut s = r.to_string();
    s.replace_range(..2, "-D");
    s
}

/// Restore input that installs `desired` (the rule set's [`RuleSet::iptables_restore`] text)
/// and leaves exactly one copy of each wanted jump and none of the others, given the kernel
/// state read just before. A jump already there keeps its place; a missing one is appended,
/// which is where flannel puts it, so a node taken over from flannel does not change.
///
/// [`RuleSet::iptables_restore`]: crate::firewall::rules::RuleSet::iptables_restore
pub(crate) fn apply_script(desired: &str, wanted: &[JumpRule], kernel: &Saved) -> String {
    let mut out = String::new();
    let mut table = "";
    for line in desired.lines() {
        if let Some(name) = line.strip_prefix('*') {
            table = name;
        }
        if line == "COMMIT" {
            for j in JumpRule::all().iter().filter(|j| j.table == table) {
                let have = kernel.jump_count(j);
                let want = usize::from(wanted.contains(j));
                let rule = jump_line(j);
                // -D removes the first match, so surplus copies go from the front.
                for _ in want..have {
                    out.push_str(&delete_line(&rule));
                    out.push('\n');
                }
                if have == 0 && want == 1 {
                    out.push_str(&rule.to_string());
                    out.push('\n');
                }
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Restore input that removes trellis's chains and every rule jumping to them, or `None`
/// when there is nothing of trellis's in `kernel`.
pub(crate) fn cleanup_script(kernel: &Saved) -> Option<String> {
    let mut out = String::new();
    for (table, chain) in OURS {
        let refs: Vec<&SavedRule> = kernel.references(table, chain).collect();
        let exists = kernel.has_chain(table, chain);
        if refs.is_empty() && !exists {
            continue;
        }
        out.push_str(&format!("*{table}\n"));
        for r in refs {
            out.push_str(&delete_line(r));
            out.push('\n');
        }
        if exists {
            // Redeclaring flushes the chain: -X only deletes an empty one.
            out.push_str(&format!(":{chain} - [0:0]\n-X {chain}\n"));
        }
        out.push_str("COMMIT\n");
    }
    (!out.is_empty()).then_some(out)
}

/// Compares one family's kernel state with what is wanted: `desired` is the parsed
/// [`apply_script`] input and the wanted jumps, or `None` when the family has no rules
/// (then nothing of trellis's may be there). `tool` names the family in the report.
pub(crate) fn check(
    tool: &str,
    desired: Option<(&Saved, &[JumpRule])>,
    kernel: &Saved,
    drift: &mut Drift,
) {
    for (table, chain) in OURS {
        let place = format!("{tool} {table} {chain}");
        let have: Vec<&SavedRule> = kernel.rules_in(table, chain).collect();
        let exists = kernel.has_chain(table, chain);
        match desired {
            None if exists => drift.push(
                &place,
                DriftKind::Unexpected(format!("chain {chain} with {} rules", have.len())),
            ),
            None => {}
            Some((want, _)) => {
                let want: Vec<&SavedRule> = want.rules_in(table, chain).collect();
                if !exists && !want.is_empty() {
                    drift.push(
                        &place,
                        DriftKind::Missing(format!("chain {chain} with {} rules", want.len())),
                    );
                } else {
                    drift.compare(&place, &want, &have);
                }
            }
        }
    }
    for j in JumpRule::all() {
        let place = format!("{tool} {} {}", j.table, j.chain);
        let have = kernel.jump_count(&j);
        let want = desired.is_some_and(|(_, jumps)| jumps.contains(&j));
        let rule = jump_line(&j).to_string();
        match (want, have) {
            (true, 0) => drift.push(&place, DriftKind::Missing(rule)),
            (true, 1) | (false, 0) => {}
            (true, count) => drift.push(&place, DriftKind::Duplicate { what: rule, count }),
            (false, _) => drift.push(&place, DriftKind::Unexpected(rule)),
        }
    }
}

/// trellis's chains and the rules that jump to them, in iptables-save syntax.
pub(crate) fn installed_lines(kernel: &Saved) -> Vec<String> {
    let mut out = Vec::new();
    for (table, chain) in OURS {
        if !kernel.has_chain(table, chain) && kernel.references(table, chain).next().is_none() {
            continue;
        }
        out.push(format!("*{table}"));
        out.extend(kernel.references(table, chain).map(|r| r.to_string()));
        if kernel.has_chain(table, chain) {
            out.push(format!(":{chain}"));
        }
        out.extend(kernel.rules_in(table, chain).map(|r| r.to_string()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::rules::{FamilyNets, RuleSet};
    use crate::net::Family;

    /// What `check` finds in `kernel` against `desired` and its `jumps`.
    fn drift_of(desired: &str, jumps: &[JumpRule], kernel: &Saved) -> Drift {
        let mut drift = Drift::default();
        check(
            "iptables",
            Some((&parse(desired).unwrap(), jumps)),
            kernel,
            &mut drift,
        );
        drift
    }

    fn rules() -> RuleSet {
        let n = FamilyNets {
            network: "10.244.0.0/16".parse().unwrap(),
            subnet: "10.244.1.0/24".parse().unwrap(),
        };
        RuleSet::build(Some(n), None, true, true)
    }

    const EMPTY_KERNEL: &str = "\
# Generated by iptables-nft-save v1.8.9 (nf_tables)
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
COMMIT
*filter
:FORWARD DROP [0:0]
-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD
COMMIT
";

    /// The kernel state after the restore input ran: built by applying it textually.
    fn kernel_after(script: &str, before: &str) -> Saved {
        let mut k = parse(before).unwrap();
        let s = parse(&script.replace("\n-D ", "\n#-D ")).unwrap();
        for t in s.tables {
            let kt = match k.tables.iter_mut().find(|x| x.name == t.name) {
                Some(kt) => kt,
                None => {
                    k.tables.push(Table {
                        name: t.name.clone(),
                        ..Table::default()
                    });
                    k.tables.last_mut().unwrap()
                }
            };
            for c in &t.chains {
                kt.rules.retain(|r| &r.chain != c);
                if !kt.chains.contains(c) {
                    kt.chains.push(c.clone());
                }
            }
            kt.rules.extend(t.rules);
        }
        k
    }

    #[test]
    fn words_split_and_quote_round_trip() {
        let w = split_words(r#"-A X -m comment --comment "flanneld masq" -j A"#).unwrap();
        assert_eq!(
            w,
            [
                "-A",
                "X",
                "-m",
                "comment",
                "--comment",
                "flanneld masq",
                "-j",
                "A"
            ]
        );
        assert_eq!(
            split_words(r#"a "b \"c\" d""#).unwrap(),
            ["a", r#"b "c" d"#]
        );
        assert_eq!(split_words(r#"--comment """#).unwrap(), ["--comment", ""]);
        assert!(split_words(r#"a "b"#).is_err());
        for w in ["plain", "two words", r#"q"uote"#, "", r"back\slash"] {
            assert_eq!(split_words(&quote(w)).unwrap(), [w]);
        }
    }

    #[test]
    fn parse_reads_tables_chains_and_rules() {
        let k = parse(EMPTY_KERNEL).unwrap();
        let nat = k.table("nat").unwrap();
        assert_eq!(nat.chains, ["PREROUTING", "POSTROUTING"]);
        assert_eq!(nat.rules[0].chain, "POSTROUTING");
        assert_eq!(nat.rules[0].args[..3], ["-s", "172.17.0.0/16", "!"]);
        assert_eq!(
            k.table("filter").unwrap().rules[0].to_string(),
            "-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD"
        );
        assert!(parse("*nat\n-A X\n").is_err());
        assert!(parse("-A X -j Y\n").is_err());
        assert!(parse("*nat\n-Z\nCOMMIT\n").is_err());
    }

    /// A node's nat table with kube-proxy's chains around trellis's, as iptables-save prints it.
    const BUSY_KERNEL: &str = "\
# Generated by iptables-nft-save v1.8.9 (nf_tables)
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:FLANNEL-POSTRTG - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-AAAA - [0:0]
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG
-A FLANNEL-POSTRTG -m comment --comment \"flanneld masq\" -j RETURN
-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -j KUBE-SVC-AAAA
-A KUBE-SVC-AAAA -j FLANNEL-POSTRTG
COMMIT
";

    #[test]
    fn owned_lines_keep_what_check_and_cleanup_read() {
        let kept = owned_lines(BUSY_KERNEL);
        assert!(!kept.contains("KUBE-SERVICES"), "{kept}");
        assert!(!kept.contains(":KUBE-SVC-AAAA"), "{kept}");
        // A stranger's jump into our chain stays: cleanup must delete it before -X.
        assert!(
            kept.contains("-A KUBE-SVC-AAAA -j FLANNEL-POSTRTG"),
            "{kept}"
        );
        let (all, ours) = (parse(BUSY_KERNEL).unwrap(), parse(&kept).unwrap());
        assert_eq!(cleanup_script(&all), cleanup_script(&ours));
        assert_eq!(installed_lines(&all), installed_lines(&ours));
        assert!(ours.has_own_chain());
        assert!(!parse(EMPTY_KERNEL).unwrap().has_own_chain());
    }

    #[test]
    fn listings_parse_like_the_same_chains_in_a_save() {
        // `iptables -t nat -S POSTROUTING` then `-S FLANNEL-POSTRTG`, as the driver joins them.
        let listing = "\
-P POSTROUTING ACCEPT
-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG
# Warning: iptables-legacy tables present, use iptables-legacy to see them
-N FLANNEL-POSTRTG
-A FLANNEL-POSTRTG -m comment --comment \"flanneld masq\" -j RETURN
";
        let table = parse_listing("nat", listing).unwrap();
        assert_eq!(table.chains, ["POSTROUTING", "FLANNEL-POSTRTG"]);
        let saved = parse(BUSY_KERNEL).unwrap();
        let from_save = saved.table("nat").unwrap();
        let keep = |r: &&SavedRule| r.chain == "POSTROUTING" || r.chain == MASQ_CHAIN;
        assert_eq!(
            table.rules.iter().collect::<Vec<_>>(),
            from_save.rules.iter().filter(keep).collect::<Vec<_>>()
        );
        assert!(parse_listing("nat", "-X FLANNEL-POSTRTG\n").is_err());
        assert!(parse_listing("nat", "-A\n").is_err());
        assert_eq!(hook_of("nat"), Some("POSTROUTING"));
        assert_eq!(hook_of("filter"), Some("FORWARD"));
        assert_eq!(hook_of("mangle"), None);
    }

    #[test]
    fn a_missing_chain_is_told_from_other_failures() {
        // What each flavour prints for `-S FLANNEL-POSTRTG` when the chain is not there.
        assert!(is_missing_chain(
            "iptables: No chain/target/match by that name.",
            MASQ_CHAIN
        ));
        assert!(is_missing_chain(
            "iptables v1.8.9 (nf_tables): chain `FLANNEL-POSTRTG' in table `nat' is incompatible, use 'nft' tool.",
            MASQ_CHAIN
        ));
        // Another chain's trouble, a whole incompatible table or the lock are real errors.
        assert!(!is_missing_chain(
            "iptables v1.8.9 (nf_tables): chain `POSTROUTING' in table `nat' is incompatible, use 'nft' tool.",
            MASQ_CHAIN
        ));
        assert!(!is_missing_chain(
            "iptables v1.8.9 (nf_tables): table `nat' is incompatible, use 'nft' tool.",
            MASQ_CHAIN
        ));
        assert!(!is_missing_chain(
            "Another app is currently holding the xtables lock. Stopped waiting after 10s.",
            MASQ_CHAIN
        ));
    }

    #[test]
    fn first_apply_appends_jumps_and_then_everything_is_in_sync() {
        let rs = rules();
        let desired = rs.iptables_restore(Family::V4, true);
        let jumps = rs.iptables_jumps(Family::V4);
        let before = parse(EMPTY_KERNEL).unwrap();
        let drift = drift_of(&desired, &jumps, &before);
        assert_eq!(drift.items.len(), 2 + 2, "{drift}");

        let script = apply_script(&desired, &jumps, &before);
        assert!(script.contains(
            "-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\nCOMMIT\n*filter\n"
        ), "{script}");
        assert!(
            script.ends_with(
                "-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD\nCOMMIT\n"
            ),
            "{script}"
        );
        assert!(!script.contains("-D "));

        let after = kernel_after(&script, EMPTY_KERNEL);
        let drift = drift_of(&desired, &jumps, &after);
        assert!(drift.is_clean(), "{drift}");
        // A second apply only refills the chains.
        let again = apply_script(&desired, &jumps, &after);
        assert!(!again.contains("POSTROUTING"), "{again}");
        assert!(!again.contains("-A FORWARD"), "{again}");
    }

    #[test]
    fn duplicate_jumps_are_reported_and_reduced_to_one() {
        let rs = rules();
        let desired = rs.iptables_restore(Family::V4, true);
        let jumps = rs.iptables_jumps(Family::V4);
        let jump = "-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\n";
        let kernel_text = EMPTY_KERNEL.replacen("COMMIT", &format!("{jump}{jump}{jump}COMMIT"), 1);
        let kernel = kernel_after(&desired, &kernel_text);
        let drift = drift_of(&desired, &jumps, &kernel);
        assert!(
            drift
                .items
                .iter()
                .any(|i| matches!(i.kind, DriftKind::Duplicate { count: 3, .. })),
            "{drift}"
        );
        let script = apply_script(&desired, &jumps, &kernel);
        assert_eq!(
            script.matches("-D POSTROUTING -m comment").count(),
            2,
            "{script}"
        );
        assert!(!script.contains("-A POSTROUTING"));
    }

    #[test]
    fn edited_chain_is_drift() {
        let rs = rules();
        let desired = rs.iptables_restore(Family::V4, true);
        let jumps = rs.iptables_jumps(Family::V4);
        let good = apply_script(&desired, &jumps, &parse(EMPTY_KERNEL).unwrap());
        let mut kernel = kernel_after(&good, EMPTY_KERNEL);
        let nat = kernel.tables.iter_mut().find(|t| t.name == "nat").unwrap();
        nat.rules
            .retain(|r| !(r.chain == MASQ_CHAIN && r.args.contains(&"MASQUERADE".to_string())));
        let drift = drift_of(&desired, &jumps, &kernel);
        assert_eq!(drift.items.len(), 2, "{drift}");
        assert!(drift
            .items
            .iter()
            .all(|i| matches!(i.kind, DriftKind::Missing(_))
                && i.place == "iptables nat FLANNEL-POSTRTG"));
    }

    #[test]
    fn disabling_masquerade_removes_its_jump() {
        let full = rules();
        let before = kernel_after(
            &apply_script(
                &full.iptables_restore(Family::V4, true),
                &full.iptables_jumps(Family::V4),
                &parse(EMPTY_KERNEL).unwrap(),
            ),
            EMPTY_KERNEL,
        );
        let n = FamilyNets {
            network: "10.244.0.0/16".parse().unwrap(),
            subnet: "10.244.1.0/24".parse().unwrap(),
        };
        let fwd_only = RuleSet::build(Some(n), None, false, true);
        let desired = fwd_only.iptables_restore(Family::V4, true);
        let jumps = fwd_only.iptables_jumps(Family::V4);
        let drift = drift_of(&desired, &jumps, &before);
        assert!(
            drift.items.iter().any(
                |i| matches!(&i.kind, DriftKind::Unexpected(r) if r.contains("-j FLANNEL-POSTRTG"))
            ),
            "{drift}"
        );
        let script = apply_script(&desired, &jumps, &before);
        assert!(script.contains(
            "-D POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\n"
        ));
    }

    #[test]
    fn cleanup_removes_chains_and_every_reference_only() {
        assert_eq!(cleanup_script(&parse(EMPTY_KERNEL).unwrap()), None);
        let rs = rules();
        let mut kernel = kernel_after(
            &apply_script(
                &rs.iptables_restore(Family::V4, true),
                &rs.iptables_jumps(Family::V4),
                &parse(EMPTY_KERNEL).unwrap(),
            ),
            EMPTY_KERNEL,
        );
        // Someone else's jump into our chain must go too, or -X would fail.
        kernel.tables[1].rules.push(SavedRule {
            chain: "FORWARD".into(),
            args: ["-i", "eth9", "-j", "FLANNEL-FWD"]
                .map(String::from)
                .to_vec(),
        });
        let script = cleanup_script(&kernel).unwrap();
        assert_eq!(
            script,
            "*nat\n-D POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\n:FLANNEL-POSTRTG - [0:0]\n-X FLANNEL-POSTRTG\nCOMMIT\n\
             *filter\n-D FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD\n-D FORWARD -i eth9 -j FLANNEL-FWD\n:FLANNEL-FWD - [0:0]\n-X FLANNEL-FWD\nCOMMIT\n"
        );
        let mut drift = Drift::default();
        check("ip6tables", None, &kernel, &mut drift);
        assert_eq!(drift.items.len(), 4, "{drift}");
        let lines = installed_lines(&kernel);
        assert_eq!(lines[0], "*nat");
        assert!(lines.contains(&":FLANNEL-FWD".to_string()));
        assert!(lines
            .iter()
            .any(|l| l.contains("-j MASQUERADE --random-fully")));
        assert!(!lines.iter().any(|l| l.contains("docker0")));
    }
}

//! The masquerade and forward rules as one model, rendered for iptables-restore or for nft.
//!
//! The rules are flannel's (`pkg/trafficmngr/iptables`), so a node taken over from flannel
//! keeps byte-identical iptables rules, comments included:
//!
//! nat `FLANNEL-POSTRTG`, jumped to from `POSTROUTING`, in order:
//! 1. packets kube-proxy marked for masquerading (`0x4000/0x4000`) return: kube-proxy's own
//!    chain masquerades them, doing it twice breaks some kernels;
//! 2. this node's pods to the pod network return (pod-to-pod is never NATed);
//! 3. the pod network to this node's pods returns;
//! 4. from outside the pod network to this node's pods returns (e.g. NodePort traffic that
//!    another node forwarded, whose source must be kept);
//! 5. the pod network to anywhere but multicast is masqueraded (pods reaching the world);
//! 6. from outside the pod network to the pod network is masqueraded (the host talking to
//!    remote pods, so the replies come back through the tunnel).
//!
//! filter `FLANNEL-FWD`, jumped to from `FORWARD`: accept from and to the pod network.
//!
//! flannel's nftables rules differ from its iptables ones in rule 4 (`saddr != podCIDR`,
//! which disables rule 6); trellis renders the iptables semantics in both.

use std::fmt;
use std::fmt::Write as _;

use ipnetwork::IpNetwork;

use crate::net::Family;

pub const MASQ_CHAIN: &str = "FLANNEL-POSTRTG";
pub const FORWARD_CHAIN: &str = "FLANNEL-FWD";
/// kube-proxy's masquerade mark (`--masquerade-bit=14`).
pub const KUBE_PROXY_MARK: u32 = 0x4000;
/// trellis's own nftables table (family `inet`: IPv4 and IPv6 in one table).
pub const NFT_TABLE: &str = "trellis";
/// The tables flannel's nftables mode makes (family, name), removed on takeover.
pub const FLANNEL_NFT_TABLES: [(&str, &str); 2] = [("ip", "flannel-ipv4"), ("ip6", "flannel-ipv6")];
pub const NFT_POSTROUTING_CHAIN: &str = "postrouting";
pub const NFT_FORWARD_CHAIN: &str = "forward";

const MASQ_COMMENT: &str = "flanneld masq";
const FORWARD_COMMENT: &str = "flanneld forward";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// nat POSTROUTING.
    Postrouting,
    /// filter FORWARD.
    Forward,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrMatch {
    pub net: IpNetwork,
    pub negate: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Return,
    Masquerade,
    Accept,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub hook: Hook,
    /// Match packets with all these mark bits set.
    pub mark: Option<u32>,
    pub src: Option<AddrMatch>,
    pub dst: Option<AddrMatch>,
    pub verdict: Verdict,
}

/// The pod network and this node's podCIDR of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FamilyNets {
    pub network: IpNetwork,
    pub subnet: IpNetwork,
}

/// The rules of both families, in evaluation order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleSet {
    pub v4: Vec<Rule>,
    pub v6: Vec<Rule>,
}

fn is(net: IpNetwork) -> Option<AddrMatch> {
    Some(AddrMatch { net, negate: false })
}

fn not(net: IpNetwork) -> Option<AddrMatch> {
    Some(AddrMatch { net, negate: true })
}

fn family_rules(n: FamilyNets, masquerade: bool, forward: bool) -> Vec<Rule> {
    let multicast: IpNetwork = match n.network {
        IpNetwork::V4(_) => "224.0.0.0/4",
        IpNetwork::V6(_) => "ff00::/8",
    }
    .parse()
    .expect("multicast ranges are valid CIDR literals");
    let masq = |mark, src, dst, verdict| Rule {
        hook: Hook::Postrouting,
        mark,
        src,
        dst,
        verdict,
    };
    let mut out = Vec::new();
    if masquerade {
        out.extend([
            masq(Some(KUBE_PROXY_MARK), None, None, Verdict::Return),
            masq(None, is(n.subnet), is(n.network), Verdict::Return),
            masq(None, is(n.network), is(n.subnet), Verdict::Return),
            masq(None, not(n.network), is(n.subnet), Verdict::Return),
            masq(None, is(n.network), not(multicast), Verdict::Masquerade),
            masq(None, not(n.network), is(n.network), Verdict::Masquerade),
        ]);
    }
    if forward {
        let fwd = |src, dst| Rule {
            hook: Hook::Forward,
            mark: None,
            src,
            dst,
            verdict: Verdict::Accept,
        };
        out.extend([fwd(is(n.network), None), fwd(None, is(n.network))]);
    }
    out
}

/// An `iptables` rule in a built-in chain that jumps to one of trellis's chains. These cannot
/// go through `iptables-restore --noflush` as they are (it would append a duplicate each
/// time), so the driver counts them in the saved state and adds or deletes only the
/// difference (`iptables::state::apply_script`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JumpRule {
    pub table: &'static str,
    pub chain: &'static str,
    /// The rule spec after the chain name.
    pub spec: Vec<String>,
}

impl JumpRule {
    /// Every jump trellis may have installed (for cleanup, and to remove a jump that is no
    /// longer desired, e.g. after masquerading was disabled).
    pub fn all() -> [JumpRule; 2] {
        [Self::masq(), Self::forward()]
    }

    fn masq() -> JumpRule {
        JumpRule {
            table: "nat",
            chain: "POSTROUTING",
            spec: ["-m", "comment", "--comment", MASQ_COMMENT, "-j", MASQ_CHAIN]
                .map(String::from)
                .to_vec(),
        }
    }

    fn forward() -> JumpRule {
        JumpRule {
            table: "filter",
            chain: "FORWARD",
            spec: [
                "-m",
                "comment",
                "--comment",
                FORWARD_COMMENT,
                "-j",
                FORWARD_CHAIN,
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

impl RuleSet {
    /// flannel's rules for the enabled families. `masquerade` is `--ip-masq`; `forward` is
    /// flannel's `--iptables-forward-rules` (default true).
    pub fn build(
        v4: Option<FamilyNets>,
        v6: Option<FamilyNets>,
        masquerade: bool,
        forward: bool,
    ) -> RuleSet {
        RuleSet {
            v4: v4
                .map(|n| family_rules(n, masquerade, forward))
                .unwrap_or_default(),
            v6: v6
                .map(|n| family_rules(n, masquerade, forward))
                .unwrap_or_default(),
        }
    }

    pub fn family(&self, family: Family) -> &[Rule] {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Input for `iptables-restore --noflush` (or `ip6tables-restore`). Declaring a user chain
    /// (`:FLANNEL-POSTRTG - [0:0]`) creates it or flushes it, so the chain's content is
    /// replaced atomically per table and nothing else in the table is touched. Both chains are
    /// always declared, so a disabled part is emptied. Jumps to them: [`RuleSet::iptables_jumps`].
    ///
    /// `random_fully`: add `--random-fully` to MASQUERADE (the driver checks that this
    /// iptables supports it, as flannel does).
    pub fn iptables_restore(&self, family: Family, random_fully: bool) -> String {
        let rules = self.family(family);
        let mut out = String::new();
        for (table, chain, hook) in [
            ("nat", MASQ_CHAIN, Hook::Postrouting),
            ("filter", FORWARD_CHAIN, Hook::Forward),
        ] {
            let _ = writeln!(out, "*{table}");
            let _ = writeln!(out, ":{chain} - [0:0]");
            for r in rules.iter().filter(|r| r.hook == hook) {
                let _ = writeln!(out, "-A {chain} {}", iptables_spec(r, random_fully));
            }
            out.push_str("COMMIT\n");
        }
        out
    }

    /// The jumps that must exist for this family: one per hook that has rules.
    pub fn iptables_jumps(&self, family: Family) -> Vec<JumpRule> {
        let rules = self.family(family);
        let mut out = Vec::new();
        if rules.iter().any(|r| r.hook == Hook::Postrouting) {
            out.push(JumpRule::masq());
        }
        if rules.iter().any(|r| r.hook == Hook::Forward) {
            out.push(JumpRule::forward());
        }
        out
    }

    /// An `nft -f` script that replaces trellis's whole table atomically: the table is created
    /// (so the delete cannot fail), deleted, and defined again in one transaction, so there is
    /// no instant without rules and no leftover from an older rule set.
    pub fn nft_script(&self, random_fully: bool) -> String {
        let mut out = nft_cleanup_script();
        let mut chains = String::new();
        for (name, hook, base) in [
            (
                NFT_POSTROUTING_CHAIN,
                Hook::Postrouting,
                "type nat hook postrouting priority srcnat; policy accept;",
            ),
            (
                NFT_FORWARD_CHAIN,
                Hook::Forward,
                "type filter hook forward priority filter; policy accept;",
            ),
        ] {
            let mut body = String::new();
            for (family, rules) in [(Family::V4, &self.v4), (Family::V6, &self.v6)] {
                for r in rules.iter().filter(|r| r.hook == hook) {
                    let _ = writeln!(body, "\t\t{}", nft_rule(r, family, random_fully));
                }
            }
            if !body.is_empty() {
                let _ = write!(chains, "\tchain {name} {{\n\t\t{base}\n{body}\t}}\n");
            }
        }
        if !chains.is_empty() {
            let _ = write!(out, "table inet {NFT_TABLE} {{\n{chains}}}\n");
        }
        out
    }
}

/// An `nft -f` script that removes trellis's table, whether or not it exists.
pub fn nft_cleanup_script() -> String {
    format!("add table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n")
}

fn iptables_spec(r: &Rule, random_fully: bool) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(m) = r.mark {
        parts.push(format!("-m mark --mark {m:#x}/{m:#x}"));
    }
    for (flag, m) in [("-s", r.src), ("-d", r.dst)] {
        if let Some(m) = m {
            let bang = if m.negate { "! " } else { "" };
            parts.push(format!("{bang}{flag} {}", m.net));
        }
    }
    parts.push(format!("-m comment --comment \"{}\"", comment(r.hook)));
    parts.push(match r.verdict {
        Verdict::Return => "-j RETURN".to_string(),
        Verdict::Accept => "-j ACCEPT".to_string(),
        Verdict::Masquerade if random_fully => "-j MASQUERADE --random-fully".to_string(),
        Verdict::Masquerade => "-j MASQUERADE".to_string(),
    });
    parts.join(" ")
}

fn nft_rule(r: &Rule, family: Family, random_fully: bool) -> String {
    let rule = NftRule::from_model(r, family, random_fully);
    format!("{rule} comment \"{}\"", comment(r.hook))
}

fn comment(hook: Hook) -> &'static str {
    match hook {
        Hook::Postrouting => MASQ_COMMENT,
        Hook::Forward => FORWARD_COMMENT,
    }
}

/// One rule of trellis's table as the kernel holds it: what [`nft_rule`] writes and the
/// nftables driver reads back from a listing. Comments are left out: they are labels for
/// people and do not change what a rule does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NftRule {
    pub family: Family,
    pub mark: Option<u32>,
    pub src: Option<AddrMatch>,
    pub dst: Option<AddrMatch>,
    pub verdict: Verdict,
    pub fully_random: bool,
}

impl NftRule {
    /// How the kernel should hold `r` in `family`'s half of the inet table.
    pub(crate) fn from_model(r: &Rule, family: Family, random_fully: bool) -> NftRule {
        NftRule {
            family,
            mark: r.mark,
            src: r.src,
            dst: r.dst,
            verdict: r.verdict,
            fully_random: random_fully && r.verdict == Verdict::Masquerade,
        }
    }
}

impl fmt::Display for NftRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.family {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        };
        let mut parts: Vec<String> = Vec::new();
        if self.src.is_none() && self.dst.is_none() {
            // In an inet table a rule without an address match would apply to both families.
            let nfproto = match self.family {
                Family::V4 => "ipv4",
                Family::V6 => "ipv6",
            };
            parts.push(format!("meta nfproto {nfproto}"));
        }
        if let Some(m) = self.mark {
            parts.push(format!("meta mark & {m:#x} == {m:#x}"));
        }
        for (dir, m) in [("saddr", self.src), ("daddr", self.dst)] {
            if let Some(m) = m {
                let op = if m.negate { "!= " } else { "" };
                parts.push(format!("{proto} {dir} {op}{}", m.net));
            }
        }
        parts.push(
            match (self.verdict, self.fully_random) {
                (Verdict::Return, _) => "return",
                (Verdict::Accept, _) => "accept",
                (Verdict::Masquerade, true) => "masquerade fully-random",
                (Verdict::Masquerade, false) => "masquerade",
            }
            .to_string(),
        );
        f.write_str(&parts.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(network: &str, subnet: &str) -> FamilyNets {
        FamilyNets {
            network: network.parse().unwrap(),
            subnet: subnet.parse().unwrap(),
        }
    }

    fn v4() -> FamilyNets {
        nets("10.244.0.0/16", "10.244.1.0/24")
    }

    fn v6() -> FamilyNets {
        nets("fd00:10:244::/56", "fd00:10:244:1::/64")
    }

    #[test]
    fn iptables_rules_are_flannels() {
        let rs = RuleSet::build(Some(v4()), None, true, true);
        let want = "\
*nat
:FLANNEL-POSTRTG - [0:0]
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment \"flanneld masq\" -j RETURN
-A FLANNEL-POSTRTG -s 10.244.1.0/24 -d 10.244.0.0/16 -m comment --comment \"flanneld masq\" -j RETURN
-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment \"flanneld masq\" -j RETURN
-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment \"flanneld masq\" -j RETURN
-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully
-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully
COMMIT
*filter
:FLANNEL-FWD - [0:0]
-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT
-A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT
COMMIT
";
        assert_eq!(rs.iptables_restore(Family::V4, true), want);
        let plain = rs.iptables_restore(Family::V4, false);
        assert!(!plain.contains("random-fully"));
        assert_eq!(plain.matches("-j MASQUERADE\n").count(), 2);
        // No IPv6 rules: both chains declared (so flushed) and empty.
        assert_eq!(
            rs.iptables_restore(Family::V6, true),
            "*nat\n:FLANNEL-POSTRTG - [0:0]\nCOMMIT\n*filter\n:FLANNEL-FWD - [0:0]\nCOMMIT\n"
        );
    }

    #[test]
    fn ipv6_rules_exclude_ipv6_multicast() {
        let rs = RuleSet::build(Some(v4()), Some(v6()), true, true);
        let out = rs.iptables_restore(Family::V6, true);
        assert!(out.contains("-A FLANNEL-POSTRTG -s fd00:10:244::/56 ! -d ff00::/8 -m comment"));
        assert!(out.contains("-A FLANNEL-FWD -d fd00:10:244::/56 -m comment"));
        assert!(!out.contains("10.244."));
    }

    #[test]
    fn jumps_follow_enabled_parts() {
        let all = RuleSet::build(Some(v4()), None, true, true);
        assert_eq!(all.iptables_jumps(Family::V4), JumpRule::all().to_vec());
        assert!(all.iptables_jumps(Family::V6).is_empty());
        let no_masq = RuleSet::build(Some(v4()), None, false, true);
        let j = no_masq.iptables_jumps(Family::V4);
        assert_eq!(j.len(), 1);
        assert_eq!(
            (j[0].table, j[0].chain, j[0].spec.join(" ")),
            (
                "filter",
                "FORWARD",
                "-m comment --comment flanneld forward -j FLANNEL-FWD".to_string()
            )
        );
        assert_eq!(
            JumpRule::all()[0].spec,
            [
                "-m",
                "comment",
                "--comment",
                "flanneld masq",
                "-j",
                "FLANNEL-POSTRTG"
            ]
        );
        let none = RuleSet::build(Some(v4()), None, false, false);
        assert!(none.is_empty());
        assert!(none
            .iptables_restore(Family::V4, true)
            .contains(":FLANNEL-POSTRTG - [0:0]\nCOMMIT"));
    }

    #[test]
    fn nft_script_replaces_the_table_atomically() {
        let rs = RuleSet::build(Some(v4()), Some(v6()), true, true);
        let s = rs.nft_script(true);
        let want_head = "add table inet trellis\ndelete table inet trellis\ntable inet trellis {\n\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n";
        assert!(s.starts_with(want_head), "{s}");
        for line in [
            "\t\tmeta nfproto ipv4 meta mark & 0x4000 == 0x4000 return comment \"flanneld masq\"\n",
            "\t\tip saddr 10.244.1.0/24 ip daddr 10.244.0.0/16 return comment \"flanneld masq\"\n",
            "\t\tip saddr != 10.244.0.0/16 ip daddr 10.244.1.0/24 return comment \"flanneld masq\"\n",
            "\t\tip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random comment \"flanneld masq\"\n",
            "\t\tip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random comment \"flanneld masq\"\n",
            "\t\tmeta nfproto ipv6 meta mark & 0x4000 == 0x4000 return comment \"flanneld masq\"\n",
            "\t\tip6 saddr fd00:10:244::/56 ip6 daddr != ff00::/8 masquerade fully-random comment \"flanneld masq\"\n",
            "\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n",
            "\t\tip saddr 10.244.0.0/16 accept comment \"flanneld forward\"\n",
            "\t\tip6 daddr fd00:10:244::/56 accept comment \"flanneld forward\"\n",
        ] {
            assert!(s.contains(line), "missing {line:?} in\n{s}");
        }
        assert!(s.ends_with("\t}\n}\n"));
        // Order inside the chain is the evaluation order: the mark check comes first.
        let mark = s.find("meta mark").unwrap();
        let masq = s.find("masquerade").unwrap();
        assert!(mark < masq);
        assert!(!rs.nft_script(false).contains("fully-random"));
    }

    #[test]
    fn empty_rule_set_renders_cleanup_only() {
        let none = RuleSet::build(Some(v4()), None, false, false);
        assert_eq!(none.nft_script(true), nft_cleanup_script());
        let fwd_only = RuleSet::build(Some(v4()), None, false, true);
        let s = fwd_only.nft_script(true);
        assert!(!s.contains("postrouting"));
        assert!(s.contains("chain forward"));
    }
}

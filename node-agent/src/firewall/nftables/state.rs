//! Reading trellis's nftables table from `nft -j list table inet trellis` and comparing it with
//! the rule set. Pure: the driver in [`super`] runs nft.
//!
//! The comparison is by meaning, not by text: nft lists rules in its own normal form (e.g.
//! `meta mark & 0x00004000`), which differs between versions. Each listed rule is read back
//! into the rule model; a rule with anything trellis never writes (a counter, another match)
//! stays as its JSON and so never equals a wanted rule.

use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde_json::Value;

use crate::firewall::drift::{Drift, DriftKind};
use crate::firewall::rules::{
    AddrMatch, Hook, NftRule, RuleSet, Verdict, NFT_FORWARD_CHAIN, NFT_POSTROUTING_CHAIN, NFT_TABLE,
};
use crate::net::Family;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    Known(NftRule),
    /// A rule that is not of trellis's shape, as nft's JSON.
    Unknown(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BaseChain {
    pub kind: String,
    pub hook: String,
    pub prio: i64,
    pub policy: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Chain {
    pub name: String,
    pub base: Option<BaseChain>,
    pub rules: Vec<Entry>,
}

/// trellis's table as listed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TableState {
    pub chains: Vec<Chain>,
    /// Objects other than chains and rules (sets, maps, …), described.
    pub others: Vec<String>,
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Entry::Known(r) => r.fmt(f),
            Entry::Unknown(json) => write!(f, "(not trellis's) {json}"),
        }
    }
}

impl fmt::Display for BaseChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "type {} hook {} priority {} policy {}",
            self.kind, self.hook, self.prio, self.policy
        )
    }
}

/// The chains [`RuleSet::nft_script`] creates, with their rules in evaluation order.
pub(crate) fn desired(rules: &RuleSet, random_fully: bool) -> Vec<Chain> {
    let mut out = Vec::new();
    for (name, hook, kind, hook_name, prio) in [
        // srcnat and filter are nft's names for priorities 100 and 0.
        (
            NFT_POSTROUTING_CHAIN,
            Hook::Postrouting,
            "nat",
            "postrouting",
            100,
        ),
        (NFT_FORWARD_CHAIN, Hook::Forward, "filter", "forward", 0),
    ] {
        let mut entries = Vec::new();
        for (family, list) in [(Family::V4, &rules.v4), (Family::V6, &rules.v6)] {
            for r in list.iter().filter(|r| r.hook == hook) {
                entries.push(Entry::Known(NftRule::from_model(r, family, random_fully)));
            }
        }
        if !entries.is_empty() {
            out.push(Chain {
                name: name.to_string(),
                base: Some(BaseChain {
                    kind: kind.to_string(),
                    hook: hook_name.to_string(),
                    prio,
                    policy: "accept".to_string(),
                }),
                rules: entries,
            });
        }
    }
    out
}

/// Whether `nft list table inet trellis` failed because the table does not exist: the
/// kernel's ENOENT, which nft prints as "No such file or directory" (with `LC_ALL=C`, which
/// [`crate::firewall::tool::Exec`] sets), followed in newer versions by a "did you mean" hint.
///
/// Asking `nft list tables` instead would not depend on the words, but nft (1.0.6 at least)
/// fetches the whole ruleset for it: with kube-proxy's 20,000 iptables-nft rules, 0.3 s and
/// 82 MiB, against the pod's 100Mi limit (docs/BENCH-AGENT.md, "Firewall check").
pub(crate) fn is_missing_table(stderr: &str) -> bool {
    stderr.contains("No such file or directory")
}

fn objects(v: &Value) -> Result<&Vec<Value>, String> {
    v.get("nftables")
        .and_then(Value::as_array)
        .ok_or_else(|| "no \"nftables\" array".to_string())
}

/// Parses `nft -j list table inet trellis` output.
pub(crate) fn parse_table(json: &str) -> Result<TableState, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("not JSON: {e}"))?;
    let mut table = TableState::default();
    for o in objects(&v)? {
        let Some((kind, body)) = o.as_object().and_then(|m| m.iter().next()) else {
            return Err(format!("unexpected element {o}"));
        };
        match kind.as_str() {
            "metainfo" | "table" => {}
            "chain" => {
                let name = str_field(body, "name")?;
                let base = match body.get("hook") {
                    None => None,
                    Some(_) => Some(BaseChain {
                        kind: str_field(body, "type")?,
                        hook: str_field(body, "hook")?,
                        prio: body
                            .get("prio")
                            .and_then(Value::as_i64)
                            .ok_or_else(|| format!("chain {name} without a numeric prio"))?,
                        policy: body
                            .get("policy")
                            .and_then(Value::as_str)
                            .unwrap_or("accept")
                            .to_string(),
                    }),
                };
                table.chains.push(Chain {
                    name,
                    base,
                    rules: Vec::new(),
                });
            }
            "rule" => {
                let chain = str_field(body, "chain")?;
                let exprs = body
                    .get("expr")
                    .and_then(Value::as_array)
                    .ok_or_else(|| format!("rule in {chain} without expr"))?;
                let entry = match parse_rule(exprs) {
                    Some(r) => Entry::Known(r),
                    None => Entry::Unknown(Value::Array(exprs.clone()).to_string()),
                };
                match table.chains.iter_mut().find(|c| c.name == chain) {
                    Some(c) => c.rules.push(entry),
                    None => return Err(format!("rule for unlisted chain {chain}")),
                }
            }
            other => {
                let name = body.get("name").and_then(Value::as_str).unwrap_or("?");
                table.others.push(format!("{other} {name}"));
            }
        }
    }
    Ok(table)
}

fn str_field(body: &Value, key: &str) -> Result<String, String> {
    body.get(key)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| format!("{body} has no string {key:?}"))
}

/// A rule's expressions read back into the model, or `None` if it is not of trellis's shape.
fn parse_rule(exprs: &[Value]) -> Option<NftRule> {
    let mut family: Option<Family> = None;
    let mut mark = None;
    let mut src = None;
    let mut dst = None;
    let mut verdict = None;
    let mut fully_random = false;
    let mut set_family = |f: Family| match family {
        Some(have) if have != f => None,
        _ => {
            family = Some(f);
            Some(())
        }
    };
    for e in exprs {
        if verdict.is_some() {
            return None;
        }
        let (key, body) = e.as_object()?.iter().next()?;
        match key.as_str() {
            "match" => {
                let op = body.get("op")?.as_str()?;
                let left = body.get("left")?;
                let right = body.get("right")?;
                if left.pointer("/meta/key").and_then(Value::as_str) == Some("nfproto") {
                    if op != "==" {
                        return None;
                    }
                    set_family(match right.as_str()? {
                        "ipv4" => Family::V4,
                        "ipv6" => Family::V6,
                        _ => return None,
                    })?;
                } else if let Some(and) = left.get("&").and_then(Value::as_array) {
                    let [what, mask] = and.as_slice() else {
                        return None;
                    };
                    if what.pointer("/meta/key").and_then(Value::as_str) != Some("mark")
                        || op != "=="
                        || mark.is_some()
                    {
                        return None;
                    }
                    let mask = number(mask)?;
                    if number(right)? != mask {
                        return None;
                    }
                    mark = Some(mask);
                } else if let Some(p) = left.get("payload") {
                    let f = match p.get("protocol")?.as_str()? {
                        "ip" => Family::V4,
                        "ip6" => Family::V6,
                        _ => return None,
                    };
                    set_family(f)?;
                    let negate = match op {
                        "==" => false,
                        "!=" => true,
                        _ => return None,
                    };
                    let net = network(right)?;
                    if matches!(net, IpNetwork::V4(_)) != (f == Family::V4) {
                        return None;
                    }
                    let slot = match p.get("field")?.as_str()? {
                        "saddr" => &mut src,
                        "daddr" => &mut dst,
                        _ => return None,
                    };
                    if slot.is_some() {
                        return None;
                    }
                    *slot = Some(AddrMatch { net, negate });
                } else {
                    return None;
                }
            }
            "return" => verdict = Some(Verdict::Return),
            "accept" => verdict = Some(Verdict::Accept),
            "masquerade" => {
                verdict = Some(Verdict::Masquerade);
                match body {
                    Value::Null => {}
                    Value::Object(m) => {
                        for (k, v) in m {
                            let flags: Vec<&str> = match v {
                                Value::String(s) => vec![s.as_str()],
                                Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                                _ => return None,
                            };
                            if k != "flags" || flags != ["fully-random"] {
                                return None;
                            }
                            fully_random = true;
                        }
                    }
                    _ => return None,
                }
            }
            _ => return None,
        }
    }
    Some(NftRule {
        family: family?,
        mark,
        src,
        dst,
        verdict: verdict?,
        fully_random,
    })
}

fn number(v: &Value) -> Option<u32> {
    match v {
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        Value::String(s) => match s.strip_prefix("0x") {
            Some(hex) => u32::from_str_radix(hex, 16).ok(),
            None => s.parse().ok(),
        },
        _ => None,
    }
}

fn network(v: &Value) -> Option<IpNetwork> {
    match v {
        // A full-length prefix is listed as a bare address.
        Value::String(s) => s.parse::<IpAddr>().ok().map(IpNetwork::from),
        Value::Object(_) => {
            let addr: IpAddr = v.pointer("/prefix/addr")?.as_str()?.parse().ok()?;
            let len = u8::try_from(v.pointer("/prefix/len")?.as_u64()?).ok()?;
            IpNetwork::new(addr, len).ok()
        }
        _ => None,
    }
}

/// Compares the listed table (`None`: no table) with the wanted chains.
pub(crate) fn check(want: &[Chain], have: Option<&TableState>, drift: &mut Drift) {
    let table_place = format!("nft inet {NFT_TABLE}");
    let Some(have) = have else {
        for c in want {
            drift.push(
                &table_place,
                DriftKind::Missing(format!("chain {} with {} rules", c.name, c.rules.len())),
            );
        }
        return;
    };
    if want.is_empty() {
        drift.push(
            &table_place,
            DriftKind::Unexpected(format!("table inet {NFT_TABLE}")),
        );
        return;
    }
    for w in want {
        let place = format!("nft inet {NFT_TABLE} {}", w.name);
        let Some(h) = have.chains.iter().find(|h| h.name == w.name) else {
            drift.push(
                &table_place,
                DriftKind::Missing(format!("chain {} with {} rules", w.name, w.rules.len())),
            );
            continue;
        };
        if h.base != w.base {
            let show = |b: &Option<BaseChain>| {
                b.as_ref()
                    .map_or("a regular chain".to_string(), |b| b.to_string())
            };
            drift.push(
                &place,
                DriftKind::Differs {
                    what: "the chain".to_string(),
                    want: show(&w.base),
                    have: show(&h.base),
                },
            );
        }
        drift.compare(&place, &w.rules, &h.rules);
    }
    for h in &have.chains {
        if !want.iter().any(|w| w.name == h.name) {
            drift.push(
                &table_place,
                DriftKind::Unexpected(format!("chain {}", h.name)),
            );
        }
    }
    for o in &have.others {
        drift.push(&table_place, DriftKind::Unexpected(o.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::rules::FamilyNets;

    fn rules() -> RuleSet {
        RuleSet::build(
            Some(FamilyNets {
                network: "10.244.0.0/16".parse().unwrap(),
                subnet: "10.244.1.0/24".parse().unwrap(),
            }),
            Some(FamilyNets {
                network: "fd00:10:244::/56".parse().unwrap(),
                subnet: "fd00:10:244:1::/64".parse().unwrap(),
            }),
            true,
            true,
        )
    }

    fn m(left: Value, op: &str, right: Value) -> Value {
        serde_json::json!({"match": {"op": op, "left": left, "right": right}})
    }

    fn payload(proto: &str, field: &str) -> Value {
        serde_json::json!({"payload": {"protocol": proto, "field": field}})
    }

    fn prefix(addr: &str, len: u8) -> Value {
        serde_json::json!({"prefix": {"addr": addr, "len": len}})
    }

    /// The JSON nft 1.0.6 lists for the rule set (recorded from `nft -j list table`).
    fn listed(random_fully: bool) -> String {
        let masq = if random_fully {
            serde_json::json!({"masquerade": {"flags": "fully-random"}})
        } else {
            serde_json::json!({"masquerade": null})
        };
        let ret = serde_json::json!({"return": null});
        let acc = serde_json::json!({"accept": null});
        let mut objs = vec![
            serde_json::json!({"metainfo": {"version": "1.0.6", "json_schema_version": 1}}),
            serde_json::json!({"table": {"family": "inet", "name": "trellis", "handle": 4}}),
            serde_json::json!({"chain": {"family": "inet", "table": "trellis", "name": "postrouting", "handle": 1, "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}),
            serde_json::json!({"chain": {"family": "inet", "table": "trellis", "name": "forward", "handle": 2, "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}}),
        ];
        let rule = |chain: &str, expr: Vec<Value>| serde_json::json!({"rule": {"family": "inet", "table": "trellis", "chain": chain, "handle": 9, "comment": "flanneld masq", "expr": expr}});
        for (p, nfp, net, sub, mc, mclen) in [
            (
                "ip",
                "ipv4",
                ("10.244.0.0", 16),
                ("10.244.1.0", 24),
                "224.0.0.0",
                4,
            ),
            (
                "ip6",
                "ipv6",
                ("fd00:10:244::", 56),
                ("fd00:10:244:1::", 64),
                "ff00::",
                8,
            ),
        ] {
            let mark = serde_json::json!({"&": [{"meta": {"key": "mark"}}, 16384]});
            objs.push(rule(
                "postrouting",
                vec![
                    m(
                        serde_json::json!({"meta": {"key": "nfproto"}}),
                        "==",
                        nfp.into(),
                    ),
                    m(mark, "==", 16384.into()),
                    ret.clone(),
                ],
            ));
            // saddr, daddr, verdict: the returns, then the masquerades, in the table's order.
            let addr = |field, op, (a, len): (&str, u8)| m(payload(p, field), op, prefix(a, len));
            for (saddr, daddr, verdict) in [
                (("==", sub), ("==", net), &ret),
                (("==", net), ("==", sub), &ret),
                (("!=", net), ("==", sub), &ret),
                (("==", net), ("!=", (mc, mclen)), &masq),
                (("!=", net), ("==", net), &masq),
            ] {
                objs.push(rule(
                    "postrouting",
                    vec![
                        addr("saddr", saddr.0, saddr.1),
                        addr("daddr", daddr.0, daddr.1),
                        verdict.clone(),
                    ],
                ));
            }
        }
        for (p, net) in [("ip", ("10.244.0.0", 16)), ("ip6", ("fd00:10:244::", 56))] {
            for field in ["saddr", "daddr"] {
                objs.push(rule(
                    "forward",
                    vec![
                        m(payload(p, field), "==", prefix(net.0, net.1)),
                        acc.clone(),
                    ],
                ));
            }
        }
        serde_json::json!({"nftables": objs}).to_string()
    }

    #[test]
    fn listed_table_reads_back_as_the_rule_set() {
        for rf in [true, false] {
            let have = parse_table(&listed(rf)).unwrap();
            assert!(have
                .chains
                .iter()
                .all(|c| c.rules.iter().all(|r| matches!(r, Entry::Known(_)))));
            let mut drift = Drift::default();
            check(&desired(&rules(), rf), Some(&have), &mut drift);
            assert!(drift.is_clean(), "random_fully={rf}: {drift}");
            // And the other random_fully setting is drift.
            let mut drift = Drift::default();
            check(&desired(&rules(), !rf), Some(&have), &mut drift);
            assert!(!drift.is_clean());
        }
    }

    #[test]
    fn foreign_expressions_make_a_rule_unknown() {
        let counter = serde_json::json!([m(payload("ip", "saddr"), "==", prefix("10.244.0.0", 16)), {"counter": {"packets": 0, "bytes": 0}}, {"accept": null}]);
        assert_eq!(parse_rule(counter.as_array().unwrap()), None);
        let after_verdict = serde_json::json!([{"accept": null}, {"accept": null}]);
        assert_eq!(parse_rule(after_verdict.as_array().unwrap()), None);
        let wrong_family = serde_json::json!([m(payload("ip6", "saddr"), "==", prefix("10.0.0.0", 8)), {"accept": null}]);
        assert_eq!(parse_rule(wrong_family.as_array().unwrap()), None);
        let snat_port = serde_json::json!([m(payload("ip", "saddr"), "==", prefix("10.0.0.0", 8)), {"masquerade": {"port": 80}}]);
        assert_eq!(parse_rule(snat_port.as_array().unwrap()), None);
        let host = serde_json::json!([m(payload("ip", "daddr"), "!=", "10.0.0.1".into()), {"return": null}]);
        let r = parse_rule(host.as_array().unwrap()).unwrap();
        assert_eq!(r.to_string(), "ip daddr != 10.0.0.1/32 return");
    }

    #[test]
    fn drift_is_reported_per_chain() {
        let want = desired(&rules(), true);
        let mut have = parse_table(&listed(true)).unwrap();
        have.chains[0].rules.remove(4);
        have.chains[1].base.as_mut().unwrap().prio = 10;
        have.chains.push(Chain {
            name: "extra".into(),
            base: None,
            rules: vec![],
        });
        have.others.push("set blocked".into());
        let mut drift = Drift::default();
        check(&want, Some(&have), &mut drift);
        let text = drift.to_string();
        assert!(text.contains("nft inet trellis postrouting: missing: ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random"), "{text}");
        assert!(text.contains("nft inet trellis forward: the chain is type filter hook forward priority 10 policy accept, want type filter hook forward priority 0 policy accept"), "{text}");
        assert!(
            text.contains("nft inet trellis: unexpected: chain extra"),
            "{text}"
        );
        assert!(
            text.contains("nft inet trellis: unexpected: set blocked"),
            "{text}"
        );
        assert_eq!(drift.items.len(), 4, "{text}");
    }

    #[test]
    fn absent_and_unwanted_tables() {
        let mut drift = Drift::default();
        check(&desired(&rules(), true), None, &mut drift);
        assert_eq!(drift.items.len(), 2);
        let none = RuleSet::default();
        let mut drift = Drift::default();
        check(&desired(&none, true), None, &mut drift);
        assert!(drift.is_clean());
        check(
            &desired(&none, true),
            Some(&TableState::default()),
            &mut drift,
        );
        assert_eq!(
            drift.to_string(),
            "nft inet trellis: unexpected: table inet trellis"
        );
    }

    #[test]
    fn table_listing() {
        // nft 1.0.6, and the "did you mean" form of later versions.
        assert!(is_missing_table(
            "Error: No such file or directory\nlist table inet trellis\n                ^^^^^^^"
        ));
        assert!(is_missing_table(
            "Error: No such file or directory; did you mean table 'trellis' in family ip?"
        ));
        assert!(!is_missing_table("Error: Operation not permitted"));
        assert!(parse_table(r#"{"nftables": [{"rule": {"chain": "x", "expr": []}}]}"#).is_err());
    }
}

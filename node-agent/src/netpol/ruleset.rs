//! The `inet trellis-netpol` table as data: interval sets of addresses, verdict maps from a
//! pod's address to its chain, and chains of rules written exactly as `nft list` prints them.
//! [`script`] turns the difference between two of them into one `nft -f` transaction;
//! [`parse_listing`] reads `nft list table` back so a restarted agent diffs against what the
//! kernel holds instead of rebuilding it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use super::ranges::{normalise, Range};

pub const TABLE: &str = "trellis-netpol";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddrSet {
    pub v6: bool,
    /// Normalised ([`normalise`]): sorted, no overlaps.
    pub elements: Vec<Range>,
}

/// A verdict map: address → `jump CHAIN`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JumpMap {
    pub v6: bool,
    pub elements: BTreeMap<IpAddr, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chain {
    /// For a base chain, its spec as nft lists it (`type filter hook … policy accept;`).
    pub base: Option<String>,
    pub rules: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub sets: BTreeMap<String, AddrSet>,
    pub maps: BTreeMap<String, JumpMap>,
    pub chains: BTreeMap<String, Chain>,
}

impl Ruleset {
    pub fn rule_count(&self) -> usize {
        self.chains.values().map(|c| c.rules.len()).sum()
    }

    pub fn element_count(&self) -> usize {
        let sets: usize = self.sets.values().map(|s| s.elements.len()).sum();
        let maps: usize = self.maps.values().map(|m| m.elements.len()).sum();
        sets + maps
    }
}

fn addr_type(v6: bool) -> &'static str {
    if v6 {
        "ipv6_addr"
    } else {
        "ipv4_addr"
    }
}

/// The nft commands that turn `old` into `new`, as one transaction (`nft -f` applies a file
/// atomically). `old` is `None` when the table does not exist. Ordered so that nothing is
/// referenced before it exists or deleted while still referenced: new chains, sets and maps;
/// removed elements; rewritten chains; added elements; then removed objects.
pub fn script(old: Option<&Ruleset>, new: &Ruleset) -> String {
    let empty = Ruleset::default();
    let mut s = String::new();
    let t = format!("inet {TABLE}");
    if old.is_none() {
        let _ = writeln!(s, "add table {t}");
    }
    let old = old.unwrap_or(&empty);
    for (name, c) in new
        .chains
        .iter()
        .filter(|(n, _)| !old.chains.contains_key(*n))
    {
        match &c.base {
            Some(base) => {
                let _ = writeln!(s, "add chain {t} {name} {{ {base} }}");
            }
            None => {
                let _ = writeln!(s, "add chain {t} {name}");
            }
        }
    }
    for (name, set) in new.sets.iter().filter(|(n, _)| !old.sets.contains_key(*n)) {
        let _ = writeln!(
            s,
            "add set {t} {name} {{ type {}; flags interval; }}",
            addr_type(set.v6)
        );
    }
    for (name, m) in new.maps.iter().filter(|(n, _)| !old.maps.contains_key(*n)) {
        let _ = writeln!(
            s,
            "add map {t} {name} {{ type {} : verdict; }}",
            addr_type(m.v6)
        );
    }
    element_changes(&mut s, &t, old, new, Change::Delete);
    for (name, c) in &new.chains {
        let before = old.chains.get(name);
        if before.is_some_and(|b| b.rules == c.rules) {
            continue;
        }
        if before.is_some() {
            let _ = writeln!(s, "flush chain {t} {name}");
        }
        for r in &c.rules {
            let _ = writeln!(s, "add rule {t} {name} {r}");
        }
    }
    let gone = |n: &String| !new.chains.contains_key(n);
    for name in old.chains.keys().filter(|n| gone(n)) {
        let _ = writeln!(s, "flush chain {t} {name}");
    }
    element_changes(&mut s, &t, old, new, Change::Add);
    for name in old.maps.keys().filter(|n| !new.maps.contains_key(*n)) {
        let _ = writeln!(s, "delete map {t} {name}");
    }
    for name in old.chains.keys().filter(|n| gone(n)) {
        let _ = writeln!(s, "delete chain {t} {name}");
    }
    for name in old.sets.keys().filter(|n| !new.sets.contains_key(*n)) {
        let _ = writeln!(s, "delete set {t} {name}");
    }
    s
}

/// Whether `have` differs from `want` in a way [`script`] does not change: a base chain's
/// hook, priority or policy, or the type of a set or map (all only by hand). Then the table
/// is replaced whole.
pub fn needs_replace(have: &Ruleset, want: &Ruleset) -> bool {
    let chains = want
        .chains
        .iter()
        .any(|(n, c)| have.chains.get(n).is_some_and(|h| h.base != c.base));
    let sets = want
        .sets
        .iter()
        .any(|(n, s)| have.sets.get(n).is_some_and(|h| h.v6 != s.v6));
    let maps = want
        .maps
        .iter()
        .any(|(n, m)| have.maps.get(n).is_some_and(|h| h.v6 != m.v6));
    chains || sets || maps
}

/// Replaces whatever table is there with `new`, in one transaction: for a table that could
/// not be read or whose incremental update failed.
pub fn replace_script(new: &Ruleset) -> String {
    format!(
        "add table inet {TABLE}\ndelete table inet {TABLE}\n{}",
        script(None, new)
    )
}

pub fn delete_script() -> String {
    format!("add table inet {TABLE}\ndelete table inet {TABLE}\n")
}

#[derive(Clone, Copy, PartialEq)]
enum Change {
    Add,
    Delete,
}

fn element_changes(s: &mut String, t: &str, old: &Ruleset, new: &Ruleset, change: Change) {
    let verb = if change == Change::Add {
        "add"
    } else {
        "delete"
    };
    let (from, to) = if change == Change::Add {
        (old, new)
    } else {
        (new, old)
    };
    // Elements of `to` missing from `from`: to add (new vs old) or to delete (old vs new).
    // A set that is itself removed or new needs no element deletes / gets all its elements.
    for (name, set) in &to.sets {
        let other = match from.sets.get(name) {
            Some(o) => &o.elements,
            None if change == Change::Add => &EMPTY_RANGES,
            None => continue,
        };
        let have: BTreeSet<&Range> = other.iter().collect();
        let items: Vec<String> = set
            .elements
            .iter()
            .filter(|r| !have.contains(r))
            .map(Range::to_string)
            .collect();
        write_elements(s, verb, t, name, &items);
    }
    for (name, m) in &to.maps {
        let other = match from.maps.get(name) {
            Some(o) => &o.elements,
            None if change == Change::Add => &EMPTY_MAP,
            None => continue,
        };
        let items: Vec<String> = m
            .elements
            .iter()
            .filter(|(k, v)| other.get(k) != Some(v))
            .map(|(k, v)| match change {
                Change::Add => format!("{k} : jump {v}"),
                Change::Delete => k.to_string(),
            })
            .collect();
        write_elements(s, verb, t, name, &items);
    }
}

static EMPTY_RANGES: Vec<Range> = Vec::new();
static EMPTY_MAP: BTreeMap<IpAddr, String> = BTreeMap::new();

fn write_elements(s: &mut String, verb: &str, t: &str, name: &str, items: &[String]) {
    // Long element lists are split: one command per few thousand keeps each netlink batch
    // message small, and all of them stay in the one transaction.
    for chunk in items.chunks(2000) {
        let _ = writeln!(s, "{verb} element {t} {name} {{ {} }}", chunk.join(", "));
    }
}

/// Reads `nft list table inet trellis-netpol` (text) back into a [`Ruleset`]. `Err` names
/// what could not be understood; the caller then replaces the table whole.
pub fn parse_listing(text: &str) -> Result<Ruleset, String> {
    let mut rs = Ruleset::default();
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    while let Some(line) = lines.next() {
        let Some((kind, name)) = block_start(line) else {
            continue;
        };
        let body = block_body(&mut lines);
        match kind {
            "set" => {
                let (v6, elements) = elements_of(name, &body)?;
                let elements = elements
                    .iter()
                    .map(|e| parse_range(e))
                    .collect::<Result<Vec<_>, _>>()?;
                let elements = normalise(elements);
                rs.sets.insert(name.to_string(), AddrSet { v6, elements });
            }
            "map" => {
                let (v6, elements) = elements_of(name, &body)?;
                let mut m = JumpMap {
                    v6,
                    ..JumpMap::default()
                };
                for e in elements {
                    let (k, v) = e
                        .split_once(" : jump ")
                        .ok_or_else(|| format!("map {name}: element {e:?}"))?;
                    let k: IpAddr = k.parse().map_err(|_| format!("map {name}: key {k:?}"))?;
                    m.elements.insert(k, v.to_string());
                }
                rs.maps.insert(name.to_string(), m);
            }
            "chain" => {
                let mut c = Chain::default();
                for l in body {
                    if l.starts_with("type ") && c.base.is_none() && c.rules.is_empty() {
                        c.base = Some(l);
                    } else {
                        c.rules.push(l);
                    }
                }
                rs.chains.insert(name.to_string(), c);
            }
            _ => {}
        }
    }
    Ok(rs)
}

fn block_start(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_suffix(" {")?;
    let (kind, name) = rest.split_once(' ')?;
    matches!(kind, "set" | "map" | "chain").then_some((kind, name))
}

/// The lines up to the block's closing brace, with an `elements = { … }` list joined into one.
fn block_body<'a>(lines: &mut impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut body = Vec::new();
    let mut open: Option<String> = None;
    for l in lines.by_ref() {
        if let Some(acc) = open.as_mut() {
            acc.push(' ');
            acc.push_str(l);
            if l.ends_with('}') {
                body.extend(open.take());
            }
            continue;
        }
        if l == "}" {
            break;
        }
        if l.starts_with("elements = {") && !l.ends_with('}') {
            open = Some(l.to_string());
        } else {
            body.push(l.to_string());
        }
    }
    body
}

fn elements_of(name: &str, body: &[String]) -> Result<(bool, Vec<String>), String> {
    let ty = body
        .iter()
        .find_map(|l| l.strip_prefix("type "))
        .ok_or_else(|| format!("{name}: no type"))?;
    let v6 = ty.starts_with("ipv6_addr");
    if !v6 && !ty.starts_with("ipv4_addr") {
        return Err(format!("{name}: unexpected type {ty:?}"));
    }
    let list = body
        .iter()
        .find_map(|l| l.strip_prefix("elements = {"))
        .map(|l| l.trim_end_matches('}'))
        .unwrap_or("");
    let items = list
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .collect();
    Ok((v6, items))
}

fn parse_range(e: &str) -> Result<Range, String> {
    let bad = || format!("element {e:?}");
    if let Some((a, b)) = e.split_once('-') {
        let (a, b): (IpAddr, IpAddr) =
            (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
        let (ra, rb) = (Range::addr(a), Range::addr(b));
        if ra.v6 != rb.v6 || ra.first > rb.first {
            return Err(bad());
        }
        return Ok(Range {
            last: rb.first,
            ..ra
        });
    }
    if e.contains('/') {
        let net = crate::config::parse_cidr(e).map_err(|_| bad())?;
        return Ok(Range::network(net));
    }
    e.parse().map(Range::addr).map_err(|_| bad())
}

#[cfg(test)]
mod tests;

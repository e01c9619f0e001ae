//! `diff(desired, actual) -> ops`: the fewest kernel operations that make `actual` equal to
//! `desired`. Identical states give no op; a merge over sorted maps, O(n).
//!
//! Op order is part of the contract; executors apply ops in the order given:
//! 1. links whose immutable attributes changed (VNI, port, local address, ...) are deleted,
//! 2. links are created (new, and those just deleted) or updated in place (MTU, MAC, up),
//! 3. addresses are added,
//! 4. neighbour, FDB entries and WireGuard peers are added or replaced (before the routes that
//!    use them, so the kernel never has to resolve a next hop on its own),
//! 5. routes are added or replaced,
//! 6. stale routes are deleted,
//! 7. stale neighbour and FDB entries and WireGuard peers are deleted (after the new peers are
//!    set: a subnet whose node came back with a new key moves to the new peer first),
//! 8. stale addresses are deleted,
//! 9. stale links are deleted last: by then every route that must survive has been replaced
//!    onto another device (e.g. a VXLAN route turned host-gw during a backend switch).
//!
//! Entries living on a link that is deleted are not deleted one by one: the kernel drops them
//! with the link (5000 peers' entries on a retired `flannel.1` cost one op, not 15000).
//!
//! Executor semantics: `Add*` and `Replace*` of neighbours, FDB entries and routes may both be
//! implemented as create-or-replace (`NLM_F_CREATE | NLM_F_REPLACE`); the distinction is for
//! logs and metrics. `AddLink` creates the link with every attribute and sets it up;
//! `SetLink` changes only MTU, MAC and up state of a link whose kind is already right.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::net::IpAddr;

use super::desired::{Address, Fdb, KernelState, Link, Neighbour, Route, WgPeer};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    AddLink(Link),
    SetLink(Link),
    DeleteLink(String),
    AddAddress(Address),
    DeleteAddress(Address),
    AddNeighbour(Neighbour),
    ReplaceNeighbour(Neighbour),
    DeleteNeighbour(Neighbour),
    AddFdb(Fdb),
    ReplaceFdb(Fdb),
    DeleteFdb(Fdb),
    AddWgPeer(WgPeer),
    ReplaceWgPeer(WgPeer),
    DeleteWgPeer(WgPeer),
    AddRoute(Route),
    ReplaceRoute(Route),
    DeleteRoute(Route),
}

impl Op {
    /// Whether the op removes something from the kernel.
    pub fn is_delete(&self) -> bool {
        matches!(
            self,
            Op::DeleteLink(_)
                | Op::DeleteAddress(_)
                | Op::DeleteNeighbour(_)
                | Op::DeleteFdb(_)
                | Op::DeleteWgPeer(_)
                | Op::DeleteRoute(_)
        )
    }

    /// A stable label for metrics (`op="..."`).
    pub fn label(&self) -> &'static str {
        match self {
            Op::AddLink(_) => "add_link",
            Op::SetLink(_) => "set_link",
            Op::DeleteLink(_) => "delete_link",
            Op::AddAddress(_) => "add_address",
            Op::DeleteAddress(_) => "delete_address",
            Op::AddNeighbour(_) => "add_neighbour",
            Op::ReplaceNeighbour(_) => "replace_neighbour",
            Op::DeleteNeighbour(_) => "delete_neighbour",
            Op::AddFdb(_) => "add_fdb",
            Op::ReplaceFdb(_) => "replace_fdb",
            Op::DeleteFdb(_) => "delete_fdb",
            Op::AddWgPeer(_) => "add_wg_peer",
            Op::ReplaceWgPeer(_) => "replace_wg_peer",
            Op::DeleteWgPeer(_) => "delete_wg_peer",
            Op::AddRoute(_) => "add_route",
            Op::ReplaceRoute(_) => "replace_route",
            Op::DeleteRoute(_) => "delete_route",
        }
    }

    /// The device a link or address op is about; `None` for a peer's entry (a route,
    /// neighbour or FDB entry).
    pub fn device(&self) -> Option<&str> {
        match self {
            Op::AddLink(l) | Op::SetLink(l) => Some(&l.name),
            Op::DeleteLink(name) => Some(name),
            Op::AddAddress(a) | Op::DeleteAddress(a) => Some(&a.link),
            _ => None,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::AddLink(l) => write!(f, "add link {l}"),
            Op::SetLink(l) => write!(f, "set link {l}"),
            Op::DeleteLink(n) => write!(f, "delete link {n}"),
            Op::AddAddress(a) => write!(f, "add address {a}"),
            Op::DeleteAddress(a) => write!(f, "delete address {a}"),
            Op::AddNeighbour(n) => write!(f, "add neighbour {n}"),
            Op::ReplaceNeighbour(n) => write!(f, "replace neighbour {n}"),
            Op::DeleteNeighbour(n) => write!(f, "delete neighbour {n}"),
            Op::AddFdb(e) => write!(f, "add fdb {e}"),
            Op::ReplaceFdb(e) => write!(f, "replace fdb {e}"),
            Op::DeleteFdb(e) => write!(f, "delete fdb {e}"),
            Op::AddWgPeer(p) => write!(f, "add wireguard {p}"),
            Op::ReplaceWgPeer(p) => write!(f, "replace wireguard {p}"),
            Op::DeleteWgPeer(p) => write!(f, "delete wireguard {p}"),
            Op::AddRoute(r) => write!(f, "add route {r}"),
            Op::ReplaceRoute(r) => write!(f, "replace route {r}"),
            Op::DeleteRoute(r) => write!(f, "delete route {r}"),
        }
    }
}

/// Visit the union of two sorted maps' keys in order.
fn merge<'a, K: Ord, V>(
    desired: &'a BTreeMap<K, V>,
    actual: &'a BTreeMap<K, V>,
    mut visit: impl FnMut(Option<&'a V>, Option<&'a V>),
) {
    merge_by(
        desired.iter(),
        actual.iter(),
        |d, a| d.0.cmp(a.0),
        |d, a| visit(d.map(|(_, v)| v), a.map(|(_, v)| v)),
    );
}

fn merge_sets<'a, T: Ord>(
    desired: &'a BTreeSet<T>,
    actual: &'a BTreeSet<T>,
    visit: impl FnMut(Option<&'a T>, Option<&'a T>),
) {
    merge_by(desired.iter(), actual.iter(), |d, a| d.cmp(a), visit);
}

/// Walk two sequences sorted by `cmp` side by side: `visit` gets each item with its equal in
/// the other sequence, or alone (`None` on the other side).
fn merge_by<T>(
    desired: impl Iterator<Item = T>,
    actual: impl Iterator<Item = T>,
    cmp: impl Fn(&T, &T) -> Ordering,
    mut visit: impl FnMut(Option<T>, Option<T>),
) {
    let mut d = desired.peekable();
    let mut a = actual.peekable();
    loop {
        let order = match (d.peek(), a.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(dv), Some(av)) => cmp(dv, av),
        };
        match order {
            Ordering::Less => visit(d.next(), None),
            Ordering::Greater => visit(None, a.next()),
            Ordering::Equal => visit(d.next(), a.next()),
        }
    }
}

/// The kernel adds an IPv6 link-local address to every device; it is not trellis's to remove.
fn is_kernel_address(a: &Address) -> bool {
    match a.addr.ip() {
        IpAddr::V6(ip) => (ip.segments()[0] & 0xffc0) == 0xfe80,
        IpAddr::V4(_) => false,
    }
}

/// Whether a link needs `SetLink`: kind equal, mutable attributes differ.
pub(crate) fn needs_set(d: &Link, a: &Link) -> bool {
    d.mtu != a.mtu || d.up != a.up || (d.mac.is_some() && d.mac != a.mac)
}

/// The links the diff deletes: recreated ones (deleted first, then added again) and stale
/// ones (deleted last).
struct Links<'a> {
    recreated: &'a HashSet<&'a str>,
    stale: &'a HashSet<&'a str>,
}

impl Links<'_> {
    /// Whether `link` is deleted, taking what lives on it along.
    fn gone(&self, link: &str) -> bool {
        self.recreated.contains(link) || self.stale.contains(link)
    }
}

/// How to diff one kind of entry that lives on a link (neighbours, FDB entries, routes): the
/// ops that add, replace and delete one, and the link it lives on.
struct EntryOps<T>(fn(T) -> Op, fn(T) -> Op, fn(T) -> Op, fn(&T) -> &str);

const NEIGHBOURS: EntryOps<Neighbour> = EntryOps(
    Op::AddNeighbour,
    Op::ReplaceNeighbour,
    Op::DeleteNeighbour,
    |n| &n.link,
);
const FDB: EntryOps<Fdb> = EntryOps(Op::AddFdb, Op::ReplaceFdb, Op::DeleteFdb, |f| &f.link);
const WG_PEERS: EntryOps<WgPeer> =
    EntryOps(Op::AddWgPeer, Op::ReplaceWgPeer, Op::DeleteWgPeer, |p| {
        &p.link
    });
const ROUTES: EntryOps<Route> =
    EntryOps(Op::AddRoute, Op::ReplaceRoute, Op::DeleteRoute, |r| &r.dev);

/// The ops of one phase (module docs): what it sets, and what it deletes.
#[derive(Default)]
struct Phase {
    sets: Vec<Op>,
    deletes: Vec<Op>,
}

impl<T: Clone + PartialEq> EntryOps<T> {
    /// Add what is missing; delete what is not desired, unless its link goes and takes it
    /// along; add again what lived on a recreated link (it vanished with it); replace what
    /// differs. For an entry in both, the link that counts is the kernel's: a route may move
    /// to another link, and one on a stale link still exists when routes are applied and must
    /// be moved off before the link goes.
    fn diff<K: Ord>(
        &self,
        desired: &BTreeMap<K, T>,
        actual: &BTreeMap<K, T>,
        links: &Links<'_>,
        out: &mut Phase,
    ) {
        let EntryOps(add, replace, delete, link) = *self;
        merge(desired, actual, |d, a| match (d, a) {
            (Some(d), None) => out.sets.push(add(d.clone())),
            (None, Some(a)) => {
                if !links.gone(link(a)) {
                    out.deletes.push(delete(a.clone()));
                }
            }
            (Some(d), Some(a)) => {
                if links.recreated.contains(link(a)) {
                    out.sets.push(add(d.clone()));
                } else if d != a {
                    out.sets.push(replace(d.clone()));
                }
            }
            (None, None) => {}
        });
    }
}

/// The ops that turn `actual` into `desired`, in the order to apply them (module docs).
pub fn diff(desired: &KernelState, actual: &KernelState) -> Vec<Op> {
    // Links deleted first and created again: whatever lived on them is gone by phase 2.
    let mut recreated: HashSet<&str> = HashSet::new();
    // Links deleted in the last phase: what lives on them is dropped by the kernel.
    let mut stale: HashSet<&str> = HashSet::new();

    let mut recreate_deletes = Vec::new();
    let mut link_ops = Vec::new();
    let mut stale_links = Vec::new();
    merge(&desired.links, &actual.links, |d, a| match (d, a) {
        (Some(d), None) => link_ops.push(Op::AddLink(d.clone())),
        (None, Some(a)) => {
            stale.insert(&a.name);
            stale_links.push(Op::DeleteLink(a.name.clone()));
        }
        (Some(d), Some(a)) => {
            if d.kind != a.kind {
                recreated.insert(&d.name);
                recreate_deletes.push(Op::DeleteLink(a.name.clone()));
                link_ops.push(Op::AddLink(d.clone()));
            } else if needs_set(d, a) {
                link_ops.push(Op::SetLink(d.clone()));
            }
        }
        (None, None) => {}
    });
    let deleted = Links {
        recreated: &recreated,
        stale: &stale,
    };

    let mut addr_adds = Vec::new();
    let mut addr_deletes = Vec::new();
    merge_sets(&desired.addresses, &actual.addresses, |d, a| match (d, a) {
        (Some(d), None) => addr_adds.push(Op::AddAddress(d.clone())),
        (None, Some(a)) => {
            if !deleted.gone(&a.link) && !is_kernel_address(a) {
                addr_deletes.push(Op::DeleteAddress(a.clone()));
            }
        }
        (Some(d), Some(_)) => {
            if recreated.contains(d.link.as_str()) {
                addr_adds.push(Op::AddAddress(d.clone()));
            }
        }
        (None, None) => {}
    });

    let mut entries = Phase::default();
    NEIGHBOURS.diff(
        &desired.neighbours,
        &actual.neighbours,
        &deleted,
        &mut entries,
    );
    FDB.diff(&desired.fdb, &actual.fdb, &deleted, &mut entries);
    WG_PEERS.diff(&desired.wg_peers, &actual.wg_peers, &deleted, &mut entries);
    let mut routes = Phase::default();
    ROUTES.diff(&desired.routes, &actual.routes, &deleted, &mut routes);

    let mut ops = recreate_deletes;
    ops.extend(link_ops);
    ops.extend(addr_adds);
    ops.extend(entries.sets);
    ops.extend(routes.sets);
    ops.extend(routes.deletes);
    ops.extend(entries.deletes);
    ops.extend(addr_deletes);
    ops.extend(stale_links);
    ops
}

#[cfg(test)]
mod tests;

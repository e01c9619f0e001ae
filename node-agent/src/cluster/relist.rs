//! Applies watcher events to the [`ClusterView`], the one place that knows what a relist means.
//!
//! A relist (`Init`, `InitApply`…, `InitDone`) happens at start and whenever the watch could
//! not resume (410 Gone after a compaction, a failed list). Nodes deleted while we were not
//! watching (agent down, API unreachable) never produce a `Delete` event; the relist is the only
//! way to learn of them, so at `InitDone` every Node not listed is dropped.
//!
//! Until `InitDone` nothing is removed: the view is only ever a superset of the truth while a
//! list is in flight or failing, so an API outage can never empty it (and with it the kernel).
//! Changes seen during a list are reported once, at `InitDone`: 5000 Nodes at start are one
//! "view changed", not 5000.

use std::collections::HashSet;

use kube::runtime::watcher::Event;

use crate::view::{ClusterView, NodeInfo};

/// What one event did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FeedOutcome {
    /// Something planning depends on changed: a replan is due.
    pub changed: bool,
    /// This event completed the first full list: the view now reflects the cluster.
    pub first_sync: bool,
    /// This event completed a list (first or later).
    pub relisted: bool,
}

#[derive(Debug, Default)]
pub struct RelistFeed {
    /// Names seen by the list in progress, `None` when not listing.
    listing: Option<HashSet<Box<str>>>,
    /// Changes made during the list in progress, reported at its end.
    pending: bool,
    synced: bool,
}

impl RelistFeed {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a full list has completed at least once.
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// Whether a list is in progress.
    pub fn listing(&self) -> bool {
        self.listing.is_some()
    }

    pub fn apply(&mut self, view: &mut ClusterView, event: Event<NodeInfo>) -> FeedOutcome {
        let mut out = FeedOutcome::default();
        match event {
            Event::Init => {
                // A list restarted halfway (failed page) starts over: forget what it had seen.
                self.listing = Some(HashSet::new());
            }
            Event::InitApply(node) => {
                let changed = view.upsert_node(&node);
                self.listing
                    .get_or_insert_with(HashSet::new)
                    .insert(node.name.into_boxed_str());
                self.pending |= changed;
            }
            Event::InitDone => {
                let seen = self.listing.take().unwrap_or_default();
                let dropped = view.retain_nodes(|name| seen.contains(name));
                out.changed = std::mem::take(&mut self.pending) || dropped;
                out.first_sync = !self.synced;
                out.relisted = true;
                self.synced = true;
            }
            Event::Apply(node) => {
                let changed = view.upsert_node(&node);
                if let Some(seen) = &mut self.listing {
                    seen.insert(node.name.into_boxed_str());
                    self.pending |= changed;
                } else {
                    out.changed = changed;
                }
            }
            Event::Delete(node) => {
                let removed = view.remove_node(&node.name);
                if let Some(seen) = &mut self.listing {
                    seen.remove(node.name.as_str());
                    self.pending |= removed;
                } else {
                    out.changed = removed;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::fixtures::{view, PeerSpec};

    fn names(v: &ClusterView) -> Vec<String> {
        let mut n: Vec<String> = ["node-2", "node-3", "node-4", "node-5"]
            .iter()
            .filter(|n| v.node(n).is_some())
            .map(|s| s.to_string())
            .collect();
        n.sort();
        n
    }

    fn list(feed: &mut RelistFeed, v: &mut ClusterView, nodes: &[u32]) -> Vec<FeedOutcome> {
        let mut out = vec![feed.apply(v, Event::Init)];
        for i in nodes {
            out.push(listed(feed, v, *i));
        }
        out.push(feed.apply(v, Event::InitDone));
        out
    }

    /// Node `i` as an item of the list being received.
    fn listed(feed: &mut RelistFeed, v: &mut ClusterView, i: u32) -> FeedOutcome {
        feed.apply(v, Event::InitApply(PeerSpec::new(i, "vxlan").node()))
    }

    /// A feed and a view after a first complete list of `nodes`.
    fn after_list(nodes: &[u32]) -> (RelistFeed, ClusterView) {
        let (mut feed, mut v) = (RelistFeed::new(), view());
        list(&mut feed, &mut v, nodes);
        (feed, v)
    }

    #[test]
    fn first_list_is_one_change_at_init_done() {
        let (mut feed, mut v) = (RelistFeed::new(), view());
        let out = list(&mut feed, &mut v, &[2, 3, 4]);
        assert!(out[..out.len() - 1]
            .iter()
            .all(|o| *o == FeedOutcome::default()));
        assert_eq!(
            out.last(),
            Some(&FeedOutcome {
                changed: true,
                first_sync: true,
                relisted: true
            })
        );
        assert!(feed.synced() && !feed.listing());
        assert_eq!(names(&v), ["node-2", "node-3", "node-4"]);
    }

    #[test]
    fn relist_drops_nodes_deleted_while_away_and_only_then() {
        let (mut feed, mut v) = after_list(&[2, 3, 4]);
        // node-3 vanished while we were disconnected; node-5 appeared.
        feed.apply(&mut v, Event::Init);
        listed(&mut feed, &mut v, 2);
        listed(&mut feed, &mut v, 5);
        // Mid-list, nothing is gone yet.
        assert_eq!(names(&v), ["node-2", "node-3", "node-4", "node-5"]);
        listed(&mut feed, &mut v, 4);
        let done = feed.apply(&mut v, Event::InitDone);
        assert!(done.changed && done.relisted && !done.first_sync);
        assert_eq!(names(&v), ["node-2", "node-4", "node-5"]);
    }

    #[test]
    fn identical_relist_is_no_change() {
        let (mut feed, mut v) = after_list(&[2, 3]);
        let out = list(&mut feed, &mut v, &[2, 3]);
        assert!(!out.last().unwrap().changed);
    }

    #[test]
    fn a_list_that_restarts_halfway_keeps_everything_until_done() {
        let (mut feed, mut v) = after_list(&[2, 3, 4]);
        feed.apply(&mut v, Event::Init);
        listed(&mut feed, &mut v, 2);
        // Page two failed: the watcher starts over. node-2 was seen by the aborted attempt only.
        feed.apply(&mut v, Event::Init);
        assert_eq!(names(&v), ["node-2", "node-3", "node-4"]);
        listed(&mut feed, &mut v, 3);
        feed.apply(&mut v, Event::InitDone);
        assert_eq!(names(&v), ["node-3"]);
    }

    #[test]
    fn watch_events_apply_directly_and_ignore_irrelevant_updates() {
        let (mut feed, mut v) = after_list(&[2]);
        let mut n = PeerSpec::new(2, "vxlan").node();
        n.annotations
            .insert("node.alpha.kubernetes.io/ttl".into(), "0".into());
        assert!(
            !feed.apply(&mut v, Event::Apply(n)).changed,
            "heartbeat-like"
        );
        let mut n = PeerSpec::new(2, "vxlan").node();
        n.pod_cidrs = vec!["10.244.20.0/24".into()];
        assert!(feed.apply(&mut v, Event::Apply(n.clone())).changed);
        assert!(feed.apply(&mut v, Event::Delete(n.clone())).changed);
        assert!(!feed.apply(&mut v, Event::Delete(n)).changed);
        assert_eq!(v.node_count(), 0);
    }

    #[test]
    fn the_local_node_is_never_a_peer_and_changes_only_the_lease() {
        let (mut feed, mut v) = (RelistFeed::new(), view());
        let mut local = PeerSpec::new(2, "vxlan").node();
        local.name = "local".into();
        local.pod_cidrs = vec!["10.244.1.0/24".into(), "fd00:10:244:1::/64".into()];
        feed.apply(&mut v, Event::Init);
        feed.apply(&mut v, Event::InitApply(local.clone()));
        let done = feed.apply(&mut v, Event::InitDone);
        assert!(!done.changed && done.first_sync, "the lease as it was");
        assert!(!feed.apply(&mut v, Event::Apply(local.clone())).changed);
        local.annotations.insert(
            "flannel.alpha.coreos.com/public-ip-overwrite".into(),
            "203.0.113.9".into(),
        );
        assert!(feed.apply(&mut v, Event::Apply(local)).changed);
        assert_eq!(v.local().public_ip_v4, Some("203.0.113.9".parse().unwrap()));
        assert_eq!(v.node_count(), 0);
    }
}

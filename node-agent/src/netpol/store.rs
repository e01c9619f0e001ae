//! The Pods, Namespaces and NetworkPolicies the compiler reads, kept compact as the watchers
//! report them. A kind counts as synced once its first list is complete: compiling from a
//! partial list would deny traffic from peers not listed yet, or open traffic a policy not
//! listed yet denies, so nothing is applied before all three are.

use std::collections::BTreeMap;
use std::time::Instant;

use super::compile::{compile, Compiled, Inputs};
use super::inputs::PodInfo;
use super::policy::{Policy, PolicyError};
use super::selector::Labels;

pub type Key = (String, String);

/// A policy as stored: parsed, or its deny-all stand-in with why.
#[derive(Debug, Clone)]
pub struct StoredPolicy {
    pub policy: Policy,
    pub error: Option<PolicyError>,
    /// `metadata.resourceVersion`: an invalid policy is reported once per version.
    pub version: String,
    pub uid: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Pods,
    Namespaces,
    Policies,
}

#[derive(Debug, Default)]
pub struct Store {
    pub pods: BTreeMap<Key, PodInfo>,
    pub namespaces: BTreeMap<String, Labels>,
    pub policies: BTreeMap<Key, StoredPolicy>,
    synced: [bool; 3],
    /// When the first change not yet compiled arrived.
    dirty_since: Option<Instant>,
}

fn slot(k: Kind) -> usize {
    match k {
        Kind::Pods => 0,
        Kind::Namespaces => 1,
        Kind::Policies => 2,
    }
}

impl Store {
    pub fn synced(&self) -> bool {
        self.synced.iter().all(|s| *s)
    }

    pub fn mark_synced(&mut self, k: Kind) {
        self.synced[slot(k)] = true;
        self.touch();
    }

    pub fn touch(&mut self) {
        self.dirty_since.get_or_insert_with(Instant::now);
    }

    pub fn take_dirty(&mut self) -> Option<Instant> {
        self.dirty_since.take()
    }

    /// A change taken but not applied: still to do, since the earlier of the two times.
    pub fn restore_dirty(&mut self, since: Option<Instant>) {
        let Some(since) = since else {
            self.touch();
            return;
        };
        self.dirty_since = Some(self.dirty_since.map_or(since, |d| d.min(since)));
    }

    pub fn compile(&self, node: &str) -> Compiled {
        let policies: Vec<&Policy> = self.policies.values().map(|p| &p.policy).collect();
        compile(&Inputs {
            node,
            pods: &self.pods,
            namespaces: &self.namespaces,
            policies: &policies,
        })
    }

    pub fn invalid(&self) -> impl Iterator<Item = (&Key, &StoredPolicy)> {
        self.policies.iter().filter(|(_, p)| p.error.is_some())
    }
}

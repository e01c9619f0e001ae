//! Policies that cannot be enforced as written, told to their owners: a Warning Event on the
//! policy, from one node only (the first by name among the nodes holding a pod it selects:
//! every agent sees every pod, so they agree without talking), once per version of the
//! policy, sent from a task of its own so a slow API never delays the rules.

use std::collections::{BTreeMap, BTreeSet};

use tracing::warn;

use super::store::{Key, Store};
use crate::cluster::NodeEvents;

pub struct Invalid {
    pub key: Key,
    pub version: String,
    pub uid: Option<String>,
    pub why: String,
}

/// The invalid policies this node is the one to report: those selecting a pod, whose first
/// node by name is `node`.
pub fn to_report(s: &Store, node: &str) -> Vec<Invalid> {
    s.invalid()
        .filter(|(_, p)| reporter(s, &p.policy) == Some(node))
        .map(|(k, p)| Invalid {
            key: k.clone(),
            version: p.version.clone(),
            uid: p.uid.clone(),
            why: p.error.as_ref().map(|e| e.to_string()).unwrap_or_default(),
        })
        .collect()
}

fn reporter<'a>(s: &'a Store, p: &super::policy::Policy) -> Option<&'a str> {
    s.pods
        .values()
        .filter(|pod| pod.namespace == p.namespace && p.pod_selector.matches(&pod.labels))
        .map(|pod| pod.node.as_str())
        .filter(|n| !n.is_empty())
        .min()
}

/// Remembers what was reported (policy and version) so each is told once.
#[derive(Default)]
pub struct Reported(BTreeMap<Key, String>);

impl Reported {
    /// Logs and publishes the new ones; forgets policies no longer invalid (a policy that
    /// turns invalid again is told again).
    pub fn report(&mut self, invalid: Vec<Invalid>, events: Option<&NodeEvents>) {
        let keys: BTreeSet<&Key> = invalid.iter().map(|i| &i.key).collect();
        self.0.retain(|k, _| keys.contains(k));
        for inv in invalid {
            if self.0.get(&inv.key) == Some(&inv.version) {
                continue;
            }
            self.0.insert(inv.key.clone(), inv.version.clone());
            let name = format!("{}/{}", inv.key.0, inv.key.1);
            warn!(policy = %name, why = %inv.why, "NetworkPolicy cannot be enforced as written; the pods it selects get deny-all");
            if let Some(ev) = events.cloned() {
                tokio::spawn(async move {
                    let (ns, n) = &inv.key;
                    ev.policy_invalid(ns, n, inv.uid.as_deref(), &inv.why).await;
                });
            }
        }
    }
}

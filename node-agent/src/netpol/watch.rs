//! The three watches (Pods, Namespaces, NetworkPolicies) feeding the [`Store`]. Each is a kube
//! watcher: it relists after an outage and the store keeps the last state meanwhile, so the
//! rules in the kernel stay as they were until the API answers again.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Client;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::inputs::{namespace_labels, PodInfo};
use super::policy::Policy;
use super::store::{Key, Kind, Store, StoredPolicy};

pub type Shared = Arc<Mutex<Store>>;

/// Aborts the watches when dropped (NetworkPolicy turned off, or the agent stopping).
pub struct Watches(Vec<JoinHandle<()>>);

impl Drop for Watches {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

pub fn start(client: &Client, store: &Shared, notify: &Arc<Notify>) -> Watches {
    let pods: Api<Pod> = Api::all(client.clone());
    // Host-network pods have their node's address and are never policed nor peers.
    let pod_cfg = watcher::Config::default().fields("spec.hostNetwork=false");
    let nss: Api<Namespace> = Api::all(client.clone());
    let ar = ApiResource::erase::<NetworkPolicy>(&());
    let pols: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let cfg = watcher::Config::default;
    Watches(vec![
        spawn(pods, pod_cfg, store, notify, Kind::Pods, pod_entry),
        spawn(nss, cfg(), store, notify, Kind::Namespaces, ns_entry),
        spawn(pols, cfg(), store, notify, Kind::Policies, policy_entry),
    ])
}

/// What one object contributes: its key and, unless it is to be forgotten, its entry.
enum Entry {
    Pod(Key, Option<PodInfo>),
    Namespace(String, Option<super::selector::Labels>),
    Policy(Key, Option<StoredPolicy>),
}

fn spawn<K>(
    api: Api<K>,
    cfg: watcher::Config,
    store: &Shared,
    notify: &Arc<Notify>,
    kind: Kind,
    entry: fn(&K) -> Option<Entry>,
) -> JoinHandle<()>
where
    K: kube::Resource + Clone + std::fmt::Debug + Send + serde::de::DeserializeOwned + 'static,
{
    let (store, notify) = (store.clone(), notify.clone());
    tokio::spawn(async move {
        let stream = watcher::watcher(api, cfg).default_backoff();
        let mut stream = std::pin::pin!(stream);
        let mut listing: Option<Vec<Entry>> = None;
        while let Some(item) = stream.next().await {
            let event = match item {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(?kind, error = %e, "NetworkPolicy watch failed; rules kept, retrying");
                    continue;
                }
            };
            match event {
                Event::Init => listing = Some(Vec::new()),
                Event::InitApply(o) => listing.get_or_insert_with(Vec::new).extend(entry(&o)),
                Event::InitDone => {
                    let mut s = lock(&store);
                    replace_all(&mut s, kind, listing.take().unwrap_or_default());
                    s.mark_synced(kind);
                    drop(s);
                    notify.notify_one();
                }
                Event::Apply(o) => update(&store, &notify, entry(&o)),
                Event::Delete(o) => update(&store, &notify, entry(&o).map(forget)),
            }
        }
    })
}

fn lock(store: &Shared) -> std::sync::MutexGuard<'_, Store> {
    // A panic while holding it cannot leave the maps half-updated in a way that matters:
    // the next relist replaces them.
    store.lock().unwrap_or_else(|e| e.into_inner())
}

fn forget(e: Entry) -> Entry {
    match e {
        Entry::Pod(k, _) => Entry::Pod(k, None),
        Entry::Namespace(k, _) => Entry::Namespace(k, None),
        Entry::Policy(k, _) => Entry::Policy(k, None),
    }
}

fn update(store: &Shared, notify: &Notify, e: Option<Entry>) {
    let Some(e) = e else { return };
    let mut s = lock(store);
    let changed = apply(&mut s, e);
    if changed {
        s.touch();
        drop(s);
        notify.notify_one();
    }
}

/// Puts one entry in; returns whether anything changed (a Pod's status heartbeat does not).
fn apply(s: &mut Store, e: Entry) -> bool {
    match e {
        Entry::Pod(k, v) => set(&mut s.pods, k, v),
        Entry::Namespace(k, v) => set(&mut s.namespaces, k, v),
        Entry::Policy(k, v) => {
            // Policies carry versions; any new version is a change.
            match v {
                Some(v) => {
                    s.policies.insert(k, v);
                    true
                }
                None => s.policies.remove(&k).is_some(),
            }
        }
    }
}

fn set<K: Ord, V: PartialEq>(m: &mut BTreeMap<K, V>, k: K, v: Option<V>) -> bool {
    match v {
        Some(v) => {
            if m.get(&k) == Some(&v) {
                return false;
            }
            m.insert(k, v);
            true
        }
        None => m.remove(&k).is_some(),
    }
}

fn replace_all(s: &mut Store, kind: Kind, entries: Vec<Entry>) {
    match kind {
        Kind::Pods => s.pods.clear(),
        Kind::Namespaces => s.namespaces.clear(),
        Kind::Policies => s.policies.clear(),
    }
    for e in entries {
        apply(s, e);
    }
}

fn pod_entry(p: &Pod) -> Option<Entry> {
    let key = (p.metadata.namespace.clone()?, p.metadata.name.clone()?);
    Some(Entry::Pod(key, PodInfo::from_pod(p)))
}

fn ns_entry(n: &Namespace) -> Option<Entry> {
    let (name, labels) = namespace_labels(n)?;
    Some(Entry::Namespace(name, Some(labels)))
}

fn policy_entry(o: &DynamicObject) -> Option<Entry> {
    let (ns, name) = (o.metadata.namespace.clone()?, o.metadata.name.clone()?);
    let spec = o.data.get("spec");
    let parsed = match spec {
        Some(spec) => Policy::parse(&ns, &name, spec),
        None => Err(super::policy::PolicyError::invalid("spec", "is required")),
    };
    let (policy, error) = match parsed {
        Ok(p) => (p, None),
        Err(e) => (Policy::deny_all_fallback(&ns, &name, spec), Some(e)),
    };
    let stored = StoredPolicy {
        policy,
        error,
        version: o.metadata.resource_version.clone().unwrap_or_default(),
        uid: o.metadata.uid.clone(),
    };
    Some(Entry::Policy((ns, name), Some(stored)))
}

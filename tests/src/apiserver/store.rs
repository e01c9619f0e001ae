//! The object store: current objects in a persistent ordered map (cheap snapshots for paginated
//! lists), one global resourceVersion counter, a bounded event history for watch resumption, and
//! a broadcast channel fanning events out to every open watch.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;
use imbl::OrdMap;
use serde_json::Value;
use tokio::sync::broadcast;

use super::resources::{self, ResourceType};
use super::status::ApiError;

/// (resource id, namespace or "" for cluster-scoped, name): orders objects by type, then
/// namespace, then name, which is the order the apiserver lists in.
pub type Key = (u8, String, String);
pub type Objects = OrdMap<Key, Arc<StoredObject>>;

/// One object as stored: its canonical JSON plus what selectors need, so that lists and watches
/// never re-serialize and selectors never re-parse.
#[derive(Debug)]
pub struct StoredObject {
    pub res: u8,
    pub namespace: String,
    pub name: String,
    pub rv: u64,
    pub labels: BTreeMap<String, String>,
    pub fields: Vec<(&'static str, String)>,
    pub json: Bytes,
}

impl StoredObject {
    /// Builds the stored form; `v` must already carry its final metadata (including
    /// `resourceVersion`).
    pub fn from_value(rt: &'static ResourceType, v: &Value) -> Result<Self, String> {
        let meta = v.get("metadata").ok_or("object has no metadata")?;
        let name = meta
            .get("name")
            .and_then(Value::as_str)
            .ok_or("object has no metadata.name")?
            .to_string();
        let namespace = meta
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let rv = meta
            .get("resourceVersion")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok())
            .ok_or("object has no numeric metadata.resourceVersion")?;
        let mut labels = BTreeMap::new();
        if let Some(Value::Object(m)) = meta.get("labels") {
            for (k, val) in m {
                if let Some(s) = val.as_str() {
                    labels.insert(k.clone(), s.to_string());
                }
            }
        }
        let fields = rt
            .field_labels
            .iter()
            .map(|l| (*l, resources::field_value(rt, v, l)))
            .collect();
        let json = serde_json::to_vec(v).map_err(|e| e.to_string())?;
        Ok(StoredObject {
            res: rt.id,
            namespace,
            name,
            rv,
            labels,
            fields,
            json: Bytes::from(json),
        })
    }

    pub fn key(&self) -> Key {
        (self.res, self.namespace.clone(), self.name.clone())
    }

    pub fn resource(&self) -> &'static ResourceType {
        resources::by_id(self.res)
    }

    /// The object as a JSON value (its bytes were produced by serde_json, so parsing succeeds).
    pub fn value(&self) -> Value {
        serde_json::from_slice(&self.json).unwrap_or(Value::Null)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One committed change. `prev` lets a filtered watch turn a MODIFIED into ADDED/DELETED when an
/// object starts or stops matching its selector, as the apiserver does.
#[derive(Debug)]
pub struct WatchEvent {
    pub rv: u64,
    pub kind: EventType,
    pub obj: Arc<StoredObject>,
    pub prev: Option<Arc<StoredObject>>,
}

/// What a mutation closure decides, given the current object (if any).
pub enum Change {
    Put(Value),
    Delete,
}

#[derive(Debug, Clone)]
pub struct StoreLimits {
    pub history_max_events: usize,
    pub history_max_bytes: usize,
    pub broadcast_capacity: usize,
    pub snapshots_kept: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits {
            history_max_events: 20_000,
            history_max_bytes: 128 << 20,
            broadcast_capacity: 16_384,
            snapshots_kept: 16,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeError {
    /// The history no longer reaches back to the requested version.
    TooOld { oldest: u64 },
    /// The requested version is newer than anything committed.
    TooLarge { current: u64 },
}

struct Inner {
    objects: Objects,
    rv: u64,
    history: VecDeque<Arc<WatchEvent>>,
    history_bytes: usize,
    /// Every event with rv > history_start is in `history`: resuming from any rv >= this works.
    history_start: u64,
    snapshots: VecDeque<(u64, Objects)>,
    /// Bumped on every commit; the persister compares it with what it last wrote.
    generation: u64,
}

pub struct Store {
    inner: RwLock<Inner>,
    tx: broadcast::Sender<Arc<WatchEvent>>,
    limits: StoreLimits,
}

/// A consistent starting point for a watch: either the objects at `rv` (for initial events), or
/// the events after the requested version; plus a receiver that continues exactly after it.
pub struct Subscription {
    pub rv: u64,
    pub snapshot: Option<Objects>,
    pub backlog: Vec<Arc<WatchEvent>>,
    pub rx: broadcast::Receiver<Arc<WatchEvent>>,
}

impl Store {
    pub fn new(limits: StoreLimits) -> Self {
        let (tx, _) = broadcast::channel(limits.broadcast_capacity.max(16));
        Store {
            inner: RwLock::new(Inner {
                objects: OrdMap::new(),
                rv: 0,
                history: VecDeque::new(),
                history_bytes: 0,
                history_start: 0,
                snapshots: VecDeque::new(),
                generation: 0,
            }),
            tx,
            limits,
        }
    }

    // A panic while holding the lock cannot leave the map half-updated (imbl updates are
    // atomic), so a poisoned lock is safe to keep using.
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces everything with persisted state; history starts empty at `rv`.
    pub fn load(&self, rv: u64, objects: Vec<StoredObject>) {
        let mut g = self.write();
        g.objects = objects
            .into_iter()
            .map(|o| (o.key(), Arc::new(o)))
            .collect();
        g.rv = rv;
        g.history.clear();
        g.history_bytes = 0;
        g.history_start = rv;
        g.snapshots.clear();
    }

    pub fn current_rv(&self) -> u64 {
        self.read().rv
    }

    pub fn history_start(&self) -> u64 {
        self.read().history_start
    }

    pub fn len(&self) -> usize {
        self.read().objects.len()
    }

    pub fn get(&self, key: &Key) -> Option<Arc<StoredObject>> {
        self.read().objects.get(key).cloned()
    }

    /// The current objects and the version they are at (O(1): the map is persistent).
    pub fn snapshot(&self) -> (u64, Objects) {
        let g = self.read();
        (g.rv, g.objects.clone())
    }

    /// A snapshot kept for a paginated list at `rv`, if still retained.
    pub fn snapshot_at(&self, rv: u64) -> Option<Objects> {
        let g = self.read();
        g.snapshots
            .iter()
            .find(|(r, _)| *r == rv)
            .map(|(_, m)| m.clone())
    }

    /// Keeps `objects` (the state at `rv`) so continue tokens for it can be served consistently.
    pub fn remember_snapshot(&self, rv: u64, objects: &Objects) {
        let mut g = self.write();
        if g.snapshots.iter().any(|(r, _)| *r == rv) {
            return;
        }
        g.snapshots.push_back((rv, objects.clone()));
        while g.snapshots.len() > self.limits.snapshots_kept {
            g.snapshots.pop_front();
        }
    }

    /// Forgets all history and pagination snapshots: resuming any version older than the current
    /// one now fails with 410, as after an etcd compaction.
    pub fn compact(&self) -> u64 {
        let mut g = self.write();
        g.history.clear();
        g.history_bytes = 0;
        g.history_start = g.rv;
        g.snapshots.clear();
        g.rv
    }

    /// Everything needed to persist the state.
    pub fn dump(&self) -> (u64, u64, Vec<Arc<StoredObject>>) {
        let g = self.read();
        (g.rv, g.generation, g.objects.values().cloned().collect())
    }

    /// Atomically reads the object at `key`, lets `f` decide the change, then commits it with the
    /// next resourceVersion and publishes the event. A `Put` equal to the current object is a
    /// no-op that keeps the version, as in the apiserver.
    pub fn mutate<F>(&self, key: Key, f: F) -> Result<Arc<StoredObject>, ApiError>
    where
        F: FnOnce(Option<&Value>) -> Result<Change, ApiError>,
    {
        let rt = resources::by_id(key.0);
        let mut g = self.write();
        let old = g.objects.get(&key).cloned();
        let old_value = old.as_ref().map(|o| o.value());
        let change = f(old_value.as_ref())?;
        let next = g.rv + 1;
        let (kind, obj) = match change {
            Change::Put(mut v) => {
                if let (Some(o), Some(ov)) = (&old, &old_value) {
                    if *ov == v {
                        return Ok(o.clone());
                    }
                }
                v["metadata"]["resourceVersion"] = Value::String(next.to_string());
                let obj = StoredObject::from_value(rt, &v).map_err(ApiError::internal)?;
                if obj.key() != key {
                    return Err(ApiError::internal(
                        "emulator bug: mutation changed the object's identity",
                    ));
                }
                let kind = if old.is_some() {
                    EventType::Modified
                } else {
                    EventType::Added
                };
                (kind, Arc::new(obj))
            }
            Change::Delete => {
                let Some(mut v) = old_value else {
                    return Err(ApiError::not_found(rt, &key.2));
                };
                // The DELETED event carries the deletion's version, like the apiserver's.
                v["metadata"]["resourceVersion"] = Value::String(next.to_string());
                let obj = StoredObject::from_value(rt, &v).map_err(ApiError::internal)?;
                (EventType::Deleted, Arc::new(obj))
            }
        };
        g.rv = next;
        g.generation += 1;
        match kind {
            EventType::Deleted => {
                g.objects.remove(&key);
            }
            _ => {
                g.objects.insert(key, obj.clone());
            }
        }
        let ev = Arc::new(WatchEvent {
            rv: next,
            kind,
            obj: obj.clone(),
            prev: old,
        });
        g.history_bytes += ev.obj.json.len();
        g.history.push_back(ev.clone());
        while g.history.len() > self.limits.history_max_events
            || g.history_bytes > self.limits.history_max_bytes
        {
            let Some(dropped) = g.history.pop_front() else {
                break;
            };
            g.history_bytes -= dropped.obj.json.len();
            g.history_start = dropped.rv;
        }
        // Sent under the lock, so every receiver sees events in resourceVersion order and a
        // subscription taken under the lock misses none.
        let _ = self.tx.send(ev);
        Ok(obj)
    }

    /// Subscribes with the current objects as the starting point (watch without a version, or
    /// `sendInitialEvents`).
    pub fn subscribe_snapshot(&self) -> Subscription {
        let g = self.read();
        Subscription {
            rv: g.rv,
            snapshot: Some(g.objects.clone()),
            backlog: Vec::new(),
            rx: self.tx.subscribe(),
        }
    }

    /// Subscribes to every event after `rv`.
    pub fn subscribe_from(&self, rv: u64) -> Result<Subscription, ResumeError> {
        let g = self.read();
        if rv < g.history_start {
            return Err(ResumeError::TooOld {
                oldest: g.history_start,
            });
        }
        if rv > g.rv {
            return Err(ResumeError::TooLarge { current: g.rv });
        }
        let first = g.history.partition_point(|e| e.rv <= rv);
        Ok(Subscription {
            rv,
            snapshot: None,
            backlog: g.history.range(first..).cloned().collect(),
            rx: self.tx.subscribe(),
        })
    }
}

/// Objects of one resource (and namespace, if given) in key order, starting after `after`.
pub fn range<'a>(
    objects: &'a Objects,
    res: u8,
    namespace: Option<&'a str>,
    after: Option<Key>,
) -> impl Iterator<Item = &'a Arc<StoredObject>> + 'a {
    let lower = match after {
        Some(k) => Bound::Excluded(k),
        None => Bound::Included((res, namespace.unwrap_or("").to_string(), String::new())),
    };
    objects
        .range((lower, Bound::Unbounded))
        .take_while(move |(k, _)| k.0 == res && namespace.is_none_or(|ns| k.1 == ns))
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::{CONFIGMAPS, NODES};
    use serde_json::json;

    fn node(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"a": "b"}}})
    }

    fn put(store: &Store, name: &str) -> Arc<StoredObject> {
        let v = node(name);
        store
            .mutate((NODES.id, String::new(), name.into()), |_| {
                Ok(Change::Put(v))
            })
            .unwrap()
    }

    #[test]
    fn versions_increase_and_noop_keeps_version() {
        let s = Store::new(StoreLimits::default());
        let a = put(&s, "a");
        let b = put(&s, "b");
        assert_eq!((a.rv, b.rv), (1, 2));
        // Same content again (the closure returns the current object): no new version.
        let same = s
            .mutate((NODES.id, String::new(), "a".into()), |cur| {
                Ok(Change::Put(cur.cloned().unwrap_or(Value::Null)))
            })
            .unwrap();
        assert_eq!(same.rv, 1);
        assert_eq!(s.current_rv(), 2);
        assert_eq!(a.labels.get("a").map(String::as_str), Some("b"));
    }

    #[test]
    fn resume_and_compaction() {
        let s = Store::new(StoreLimits {
            history_max_events: 3,
            ..StoreLimits::default()
        });
        for n in ["a", "b", "c", "d", "e"] {
            put(&s, n);
        }
        // History keeps events 3..=5, so resuming from 2 works and from 1 does not.
        let sub = s.subscribe_from(2).unwrap();
        assert_eq!(
            sub.backlog.iter().map(|e| e.rv).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        assert_eq!(
            s.subscribe_from(1).err(),
            Some(ResumeError::TooOld { oldest: 2 })
        );
        assert_eq!(
            s.subscribe_from(9).err(),
            Some(ResumeError::TooLarge { current: 5 })
        );
        s.compact();
        assert!(s.subscribe_from(4).is_err());
        assert!(s.subscribe_from(5).unwrap().backlog.is_empty());
    }

    #[test]
    fn delete_event_carries_new_version() {
        let s = Store::new(StoreLimits::default());
        put(&s, "a");
        let mut sub = s.subscribe_from(1).unwrap();
        let gone = s
            .mutate((NODES.id, String::new(), "a".into()), |_| {
                Ok(Change::Delete)
            })
            .unwrap();
        assert_eq!(gone.rv, 2);
        let ev = sub.rx.try_recv().unwrap();
        assert_eq!(ev.kind, EventType::Deleted);
        assert_eq!(ev.prev.as_ref().map(|p| p.rv), Some(1));
        let missing = s.mutate((NODES.id, String::new(), "a".into()), |_| {
            Ok(Change::Delete)
        });
        assert_eq!(missing.err().map(|e| e.code), Some(404));
    }

    #[test]
    fn range_by_namespace() {
        let s = Store::new(StoreLimits::default());
        for (ns, n) in [("a", "x"), ("b", "y"), ("b", "z"), ("c", "w")] {
            let v = json!({"metadata": {"name": n, "namespace": ns}});
            s.mutate((CONFIGMAPS.id, ns.into(), n.into()), |_| Ok(Change::Put(v)))
                .unwrap();
        }
        put(&s, "node");
        let (_, snap) = s.snapshot();
        let names = |ns: Option<&str>, after: Option<Key>| -> Vec<String> {
            range(&snap, CONFIGMAPS.id, ns, after)
                .map(|o| o.name.clone())
                .collect()
        };
        assert_eq!(names(None, None), ["x", "y", "z", "w"]);
        assert_eq!(names(Some("b"), None), ["y", "z"]);
        assert_eq!(
            names(Some("b"), Some((CONFIGMAPS.id, "b".into(), "y".into()))),
            ["z"]
        );
        assert_eq!(range(&snap, NODES.id, None, None).count(), 1);
    }
}

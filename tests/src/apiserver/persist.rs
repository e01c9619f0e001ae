//! State file: every object plus the resourceVersion counter, written atomically
//! (temp file, fsync, rename) so a crash leaves either the old or the new state.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use std::fmt;

use super::resources;
use super::store::StoredObject;

pub const STATE_FILE: &str = "state.json";

/// `{"resourceVersion":"N","objects":[{"resource":"v1/nodes","object":{…}},…]}`, assembled from
/// the stored bytes without re-serializing each object.
pub fn encode(rv: u64, objects: &[Arc<StoredObject>]) -> Vec<u8> {
    let total: usize = objects.iter().map(|o| o.json.len() + 48).sum();
    let mut out = Vec::with_capacity(total + 64);
    out.extend_from_slice(format!("{{\"resourceVersion\":\"{rv}\",\"objects\":[").as_bytes());
    for (i, o) in objects.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'\n');
        out.extend_from_slice(
            format!(
                "{{\"resource\":\"{}\",\"object\":",
                o.resource().storage_name()
            )
            .as_bytes(),
        );
        out.extend_from_slice(&o.json);
        out.push(b'}');
    }
    out.extend_from_slice(b"\n]}\n");
    out
}

#[derive(serde::Deserialize)]
struct Entry {
    resource: String,
    object: Value,
}

/// Streams the `objects` array, converting each entry as it is read: a 50 MB state file never
/// exists as one JSON tree in memory (which would cost several times its size).
struct ObjectsSeed;

impl<'de> DeserializeSeed<'de> for ObjectsSeed {
    type Value = Vec<StoredObject>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ObjectsSeed {
    type Value = Vec<StoredObject>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of {resource, object} entries")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(e) = seq.next_element::<Entry>()? {
            let i = out.len();
            let rt = resources::lookup_storage_name(&e.resource).ok_or_else(|| {
                de::Error::custom(format!("object {i}: unknown resource {:?}", e.resource))
            })?;
            let stored = StoredObject::from_value(rt, &e.object)
                .map_err(|m| de::Error::custom(format!("object {i}: {m}")))?;
            out.push(stored);
        }
        Ok(out)
    }
}

struct StateVisitor;

impl<'de> Visitor<'de> for StateVisitor {
    type Value = (u64, Vec<StoredObject>);

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an emulator state object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut rv, mut objects) = (None, None);
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "resourceVersion" => {
                    let s: String = map.next_value()?;
                    rv = Some(s.parse::<u64>().map_err(|_| {
                        de::Error::custom(format!("resourceVersion {s:?} is not a number"))
                    })?);
                }
                "objects" => objects = Some(map.next_value_seed(ObjectsSeed)?),
                _ => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        Ok((
            rv.ok_or_else(|| de::Error::missing_field("resourceVersion"))?,
            objects.ok_or_else(|| de::Error::missing_field("objects"))?,
        ))
    }
}

pub fn decode(bytes: &[u8]) -> Result<(u64, Vec<StoredObject>), String> {
    let mut d = serde_json::Deserializer::from_slice(bytes);
    let (rv, objects) = d.deserialize_map(StateVisitor).map_err(|e| e.to_string())?;
    d.end().map_err(|e| e.to_string())?;
    if let Some(o) = objects.iter().find(|o| o.rv > rv) {
        return Err(format!(
            "{} {:?} has resourceVersion {} beyond the counter {rv}",
            o.resource().kind,
            o.name,
            o.rv
        ));
    }
    Ok((rv, objects))
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut f = fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::{CONFIGMAPS, NETWORK_POLICIES, NODES};
    use serde_json::json;

    #[test]
    fn round_trip() {
        let n = StoredObject::from_value(
            &NODES,
            &json!({"metadata": {"name": "n1", "resourceVersion": "3"}}),
        )
        .unwrap();
        let c = StoredObject::from_value(
            &CONFIGMAPS,
            &json!({"metadata": {"name": "c", "namespace": "kube-system", "resourceVersion": "7"}, "data": {"k": "v"}}),
        )
        .unwrap();
        let np = StoredObject::from_value(
            &NETWORK_POLICIES,
            &json!({"metadata": {"name": "deny", "namespace": "a", "resourceVersion": "8"},
                    "spec": {"podSelector": {}}}),
        )
        .unwrap();
        let bytes = encode(9, &[Arc::new(n), Arc::new(c), Arc::new(np)]);
        assert!(String::from_utf8_lossy(&bytes)
            .contains("\"resource\":\"networking.k8s.io/v1/networkpolicies\""));
        let (rv, objs) = decode(&bytes).unwrap();
        assert_eq!(rv, 9);
        assert_eq!(objs.len(), 3);
        assert_eq!(objs[1].namespace, "kube-system");
        assert_eq!(objs[1].value()["data"]["k"], "v");
        assert_eq!(
            (objs[2].resource().kind, objs[2].namespace.as_str()),
            ("NetworkPolicy", "a")
        );
        let err = decode(
            b"{\"resourceVersion\":\"1\",\"objects\":[{\"resource\":\"v1/services\",\"object\":{}}]}",
        )
        .unwrap_err();
        assert!(err.contains("unknown resource"), "{err}");
        let ahead = StoredObject::from_value(
            &NODES,
            &json!({"metadata": {"name": "x", "resourceVersion": "3"}}),
        )
        .unwrap();
        let err = decode(&encode(2, &[Arc::new(ahead)])).unwrap_err();
        assert!(err.contains("beyond the counter"), "{err}");
        assert!(decode(b"{\"objects\":[]}").is_err());
        assert!(decode(b"{\"resourceVersion\":\"1\",\"objects\":[]} trailing").is_err());
    }
}

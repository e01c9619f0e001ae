//! State file: every object plus the resourceVersion counter, written atomically
//! (temp file, fsync, rename) so a crash leaves either the old or the new state.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

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

pub fn decode(bytes: &[u8]) -> Result<(u64, Vec<StoredObject>), String> {
    let doc: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let rv = doc
        .get("resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or("missing resourceVersion")?;
    let mut objects = Vec::new();
    for (i, entry) in doc
        .get("objects")
        .and_then(Value::as_array)
        .ok_or("missing objects")?
        .iter()
        .enumerate()
    {
        let name = entry
            .get("resource")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("object {i}: missing resource"))?;
        let rt = resources::lookup_storage_name(name)
            .ok_or_else(|| format!("object {i}: unknown resource {name:?}"))?;
        let obj = entry
            .get("object")
            .ok_or_else(|| format!("object {i}: missing object"))?;
        let stored = StoredObject::from_value(rt, obj).map_err(|e| format!("object {i}: {e}"))?;
        if stored.rv > rv {
            return Err(format!(
                "object {i} has resourceVersion {} beyond the counter {rv}",
                stored.rv
            ));
        }
        objects.push(stored);
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
    use crate::apiserver::resources::{CONFIGMAPS, NODES};
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
        let bytes = encode(9, &[Arc::new(n), Arc::new(c)]);
        let (rv, objs) = decode(&bytes).unwrap();
        assert_eq!(rv, 9);
        assert_eq!(objs.len(), 2);
        assert_eq!(objs[1].namespace, "kube-system");
        assert_eq!(objs[1].value()["data"]["k"], "v");
        assert!(decode(
            b"{\"resourceVersion\":\"1\",\"objects\":[{\"resource\":\"v1/pods\",\"object\":{}}]}"
        )
        .is_err());
    }
}

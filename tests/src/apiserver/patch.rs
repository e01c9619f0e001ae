//! The three patch formats the apiserver accepts besides server-side apply:
//! JSON merge patch (RFC 7386), strategic merge patch (Kubernetes), JSON patch (RFC 6902).
//! All pure functions over `serde_json::Value`.

use serde_json::{Map, Value};

/// RFC 7386: objects merge recursively, `null` deletes, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// How a list field merges under a strategic merge patch (from the Go types' `patchStrategy`
/// and `patchMergeKey` tags); lists not named here are replaced wholesale.
#[derive(Debug, Clone, Copy, PartialEq)]
enum ListStrategy {
    /// Items are objects matched by this key.
    MergeByKey(&'static str),
    /// Items are scalars merged as a set.
    MergeScalars,
}

/// The list strategy of the field at `path`, by field name: the served kinds (Node, Pod,
/// DaemonSet's pod template, ConfigMap, Events, Namespace, RBAC) never use one name for two
/// lists with different merge keys, so the name is enough. From the Go types' tags, e.g.
/// `Containers []Container patchStrategy:"merge" patchMergeKey:"name"`.
fn list_strategy(path: &[String]) -> Option<ListStrategy> {
    use ListStrategy::{MergeByKey, MergeScalars};
    let last = path.last().map(String::as_str)?;
    let in_metadata = path.len() == 2 && path[0] == "metadata";
    match last {
        "conditions" | "addresses" => Some(MergeByKey("type")),
        "ownerReferences" if in_metadata => Some(MergeByKey("uid")),
        "finalizers" if in_metadata => Some(MergeScalars),
        "podCIDRs" => Some(MergeScalars),
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims"
        | "schedulingGates" => Some(MergeByKey("name")),
        "volumeMounts" => Some(MergeByKey("mountPath")),
        "volumeDevices" => Some(MergeByKey("devicePath")),
        "ports" => Some(MergeByKey("containerPort")),
        "hostAliases" | "podIPs" | "hostIPs" => Some(MergeByKey("ip")),
        "topologySpreadConstraints" => Some(MergeByKey("topologyKey")),
        _ => None,
    }
}

/// Strategic merge patch: like a merge patch, but known lists merge item-wise, and the
/// `$patch` / `$deleteFromPrimitiveList` / `$setElementOrder` / `$retainKeys` directives apply.
pub fn strategic_merge_patch(target: &mut Value, patch: &Value) -> Result<(), String> {
    smp_object(target, patch, &mut Vec::new())
}

fn smp_object(target: &mut Value, patch: &Value, path: &mut Vec<String>) -> Result<(), String> {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return Ok(());
    };
    match p.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut clean = p.clone();
            clean.remove("$patch");
            *target = Value::Object(clean);
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Null;
            return Ok(());
        }
        Some(other) if other != "merge" => {
            return Err(format!(
                "unknown patch type {other:?} at {}",
                path.join(".")
            ));
        }
        _ => {}
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else {
        return Ok(());
    };
    if let Some(Value::Array(keep)) = p.get("$retainKeys") {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        t.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (k, v) in p {
        if k == "$patch" || k == "$retainKeys" || k.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(items)), Value::Array(del)) = (t.get_mut(field), v) {
                items.retain(|x| !del.contains(x));
            }
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        path.push(k.clone());
        let slot = t.entry(k.clone()).or_insert(Value::Null);
        let res = match v {
            Value::Object(_) => smp_object(slot, v, path),
            Value::Array(items) => smp_list(slot, items, list_strategy(path), path),
            _ => {
                *slot = v.clone();
                Ok(())
            }
        };
        path.pop();
        res?;
        // `$patch: delete` on a map removes the key itself.
        if t.get(k).is_some_and(Value::is_null) {
            t.remove(k);
        }
    }
    Ok(())
}

fn smp_list(
    target: &mut Value,
    items: &[Value],
    strategy: Option<ListStrategy>,
    path: &mut Vec<String>,
) -> Result<(), String> {
    let replace_all = items
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"));
    match strategy {
        Some(ListStrategy::MergeByKey(key)) if !replace_all => {
            if !target.is_array() {
                *target = Value::Array(Vec::new());
            }
            let Value::Array(cur) = target else {
                return Ok(());
            };
            for item in items {
                let Some(id) = item.get(key).cloned() else {
                    // An item without its merge key cannot be matched: append it as given.
                    cur.push(item.clone());
                    continue;
                };
                let pos = cur.iter().position(|c| c.get(key) == Some(&id));
                let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                match (pos, delete) {
                    (Some(i), true) => {
                        cur.remove(i);
                    }
                    (None, true) => {}
                    // Items merge strategically too: a container's env and volumeMounts
                    // merge by their own keys.
                    (Some(i), false) => smp_object(&mut cur[i], item, path)?,
                    (None, false) => {
                        let mut fresh = Value::Null;
                        smp_object(&mut fresh, item, path)?;
                        cur.push(fresh);
                    }
                }
            }
        }
        Some(ListStrategy::MergeScalars) if !replace_all => {
            if !target.is_array() {
                *target = Value::Array(Vec::new());
            }
            let Value::Array(cur) = target else {
                return Ok(());
            };
            for item in items {
                if !cur.contains(item) {
                    cur.push(item.clone());
                }
            }
        }
        _ => {
            let kept: Vec<Value> = items
                .iter()
                .filter(|i| i.get("$patch").is_none())
                .cloned()
                .collect();
            *target = Value::Array(kept);
        }
    }
    Ok(())
}

/// RFC 6902 JSON patch; atomic: on error `target` is left unchanged.
pub fn json_patch(target: &mut Value, ops: &Value) -> Result<(), String> {
    let Value::Array(ops) = ops else {
        return Err("a JSON patch must be an array of operations".into());
    };
    let mut doc = target.clone();
    for (i, op) in ops.iter().enumerate() {
        apply_op(&mut doc, op).map_err(|e| format!("JSON patch operation {i}: {e}"))?;
    }
    *target = doc;
    Ok(())
}

fn str_field<'a>(op: &'a Value, name: &str) -> Result<&'a str, String> {
    op.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing string field {name:?}"))
}

fn apply_op(doc: &mut Value, op: &Value) -> Result<(), String> {
    let path = str_field(op, "path")?;
    match str_field(op, "op")? {
        "add" => add(doc, path, value_of(op)?),
        "remove" => remove(doc, path).map(|_| ()),
        "replace" => {
            let slot = pointer_mut(doc, path)?;
            *slot = value_of(op)?;
            Ok(())
        }
        "move" => {
            let from = str_field(op, "from")?;
            let v = remove(doc, from)?;
            add(doc, path, v)
        }
        "copy" => {
            let from = str_field(op, "from")?;
            let v = doc
                .pointer(from)
                .cloned()
                .ok_or_else(|| format!("path {from:?} does not exist"))?;
            add(doc, path, v)
        }
        "test" => {
            let want = value_of(op)?;
            match doc.pointer(path) {
                Some(v) if *v == want => Ok(()),
                _ => Err(format!("test failed at {path:?}")),
            }
        }
        other => Err(format!("unknown operation {other:?}")),
    }
}

fn value_of(op: &Value) -> Result<Value, String> {
    op.get("value")
        .cloned()
        .ok_or_else(|| "missing field \"value\"".to_string())
}

fn split_pointer(path: &str) -> Result<(&str, String), String> {
    let idx = path
        .rfind('/')
        .ok_or_else(|| format!("invalid JSON pointer {path:?}"))?;
    let last = path[idx + 1..].replace("~1", "/").replace("~0", "~");
    Ok((&path[..idx], last))
}

fn pointer_mut<'a>(doc: &'a mut Value, path: &str) -> Result<&'a mut Value, String> {
    doc.pointer_mut(path)
        .ok_or_else(|| format!("path {path:?} does not exist"))
}

fn add(doc: &mut Value, path: &str, v: Value) -> Result<(), String> {
    if path.is_empty() {
        *doc = v;
        return Ok(());
    }
    let (parent, last) = split_pointer(path)?;
    match pointer_mut(doc, parent)? {
        Value::Object(m) => {
            m.insert(last, v);
            Ok(())
        }
        Value::Array(a) => {
            let i = if last == "-" {
                a.len()
            } else {
                last.parse::<usize>()
                    .map_err(|_| format!("invalid array index {last:?}"))?
            };
            if i > a.len() {
                return Err(format!("array index {i} out of bounds"));
            }
            a.insert(i, v);
            Ok(())
        }
        _ => Err(format!("parent of {path:?} is not a container")),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, last) = split_pointer(path)?;
    match pointer_mut(doc, parent)? {
        Value::Object(m) => m
            .remove(&last)
            .ok_or_else(|| format!("path {path:?} does not exist")),
        Value::Array(a) => {
            let i: usize = last
                .parse()
                .map_err(|_| format!("invalid array index {last:?}"))?;
            if i >= a.len() {
                return Err(format!("array index {i} out of bounds"));
            }
            Ok(a.remove(i))
        }
        _ => Err(format!("parent of {path:?} is not a container")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_rfc7386_examples() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut t, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(t, json!({"a": "z", "c": {"d": "e"}}));
        let mut t = json!({"a": [1, 2]});
        merge_patch(&mut t, &json!({"a": [3]}));
        assert_eq!(t, json!({"a": [3]}));
        let mut t = json!("x");
        merge_patch(&mut t, &json!({"a": {"b": null}}));
        assert_eq!(t, json!({"a": {}}));
    }

    #[test]
    fn strategic_merges_conditions_by_type() {
        let mut node = json!({"status": {"conditions": [
            {"type": "Ready", "status": "True"},
            {"type": "NetworkUnavailable", "status": "True", "reason": "NoRoute"}
        ], "images": [{"names": ["a"]}]}});
        strategic_merge_patch(
            &mut node,
            &json!({"status": {"conditions": [
                {"type": "NetworkUnavailable", "status": "False", "reason": "TrellisReady"},
                {"type": "MemoryPressure", "status": "False"}
            ], "images": [{"names": ["b"]}]}}),
        )
        .unwrap();
        let conds = &node["status"]["conditions"];
        assert_eq!(conds.as_array().map(Vec::len), Some(3));
        assert_eq!(conds[0], json!({"type": "Ready", "status": "True"}));
        assert_eq!(conds[1]["status"], "False");
        assert_eq!(conds[1]["reason"], "TrellisReady");
        assert_eq!(conds[2]["type"], "MemoryPressure");
        // Lists without a merge strategy are replaced.
        assert_eq!(node["status"]["images"], json!([{"names": ["b"]}]));
    }

    #[test]
    fn strategic_directives() {
        let mut o = json!({"status": {"addresses": [
            {"type": "InternalIP", "address": "10.0.0.1"},
            {"type": "Hostname", "address": "n1"}
        ]}, "metadata": {"finalizers": ["a", "b"], "labels": {"x": "1", "y": "2"}}});
        strategic_merge_patch(
            &mut o,
            &json!({
                "status": {"addresses": [{"type": "Hostname", "$patch": "delete"}]},
                "metadata": {
                    "$deleteFromPrimitiveList/finalizers": ["a"],
                    "labels": {"$patch": "replace", "z": "3"},
                    "$setElementOrder/finalizers": ["b"]
                }
            }),
        )
        .unwrap();
        assert_eq!(
            o["status"]["addresses"],
            json!([{"type": "InternalIP", "address": "10.0.0.1"}])
        );
        assert_eq!(o["metadata"]["finalizers"], json!(["b"]));
        assert_eq!(o["metadata"]["labels"], json!({"z": "3"}));
        assert!(strategic_merge_patch(&mut o, &json!({"$patch": "bogus"})).is_err());
    }

    #[test]
    fn strategic_null_and_map_delete() {
        let mut o =
            json!({"metadata": {"annotations": {"a": "1", "b": "2"}}, "spec": {"x": {"y": 1}}});
        strategic_merge_patch(
            &mut o,
            &json!({"metadata": {"annotations": {"a": null}}, "spec": {"x": {"$patch": "delete"}}}),
        )
        .unwrap();
        assert_eq!(
            o,
            json!({"metadata": {"annotations": {"b": "2"}}, "spec": {}})
        );
    }

    #[test]
    fn strategic_merges_pod_template_lists_by_their_keys() {
        let mut ds = json!({"spec": {"template": {"spec": {
            "containers": [{"name": "a", "image": "i:1",
                            "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}],
                            "volumeMounts": [{"name": "v", "mountPath": "/v"}],
                            "ports": [{"containerPort": 80}]}],
            "volumes": [{"name": "v", "emptyDir": {}}, {"name": "w", "emptyDir": {}}]}}}});
        strategic_merge_patch(
            &mut ds,
            &json!({"spec": {"template": {"spec": {
                "containers": [{"name": "a", "image": "i:2",
                                "env": [{"name": "Y", "value": "3"}, {"name": "X", "$patch": "delete"}],
                                "volumeMounts": [{"mountPath": "/w", "name": "w"}]}],
                "volumes": [{"name": "w", "$patch": "delete"}]}}}}),
        )
        .unwrap();
        let c = &ds["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["image"], "i:2");
        assert_eq!(c["env"], json!([{"name": "Y", "value": "3"}]));
        assert_eq!(c["volumeMounts"].as_array().map(Vec::len), Some(2));
        assert_eq!(c["ports"], json!([{"containerPort": 80}]));
        assert_eq!(
            ds["spec"]["template"]["spec"]["volumes"],
            json!([{"name": "v", "emptyDir": {}}])
        );
    }

    #[test]
    fn json_patch_ops() {
        let mut o = json!({"metadata": {"labels": {"a/b": "1"}}, "list": [1, 2]});
        json_patch(
            &mut o,
            &json!([
                {"op": "test", "path": "/metadata/labels/a~1b", "value": "1"},
                {"op": "add", "path": "/metadata/labels/c", "value": "2"},
                {"op": "remove", "path": "/metadata/labels/a~1b"},
                {"op": "add", "path": "/list/-", "value": 3},
                {"op": "replace", "path": "/list/0", "value": 0},
                {"op": "copy", "from": "/list/2", "path": "/three"},
                {"op": "move", "from": "/three", "path": "/moved"}
            ]),
        )
        .unwrap();
        assert_eq!(
            o,
            json!({"metadata": {"labels": {"c": "2"}}, "list": [0, 2, 3], "moved": 3})
        );
        let before = o.clone();
        let err = json_patch(
            &mut o,
            &json!([{"op": "add", "path": "/x", "value": 1}, {"op": "test", "path": "/x", "value": 2}]),
        );
        assert!(err.is_err());
        assert_eq!(o, before, "failed patch leaves the document unchanged");
    }
}

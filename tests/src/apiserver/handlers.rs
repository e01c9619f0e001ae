//! Handlers for get, list, create, update, patch and delete.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use hyper::Response;
use serde_json::{json, Value};

use super::deletion;
use super::fields;
use super::http::{self, Body};
use super::namespaces;
use super::patch;
use super::protobuf;
use super::resources::ResourceType;
use super::resources::{NAMESPACES, PODS};
use super::selector::{FieldSelector, LabelSelector};
use super::semantics::{self, Target};
use super::server::ServerState;
use super::status::ApiError;
use super::store::{self, Change, Key, StoredObject};
use super::table;
use super::tokens;
use super::util;

pub use super::watch::watch;

/// What a resource request names besides its object: the emulator, the resource type, the
/// namespace of the path (if any) and the query.
#[derive(Clone, Copy)]
pub struct Call<'a> {
    pub state: &'a Arc<ServerState>,
    pub rt: &'static ResourceType,
    pub ns: Option<&'a str>,
    pub q: &'a HashMap<String, String>,
}

pub fn target(rt: &ResourceType, sub: Option<&str>) -> Result<Target, ApiError> {
    match sub {
        None => Ok(Target::Main),
        Some("status") if rt.has_status => Ok(Target::Status),
        Some(_) => Err(ApiError::path_not_found()),
    }
}

fn key(rt: &ResourceType, ns: Option<&str>, name: &str) -> Key {
    (rt.id, ns.unwrap_or("").to_string(), name.to_string())
}

fn reject_dry_run(q: &HashMap<String, String>) -> Result<(), ApiError> {
    if q.get("dryRun").is_some_and(|v| !v.is_empty()) {
        return Err(ApiError::bad_request(
            "dryRun is not supported by the trellis API emulator",
        ));
    }
    Ok(())
}

/// `fieldValidation` of a write: Strict, Warn (the default) or Ignore.
fn field_validation(q: &HashMap<String, String>) -> Option<&str> {
    q.get("fieldValidation").map(String::as_str)
}

fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

pub struct Selectors {
    pub label: LabelSelector,
    pub field: FieldSelector,
}

impl Selectors {
    pub fn from_query(rt: &ResourceType, q: &HashMap<String, String>) -> Result<Self, ApiError> {
        let label = LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))
            .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
        let field = FieldSelector::parse(
            q.get("fieldSelector").map(String::as_str).unwrap_or(""),
            rt.field_labels,
        )
        .map_err(ApiError::bad_request)?;
        Ok(Selectors { label, field })
    }

    pub fn matches(&self, o: &StoredObject) -> bool {
        self.label.matches(&o.labels) && self.field.matches(&o.fields)
    }

    pub fn is_empty(&self) -> bool {
        self.label.is_empty() && self.field.is_empty()
    }
}

fn object_response(code: u16, rt: &ResourceType, o: &StoredObject, table: bool) -> Response<Body> {
    if table {
        let row = table::row(rt, &o.value(), util::unix_now());
        http::json(code, &table::table(rt, vec![row], o.rv, None))
    } else {
        http::json_bytes(code, o.json.clone())
    }
}

pub fn get(c: Call, name: &str, table: bool) -> Result<Response<Body>, ApiError> {
    let Call { state, rt, ns, .. } = c;
    let o = state
        .store
        .get(&key(rt, ns, name))
        .ok_or_else(|| ApiError::not_found(rt, name))?;
    Ok(object_response(200, rt, &o, table))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    v: String,
    rv: u64,
    start: String,
}

fn encode_continue(rv: u64, last: &StoredObject) -> String {
    let t = ContinueToken {
        v: "meta.k8s.io/v1".into(),
        rv,
        start: format!("{}/{}", last.namespace, last.name),
    };
    base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(&t).unwrap_or_default())
}

fn decode_continue(res: u8, s: &str) -> Result<(u64, Key), ApiError> {
    let bad = || ApiError::bad_request("continue key is not valid: malformed token");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|_| bad())?;
    let t: ContinueToken = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let (ns, name) = t.start.split_once('/').ok_or_else(bad)?;
    Ok((t.rv, (res, ns.to_string(), name.to_string())))
}

pub fn list(c: Call, table: bool) -> Result<Response<Body>, ApiError> {
    let Call { state, rt, ns, q } = c;
    let sel = Selectors::from_query(rt, q)?;
    let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
        None => None,
        Some(Ok(0)) => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => {
            return Err(ApiError::bad_request(
                "limit must be a non-negative integer",
            ))
        }
    };
    let (rv, objects, after) = match q.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let (rv, after) = decode_continue(rt.id, token)?;
            let snap = state.store.snapshot_at(rv).ok_or_else(|| {
                ApiError::expired(
                    "The provided continue parameter is too old to display a consistent list result. \
                     You can start a new list without the continue parameter.",
                )
            })?;
            (rv, snap, Some(after))
        }
        None => {
            let (current, snap) = state.store.snapshot();
            let requested = q.get("resourceVersion").filter(|s| !s.is_empty());
            if let Some(r) = requested {
                let r: u64 = r.parse().map_err(|_| {
                    ApiError::bad_request(format!("invalid resource version {r:?}"))
                })?;
                if r > current {
                    return Err(ApiError::timeout(format!(
                        "Too large resource version: {r}, current: {current}"
                    )));
                }
                let exact = q.get("resourceVersionMatch").map(String::as_str) == Some("Exact");
                if exact && r != current {
                    return Err(ApiError::expired(format!(
                        "too old resource version: {r} ({current})"
                    )));
                }
            }
            (current, snap, None)
        }
    };
    let mut items: Vec<&Arc<StoredObject>> = Vec::new();
    let mut more = false;
    let mut remaining = 0usize;
    // `metadata.name=X` (kubectl delete --wait, single-object informers) needs no scan.
    let pinned: Option<Arc<StoredObject>> = match sel.field.pinned_name() {
        Some(name) if after.is_none() && (ns.is_some() || !rt.namespaced) => {
            objects.get(&key(rt, ns, name)).cloned()
        }
        _ => None,
    };
    let scan_all =
        sel.field.pinned_name().is_none() || after.is_some() || (rt.namespaced && ns.is_none());
    let candidates: Box<dyn Iterator<Item = &Arc<StoredObject>>> = if scan_all {
        Box::new(store::range(&objects, rt.id, ns, after))
    } else {
        Box::new(pinned.iter())
    };
    for o in candidates.filter(|o| sel.matches(o)) {
        if limit.is_some_and(|l| items.len() >= l) {
            more = true;
            remaining += 1;
            if !sel.is_empty() {
                // The apiserver only counts the rest when no selector forces a full scan.
                break;
            }
        } else {
            items.push(o);
        }
    }
    let cont = match (more, items.last()) {
        (true, Some(last)) => {
            state.store.remember_snapshot(rv, &objects);
            Some(encode_continue(rv, last))
        }
        _ => None,
    };
    if table {
        let now = util::unix_now();
        let rows = items
            .iter()
            .map(|o| table::row(rt, &o.value(), now))
            .collect();
        return Ok(http::json(
            200,
            &table::table(rt, rows, rv, cont.as_deref()),
        ));
    }
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if let Some(c) = &cont {
        meta["continue"] = json!(c);
        if sel.is_empty() {
            meta["remainingItemCount"] = json!(remaining);
        }
    }
    // Assembled from the stored bytes: a 5000-node list is a memcpy, not 5000 serializations.
    let head = format!(
        "{{\"kind\":\"{}List\",\"apiVersion\":\"{}\",\"metadata\":{},\"items\":[",
        rt.kind,
        rt.api_version(),
        meta
    );
    let total: usize = items.iter().map(|o| o.json.len() + 1).sum::<usize>() + head.len() + 2;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(head.as_bytes());
    for (i, o) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&o.json);
    }
    out.extend_from_slice(b"]}");
    Ok(http::json_bytes(200, Bytes::from(out)))
}

/// Unknown fields refused or dropped as the request asks; kept as sent when the emulator
/// plays a newer apiserver that knows them.
fn unknown_fields(
    state: &ServerState,
    rt: &ResourceType,
    obj: &mut Value,
    q: &HashMap<String, String>,
) -> Result<(), ApiError> {
    if state.newer_api {
        return Ok(());
    }
    fields::check(rt, obj, field_validation(q))
}

pub fn create(c: Call, body: &[u8]) -> Result<Response<Body>, ApiError> {
    let Call { state, rt, ns, q } = c;
    reject_dry_run(q)?;
    let mut obj = parse_body(body)?;
    unknown_fields(state, rt, &mut obj, q)?;
    let obj = semantics::prepare_create(rt, ns, obj, util::unix_now())?;
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let obj_ns = obj["metadata"]["namespace"].as_str().unwrap_or_default();
    namespaces::admit_create(&state.store, state.namespaces, &state.ca_pem, rt, obj_ns)?;
    let stored = state.store.mutate(key(rt, ns, &name), |cur| match cur {
        Some(_) => Err(ApiError::already_exists(rt, &name)),
        None => Ok(Change::Put(obj)),
    })?;
    tracing::debug!(resource = rt.plural, name, rv = stored.rv, "created");
    if rt.id == NAMESPACES.id {
        namespaces::publish_root_ca(&state.store, &name, &state.ca_pem)?;
    }
    Ok(http::json_bytes(201, stored.json.clone()))
}

pub fn update(
    c: Call,
    name: &str,
    target: Target,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    let Call { state, rt, q, .. } = c;
    reject_dry_run(q)?;
    let mut new = parse_body(body)?;
    unknown_fields(state, rt, &mut new, q)?;
    replace(c, name, target, |_| Ok(new))
}

/// Stores, in place of the existing object, what `edit` makes of it (update and patch):
/// 404 when there is none, and the usual update checks against the old one.
fn replace(
    c: Call,
    name: &str,
    target: Target,
    edit: impl FnOnce(&Value) -> Result<Value, ApiError>,
) -> Result<Response<Body>, ApiError> {
    let Call { state, rt, ns, .. } = c;
    let stored = state.store.mutate(key(rt, ns, name), |cur| {
        let old = cur.ok_or_else(|| ApiError::not_found(rt, name))?;
        let new = edit(old)?;
        Ok(Change::Put(semantics::prepare_update(
            rt, target, old, new, name,
        )?))
    })?;
    Ok(http::json_bytes(200, stored.json.clone()))
}

/// The patch formats, by request content type.
fn apply_patch(content_type: &str, target: &mut Value, body: &[u8]) -> Result<(), ApiError> {
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if mime == "application/apply-patch+yaml" {
        return Err(ApiError::unsupported_media_type(
            "application/apply-patch+yaml (server-side apply is not emulated)",
        ));
    }
    let p = parse_body(body)?;
    match mime {
        "application/merge-patch+json" => {
            if !p.is_object() {
                return Err(ApiError::bad_request("a merge patch must be a JSON object"));
            }
            patch::merge_patch(target, &p);
            Ok(())
        }
        "application/strategic-merge-patch+json" => {
            if !p.is_object() {
                return Err(ApiError::bad_request(
                    "a strategic merge patch must be a JSON object",
                ));
            }
            patch::strategic_merge_patch(target, &p).map_err(ApiError::bad_request)
        }
        "application/json-patch+json" => {
            patch::json_patch(target, &p).map_err(ApiError::unprocessable)
        }
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

pub fn patch(
    c: Call,
    name: &str,
    target: Target,
    content_type: &str,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    let Call { state, rt, q, .. } = c;
    reject_dry_run(q)?;
    replace(c, name, target, |old| {
        let mut new = old.clone();
        apply_patch(content_type, &mut new, body)?;
        unknown_fields(state, rt, &mut new, q)?;
        Ok(new)
    })
}

pub fn delete(c: Call, name: &str, body: &[u8]) -> Result<Response<Body>, ApiError> {
    let Call { state, rt, ns, q } = c;
    reject_dry_run(q)?;
    let opts: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        parse_body(body)?
    };
    if rt.id == NAMESPACES.id {
        let stored = namespaces::delete(state, name)?;
        return Ok(http::json_bytes(200, stored.json.clone()));
    }
    let opts = deletion::Options::parse(&opts, q)?;
    let stored = deletion::delete(state, rt, ns, name, &opts)?;
    Ok(http::json_bytes(200, stored.json.clone()))
}

/// `POST .../serviceaccounts/NAME/token`: a TokenRequest for a stored ServiceAccount.
pub fn token_request(
    c: Call,
    name: &str,
    content_type: &str,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    let Call { state, rt, ns, .. } = c;
    // client-go's typed clients (`kubectl create token`) send this one as protobuf.
    let converted;
    let body = if content_type.starts_with("application/vnd.kubernetes.protobuf") {
        let v = protobuf::token_request_json(body)
            .map_err(|e| ApiError::bad_request(format!("the protobuf TokenRequest: {e}")))?;
        converted = serde_json::to_vec(&v).unwrap_or_default();
        &converted[..]
    } else {
        body
    };
    let sa = state
        .store
        .get(&key(rt, ns, name))
        .ok_or_else(|| ApiError::not_found(rt, name))?;
    let pod_uid = |pod: &str| {
        let o = state.store.get(&key(&PODS, ns, pod))?;
        o.value()["metadata"]["uid"].as_str().map(str::to_string)
    };
    let out = tokens::token_request(&state.token, &sa.value(), body, util::unix_now(), pod_uid)?;
    Ok(http::json(201, &out))
}

/// `POST .../pods/NAME/binding` (what a scheduler sends): sets `spec.nodeName` of a Pod no node
/// runs yet; 409 when it is already bound, as the apiserver's binding REST does.
pub fn bind(
    state: &Arc<ServerState>,
    ns: Option<&str>,
    name: &str,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    let binding = parse_body(body)?;
    let node = binding["target"]["name"].as_str().unwrap_or_default();
    if node.is_empty() {
        return Err(ApiError::invalid_kind(
            "Binding",
            "",
            name,
            vec![("target.name".into(), "Required value".into())],
        ));
    }
    if binding["target"]["kind"]
        .as_str()
        .is_some_and(|k| k != "Node")
    {
        return Err(ApiError::invalid_kind(
            "Binding",
            "",
            name,
            vec![(
                "target.kind".into(),
                "Unsupported value: must be \"Node\"".into(),
            )],
        ));
    }
    state.store.mutate(key(&PODS, ns, name), |cur| {
        let mut pod = cur
            .cloned()
            .ok_or_else(|| ApiError::not_found(&PODS, name))?;
        if let Some(bound) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
            let mut e = ApiError::conflict(&PODS, name);
            e.message = format!("pod {name} is already assigned to node \"{bound}\"");
            return Err(e);
        }
        if pod["metadata"]["deletionTimestamp"].is_string() {
            let mut e = ApiError::conflict(&PODS, name);
            e.message = format!("pod {name} is being deleted, cannot be assigned to a host");
            return Err(e);
        }
        pod["spec"]["nodeName"] = json!(node);
        Ok(Change::Put(pod))
    })?;
    // The apiserver answers a Status Success for a binding.
    Ok(http::json(
        201,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}

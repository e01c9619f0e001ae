//! Request entry point: authentication, fault injection, routing, and the admin endpoints.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use serde_json::{json, Value};

use super::handlers;
use super::http::{self, Body};
use super::namespaces::NamespacePolicy;
use super::persist;
use super::rbac::{self, User};
use super::resources::{self, ResourceType};
use super::status::ApiError;
use super::store::Store;
use super::tokens;

/// The apiserver's own request-size limit (3 MiB).
const MAX_BODY: usize = 3 << 20;

#[derive(Debug, Default, Clone)]
pub struct FaultState {
    pub fail_until: Option<Instant>,
    pub fail_code: u16,
    pub delay_until: Option<Instant>,
    pub delay: Duration,
    /// Requests arriving before then are read and never answered (a hung apiserver: the
    /// connection is accepted, the answer never comes).
    pub hang_until: Option<Instant>,
}

pub struct ServerState {
    pub store: Store,
    pub token: String,
    pub faults: Mutex<FaultState>,
    /// Bumped to end every open watch (fault injection and shutdown).
    pub watch_epoch: tokio::sync::watch::Sender<u64>,
    pub open_watches: AtomicUsize,
    pub bookmark_interval: Duration,
    pub server_address: String,
    pub state_path: PathBuf,
    /// Generation of the store last written to `state_path`; the lock serializes writers.
    pub persisted: tokio::sync::Mutex<u64>,
    /// Extra tokens -> user names (authorized by `rbac` when set).
    pub users: HashMap<String, String>,
    pub rbac: Option<rbac::Policy>,
    pub audit: Option<rbac::Audit>,
    pub watch_list: super::WatchList,
    pub namespaces: NamespacePolicy,
    /// See [`super::EmulatorConfig::newer_api`].
    pub newer_api: bool,
    /// The CA published in every namespace's `kube-root-ca.crt`.
    pub ca_pem: String,
}

impl ServerState {
    pub fn faults(&self) -> std::sync::MutexGuard<'_, FaultState> {
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn close_watches(&self) -> usize {
        let open = self.open_watches.load(Ordering::SeqCst);
        self.watch_epoch.send_modify(|e| *e += 1);
        open
    }

    /// Writes the state file if anything changed since the last write.
    pub async fn persist(&self) -> std::io::Result<bool> {
        let mut last = self.persisted.lock().await;
        let (rv, generation, objects) = self.store.dump();
        if generation == *last && self.state_path.exists() {
            return Ok(false);
        }
        let path = self.state_path.clone();
        tokio::task::spawn_blocking(move || {
            persist::write_atomic(&path, &persist::encode(rv, &objects))
        })
        .await
        .map_err(std::io::Error::other)??;
        *last = generation;
        Ok(true)
    }
}

/// A request for an API object or collection, resolved from the URL path.
pub enum Route {
    Doc(Value),
    Collection {
        rt: &'static ResourceType,
        ns: Option<String>,
    },
    Object {
        rt: &'static ResourceType,
        ns: Option<String>,
        name: String,
        sub: Option<String>,
    },
}

pub fn route(path: &str, server_address: &str) -> Result<Route, ApiError> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest): (&str, &str, &[&str]) = match segs.as_slice() {
        ["api"] => return Ok(Route::Doc(resources::core_versions(server_address))),
        ["api", "v1"] => return Ok(Route::Doc(resources::resource_list("", "v1"))),
        ["apis"] => return Ok(Route::Doc(resources::group_list())),
        ["apis", g] => {
            return resources::group(g)
                .map(Route::Doc)
                .ok_or_else(ApiError::path_not_found)
        }
        ["apis", g, v] if resources::group_served(g, Some(v)) => {
            return Ok(Route::Doc(resources::resource_list(g, v)))
        }
        ["openapi", "v3"] => return Ok(Route::Doc(resources::openapi_root())),
        ["openapi", "v3", gv @ ..] => {
            return resources::openapi_group_version(&gv.join("/"))
                .map(Route::Doc)
                .ok_or_else(ApiError::path_not_found)
        }
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(ApiError::path_not_found()),
    };
    let find = |plural: &str| {
        resources::lookup(group, version, plural).ok_or_else(ApiError::path_not_found)
    };
    let object = |rt, ns: Option<&str>, tail: &[&str]| -> Result<Route, ApiError> {
        let ns = ns.map(str::to_string);
        match tail {
            [] => Ok(Route::Collection { rt, ns }),
            [name] => Ok(Route::Object {
                rt,
                ns,
                name: name.to_string(),
                sub: None,
            }),
            [name, sub] => Ok(Route::Object {
                rt,
                ns,
                name: name.to_string(),
                sub: Some(sub.to_string()),
            }),
            _ => Err(ApiError::path_not_found()),
        }
    };
    match rest {
        // `/namespaces/NAME/status` is the Namespace's own subresource, not a collection.
        ["namespaces", ns, plural, tail @ ..]
            if resources::lookup(group, version, plural).is_some() =>
        {
            let rt = find(plural)?;
            if !rt.namespaced {
                return Err(ApiError::path_not_found());
            }
            object(rt, Some(ns), tail)
        }
        [plural, tail @ ..] => {
            let rt = find(plural)?;
            if rt.namespaced && !tail.is_empty() {
                return Err(ApiError::path_not_found());
            }
            object(rt, None, tail)
        }
        [] => Err(ApiError::path_not_found()),
    }
}

/// Who made a request, and which RBAC decides for them.
pub struct Principal {
    pub user: User,
    /// A ServiceAccount token from a TokenRequest: authorized by the Roles and bindings stored
    /// in the API, as the apiserver's RBAC authorizer does.
    pub api_rbac: bool,
}

/// Who the bearer token authenticates, if anyone: the admin, an extra user of the
/// configuration, or a ServiceAccount token this emulator issued for a ServiceAccount that
/// still exists (the same uid: a recreated ServiceAccount does not inherit old tokens).
fn authenticate(state: &ServerState, req: &Request<Incoming>) -> Option<Principal> {
    let token = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))?
        .trim();
    let user = |name: String, admin: bool| Principal {
        user: User { name, admin },
        api_rbac: false,
    };
    if token == state.token {
        return Some(user("kubernetes-admin".into(), true));
    }
    if let Some(name) = state.users.get(token) {
        return Some(user(name.clone(), false));
    }
    let claims = tokens::verify(&state.token, token, super::util::unix_now())?;
    // Whether the object stored under that name is the one with `uid` (not a namesake).
    let stored_with_uid = |rt: &ResourceType, name: &str, uid: &str| {
        let key = (rt.id, claims.namespace.clone(), name.to_string());
        state
            .store
            .get(&key)
            .is_some_and(|o| o.value()["metadata"]["uid"].as_str() == Some(uid))
    };
    if !stored_with_uid(&resources::SERVICE_ACCOUNTS, &claims.name, &claims.uid) {
        return None;
    }
    // A token bound to a Pod dies with it (a recreated Pod of that name is another uid).
    if let Some(pod) = &claims.pod {
        if !stored_with_uid(&resources::PODS, &pod.name, &pod.uid) {
            return None;
        }
    }
    Some(Principal {
        user: User {
            name: claims.user_name(),
            admin: false,
        },
        api_rbac: true,
    })
}

/// The Roles, ClusterRoles and their bindings stored in the API, as one policy. Objects that
/// validation let through always load; one that does not is skipped with a warning rather than
/// denying everyone.
fn stored_policy(state: &ServerState) -> rbac::Policy {
    let (_, objects) = state.store.snapshot();
    let mut p = rbac::Policy::default();
    for rt in [
        &resources::CLUSTER_ROLES,
        &resources::CLUSTER_ROLE_BINDINGS,
        &resources::ROLES,
        &resources::ROLE_BINDINGS,
    ] {
        for o in super::store::range(&objects, rt.id, None, None) {
            if let Err(e) = p.add_object(&o.value()) {
                tracing::warn!(error = e, "an RBAC object the authorizer cannot read");
            }
        }
    }
    p
}

/// Audit and authorize a resource request: ServiceAccount tokens by the RBAC objects in the
/// API (plus the manifests given at start), extra users by those manifests when loaded.
fn authorize(
    state: &ServerState,
    who: &Principal,
    method: &Method,
    route: &Route,
    query: &HashMap<String, String>,
) -> Result<(), ApiError> {
    let user = &who.user;
    let (rt, ns, name, sub, collection) = match route {
        Route::Doc(_) => return Ok(()),
        Route::Collection { rt, ns } => (rt, ns, None, None, true),
        Route::Object { rt, ns, name, sub } => (rt, ns, Some(name), sub.as_deref(), false),
    };
    let watch = http::flag(query, "watch");
    let name = match name {
        Some(n) => n.clone(),
        None if method == Method::GET => {
            rbac::selected_name(query.get("fieldSelector").map(String::as_str))
        }
        None => String::new(),
    };
    let attrs = rbac::Attributes {
        verb: rbac::verb(method, collection, watch).to_string(),
        group: rt.group.to_string(),
        resource: rt.plural.to_string(),
        subresource: sub.unwrap_or_default().to_string(),
        namespace: ns.clone().unwrap_or_default(),
        name,
    };
    let allowed = if user.admin {
        true
    } else if who.api_rbac {
        let mut p = stored_policy(state);
        if let Some(manifests) = &state.rbac {
            p.merge(manifests);
        }
        p.allows(user, &attrs)
    } else {
        state.rbac.as_ref().is_none_or(|p| p.allows(user, &attrs))
    };
    if let Some(a) = &state.audit {
        a.record(&user.name, &attrs, allowed);
    }
    if allowed {
        Ok(())
    } else {
        tracing::info!(user = %user.name, ?attrs, "forbidden");
        Err(rbac::forbidden(user, &attrs))
    }
}

/// Objects are read as JSON only (what kubectl's apply, create -f, patch and kube-rs send);
/// client-go's typed clients (`kubectl create configmap ...`) send protobuf, which gets a
/// clear 415 rather than a JSON parse error. TokenRequest is the one exception (protobuf.rs).
fn refuse_protobuf(content_type: &str) -> Result<(), ApiError> {
    if content_type.starts_with("application/vnd.kubernetes.protobuf") {
        return Err(ApiError::unsupported_media_type(
            "application/vnd.kubernetes.protobuf (the emulator reads objects as JSON: use `kubectl create -f` or `apply`)",
        ));
    }
    Ok(())
}

/// A request header's text; empty when absent or not text.
fn header(req: &Request<Incoming>, name: hyper::header::HeaderName) -> String {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

async fn read_body(req: Request<Incoming>) -> Result<(http::HeaderMapLite, Bytes), ApiError> {
    let ct = header(&req, hyper::header::CONTENT_TYPE);
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?
        .to_bytes();
    Ok((http::HeaderMapLite { content_type: ct }, body))
}

pub async fn handle(
    state: Arc<ServerState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = http::parse_query(req.uri().query());
    let resp = dispatch(&state, req, &path, &query).await;
    let resp = resp.unwrap_or_else(|e| http::error(&e));
    tracing::debug!(
        %method,
        path,
        query = ?query,
        status = resp.status().as_u16(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "request"
    );
    Ok(resp)
}

async fn dispatch(
    state: &Arc<ServerState>,
    req: Request<Incoming>,
    path: &str,
    query: &HashMap<String, String>,
) -> Result<Response<Body>, ApiError> {
    // Public endpoints, readable without credentials as with the default RBAC rules.
    let public = matches!(path, "/healthz" | "/livez" | "/readyz" | "/version");
    let who = authenticate(state, &req);
    if !public && who.is_none() {
        return Err(ApiError::unauthorized());
    }
    if let Some(op) = path.strip_prefix("/_emulator/") {
        if !who.as_ref().is_some_and(|p| p.user.admin) {
            return Err(ApiError::forbidden_admin());
        }
        return admin(state, req.method(), op, query).await;
    }
    inject_faults(state).await?;
    match path {
        "/healthz" | "/livez" | "/readyz" => {
            return Ok(http::json_bytes(200, Bytes::from_static(b"ok")))
        }
        "/version" => return Ok(http::json(200, &resources::version_info())),
        _ => {}
    }
    let table = header(&req, hyper::header::ACCEPT).contains("as=Table");
    let method = req.method().clone();
    let not_allowed = || {
        ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({method} {path})"
        ))
    };
    // The handlers' arguments common to the route's resource type and namespace.
    let call = |rt, ns| handlers::Call {
        state,
        rt,
        ns,
        q: query,
    };
    let route = route(path, &state.server_address)?;
    if let Some(who) = &who {
        authorize(state, who, &method, &route, query)?;
    }
    match route {
        Route::Doc(doc) if method == Method::GET => Ok(http::json(200, &doc)),
        Route::Doc(_) => Err(ApiError::method_not_allowed(
            "the server does not allow this method on the requested resource",
        )),
        Route::Collection { rt, ns } => {
            let c = call(rt, ns.as_deref());
            match method {
                Method::GET if http::flag(query, "watch") => handlers::watch(c, table),
                Method::GET => handlers::list(c, table),
                Method::POST if ns.is_some() || !rt.namespaced => {
                    let (h, body) = read_body(req).await?;
                    refuse_protobuf(&h.content_type)?;
                    handlers::create(c, &body)
                }
                _ => Err(not_allowed()),
            }
        }
        Route::Object { rt, ns, name, sub }
            if rt.id == resources::PODS.id && sub.as_deref() == Some("binding") =>
        {
            match method {
                Method::POST => {
                    let (h, body) = read_body(req).await?;
                    refuse_protobuf(&h.content_type)?;
                    handlers::bind(state, ns.as_deref(), &name, &body)
                }
                _ => Err(not_allowed()),
            }
        }
        Route::Object { rt, ns, name, sub } if rt.has_token && sub.as_deref() == Some("token") => {
            match method {
                Method::POST => {
                    let (h, body) = read_body(req).await?;
                    handlers::token_request(call(rt, ns.as_deref()), &name, &h.content_type, &body)
                }
                _ => Err(not_allowed()),
            }
        }
        Route::Object { rt, ns, name, sub } => {
            let target = handlers::target(rt, sub.as_deref())?;
            let c = call(rt, ns.as_deref());
            match method {
                Method::GET => handlers::get(c, &name, table),
                Method::PUT => {
                    let (h, body) = read_body(req).await?;
                    refuse_protobuf(&h.content_type)?;
                    handlers::update(c, &name, target, &body)
                }
                Method::PATCH => {
                    let (h, body) = read_body(req).await?;
                    handlers::patch(c, &name, target, &h.content_type, &body)
                }
                Method::DELETE if target == super::semantics::Target::Main => {
                    let (_, body) = read_body(req).await?;
                    handlers::delete(c, &name, &body)
                }
                _ => Err(not_allowed()),
            }
        }
    }
}

async fn inject_faults(state: &ServerState) -> Result<(), ApiError> {
    let hang = {
        let mut f = state.faults();
        if f.hang_until.is_some_and(|t| t <= Instant::now()) {
            f.hang_until = None;
        }
        f.hang_until.is_some()
    };
    if hang {
        std::future::pending::<()>().await;
    }
    let (fail, delay) = {
        let mut f = state.faults();
        let now = Instant::now();
        if f.fail_until.is_some_and(|t| t <= now) {
            f.fail_until = None;
        }
        if f.delay_until.is_some_and(|t| t <= now) {
            f.delay_until = None;
        }
        (
            f.fail_until.map(|_| f.fail_code),
            f.delay_until.map(|_| f.delay),
        )
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    if let Some(code) = fail {
        let mut e = ApiError::internal("emulated apiserver failure (fault injection)");
        e.code = code;
        if code == 503 {
            e.reason = "ServiceUnavailable";
        }
        return Err(e);
    }
    Ok(())
}

fn num(q: &HashMap<String, String>, name: &str) -> Result<Option<u64>, ApiError> {
    q.get(name)
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!("{name} must be a non-negative integer, got {v:?}"))
            })
        })
        .transpose()
}

/// How long a fault lasts: `forMs=N`, else `seconds=N`, else 10 s.
fn span(q: &HashMap<String, String>) -> Result<Duration, ApiError> {
    Ok(match (num(q, "forMs")?, num(q, "seconds")?) {
        (Some(ms), _) => Duration::from_millis(ms),
        (None, Some(s)) => Duration::from_secs(s),
        (None, None) => Duration::from_secs(10),
    })
}

pub fn state_doc(state: &ServerState) -> Value {
    let f = state.faults().clone();
    let now = Instant::now();
    let left = |t: Option<Instant>| {
        t.map(|t| t.saturating_duration_since(now).as_millis() as u64)
            .unwrap_or(0)
    };
    json!({
        "resourceVersion": state.store.current_rv().to_string(),
        "historyStart": state.store.history_start().to_string(),
        "objects": state.store.len(),
        "openWatches": state.open_watches.load(Ordering::SeqCst),
        "failingForMs": left(f.fail_until),
        "hangingForMs": left(f.hang_until),
        "failCode": f.fail_code,
        "delayingForMs": left(f.delay_until),
        "delayMs": f.delay.as_millis() as u64,
    })
}

/// `/_emulator/*`: fault controls. Never subject to the faults themselves.
async fn admin(
    state: &Arc<ServerState>,
    method: &Method,
    op: &str,
    q: &HashMap<String, String>,
) -> Result<Response<Body>, ApiError> {
    let post = *method == Method::POST;
    let out = match op {
        "state" if *method == Method::GET => state_doc(state),
        "audit" if *method == Method::GET => match &state.audit {
            Some(a) => json!({"records": a.records()}),
            None => return Err(ApiError::bad_request("the audit is off (start with --audit)")),
        },
        "audit" if *method == Method::DELETE => {
            if let Some(a) = &state.audit {
                a.clear();
            }
            json!({"cleared": true})
        }
        "close-watches" if post => {
            let n = state.close_watches();
            tracing::info!(closed = n, "fault: closed every watch");
            json!({"closed": n})
        }
        "fail" if post => {
            let span = span(q)?;
            let code = num(q, "code")?.unwrap_or(500);
            if !(500..600).contains(&code) {
                return Err(ApiError::bad_request("code must be a 5xx status"));
            }
            let mut f = state.faults();
            f.fail_until = Some(Instant::now() + span);
            f.fail_code = code as u16;
            tracing::info!(for_ms = span.as_millis() as u64, code, "fault: failing every request");
            json!({"failingForMs": span.as_millis() as u64, "code": code})
        }
        "delay" if post => {
            let ms = num(q, "ms")?.unwrap_or(500);
            let span = span(q)?;
            let mut f = state.faults();
            f.delay = Duration::from_millis(ms);
            f.delay_until = Some(Instant::now() + span);
            tracing::info!(ms, for_ms = span.as_millis() as u64, "fault: delaying every request");
            json!({"delayMs": ms, "delayingForMs": span.as_millis() as u64})
        }
        "hang" if post => {
            let span = span(q)?;
            state.faults().hang_until = Some(Instant::now() + span);
            tracing::info!(for_ms = span.as_millis() as u64, "fault: hanging every new request");
            json!({"hangingForMs": span.as_millis() as u64})
        }
        "clear" if post => {
            *state.faults() = FaultState::default();
            tracing::info!("fault: cleared");
            json!({"cleared": true})
        }
        "compact" if post => {
            let rv = state.store.compact();
            tracing::info!(rv, "fault: history compacted");
            json!({"compactedAt": rv.to_string()})
        }
        "persist" if post => {
            let wrote = state
                .persist()
                .await
                .map_err(|e| ApiError::internal(format!("writing {}: {e}", state.state_path.display())))?;
            json!({"written": wrote, "path": state.state_path.display().to_string()})
        }
        _ => {
            return Err(ApiError::method_not_allowed(format!(
                "unknown admin operation {method} /_emulator/{op}; known: GET state|audit, DELETE audit, POST close-watches|fail|delay|hang|clear|compact|persist"
            )))
        }
    };
    Ok(http::json(200, &out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(r: Route) -> (String, Option<String>, Option<String>, Option<String>) {
        match r {
            Route::Doc(_) => ("doc".into(), None, None, None),
            Route::Collection { rt, ns } => (rt.storage_name(), ns, None, None),
            Route::Object { rt, ns, name, sub } => (rt.storage_name(), ns, Some(name), sub),
        }
    }

    #[test]
    fn routes() {
        let r = |p: &str| route(p, "127.0.0.1:1").map(parts);
        // path → (storage name, namespace, name, subresource)
        let good = [
            ("/api/v1/nodes", "v1/nodes", None, None, None),
            (
                "/api/v1/nodes/n1/status",
                "v1/nodes",
                None,
                Some("n1"),
                Some("status"),
            ),
            (
                "/api/v1/namespaces/kube-system/configmaps/cfg",
                "v1/configmaps",
                Some("kube-system"),
                Some("cfg"),
                None,
            ),
            ("/api/v1/configmaps", "v1/configmaps", None, None, None),
            (
                "/apis/events.k8s.io/v1/namespaces/default/events",
                "events.k8s.io/v1/events",
                Some("default"),
                None,
                None,
            ),
            ("/apis/events.k8s.io/v1", "doc", None, None, None),
            (
                "/api/v1/namespaces/x/status",
                "v1/namespaces",
                None,
                Some("x"),
                Some("status"),
            ),
            (
                "/api/v1/namespaces/x/serviceaccounts/sa/token",
                "v1/serviceaccounts",
                Some("x"),
                Some("sa"),
                Some("token"),
            ),
            ("/apis/apps/v1", "doc", None, None, None),
            (
                "/apis/networking.k8s.io/v1/namespaces/x/networkpolicies/deny",
                "networking.k8s.io/v1/networkpolicies",
                Some("x"),
                Some("deny"),
                None,
            ),
            (
                "/apis/networking.k8s.io/v1/networkpolicies",
                "networking.k8s.io/v1/networkpolicies",
                None,
                None,
                None,
            ),
            ("/apis/networking.k8s.io/v1", "doc", None, None, None),
        ];
        for (path, res, ns, name, sub) in good {
            let (r_res, r_ns, r_name, r_sub) = r(path).unwrap();
            assert_eq!(
                (
                    r_res.as_str(),
                    r_ns.as_deref(),
                    r_name.as_deref(),
                    r_sub.as_deref()
                ),
                (res, ns, name, sub),
                "{path}"
            );
        }
        for bad in [
            "/api/v1/services",
            "/api/v1/namespaces/x/nodes",
            "/api/v1/configmaps/x",
            "/apis/apps/v1/deployments",
            "/apis/networking.k8s.io/v1beta1/networkpolicies",
            "/foo",
        ] {
            assert_eq!(r(bad).err().map(|e| e.code), Some(404), "{bad}");
        }
    }
}

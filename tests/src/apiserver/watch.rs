//! Watch: newline-delimited JSON events streamed over a chunked response, fed from the store's
//! broadcast channel, with bookmarks, timeouts, selectors and the 410 path for expired versions.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::Response;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use super::handlers::{Call, Selectors};
use super::http::{self, Body, ChannelBody};
use super::resources::ResourceType;
use super::server::ServerState;
use super::status::ApiError;
use super::store::{self, EventType, ResumeError, StoredObject, Subscription, WatchEvent};
use super::table;
use super::util;
use super::WatchList;

/// Without `timeoutSeconds` the apiserver ends a watch after its minimum request timeout (30 min).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

struct WatchSpec {
    rt: &'static ResourceType,
    ns: Option<String>,
    sel: Selectors,
    table: bool,
    bookmarks: bool,
    initial_events: bool,
    initial_end_bookmark: bool,
    timeout: Duration,
}

impl WatchSpec {
    fn render(&self, kind: &str, o: &StoredObject) -> Bytes {
        let mut line = Vec::with_capacity(o.json.len() + 40);
        line.extend_from_slice(format!("{{\"type\":\"{kind}\",\"object\":").as_bytes());
        if self.table {
            let row = table::row(self.rt, &o.value(), util::unix_now());
            let t = table::table(self.rt, vec![row], o.rv, None);
            line.extend_from_slice(&serde_json::to_vec(&t).unwrap_or_default());
        } else {
            line.extend_from_slice(&o.json);
        }
        line.extend_from_slice(b"}\n");
        Bytes::from(line)
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rv.to_string(), "creationTimestamp": null});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let ev = json!({
            "type": "BOOKMARK",
            "object": {"kind": self.rt.kind, "apiVersion": self.rt.api_version(), "metadata": meta},
        });
        line_of(&ev)
    }

    fn in_scope(&self, o: &StoredObject) -> bool {
        o.res == self.rt.id && self.ns.as_deref().is_none_or(|ns| o.namespace == ns)
    }

    /// The event this watch sees for a committed change, if any: objects entering or leaving the
    /// selector appear as ADDED or DELETED.
    fn translate(&self, ev: &WatchEvent) -> Option<Bytes> {
        if !self.in_scope(&ev.obj) {
            return None;
        }
        let now = self.sel.matches(&ev.obj);
        let before = ev.prev.as_ref().is_some_and(|p| self.sel.matches(p));
        let kind = match ev.kind {
            EventType::Added if now => EventType::Added,
            EventType::Deleted if now => EventType::Deleted,
            EventType::Modified => match (before, now) {
                (true, true) => EventType::Modified,
                (false, true) => EventType::Added,
                (true, false) => EventType::Deleted,
                (false, false) => return None,
            },
            _ => return None,
        };
        Some(self.render(kind.as_str(), &ev.obj))
    }
}

fn line_of(v: &Value) -> Bytes {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}

fn error_line(e: &ApiError) -> Bytes {
    line_of(&json!({"type": "ERROR", "object": e.to_status()}))
}

pub fn watch(c: Call, table: bool) -> Result<Response<Body>, ApiError> {
    let Call { state, rt, ns, q } = c;
    let sel = Selectors::from_query(rt, q)?;
    let bookmarks = http::flag(q, "allowWatchBookmarks");
    let mut send_initial = http::flag(q, "sendInitialEvents");
    let mut rv_match = q.get("resourceVersionMatch").map(String::as_str);
    match state.watch_list {
        WatchList::Served => {}
        WatchList::Refused if send_initial => {
            return Err(ApiError::unprocessable(
                "sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled",
            ));
        }
        WatchList::Refused => {}
        WatchList::Ignored => (send_initial, rv_match) = (false, None),
    }
    if send_initial && rv_match != Some("NotOlderThan") {
        return Err(ApiError::unprocessable(
            "sendInitialEvents is forbidden for watch unless resourceVersionMatch is set to NotOlderThan",
        ));
    }
    if rv_match.is_some() && !send_initial {
        return Err(ApiError::unprocessable(
            "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
        ));
    }
    let timeout = match q.get("timeoutSeconds").map(|s| s.parse::<u64>()) {
        None | Some(Ok(0)) => DEFAULT_TIMEOUT,
        Some(Ok(s)) => Duration::from_secs(s),
        Some(Err(_)) => return Err(ApiError::bad_request("timeoutSeconds must be an integer")),
    };
    let requested = match q.get("resourceVersion").map(String::as_str) {
        None | Some("") => None,
        Some(r) => Some(
            r.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version {r:?}")))?,
        ),
    };
    // Unset or "0" means "start from current state, sent as ADDED events"; so does
    // sendInitialEvents, which then marks the end of that state with a bookmark.
    let from_snapshot = send_initial || matches!(requested, None | Some(0));
    let (sub, expired) = if from_snapshot {
        if let Some(r) = requested {
            let current = state.store.current_rv();
            if r > current {
                return Err(ApiError::timeout(format!(
                    "Too large resource version: {r}, current: {current}"
                )));
            }
        }
        (Some(state.store.subscribe_snapshot()), None)
    } else {
        let r = requested.unwrap_or(0);
        match state.store.subscribe_from(r) {
            Ok(s) => (Some(s), None),
            Err(ResumeError::TooOld { oldest }) => (
                None,
                Some(ApiError::expired(format!(
                    "too old resource version: {r} ({oldest})"
                ))),
            ),
            Err(ResumeError::TooLarge { current }) => {
                return Err(ApiError::timeout(format!(
                    "Too large resource version: {r}, current: {current}"
                )))
            }
        }
    };
    let spec = WatchSpec {
        rt,
        ns: ns.map(str::to_string),
        sel,
        table,
        bookmarks,
        initial_events: from_snapshot,
        initial_end_bookmark: send_initial && bookmarks,
        timeout,
    };
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let st = state.clone();
    tokio::spawn(async move { run(st, spec, sub, expired, tx).await });
    let mut resp = Response::new(ChannelBody(rx).boxed_unsync());
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// Keeps the open-watch count right however the task ends.
struct OpenGuard(Arc<ServerState>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open_watches.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn run(
    state: Arc<ServerState>,
    spec: WatchSpec,
    sub: Option<Subscription>,
    expired: Option<ApiError>,
    tx: mpsc::Sender<Bytes>,
) {
    state.open_watches.fetch_add(1, Ordering::SeqCst);
    let _guard = OpenGuard(state.clone());
    let mut epoch = state.watch_epoch.subscribe();
    epoch.borrow_and_update();
    let Some(mut sub) = sub else {
        // The apiserver answers an expired resume with 200 and a single ERROR event (code 410);
        // clients such as kube-rs's watcher relist on exactly that.
        if let Some(e) = expired {
            let _ = tx.send(error_line(&e)).await;
        }
        return;
    };
    let mut last_rv = sub.rv;
    if let Some(snapshot) = sub.snapshot.take().filter(|_| spec.initial_events) {
        let ns = spec.ns.as_deref();
        for o in store::range(&snapshot, spec.rt.id, ns, None).filter(|o| spec.sel.matches(o)) {
            if tx.send(spec.render("ADDED", o)).await.is_err() {
                return;
            }
        }
        if spec.initial_end_bookmark && tx.send(spec.bookmark(sub.rv, true)).await.is_err() {
            return;
        }
    }
    for ev in std::mem::take(&mut sub.backlog) {
        last_rv = ev.rv;
        if let Some(line) = spec.translate(&ev) {
            if tx.send(line).await.is_err() {
                return;
            }
        }
    }
    let deadline = tokio::time::sleep(spec.timeout);
    tokio::pin!(deadline);
    let period = state.bookmark_interval.max(Duration::from_millis(10));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        let out = tokio::select! {
            _ = &mut deadline => return,
            _ = epoch.changed() => return,
            _ = tx.closed() => return,
            _ = ticker.tick(), if spec.bookmarks => spec.bookmark(last_rv, false),
            r = sub.rx.recv() => match r {
                Ok(ev) => {
                    if ev.rv <= last_rv {
                        continue;
                    }
                    last_rv = ev.rv;
                    match spec.translate(&ev) {
                        Some(line) => line,
                        None => continue,
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    // Too slow to keep up: end the watch like the apiserver does; the client
                    // resumes from its last version, still inside the history.
                    tracing::warn!(resource = spec.rt.plural, skipped = n, "closing a watch that fell behind");
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        if tx.send(out).await.is_err() {
            return;
        }
    }
}

//! `/healthz`, `/readyz`, `/metrics` and `/debug/state` over a minimal
//! HTTP/1.1 server: a handful of GETs from the kubelet, Prometheus and
//! `trellis-agent status` do not justify a web framework.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::debug_state::DebugState;
use crate::metrics::Metrics;

/// What the endpoints answer from; updated by the agent loop.
pub struct HealthState {
    pub metrics: Arc<Metrics>,
    /// JSON snapshot for `status` (last desired state, last report).
    pub debug: watch::Receiver<Arc<DebugState>>,
    /// Bumped by the loop on every pass; `/healthz` fails if it stalls.
    pub heartbeat: watch::Receiver<std::time::Instant>,
    pub stall_after: Duration,
}

pub async fn serve(listener: TcpListener, state: Arc<HealthState>) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let head = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut sock)).await {
                Ok(Some(head)) => head,
                _ => return,
            };
            let (status, ctype, body) = match request_path(&String::from_utf8_lossy(&head)) {
                Some(path) => answer(path, &state),
                None => (
                    "400 Bad Request",
                    TEXT,
                    "expected an HTTP/1.x request line\n".into(),
                ),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}

const TEXT: &str = "text/plain; charset=utf-8";
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Probes and scrapers send a few hundred bytes of headers; more is not a client of ours.
const MAX_HEAD: usize = 16 * 1024;

/// Reads up to the blank line that ends the request head: a client may send its request in
/// several segments, and the first alone may hold half a path.
async fn read_head(sock: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return (!head.is_empty()).then_some(head);
        }
        head.extend_from_slice(&chunk[..n]);
        if head_complete(&head) {
            return Some(head);
        }
        if head.len() > MAX_HEAD {
            return None;
        }
    }
}

fn head_complete(head: &[u8]) -> bool {
    head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n")
}

/// The path of a request line (`GET /metrics?x=1 HTTP/1.1` -> `/metrics`), without the query.
fn request_path(head: &str) -> Option<&str> {
    let mut parts = head.lines().next()?.split_whitespace();
    let (_method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    Some(target.split('?').next().unwrap_or(target))
}

fn answer(path: &str, s: &HealthState) -> (&'static str, &'static str, String) {
    match path {
        "/healthz" => {
            let age = s.heartbeat.borrow().elapsed();
            if age <= s.stall_after {
                ("200 OK", TEXT, "ok\n".into())
            } else {
                (
                    "503 Service Unavailable",
                    TEXT,
                    format!("reconcile loop stalled for {}s\n", age.as_secs()),
                )
            }
        }
        "/readyz" => match s.metrics.readiness() {
            Ok(()) => ("200 OK", TEXT, "ready\n".into()),
            Err(why) => (
                "503 Service Unavailable",
                TEXT,
                format!("not ready: {why}\n"),
            ),
        },
        "/metrics" => ("200 OK", "text/plain; version=0.0.4", s.metrics.render()),
        "/debug/state" => ("200 OK", "application/json", s.debug.borrow().render()),
        "/debug/netpol" => ("200 OK", TEXT, s.metrics.netpol_status()),
        _ => ("404 Not Found", TEXT, "not found\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_path_strips_the_query_and_needs_a_full_request_line() {
        assert_eq!(
            request_path("GET /metrics?name=x HTTP/1.1\r\nHost: a\r\n\r\n"),
            Some("/metrics")
        );
        assert_eq!(request_path("GET /readyz HTTP/1.0\n\n"), Some("/readyz"));
        assert_eq!(request_path("GET /readyz"), None);
        assert_eq!(request_path("hello world again"), None);
        assert_eq!(request_path(""), None);
    }

    #[test]
    fn the_head_ends_at_the_first_blank_line() {
        assert!(!head_complete(b"GET /rea"));
        assert!(!head_complete(b"GET /readyz HTTP/1.1\r\nHost: x\r\n"));
        assert!(head_complete(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(head_complete(b"GET /readyz HTTP/1.1\n\n"));
    }
}

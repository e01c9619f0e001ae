//! `/healthz`, `/readyz`, `/metrics` and `/debug/state` over a minimal
//! HTTP/1.1 server: a handful of GETs from the kubelet, Prometheus and
//! `trellis-agent status` do not justify a web framework.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
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
            let mut buf = vec![0u8; 2048];
            let n = match tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req
                .lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .unwrap_or("/");
            let (status, ctype, body) = answer(path, &state);
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}

fn answer(path: &str, s: &HealthState) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
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
        "/readyz" => {
            if s.metrics.is_ready() {
                ("200 OK", TEXT, "ready\n".into())
            } else {
                (
                    "503 Service Unavailable",
                    TEXT,
                    "not ready: node not programmed yet\n".into(),
                )
            }
        }
        "/metrics" => ("200 OK", "text/plain; version=0.0.4", s.metrics.render()),
        "/debug/state" => ("200 OK", "application/json", s.debug.borrow().render()),
        _ => ("404 Not Found", TEXT, "not found\n".into()),
    }
}

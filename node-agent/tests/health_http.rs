//! The health endpoint over a real socket: what the kubelet's probes and a Prometheus scraper
//! send, including a request that arrives in pieces.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use trellis_agent::debug_state::DebugState;
use trellis_agent::health::{serve, HealthState};
use trellis_agent::metrics::Metrics;

async fn start() -> (SocketAddr, Arc<Metrics>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let metrics = Arc::new(Metrics::default());
    let (debug_tx, debug) = watch::channel(Arc::new(DebugState::default()));
    let (beat_tx, heartbeat) = watch::channel(Instant::now());
    // The senders must outlive the server, as the agent loop's do.
    std::mem::forget((debug_tx, beat_tx));
    tokio::spawn(serve(
        listener,
        Arc::new(HealthState {
            metrics: metrics.clone(),
            debug,
            heartbeat,
            stall_after: Duration::from_secs(60),
        }),
    ));
    (addr, metrics)
}

/// Sends `pieces` with a pause between them and returns the whole answer.
async fn exchange(addr: SocketAddr, pieces: &[&str]) -> String {
    let mut sock = TcpStream::connect(addr).await.expect("connect");
    sock.set_nodelay(true).expect("nodelay");
    for (i, p) in pieces.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        sock.write_all(p.as_bytes()).await.expect("write");
        sock.flush().await.expect("flush");
    }
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), sock.read_to_string(&mut out))
        .await
        .expect("answered within 10 s")
        .expect("read");
    out
}

#[tokio::test]
async fn a_request_split_across_segments_is_answered_as_a_whole() {
    let (addr, metrics) = start().await;
    let split = ["GET /rea", "dyz HTTP/1.1\r\nHost: node\r\n", "\r\n"];
    let before = exchange(addr, &split).await;
    assert!(before.starts_with("HTTP/1.1 503"), "{before}");
    assert!(before.contains("not ready"), "{before}");
    metrics.set_ready(true);
    let after = exchange(addr, &split).await;
    assert!(after.starts_with("HTTP/1.1 200"), "{after}");
    assert!(after.ends_with("ready\n"), "{after}");
}

#[tokio::test]
async fn a_query_string_does_not_change_the_endpoint() {
    let (addr, _) = start().await;
    let answer = exchange(addr, &["GET /metrics?name[]=x HTTP/1.1\r\nHost: n\r\n\r\n"]).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("trellis_ready 0"), "{answer}");
    let healthz = exchange(addr, &["GET /healthz HTTP/1.0\r\n\r\n"]).await;
    assert!(healthz.starts_with("HTTP/1.1 200"), "{healthz}");
}

#[tokio::test]
async fn what_is_not_an_http_request_gets_400_and_unknown_paths_404() {
    let (addr, _) = start().await;
    let junk = exchange(addr, &["hello\r\n\r\n"]).await;
    assert!(junk.starts_with("HTTP/1.1 400"), "{junk}");
    let missing = exchange(addr, &["GET /nope HTTP/1.1\r\n\r\n"]).await;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
}

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
/// [`exchange`], whose answer must have the HTTP `status`.
async fn answered(addr: SocketAddr, pieces: &[&str], status: u16) -> String {
    let answer = exchange(addr, pieces).await;
    assert!(
        answer.starts_with(&format!("HTTP/1.1 {status} ")),
        "want {status}: {answer}"
    );
    answer
}

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
    let before = answered(addr, &split, 503).await;
    assert!(before.contains("not ready"), "{before}");
    metrics.set_programmed(Ok(()));
    let after = answered(addr, &split, 200).await;
    assert!(after.ends_with("ready\n"), "{after}");
}

#[tokio::test]
async fn a_query_string_does_not_change_the_endpoint() {
    let (addr, _) = start().await;
    let answer = answered(
        addr,
        &["GET /metrics?name[]=x HTTP/1.1\r\nHost: n\r\n\r\n"],
        200,
    )
    .await;
    assert!(answer.contains("trellis_ready 0"), "{answer}");
    answered(addr, &["GET /healthz HTTP/1.0\r\n\r\n"], 200).await;
}

#[tokio::test]
async fn what_is_not_an_http_request_gets_400_and_unknown_paths_404() {
    let (addr, _) = start().await;
    answered(addr, &["hello\r\n\r\n"], 400).await;
    answered(addr, &["GET /nope HTTP/1.1\r\n\r\n"], 404).await;
}

#[tokio::test]
async fn readiness_is_not_sticky_and_says_why() {
    let (addr, metrics) = start().await;
    let get = ["GET /readyz HTTP/1.1\r\nHost: node\r\n\r\n"];
    metrics.set_programmed(Ok(()));
    answered(addr, &get, 200).await;
    metrics.set_programmed(Err("cannot write subnet.env: read-only file system".into()));
    let broken = answered(addr, &get, 503).await;
    assert!(broken.contains("read-only file system"), "{broken}");
    let scraped = exchange(addr, &["GET /metrics HTTP/1.1\r\n\r\n"]).await;
    assert!(scraped.contains("trellis_ready 0"), "{scraped}");
    metrics.set_programmed(Ok(()));
    answered(addr, &get, 200).await;
}

#[tokio::test]
async fn a_node_watch_failing_past_the_limit_makes_the_node_not_ready() {
    use std::sync::atomic::Ordering;
    let (addr, metrics) = start().await;
    let watch = Arc::new(trellis_agent::cluster::NodeWatchStats::default());
    metrics.attach_node_watch(watch.clone());
    metrics.set_programmed(Ok(()));
    let get = ["GET /readyz HTTP/1.1\r\nHost: node\r\n\r\n"];
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let limit = trellis_agent::readiness::WATCH_DOWN_LIMIT.as_millis() as u64;
    // Failing for less than the limit: still ready.
    watch
        .outage_since_ms
        .store(now_ms - limit / 2, Ordering::Relaxed);
    watch.last_error_ms.store(now_ms, Ordering::Relaxed);
    answered(addr, &get, 200).await;
    // Past the limit with errors still coming: not ready, and why.
    watch
        .outage_since_ms
        .store(now_ms - limit - 5_000, Ordering::Relaxed);
    let down = answered(addr, &get, 503).await;
    assert!(down.contains("Node watch has failed"), "{down}");
    // Data again: the watcher clears both.
    watch.outage_since_ms.store(0, Ordering::Relaxed);
    watch.last_error_ms.store(0, Ordering::Relaxed);
    answered(addr, &get, 200).await;
}

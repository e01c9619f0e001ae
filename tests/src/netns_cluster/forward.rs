//! A host port that reaches a server inside a network namespace: what a
//! user's `kubectl` on the host needs to talk to the API emulator, which
//! listens on the underlay (where the nodes reach it). Each accepted
//! connection is joined to one made from a short-lived thread inside the
//! namespace (a socket keeps the namespace it was made in), then bytes are
//! copied both ways until either side closes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `listener` forever, forwarding to `target` as seen from the netns at `netns`.
pub async fn forward(listener: TcpListener, netns: PathBuf, target: SocketAddr) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            continue;
        };
        let netns = netns.clone();
        tokio::spawn(async move {
            let outbound = tokio::task::spawn_blocking(move || connect_in(&netns, target)).await;
            match outbound {
                Ok(Ok(outbound)) => join(inbound, outbound).await,
                Ok(Err(e)) => tracing::warn!(%target, error = %e, "forward: connect"),
                Err(e) => tracing::warn!(%target, error = %e, "forward: connect task"),
            }
        });
    }
}

async fn join(mut a: TcpStream, b: std::net::TcpStream) {
    let Ok(()) = b.set_nonblocking(true) else {
        return;
    };
    let Ok(mut b) = TcpStream::from_std(b) else {
        return;
    };
    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
}

/// Connects from a fresh thread that entered the namespace (never a pooled thread: it would
/// stay in the namespace).
fn connect_in(netns: &Path, target: SocketAddr) -> std::io::Result<std::net::TcpStream> {
    let netns = netns.to_path_buf();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&netns)?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
        std::net::TcpStream::connect_timeout(&target, CONNECT_TIMEOUT)
    })
    .join()
    .map_err(|_| std::io::Error::other("connect thread panicked"))?
}

//! Publishes this node's annotations and `NetworkUnavailable=False` from a task of its own.
//!
//! The reconcile loop only says what it wants published and moves on: an API server that is
//! slow, down, or accepts connections and never answers must not hold up kernel repair. Each
//! API call has a stated timeout ([`API_CALL_TIMEOUT`]); failures are retried with backoff,
//! and a newer wish replaces an older one still waiting.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use crate::cluster::{Backoff, BackoffPolicy, NodeEvents, OwnNode};
use crate::config::BackendType;
use crate::view::NodeInfo;

/// The longest one call to the API server may take before it counts as failed.
pub const API_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// What the loop wants published.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Wanted {
    annotations: Option<BTreeMap<String, String>>,
    /// Bumped to make the task check the Node again although nothing changed here (someone
    /// may have edited our annotations).
    recheck: u64,
    /// The node is programmed with this backend: set the condition (once).
    network_available: Option<BackendType>,
}

/// What has been published.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Published {
    /// The annotations were written (or found right) at least once.
    pub annotations_once: bool,
    pub network_available: bool,
}

pub struct Advertiser {
    want: watch::Sender<Wanted>,
    published: watch::Receiver<Published>,
}

impl Advertiser {
    /// `cached` is the Node watcher's copy of our Node: the annotations are compared with it,
    /// so publishing reads nothing from the API and writes only what differs.
    pub fn start(
        own: OwnNode,
        events: NodeEvents,
        cached: watch::Receiver<Option<NodeInfo>>,
    ) -> Advertiser {
        let (want, want_rx) = watch::channel(Wanted::default());
        let (published_tx, published) = watch::channel(Published::default());
        tokio::spawn(run(own, events, cached, want_rx, published_tx));
        Advertiser { want, published }
    }

    /// Publish `annotations`; `recheck` reads the Node again even if they did not change.
    pub fn advertise(&self, annotations: BTreeMap<String, String>, recheck: bool) {
        self.want.send_if_modified(|w| {
            let changed = w.annotations.as_ref() != Some(&annotations);
            w.annotations = Some(annotations);
            if recheck {
                w.recheck += 1;
            }
            changed || recheck
        });
    }

    /// The node is programmed: set `NetworkUnavailable=False` once the annotations are out.
    pub fn network_available(&self, backend: BackendType) {
        self.want.send_if_modified(|w| {
            let first = w.network_available.is_none();
            w.network_available.get_or_insert(backend);
            first
        });
    }

    pub fn published(&self) -> Published {
        *self.published.borrow()
    }

    /// Resolves when something more was published.
    pub async fn changed(&mut self) {
        if self.published.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

async fn run(
    own: OwnNode,
    events: NodeEvents,
    mut cached: watch::Receiver<Option<NodeInfo>>,
    mut want: watch::Receiver<Wanted>,
    published: watch::Sender<Published>,
) {
    let mut backoff = Backoff::new(BackoffPolicy {
        initial: Duration::from_millis(500),
        max: Duration::from_secs(10),
    });
    // What was last written, with the recheck it answered.
    let mut done: Option<(BTreeMap<String, String>, u64)> = None;
    loop {
        let wanted = want.borrow_and_update().clone();
        let node = cached.borrow_and_update().clone();
        let ok = publish(&own, &events, node.as_ref(), &wanted, &mut done, &published).await;
        if !ok {
            // The whole backoff, whatever changes meanwhile: a new wish must not turn a
            // struggling API server's retries into a hot loop. The next attempt takes the
            // latest wish.
            tokio::time::sleep(backoff.next_delay()).await;
            continue;
        }
        backoff.reset();
        tokio::select! {
            changed = want.changed() => if changed.is_err() { return },
            // Someone changed our Node (perhaps our annotations): check again.
            changed = cached.changed() => if changed.is_err() { return },
        }
    }
}

/// One attempt at everything `wanted` asks; false when something must be retried.
async fn publish(
    own: &OwnNode,
    events: &NodeEvents,
    node: Option<&NodeInfo>,
    wanted: &Wanted,
    done: &mut Option<(BTreeMap<String, String>, u64)>,
    published: &watch::Sender<Published>,
) -> bool {
    let Some(ads) = &wanted.annotations else {
        return true;
    };
    let current = done
        .as_ref()
        .is_some_and(|(a, r)| a == ads && *r == wanted.recheck);
    if !current || node.is_some() {
        // The watcher's copy of our Node when there is one (no read; nothing is sent when it
        // already agrees), else a read of the Node.
        let write = async {
            match node {
                Some(n) => own.advertise_over(&n.annotations, ads).await,
                None => own.advertise(ads).await,
            }
        };
        match tokio::time::timeout(API_CALL_TIMEOUT, write).await {
            Ok(Ok(changed)) => {
                if changed {
                    info!("node annotations advertised");
                }
                *done = Some((ads.clone(), wanted.recheck));
                published.send_if_modified(|p| !std::mem::replace(&mut p.annotations_once, true));
            }
            Ok(Err(e)) => {
                warn!("cannot advertise node annotations (will retry): {e}");
                return false;
            }
            Err(_) => {
                warn!(timeout = ?API_CALL_TIMEOUT, "advertising node annotations timed out (will retry)");
                return false;
            }
        }
    }
    let Some(backend) = wanted.network_available else {
        return true;
    };
    if published.borrow().network_available {
        return true;
    }
    match tokio::time::timeout(API_CALL_TIMEOUT, own.set_network_available()).await {
        Ok(Ok(_)) => {
            published.send_modify(|p| p.network_available = true);
            info!(
                backend = backend.as_str(),
                "node programmed; NetworkUnavailable=False"
            );
            events.network_ready(backend).await;
            true
        }
        Ok(Err(e)) => {
            warn!("cannot set NetworkUnavailable=False (will retry): {e}");
            false
        }
        Err(_) => {
            warn!(timeout = ?API_CALL_TIMEOUT, "setting NetworkUnavailable=False timed out (will retry)");
            false
        }
    }
}

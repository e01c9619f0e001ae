//! Watches every Node into the shared [`ClusterView`].
//!
//! Each Node is decoded as a [`SlimNode`], turned into a [`NodeInfo`] and handed to the view at
//! once; the watcher keeps no objects (no reflector store), so memory is the view's compact
//! peers plus one list page in flight.
//!
//! Consumers learn of changes through [`ViewStatus`] on a `tokio::sync::watch` channel: only a
//! planning-relevant change bumps `generation` (kubelet heartbeats and condition updates do
//! not), and a burst of changes is read as one by whoever wakes up next.
//!
//! Errors (API down, 5xx, closed watches, 410 Gone) are retried with backoff and never touch the
//! view: the kernel keeps working state during an outage, and the next list reconciles it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio::sync::watch;

use super::backoff::{Backoff, BackoffPolicy};
use super::node_object::SlimNode;
use super::relist::{FeedOutcome, RelistFeed};
use super::watch_error::{classify, refuses_streaming, WatchFailure};
use crate::view::{ClusterView, NodeInfo};

/// The view shared between the watcher (writer) and the planner (reader). A std mutex: every
/// critical section is short and never awaits.
pub type SharedView = Arc<Mutex<ClusterView>>;

/// Lock the view, surviving a panic in another holder: the view is plain data and every
/// mutation leaves it consistent, so a poisoned lock carries no broken invariant.
pub fn lock_view(view: &SharedView) -> MutexGuard<'_, ClusterView> {
    view.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the planner waits on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ViewStatus {
    /// Bumped on every planning-relevant change.
    pub generation: u64,
    /// The first full list has completed. Before that the view is partial: planning from it
    /// would delete the entries of peers not listed yet, so the planner must wait for this.
    pub synced: bool,
    /// Nodes received so far by the first list, bumped every [`LIST_PROGRESS_STEP`] while it
    /// is in flight: the planner may program what is listed, adding only.
    pub listed: u64,
}

/// How many listed Nodes make a progress report during the first list.
pub const LIST_PROGRESS_STEP: u64 = 250;

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct NodeWatchStats {
    /// Node events received (list items and watch events).
    pub events: AtomicU64,
    /// Completed lists (1 at start, +1 per relist after 410 or a failed resume).
    pub relists: AtomicU64,
    /// Failed API calls and watch errors.
    pub errors: AtomicU64,
    /// When the current run of failures began and when the last one came (ms since the Unix
    /// epoch; 0 while the watch delivers), for readiness.
    pub outage_since_ms: AtomicU64,
    pub last_error_ms: AtomicU64,
    /// Watches restarted after a silence longer than their timeout.
    pub idle_restarts: AtomicU64,
}

#[derive(Debug, Clone)]
pub struct NodeWatchOptions {
    /// Get each full list as a watch stream (`sendInitialEvents`, the WatchList feature of
    /// Kubernetes 1.32+): Nodes are decoded while the apiserver still sends the rest, where
    /// paged lists wait for each page before asking for the next. Falls back to paged lists
    /// for good when the apiserver refuses or does not end the stream.
    pub streaming_list: bool,
    /// How long a streamed list may go without an event before the apiserver is taken not to
    /// stream lists at all: a server or proxy that does not know sendInitialEvents ignores it
    /// and serves a plain watch, whose initial events never end. kube-apiserver streams from
    /// its watch cache without pauses; the default is generous so that a loaded one is not
    /// mistaken for such a server.
    pub streamed_list_idle_limit: Duration,
    /// Nodes per list page when paging: bounds the memory of a list at the cost of round trips.
    pub page_size: u32,
    /// Server-side watch timeout; the watch is then resumed from the last version.
    pub watch_timeout_secs: u32,
    pub backoff: BackoffPolicy,
}

impl Default for NodeWatchOptions {
    fn default() -> Self {
        NodeWatchOptions {
            streaming_list: true,
            streamed_list_idle_limit: Duration::from_secs(30),
            // Measured with 5000 Nodes of ~10 KB (tests/cluster_scale.rs): 500 per page peaks
            // at ~52 MiB RSS, 100 at ~28 MiB, for the same list time; 50 gains nothing more.
            page_size: 100,
            watch_timeout_secs: 290,
            backoff: BackoffPolicy::default(),
        }
    }
}

pub struct NodeWatcher {
    api: Api<SlimNode>,
    view: SharedView,
    local_name: String,
    options: NodeWatchOptions,
    status: watch::Sender<ViewStatus>,
    own: watch::Sender<Option<NodeInfo>>,
    stats: Arc<NodeWatchStats>,
}

impl NodeWatcher {
    pub fn new(client: Client, view: SharedView, options: NodeWatchOptions) -> Self {
        let local_name = lock_view(&view).local().node_name.clone();
        NodeWatcher {
            api: Api::all(client),
            view,
            local_name,
            options,
            status: watch::Sender::new(ViewStatus::default()),
            own: watch::Sender::new(None),
            stats: Arc::default(),
        }
    }

    /// Wakes on every planning-relevant change (coalesced) and on the first sync.
    pub fn status(&self) -> watch::Receiver<ViewStatus> {
        self.status.subscribe()
    }

    /// Our own Node as last seen (the view takes it into the lease, never as a peer): what
    /// the advertiser compares its annotations with. Changes only when its podCIDRs or
    /// annotations change.
    pub fn own_node(&self) -> watch::Receiver<Option<NodeInfo>> {
        self.own.subscribe()
    }

    pub fn stats(&self) -> Arc<NodeWatchStats> {
        self.stats.clone()
    }

    fn watcher_config(&self, streaming: bool) -> watcher::Config {
        let config = watcher::Config::default().timeout(self.options.watch_timeout_secs);
        if streaming {
            config.streaming_lists()
        } else {
            config.page_size(self.options.page_size)
        }
    }

    /// Runs until the task is dropped or aborted.
    pub async fn run(self) {
        let mut streaming = self.options.streaming_list;
        let mut feed = RelistFeed::new();
        // Listed Nodes not yet in the view (see `handle`).
        let mut deferred = Vec::new();
        let mut backoff = Backoff::new(self.options.backoff);
        let mut outage_start: Option<Instant> = None;
        // A new stream starts with a list; the feed keeps the view until that list completes.
        loop {
            let stream = watcher::watcher(self.api.clone(), self.watcher_config(streaming));
            let mut stream = std::pin::pin!(stream);
            // A streamed list in flight: between `Init` (the watch is open) and `InitDone`.
            let mut streaming_initial = false;
            loop {
                let next = if streaming_initial {
                    let limit = self.options.streamed_list_idle_limit;
                    match tokio::time::timeout(limit, stream.next()).await {
                        Ok(next) => next,
                        Err(_) => {
                            tracing::warn!(
                                idle_ms = limit.as_millis() as u64,
                                "the API server sent no end of the streamed Node list (it \
                                 ignores sendInitialEvents); using paged lists from now on"
                            );
                            streaming = false;
                            break;
                        }
                    }
                } else {
                    // The apiserver ends each watch after `watch_timeout_secs` and the watcher
                    // resumes it, so a live one answers within that. Silence much longer than
                    // that is a request that was accepted and never answered (a hung server or
                    // a black-holing load balancer; kube sets no read timeout): start over, so
                    // the view follows the cluster again once the server does.
                    let quiet =
                        Duration::from_secs(u64::from(self.options.watch_timeout_secs) + 60);
                    match tokio::time::timeout(quiet, stream.next()).await {
                        Ok(next) => next,
                        Err(_) => {
                            tracing::warn!(
                                quiet_s = quiet.as_secs(),
                                "no answer on the Node watch for longer than its timeout: \
                                 restarting it (the view and dataplane are kept)"
                            );
                            self.stats.idle_restarts.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                };
                let Some(item) = next else { break };
                let event = match item {
                    Ok(e) => e,
                    Err(e) => {
                        if streaming && refuses_streaming(&e) {
                            tracing::info!(
                                error = %e,
                                "the API server does not stream lists (WatchList feature gate \
                                 off, the default in Kubernetes 1.33); using paged lists"
                            );
                            streaming = false;
                            break;
                        }
                        let failure = classify(&e);
                        self.stats.errors.fetch_add(1, Ordering::Relaxed);
                        let now = crate::readiness::unix_ms();
                        self.stats.last_error_ms.store(now, Ordering::Relaxed);
                        let _ = self.stats.outage_since_ms.compare_exchange(
                            0,
                            now,
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                        );
                        report_error(&e, failure, backoff.failures(), feed.synced());
                        outage_start.get_or_insert_with(Instant::now);
                        tokio::time::sleep(backoff.next_delay()).await;
                        if failure == WatchFailure::ExpiredAtStart {
                            break;
                        }
                        continue;
                    }
                };
                match event {
                    Event::Init => streaming_initial = streaming,
                    Event::InitDone => streaming_initial = false,
                    _ => {}
                }
                // `Init` comes before any API call: only data proves the API is back.
                if !matches!(event, Event::Init) {
                    self.stats.outage_since_ms.store(0, Ordering::Relaxed);
                    self.stats.last_error_ms.store(0, Ordering::Relaxed);
                    if let Some(since) = outage_start.take() {
                        tracing::info!(
                            failures = backoff.failures(),
                            after_ms = since.elapsed().as_millis() as u64,
                            "Node watch recovered"
                        );
                    }
                    backoff.reset();
                }
                self.handle(&mut feed, &mut deferred, event);
            }
        }
    }

    fn handle(
        &self,
        feed: &mut RelistFeed,
        deferred: &mut Vec<Event<NodeInfo>>,
        event: Event<SlimNode>,
    ) {
        let Some(event) = to_node_info(event) else {
            tracing::warn!("ignoring a Node without a name");
            return;
        };
        if let Event::Apply(n) | Event::InitApply(n) = &event {
            self.stats.events.fetch_add(1, Ordering::Relaxed);
            if n.name == self.local_name {
                self.own.send_if_modified(|own| {
                    if own.as_ref() == Some(n) {
                        return false;
                    }
                    *own = Some(n.clone());
                    true
                });
            }
        }
        if let Event::Delete(n) = &event {
            self.stats.events.fetch_add(1, Ordering::Relaxed);
            if n.name == self.local_name {
                tracing::warn!(node = %n.name, "our own Node was deleted; keeping the dataplane as is");
            }
        }
        let listed_item = matches!(event, Event::InitApply(_));
        let outcome = if listed_item || matches!(event, Event::Init) {
            // The planner holds the view while it plans (milliseconds at thousands of peers,
            // several times during the first list): the start of a list and its Nodes wait
            // here, in order, rather than stall the list, and the next event that finds the
            // view free takes them all in. Their own outcome is always empty.
            deferred.push(event);
            let view = match self.view.try_lock() {
                Ok(v) => Some(v),
                Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
                Err(TryLockError::WouldBlock) => None,
            };
            if let Some(mut v) = view {
                for e in deferred.drain(..) {
                    feed.apply(&mut v, e);
                }
            }
            FeedOutcome::default()
        } else {
            let mut v = lock_view(&self.view);
            for e in deferred.drain(..) {
                feed.apply(&mut v, e);
            }
            feed.apply(&mut v, event)
        };
        if listed_item && !feed.synced() {
            let n = self.stats.events.load(Ordering::Relaxed);
            if n.is_multiple_of(LIST_PROGRESS_STEP) {
                self.status.send_modify(|s| s.listed = n);
            }
        }
        if outcome.relisted {
            let n = self.stats.relists.fetch_add(1, Ordering::Relaxed) + 1;
            let nodes = lock_view(&self.view).node_count();
            tracing::info!(lists = n, remote_nodes = nodes, "Node list complete");
        }
        if outcome.changed || outcome.first_sync {
            self.status.send_modify(|s| {
                if outcome.changed {
                    s.generation += 1;
                }
                s.synced = true;
            });
        }
    }
}

/// Keep only what planning reads, right away: the decoded Node is dropped here.
fn to_node_info(event: Event<SlimNode>) -> Option<Event<NodeInfo>> {
    Some(match event {
        Event::Init => Event::Init,
        Event::InitDone => Event::InitDone,
        Event::Apply(n) => Event::Apply(n.into_node_info()?),
        Event::InitApply(n) => Event::InitApply(n.into_node_info()?),
        Event::Delete(n) => Event::Delete(n.into_node_info()?),
    })
}

fn report_error(e: &watcher::Error, failure: WatchFailure, failures_before: u32, synced: bool) {
    match failure {
        // Expected after an etcd compaction or a long disconnect.
        WatchFailure::Expired => tracing::info!(
            "Node watch expired (410 Gone); relisting, the view is kept meanwhile"
        ),
        WatchFailure::ExpiredAtStart => tracing::info!(
            "Node watch refused as expired (410); restarting with a fresh list, the view is kept meanwhile"
        ),
        WatchFailure::Other if failures_before == 0 => tracing::warn!(
            error = %e,
            synced,
            "Node watch failed; retrying with backoff, the view and dataplane are kept as they are"
        ),
        WatchFailure::Other => {
            tracing::debug!(error = %e, failures = failures_before + 1, "Node watch still failing")
        }
    }
}

//! The side-effect half of the dataplane: read what trellis owns from the kernel, apply diff
//! ops, and watch for drift, all over rtnetlink.
//!
//! - [`read_actual`]: dump owned links (with their VXLAN/IPIP attributes, MTU, MAC, up),
//!   their addresses, main-table routes of protocol [`ROUTE_PROTOCOL`], permanent neighbours
//!   and permanent `self` FDB entries on owned links.
//! - [`apply`]: execute ops in order, failures reported per op without stopping the others.
//! - [`DriftMonitor`]: a signal when something trellis owns changes.
//! - [`Dataplane`]: the facade the agent calls, `reconcile(desired)` = read + diff + apply;
//!   `reconcile_known(desired)` diffs against what the last clean pass left instead of reading.
//! - [`wireguard::WgSocket`]: WireGuard devices' keys and peers, over generic netlink.
//!
//! Every netlink socket belongs to the network namespace of the thread that opened it; open
//! them on the thread (or under the `ip netns exec`) of the namespace to program.
//!
//! [`ROUTE_PROTOCOL`]: crate::net::ROUTE_PROTOCOL

mod apply;
mod bulk;
mod expect;
mod monitor;
mod parse;
mod read;
mod wg_ops;
pub mod wireguard;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtnetlink::Handle;
use tokio::task::JoinHandle;

pub use apply::{apply, ApplyReport, OpError, IN_FLIGHT};
pub use expect::{agrees, Expected};
pub use monitor::{concerns_owned, DriftMonitor, MonitorCounters, MonitorStats, Owned};
pub use read::{read_actual, read_main_routes, MainRoute};

use trellis_common::netlink::{describe, errno};

use self::bulk::BulkSocket;
use super::desired::KernelState;
use super::diff::diff;

/// A netlink failure that stops a whole read (an op's failure is an [`OpError`] instead).
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot {what}: {detail}")]
    Kernel {
        what: &'static str,
        errno: Option<i32>,
        detail: String,
    },
    #[error(
        "cannot {what}: {source} (the agent needs CAP_NET_ADMIN in the node's network namespace)"
    )]
    Socket {
        what: &'static str,
        source: std::io::Error,
    },
}

impl NetlinkError {
    pub fn new(what: &'static str, e: rtnetlink::Error) -> NetlinkError {
        NetlinkError::Kernel {
            what,
            errno: errno(&e),
            detail: describe(&e),
        }
    }

    pub fn socket(what: &'static str, source: std::io::Error) -> NetlinkError {
        NetlinkError::Socket { what, source }
    }
}

/// What one [`Dataplane::reconcile`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Ops the diff produced.
    pub ops_planned: usize,
    /// Ops that took effect.
    pub ops_applied: usize,
    /// Ops applied, by [`Op::label`], for metrics.
    pub applied_by_label: BTreeMap<&'static str, usize>,
    pub errors: Vec<OpError>,
    /// Objects trellis owned in the kernel before applying (see `KernelState::len`).
    pub actual_len: usize,
    /// Whether the kernel was read (else the diff ran against the last clean pass's result).
    pub read_kernel: bool,
    /// Whole reconcile: read, diff and apply.
    pub duration: Duration,
}

impl ReconcileReport {
    /// True when the kernel now holds the desired state (as far as the ops tell).
    pub fn converged(&self) -> bool {
        self.errors.is_empty()
    }

    /// Failed ops on this node's own devices (`own`, the configured backend's) and their
    /// addresses.
    pub fn own_errors<'a>(&'a self, own: &'a [String]) -> impl Iterator<Item = &'a OpError> {
        self.errors.iter().filter(move |e| is_own(e, own))
    }

    /// Failed ops that exist for a peer's sake: its routes, neighbours and FDB entries, and
    /// the devices made only for peers (another VNI, or a port a peer advertises), whose
    /// refusal must not make this node not ready.
    pub fn peer_errors<'a>(&'a self, own: &'a [String]) -> impl Iterator<Item = &'a OpError> {
        self.errors.iter().filter(move |e| !is_own(e, own))
    }
}

fn is_own(e: &OpError, own: &[String]) -> bool {
    e.op.device().is_some_and(|d| own.iter().any(|o| o == d))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deletes {
    Apply,
    Skip,
}

/// The netlink executor the agent holds for its whole life.
#[derive(Debug)]
pub struct Dataplane {
    handle: Handle,
    connection: JoinHandle<()>,
    /// Entry ops go here, many per syscall; `handle` serves links, addresses and dumps.
    bulk: BulkSocket,
    /// What the kernel holds as far as this executor knows: the desired state of the last
    /// pass that applied without error. Published to the drift monitor, which signals any
    /// change that disagrees with it, so between signals it stays true.
    known: Expected,
    /// Link name -> ifindex, kept between passes for [`Dataplane::reconcile_known`].
    index: HashMap<String, u32>,
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl Dataplane {
    /// Open a netlink socket in the calling thread's network namespace. Must run inside a
    /// Tokio runtime (the socket's I/O task is spawned on it).
    pub fn new() -> Result<Dataplane, NetlinkError> {
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| NetlinkError::socket("open netlink socket", e))?;
        let bulk =
            BulkSocket::open().map_err(|e| NetlinkError::socket("open netlink socket", e))?;
        Ok(Dataplane {
            handle,
            connection: tokio::spawn(conn),
            bulk,
            known: Expected::default(),
            index: HashMap::new(),
        })
    }

    /// The state this executor drives the kernel to; give it to
    /// [`DriftMonitor::start_expecting`] so that the executor's own changes are not drift.
    pub fn expected(&self) -> Expected {
        self.known.clone()
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// What trellis owns in the kernel now.
    pub async fn read_actual(&self) -> Result<KernelState, NetlinkError> {
        read_actual(&self.handle).await
    }

    /// Make the kernel hold `desired`: read what trellis owns, diff, apply. A failed read is
    /// an error (nothing was changed); failed ops are in the report, the others applied.
    /// Running it again right after a clean run applies nothing.
    ///
    /// `desired` is the whole truth: an empty state removes every trellis device and route,
    /// so call this only with a plan (never before the first one exists).
    pub async fn reconcile(
        &mut self,
        desired: &KernelState,
    ) -> Result<ReconcileReport, NetlinkError> {
        self.reconcile_shared(Arc::new(desired.clone())).await
    }

    /// [`Dataplane::reconcile`] of a state the caller shares (kept as the expectation
    /// without a copy: 15000 entries at 5000 peers).
    pub async fn reconcile_shared(
        &mut self,
        desired: Arc<KernelState>,
    ) -> Result<ReconcileReport, NetlinkError> {
        let start = Instant::now();
        let mut snap = read::read_snapshot(&self.handle).await?;
        let known = self.known.get();
        wg_ops::keep_roamed(&mut snap.state, &desired, known.as_deref(), &snap.live_wg);
        self.index = snap.names.into_iter().map(|(i, n)| (n, i)).collect();
        Ok(self
            .apply_diff(desired, &snap.state, true, start, Deletes::Apply)
            .await)
    }

    /// [`Dataplane::reconcile`] without reading the kernel when the last pass left it as it
    /// wanted: diff against that state instead. Only sound while a [`DriftMonitor`] started
    /// with [`Dataplane::expected`] runs, and the caller does a full [`Dataplane::reconcile`]
    /// on each of its signals (and periodically, for what the kernel changes silently).
    pub async fn reconcile_known(
        &mut self,
        desired: Arc<KernelState>,
    ) -> Result<ReconcileReport, NetlinkError> {
        let Some(known) = self.known.get() else {
            return self.reconcile_shared(desired).await;
        };
        let start = Instant::now();
        Ok(self
            .apply_diff(desired, &known, false, start, Deletes::Apply)
            .await)
    }

    /// Apply what `desired` adds (and changes to our own devices) and delete or re-point
    /// nothing: for a view known to be incomplete (the first Node list still arriving), where
    /// deleting what it lacks would delete the entries of peers not listed yet, and re-pointing
    /// an entry could hand it to a Node whose claim loses once the rest is listed (see
    /// `KernelState::without_repointing`). Programming those already listed while the
    /// rest arrives overlaps the API list with the kernel work at start. What the executor then
    /// knows is the kernel as read plus what was added, so the pass after the list may be a
    /// [`Dataplane::reconcile_known`] that deletes the stale entries without a second read.
    pub async fn reconcile_additions(
        &mut self,
        desired: Arc<KernelState>,
    ) -> Result<ReconcileReport, NetlinkError> {
        let start = Instant::now();
        let (actual, read_kernel) = match self.known.get() {
            Some(k) => (k, false),
            None => {
                let mut snap = read::read_snapshot(&self.handle).await?;
                wg_ops::keep_roamed(&mut snap.state, &desired, None, &snap.live_wg);
                self.index = snap.names.into_iter().map(|(i, n)| (n, i)).collect();
                (Arc::new(snap.state), true)
            }
        };
        let desired = Arc::new(desired.without_repointing(&actual));
        Ok(self
            .apply_diff(desired, &actual, read_kernel, start, Deletes::Skip)
            .await)
    }

    async fn apply_diff(
        &mut self,
        desired: Arc<KernelState>,
        actual: &KernelState,
        read_kernel: bool,
        start: Instant,
        deletes: Deletes,
    ) -> ReconcileReport {
        let mut ops = diff(&desired, actual);
        let expect = match deletes {
            Deletes::Apply => desired,
            Deletes::Skip => {
                ops.retain(|op| !op.is_delete());
                // What the kernel had stays beside what is added: a later light pass deletes
                // what is stale without reading the kernel again.
                Arc::new(actual.overlaid_with(&desired))
            }
        };
        // Published before applying: the notifications of these ops agree with it.
        self.known.set(Some(expect));
        let report =
            apply::apply_with_index(&self.handle, &mut self.bulk, &ops, &mut self.index).await;
        if !report.errors.is_empty() {
            // Some of it did not happen: what the kernel holds is unknown until read again.
            self.known.set(None);
        }
        ReconcileReport {
            ops_planned: ops.len(),
            ops_applied: report.applied,
            applied_by_label: report.applied_by_label,
            errors: report.errors,
            actual_len: actual.len(),
            read_kernel,
            duration: start.elapsed(),
        }
    }
}

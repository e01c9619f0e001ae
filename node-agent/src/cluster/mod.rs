//! The Kubernetes side of the agent, each module with one job:
//!
//! - [`client`]: a `kube::Client` from `--kubeconfig`, `KUBECONFIG` or the in-cluster config;
//! - [`node_watch`]: Nodes → [`ClusterView`](crate::view::ClusterView), with a coalesced
//!   "view changed" signal, surviving API outages without ever clearing the view;
//! - [`own_node`]: wait for our own Node's podCIDRs, read what the operator and our previous
//!   run left on it, advertise our annotations, set `NetworkUnavailable=False`;
//! - [`config_watch`]: the net-conf.json ConfigMap → the latest good [`NetConfig`](crate::config::NetConfig);
//! - [`events`]: Normal/Warning Events on our Node.
//!
//! Nothing here touches the kernel; the watchers only feed plain data to the reconcile loop.

mod backoff;
pub mod client;
pub mod config_watch;
pub mod events;
pub mod node_object;
pub mod node_watch;
pub mod own_node;
mod relist;
mod watch_error;

pub(crate) use backoff::Backoff;
pub use backoff::BackoffPolicy;
pub use client::{connect, ClientError, ClientSource};
pub use config_watch::{
    ConfigRejection, ConfigSource, ConfigStats, ConfigTracker, ConfigWatcher, Verdict, NET_CONF_KEY,
};
pub use events::NodeEvents;
pub use node_object::SlimNode;
pub use node_watch::{
    lock_view, NodeWatchOptions, NodeWatchStats, NodeWatcher, SharedView, ViewStatus,
};
pub use own_node::{OwnNode, OwnNodeError, OwnNodeState, WaitOptions};
pub use relist::{FeedOutcome, RelistFeed};

/// The name trellis writes as field manager and event reporter.
pub const MANAGER: &str = "trellis-agent";

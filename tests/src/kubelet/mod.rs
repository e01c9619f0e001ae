//! A node driver that plays kubelet for the end-to-end tests: it turns Pods
//! from the API into CRI calls on a node's own containerd, the way kubelet
//! would, so the real DaemonSet manifest can run against the emulator.
//!
//! Layers, each usable without the next:
//! - [`translate`] (pure): a `PodSpec` + [`NodeFacts`] -> CRI sandbox and
//!   container configs, volume plans and probe plans, or a
//!   [`TranslateError`] naming the first field the driver cannot honour.
//! - [`volumes`], [`env`](mod@env), [`security`], [`resources`], [`probes`]: the
//!   pieces of that translation, one concern each.
//! - [`runtime`]: one Pod run through CRI on a node's containerd (sandbox,
//!   init containers in order, containers, restarts with backoff from
//!   [`container`], probes via [`probe_runner`], teardown), its Pod status
//!   from [`status`].
//! - [`daemonset`], [`scheduler`] (pure decisions, with [`placement`]):
//!   one Pod per eligible Node from a DaemonSet, a node for plain Pods;
//!   [`controllers`] runs them against the API.
//! - [`node_driver`]: the per-node kubelet loop against the API (Pods with
//!   `spec.nodeName=<node>`, status and Events written back), volume data
//!   fetched by [`api_data`]. [`rollout`]: template revisions, RollingUpdate
//!   and the DaemonSet status. [`harness`]: a test node (netns + containerd).
//!   [`background`]: all of it looping in a task, for tests that only
//!   want Pods to run.
//!
//! Where it differs from kubelet, on purpose and visibly:
//! - Refused with an error naming the field (Pending + `UnsupportedPodSpec`
//!   Event through the API): any Pod, container, volume, probe or
//!   securityContext field outside the allow-lists (e.g. secret and PVC
//!   volumes, subPath, envFrom, startupProbe, lifecycle hooks, node
//!   affinity, Localhost seccomp, imagePullPolicy Always, configMap volumes
//!   without items, runAsNonRoot without runAsUser).
//! - Accepted with a Warning Event (`NotEnforced`): emptyDir `medium:
//!   Memory` and `sizeLimit` (a plain directory).
//! - Not done: images are never pulled (import them into the node's
//!   containerd); no cluster DNS (dnsPolicy is accepted, the runtime's
//!   resolv.conf is kept); exited instances are removed at once (no logs
//!   kept after a restart); nothing injects the
//!   kube-api-access volume (the ServiceAccount admission plugin's job):
//!   Pods must declare it, as deploy's DaemonSet does; the scheduler and
//!   the DaemonSet controller poll rather than watch.
//!
//! It lives in tests/ on purpose: nothing here may ever be linked into the
//! agent or the plugin.

pub mod api_data;
pub mod background;
pub mod container;
pub mod controllers;
pub mod daemonset;
pub mod env;
pub mod fields;
pub mod harness;
pub mod node_driver;
pub mod placement;
pub mod probe_runner;
pub mod probes;
pub mod resources;
pub mod rollout;
pub mod runtime;
pub mod scheduler;
pub mod security;
pub mod status;
pub mod translate;
pub mod volumes;

pub use runtime::{PodEvent, PodRuntime, RuntimeError, RuntimeOptions};
pub use translate::{NodeFacts, PodPlan, TranslateError};

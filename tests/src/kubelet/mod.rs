//! A node driver that plays kubelet for the end-to-end tests: it turns Pods
//! from the API into CRI calls on a node's own containerd, the way kubelet
//! would, so the real DaemonSet manifest can run against the emulator.
//!
//! Layers, each usable without the next:
//! - [`translate`] (pure): a `PodSpec` + [`NodeFacts`] -> CRI sandbox and
//!   container configs, volume plans and probe plans, or a
//!   [`TranslateError`] naming the first field the driver cannot honour.
//! - [`volumes`], [`env`], [`security`], [`resources`], [`probes`]: the
//!   pieces of that translation, one concern each.
//!
//! It lives in tests/ on purpose: nothing here may ever be linked into the
//! agent or the plugin.

pub mod env;
pub mod fields;
pub mod probes;
pub mod resources;
pub mod security;
pub mod translate;
pub mod volumes;

pub use translate::{NodeFacts, PodPlan, TranslateError};

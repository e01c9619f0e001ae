//! Desired state and its reconciliation against the kernel.
//!
//! [`desired`] is the plain-data shape of what trellis owns; [`diff`] computes the ops that
//! turn the actual state into the desired one. Both are pure; executors apply the ops.

pub mod desired;
pub mod diff;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod netlink;

//! What the CNI plugin (`trellis`) and the node agent (`trellis-agent`) both need, kept in one
//! place so the two never drift apart:
//!
//! - [`netlink`]: the thin layer over rtnetlink both build on (errno of a failed call, looking a
//!   link up where "no such device" is an answer rather than an error, link attribute readers);
//! - [`subnet_env`]: `/run/flannel/subnet.env`, the file through which the agent tells the plugin
//!   this node's subnet and MTU (flannel's format);
//! - [`hash::fnv1a`]: the stable hash behind derived names and MACs.

pub mod hash;
pub mod netlink;
pub mod subnet_env;

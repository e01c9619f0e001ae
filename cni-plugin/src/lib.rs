//! trellis CNI plugin: a `cni0` bridge, one veth pair per pod, and
//! host-local compatible IPAM, configured from the agent's subnet.env.

pub mod cli;
pub mod commands;
pub mod ipam;
pub mod link;
pub mod names;
pub mod netns;
pub mod plan;
pub mod reaper;
pub mod spec;

//! trellis-agent: the node agent of the trellis pod network.
//!
//! The pure core is the architecture's "desired state, then reconcile" loop: Node watch and
//! config feed a [`view::ClusterView`]; [`backend::plan`] turns it into a
//! [`dataplane::desired::DesiredState`]; [`dataplane::diff::diff`] compares that with what the
//! kernel holds and yields the ops.
//!
//! [`net`] is the ground floor: the basic types (address family, MAC, device names, VXLAN port,
//! route protocol) every other module uses, importing nothing from the crate itself.

pub mod advertiser;
pub mod agent;
pub mod annotations;
pub mod backend;
pub mod bridge_nf;
pub mod capabilities;
pub mod cluster;
pub mod config;
pub mod dataplane;
pub mod debug_state;
pub mod firewall;
pub mod health;
pub mod install_cni;
pub mod metrics;
pub mod net;
pub mod netpol;
pub mod oneshot;
pub mod preflight;
pub mod readiness;
pub mod state_doc;
pub mod status;
pub mod underlay;
pub mod uninstall_cni;
pub mod view;
pub mod wg_key;
pub mod wg_keyfile;

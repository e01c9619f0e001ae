//! The `/debug/state` document that `trellis-agent status` reads.
//!
//! Rendering lists every kernel entry (15000 lines at 5000 peers), so the loop only hands over
//! the pass's plan and context, and the document (a [`StateDoc`]) is built when someone asks
//! for it.

use std::sync::Arc;

use crate::backend::Plan;
use crate::dataplane::desired::KernelState;
use crate::state_doc::{self, PeerError, SkippedNode, StateDoc};

/// What the last pass knew, beside the plan.
#[derive(Debug, Clone, Default)]
pub struct PassContext {
    pub node: String,
    pub backend: String,
    pub lease: String,
    pub underlay: String,
    pub firewall_backend: String,
    pub firewall: String,
    pub firewall_drift: String,
    pub converged: bool,
    /// Peer entries the kernel refused in the last pass: (entry, error).
    pub peer_errors: Vec<(String, String)>,
}

/// The last pass, as `/debug/state` reports it; `None` before the first one.
#[derive(Debug, Default)]
pub struct DebugState(Option<(Plan, Arc<KernelState>, PassContext)>);

impl DebugState {
    /// `kernel` is the plan's kernel state, which the pass handed to the executor.
    pub fn new(plan: Plan, kernel: Arc<KernelState>, ctx: PassContext) -> DebugState {
        DebugState(Some((plan, kernel, ctx)))
    }

    /// The document, built now; `None` before the first pass.
    fn document(&self) -> Option<StateDoc> {
        let (plan, kernel, ctx) = self.0.as_ref()?;
        Some(StateDoc {
            node: ctx.node.clone(),
            backend: ctx.backend.clone(),
            lease: ctx.lease.clone(),
            underlay: ctx.underlay.clone(),
            firewall_backend: ctx.firewall_backend.clone(),
            firewall: ctx.firewall.clone(),
            firewall_drift: ctx.firewall_drift.clone(),
            converged: ctx.converged,
            peer_errors: ctx
                .peer_errors
                .iter()
                .map(|(entry, error)| PeerError {
                    entry: entry.clone(),
                    error: error.clone(),
                })
                .collect(),
            peers: plan.peers,
            skipped: plan
                .skipped
                .iter()
                .map(|s| SkippedNode {
                    node: s.node.clone(),
                    reason: s.reason.to_string(),
                })
                .collect(),
            mtu: plan.state.mtu,
            subnet_env: plan.state.subnet_env.render(),
            kernel: crate::status::describe(kernel),
        })
    }

    /// The document's JSON, `{}` before the first pass.
    pub fn render(&self) -> String {
        state_doc::encode(self.document().as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{plan, PlanOptions};
    use crate::view::fixtures::{view, vxlan_config, PeerSpec};

    fn sample() -> DebugState {
        let mut v = view();
        v.upsert_node(&PeerSpec::new(2, "vxlan").node());
        let mut no_data = PeerSpec::new(3, "vxlan").node();
        no_data
            .annotations
            .remove("flannel.alpha.coreos.com/backend-data");
        v.upsert_node(&no_data);
        let plan = match plan(&v, &vxlan_config(), &PlanOptions::default()) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        };
        let kernel = Arc::new(plan.state.kernel.clone());
        DebugState::new(
            plan,
            kernel,
            PassContext {
                node: "node-1".into(),
                backend: "vxlan".into(),
                lease: "10.244.1.0/24 public 192.168.1.1".into(),
                underlay: "eth0 (index 2, mtu 1500)".into(),
                firewall_backend: "iptables".into(),
                firewall: "-A TRELLIS-FWD -s 10.244.0.0/16 -j ACCEPT\n-A TRELLIS-FWD -d 10.244.0.0/16 -j ACCEPT\n".into(),
                firewall_drift: "chain TRELLIS-FWD changed \"x\"".into(),
                converged: false,
                peer_errors: vec![("route 10.244.9.0/24".into(), "Invalid argument (os error 22)".into())],
            },
        )
    }

    /// The wire format, pinned: the same keys, nesting and values as the `json!` map it was.
    #[test]
    fn the_document_keeps_its_wire_format() {
        assert_eq!(sample().render(), crate::state_doc::SAMPLE_JSON);
        assert_eq!(DebugState::default().render(), "{}");
    }
}

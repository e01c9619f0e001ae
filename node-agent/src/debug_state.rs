//! The `/debug/state` document that `trellis-agent status` reads.
//!
//! Rendering lists every kernel entry (15000 lines at 5000 peers), so the loop only hands over
//! the pass's plan and context, and the document is built when someone asks for it.

use std::sync::Arc;

use crate::backend::Plan;
use crate::dataplane::desired::KernelState;

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

    pub fn render(&self) -> String {
        let Some((plan, kernel, ctx)) = &self.0 else {
            return "{}".to_string();
        };
        serde_json::json!({
            "node": ctx.node,
            "backend": ctx.backend,
            "lease": ctx.lease,
            "underlay": ctx.underlay,
            "firewall_backend": ctx.firewall_backend,
            "firewall": ctx.firewall,
            "firewall_drift": ctx.firewall_drift,
            "converged": ctx.converged,
            "peer_errors": ctx.peer_errors.iter().map(|(entry, error)| serde_json::json!({"entry": entry, "error": error})).collect::<Vec<_>>(),
            "peers": plan.peers,
            "skipped": plan.skipped.iter().map(|s| serde_json::json!({"node": s.node, "reason": s.reason.to_string()})).collect::<Vec<_>>(),
            "mtu": plan.state.mtu,
            "subnet_env": plan.state.subnet_env.render(),
            "kernel": crate::status::describe(kernel),
        })
        .to_string()
    }
}

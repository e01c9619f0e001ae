//! Peers the planner skipped (a Node with a bad or stolen podCIDR, a missing public IP, ...):
//! each new skip is logged by every agent, and reported as a Warning Event on the skipped
//! Node by a few agents only, rate-limited, since every agent sees the same skip and a burst
//! of hostile Nodes (or one flapping its annotations) would flood the API.

use std::time::{Duration, Instant};

use tracing::{info, warn};
use trellis_common::hash::fnv1a;

use super::Agent;
use crate::backend::Plan;
use crate::cluster::{lock_view, SharedView};
use crate::config::NetConfig;

/// `PeerSkipped` Events of one agent: a burst of at most 10, then one every 2 s (each new
/// skip is logged regardless). Each skipped Node is reported by a few agents of the cluster
/// only (see `reports_skip`), so this bounds what one flapping Node can cost the API.
const SKIP_EVENTS_BURST: f64 = 10.0;
const SKIP_EVENTS_EVERY: Duration = Duration::from_secs(2);

/// How many agents report each skipped Node. More than one: a reporter may be a Node that
/// runs no trellis agent (flannel's, during a migration, or a valid peer nobody runs).
const SKIP_REPORTERS: usize = 3;

impl Agent {
    /// Log the skips that are new and those that ended, send the Events this agent owes, and
    /// count the skips in the metrics.
    pub(super) fn report_skips(&mut self, plan: &Plan, config: &NetConfig) {
        let (fresh, cleared) = self.state.skip_log.update(&plan.skipped);
        let reporters = if fresh.is_empty() {
            Vec::new()
        } else {
            skip_reporters(&self.view, config)
        };
        for s in fresh {
            warn!(node = %s.node, reason = %s.reason, "peer skipped");
            // Off the loop: the Event waits on the API server. The log has every one.
            if reports_skip(&reporters, &s.node) && self.state.skip_events.take() {
                let (events, node, why) =
                    (self.events.clone(), s.node.clone(), s.reason.to_string());
                tokio::spawn(async move { events.peer_skipped(&node, &why).await });
            }
        }
        for node in cleared {
            info!(%node, "peer no longer skipped (fixed or deleted)");
        }
        self.metrics.set_skipped(
            plan.skipped
                .iter()
                .filter(|s| !s.reason.is_benign())
                .map(|s| s.reason.label()),
        );
    }
}

/// The agents that may report a skip: this node and the peers it programs, sorted (the first
/// is this node).
fn skip_reporters(view: &SharedView, config: &NetConfig) -> Vec<String> {
    let v = lock_view(view);
    let mut names = vec![v.local().node_name.clone()];
    // Planning read the same view: resolving again costs what a plan does, only on passes
    // with news to report.
    names.extend(v.resolve(config).peers.iter().map(|p| p.name.to_string()));
    names
}

/// Whether this node (`reporters[0]`) is among the [`SKIP_REPORTERS`] agents that report
/// `skipped`: those whose hash with the skipped Node's name is highest (rendezvous hashing),
/// which every agent with the same view picks alike.
fn reports_skip(reporters: &[String], skipped: &str) -> bool {
    let score = |r: &str| fnv1a(&[r.as_bytes(), b"/", skipped.as_bytes()]);
    let Some(me) = reporters.first() else {
        return false;
    };
    let mine = (score(me), me.as_str());
    let above = reporters
        .iter()
        .filter(|r| (score(r), r.as_str()) > mine)
        .count();
    above < SKIP_REPORTERS
}

/// A token bucket for the `PeerSkipped` Events.
pub(super) struct RateLimit {
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    pub(super) fn new() -> Self {
        RateLimit {
            tokens: SKIP_EVENTS_BURST,
            last: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let refill = self.last.elapsed().as_secs_f64() / SKIP_EVENTS_EVERY.as_secs_f64();
        self.last = Instant::now();
        self.tokens = (self.tokens + refill).min(SKIP_EVENTS_BURST);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_agents_report_each_skipped_node() {
        let nodes: Vec<String> = (1..=7).map(|i| format!("node-{i}")).collect();
        for skipped in ["zz-thief", "h-ip", "old-cidr", "a"] {
            let reporting = nodes
                .iter()
                .filter(|me| {
                    // Each agent lists itself first, then the others.
                    let mut view = vec![me.to_string()];
                    view.extend(nodes.iter().filter(|n| n != me).cloned());
                    reports_skip(&view, skipped)
                })
                .count();
            assert_eq!(reporting, SKIP_REPORTERS, "{skipped}");
        }
    }

    #[test]
    fn skip_events_come_in_a_bounded_burst() {
        let mut limit = RateLimit::new();
        let sent = (0..100).filter(|_| limit.take()).count();
        assert_eq!(sent, SKIP_EVENTS_BURST as usize);
    }
}

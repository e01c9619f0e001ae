//! What a pass tells the outside: readiness (`/readyz`, the `programmed` metric), the host
//! checks, refused peer entries, the backend switch (log, metric, Event), and the
//! `/debug/state` document.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::Agent;
use crate::backend::Plan;
use crate::bridge_nf::BridgeNf;
use crate::cluster::lock_view;
use crate::config::{BackendConfig, BackendType, NetConfig, WgMode};
use crate::dataplane::desired::KernelState;
use crate::dataplane::netlink::ReconcileReport;
use crate::debug_state::{DebugState, PassContext};
use crate::net::{vxlan6_link_name, vxlan_link_name, IPIP_LINK_NAME, WG6_LINK_NAME, WG_LINK_NAME};
use crate::readiness;

/// How soon a pass whose own side failed is retried.
const OWN_RETRY: Duration = Duration::from_secs(1);

/// The devices this node needs whatever its peers do: the configured backend's. Devices made
/// only for peers (another VNI during a change, the old backend's during a switch) are not.
pub(super) fn own_devices(config: &NetConfig) -> Vec<String> {
    match &config.backend {
        BackendConfig::Vxlan(v) => {
            let mut own = vec![vxlan_link_name(v.vni)];
            if config.ipv6().is_some() {
                own.push(vxlan6_link_name(v.vni));
            }
            own
        }
        BackendConfig::Ipip(_) => vec![IPIP_LINK_NAME.to_string()],
        BackendConfig::HostGw(_) => Vec::new(),
        // flannel-wg carries IPv4, and IPv6 too unless the mode gives it its own device.
        BackendConfig::Wireguard(w) => {
            let separate = w.mode == WgMode::Separate;
            let v4 = (config.ipv4().is_some() || !separate).then_some(WG_LINK_NAME);
            let v6 = (config.ipv6().is_some() && separate).then_some(WG6_LINK_NAME);
            v4.into_iter().chain(v6).map(str::to_string).collect()
        }
    }
}

impl Agent {
    /// Check what the host must provide and the agent cannot set itself (CAP_NET_ADMIN,
    /// br_netfilter); say so loudly (error log, Warning Event) when it changes. Readiness
    /// reports it meanwhile.
    pub(super) fn check_host(&mut self, config: &NetConfig) {
        // Every problem at once, so fixing one does not reveal the next only then.
        let problems: Vec<String> = [
            crate::capabilities::check(
                crate::capabilities::effective(),
                crate::capabilities::runs_as_root(),
            ),
            BridgeNf::read().check(config.ipv4().is_some(), config.ipv6().is_some()),
        ]
        .into_iter()
        .filter_map(Result::err)
        .collect();
        let now = if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        };
        if now == self.state.host {
            return;
        }
        match &now {
            Err(why) => {
                error!("{why}");
                let (events, why) = (self.events.clone(), why.clone());
                tokio::spawn(async move { events.host_not_ready(&why).await });
            }
            Ok(()) => info!(
                "the host provides what trellis needs: CAP_NET_ADMIN, and br_netfilter for \
                 Services between pods on this node"
            ),
        }
        self.state.host = now;
    }

    /// Readiness from this pass's reasons (none: ready). Not sticky, but one failing pass of a
    /// node that was ready is taken for a hiccup (the xtables lock held, a netlink dump
    /// interrupted): it is retried within a second, and only a second failure in a row makes
    /// the node not ready.
    pub(super) fn report_readiness(&mut self, reasons: Vec<String>) {
        let st = &mut self.state;
        if reasons.is_empty() {
            st.failing_passes = 0;
            self.metrics.set_programmed(Ok(()));
            return;
        }
        st.failing_passes += 1;
        let soon = tokio::time::Instant::now() + OWN_RETRY;
        st.retry_at = Some(st.retry_at.map_or(soon, |t| t.min(soon)));
        if st.failing_passes >= 2 || !self.metrics.is_programmed() {
            self.metrics.set_programmed(Err(reasons.join("; ")));
        }
    }

    /// Report the peer entries the kernel refused (each once when it starts, changes or
    /// ends), count them, and schedule their retry: a full pass after a backoff, reset once
    /// none fails.
    pub(super) fn note_peer_failures(&mut self, report: &ReconcileReport, own: &[String]) {
        let st = &mut self.state;
        let (fresh, cleared) = st.peer_failures.update(report.peer_errors(own));
        for e in fresh {
            warn!(
                "peer entry refused by the kernel (other peers unaffected; retrying with backoff): {e}"
            );
        }
        for entry in cleared {
            info!(%entry, "peer entry no longer failing");
        }
        self.metrics.record_peer_errors(
            report
                .peer_errors(own)
                .map(|e| readiness::errno_label(e.errno)),
            st.peer_failures.len(),
        );
        if st.peer_failures.is_empty() {
            st.peer_backoff.reset();
            st.retry_at = None;
        } else {
            st.retry_at = Some(tokio::time::Instant::now() + st.peer_backoff.next_delay());
        }
    }

    /// A pass for another backend than the last programmed one starts a switch, timed from
    /// here until a pass programs it.
    pub(super) fn note_switch_start(&mut self, backend_now: BackendType, started: Instant) {
        let st = &mut self.state;
        if let Some(prev) = st.applied_backend {
            if prev != backend_now && st.switch_started.is_none() {
                info!(
                    from = prev.as_str(),
                    to = backend_now.as_str(),
                    "switching backend"
                );
                st.switch_started = Some((prev, backend_now, started));
            }
        }
    }

    /// This node is programmed with `backend_now`: the Node may take pods, and a backend
    /// switch under way is done.
    pub(super) fn programmed(&mut self, backend_now: BackendType) {
        self.advertiser.network_available(backend_now);
        if let Some((from, to, t0)) = self.state.switch_started.take() {
            let took = t0.elapsed();
            self.metrics
                .backend_switches
                .fetch_add(1, Ordering::Relaxed);
            info!(from = from.as_str(), to = to.as_str(), took = ?took, "backend switched");
            // Off the loop: the Event waits on the API server, kernel repair must not.
            let events = self.events.clone();
            tokio::spawn(async move { events.backend_switched(from, to, took).await });
        }
        self.state.applied_backend = Some(backend_now);
    }

    /// Hand the pass to `/debug/state`, which renders it only when asked.
    pub(super) fn publish_debug(
        &self,
        plan: Plan,
        kernel: Arc<KernelState>,
        backend_now: BackendType,
        firewall_drift: String,
        converged: bool,
    ) {
        let ctx = {
            let v = lock_view(&self.view);
            let l = v.local();
            let or_dash = |s: Option<String>| s.unwrap_or_else(|| "-".into());
            PassContext {
                node: l.node_name.clone(),
                backend: backend_now.as_str().to_string(),
                lease: format!(
                    "{} public {}",
                    or_dash(l.subnet_v4.map(|s| s.to_string())),
                    or_dash(l.public_ip_v4.map(|s| s.to_string()))
                ),
                underlay: format!(
                    "{} (index {}, mtu {})",
                    l.underlay.name, l.underlay.index, l.underlay.mtu
                ),
                firewall_backend: self.firewall.backend_label().to_string(),
                firewall: self.firewall.installed().to_string(),
                firewall_drift,
                converged,
                peer_errors: self
                    .state
                    .peer_failures
                    .current()
                    .map(|(entry, error)| (entry.clone(), error.clone()))
                    .collect(),
            }
        };
        let _ = self
            .debug_tx
            .send(Arc::new(DebugState::new(plan, kernel, ctx)));
    }
}

#[cfg(test)]
mod tests {
    use super::own_devices;
    use crate::config::NetConfig;

    fn devices(families: &str, backend: &str) -> Vec<String> {
        let text = format!(r#"{{{families}, "Backend": {backend}}}"#);
        own_devices(&NetConfig::parse(&text).expect("config").config)
    }

    #[test]
    fn wireguard_devices_follow_the_families_and_the_mode() {
        let v4 = r#""Network": "10.244.0.0/16""#;
        let v6 = r#""EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd00::/56""#;
        let dual = r#""Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00::/56""#;
        let wg = r#"{"Type": "wireguard"}"#;
        let auto = r#"{"Type": "wireguard", "Mode": "auto"}"#;
        assert_eq!(devices(v4, wg), ["flannel-wg"]);
        assert_eq!(devices(dual, wg), ["flannel-wg", "flannel-wg-v6"]);
        assert_eq!(devices(v6, wg), ["flannel-wg-v6"]);
        assert_eq!(devices(dual, auto), ["flannel-wg"]);
        assert_eq!(devices(v6, auto), ["flannel-wg"]);
    }
}

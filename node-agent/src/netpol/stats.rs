//! What the NetworkPolicy controller tells `/metrics` and `trellis-agent status`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use super::compile::Compiled;
use super::ruleset::Ruleset;

#[derive(Debug, Default)]
pub struct NetpolStats {
    pub enabled: AtomicU64,
    pub policies: AtomicU64,
    pub invalid_policies: AtomicU64,
    pub pods_policed: AtomicU64,
    pub rules: AtomicU64,
    pub set_elements: AtomicU64,
    pub applies: AtomicU64,
    pub apply_errors: AtomicU64,
    sync_micros_sum: AtomicU64,
    sync_micros_last: AtomicU64,
    syncs: AtomicU64,
    status: Mutex<String>,
    /// Why traffic between pods of this node escapes the rules (br_netfilter), if it does.
    bridge_note: Mutex<String>,
    /// The last failure (an apply or a removal), until the next success.
    last_error: Mutex<String>,
}

fn set(m: &Mutex<String>, v: String) {
    *m.lock().unwrap_or_else(|e| e.into_inner()) = v;
}

fn get(m: &Mutex<String>) -> String {
    m.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

impl NetpolStats {
    /// One change taken to the kernel, `took` after it arrived.
    pub fn synced_after(&self, took: Duration) {
        let us = took.as_micros().min(u128::from(u64::MAX)) as u64;
        self.sync_micros_sum.fetch_add(us, Relaxed);
        self.sync_micros_last.store(us, Relaxed);
        self.syncs.fetch_add(1, Relaxed);
    }

    pub fn record(&self, c: &Compiled, policies: usize, invalid: usize) {
        self.policies.store(policies as u64, Relaxed);
        self.invalid_policies.store(invalid as u64, Relaxed);
        self.pods_policed.store(c.policed.len() as u64, Relaxed);
        self.rules.store(c.ruleset.rule_count() as u64, Relaxed);
        self.set_elements
            .store(c.ruleset.element_count() as u64, Relaxed);
        set(&self.status, status_text(c));
        set(&self.last_error, String::new());
    }

    pub fn failed(&self, why: &str) {
        set(&self.last_error, why.to_string());
    }

    pub fn set_bridge_note(&self, note: String) {
        set(&self.bridge_note, note);
    }

    pub fn disabled(&self) {
        for g in [
            &self.enabled,
            &self.policies,
            &self.invalid_policies,
            &self.pods_policed,
            &self.rules,
            &self.set_elements,
        ] {
            g.store(0, Relaxed);
        }
        set(&self.status, String::new());
        set(&self.last_error, String::new());
    }

    /// For `/debug/netpol` (and so `trellis-agent status`).
    pub fn status(&self) -> String {
        let error = get(&self.last_error);
        if self.enabled.load(Relaxed) == 0 {
            let mut s = "NetworkPolicy enforcement is off (net-conf.json \"NetworkPolicy\": {\"Enabled\": true} turns it on)\n".to_string();
            if !error.is_empty() {
                s.push_str(&format!("  FAILING: {error}\n"));
            }
            return s;
        }
        let s = get(&self.status);
        let mut s = if s.is_empty() {
            "NetworkPolicy enforcement is on, waiting for the first list of Pods, Namespaces and NetworkPolicies\n".to_string()
        } else {
            s
        };
        let note = get(&self.bridge_note);
        if !note.is_empty() {
            s.push_str(&format!("  WARNING: {note}\n"));
        }
        if !error.is_empty() {
            s.push_str(&format!(
                "  FAILING: {error} (the rules last applied stay in force; retried)\n"
            ));
        }
        s
    }

    pub fn render(&self, out: &mut String) {
        let (g, c) = ("gauge", "counter");
        let metrics = [
            (
                "trellis_netpol_enabled",
                g,
                "1 when NetworkPolicy enforcement is on",
                &self.enabled,
            ),
            (
                "trellis_netpol_policies",
                g,
                "NetworkPolicies in the cluster",
                &self.policies,
            ),
            (
                "trellis_netpol_invalid_policies",
                g,
                "NetworkPolicies enforced as deny-all because they could not be understood",
                &self.invalid_policies,
            ),
            (
                "trellis_netpol_pods_policed",
                g,
                "pods of this node isolated by at least one policy",
                &self.pods_policed,
            ),
            (
                "trellis_netpol_rules",
                g,
                "rules in the inet trellis-netpol table",
                &self.rules,
            ),
            (
                "trellis_netpol_set_elements",
                g,
                "elements of its sets and maps",
                &self.set_elements,
            ),
            (
                "trellis_netpol_applies_total",
                c,
                "nft transactions applied",
                &self.applies,
            ),
            (
                "trellis_netpol_apply_errors_total",
                c,
                "nft transactions that failed",
                &self.apply_errors,
            ),
        ];
        for (name, kind, help, v) in metrics {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                v.load(Relaxed)
            );
        }
        let secs = |us: u64| us as f64 / 1e6;
        let name = "trellis_netpol_sync_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} time from a Pod, Namespace or NetworkPolicy change to its rules in the kernel\n\
             # TYPE {name} summary\n{name}_sum {}\n{name}_count {}\n\
             # HELP trellis_netpol_last_sync_seconds the last such time\n\
             # TYPE trellis_netpol_last_sync_seconds gauge\ntrellis_netpol_last_sync_seconds {}",
            secs(self.sync_micros_sum.load(Relaxed)),
            self.syncs.load(Relaxed),
            secs(self.sync_micros_last.load(Relaxed)),
        );
    }
}

/// Per local pod, the policies isolating it; then the sets and their sizes.
fn status_text(c: &Compiled) -> String {
    let mut s = format!(
        "NetworkPolicy: {} pods of this node policed, {} rules, {} set elements\n",
        c.policed.len(),
        c.ruleset.rule_count(),
        c.ruleset.element_count()
    );
    for p in &c.policed {
        let list = |v: &[String]| {
            if v.is_empty() {
                "-".to_string()
            } else {
                v.join(", ")
            }
        };
        let _ = writeln!(
            s,
            "  pod {}  ingress: {}  egress: {}",
            p.pod,
            list(&p.ingress),
            list(&p.egress)
        );
    }
    sets_text(&c.ruleset, &mut s);
    s
}

fn sets_text(rs: &Ruleset, s: &mut String) {
    for (name, set) in &rs.sets {
        let _ = writeln!(s, "  set {name}: {} elements", set.elements.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netpol::compile::Policed;

    #[test]
    fn status_names_each_pods_policies_and_the_set_sizes() {
        let s = NetpolStats::default();
        assert!(s.status().contains("off"));
        s.enabled.store(1, Relaxed);
        assert!(s.status().contains("waiting for the first list"));
        s.set_bridge_note("br_netfilter is not loaded".into());
        s.failed("nft: refused");
        assert!(s.status().contains("WARNING: br_netfilter is not loaded"));
        assert!(s.status().contains("FAILING: nft: refused"));
        s.set_bridge_note(String::new());
        let mut c = Compiled::default();
        c.policed.push(Policed {
            pod: "x/a".into(),
            ingress: vec!["x/web".into(), "x/deny".into()],
            egress: vec![],
        });
        c.ruleset.sets.insert(
            "pol/x/web/in0/v4".into(),
            crate::netpol::ruleset::AddrSet::default(),
        );
        s.record(&c, 2, 1);
        let text = s.status();
        assert!(
            text.contains("pod x/a  ingress: x/web, x/deny  egress: -"),
            "{text}"
        );
        assert!(text.contains("set pol/x/web/in0/v4: 0 elements"), "{text}");
        assert!(!text.contains("br_netfilter"), "{text}");
        assert!(
            !text.contains("FAILING"),
            "a success clears the failure: {text}"
        );
        let mut m = String::new();
        s.synced_after(Duration::from_millis(42));
        s.render(&mut m);
        assert!(m.contains("trellis_netpol_pods_policed 1"), "{m}");
        assert!(m.contains("trellis_netpol_invalid_policies 1"), "{m}");
        assert!(m.contains("trellis_netpol_last_sync_seconds 0.042"), "{m}");
        s.disabled();
        assert!(s.status().contains("off"));
    }
}

//! This node's lease kept live. Its own Node (the podCIDRs, the operator's public IP) and the
//! underlay interface (its addresses, its MTU) may change while the agent runs; the next pass
//! then plans with the new values: the devices' addresses, `subnet.env`, the advertised
//! `public-ip` (and so every peer's route to us) follow without a restart.
//!
//! What cannot be read keeps what the lease had: a Node whose podCIDRs were emptied or an
//! unreadable `public-ip-overwrite` never takes this node's network down. The reason is
//! returned for the log.

use super::peer::parse_pod_cidrs;
use super::{LocalLease, NodeInfo, Underlay};
use crate::annotations::{self, AnnotationKeys};

impl LocalLease {
    /// The public IPs from the operator's choice, else the underlay's addresses.
    pub fn refresh_public_ips(&mut self) {
        self.public_ip_v4 = self
            .public_ip_override_v4
            .or(self.underlay.addr_v4.map(|a| a.ip()));
        self.public_ip_v6 = self
            .public_ip_override_v6
            .or(self.underlay.addr_v6.map(|a| a.ip()));
    }

    /// The underlay interface as read now. Returns whether the lease changed.
    pub fn set_underlay(&mut self, underlay: Underlay) -> bool {
        let before = self.clone();
        self.underlay = underlay;
        self.refresh_public_ips();
        *self != before
    }

    /// Our own Node as the watch delivered it. Returns whether the lease changed, and what
    /// could not be followed (kept as it was).
    pub fn follow_node(&mut self, node: &NodeInfo, keys: &AnnotationKeys) -> (bool, Vec<String>) {
        let before = self.clone();
        let mut problems = Vec::new();
        match parse_pod_cidrs(&node.pod_cidrs) {
            // Kubernetes only ever adds a podCIDR: one gone is a glitch, never a reason to
            // take the family's pod network down.
            Ok((v4, v6)) => {
                let taken = [
                    ("IPv4", take_unless_gone(&mut self.subnet_v4, v4)),
                    ("IPv6", take_unless_gone(&mut self.subnet_v6, v6)),
                ];
                for (family, _) in taken.iter().filter(|(_, taken)| !taken) {
                    problems.push(format!(
                        "this node's Node lists no {family} podCIDR any more; keeping {}",
                        self.pod_cidrs()
                    ));
                }
            }
            Err(e) => problems.push(format!(
                "this node's Node: {e}; keeping podCIDRs {}",
                self.pod_cidrs()
            )),
        }
        match annotations::public_ip_override_lenient(keys, &node.annotations) {
            Ok(((v4, v6), ignored)) => {
                self.public_ip_override_v4 = v4;
                self.public_ip_override_v6 = v6;
                problems.extend(
                    ignored
                        .into_iter()
                        .map(|p| format!("this node's Node: {p}")),
                );
            }
            Err(e) => problems.push(format!("this node's Node: {e}; keeping the public IPs")),
        }
        self.refresh_public_ips();
        (*self != before, problems)
    }

    /// The podCIDRs, for messages.
    fn pod_cidrs(&self) -> String {
        let v4 = self.subnet_v4.map(|s| s.to_string());
        let v6 = self.subnet_v6.map(|s| s.to_string());
        let all: Vec<String> = v4.into_iter().chain(v6).collect();
        if all.is_empty() {
            "(none)".into()
        } else {
            all.join(",")
        }
    }
}

/// `new` into `slot`, unless it would remove what `slot` has; false then.
fn take_unless_gone<T>(slot: &mut Option<T>, new: Option<T>) -> bool {
    if new.is_none() && slot.is_some() {
        return false;
    }
    *slot = new;
    true
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::view::fixtures::lease;

    fn own(cidrs: &[&str], annotations: &[(&str, &str)]) -> NodeInfo {
        NodeInfo {
            name: "local".into(),
            pod_cidrs: cidrs.iter().map(|c| c.to_string()).collect(),
            annotations: annotations
                .iter()
                .map(|(k, v)| (format!("flannel.alpha.coreos.com/{k}"), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            created_unix: None,
        }
    }

    const CIDRS: [&str; 2] = ["10.244.1.0/24", "fd00:10:244:1::/64"];

    #[test]
    fn the_same_node_changes_nothing() {
        let mut l = lease();
        let keys = AnnotationKeys::default();
        assert_eq!(l.follow_node(&own(&CIDRS, &[]), &keys), (false, vec![]));
        assert_eq!(l, lease());
    }

    #[test]
    fn an_overwrite_is_followed_and_its_removal_too() {
        let (mut l, keys) = (lease(), AnnotationKeys::default());
        let set = own(&CIDRS, &[("public-ip-overwrite", "203.0.113.9")]);
        assert_eq!(l.follow_node(&set, &keys), (true, vec![]));
        assert_eq!(l.public_ip_v4, Some("203.0.113.9".parse().unwrap()));
        assert_eq!(l.public_ip_v6, lease().public_ip_v6);
        assert!(l.follow_node(&own(&CIDRS, &[]), &keys).0);
        assert_eq!(l, lease());
        // node-public-ip counts as flannel's --public-ip.
        let node_ip = own(&CIDRS, &[("node-public-ipv6", "2001:db8::7")]);
        assert!(l.follow_node(&node_ip, &keys).0);
        assert_eq!(l.public_ip_v6, Some("2001:db8::7".parse().unwrap()));
    }

    #[test]
    fn a_pod_cidr_given_later_is_taken() {
        let keys = AnnotationKeys::default();
        let mut l = lease();
        l.subnet_v6 = None;
        assert!(l.follow_node(&own(&CIDRS, &[]), &keys).0);
        assert_eq!(l.subnet_v6, lease().subnet_v6);
    }

    #[test]
    fn what_cannot_be_read_keeps_the_lease_and_says_why() {
        let keys = AnnotationKeys::default();
        let mut l = lease();
        for node in [
            own(&[], &[]),
            own(&["nonsense"], &[]),
            own(&CIDRS[..1], &[]),
            own(&CIDRS, &[("public-ip-overwrite", "not-an-ip")]),
        ] {
            let (changed, problems) = l.follow_node(&node, &keys);
            assert!(!changed, "{node:?}");
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(problems[0].contains("keeping"), "{problems:?}");
            assert_eq!(l, lease());
        }
    }

    #[test]
    fn an_unreadable_node_public_ip_is_ignored_and_the_rest_followed() {
        let keys = AnnotationKeys::default();
        let mut l = lease();
        let node = own(
            &CIDRS,
            &[
                ("node-public-ip", "nope"),
                ("public-ipv6-overwrite", "2001:db8::9"),
            ],
        );
        let (changed, problems) = l.follow_node(&node, &keys);
        assert!(changed);
        assert_eq!(l.public_ip_v6, Some("2001:db8::9".parse().unwrap()));
        assert_eq!(l.public_ip_v4, lease().public_ip_v4);
        assert_eq!(problems.len(), 1, "{problems:?}");
    }

    #[test]
    fn a_new_underlay_address_moves_the_public_ip_unless_overridden() {
        let mut l = lease();
        let mut u = l.underlay.clone();
        u.addr_v4 = Some("192.168.1.77/24".parse().unwrap());
        assert!(l.set_underlay(u.clone()));
        assert_eq!(l.public_ip_v4, Some("192.168.1.77".parse().unwrap()));
        assert!(!l.set_underlay(u.clone()), "the same again");
        l.public_ip_override_v4 = Some("203.0.113.9".parse().unwrap());
        u.addr_v4 = Some("192.168.1.78/24".parse().unwrap());
        assert!(l.set_underlay(u));
        assert_eq!(l.public_ip_v4, Some("203.0.113.9".parse().unwrap()));
    }
}

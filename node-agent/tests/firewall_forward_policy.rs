//! Privileged: `preflight`'s FORWARD policy read against both iptables flavours, each case in
//! its own network namespace, with FORWARD empty and with rules in it (Docker's and
//! kube-proxy's jumps): the policy comes back as set.

mod firewall_common;

use firewall_common::*;
use trellis_agent::preflight::{evaluate, read_forward_policy, Facts, ForwardPolicy, Level};

fn policy_in(ns: &Netns, iptables: &str) -> String {
    let command = ["ip", "netns", "exec", ns.name.as_str(), iptables];
    read_forward_policy(&command).unwrap_or_else(|e| panic!("{iptables} in {}: {e}", ns.name))
}

fn reads_each_policy(iptables: &str) {
    for policy in ["ACCEPT", "DROP"] {
        for with_rules in [false, true] {
            let ns = netns("policy");
            ns.sh(&[iptables, "-P", "FORWARD", policy]);
            if with_rules {
                ns.sh(&[iptables, "-N", "DOCKER-USER"]);
                ns.sh(&[iptables, "-A", "FORWARD", "-j", "DOCKER-USER"]);
                ns.sh(&[
                    iptables,
                    "-A",
                    "FORWARD",
                    "-s",
                    "10.244.0.0/16",
                    "-j",
                    "ACCEPT",
                ]);
            }
            assert_eq!(
                policy_in(&ns, iptables),
                policy,
                "{iptables}, policy {policy}, rules in FORWARD: {with_rules}"
            );
        }
    }
}

#[test]
fn iptables_legacy_forward_policy_is_read_with_and_without_rules() {
    reads_each_policy("iptables-legacy");
}

#[test]
fn iptables_nft_forward_policy_is_read_with_and_without_rules() {
    reads_each_policy("iptables-nft");
}

/// The whole way to the finding: DROP read from the kernel is the named warning.
#[test]
fn a_drop_policy_read_from_iptables_is_a_warning() {
    let ns = netns("policy");
    ns.sh(&["iptables-legacy", "-P", "FORWARD", "DROP"]);
    let facts = Facts {
        forward_policy: ForwardPolicy::Is(policy_in(&ns, "iptables-legacy")),
        ..Facts::default()
    };
    let findings = evaluate(&facts);
    let f = findings
        .iter()
        .find(|f| f.check == "forward_policy")
        .expect("a forward_policy finding");
    assert_eq!(f.level, Level::Warn, "{f:?}");
    assert!(f.message.contains("FORWARD policy is DROP"), "{f:?}");
}

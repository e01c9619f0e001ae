//! What the compiler needs of Pods and Namespaces, taken from the API objects: a Pod's
//! labels, addresses, node and named container ports; a Namespace's labels.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Pod};

use super::policy::Protocol;
use super::selector::Labels;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub labels: Labels,
    pub ips: Vec<IpAddr>,
    pub ports: Vec<NamedPort>,
}

impl PodInfo {
    pub fn key(&self) -> (String, String) {
        (self.namespace.clone(), self.name.clone())
    }

    /// The port `name` resolves to on this pod for `protocol`, as Kubernetes' `FindPort`
    /// resolves it: the first port of that name and protocol of the containers, then of the
    /// sidecars (init containers with `restartPolicy: Always`).
    pub fn resolve(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.name == name && p.protocol == protocol)
            .map(|p| p.port)
    }

    /// The Pod as policies see it, or `None` when policies have nothing to do with it: a
    /// host-network pod (its address is its node's), one that has finished (its address may
    /// already be someone else's), or one without an address yet.
    pub fn from_pod(pod: &Pod) -> Option<PodInfo> {
        let spec = pod.spec.as_ref()?;
        if spec.host_network == Some(true) {
            return None;
        }
        let status = pod.status.as_ref()?;
        if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
            return None;
        }
        let mut ips: Vec<IpAddr> = status
            .pod_ips
            .iter()
            .flatten()
            .filter_map(|p| p.ip.parse().ok())
            .collect();
        if ips.is_empty() {
            ips.extend(
                status
                    .pod_ip
                    .as_deref()
                    .and_then(|s| s.parse::<IpAddr>().ok()),
            );
        }
        ips.sort();
        ips.dedup();
        if ips.is_empty() {
            return None;
        }
        Some(PodInfo {
            namespace: pod.metadata.namespace.clone()?,
            name: pod.metadata.name.clone()?,
            node: spec.node_name.clone().unwrap_or_default(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            ips,
            ports: named_ports(pod),
        })
    }
}

fn named_ports(pod: &Pod) -> Vec<NamedPort> {
    let Some(spec) = &pod.spec else {
        return Vec::new();
    };
    let sidecars = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    let containers = spec.containers.iter().chain(sidecars);
    containers
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let name = p.name.clone()?;
            let protocol = Protocol::from_api(p.protocol.as_deref().unwrap_or("TCP"))?;
            let port = u16::try_from(p.container_port).ok().filter(|n| *n > 0)?;
            Some(NamedPort {
                name,
                protocol,
                port,
            })
        })
        .collect()
}

/// A Namespace's labels, with `kubernetes.io/metadata.name` as the apiserver sets it (also
/// on clusters older than 1.21 that did not).
pub fn namespace_labels(ns: &Namespace) -> Option<(String, Labels)> {
    let name = ns.metadata.name.clone()?;
    let mut labels: BTreeMap<String, String> = ns.metadata.labels.clone().unwrap_or_default();
    labels.insert(NAME_LABEL.to_string(), name.clone());
    Some((name, labels))
}

pub const NAME_LABEL: &str = "kubernetes.io/metadata.name";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_running_pod_with_named_ports() {
        let p = pod(json!({
            "metadata": {"namespace": "x", "name": "a", "labels": {"pod": "a"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [
                {"name": "serve-80-tcp", "containerPort": 80},
                {"name": "serve-80-udp", "containerPort": 80, "protocol": "UDP"},
                {"containerPort": 81}
            ]}]},
            "status": {"phase": "Running", "podIP": "10.244.1.5",
                       "podIPs": [{"ip": "10.244.1.5"}, {"ip": "fd00::5"}]}
        }));
        let info = PodInfo::from_pod(&p).unwrap();
        assert_eq!(info.ips.len(), 2);
        assert_eq!(info.resolve("serve-80-tcp", Protocol::Tcp), Some(80));
        assert_eq!(info.resolve("serve-80-tcp", Protocol::Udp), None);
        assert_eq!(info.resolve("serve-80-udp", Protocol::Udp), Some(80));
        assert_eq!(info.ports.len(), 2);
    }

    #[test]
    fn names_resolve_on_containers_first_then_sidecars_never_plain_init_containers() {
        let p = pod(json!({
            "metadata": {"namespace": "x", "name": "a"},
            "spec": {
                "initContainers": [
                    {"name": "setup", "ports": [{"name": "web", "containerPort": 1}, {"name": "only-init", "containerPort": 2}]},
                    {"name": "proxy", "restartPolicy": "Always", "ports": [{"name": "web", "containerPort": 3}, {"name": "mesh", "containerPort": 4}]}
                ],
                "containers": [{"name": "c", "ports": [{"name": "web", "containerPort": 8080}]}]
            },
            "status": {"podIP": "10.0.0.1"}
        }));
        let info = PodInfo::from_pod(&p).unwrap();
        assert_eq!(info.resolve("web", Protocol::Tcp), Some(8080));
        assert_eq!(info.resolve("mesh", Protocol::Tcp), Some(4));
        assert_eq!(info.resolve("only-init", Protocol::Tcp), None);
    }

    #[test]
    fn pods_policies_ignore() {
        let base = json!({"metadata": {"namespace": "x", "name": "a"},
                          "spec": {"containers": []}, "status": {"podIP": "10.0.0.1"}});
        assert!(PodInfo::from_pod(&pod(base.clone())).is_some());
        let mut host = base.clone();
        host["spec"]["hostNetwork"] = json!(true);
        assert!(PodInfo::from_pod(&pod(host)).is_none());
        let mut done = base.clone();
        done["status"]["phase"] = json!("Succeeded");
        assert!(PodInfo::from_pod(&pod(done)).is_none());
        let mut pending = base.clone();
        pending["status"] = json!({"phase": "Pending"});
        assert!(PodInfo::from_pod(&pod(pending)).is_none());
        let mut garbage = base;
        garbage["status"]["podIP"] = json!("not-an-ip");
        assert!(PodInfo::from_pod(&pod(garbage)).is_none());
    }

    #[test]
    fn namespaces_always_carry_their_name_label() {
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": "y", "labels": {"ns": "y"}}}))
                .unwrap();
        let (name, labels) = namespace_labels(&ns).unwrap();
        assert_eq!(name, "y");
        assert_eq!(labels.get(NAME_LABEL).map(String::as_str), Some("y"));
        assert_eq!(labels.get("ns").map(String::as_str), Some("y"));
    }
}

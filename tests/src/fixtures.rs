//! Objects shaped like a real cluster's, for the scale tests and benchmarks.

use serde_json::{json, Value};

/// A Node as big as a real one (~10 KB): labels, flannel annotations (VXLAN, `public_ip`),
/// four conditions, addresses (InternalIP `public_ip`), nodeInfo and 40 images. Node `i` is
/// `node-<i:05>` with podCIDR `10.<100 + i / 250>.<i % 250>.0/24`.
pub fn big_node_json(i: u32, public_ip: &str) -> Value {
    let images: Vec<Value> = (0..40)
        .map(|k| {
            json!({
                "names": [
                    format!("registry.example.com/team-{k}/service-{k}@sha256:{:064x}", i * 100 + k),
                    format!("registry.example.com/team-{k}/service-{k}:v1.{k}.{i}")
                ],
                "sizeBytes": 10_000_000 + k * 1000
            })
        })
        .collect();
    let conditions: Vec<Value> = ["MemoryPressure", "DiskPressure", "PIDPressure", "Ready"]
        .iter()
        .map(|t| {
            json!({"type": t, "status": if *t == "Ready" { "True" } else { "False" },
                   "lastHeartbeatTime": "2025-01-01T00:00:00Z", "lastTransitionTime": "2025-01-01T00:00:00Z",
                   "reason": format!("Kubelet{t}"), "message": format!("kubelet reports {t} as expected")})
        })
        .collect();
    let (a, b) = (i / 250, i % 250);
    let name = format!("node-{i:05}");
    json!({
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                       "kubernetes.io/arch": "amd64", "topology.kubernetes.io/zone": format!("zone-{}", i % 3)},
            "annotations": {
                "flannel.alpha.coreos.com/backend-type": "vxlan",
                "flannel.alpha.coreos.com/backend-data": format!("{{\"VNI\":1,\"VtepMAC\":\"0e:00:00:00:{a:02x}:{b:02x}\"}}"),
                "flannel.alpha.coreos.com/public-ip": public_ip,
                "flannel.alpha.coreos.com/kube-subnet-manager": "true"
            }
        },
        "spec": {"podCIDR": format!("10.{}.{b}.0/24", 100 + a), "podCIDRs": [format!("10.{}.{b}.0/24", 100 + a)]},
        "status": {
            "conditions": conditions,
            "addresses": [{"type": "InternalIP", "address": public_ip},
                          {"type": "Hostname", "address": name}],
            "nodeInfo": {"kubeletVersion": "v1.32.0", "kernelVersion": "6.1.0", "osImage": "Debian GNU/Linux 12",
                         "containerRuntimeVersion": "containerd://1.7.0", "architecture": "amd64", "operatingSystem": "linux",
                         "machineID": format!("{i:032x}"), "systemUUID": format!("{i:032x}"), "bootID": format!("{i:032x}"),
                         "kubeProxyVersion": "v1.32.0"},
            "images": images
        }
    })
}

/// This process's `field` of `/proc/self/status` in KiB (e.g. `VmRSS:`); 0 if unreadable.
pub fn proc_status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

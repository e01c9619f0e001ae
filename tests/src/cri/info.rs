//! Parsing of containerd's verbose sandbox info (the JSON under the "info"
//! key of PodSandboxStatusResponse). Pure, so it is unit-tested without a
//! runtime.

use std::path::PathBuf;

use serde_json::Value;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxInfo {
    /// Pid of the pause process (0 or absent once it has exited).
    pub pid: Option<u32>,
    /// Path of the sandbox netns as the runtime sees it. It lives in the
    /// runtime's mount namespace, which may not be ours: to enter the netns
    /// from outside, prefer `/proc/<pid>/ns/net`.
    pub netns_path: Option<PathBuf>,
    /// True once the runtime has closed (unmounted) the netns.
    pub netns_closed: bool,
}

impl SandboxInfo {
    /// A path to the sandbox netns that works from any mount namespace.
    pub fn netns_via_proc(&self) -> Option<PathBuf> {
        self.pid
            .map(|pid| PathBuf::from(format!("/proc/{pid}/ns/net")))
    }
}

pub fn parse_sandbox_info(json: &str) -> Result<SandboxInfo, String> {
    let value: Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let obj = value
        .as_object()
        .ok_or_else(|| "top level is not an object".to_string())?;
    let pid = match obj.get("pid") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let n = v
                .as_u64()
                .ok_or_else(|| format!("pid {v} is not a non-negative integer"))?;
            let n = u32::try_from(n).map_err(|_| format!("pid {n} out of range"))?;
            (n != 0).then_some(n)
        }
    };
    let netns_path = obj
        .get("runtimeSpec")
        .and_then(|s| s.pointer("/linux/namespaces"))
        .and_then(Value::as_array)
        .and_then(|namespaces| {
            namespaces
                .iter()
                .find(|ns| ns.get("type").and_then(Value::as_str) == Some("network"))
        })
        .and_then(|ns| ns.get("path"))
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    let netns_closed = obj
        .get("netNamespaceClosed")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(SandboxInfo {
        pid,
        netns_path,
        netns_closed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pid_and_network_namespace_path() {
        let json = r#"{
            "pid": 4242,
            "processStatus": "running",
            "netNamespaceClosed": false,
            "runtimeSpec": {"linux": {"namespaces": [
                {"type": "pid"},
                {"type": "ipc"},
                {"type": "network", "path": "/var/run/netns/cni-1234"}
            ]}}
        }"#;
        let info = parse_sandbox_info(json).expect("valid");
        assert_eq!(info.pid, Some(4242));
        assert_eq!(
            info.netns_path,
            Some(PathBuf::from("/var/run/netns/cni-1234"))
        );
        assert!(!info.netns_closed);
        assert_eq!(
            info.netns_via_proc(),
            Some(PathBuf::from("/proc/4242/ns/net"))
        );
    }

    #[test]
    fn stopped_sandbox_has_no_pid() {
        let info = parse_sandbox_info(r#"{"pid": 0, "netNamespaceClosed": true}"#).expect("valid");
        assert_eq!(info.pid, None);
        assert_eq!(info.netns_via_proc(), None);
        assert!(info.netns_closed);
        assert_eq!(info.netns_path, None);
    }

    #[test]
    fn host_network_sandbox_has_no_netns_path() {
        let json = r#"{"pid": 7, "runtimeSpec": {"linux": {"namespaces": [{"type": "pid"}]}}}"#;
        assert_eq!(parse_sandbox_info(json).expect("valid").netns_path, None);
    }

    #[test]
    fn rejects_non_object_and_bad_pid() {
        assert!(parse_sandbox_info("[]").is_err());
        assert!(parse_sandbox_info("not json").is_err());
        assert!(parse_sandbox_info(r#"{"pid": -1}"#).is_err());
        assert!(parse_sandbox_info(r#"{"pid": "12"}"#).is_err());
        assert!(parse_sandbox_info(r#"{"pid": 99999999999}"#).is_err());
    }
}

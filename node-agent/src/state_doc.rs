//! The `/debug/state` document: one type that the agent serialises (`debug_state`) and
//! `trellis-agent status` deserialises, so both sides agree on every field at compile time.
//!
//! Before the first pass the agent answers `{}`, which `status` reads as no document.

use serde::{Deserialize, Serialize};

/// The last pass, as `/debug/state` reports it.
///
/// The fields stand in alphabetical order, which is their order on the wire: the document was
/// once a `json!` map, and `serde_json`'s map sorts its keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateDoc {
    pub backend: String,
    pub converged: bool,
    /// The installed firewall rules, one per line.
    pub firewall: String,
    pub firewall_backend: String,
    /// Empty when the firewall holds what was installed.
    pub firewall_drift: String,
    /// The desired kernel entries, one line each (`status::describe`).
    pub kernel: Vec<String>,
    pub lease: String,
    pub mtu: u32,
    pub node: String,
    /// Peer entries the kernel refused in the last pass.
    pub peer_errors: Vec<PeerError>,
    /// Number of peers programmed.
    pub peers: usize,
    /// Nodes not programmed, with why.
    pub skipped: Vec<SkippedNode>,
    /// Content of `/run/flannel/subnet.env`.
    pub subnet_env: String,
    pub underlay: String,
}

/// A peer entry the kernel refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerError {
    pub entry: String,
    pub error: String,
}

/// A Node not programmed, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedNode {
    pub node: String,
    pub reason: String,
}

/// The document's JSON; `{}` for none.
pub fn encode(doc: Option<&StateDoc>) -> String {
    match doc {
        // Strings, numbers and lists of them, which always serialise (as `json!` assumed).
        Some(d) => serde_json::to_string(d).expect("a StateDoc serialises"),
        None => "{}".to_string(),
    }
}

/// Reads what [`encode`] wrote: `{}` is no document.
pub fn decode(body: &str) -> Result<Option<StateDoc>, String> {
    let v: serde_json::Value = serde_json::from_str(body).map_err(|e| e.to_string())?;
    if v.as_object().is_some_and(|m| m.is_empty()) {
        return Ok(None);
    }
    serde_json::from_value(v)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// `debug_state`'s sample pass, byte for byte as the `json!` map this type replaced wrote it:
/// the wire format `status` and scripts read.
#[cfg(test)]
pub(crate) const SAMPLE_JSON: &str = concat!(
    r#"{"backend":"vxlan","converged":false,"#,
    r#""firewall":"-A TRELLIS-FWD -s 10.244.0.0/16 -j ACCEPT\n-A TRELLIS-FWD -d 10.244.0.0/16 -j ACCEPT\n","#,
    r#""firewall_backend":"iptables","#,
    r#""firewall_drift":"chain TRELLIS-FWD changed \"x\"","#,
    r#""kernel":["link  flannel.1 type vxlan id 1 dstport 8472 local 192.168.1.1 dev-index 2 nolearning mtu 1450 address 02:aa:00:00:00:01","#,
    r#""addr  10.244.1.0/32 dev flannel.1","#,
    r#""neigh 10.244.2.0 lladdr 0a:58:00:00:00:02 dev flannel.1 permanent","#,
    r#""fdb   0a:58:00:00:00:02 dev flannel.1 dst 192.168.1.2 self permanent","#,
    r#""route 10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink proto 116"],"#,
    r#""lease":"10.244.1.0/24 public 192.168.1.1","mtu":1450,"node":"node-1","#,
    r#""peer_errors":[{"entry":"route 10.244.9.0/24","#,
    r#""error":"Invalid argument (os error 22)"}],"peers":1,"#,
    r#""skipped":[{"node":"node-3","#,
    r#""reason":"no IPv4 backend-data annotation, but IPv4 is enabled"}],"#,
    r#""subnet_env":"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n","#,
    r#""underlay":"eth0 (index 2, mtu 1500)"}"#,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_reads_back_as_written() {
        let doc = decode(SAMPLE_JSON).unwrap().unwrap();
        assert_eq!(doc.mtu, 1450);
        assert_eq!(doc.skipped[0].node, "node-3");
        assert_eq!(doc.peer_errors[0].entry, "route 10.244.9.0/24");
        assert_eq!(encode(Some(&doc)), SAMPLE_JSON);
    }

    #[test]
    fn no_document_is_an_empty_object() {
        assert_eq!(encode(None), "{}");
        assert_eq!(decode("{}"), Ok(None));
        assert!(decode("{\"node\": \"n\"}")
            .unwrap_err()
            .contains("missing field"));
        assert!(decode("nope").is_err());
    }
}

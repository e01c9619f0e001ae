//! The network configuration the runtime pipes to stdin (one member of a
//! conflist, with `name` and `cniVersion` copied in by the runtime).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnetwork::IpNetwork;
use serde::Deserialize;
use serde_json::Value;

use super::env::{is_safe_name, validate_ifname};
use super::error::{invalid_config, CniError, ErrorCode};
use super::version::CniVersion;
use crate::ipam::allocator::Field;
use crate::ipam::store::DEFAULT_LOCK_WAIT;
use crate::ipam::{Range, RangeSet};

pub const DEFAULT_BRIDGE: &str = "cni0";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";
pub const MAX_LOCK_WAIT_MS: u64 = 120_000;

#[derive(Debug, Clone)]
pub struct NetConf {
    pub cni_version: CniVersion,
    pub name: String,
    pub bridge: String,
    pub mtu: Option<u32>,
    pub hairpin_mode: bool,
    pub is_default_gateway: bool,
    pub subnet_file: PathBuf,
    pub data_dir: PathBuf,
    /// How long a run waits for the IPAM store lock before answering code 11.
    pub ipam_lock_wait: Duration,
    pub ipam: Option<IpamConf>,
    pub dns: Option<Value>,
    pub prev_result: Option<Value>,
    pub valid_attachments: Option<Vec<Attachment>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct IpamConf {
    #[serde(default)]
    pub ranges: Vec<Vec<RangeConf>>,
    #[serde(default)]
    pub routes: Vec<RouteConf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RangeConf {
    pub subnet: IpNetwork,
    #[serde(rename = "rangeStart")]
    pub range_start: Option<IpAddr>,
    #[serde(rename = "rangeEnd")]
    pub range_end: Option<IpAddr>,
    pub gateway: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RouteConf {
    pub dst: IpNetwork,
    pub gw: Option<IpAddr>,
}

/// The raw shape; defaults and validation happen in [`NetConf::parse`].
#[derive(Deserialize)]
struct RawConf {
    name: Option<String>,
    bridge: Option<String>,
    mtu: Option<u32>,
    #[serde(rename = "hairpinMode")]
    hairpin_mode: Option<bool>,
    #[serde(rename = "isDefaultGateway")]
    is_default_gateway: Option<bool>,
    #[serde(rename = "ipMasq")]
    ip_masq: Option<bool>,
    #[serde(rename = "subnetFile")]
    subnet_file: Option<PathBuf>,
    #[serde(rename = "dataDir")]
    data_dir: Option<PathBuf>,
    #[serde(rename = "ipamLockTimeoutMs")]
    ipam_lock_timeout_ms: Option<u64>,
    ipam: Option<IpamConf>,
    dns: Option<Value>,
    #[serde(rename = "prevResult")]
    prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<Attachment>>,
}

impl NetConf {
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let value: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(ErrorCode::Decode, "network configuration is not valid JSON")
                .with_details(e.to_string())
        })?;
        let Some(obj) = value.as_object() else {
            return Err(CniError::new(
                ErrorCode::Decode,
                "network configuration must be a JSON object",
            ));
        };
        let version = match obj.get("cniVersion") {
            Some(Value::String(v)) => CniVersion::parse(v)?,
            Some(_) => return Err(invalid_config("cniVersion must be a string")),
            None => return Err(invalid_config("cniVersion is missing")),
        };
        let raw: RawConf = serde_json::from_value(value.clone())
            .map_err(|e| invalid_config(format!("invalid network configuration: {e}")))?;
        let name = raw.name.ok_or_else(|| invalid_config("name is missing"))?;
        if !is_safe_name(&name) {
            return Err(invalid_config(format!(
                "network name {name:?} is invalid: it must start with a letter or digit and hold only letters, digits, '_', '.' and '-'"
            )));
        }
        let bridge = raw.bridge.unwrap_or_else(|| DEFAULT_BRIDGE.to_string());
        validate_ifname(&bridge)
            .map_err(|e| invalid_config(e.msg.replace("CNI_IFNAME", "bridge")))?;
        if let Some(mtu) = raw.mtu {
            if !(68..=65535).contains(&mtu) {
                return Err(invalid_config(format!("mtu {mtu} is outside 68..65535")));
            }
        }
        if raw.ip_masq == Some(true) {
            return Err(invalid_config(
                "ipMasq=true is not supported: trellis-agent masquerades pod traffic for the whole node (FLANNEL_IPMASQ)",
            ));
        }
        if let Some(ipam) = &raw.ipam {
            validate_ipam(ipam)?;
        }
        let ipam_lock_wait = lock_wait(raw.ipam_lock_timeout_ms)?;
        Ok(NetConf {
            cni_version: version,
            name,
            bridge,
            mtu: raw.mtu,
            hairpin_mode: raw.hairpin_mode.unwrap_or(true),
            is_default_gateway: raw.is_default_gateway.unwrap_or(true),
            subnet_file: raw
                .subnet_file
                .unwrap_or_else(|| PathBuf::from(trellis_common::subnet_env::DEFAULT_PATH)),
            data_dir: raw
                .data_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            ipam_lock_wait,
            ipam: raw
                .ipam
                .filter(|i| !i.ranges.is_empty() || !i.routes.is_empty()),
            dns: raw.dns.filter(|d| !d.is_null()),
            prev_result: raw.prev_result.filter(|p| !p.is_null()),
            valid_attachments: raw.valid_attachments,
        })
    }

    /// Where this network's IPAM records live.
    pub fn ipam_dir(&self) -> PathBuf {
        // `name` passed is_safe_name, so it cannot climb out of data_dir.
        self.data_dir.join(&self.name)
    }
}

/// `ipamLockTimeoutMs`, at most [`MAX_LOCK_WAIT_MS`]: kubelet gives up on a runtime call
/// after 2 minutes, so a longer wait would only outlive the call it serves.
fn lock_wait(ms: Option<u64>) -> Result<Duration, CniError> {
    match ms {
        None => Ok(DEFAULT_LOCK_WAIT),
        Some(ms) if ms <= MAX_LOCK_WAIT_MS => Ok(Duration::from_millis(ms)),
        Some(ms) => Err(invalid_config(format!(
            "ipamLockTimeoutMs {ms} is above {MAX_LOCK_WAIT_MS} (2 minutes, kubelet's runtime request timeout)"
        ))),
    }
}

impl IpamConf {
    /// The configured ranges as the allocator's sets, each range held to host-local's rules
    /// and to having an address a pod may get. An error names the key to fix, such as
    /// `ipam.ranges[0][1].rangeStart`.
    pub fn range_sets(&self) -> Result<Vec<RangeSet>, CniError> {
        self.ranges
            .iter()
            .enumerate()
            .map(|(i, set)| range_set(i, set))
            .collect()
    }
}

fn range_set(i: usize, confs: &[RangeConf]) -> Result<RangeSet, CniError> {
    let ranges = confs
        .iter()
        .enumerate()
        .map(|(j, rc)| {
            Range::new(rc.subnet, rc.range_start, rc.range_end, rc.gateway)
                .map_err(|e| invalid_config(format!("{}: {e}", range_key(i, j, e.field()))))
        })
        .collect::<Result<Vec<_>, _>>()?;
    RangeSet::new(ranges).map_err(|e| match e.index() {
        Some(j) => invalid_config(format!("{}: {e}", range_key(i, j, None))),
        None => invalid_config(format!("ipam.ranges[{i}] is empty: {e}")),
    })
}

fn range_key(set: usize, entry: usize, field: Option<Field>) -> String {
    match field {
        Some(f) => format!("ipam.ranges[{set}][{entry}].{f}"),
        None => format!("ipam.ranges[{set}][{entry}]"),
    }
}

/// Every verb refuses a range config no ADD could allocate from, as host-local does.
fn validate_ipam(ipam: &IpamConf) -> Result<(), CniError> {
    ipam.range_sets().map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<NetConf, CniError> {
        NetConf::parse(s.as_bytes())
    }

    #[test]
    fn defaults_match_flannels_bridge_delegate() {
        let c = parse(r#"{"cniVersion":"1.0.0","name":"cbr0","type":"trellis"}"#).unwrap();
        assert_eq!(c.bridge, "cni0");
        assert!(c.hairpin_mode);
        assert!(c.is_default_gateway);
        assert_eq!(c.subnet_file, PathBuf::from("/run/flannel/subnet.env"));
        assert_eq!(c.ipam_dir(), PathBuf::from("/var/lib/cni/networks/cbr0"));
        assert!(c.mtu.is_none());
        assert_eq!(c.ipam_lock_wait, Duration::from_secs(10));
    }

    #[test]
    fn reads_every_option_and_ignores_unknown_keys() {
        let c = parse(
            r#"{"cniVersion":"0.3.1","name":"n1","type":"trellis","bridge":"br9","mtu":1400,
                "hairpinMode":false,"isDefaultGateway":false,"ipMasq":false,
                "subnetFile":"/tmp/s.env","dataDir":"/tmp/d","whatever":{"x":1},
                "ipamLockTimeoutMs":250,
                "ipam":{"type":"host-local","ranges":[[{"subnet":"10.1.0.0/24","gateway":"10.1.0.1"}]],
                        "routes":[{"dst":"10.0.0.0/8"}]},
                "dns":{"nameservers":["10.96.0.10"]},
                "cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(c.cni_version, CniVersion::V0_3_1);
        assert_eq!(c.bridge, "br9");
        assert_eq!(c.mtu, Some(1400));
        assert_eq!(c.ipam_lock_wait, Duration::from_millis(250));
        assert!(!c.hairpin_mode && !c.is_default_gateway);
        assert_eq!(
            c.ipam.as_ref().unwrap().ranges[0][0]
                .gateway
                .unwrap()
                .to_string(),
            "10.1.0.1"
        );
        assert_eq!(c.valid_attachments.as_ref().unwrap().len(), 1);
        assert!(c.dns.is_some());
    }

    #[test]
    fn bad_configs_get_the_right_code() {
        let cases: &[(&str, u32)] = &[
            ("not json", 6),
            ("[1,2]", 6),
            (r#"{"name":"x"}"#, 7),
            (r#"{"cniVersion":1,"name":"x"}"#, 7),
            (r#"{"cniVersion":"0.2.0","name":"x"}"#, 1),
            (r#"{"cniVersion":"9.9.9","name":"x"}"#, 1),
            (r#"{"cniVersion":"1.0.0"}"#, 7),
            (r#"{"cniVersion":"1.0.0","name":"../../etc"}"#, 7),
            (r#"{"cniVersion":"1.0.0","name":"a/b"}"#, 7),
            (r#"{"cniVersion":"1.0.0","name":"x","mtu":"big"}"#, 7),
            (r#"{"cniVersion":"1.0.0","name":"x","mtu":10}"#, 7),
            (r#"{"cniVersion":"1.0.0","name":"x","bridge":"a/b"}"#, 7),
            (
                r#"{"cniVersion":"1.0.0","name":"x","bridge":"waytoolongbridgename"}"#,
                7,
            ),
            (r#"{"cniVersion":"1.0.0","name":"x","ipMasq":true}"#, 7),
            (
                r#"{"cniVersion":"1.0.0","name":"x","ipamLockTimeoutMs":120001}"#,
                7,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"x","ipamLockTimeoutMs":-1}"#,
                7,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"x","ipam":{"ranges":[[{"subnet":"banana"}]]}}"#,
                7,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"x","ipam":{"ranges":[[]]}}"#,
                7,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"x","ipam":{"ranges":[[{"subnet":"10.0.0.0/31"}]]}}"#,
                7,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"x","ipam":{"ranges":[[{"subnet":"10.0.0.0/24","gateway":"10.0.1.1"}]]}}"#,
                7,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"x","ipam":{"ranges":[[{"subnet":"10.0.0.0/24"},{"subnet":"fd00::/64"}]]}}"#,
                7,
            ),
        ];
        for (input, code) in cases {
            let err = parse(input).unwrap_err();
            assert_eq!(err.code, *code, "{input}: {err}");
        }
    }
}

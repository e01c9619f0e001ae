//! flannel's Node annotations: read a peer's, render our own.
//!
//! The keys are flannel's (`<prefix>backend-type`, `backend-data`, `backend-v6-data`,
//! `public-ip`, `public-ipv6`, `public-ip-overwrite`, `public-ipv6-overwrite`,
//! `kube-subnet-manager`), so trellis and flannel nodes read each other and trellis can take
//! over a flannel cluster node by node.
//!
//! The VXLAN `backend-data` is `{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}` as flannel writes it.
//! trellis adds `"Port":N` only when the port is not the default 8472: flannel ignores unknown
//! fields there, and a peer that no longer runs VXLAN itself still needs to know which port to
//! send to while it switches (see `backend`).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use serde_json::Value;

use crate::config::BackendType;
use crate::net::{Mac, DEFAULT_VXLAN_PORT};
use crate::wg_key::WgKey;

pub const DEFAULT_PREFIX: &str = "flannel.alpha.coreos.com/";

/// The largest annotation value trellis reads. Real ones are under 100 bytes; a huge one is a
/// mistake or an attack, and is not worth parsing or keeping.
pub const MAX_ANNOTATION_BYTES: usize = 4096;

/// The full annotation keys for one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnotationKeys {
    pub kube_subnet_manager: String,
    pub backend_type: String,
    pub backend_data: String,
    pub backend_v6_data: String,
    pub public_ip: String,
    pub public_ipv6: String,
    pub public_ip_overwrite: String,
    pub public_ipv6_overwrite: String,
    /// flannel reads these at start as its `--public-ip`/`--public-ipv6`.
    pub node_public_ip: String,
    pub node_public_ipv6: String,
}

impl Default for AnnotationKeys {
    fn default() -> Self {
        Self::with_normalised_prefix(DEFAULT_PREFIX)
    }
}

impl AnnotationKeys {
    /// Keys for a prefix given like flannel's `--kube-annotation-prefix`: `example.com` becomes
    /// `example.com/`, `example.com/net` becomes `example.com/net-`.
    pub fn new(prefix: &str) -> Result<Self, AnnotationError> {
        let bad = |why: &str| AnnotationError::BadPrefix {
            prefix: prefix.to_string(),
            why: why.to_string(),
        };
        let mut p = prefix.to_string();
        match p.matches('/').count() {
            0 => p.push('/'),
            1 => {}
            _ => return Err(bad("at most one '/' is allowed")),
        }
        if !p.ends_with('/') && !p.ends_with('-') {
            p.push('-');
        }
        let (domain, name) = p.split_once('/').ok_or_else(|| bad("missing '/'"))?;
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'))
        };
        let labels: Vec<&str> = domain.split('.').collect();
        if labels.len() < 2 || !labels.iter().all(|l| label_ok(l)) {
            return Err(bad(
                "must start with a lowercase domain name like flannel.alpha.coreos.com",
            ));
        }
        let name_ok = name.is_empty() || (name.ends_with('-') && label_ok(name));
        if !name_ok {
            return Err(bad(
                "after '/' only lowercase letters, digits, '_' and '-' are allowed",
            ));
        }
        Ok(Self::with_normalised_prefix(&p))
    }

    fn with_normalised_prefix(p: &str) -> Self {
        AnnotationKeys {
            kube_subnet_manager: format!("{p}kube-subnet-manager"),
            backend_type: format!("{p}backend-type"),
            backend_data: format!("{p}backend-data"),
            backend_v6_data: format!("{p}backend-v6-data"),
            public_ip: format!("{p}public-ip"),
            public_ipv6: format!("{p}public-ipv6"),
            public_ip_overwrite: format!("{p}public-ip-overwrite"),
            public_ipv6_overwrite: format!("{p}public-ipv6-overwrite"),
            node_public_ip: format!("{p}node-public-ip"),
            node_public_ipv6: format!("{p}node-public-ipv6"),
        }
    }

    /// The keys the agent writes on its own Node. When patching, a key in this list but not
    /// in [`Advertisement::to_annotations`]'s map must be removed (e.g. `backend-v6-data`
    /// after IPv6 was disabled). The `*-overwrite` keys belong to the operator and are absent.
    pub fn advertised(&self) -> [&str; 6] {
        [
            &self.backend_type,
            &self.backend_data,
            &self.backend_v6_data,
            &self.public_ip,
            &self.public_ipv6,
            &self.kube_subnet_manager,
        ]
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnotationError {
    #[error("annotation prefix {prefix:?} is invalid: {why}")]
    BadPrefix { prefix: String, why: String },
    #[error("annotation {key} is {len} bytes, more than the {max} accepted")]
    TooLarge { key: String, len: usize, max: usize },
    #[error("annotation {key} is missing")]
    Missing { key: String },
    #[error("annotation {key}: unsupported backend type {value:?} (trellis supports vxlan, host-gw, ipip, wireguard)")]
    UnsupportedBackend { key: String, value: String },
    #[error("annotation {key}: {why}")]
    BadBackendData { key: String, why: String },
    #[error("annotation {key}: {value:?} is not an {family} address")]
    BadIp {
        key: String,
        value: String,
        family: &'static str,
    },
}

/// Shorten a value quoted in an error message; values can be up to 4 KiB.
fn excerpt(s: &str) -> String {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

fn bad_data(key: &str, why: String) -> AnnotationError {
    AnnotationError::BadBackendData {
        key: key.to_string(),
        why,
    }
}

/// A `backend-data` value as the JSON object it must be (`fields` names what it should hold,
/// for the error).
fn data_object(
    key: &str,
    text: &str,
    fields: &str,
) -> Result<serde_json::Map<String, Value>, AnnotationError> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| bad_data(key, format!("not JSON ({e}): {:?}", excerpt(text))))?;
    match v {
        Value::Object(obj) => Ok(obj),
        _ => Err(bad_data(
            key,
            format!(
                "expected an object with {fields}, found {:?}",
                excerpt(text)
            ),
        )),
    }
}

/// A VXLAN peer's `backend-data` (or `backend-v6-data`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanData {
    pub vni: u32,
    pub vtep_mac: Mac,
    /// The UDP port, when the node advertised one (trellis does when it is not 8472).
    pub port: Option<u16>,
}

impl VxlanData {
    /// flannel's exact JSON, plus `Port` when it is not the default.
    pub fn to_json(&self) -> String {
        match self.port {
            Some(p) if p != DEFAULT_VXLAN_PORT => format!(
                r#"{{"VNI":{},"VtepMAC":"{}","Port":{p}}}"#,
                self.vni, self.vtep_mac
            ),
            _ => format!(r#"{{"VNI":{},"VtepMAC":"{}"}}"#, self.vni, self.vtep_mac),
        }
    }

    /// Parse like Go's `encoding/json` into flannel's struct: keys case-insensitive, unknown
    /// keys ignored, `VtepMAC` required (flannel cannot program a peer without it).
    pub fn parse(key: &str, text: &str) -> Result<VxlanData, AnnotationError> {
        let bad = |why: String| bad_data(key, why);
        let obj = data_object(key, text, "VNI and VtepMAC")?;
        let mut vni = None;
        let mut mac = None;
        let mut port = None;
        for (k, v) in &obj {
            match k.to_ascii_lowercase().as_str() {
                "vni" => {
                    let n = v
                        .as_u64()
                        .filter(|n| *n <= u64::from(crate::config::MAX_VNI))
                        .ok_or_else(|| bad(format!("VNI {v} is not a number in 0..=16777215")))?;
                    vni = Some(n as u32);
                }
                "vtepmac" => {
                    let s = v
                        .as_str()
                        .ok_or_else(|| bad(format!("VtepMAC {v} is not a string")))?;
                    let m: Mac = s.parse().map_err(|e| bad(format!("VtepMAC: {e}")))?;
                    if m.is_multicast() || m.is_zero() {
                        return Err(bad(format!("VtepMAC {m} is not a unicast address")));
                    }
                    mac = Some(m);
                }
                "port" => {
                    let p = v
                        .as_u64()
                        .filter(|p| (1..=65535).contains(p))
                        .ok_or_else(|| bad(format!("Port {v} is not a port number")))?;
                    port = Some(p as u16);
                }
                _ => {}
            }
        }
        Ok(VxlanData {
            // flannel always writes the VNI; 1 is its default should one be missing.
            vni: vni.unwrap_or(1),
            vtep_mac: mac.ok_or_else(|| bad("VtepMAC is missing".into()))?,
            port,
        })
    }
}

/// A WireGuard peer's `backend-data` (or `backend-v6-data`): `{"PublicKey":"...","Port":N}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireguardData {
    pub public_key: WgKey,
    /// The peer's listen port; `None` when it wrote none or 0 (older flannel): then our own
    /// listen port is used, as flannel does.
    pub port: Option<u16>,
}

impl WireguardData {
    /// flannel's exact JSON (Go marshals the struct's fields in order).
    pub fn to_json(&self) -> String {
        format!(
            r#"{{"PublicKey":"{}","Port":{}}}"#,
            self.public_key,
            self.port.unwrap_or(0)
        )
    }

    /// Parse like Go's `encoding/json` into flannel's struct (keys case-insensitive, unknown
    /// keys ignored). `PublicKey` is required and must be a key: flannel cannot add a peer
    /// without one either.
    pub fn parse(key: &str, text: &str) -> Result<WireguardData, AnnotationError> {
        let bad = |why: String| bad_data(key, why);
        let obj = data_object(key, text, "PublicKey and Port")?;
        let mut public_key = None;
        let mut port = None;
        for (k, v) in &obj {
            match k.to_ascii_lowercase().as_str() {
                "publickey" => {
                    let s = v.as_str().ok_or_else(|| {
                        bad(format!(
                            "PublicKey {} is not a string",
                            excerpt(&v.to_string())
                        ))
                    })?;
                    let k: WgKey = s.parse().map_err(|e| bad(format!("PublicKey: {e}")))?;
                    if k.is_zero() {
                        return Err(bad("PublicKey is the all-zero key".into()));
                    }
                    public_key = Some(k);
                }
                "port" => {
                    let p = v.as_u64().filter(|p| *p <= 65535).ok_or_else(|| {
                        bad(format!(
                            "Port {} is not a port number",
                            excerpt(&v.to_string())
                        ))
                    })?;
                    port = (p != 0).then_some(p as u16);
                }
                _ => {}
            }
        }
        Ok(WireguardData {
            public_key: public_key.ok_or_else(|| bad("PublicKey is missing".into()))?,
            port,
        })
    }
}

/// One family's `backend-data` as this node writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendData {
    Vxlan(VxlanData),
    Wireguard(WireguardData),
}

impl BackendData {
    pub fn to_json(&self) -> String {
        match self {
            BackendData::Vxlan(d) => d.to_json(),
            BackendData::Wireguard(d) => d.to_json(),
        }
    }
}

/// How a peer wants to be reached, from its `backend-type` and `backend-data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerBackend {
    /// `v4`/`v6` are `None` when the node did not publish that family's data.
    Vxlan {
        v4: Option<VxlanData>,
        v6: Option<VxlanData>,
    },
    HostGw,
    Ipip,
    /// `v4`/`v6` are `None` when the node did not publish that family's data.
    Wireguard {
        v4: Option<WireguardData>,
        v6: Option<WireguardData>,
    },
}

impl PeerBackend {
    pub fn kind(&self) -> BackendType {
        match self {
            PeerBackend::Vxlan { .. } => BackendType::Vxlan,
            PeerBackend::HostGw => BackendType::HostGw,
            PeerBackend::Ipip => BackendType::Ipip,
            PeerBackend::Wireguard { .. } => BackendType::Wireguard,
        }
    }

    /// The WireGuard public keys a peer advertises (one per family it publishes data for;
    /// flannel writes the same key in both).
    pub fn wireguard_keys(&self) -> impl Iterator<Item = WgKey> {
        let (v4, v6) = match *self {
            PeerBackend::Wireguard { v4, v6 } => (v4, v6),
            _ => (None, None),
        };
        let v6 = v6.filter(|d| Some(d.public_key) != v4.map(|d| d.public_key));
        v4.into_iter().chain(v6).map(|d| d.public_key)
    }
}

/// What a peer Node's annotations say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAnnotations {
    pub backend: PeerBackend,
    pub public_ip: Option<Ipv4Addr>,
    pub public_ipv6: Option<Ipv6Addr>,
}

fn get<'a>(
    annotations: &'a BTreeMap<String, String>,
    key: &str,
) -> Result<Option<&'a str>, AnnotationError> {
    match annotations.get(key) {
        Some(v) if v.len() > MAX_ANNOTATION_BYTES => Err(AnnotationError::TooLarge {
            key: key.to_string(),
            len: v.len(),
            max: MAX_ANNOTATION_BYTES,
        }),
        Some(v) => Ok(Some(v.as_str())),
        None => Ok(None),
    }
}

fn ipv4(key: &str, value: &str) -> Result<Ipv4Addr, AnnotationError> {
    value.parse().map_err(|_| AnnotationError::BadIp {
        key: key.to_string(),
        value: excerpt(value),
        family: "IPv4",
    })
}

fn ipv6(key: &str, value: &str) -> Result<Ipv6Addr, AnnotationError> {
    value.parse().map_err(|_| AnnotationError::BadIp {
        key: key.to_string(),
        value: excerpt(value),
        family: "IPv6",
    })
}

/// Whether the node is run by flannel or trellis in kube subnet manager mode: only those
/// are peers (flannel's rule).
pub fn is_managed(keys: &AnnotationKeys, annotations: &BTreeMap<String, String>) -> bool {
    annotations
        .get(&keys.kube_subnet_manager)
        .is_some_and(|v| v == "true")
}

/// Host-gw and IPIP nodes write `null` (flannel marshals an empty RawMessage); accept that,
/// nothing, or an object whose content is irrelevant. Anything else is a broken annotation.
fn check_empty_backend_data(key: &str, value: Option<&str>) -> Result<(), AnnotationError> {
    match value.map(str::trim) {
        None | Some("") | Some("null") => Ok(()),
        Some(v) => match serde_json::from_str::<Value>(v) {
            Ok(Value::Object(_)) | Ok(Value::Null) => Ok(()),
            _ => Err(AnnotationError::BadBackendData {
                key: key.to_string(),
                why: format!("expected null or an object, found {:?}", excerpt(v)),
            }),
        },
    }
}

/// A `backend-data` that may be absent or `null`, else parsed by `parse`.
fn optional<T>(
    key: &str,
    value: Option<&str>,
    parse: fn(&str, &str) -> Result<T, AnnotationError>,
) -> Result<Option<T>, AnnotationError> {
    match value.map(str::trim) {
        None | Some("") | Some("null") => Ok(None),
        Some(text) => parse(key, text).map(Some),
    }
}

/// Read a peer's annotations. Does not check `kube-subnet-manager` (see [`is_managed`]) nor
/// which address families are required (that depends on the config; see `view`).
pub fn parse_peer(
    keys: &AnnotationKeys,
    annotations: &BTreeMap<String, String>,
) -> Result<PeerAnnotations, AnnotationError> {
    let backend_type =
        get(annotations, &keys.backend_type)?.ok_or_else(|| AnnotationError::Missing {
            key: keys.backend_type.clone(),
        })?;
    let kind: BackendType =
        backend_type
            .parse()
            .map_err(|_| AnnotationError::UnsupportedBackend {
                key: keys.backend_type.clone(),
                value: excerpt(backend_type),
            })?;
    let data = get(annotations, &keys.backend_data)?;
    let data_v6 = get(annotations, &keys.backend_v6_data)?;
    let backend = match kind {
        BackendType::Vxlan => PeerBackend::Vxlan {
            v4: optional(&keys.backend_data, data, VxlanData::parse)?,
            v6: optional(&keys.backend_v6_data, data_v6, VxlanData::parse)?,
        },
        BackendType::Wireguard => PeerBackend::Wireguard {
            v4: optional(&keys.backend_data, data, WireguardData::parse)?,
            v6: optional(&keys.backend_v6_data, data_v6, WireguardData::parse)?,
        },
        BackendType::HostGw => {
            check_empty_backend_data(&keys.backend_data, data)?;
            check_empty_backend_data(&keys.backend_v6_data, data_v6)?;
            PeerBackend::HostGw
        }
        BackendType::Ipip => {
            check_empty_backend_data(&keys.backend_data, data)?;
            PeerBackend::Ipip
        }
    };
    let public_ip = get(annotations, &keys.public_ip)?
        .map(|v| ipv4(&keys.public_ip, v))
        .transpose()?;
    let public_ipv6 = get(annotations, &keys.public_ipv6)?
        .map(|v| ipv6(&keys.public_ipv6, v))
        .transpose()?;
    Ok(PeerAnnotations {
        backend,
        public_ip,
        public_ipv6,
    })
}

/// An IPv4 and an IPv6 public address, each if given.
pub type PublicIps = (Option<Ipv4Addr>, Option<Ipv6Addr>);

/// The address peers must use to reach this node, when the operator chose one on our own Node
/// (e.g. behind NAT), advertised instead of the interface's: `public-ip-overwrite` /
/// `public-ipv6-overwrite`, else `node-public-ip` / `node-public-ipv6` (which flannel reads at
/// start as its `--public-ip`). Empty values count as unset.
pub fn public_ip_override(
    keys: &AnnotationKeys,
    annotations: &BTreeMap<String, String>,
) -> Result<PublicIps, AnnotationError> {
    let v4 = first_set(
        annotations,
        [&keys.public_ip_overwrite, &keys.node_public_ip],
    )?;
    let v6 = first_set(
        annotations,
        [&keys.public_ipv6_overwrite, &keys.node_public_ipv6],
    )?;
    Ok((
        v4.map(|(key, v)| ipv4(key, v)).transpose()?,
        v6.map(|(key, v)| ipv6(key, v)).transpose()?,
    ))
}

/// [`public_ip_override`], where an unreadable `node-public-ip(v6)` (only a default, as
/// flannel's `--public-ip`) is left out with a problem for the log instead of failing; an
/// unreadable `*-overwrite`, which the operator set on purpose, still fails.
pub fn public_ip_override_lenient(
    keys: &AnnotationKeys,
    annotations: &BTreeMap<String, String>,
) -> Result<(PublicIps, Vec<String>), AnnotationError> {
    let mut problems = Vec::new();
    let mut kept = std::borrow::Cow::Borrowed(annotations);
    loop {
        match public_ip_override(keys, &kept) {
            Err(AnnotationError::BadIp { key, value, .. })
                if (key == keys.node_public_ip || key == keys.node_public_ipv6)
                    && kept.contains_key(&key) =>
            {
                problems.push(format!(
                    "annotation {key}={value:?} is not an address: ignored"
                ));
                kept.to_mut().remove(&key);
            }
            r => return r.map(|ips| (ips, problems)),
        }
    }
}

/// The first of `keys` with a non-empty value, and that value.
fn first_set<'a, 'k>(
    annotations: &'a BTreeMap<String, String>,
    keys: [&'k String; 2],
) -> Result<Option<(&'k str, &'a str)>, AnnotationError> {
    for key in keys {
        if let Some(v) = get(annotations, key)?.filter(|v| !v.is_empty()) {
            return Ok(Some((key.as_str(), v)));
        }
    }
    Ok(None)
}

/// The VTEP MACs our own Node already advertises (IPv4, IPv6), to reuse across restarts so
/// peers' ARP and FDB entries stay valid. Unreadable data yields `None`: a fresh MAC is then
/// picked, which peers learn from the new annotation.
pub fn advertised_vtep_macs(
    keys: &AnnotationKeys,
    annotations: &BTreeMap<String, String>,
) -> (Option<Mac>, Option<Mac>) {
    let read = |key: &str| {
        get(annotations, key)
            .ok()
            .flatten()
            .and_then(|v| VxlanData::parse(key, v).ok())
            .map(|d| d.vtep_mac)
    };
    (read(&keys.backend_data), read(&keys.backend_v6_data))
}

/// What this node tells the others about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advertisement {
    pub backend_type: BackendType,
    /// `backend-data` (when IPv4 is enabled): for VXLAN the data of `flannel.<VNI>`, for
    /// WireGuard our public key and listen port ...
    pub data_v4: Option<BackendData>,
    /// ... and `backend-v6-data` (when IPv6 is enabled); `null` for host-gw and IPIP.
    pub data_v6: Option<BackendData>,
    pub public_ip: Option<Ipv4Addr>,
    pub public_ipv6: Option<Ipv6Addr>,
}

impl Advertisement {
    /// The annotations to set on our own Node, exactly as flannel writes them.
    pub fn to_annotations(&self, keys: &AnnotationKeys) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        out.insert(
            keys.backend_type.clone(),
            self.backend_type.as_str().to_string(),
        );
        out.insert(keys.kube_subnet_manager.clone(), "true".to_string());
        let data = |d: Option<BackendData>| match d {
            Some(d) => d.to_json(),
            None => "null".to_string(),
        };
        if let Some(ip) = self.public_ip {
            out.insert(keys.public_ip.clone(), ip.to_string());
            out.insert(keys.backend_data.clone(), data(self.data_v4));
        }
        if let Some(ip) = self.public_ipv6 {
            out.insert(keys.public_ipv6.clone(), ip.to_string());
            out.insert(keys.backend_v6_data.clone(), data(self.data_v6));
        }
        out
    }
}

impl fmt::Display for PeerBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerBackend::Vxlan { v4, v6 } => {
                write!(f, "vxlan")?;
                if let Some(d) = v4 {
                    write!(f, " vni {} vtep {}", d.vni, d.vtep_mac)?;
                }
                if let Some(d) = v6 {
                    write!(f, " v6-vni {} v6-vtep {}", d.vni, d.vtep_mac)?;
                }
                Ok(())
            }
            PeerBackend::Wireguard { v4, v6 } => {
                write!(f, "wireguard")?;
                if let Some(d) = v4 {
                    write!(f, " key {}", d.public_key)?;
                }
                if let Some(d) = v6.filter(|d| Some(*d) != *v4) {
                    write!(f, " v6-key {}", d.public_key)?;
                }
                Ok(())
            }
            other => f.write_str(other.kind().as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (format!("{DEFAULT_PREFIX}{k}"), v.to_string()))
            .collect()
    }

    const MAC: &str = "0a:58:0a:f4:01:02";

    #[test]
    fn prefix_normalisation_follows_flannel() {
        assert_eq!(
            AnnotationKeys::new(DEFAULT_PREFIX).unwrap(),
            AnnotationKeys::default()
        );
        assert_eq!(
            AnnotationKeys::new("flannel.alpha.coreos.com").unwrap(),
            AnnotationKeys::default()
        );
        let k = AnnotationKeys::new("example.com/net").unwrap();
        assert_eq!(k.public_ip, "example.com/net-public-ip");
        let k = AnnotationKeys::new("example.com/net-").unwrap();
        assert_eq!(k.backend_type, "example.com/net-backend-type");
        assert_eq!(
            AnnotationKeys::default().backend_v6_data,
            "flannel.alpha.coreos.com/backend-v6-data"
        );
        for bad in [
            "",
            "a/b/c",
            "localhost",
            "Example.com/",
            "exa mple.com/",
            "example..com/",
            "example.com/ne.t",
        ] {
            assert!(
                matches!(
                    AnnotationKeys::new(bad),
                    Err(AnnotationError::BadPrefix { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn vxlan_peer() {
        let keys = AnnotationKeys::default();
        let a = map(&[
            ("kube-subnet-manager", "true"),
            ("backend-type", "vxlan"),
            ("backend-data", &format!(r#"{{"VNI":1,"VtepMAC":"{MAC}"}}"#)),
            ("public-ip", "192.168.1.10"),
        ]);
        assert!(is_managed(&keys, &a));
        let p = parse_peer(&keys, &a).unwrap();
        assert_eq!(p.public_ip, Some("192.168.1.10".parse().unwrap()));
        assert_eq!(p.public_ipv6, None);
        assert_eq!(
            p.backend,
            PeerBackend::Vxlan {
                v4: Some(VxlanData {
                    vni: 1,
                    vtep_mac: MAC.parse().unwrap(),
                    port: None
                }),
                v6: None
            }
        );
    }

    #[test]
    fn vxlan_data_is_read_like_go() {
        let d = VxlanData::parse(
            "k",
            &format!(r#"{{"vni":7,"vtepmac":"{MAC}","Extra":[1]}}"#),
        )
        .unwrap();
        assert_eq!(d.vni, 7);
        let d = VxlanData::parse("k", &format!(r#"{{"VtepMAC":"{MAC}","Port":4789}}"#)).unwrap();
        assert_eq!((d.vni, d.port), (1, Some(4789)));
        // Every VNI flannel can run with (its VNI is a uint32 the kernel bounds to 24 bits,
        // 0 included), and fields a newer flannel may add, ignored.
        for vni in [0, 1, 4096, 16_777_215] {
            let text = format!(r#"{{"VNI":{vni},"VtepMAC":"{MAC}","Future":{{"x":1}}}}"#);
            let d = VxlanData::parse("k", &text).unwrap();
            assert_eq!(d.vni, vni);
            assert_eq!(VxlanData::parse("k", &d.to_json()).unwrap(), d);
        }
    }

    #[test]
    fn host_gw_and_ipip_peers_accept_null_data() {
        let keys = AnnotationKeys::default();
        for data in [None, Some("null"), Some(""), Some("{}")] {
            let mut a = map(&[
                ("backend-type", "host-gw"),
                ("public-ip", "10.0.0.2"),
                ("public-ipv6", "fd00::2"),
            ]);
            if let Some(d) = data {
                a.insert(keys.backend_data.clone(), d.into());
                a.insert(keys.backend_v6_data.clone(), d.into());
            }
            let p = parse_peer(&keys, &a).unwrap();
            assert_eq!(p.backend, PeerBackend::HostGw);
            assert_eq!(p.public_ipv6, Some("fd00::2".parse().unwrap()));
            a.insert(keys.backend_type.clone(), "ipip".into());
            assert_eq!(parse_peer(&keys, &a).unwrap().backend, PeerBackend::Ipip);
        }
    }

    #[test]
    fn unmanaged_nodes_are_not_peers() {
        let keys = AnnotationKeys::default();
        assert!(!is_managed(&keys, &map(&[])));
        assert!(!is_managed(
            &keys,
            &map(&[("kube-subnet-manager", "false")])
        ));
        assert!(!is_managed(&keys, &map(&[("kube-subnet-manager", "True")])));
        // Another prefix does not count.
        let other = AnnotationKeys::new("example.com").unwrap();
        assert!(!is_managed(
            &other,
            &map(&[("kube-subnet-manager", "true")])
        ));
    }

    #[test]
    fn malformed_peer_annotations_are_typed_errors() {
        let keys = AnnotationKeys::default();
        let vx = |data: &str, ip: &str| {
            map(&[
                ("backend-type", "vxlan"),
                ("backend-data", data),
                ("public-ip", ip),
            ])
        };
        let good = format!(r#"{{"VNI":1,"VtepMAC":"{MAC}"}}"#);
        let huge = "x".repeat(MAX_ANNOTATION_BYTES + 1);
        type Check = fn(&AnnotationError) -> bool;
        let cases: Vec<(BTreeMap<String, String>, Check)> = vec![
            (map(&[("public-ip", "10.0.0.1")]), |e| {
                matches!(e, AnnotationError::Missing { .. })
            }),
            (map(&[("backend-type", "udp")]), |e| {
                matches!(e, AnnotationError::UnsupportedBackend { .. })
            }),
            (map(&[("backend-type", "VXLAN")]), |e| {
                matches!(e, AnnotationError::UnsupportedBackend { .. })
            }),
            (vx("{not json", "10.0.0.1"), |e| {
                matches!(e, AnnotationError::BadBackendData { .. })
            }),
            (vx("[1,2]", "10.0.0.1"), |e| {
                matches!(e, AnnotationError::BadBackendData { .. })
            }),
            (vx(r#"{"VNI":1}"#, "10.0.0.1"), |e| {
                matches!(e, AnnotationError::BadBackendData { .. })
            }),
            (vx(r#"{"VNI":1,"VtepMAC":"zz:zz"}"#, "10.0.0.1"), |e| {
                matches!(e, AnnotationError::BadBackendData { .. })
            }),
            (
                vx(r#"{"VNI":1,"VtepMAC":"01:00:5e:00:00:01"}"#, "10.0.0.1"),
                |e| matches!(e, AnnotationError::BadBackendData { .. }),
            ),
            (
                vx(r#"{"VNI":1,"VtepMAC":"00:00:00:00:00:00"}"#, "10.0.0.1"),
                |e| matches!(e, AnnotationError::BadBackendData { .. }),
            ),
            (
                vx(&format!(r#"{{"VNI":-1,"VtepMAC":"{MAC}"}}"#), "10.0.0.1"),
                |e| matches!(e, AnnotationError::BadBackendData { .. }),
            ),
            (
                vx(
                    &format!(r#"{{"VNI":16777216,"VtepMAC":"{MAC}"}}"#),
                    "10.0.0.1",
                ),
                |e| matches!(e, AnnotationError::BadBackendData { .. }),
            ),
            (
                vx(
                    &format!(r#"{{"VNI":1,"VtepMAC":"{MAC}","Port":0}}"#),
                    "10.0.0.1",
                ),
                |e| matches!(e, AnnotationError::BadBackendData { .. }),
            ),
            (vx(&good, "10.0.0"), |e| {
                matches!(e, AnnotationError::BadIp { .. })
            }),
            (vx(&good, "fd00::1"), |e| {
                matches!(e, AnnotationError::BadIp { family: "IPv4", .. })
            }),
            (vx(&good, " 10.0.0.1"), |e| {
                matches!(e, AnnotationError::BadIp { .. })
            }),
            (vx(&huge, "10.0.0.1"), |e| {
                matches!(e, AnnotationError::TooLarge { .. })
            }),
            (
                map(&[("backend-type", "host-gw"), ("backend-data", "42")]),
                |e| matches!(e, AnnotationError::BadBackendData { .. }),
            ),
            (
                map(&[("backend-type", "host-gw"), ("public-ipv6", "10.0.0.1")]),
                |e| matches!(e, AnnotationError::BadIp { family: "IPv6", .. }),
            ),
        ];
        for (a, check) in cases {
            match parse_peer(&keys, &a) {
                Ok(p) => panic!("accepted {a:?}: {p:?}"),
                Err(e) => {
                    assert!(check(&e), "{a:?}: unexpected {e:?}");
                    assert!(e.to_string().len() < 400, "message too long: {e}");
                }
            }
        }
    }

    #[test]
    fn own_overwrite_and_reused_macs() {
        let keys = AnnotationKeys::default();
        let a = map(&[
            ("public-ip-overwrite", "203.0.113.7"),
            ("backend-data", &format!(r#"{{"VNI":1,"VtepMAC":"{MAC}"}}"#)),
            ("backend-v6-data", "garbage"),
        ]);
        assert_eq!(
            public_ip_override(&keys, &a).unwrap(),
            (Some("203.0.113.7".parse().unwrap()), None)
        );
        assert_eq!(
            advertised_vtep_macs(&keys, &a),
            (Some(MAC.parse().unwrap()), None)
        );
        let bad = map(&[("public-ipv6-overwrite", "nope")]);
        assert!(public_ip_override(&keys, &bad).is_err());
        assert_eq!(
            public_ip_override(&keys, &map(&[("public-ip-overwrite", "")])).unwrap(),
            (None, None)
        );
        // node-public-ip(v6) as flannel's --public-ip, unless an overwrite says otherwise.
        let both = map(&[
            ("node-public-ip", "198.51.100.1"),
            ("node-public-ipv6", "2001:db8::1"),
            ("public-ipv6-overwrite", "2001:db8::2"),
        ]);
        assert_eq!(
            public_ip_override(&keys, &both).unwrap(),
            (
                Some("198.51.100.1".parse().unwrap()),
                Some("2001:db8::2".parse().unwrap())
            )
        );
        let err = public_ip_override(&keys, &map(&[("node-public-ip", "x")])).unwrap_err();
        assert!(err.to_string().contains("node-public-ip"), "{err}");
        // Leniently, only the unreadable default goes; the other family's stays.
        let one_bad = map(&[
            ("node-public-ip", "198.51.100.1"),
            ("node-public-ipv6", "x"),
        ]);
        let (ips, problems) = public_ip_override_lenient(&keys, &one_bad).unwrap();
        assert_eq!(ips, (Some("198.51.100.1".parse().unwrap()), None));
        assert_eq!(problems.len(), 1, "{problems:?}");
        let bad_overwrite = map(&[("public-ip-overwrite", "x")]);
        assert!(public_ip_override_lenient(&keys, &bad_overwrite).is_err());
    }

    #[test]
    fn wireguard_data_is_flannels_and_bad_keys_are_refused() {
        let keys = AnnotationKeys::default();
        let key: WgKey = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
            .parse()
            .unwrap();
        let adv = Advertisement {
            backend_type: BackendType::Wireguard,
            data_v4: Some(BackendData::Wireguard(WireguardData {
                public_key: key,
                port: Some(51820),
            })),
            data_v6: None,
            public_ip: Some("192.168.1.10".parse().unwrap()),
            public_ipv6: None,
        };
        let got = adv.to_annotations(&keys);
        // What flannel's wireguard backend writes: Go marshals PublicKey, then Port.
        assert_eq!(
            got[&keys.backend_data],
            r#"{"PublicKey":"hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=","Port":51820}"#
        );
        assert_eq!(
            parse_peer(&keys, &got).unwrap().backend,
            PeerBackend::Wireguard {
                v4: Some(WireguardData {
                    public_key: key,
                    port: Some(51820)
                }),
                v6: None
            }
        );
        let k = "flannel.alpha.coreos.com/backend-data";
        // Older flannel wrote no port; keys are matched case-insensitively like Go.
        let d = WireguardData::parse(k, &format!(r#"{{"publickey":"{key}","Port":0,"x":1}}"#));
        assert_eq!(d.unwrap().port, None);
        for bad in [
            r#"{"Port":51820}"#.to_string(),
            r#"{"PublicKey":"short"}"#.to_string(),
            r#"{"PublicKey":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}"#.to_string(),
            format!(r#"{{"PublicKey":"{key}","Port":70000}}"#),
            format!(r#"{{"PublicKey":"{key}","Port":-1}}"#),
            r#"["PublicKey"]"#.to_string(),
            format!(r#"{{"PublicKey":"{}"}}"#, "A".repeat(4000)),
        ] {
            let e = WireguardData::parse(k, &bad).unwrap_err().to_string();
            assert!(e.starts_with("annotation flannel.alpha"), "{bad}: {e}");
            assert!(e.len() < 300, "quotes only an excerpt: {e}");
        }
    }

    #[test]
    fn renders_flannels_exact_annotations() {
        let keys = AnnotationKeys::default();
        let mac: Mac = MAC.parse().unwrap();
        let adv = Advertisement {
            backend_type: BackendType::Vxlan,
            data_v4: Some(BackendData::Vxlan(VxlanData {
                vni: 1,
                vtep_mac: mac,
                port: Some(8472),
            })),
            data_v6: None,
            public_ip: Some("192.168.1.10".parse().unwrap()),
            public_ipv6: None,
        };
        let got = adv.to_annotations(&keys);
        assert_eq!(
            got,
            map(&[
                ("backend-type", "vxlan"),
                ("backend-data", r#"{"VNI":1,"VtepMAC":"0a:58:0a:f4:01:02"}"#),
                ("public-ip", "192.168.1.10"),
                ("kube-subnet-manager", "true"),
            ])
        );
        // What we render, we read back the same.
        let p = parse_peer(&keys, &got).unwrap();
        assert_eq!(
            p.backend,
            PeerBackend::Vxlan {
                v4: Some(VxlanData {
                    vni: 1,
                    vtep_mac: mac,
                    port: None
                }),
                v6: None
            }
        );
        for k in got.keys() {
            assert!(keys.advertised().contains(&k.as_str()));
        }

        let data9 = VxlanData {
            vni: 9,
            vtep_mac: mac,
            port: Some(4789),
        };
        let adv = Advertisement {
            backend_type: BackendType::Vxlan,
            data_v4: Some(BackendData::Vxlan(data9)),
            data_v6: Some(BackendData::Vxlan(data9)),
            public_ip: Some("192.168.1.10".parse().unwrap()),
            public_ipv6: Some("fd00::10".parse().unwrap()),
        };
        let got = adv.to_annotations(&keys);
        assert_eq!(
            got[&keys.backend_v6_data],
            r#"{"VNI":9,"VtepMAC":"0a:58:0a:f4:01:02","Port":4789}"#
        );
        assert_eq!(
            parse_peer(&keys, &got).unwrap().backend,
            PeerBackend::Vxlan {
                v4: Some(data9),
                v6: Some(data9)
            }
        );

        let hg = Advertisement {
            backend_type: BackendType::HostGw,
            data_v4: None,
            data_v6: None,
            public_ip: Some("192.168.1.10".parse().unwrap()),
            public_ipv6: Some("fd00::10".parse().unwrap()),
        };
        let got = hg.to_annotations(&keys);
        assert_eq!(got[&keys.backend_type], "host-gw");
        assert_eq!(got[&keys.backend_data], "null");
        assert_eq!(got[&keys.backend_v6_data], "null");
        assert_eq!(got[&keys.public_ipv6], "fd00::10");
        assert_eq!(
            parse_peer(&keys, &got).unwrap().backend,
            PeerBackend::HostGw
        );
    }
}

//! flannel's `net-conf.json`, parsed the way flannel reads it, with stricter errors.
//!
//! Compatible with flannel:
//! - keys match case-insensitively (flannel decodes with Go's `encoding/json`, which does);
//! - `EnableIPv4` defaults to true, `Backend.VNI` to 1, `Backend.Port` to 8472 (0 means the
//!   kernel default, which is 8472);
//! - `null` for a key means "not set", as Go leaves the zero value;
//! - `SubnetLen`, `SubnetMin`, `SubnetMax` and their IPv6 forms are accepted, but the subnet
//!   comes from the Node's `spec.podCIDRs` in kube subnet manager mode, as in flannel: a value
//!   of the wrong type is refused (flannel's decoder refuses it too), one out of range (a
//!   `SubnetLen` of 31, a `SubnetMin` outside `Network`) is only a warning, since flannel's
//!   kube mode never checks them.
//!
//! Different from flannel, on purpose:
//! - unknown keys are reported as warnings instead of being silently dropped;
//! - an invalid value is an error naming the key (`Backend.VNI: ...`), so a bad ConfigMap is
//!   rejected whole and the agent keeps running the last good one;
//! - a missing `Backend` means VXLAN (flannel would pick the long-removed `udp` backend and fail);
//! - IPIP with `EnableIPv6` is rejected: flannel silently drops IPv6 for IPIP;
//! - two keys differing only in case (`Network` and `network`) are rejected instead of one
//!   silently winning.
//!
//! [`NetConfig`] is `Eq`: the agent compares the running and the new config to detect a
//! backend switch.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde_json::Value;

use crate::net::{Family, DEFAULT_VXLAN_PORT};
use crate::wg_key::WgSecret;

/// A ConfigMap value is at most 1 MiB; a net-conf.json is a few hundred bytes. Anything past
/// this is not a config someone meant to write.
pub const MAX_CONFIG_BYTES: usize = 64 * 1024;

/// VXLAN network identifiers are 24 bits.
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// The backend types trellis implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BackendType {
    Vxlan,
    HostGw,
    Ipip,
    Wireguard,
}

impl BackendType {
    /// The name used in net-conf.json and in the `backend-type` annotation.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendType::Vxlan => "vxlan",
            BackendType::HostGw => "host-gw",
            BackendType::Ipip => "ipip",
            BackendType::Wireguard => "wireguard",
        }
    }

    /// Bytes the encapsulation adds to a packet of `family` carried over an underlay of the
    /// same family: the device MTU is the underlay's (or `Backend.MTU`, which flannel defines
    /// as the underlay's) minus this, and pods get the device's.
    ///
    /// VXLAN: outer IPv4 (20) or IPv6 (40) + UDP (8) + VXLAN (8) + inner Ethernet (14), so 50
    /// or 70. flannel subtracts 50 for both of its devices, which over an IPv6 underlay is 20
    /// bytes too many for the path; trellis subtracts what the header takes. IPIP: the outer
    /// IPv4 header (20), as flannel. WireGuard: flannel's 80 for both families (outer IPv6
    /// header 40 + UDP 8 + WireGuard's type, index and nonce 16 + tag 16), which also covers
    /// an IPv4 outer header. host-gw routes plainly: nothing.
    pub fn overhead(self, family: Family) -> u32 {
        match (self, family) {
            (BackendType::Vxlan, Family::V4) => 50,
            (BackendType::Vxlan, Family::V6) => 70,
            (BackendType::Ipip, _) => 20,
            (BackendType::Wireguard, _) => 80,
            (BackendType::HostGw, _) => 0,
        }
    }

    /// The smallest underlay MTU that leaves `family`'s minimum MTU for pods.
    pub fn min_underlay_mtu(self, family: Family) -> u32 {
        family.min_mtu() + self.overhead(family)
    }
}

impl fmt::Display for BackendType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name is not one of trellis's backends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported backend type {0:?} (trellis supports vxlan, host-gw, ipip, wireguard)")]
pub struct UnknownBackendType(pub String);

impl FromStr for BackendType {
    type Err = UnknownBackendType;

    /// Exact, lowercase names, as flannel's backend registry holds them (net-conf.json's
    /// `Backend.Type` is lowercased first, as flannel does; a peer's `backend-type` is not).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "vxlan" => Ok(BackendType::Vxlan),
            "host-gw" => Ok(BackendType::HostGw),
            "ipip" => Ok(BackendType::Ipip),
            "wireguard" => Ok(BackendType::Wireguard),
            other => Err(UnknownBackendType(other.to_string())),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanConfig {
    pub vni: u32,
    pub port: u16,
    pub gbp: bool,
    pub learning: bool,
    pub direct_routing: bool,
    pub mtu: Option<u32>,
}

impl Default for VxlanConfig {
    fn default() -> Self {
        VxlanConfig {
            vni: 1,
            port: DEFAULT_VXLAN_PORT,
            gbp: false,
            learning: false,
            direct_routing: false,
            mtu: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostGwConfig {
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IpipConfig {
    pub direct_routing: bool,
    pub mtu: Option<u32>,
}

/// WireGuard's listen ports when net-conf.json sets none (flannel's).
pub const DEFAULT_WG_PORT: u16 = 51820;
pub const DEFAULT_WG_PORT_V6: u16 = 51821;

/// flannel's WireGuard `Mode`: which devices carry which family, and which of a peer's
/// addresses is its endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WgMode {
    /// `flannel-wg` carries IPv4 over IPv4 endpoints, `flannel-wg-v6` IPv6 over IPv6 ones.
    #[default]
    Separate,
    /// One device for both families; per peer, the IPv4 endpoint unless only IPv6 looks
    /// reachable (flannel's `selectMode`).
    Auto,
    /// One device for both families, always over the peer's IPv4 (or IPv6) address.
    Ipv4,
    Ipv6,
}

impl WgMode {
    pub fn as_str(self) -> &'static str {
        match self {
            WgMode::Separate => "separate",
            WgMode::Auto => "auto",
            WgMode::Ipv4 => "ipv4",
            WgMode::Ipv6 => "ipv6",
        }
    }
}

/// The `wireguard` backend's options (flannel's names in comments).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireguardConfig {
    /// `ListenPort`: of `flannel-wg`.
    pub listen_port: u16,
    /// `ListenPortV6`: of `flannel-wg-v6` (separate mode).
    pub listen_port_v6: u16,
    /// `PSK`: a preshared key for every peer, adding a symmetric layer.
    pub psk: Option<WgSecret>,
    /// `PersistentKeepaliveInterval`, in seconds; 0 is off.
    pub keepalive: u16,
    pub mode: WgMode,
    pub mtu: Option<u32>,
}

impl Default for WireguardConfig {
    fn default() -> Self {
        WireguardConfig {
            listen_port: DEFAULT_WG_PORT,
            listen_port_v6: DEFAULT_WG_PORT_V6,
            psk: None,
            keepalive: 0,
            mode: WgMode::Separate,
            mtu: None,
        }
    }
}

/// The `Backend` object, with only the options that mean something for its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendConfig {
    Vxlan(VxlanConfig),
    HostGw(HostGwConfig),
    Ipip(IpipConfig),
    Wireguard(WireguardConfig),
}

impl BackendConfig {
    pub fn kind(&self) -> BackendType {
        match self {
            BackendConfig::Vxlan(_) => BackendType::Vxlan,
            BackendConfig::HostGw(_) => BackendType::HostGw,
            BackendConfig::Ipip(_) => BackendType::Ipip,
            BackendConfig::Wireguard(_) => BackendType::Wireguard,
        }
    }

    /// `Backend.MTU`: the underlay MTU to plan with instead of the interface's (flannel's
    /// meaning): each device gets it minus its encapsulation ([`BackendType::overhead`]).
    pub fn mtu(&self) -> Option<u32> {
        match self {
            BackendConfig::Vxlan(c) => c.mtu,
            BackendConfig::HostGw(c) => c.mtu,
            BackendConfig::Ipip(c) => c.mtu,
            BackendConfig::Wireguard(c) => c.mtu,
        }
    }

    /// `Backend.DirectRouting`: route plainly to peers on the same L2 segment.
    pub fn direct_routing(&self) -> bool {
        match self {
            BackendConfig::Vxlan(c) => c.direct_routing,
            BackendConfig::HostGw(_) | BackendConfig::Wireguard(_) => false,
            BackendConfig::Ipip(c) => c.direct_routing,
        }
    }
}

/// A parsed, validated net-conf.json.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    pub enable_ipv4: bool,
    pub enable_ipv6: bool,
    /// `Network`, normalised to its network address. `Some` whenever `enable_ipv4`.
    pub network: Option<Ipv4Network>,
    /// `IPv6Network`. `Some` whenever `enable_ipv6`.
    pub ipv6_network: Option<Ipv6Network>,
    /// `EnableNFTables`: firewall rules through nftables instead of iptables.
    pub enable_nftables: bool,
    pub subnet_len: Option<u8>,
    pub ipv6_subnet_len: Option<u8>,
    pub subnet_min: Option<Ipv4Addr>,
    pub subnet_max: Option<Ipv4Addr>,
    pub ipv6_subnet_min: Option<Ipv6Addr>,
    pub ipv6_subnet_max: Option<Ipv6Addr>,
    pub backend: BackendConfig,
    /// `NetworkPolicy.Enabled` (trellis's own key; off by default, as flannel has none):
    /// enforce Kubernetes NetworkPolicies in nftables.
    pub network_policy: bool,
}

impl NetConfig {
    /// The IPv4 pod network, if IPv4 is enabled.
    pub fn ipv4(&self) -> Option<Ipv4Network> {
        self.network.filter(|_| self.enable_ipv4)
    }

    /// The IPv6 pod network, if IPv6 is enabled.
    pub fn ipv6(&self) -> Option<Ipv6Network> {
        self.ipv6_network.filter(|_| self.enable_ipv6)
    }

    /// Parse and validate net-conf.json text.
    pub fn parse(text: &str) -> Result<ParsedConfig, ConfigError> {
        parse(text)
    }
}

/// A config and the remarks worth logging about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedConfig {
    pub config: NetConfig,
    pub warnings: Vec<ConfigWarning>,
}

/// Something in the config that trellis ignores; logged, never fatal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigWarning {
    /// A key neither flannel nor trellis knows (typo?). `key` is the full path, e.g. `Backend.VNl`.
    UnknownKey { key: String },
    /// A known option that the chosen backend does not use (e.g. `VNI` with host-gw).
    IgnoredForBackend { key: String, backend: BackendType },
    /// Accepted for compatibility but unused: the subnet comes from the Node's podCIDRs.
    UnusedInKubeMode { key: String },
    /// An unused option (as [`Self::UnusedInKubeMode`]) whose value would be wrong where it
    /// is used: flannel's kube mode never checks it, so neither does trellis refuse it.
    UnusedAndInvalid { key: String, why: String },
    /// No `Backend` object: VXLAN with defaults.
    DefaultBackend,
    /// `Backend.MTU` is set: said once per config, since trellis before 2026-12-05 gave it to
    /// pods as is, and flannel's meaning (the underlay's) gives pods less.
    UnderlayMtu {
        mtu: u32,
        backend: BackendType,
        pods: u32,
    },
    /// A CIDR with host bits set (`10.244.1.0/16`); its network address is used.
    HostBitsMasked {
        key: String,
        given: String,
        used: String,
    },
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigWarning::UnknownKey { key } => {
                write!(f, "net-conf.json: unknown key {key:?} ignored (typo?)")
            }
            ConfigWarning::IgnoredForBackend { key, backend } => write!(
                f,
                "net-conf.json: {key} has no effect with backend {backend}, ignored"
            ),
            ConfigWarning::UnusedInKubeMode { key } => write!(
                f,
                "net-conf.json: {key} is ignored: node subnets come from each Node's spec.podCIDRs \
                 (kube-controller-manager --allocate-node-cidrs)"
            ),
            ConfigWarning::UnusedAndInvalid { key, why } => write!(
                f,
                "net-conf.json: {key} is ignored ({why}; node subnets come from each Node's \
                 spec.podCIDRs, and flannel ignores it as well)"
            ),
            ConfigWarning::UnderlayMtu { mtu, backend, pods } => write!(
                f,
                "net-conf.json: Backend.MTU {mtu} is the underlay's MTU, as in flannel: \
                 {backend} devices take their encapsulation off it and pods get {pods}"
            ),
            ConfigWarning::DefaultBackend => write!(
                f,
                "net-conf.json: no Backend given, using vxlan with default options"
            ),
            ConfigWarning::HostBitsMasked { key, given, used } => write!(
                f,
                "net-conf.json: {key} {given} has host bits set, using {used}"
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("net-conf.json is {len} bytes, more than the {max} accepted")]
    TooLarge { len: usize, max: usize },
    #[error("net-conf.json is not valid JSON: {0}")]
    NotJson(String),
    #[error("net-conf.json must be a JSON object, found {0}")]
    NotAnObject(&'static str),
    #[error("net-conf.json: {key} is required{why}")]
    Missing { key: String, why: String },
    #[error("net-conf.json: {key}: {reason}")]
    Invalid { key: String, reason: String },
    #[error("net-conf.json: keys {first:?} and {second:?} differ only in case; keep one")]
    AmbiguousKey { first: String, second: String },
    #[error("net-conf.json: Backend.Type: {0}")]
    UnsupportedBackend(UnknownBackendType),
}

impl ConfigError {
    fn invalid(key: &str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.to_string(),
            reason: reason.into(),
        }
    }
}

/// An object's entries, looked up case-insensitively; remembers what was looked up so the
/// rest can be reported as unknown.
struct Fields<'a> {
    path: &'static str,
    by_lower: BTreeMap<String, (&'a str, &'a Value)>,
}

impl<'a> Fields<'a> {
    fn new(
        path: &'static str,
        map: &'a serde_json::Map<String, Value>,
    ) -> Result<Self, ConfigError> {
        let mut by_lower: BTreeMap<String, (&str, &Value)> = BTreeMap::new();
        for (k, v) in map {
            if let Some((first, _)) = by_lower.insert(k.to_ascii_lowercase(), (k.as_str(), v)) {
                return Err(ConfigError::AmbiguousKey {
                    first: format!("{path}{first}"),
                    second: format!("{path}{k}"),
                });
            }
        }
        Ok(Fields { path, by_lower })
    }

    /// The value of a key, `None` when absent or `null` (Go leaves the zero value then).
    fn take(&mut self, name: &str) -> Option<(String, &'a Value)> {
        let (_, v) = self.by_lower.remove(&name.to_ascii_lowercase())?;
        if v.is_null() {
            None
        } else {
            Some((format!("{}{name}", self.path), v))
        }
    }

    fn unknown(self, warnings: &mut Vec<ConfigWarning>) {
        for (_, (k, _)) in self.by_lower {
            warnings.push(ConfigWarning::UnknownKey {
                key: format!("{}{k}", self.path),
            });
        }
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn as_bool(key: &str, v: &Value) -> Result<bool, ConfigError> {
    v.as_bool().ok_or_else(|| {
        ConfigError::invalid(
            key,
            format!("expected true or false, found {}", json_kind(v)),
        )
    })
}

fn as_uint(key: &str, v: &Value, min: u64, max: u64) -> Result<u64, ConfigError> {
    let n = v.as_u64().ok_or_else(|| {
        let what = match v {
            Value::Number(n) => format!("{n}"),
            other => json_kind(other).to_string(),
        };
        ConfigError::invalid(key, format!("expected a whole number, found {what}"))
    })?;
    if !(min..=max).contains(&n) {
        return Err(ConfigError::invalid(
            key,
            format!("{n} is outside {min}..={max}"),
        ));
    }
    Ok(n)
}

fn as_str<'v>(key: &str, v: &'v Value) -> Result<&'v str, ConfigError> {
    v.as_str().ok_or_else(|| {
        ConfigError::invalid(key, format!("expected a string, found {}", json_kind(v)))
    })
}

/// Parse `addr/prefix` the way Go's `net.ParseCIDR` does: decimal prefix only (no netmask
/// form, no sign), no surrounding whitespace.
pub fn parse_cidr(s: &str) -> Result<IpNetwork, String> {
    let (addr, prefix) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not a CIDR (expected address/prefix)"))?;
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{s:?} is not a CIDR: {addr:?} is not an IP address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{s:?} is not a CIDR: bad prefix length {prefix:?}"));
    }
    let len: u8 = prefix
        .parse()
        .map_err(|_| format!("{s:?} is not a CIDR: bad prefix length {prefix:?}"))?;
    if len > max {
        return Err(format!(
            "{s:?} is not a CIDR: prefix length {len} is longer than {max}"
        ));
    }
    IpNetwork::new(addr, len).map_err(|e| format!("{s:?} is not a CIDR: {e}"))
}

fn parse(text: &str) -> Result<ParsedConfig, ConfigError> {
    if text.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge {
            len: text.len(),
            max: MAX_CONFIG_BYTES,
        });
    }
    let root: Value =
        serde_json::from_str(text).map_err(|e| ConfigError::NotJson(e.to_string()))?;
    let obj = match &root {
        Value::Object(o) => o,
        other => return Err(ConfigError::NotAnObject(json_kind(other))),
    };
    let mut warnings = Vec::new();
    let mut f = Fields::new("", obj)?;

    let enable_ipv4 = match f.take("EnableIPv4") {
        Some((k, v)) => as_bool(&k, v)?,
        None => true,
    };
    let enable_ipv6 = match f.take("EnableIPv6") {
        Some((k, v)) => as_bool(&k, v)?,
        None => false,
    };
    let enable_nftables = match f.take("EnableNFTables") {
        Some((k, v)) => as_bool(&k, v)?,
        None => false,
    };
    if !enable_ipv4 && !enable_ipv6 {
        return Err(ConfigError::invalid(
            "EnableIPv4",
            "false together with EnableIPv6 false leaves no address family; enable at least one",
        ));
    }

    let network = match f.take("Network") {
        Some((k, v)) => Some(network_v4(&k, v, &mut warnings)?),
        None => None,
    };
    let ipv6_network = match f.take("IPv6Network") {
        Some((k, v)) => Some(network_v6(&k, v, &mut warnings)?),
        None => None,
    };
    if enable_ipv4 && network.is_none() {
        return Err(ConfigError::Missing {
            key: "Network".into(),
            why: " when EnableIPv4 is true (the default), e.g. \"10.244.0.0/16\"".into(),
        });
    }
    if enable_ipv6 && ipv6_network.is_none() {
        return Err(ConfigError::Missing {
            key: "IPv6Network".into(),
            why: " when EnableIPv6 is true, e.g. \"fd00:10:244::/56\"".into(),
        });
    }

    let (v4_prefix, v6_prefix) = (
        network.map(|n| n.prefix()),
        ipv6_network.map(|n| n.prefix()),
    );
    let w = &mut warnings;
    let subnet_len = prefix_len(&mut f, "SubnetLen", 30, ("Network", v4_prefix), w)?;
    let ipv6_subnet_len = prefix_len(&mut f, "IPv6SubnetLen", 126, ("IPv6Network", v6_prefix), w)?;
    // The address options, each within its family's network when that is set.
    let (v4, v4_net) = ("an IPv4 address", network.map(|n| ("Network", n)));
    let (v6, v6_net) = ("an IPv6 address", ipv6_network.map(|n| ("IPv6Network", n)));
    let (in4, in6) = (Ipv4Network::contains, Ipv6Network::contains);
    let subnet_min = bound(&mut f, "SubnetMin", v4, v4_net, in4, w)?;
    let subnet_max = bound(&mut f, "SubnetMax", v4, v4_net, in4, w)?;
    let ipv6_subnet_min = bound(&mut f, "IPv6SubnetMin", v6, v6_net, in6, w)?;
    let ipv6_subnet_max = bound(&mut f, "IPv6SubnetMax", v6, v6_net, in6, w)?;

    let backend = match f.take("Backend") {
        Some((_, Value::Object(b))) => backend(b, &mut warnings)?,
        Some((k, other)) => {
            return Err(ConfigError::invalid(
                &k,
                format!(
                    "expected an object like {{\"Type\": \"vxlan\"}}, found {}",
                    json_kind(other)
                ),
            ))
        }
        None => {
            warnings.push(ConfigWarning::DefaultBackend);
            BackendConfig::Vxlan(VxlanConfig::default())
        }
    };
    let network_policy = match f.take("NetworkPolicy") {
        Some((k, v)) => network_policy(&k, v)?,
        None => false,
    };
    f.unknown(&mut warnings);

    if enable_ipv6 && backend.kind() == BackendType::Ipip {
        return Err(ConfigError::invalid(
            "EnableIPv6",
            "the ipip backend carries IPv4 only; use vxlan or host-gw for IPv6",
        ));
    }
    if let BackendConfig::Wireguard(c) = backend {
        let missing = match c.mode {
            WgMode::Ipv4 if !enable_ipv4 => Some("IPv4"),
            WgMode::Ipv6 if !enable_ipv6 => Some("IPv6"),
            _ => None,
        };
        if let Some(family) = missing {
            return Err(ConfigError::invalid(
                "Backend.Mode",
                format!(
                    "{:?} sends to peers over {family}, which net-conf.json does not enable",
                    c.mode.as_str()
                ),
            ));
        }
        let two_devices = c.mode == WgMode::Separate && enable_ipv4 && enable_ipv6;
        if two_devices && c.listen_port == c.listen_port_v6 {
            return Err(ConfigError::invalid(
                "Backend.ListenPortV6",
                format!(
                    "{} is also ListenPort: in separate mode flannel-wg and flannel-wg-v6 each \
                     need a port of their own",
                    c.listen_port
                ),
            ));
        }
    }
    if let Some(mtu) = backend.mtu() {
        let pods = check_underlay_mtu(mtu, backend.kind(), enable_ipv4, enable_ipv6)?;
        warnings.push(ConfigWarning::UnderlayMtu {
            mtu,
            backend: backend.kind(),
            pods,
        });
    }

    Ok(ParsedConfig {
        config: NetConfig {
            enable_ipv4,
            enable_ipv6,
            network,
            ipv6_network,
            enable_nftables,
            subnet_len,
            ipv6_subnet_len,
            subnet_min,
            subnet_max,
            ipv6_subnet_min,
            ipv6_subnet_max,
            backend,
            network_policy,
        },
        warnings,
    })
}

/// `"NetworkPolicy": {"Enabled": true}`. An object rather than a bare boolean so that later
/// options (a default deny, logging) have somewhere to go. Unlike the rest of net-conf.json,
/// a key it does not know is refused, not warned about: a typo in a security switch
/// (`"Enable": true`) must not leave a cluster silently unprotected.
fn network_policy(key: &str, v: &Value) -> Result<bool, ConfigError> {
    let Value::Object(obj) = v else {
        return Err(ConfigError::invalid(
            key,
            format!(
                "expected an object like {{\"Enabled\": true}}, found {}",
                json_kind(v)
            ),
        ));
    };
    let mut f = Fields::new("NetworkPolicy.", obj)?;
    let enabled = match f.take("Enabled") {
        Some((k, v)) => as_bool(&k, v)?,
        None => false,
    };
    let mut unknown = Vec::new();
    f.unknown(&mut unknown);
    if let Some(ConfigWarning::UnknownKey { key }) = unknown.into_iter().next() {
        return Err(ConfigError::invalid(
            &key,
            "unknown key (the only one is NetworkPolicy.Enabled)",
        ));
    }
    Ok(enabled)
}

/// A pod network CIDR of one family: host bits masked (with a warning), at
/// least four addresses so node subnets fit.
fn network_of(
    key: &str,
    v: &Value,
    w: &mut Vec<ConfigWarning>,
    v4: bool,
) -> Result<IpNetwork, ConfigError> {
    let s = as_str(key, v)?;
    let net = parse_cidr(s).map_err(|e| ConfigError::invalid(key, e))?;
    if net.is_ipv4() != v4 {
        let (is, other) = if v4 {
            ("IPv6", "IPv6Network")
        } else {
            ("IPv4", "Network")
        };
        return Err(ConfigError::invalid(
            key,
            format!("{s:?} is {is}; put it in {other}"),
        ));
    }
    let max = if v4 { 30 } else { 126 };
    if net.prefix() > max {
        return Err(ConfigError::invalid(
            key,
            format!("{s:?} is too small to hold node subnets (at most /{max})"),
        ));
    }
    let norm = IpNetwork::new(net.network(), net.prefix())
        .map_err(|e| ConfigError::invalid(key, e.to_string()))?;
    if norm != net {
        w.push(ConfigWarning::HostBitsMasked {
            key: key.to_string(),
            given: s.to_string(),
            used: norm.to_string(),
        });
    }
    Ok(norm)
}

fn network_v4(
    key: &str,
    v: &Value,
    w: &mut Vec<ConfigWarning>,
) -> Result<Ipv4Network, ConfigError> {
    match network_of(key, v, w, true)? {
        IpNetwork::V4(n) => Ok(n),
        IpNetwork::V6(_) => Err(ConfigError::invalid(key, "not IPv4")),
    }
}

fn network_v6(
    key: &str,
    v: &Value,
    w: &mut Vec<ConfigWarning>,
) -> Result<Ipv6Network, ConfigError> {
    match network_of(key, v, w, false)? {
        IpNetwork::V6(n) => Ok(n),
        IpNetwork::V4(_) => Err(ConfigError::invalid(key, "not IPv6")),
    }
}

/// A subnet length option (`SubnetLen`, `IPv6SubnetLen`): at most `max`, and not shorter than
/// the family's network (`network`: its key, for the message, and its prefix length, if set).
/// 0 is Go's zero value: "not set". Unused with the Kubernetes subnet manager, so a value
/// outside those bounds is only a warning, as a valid one is.
fn prefix_len(
    f: &mut Fields<'_>,
    name: &str,
    max: u64,
    network: (&str, Option<u8>),
    w: &mut Vec<ConfigWarning>,
) -> Result<Option<u8>, ConfigError> {
    let Some((k, v)) = f.take(name) else {
        return Ok(None);
    };
    let (network_key, prefix) = network;
    let min = prefix.map_or(0, u64::from);
    // Go decodes it into a uint: anything but a whole number >= 0 is refused there too.
    let n = as_uint(&k, v, 0, u64::MAX)?;
    let why = if n > max {
        format!("/{n} is longer than /{max}")
    } else if n != 0 && n < min {
        format!("/{n} is shorter than the {network_key}'s /{min}")
    } else {
        w.push(ConfigWarning::UnusedInKubeMode { key: k });
        return Ok((n != 0).then_some(n as u8));
    };
    w.push(ConfigWarning::UnusedAndInvalid { key: k, why });
    Ok(None)
}

/// An address option (`SubnetMin`, ...): `what` it must be, and within the family's network
/// (`network_key`, the network) when there is one. Unused with the Kubernetes subnet manager:
/// an address that is not one is refused (as flannel's decoder does), one outside the network
/// is only a warning.
fn bound<A, N>(
    f: &mut Fields<'_>,
    name: &str,
    what: &str,
    network: Option<(&str, N)>,
    contains: fn(&N, A) -> bool,
    w: &mut Vec<ConfigWarning>,
) -> Result<Option<A>, ConfigError>
where
    A: FromStr + Copy + fmt::Display,
    N: Copy + fmt::Display,
{
    let Some((k, v)) = f.take(name) else {
        return Ok(None);
    };
    let s = as_str(&k, v)?;
    let ip: A = s
        .parse()
        .map_err(|_| ConfigError::invalid(&k, format!("{s:?} is not {what}")))?;
    if let Some((network_key, n)) = network {
        if !contains(&n, ip) {
            let why = format!("{ip} is outside {network_key} {n}");
            w.push(ConfigWarning::UnusedAndInvalid { key: k, why });
            return Ok(None);
        }
    }
    w.push(ConfigWarning::UnusedInKubeMode { key: k });
    Ok(Some(ip))
}

fn mtu_option(f: &mut Fields<'_>) -> Result<Option<u32>, ConfigError> {
    match f.take("MTU") {
        // 0 is Go's zero value: "not set".
        Some((k, v)) => match as_uint(&k, v, 0, 65535)? {
            0 => Ok(None),
            n => Ok(Some(n as u32)),
        },
        None => Ok(None),
    }
}

/// `Backend.MTU` is the underlay's MTU (flannel's meaning): what is left for each device the
/// backend makes, once its encapsulation is taken off, must still be a valid MTU for the
/// family the device carries. Returns what pods get: the smallest of those.
fn check_underlay_mtu(
    mtu: u32,
    backend: BackendType,
    v4: bool,
    v6: bool,
) -> Result<u32, ConfigError> {
    let mut pods = mtu;
    let families = [(v4, Family::V4), (v6, Family::V6)];
    for family in families.into_iter().filter(|f| f.0).map(|f| f.1) {
        let overhead = backend.overhead(family);
        let min = backend.min_underlay_mtu(family);
        if mtu < min {
            return Err(ConfigError::invalid(
                "Backend.MTU",
                format!(
                    "{mtu} is the underlay's MTU (flannel's meaning); {backend} takes {overhead} \
                     bytes of it, leaving {} for {family} pods, below the minimum {}: give at \
                     least {min}",
                    mtu.saturating_sub(overhead),
                    family.min_mtu()
                ),
            ));
        }
        pods = pods.min(mtu - overhead);
    }
    Ok(pods)
}

/// Options valid for one backend type but given with another.
fn ignore_for(
    f: &mut Fields<'_>,
    names: &[&str],
    backend: BackendType,
    w: &mut Vec<ConfigWarning>,
) {
    for name in names {
        if let Some((key, _)) = f.take(name) {
            w.push(ConfigWarning::IgnoredForBackend { key, backend });
        }
    }
}

/// The `wireguard` backend's keys, with flannel's defaults.
fn wireguard(f: &mut Fields<'_>) -> Result<WireguardConfig, ConfigError> {
    let mut c = WireguardConfig::default();
    // Port 0 would let the kernel pick one, but peers are told the configured port.
    if let Some((k, v)) = f.take("ListenPort") {
        c.listen_port = as_uint(&k, v, 1, 65535)? as u16;
    }
    if let Some((k, v)) = f.take("ListenPortV6") {
        c.listen_port_v6 = as_uint(&k, v, 1, 65535)? as u16;
    }
    if let Some((k, v)) = f.take("PSK") {
        // Never quote the value: it is a secret.
        let psk = WgSecret::parse(as_str(&k, v)?).map_err(|_| {
            ConfigError::invalid(
                &k,
                "not a WireGuard key: 32 bytes in base64, 44 characters (make one with wg genpsk)",
            )
        })?;
        // The all-zero key is the kernel's "no preshared key" (and flannel's): keep it so.
        c.psk = (!psk.is_zero()).then_some(psk);
    }
    if let Some((k, v)) = f.take("PersistentKeepaliveInterval") {
        c.keepalive = as_uint(&k, v, 0, 65535)? as u16;
    }
    if let Some((k, v)) = f.take("Mode") {
        c.mode = match as_str(&k, v)? {
            "separate" => WgMode::Separate,
            "auto" => WgMode::Auto,
            "ipv4" => WgMode::Ipv4,
            "ipv6" => WgMode::Ipv6,
            other => {
                return Err(ConfigError::invalid(
                    &k,
                    format!("{other:?} is not one of \"separate\", \"auto\", \"ipv4\", \"ipv6\""),
                ))
            }
        };
    }
    c.mtu = mtu_option(f)?;
    Ok(c)
}

fn backend(
    obj: &serde_json::Map<String, Value>,
    w: &mut Vec<ConfigWarning>,
) -> Result<BackendConfig, ConfigError> {
    let mut f = Fields::new("Backend.", obj)?;
    let kind = match f.take("Type") {
        // flannel lowercases the type before looking its backend up: "VXLAN" is vxlan.
        Some((k, v)) => BackendType::from_str(&as_str(&k, v)?.to_lowercase())
            .map_err(ConfigError::UnsupportedBackend)?,
        None => {
            return Err(ConfigError::Missing {
                key: "Backend.Type".into(),
                why: ": one of \"vxlan\", \"host-gw\", \"ipip\", \"wireguard\"".into(),
            })
        }
    };
    let config = match kind {
        BackendType::Vxlan => {
            let mut c = VxlanConfig::default();
            if let Some((k, v)) = f.take("VNI") {
                // 0 is a VNI like any other to the kernel and to flannel (`flannel.0`).
                c.vni = as_uint(&k, v, 0, u64::from(MAX_VNI))? as u32;
            }
            if let Some((k, v)) = f.take("Port") {
                // 0 lets the kernel choose, and the kernel chooses 8472.
                c.port = match as_uint(&k, v, 0, 65535)? {
                    0 => DEFAULT_VXLAN_PORT,
                    p => p as u16,
                };
            }
            if let Some((k, v)) = f.take("GBP") {
                c.gbp = as_bool(&k, v)?;
            }
            if let Some((k, v)) = f.take("Learning") {
                c.learning = as_bool(&k, v)?;
            }
            if let Some((k, v)) = f.take("DirectRouting") {
                c.direct_routing = as_bool(&k, v)?;
            }
            c.mtu = mtu_option(&mut f)?;
            BackendConfig::Vxlan(c)
        }
        BackendType::HostGw => {
            ignore_for(
                &mut f,
                &["VNI", "Port", "GBP", "Learning", "DirectRouting"],
                kind,
                w,
            );
            BackendConfig::HostGw(HostGwConfig {
                mtu: mtu_option(&mut f)?,
            })
        }
        BackendType::Ipip => {
            ignore_for(&mut f, &["VNI", "Port", "GBP", "Learning"], kind, w);
            let mut c = IpipConfig::default();
            if let Some((k, v)) = f.take("DirectRouting") {
                c.direct_routing = as_bool(&k, v)?;
            }
            c.mtu = mtu_option(&mut f)?;
            BackendConfig::Ipip(c)
        }
        BackendType::Wireguard => {
            ignore_for(
                &mut f,
                &["VNI", "Port", "GBP", "Learning", "DirectRouting"],
                kind,
                w,
            );
            BackendConfig::Wireguard(wireguard(&mut f)?)
        }
    };
    f.unknown(w);
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> ParsedConfig {
        match NetConfig::parse(text) {
            Ok(p) => p,
            Err(e) => panic!("{text}: {e}"),
        }
    }

    #[test]
    fn network_policy_is_off_unless_enabled() {
        let net = r#""Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}"#;
        assert!(!ok(&format!("{{{net}}}")).config.network_policy);
        let on = ok(&format!(
            r#"{{{net}, "NetworkPolicy": {{"Enabled": true}}}}"#
        ));
        assert!(on.config.network_policy);
        assert!(on.warnings.is_empty(), "{:?}", on.warnings);
        // Keys are matched whatever their case, as every key of net-conf.json.
        let lower = ok(&format!(
            r#"{{{net}, "NetworkPolicy": {{"enabled": true}}}}"#
        ));
        assert!(lower.config.network_policy);
        // A typo in a security switch is refused, not warned about.
        let typo = NetConfig::parse(&format!(
            r#"{{{net}, "NetworkPolicy": {{"Enable": true}}}}"#
        ))
        .unwrap_err()
        .to_string();
        assert!(typo.contains("NetworkPolicy.Enable"), "{typo}");
        for bad in [
            r#""NetworkPolicy": true"#,
            r#""NetworkPolicy": {"Enabled": "yes"}"#,
        ] {
            let e = NetConfig::parse(&format!("{{{net}, {bad}}}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("NetworkPolicy"), "{bad}: {e}");
        }
    }

    #[test]
    fn backend_type_is_matched_whatever_its_case_as_flannel_lowercases_it() {
        for (ty, want) in [
            ("VXLAN", BackendType::Vxlan),
            ("Host-GW", BackendType::HostGw),
            ("IPIP", BackendType::Ipip),
        ] {
            let text = format!(r#"{{"Network": "10.244.0.0/16", "Backend": {{"Type": "{ty}"}}}}"#);
            assert_eq!(ok(&text).config.backend.kind(), want, "{ty}");
        }
        let err = NetConfig::parse(r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "UDP"}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains(r#""udp""#), "{err}");
    }

    /// flannel's kube mode decodes these keys but never checks them (CheckNetworkConfig runs
    /// only with its etcd subnet manager): a ConfigMap flannel runs with is never refused.
    #[test]
    fn subnet_options_flannel_ignores_are_warnings_when_out_of_range() {
        let net = r#""Network": "10.244.0.0/16""#;
        for (extra, key, why) in [
            (
                r#""SubnetLen": 8"#,
                "SubnetLen",
                "/8 is shorter than the Network's /16",
            ),
            (r#""SubnetLen": 31"#, "SubnetLen", "/31 is longer than /30"),
            (
                r#""SubnetMin": "10.0.0.1""#,
                "SubnetMin",
                "10.0.0.1 is outside Network 10.244.0.0/16",
            ),
            (
                r#""SubnetMax": "192.0.2.0""#,
                "SubnetMax",
                "192.0.2.0 is outside Network",
            ),
        ] {
            let parsed = ok(&format!("{{{net}, {extra}}}"));
            let said: Vec<String> = parsed.warnings.iter().map(|w| w.to_string()).collect();
            assert!(
                said.iter()
                    .any(|s| s.contains(&format!("{key} is ignored ({why}"))),
                "{extra}: {said:?}"
            );
            let c = parsed.config;
            assert_eq!(
                (c.subnet_len, c.subnet_min, c.subnet_max),
                (None, None, None),
                "{extra}"
            );
        }
    }

    #[test]
    fn vni_zero_is_a_vni_as_in_flannel_and_the_kernel() {
        let text = r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 0}}"#;
        match ok(text).config.backend {
            BackendConfig::Vxlan(v) => assert_eq!(v.vni, 0),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn backend_mtu_down_to_the_smallest_underlay_that_leaves_room_for_pods() {
        let net = r#""Network": "10.244.0.0/16""#;
        let dual = r#""EnableIPv6": true, "IPv6Network": "fd00::/48""#;
        for (text, mtu) in [
            (
                format!(r#"{{{net}, "Backend": {{"Type": "vxlan", "MTU": 118}}}}"#),
                118,
            ),
            (
                format!(r#"{{{net}, "Backend": {{"Type": "ipip", "MTU": 88}}}}"#),
                88,
            ),
            (
                format!(r#"{{{net}, "Backend": {{"Type": "host-gw", "MTU": 68}}}}"#),
                68,
            ),
            (
                format!(r#"{{{net}, {dual}, "Backend": {{"Type": "vxlan", "MTU": 1350}}}}"#),
                1350,
            ),
            (
                format!(r#"{{{net}, {dual}, "Backend": {{"Type": "host-gw", "MTU": 1280}}}}"#),
                1280,
            ),
        ] {
            assert_eq!(ok(&text).config.backend.mtu(), Some(mtu), "{text}");
        }
        // Said, with what pods get, since the meaning changed from "the pods' MTU".
        let dual = format!(r#"{{{net}, {dual}, "Backend": {{"Type": "vxlan", "MTU": 1500}}}}"#);
        assert!(ok(&dual).warnings.contains(&ConfigWarning::UnderlayMtu {
            mtu: 1500,
            backend: BackendType::Vxlan,
            pods: 1430
        }));
    }

    #[test]
    fn flannel_default_manifest_config() {
        let p = ok(
            r#"{"Network": "10.244.0.0/16", "EnableNFTables": false, "Backend": {"Type": "vxlan"}}"#,
        );
        let c = p.config;
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        assert!(c.enable_ipv4 && !c.enable_ipv6 && !c.enable_nftables);
        assert_eq!(c.ipv4(), Some("10.244.0.0/16".parse().unwrap()));
        assert_eq!(c.ipv6(), None);
        assert_eq!(c.backend, BackendConfig::Vxlan(VxlanConfig::default()));
        assert_eq!(
            VxlanConfig::default(),
            VxlanConfig {
                vni: 1,
                port: 8472,
                gbp: false,
                learning: false,
                direct_routing: false,
                mtu: None
            }
        );
    }

    #[test]
    fn every_option_is_read() {
        let c = ok(r#"{
            "Network": "10.1.0.0/16", "IPv6Network": "fd00:1::/56", "EnableIPv6": true,
            "EnableNFTables": true, "SubnetLen": 24, "IPv6SubnetLen": 64,
            "SubnetMin": "10.1.1.0", "SubnetMax": "10.1.200.0",
            "IPv6SubnetMin": "fd00:1:0:1::", "IPv6SubnetMax": "fd00:1:0:ff::",
            "Backend": {"Type": "vxlan", "VNI": 4096, "Port": 4789, "GBP": true,
                        "Learning": true, "DirectRouting": true, "MTU": 1400}}"#)
        .config;
        assert!(c.enable_ipv4 && c.enable_ipv6 && c.enable_nftables);
        assert_eq!(c.ipv6(), Some("fd00:1::/56".parse().unwrap()));
        assert_eq!(c.subnet_len, Some(24));
        assert_eq!(c.ipv6_subnet_len, Some(64));
        assert_eq!(c.subnet_min, Some("10.1.1.0".parse().unwrap()));
        assert_eq!(c.subnet_max, Some("10.1.200.0".parse().unwrap()));
        assert_eq!(c.ipv6_subnet_min, Some("fd00:1:0:1::".parse().unwrap()));
        assert_eq!(c.ipv6_subnet_max, Some("fd00:1:0:ff::".parse().unwrap()));
        assert_eq!(
            c.backend,
            BackendConfig::Vxlan(VxlanConfig {
                vni: 4096,
                port: 4789,
                gbp: true,
                learning: true,
                direct_routing: true,
                mtu: Some(1400)
            })
        );
        assert!(c.backend.direct_routing());
        assert_eq!(c.backend.mtu(), Some(1400));
    }

    #[test]
    fn keys_are_case_insensitive_like_go() {
        let a = ok(
            r#"{"network": "10.244.0.0/16", "BACKEND": {"type": "vxlan", "vni": 7, "directrouting": true}}"#,
        );
        let b = ok(
            r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 7, "DirectRouting": true}}"#,
        );
        assert_eq!(a.config, b.config);
        assert!(a.warnings.is_empty());
    }

    #[test]
    fn wireguard_takes_flannels_keys_and_defaults() {
        let net = r#""Network": "10.244.0.0/16""#;
        let c = ok(&format!(r#"{{{net}, "Backend": {{"Type": "wireguard"}}}}"#)).config;
        assert_eq!(
            c.backend,
            BackendConfig::Wireguard(WireguardConfig::default())
        );
        assert_eq!(
            (DEFAULT_WG_PORT, DEFAULT_WG_PORT_V6),
            (51820, 51821),
            "flannel's"
        );
        let psk = "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=";
        let c = ok(&format!(
            r#"{{{net}, "Backend": {{"Type": "WireGuard", "ListenPort": 4000,
                "ListenPortV6": 4001, "PSK": "{psk}", "PersistentKeepaliveInterval": 25,
                "Mode": "auto", "MTU": 1400, "VNI": 3}}}}"#
        ));
        assert_eq!(
            c.config.backend,
            BackendConfig::Wireguard(WireguardConfig {
                listen_port: 4000,
                listen_port_v6: 4001,
                psk: Some(WgSecret::parse(psk).unwrap()),
                keepalive: 25,
                mode: WgMode::Auto,
                mtu: Some(1400),
            })
        );
        assert!(c.warnings.contains(&ConfigWarning::IgnoredForBackend {
            key: "Backend.VNI".into(),
            backend: BackendType::Wireguard
        }));
        assert_eq!(BackendType::Wireguard.overhead(Family::V6), 80);
    }

    #[test]
    fn wireguard_mistakes_are_refused_without_quoting_the_psk() {
        let net = r#""Network": "10.244.0.0/16""#;
        let dual = r#""Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00::/56""#;
        let secret = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0";
        for (text, want) in [
            (
                format!(r#"{{{net}, "Backend": {{"Type": "wireguard", "PSK": "{secret}"}}}}"#),
                "Backend.PSK: not a WireGuard key",
            ),
            (
                format!(r#"{{{net}, "Backend": {{"Type": "wireguard", "ListenPort": 0}}}}"#),
                "Backend.ListenPort: 0 is outside 1..=65535",
            ),
            (
                format!(r#"{{{net}, "Backend": {{"Type": "wireguard", "Mode": "Separate"}}}}"#),
                "Backend.Mode: \"Separate\" is not one of",
            ),
            (
                format!(r#"{{{dual}, "Backend": {{"Type": "wireguard", "ListenPortV6": 51820}}}}"#),
                "each need a port of their own",
            ),
            (
                format!(r#"{{{net}, "Backend": {{"Type": "wireguard", "MTU": 147}}}}"#),
                "give at least 148",
            ),
            (
                format!(r#"{{{net}, "Backend": {{"Type": "wireguard", "Mode": "ipv6"}}}}"#),
                "over IPv6, which net-conf.json does not enable",
            ),
        ] {
            let e = NetConfig::parse(&text).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
            assert!(!e.contains(secret), "{e}");
        }
        // The all-zero PSK is "none", as to the kernel.
        let zero = format!(
            r#"{{{net}, "Backend": {{"Type": "wireguard", "PSK": "{}"}}}}"#,
            "A".repeat(43) + "="
        );
        let BackendConfig::Wireguard(w) = ok(&zero).config.backend else {
            panic!("wireguard");
        };
        assert_eq!(w.psk, None);
        // One device for both families may use one port.
        ok(&format!(
            r#"{{{dual}, "Backend": {{"Type": "wireguard", "Mode": "ipv4", "ListenPortV6": 51820}}}}"#
        ));
    }

    #[test]
    fn host_gw_and_ipip() {
        let c = ok(r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}"#).config;
        assert_eq!(c.backend, BackendConfig::HostGw(HostGwConfig { mtu: None }));
        assert!(!c.backend.direct_routing());
        let c = ok(
            r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "ipip", "DirectRouting": true}}"#,
        )
        .config;
        assert_eq!(
            c.backend,
            BackendConfig::Ipip(IpipConfig {
                direct_routing: true,
                mtu: None
            })
        );
        assert_eq!(c.backend.kind(), BackendType::Ipip);
    }

    #[test]
    fn ipv6_only() {
        let c = ok(r#"{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd00::/48", "Backend": {"Type": "host-gw"}}"#).config;
        assert_eq!(c.ipv4(), None);
        assert_eq!(c.ipv6(), Some("fd00::/48".parse().unwrap()));
    }

    #[test]
    fn defaults_and_zero_values() {
        let p = ok(r#"{"Network": "10.244.0.0/16"}"#);
        assert_eq!(
            p.config.backend,
            BackendConfig::Vxlan(VxlanConfig::default())
        );
        assert_eq!(p.warnings, vec![ConfigWarning::DefaultBackend]);
        // Go's zero values and null mean "not set".
        let c = ok(r#"{"Network": "10.244.0.0/16", "EnableIPv6": null, "Backend": {"Type": "vxlan", "Port": 0, "MTU": 0, "VNI": null}}"#).config;
        assert_eq!(c.backend, BackendConfig::Vxlan(VxlanConfig::default()));
        assert!(!c.enable_ipv6);
    }

    #[test]
    fn warnings_for_unknown_ignored_and_masked() {
        let p = ok(
            r#"{"Network": "10.244.1.0/16", "Netwrok": "x", "SubnetLen": 24,
                       "Backend": {"Type": "host-gw", "VNI": 3, "Colour": "blue"}}"#,
        );
        assert_eq!(p.config.network, Some("10.244.0.0/16".parse().unwrap()));
        let w = &p.warnings;
        assert!(
            w.contains(&ConfigWarning::UnknownKey {
                key: "Netwrok".into()
            }),
            "{w:?}"
        );
        assert!(
            w.contains(&ConfigWarning::UnknownKey {
                key: "Backend.Colour".into()
            }),
            "{w:?}"
        );
        assert!(w.contains(&ConfigWarning::IgnoredForBackend {
            key: "Backend.VNI".into(),
            backend: BackendType::HostGw
        }));
        assert!(w.contains(&ConfigWarning::UnusedInKubeMode {
            key: "SubnetLen".into()
        }));
        assert!(w.contains(&ConfigWarning::HostBitsMasked {
            key: "Network".into(),
            given: "10.244.1.0/16".into(),
            used: "10.244.0.0/16".into()
        }));
        assert_eq!(w.len(), 5, "{w:?}");
        for warning in w {
            assert!(warning.to_string().starts_with("net-conf.json: "));
        }
    }

    #[test]
    fn configs_compare_to_detect_a_switch() {
        let vx = ok(r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}"#).config;
        let vx_again =
            ok(r#"{"Backend": {"type": "vxlan", "VNI": 1}, "Network": "10.244.0.0/16"}"#).config;
        let vx2 =
            ok(r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 2}}"#).config;
        let hg = ok(r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}"#).config;
        assert_eq!(vx, vx_again);
        assert_ne!(vx, vx2);
        assert_ne!(vx.backend, hg.backend);
        assert_eq!(vx.network, hg.network);
    }

    /// Each bad input must be rejected with an error that names the offending key.
    #[test]
    fn bad_inputs_are_rejected_naming_the_key() {
        let net = r#""Network": "10.244.0.0/16""#;
        let cases: Vec<(String, &str)> = vec![
            ("".into(), "not valid JSON"),
            ("{".into(), "not valid JSON"),
            ("[]".into(), "must be a JSON object"),
            ("\"x\"".into(), "must be a JSON object"),
            ("{}".into(), "Network is required"),
            (r#"{"Network": 10}"#.into(), "Network: expected a string"),
            (
                r#"{"Network": "10.244.0.0"}"#.into(),
                "Network: \"10.244.0.0\" is not a CIDR",
            ),
            (r#"{"Network": "10.244.0.0/33"}"#.into(), "Network:"),
            (
                r#"{"Network": "10.244.0.0/255.255.0.0"}"#.into(),
                "Network:",
            ),
            (r#"{"Network": "banana/16"}"#.into(), "Network:"),
            (r#"{"Network": " 10.244.0.0/16"}"#.into(), "Network:"),
            (
                r#"{"Network": "fd00::/48"}"#.into(),
                "Network: \"fd00::/48\" is IPv6",
            ),
            (r#"{"Network": "10.244.0.0/31"}"#.into(), "Network:"),
            (
                format!(r#"{{{net}, "EnableIPv6": true}}"#),
                "IPv6Network is required",
            ),
            (
                format!(r#"{{{net}, "EnableIPv6": true, "IPv6Network": "10.0.0.0/8"}}"#),
                "IPv6Network:",
            ),
            (
                format!(r#"{{{net}, "EnableIPv4": "yes"}}"#),
                "EnableIPv4: expected true or false",
            ),
            (format!(r#"{{{net}, "EnableIPv4": false}}"#), "EnableIPv4:"),
            (
                format!(r#"{{{net}, "EnableNFTables": 1}}"#),
                "EnableNFTables:",
            ),
            (format!(r#"{{{net}, "SubnetLen": -1}}"#), "SubnetLen:"),
            (format!(r#"{{{net}, "SubnetLen": 1.5}}"#), "SubnetLen:"),
            (format!(r#"{{{net}, "SubnetMax": "nope"}}"#), "SubnetMax:"),
            (
                format!(r#"{{{net}, "Backend": "vxlan"}}"#),
                "Backend: expected an object",
            ),
            (
                format!(r#"{{{net}, "Backend": {{}}}}"#),
                "Backend.Type is required",
            ),
            (
                format!(r#"{{{net}, "Backend": {{"Type": "udp"}}}}"#),
                "Backend.Type: unsupported backend type \"udp\"",
            ),
            (
                format!(r#"{{{net}, "Backend": {{"Type": "ipsec"}}}}"#),
                "Backend.Type:",
            ),
            (
                format!(r#"{{{net}, "Backend": {{"Type": 1}}}}"#),
                "Backend.Type: expected a string",
            ),
            (
                format!(r#"{{{net}, "Backend": {{"Type": "vxlan", "VNI": 16777216}}}}"#),
                "Backend.VNI:",
            ),
            (
                format!(r#"{{{net}, "Backend": {{"Type": "vxlan", "VNI": 1.5}}}}"#),
                "Backend.VNI: expected a whole number, found 1.5",
            ),
            (
                format!(r#"{{{net}, "Backend": {{"Type": "vxlan", "VNI": "1"}}}}"#),
                "Backend.VNI:",
            ),
            (
                format!(r#"{{{net}, "Backend": {{"Type": "vxlan", "Port": 65536}}}}"#),
                "Backend.Port:",
            ),
            (
                format!(r#"{{{net}, "Backend": {{"Type": "vxlan", "Port": -4789}}}}"#),
                "Backend.Port:",
            ),
            (
                format!(r#"{{{net}, "Backend": {{"Type": "vxlan", "GBP": "true"}}}}"#),
                "Backend.GBP:",
            ),
            (
                format!(r#"{{{net}, "Backend": {{"Type": "vxlan", "Learning": 0}}}}"#),
                "Backend.Learning:",
            ),
            (
                format!(r#"{{{net}, "Backend": {{"Type": "ipip", "DirectRouting": "on"}}}}"#),
                "Backend.DirectRouting:",
            ),
            (
                format!(r#"{{{net}, "Backend": {{"Type": "vxlan", "MTU": 40}}}}"#),
                "Backend.MTU:",
            ),
            (
                // The underlay's MTU: 117 - 50 leaves 67 for IPv4 pods, one below 68.
                format!(r#"{{{net}, "Backend": {{"Type": "vxlan", "MTU": 117}}}}"#),
                "vxlan takes 50 bytes of it, leaving 67 for IPv4 pods, below the minimum 68: give at least 118",
            ),
            (
                format!(r#"{{{net}, "Backend": {{"Type": "ipip", "MTU": 87}}}}"#),
                "give at least 88",
            ),
            (
                format!(r#"{{{net}, "Backend": {{"Type": "host-gw", "MTU": 70000}}}}"#),
                "Backend.MTU:",
            ),
            (
                format!(
                    r#"{{{net}, "EnableIPv6": true, "IPv6Network": "fd00::/48", "Backend": {{"Type": "vxlan", "MTU": 1349}}}}"#
                ),
                "leaving 1279 for IPv6 pods, below the minimum 1280: give at least 1350",
            ),
            (
                format!(
                    r#"{{{net}, "EnableIPv6": true, "IPv6Network": "fd00::/48", "Backend": {{"Type": "ipip"}}}}"#
                ),
                "EnableIPv6:",
            ),
            (
                r#"{"Network": "10.244.0.0/16", "network": "10.245.0.0/16"}"#.into(),
                "differ only in case",
            ),
            (
                format!(r#"{{{net}, "Backend": {{"Type": "vxlan", "vni": 2, "VNI": 3}}}}"#),
                "differ only in case",
            ),
            (
                format!(r#"{{"Network": "{}/16"}}"#, "1".repeat(MAX_CONFIG_BYTES)),
                "bytes, more than",
            ),
        ];
        assert!(cases.len() >= 15);
        for (text, want) in &cases {
            match NetConfig::parse(text) {
                Ok(p) => panic!("accepted {text:?}: {:?}", p.config),
                Err(e) => {
                    let msg = e.to_string();
                    assert!(msg.contains(want), "{text:?}: error {msg:?} lacks {want:?}");
                }
            }
        }
    }

    #[test]
    fn cidr_parser_matches_go() {
        assert_eq!(parse_cidr("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_cidr("fd00::/64").unwrap().to_string(), "fd00::/64");
        for bad in [
            "10.0.0.0",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/8/8",
            "/8",
            "10.0.0.0/0008",
            "fd00::/129",
        ] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
    }
}

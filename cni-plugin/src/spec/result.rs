//! The success result of ADD, rendered in the shape of the requested version.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::error::{invalid_config, CniError};
use super::version::CniVersion;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    pub mtu: Option<u32>,
    /// Set for interfaces inside the pod's namespace.
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    pub address: IpNetwork,
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNetwork,
    pub gw: Option<IpAddr>,
}

impl Interface {
    /// `mtu` only from 1.1.0, the version that added it.
    fn render(&self, version: CniVersion) -> Value {
        let mut o = Map::new();
        o.insert("name".into(), json!(self.name));
        o.insert("mac".into(), json!(self.mac));
        if let Some(mtu) = self.mtu.filter(|_| version >= CniVersion::V1_1_0) {
            o.insert("mtu".into(), json!(mtu));
        }
        if let Some(s) = &self.sandbox {
            o.insert("sandbox".into(), json!(s));
        }
        Value::Object(o)
    }
}

impl IpConfig {
    /// `version` ("4"/"6") only in the versions that carry it.
    fn render(&self, version: CniVersion) -> Value {
        let mut o = Map::new();
        if version.ips_carry_family() {
            let family = if self.address.is_ipv4() { "4" } else { "6" };
            o.insert("version".into(), json!(family));
        }
        o.insert("address".into(), json!(self.address.to_string()));
        if let Some(gw) = self.gateway {
            o.insert("gateway".into(), json!(gw.to_string()));
        }
        if let Some(idx) = self.interface {
            o.insert("interface".into(), json!(idx));
        }
        Value::Object(o)
    }
}

impl Route {
    fn render(&self) -> Value {
        match self.gw {
            Some(gw) => json!({"dst": self.dst.to_string(), "gw": gw.to_string()}),
            None => json!({"dst": self.dst.to_string()}),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Option<Value>,
}

impl CniResult {
    pub fn render(&self, version: CniVersion) -> Value {
        let interfaces: Vec<Value> = self.interfaces.iter().map(|i| i.render(version)).collect();
        let ips: Vec<Value> = self.ips.iter().map(|ip| ip.render(version)).collect();
        let routes: Vec<Value> = self.routes.iter().map(Route::render).collect();
        json!({
            "cniVersion": version.as_str(),
            "interfaces": interfaces,
            "ips": ips,
            "routes": routes,
            "dns": self.dns.clone().unwrap_or_else(|| json!({})),
        })
    }

    /// Read a prevResult (any supported version) for CHECK.
    pub fn parse_prev(value: &Value) -> Result<CniResult, CniError> {
        #[derive(Deserialize)]
        struct RawIface {
            name: String,
            #[serde(default)]
            mac: String,
            mtu: Option<u32>,
            sandbox: Option<String>,
        }
        #[derive(Deserialize)]
        struct RawIp {
            address: IpNetwork,
            gateway: Option<IpAddr>,
            interface: Option<usize>,
        }
        #[derive(Deserialize)]
        struct RawRoute {
            dst: IpNetwork,
            gw: Option<IpAddr>,
        }
        #[derive(Deserialize)]
        struct Raw {
            #[serde(default)]
            interfaces: Vec<RawIface>,
            #[serde(default)]
            ips: Vec<RawIp>,
            #[serde(default)]
            routes: Vec<RawRoute>,
            dns: Option<Value>,
        }
        let raw: Raw = serde_json::from_value(value.clone())
            .map_err(|e| invalid_config(format!("prevResult is malformed: {e}")))?;
        let n = raw.interfaces.len();
        if let Some(bad) = raw
            .ips
            .iter()
            .find(|ip| ip.interface.is_some_and(|i| i >= n))
        {
            return Err(invalid_config(format!(
                "prevResult ip {} points at interface {} but there are {n}",
                bad.address,
                bad.interface.unwrap_or_default()
            )));
        }
        Ok(CniResult {
            interfaces: raw
                .interfaces
                .into_iter()
                .map(|i| Interface {
                    name: i.name,
                    mac: i.mac,
                    mtu: i.mtu,
                    sandbox: i.sandbox,
                })
                .collect(),
            ips: raw
                .ips
                .into_iter()
                .map(|i| IpConfig {
                    address: i.address,
                    gateway: i.gateway,
                    interface: i.interface,
                })
                .collect(),
            routes: raw
                .routes
                .into_iter()
                .map(|r| Route {
                    dst: r.dst,
                    gw: r.gw,
                })
                .collect(),
            dns: raw.dns,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "cni0".into(),
                    mac: "0a:58:0a:f4:01:01".into(),
                    mtu: Some(1450),
                    sandbox: None,
                },
                Interface {
                    name: "eth0".into(),
                    mac: "0a:58:0a:f4:01:02".into(),
                    mtu: Some(1450),
                    sandbox: Some("/var/run/netns/x".into()),
                },
            ],
            ips: vec![
                IpConfig {
                    address: "10.244.1.2/24".parse().unwrap(),
                    gateway: Some("10.244.1.1".parse().unwrap()),
                    interface: Some(1),
                },
                IpConfig {
                    address: "fd00::2/64".parse().unwrap(),
                    gateway: Some("fd00::1".parse().unwrap()),
                    interface: Some(1),
                },
            ],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("10.244.1.1".parse().unwrap()),
            }],
            dns: None,
        }
    }

    #[test]
    fn v1_has_no_ip_version_and_mtu_only_in_1_1() {
        let v = sample().render(CniVersion::V1_0_0);
        assert_eq!(v["cniVersion"], "1.0.0");
        assert!(v["ips"][0].get("version").is_none());
        assert!(v["interfaces"][0].get("mtu").is_none());
        let v = sample().render(CniVersion::V1_1_0);
        assert_eq!(v["interfaces"][1]["mtu"], 1450);
        assert_eq!(v["interfaces"][1]["sandbox"], "/var/run/netns/x");
    }

    #[test]
    fn pre_v1_tags_each_ip_with_its_family() {
        for ver in [CniVersion::V0_3_0, CniVersion::V0_3_1, CniVersion::V0_4_0] {
            let v = sample().render(ver);
            assert_eq!(v["cniVersion"], ver.as_str());
            assert_eq!(v["ips"][0]["version"], "4");
            assert_eq!(v["ips"][1]["version"], "6");
            assert_eq!(v["ips"][0]["interface"], 1);
        }
    }

    #[test]
    fn prev_result_round_trips_through_every_version() {
        for ver in [
            CniVersion::V0_3_1,
            CniVersion::V0_4_0,
            CniVersion::V1_0_0,
            CniVersion::V1_1_0,
        ] {
            let parsed = CniResult::parse_prev(&sample().render(ver)).unwrap();
            assert_eq!(parsed.ips, sample().ips);
            assert_eq!(parsed.routes, sample().routes);
        }
    }

    #[test]
    fn prev_result_with_dangling_interface_index_is_rejected() {
        let mut v = sample().render(CniVersion::V1_0_0);
        v["ips"][0]["interface"] = json!(7);
        assert_eq!(CniResult::parse_prev(&v).unwrap_err().code, 7);
    }
}

//! What one attachment should look like, computed from the config and
//! subnet.env before anything touches the kernel.

use std::net::IpAddr;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use crate::ipam::{Range, RangeSet};
use crate::spec::config::NetConf;
use crate::spec::error::{invalid_config, CniError};
use crate::spec::result::Route;
use crate::subnet_env::{self, SubnetEnv};

/// Used when neither the config nor subnet.env give an MTU.
pub const FALLBACK_MTU: u32 = 1500;

/// One address family's share of the node subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Family {
    pub set: RangeSet,
    /// The bridge's address: gateway plus the subnet's prefix.
    pub gateway: IpNetwork,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPlan {
    pub bridge: String,
    pub mtu: u32,
    pub families: Vec<Family>,
    pub routes: Vec<Route>,
}

impl NetworkPlan {
    pub fn resolve(conf: &NetConf, env: Option<&SubnetEnv>) -> Result<NetworkPlan, CniError> {
        let mtu = conf.mtu.or(env.map(|e| e.mtu)).unwrap_or(FALLBACK_MTU);
        let (families, routes) = match &conf.ipam {
            Some(ipam) if !ipam.ranges.is_empty() => {
                let families = ipam
                    .ranges
                    .iter()
                    .map(family_from_ranges)
                    .collect::<Result<Vec<_>, _>>()?;
                let routes = if ipam.routes.is_empty() {
                    default_routes(conf, &families, None, None)
                } else {
                    ipam.routes
                        .iter()
                        .map(|r| Route {
                            dst: r.dst,
                            gw: r.gw.or_else(|| gateway_for(&families, r.dst.is_ipv4())),
                        })
                        .collect()
                };
                (families, routes)
            }
            _ => {
                let env = env.ok_or_else(|| {
                    invalid_config(format!(
                        "no subnet: {} is missing and the config has no ipam.ranges",
                        conf.subnet_file.display()
                    ))
                })?;
                let mut families = Vec::new();
                if let Some(s) = env.subnet {
                    families.push(family_from_env(IpNetwork::V4(s)));
                }
                if let Some(s) = env.ipv6_subnet {
                    families.push(family_from_env(IpNetwork::V6(s)));
                }
                let mut routes = default_routes(conf, &families, env.network, env.ipv6_network);
                if let Some(ipam) = &conf.ipam {
                    for r in &ipam.routes {
                        routes.push(Route {
                            dst: r.dst,
                            gw: r.gw.or_else(|| gateway_for(&families, r.dst.is_ipv4())),
                        });
                    }
                }
                (families, routes)
            }
        };
        if families.is_empty() {
            return Err(invalid_config("no address family configured"));
        }
        Ok(NetworkPlan {
            bridge: conf.bridge.clone(),
            mtu,
            families,
            routes,
        })
    }
}

/// subnet.env writes the gateway as `10.244.1.1/24`.
fn family_from_env(gw: IpNetwork) -> Family {
    let subnet = IpNetwork::new(gw.network(), gw.prefix()).unwrap_or(gw);
    let gateway_ip = if gw.ip() == gw.network() {
        subnet_env::first_host(subnet).unwrap_or(gw.ip())
    } else {
        gw.ip()
    };
    Family {
        set: RangeSet {
            ranges: vec![Range::whole(subnet, Some(gateway_ip))],
        },
        gateway: IpNetwork::new(gateway_ip, gw.prefix()).unwrap_or(gw),
    }
}

fn family_from_ranges(confs: &Vec<crate::spec::config::RangeConf>) -> Result<Family, CniError> {
    let mut ranges = Vec::new();
    for rc in confs {
        let subnet = IpNetwork::new(rc.subnet.network(), rc.subnet.prefix())
            .map_err(|e| invalid_config(format!("ipam subnet {}: {e}", rc.subnet)))?;
        let gateway = rc.gateway.or_else(|| subnet_env::first_host(subnet));
        let mut r = Range::whole(subnet, gateway);
        if let Some(s) = rc.range_start {
            r.start = s;
        }
        if let Some(e) = rc.range_end {
            r.end = e;
        }
        ranges.push(r);
    }
    let first = ranges
        .first()
        .ok_or_else(|| invalid_config("ipam range set is empty"))?;
    let gw_ip = first
        .gateway
        .ok_or_else(|| invalid_config(format!("ipam subnet {} has no gateway", first.subnet)))?;
    let gateway = IpNetwork::new(gw_ip, first.subnet.prefix())
        .map_err(|e| invalid_config(format!("gateway {gw_ip}: {e}")))?;
    Ok(Family {
        set: RangeSet { ranges },
        gateway,
    })
}

fn gateway_for(families: &[Family], v4: bool) -> Option<IpAddr> {
    families
        .iter()
        .find(|f| f.gateway.is_ipv4() == v4)
        .map(|f| f.gateway.ip())
}

/// Default route through the bridge, or only the cluster network when the
/// operator wants another interface to own the default route.
fn default_routes(
    conf: &NetConf,
    families: &[Family],
    net4: Option<Ipv4Network>,
    net6: Option<Ipv6Network>,
) -> Vec<Route> {
    let mut routes = Vec::new();
    for f in families {
        let gw = Some(f.gateway.ip());
        let dst = if conf.is_default_gateway {
            if f.gateway.is_ipv4() {
                Some(IpNetwork::V4(
                    Ipv4Network::new(0.into(), 0).expect("0/0 is valid"),
                ))
            } else {
                Some(IpNetwork::V6(
                    Ipv6Network::new(0.into(), 0).expect("::/0 is valid"),
                ))
            }
        } else if f.gateway.is_ipv4() {
            net4.map(|n| IpNetwork::V4(Ipv4Network::new(n.network(), n.prefix()).unwrap_or(n)))
        } else {
            net6.map(|n| IpNetwork::V6(Ipv6Network::new(n.network(), n.prefix()).unwrap_or(n)))
        };
        if let Some(dst) = dst {
            routes.push(Route { dst, gw });
        }
    }
    routes
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn conf(extra: &str) -> NetConf {
        NetConf::parse(
            format!(r#"{{"cniVersion":"1.0.0","name":"cbr0","type":"trellis"{extra}}}"#).as_bytes(),
        )
        .unwrap()
    }

    fn env(text: &str) -> SubnetEnv {
        SubnetEnv::parse(Path::new("s"), text).unwrap()
    }

    const ENV4: &str = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

    #[test]
    fn subnet_env_gives_range_gateway_mtu_and_default_route() {
        let p = NetworkPlan::resolve(&conf(""), Some(&env(ENV4))).unwrap();
        assert_eq!(p.mtu, 1450);
        assert_eq!(p.families.len(), 1);
        assert_eq!(p.families[0].gateway.to_string(), "10.244.1.1/24");
        assert_eq!(
            p.families[0].set.ranges[0].subnet.to_string(),
            "10.244.1.0/24"
        );
        assert_eq!(
            p.routes,
            vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("10.244.1.1".parse().unwrap())
            }]
        );
    }

    #[test]
    fn not_default_gateway_routes_only_the_cluster_network() {
        let p =
            NetworkPlan::resolve(&conf(r#","isDefaultGateway":false"#), Some(&env(ENV4))).unwrap();
        assert_eq!(p.routes[0].dst.to_string(), "10.244.0.0/16");
    }

    #[test]
    fn config_mtu_wins_over_subnet_env() {
        let p = NetworkPlan::resolve(&conf(r#","mtu":1400"#), Some(&env(ENV4))).unwrap();
        assert_eq!(p.mtu, 1400);
    }

    #[test]
    fn dual_stack_adds_a_v6_family_and_route() {
        let text = format!("{ENV4}FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\n");
        let p = NetworkPlan::resolve(&conf(""), Some(&env(&text))).unwrap();
        assert_eq!(p.families.len(), 2);
        assert_eq!(p.families[1].gateway.to_string(), "fd00:10:244:1::1/64");
        assert_eq!(p.routes[1].dst.to_string(), "::/0");
    }

    #[test]
    fn ipam_ranges_override_subnet_env() {
        let c = conf(
            r#","ipam":{"ranges":[[{"subnet":"192.168.5.0/24","rangeStart":"192.168.5.10","rangeEnd":"192.168.5.20"}]],"routes":[{"dst":"10.0.0.0/8"}]}"#,
        );
        let p = NetworkPlan::resolve(&c, None).unwrap();
        assert_eq!(p.mtu, FALLBACK_MTU);
        assert_eq!(p.families[0].gateway.to_string(), "192.168.5.1/24");
        assert_eq!(
            p.families[0].set.ranges[0].start.to_string(),
            "192.168.5.10"
        );
        assert_eq!(p.routes[0].gw.unwrap().to_string(), "192.168.5.1");
    }

    #[test]
    fn no_subnet_source_is_an_error_naming_the_file() {
        let err = NetworkPlan::resolve(&conf(""), None).unwrap_err();
        assert!(err.msg.contains("/run/flannel/subnet.env"), "{}", err.msg);
    }
}

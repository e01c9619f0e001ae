//! What one attachment should look like, computed from the config and
//! subnet.env before anything touches the kernel.

use std::net::IpAddr;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use crate::ipam::{Range, RangeSet};
use crate::spec::config::NetConf;
use crate::spec::error::{invalid_config, CniError};
use crate::spec::result::Route;
use trellis_common::subnet_env::SubnetEnv;

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
                    .range_sets()?
                    .into_iter()
                    .map(family_of)
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
                let families = env_families(conf, env)?;
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

fn env_families(conf: &NetConf, env: &SubnetEnv) -> Result<Vec<Family>, CniError> {
    let file = conf.subnet_file.display();
    let v4 = env.subnet.map(|s| (IpNetwork::V4(s), "FLANNEL_SUBNET"));
    let v6 = env
        .ipv6_subnet
        .map(|s| (IpNetwork::V6(s), "FLANNEL_IPV6_SUBNET"));
    [v4, v6]
        .into_iter()
        .flatten()
        .map(|(gw, key)| family_from_env(gw, &format!("{key} in {file}")))
        .collect()
}

/// subnet.env writes the gateway as `10.244.1.1/24`; a bare network (`10.244.1.0/24`) means
/// the first host, as flannel does. The whole subnet is the range; one with no address for a
/// pod (a /31 or /32 podCIDR, IPv6 /127 or /128) is a config error naming `key`.
fn family_from_env(gw: IpNetwork, key: &str) -> Result<Family, CniError> {
    let gateway = (gw.ip() != gw.network()).then_some(gw.ip());
    let set = Range::new(gw, None, None, gateway)
        .map_err(|e| e.to_string())
        .and_then(|r| RangeSet::new(vec![r]).map_err(|e| e.to_string()))
        .map_err(|e| {
            invalid_config(format!("{key}: {e}")).with_details(
                "trellis-agent writes this file from the Node's podCIDR: give nodes larger pod CIDRs (kube-controller-manager --node-cidr-mask-size)",
            )
        })?;
    family_of(set)
}

/// The bridge carries the first range's gateway with that range's prefix.
fn family_of(set: RangeSet) -> Result<Family, CniError> {
    let first = set
        .ranges()
        .first()
        .ok_or_else(|| invalid_config("ipam range set is empty"))?;
    let gateway = IpNetwork::new(first.gateway(), first.subnet().prefix())
        .map_err(|e| invalid_config(format!("gateway {}: {e}", first.gateway())))?;
    Ok(Family { set, gateway })
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
            p.families[0].set.ranges()[0].subnet().to_string(),
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
            p.families[0].set.ranges()[0].start().to_string(),
            "192.168.5.10"
        );
        assert_eq!(p.routes[0].gw.unwrap().to_string(), "192.168.5.1");
    }

    /// What ADD would get from a config and subnet.env: each family's first free address,
    /// or the error.
    fn first_addresses(extra: &str, env_text: Option<&str>) -> Result<Vec<IpAddr>, CniError> {
        let c = NetConf::parse(
            format!(r#"{{"cniVersion":"1.0.0","name":"cbr0","type":"trellis"{extra}}}"#).as_bytes(),
        )?;
        let p = NetworkPlan::resolve(&c, env_text.map(env).as_ref())?;
        Ok(p.families
            .iter()
            .filter_map(|f| f.set.next_free(None, &std::collections::HashSet::new()))
            .collect())
    }

    enum Want {
        Addresses(&'static [&'static str]),
        /// Code 7, the msg naming this key.
        Invalid(&'static str),
    }

    #[test]
    fn every_range_source_yields_an_address_or_code_7_naming_its_key() {
        use Want::*;
        const ENV_KEY: &str = "FLANNEL_SUBNET in /run/flannel/subnet.env";
        const ENV6_KEY: &str = "FLANNEL_IPV6_SUBNET in /run/flannel/subnet.env";
        let env_cases: &[(&str, Want)] = &[
            ("FLANNEL_SUBNET=10.99.5.1/24", Addresses(&["10.99.5.2"])),
            ("FLANNEL_SUBNET=10.99.5.1/30", Addresses(&["10.99.5.2"])),
            ("FLANNEL_SUBNET=10.99.5.2/30", Addresses(&["10.99.5.1"])),
            ("FLANNEL_SUBNET=10.99.5.0/30", Addresses(&["10.99.5.2"])),
            (
                "FLANNEL_SUBNET=255.255.255.253/30",
                Addresses(&["255.255.255.254"]),
            ),
            ("FLANNEL_SUBNET=10.99.5.0/31", Invalid(ENV_KEY)),
            ("FLANNEL_SUBNET=10.99.5.1/32", Invalid(ENV_KEY)),
            ("FLANNEL_SUBNET=255.255.255.255/32", Invalid(ENV_KEY)),
            ("FLANNEL_SUBNET=0.0.0.0/32", Invalid(ENV_KEY)),
            ("FLANNEL_IPV6_SUBNET=fd00::1/126", Addresses(&["fd00::2"])),
            (
                "FLANNEL_IPV6_SUBNET=ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffd/126",
                Addresses(&["ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"]),
            ),
            ("FLANNEL_IPV6_SUBNET=fd00::/127", Invalid(ENV6_KEY)),
            ("FLANNEL_IPV6_SUBNET=fd00::1/128", Invalid(ENV6_KEY)),
            (
                "FLANNEL_IPV6_SUBNET=ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128",
                Invalid(ENV6_KEY),
            ),
            (
                "FLANNEL_SUBNET=10.99.5.1/24\nFLANNEL_IPV6_SUBNET=fd00::1/128",
                Invalid(ENV6_KEY),
            ),
        ];
        for (subnets, want) in env_cases {
            let text = format!("{subnets}\nFLANNEL_MTU=1450\n");
            check_outcome(subnets, first_addresses("", Some(&text)), want);
        }
        let r = |ranges: &str| format!(r#","ipam":{{"ranges":{ranges}}}"#);
        let conf_cases: &[(&str, Want)] = &[
            (
                r#"[[{"subnet":"10.99.0.0/30"}]]"#,
                Addresses(&["10.99.0.2"]),
            ),
            (r#"[[{"subnet":"0.0.0.0/0"}]]"#, Addresses(&["0.0.0.2"])),
            (r#"[[{"subnet":"::/0"}]]"#, Addresses(&["::2"])),
            (r#"[[{"subnet":"fd00::/126"}]]"#, Addresses(&["fd00::2"])),
            (
                r#"[[{"subnet":"10.99.0.0/24","rangeStart":"10.99.0.5","rangeEnd":"10.99.0.5"}]]"#,
                Addresses(&["10.99.0.5"]),
            ),
            (
                r#"[[{"subnet":"10.99.0.0/24","rangeStart":"10.99.0.254","rangeEnd":"10.99.0.255"}]]"#,
                Addresses(&["10.99.0.254"]),
            ),
            (
                r#"[[{"subnet":"10.99.0.0/24","rangeStart":"10.99.0.1","rangeEnd":"10.99.0.2","gateway":"10.99.0.2"}]]"#,
                Addresses(&["10.99.0.1"]),
            ),
            (
                r#"[[{"subnet":"10.99.0.0/24"}],[{"subnet":"fd00::/64","rangeStart":"fd00::ffff","rangeEnd":"fd00::ffff"}]]"#,
                Addresses(&["10.99.0.2", "fd00::ffff"]),
            ),
            (
                r#"[[{"subnet":"10.99.0.0/24","rangeStart":"10.99.0.200","rangeEnd":"10.99.0.100"}]]"#,
                Invalid("ipam.ranges[0][0].rangeStart"),
            ),
            (
                r#"[[{"subnet":"10.99.0.0/24"}],[{"subnet":"fd00::/64","rangeStart":"fd00::9","rangeEnd":"fd00::8"}]]"#,
                Invalid("ipam.ranges[1][0].rangeStart"),
            ),
            (
                r#"[[{"subnet":"10.99.0.0/24","rangeStart":"10.99.0.1","rangeEnd":"10.99.0.1"}]]"#,
                Invalid("ipam.ranges[0][0]"),
            ),
            (
                r#"[[{"subnet":"10.99.0.0/24","rangeStart":"10.99.0.0","rangeEnd":"10.99.0.1"}]]"#,
                Invalid("ipam.ranges[0][0]"),
            ),
            (
                r#"[[{"subnet":"10.99.0.0/24","rangeStart":"10.99.0.255","rangeEnd":"10.99.0.255"}]]"#,
                Invalid("ipam.ranges[0][0]"),
            ),
            (
                r#"[[{"subnet":"10.99.0.0/24","rangeStart":"10.99.0.10","rangeEnd":"10.99.0.20"},{"subnet":"10.99.0.0/24","rangeStart":"10.99.0.15","rangeEnd":"10.99.0.30"}]]"#,
                Invalid("ipam.ranges[0][1]"),
            ),
            (
                r#"[[{"subnet":"10.99.0.0/24","rangeStart":"10.99.1.1"}]]"#,
                Invalid("ipam.ranges[0][0].rangeStart"),
            ),
            (
                r#"[[{"subnet":"10.99.0.0/24","rangeEnd":"fd00::1"}]]"#,
                Invalid("ipam.ranges[0][0].rangeEnd"),
            ),
            (
                r#"[[{"subnet":"10.99.0.0/24","gateway":"10.98.0.1"}]]"#,
                Invalid("ipam.ranges[0][0].gateway"),
            ),
            (
                r#"[[{"subnet":"10.99.0.0/31"}]]"#,
                Invalid("ipam.ranges[0][0].subnet"),
            ),
            (
                r#"[[{"subnet":"10.99.0.1/32"}]]"#,
                Invalid("ipam.ranges[0][0].subnet"),
            ),
            (
                r#"[[{"subnet":"fd00::/127"}]]"#,
                Invalid("ipam.ranges[0][0].subnet"),
            ),
            (
                r#"[[{"subnet":"fd00::/128"}]]"#,
                Invalid("ipam.ranges[0][0].subnet"),
            ),
        ];
        for (ranges, want) in conf_cases {
            check_outcome(ranges, first_addresses(&r(ranges), None), want);
        }
    }

    fn check_outcome(input: &str, got: Result<Vec<IpAddr>, CniError>, want: &Want) {
        match (got, want) {
            (Ok(ips), Want::Addresses(w)) => {
                let ips: Vec<String> = ips.iter().map(IpAddr::to_string).collect();
                assert_eq!(ips, *w, "{input}");
            }
            (Err(e), Want::Invalid(key)) => {
                assert_eq!(e.code, 7, "{input}: {e}");
                assert!(e.msg.contains(key), "{input}: {:?} lacks {key:?}", e.msg);
            }
            (got, _) => panic!("{input}: got {got:?}"),
        }
    }

    #[test]
    fn no_subnet_source_is_an_error_naming_the_file() {
        let err = NetworkPlan::resolve(&conf(""), None).unwrap_err();
        assert!(err.msg.contains("/run/flannel/subnet.env"), "{}", err.msg);
    }
}

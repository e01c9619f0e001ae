//! flannel's `net-conf.json` (`NetConfig::parse`), read from the ConfigMap the operator edits.
//! An accepted config satisfies the documented invariants (an enabled family has a network,
//! networks are normalised and large enough, VNI and MTU in range, no IPv6 with IPIP), and
//! its canonical rendering parses to the same config without warnings.
#![no_main]

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};
use trellis_agent::config::{BackendConfig, ConfigWarning, NetConfig, WgMode, MAX_VNI};

fn render(c: &NetConfig) -> Value {
    let mut o = Map::new();
    o.insert("EnableIPv4".into(), json!(c.enable_ipv4));
    o.insert("EnableIPv6".into(), json!(c.enable_ipv6));
    o.insert("EnableNFTables".into(), json!(c.enable_nftables));
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            o.insert(k.into(), json!(v));
        }
    };
    put("Network", c.network.map(|n| n.to_string()));
    put("IPv6Network", c.ipv6_network.map(|n| n.to_string()));
    put("SubnetMin", c.subnet_min.map(|n| n.to_string()));
    put("SubnetMax", c.subnet_max.map(|n| n.to_string()));
    put("IPv6SubnetMin", c.ipv6_subnet_min.map(|n| n.to_string()));
    put("IPv6SubnetMax", c.ipv6_subnet_max.map(|n| n.to_string()));
    if let Some(n) = c.subnet_len {
        o.insert("SubnetLen".into(), json!(n));
    }
    if let Some(n) = c.ipv6_subnet_len {
        o.insert("IPv6SubnetLen".into(), json!(n));
    }
    let backend = match c.backend {
        BackendConfig::Vxlan(v) => json!({
            "Type": "vxlan", "VNI": v.vni, "Port": v.port, "GBP": v.gbp,
            "Learning": v.learning, "DirectRouting": v.direct_routing, "MTU": v.mtu,
        }),
        BackendConfig::HostGw(h) => json!({"Type": "host-gw", "MTU": h.mtu}),
        BackendConfig::Ipip(i) => {
            json!({"Type": "ipip", "DirectRouting": i.direct_routing, "MTU": i.mtu})
        }
        BackendConfig::Wireguard(w) => json!({
            "Type": "wireguard", "ListenPort": w.listen_port, "ListenPortV6": w.listen_port_v6,
            "PSK": w.psk.map(|k| k.to_base64()), "PersistentKeepaliveInterval": w.keepalive,
            "Mode": w.mode.as_str(), "MTU": w.mtu,
        }),
    };
    o.insert("Backend".into(), backend);
    o.insert("NetworkPolicy".into(), json!({"Enabled": c.network_policy}));
    Value::Object(o)
}

/// One family's network: its own base address, a prefix of at most `max` bits, the subnet
/// range inside it, and subnets between its prefix and `max` bits long.
fn check_family(
    c: &NetConfig,
    n: IpNetwork,
    range: [Option<IpAddr>; 2],
    subnet_len: Option<u8>,
    max: u8,
) {
    assert_eq!(n.ip(), n.network(), "{c:?}");
    assert!(n.prefix() <= max, "{c:?}");
    for ip in range.into_iter().flatten() {
        assert!(n.contains(ip), "{c:?}");
    }
    assert!(
        subnet_len.is_none_or(|l| l >= n.prefix() && l <= max),
        "{c:?}"
    );
}

fn check_invariants(c: &NetConfig) {
    assert!(c.enable_ipv4 || c.enable_ipv6, "{c:?}");
    if c.enable_ipv4 {
        assert!(c.network.is_some(), "{c:?}");
    }
    if c.enable_ipv6 {
        assert!(c.ipv6_network.is_some(), "{c:?}");
        assert!(!matches!(c.backend, BackendConfig::Ipip(_)), "{c:?}");
        assert!(c.backend.mtu().is_none_or(|m| m >= 1280), "{c:?}");
    }
    if let Some(n) = c.network {
        let range = [c.subnet_min, c.subnet_max].map(|ip| ip.map(IpAddr::from));
        check_family(c, n.into(), range, c.subnet_len, 30);
    }
    if let Some(n) = c.ipv6_network {
        let range = [c.ipv6_subnet_min, c.ipv6_subnet_max].map(|ip| ip.map(IpAddr::from));
        check_family(c, n.into(), range, c.ipv6_subnet_len, 126);
    }
    if let BackendConfig::Vxlan(v) = c.backend {
        assert!(v.vni <= MAX_VNI, "{c:?}");
        assert_ne!(v.port, 0, "{c:?}");
    }
    if let BackendConfig::Wireguard(w) = c.backend {
        assert!(w.listen_port != 0 && w.listen_port_v6 != 0, "{c:?}");
        let two_devices = w.mode == WgMode::Separate && c.enable_ipv4 && c.enable_ipv6;
        assert!(!two_devices || w.listen_port != w.listen_port_v6, "{c:?}");
    }
    assert!(
        c.backend.mtu().is_none_or(|m| (68..=65535).contains(&m)),
        "{c:?}"
    );
    // Backend.MTU is the underlay's: what each device keeps after its encapsulation (written
    // out here, not taken from the parser) is a valid MTU for the family it carries.
    let overhead = |v6: bool| match c.backend {
        BackendConfig::Vxlan(_) if v6 => 70,
        BackendConfig::Vxlan(_) => 50,
        BackendConfig::Ipip(_) => 20,
        BackendConfig::HostGw(_) => 0,
        BackendConfig::Wireguard(_) => 80,
    };
    if let Some(m) = c.backend.mtu() {
        assert!(!c.enable_ipv4 || m >= 68 + overhead(false), "{c:?}");
        assert!(!c.enable_ipv6 || m >= 1280 + overhead(true), "{c:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    // A ConfigMap's data values are strings: never anything but UTF-8.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = match NetConfig::parse(text) {
        Ok(p) => p,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    for w in &parsed.warnings {
        let _ = w.to_string();
    }
    let c = parsed.config;
    check_invariants(&c);
    let _ = (
        c.ipv4(),
        c.ipv6(),
        c.backend.kind(),
        c.backend.direct_routing(),
    );

    let canonical = render(&c).to_string();
    match NetConfig::parse(&canonical) {
        Ok(again) => {
            assert_eq!(again.config, c, "round trip through {canonical}");
            // Only remarks on what was given may remain (SubnetLen/Min/Max unused in kube
            // mode, what pods get of a Backend.MTU): no unknown or ignored keys, no masked
            // host bits, no default backend.
            assert!(
                again.warnings.iter().all(|w| matches!(
                    w,
                    ConfigWarning::UnusedInKubeMode { .. } | ConfigWarning::UnderlayMtu { .. }
                )),
                "{canonical} warns {:?}",
                again.warnings
            );
        }
        Err(e) => panic!("accepted {c:?} but not its rendering {canonical}: {e}"),
    }
});

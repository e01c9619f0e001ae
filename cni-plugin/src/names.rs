//! Deterministic names and MAC addresses, so DEL and GC find what ADD made
//! without any state beyond the container ID and interface name.

use std::net::IpAddr;

use trellis_common::hash::fnv1a;

/// Host-side veth names start with this; nothing else on a node should.
pub const HOST_VETH_PREFIX: &str = "trl";

/// The hash of the parts with a NUL between them, so ("ab","c") and ("a","bc") stay apart.
/// The names must not change when trellis is upgraded, or DEL would miss veths made by the
/// old version: the tests pin them.
fn hash(parts: &[&str]) -> u64 {
    let mut bytes: Vec<&[u8]> = Vec::with_capacity(parts.len() * 2);
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            bytes.push(b"\0");
        }
        bytes.push(p.as_bytes());
    }
    fnv1a(&bytes)
}

/// `trl` + 12 hex digits = 15 characters, the kernel's limit.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let h = hash(&[container_id, ifname]);
    format!("{HOST_VETH_PREFIX}{:012x}", h & 0xffff_ffff_ffff)
}

pub fn is_host_veth_name(name: &str) -> bool {
    name.len() == 15
        && name.starts_with(HOST_VETH_PREFIX)
        && name[3..]
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
}

/// Locally administered unicast MAC derived from an IPv4 address
/// (`0a:58:` + the address, the convention Kubernetes networks use), so a
/// gateway or pod keeps its MAC across re-creation and neighbours' ARP
/// caches stay valid.
pub fn mac_from_ip(ip: IpAddr) -> [u8; 6] {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            [0x0a, 0x58, o[0], o[1], o[2], o[3]]
        }
        IpAddr::V6(v6) => {
            let o = v6.octets();
            [0x0a, 0x58, o[12], o[13], o[14], o[15]]
        }
    }
}

/// Host veth MAC: stable, locally administered, distinct from the 0a:58 space.
pub fn host_veth_mac(container_id: &str, ifname: &str) -> [u8; 6] {
    let h = hash(&[container_id, ifname, "mac"]).to_be_bytes();
    [0x0e, h[0], h[1], h[2], h[3], h[4]]
}

pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_name_is_stable_valid_and_recognisable() {
        let a = host_veth_name("0123456789abcdef", "eth0");
        assert_eq!(a, host_veth_name("0123456789abcdef", "eth0"));
        assert_ne!(a, host_veth_name("0123456789abcdef", "eth1"));
        assert_ne!(a, host_veth_name("0123456789abcdee", "eth0"));
        assert_eq!(a.len(), 15);
        assert!(is_host_veth_name(&a));
        assert!(!is_host_veth_name("veth1234"));
        assert!(!is_host_veth_name("trlXYZ"));
        // Pinned: changing the hash would orphan veths across an upgrade.
        assert_eq!(host_veth_name("abc", "eth0"), "trl4ae81be81b20");
        assert_eq!(
            host_veth_mac("abc", "eth0"),
            [0x0e, 0x7e, 0x71, 0x53, 0x1f, 0x09]
        );
    }

    #[test]
    fn macs_are_locally_administered_unicast() {
        for mac in [
            mac_from_ip("10.244.1.1".parse().unwrap()),
            host_veth_mac("abc", "eth0"),
        ] {
            assert_eq!(mac[0] & 0x01, 0, "unicast");
            assert_eq!(mac[0] & 0x02, 0x02, "locally administered");
        }
        assert_eq!(
            format_mac(&mac_from_ip("10.244.1.1".parse().unwrap())),
            "0a:58:0a:f4:01:01"
        );
    }
}

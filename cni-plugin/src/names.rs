//! Deterministic names and MAC addresses, so DEL and GC find what ADD made
//! without any state beyond the container ID and interface name.

use std::net::IpAddr;

/// Host-side veth names start with this; nothing else on a node should.
pub const HOST_VETH_PREFIX: &str = "trl";

/// FNV-1a, 64 bit: tiny, stable across releases (the name must not change
/// when trellis is upgraded, or DEL would miss veths made by the old version).
fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            // A NUL separator (xor 0, then the multiply) keeps ("ab","c") and ("a","bc") apart.
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        for b in p.as_bytes() {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// `trl` + 12 hex digits = 15 characters, the kernel's limit.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let h = fnv1a(&[container_id, ifname]);
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
    let h = fnv1a(&[container_id, ifname, "mac"]).to_be_bytes();
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

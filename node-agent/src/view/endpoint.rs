//! Whether an address a peer advertises can be a next hop or a tunnel endpoint at all.
//!
//! A Node's `public-ip` is untrusted input: the kernel refuses a route via a broadcast
//! address (EINVAL), and a tunnel towards loopback or multicast would send pod traffic
//! nowhere or everywhere. Such a peer is refused when it is read, with the reason, instead of
//! reaching the kernel.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::Underlay;

/// Why `ip` cannot be a peer's endpoint on this `underlay`, or `None` when it can.
pub fn unusable(ip: IpAddr, underlay: &Underlay) -> Option<&'static str> {
    if ip.is_loopback() {
        return Some("a loopback address");
    }
    if ip.is_multicast() {
        return Some("a multicast address");
    }
    match ip {
        IpAddr::V4(ip) => unusable_v4(ip, underlay),
        IpAddr::V6(ip) => unusable_v6(ip, underlay),
    }
}

/// Past the checks both families share (loopback, multicast).
fn unusable_v4(ip: Ipv4Addr, underlay: &Underlay) -> Option<&'static str> {
    if ip.is_unspecified() || ip.octets()[0] == 0 {
        return Some("the unspecified network (0.0.0.0/8)");
    }
    if ip.is_broadcast() {
        return Some("the limited broadcast address");
    }
    if ip.octets()[0] >= 240 {
        return Some("a reserved address (240.0.0.0/4)");
    }
    if let Some(net) = underlay
        .addr_v4
        .filter(|n| n.prefix() < 31 && n.contains(ip))
    {
        if ip == net.network() {
            return Some("the underlay subnet's network address");
        }
        if ip == net.broadcast() {
            return Some("the underlay subnet's broadcast address");
        }
    }
    // A link-local peer can only be reached on our own link-local segment.
    if ip.is_link_local() && !underlay.addr_v4.is_some_and(|n| n.ip().is_link_local()) {
        return Some("a link-local address, and the underlay is not link-local");
    }
    None
}

fn unusable_v6(ip: Ipv6Addr, underlay: &Underlay) -> Option<&'static str> {
    if ip.is_unspecified() {
        return Some("the unspecified address");
    }
    if ip.to_ipv4_mapped().is_some() {
        return Some("an IPv4-mapped address");
    }
    // fe80::/10 needs a scope (an interface) that an annotation cannot carry.
    if ip.segments()[0] & 0xffc0 == 0xfe80 {
        return Some("a link-local address");
    }
    if let Some(net) = underlay
        .addr_v6
        .filter(|n| n.prefix() < 127 && n.contains(ip))
    {
        if ip == net.network() {
            return Some("the underlay subnet's anycast (all-zero host) address");
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn underlay(v4: &str, v6: &str) -> Underlay {
        Underlay {
            name: "eth0".into(),
            index: 2,
            mtu: 1500,
            addr_v4: Some(v4.parse().expect("v4")),
            addr_v6: Some(v6.parse().expect("v6")),
            routes: Vec::new(),
        }
    }

    #[test]
    fn impossible_endpoints_are_refused_with_a_reason() {
        let u = underlay("172.31.250.1/24", "fd00:192::1/64");
        for bad in [
            "0.0.0.0",
            "0.1.2.3",
            "127.0.0.1",
            "127.9.9.9",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "240.0.0.1",
            "172.31.250.255",
            "172.31.250.0",
            "169.254.1.1",
            "::",
            "::1",
            "ff02::1",
            "::ffff:10.0.0.1",
            "fe80::1",
            "fd00:192::",
        ] {
            let ip: IpAddr = bad.parse().expect("ip");
            assert!(unusable(ip, &u).is_some(), "{bad} must be refused");
        }
    }

    #[test]
    fn ordinary_endpoints_pass() {
        let u = underlay("172.31.250.1/24", "fd00:192::1/64");
        for good in [
            "172.31.250.2",
            "172.31.250.254",
            "10.0.0.255",
            "192.168.7.0",
            "8.8.8.8",
            "fd00:192::2",
            "2001:db8::1",
        ] {
            let ip: IpAddr = good.parse().expect("ip");
            assert_eq!(unusable(ip, &u), None, "{good} must pass");
        }
    }

    #[test]
    fn small_underlay_subnets_have_no_network_or_broadcast_address() {
        // /31 (RFC 3021) and /32: both addresses are hosts.
        let u = underlay("10.1.1.0/31", "fd00::/127");
        for good in ["10.1.1.1", "10.1.1.0", "fd00::1"] {
            let ip: IpAddr = good.parse().expect("ip");
            assert_eq!(unusable(ip, &u), None, "{good} must pass on a /31");
        }
    }

    #[test]
    fn link_local_peers_pass_on_a_link_local_underlay() {
        let u = underlay("169.254.10.1/16", "fd00:192::1/64");
        assert_eq!(unusable("169.254.10.2".parse().expect("ip"), &u), None);
    }
}

//! The network's basic vocabulary: address families, MAC addresses, the names of trellis's
//! devices, the VXLAN port and the route protocol number (and the FNV-1a hash that derives MACs).
//!
//! This module is the ground floor of the crate: it imports nothing from it, so every other
//! module (annotations, config, the view, the planner, the dataplane, the firewall) can use
//! these types without depending on each other. They used to live in `dataplane::desired`,
//! which made annotations, config, the dataplane and the firewall rules import each other in
//! a cycle. `node-agent/tests/module_graph.rs` keeps this module free of `crate::` paths
//! and the top-level modules free of cycles.

use std::fmt;
use std::str::FromStr;

use trellis_common::hash::fnv1a;

/// The `rtm_protocol` of every route trellis creates, so that the executor can dump exactly
/// its own routes and never touches routes of the kernel, DHCP, routing daemons or other CNIs.
///
/// 116 (0x74, ASCII `t`) is not assigned in iproute2's `rt_protos` (kernel, boot, static, ra,
/// dhcp, zebra, bird, babel, bgp, ospf, ... use 2-18, 42, 99, 186-192) nor used by the CNIs we
/// know of (Calico uses 80). `ip route show proto 116` lists trellis's routes; an operator can
/// name it by adding `116 trellis` to `/etc/iproute2/rt_protos.d/trellis.conf`.
pub const ROUTE_PROTOCOL: u8 = 116;

/// The VXLAN UDP port the Linux kernel uses when none is given, and flannel's default.
pub const DEFAULT_VXLAN_PORT: u16 = 8472;

/// Name of the IPv4 VXLAN device for a VNI (flannel's `flannel.<VNI>`).
pub fn vxlan_link_name(vni: u32) -> String {
    format!("flannel.{vni}")
}

/// Name of the IPv6 VXLAN device for a VNI (flannel's `flannel-v6.<VNI>`).
pub fn vxlan6_link_name(vni: u32) -> String {
    format!("flannel-v6.{vni}")
}

/// Name of the IPIP device. Not `tunl0`: the kernel creates that one itself as the catch-all
/// tunnel of the namespace, and users may rely on it.
pub const IPIP_LINK_NAME: &str = "flannel.ipip";

/// Names of the WireGuard devices (flannel's): `flannel-wg` carries IPv4 (and IPv6 too in
/// the single-device modes), `flannel-wg-v6` IPv6 in the separate mode.
pub const WG_LINK_NAME: &str = "flannel-wg";
pub const WG6_LINK_NAME: &str = "flannel-wg-v6";

/// Whether a link of this name is trellis's (so it may be deleted when no longer desired).
/// Only flannel's exact device names qualify, so a user's `flannel-test` or `tunl0` is safe.
pub fn is_owned_link_name(name: &str) -> bool {
    let numeric = |s: &str| !s.is_empty() && s.len() <= 8 && s.bytes().all(|b| b.is_ascii_digit());
    name == IPIP_LINK_NAME
        || name == WG_LINK_NAME
        || name == WG6_LINK_NAME
        || name.strip_prefix("flannel-v6.").is_some_and(numeric)
        || name.strip_prefix("flannel.").is_some_and(numeric)
}

/// An IP address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The smallest MTU a link of this family may have: 68 for IPv4 (RFC 791), 1280 for IPv6
    /// (RFC 8200).
    pub fn min_mtu(self) -> u32 {
        match self {
            Family::V4 => 68,
            Family::V6 => 1280,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a MAC address (expected six hex octets like aa:bb:cc:dd:ee:ff)")]
pub struct MacParseError(pub String);

impl Mac {
    /// A locally administered unicast MAC derived from a seed, e.g. `node name + device name`.
    /// The VTEP MAC must stay the same across agent restarts (peers hold it in their ARP and
    /// FDB entries); deriving it makes that true even when the advertised one was lost.
    pub fn derived(seed: &str) -> Mac {
        let b = fnv1a(&[seed.as_bytes()]).to_be_bytes();
        // Set "locally administered", clear "multicast".
        Mac([(b[0] & 0xfc) | 0x02, b[1], b[2], b[3], b[4], b[5]])
    }

    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl FromStr for Mac {
    type Err = MacParseError;

    /// Accepts `aa:bb:cc:dd:ee:ff` and `aa-bb-cc-dd-ee-ff` (any case), the 6-octet forms Go's
    /// `net.ParseMAC` accepts that flannel could have written.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacParseError(s.to_string());
        let sep = if s.contains(':') { ':' } else { '-' };
        let mut out = [0u8; 6];
        let mut parts = s.split(sep);
        for slot in out.iter_mut() {
            let p = parts.next().ok_or_else(err)?;
            if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err());
            }
            *slot = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(Mac(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parses_and_prints_canonically() {
        let m: Mac = "AA:bb:0c:dd:ee:0F".parse().unwrap();
        assert_eq!(m.0, [0xaa, 0xbb, 0x0c, 0xdd, 0xee, 0x0f]);
        assert_eq!(m.to_string(), "aa:bb:0c:dd:ee:0f");
        assert_eq!("aa-bb-0c-dd-ee-0f".parse::<Mac>().unwrap(), m);
    }

    #[test]
    fn mac_rejects_malformed_input() {
        for bad in [
            "",
            "aa:bb:cc:dd:ee",
            "aa:bb:cc:dd:ee:ff:00",
            "aa:bb:cc:dd:ee:gg",
            "a:bb:cc:dd:ee:ff",
            "aaa:bb:cc:dd:ee:ff",
            "aa:bb-cc:dd:ee:ff",
            "aabb.ccdd.eeff",
            "aa:bb:cc:dd:ee:+f",
            " aa:bb:cc:dd:ee:ff",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn derived_mac_is_stable_unicast_and_local() {
        let a = Mac::derived("node-1/flannel.1");
        // Pinned: a restarted agent that lost its annotation must derive the MAC peers hold.
        assert_eq!(a.to_string(), "e2:27:92:1e:38:8c");
        assert_eq!(a, Mac::derived("node-1/flannel.1"));
        assert_ne!(a, Mac::derived("node-2/flannel.1"));
        assert!(!a.is_multicast());
        assert_eq!(a.0[0] & 0x02, 0x02);
        assert!(!a.is_zero());
    }

    #[test]
    fn owned_link_names_are_exactly_flannels() {
        for ok in ["flannel.1", "flannel.4096", "flannel-v6.1", "flannel.ipip"] {
            assert!(is_owned_link_name(ok), "{ok}");
        }
        for not in [
            "flannel",
            "flannel.",
            "flannel.x",
            "flannel.1a",
            "flannel-v6.",
            "flannel.ipip2",
            "tunl0",
            "cni0",
            "eth0",
            "flannel-test",
            "flannel.123456789",
        ] {
            assert!(!is_owned_link_name(not), "{not}");
        }
        assert_eq!(vxlan_link_name(7), "flannel.7");
        assert_eq!(vxlan6_link_name(7), "flannel-v6.7");
    }
}

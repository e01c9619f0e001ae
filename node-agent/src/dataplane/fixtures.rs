//! Builders for the unit tests of the planner, the diff and the netlink layer: the devices
//! trellis makes, on the underlay of `view::fixtures` (index 2, 192.168.1.1).

use std::net::{IpAddr, Ipv4Addr};

use super::desired::{Link, LinkKind, Vxlan};
use crate::net::Mac;

/// A VXLAN device's kind on the fixtures' underlay, as flannel makes it (no learning, no
/// GBP).
pub fn vxlan_kind(vni: u32, port: u16) -> LinkKind {
    LinkKind::Vxlan(Vxlan {
        vni,
        port,
        local: IpAddr::V4(Ipv4Addr::new(192, 168, 1, 1)),
        underlay_index: 2,
        learning: false,
        gbp: false,
    })
}

/// An up VXLAN device on the fixtures' underlay.
pub fn vxlan_link(name: &str, vni: u32, port: u16, mtu: u32, mac: Option<Mac>) -> Link {
    Link {
        name: name.into(),
        kind: vxlan_kind(vni, port),
        mtu,
        mac,
        up: true,
    }
}

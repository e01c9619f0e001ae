//! Reading back the kernel entries trellis owns in a namespace.

use crate::netns::Netns;

/// trellis marks its routes with this protocol number (`ip route show proto 116`).
pub const ROUTE_PROTO: &str = "116";

/// `ip -n NS route show proto 116` (trellis's IPv4 routes, one a line); empty when
/// it cannot be read.
pub fn routes(ns: &Netns) -> String {
    ns.ip(&["route", "show", "proto", ROUTE_PROTO])
        .unwrap_or_default()
}

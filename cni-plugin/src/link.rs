//! Kernel objects through rtnetlink: the bridge, veth pairs, addresses and
//! routes. Every function is idempotent: "already there" is success.

use std::fmt::Display;
use std::net::IpAddr;

use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use netlink_packet_route::address::{AddressAttribute, AddressFlags};
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth};
use netlink_packet_route::route::{RouteAttribute, RouteMessage};
use netlink_packet_route::AddressFamily;
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth, RouteMessageBuilder};
use trellis_common::netlink::{
    describe, errno, link_address, link_by_name, link_is_up, link_kind, route_addr,
};

use crate::spec::error::{CniError, ErrorCode};
use crate::spec::result::Route;

pub fn nl_err(what: impl Display, e: rtnetlink::Error) -> CniError {
    CniError::new(ErrorCode::Netlink, format!("{what}: {}", describe(&e)))
}

pub struct BridgeInfo {
    pub index: u32,
    pub mac: Vec<u8>,
}

/// Make sure the bridge exists, is a bridge, is up and carries exactly our
/// gateway addresses. Another ADD may be doing the same at this moment.
pub async fn ensure_bridge(
    h: &Handle,
    name: &str,
    mtu: u32,
    mac: [u8; 6],
    gateways: &[IpNetwork],
) -> Result<BridgeInfo, CniError> {
    let link = match link_by_name(h, name)
        .await
        .map_err(|e| nl_err(format_args!("cannot look up {name}"), e))?
    {
        Some(l) => l,
        None => {
            let msg = LinkBridge::new(name)
                .mtu(mtu)
                .address(mac.to_vec())
                .up()
                .build();
            match h.link().add(msg).execute().await {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(libc::EEXIST) => {}
                Err(e) => return Err(nl_err(format_args!("cannot create bridge {name}"), e)),
            }
            link_by_name(h, name)
                .await
                .map_err(|e| nl_err(format_args!("cannot look up {name}"), e))?
                .ok_or_else(|| {
                    CniError::new(
                        ErrorCode::Netlink,
                        format!("bridge {name} vanished right after creation"),
                    )
                })?
        }
    };
    match link_kind(&link) {
        Some(InfoKind::Bridge) => {}
        other => {
            let what = other
                .map(|k| format!("a {k:?} device"))
                .unwrap_or_else(|| "a device of unknown type".into());
            return Err(CniError::new(
                ErrorCode::HostConflict,
                format!("{name} exists but is {what}, not a bridge"),
            )
            .with_details(format!(
                "rename or delete {name}, or set \"bridge\" in the CNI config to another name"
            )));
        }
    }
    let index = link.header.index;
    if !link_is_up(&link) {
        h.link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| nl_err(format_args!("cannot bring {name} up"), e))?;
    }
    let existing = addresses(h, index)
        .await
        .map_err(|e| nl_err(format_args!("cannot list addresses of {name}"), e))?;
    for gw in gateways {
        if existing.contains(gw) {
            continue;
        }
        if let Some(other) = existing
            .iter()
            .find(|a| a.is_ipv4() == gw.is_ipv4() && !is_link_local(a.ip()))
        {
            return Err(CniError::new(
                ErrorCode::HostConflict,
                format!("bridge {name} already has address {other}, different from {gw} (from subnet.env)"),
            )
            .with_details(format!(
                "the node's pod CIDR changed; drain the node, delete the bridge (ip link delete {name}) and trellis recreates it with the new gateway"
            )));
        }
        add_address(h, index, *gw)
            .await
            .map_err(|e| nl_err(format_args!("cannot add {gw} to {name}"), e))?;
    }
    Ok(BridgeInfo {
        index,
        mac: link_address(&link).unwrap_or_default().to_vec(),
    })
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

pub async fn addresses(h: &Handle, index: u32) -> Result<Vec<IpNetwork>, rtnetlink::Error> {
    let mut out = Vec::new();
    let mut stream = h.address().get().set_link_index_filter(index).execute();
    while let Some(msg) = stream.try_next().await? {
        let ip = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        });
        if let Some(ip) = ip {
            if let Ok(n) = IpNetwork::new(ip, msg.header.prefix_len) {
                out.push(n);
            }
        }
    }
    Ok(out)
}

/// Add an address; IPv6 ones skip duplicate address detection, since the
/// address came from our own IPAM and a pod must be reachable at once.
pub async fn add_address(h: &Handle, index: u32, addr: IpNetwork) -> Result<(), rtnetlink::Error> {
    let mut req = h.address().add(index, addr.ip(), addr.prefix());
    if addr.is_ipv6() {
        req.message_mut()
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    match req.execute().await {
        Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
        other => other,
    }
}

/// Everything needed to create one veth pair in one netlink message.
pub struct VethSpec<'a> {
    pub host_name: &'a str,
    pub host_mac: [u8; 6],
    pub pod_name: &'a str,
    pub pod_mac: [u8; 6],
    pub mtu: u32,
    pub bridge_index: u32,
    pub pod_netns_fd: std::os::fd::RawFd,
}

/// Create the pair with the host end already on the bridge and up, and the
/// pod end already inside the pod's namespace under its final name: no
/// window where a half-configured interface is visible. (The pod end cannot
/// be created up: veth refuses to open before its peer exists, ENOTCONN.)
pub async fn create_veth(h: &Handle, spec: &VethSpec<'_>) -> Result<(), rtnetlink::Error> {
    let peer = LinkUnspec::new_with_name(spec.pod_name)
        .mtu(spec.mtu)
        .address(spec.pod_mac.to_vec())
        .setns_by_fd(spec.pod_netns_fd)
        .build();
    let msg = LinkVeth::new(spec.host_name, spec.pod_name)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .mtu(spec.mtu)
        .address(spec.host_mac.to_vec())
        .controller(spec.bridge_index)
        .up()
        .build();
    h.link().add(msg).execute().await
}

pub async fn set_hairpin(h: &Handle, index: u32, on: bool) -> Result<(), rtnetlink::Error> {
    h.link()
        .set_port(LinkBridgePort::new(index).hairpin(on).build())
        .execute()
        .await
}

pub async fn set_up(h: &Handle, index: u32) -> Result<(), rtnetlink::Error> {
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
}

pub async fn set_controller(
    h: &Handle,
    index: u32,
    controller: u32,
) -> Result<(), rtnetlink::Error> {
    h.link()
        .set(
            LinkUnspec::new_with_index(index)
                .controller(controller)
                .up()
                .build(),
        )
        .execute()
        .await
}

/// Take a port off its bridge and down in one message: from here on the
/// pod behind it has no path anywhere.
pub async fn detach(h: &Handle, index: u32) -> Result<(), rtnetlink::Error> {
    h.link()
        .set(
            LinkUnspec::new_with_index(index)
                .nocontroller()
                .down()
                .build(),
        )
        .execute()
        .await
}

/// Delete a link by name; false when there was nothing to delete.
pub async fn delete_link(h: &Handle, name: &str) -> Result<bool, rtnetlink::Error> {
    let msg = LinkUnspec::new_with_name(name).build();
    match h.link().del_with_message(msg).execute().await {
        Ok(()) => Ok(true),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
        Err(e) => Err(e),
    }
}

pub async fn add_route(h: &Handle, index: u32, route: &Route) -> Result<(), rtnetlink::Error> {
    let msg = route_message(index, route)?;
    match h.route().add(msg).execute().await {
        Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
        other => other,
    }
}

fn invalid(e: impl Display) -> rtnetlink::Error {
    rtnetlink::Error::InvalidNla(e.to_string())
}

fn route_message(index: u32, route: &Route) -> Result<RouteMessage, rtnetlink::Error> {
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(route.dst.network(), route.dst.prefix())
        .map_err(invalid)?
        .output_interface(index);
    if let Some(gw) = route.gw {
        b = b.gateway(gw).map_err(invalid)?;
    }
    Ok(b.build())
}

/// Routes in the main table, as (destination, gateway) pairs.
pub async fn routes(h: &Handle, v4: bool) -> Result<Vec<Route>, rtnetlink::Error> {
    let probe = if v4 {
        RouteMessageBuilder::<std::net::Ipv4Addr>::new().build()
    } else {
        RouteMessageBuilder::<std::net::Ipv6Addr>::new().build()
    };
    let family = if v4 {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let mut out = Vec::new();
    let mut stream = h.route().get(probe).execute();
    while let Some(msg) = stream.try_next().await? {
        if msg.header.address_family != family {
            continue;
        }
        let mut dst: Option<IpAddr> = None;
        let mut gw: Option<IpAddr> = None;
        for a in &msg.attributes {
            match a {
                RouteAttribute::Destination(d) => dst = route_addr(d),
                RouteAttribute::Gateway(g) => gw = route_addr(g),
                _ => {}
            }
        }
        let dst = dst.unwrap_or(if v4 {
            IpAddr::from([0u8; 4])
        } else {
            IpAddr::from([0u16; 8])
        });
        if let Ok(net) = IpNetwork::new(dst, msg.header.destination_prefix_length) {
            out.push(Route { dst: net, gw });
        }
    }
    Ok(out)
}

/// Turn on forwarding so traffic can leave the bridge; writes only when needed.
pub fn enable_forwarding(v4: bool, v6: bool) -> Result<(), CniError> {
    let mut paths = Vec::new();
    if v4 {
        paths.push("/proc/sys/net/ipv4/ip_forward");
    }
    if v6 {
        paths.push("/proc/sys/net/ipv6/conf/all/forwarding");
    }
    for p in paths {
        if std::fs::read_to_string(p)
            .map(|s| s.trim() == "1")
            .unwrap_or(false)
        {
            continue;
        }
        std::fs::write(p, "1").map_err(|e| {
            crate::spec::error::io_error(format_args!("cannot enable forwarding ({p})"), e)
        })?;
    }
    Ok(())
}

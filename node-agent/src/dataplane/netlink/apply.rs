//! Execute diff ops against the kernel.
//!
//! Ops come in the diff's phase order (see `dataplane::diff`). Link ops run one at a time;
//! a run of consecutive ops of one phase (neighbour/FDB sets, route sets, route deletes, ...)
//! are independent of each other: neighbour, FDB and route ops go to the kernel in bulk
//! ([`super::bulk`], 128 requests to a syscall), which is what makes 15000 entries for 5000
//! peers cost about what the kernel spends on them; address ops run pipelined, [`IN_FLIGHT`]
//! requests on the socket at once.
//!
//! An op that fails is recorded with its errno and does not stop the others. Ops that need a
//! link which could not be created are not attempted and recorded as such, so the report
//! names the cause once instead of hundreds of `ENODEV`s. "Already there" on create and
//! "already gone" on delete are success: the kernel may have changed between dump and apply.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;

use futures::stream::{self, StreamExt};
use netlink_packet_core::{NLM_F_APPEND, NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::address::AddressFlags;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteMessage, RouteProtocol, RouteScope, RouteType};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{
    AddressMessageBuilder, Handle, LinkIpIp, LinkMessageBuilder, LinkUnspec, LinkVxlan,
    LinkWireguard, RouteMessageBuilder,
};
use trellis_common::netlink::{errno, link_by_name};

use super::bulk::{self, Answer, BulkSocket, Request};
use super::wg_ops;
use crate::dataplane::desired::{Address, Fdb, Link, LinkKind, Route};
use crate::dataplane::diff::Op;
use crate::net::ROUTE_PROTOCOL;

/// Requests in flight at once within a phase. Enough to hide the per-request round trip;
/// small enough that the acks never overflow the socket's receive buffer.
pub const IN_FLIGHT: usize = 64;

/// One op that did not take effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError {
    pub op: Op,
    /// The kernel's errno, when the kernel refused.
    pub errno: Option<i32>,
    pub message: String,
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.op, self.message)
    }
}

impl std::error::Error for OpError {}

/// What [`apply`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Ops that took effect (or found the kernel already as wanted).
    pub applied: usize,
    /// Ops that took effect, by [`Op::label`], for metrics.
    pub applied_by_label: BTreeMap<&'static str, usize>,
    pub errors: Vec<OpError>,
}

/// Why one op failed, before it is paired with the op.
struct Failure {
    errno: Option<i32>,
    message: String,
}

impl Failure {
    fn kernel(e: rtnetlink::Error) -> Failure {
        match errno(&e) {
            Some(n) => Failure::errno(n),
            None => Failure {
                errno: None,
                message: e.to_string(),
            },
        }
    }

    /// The kernel refused with `n`.
    fn errno(n: i32) -> Failure {
        Failure {
            errno: Some(n),
            message: std::io::Error::from_raw_os_error(n).to_string(),
        }
    }

    fn other(message: String) -> Failure {
        Failure {
            errno: None,
            message,
        }
    }
}

type OpResult = Result<(), Failure>;

/// Treat these errnos as success.
fn ok_if(r: Result<(), rtnetlink::Error>, benign: &[i32]) -> OpResult {
    match r {
        Ok(()) => Ok(()),
        Err(e) if errno(&e).is_some_and(|n| benign.contains(&n)) => Ok(()),
        Err(e) => Err(Failure::kernel(e)),
    }
}

/// Ops that may run concurrently with their neighbours in the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Link,
    AddressAdd,
    EntrySet,
    RouteSet,
    RouteDelete,
    EntryDelete,
    AddressDelete,
    /// WireGuard peers: generic netlink, one request per device.
    WgSet,
    WgDelete,
}

fn phase(op: &Op) -> Phase {
    match op {
        Op::AddLink(_) | Op::SetLink(_) | Op::DeleteLink(_) => Phase::Link,
        Op::AddAddress(_) => Phase::AddressAdd,
        Op::AddNeighbour(_) | Op::ReplaceNeighbour(_) | Op::AddFdb(_) | Op::ReplaceFdb(_) => {
            Phase::EntrySet
        }
        Op::AddRoute(_) | Op::ReplaceRoute(_) => Phase::RouteSet,
        Op::DeleteRoute(_) => Phase::RouteDelete,
        Op::DeleteNeighbour(_) | Op::DeleteFdb(_) => Phase::EntryDelete,
        Op::DeleteAddress(_) => Phase::AddressDelete,
        Op::AddWgPeer(_) | Op::ReplaceWgPeer(_) => Phase::WgSet,
        Op::DeleteWgPeer(_) => Phase::WgDelete,
    }
}

/// The link an op needs the index of. Route deletes need none: they match by destination and
/// protocol, so a route whose device is gone can still be removed.
fn needed_link(op: &Op) -> Option<&str> {
    match op {
        Op::AddLink(_) | Op::DeleteLink(_) | Op::DeleteRoute(_) => None,
        Op::SetLink(l) => Some(&l.name),
        Op::AddAddress(a) | Op::DeleteAddress(a) => Some(&a.link),
        Op::AddNeighbour(n) | Op::ReplaceNeighbour(n) | Op::DeleteNeighbour(n) => Some(&n.link),
        Op::AddFdb(f) | Op::ReplaceFdb(f) | Op::DeleteFdb(f) => Some(&f.link),
        Op::AddRoute(r) | Op::ReplaceRoute(r) => Some(&r.dev),
        Op::AddWgPeer(p) | Op::ReplaceWgPeer(p) | Op::DeleteWgPeer(p) => Some(&p.link),
    }
}

/// Link name -> ifindex, learned from the dump and looked up on demand.
struct Links {
    index: HashMap<String, u32>,
    /// Links whose creation failed in this run.
    failed: HashSet<String>,
}

impl Links {
    async fn resolve(&mut self, handle: &Handle, name: &str) -> Result<Option<u32>, Failure> {
        if let Some(i) = self.index.get(name) {
            return Ok(Some(*i));
        }
        let found = link_by_name(handle, name).await.map_err(Failure::kernel)?;
        if let Some(msg) = &found {
            self.index.insert(name.to_string(), msg.header.index);
        }
        Ok(found.map(|m| m.header.index))
    }
}

/// Execute `ops` in order (see module docs), with a bulk socket of its own.
pub async fn apply(handle: &Handle, ops: &[Op]) -> ApplyReport {
    match BulkSocket::open() {
        Ok(mut bulk) => apply_with_index(handle, &mut bulk, ops, &mut HashMap::new()).await,
        Err(e) => ApplyReport {
            errors: ops
                .iter()
                .map(|op| OpError {
                    op: op.clone(),
                    errno: e.raw_os_error(),
                    message: format!("cannot open a netlink socket: {e}"),
                })
                .collect(),
            ..ApplyReport::default()
        },
    }
}

/// [`apply`] with link indexes already known (from a dump or an earlier run); `index` is
/// updated with what this run learned or changed, so the next run can reuse it. Entry ops
/// go through `bulk`.
pub async fn apply_with_index(
    handle: &Handle,
    bulk: &mut BulkSocket,
    ops: &[Op],
    index: &mut HashMap<String, u32>,
) -> ApplyReport {
    let mut links = Links {
        index: std::mem::take(index),
        failed: HashSet::new(),
    };
    let mut report = ApplyReport::default();
    let mut rest = ops;
    while let Some(first) = rest.first() {
        let p = phase(first);
        let len = if p == Phase::Link {
            1
        } else {
            rest.iter().take_while(|op| phase(op) == p).count()
        };
        let (batch, tail) = rest.split_at(len);
        rest = tail;
        if p == Phase::Link {
            let r = link_op(handle, &mut links, first).await;
            record(&mut report, first, r);
        } else if matches!(p, Phase::WgSet | Phase::WgDelete) {
            run_wg_batch(&links, batch, &mut report);
        } else {
            run_batch(handle, bulk, &mut links, batch, &mut report).await;
        }
    }
    *index = links.index;
    report
}

fn record(report: &mut ApplyReport, op: &Op, r: OpResult) {
    match r {
        Ok(()) => {
            report.applied += 1;
            *report.applied_by_label.entry(op.label()).or_insert(0) += 1;
        }
        Err(f) => report.errors.push(OpError {
            op: op.clone(),
            errno: f.errno,
            message: f.message,
        }),
    }
}

/// WireGuard peer ops, but those on a device whose creation failed in this run.
fn run_wg_batch(links: &Links, batch: &[Op], report: &mut ApplyReport) {
    let (skipped, runnable): (Vec<&Op>, Vec<&Op>) = batch
        .iter()
        .partition(|op| needed_link(op).is_some_and(|l| links.failed.contains(l)));
    for op in skipped {
        let link = needed_link(op).unwrap_or_default();
        let why = format!("not attempted: creating link {link} failed");
        record(report, op, Err(Failure::other(why)));
    }
    let runnable: Vec<Op> = runnable.into_iter().cloned().collect();
    for (op, r) in runnable.iter().zip(wg_ops::run_peer_ops(&runnable)) {
        let r = r.map_err(|(errno, message)| Failure { errno, message });
        record(report, op, r);
    }
}

/// Resolve every link the batch needs, then run it: entries in bulk, addresses pipelined.
async fn run_batch(
    handle: &Handle,
    bulk: &mut BulkSocket,
    links: &mut Links,
    batch: &[Op],
    report: &mut ApplyReport,
) {
    // Outcome of resolving each distinct name: index, or why the op cannot run.
    let mut resolved: HashMap<&str, Result<Option<u32>, String>> = HashMap::new();
    for op in batch {
        let Some(name) = needed_link(op) else {
            continue;
        };
        if resolved.contains_key(name) {
            continue;
        }
        let outcome = if links.failed.contains(name) {
            Err(format!("not attempted: creating link {name} failed"))
        } else {
            links
                .resolve(handle, name)
                .await
                .map_err(|f| format!("cannot look up link {name}: {}", f.message))
        };
        resolved.insert(name, outcome);
    }

    let results: Vec<OpResult> =
        if matches!(phase(&batch[0]), Phase::AddressAdd | Phase::AddressDelete) {
            stream::iter(batch)
                .map(|op| {
                    let index = index_for(op, &resolved);
                    let handle = handle.clone();
                    async move {
                        match index {
                            Ok(index) => address_op(&handle, index, op).await,
                            Err(done) => done,
                        }
                    }
                })
                .buffered(IN_FLIGHT)
                .collect()
                .await
        } else {
            run_bulk(bulk, batch, &resolved).await
        };
    for (op, r) in batch.iter().zip(results) {
        record(report, op, r);
    }
}

/// The ifindex an op runs on (0 when it needs none), or its outcome when it cannot run.
fn index_for(
    op: &Op,
    resolved: &HashMap<&str, Result<Option<u32>, String>>,
) -> Result<u32, OpResult> {
    let Some(name) = needed_link(op) else {
        return Ok(0);
    };
    match resolved.get(name) {
        Some(Ok(Some(i))) => Ok(*i),
        // The link is gone: so is everything that lived on it.
        _ if op.is_delete() => Err(Ok(())),
        Some(Ok(None)) | None => Err(Err(Failure {
            errno: Some(libc::ENODEV),
            message: format!("link {name} does not exist"),
        })),
        Some(Err(why)) => Err(Err(Failure::other(why.clone()))),
    }
}

/// Neighbour, FDB and route ops, [`bulk::CHUNK`] requests to a syscall.
async fn run_bulk(
    bulk: &mut BulkSocket,
    batch: &[Op],
    resolved: &HashMap<&str, Result<Option<u32>, String>>,
) -> Vec<OpResult> {
    let mut results: Vec<Option<OpResult>> = batch.iter().map(|_| None).collect();
    let mut requests = Vec::with_capacity(batch.len());
    // Per request: its op's position in `batch`, and the errnos that mean "already so".
    let mut slots: Vec<(usize, &'static [i32])> = Vec::with_capacity(batch.len());
    for (i, op) in batch.iter().enumerate() {
        let request =
            index_for(op, resolved).and_then(|index| entry_request(index, op).map_err(Err));
        match request {
            Ok((request, benign)) => {
                requests.push(request);
                slots.push((i, benign));
            }
            Err(done) => results[i] = Some(done),
        }
    }
    for (chunk, chunk_slots) in requests
        .chunks_mut(bulk::CHUNK)
        .zip(slots.chunks(bulk::CHUNK))
    {
        match bulk.exchange(chunk) {
            Ok(answers) => {
                for (&(i, benign), answer) in chunk_slots.iter().zip(answers) {
                    results[i] = Some(match answer {
                        Answer::Ack => Ok(()),
                        Answer::Errno(n) if benign.contains(&n) => Ok(()),
                        Answer::Errno(n) => Err(Failure::errno(n)),
                        Answer::Missing => Err(Failure::other(
                            "the kernel's answer was lost (netlink receive buffer full)".into(),
                        )),
                    });
                }
            }
            Err(e) => {
                for &(i, _) in chunk_slots {
                    results[i] = Some(Err(Failure {
                        errno: e.raw_os_error(),
                        message: format!("netlink send failed: {e}"),
                    }));
                }
            }
        }
        // Each chunk holds this worker for the kernel's time on it: let the others run.
        tokio::task::yield_now().await;
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(Failure::other("not attempted".into()))))
        .collect()
}

async fn link_op(handle: &Handle, links: &mut Links, op: &Op) -> OpResult {
    match op {
        Op::AddLink(link) => {
            links.failed.remove(&link.name);
            links.index.remove(&link.name);
            let mut r = ok_if(
                handle.link().add(link_message(link)).execute().await,
                &[libc::EEXIST],
            );
            if let (Ok(()), LinkKind::Wireguard(w)) = (&r, &link.kind) {
                r = wg_ops::configure_device(&link.name, w).map_err(|e| Failure {
                    errno: e.errno(),
                    message: e.to_string(),
                });
            }
            if r.is_err() {
                links.failed.insert(link.name.clone());
            }
            r
        }
        Op::SetLink(link) => {
            let Some(index) = links.resolve(handle, &link.name).await? else {
                return Err(Failure {
                    errno: Some(libc::ENODEV),
                    message: format!("link {} does not exist", link.name),
                });
            };
            set_link(handle, index, link).await
        }
        Op::DeleteLink(name) => {
            links.index.remove(name);
            let msg = LinkUnspec::new_with_name(name).build();
            ok_if(
                handle.link().del_with_message(msg).execute().await,
                &[libc::ENODEV],
            )
        }
        _ => Err(Failure::other("not a link op".into())),
    }
}

/// The whole device in one message, created up: no window where it exists half-configured.
fn link_message(link: &Link) -> netlink_packet_route::link::LinkMessage {
    fn common<T>(b: LinkMessageBuilder<T>, link: &Link) -> LinkMessageBuilder<T> {
        let mut b = b.mtu(link.mtu);
        if let Some(mac) = link.mac {
            b = b.address(mac.0.to_vec());
        }
        if link.up {
            b = b.up();
        }
        b
    }
    match &link.kind {
        LinkKind::Vxlan(v) => {
            let mut b = LinkVxlan::new(&link.name, v.vni)
                .port(v.port)
                .learning(v.learning);
            b = match v.local {
                IpAddr::V4(ip) => b.local(ip),
                IpAddr::V6(ip) => b.local6(ip),
            };
            if v.underlay_index != 0 {
                b = b.dev(v.underlay_index);
            }
            if v.gbp {
                b = b.gbp();
            }
            common(b, link).build()
        }
        LinkKind::Ipip { local } => common(LinkIpIp::new(&link.name).local(*local), link).build(),
        // Key and port follow through generic netlink (`wg_ops::configure_device`).
        LinkKind::Wireguard(_) => common(LinkWireguard::new(&link.name), link).build(),
    }
}

async fn set_link(handle: &Handle, index: u32, link: &Link) -> OpResult {
    // VXLAN takes a new MAC while up (IFF_LIVE_ADDR_CHANGE); IPIP has none to set.
    let mut b = LinkUnspec::new_with_index(index).mtu(link.mtu);
    if let Some(mac) = link.mac {
        b = b.address(mac.0.to_vec());
    }
    let msg = if link.up { b.up() } else { b.down() }.build();
    ok_if(handle.link().set(msg).execute().await, &[])
}

async fn address_op(handle: &Handle, index: u32, op: &Op) -> OpResult {
    match op {
        Op::AddAddress(a) => add_address(handle, index, a).await,
        Op::DeleteAddress(a) => delete_address(handle, index, a).await,
        _ => Err(Failure::other(format!(
            "{} in an address batch",
            op.label()
        ))),
    }
}

/// The request for a neighbour, FDB or route op on link `index`, with the errnos that mean
/// the kernel already holds what the op wants.
fn entry_request(index: u32, op: &Op) -> Result<(Request, &'static [i32]), Failure> {
    let (message, flags, benign): (RouteNetlinkMessage, u16, &'static [i32]) = match op {
        // `ip neigh replace IP lladdr MAC dev D nud permanent`
        Op::AddNeighbour(n) | Op::ReplaceNeighbour(n) => {
            let mut msg = neighbour_message(index, n.ip);
            msg.attributes
                .push(NeighbourAttribute::LinkLayerAddress(n.mac.0.to_vec()));
            (
                RouteNetlinkMessage::NewNeighbour(msg),
                NLM_F_CREATE | NLM_F_REPLACE,
                &[],
            )
        }
        Op::DeleteNeighbour(n) => (
            RouteNetlinkMessage::DelNeighbour(neighbour_message(index, n.ip)),
            0,
            &[libc::ENOENT, libc::ENODEV],
        ),
        // `bridge fdb replace` (create, or point the entry at this destination). A unicast
        // entry has exactly one remote (the kernel ignores `append` for it). The all-zero MAC
        // is the list of default destinations for unknown MACs, which holds several remotes:
        // `append` to it.
        Op::AddFdb(f) | Op::ReplaceFdb(f) => {
            let flags = if f.mac.is_zero() {
                NLM_F_CREATE | NLM_F_APPEND
            } else {
                NLM_F_CREATE | NLM_F_REPLACE
            };
            (
                RouteNetlinkMessage::NewNeighbour(fdb_message(index, f, true)),
                flags,
                &[],
            )
        }
        // Deletes the whole entry (every remote); for the all-zero MAC only our remote.
        Op::DeleteFdb(f) => (
            RouteNetlinkMessage::DelNeighbour(fdb_message(index, f, f.mac.is_zero())),
            0,
            &[libc::ENOENT, libc::ENODEV],
        ),
        Op::AddRoute(r) | Op::ReplaceRoute(r) => (
            RouteNetlinkMessage::NewRoute(route_message(index, r)?),
            NLM_F_CREATE | NLM_F_REPLACE,
            &[],
        ),
        Op::DeleteRoute(r) => (
            RouteNetlinkMessage::DelRoute(route_delete_message(r)?),
            0,
            &[libc::ESRCH],
        ),
        _ => return Err(Failure::other(format!("{} in an entry batch", op.label()))),
    };
    Ok((Request::new(message, flags), benign))
}

async fn add_address(handle: &Handle, index: u32, a: &Address) -> OpResult {
    let mut req = handle.address().add(index, a.addr.ip(), a.addr.prefix());
    if a.addr.is_ipv6() {
        // Our own /128 on our own device: duplicate address detection would only delay it.
        req.message_mut()
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    ok_if(req.execute().await, &[libc::EEXIST])
}

async fn delete_address(handle: &Handle, index: u32, a: &Address) -> OpResult {
    let msg = match a.addr.ip() {
        IpAddr::V4(ip) => AddressMessageBuilder::<std::net::Ipv4Addr>::new()
            .index(index)
            .address(ip, a.addr.prefix())
            .build(),
        IpAddr::V6(ip) => AddressMessageBuilder::<std::net::Ipv6Addr>::new()
            .index(index)
            .address(ip, a.addr.prefix())
            .build(),
    };
    ok_if(
        handle.address().del(msg).execute().await,
        &[libc::EADDRNOTAVAIL, libc::ENODEV],
    )
}

/// A permanent neighbour entry for `ip` on link `index`.
fn neighbour_message(index: u32, ip: IpAddr) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family_of(ip);
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Permanent;
    msg.header.kind = RouteType::Unspec;
    msg.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::from(ip)));
    msg
}

fn family_of(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// An FDB message on a VXLAN device (`bridge fdb ... dev D self permanent`).
fn fdb_message(index: u32, f: &Fdb, with_dst: bool) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Permanent;
    msg.header.flags = NeighbourFlags::Own;
    msg.header.kind = RouteType::Unspec;
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(f.mac.0.to_vec()));
    if with_dst {
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::from(
                f.dst,
            )));
    }
    msg
}

fn invalid(e: impl fmt::Display) -> Failure {
    Failure::other(format!("invalid route: {e}"))
}

/// `ip route replace DST via GW dev DEV [onlink] proto 116`, or without a gateway
/// `ip route replace DST dev DEV scope link proto 116`.
fn route_message(index: u32, r: &Route) -> Result<RouteMessage, Failure> {
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(r.dst.network(), r.dst.prefix())
        .map_err(invalid)?;
    b = match r.gateway {
        Some(gw) => b.gateway(gw).map_err(invalid)?,
        None => b.scope(RouteScope::Link),
    };
    let mut b = b
        .output_interface(index)
        .protocol(RouteProtocol::from(ROUTE_PROTOCOL));
    if r.onlink {
        b = b.onlink();
    }
    Ok(b.build())
}

/// Deletes by destination and protocol only: never another protocol's route to the same
/// prefix, and also our route when its device or gateway is not what we think.
fn route_delete_message(r: &Route) -> Result<RouteMessage, Failure> {
    Ok(RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(r.dst.network(), r.dst.prefix())
        .map_err(invalid)?
        .protocol(RouteProtocol::from(ROUTE_PROTOCOL))
        .scope(RouteScope::NoWhere)
        .kind(RouteType::Unspec)
        .build())
}

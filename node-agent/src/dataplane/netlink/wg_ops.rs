//! The WireGuard half of reading and applying: devices' keys, ports and peers live behind
//! generic netlink ([`super::wireguard`]), not rtnetlink. The reader fills in what a link dump
//! cannot tell about a `flannel-wg*` device; the executor sets a new device's key and port and
//! runs the peer ops of a batch, one request (or a few, for thousands of peers) per device.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime};

use super::wireguard::{WgDeviceState, WgError, WgPeerConfig, WgPeerState, WgSocket};
use crate::dataplane::desired::{self, KernelState, LinkKind, WgPeer};
use crate::dataplane::diff::Op;
use crate::wg_key::{WgKey, WgSecret};

/// Where a peer the kernel holds has no endpoint: differs from every desired one.
const NO_ENDPOINT: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);

/// A device as the diff compares it: its settings (as its link kind) and its peers.
pub fn device_kind(dev: &WgDeviceState) -> LinkKind {
    LinkKind::Wireguard(desired::Wireguard {
        // No key yet: the all-zero key, which no desired device has.
        private_key: WgSecret(dev.private_key.unwrap_or_default()),
        listen_port: dev.listen_port,
    })
}

pub fn peer(link: &str, p: &WgPeerState) -> WgPeer {
    WgPeer {
        link: link.to_string(),
        public_key: WgKey(p.public_key),
        endpoint: p.endpoint.unwrap_or(NO_ENDPOINT),
        allowed_ips: p.allowed_ips.clone(),
        keepalive: p.persistent_keepalive,
        psk: p.preshared_key.map(WgSecret),
    }
}

fn config(p: &WgPeer) -> WgPeerConfig {
    WgPeerConfig {
        public_key: p.public_key.0,
        preshared_key: p.psk.map(|k| k.0),
        endpoint: p.endpoint,
        persistent_keepalive: p.keepalive,
        allowed_ips: p.allowed_ips.clone(),
    }
}

/// How long a handshake keeps a session alive (WireGuard's REJECT_AFTER_TIME): a peer that
/// shook hands within it is talking to us, wherever from.
const SESSION: Duration = Duration::from_secs(180);

/// Peers (device, key) with a live session: WireGuard moved each one's endpoint to where its
/// last authenticated packet came from (roaming: NAT, a second address). Such an endpoint is
/// not drift, and resetting it to the advertised one would break a working path (flannel too
/// sets endpoints only when a Node changes).
pub type LivePeers = HashSet<(String, WgKey)>;

fn is_live(p: &WgPeerState, now: SystemTime) -> bool {
    p.last_handshake
        .and_then(|t| now.duration_since(t).ok())
        .is_some_and(|ago| ago < SESSION)
}

/// Take the desired endpoint for every live peer of `actual`, so the diff leaves roamed
/// endpoints alone; a peer without a session is still put back where its Node says, and so
/// is one whose Node advertises a new endpoint since the last applied state (`known`; none
/// known, as after a restart: nothing changed as far as this run can tell).
pub fn keep_roamed(
    actual: &mut KernelState,
    desired: &KernelState,
    known: Option<&KernelState>,
    live: &LivePeers,
) {
    for (key, got) in actual.wg_peers.iter_mut() {
        let Some(want) = desired.wg_peers.get(key).filter(|_| live.contains(key)) else {
            continue;
        };
        let moved = known
            .and_then(|k| k.wg_peers.get(key))
            .is_some_and(|k| k.endpoint != want.endpoint);
        if !moved {
            got.endpoint = want.endpoint;
        }
    }
}

/// Read device `name` into `state` (its peers) and `live` (those with a session); its kind,
/// or `None` when there is no such device.
fn read_device(
    socket: &mut WgSocket,
    name: &str,
    state: &mut KernelState,
    live: &mut LivePeers,
) -> Result<Option<LinkKind>, WgError> {
    let Some(dev) = socket.device(name)? else {
        return Ok(None);
    };
    let now = SystemTime::now();
    for p in &dev.peers {
        if is_live(p, now) {
            live.insert((name.to_string(), WgKey(p.public_key)));
        }
        state.add_wg_peer(peer(name, p));
    }
    Ok(Some(device_kind(&dev)))
}

/// The names of the WireGuard devices among `state`'s links.
fn wireguard_links(state: &KernelState) -> Vec<String> {
    state
        .links
        .values()
        .filter(|l| matches!(l.kind, LinkKind::Wireguard(_)))
        .map(|l| l.name.clone())
        .collect()
}

/// Fill in the WireGuard devices of a dump: their kind from the device's key and port, and
/// their peers; `live` gets the peers with a session. A device that vanished since the link
/// dump is left with the placeholder kind (the diff recreates it); one that cannot be read
/// fails the read.
pub fn read_devices(state: &mut KernelState, live: &mut LivePeers) -> Result<(), WgError> {
    let names = wireguard_links(state);
    if names.is_empty() {
        return Ok(());
    }
    let mut socket = WgSocket::open()?;
    for name in names {
        if let Some(kind) = read_device(&mut socket, &name, state, live)? {
            if let Some(link) = state.links.get_mut(&name) {
                link.kind = kind;
            }
        }
    }
    Ok(())
}

/// Give a device just created its key and port.
pub fn configure_device(name: &str, w: &desired::Wireguard) -> Result<(), WgError> {
    WgSocket::open()?.set_device(name, &w.private_key.0, w.listen_port)
}

/// Why a peer op failed: the kernel's errno if it refused, and what to tell the user.
pub type PeerOpFailure = (Option<i32>, String);

/// Run a batch of peer ops (all sets, or all deletes), grouped by device. Each op's outcome:
/// a device's request failing fails every op on that device.
pub fn run_peer_ops(ops: &[Op]) -> Vec<Result<(), PeerOpFailure>> {
    let mut by_link: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, op) in ops.iter().enumerate() {
        if let Some(p) = wg_peer(op) {
            by_link.entry(&p.link).or_default().push(i);
        }
    }
    let failure = |e: &WgError| (e.errno(), e.to_string());
    let mut results: Vec<Result<(), PeerOpFailure>> = ops
        .iter()
        .map(|_| Err((None, "not a WireGuard peer op".to_string())))
        .collect();
    let mut socket = match WgSocket::open() {
        Ok(s) => s,
        Err(e) => return ops.iter().map(|_| Err(failure(&e))).collect(),
    };
    for (link, idx) in by_link {
        let peers: Vec<&WgPeer> = idx.iter().filter_map(|&i| wg_peer(&ops[i])).collect();
        let r = if matches!(ops[idx[0]], Op::DeleteWgPeer(_)) {
            let keys: Vec<[u8; 32]> = peers.iter().map(|p| p.public_key.0).collect();
            match socket.remove_peers(link, &keys) {
                // The device is gone, and its peers with it.
                Err(e) if e.errno() == Some(libc::ENODEV) => Ok(()),
                r => r,
            }
        } else {
            let new: Vec<bool> = idx
                .iter()
                .map(|&i| matches!(ops[i], Op::AddWgPeer(_)))
                .collect();
            set_prompting(&mut socket, link, &peers, &new)
        };
        for &i in &idx {
            results[i] = r.as_ref().map(|_| ()).map_err(failure);
        }
    }
    results
}

/// Set `peers`, prompting a handshake with each new one (`new`): the kernel sends a
/// keepalive, which starts a handshake, when a peer's persistent keepalive goes from off to on.
/// During a switch the peer that learns of the other first may have its handshake refused
/// (the other does not know it yet), and WireGuard retries only after 5 s; the other side's
/// prompt, once it adds us, completes the handshake at once. A new peer whose keepalive is off
/// gets 1 s and then off again, in a second request.
fn set_prompting(
    socket: &mut WgSocket,
    link: &str,
    peers: &[&WgPeer],
    new: &[bool],
) -> Result<(), WgError> {
    let mut configs: Vec<WgPeerConfig> = peers.iter().map(|p| config(p)).collect();
    let mut off_again = Vec::new();
    for (c, &is_new) in configs.iter_mut().zip(new) {
        if is_new && c.persistent_keepalive == 0 {
            c.persistent_keepalive = 1;
            off_again.push(WgPeerConfig {
                persistent_keepalive: 0,
                ..c.clone()
            });
        }
    }
    socket.set_peers(link, &configs)?;
    if off_again.is_empty() {
        return Ok(());
    }
    socket.set_peers(link, &off_again)
}

fn wg_peer(op: &Op) -> Option<&WgPeer> {
    match op {
        Op::AddWgPeer(p) | Op::ReplaceWgPeer(p) | Op::DeleteWgPeer(p) => Some(p),
        _ => None,
    }
}

/// How often the WireGuard devices are compared with what they should hold. WireGuard sends
/// no notification when a peer is removed or changed (`wg set`), so the drift monitor asks.
pub const POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// Whether the kernel's WireGuard devices differ from `expected` (a device missing, another
/// key or port, a peer missing, changed or extra; a live peer's roamed endpoint is not a
/// difference, as for a full pass: [`keep_roamed`]). `Err` when a device cannot be read.
pub fn drifted(socket: &mut WgSocket, expected: &KernelState) -> Result<bool, WgError> {
    let mut got = KernelState::default();
    let mut live = LivePeers::new();
    for name in wireguard_links(expected) {
        let kind = read_device(socket, &name, &mut got, &mut live)?;
        if kind.as_ref() != expected.links.get(&name).map(|l| &l.kind) {
            return Ok(true);
        }
    }
    keep_roamed(&mut got, expected, Some(expected), &live);
    Ok(got.wg_peers != expected.wg_peers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(endpoint: &str) -> KernelState {
        let mut k = KernelState::default();
        k.add_wg_peer(WgPeer {
            link: "flannel-wg".into(),
            public_key: WgKey([1; 32]),
            endpoint: endpoint.parse().unwrap(),
            allowed_ips: vec!["10.244.2.0/24".parse().unwrap()],
            keepalive: 0,
            psk: None,
        });
        k
    }

    #[test]
    fn a_live_peer_keeps_its_roamed_endpoint_until_its_node_moves() {
        let live: LivePeers = [("flannel-wg".to_string(), WgKey([1; 32]))].into();
        let desired = state("192.168.50.12:51820");
        // Roamed behind NAT: left alone, also when nothing is known (after a restart).
        for known in [Some(&desired), None] {
            let mut actual = state("203.0.113.7:40000");
            keep_roamed(&mut actual, &desired, known, &live);
            assert_eq!(actual, desired);
        }
        // Without a session: put back where the Node says.
        let mut actual = state("203.0.113.7:40000");
        keep_roamed(&mut actual, &desired, Some(&desired), &LivePeers::new());
        assert_ne!(actual, desired);
        // The Node advertises a new address: set it, session or not.
        let mut actual = state("203.0.113.7:40000");
        let before = state("192.168.50.13:51820");
        keep_roamed(&mut actual, &desired, Some(&before), &live);
        assert_ne!(actual, desired);
    }
}

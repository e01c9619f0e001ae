//! A Node's annotations as the API delivers them (`metadata.annotations`, a JSON object of
//! strings), read the way the agent reads peers (`annotations::parse_peer`) and its own Node
//! (`public_ip_override`, `advertised_vtep_macs`). An accepted peer has usable VXLAN data
//! (VNI in range, unicast MAC, non-zero port) or WireGuard data (a non-zero key, a non-zero
//! port), and advertising what was read then reading it
//! back gives the same peer, so trellis and flannel nodes keep agreeing on each other.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use trellis_agent::annotations::{
    advertised_vtep_macs, is_managed, parse_peer, public_ip_override, Advertisement,
    AnnotationKeys, BackendData, PeerAnnotations, PeerBackend, VxlanData, WireguardData,
};
use trellis_agent::config::MAX_VNI;
use trellis_agent::net::DEFAULT_VXLAN_PORT;

fn check_vxlan(d: &VxlanData) {
    assert!(d.vni <= MAX_VNI, "{d:?}");
    assert!(!d.vtep_mac.is_multicast() && !d.vtep_mac.is_zero(), "{d:?}");
    assert_ne!(d.port, Some(0), "{d:?}");
    // What we advertise for it reads back the same (the default port is left implicit).
    let again = VxlanData::parse("backend-data", &d.to_json()).expect("own JSON parses");
    let normalised = VxlanData {
        port: d.port.filter(|p| *p != DEFAULT_VXLAN_PORT),
        ..*d
    };
    assert_eq!(again, normalised, "{}", d.to_json());
}

fn check_wireguard(d: &WireguardData) {
    assert!(!d.public_key.is_zero(), "{d:?}");
    assert_ne!(d.port, Some(0), "{d:?}");
    let again = WireguardData::parse("backend-data", &d.to_json()).expect("own JSON parses");
    assert_eq!(&again, d, "{}", d.to_json());
}

/// Advertise `peer` the way our own agent would, then read it back as a peer.
fn round_trip(keys: &AnnotationKeys, peer: &PeerAnnotations) {
    let (v4, v6) = match peer.backend {
        PeerBackend::Vxlan { v4, v6 } => (v4.map(BackendData::Vxlan), v6.map(BackendData::Vxlan)),
        PeerBackend::Wireguard { v4, v6 } => (
            v4.map(BackendData::Wireguard),
            v6.map(BackendData::Wireguard),
        ),
        _ => (None, None),
    };
    let ad = Advertisement {
        backend_type: peer.backend.kind(),
        data_v4: v4,
        data_v6: v6,
        public_ip: peer.public_ip,
        public_ipv6: peer.public_ipv6,
    };
    let annotations = ad.to_annotations(keys);
    assert!(is_managed(keys, &annotations));
    let again = match parse_peer(keys, &annotations) {
        Ok(p) => p,
        Err(e) => panic!("own advertisement {annotations:?} of {peer:?} does not parse: {e}"),
    };
    // Backend data is only written next to the family's public IP; the default port is implicit.
    let keep = |d: Option<VxlanData>, has_ip: bool| {
        d.filter(|_| has_ip).map(|d| VxlanData {
            port: d.port.filter(|p| *p != DEFAULT_VXLAN_PORT),
            ..d
        })
    };
    let expected = PeerAnnotations {
        backend: match peer.backend {
            PeerBackend::Vxlan { v4, v6 } => PeerBackend::Vxlan {
                v4: keep(v4, peer.public_ip.is_some()),
                v6: keep(v6, peer.public_ipv6.is_some()),
            },
            PeerBackend::Wireguard { v4, v6 } => PeerBackend::Wireguard {
                v4: v4.filter(|_| peer.public_ip.is_some()),
                v6: v6.filter(|_| peer.public_ipv6.is_some()),
            },
            other => other,
        },
        ..*peer
    };
    assert_eq!(again, expected, "through {annotations:?}");
}

fuzz_target!(|data: &[u8]| {
    let Ok(annotations) = serde_json::from_slice::<BTreeMap<String, String>>(data) else {
        return;
    };
    let keys = AnnotationKeys::default();
    let _ = is_managed(&keys, &annotations);
    let _ = advertised_vtep_macs(&keys, &annotations);
    if let Err(e) = public_ip_override(&keys, &annotations) {
        let _ = e.to_string();
    }
    let peer = match parse_peer(&keys, &annotations) {
        Ok(p) => p,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let _ = peer.backend.to_string();
    match &peer.backend {
        PeerBackend::Vxlan { v4, v6 } => v4.iter().chain(v6).for_each(check_vxlan),
        PeerBackend::Wireguard { v4, v6 } => v4.iter().chain(v6).for_each(check_wireguard),
        _ => {}
    }
    round_trip(&keys, &peer);
});

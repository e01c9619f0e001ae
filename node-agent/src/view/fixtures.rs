//! Builders for tests across the crate: a local lease and peer Nodes shaped like real ones.

use crate::annotations::{Advertisement, AnnotationKeys, BackendData, VxlanData, WireguardData};
use crate::config::{BackendType, NetConfig};
use crate::net::Mac;
use crate::wg_key::WgKey;

use super::{ClusterView, LocalLease, NodeInfo, Underlay};

pub const LOCAL_MAC: Mac = Mac([0x02, 0xaa, 0, 0, 0, 0x01]);
pub const LOCAL_MAC6: Mac = Mac([0x02, 0xaa, 0, 0, 0, 0x06]);

/// Node `local` on 192.168.1.1/24 (eth0, index 2, MTU 1500) with 10.244.1.0/24 and
/// fd00:10:244:1::/64.
pub fn lease() -> LocalLease {
    LocalLease {
        node_name: "local".into(),
        subnet_v4: Some("10.244.1.0/24".parse().unwrap()),
        subnet_v6: Some("fd00:10:244:1::/64".parse().unwrap()),
        public_ip_v4: Some("192.168.1.1".parse().unwrap()),
        public_ip_v6: Some("fd00:192::1".parse().unwrap()),
        public_ip_override_v4: None,
        public_ip_override_v6: None,
        underlay: Underlay {
            name: "eth0".into(),
            index: 2,
            mtu: 1500,
            addr_v4: Some("192.168.1.1/24".parse().unwrap()),
            addr_v6: Some("fd00:192::1/64".parse().unwrap()),
            routes: Vec::new(),
        },
        vtep_mac_v4: LOCAL_MAC,
        vtep_mac_v6: LOCAL_MAC6,
        wg_key: None,
        wireguard_kernel: true,
    }
}

pub fn config(json: &str) -> NetConfig {
    match NetConfig::parse(json) {
        Ok(p) => p.config,
        Err(e) => panic!("{json}: {e}"),
    }
}

pub fn vxlan_config() -> NetConfig {
    config(r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}"#)
}

pub fn dual_config(backend: &str) -> NetConfig {
    config(&format!(
        r#"{{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:10:244::/56", "Backend": {backend}}}"#
    ))
}

pub fn view() -> ClusterView {
    ClusterView::new(lease(), AnnotationKeys::default())
}

/// The MAC peer number `i` advertises.
pub fn peer_mac(i: u32) -> Mac {
    let b = i.to_be_bytes();
    Mac([0x0a, 0x58, b[0], b[1], b[2], b[3]])
}

/// The WireGuard public key peer number `i` advertises (any 32 bytes will do as a key to
/// plan with).
pub fn peer_wg_key(i: u32) -> WgKey {
    let mut k = [0x11; 32];
    k[..4].copy_from_slice(&i.to_be_bytes());
    WgKey(k)
}

/// Peer `node-<i>`: see [`PeerSpec::subnet`]; public IP 192.168.1.<i> (on our segment), or
/// 172.16.<i/256>.<i%256> when `remote` or i > 254.
pub struct PeerSpec {
    pub i: u32,
    pub backend: &'static str,
    pub remote: bool,
    pub vni: u32,
    pub dual: bool,
    pub created: Option<i64>,
}

impl PeerSpec {
    pub fn new(i: u32, backend: &'static str) -> Self {
        PeerSpec {
            i,
            backend,
            remote: false,
            vni: 1,
            dual: false,
            created: None,
        }
    }

    pub fn remote(mut self) -> Self {
        self.remote = true;
        self
    }

    pub fn vni(mut self, vni: u32) -> Self {
        self.vni = vni;
        self
    }

    pub fn dual(mut self) -> Self {
        self.dual = true;
        self
    }

    pub fn name(&self) -> String {
        format!("node-{}", self.i)
    }

    /// 10.244.<i>.0/24 below 256, else 10.<i/256>.<i%256>.0/24 (needs Network 10.0.0.0/8).
    pub fn subnet(&self) -> String {
        if self.i < 256 {
            format!("10.244.{}.0/24", self.i)
        } else {
            format!("10.{}.{}.0/24", self.i / 256, self.i % 256)
        }
    }

    pub fn public_ip(&self) -> String {
        if self.remote || self.i > 254 {
            format!("172.16.{}.{}", self.i / 256, self.i % 256)
        } else {
            format!("192.168.1.{}", self.i % 256)
        }
    }

    /// The `backend-data` of one family: VXLAN's, WireGuard's (with [`peer_wg_key`] and
    /// flannel's default port), else none.
    fn data(&self, backend: BackendType, vxlan: VxlanData) -> Option<BackendData> {
        match backend {
            BackendType::Vxlan => Some(BackendData::Vxlan(vxlan)),
            BackendType::Wireguard => Some(BackendData::Wireguard(WireguardData {
                public_key: peer_wg_key(self.i),
                port: Some(51820),
            })),
            _ => None,
        }
    }

    /// The Node with the annotations flannel writes for such a peer.
    pub fn node(&self) -> NodeInfo {
        let backend_type: BackendType = self.backend.parse().expect("a known backend");
        let vxlan = |vtep_mac| VxlanData {
            vni: self.vni,
            vtep_mac,
            port: None,
        };
        let mut cidrs = vec![self.subnet()];
        let mut v6 = None;
        if self.dual {
            cidrs.push(format!("fd00:10:244:{:x}::/64", self.i));
            v6 = Some(format!("fd00:192::{:x}", self.i).parse().unwrap());
        }
        let mut mac_v6 = peer_mac(self.i);
        mac_v6.0[1] = 0x66;
        let a = Advertisement {
            backend_type,
            data_v4: self.data(backend_type, vxlan(peer_mac(self.i))),
            data_v6: self.data(backend_type, vxlan(mac_v6)),
            public_ip: Some(self.public_ip().parse().unwrap()),
            public_ipv6: v6,
        }
        .to_annotations(&AnnotationKeys::default());
        NodeInfo {
            name: self.name(),
            pod_cidrs: cidrs,
            annotations: a,
            created_unix: self.created,
        }
    }
}

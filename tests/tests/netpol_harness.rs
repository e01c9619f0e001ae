//! The NetworkPolicy harness itself, without policies: a 3-node vxlan cluster, 2 namespaces
//! × 2 pods each serving TCP, UDP (and SCTP where the kernel has it) on 80 and 81; with no
//! NetworkPolicy everything reaches everything. Needs root and the workspace binaries
//! (hack/test.sh builds them), like the other end-to-end tests.

use std::time::{Duration, Instant};

use trellis_e2e::netpol::harness::{upstream_layout, NetpolCluster, Options};
use trellis_e2e::netpol::model::{PodRef, Protocol};
use trellis_e2e::netpol::probe::kernel_supports;

#[test]
fn without_policies_every_pod_reaches_every_pod() {
    assert!(trellis_testkit::is_root(), "end-to-end tests need root");
    let (nss, pods) = upstream_layout(&["x", "y"], &["a", "b"]);
    let t0 = Instant::now();
    let c = NetpolCluster::up(
        Options {
            tag: "nph".into(),
            // Enabled, but no policy selects any pod: nothing may be denied.
            network_policy: true,
            probe_bin: Some(env!("CARGO_BIN_EXE_netpol-probe").into()),
            ..Default::default()
        },
        &nss,
        &pods,
    )
    .expect("netpol cluster up");
    eprintln!(
        "cluster with {} pods up in {:?}",
        c.pods.len(),
        t0.elapsed()
    );
    assert_eq!(c.pod_ids(), ["x/a", "x/b", "y/a", "y/b"]);
    // Round-robin: 4 pods over 3 nodes.
    let nodes: Vec<usize> = c.pods.iter().map(|p| p.node).collect();
    assert_eq!(nodes, [0, 1, 2, 0]);

    let all = c.matrix(true);
    for (proto, port) in [(Protocol::Tcp, 80), (Protocol::Udp, 81)] {
        let t = Instant::now();
        let m = c
            .wait_for_matrix(proto, port, &all, Duration::from_secs(10), false)
            .unwrap_or_else(|report| panic!("{report}"));
        eprintln!("{proto}/{port} matrix in {:?}:\n{m}", t.elapsed());
    }

    let (xa, xb, yb) = (
        PodRef::new("x", "a"),
        PodRef::new("x", "b"),
        PodRef::new("y", "b"),
    );
    // SCTP where the kernel has it (this development host has none: probes say so).
    let m = c.probe_matrix(Protocol::Sctp, 80).expect("probe");
    if kernel_supports(Protocol::Sctp) {
        assert!(m.all(true), "{m}");
    } else {
        assert!(m.all(false), "{m}");
        assert!(
            m.note(&xa, &xb).unwrap_or_default().starts_with("error"),
            "{:?}",
            m.note(&xa, &xb)
        );
    }

    // The probe tells a dead server from a live one: nothing listens on 82.
    let m = c.probe_matrix(Protocol::Tcp, 82).expect("probe");
    assert!(m.all(false), "{m}");
    assert!(
        m.note(&xa, &yb).unwrap_or_default().starts_with("refused"),
        "{:?}",
        m.note(&xa, &yb)
    );
}

//! `bench-agent`: the throughput half of `hack/bench-agent.sh`. Builds a two-node cluster in
//! namespaces with the netns harness (real agents, real plugin), then measures TCP throughput
//! with iperf3 pod-to-pod across the nodes and node-to-node on the same underlay, interleaved
//! so machine noise hits both alike. Prints one `BENCH {json}` line per sample.
//!
//!   bench-agent throughput BACKEND SECONDS REPS      (BACKEND: vxlan | host-gw | wireguard)
//!   bench-agent handshake REPS
//!
//! `handshake` (WireGuard, so in the VM: `hack/bench-wireguard.sh`): node-1's agent runs, then
//! node-2's starts; the time until node-1's `trellis-agent status` shows a handshake with
//! node-2's key. The agent prompts a handshake with each new peer, so no traffic is needed.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::json;
use trellis_e2e::bench::iperf;
use trellis_e2e::netns_cluster::{Cluster, Options};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [cmd, reps] = args.as_slice() {
        if cmd == "handshake" {
            let result = reps
                .parse::<u32>()
                .map_err(|e| format!("REPS: {e}"))
                .and_then(handshake);
            return match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("bench-agent: {e}");
                    ExitCode::FAILURE
                }
            };
        }
    }
    let parsed = match args.as_slice() {
        [cmd, backend, secs, reps] if cmd == "throughput" => secs
            .parse::<u32>()
            .ok()
            .zip(reps.parse::<u32>().ok())
            .map(|(s, r)| (backend.clone(), s, r)),
        _ => None,
    };
    let Some((backend, secs, reps)) = parsed else {
        eprintln!(
            "usage: bench-agent throughput vxlan|host-gw|wireguard SECONDS REPS\n       bench-agent handshake REPS"
        );
        return ExitCode::from(2);
    };
    match throughput(&backend, secs, reps) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

fn throughput(backend: &str, secs: u32, reps: u32) -> Result<(), String> {
    let tag = match backend {
        "vxlan" => "bvx",
        "wireguard" => "bwg",
        _ => "bhg",
    };
    let mut c = Cluster::up(Options {
        nodes: 2,
        backend: json!({ "Type": backend }).to_string(),
        tag: tag.into(),
        agent_args: vec![],
        ..Default::default()
    })?;
    c.start_agents()?;
    c.wait_all_ready(Duration::from_secs(60))?;
    // Ready means programmed with the peers known so far: wait for each node's route to the other.
    for (me, other) in [(0, 1), (1, 0)] {
        // WireGuard routes the whole pod network through its device instead.
        let want = match backend {
            "wireguard" => "10.244.0.0/16 dev flannel-wg".to_string(),
            _ => c.nodes[other].pod_cidr.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !c.nodes[me]
            .ns
            .exec(&["ip", "route", "show", "proto", "116"])
            .unwrap_or_default()
            .contains(&want)
        {
            if Instant::now() > deadline {
                return Err(format!("node-{} never routed {want}", me + 1));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let a = c.add_pod(0)?;
    let b = c.add_pod(1)?;
    let node_b_ip = c.nodes[1].ip.to_string();
    for rep in 0..reps {
        // Alternate which path goes first so slow drifts of the machine do not favour one.
        let order: [&str; 2] = if rep % 2 == 0 {
            ["node", "pod"]
        } else {
            ["pod", "node"]
        };
        for path in order {
            let (server, client, ip) = if path == "node" {
                (&c.nodes[1].ns, &c.nodes[0].ns, node_b_ip.as_str())
            } else {
                (&b.ns, &a.ns, b.ip.as_str())
            };
            let bps = iperf(server, client, ip, secs)?;
            println!(
                "BENCH {}",
                json!({"backend": backend, "path": path, "rep": rep, "bits_per_second": bps})
            );
        }
    }
    Ok(())
}

/// New Node to first WireGuard handshake, `reps` times, each in a fresh cluster.
fn handshake(reps: u32) -> Result<(), String> {
    let agent = trellis_e2e::netns_cluster::locate_binary("trellis-agent", "TRELLIS_AGENT_BIN")?;
    let agent = agent.display().to_string();
    for rep in 0..reps {
        let mut c = Cluster::up(Options {
            nodes: 2,
            backend: json!({ "Type": "wireguard" }).to_string(),
            tag: "bhs".into(),
            agent_args: vec![],
            ..Default::default()
        })?;
        c.start_agent(0)?;
        c.wait_ready(0, Duration::from_secs(60))?;
        let t0 = Instant::now();
        c.start_agent(1)?;
        let deadline = t0 + Duration::from_secs(60);
        loop {
            let status = c.nodes[0]
                .ns
                .exec(&[&agent, "status"])
                .unwrap_or_else(|e| e);
            let shaken = status.lines().any(|l| {
                l.trim_start().starts_with("peer ")
                    && l.contains(" handshake ")
                    && !l.contains("no handshake")
            });
            if shaken {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("no handshake within 60 s:\n{status}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let ms = t0.elapsed().as_millis() as u64;
        println!(
            "BENCH {}",
            json!({"what": "new_node_to_handshake", "rep": rep, "ms": ms})
        );
    }
    Ok(())
}

//! `netns-cluster up|down`: the demo's cluster in network namespaces — an
//! underlay, the API emulator, N nodes each running trellis-agent, two pods
//! per node through the trellis plugin — left running until `down`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use trellis_e2e::netns_cluster::{teardown, Cluster, Detached, Options, Pod};

const USAGE: &str = "usage: netns-cluster up [--dir DIR] [--nodes N] [--backend vxlan|host-gw]\n       netns-cluster down [--dir DIR]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut dir = PathBuf::from("/tmp/trellis-demo");
    let mut nodes = 3usize;
    let mut backend = "vxlan".to_string();
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let v = it.next();
        match (a.as_str(), v) {
            ("--dir", Some(v)) => dir = PathBuf::from(v),
            ("--nodes", Some(v)) => nodes = v.parse().unwrap_or(3),
            ("--backend", Some(v)) => backend = v.clone(),
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    match args.first().map(String::as_str) {
        Some("up") => match up(dir, nodes, &backend) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("netns-cluster: {e}");
                ExitCode::FAILURE
            }
        },
        Some("down") => {
            down(&dir);
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn down(dir: &std::path::Path) {
    let state = dir.join("state.json");
    if let Ok(text) = std::fs::read_to_string(&state) {
        if let Ok(d) = serde_json::from_str::<Detached>(&text) {
            teardown(&d);
        }
    }
    let _ = std::fs::remove_dir_all(dir);
    println!("cluster removed ({})", dir.display());
}

fn up(dir: PathBuf, nodes: usize, backend: &str) -> Result<(), String> {
    down(&dir);
    println!("== starting the API emulator and {nodes} node namespaces ({backend})");
    let mut c = Cluster::up_in(
        Options {
            nodes,
            backend: format!(r#"{{"Type":"{backend}"}}"#),
            tag: "trellis-demo".into(),
            agent_args: vec![],
            ..Default::default()
        },
        dir.clone(),
        None,
    )?;
    let t0 = Instant::now();
    c.start_agents()?;
    c.wait_all_ready(Duration::from_secs(60))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !c.fully_routed() {
        if Instant::now() > deadline {
            return Err("nodes did not program each other within 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "   all agents ready and every node routes every other node in {:?}",
        t0.elapsed()
    );
    println!("\n== kubectl get nodes (against the emulator)");
    print!("{}", c.kubectl(&["get", "nodes", "-o", "wide"])?);

    let mut pods: Vec<Pod> = Vec::new();
    for n in 0..nodes {
        for _ in 0..2 {
            pods.push(c.add_pod(n)?);
        }
    }
    println!("\n== pods (made by the trellis CNI plugin)");
    for p in &pods {
        println!("   {:<6} node-{}  {}", p.name, p.node + 1, p.ip);
    }
    println!("\n== cross-node ping (first pod of each node -> every pod)");
    let mut failures = 0;
    for a in pods.iter().step_by(2) {
        let row: Vec<String> = pods
            .iter()
            .map(|b| {
                if a.name == b.name {
                    " -- ".into()
                } else if a.ping(&b.ip) {
                    " ok ".into()
                } else {
                    failures += 1;
                    "FAIL".into()
                }
            })
            .collect();
        println!("   {:<6} {}", a.name, row.join(" "));
    }
    for i in 0..nodes {
        println!("\n== node-{} : trellis-agent status", i + 1);
        let agent =
            trellis_e2e::netns_cluster::locate_binary("trellis-agent", "TRELLIS_AGENT_BIN")?;
        let out = c.nodes[i]
            .ns
            .exec(&[&agent.display().to_string(), "status"])
            .unwrap_or_else(|e| e);
        print!("{out}");
    }
    let detached = c.detach(&pods);
    let state = serde_json::to_string_pretty(&detached).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("state.json"), state).map_err(|e| e.to_string())?;
    println!(
        "\nleft running; logs in {}/node-*/agent.log; remove with: sudo hack/demo.sh down",
        dir.display()
    );
    if failures > 0 {
        return Err(format!("{failures} pings failed"));
    }
    Ok(())
}

//! `trellis-agent status`: what this node should have (from the running
//! agent) next to what the kernel has (read now), entry by entry, with
//! anything missing or foreign-but-ours flagged.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

use crate::dataplane::desired::KernelState;

/// One line per kernel object, in `ip`-like words: equal lines mean equal objects.
pub fn describe(k: &KernelState) -> Vec<String> {
    let mut out = Vec::new();
    out.extend(k.links.values().map(|l| format!("link  {l}")));
    out.extend(k.addresses.iter().map(|a| format!("addr  {a}")));
    out.extend(k.neighbours.values().map(|n| format!("neigh {n}")));
    out.extend(k.fdb.values().map(|f| format!("fdb   {f}")));
    out.extend(k.routes.values().map(|r| format!("route {r}")));
    out
}

/// Compare desired lines with actual lines: (present, missing, unexpected).
pub fn compare(desired: &[String], actual: &[String]) -> (Vec<String>, Vec<String>, Vec<String>) {
    let a: BTreeSet<&String> = actual.iter().collect();
    let d: BTreeSet<&String> = desired.iter().collect();
    let present = desired.iter().filter(|l| a.contains(l)).cloned().collect();
    let missing = desired.iter().filter(|l| !a.contains(l)).cloned().collect();
    let extra = actual.iter().filter(|l| !d.contains(l)).cloned().collect();
    (present, missing, extra)
}

fn fetch(addr: SocketAddr, path: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| {
            format!(
                "cannot reach the agent at {addr}: {e} (is trellis-agent running on this node?)"
            )
        })?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: trellis\r\n\r\n").map_err(|e| e.to_string())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).map_err(|e| e.to_string())?;
    buf.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .ok_or_else(|| "malformed answer from the agent".into())
}

pub fn main(addr: SocketAddr) -> ExitCode {
    let snapshot: Value = match fetch(addr, "/debug/state")
        .and_then(|b| serde_json::from_str(&b).map_err(|e| e.to_string()))
    {
        Ok(v) => v,
        Err(e) => {
            eprintln!("status: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("status: {e}");
            return ExitCode::FAILURE;
        }
    };
    let actual = rt.block_on(async {
        let dp = crate::dataplane::netlink::Dataplane::new().map_err(|e| e.to_string())?;
        dp.read_actual().await.map_err(|e| e.to_string())
    });
    let actual = match actual {
        Ok(k) => describe(&k),
        Err(e) => {
            eprintln!("status: cannot read the kernel: {e}");
            return ExitCode::FAILURE;
        }
    };
    let s = |k: &str| snapshot[k].as_str().unwrap_or("").to_string();
    println!("node      {}", s("node"));
    println!("backend   {}", s("backend"));
    println!("lease     {}", s("lease"));
    println!("underlay  {}", s("underlay"));
    println!("mtu       {}", snapshot["mtu"]);
    println!("converged {}", snapshot["converged"]);
    println!("peers     {}", snapshot["peers"]);
    if let Some(skipped) = snapshot["skipped"].as_array() {
        for sk in skipped {
            println!(
                "  skipped {}: {}",
                sk["node"].as_str().unwrap_or("?"),
                sk["reason"].as_str().unwrap_or("?")
            );
        }
    }
    if let Some(failing) = snapshot["peer_errors"].as_array() {
        for e in failing {
            println!(
                "  REFUSED {}: {}",
                e["entry"].as_str().unwrap_or("?"),
                e["error"].as_str().unwrap_or("?")
            );
        }
    }
    println!("\nsubnet.env\n{}", s("subnet_env").trim_end());
    let desired: Vec<String> = snapshot["kernel"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| l.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let (present, missing, extra) = compare(&desired, &actual);
    println!(
        "\nkernel ({} desired, {} present, {} missing, {} not desired)",
        desired.len(),
        present.len(),
        missing.len(),
        extra.len()
    );
    for l in &present {
        println!("  ok      {l}");
    }
    for l in &missing {
        println!("  MISSING {l}");
    }
    for l in &extra {
        println!("  STALE   {l}");
    }
    println!("\nfirewall ({})", s("firewall_backend"));
    for l in s("firewall").lines() {
        println!("  {l}");
    }
    if !s("firewall_drift").is_empty() {
        println!("  DRIFT   {}", s("firewall_drift"));
    }
    if missing.is_empty() && extra.is_empty() && snapshot["converged"] == Value::Bool(true) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_flags_missing_and_stale() {
        let d = vec!["route a".to_string(), "route b".to_string()];
        let a = vec!["route b".to_string(), "route c".to_string()];
        let (p, m, e) = compare(&d, &a);
        assert_eq!(p, vec!["route b"]);
        assert_eq!(m, vec!["route a"]);
        assert_eq!(e, vec!["route c"]);
    }
}

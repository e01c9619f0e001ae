//! `netpol-probe`: the server and the client of the NetworkPolicy conformance suite, run
//! inside pods' network namespaces (`ip netns exec POD netpol-probe …`).
//!
//! - `serve --name x/a [--ports 80,81] [--protocols tcp,udp,sctp] [--until-stdin-eof]`:
//!   listens on `0.0.0.0` and `::` on every port × protocol and answers every connection
//!   (TCP, SCTP) or datagram (UDP) with one line, the pod's identity. A protocol the kernel
//!   lacks is skipped with a note on stderr. Prints `ready` on stdout once all are bound.
//!   With `--until-stdin-eof` it exits when its stdin closes (its harness is gone).
//! - `probe [--timeout-ms 1000] proto:ip:port...`: probes all targets at once and prints a
//!   JSON line per target, in order:
//!   `{"target":"tcp:10.244.1.3:80","ok":true,"kind":"connected","peer":"x/b","ms":1.2}`.

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use trellis_e2e::netpol::model::Protocol;
use trellis_e2e::netpol::probe::{parse_ports, parse_protocols, probe_all, Server, Target};

const USAGE: &str = "usage: netpol-probe serve --name NS/POD [--ports 80,81] [--protocols tcp,udp,sctp] [--until-stdin-eof]\n       netpol-probe probe [--timeout-ms 1000] proto:ip:port...";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("serve") => serve(&args[1..]),
        Some("probe") => probe(&args[1..]),
        Some("-h" | "--help") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => Err(USAGE.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netpol-probe: {e}");
            ExitCode::from(2)
        }
    }
}

/// `--key value` or `--key=value`.
fn take_value<'a>(
    arg: &'a str,
    key: &str,
    it: &mut impl Iterator<Item = &'a String>,
) -> Option<Result<&'a str, String>> {
    if arg == key {
        Some(
            it.next()
                .map(String::as_str)
                .ok_or_else(|| format!("{key} needs a value")),
        )
    } else {
        arg.strip_prefix(key)
            .and_then(|r| r.strip_prefix('='))
            .map(Ok)
    }
}

fn serve(args: &[String]) -> Result<(), String> {
    let mut name = None;
    let mut ports = vec![80, 81];
    let mut protocols = Protocol::ALL.to_vec();
    let mut until_eof = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if let Some(v) = take_value(a, "--name", &mut it) {
            name = Some(v?.to_string());
        } else if let Some(v) = take_value(a, "--ports", &mut it) {
            ports = parse_ports(v?)?;
        } else if let Some(v) = take_value(a, "--protocols", &mut it) {
            protocols = parse_protocols(v?)?;
        } else if a == "--until-stdin-eof" {
            until_eof = true;
        } else {
            return Err(format!("serve: unexpected {a:?}\n{USAGE}"));
        }
    }
    let name = name.ok_or_else(|| format!("serve needs --name\n{USAGE}"))?;
    let (server, notes) = Server::bind(&name, &ports, &protocols)?;
    for n in notes {
        eprintln!("netpol-probe serve: {n}");
    }
    let handles = server.spawn();
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready").and_then(|()| out.flush()).ok();
    drop(out);
    if until_eof {
        let mut sink = [0u8; 256];
        let mut stdin = std::io::stdin().lock();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        return Ok(());
    }
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

fn probe(args: &[String]) -> Result<(), String> {
    let mut timeout = Duration::from_millis(1000);
    let mut targets = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if let Some(v) = take_value(a, "--timeout-ms", &mut it) {
            let v = v?;
            timeout =
                Duration::from_millis(v.parse().map_err(|e| format!("--timeout-ms {v:?}: {e}"))?);
        } else if a.starts_with("--") {
            return Err(format!("probe: unexpected {a:?}\n{USAGE}"));
        } else {
            targets.push(a.parse::<Target>()?);
        }
    }
    if targets.is_empty() {
        return Err(format!("probe needs at least one target\n{USAGE}"));
    }
    let mut out = std::io::stdout().lock();
    for r in probe_all(&targets, timeout) {
        writeln!(out, "{}", r.to_json_line()).map_err(|e| e.to_string())?;
    }
    out.flush().map_err(|e| e.to_string())
}

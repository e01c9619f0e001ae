//! Liveness and readiness probes: the plan (pure, from the container's
//! `Probe`) and its execution. HTTP and TCP probes run from inside the
//! node's network namespace on a thread of their own (setns changes only
//! the calling thread), so a hostNetwork pod's 127.0.0.1 listener is
//! reachable like kubelet reaches it; exec probes go through CRI ExecSync.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::fields::only_known;
use super::TranslateError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeAction {
    /// GET `path` on `host:port` (host `None`: the pod IP); 200-399 passes.
    HttpGet {
        host: Option<String>,
        port: u16,
        path: String,
    },
    Tcp {
        host: Option<String>,
        port: u16,
    },
    /// Run in the container through CRI ExecSync; exit 0 passes.
    Exec {
        command: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbePlan {
    pub action: ProbeAction,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

const PROBE_FIELDS: &[&str] = &[
    "httpGet",
    "tcpSocket",
    "exec",
    "initialDelaySeconds",
    "periodSeconds",
    "timeoutSeconds",
    "successThreshold",
    "failureThreshold",
];

/// The plan for one probe, with the API's defaults (period 10 s, timeout
/// 1 s, thresholds 1 and 3).
pub fn plan(probe: &Probe, container: &Container, path: &str) -> Result<ProbePlan, TranslateError> {
    only_known(probe, path, PROBE_FIELDS)?;
    let secs =
        |v: Option<i32>, default: u64| Duration::from_secs(v.map_or(default, |s| s.max(0) as u64));
    let count = |v: Option<i32>, default: u32| v.map_or(default, |n| n.max(1) as u32);
    Ok(ProbePlan {
        action: action(probe, container, path)?,
        initial_delay: secs(probe.initial_delay_seconds, 0),
        period: secs(probe.period_seconds, 10),
        timeout: secs(probe.timeout_seconds, 1),
        success_threshold: count(probe.success_threshold, 1),
        failure_threshold: count(probe.failure_threshold, 3),
    })
}

fn action(probe: &Probe, c: &Container, path: &str) -> Result<ProbeAction, TranslateError> {
    if let Some(h) = &probe.http_get {
        let field = format!("{path}.httpGet");
        only_known(h, &field, &["host", "path", "port", "scheme"])?;
        if h.scheme.as_deref().is_some_and(|s| s != "HTTP") {
            return Err(TranslateError::Unsupported {
                field: format!("{field}.scheme={}", h.scheme.as_deref().unwrap_or("")),
            });
        }
        return Ok(ProbeAction::HttpGet {
            host: h.host.clone(),
            port: port(&h.port, c, &format!("{field}.port"))?,
            path: h.path.clone().unwrap_or_else(|| "/".into()),
        });
    }
    if let Some(t) = &probe.tcp_socket {
        let field = format!("{path}.tcpSocket");
        only_known(t, &field, &["host", "port"])?;
        return Ok(ProbeAction::Tcp {
            host: t.host.clone(),
            port: port(&t.port, c, &format!("{field}.port"))?,
        });
    }
    match probe.exec.as_ref().and_then(|e| e.command.clone()) {
        Some(command) if !command.is_empty() => Ok(ProbeAction::Exec { command }),
        _ => Err(TranslateError::Invalid {
            field: path.to_string(),
            reason: "probe has no httpGet, tcpSocket or exec action".into(),
        }),
    }
}

/// A numeric port, or a named one looked up in the container's ports.
fn port(p: &IntOrString, c: &Container, field: &str) -> Result<u16, TranslateError> {
    let number = match p {
        IntOrString::Int(n) => Some(*n),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|cp| cp.name.as_deref() == Some(name.as_str()))
            .map(|cp| cp.container_port),
    };
    number
        .and_then(|n| u16::try_from(n).ok())
        .filter(|n| *n != 0)
        .ok_or_else(|| TranslateError::Invalid {
            field: field.to_string(),
            reason: format!("{p:?} is not a port number or a named container port"),
        })
}

/// Runs a network probe (HTTP or TCP) from inside the network namespace at
/// `netns` (e.g. `/run/netns/<node>`), against `default_host` when the probe
/// names none. Blocks for at most about `timeout`; returns Err with the
/// reason on failure, like kubelet's probe output.
pub fn run_network_probe(
    action: &ProbeAction,
    netns: &Path,
    default_host: &str,
    timeout: Duration,
) -> Result<(), String> {
    let action = action.clone();
    let netns: PathBuf = netns.to_path_buf();
    let default_host = default_host.to_string();
    let handle = std::thread::Builder::new()
        .name("probe".into())
        .spawn(move || {
            enter_netns(&netns)?;
            match action {
                ProbeAction::HttpGet { host, port, path } => {
                    http_get(&host.unwrap_or(default_host), port, &path, timeout)
                }
                ProbeAction::Tcp { host, port } => {
                    connect(&host.unwrap_or(default_host), port, timeout).map(drop)
                }
                ProbeAction::Exec { .. } => Err("exec probes run through CRI".into()),
            }
        })
        .map_err(|e| format!("cannot start a probe thread: {e}"))?;
    handle
        .join()
        .map_err(|_| "probe thread panicked".to_string())?
}

fn enter_netns(path: &Path) -> Result<(), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("setns {}: {e}", path.display()))
}

fn connect(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, String> {
    let ip: std::net::IpAddr = host
        .parse()
        .map_err(|_| format!("probe host {host:?} is not an IP address"))?;
    let addr = SocketAddr::new(ip, port);
    TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("dial {addr}: {e}"))
}

fn http_get(host: &str, port: u16, path: &str, timeout: Duration) -> Result<(), String> {
    let mut stream = connect(host, port, timeout)?;
    let io = |e: std::io::Error| format!("GET http://{host}:{port}{path}: {e}");
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/trellis-e2e\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).map_err(io)?;
    let status = parse_status(&head[..n])
        .ok_or_else(|| format!("GET http://{host}:{port}{path}: no HTTP status line"))?;
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {status}"))
    }
}

/// The status code of an `HTTP/1.x NNN ...` line.
fn parse_status(head: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(head).ok()?;
    let mut parts = text.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerPort, HTTPGetAction};

    #[test]
    fn daemonset_liveness_probe_plan() {
        let probe = Probe {
            http_get: Some(HTTPGetAction {
                host: Some("127.0.0.1".into()),
                path: Some("/healthz".into()),
                port: IntOrString::String("health".into()),
                ..Default::default()
            }),
            initial_delay_seconds: Some(10),
            period_seconds: Some(10),
            timeout_seconds: Some(3),
            failure_threshold: Some(6),
            ..Default::default()
        };
        let container = Container {
            ports: Some(vec![ContainerPort {
                name: Some("health".into()),
                container_port: 9402,
                ..Default::default()
            }]),
            ..Default::default()
        };
        let plan = plan(&probe, &container, "p").expect("valid");
        assert_eq!(
            plan.action,
            ProbeAction::HttpGet {
                host: Some("127.0.0.1".into()),
                port: 9402,
                path: "/healthz".into()
            }
        );
        assert_eq!(plan.initial_delay, Duration::from_secs(10));
        assert_eq!(plan.timeout, Duration::from_secs(3));
        assert_eq!((plan.success_threshold, plan.failure_threshold), (1, 6));
    }

    #[test]
    fn unhonourable_probes_are_named() {
        let grpc = Probe {
            grpc: Some(Default::default()),
            ..Default::default()
        };
        let err = plan(
            &grpc,
            &Container::default(),
            "spec.containers[0].livenessProbe",
        )
        .expect_err("grpc");
        assert_eq!(
            err.to_string(),
            "spec.containers[0].livenessProbe.grpc: not supported by the test node driver"
        );
        let https = Probe {
            http_get: Some(HTTPGetAction {
                scheme: Some("HTTPS".into()),
                port: IntOrString::Int(1),
                ..Default::default()
            }),
            ..Default::default()
        };
        let err = plan(&https, &Container::default(), "p").expect_err("https");
        assert_eq!(
            err.to_string(),
            "p.httpGet.scheme=HTTPS: not supported by the test node driver"
        );
    }

    #[test]
    fn status_line_parsing() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.0 503 x"), Some(503));
        assert_eq!(parse_status(b"SSH-2.0"), None);
    }
}

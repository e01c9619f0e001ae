//! Probes between pods: what `netpol-probe` serves and sends (the socket code lives here so
//! that it can be unit-tested on loopback), the JSON lines it prints, and running one source
//! pod's probes through `ip netns exec`. Who reached whom is a [`super::matrix::Matrix`].
//!
//! A probe is `proto:ip:port` ([`Target`]); it is [`ProbeResult::ok`] only when the server's
//! reply (its identity, e.g. `x/b`) came back. A connection a policy denies is rejected with
//! ICMP admin-prohibited, which a TCP connect or a connected UDP socket sees as
//! `EHOSTUNREACH` ([`Kind::Unreachable`]); a silent drop is a [`Kind::Timeout`].

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::Command;
use std::str::FromStr;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{self as sock, sockopt, AddressFamily, SockFlag, SockProtocol, SockType};
use serde::{Deserialize, Serialize};

use super::model::Protocol;

/// Parses `tcp,udp` (empty items ignored).
pub fn parse_protocols(s: &str) -> Result<Vec<Protocol>, String> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(str::parse)
        .collect()
}

/// Parses `80,81` (empty items ignored).
pub fn parse_ports(s: &str) -> Result<Vec<u16>, String> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().map_err(|e| format!("port {p:?}: {e}")))
        .collect()
}

/// What to probe: `tcp:10.244.1.3:80`, `udp:[fd00::3]:81` (IPv6 also unbracketed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Target {
    pub protocol: Protocol,
    pub addr: SocketAddr,
}

impl Target {
    pub fn new(protocol: Protocol, ip: IpAddr, port: u16) -> Target {
        Target {
            protocol,
            addr: SocketAddr::new(ip, port),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.protocol.lowercase(), self.addr)
    }
}

impl FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?}: expected proto:ip:port");
        let (proto, rest) = s.split_once(':').ok_or_else(bad)?;
        let (ip, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let ip = ip.trim_start_matches('[').trim_end_matches(']');
        let ip: IpAddr = ip.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let port: u16 = port.parse().map_err(|e| format!("{s:?}: port: {e}"))?;
        Ok(Target::new(proto.parse()?, ip, port))
    }
}

/// How a probe ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Connected (TCP, SCTP) or answered (UDP). `ok` says whether the identity came back.
    Connected,
    /// `ECONNREFUSED`: a TCP reset or ICMP port unreachable (nothing listens, or a reject
    /// with a reset).
    Refused,
    /// `EHOSTUNREACH`, `ENETUNREACH`, `EACCES`, `EPERM`: an ICMP error such as
    /// admin-prohibited, no route, or a local filter.
    Unreachable,
    /// Nothing came back in time (a silent drop, or loss).
    Timeout,
    /// Anything else, e.g. SCTP unsupported by the kernel.
    Error,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Connected => "connected",
            Kind::Refused => "refused",
            Kind::Unreachable => "unreachable",
            Kind::Timeout => "timeout",
            Kind::Error => "error",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One JSON line of `netpol-probe probe`:
/// `{"target":"tcp:10.244.1.3:80","ok":true,"kind":"connected","peer":"x/b","ms":1.2}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeResult {
    pub target: String,
    /// A reply carrying the server's identity came back.
    pub ok: bool,
    pub kind: Kind,
    /// The identity the server answered with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// Time from the first packet to the reply or failure, in milliseconds.
    pub ms: f64,
    /// The error, for anything but a clean success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl ProbeResult {
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).expect("a ProbeResult serializes")
    }

    /// `connected x/b 1.2ms`, `unreachable 0.3ms (No route to host)`: for reports.
    pub fn summary(&self) -> String {
        let mut s = self.kind.to_string();
        if let Some(p) = &self.peer {
            s.push(' ');
            s.push_str(p);
        }
        s.push_str(&format!(" {:.1}ms", self.ms));
        if let Some(d) = &self.detail {
            s.push_str(&format!(" ({d})"));
        }
        s
    }
}

/// The JSON lines `netpol-probe probe` printed (blank lines skipped).
pub fn parse_results(stdout: &str) -> Result<Vec<ProbeResult>, String> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| format!("probe output {l:?}: {e}")))
        .collect()
}

/// Runs `bin probe --timeout-ms T TARGET...` inside the network namespace `netns`
/// (`ip netns exec`); one result per target, in the targets' order.
pub fn run_in_netns(
    bin: &Path,
    netns: &str,
    targets: &[Target],
    timeout: Duration,
) -> Result<Vec<ProbeResult>, String> {
    if targets.is_empty() {
        return Ok(Vec::new());
    }
    let mut c = Command::new("ip");
    c.args(["netns", "exec", netns])
        .arg(bin)
        .args(["probe", "--timeout-ms", &timeout.as_millis().to_string()])
        .args(targets.iter().map(Target::to_string));
    let out = c
        .output()
        .map_err(|e| format!("ip netns exec {netns} {}: {e}", bin.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "netpol-probe in {netns} failed ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let results = parse_results(&stdout)?;
    // Match by target text: the binary keeps the order, but do not depend on it.
    let mut by_target: BTreeMap<String, ProbeResult> =
        results.into_iter().map(|r| (r.target.clone(), r)).collect();
    targets
        .iter()
        .map(|t| {
            by_target
                .remove(&t.to_string())
                .ok_or_else(|| format!("netpol-probe in {netns} printed no result for {t}"))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The client side of `netpol-probe probe`.

fn errno_kind(e: &io::Error) -> Kind {
    if matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    ) {
        return Kind::Timeout;
    }
    match e.raw_os_error().map(Errno::from_raw) {
        Some(Errno::ECONNREFUSED) => Kind::Refused,
        Some(
            Errno::EHOSTUNREACH
            | Errno::ENETUNREACH
            | Errno::EACCES
            | Errno::EPERM
            | Errno::EHOSTDOWN,
        ) => Kind::Unreachable,
        Some(Errno::ETIMEDOUT | Errno::EAGAIN | Errno::EINPROGRESS) => Kind::Timeout,
        _ => Kind::Error,
    }
}

fn ms(since: Instant) -> f64 {
    (since.elapsed().as_secs_f64() * 1000.0 * 100.0).round() / 100.0
}

fn failed(t: &Target, kind: Kind, start: Instant, detail: String) -> ProbeResult {
    ProbeResult {
        target: t.to_string(),
        ok: false,
        kind,
        peer: None,
        ms: ms(start),
        detail: Some(detail),
    }
}

/// Sends the probe for `t` and waits at most `timeout` for its reply.
pub fn probe(t: &Target, timeout: Duration) -> ProbeResult {
    let start = Instant::now();
    let deadline = start + timeout;
    match t.protocol {
        Protocol::Tcp => match TcpStream::connect_timeout(&t.addr, timeout) {
            Ok(s) => read_identity(t, s, start, deadline),
            Err(e) => failed(t, errno_kind(&e), start, e.to_string()),
        },
        Protocol::Sctp => match sctp_connect(&t.addr, timeout) {
            Ok(s) => read_identity(t, s, start, deadline),
            Err(e) => failed(t, errno_kind(&e), start, format!("sctp: {e}")),
        },
        Protocol::Udp => probe_udp(t, start, deadline),
    }
}

/// Probes every target at once (a thread each); results in the targets' order.
pub fn probe_all(targets: &[Target], timeout: Duration) -> Vec<ProbeResult> {
    std::thread::scope(|s| {
        let handles: Vec<_> = targets
            .iter()
            .map(|t| s.spawn(move || probe(t, timeout)))
            .collect();
        handles
            .into_iter()
            .zip(targets)
            .map(|(h, t)| {
                h.join().unwrap_or_else(|_| {
                    failed(t, Kind::Error, Instant::now(), "probe panicked".into())
                })
            })
            .collect()
    })
}

fn remaining(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
}

/// After a stream connected: the server's one line.
fn read_identity(t: &Target, mut s: TcpStream, start: Instant, deadline: Instant) -> ProbeResult {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 256];
    let err = loop {
        let Some(left) = remaining(deadline) else {
            break Some("connected, but no reply in time".to_string());
        };
        if let Err(e) = s.set_read_timeout(Some(left)) {
            break Some(e.to_string());
        }
        match s.read(&mut chunk) {
            Ok(0) => break None,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.contains(&b'\n') || buf.len() > 1024 {
                    break None;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Some(format!("connected, then: {e}")),
        }
    };
    let line = String::from_utf8_lossy(&buf);
    let peer = line.lines().next().unwrap_or("").trim().to_string();
    let ok = !peer.is_empty();
    ProbeResult {
        target: t.to_string(),
        ok,
        kind: Kind::Connected,
        peer: ok.then_some(peer),
        ms: ms(start),
        detail: if ok {
            None
        } else {
            Some(err.unwrap_or_else(|| "connected, but the reply was empty".into()))
        },
    }
}

/// How many datagrams a UDP probe sends, spread over its timeout (UDP can be lost).
const UDP_TRIES: u32 = 3;

fn probe_udp(t: &Target, start: Instant, deadline: Instant) -> ProbeResult {
    let local: SocketAddr = match t.addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = match UdpSocket::bind(local).and_then(|s| s.connect(t.addr).map(|()| s)) {
        Ok(s) => s,
        Err(e) => return failed(t, errno_kind(&e), start, e.to_string()),
    };
    let total = deadline.saturating_duration_since(start);
    let mut buf = [0u8; 1024];
    for i in 0..UDP_TRIES {
        let Some(_) = remaining(deadline) else { break };
        // An ICMP error for an earlier datagram can surface on this send.
        if let Err(e) = sock.send(b"probe\n") {
            if errno_kind(&e) != Kind::Timeout {
                return failed(t, errno_kind(&e), start, e.to_string());
            }
        }
        let next = if i + 1 == UDP_TRIES {
            deadline
        } else {
            (start + total * (i + 1) / UDP_TRIES).min(deadline)
        };
        while let Some(left) = remaining(next) {
            if let Err(e) = sock.set_read_timeout(Some(left)) {
                return failed(t, Kind::Error, start, e.to_string());
            }
            match sock.recv(&mut buf) {
                Ok(n) => {
                    let peer = String::from_utf8_lossy(&buf[..n])
                        .lines()
                        .next()
                        .unwrap_or("")
                        .trim()
                        .to_string();
                    let ok = !peer.is_empty();
                    return ProbeResult {
                        target: t.to_string(),
                        ok,
                        kind: Kind::Connected,
                        peer: ok.then_some(peer),
                        ms: ms(start),
                        detail: (!ok).then(|| "an empty reply".to_string()),
                    };
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let kind = errno_kind(&e);
                    if kind != Kind::Timeout {
                        return failed(t, kind, start, e.to_string());
                    }
                    break;
                }
            }
        }
    }
    failed(
        t,
        Kind::Timeout,
        start,
        format!("no reply to {UDP_TRIES} datagrams"),
    )
}

/// `socket(AF_INET*, SOCK_STREAM, IPPROTO_SCTP)`; `EPROTONOSUPPORT` where the kernel has none.
fn stream_socket(addr: &SocketAddr, protocol: Protocol) -> io::Result<OwnedFd> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let (ty, proto) = match protocol {
        Protocol::Tcp => (SockType::Stream, SockProtocol::Tcp),
        Protocol::Sctp => (SockType::Stream, SockProtocol::Sctp),
        Protocol::Udp => (SockType::Datagram, SockProtocol::Udp),
    };
    sock::socket(family, ty, SockFlag::SOCK_CLOEXEC, proto).map_err(io::Error::from)
}

/// A one-to-one SCTP association, driven like a TCP stream (std only reads and writes it).
fn sctp_connect(addr: &SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let fd = stream_socket(addr, Protocol::Sctp)?;
    // A blocking connect gives up after SO_SNDTIMEO (EINPROGRESS).
    let tv = nix::sys::time::TimeVal::new(
        timeout.as_secs() as i64,
        timeout.subsec_micros() as nix::libc::suseconds_t,
    );
    sock::setsockopt(&fd, sockopt::SendTimeout, &tv).map_err(io::Error::from)?;
    let sa = sock::SockaddrStorage::from(*addr);
    sock::connect(fd.as_raw_fd(), &sa).map_err(io::Error::from)?;
    Ok(TcpStream::from(fd))
}

// ---------------------------------------------------------------------------------------------
// The server side of `netpol-probe serve`.

enum Listener {
    Stream(Protocol, TcpListener),
    Datagram(UdpSocket),
}

/// Bound listeners answering every probe with the pod's identity.
pub struct Server {
    identity: String,
    listeners: Vec<Listener>,
}

/// Binds `addr` for `protocol`; IPv6 sockets are v6-only so that `0.0.0.0` and `::` coexist.
fn bind_one(addr: SocketAddr, protocol: Protocol) -> io::Result<OwnedFd> {
    let fd = stream_socket(&addr, protocol)?;
    sock::setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(io::Error::from)?;
    if addr.is_ipv6() {
        sock::setsockopt(&fd, sockopt::Ipv6V6Only, &true).map_err(io::Error::from)?;
    }
    let sa = sock::SockaddrStorage::from(addr);
    sock::bind(fd.as_raw_fd(), &sa).map_err(io::Error::from)?;
    if protocol != Protocol::Udp {
        sock::listen(&fd, sock::Backlog::new(128).map_err(io::Error::from)?)
            .map_err(io::Error::from)?;
    }
    Ok(fd)
}

/// Whether this kernel has `protocol` over IPv4 (pods share the host's kernel). SCTP needs
/// the `sctp` module, which not every kernel has; its probes then end in [`Kind::Error`].
pub fn kernel_supports(protocol: Protocol) -> bool {
    let any = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    !matches!(stream_socket(&any, protocol), Err(e) if unsupported(&e))
}

fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::EPROTONOSUPPORT | Errno::ESOCKTNOSUPPORT | Errno::EAFNOSUPPORT)
    )
}

impl Server {
    /// Binds `0.0.0.0` and, where the namespace has IPv6, `::` on every port × protocol. A
    /// protocol (or IPv6) the kernel does not support is skipped with a note (returned); any
    /// other failure is an error. Port 0 binds an ephemeral port (see [`Server::local_addrs`]).
    pub fn bind(
        identity: &str,
        ports: &[u16],
        protocols: &[Protocol],
    ) -> Result<(Server, Vec<String>), String> {
        let mut notes = Vec::new();
        let mut listeners = Vec::new();
        let mut skip_v6 = false;
        'proto: for &proto in protocols {
            for &port in ports {
                let v4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
                let fd = match bind_one(v4, proto) {
                    Ok(fd) => fd,
                    Err(e) if unsupported(&e) => {
                        notes.push(format!("{proto} not supported here ({e}): skipped"));
                        continue 'proto;
                    }
                    Err(e) => return Err(format!("{proto} {v4}: {e}")),
                };
                // The v6 socket takes the port the v4 one got (port 0 included).
                let bound = match sock::getsockname::<sock::SockaddrIn>(fd.as_raw_fd()) {
                    Ok(a) => a.port(),
                    Err(_) => port,
                };
                listeners.push(Self::listener(proto, fd));
                if skip_v6 {
                    continue;
                }
                let v6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, bound));
                match bind_one(v6, proto) {
                    Ok(fd) => listeners.push(Self::listener(proto, fd)),
                    Err(e) => {
                        notes.push(format!("{proto} {v6}: {e}: serving IPv4 only"));
                        if unsupported(&e) || e.raw_os_error() == Some(Errno::EADDRNOTAVAIL as i32)
                        {
                            skip_v6 = true;
                        }
                    }
                }
            }
        }
        Ok((
            Server {
                identity: identity.to_string(),
                listeners,
            },
            notes,
        ))
    }

    fn listener(proto: Protocol, fd: OwnedFd) -> Listener {
        match proto {
            Protocol::Udp => Listener::Datagram(UdpSocket::from(fd)),
            p => Listener::Stream(p, TcpListener::from(fd)),
        }
    }

    /// (protocol, bound address) of every listener.
    pub fn local_addrs(&self) -> Vec<(Protocol, SocketAddr)> {
        self.listeners
            .iter()
            .filter_map(|l| match l {
                Listener::Stream(p, s) => s.local_addr().ok().map(|a| (*p, a)),
                Listener::Datagram(s) => s.local_addr().ok().map(|a| (Protocol::Udp, a)),
            })
            .collect()
    }

    /// Serves on a thread per listener (and per accepted connection); they run until the
    /// process ends.
    pub fn spawn(self) -> Vec<JoinHandle<()>> {
        let id = self.identity;
        self.listeners
            .into_iter()
            .map(|l| {
                let reply = format!("{id}\n");
                std::thread::spawn(move || match l {
                    Listener::Stream(_, s) => serve_stream(s, reply),
                    Listener::Datagram(s) => serve_datagram(s, reply),
                })
            })
            .collect()
    }
}

fn serve_stream(listener: TcpListener, reply: String) {
    loop {
        match listener.accept() {
            Ok((mut s, _)) => {
                let reply = reply.clone();
                std::thread::spawn(move || {
                    let _ = s.write_all(reply.as_bytes());
                    let _ = s.shutdown(std::net::Shutdown::Write);
                    // Wait (briefly) for the client to close first, so that our close sends
                    // no reset that could destroy the reply in flight.
                    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut sink = [0u8; 64];
                    while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn serve_datagram(sock: UdpSocket, reply: String) {
    let mut buf = [0u8; 2048];
    loop {
        match sock.recv_from(&mut buf) {
            Ok((_, from)) => {
                let _ = sock.send_to(reply.as_bytes(), from);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_print() {
        let t: Target = "tcp:10.244.1.3:80".parse().unwrap();
        assert_eq!(t.protocol, Protocol::Tcp);
        assert_eq!(t.to_string(), "tcp:10.244.1.3:80");
        let t: Target = "UDP:[fd00::3]:81".parse().unwrap();
        assert_eq!(t.to_string(), "udp:[fd00::3]:81");
        let t: Target = "sctp:fd00::3:81".parse().unwrap();
        assert_eq!(t.addr.port(), 81);
        assert!("icmp:1.2.3.4:1".parse::<Target>().is_err());
        assert!("tcp:1.2.3.4".parse::<Target>().is_err());
        assert_eq!(parse_ports("80,81").unwrap(), vec![80, 81]);
        assert_eq!(
            parse_protocols("tcp,sctp").unwrap(),
            vec![Protocol::Tcp, Protocol::Sctp]
        );
    }

    #[test]
    fn tcp_and_udp_are_always_there() {
        assert!(kernel_supports(Protocol::Tcp));
        assert!(kernel_supports(Protocol::Udp));
    }

    #[test]
    fn results_round_trip() {
        let line =
            r#"{"target":"tcp:10.244.1.3:80","ok":true,"kind":"connected","peer":"x/b","ms":1.2}"#;
        let r = &parse_results(&format!("{line}\n\n"))
            .unwrap()
            .into_iter()
            .next()
            .unwrap();
        assert!(r.ok);
        assert_eq!(r.kind, Kind::Connected);
        assert_eq!(r.peer.as_deref(), Some("x/b"));
        assert_eq!(r.to_json_line(), line);
        assert!(parse_results("nonsense").is_err());
    }

    #[test]
    fn serve_and_probe_on_loopback() {
        let (server, _notes) = Server::bind("x/a", &[0], &[Protocol::Tcp, Protocol::Udp]).unwrap();
        let addrs = server.local_addrs();
        server.spawn();
        let port = |p: Protocol| {
            addrs
                .iter()
                .find(|(q, a)| *q == p && a.is_ipv4())
                .unwrap()
                .1
                .port()
        };
        let lo = IpAddr::from(Ipv4Addr::LOCALHOST);
        let targets = [
            Target::new(Protocol::Tcp, lo, port(Protocol::Tcp)),
            Target::new(Protocol::Udp, lo, port(Protocol::Udp)),
        ];
        for r in probe_all(&targets, Duration::from_secs(2)) {
            assert!(r.ok, "{r:?}");
            assert_eq!(r.peer.as_deref(), Some("x/a"));
        }
        // Nothing listens on a port that was just released: refused, fast.
        let free = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let refused = [
            Target::new(Protocol::Tcp, lo, free),
            Target::new(Protocol::Udp, lo, free),
        ];
        for r in probe_all(&refused, Duration::from_secs(2)) {
            assert!(!r.ok, "{r:?}");
            assert_eq!(r.kind, Kind::Refused, "{r:?}");
        }
    }
}

//! A Kubernetes API emulator speaking the real wire protocol over HTTPS, for tests and demos
//! where no kube-apiserver can run. It serves core/v1 Nodes (with `status`), ConfigMaps,
//! Events, Namespaces, ServiceAccounts (with the `token` subresource: TokenRequest), Pods (with
//! `status`), apps/v1 DaemonSets (with `status`), events.k8s.io/v1 Events, the four
//! rbac.authorization.k8s.io/v1 kinds and networking.k8s.io/v1 NetworkPolicies (defaulted and
//! validated, not enforced: enforcing them is the pod network's job), all from one generic
//! store and a per-kind table (`resources.rs`, `semantics.rs`): get, list (pagination,
//! selectors), watch (bookmarks, timeouts, 410 on expired versions, streaming lists), create,
//! update, delete, and merge / strategic merge / JSON patches; plus fault controls under
//! `/_emulator/` and state that survives restarts. ServiceAccount tokens are authorized by the
//! RBAC objects stored in the API, as the apiserver does; enough for `kubectl apply -k deploy`
//! and `kubectl delete -k`.
//!
//! Where it knowingly differs from kube-apiserver (each refused loudly or documented here):
//! - no controllers: a DaemonSet's status and Pods are whoever writes them (a node driver);
//!   dependents named by `ownerReferences` are deleted synchronously with their last owner,
//!   and a deleted Namespace's contents go after a short Terminating period (`namespaces.rs`);
//! - a create into a missing namespace creates it unless `EmulatorConfig::namespaces` is
//!   [`NamespacePolicy::Required`] (`--namespaces required`), the apiserver's 404;
//! - object bodies are JSON; protobuf (client-go typed clients, e.g. `kubectl create
//!   configmap`) is a 415, except a TokenRequest (`kubectl create token`);
//! - a Pod's `spec.nodeName` may be set by an update when unset, besides `pods/binding`;
//! - no server-side apply (415) and no `dryRun` (400).
//!
//! In-process use:
//! ```no_run
//! # async fn demo() -> Result<(), trellis_e2e::apiserver::EmulatorError> {
//! use trellis_e2e::apiserver::{Emulator, EmulatorConfig};
//! let emu = Emulator::start(EmulatorConfig::new("/tmp/emu")).await?;
//! let client = emu.client().await?;          // kube::Client from the emulator's kubeconfig
//! emu.faults().await?.close_watches().await?; // the same admin API shell scripts use
//! emu.shutdown().await?;                      // state written to /tmp/emu/state.json
//! # Ok(()) }
//! ```

mod admin;
mod deletion;
mod fields;
mod handlers;
mod http;
mod identity;
pub mod kubectl;
mod namespaces;
mod network_policy;
mod patch;
mod persist;
mod protobuf;
pub mod rbac;
mod resources;
mod selector;
mod semantics;
mod server;
mod status;
mod store;
mod table;
mod tokens;
mod util;
mod watch;
mod workloads;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch as tokio_watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

pub use admin::{EmulatorState, Faults};
pub use identity::CA_CERT_FILE;
pub use namespaces::NamespacePolicy;
pub use persist::STATE_FILE;
pub use store::StoreLimits;

use identity::Identity;
use server::ServerState;

pub const KUBECONFIG_FILE: &str = "kubeconfig";

#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("credentials ({path}): {reason}")]
    Credentials { path: PathBuf, reason: String },
    #[error("cannot listen on {addr}: {source} (is another emulator or apiserver using it?)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("state file {path} is unreadable: {reason}; move it away to start empty")]
    State { path: PathBuf, reason: String },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("kube client: {0}")]
    Client(String),
    #[error("admin request {op} failed: {reason}")]
    Admin { op: String, reason: String },
}

/// How to run an emulator.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Addresses to serve on (port 0 picks a free port). Default: 127.0.0.1:0.
    pub listen: Vec<SocketAddr>,
    /// Holds `kubeconfig`, `ca.crt`, `ca.key`, `token` and `state.json`.
    pub dir: PathBuf,
    /// Server URL written into the kubeconfig; default `https://<first listen address>`.
    pub server_url: Option<String>,
    /// Extra IPs or DNS names for the serving certificate (besides the listen addresses,
    /// 127.0.0.1, ::1, localhost and the server URL's host).
    pub extra_sans: Vec<String>,
    pub limits: StoreLimits,
    /// Period of BOOKMARK events on watches that asked for them (the apiserver's is ~1 min).
    pub bookmark_interval: Duration,
    /// How often changed state is written to `state.json` (and always at shutdown).
    pub persist_interval: Duration,
    /// Extra bearer tokens and the user each authenticates as (e.g.
    /// `system:serviceaccount:trellis-system:trellis`); the emulator's own token is an admin.
    pub users: Vec<(String, String)>,
    /// Enforce RBAC for the extra users with the roles and bindings of these manifests.
    pub rbac: Option<rbac::Policy>,
    /// Record every resource request per user (`GET /_emulator/audit`).
    pub audit: bool,
    /// How a streaming list (`sendInitialEvents` on a watch) is answered.
    pub watch_list: WatchList,
    /// Whether a create into a namespace that does not exist is refused (as the apiserver
    /// does) or creates the Namespace. Default: [`NamespacePolicy::Implicit`], because many
    /// tests predate Namespace objects and create ConfigMaps in namespaces they never made.
    pub namespaces: NamespacePolicy,
    /// Act as a newer apiserver, whose types have fields this emulator does not know: objects
    /// are stored with such fields instead of refusing or dropping them (what a client older
    /// than its cluster sees).
    pub newer_api: bool,
}

/// How the emulator answers a streaming list (`sendInitialEvents` on a watch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchList {
    /// Served and ended by the `k8s.io/initial-events-end` bookmark, as kube-apiserver with its
    /// WatchList feature gate on (1.32, 1.34 and later).
    Served,
    /// 422 Invalid, as kube-apiserver 1.33, whose WatchList gate is off by default.
    Refused,
    /// The parameters ignored: a plain watch whose initial events never end, as from a server
    /// or proxy that does not know them.
    Ignored,
}

impl std::str::FromStr for WatchList {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "served" => Ok(WatchList::Served),
            "refused" => Ok(WatchList::Refused),
            "ignored" => Ok(WatchList::Ignored),
            other => Err(format!("{other:?}: expected served, refused or ignored")),
        }
    }
}

impl EmulatorConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        EmulatorConfig {
            listen: vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 0))],
            dir: dir.into(),
            server_url: None,
            extra_sans: Vec::new(),
            limits: StoreLimits::default(),
            bookmark_interval: Duration::from_secs(60),
            persist_interval: Duration::from_millis(500),
            users: Vec::new(),
            rbac: None,
            audit: false,
            watch_list: WatchList::Served,
            namespaces: NamespacePolicy::Implicit,
            newer_api: false,
        }
    }
}

/// rustls needs one process-wide crypto provider for clients; the emulator uses ring.
/// Idempotent; call before building kube clients in tests.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub struct Emulator;

/// A running emulator. Dropping it stops serving (without the final state write: call
/// [`EmulatorHandle::shutdown`] for a clean stop).
pub struct EmulatorHandle {
    url: String,
    dir: PathBuf,
    kubeconfig_path: PathBuf,
    addrs: Vec<SocketAddr>,
    identity: Arc<Identity>,
    state: Arc<ServerState>,
    stop: tokio_watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

fn host_of(url: &str) -> Option<String> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split('/').next()?;
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        authority
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(authority)
    };
    (!host.is_empty()).then(|| host.to_string())
}

fn default_url(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(v) if v.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v) if v.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("https://{}", SocketAddr::new(ip, addr.port()))
}

impl Emulator {
    /// Tests' usual start: the default config in a fresh temp dir, which lives as long as
    /// the returned guard. Panics if the emulator does not start.
    pub async fn start_in_temp_dir() -> (tempfile::TempDir, EmulatorHandle) {
        let dir = tempfile::tempdir().expect("temp dir");
        let emu = Self::start(EmulatorConfig::new(dir.path()))
            .await
            .expect("emulator starts");
        (dir, emu)
    }

    /// Starts serving; resumes the objects and resourceVersion counter found in `config.dir`.
    pub async fn start(config: EmulatorConfig) -> Result<EmulatorHandle, EmulatorError> {
        let dir = config.dir.clone();
        std::fs::create_dir_all(&dir).map_err(|e| EmulatorError::Io {
            path: dir.clone(),
            source: e,
        })?;
        if config.listen.is_empty() {
            return Err(EmulatorError::Config("no listen address".into()));
        }
        let identity = Arc::new(Identity::load_or_create(&dir)?);
        let store = store::Store::new(config.limits.clone());
        let state_path = dir.join(STATE_FILE);
        if state_path.exists() {
            let bytes = std::fs::read(&state_path).map_err(|e| EmulatorError::Io {
                path: state_path.clone(),
                source: e,
            })?;
            let (rv, objects) = persist::decode(&bytes).map_err(|reason| EmulatorError::State {
                path: state_path.clone(),
                reason,
            })?;
            tracing::info!(rv, objects = objects.len(), "restored state");
            store.load(rv, objects);
        }
        namespaces::seed(&store, &identity.ca_pem)
            .map_err(|e| EmulatorError::Config(e.to_string()))?;
        let mut listeners = Vec::new();
        let mut addrs = Vec::new();
        for addr in &config.listen {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|e| EmulatorError::Bind {
                    addr: *addr,
                    source: e,
                })?;
            let local = l.local_addr().map_err(|e| EmulatorError::Bind {
                addr: *addr,
                source: e,
            })?;
            addrs.push(local);
            listeners.push(l);
        }
        let url = config
            .server_url
            .clone()
            .unwrap_or_else(|| default_url(addrs[0]));
        let mut ips: Vec<IpAddr> = addrs.iter().map(|a| a.ip()).collect();
        ips.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
        ips.push(IpAddr::V6(Ipv6Addr::LOCALHOST));
        let mut dns = Vec::new();
        for name in config.extra_sans.iter().cloned().chain(host_of(&url)) {
            match name.parse::<IpAddr>() {
                Ok(ip) => ips.push(ip),
                Err(_) => dns.push(name),
            }
        }
        let tls = identity.server_config(&ips, &dns)?;
        let (watch_epoch, _) = tokio_watch::channel(0u64);
        let state = Arc::new(ServerState {
            store,
            token: identity.token.clone(),
            faults: Default::default(),
            watch_epoch,
            open_watches: AtomicUsize::new(0),
            bookmark_interval: config.bookmark_interval,
            server_address: host_of(&url)
                .map(|h| format!("{h}:{}", addrs[0].port()))
                .unwrap_or_default(),
            state_path,
            persisted: tokio::sync::Mutex::new(u64::MAX),
            users: config.users.iter().cloned().collect(),
            rbac: config.rbac.clone(),
            audit: config.audit.then(Default::default),
            watch_list: config.watch_list,
            namespaces: config.namespaces,
            newer_api: config.newer_api,
            ca_pem: identity.ca_pem.clone(),
        });
        namespaces::resume_terminating(&state);
        state.persist().await.map_err(|e| EmulatorError::Io {
            path: state.state_path.clone(),
            source: e,
        })?;
        let kubeconfig_path = dir.join(KUBECONFIG_FILE);
        identity::write_kubeconfig(&kubeconfig_path, &identity.kubeconfig(&url))?;
        let (stop, _) = tokio_watch::channel(false);
        let mut tasks = Vec::new();
        let acceptor = TlsAcceptor::from(tls);
        for l in listeners {
            tasks.push(tokio::spawn(serve(
                l,
                acceptor.clone(),
                state.clone(),
                stop.subscribe(),
            )));
        }
        tasks.push(tokio::spawn(persister(
            state.clone(),
            config.persist_interval,
            stop.subscribe(),
        )));
        tracing::info!(
            url,
            listen = ?addrs,
            kubeconfig = %kubeconfig_path.display(),
            rv = state.store.current_rv(),
            "kube-emulator ready"
        );
        Ok(EmulatorHandle {
            url,
            dir,
            kubeconfig_path,
            addrs,
            identity,
            state,
            stop,
            tasks,
        })
    }
}

async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    state: Arc<ServerState>,
    mut stop: tokio_watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => return,
            r = listener.accept() => r,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Usually fd exhaustion: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let state = state.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            let svc = hyper::service::service_fn(move |req| server::handle(state.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(tls), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
                _ = stop.changed() => {}
            }
        });
    }
}

async fn persister(
    state: Arc<ServerState>,
    every: Duration,
    mut stop: tokio_watch::Receiver<bool>,
) {
    let mut pause = every;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        let started = std::time::Instant::now();
        match state.persist().await {
            // Whole-state writes cost time proportional to the state (50 MB at 5000 big nodes):
            // space them out so that under sustained writes persistence stays a small share of
            // the CPU, while a quiet emulator still saves within `every`.
            Ok(true) => pause = every.max(started.elapsed() * 10),
            Ok(false) => pause = every,
            Err(e) => {
                tracing::error!(path = %state.state_path.display(), error = %e, "writing state failed");
            }
        }
    }
}

impl EmulatorHandle {
    /// The server URL written into the kubeconfig.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The bound addresses (with real ports when port 0 was asked for).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    pub fn token(&self) -> &str {
        &self.identity.token
    }

    pub fn ca_pem(&self) -> &str {
        &self.identity.ca_pem
    }

    /// A kubeconfig (YAML text) pointing at `server_url`, e.g. another listen address reachable
    /// from inside a node's network namespace. Its host must be in the certificate (listen
    /// addresses and `extra_sans` are).
    pub fn kubeconfig_for(&self, server_url: &str) -> String {
        self.identity.kubeconfig(server_url)
    }

    pub fn write_kubeconfig(&self, path: &Path, server_url: &str) -> Result<(), EmulatorError> {
        identity::write_kubeconfig(path, &self.identity.kubeconfig(server_url))
    }

    /// A kube client configured from the emulator's kubeconfig.
    pub async fn client(&self) -> Result<kube::Client, EmulatorError> {
        admin::client_from_kubeconfig(&self.kubeconfig_path).await
    }

    /// A kube client authenticating with `token`, one of `EmulatorConfig::users`: its requests
    /// are audited and, with a policy loaded, authorized by RBAC.
    pub async fn client_with_token(&self, token: &str) -> Result<kube::Client, EmulatorError> {
        admin::client_with_token(&self.kubeconfig_path, token).await
    }

    /// The real kubectl, as the admin (this emulator's kubeconfig).
    pub fn kubectl(&self) -> kubectl::Kubectl {
        kubectl::Kubectl::new(&self.kubeconfig_path)
    }

    /// The admin client for fault injection (over HTTPS, like any external test driver).
    pub async fn faults(&self) -> Result<Faults, EmulatorError> {
        Ok(Faults::new(self.client().await?))
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.state.store.current_rv()
    }

    /// Stops serving: closes watches and connections, writes the state, waits for the tasks.
    pub async fn shutdown(mut self) -> Result<(), EmulatorError> {
        self.stop_tasks();
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        self.state.persist().await.map_err(|e| EmulatorError::Io {
            path: self.state.state_path.clone(),
            source: e,
        })?;
        tracing::info!(rv = self.state.store.current_rv(), "kube-emulator stopped");
        Ok(())
    }

    fn stop_tasks(&self) {
        let _ = self.stop.send(true);
        self.state.close_watches();
    }
}

impl Drop for EmulatorHandle {
    fn drop(&mut self) {
        self.stop_tasks();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_hosts() {
        assert_eq!(
            host_of("https://10.0.0.1:6443").as_deref(),
            Some("10.0.0.1")
        );
        assert_eq!(host_of("https://[::1]:6443/x").as_deref(), Some("::1"));
        assert_eq!(host_of("https://emu.local").as_deref(), Some("emu.local"));
        assert_eq!(
            default_url("0.0.0.0:7000".parse().unwrap()),
            "https://127.0.0.1:7000"
        );
    }
}

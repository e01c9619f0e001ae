//! `kube-emulator`: the Kubernetes API emulator as a standalone server for demos and shell-driven
//! tests. Writes `kubeconfig`, `ca.crt` and `state.json` into `--dir`; SIGTERM/SIGINT stop it
//! cleanly with the state written, and a restart with the same `--dir` continues where it left.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use trellis_e2e::apiserver::{Emulator, EmulatorConfig};

const USAGE: &str = "usage: kube-emulator --dir DIR [--listen IP:PORT]... [--server-url URL] [--san IP|NAME]...

  --listen IP:PORT   address to serve HTTPS on; repeatable or comma-separated (default 127.0.0.1:6443)
  --dir DIR          state directory: kubeconfig, ca.crt, ca.key, token, state.json
  --server-url URL   server written into DIR/kubeconfig (default https://<first listen address>)
  --san IP|NAME      extra subject alternative name for the serving certificate (repeatable)
  --bookmark-interval-ms N   period of watch bookmarks (default 60000)
  --persist-interval-ms N    how often changed state is written to DIR/state.json (default 500)
  --user TOKEN=NAME  an extra bearer token authenticating as user NAME (repeatable); DIR/token is an admin
  --rbac FILE        enforce RBAC for the extra users with the (Cluster)Role(Binding)s in FILE (repeatable)
  --audit            record every resource request per user: GET /_emulator/audit
  --newer-api        play an apiserver newer than this emulator: fields it does not know are stored
  --namespaces MODE  a create into a missing namespace: implicit (default: the Namespace is created)
                     or required (404 NotFound, as the apiserver)
  --watch-list MODE  streaming lists (sendInitialEvents): served (default), refused (422, as Kubernetes 1.33
                     by default) or ignored (a plain watch that never ends its initial events)

Logs go to stderr (RUST_LOG=debug logs every request). Fault controls: POST /_emulator/{close-watches,
fail?forMs=N&code=500,delay?ms=M&forMs=N,clear,compact,persist}, GET /_emulator/state (bearer token required).";

fn parse(args: Vec<String>) -> Result<EmulatorConfig, String> {
    let mut listen: Vec<SocketAddr> = Vec::new();
    let mut dir: Option<PathBuf> = None;
    let mut server_url = None;
    let mut sans = Vec::new();
    let mut bookmark_ms: Option<u64> = None;
    let mut persist_ms: Option<u64> = None;
    let mut users = Vec::new();
    let mut rbac: Option<trellis_e2e::apiserver::rbac::Policy> = None;
    let mut audit = false;
    let mut newer_api = false;
    let mut watch_list = trellis_e2e::apiserver::WatchList::Served;
    let mut namespaces = trellis_e2e::apiserver::NamespacePolicy::Implicit;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--listen" => {
                for part in value()?.split(',').filter(|p| !p.trim().is_empty()) {
                    let addr = part
                        .trim()
                        .parse()
                        .map_err(|e| format!("--listen {part}: {e} (expected IP:PORT)"))?;
                    listen.push(addr);
                }
            }
            "--dir" => dir = Some(PathBuf::from(value()?)),
            "--server-url" => server_url = Some(value()?),
            "--san" => sans.push(value()?),
            "--bookmark-interval-ms" => {
                let v = value()?;
                bookmark_ms = Some(
                    v.parse()
                        .map_err(|_| format!("--bookmark-interval-ms {v}: not a number"))?,
                );
            }
            "--persist-interval-ms" => {
                let v = value()?;
                persist_ms = Some(
                    v.parse()
                        .map_err(|_| format!("--persist-interval-ms {v}: not a number"))?,
                );
            }
            "--user" => {
                let v = value()?;
                let (token, name) = v
                    .split_once('=')
                    .filter(|(t, n)| !t.is_empty() && !n.is_empty())
                    .ok_or_else(|| format!("--user {v:?}: expected TOKEN=NAME"))?;
                users.push((token.to_string(), name.to_string()));
            }
            "--rbac" => {
                let path = PathBuf::from(value()?);
                rbac.get_or_insert_with(Default::default)
                    .add_file(&path)
                    .map_err(|e| format!("--rbac: {e}"))?;
            }
            "--audit" => audit = true,
            "--newer-api" => newer_api = true,
            "--watch-list" => {
                watch_list = value()?.parse().map_err(|e| format!("--watch-list {e}"))?
            }
            "--namespaces" => {
                namespaces = value()?.parse().map_err(|e| format!("--namespaces {e}"))?
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let dir = dir.ok_or("--dir is required")?;
    let mut cfg = EmulatorConfig::new(dir);
    if !listen.is_empty() {
        cfg.listen = listen;
    } else {
        cfg.listen = vec![SocketAddr::from(([127, 0, 0, 1], 6443))];
    }
    cfg.server_url = server_url;
    cfg.extra_sans = sans;
    cfg.users = users;
    cfg.rbac = rbac;
    cfg.audit = audit;
    cfg.watch_list = watch_list;
    cfg.namespaces = namespaces;
    cfg.newer_api = newer_api;
    if let Some(ms) = persist_ms {
        cfg.persist_interval = std::time::Duration::from_millis(ms.max(10));
    }
    if let Some(ms) = bookmark_ms {
        cfg.bookmark_interval = std::time::Duration::from_millis(ms.max(10));
    }
    Ok(cfg)
}

async fn run(cfg: EmulatorConfig) -> Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let emu = Emulator::start(cfg).await.map_err(|e| e.to_string())?;
    eprintln!(
        "kube-emulator: serving {} on {:?}; KUBECONFIG={}",
        emu.url(),
        emu.local_addrs(),
        emu.kubeconfig_path().display()
    );
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    emu.shutdown().await.map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cfg = match parse(std::env::args().skip(1).collect()) {
        Ok(c) => c,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("kube-emulator: {e}");
            }
            eprintln!("{USAGE}");
            return if e.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            };
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kube-emulator: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kube-emulator: {e}");
            ExitCode::FAILURE
        }
    }
}

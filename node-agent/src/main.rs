//! `trellis-agent`: run | install-cni | uninstall-cni | status | preflight.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use trellis_agent::install_cni::{self, ConflistSource, InstallOptions};
use trellis_agent::preflight::{self, Level};

#[derive(Parser)]
#[command(
    name = "trellis-agent",
    version,
    about = "trellis node agent: a flannel-compatible pod network"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Program this node and keep it programmed (the DaemonSet's container).
    Run(Box<trellis_agent::agent::RunArgs>),
    /// Copy the plugin into the CNI bin dir and the conflist into the conf dir, atomically.
    InstallCni {
        #[arg(long, default_value = "/usr/local/bin/trellis")]
        plugin_source: PathBuf,
        #[arg(long, default_value = install_cni::DEFAULT_BIN_DIR)]
        bin_dir: PathBuf,
        /// The conflist to install (a file, e.g. the ConfigMap's cni-conf.json).
        #[arg(long)]
        conflist: PathBuf,
        #[arg(long, default_value = install_cni::DEFAULT_CONF_DIR)]
        conf_dir: PathBuf,
        #[arg(long, default_value = install_cni::DEFAULT_CONFLIST_NAME)]
        conflist_name: String,
        /// A foreign config in the conf dir to move aside as NAME.trellis-replaced (e.g.
        /// 10-flannel.conflist when replacing flannel); repeatable or comma-separated.
        #[arg(long, env = "TRELLIS_REPLACE_CONFLISTS", value_delimiter = ',')]
        replace_conflist: Vec<String>,
    },
    /// Undo install-cni on this node (remove trellis's conflist and plugin, restore what it
    /// moved aside); with --kernel-state also trellis's devices, routes and firewall rules.
    UninstallCni(trellis_agent::uninstall_cni::UninstallArgs),
    /// Print this node's programmed state and flag anything missing.
    Status {
        /// The running agent's health address.
        #[arg(long, default_value = "127.0.0.1:9402")]
        health_addr: SocketAddr,
    },
    /// Check the node for the classic failures before installing.
    Preflight {
        #[arg(long, default_value = install_cni::DEFAULT_CONF_DIR)]
        conf_dir: PathBuf,
        #[arg(long, default_value = install_cni::DEFAULT_CONFLIST_NAME)]
        conflist_name: String,
        /// net-conf.json to take the pod network and VXLAN port from.
        #[arg(long)]
        net_conf_file: Option<PathBuf>,
        #[arg(long, default_value = "10.96.0.0/12")]
        service_cidr: ipnetwork::IpNetwork,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Run(args) => trellis_agent::agent::main(*args),
        Cmd::InstallCni {
            plugin_source,
            bin_dir,
            conflist,
            conf_dir,
            conflist_name,
            replace_conflist,
        } => {
            let mut o = InstallOptions::new(plugin_source, ConflistSource::Path(conflist));
            o.bin_dir = bin_dir;
            o.conf_dir = conf_dir;
            o.conflist_name = conflist_name;
            // An empty TRELLIS_REPLACE_CONFLISTS (the option off) or a stray comma names nothing.
            o.replace_conflists = replace_conflist
                .iter()
                .map(|n| n.trim().to_owned())
                .filter(|n| !n.is_empty())
                .collect();
            match install_cni::install(&o) {
                Ok(report) => {
                    println!("{report}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("install-cni: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::UninstallCni(args) => trellis_agent::uninstall_cni::main(args),
        Cmd::Status { health_addr } => trellis_agent::status::main(health_addr),
        Cmd::Preflight {
            conf_dir,
            conflist_name,
            net_conf_file,
            service_cidr,
        } => run_preflight(conf_dir, conflist_name, net_conf_file, service_cidr),
    }
}

fn run_preflight(
    conf_dir: PathBuf,
    conflist_name: String,
    net_conf_file: Option<PathBuf>,
    service_cidr: ipnetwork::IpNetwork,
) -> ExitCode {
    let mut facts = preflight::Facts {
        cni_confs: preflight::list_dir(&conf_dir),
        our_conflist: conflist_name,
        service_cidr: Some(service_cidr),
        udp_ports_in_use: preflight::udp_ports_in_use(),
        ..Default::default()
    };
    preflight::gather_sysctls(&mut facts);
    let conf = match net_conf_file {
        Some(p) => match std::fs::read_to_string(&p)
            .map_err(|e| e.to_string())
            .and_then(|t| trellis_agent::config::NetConfig::parse(&t).map_err(|e| e.to_string()))
        {
            Ok(c) => Some(c.config),
            Err(e) => {
                eprintln!("preflight: {}: {e}", p.display());
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    facts.pod_network = conf
        .as_ref()
        .and_then(|c| c.network.map(ipnetwork::IpNetwork::V4))
        .or_else(|| "10.244.0.0/16".parse().ok());
    facts.vxlan_port = match conf.as_ref().map(|c| &c.backend) {
        Some(trellis_agent::config::BackendConfig::Vxlan(v)) => Some(v.port),
        None => Some(8472),
        _ => None,
    };
    facts.wireguard = Some(
        trellis_agent::dataplane::netlink::wireguard::WgSocket::open()
            .map(|_| ())
            .map_err(|e| e.to_string()),
    );
    if let Some(trellis_agent::config::BackendConfig::Wireguard(w)) =
        conf.as_ref().map(|c| &c.backend)
    {
        facts.wireguard_ports = vec![w.listen_port, w.listen_port_v6];
    }
    facts.node_addrs = preflight::node_addresses();
    let findings = preflight::evaluate(&facts);
    for f in &findings {
        let tag = match f.level {
            Level::Ok => "ok  ",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        };
        println!("{tag} {:<15} {}", f.check, f.message);
    }
    if findings.iter().any(|f| f.level == Level::Fail) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

//! `subnet.env`: the file through which the agent tells the plugin which
//! subnet and MTU this node has. Flannel's format, so either side can be
//! replaced by flannel's.
//!
//! The agent writes it with [`write_atomic`]; the plugin reads it with [`read`].

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

pub const DEFAULT_PATH: &str = "/run/flannel/subnet.env";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    /// The whole pod network (`FLANNEL_NETWORK`).
    pub network: Option<Ipv4Network>,
    /// This node's subnet written as gateway/prefix (`FLANNEL_SUBNET=10.244.1.1/24`).
    pub subnet: Option<Ipv4Network>,
    pub ipv6_network: Option<Ipv6Network>,
    pub ipv6_subnet: Option<Ipv6Network>,
    pub mtu: u32,
    pub ipmasq: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SubnetEnvError {
    #[error("subnet file {path} does not exist: trellis-agent has not programmed this node yet (is it running?)")]
    Missing { path: PathBuf },
    #[error("cannot read subnet file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("subnet file {path} line {line}: {why}")]
    Malformed {
        path: PathBuf,
        line: usize,
        why: String,
    },
    #[error("subnet file {path} has neither FLANNEL_SUBNET nor FLANNEL_IPV6_SUBNET")]
    NoSubnet { path: PathBuf },
    #[error("subnet file {path} has no FLANNEL_MTU")]
    NoMtu { path: PathBuf },
    #[error("cannot write subnet file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl SubnetEnv {
    /// The gateway address and subnet the bridge carries (first host IP).
    pub fn gateway_v4(&self) -> Option<Ipv4Network> {
        self.subnet
    }

    pub fn gateway_v6(&self) -> Option<Ipv6Network> {
        self.ipv6_subnet
    }

    /// Render in flannel's key order so diffs against flannel's file are empty.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Some(n) = self.network {
            let _ = writeln!(out, "FLANNEL_NETWORK={n}");
        }
        if let Some(s) = self.subnet {
            let _ = writeln!(out, "FLANNEL_SUBNET={s}");
        }
        if let Some(n) = self.ipv6_network {
            let _ = writeln!(out, "FLANNEL_IPV6_NETWORK={n}");
        }
        if let Some(s) = self.ipv6_subnet {
            let _ = writeln!(out, "FLANNEL_IPV6_SUBNET={s}");
        }
        let _ = writeln!(out, "FLANNEL_MTU={}", self.mtu);
        let _ = writeln!(out, "FLANNEL_IPMASQ={}", self.ipmasq);
        out
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, SubnetEnvError> {
        let mut env = SubnetEnv {
            network: None,
            subnet: None,
            ipv6_network: None,
            ipv6_subnet: None,
            mtu: 0,
            ipmasq: false,
        };
        let mut mtu = None;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: String| SubnetEnvError::Malformed {
                path: path.to_path_buf(),
                line: i + 1,
                why,
            };
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| bad(format!("{line:?} is not KEY=VALUE")))?;
            let value = value.trim().trim_matches('"');
            match key.trim() {
                "FLANNEL_NETWORK" => env.network = Some(parse_v4(value).map_err(bad)?),
                "FLANNEL_SUBNET" => env.subnet = Some(parse_v4(value).map_err(bad)?),
                "FLANNEL_IPV6_NETWORK" => env.ipv6_network = Some(parse_v6(value).map_err(bad)?),
                "FLANNEL_IPV6_SUBNET" => env.ipv6_subnet = Some(parse_v6(value).map_err(bad)?),
                "FLANNEL_MTU" => {
                    let m: u32 = value
                        .parse()
                        .map_err(|_| bad(format!("FLANNEL_MTU {value:?} is not a number")))?;
                    if !(68..=65535).contains(&m) {
                        return Err(bad(format!("FLANNEL_MTU {m} is outside 68..65535")));
                    }
                    mtu = Some(m);
                }
                "FLANNEL_IPMASQ" => {
                    env.ipmasq = match value {
                        "true" => true,
                        "false" => false,
                        _ => {
                            return Err(bad(format!("FLANNEL_IPMASQ {value:?} is not true/false")))
                        }
                    }
                }
                // Newer flannel versions add keys; they do not concern us.
                _ => {}
            }
        }
        if env.subnet.is_none() && env.ipv6_subnet.is_none() {
            return Err(SubnetEnvError::NoSubnet {
                path: path.to_path_buf(),
            });
        }
        env.mtu = mtu.ok_or_else(|| SubnetEnvError::NoMtu {
            path: path.to_path_buf(),
        })?;
        Ok(env)
    }
}

fn parse_v4(value: &str) -> Result<Ipv4Network, String> {
    match value.parse::<IpNetwork>() {
        Ok(IpNetwork::V4(n)) => Ok(n),
        _ => Err(format!("{value:?} is not an IPv4 CIDR")),
    }
}

fn parse_v6(value: &str) -> Result<Ipv6Network, String> {
    match value.parse::<IpNetwork>() {
        Ok(IpNetwork::V6(n)) => Ok(n),
        _ => Err(format!("{value:?} is not an IPv6 CIDR")),
    }
}

pub fn read(path: &Path) -> Result<SubnetEnv, SubnetEnvError> {
    let text = std::fs::read_to_string(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            SubnetEnvError::Missing {
                path: path.to_path_buf(),
            }
        } else {
            SubnetEnvError::Read {
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    SubnetEnv::parse(path, &text)
}

/// Write via a temporary file and rename, so a plugin reading concurrently
/// sees the old or the new file, never half of one. Returns whether the
/// content changed.
pub fn write_atomic(path: &Path, env: &SubnetEnv) -> Result<bool, SubnetEnvError> {
    let content = env.render();
    let werr = |source| SubnetEnvError::Write {
        path: path.to_path_buf(),
        source,
    };
    if std::fs::read_to_string(path).ok().as_deref() == Some(content.as_str()) {
        return Ok(false);
    }
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir).map_err(werr)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "subnet.env".into());
    let tmp = dir.join(format!(".{file_name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(content.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(werr(e));
    }
    Ok(true)
}

/// The first host address of a subnet: where flannel puts the bridge gateway.
pub fn first_host(net: IpNetwork) -> Option<IpAddr> {
    match net {
        IpNetwork::V4(n) => {
            let base = u32::from(n.network());
            (n.prefix() < 32).then(|| IpAddr::V4((base + 1).into()))
        }
        IpNetwork::V6(n) => {
            let base = u128::from(n.network());
            (n.prefix() < 128).then(|| IpAddr::V6((base + 1).into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLANNEL: &str = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

    #[test]
    fn parses_flannels_file_and_renders_it_back_identically() {
        let env = SubnetEnv::parse(Path::new("x"), FLANNEL).unwrap();
        assert_eq!(env.subnet.unwrap().to_string(), "10.244.1.1/24");
        assert_eq!(env.mtu, 1450);
        assert!(env.ipmasq);
        assert_eq!(env.render(), FLANNEL);
    }

    #[test]
    fn parses_dual_stack() {
        let text = format!("{FLANNEL}FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\n");
        let env = SubnetEnv::parse(Path::new("x"), &text).unwrap();
        assert_eq!(env.ipv6_subnet.unwrap().to_string(), "fd00:10:244:1::1/64");
    }

    #[test]
    fn rejects_malformed_files() {
        for bad in [
            "FLANNEL_SUBNET=10.244.1.1/24\n",                // no MTU
            "FLANNEL_MTU=1450\n",                            // no subnet
            "FLANNEL_SUBNET=banana\nFLANNEL_MTU=1450\n",     // bad CIDR
            "FLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=x\n", // bad MTU
            "FLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=9\n", // MTU too small
            "FLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\ngarbage\n",
            "FLANNEL_SUBNET=fd00::1/64\nFLANNEL_MTU=1450\n", // v6 in v4 key
        ] {
            assert!(SubnetEnv::parse(Path::new("x"), bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = read(Path::new("/nonexistent/trellis/subnet.env")).unwrap_err();
        assert!(matches!(err, SubnetEnvError::Missing { .. }));
        assert!(err.to_string().contains("/nonexistent/trellis/subnet.env"));
    }

    #[test]
    fn write_is_atomic_and_reports_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/subnet.env");
        let env = SubnetEnv::parse(Path::new("x"), FLANNEL).unwrap();
        assert!(write_atomic(&path, &env).unwrap());
        assert!(!write_atomic(&path, &env).unwrap());
        assert_eq!(read(&path).unwrap(), env);
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp."))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn first_host_is_network_plus_one() {
        assert_eq!(
            first_host("10.244.3.0/24".parse().unwrap())
                .unwrap()
                .to_string(),
            "10.244.3.1"
        );
        assert_eq!(
            first_host("fd00::/64".parse().unwrap())
                .unwrap()
                .to_string(),
            "fd00::1"
        );
        assert!(first_host("10.0.0.1/32".parse().unwrap()).is_none());
    }
}

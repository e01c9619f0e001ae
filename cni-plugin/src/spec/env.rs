//! The `CNI_*` environment a runtime sets for each call.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::error::{invalid_env, CniError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    fn parse(s: &str) -> Result<Self, CniError> {
        match s {
            "ADD" => Ok(Self::Add),
            "DEL" => Ok(Self::Del),
            "CHECK" => Ok(Self::Check),
            "VERSION" => Ok(Self::Version),
            "STATUS" => Ok(Self::Status),
            "GC" => Ok(Self::Gc),
            other => Err(invalid_env(format!(
                "unknown CNI_COMMAND {other:?}: expected ADD, DEL, CHECK, VERSION, STATUS or GC"
            ))),
        }
    }

    /// Verbs that act on one container attachment.
    fn needs_attachment(self) -> bool {
        matches!(self, Self::Add | Self::Del | Self::Check)
    }
}

/// What the runtime told us about the attachment. Fields are validated so
/// that they are safe to use in file names and interface names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    pub command: Command,
    pub container_id: String,
    /// Empty on DEL when the runtime already removed the namespace.
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub args: BTreeMap<String, String>,
    pub path: Vec<PathBuf>,
}

/// Longest interface name Linux accepts (IFNAMSIZ minus the NUL).
pub const MAX_IFNAME_LEN: usize = 15;

impl Env {
    pub fn from_process() -> Result<Self, CniError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let command = match get("CNI_COMMAND") {
            Some(c) if !c.is_empty() => Command::parse(&c)?,
            _ => return Err(invalid_env("CNI_COMMAND is not set")),
        };
        let mut env = Env {
            command,
            container_id: String::new(),
            netns: None,
            ifname: String::new(),
            args: BTreeMap::new(),
            path: Vec::new(),
        };
        if !command.needs_attachment() {
            return Ok(env);
        }
        let required = |key: &str| -> Result<String, CniError> {
            match get(key) {
                Some(v) if !v.is_empty() => Ok(v),
                _ => Err(invalid_env(format!("{key} is not set"))
                    .with_details(format!("the runtime must set {key} for {command:?}"))),
            }
        };
        env.container_id = required("CNI_CONTAINERID")?;
        validate_container_id(&env.container_id)?;
        env.ifname = required("CNI_IFNAME")?;
        validate_ifname(&env.ifname)?;
        env.netns = match command {
            Command::Del => get("CNI_NETNS")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
            _ => Some(PathBuf::from(required("CNI_NETNS")?)),
        };
        env.path = required("CNI_PATH")?
            .split(':')
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect();
        env.args = parse_args(&get("CNI_ARGS").unwrap_or_default())?;
        Ok(env)
    }
}

/// `CNI_ARGS` is `K=V;K=V`. Unknown keys are fine: we read none of them for
/// behaviour, only pod identity for messages.
fn parse_args(raw: &str) -> Result<BTreeMap<String, String>, CniError> {
    let mut out = BTreeMap::new();
    for pair in raw.split(';').filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(invalid_env(format!(
                "CNI_ARGS entry {pair:?} is not KEY=VALUE"
            )));
        };
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// The spec's rule for container IDs; it also keeps `../` out of IPAM paths.
pub fn validate_container_id(id: &str) -> Result<(), CniError> {
    if is_safe_name(id) {
        Ok(())
    } else {
        Err(invalid_env(format!(
            "CNI_CONTAINERID {id:?} is invalid: it must start with a letter or digit and hold only letters, digits, '_', '.' and '-'"
        )))
    }
}

/// Letters, digits, `_.-`, starting with a letter or digit (the spec's rule
/// for container IDs and network names).
pub fn is_safe_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The kernel's rules for interface names (dev_valid_name).
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    let why = if name.len() > MAX_IFNAME_LEN {
        Some(format!("longer than {MAX_IFNAME_LEN} bytes"))
    } else if name == "." || name == ".." {
        Some("reserved".to_string())
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        Some("it contains '/', ':' or whitespace".to_string())
    } else {
        None
    };
    match why {
        None => Ok(()),
        Some(why) => Err(invalid_env(format!(
            "CNI_IFNAME {name:?} is invalid: {why}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::error::ErrorCode;

    fn env_of(pairs: &[(&str, &str)]) -> Result<Env, CniError> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_lookup(|k| map.get(k).cloned())
    }

    const FULL: [(&str, &str); 6] = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/var/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
        ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web-0"),
    ];

    #[test]
    fn parses_a_complete_add() {
        let env = env_of(&FULL).unwrap();
        assert_eq!(env.command, Command::Add);
        assert_eq!(env.ifname, "eth0");
        assert_eq!(env.path.len(), 2);
        assert_eq!(env.args["K8S_POD_NAME"], "web-0");
    }

    #[test]
    fn every_missing_variable_is_code_4() {
        for skip in [
            "CNI_COMMAND",
            "CNI_CONTAINERID",
            "CNI_NETNS",
            "CNI_IFNAME",
            "CNI_PATH",
        ] {
            let pairs: Vec<_> = FULL.iter().copied().filter(|(k, _)| *k != skip).collect();
            let err = env_of(&pairs).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidEnv.code(), "{skip}");
            assert!(err.msg.contains(skip), "{skip}: {}", err.msg);
        }
    }

    #[test]
    fn del_tolerates_a_missing_netns() {
        let pairs: Vec<_> = FULL
            .iter()
            .map(|&(k, v)| {
                if k == "CNI_COMMAND" {
                    (k, "DEL")
                } else {
                    (k, v)
                }
            })
            .filter(|(k, _)| *k != "CNI_NETNS")
            .collect();
        assert_eq!(env_of(&pairs).unwrap().netns, None);
    }

    #[test]
    fn version_needs_only_the_command() {
        let env = env_of(&[("CNI_COMMAND", "VERSION")]).unwrap();
        assert_eq!(env.command, Command::Version);
    }

    #[test]
    fn rejects_unsafe_names() {
        for id in ["../etc", "a/b", "", "-lead", "a b", "x\u{0}"] {
            assert!(validate_container_id(id).is_err(), "{id:?}");
        }
        for name in ["eth0/1", "a:b", "sixteen_chars_xx", ".", "..", "a b"] {
            assert!(validate_ifname(name).is_err(), "{name:?}");
        }
        assert!(validate_ifname("eth0").is_ok());
        assert!(validate_container_id("0123abc_.-x").is_ok());
    }

    #[test]
    fn rejects_malformed_cni_args() {
        let mut pairs = FULL.to_vec();
        pairs[5] = ("CNI_ARGS", "novalue");
        assert_eq!(env_of(&pairs).unwrap_err().code, 4);
    }
}

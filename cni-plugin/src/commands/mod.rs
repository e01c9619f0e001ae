//! One module per CNI verb. Each takes the parsed environment and config and
//! returns what to print on success (or nothing).

pub mod add;
pub mod check;
pub mod del;
pub mod gc;
pub mod status;

use serde_json::Value;

use crate::spec::error::{CniError, ErrorCode};
use crate::spec::{CniVersion, Command, Env, NetConf};
use trellis_common::subnet_env::{self, SubnetEnv, SubnetEnvError};

/// Run one verb to completion.
pub async fn dispatch(env: &Env, conf: &NetConf) -> Result<Option<Value>, CniError> {
    match env.command {
        Command::Add => add::run(env, conf).await.map(Some),
        Command::Del => del::run(env, conf).await.map(|()| None),
        Command::Check => check::run(env, conf).await.map(|()| None),
        Command::Status => status::run(conf).map(|()| None),
        Command::Gc => gc::run(conf).await.map(|()| None),
        Command::Version => Ok(Some(crate::spec::version::version_info())),
    }
}

/// Refuse a verb the config's cniVersion predates (`has_verb` says which versions have it):
/// the runtime must not assume the verb was carried out.
fn require_version(
    conf: &NetConf,
    has_verb: fn(CniVersion) -> bool,
    verb: &str,
    since: &str,
) -> Result<(), CniError> {
    if has_verb(conf.cni_version) {
        return Ok(());
    }
    Err(CniError::new(
        ErrorCode::IncompatibleVersion,
        format!(
            "{verb} needs cniVersion {since} or later, the config says {}",
            conf.cni_version
        ),
    ))
}

/// subnet.env for ADD and CHECK: optional when the config brings its own
/// ranges, otherwise required. A missing file is "try again later": the
/// agent writes it as soon as it has programmed the node.
pub fn load_subnet_env(conf: &NetConf) -> Result<Option<SubnetEnv>, CniError> {
    let has_ranges = conf.ipam.as_ref().is_some_and(|i| !i.ranges.is_empty());
    match subnet_env::read(&conf.subnet_file) {
        Ok(env) => Ok(Some(env)),
        Err(SubnetEnvError::Missing { .. }) if has_ranges => Ok(None),
        Err(e @ SubnetEnvError::Missing { .. }) => Err(CniError::new(
            ErrorCode::TryAgainLater,
            e.to_string(),
        )
        .with_details(
            "check the trellis-agent pod on this node: kubectl -n trellis-system logs ds/trellis",
        )),
        Err(e @ SubnetEnvError::Read { .. }) => Err(CniError::new(ErrorCode::Io, e.to_string())),
        Err(e) => Err(CniError::new(ErrorCode::InvalidConfig, e.to_string())),
    }
}

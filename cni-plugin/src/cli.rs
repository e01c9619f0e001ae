//! Process entry: read env and stdin, run the verb, print the answer.

use std::io::{Read, Write};

use crate::commands;
use crate::spec::error::{CniError, ErrorCode};
use crate::spec::{Command, Env, NetConf};

/// Largest config we read; real ones are a few KB (GC lists add more).
const MAX_STDIN: u64 = 16 << 20;

/// Runs the plugin and returns the process exit code.
pub fn main() -> i32 {
    if let Ok(request) = std::env::var(crate::reaper::ENV) {
        return crate::reaper::run(&request);
    }
    let (cni_version, outcome) = run();
    let mut stdout = std::io::stdout().lock();
    match outcome {
        Ok(Some(v)) => {
            let _ = writeln!(stdout, "{v}");
            0
        }
        Ok(None) => 0,
        Err(mut e) => {
            e.cni_version = Some(cni_version);
            let _ = writeln!(stdout, "{}", e.to_json());
            1
        }
    }
}

fn run() -> (String, Result<Option<serde_json::Value>, CniError>) {
    let latest = crate::spec::CniVersion::LATEST.as_str().to_string();
    let env = match Env::from_process() {
        Ok(e) => e,
        Err(e) => return (latest, Err(e)),
    };
    if env.command == Command::Version {
        return (latest, Ok(Some(crate::spec::version::version_info())));
    }
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().take(MAX_STDIN).read_to_end(&mut stdin) {
        return (
            latest,
            Err(CniError::new(
                ErrorCode::Io,
                format!("cannot read stdin: {e}"),
            )),
        );
    }
    let conf = match NetConf::parse(&stdin) {
        Ok(c) => c,
        Err(e) => return (requested_version(&stdin).unwrap_or(latest), Err(e)),
    };
    let version = conf.cni_version.as_str().to_string();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return (
                version,
                Err(CniError::new(
                    ErrorCode::Io,
                    format!("cannot start runtime: {e}"),
                )),
            )
        }
    };
    let outcome = rt.block_on(commands::dispatch(&env, &conf));
    (version, outcome)
}

/// Answer errors in the version the caller asked for when it is one we know.
fn requested_version(stdin: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(stdin).ok()?;
    let s = v.get("cniVersion")?.as_str()?;
    crate::spec::CniVersion::parse(s)
        .ok()
        .map(|v| v.as_str().to_string())
}

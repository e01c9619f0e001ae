//! The `CNI_*` environment (`Env::from_lookup`): arbitrary variable maps, fed as an environ
//! block (`KEY=VALUE\0KEY=VALUE`). Checks that whatever is accepted is safe to use in file and
//! interface names, and that rendering the accepted environment back parses to the same value.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use trellis_cni::spec::env::{is_safe_name, validate_ifname, MAX_IFNAME_LEN};
use trellis_cni::spec::{Command, Env};

fn command_name(c: Command) -> &'static str {
    match c {
        Command::Add => "ADD",
        Command::Del => "DEL",
        Command::Check => "CHECK",
        Command::Version => "VERSION",
        Command::Status => "STATUS",
        Command::Gc => "GC",
    }
}

/// The environment a runtime would set to produce `env`.
fn render(env: &Env) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    out.insert("CNI_COMMAND".into(), command_name(env.command).into());
    if matches!(env.command, Command::Add | Command::Del | Command::Check) {
        out.insert("CNI_CONTAINERID".into(), env.container_id.clone());
        out.insert("CNI_IFNAME".into(), env.ifname.clone());
        if let Some(ns) = &env.netns {
            let ns = ns.to_str().expect("netns came from a UTF-8 variable");
            out.insert("CNI_NETNS".into(), ns.to_string());
        }
        let path: Vec<&str> = env
            .path
            .iter()
            .map(|p| p.to_str().expect("path came from a UTF-8 variable"))
            .collect();
        // CNI_PATH=":" is accepted and means "no directories"; an empty one is "unset".
        let path = if path.is_empty() {
            ":".to_string()
        } else {
            path.join(":")
        };
        out.insert("CNI_PATH".into(), path);
        let args: Vec<String> = env.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.insert("CNI_ARGS".into(), args.join(";"));
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let vars = trellis_fuzz::environ(data);
    let Ok(env) = Env::from_lookup(|k| vars.get(k).cloned()) else {
        return;
    };
    match env.command {
        Command::Add | Command::Del | Command::Check => {
            assert!(is_safe_name(&env.container_id), "{env:?}");
            assert!(!env.container_id.contains('/'), "{env:?}");
            assert!(validate_ifname(&env.ifname).is_ok(), "{env:?}");
            assert!(!env.ifname.is_empty() && env.ifname.len() <= MAX_IFNAME_LEN);
            assert!(
                env.command == Command::Del || env.netns.is_some(),
                "{env:?}"
            );
            assert!(env.path.iter().all(|p| !p.as_os_str().is_empty()));
            for (k, v) in &env.args {
                assert!(!k.contains(';') && !k.contains('=') && !v.contains(';'));
            }
        }
        _ => {}
    }
    let again = render(&env);
    match Env::from_lookup(|k| again.get(k).cloned()) {
        Ok(reparsed) => assert_eq!(reparsed, env, "round trip through {again:?}"),
        Err(e) => panic!("accepted {env:?} but not its rendering {again:?}: {e}"),
    }
});

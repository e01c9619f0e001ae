//! `subnet.env` (`SubnetEnv::parse`), the file the agent writes and the plugin reads (and
//! which flannel may have written instead). An accepted file must carry a subnet and a valid
//! MTU, and render → parse must give the same value back, so the agent's own file always
//! reads back as written.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use trellis_common::subnet_env::{first_host, SubnetEnv};

fuzz_target!(|data: &[u8]| {
    // `subnet_env::read` uses read_to_string: a non-UTF-8 file never reaches the parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/run/flannel/subnet.env");
    let env = match SubnetEnv::parse(path, text) {
        Ok(env) => env,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    assert!(env.subnet.is_some() || env.ipv6_subnet.is_some(), "{env:?}");
    assert!((68..=65535).contains(&env.mtu), "{env:?}");
    for net in [env.network.map(Into::into), env.subnet.map(Into::into)]
        .into_iter()
        .chain([
            env.ipv6_network.map(Into::into),
            env.ipv6_subnet.map(Into::into),
        ])
        .flatten()
    {
        let _ = first_host(net);
    }

    let rendered = env.render();
    match SubnetEnv::parse(path, &rendered) {
        Ok(again) => assert_eq!(again, env, "round trip through {rendered:?}"),
        Err(e) => panic!("accepted {env:?} but not its rendering {rendered:?}: {e}"),
    }
});

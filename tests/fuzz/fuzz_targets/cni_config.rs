//! The network configuration on the plugin's stdin (`NetConf::parse`), fed both directly and
//! the way a runtime derives it from a conflist (each member with `name` and `cniVersion`
//! copied in), plus the agent's conflist check (`install_cni::validate_conflist`) and the
//! prevResult reader CHECK uses (`CniResult::parse_prev`).
//!
//! Beyond "no panic": an accepted config holds only safe names and in-range values, its IPAM
//! directory cannot leave `dataDir`, each of its range sets has a free address, and its
//! canonical rendering parses to the same config.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};
use trellis_cni::spec::config::MAX_LOCK_WAIT_MS;
use trellis_cni::spec::env::{is_safe_name, validate_ifname};
use trellis_cni::spec::version::SUPPORTED;
use trellis_cni::spec::{CniResult, NetConf};

/// The members a runtime would hand us, at most a few (real conflists hold two or three).
fn members(data: &[u8]) -> Vec<Vec<u8>> {
    let Ok(Value::Object(list)) = serde_json::from_slice::<Value>(data) else {
        return Vec::new();
    };
    let Some(plugins) = list.get("plugins").and_then(Value::as_array) else {
        return Vec::new();
    };
    plugins
        .iter()
        .take(4)
        .filter_map(|p| p.as_object().cloned())
        .map(|mut member| {
            for key in ["name", "cniVersion"] {
                if let Some(v) = list.get(key) {
                    member.insert(key.to_string(), v.clone());
                }
            }
            serde_json::to_vec(&Value::Object(member)).expect("a JSON value serialises")
        })
        .collect()
}

fn path_str(p: &std::path::Path) -> &str {
    p.to_str().expect("paths come from JSON strings")
}

/// Every field trellis read, written back in the canonical form.
fn render(c: &NetConf) -> Value {
    let mut o = Map::new();
    o.insert("cniVersion".into(), json!(c.cni_version.as_str()));
    o.insert("name".into(), json!(c.name));
    o.insert("type".into(), json!("trellis"));
    o.insert("bridge".into(), json!(c.bridge));
    if let Some(mtu) = c.mtu {
        o.insert("mtu".into(), json!(mtu));
    }
    o.insert("hairpinMode".into(), json!(c.hairpin_mode));
    o.insert("isDefaultGateway".into(), json!(c.is_default_gateway));
    o.insert("subnetFile".into(), json!(path_str(&c.subnet_file)));
    o.insert("dataDir".into(), json!(path_str(&c.data_dir)));
    let lock_ms = u64::try_from(c.ipam_lock_wait.as_millis()).expect("at most 120000 ms");
    o.insert("ipamLockTimeoutMs".into(), json!(lock_ms));
    if let Some(ipam) = &c.ipam {
        let ranges: Vec<Value> = ipam
            .ranges
            .iter()
            .map(|set| {
                set.iter()
                    .map(|r| {
                        json!({
                            "subnet": r.subnet.to_string(),
                            "rangeStart": r.range_start.map(|ip| ip.to_string()),
                            "rangeEnd": r.range_end.map(|ip| ip.to_string()),
                            "gateway": r.gateway.map(|ip| ip.to_string()),
                        })
                    })
                    .collect()
            })
            .collect();
        let routes: Vec<Value> = ipam
            .routes
            .iter()
            .map(|r| json!({"dst": r.dst.to_string(), "gw": r.gw.map(|ip| ip.to_string())}))
            .collect();
        o.insert("ipam".into(), json!({"ranges": ranges, "routes": routes}));
    }
    if let Some(dns) = &c.dns {
        o.insert("dns".into(), dns.clone());
    }
    if let Some(prev) = &c.prev_result {
        o.insert("prevResult".into(), prev.clone());
    }
    if let Some(att) = &c.valid_attachments {
        let att: Vec<Value> = att
            .iter()
            .map(|a| json!({"containerID": a.container_id, "ifname": a.ifname}))
            .collect();
        o.insert("cni.dev/valid-attachments".into(), Value::Array(att));
    }
    Value::Object(o)
}

fn check_netconf(input: &[u8]) {
    let c = match NetConf::parse(input) {
        Ok(c) => c,
        Err(e) => {
            // The error object goes to the runtime: it must render.
            let _ = e.to_string();
            return;
        }
    };
    assert!(is_safe_name(&c.name), "{c:?}");
    assert!(validate_ifname(&c.bridge).is_ok(), "{c:?}");
    assert!(c.mtu.is_none_or(|m| (68..=65535).contains(&m)), "{c:?}");
    // Host-local keeps one file per IP under ipam_dir: it must be a direct child of dataDir.
    let dir = c.ipam_dir();
    assert!(
        dir.starts_with(&c.data_dir),
        "{dir:?} escapes {:?}",
        c.data_dir
    );
    assert_eq!(
        dir.file_name().and_then(|n| n.to_str()),
        Some(c.name.as_str())
    );
    assert!(
        c.ipam_lock_wait.as_millis() <= u128::from(MAX_LOCK_WAIT_MS),
        "{c:?}"
    );
    if let Some(ipam) = &c.ipam {
        for set in &ipam.ranges {
            assert!(!set.is_empty());
            for r in set {
                for ip in [r.range_start, r.range_end, r.gateway]
                    .into_iter()
                    .flatten()
                {
                    assert!(r.subnet.contains(ip), "{r:?}");
                }
            }
        }
        // Every verb accepted these ranges, so ADD can allocate from each set (the
        // allocator itself is fuzzed by ipam_allocator).
        let sets = ipam.range_sets().expect("accepted ranges build range sets");
        for set in sets {
            assert!(set.next_free(None, &HashSet::new()).is_some(), "{set:?}");
        }
    }
    if let Some(prev) = &c.prev_result {
        check_prev_result(prev);
    }

    let canonical = serde_json::to_vec(&render(&c)).expect("a JSON value serialises");
    match NetConf::parse(&canonical) {
        Ok(again) => {
            assert_eq!(again.dns.is_some(), c.dns.is_some());
            assert_eq!(again.prev_result.is_some(), c.prev_result.is_some());
            // dns and prevResult are opaque JSON passed through; serde_json (without its
            // float_roundtrip feature) may move a float by one ulp on a re-parse, which is
            // not a trellis bug, so only the fields trellis interprets are compared.
            let typed = |n: &NetConf| {
                format!(
                    "{:?}",
                    NetConf {
                        dns: None,
                        prev_result: None,
                        ..n.clone()
                    }
                )
            };
            assert_eq!(
                typed(&again),
                typed(&c),
                "round trip through {}",
                String::from_utf8_lossy(&canonical)
            );
        }
        Err(e) => panic!(
            "accepted {c:?} but not its rendering {}: {e}",
            String::from_utf8_lossy(&canonical)
        ),
    }
}

/// A prevResult that parses renders, in every version, to one that parses back the same.
fn check_prev_result(prev: &Value) {
    let Ok(result) = CniResult::parse_prev(prev) else {
        return;
    };
    for version in SUPPORTED {
        let rendered = result.render(version);
        let again = match CniResult::parse_prev(&rendered) {
            Ok(r) => r,
            Err(e) => panic!("prevResult {result:?} rendered as {rendered} does not parse: {e}"),
        };
        assert_eq!(again.ips, result.ips, "{version:?}");
        assert_eq!(again.routes, result.routes, "{version:?}");
        assert_eq!(again.interfaces.len(), result.interfaces.len());
    }
}

fuzz_target!(|data: &[u8]| {
    check_netconf(data);
    for member in members(data) {
        check_netconf(&member);
    }
    let _ = trellis_agent::install_cni::validate_conflist(data, "trellis");
});

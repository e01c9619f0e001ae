//! The host-local IPAM store the plugin writes: `<dataDir>/<network>/<ip>` holds the
//! container id on its first line, next to `lock` and `last_reserved_ip.N`.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use crate::ensure;
use crate::failure::{Failure, TestResult};

/// The addresses recorded in `dir` (files named like an address), sorted; none when the
/// directory does not exist.
pub fn addresses(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<String> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.parse::<IpAddr>().is_ok())
        .collect();
    v.sort();
    v
}

/// Each `ips[i]` is recorded in `dir` for `ids[i]`.
pub fn check_records(dir: &Path, ids: &[String], ips: &[Ipv4Addr]) -> TestResult {
    for (id, ip) in ids.iter().zip(ips) {
        let path = dir.join(ip.to_string());
        let text = std::fs::read_to_string(&path).map_err(|e| {
            Failure(format!(
                "IPAM record {} for sandbox {id}: {e}",
                path.display()
            ))
        })?;
        let owner = text.lines().next().unwrap_or_default().trim();
        ensure!(
            owner == id,
            "IPAM record {} names {owner:?}, expected sandbox {id}",
            path.display()
        );
    }
    Ok(())
}

/// Nothing but the store's own files (`lock`, `last_reserved_ip.N`) is left in `dir`.
pub fn check_all_released(dir: &Path) -> TestResult {
    let left = entries(dir, |name| {
        name != "lock" && !name.starts_with("last_reserved_ip")
    })?;
    ensure!(
        left.is_empty(),
        "IPAM entries not released in {}: {left:?}",
        dir.display()
    );
    Ok(())
}

/// No address is recorded in `dir` any more (the directory must exist).
pub fn check_addresses_released(dir: &Path) -> TestResult {
    let left = entries(dir, |name| name.parse::<IpAddr>().is_ok())?;
    ensure!(
        left.is_empty(),
        "addresses not released in {}: {left:?}",
        dir.display()
    );
    Ok(())
}

/// The names in `dir` that `keep` keeps (the directory must exist).
fn entries(dir: &Path, keep: impl Fn(&str) -> bool) -> TestResult<Vec<String>> {
    Ok(std::fs::read_dir(dir)
        .map_err(|e| Failure(format!("IPAM dir {}: {e}", dir.display())))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| keep(name))
        .collect())
}

//! `resources.limits` / `requests` as cgroup settings, the way kubelet maps
//! them for containerd on cgroup v1: cpu limit -> CFS quota over a 100 ms
//! period, cpu request -> shares, memory limit -> memory.limit_in_bytes.

use std::collections::BTreeMap;

use k8s_cri::v1::LinuxContainerResources;
use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::TranslateError;

/// kubelet's CFS period (100 ms, in microseconds).
const CPU_PERIOD_US: i64 = 100_000;
/// kubelet's floor for cpu shares (the kernel's minimum).
const MIN_SHARES: i64 = 2;

/// Linux resources for one container; `path` names the container
/// (`spec.containers[0]`) in errors.
pub fn linux_resources(
    req: Option<&ResourceRequirements>,
    path: &str,
) -> Result<Option<LinuxContainerResources>, TranslateError> {
    let Some(req) = req else { return Ok(None) };
    if req.claims.as_ref().is_some_and(|c| !c.is_empty()) {
        return Err(TranslateError::Unsupported {
            field: format!("{path}.resources.claims"),
        });
    }
    let limits = checked(req.limits.as_ref(), &format!("{path}.resources.limits"))?;
    let requests = checked(req.requests.as_ref(), &format!("{path}.resources.requests"))?;
    let mut out = LinuxContainerResources::default();
    if let Some(milli) = limits.cpu {
        out.cpu_period = CPU_PERIOD_US;
        out.cpu_quota = (milli * CPU_PERIOD_US / 1000).max(1000);
    }
    // kubelet: shares follow the request, or the limit when no request.
    if let Some(milli) = requests.cpu.or(limits.cpu) {
        out.cpu_shares = (milli * 1024 / 1000).max(MIN_SHARES);
    }
    if let Some(bytes) = limits.memory {
        out.memory_limit_in_bytes = bytes;
    }
    Ok(Some(out))
}

#[derive(Default)]
struct CpuMem {
    cpu: Option<i64>,
    memory: Option<i64>,
}

/// cpu (millicores) and memory (bytes) from a limits or requests map; any
/// other resource is an error, since the driver could not enforce it.
fn checked(map: Option<&BTreeMap<String, Quantity>>, path: &str) -> Result<CpuMem, TranslateError> {
    let mut out = CpuMem::default();
    for (name, quantity) in map.into_iter().flatten() {
        let field = format!("{path}.{name}");
        let invalid = |reason: String| TranslateError::Invalid {
            field: field.clone(),
            reason,
        };
        match name.as_str() {
            "cpu" => out.cpu = Some(parse_milli(&quantity.0).map_err(invalid)?),
            "memory" => out.memory = Some(parse_bytes(&quantity.0).map_err(invalid)?),
            _ => return Err(TranslateError::Unsupported { field }),
        }
    }
    Ok(out)
}

/// A quantity in thousandths, rounded up ("200m" -> 200, "1" -> 1000,
/// "0.5" -> 500).
pub fn parse_milli(text: &str) -> Result<i64, String> {
    let (number, scale) = split_suffix(text)?;
    round_up(number * scale * 1000.0, text)
}

/// A quantity in units, rounded up ("64Mi" -> 67108864, "1G" -> 1e9).
pub fn parse_bytes(text: &str) -> Result<i64, String> {
    let (number, scale) = split_suffix(text)?;
    round_up(number * scale, text)
}

fn round_up(value: f64, text: &str) -> Result<i64, String> {
    if !value.is_finite() || !(0.0..=9.0e18).contains(&value) {
        return Err(format!("quantity {text:?} out of range"));
    }
    // Exact for the sizes that matter here (well below 2^53).
    Ok(value.ceil() as i64)
}

/// The number and the multiplier of its suffix (binary Ki..Ei, decimal
/// n..E, or an exponent `e3`).
fn split_suffix(text: &str) -> Result<(f64, f64), String> {
    const SUFFIXES: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("Pi", 1125899906842624.0),
        ("Ei", 1152921504606846976.0),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    let bad = || format!("{text:?} is not a Kubernetes quantity");
    let (digits, scale) = SUFFIXES
        .iter()
        .find_map(|(suffix, scale)| text.strip_suffix(suffix).map(|d| (d, *scale)))
        .unwrap_or((text, 1.0));
    if digits.is_empty() || !digits.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
        return Err(bad());
    }
    let number: f64 = digits.parse().map_err(|_| bad())?;
    Ok((number, scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity(s.to_string())
    }

    #[test]
    fn parses_cpu_and_memory_quantities() {
        assert_eq!(parse_milli("200m"), Ok(200));
        assert_eq!(parse_milli("1"), Ok(1000));
        assert_eq!(parse_milli("0.5"), Ok(500));
        assert_eq!(parse_bytes("64Mi"), Ok(64 << 20));
        assert_eq!(parse_bytes("1G"), Ok(1_000_000_000));
        assert_eq!(parse_bytes("129e6"), Ok(129_000_000));
        for bad in ["", "Mi", "-1", "abc", "1Xi"] {
            assert!(parse_bytes(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn limits_become_quota_shares_and_memory() {
        let req = ResourceRequirements {
            limits: Some([("cpu".into(), q("200m")), ("memory".into(), q("64Mi"))].into()),
            requests: Some([("cpu".into(), q("10m")), ("memory".into(), q("32Mi"))].into()),
            ..Default::default()
        };
        let r = linux_resources(Some(&req), "spec.containers[0]")
            .expect("valid")
            .expect("some");
        assert_eq!((r.cpu_period, r.cpu_quota), (100_000, 20_000));
        assert_eq!(r.cpu_shares, 10);
        assert_eq!(r.memory_limit_in_bytes, 64 << 20);
    }

    #[test]
    fn other_resources_are_refused_by_name() {
        let req = ResourceRequirements {
            limits: Some([("ephemeral-storage".into(), q("1Gi"))].into()),
            ..Default::default()
        };
        let err = linux_resources(Some(&req), "spec.containers[1]").expect_err("refused");
        assert_eq!(
            err.to_string(),
            "spec.containers[1].resources.limits.ephemeral-storage: not supported by the test node driver"
        );
    }
}

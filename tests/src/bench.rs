//! Measuring helpers shared by the benchmark binaries (bench-agent, bench-netpol): never used
//! by tests, whose assertions hold no timings.

use std::process::{Child, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::netns_cluster::Netns;

/// The port iperf3 servers listen on.
pub const IPERF_PORT: &str = "5201";

/// Median of `xs` (the mean of the middle two for an even count); `NaN` when empty.
pub fn median(xs: &[f64]) -> f64 {
    percentile(xs, 50.0)
}

/// The `p`th percentile by linear interpolation between closest ranks; `NaN` when empty.
pub fn percentile(xs: &[f64], p: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = p / 100.0 * (v.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (rank - lo as f64)
}

/// One iperf3 run from `client` to a server started in `server`; the receiver's bits/s.
pub fn iperf(server: &Netns, client: &Netns, ip: &str, secs: u32) -> Result<f64, String> {
    let srv = server
        .command("iperf3")
        .args(["-s", "-1", "-p", IPERF_PORT])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("iperf3 server: {e}"))?;
    let guard = Reap(srv);
    let t = secs.to_string();
    let mut last = String::new();
    // The server needs a moment to listen; retry the client instead of sleeping blindly.
    for _ in 0..50 {
        // With -J, iperf3 3.12 exits 0 even when the connection is refused: the JSON says so.
        match client.exec(&["iperf3", "-c", ip, "-p", IPERF_PORT, "-t", &t, "-J"]) {
            Ok(out) => {
                let v: Value =
                    serde_json::from_str(&out).map_err(|e| format!("iperf3 JSON: {e}"))?;
                if let Some(bps) = v["end"]["sum_received"]["bits_per_second"].as_f64() {
                    drop(guard);
                    return Ok(bps);
                }
                last = v["error"].as_str().unwrap_or(&out).to_string();
            }
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("iperf3 to {ip} failed: {last}"))
}

/// Kills and reaps the one-shot server whatever happens to the client.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_between_ranks() {
        assert!(median(&[]).is_nan());
        assert_eq!(median(&[3.0]), 3.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 90.0), 4.6);
        assert_eq!(percentile(&[5.0, 1.0], 0.0), 1.0);
        assert_eq!(percentile(&[5.0, 1.0], 100.0), 5.0);
    }
}
